"""Terminal output shared by the commands: a progress bar for long work, a summary table at the end.

Library functions take plain callbacks (`advance(n)`); the CLI builds them with `progress_bar`,
so the library never draws on a terminal itself. Bars show only on an interactive terminal;
logs and CI get the summary tables alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

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


@contextmanager
def progress_bar(
    description: str, total: float | None = None, counters: Sequence[str] = ()
) -> Iterator[Callable[..., None]]:
    """Yields `advance(n=1, **counts)`: moves the bar by n and adds `counts` to the named `counters`
    (e.g. `counters=("tokens",)`, then `advance(64, tokens=181_000)`). `total=None`: no known end."""
    columns = [SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
    columns += [TextColumn(f"{{task.fields[{name}]:,}} {name}") for name in counters]
    columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    counts = dict.fromkeys(counters, 0)
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=total, **counts)

        def advance(n: float = 1, **more: float) -> None:
            for name, value in more.items():
                counts[name] += value
            bar.update(task, advance=n, **counts)

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
