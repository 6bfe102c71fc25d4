"""infra/gpu-job-template.json: the GPU pool's job, rendered as a Prefect worker renders it, sets
the environment that makes the training stages run torchrun (one node or c10d across nodes)."""

from __future__ import annotations

import json
from pathlib import Path

from prefect.utilities.templating import apply_values

from refine_tasks.pipeline.launch import TRAIN, torchrun_command

ROOT = Path(__file__).resolve().parents[2]


def rendered_env(**variables) -> dict[str, str]:
    template = json.loads((ROOT / "infra" / "gpu-job-template.json").read_text())
    defaults = {k: v.get("default") for k, v in template["variables"]["properties"].items()}
    job = apply_values(template["job_configuration"], {**defaults, **variables})
    return {k: str(v) for k, v in job["env"].items()}


def test_one_node_pool_runs_torchrun_standalone_with_multicast_off() -> None:
    env = rendered_env(cuda_visible_devices="0,1,2,3", nproc_per_node=4)
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3" and env["REFINE_NPROC_PER_NODE"] == "4"
    assert env["NCCL_NVLS_ENABLE"] == "0"
    cmd = torchrun_command(TRAIN, Path("p.yaml"), 4, env=env)
    assert "--standalone" in cmd and "--nproc_per_node=4" in cmd


def test_multi_node_pool_meets_at_the_first_node_through_c10d() -> None:
    env = rendered_env(nproc_per_node=8, nnodes=2, rdzv_endpoint="gpu-node-0:29400", rdzv_id="midtrain-42")
    cmd = torchrun_command("midtrain_refine", Path("p.yaml"), 8, env=env)
    i = cmd.index("--nnodes=2")
    assert cmd[i : i + 5] == [
        "--nnodes=2",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=gpu-node-0:29400",
        "--rdzv-id=midtrain-42",
        "--nproc_per_node=8",
    ]
    assert "--standalone" not in cmd and env["NCCL_NVLS_ENABLE"] == "0"
