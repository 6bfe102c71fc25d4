"""The `qa_data` stage: post-training's QA examples, built with the evaluation questions left out.

Training uses questions at index >= qa_data.first_question only (RULER's order; 0-199 are the
released test sets), and never a question of a configured evaluation file
(evaluate.ruler_qa_files that exist), whatever its index.
"""

from __future__ import annotations

from pathlib import Path

from refine_tasks.config import PipelineConfig
from refine_tasks.corpus.qa_data import write_qa_data
from refine_tasks.corpus.tokenizer import load_tokenizer, tokenizer_id
from refine_tasks.evaluate.qa import qa_training_examples, questions_of


def evaluation_questions(cfg: PipelineConfig) -> frozenset[str]:
    """The questions of every configured RULER QA evaluation file that exists."""
    files = [Path(f) for f in cfg.evaluate.ruler_qa_files if Path(f).is_file()]
    return frozenset().union(*(questions_of(f) for f in files))


def build_qa_data(cfg: PipelineConfig) -> list[tuple[str, str]]:
    """Build qa_data.out_dir (shards + manifest) and the catalog's qa_examples with the project's
    tokenizer (tokenizer.path, else paths.tokenizer_dir); returns the stage's summary rows."""
    qa = cfg.qa_data
    tokenizer = load_tokenizer(Path(cfg.tokenizer.path) if cfg.tokenizer.path else cfg.paths.tokenizer_dir)
    excluded = evaluation_questions(cfg)
    examples = qa_training_examples(qa, tokenizer, seed=cfg.seed, exclude_questions=excluded)
    meta = {"qa_data": qa.model_dump(mode="json"), "seed": cfg.seed, "excluded_questions": len(excluded)}
    shards = write_qa_data(
        Path(qa.out_dir),
        cfg.paths.catalog,
        examples,
        tokenizer_id=tokenizer_id(tokenizer),
        shard_rows=qa.shard_rows,
        meta=meta,
    )
    tokens = sum(s.tokens for s in shards)
    return [
        ("examples", f"{len(examples):,}"),
        ("tokens", f"{tokens:,}"),
        ("evaluation questions left out", f"{len(excluded):,}"),
        ("QA data", str(qa.out_dir)),
    ]
