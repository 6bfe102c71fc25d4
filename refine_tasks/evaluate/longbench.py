"""LongBench records: read prompt-format parquet/JSONL files (or a hub copy) and truncate in the middle.

The files are LongBench tasks with the prompt already built (columns prompt, answers, and
optionally max_gen_tokens, task, all_classes), one file per task named `<task>[_<length>].parquet`
or `.jsonl`. A source is a folder of such files, or `hf:<dataset>` for a `datasets` copy with one
configuration per task in the same columns.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq

from refine_tasks.evaluate.metrics import LONGBENCH_TASK_METRIC
from refine_tasks.evaluate.records import EvalError, EvalRecord

# LongBench's per-task generation budget (its dataset2maxlen), used when a file has no max_gen_tokens.
LONGBENCH_MAX_NEW_TOKENS: dict[str, int] = {
    "narrativeqa": 128, "qasper": 128, "multifieldqa_en": 64, "hotpotqa": 32, "2wikimqa": 32,
    "musique": 32, "gov_report": 512, "qmsum": 512, "multi_news": 512, "trec": 64, "triviaqa": 32,
    "samsum": 128, "passage_count": 32, "passage_retrieval_en": 32, "lcc": 64, "repobench-p": 64,
}  # fmt: skip
# samsum stops at a newline in LongBench's own generation; trec and triviaqa score their first
# line only, so stopping there changes no score and saves the rest of the budget.
NEWLINE_STOP_TASKS = frozenset({"samsum", "trec", "triviaqa"})
_FILE = re.compile(r"^(?P<task>.+?)(?:_(?P<length>\d+))?$")


def _task_files(folder: Path) -> dict[str, tuple[Path, int | None]]:
    found: dict[str, tuple[Path, int | None]] = {}
    for path in sorted([*folder.glob("*.parquet"), *folder.glob("*.jsonl")]):
        m = _FILE.match(path.stem)
        if m and m["task"] in LONGBENCH_TASK_METRIC:
            found[m["task"]] = (path, int(m["length"]) if m["length"] else None)
    return found


def available_tasks(source: str) -> list[str]:
    """The LongBench tasks present in a folder source (hub sources: all English tasks)."""
    if source.startswith("hf:"):
        return sorted(LONGBENCH_TASK_METRIC)
    return sorted(_task_files(Path(source)))


def _read_rows(source: str, task: str) -> tuple[list[dict], int | None, str]:
    if source.startswith("hf:"):
        import datasets

        name = source[3:]
        return datasets.load_dataset(name, task, split="test").to_list(), None, source
    folder = Path(source)
    if not folder.is_dir():
        raise EvalError(f"evaluate.longbench_source = {source!r}: not a folder (or use hf:<dataset>)")
    files = _task_files(folder)
    if task not in files:
        raise EvalError(
            f"evaluate.longbench_tasks: no file for task {task!r} in {folder} "
            f"(found: {', '.join(sorted(files)) or 'none'})"
        )
    path, length = files[task]
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        rows = pq.read_table(path).to_pylist()
    return rows, length, str(path)


def read_longbench(source: str, task: str, *, limit: int | None = None) -> list[EvalRecord]:
    """The first `limit` samples of one LongBench task as records."""
    if task not in LONGBENCH_TASK_METRIC:
        raise EvalError(
            f"evaluate.longbench_tasks: unknown task {task!r}; known: {', '.join(sorted(LONGBENCH_TASK_METRIC))}"
        )
    rows, length, origin = _read_rows(source, task)
    records = []
    for i, row in enumerate(rows[:limit] if limit is not None else rows):
        if "prompt" not in row or "answers" not in row:
            raise EvalError(
                f"{origin} row {i}: needs 'prompt' and 'answers' (prompt-format LongBench, as in "
                f"../shared/data/longbench); got columns {', '.join(sorted(row))}"
            )
        meta: dict = {"source": origin}
        if row.get("all_classes"):
            meta["all_classes"] = list(row["all_classes"])
        records.append(
            EvalRecord(
                family="longbench",
                task=task,
                sample_id=f"{task}:{i}",
                prompt=row["prompt"],
                references=tuple(row["answers"]),
                max_new_tokens=int(row.get("max_gen_tokens") or LONGBENCH_MAX_NEW_TOKENS[task]),
                stop_on_newline=task in NEWLINE_STOP_TASKS,
                metric="longbench",
                length=length,
                meta=meta,
            )
        )
    return records


def truncate_middle(ids: list[int], max_tokens: int) -> tuple[list[int], bool]:
    """LongBench's rule for over-long prompts: keep the first and last max_tokens // 2 tokens.

    The instruction at the start and the question at the end survive; the middle of the
    context goes. Cut on token ids directly (the official script decodes the two halves and
    re-encodes the text, which can merge tokens at the seam). Returns (ids, truncated?).
    """
    if max_tokens < 2:
        raise EvalError(f"evaluate.max_prompt_tokens must be >= 2, got {max_tokens}")
    if len(ids) <= max_tokens:
        return ids, False
    half = max_tokens // 2
    return ids[:half] + ids[-half:], True
