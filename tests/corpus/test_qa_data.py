"""QA training data for post-training: questions >= qa_data.first_question only, the reference's
template, Arrow shards + manifest + catalog rows that read back exactly; disjoint from the test sets."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from refine_tasks.config import QaDataConfig
from refine_tasks.corpus.qa_data import read_qa_data, write_qa_data
from refine_tasks.corpus.shards import read_shard
from refine_tasks.evaluate.qa import INSTRUCTION, qa_training_examples, questions_of, read_squad


@pytest.fixture
def squad_json(tmp_path: Path) -> Path:
    """A SQuAD-format file of 3 articles x 4 paragraphs x 2 answerable questions (+ 1 unanswerable)."""
    articles = []
    for a, topic in enumerate(["rivers", "mountains", "cities"]):
        paragraphs = []
        for p in range(4):
            text = f"Paragraph {p} about {topic}. " + " ".join(f"Fact {k} on {topic}." for k in range(10))
            qas = [
                {"question": f"What is fact {p}.{q} of {topic}?", "answers": [{"text": f"ans-{a}-{p}-{q}"}],
                 "is_impossible": False}
                for q in range(2)
            ] + [{"question": f"Unanswerable {a}-{p}?", "answers": [], "is_impossible": True}]  # fmt: skip
            paragraphs.append(
                {"context": text + f" The answers are ans-{a}-{p}-0 and ans-{a}-{p}-1.", "qas": qas}
            )
        articles.append({"title": topic, "paragraphs": paragraphs})
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"version": "v2.0", "data": articles}))
    return path


def test_training_examples_skip_test_questions_and_follow_the_template(tokenizer, squad_json):
    cfg = QaDataConfig(
        datasets=["squad"], squad_file=squad_json, lengths=[400, 700], samples=5, first_question=6
    )
    items, _ = read_squad(squad_json)
    excluded = frozenset({items[10].question})
    examples = qa_training_examples(cfg, tokenizer, seed=3, exclude_questions=excluded)
    assert len(examples) == 10 and {e.length for e in examples} == {400, 700}
    assert all(e.question_index >= 6 and e.question_index != 10 for e in examples)
    for e in examples:
        item = items[e.question_index]
        prompt = tokenizer.decode(e.prompt_ids)
        assert prompt.startswith(f"{INSTRUCTION}\n\nThe following are given passages.\nDocument 1:\n")
        assert prompt.endswith(f"{INSTRUCTION}\n\nQuestion: {item.question}\nAnswer:")
        assert e.question == item.question and e.answers == item.answers
        assert tokenizer.decode(e.answer_ids) == " " + item.answers[0]
        assert len(e.prompt_ids) + max(len(tokenizer.encode(a)) for a in e.answers) <= e.length
        assert tokenizer.bos_token_id not in e.prompt_ids  # no special tokens
    assert examples == qa_training_examples(
        cfg, tokenizer, seed=3, exclude_questions=excluded
    )  # deterministic
    assert examples != qa_training_examples(cfg, tokenizer, seed=4, exclude_questions=excluded)


def test_qa_data_round_trips_through_shards_manifest_and_catalog(tokenizer, squad_json, tmp_path):
    cfg = QaDataConfig(datasets=["squad"], squad_file=squad_json, lengths=[500], samples=7, first_question=2)
    examples = qa_training_examples(cfg, tokenizer)
    out, catalog = tmp_path / "qa", tmp_path / "cache" / "refine.duckdb"
    shards = write_qa_data(out, catalog, examples, tokenizer_id="t", shard_rows=3, meta={"qa_data": {}})
    assert len(shards) == 3 and sum(s.rows for s in shards) == 7
    assert read_qa_data(out) == examples
    con = duckdb.connect(str(catalog), read_only=True)
    rows = con.execute('SELECT example_id, shard, "row", n_tokens FROM qa_examples').fetchall()
    con.close()
    assert len(rows) == 7
    by_id = {e.example_id: e for e in examples}
    for example_id, shard, row, n_tokens in rows:
        stored = read_shard(out / shard).slice(row, 1).to_pylist()[0]
        assert stored["example_id"] == example_id
        assert n_tokens == len(by_id[example_id].prompt_ids) + len(by_id[example_id].answer_ids)
    # A smaller rebuild replaces the old shards and rows.
    write_qa_data(out, catalog, examples[:2], tokenizer_id="t", shard_rows=3, meta={})
    assert read_qa_data(out) == examples[:2] and len(list(out.glob("shard-*.arrow"))) == 1


def test_training_questions_are_disjoint_from_the_released_test_sets(tokenizer, shared_data):
    """Questions 0-199 of RULER's order are the released test sets (../shared/data/ruler_qa): the
    default split (first_question = 200) alone keeps every one of them out."""
    files = sorted((shared_data / "ruler_qa").glob("*.parquet"))
    assert files
    cfg = QaDataConfig(lengths=[1024], samples=30)
    examples = qa_training_examples(cfg, tokenizer)
    assert {e.task for e in examples} == {"ruler_squadqa", "ruler_hotpotqa"}
    train_questions = {e.question for e in examples}
    for f in files:
        assert not train_questions & questions_of(f), f
    assert min(e.question_index for e in examples) >= 200


def test_training_questions_skip_the_configured_evaluation_files(
    tokenizer, squad_json, make_config, tmp_path
):
    """Every question of a configured evaluation file is left out, whatever its index: with all the
    file's other questions asked for, training holds exactly those."""
    from refine_tasks.evaluate.qa import make_qa_records, write_qa_parquet
    from refine_tasks.pipeline.qa_data import build_qa_data, evaluation_questions

    rows = make_qa_records("squad", tokenizer, max_seq_length=600, num_samples=4, path=squad_json, seed=9)
    test_file = write_qa_parquet(rows, tmp_path / "ruler_squadqa_test.parquet")
    cfg = make_config(
        f"evaluate.ruler_qa_files=[{test_file}, {tmp_path / 'absent.parquet'}]",
        "qa_data.datasets=[squad]",
        f"qa_data.squad_file={squad_json}",
        "qa_data.lengths=[600]",
        "qa_data.samples=20",
        "qa_data.first_question=0",
        f"qa_data.out_dir={tmp_path / 'qa'}",
    )
    asked = evaluation_questions(cfg)
    assert asked == questions_of(test_file) and len(asked) == 4
    build_qa_data(cfg)
    trained = {e.question for e in read_qa_data(tmp_path / "qa")}
    items, _ = read_squad(squad_json)
    assert not trained & asked
    assert trained | asked == {it.question for it in items}  # 24 answerable: 20 trained, 4 tested
