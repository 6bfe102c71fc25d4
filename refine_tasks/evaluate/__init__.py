"""Evaluation: RULER needle-in-a-haystack, RULER-style long-context QA, LongBench; reports.

- `niah`: RULER's 8 NIAH variants, sized to target lengths with the model's tokenizer.
- `qa`: read RULER QA records; build new ones from SQuAD/HotpotQA JSON (training sets).
- `longbench`: read prompt-format LongBench files; middle truncation.
- `metrics`: LongBench's and RULER's scoring rules.
- `generate`: batched greedy generation through the state API (prefill, then decode).
- `runner`: build records, generate, score, store (Parquet, JSON, catalog `eval_results`).
- `report`, `plots`: markdown tables, comparison across runs, NIAH heat-map, LongBench bars.

Import the step from `refine_tasks.evaluate.runner` (this package itself stays light, so the CLI
starts fast).
"""

from refine_tasks.evaluate.records import EvalError, EvalRecord

__all__ = ["EvalError", "EvalRecord"]
