"""Scoring rules of LongBench (THUDM/LongBench `eval.py` + `metrics.py`) and RULER, re-implemented.

Every per-sample score is in [0, 1]; a task's score is `task_score` (mean x 100, rounded to two
decimals as LongBench's `scorer` does). The LongBench rules follow the official code to the
letter, quirks included, so our numbers compare with published ones:
- classification: the official loop removes partial matches from the list it is iterating
  over, which skips the element after each removal; its difflib fallback is unreachable
  (`list != 0` is always true), so it is not here either.
- ROUGE-L: the `rouge` package; any error it raises (empty hypothesis, recursion depth on long
  texts) scores 0.0, as the official bare `except` does.
- code similarity: fuzzywuzzy's `fuzz.ratio` (difflib underneath, as in LongBench's own
  environment without python-Levenshtein).
"""

from __future__ import annotations

import re
import string
import warnings
from collections import Counter
from collections.abc import Callable, Sequence

from rouge import Rouge

with warnings.catch_warnings():
    # fuzzywuzzy warns that it falls back to difflib; that fallback is what LongBench measured with.
    warnings.simplefilter("ignore", UserWarning)
    from fuzzywuzzy import fuzz

# LongBench's label set for trec (its `all_classes` field); the shared parquet files omit it.
TREC_CLASSES: tuple[str, ...] = (
    "Food", "Date", "Order, rank", "Speed", "Disease and medicine", "Word with a special property",
    "Abbreviation", "Language", "Letter like a-z", "Other entity", "Animal", "Expression abbreviated",
    "Price", "Techniques and method", "Musical instrument", "Mountain", "Currency name", "Event",
    "Product", "State", "Individual", "Organ of body", "Reason", "Manner of an action", "City",
    "Religion", "Invention, book and other creative piece", "Distance, linear measure", "Temperature",
    "Postcode or other code", "Size, area and volume", "Sport", "Country", "Other location",
    "Lasting time of somethin", "Equivalent term", "Description of something", "Weight", "Vehicle",
    "Color", "Other number", "Definition of something", "Element and substance",
    "Description of a person", "Symbols and sign", "Number of something", "Plant", "Percent, fraction",
    "Group or organization of person", "Title of a person",
)  # fmt: skip

# Tasks whose prediction is cut to its first line (after leading newlines) before scoring.
FIRST_LINE_TASKS = frozenset({"trec", "triviaqa", "samsum", "lsht"})

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)
_CONTROL = re.compile(r"[\x00-\x1f]")
_ROUGE = Rouge()


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower-case, drop punctuation, drop articles, collapse white space."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: Sequence[str], reference: Sequence[str]) -> float:
    """Bag-of-tokens F1 between two token lists (0 when nothing is shared)."""
    shared = sum((Counter(prediction) & Counter(reference)).values())
    if shared == 0:
        return 0.0
    precision = shared / len(prediction)
    recall = shared / len(reference)
    return 2 * precision * recall / (precision + recall)


def qa_f1_score(prediction: str, reference: str, **_: object) -> float:
    return token_f1(normalize_answer(prediction).split(), normalize_answer(reference).split())


def rouge_l_score(prediction: str, reference: str, **_: object) -> float:
    try:
        scores = _ROUGE.get_scores([prediction], [reference], avg=True)
    except Exception:  # the official scorer maps every failure of the package to 0.0
        return 0.0
    return float(scores["rouge-l"]["f"])


def classification_score(
    prediction: str, reference: str, all_classes: Sequence[str] = TREC_CLASSES, **_: object
) -> float:
    matched = [name for name in all_classes if name in prediction]
    i = 0
    while i < len(matched):
        if matched[i] in reference and matched[i] != reference:
            del matched[i]
        # Advancing after a deletion too reproduces the official iterate-while-removing skip.
        i += 1
    return 1.0 / len(matched) if reference in matched else 0.0


def code_sim_score(prediction: str, reference: str, **_: object) -> float:
    """Edit similarity of the first line that is not a comment or a code fence."""
    lines = prediction.lstrip("\n").split("\n")
    code = next((ln for ln in lines if "`" not in ln and "#" not in ln and "//" not in ln), "")
    return fuzz.ratio(code, reference) / 100


def _share_equal_to(prediction: str, target: str) -> float:
    numbers = re.findall(r"\d+", prediction)
    return sum(n == target for n in numbers) / len(numbers) if numbers else 0.0


def count_score(prediction: str, reference: str, **_: object) -> float:
    """Share of the numbers in the prediction that equal the reference count."""
    return _share_equal_to(prediction, str(reference))


def retrieval_score(prediction: str, reference: str, **_: object) -> float:
    """Share of the numbers in the prediction that equal the reference's paragraph number."""
    found = re.findall(r"Paragraph (\d+)", reference)
    if not found:
        raise ValueError(f"retrieval reference {reference!r} names no 'Paragraph N'")
    return _share_equal_to(prediction, found[0])


LONGBENCH_METRICS: dict[str, Callable[..., float]] = {
    "qa_f1": qa_f1_score,
    "rouge_l": rouge_l_score,
    "classification": classification_score,
    "code_sim": code_sim_score,
    "count": count_score,
    "retrieval": retrieval_score,
}

# The English LongBench tasks and their official metric.
LONGBENCH_TASK_METRIC: dict[str, str] = {
    **dict.fromkeys(
        ["narrativeqa", "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "musique", "triviaqa"], "qa_f1"
    ),
    **dict.fromkeys(["gov_report", "qmsum", "multi_news", "samsum"], "rouge_l"),
    "trec": "classification",
    "lcc": "code_sim",
    "repobench-p": "code_sim",
    "passage_count": "count",
    "passage_retrieval_en": "retrieval",
}


def first_line(prediction: str) -> str:
    """LongBench's first-line rule: drop leading newlines, keep up to the next newline. Lines of
    white space only count as leading blank lines too (LongBench would score such a line, i.e. 0)."""
    return next((line for line in prediction.split("\n") if line.strip()), "")


def longbench_score(
    task: str, prediction: str, references: Sequence[str], all_classes: Sequence[str] = TREC_CLASSES
) -> float:
    """The official per-sample score: the task's metric, best over the references (0 if none)."""
    if task not in LONGBENCH_TASK_METRIC:
        raise ValueError(
            f"unknown LongBench task {task!r}; known: {', '.join(sorted(LONGBENCH_TASK_METRIC))}"
        )
    if task in FIRST_LINE_TASKS:
        prediction = first_line(prediction)
    metric = LONGBENCH_METRICS[LONGBENCH_TASK_METRIC[task]]
    return max([0.0, *(metric(prediction, ref, all_classes=all_classes) for ref in references)])


def _ruler_postprocess(prediction: str) -> str:
    # RULER turns control characters into newlines and strips, before matching.
    return _CONTROL.sub("\n", prediction.strip()).strip()


def string_match_all(prediction: str, references: Sequence[str]) -> float:
    """RULER's NIAH score: the share of references found in the prediction, case-insensitively."""
    if not references:
        raise ValueError("string_match_all needs at least one reference")
    text = _ruler_postprocess(prediction).lower()
    return sum(ref.lower() in text for ref in references) / len(references)


def ruler_qa_score(prediction: str, references: Sequence[str]) -> float:
    """RULER QA as the paper scores it: 1 if any reference is in the prediction's first line (the
    first after any leading blank lines, so an answer after a newline still counts)."""
    line = _ruler_postprocess(first_line(prediction)).lower()
    return float(any(ref.lower() in line for ref in references))


def string_match_part(prediction: str, references: Sequence[str]) -> float:
    """RULER's own QA score: 1 if any reference is in the whole prediction, case-insensitively."""
    text = _ruler_postprocess(prediction).lower()
    return float(any(ref.lower() in text for ref in references))


# LongBench's QA tasks (qa_f1): the paper protocol scores their first line only.
LONGBENCH_QA_TASKS = frozenset(t for t, m in LONGBENCH_TASK_METRIC.items() if m == "qa_f1")
PROTOCOLS = ("official", "paper")


def score_sample(
    metric: str,
    task: str,
    prediction: str,
    references: Sequence[str],
    all_classes: Sequence[str] = (),
    protocol: str = "official",
) -> float:
    """Score one prediction under the named rule ('string_match_all', 'ruler_qa' or 'longbench') and
    protocol: 'official' (RULER QA over the whole prediction, LongBench's own rules) or 'paper' (the
    reference's: RULER QA and LongBench's QA tasks on the first line)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}: expected official or paper")
    if metric == "string_match_all":
        return string_match_all(prediction, references)
    if metric == "ruler_qa":
        rule = ruler_qa_score if protocol == "paper" else string_match_part
        return rule(prediction, references)
    if metric == "longbench":
        if protocol == "paper" and task in LONGBENCH_QA_TASKS:
            prediction = first_line(prediction)
        return longbench_score(task, prediction, references, all_classes or TREC_CLASSES)
    raise ValueError(f"unknown metric {metric!r}: expected string_match_all, ruler_qa or longbench")


# The scoring rule of each evaluation family.
FAMILY_RULE = {"niah": "string_match_all", "ruler_qa": "ruler_qa", "longbench": "longbench"}


def metric_label(metric: str, task: str) -> str:
    """The name a report shows: the LongBench task's own metric, else the rule's name."""
    return LONGBENCH_TASK_METRIC[task] if metric == "longbench" else metric


def task_score(scores: Sequence[float]) -> float:
    """A task's score: mean per-sample score x 100, rounded to two decimals (LongBench's `scorer`)."""
    if not scores:
        raise ValueError("task_score of no samples")
    return round(100 * sum(scores) / len(scores), 2)
