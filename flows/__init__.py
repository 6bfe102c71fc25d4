"""Prefect flows: thin wrappers over refine_tasks.pipeline.lifecycle (deployments in prefect.yaml).

refine-preprocess, refine-positions, refine-midtrain (ReFINE or SFT), refine-evaluate,
refine-posttrain (post-training variants and test-time training) and refine-lifecycle (all of
them, in order). Each stage runs as `flows.stages.stage_task`.
"""
