"""What the benchmarks' CPU dry runs share."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def tiny_lifecycle(tmp_path: Path) -> list[str]:
    """--set overrides that make the GPU profile's lifecycle tiny and CPU-only, every output under
    tmp_path (data/, docs/): a 2-step base, SFT and ReFINE, one NIAH cell, no QA or LongBench data."""
    d = tmp_path / "data"
    return [
        f"paths.data_dir={d}", f"paths.corpus_dir={d / 'corpus'}", f"paths.tokenizer_dir={d / 'tokenizer'}",
        f"paths.catalog={d / 'cache' / 'refine.duckdb'}", f"paths.kernel_cache={d / 'cache' / 'kernels'}",
        f"lifecycle.runs_dir={d / 'runs'}", f"lifecycle.positions_dir={d / 'positions'}",
        f"lifecycle.eval_dir={d / 'eval'}", f"lifecycle.experiment_dir={d / 'experiment'}",
        f"lifecycle.results_dir={tmp_path / 'docs'}", f"evaluate.report_dir={d / 'reports'}",
        "tokenizer.path=null", "tokenizer.vocab_size=512", "corpus.limit=6", "corpus.retrieval_chars=3000",
        "model.preset=tiny", "train.device=cpu", "evaluate.device=cpu", "train.seq_len=256",
        "train.max_steps=2", "train.val_sequences=2", "train.val_every=1", "lifecycle.base_steps=2",
        "lifecycle.seeds=[1]", "positions.n_chunks=2", "refine.rollout_len=3", "evaluate.niah_lengths=[512]",
        "evaluate.niah_variants=[niah_single_1]", "evaluate.niah_depths=[50.0]", "evaluate.niah_samples=1",
        "evaluate.niah_max_new_tokens=8", "evaluate.max_prompt_tokens=512",
        "evaluate.ruler_qa_files=[missing.parquet]", "evaluate.longbench_source=missing",
    ]  # fmt: skip
