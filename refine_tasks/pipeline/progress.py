"""Terminal output shared by the commands: progress for long work, a summary table at the end.

Library functions take plain callbacks (`advance(n)`); the CLI builds them with `progress_bar`,
so the library never draws on a terminal itself. On an interactive terminal progress is a bar;
otherwise (Prefect workers, nohup, CI logs) a bar draws nothing, so it is a plain line every
`interval` seconds, also while no work finishes (a first GPU step compiling its kernels took
150 s that printed nothing).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

console = Console()
LINE_INTERVAL_S = 10.0  # seconds between progress lines when the output is not a terminal


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


class ProgressLines:
    """Progress as a plain line every `interval` seconds: done/total, the counters with their rate
    (e.g. tokens/s), the latest values (e.g. loss), elapsed time and ETA.

    Rates and ETA count from the first unit done: the work before it (loading, compiling GPU
    kernels) says nothing about the pace of the rest."""

    def __init__(
        self,
        description: str,
        total: float | None,
        counters: Sequence[str],
        latest: Sequence[str],
        console: Console,
        interval: float = LINE_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.description, self.total, self.console = description, total, console
        self.interval, self.clock = interval, clock
        self.done = 0.0
        self.counts = dict.fromkeys(counters, 0.0)
        self.latest: dict[str, float | None] = dict.fromkeys(latest)
        self.start = self.printed = clock()
        self.first: tuple[float, float, dict[str, float]] | None = None  # (time, done, counts) then
        self.lock = threading.Lock()

    def advance(self, n: float = 1, **more: float) -> None:
        with self.lock:
            if self.first is None:
                self.first = (
                    self.clock(),
                    self.done + n,
                    {k: self.counts[k] + more.get(k, 0) for k in self.counts},
                )
            self.done += n
            for name, value in more.items():
                if name in self.latest:
                    self.latest[name] = value
                else:
                    self.counts[name] += value
        self.tick()

    def tick(self) -> None:
        """Print a line if `interval` seconds passed since the last one."""
        with self.lock:
            now = self.clock()
            if now - self.printed < self.interval:
                return
            self.printed = now
            line = self.line(now)
        self.console.print(line, highlight=False, markup=False, soft_wrap=True)

    def line(self, now: float) -> str:
        done = f"{self.done:,.0f}" + (f"/{self.total:,.0f}" if self.total is not None else "")
        parts = [f"{self.description} {done}"]
        since = None
        if self.first is not None and now > self.first[0] and self.done > self.first[1]:
            since = self.first
        for name, value in self.counts.items():
            part = f"{value:,.0f} {name}"
            if since is not None:
                part += f" ({(value - since[2][name]) / (now - since[0]):,.0f} {name}/s)"
            parts.append(part)
        parts += [f"{name} {value:.4g}" for name, value in self.latest.items() if value is not None]
        parts.append(f"elapsed {_clock(now - self.start)}")
        if since is not None and self.total is not None:
            per_unit = (now - since[0]) / (self.done - since[1])
            parts.append(f"ETA {_clock(max(0.0, self.total - self.done) * per_unit)}")
        return " | ".join(parts)


@contextmanager
def _heartbeat(lines: ProgressLines) -> Iterator[None]:
    """Tick `lines` every `interval` seconds from a thread, so a line comes while no unit finishes."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(lines.interval):
            lines.tick()

    thread = threading.Thread(target=beat, name="progress-lines", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextmanager
def progress_bar(
    description: str,
    total: float | None = None,
    counters: Sequence[str] = (),
    latest: Sequence[str] = (),
    *,
    console: Console = console,
    interval: float = LINE_INTERVAL_S,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Callable[..., None]]:
    """Yields `advance(n=1, **values)`: moves the progress by n, adds values named in `counters` to
    their totals (e.g. `counters=("tokens",)`, then `advance(1, tokens=181_000)`) and keeps the
    last of those named in `latest` (e.g. `loss=2.31`). `total=None`: no known end. On a terminal
    a bar; otherwise `ProgressLines` (every `interval` seconds of `clock`)."""
    if not console.is_terminal:
        lines = ProgressLines(description, total, counters, latest, console, interval, clock)
        with _heartbeat(lines):
            yield lines.advance
        return
    columns = [SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
    columns += [TextColumn(f"{{task.fields[{name}]:,}} {name}") for name in counters]
    columns += [TextColumn(f"{name} {{task.fields[{name}]}}") for name in latest]
    columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    counts = dict.fromkeys(counters, 0)
    shown = dict.fromkeys(latest, "-")
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(description, total=total, **counts, **shown)

        def advance(n: float = 1, **more: float) -> None:
            for name, value in more.items():
                if name in shown:
                    shown[name] = f"{value:.4g}"
                else:
                    counts[name] += value
            bar.update(task, advance=n, **counts, **shown)

        yield advance


def summary_table(title: str, rows: Sequence[tuple[str, str]]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(justify="right")
    for name, value in rows:
        table.add_row(name, value)
    return table


def print_summary(title: str, rows: Sequence[tuple[str, str]]) -> None:
    console.print(summary_table(title, rows))
