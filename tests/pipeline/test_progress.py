"""refine_tasks.pipeline.progress: when the output is no terminal, a plain line every few seconds."""

from __future__ import annotations

import io

from rich.console import Console

from refine_tasks.pipeline.progress import ProgressLines, progress_bar


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _lines(console: Console) -> list[str]:
    return console.file.getvalue().splitlines()


def test_lines_every_interval_with_rate_loss_and_eta() -> None:
    out = Console(file=io.StringIO(), width=300)
    assert not out.is_terminal
    clock = FakeClock()
    with progress_bar(
        "train: steps",
        total=10,
        counters=("tokens",),
        latest=("loss",),
        console=out,
        interval=10,
        clock=clock,
    ) as advance:
        clock.now += 100  # the first step compiles
        advance(1, tokens=4096, loss=3.25)
        assert _lines(out) == ["train: steps 1/10 | 4,096 tokens | loss 3.25 | elapsed 0:01:40"]
        for loss in (3.0, 2.75, 2.5, 2.25):
            clock.now += 4
            advance(1, tokens=4096, loss=loss)
    # At most one line per 10 s: steps 3 (t=108, 8 s after the first line: none), 4 (t=112) ...
    assert _lines(out)[1:] == [
        "train: steps 4/10 | 16,384 tokens (1,024 tokens/s) | loss 2.5 | elapsed 0:01:52 | ETA 0:00:24"
    ]


def test_a_line_while_nothing_finishes() -> None:
    """The heartbeat: a line after `interval` seconds even before the first step ends."""
    out = Console(file=io.StringIO(), width=300)
    clock = FakeClock()
    lines = ProgressLines("evaluate: samples", 40, (), (), out, interval=5, clock=clock)
    lines.tick()
    assert _lines(out) == []
    clock.now += 5
    lines.tick()
    assert _lines(out) == ["evaluate: samples 0/40 | elapsed 0:00:05"]


def test_no_total_and_no_counters() -> None:
    out = Console(file=io.StringIO(), width=300)
    clock = FakeClock()
    with progress_bar("base: work", console=out, interval=1, clock=clock) as advance:
        clock.now += 2
        advance(3)
    assert _lines(out) == ["base: work 3 | elapsed 0:00:02"]


def test_a_terminal_gets_the_bar_not_lines() -> None:
    out = Console(file=io.StringIO(), width=300, force_terminal=True)
    clock = FakeClock()
    with progress_bar(
        "train: steps", total=2, latest=("loss",), console=out, interval=0, clock=clock
    ) as advance:
        advance(1, loss=1.5)
    text = out.file.getvalue()
    assert "loss 1.5" in text and " | elapsed" not in text
