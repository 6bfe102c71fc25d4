"""End to end: a tiny model on a few records of every family (the LongBench and RULER QA files of
tests/fixtures/data, and of ../shared/data where it exists); every sample gets a score row in
Parquet, JSON and the catalog."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from refine_tasks.corpus.tokenizer import save_tokenizer
from refine_tasks.evaluate import EvalError
from refine_tasks.evaluate.runner import build_records, load_eval_model, run_evaluation
from refine_tasks.store.catalog import open_reader


@pytest.fixture
def eval_config(make_config, tmp_path: Path, fixture_data: Path):
    def make(*extra: str, data: Path = fixture_data):
        return make_config(
            "evaluate.niah_variants=[niah_single_1, niah_multivalue]",
            "evaluate.niah_lengths=[512]",
            "evaluate.niah_depths=[0, 100]",
            "evaluate.niah_max_new_tokens=6",
            f"evaluate.ruler_qa_files=[{data}/ruler_qa/ruler_squadqa_delta_net_4096_200_test.parquet,"
            f" {data}/ruler_qa/ruler_hotpotqa_lact_4096_200_test.parquet]",
            "evaluate.qa_samples=2",
            "evaluate.qa_max_new_tokens=6",
            f"evaluate.longbench_source={data}/longbench",
            "evaluate.longbench_tasks=[trec, triviaqa, lcc]",
            "evaluate.longbench_samples=2",
            "evaluate.max_prompt_tokens=512",
            "evaluate.batch_size=4",
            f"evaluate.output_dir={tmp_path / 'eval'}",
            *extra,
        )

    return make


def test_every_sample_gets_a_score_row(eval_config, tiny_model, tokenizer, eval_data: Path):
    cfg = eval_config(data=eval_data)
    records = build_records(cfg.evaluate, tokenizer, cfg.seed)
    assert [r.family for r in records].count("niah") == 4
    assert [r.family for r in records].count("ruler_qa") == 4
    assert [r.family for r in records].count("longbench") == 6
    run = run_evaluation(cfg, tiny_model, tokenizer, checkpoint="tiny-random", records=records)
    assert len(run.results) == len(records) and run.generated_tokens > 0

    samples = pq.read_table(run.paths["samples"]).to_pylist()
    assert [s["sample_id"] for s in samples] == [r.sample_id for r in records]
    assert all(0.0 <= s["score"] <= 1.0 and s["run"] == "base" for s in samples)
    assert all(s["prompt_tokens"] <= 512 for s in samples)
    assert any(s["truncated"] for s in samples if s["family"] == "longbench")  # long prompts cut to 512
    budgets = {r.sample_id: r.max_new_tokens for r in records}
    assert all(0 <= s["new_tokens"] <= budgets[s["sample_id"]] for s in samples)

    scores = json.loads(run.paths["scores"].read_text())
    assert set(scores["tasks"]) == {r.task for r in records}
    assert sum(t["n_samples"] for t in scores["tasks"].values()) == len(records)

    con = open_reader(cfg.paths.catalog)
    rows = con.execute(
        "SELECT family, task, length, depth, n_samples FROM eval_results WHERE run = 'base' ORDER BY task, depth"
    ).fetchall()
    con.close()
    assert sum(r[4] for r in rows) == len(records)
    assert ("niah", "niah_single_1", 512, 0.0, 1) in rows and ("niah", "niah_single_1", 512, 100.0, 1) in rows
    assert ("longbench", "trec", 16384, None, 2) in rows
    assert ("ruler_qa", "ruler_hotpotqa", 4096, None, 2) in rows


def test_the_catalog_write_waits_for_another_writer(eval_config, tiny_model, tokenizer, hold):
    cfg = eval_config("evaluate.longbench_tasks=[trec]", "evaluate.niah_variants=[niah_single_1]")
    holder = hold(cfg.paths.catalog, 1.5)  # e.g. another stage storing its own results
    run = run_evaluation(cfg, tiny_model, tokenizer, checkpoint="tiny-random")
    assert holder.wait(timeout=30) == 0
    con = open_reader(cfg.paths.catalog)
    stored = con.execute("SELECT sum(n_samples) FROM eval_results WHERE run = 'base'").fetchone()[0]
    con.close()
    assert stored == len(run.results) > 0


def test_checkpoint_directory_round_trip(eval_config, tiny_model, tokenizer, tmp_path: Path):
    ckpt = tmp_path / "ckpt"
    save_tokenizer(tokenizer, ckpt)  # (it replaces the folder, so first)
    tiny_model.save_pretrained(ckpt)
    cfg = eval_config(f"evaluate.checkpoint={ckpt}", "evaluate.families=[ruler_qa]", "evaluate.run=sft")
    model, tok, label = load_eval_model(cfg)
    assert label == str(ckpt) and len(tok) == len(tokenizer)
    for a, b in zip(model.parameters(), tiny_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    run = run_evaluation(cfg, model, tok, checkpoint=label)
    assert run.run == "sft" and len(run.results) == 4
    assert (cfg.evaluate.output_dir / "sft" / "samples.parquet").is_file()


def test_fresh_model_and_config_errors(eval_config):
    model, tok, label = load_eval_model(eval_config())
    assert label == "random:tiny:deltanet:seed0" and model.config.vocab_size == len(tok)
    cfg = eval_config("evaluate.niah_lengths=[4096]")
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        build_records(cfg.evaluate, tok, 0)
    with pytest.raises(EvalError, match="no config.json"):
        load_eval_model(eval_config("evaluate.checkpoint=/nonexistent"))


def test_a_niah_grid_is_built_once_per_tokenizer_and_settings(
    eval_config, tokenizer, eval_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next stage of a seed (SFT after base, an ablation after ReFINE) reuses the grid; another
    seed, other settings or another tokenizer build their own."""
    import refine_tasks.evaluate.runner as runner
    from refine_tasks.corpus.tokenizer import load_tokenizer, save_tokenizer, train_bpe

    cfg = eval_config(data=eval_data)
    ev = cfg.evaluate.model_copy(update={"families": ["niah"]})
    built: list[int] = []
    real = runner.niah_records
    monkeypatch.setattr(runner, "niah_records", lambda *a, **k: built.append(k["seed"]) or real(*a, **k))
    runner._NIAH_GRIDS.clear()
    first = build_records(ev, tokenizer, 0)
    again = build_records(ev, load_tokenizer(tokenizer.name_or_path), 0)  # another object, same tokenizer
    assert built == [0] and [r.prompt for r in again] == [r.prompt for r in first]
    again[0].meta["haystack_units"] = -1  # a caller's change stays its own
    assert build_records(ev, tokenizer, 0)[0].meta["haystack_units"] == first[0].meta["haystack_units"]
    assert [r.prompt for r in build_records(ev, tokenizer, 1)] != [r.prompt for r in first]
    fewer = ev.model_copy(update={"niah_variants": ev.niah_variants[:1]})
    assert len(build_records(fewer, tokenizer, 1)) < len(first)
    other_dir = tmp_path / "other-tokenizer"
    save_tokenizer(train_bpe(["a b c d e f g"] * 50, vocab_size=300), other_dir)
    build_records(fewer, load_tokenizer(other_dir), 1)
    assert built == [0, 1, 1, 1]
