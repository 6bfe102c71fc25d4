"""`refine`: the command line. Each command is a thin wrapper over a library function."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.markup import escape

from refine_tasks.config import ConfigError, PipelineConfig, load_config
from refine_tasks.corpus import CorpusError, DropLog, corpus_texts, ingest
from refine_tasks.corpus.tokenizer import TokenizerError, build_tokenizer
from refine_tasks.errors import TRAINING_ERRORS, storage_errno, storage_message
from refine_tasks.evaluate import EvalError
from refine_tasks.pipeline.dvc_state import write_overrides
from refine_tasks.pipeline.lifecycle import (
    EVAL_STAGES,
    TRAIN_STAGES,
    LifecycleError,
    split_stage,
    stage_names,
)
from refine_tasks.pipeline.progress import print_summary, progress_bar
from refine_tasks.store.catalog import CatalogError

app = typer.Typer(help="ReFINE pipeline for fast-weight language models.", no_args_is_help=True)
console = Console()

ParamsOpt = Annotated[
    Path | None,
    typer.Option("--params", "-p", help="params file (default: ./params.yaml, else the embedded defaults)"),
]
DEFAULT_PARAMS = Path("params.yaml")
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="override a field: section.field=value (repeatable)")
]


def resolve(params: Path | None, overrides: list[str] | None) -> PipelineConfig:
    """The configuration: --params (which must exist when given), else ./params.yaml where there is
    one, else the embedded defaults; then the --set overrides."""
    try:
        if params is not None and not params.exists():
            raise ConfigError(
                f"--params {params}: no such file; name an existing params file, or leave --params out to "
                f"read ./{DEFAULT_PARAMS} (the embedded defaults where there is none)"
            )
        return load_config(params or DEFAULT_PARAMS, overrides or [])
    except ConfigError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None


def prepare_device(cfg: PipelineConfig, field: str, *, tracked: bool = False) -> None:
    """Before a step runs a model on the device `field` names (train.device or evaluate.device): a
    device this machine lacks is one red line; on a GPU the kernel cache is activated (before
    anything compiles) and a first compile on this GPU is announced, so a silent minute explains
    itself. CPU threads are chosen for the model (see pipeline.cpu_threads). `tracked`: the kernels
    go into the DVC-tracked folder (`refine warmup`, the `kernels` stage), not the work folder."""
    from refine_tasks.pipeline.cpu_threads import choose_cpu_threads
    from refine_tasks.pipeline.kernel_cache import activate, other_gpu_processes

    device = model_device(cfg, field)
    choose_cpu_threads(cfg, field)
    cache = activate(cfg, tracked=tracked)
    if cache is not None and device.type == "cuda" and cache.is_cold():
        console.print(f"[yellow]{escape(cache.cold_message())}[/yellow]", highlight=False, soft_wrap=True)
        others = other_gpu_processes()
        if others:
            console.print(
                f"[yellow]{escape(cache.busy_message(others))}[/yellow]", highlight=False, soft_wrap=True
            )


def model_device(cfg: PipelineConfig, field: str):
    """The torch device of `field`; one this machine lacks (or no device at all) is an error."""
    from refine_tasks.evaluate.runner import eval_device
    from refine_tasks.train.starting_model import resolve_device

    if field == "evaluate.device":
        return eval_device(cfg.evaluate.device)
    try:
        return resolve_device(cfg.train.device)
    except ConfigError:
        raise
    except (ValueError, RuntimeError) as e:  # torch.device's own error for a malformed name
        raise ConfigError(f"train.device = {cfg.train.device!r}: {e}") from None


@app.command("config")
def show_config(params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Print the resolved configuration (defaults + params.yaml + --set overrides) as YAML."""
    cfg = resolve(params, set_)
    console.print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


# --- corpus, tokenizer and the default pipeline -------------------------------------------------

Summary = list[tuple[str, str]]
StepFn = Callable[[PipelineConfig], Summary]
# Errors a step reports as one red line (they name the file/field and what to do); others are bugs.
STEP_ERRORS: tuple[type[Exception], ...] = (CorpusError, TokenizerError, CatalogError, ConfigError, EvalError)
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


def command_line(command: str, params: Path | None, overrides: list[str] | None, *extra: str) -> str:
    """The `refine` command line that runs `command` with these options again (for a hint)."""
    words = ["refine", command, *(["-p", str(params)] if params is not None else [])]
    words += [word for item in overrides or [] for word in ("--set", item)]
    return shlex.join([*words, *extra])


def run_steps(
    cfg: PipelineConfig, steps: list[tuple[str, StepFn]], resume_hint: Callable[[], str] | None = None
) -> None:
    """Run `steps` in order; an interrupt names `resume_hint()`, the command that continues, where given."""
    for name, step in steps:
        try:
            rows = step(cfg)
        except STEP_ERRORS as e:
            console.print(f"[red]{name}: {escape(str(e))}[/red]", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            again = f"`{resume_hint()}` continues" if resume_hint is not None else "run again to resume"
            console.print(
                f"[yellow]{name}: interrupted; the last complete outputs are kept, {escape(again)}[/]",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(130) from None
        except Exception as e:  # a full disk or read-only folder that no layer below translated
            code = storage_errno(e)
            if code is None:
                raise
            message = storage_message(code, getattr(e, "filename", None) or "an output", None, "run again")
            console.print(f"[red]{name}: {escape(message)}[/red]", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        print_summary(name, rows)


@app.command("tokenizer")
def tokenizer_command(params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Train a byte-level BPE on the corpus (or import tokenizer.path) into paths.tokenizer_dir."""
    run_steps(resolve(params, set_), [("tokenizer", tokenizer_step)])


@app.command("ingest")
def ingest_command(params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Clean, deduplicate and tokenise corpus.source into Arrow shards (paths.corpus_dir) and the catalog."""
    run_steps(resolve(params, set_), [("ingest", ingest_step)])


# --- evaluation and reports -----------------------------------------------------------------------


def evaluate_step(cfg: PipelineConfig) -> Summary:
    from rich.table import Table

    from refine_tasks.evaluate.report import FAMILY_TITLES
    from refine_tasks.evaluate.results import task_summary
    from refine_tasks.evaluate.runner import build_records, load_eval_model, run_evaluation

    prepare_device(cfg, "evaluate.device")
    model, tokenizer, checkpoint = load_eval_model(cfg)
    with console.status("evaluate: building records"):
        records = build_records(cfg.evaluate, tokenizer, cfg.seed)
    adapt = None
    if cfg.ttt.objective != "none":
        from refine_tasks.train.ttt import TestTimeTrainer

        adapt = TestTimeTrainer(model, cfg)
    with progress_bar("evaluate: samples", total=len(records)) as advance:
        run = run_evaluation(
            cfg, model, tokenizer, checkpoint=checkpoint, records=records, on_batch=advance, adapt=adapt
        )
    table = Table(title=f"evaluate: {run.run}", title_justify="left")
    for column in ("family", "task", "metric", "samples"):
        table.add_column(column)
    table.add_column("score", justify="right")
    families = list(FAMILY_TITLES)
    tasks = sorted(task_summary(run.results).items(), key=lambda kv: (families.index(kv[1]["family"]), kv[0]))
    for task, t in tasks:
        table.add_row(t["family"], task, t["metric"], str(t["n_samples"]), f"{t['score']:.2f}")
    console.print(table)
    return [
        ("run", run.run),
        ("checkpoint", run.checkpoint),
        ("samples", f"{len(run.results):,}"),
        ("generated tokens", f"{run.generated_tokens:,}"),
        ("seconds", f"{run.seconds:.1f}"),
        ("samples/s", f"{len(run.results) / run.seconds:.2f}"),
        ("generated tokens/s", f"{run.generated_tokens / run.seconds:.1f}"),
        ("per-sample results", str(run.paths["samples"])),
        ("per-task scores", str(run.paths["scores"])),
    ]


@app.command("evaluate")
def evaluate_command(
    params: ParamsOpt = None,
    set_: SetOpt = None,
    checkpoint: Annotated[
        str | None,
        typer.Option(
            "--checkpoint",
            "-c",
            help="model directory, or a training run / its checkpoints/latest: the latest checkpoint "
            "(sets evaluate.checkpoint)",
        ),
    ] = None,
    run: Annotated[str | None, typer.Option("--run", "-r", help="run name (sets evaluate.run)")] = None,
    ttt: Annotated[
        str | None,
        typer.Option(
            "--ttt",
            help="test-time training before each batch: refine (NTP + ttt.coef x GRPO), sft (NTP) or none "
            "(sets ttt.objective; ttt.mode: reset or accumulate)",
        ),
    ] = None,
) -> None:
    """Evaluate a model on RULER NIAH, RULER QA and LongBench (evaluate.*): greedy answers, official
    metrics (evaluate.protocol=paper: the paper's); writes <output_dir>/<run>/samples.parquet,
    scores.json and the catalog's eval_results. With --ttt the model adapts to each batch's prompts
    first (in memory only: the checkpoint is never written)."""
    extra = [f"evaluate.checkpoint={checkpoint}"] if checkpoint else []
    extra += [f"evaluate.run={run}"] if run else []
    extra += [f"ttt.objective={ttt}"] if ttt else []
    run_steps(resolve(params, [*(set_ or []), *extra]), [("evaluate", evaluate_step)])


@app.command("report")
def report_command(
    params: ParamsOpt = None,
    set_: SetOpt = None,
    runs: Annotated[
        list[str] | None,
        typer.Option("--run", "-r", help="run to include, in column order (repeatable; default: all)"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="output folder (default: evaluate.report_dir)")
    ] = None,
    experiment: Annotated[
        bool,
        typer.Option("--experiment", help="the experiment's page from the lifecycle's outputs at every seed"),
    ] = False,
    ablations_from: Annotated[
        Path | None,
        typer.Option(
            "--ablations-from",
            help="--experiment: the ablations from another lifecycle run's outputs under this folder "
            "(data/runs, data/eval, data/experiment, ...), compared with that run's own base, SFT and ReFINE",
        ),
    ] = None,
) -> None:
    """Write evaluation reports from the catalog: a markdown table per run, a comparison across runs,
    a NIAH heat-map (length x depth) per run and LongBench per-task bars. With --experiment: the
    experiment's page instead (lifecycle.results_dir/results.md and results.json; `refine experiment`)."""
    from refine_tasks.evaluate.report import write_report

    cfg = resolve(params, set_)
    if ablations_from is not None and not experiment:
        raise typer.BadParameter("--ablations-from goes with --experiment", param_hint="--ablations-from")
    if experiment:
        run_steps(cfg, [("results", lambda c: results_step(c, ablations_from))])
        return

    def report_step(cfg: PipelineConfig) -> Summary:
        files = write_report(cfg.paths.catalog, runs, out or cfg.evaluate.report_dir)
        return [(f.suffix.lstrip(".") or "file", str(f)) for f in files]

    run_steps(cfg, [("report", report_step)])


def results_step(cfg: PipelineConfig, ablations_from: Path | None = None) -> Summary:
    from refine_tasks.pipeline.experiment import write_experiment_results

    md, js = write_experiment_results(cfg, ablations_from=ablations_from)
    return [("results", str(md)), ("numbers", str(js))]


def seeds_step(cfg: PipelineConfig) -> Summary:
    from refine_tasks.pipeline.experiment import run_seeds

    prepare_device(cfg, "train.device")
    done = run_seeds(
        cfg, on_stage=lambda seed, result: print_summary(f"seed {seed}: {result.name}", result.shown_rows())
    )
    return [("stages run", f"{len(done)}"), ("seeds", ", ".join(map(str, cfg.lifecycle.seeds)) or "-")]


def ablations_step(cfg: PipelineConfig) -> Summary:
    from refine_tasks.pipeline.experiment import run_ablations, should_ablate

    run, why = should_ablate(cfg)
    if not run:
        return [("ablations", f"not run: {why}")]
    prepare_device(cfg, "train.device")
    done = run_ablations(
        cfg,
        on_stage=lambda name, result: print_summary(f"ablation {name}: {result.name}", result.shown_rows()),
    )
    return [
        ("ablations", f"run: {why}"),
        ("stages run", f"{len(done)}"),
        ("names", ", ".join(cfg.lifecycle.ablations)),
    ]


@app.command("experiment")
def experiment_command(
    params: ParamsOpt = None,
    set_: SetOpt = None,
    seeds_only: Annotated[
        bool, typer.Option("--seeds-only", help="skip the lifecycle at `seed` (already run by `refine run`)")
    ] = False,
) -> None:
    """The experiment: the whole lifecycle (as `refine run`) at `seed`, then SFT and ReFINE from the
    same base at every seed of lifecycle.seeds (their positions, training and evaluations), then
    the ablations of lifecycle.ablations when ReFINE beats SFT on no primary metric (lifecycle.ablate), then
    the page: lifecycle.results_dir/results.md and results.json (means, bootstrap 95% CIs, the
    paired ReFINE - SFT difference, the ablations' table, heat-maps and curves)."""
    steps = [] if seeds_only else list(RUN_STEPS)
    run_steps(
        resolve(params, set_),
        [*steps, ("seeds", seeds_step), ("ablations", ablations_step), ("results", results_step)],
    )


# --- ReFINE mid-training: positions cache and the trainer ------------------------------------------


def positions_step(cfg: PipelineConfig) -> Summary:
    from refine_tasks.train.positions import precompute_positions

    prepare_device(cfg, "train.device")
    with progress_bar("positions: sequences") as advance:
        report = precompute_positions(cfg, on_progress=advance)
    return report.summary_rows()


def train_step(cfg: PipelineConfig, resume: bool | None = None) -> Summary:
    """resume=None (the `refine run` pipeline): continue the run in train.out_dir if it has a checkpoint."""
    from refine_tasks.pipeline.launch import TRAIN, launch_training, nproc_per_node
    from refine_tasks.train.trainer import MidTrainer

    if resume is None:
        resume = (Path(cfg.train.out_dir) / "checkpoints" / "latest").exists()
    nproc = nproc_per_node(cfg)
    if nproc > 1:  # torchrun's ranks train; rank 0 writes train.out_dir as one process would
        launch_training(TRAIN, cfg, nproc, resume)
        metrics = Path(cfg.train.out_dir) / "metrics.jsonl"
        return [("processes", str(nproc)), ("parallel", cfg.train.parallel), ("metrics", str(metrics))]
    prepare_device(cfg, "train.device")
    trainer = MidTrainer(cfg, resume)
    total = trainer.total - trainer.step
    with progress_bar("train: steps", total=total, counters=("tokens",), latest=("loss",)) as advance:
        result = trainer.run(on_step=lambda line: advance(1, tokens=line["tokens"], loss=line["loss"]))
    return result.summary_rows()


STEP_ERRORS += TRAINING_ERRORS


def posttrain_step(cfg: PipelineConfig) -> Summary:
    from refine_tasks.train.posttrain import posttrain

    prepare_device(cfg, "train.device")
    with progress_bar("posttrain: batches", latest=("answer_loss",)) as advance:
        result = posttrain(cfg, on_step=lambda line: advance(1, answer_loss=line["answer_loss"]))
    return result.summary_rows()


@app.command("posttrain")
def posttrain_command(params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Post-train a mid-trained checkpoint (posttrain.init_from) on the QA data (qa_data.out_dir, built by
    `refine stage qa_data`): posttrain.variant sft, nested-sft or nested-refine; metrics and the final
    checkpoint go to posttrain.out_dir."""
    run_steps(resolve(params, set_), [("posttrain", posttrain_step)])


@app.command("positions")
def positions_command(params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Select rollout positions for every training sequence with the starting weights and cache them in
    the catalog (for positions.policy=precomputed; keyed by the weights' fingerprint)."""
    run_steps(resolve(params, set_), [("positions", positions_step)])


@app.command("train")
def train_command(
    params: ParamsOpt = None,
    set_: SetOpt = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="continue the run in train.out_dir from its latest checkpoint")
    ] = False,
) -> None:
    """Mid-train with ReFINE (refine.coef=0: the NTP baseline) on the corpus's long documents; metrics,
    TensorBoard and checkpoints go to train.out_dir."""
    cfg = resolve(params, set_)

    def resume_hint() -> str:
        """--resume once a checkpoint exists (before the first one, a plain rerun starts over)."""
        started = (Path(cfg.train.out_dir) / "checkpoints" / "latest").exists()
        return command_line("train", params, set_, *(["--resume"] if started else []))

    run_steps(cfg, [("train", lambda cfg: train_step(cfg, resume))], resume_hint)


def warmup_step(cfg: PipelineConfig) -> Summary:
    """Compile the configured shapes' GPU kernels into the kernel cache (nothing to do on a CPU)."""
    from refine_tasks.pipeline.lifecycle import warm_kernels

    model_device(cfg, "evaluate.device")  # a device this machine lacks: one red line, before any work
    prepare_device(cfg, "train.device", tracked=True)
    return warm_kernels(cfg).rows


@app.command("warmup")
def warmup_command(params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Compile and autotune the GPU kernels of the configured shapes ahead of time (one NTP and one
    ReFINE micro-step at train.seq_len, generation at every prefill length up to
    evaluate.max_prompt_tokens, on random tokens) into paths.kernel_cache, which later runs, and
    other nodes after `dvc pull`, reuse (the `kernels` stage). On a CPU there is nothing to compile."""
    run_steps(resolve(params, set_), [("warmup", warmup_step)])


# --- the lifecycle: one stage (what dvc.yaml runs), or all of them (`refine run`, `make run`) --------

STEP_ERRORS += (LifecycleError,)


def stage_step(name: str, tracked: bool) -> StepFn:
    """Step running lifecycle stage `name`: tracked, as `dvc repro` would (skipped when up to date,
    outputs committed to DVC when cfg is the repository's params.yaml), else just the stage."""
    from refine_tasks.pipeline.lifecycle import run_stage, run_tracked

    runner = run_tracked if tracked else run_stage

    def step(cfg: PipelineConfig) -> Summary:
        stage, _ = split_stage(name)
        training = stage in TRAIN_STAGES
        if training or stage in ("positions", "kernels", "posttrain"):
            prepare_device(cfg, "train.device", tracked=stage == "kernels")
        elif stage in EVAL_STAGES or stage.startswith("eval_"):
            prepare_device(cfg, "evaluate.device")
        counters, latest = (("tokens",), ("loss",)) if training else ((), ())

        def on_step(line: dict) -> None:
            advance(line.get("done", 1), **{k: line[k] for k in (*counters, *latest) if k in line})

        with progress_bar(f"{name}: work", counters=counters, latest=latest) as advance:
            result = runner(name, cfg, on_step=on_step)
        if result.notice:
            console.print(f"[yellow]{escape(result.notice)}[/yellow]", highlight=False, soft_wrap=True)
        return result.shown_rows()

    return step


def comparison_step(cfg: PipelineConfig) -> Summary:
    """Print the comparison of base, SFT and ReFINE (the report stage's table) and where it is."""
    from rich.table import Table

    from refine_tasks.pipeline.lifecycle import comparison

    header, rows = comparison(cfg)
    table = Table(title="base vs SFT vs ReFINE (scores x 100)", title_justify="left")
    for i, column in enumerate(header):
        table.add_column(column, justify="right" if i >= 2 else "left")
    for row in rows:
        table.add_row(*(cell.replace("**", "") for cell in row))
    console.print(table)
    return [("report", str((Path(cfg.evaluate.report_dir) / "comparison.md").resolve()))]


# `refine run`: the default pipeline, in order: every lifecycle stage, then the comparison table.
RUN_STEPS: list[tuple[str, StepFn]] = [
    *((name, stage_step(name, tracked=True)) for name in stage_names()),
    ("comparison", comparison_step),
]


@app.command("run")
def run_command(
    params: ParamsOpt = None,
    set_: SetOpt = None,
    until: Annotated[
        str | None, typer.Option("--until", "-u", help="stop after this stage (e.g. corpus, base)")
    ] = None,
) -> None:
    """Run the whole lifecycle on params.yaml or the embedded defaults: tokenizer, corpus, base model,
    positions, SFT and ReFINE mid-training, evaluations, report; then print the comparison. In a DVC
    repository with its own params.yaml, stages that are up to date are skipped and new outputs are
    committed (`dvc status` is clean afterwards, as after `dvc repro`); --set overrides are written
    into that params.yaml first, as `dvc exp run -S` does, so only the stages they change run."""
    names = [name for name, _ in RUN_STEPS]
    if until is not None and until not in names:
        console.print(f"[red]run: --until {escape(until)}: unknown stage; stages: {', '.join(names)}[/red]")
        raise typer.Exit(2)
    steps = RUN_STEPS[: names.index(until) + 1] if until is not None else RUN_STEPS
    cfg = resolve(params, set_)  # a bad override is refused here, before params.yaml changes
    write_overrides(params, set_ or [])  # in a DVC repository: into its params.yaml, as dvc exp run -S
    run_steps(cfg, steps)


@app.command("stage")
def stage_command(
    name: Annotated[str, typer.Argument(help="lifecycle stage, e.g. base, midtrain_refine, eval_qa@sft")],
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Run one lifecycle stage on fresh outputs (each dvc.yaml stage runs this; `dvc repro` records
    it). A stage that fails leaves its previous outputs as they were."""
    run_steps(resolve(params, set_), [(name, stage_step(name, tracked=False))])


# --- Prefect flow runs ------------------------------------------------------------------------------


def flow_run_outcome(flow_run) -> tuple[int, str]:
    """(exit code, line) for a finished Prefect flow run: its state, and for one that did not
    complete the state's message (the flow's error, e.g. the stage's bad input)."""
    state = flow_run.state
    if state is not None and state.is_completed():
        return 0, f"flow run {flow_run.name}: {state.name}"
    name = state.name if state is not None else "unknown"
    message = (state.message if state is not None else None) or "no message; see `prefect flow-run logs`"
    return 1, f"flow run {flow_run.name}: {name}: {message}"


@app.command("watch")
def watch_command(
    flow_run_id: Annotated[
        str, typer.Argument(help="the flow run's UUID (`prefect deployment run` prints it)")
    ],
    timeout: Annotated[
        int | None, typer.Option("--timeout", help="stop watching after this many seconds")
    ] = None,
) -> None:
    """Follow a Prefect flow run (its logs and events, as `prefect deployment run --watch` shows them)
    until it ends, then say how it ended: for a failed run, its error, not only `Failed`."""
    import asyncio
    from uuid import UUID

    from prefect.cli.flow_runs_watching import watch_flow_run

    try:
        run_id = UUID(flow_run_id)
    except ValueError:
        console.print(f"[red]watch: {escape(flow_run_id)}: not a flow run id (a UUID)[/red]")
        raise typer.Exit(2) from None
    flow_run = asyncio.run(watch_flow_run(run_id, console, timeout=timeout))
    code, line = flow_run_outcome(flow_run)
    console.print(f"[{'green' if code == 0 else 'red'}]{escape(line)}[/]", highlight=False, soft_wrap=True)
    raise typer.Exit(code)
