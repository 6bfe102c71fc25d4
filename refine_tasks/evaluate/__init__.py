"""Evaluation: RULER needle-in-a-haystack, RULER-style long-context QA, LongBench; reports.

- `niah`: RULER's 8 NIAH variants, sized to target lengths with the model's tokenizer.
- `qa`: read RULER QA records; build new ones from SQuAD/HotpotQA JSON (training sets).
- `longbench`: read prompt-format LongBench files; middle truncation.
- `metrics`: LongBench's and RULER's scoring rules.
- `generate`: batched greedy generation through the state API (prefill, then decode).
- `runner`: build records, generate, score, store (Parquet, JSON, catalog `eval_results`).
- `report`, `plots`: markdown tables, comparison across runs, NIAH heat-map, LongBench bars.
"""

from refine_tasks.evaluate.records import EvalRecord
from refine_tasks.evaluate.runner import (
    EvalRun,
    build_records,
    evaluate_records,
    load_eval_model,
    run_evaluation,
)

__all__ = ["EvalRecord", "EvalRun", "build_records", "evaluate_records", "load_eval_model", "run_evaluation"]
