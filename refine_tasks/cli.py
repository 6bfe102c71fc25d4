"""`refine`: the command line. Each command is a thin wrapper over a library function."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console

from refine_tasks.config import ConfigError, PipelineConfig, load_config

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
