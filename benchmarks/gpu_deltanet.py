"""DeltaNet on the GPU: correctness against fla's own model, then the issue's timings, in one run.

Checks (bf16): our model with fla kernels vs fla's `DeltaNetForCausalLM` holding the same
weights (logits, loss); `forward_branched` vs each prefix+branch as its own sequence (logits
and parameter gradients); graph decode vs eager decode vs prefill; the chained delta rule's
state-chain kernels and torch path vs a float32 reference.
Timings: training tokens/s of ours vs fla's (`small`, `paper-1.3b`; 1 x 16384 tokens, fwd+bwd,
same card, same run); peak memory of our 16K step at 1.3B; decode step at 1.3B for 8 and 64
streams; 64 streams decoded from captured states vs re-prefilling each prefix.

    python benchmarks/gpu_deltanet.py --out $OUT              # on the device machine
    python benchmarks/gpu_deltanet.py --out /tmp/x --dry-run  # logic check on a CPU (tiny shapes)

Writes OUT/results.jsonl (import with `python benchmarks/record.py --import`), prints a table
(the same rows go to OUT/summary.json).
Phases run in order of importance and are skipped when the time budget would be overrun.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.record import FigureLog  # noqa: E402
from refine_tasks.models import FastWeightForCausalLM, State, build_model  # noqa: E402
from refine_tasks.models.branched import forward_branched_naive  # noqa: E402
from refine_tasks.models.checkpoint import FLA_DEFAULTS  # noqa: E402
from refine_tasks.models.deltanet.segments import chained_delta_rule  # noqa: E402

COMMAND = "python benchmarks/gpu_deltanet.py"
VOCAB = 32000
# Checks run at the 1.3B layer shape (so they share the big model's Triton autotuning) with 2 layers.
CHECK_SHAPE = {"num_hidden_layers": 2}
CHECK_NAME = "paper-1.3b shape, 2 layers"
ROWS: list[tuple[str, str, str]] = []  # (name, value, verdict) for the closing table


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cuda = not args.dry_run
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        self.card = torch.cuda.get_device_name() if self.cuda else "cpu-dry-run"
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.md = Path(tempfile.gettempdir()) / "gpu_deltanet_RESULTS.md"  # OUT returns few files: jsonl only
        self.t0 = time.time()

    def preset(self, name: str) -> str:
        return "tiny" if self.args.dry_run else name

    def tokens(self, n: int) -> int:
        return min(n, 96) if self.args.dry_run else n

    def emit(self, metric: str, value: float, unit: str, note: str = "", verdict: str = "") -> None:
        FigureLog(self.card, COMMAND, self.out / "results.jsonl", self.md, ROWS).emit(
            metric, value, unit, note, verdict
        )

    def left(self) -> float:
        return self.args.budget_s - (time.time() - self.t0)

    def model(self, preset: str, seed: int = 0, **overrides) -> FastWeightForCausalLM:
        torch.manual_seed(seed)
        return build_model(self.preset(preset), VOCAB, **overrides).to(self.device, self.dtype)

    def ids(self, *shape: int, seed: int = 1) -> torch.Tensor:
        g = torch.Generator(device="cpu").manual_seed(seed)
        return torch.randint(0, VOCAB, shape, generator=g).to(self.device)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def time_ms(self, fn: Callable[[], object], reps: int, warmup: int = 1) -> float:
        """Median wall time of `fn` in ms (synchronised before and after each call)."""
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(reps):
            self.sync()
            start = time.perf_counter()
            fn()
            self.sync()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def fla_twin(model: FastWeightForCausalLM):
    """fla's DeltaNetForCausalLM with our model's config and weights."""
    from fla.models import DeltaNetConfig, DeltaNetForCausalLM

    # The fields our config shares with fla's (the same map that loads fla checkpoints).
    config = DeltaNetConfig(**{name: getattr(model.config, name) for name in FLA_DEFAULTS})
    with torch.device(model.device):
        twin = DeltaNetForCausalLM(config).to(model.dtype)
    twin.load_state_dict(model.state_dict(), strict=True)
    return twin


def check_against_fla(b: Bench) -> None:
    print("[check] ours vs fla DeltaNetForCausalLM (bf16)", flush=True)
    ours = b.model("paper-1.3b", **CHECK_SHAPE)
    twin = fla_twin(ours)
    if not b.cuda:
        ROWS.append(("fla twin built and loaded", "ok", "(forward skipped on CPU)"))
        return
    ids = b.ids(2, 2048)
    with torch.no_grad():
        mine, theirs = ours(ids, labels=ids), twin(input_ids=ids, labels=ids)
    err = rel_err(mine.logits, theirs.logits)
    b.emit(
        "deltanet_vs_fla_logits_rel_err",
        err,
        "ratio",
        f"{CHECK_NAME}, 2x2048, bf16",
        "PASS" if err < 2e-2 else "FAIL",
    )
    b.emit(
        "deltanet_vs_fla_loss_abs_diff",
        abs(mine.loss.item() - theirs.loss.item()),
        "nats",
        f"{CHECK_NAME}, 2x2048",
    )


def branched_inputs(b: Bench, T: int, P: int = 8, L: int = 6):
    ids = b.ids(2, T)
    g = torch.Generator().manual_seed(3)
    positions = torch.stack([torch.randperm(T - 20, generator=g)[:P] + 20 for _ in range(2)]).to(b.device)
    return ids, positions, b.ids(2, P, L, seed=4)


def check_branched(b: Bench) -> None:
    print("[check] forward_branched vs separate sequences", flush=True)
    model = b.model("paper-1.3b", **CHECK_SHAPE)
    T = b.tokens(2048)
    ids, positions, branch = branched_inputs(b, T)
    P, L = branch.shape[1:]
    weights = torch.randn(VOCAB, generator=torch.Generator().manual_seed(5)).to(b.device, b.dtype)

    def loss(out):
        main = (out.logits.float().log_softmax(-1) * weights).mean()
        return main + (out.branch_logits.float().log_softmax(-1) * weights).mean()

    params = list(model.parameters())
    fast = model.forward_branched(ids, positions, branch)
    g_fast = torch.autograd.grad(loss(fast), params)
    naive = forward_branched_naive(model, ids, positions, branch)
    g_naive = torch.autograd.grad(loss(naive), params)
    tol = 3e-2 if b.cuda else 1e-5
    for name in ("logits", "branch_logits", "branch_hidden"):
        err = rel_err(getattr(fast, name), getattr(naive, name))
        note = f"{CHECK_NAME}, 2x{T}, P={P}, L={L}"
        b.emit(f"branched_vs_separate_{name}_rel_err", err, "ratio", note, "PASS" if err < tol else "FAIL")
    errs = [rel_err(a, c) for a, c in zip(g_fast, g_naive, strict=True)]
    verdict = "PASS" if max(errs) < 5 * tol else "FAIL"
    b.emit(
        "branched_vs_separate_grad_rel_err_max",
        max(errs),
        "ratio",
        f"max over {len(errs)} parameters",
        verdict,
    )


def check_branched_precision(b: Bench) -> None:
    """bf16 fla runs of both ways against a float32 torch-backend reference: the branched way
    must be no less accurate than running each prefix+branch alone."""
    print("[check32] branched and separate (bf16, fla) vs float32 torch reference", flush=True)
    model = b.model("paper-1.3b", **CHECK_SHAPE)
    T = b.tokens(2048)
    ids, positions, branch = branched_inputs(b, T)
    reference = copy.deepcopy(model).float()
    reference.config.kernel_backend = "torch"
    with torch.no_grad():
        ref = reference.forward_branched(ids, positions, branch)
        fast = model.forward_branched(ids, positions, branch)
        naive = forward_branched_naive(model, ids, positions, branch)
    for name in ("logits", "branch_logits"):
        e_fast, e_naive = (
            rel_err(getattr(fast, name), getattr(ref, name)),
            rel_err(getattr(naive, name), getattr(ref, name)),
        )
        b.emit(f"branched_bf16_vs_fp32_{name}_rel_err", e_fast, "ratio", f"{CHECK_NAME}, 2x{T}")
        verdict = "PASS" if e_fast < 1.5 * e_naive + 1e-3 else "FAIL"
        b.emit(f"separate_bf16_vs_fp32_{name}_rel_err", e_naive, "ratio", f"{CHECK_NAME}, 2x{T}", verdict)


def check_state_chain(b: Bench) -> None:
    """The chained delta rule at the small shape's heads (K = V = 64, where our state-chain Triton
    kernels run) in bf16 on fla, the chain and correction on the kernels and on torch ops, each
    against a float32 torch-backend reference: outputs, captured and final states, and the
    gradients of q, k, v, beta under a random loss. The kernels must be no less accurate."""
    print("[chain] state-chain kernels and torch path (bf16, fla) vs float32 torch reference", flush=True)
    T, H, K = b.tokens(16384), 6, 64
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, T, H, K, generator=g) for _ in range(3))
    beta = torch.rand(1, T, H, generator=g)
    positions = (torch.randperm(T - 64, generator=g)[:8] + 32).view(1, 8)
    weights = [torch.randn(1, T, H, K, generator=g), torch.randn(1, 8, H, K, K, generator=g)]
    weights.append(torch.randn(1, H, K, K, generator=g))
    device = b.device

    def run(dtype: torch.dtype, backend: str, path: str) -> list[torch.Tensor]:
        inputs = [x.to(device, dtype).requires_grad_(True) for x in (q, k, v, beta)]
        outs = chained_delta_rule(*inputs, positions.to(device), backend=backend, chain=path)
        loss = sum((o.float() * w.to(device)).sum() for o, w in zip(outs, weights, strict=True))
        grads = torch.autograd.grad(loss, inputs)
        return [o.detach().float() for o in outs] + [torch.cat([x.float().flatten() for x in grads])]

    dtype, backend = (torch.float32, "torch") if b.args.dry_run else (torch.bfloat16, "triton")
    ref = run(torch.float32, "torch", "torch")
    kernels, plain = run(dtype, backend, "auto"), run(dtype, backend, "torch")
    note = f"small heads (H={H}, K=V={K}), 1x{T}, 8 positions; random loss on o, states, final state"
    for name, x, y, r in zip(("o", "captured", "final", "grads"), kernels, plain, ref, strict=True):
        e_kernels, e_plain = rel_err(x, r), rel_err(y, r)
        b.emit(f"chain_torch_vs_fp32_{name}_rel_err", e_plain, "ratio", note)
        verdict = "PASS" if e_kernels < 1.5 * e_plain + 1e-3 else "FAIL"
        b.emit(f"chain_kernels_vs_fp32_{name}_rel_err", e_kernels, "ratio", note, verdict)


def check_decode(b: Bench) -> None:
    print("[check] decode (graph) vs eager vs prefill", flush=True)
    model = b.model("paper-1.3b", **CHECK_SHAPE)
    ids = b.ids(8, b.tokens(300))
    with torch.no_grad():
        state = model.prefill(ids[:, :-1]).final
        full = model.prefill(ids).logits[:, -1]
        graph = model.decode(state, ids[:, -1])
        eager = model._decode_eager(state, ids[:, -1])
    e1, e2 = rel_err(graph.logits, eager.logits), rel_err(graph.logits, full)
    b.emit(
        "decode_graph_vs_eager_rel_err",
        e1,
        "ratio",
        f"{CHECK_NAME}, 8 streams",
        "PASS" if e1 < 1e-2 else "FAIL",
    )
    b.emit(
        "decode_vs_prefill_rel_err", e2, "ratio", f"{CHECK_NAME}, 8 streams", "PASS" if e2 < 3e-2 else "FAIL"
    )


def train_step(model) -> Callable[[torch.Tensor], None]:
    def step(ids: torch.Tensor) -> None:
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()

    return step


def time_training(b: Bench, preset: str, seq: int = 16384) -> None:
    print(f"[train] {preset}, 1x{seq}: ours vs fla", flush=True)
    ours = b.model(preset)
    ids = b.ids(1, b.tokens(seq))
    step_ours = train_step(ours)
    step_ours(ids)  # autotuning and allocations
    if b.cuda:
        torch.cuda.reset_peak_memory_stats()
    step_ours(ids)
    if b.cuda and preset == "paper-1.3b":
        peak = torch.cuda.max_memory_allocated() / 2**30
        b.emit(
            "peak_gib_1p3b_16k",
            peak,
            "GiB",
            "weights+grads+activations, bf16, 1x16384, no optimizer state",
            "PASS" if peak < 78 else "FAIL",
        )
    ours.zero_grad(set_to_none=True)
    twin = fla_twin(ours)
    step_fla = train_step(twin) if b.cuda else step_ours
    step_fla(ids)
    ms_ours, ms_fla = [], []
    for _ in range(3 if b.cuda else 1):  # interleaved, so drift hits both alike
        ms_ours.append(b.time_ms(lambda: step_ours(ids), reps=3, warmup=0))
        ms_fla.append(b.time_ms(lambda: step_fla(ids), reps=3, warmup=0))
    mo, mf = statistics.median(ms_ours), statistics.median(ms_fla)
    tokens = ids.numel()
    tag = preset.replace("paper-", "").replace(".", "p")
    b.emit(
        f"deltanet_train_tok_s_{tag}",
        tokens / mo * 1e3,
        "tok/s",
        f"ours, {preset}, 1x{tokens}, {mo:.1f} ms/step",
    )
    b.emit(
        f"fla_train_tok_s_{tag}",
        tokens / mf * 1e3,
        "tok/s",
        f"fla DeltaNetForCausalLM, {preset}, 1x{tokens}, {mf:.1f} ms/step",
    )
    ratio = mf / mo
    b.emit(
        f"deltanet_train_over_fla_{tag}",
        ratio,
        "ratio",
        f"{preset}, tokens/s ours over fla",
        "PASS" if ratio >= 0.95 else "BELOW 0.95",
    )
    del twin, ours
    if b.cuda:
        torch.cuda.empty_cache()


def time_decode(b: Bench, model: FastWeightForCausalLM, streams: int) -> None:
    print(f"[decode] paper-1.3b, {streams} streams", flush=True)
    ids = b.ids(streams, b.tokens(256), seed=streams)
    with torch.no_grad():
        state = model.prefill(ids, return_logits=False).final
        tokens = ids[:, -1]
        stream = model.decode_stream(state)
        ms_stream = b.time_ms(lambda: stream.step(tokens), reps=30, warmup=3)
        ms_func = b.time_ms(lambda: model.decode(state, tokens), reps=30, warmup=3)
        ms_eager = b.time_ms(lambda: model._decode_eager(state, tokens), reps=5, warmup=1)
    b.emit(
        f"decode_ms_1p3b_{streams}",
        ms_stream,
        "ms",
        f"one step, {streams} streams, CUDA graph, state kept on device (decode_stream)",
    )
    b.emit(
        f"decode_functional_ms_1p3b_{streams}",
        ms_func,
        "ms",
        f"model.decode: graph + state copied in and out, {streams} streams",
    )
    b.emit(
        f"decode_eager_ms_1p3b_{streams}", ms_eager, "ms", f"same step without the graph, {streams} streams"
    )


def branched_speedup(b: Bench, model: FastWeightForCausalLM) -> None:
    B, T, P, L = 8, b.tokens(4096), 8, 6
    print(f"[branched] 64 streams from captured states vs re-prefilling ({B}x{T}, P={P}, L={L})", flush=True)
    ids = b.ids(B, T, seed=7)
    g = torch.Generator().manual_seed(8)
    positions = torch.stack([torch.randperm(T - 40, generator=g)[:P] + 20 for _ in range(B)]).to(b.device)
    flat = positions.flatten().tolist()

    def rollout(state: State, first: torch.Tensor) -> None:
        stream = model.decode_stream(state)
        token = first
        for _ in range(L):
            token = stream.step(token).logits.argmax(-1)

    def branched() -> None:
        out = model.prefill(ids, capture=positions)
        first = out.logits.gather(1, (positions - 1)[..., None].expand(-1, -1, VOCAB)).argmax(-1).flatten()
        rollout(out.captured, first)

    def reprefill() -> None:
        states, firsts = [], []
        for i, p in enumerate(flat):
            out = model.prefill(ids[i // P, :p][None])
            states.append(out.final)
            firsts.append(out.logits[0, -1].argmax(-1))
        rollout(State.cat(states), torch.stack(firsts))

    with torch.no_grad():
        ms_branched = b.time_ms(branched, reps=3, warmup=1)
        ms_naive = b.time_ms(reprefill, reps=1, warmup=1)
    b.emit("branched_decode_ms", ms_branched, "ms", f"prefill {B}x{T} with capture + {L} steps of 64 streams")
    b.emit("reprefill_decode_ms", ms_naive, "ms", f"64 separate prefix prefills + the same {L} steps")
    b.emit(
        "branched_decode_speedup",
        ms_naive / ms_branched,
        "ratio",
        f"paper-1.3b, {B}x{T}, 8 positions a row, {L} tokens",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for results.jsonl / RESULTS.md")
    parser.add_argument(
        "--dry-run", action="store_true", help="CPU logic check: tiny preset, short sequences"
    )
    parser.add_argument(
        "--phases",
        default="check,check32,chain,train13,decode,branched,trainsmall",
        help="comma-separated phases",
    )
    parser.add_argument("--budget-s", type=float, default=520.0, help="skip phases that would overrun this")
    args = parser.parse_args()
    b = Bench(args)
    # (phase, seconds it needs at least on an H100 with a warm Triton cache)
    plan: list[tuple[str, float, Callable[[], None]]] = [
        ("check", 30, lambda: (check_against_fla(b), check_branched(b), check_decode(b))),
        ("check32", 20, lambda: check_branched_precision(b)),
        ("chain", 20, lambda: check_state_chain(b)),
        ("train13", 60, lambda: time_training(b, "paper-1.3b")),
        ("decode", 40, lambda: [time_decode(b, big, n) for n in (8, 64)]),
        ("branched", 40, lambda: branched_speedup(b, big)),
        ("trainsmall", 20, lambda: time_training(b, "small")),
    ]
    big = None
    for name, need, run in plan:
        if name not in args.phases.split(","):
            continue
        if b.left() < need:
            ROWS.append((name, "skipped", f"{b.left():.0f} s left of the budget"))
            continue
        if name in ("decode", "branched") and big is None:
            big = b.model("paper-1.3b").eval()
        start = time.time()
        run()
        print(f"[{name}] {time.time() - start:.0f} s", flush=True)
    (b.out / "summary.json").write_text(json.dumps(ROWS, indent=1))
    print(f"\n{'figure':44s} {'value':>18s}  verdict   ({b.card}, {time.time() - b.t0:.0f} s)")
    for row in ROWS:
        print(f"{row[0]:44s} {row[1]:>18s}  {row[2]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
