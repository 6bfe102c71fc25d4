"""One evaluation sample, whatever its family: what to feed, how to generate, how to score."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Family = Literal["niah", "ruler_qa", "longbench"]


class EvalError(ValueError):
    """Evaluation input is wrong; the message names the field, file or value and what to do."""


@dataclass(frozen=True)
class EvalRecord:
    """A prompt with its references and generation rule.

    `metric` names a rule of `metrics.score_sample`; `length` is the record's context-length
    bucket (the NIAH target, the QA file's max_seq_length, LongBench's file length), `depth` the
    NIAH needle depth in percent (None elsewhere). `meta` holds JSON-serialisable extras.
    """

    family: Family
    task: str
    sample_id: str
    prompt: str
    references: tuple[str, ...]
    max_new_tokens: int
    stop_on_newline: bool
    metric: str
    length: int | None = None
    depth: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(
                f"record {self.sample_id}: max_new_tokens must be >= 1, got {self.max_new_tokens}"
            )
