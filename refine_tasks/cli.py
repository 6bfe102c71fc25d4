"""`refine`: the command line. Each command is a thin wrapper over a library function."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.markup import escape

from refine_tasks.catalog import CatalogError
from refine_tasks.config import ConfigError, PipelineConfig, load_config
from refine_tasks.corpus import CorpusError, DropLog, corpus_texts, ingest
from refine_tasks.progress import print_summary, progress_bar
from refine_tasks.tokenizer import TokenizerError, build_tokenizer

app = typer.Typer(help="ReFINE pipeline for fast-weight language models.", no_args_is_help=True)
console = Console()

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="params.yaml to read (missing: defaults)")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="override a field: section.field=value (repeatable)")
]


def resolve(params: Path, overrides: list[str] | None) -> PipelineConfig:
    try:
        return load_config(params, overrides or [])
    except ConfigError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None


@app.command("config")
def show_config(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Print the resolved configuration (defaults + params.yaml + --set overrides) as YAML."""
    cfg = resolve(params, set_)
    console.print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


# --- corpus, tokenizer and the default pipeline -------------------------------------------------

Summary = list[tuple[str, str]]
StepFn = Callable[[PipelineConfig], Summary]
# Errors a step reports as one red line (they name the file/field and what to do); others are bugs.
STEP_ERRORS: tuple[type[Exception], ...] = (CorpusError, TokenizerError, CatalogError, ConfigError)
DROP_EXAMPLES_SHOWN = 3


def print_drops(drops: DropLog) -> None:
    for reason, n in sorted(drops.counts.items()):
        for message in drops.examples[reason][:DROP_EXAMPLES_SHOWN]:
            console.print(
                f"[yellow]dropped ({reason}):[/yellow] {escape(message)}", highlight=False, soft_wrap=True
            )
        if n > DROP_EXAMPLES_SHOWN:
            console.print(
                f"[yellow]dropped ({reason}):[/yellow] ... and {n - DROP_EXAMPLES_SHOWN:,} more (manifest.json)"
            )


def tokenizer_step(cfg: PipelineConfig) -> Summary:
    drops = DropLog()
    with progress_bar("tokenizer: reading documents") as advance:

        def counted(texts: Iterable[str]) -> Iterator[str]:
            for text in texts:
                advance()
                yield text

        report = build_tokenizer(cfg.tokenizer, cfg.paths.tokenizer_dir, counted(corpus_texts(cfg, drops)))
    return [*report.summary_rows(), ("documents dropped", f"{drops.total:,}")]


def ingest_step(cfg: PipelineConfig) -> Summary:
    with progress_bar("ingest: documents", counters=("tokens",)) as advance:
        report = ingest(cfg, on_progress=lambda docs, tokens: advance(docs, tokens=tokens))
    print_drops(report.drops)
    return report.summary_rows()


# `refine run`: the default pipeline, in order. A later stage appends ("name", step_fn) here.
RUN_STEPS: list[tuple[str, StepFn]] = [
    ("tokenizer", tokenizer_step),
    ("ingest", ingest_step),
]


def run_steps(cfg: PipelineConfig, steps: list[tuple[str, StepFn]]) -> None:
    for name, step in steps:
        try:
            rows = step(cfg)
        except STEP_ERRORS as e:
            console.print(f"[red]{name}: {escape(str(e))}[/red]", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print(
                f"[yellow]{name}: interrupted; the last complete outputs are kept, run again to resume[/]"
            )
            raise typer.Exit(130) from None
        print_summary(name, rows)


@app.command("tokenizer")
def tokenizer_command(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Train a byte-level BPE on the corpus (or import tokenizer.path) into paths.tokenizer_dir."""
    run_steps(resolve(params, set_), [("tokenizer", tokenizer_step)])


@app.command("ingest")
def ingest_command(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Clean, deduplicate and tokenise corpus.source into Arrow shards (paths.corpus_dir) and the catalog."""
    run_steps(resolve(params, set_), [("ingest", ingest_step)])


@app.command("run")
def run_command(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """Run the default pipeline (tokenizer, ingest, ...) on params.yaml or the embedded defaults."""
    run_steps(resolve(params, set_), RUN_STEPS)
