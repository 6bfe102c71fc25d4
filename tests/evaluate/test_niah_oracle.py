"""The NIAH evaluation can score what a model that retrieves would. An oracle in place of generation
answers each prompt with the reference values it finds in the prompt's tokens, as encoded and
truncated for the model; run through the evaluation's own records, prompt sizing, truncation,
decoding and scorer, it scores 100 on all 8 variants at 1K-8K with the GPU profile's tokenizer. So
a model scoring 0 (the H200 base of 2026-12-04) is the model, not the evaluation."""

from __future__ import annotations

import pytest

from refine_tasks.corpus.tokenizer import load_tokenizer
from refine_tasks.evaluate import runner
from refine_tasks.evaluate.niah import VARIANTS, niah_records
from refine_tasks.evaluate.runner import evaluate_records

LENGTHS = [1024, 2048, 4096, 8192]


@pytest.mark.parametrize(
    "which", ["tests", "mistral-common:tokenizer.model.v1"], ids=["project-bpe", "mistral-32k"]
)
def test_an_oracle_that_reads_the_prompt_scores_100_on_every_variant(
    which, tokenizer_dir, monkeypatch
) -> None:
    tokenizer = load_tokenizer(tokenizer_dir if which == "tests" else which)
    records = niah_records(list(VARIANTS), tokenizer, LENGTHS, [0.0, 50.0, 100.0], max_new_tokens=64)
    answers = {}
    for record in records:
        ids = tokenizer.encode(record.prompt)
        assert len(ids) <= record.length  # sized to the length asked
        answers[tuple(ids)] = record.references

    def oracle(model, tok, requests, batch_size, on_batch, adapt):
        out = []
        for request in requests:
            prompt = tok.decode(list(request.prompt), skip_special_tokens=True)
            refs = answers[tuple(request.prompt)]
            found = [
                value for value in refs if value in prompt
            ]  # the needle survived encoding and truncation
            out.append(tok.encode(" " + ", ".join(found), add_special_tokens=False))
        return out

    monkeypatch.setattr(runner, "_generate", oracle)
    results = evaluate_records(None, tokenizer, records, max_prompt_tokens=max(LENGTHS))
    assert len(results) == len(VARIANTS) * len(LENGTHS) * 3
    assert not any(r.truncated for r in results)
    low = [(r.record.task, r.record.length, r.record.depth, r.prediction) for r in results if r.score != 1.0]
    assert not low
    # and a model that answers something else scores 0: the check can fail
    monkeypatch.setattr(
        runner, "_generate", lambda m, t, reqs, *a: [t.encode(" 0", add_special_tokens=False) for _ in reqs]
    )
    assert all(r.score == 0.0 for r in evaluate_records(None, tokenizer, records[:8], max_prompt_tokens=8192))
