"""refine-posttrain without a server: which lifecycle stages it runs, in which order."""

from __future__ import annotations

import flows.posttrain as posttrain
from refine_tasks.pipeline.lifecycle import stage_names


def _stages(monkeypatch, **kwargs) -> list[str]:
    ran: list[str] = []
    monkeypatch.setattr(posttrain, "run_stage", lambda name, params, overrides: ran.append(name))
    monkeypatch.setattr(posttrain, "publish_report", lambda params, overrides: ran.append("publish"))
    posttrain.posttrain_flow.fn(**kwargs)
    assert set(ran) - {"publish"} <= set(stage_names())
    return ran


def test_posttrain_flow_runs_every_variant_then_ttt_then_the_report(monkeypatch) -> None:
    ran = _stages(monkeypatch)
    assert ran[0] == "qa_data" and ran[-2:] == ["report", "publish"]
    assert ran.index("posttrain@nested-refine") < ran.index("eval_qa_ttt@refine")
    assert [n for n in ran if n.startswith("eval_qa_ttt")] == ["eval_qa_ttt@sft", "eval_qa_ttt@refine"]
    assert len([n for n in ran if n.startswith("posttrain@")]) == 3


def test_ttt_alone_still_trains_the_model_it_adapts(monkeypatch) -> None:
    ran = _stages(monkeypatch, variants=["sft"], ttt=["refine"])
    assert ran == [
        "qa_data", "posttrain@sft", "eval_qa_post@sft", "posttrain@nested-refine", "eval_qa_ttt@refine",
        "report", "publish",
    ]  # fmt: skip
    assert "eval_qa_ttt@sft" not in _stages(monkeypatch, ttt=[])
