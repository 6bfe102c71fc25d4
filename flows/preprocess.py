"""refine-preprocess: the tokenizer and the corpus (Arrow shards, manifest, catalog documents)."""

from __future__ import annotations

from prefect import flow

from flows.stages import run_stage


@flow(name="refine-preprocess", log_prints=True)
def preprocess_flow(
    params: str = "params.yaml", overrides: list[str] | None = None, refresh_corpus: bool = False
) -> None:
    """Train (or import) the tokenizer and ingest corpus.source. refresh_corpus: re-read the source
    even when DVC sees no change (a folder or dataset that grows between runs)."""
    run_stage("tokenizer", params, overrides)
    run_stage("corpus", params, overrides, force=refresh_corpus)
