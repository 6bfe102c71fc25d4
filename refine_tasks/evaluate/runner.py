"""The evaluation step: build the records, generate greedily, score, and store the results.

    cfg = load_config("params.yaml")
    model, tokenizer, checkpoint = load_eval_model(cfg)
    run = run_evaluation(cfg, model, tokenizer, checkpoint=checkpoint)

writes `<output_dir>/<run>/samples.parquet` and `scores.json`, and the run's rows of the
catalog's `eval_results` table.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast

from refine_tasks.config import EvalConfig, PipelineConfig
from refine_tasks.corpus.tokenizer import load_tokenizer
from refine_tasks.errors import writing_to
from refine_tasks.evaluate.generate import GenerationRequest, greedy_generate, prefill_pieces
from refine_tasks.evaluate.longbench import available_tasks, read_longbench, truncate_middle
from refine_tasks.evaluate.metrics import score_sample
from refine_tasks.evaluate.niah import niah_records
from refine_tasks.evaluate.qa import read_ruler_qa_files
from refine_tasks.evaluate.records import EvalError, EvalRecord
from refine_tasks.evaluate.results import SampleResult, cell_rows, store_eval_results, write_outputs
from refine_tasks.evaluate.sizing import Tokenizer
from refine_tasks.models import FastWeightForCausalLM, build_model, load_model
from refine_tasks.models.checkpoint import LATEST, damaged_weights, latest_checkpoint
from refine_tasks.store.catalog_wait import waiting_writer

PAPER_MAX_NEW_TOKENS = 32  # evaluate.protocol = paper: every LongBench task's budget
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class EvalRun:
    run: str
    checkpoint: str
    results: list[SampleResult]
    paths: dict[str, Path]
    seconds: float

    @property
    def generated_tokens(self) -> int:
        return sum(r.new_tokens for r in self.results)


# The NIAH grid of the last build_records in this process, by tokenizer and settings: each record's
# haystack is sized with ~6 encodings of a whole prompt (8.8 s for 320 records at 1K-8K on 2 CPU
# cores), and `refine run` / `refine experiment` evaluate base, SFT, ReFINE and every ablation of a
# seed on the same grid, one stage after another in one process.
_NIAH_GRIDS: dict[tuple, list[EvalRecord]] = {}


def _tokenizer_key(tokenizer: Tokenizer) -> str | None:
    """A fast tokenizer's whole definition, hashed (None for other tokenizers: nothing is cached)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    import hashlib

    return hashlib.sha256(backend.to_str().encode()).hexdigest()


def build_records(cfg: EvalConfig, tokenizer: Tokenizer, seed: int = 0) -> list[EvalRecord]:
    """Every record the configuration asks for, family by family."""
    records: list[EvalRecord] = []
    if "niah" in cfg.families:
        too_long = [n for n in cfg.niah_lengths if n - cfg.niah_max_new_tokens > cfg.max_prompt_tokens]
        if too_long:
            raise EvalError(
                f"evaluate.niah_lengths {too_long}: prompts would exceed evaluate.max_prompt_tokens="
                f"{cfg.max_prompt_tokens} and lose the middle of the haystack; raise max_prompt_tokens"
            )
        tokenizer_key = _tokenizer_key(tokenizer)
        key = (tokenizer_key, *map(tuple, (cfg.niah_variants, cfg.niah_lengths, cfg.niah_depths)))
        key += (cfg.niah_samples, seed, cfg.niah_max_new_tokens, cfg.haystack)
        grid = _NIAH_GRIDS.get(key) if tokenizer_key is not None else None
        if grid is None:
            grid = niah_records(
                cfg.niah_variants,
                tokenizer,
                cfg.niah_lengths,
                cfg.niah_depths,
                samples=cfg.niah_samples,
                seed=seed,
                max_new_tokens=cfg.niah_max_new_tokens,
                haystack=cfg.haystack,
            )
            if tokenizer_key is not None:
                _NIAH_GRIDS.clear()  # one grid kept: a seed's or an ablation's stages share it
                _NIAH_GRIDS[key] = grid
        records += [replace(r, meta=dict(r.meta)) for r in grid]
    if "ruler_qa" in cfg.families:
        records += read_ruler_qa_files(
            cfg.ruler_qa_files, limit=cfg.qa_samples, max_new_tokens=cfg.qa_max_new_tokens
        )
    if "longbench" in cfg.families:
        for task in cfg.longbench_tasks or available_tasks(cfg.longbench_source):
            task_records = read_longbench(cfg.longbench_source, task, limit=cfg.longbench_samples)
            if cfg.protocol == "paper":  # the reference generates 32 new tokens for every task
                task_records = [replace(r, max_new_tokens=PAPER_MAX_NEW_TOKENS) for r in task_records]
            records += task_records
    return records


# Adapts the model to one batch's prompts (token ids) before they are answered: test-time training.
Adapt = Callable[[list[list[int]]], None]


def _generate(
    model: FastWeightForCausalLM,
    tokenizer: Tokenizer,
    requests: list[GenerationRequest],
    batch_size: int,
    on_batch: Callable[[int], None] | None,
    adapt: Adapt | None,
) -> list[list[int]]:
    """Greedy generations; with `adapt`, batches of `batch_size` in record order, each answered
    right after `adapt` saw its prompts (the batch is then generated as one)."""
    if adapt is None:
        return greedy_generate(
            model,
            requests,
            tokenizer,
            batch_size=batch_size,
            eos_token_id=tokenizer.eos_token_id,
            on_batch=on_batch,
        )
    outputs: list[list[int]] = []
    for start in range(0, len(requests), batch_size):
        chunk = requests[start : start + batch_size]
        adapt([list(r.prompt) for r in chunk])
        outputs += greedy_generate(
            model, chunk, tokenizer, batch_size=len(chunk), eos_token_id=tokenizer.eos_token_id
        )
        if on_batch is not None:
            on_batch(len(chunk))
    return outputs


def evaluate_records(
    model: FastWeightForCausalLM,
    tokenizer: Tokenizer,
    records: list[EvalRecord],
    *,
    batch_size: int = 8,
    max_prompt_tokens: int = 4096,
    on_batch: Callable[[int], None] | None = None,
    protocol: str = "official",
    adapt: Adapt | None = None,
) -> list[SampleResult]:
    """Generate an answer for every record and score it under `protocol` (official or paper).
    With `adapt` (test-time training), records are answered in batches of `batch_size` in their
    order, `adapt` called with each batch's prompts first."""
    prompts = [truncate_middle(tokenizer.encode(r.prompt), max_prompt_tokens) for r in records]
    requests = [
        GenerationRequest(ids, r.max_new_tokens, r.stop_on_newline)
        for r, (ids, _) in zip(records, prompts, strict=True)
    ]
    generations = _generate(model, tokenizer, requests, batch_size, on_batch, adapt)
    results = []
    for record, (ids, truncated), tokens in zip(records, prompts, generations, strict=True):
        prediction = tokenizer.decode(tokens, skip_special_tokens=True)
        score = score_sample(
            record.metric,
            record.task,
            prediction,
            record.references,
            record.meta.get("all_classes", ()),
            protocol=protocol,
        )
        results.append(SampleResult(record, prediction, score, len(ids), len(tokens), truncated))
    return results


def eval_device(name: str) -> torch.device:
    """evaluate.device as a torch device; a CUDA device on a machine without one is an EvalError."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise EvalError(f"evaluate.device = {name!r}: not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EvalError(f"evaluate.device = {name!r}: no CUDA device here; use evaluate.device=cpu")
    return device


def eval_dtype(name: str, device: torch.device) -> torch.dtype:
    """evaluate.dtype on `device`: auto is bfloat16 on CUDA (fla's chunked kernels refuse
    float32), float32 elsewhere."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[name]


def resolve_checkpoint(checkpoint: str) -> Path:
    """The model directory `checkpoint` names: a model directory itself; a training run's
    `.../checkpoints/latest` pointer, its `checkpoints` folder or the run directory (each: the
    checkpoint `latest` names)."""
    path = Path(checkpoint)
    if (path / "config.json").is_file():
        return path
    if path.is_file() and path.name == LATEST:
        root = path.parent
    elif (path / LATEST).is_file() or path.name == "checkpoints":
        root = path
    elif (path / "checkpoints").is_dir():
        root = path / "checkpoints"
    else:
        raise EvalError(
            f"evaluate.checkpoint = {checkpoint!r}: no config.json; not a model directory, a training run "
            f"directory or its checkpoints/{LATEST}"
        )
    found = latest_checkpoint(root)
    if found is None:
        raise EvalError(
            f"evaluate.checkpoint = {checkpoint!r}: {root} holds no completed checkpoint (no {LATEST} "
            "pointer); evaluate once the run wrote its first checkpoint, or name a model directory"
        )
    return found


def load_eval_model(cfg: PipelineConfig) -> tuple[FastWeightForCausalLM, PreTrainedTokenizerFast, str]:
    """(model, tokenizer, checkpoint label): `evaluate.checkpoint` (see `resolve_checkpoint`), else
    `model.init_from`, else a fresh `model.preset` (seeded with `seed`) with the project tokenizer;
    on evaluate.device/dtype."""
    ev = cfg.evaluate
    device = eval_device(ev.device)
    dtype = eval_dtype(ev.dtype, device)
    checkpoint = ev.checkpoint or cfg.model.init_from
    if checkpoint is not None:
        path = resolve_checkpoint(checkpoint)
        damage = damaged_weights(path)
        if damage is not None:
            raise EvalError(
                f"evaluate.checkpoint = {checkpoint!r}: {damage}; copy or save the checkpoint again, or "
                "evaluate another one"
            )
        model = load_model(path, cfg.model)
        tokenizer = load_tokenizer(path if (path / "tokenizer.json").is_file() else _tokenizer_path(cfg))
        label = str(path)
    else:
        tokenizer = load_tokenizer(_tokenizer_path(cfg))
        torch.manual_seed(cfg.seed)
        model = build_model(
            cfg.model.preset, vocab_size=len(tokenizer), mixer=cfg.model.mixer, **cfg.model.kernel_fields()
        )
        label = f"random:{cfg.model.preset}:{cfg.model.mixer}:seed{cfg.seed}"
    model = model.to(device=device, dtype=dtype).eval()
    if dtype == torch.float32 and model.backend == "triton" and model.config.mixer == "deltanet":
        raise EvalError(
            f"evaluate.dtype = {ev.dtype!r} on {device}: fla's chunked delta-rule kernels refuse float32; "
            "use evaluate.dtype=auto (bfloat16 on CUDA)"
        )
    return model, tokenizer, label


@dataclass
class GenerationWarmup:
    """What `warm_generation` ran: the prefill lengths (buckets), the streams of the decode batch."""

    prefill_lengths: list[int]
    decode_streams: int
    generated_tokens: int

    def summary_rows(self) -> list[tuple[str, str]]:
        return [
            ("prefill lengths", ", ".join(str(n) for n in self.prefill_lengths)),
            ("decode streams", f"{self.decode_streams} down to 1"),
        ]


def warmup_prompt_lengths(max_prompt_tokens: int) -> list[int]:
    """Two prompt lengths whose prefill pieces are every bucket up to max_prompt_tokens: the
    largest power of two that fits, and one less (all the smaller powers)."""
    top = 1 << (max_prompt_tokens.bit_length() - 1)
    return [top, top - 1] if top > 1 else [1]


def warm_generation(
    cfg: PipelineConfig, model: FastWeightForCausalLM, tokenizer: Tokenizer
) -> GenerationWarmup:
    """Evaluation's part of `refine warmup`: greedy generation as `refine evaluate` runs it, on
    evaluate.device/dtype, for evaluate.batch_size random prompts whose prefill pieces are every
    sequence-length bucket up to evaluate.max_prompt_tokens; stream j stops after j + 1 tokens,
    so the decode batch runs at each size it compacts to. `model` is moved and cast in place."""
    ev = cfg.evaluate
    device = eval_device(ev.device)
    model = model.to(device=device, dtype=eval_dtype(ev.dtype, device)).eval()
    lengths = warmup_prompt_lengths(ev.max_prompt_tokens)
    generator = torch.Generator().manual_seed(cfg.seed)
    requests = [
        GenerationRequest(
            torch.randint(
                0, model.config.vocab_size, (lengths[j % len(lengths)],), generator=generator
            ).tolist(),
            max_new_tokens=j + 1,
        )
        for j in range(ev.batch_size)
    ]
    outputs = greedy_generate(model, requests, tokenizer, batch_size=ev.batch_size)
    buckets = sorted({p for n in lengths[: ev.batch_size] for p in prefill_pieces(n)})
    return GenerationWarmup(buckets, len(requests), sum(len(o) for o in outputs))


def _tokenizer_path(cfg: PipelineConfig) -> Path:
    return Path(cfg.tokenizer.path) if cfg.tokenizer.path else cfg.paths.tokenizer_dir


def run_evaluation(
    cfg: PipelineConfig,
    model: FastWeightForCausalLM,
    tokenizer: Tokenizer,
    *,
    checkpoint: str,
    records: list[EvalRecord] | None = None,
    on_batch: Callable[[int], None] | None = None,
    adapt: Adapt | None = None,
) -> EvalRun:
    """Evaluate `model` on `records` (default: `build_records`) and store everything for run
    `evaluate.run`: files under `<output_dir>/<run>/` and the rows of `eval_results`. `adapt`:
    test-time training before each batch (see `evaluate_records`)."""
    ev = cfg.evaluate
    if records is None:
        records = build_records(ev, tokenizer, cfg.seed)
    if not records:
        raise EvalError("evaluate: no records; check evaluate.families and the data paths")
    start = time.perf_counter()
    results = evaluate_records(
        model,
        tokenizer,
        records,
        batch_size=ev.batch_size,
        max_prompt_tokens=ev.max_prompt_tokens,
        on_batch=on_batch,
        protocol=ev.protocol,
        adapt=adapt,
    )
    seconds = time.perf_counter() - start
    out = ev.output_dir / ev.run
    with writing_to(out, "evaluate.output_dir", "run `refine evaluate` again"):
        paths = write_outputs(results, out, ev.run, checkpoint)
    # another command's write (a stage beside this evaluation) takes a moment: wait for it
    with waiting_writer(cfg.paths.catalog) as con:
        store_eval_results(con, cell_rows(results, ev.run, checkpoint))
    return EvalRun(ev.run, checkpoint, results, paths, seconds)
