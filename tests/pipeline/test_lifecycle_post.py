"""The post-training and test-time-training stages end to end on the CPU: QA data, nested-ReFINE
post-training from the ReFINE model, RULER QA of it plain and with TTT, rows in the comparison."""

from __future__ import annotations

import hashlib
import json

import torch

from refine_tasks.corpus.tokenizer import load_tokenizer, save_tokenizer
from refine_tasks.models import build_model
from refine_tasks.pipeline.lifecycle import comparison, run_stage, stage_config


def test_posttrain_and_ttt_stages_write_rows_and_leave_the_checkpoint(
    make_config, tokenizer_dir, fixture_data, tmp_path
):
    runs, evals = tmp_path / "runs", tmp_path / "eval"
    ckpt = runs / "refine" / "checkpoints" / "step-0000001"
    save_tokenizer(load_tokenizer(tokenizer_dir), ckpt)
    torch.manual_seed(0)
    build_model("tiny", vocab_size=len(load_tokenizer(tokenizer_dir))).save_pretrained(ckpt)
    (ckpt.parent / "latest").write_text(ckpt.name + "\n")
    cfg = make_config(
        f"lifecycle.runs_dir={runs}",
        f"lifecycle.eval_dir={evals}",
        f"evaluate.report_dir={tmp_path / 'reports'}",
        f"evaluate.ruler_qa_files=[{fixture_data}/ruler_qa/ruler_squadqa_delta_net_4096_200_test.parquet]",
        "evaluate.qa_samples=2",
        "evaluate.qa_max_new_tokens=4",
        "evaluate.max_prompt_tokens=512",
        "evaluate.batch_size=2",
        f"qa_data.out_dir={tmp_path / 'qa'}",
        "qa_data.lengths=[512]",
        "qa_data.samples=1",
        "posttrain.batch_size=2",
        "posttrain.max_prompt_tokens=400",
        "positions.n_chunks=2",
        "ttt.steps=1",
    )
    qa = run_stage("qa_data", cfg)
    assert "examples" in dict(qa.rows)
    # the stage's wall time is shown after its own rows (loading and saving included)
    assert qa.shown_rows()[:-1] == qa.rows and qa.shown_rows()[-1] == ("wall seconds", f"{qa.wall_s:.1f}")
    assert qa.wall_s > 0
    run_stage("posttrain@nested-refine", cfg)
    summary = json.loads((runs / "post-nested-refine" / "summary.json").read_text())
    assert summary["variant"] == "nested-refine" and summary["steps"] == 1
    post = runs / "post-nested-refine" / "checkpoints"
    assert stage_config("eval_qa_ttt@refine", cfg).ttt.objective == "refine"
    assert stage_config("eval_qa_post@nested-refine", cfg).ttt.objective == "none"

    def digest() -> str:
        return hashlib.sha256(
            b"".join(f.read_bytes() for f in sorted(post.rglob("*")) if f.is_file())
        ).hexdigest()

    before = digest()
    run_stage("eval_qa_post@nested-refine", cfg)
    run_stage("eval_qa_ttt@refine", cfg)
    assert digest() == before
    for run in ("post-nested-refine", "ttt-refine"):
        scores = json.loads((evals / "ruler_qa" / run / "scores.json").read_text())
        assert scores["run"] == run and scores["cells"]
    header, rows = comparison(cfg)
    assert header[2:] == ["post-nested-refine", "ttt-refine"] and rows
