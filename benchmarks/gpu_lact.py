"""LaCT on the GPU: our Triton fast-weight kernels checked and timed at the 760M shapes, then the
whole paper-760m model's training throughput, in one run.

Phases (--phases; the matmul rate always runs):
1. The card's bf16 matmul rate (8192^3, random data), the yardstick of `lact_fastweight_util`.
2. Sweep (`sweep`) of the SwiGLU token stage's element-wise block shapes, per mode, on one chunk;
   the fastest block shape of each is kept (sweep.txt).
3. Our Triton fast-weight layer (`layer`; one path per operation: cuBLAS products, the split
   SwiGLU stage, the whole-sequence Function): checked (bf16 kernels vs the float32 torch
   reference on the same bf16-rounded inputs: the fast-weight layer at the 760M shapes,
   D = H = 384, 4 batch x 4 heads, L = 16K, chunk 2048, momentum on; outputs, final fast weights
   and every input's gradient), timed fwd+bwd (median, CUDA events) and profiled
   (profile_layer.txt, host_layer.txt): Triton vs the torch reference under bf16 autocast
   (`lact_triton_speedup`) and the share of the bf16 matmul rate it reaches
   (`lact_fastweight_util`): 3 x the forward's FLOPs, 18*D*H*C*B per updating chunk and
   6*D*H*C*B for the apply-only last chunk (LaCT's own count), over the time and the rate.
3b. The torch reference compiled whole by TorchInductor (`inductor`), checked, and timed against our
   kernels, launched eagerly and from CUDA graphs (`lact_inductor_default_over_ours_graph`).
4. The cuBLAS bound (`bound`): the pass's matmuls alone on cuBLAS, from a CUDA graph
   (`lact_fastweight_util_cublas_bound`: the most a pass built from cuBLAS products could reach).
5. LaCT's sliding-window attention at paper-760m's shapes (`attention`), fwd+bwd, on the `band`
   (SDPA) and `flex` (FlexAttention) paths, each checked against the float32 band path.
6. The same fwd+bwd replayed from a CUDA graph (`lact_fastweight_util_graph`, the acceptance figure).
7. paper-760m, bf16 weights, 1 x 16384 tokens (`model`), default options: forward with labels +
   backward (`lact_760m_tok_s`), its peak memory (`lact_760m_peak_gib`; no optimizer state) and
   each kernel's GPU time (profile_760m.txt); then with `lact_compile=False` (eager features) and
   `lact_attention="band"`.
8. The model options' exactness (`exact`) on paper-760m cut to 2 layers: each non-default path
   against the default in float32, and each path's bf16 gradients against the float32 default.
9. ReFINE steps on the LaCT `small` model (`refine`): each fast mode against the naive one in
   float32, then step times over NTP's under bf16 autocast.

    python benchmarks/gpu_lact.py --out $OUT              # on the device machine
    python benchmarks/gpu_lact.py --out $OUT --phases attention,model   # some phases (default all)
    python benchmarks/gpu_lact.py --out /tmp/x --dry-run  # logic check on a CPU (tiny shapes, interpreter)

Writes OUT/results.jsonl (import with `python benchmarks/record.py --import`) and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

if "--dry-run" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"  # before any @triton.jit: our kernels run on the CPU

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu_refine_step import StepBench, grads_rel_err  # noqa: E402
from benchmarks.record import FigureLog  # noqa: E402
from refine_tasks.kernels.lact import FastWeights, TorchOps, TritonOps, lact_fast_weight  # noqa: E402
from refine_tasks.models import build_model  # noqa: E402
from refine_tasks.models.lact.attention import ATTENTION_PATHS, sliding_window_attention  # noqa: E402

COMMAND = "python benchmarks/gpu_lact.py"
OPS = {"torch": TorchOps, "triton": TritonOps}
ROWS: list[tuple[str, str, str]] = []


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.dry = args.dry_run
        self.device = torch.device("cpu" if self.dry else "cuda")
        self.card = "cpu-dry-run" if self.dry else torch.cuda.get_device_name()
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.t0 = time.time()
        self.budget = args.budget_s
        self.later: list[
            Callable[[], None]
        ] = []  # phases run after the layer's eager figures (a failed graph capture can spoil the
        # context: everything eager is recorded first; the model phase comes after them, as the
        # graph figures are the ones this script exists for)

    def phase(self, name: str, fn: Callable[[], object]) -> None:
        """Run one phase; a failure is printed and recorded in the table, and the run goes on."""
        if time.time() - self.t0 > self.budget:
            ROWS.append((name, "skipped", "time budget"))
            return
        try:
            fn()
        except Exception as e:  # a device run is precious: keep the other phases' figures
            import traceback

            traceback.print_exc()
            ROWS.append((name, "FAILED", f"{type(e).__name__}: {e}"[:120]))

    def emit(self, metric: str, value: float, unit: str, note: str = "", verdict: str = "") -> None:
        FigureLog(self.card, COMMAND, self.out / "results.jsonl", self.out / "RESULTS.md", ROWS).emit(
            metric,
            value,
            unit,
            note,
            verdict,
            suffix=f" [{time.time() - self.t0:.0f}s]",
        )

    def time_ms(
        self, fn: Callable[[], object], grad_to_none: list[torch.Tensor] | None = None, rep: int = 300
    ) -> float:
        if self.dry:  # one pass: the interpreter's time says nothing, the call itself is the check
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e3
        from triton.testing import do_bench

        return do_bench(fn, warmup=rep // 6, rep=rep, grad_to_none=grad_to_none, return_mode="median")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def matmul_rate(run: Run) -> float:
    n = 512 if run.dry else 8192
    a, b = (torch.randn(n, n, device=run.device, dtype=torch.bfloat16) for _ in range(2))
    ms = run.time_ms(lambda: a @ b)
    rate = 2 * n**3 / ms / 1e9
    run.emit("bf16_matmul_tflops", rate, "TFLOP/s", f"{n}^3, random data, median")
    return rate


# (BLOCK_T, BLOCK_H, num_warps) of the SwiGLU stage's element-wise kernel, the same for every mode
SWEEP = [(32, 128, 4), (16, 128, 4), (64, 128, 8)]
MODE_UNITS = {0: 2, 1: 3, 2: 3, 3: 6}  # matmuls of T x D x H per mode
MODE_NAMES = {0: "apply", 1: "step", 2: "apply_bwd", 3: "step_bwd"}


def sweep_swiglu(run: Run) -> None:
    """Time each candidate block shape of each mode of the SwiGLU stage on one chunk (760M shapes),
    the backward modes reading the forward modes' projections back as the layer runs them; keep the
    fastest of each (the rate is per nominal FLOPs of the mode, its cuBLAS projections included)."""
    from refine_tasks.kernels.lact import triton_swiglu as ts

    batch, t, d = (2, 16, 16) if run.dry else (16, 2048, 384)
    g = torch.Generator(device="cpu").manual_seed(5)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (scale * torch.randn(*shape, generator=g)).to(
            run.device, torch.float32 if run.dry else torch.bfloat16
        )

    x, y = randn(batch, t, d), randn(batch, t, d)
    w02, w1 = randn(batch, 2 * d, d, scale=d**-0.5), randn(batch, d, d, scale=d**-0.5)
    g02, g1 = randn(batch, 2 * d, d), randn(batch, d, d)
    lrs = torch.rand(batch, 3, t, generator=g).to(run.device) * 0.01
    saved_q = ts.swiglu_tokens(0, x, w02, w1).projections
    saved_kv = ts.swiglu_tokens(1, x, w02, w1, y=y, lrs=lrs).projections
    args = {
        0: {},
        1: {"y": y, "lrs": lrs},
        2: {"y": y, "saved": saved_q},
        3: {"y": y, "lrs": lrs, "g02": g02, "g1": g1, "saved": saved_kv},
    }
    lines = []
    for mode in MODE_UNITS:
        times = {}
        for cfg in SWEEP:
            ts.CONFIGS[mode] = cfg
            try:
                times[cfg] = run.time_ms(lambda m=mode: ts.swiglu_tokens(m, x, w02, w1, **args[m]), rep=100)
            except Exception as e:  # a candidate that fails to compile or launch is skipped
                lines.append(f"mode {mode} {cfg}: {type(e).__name__}: {str(e)[:80]}")
                continue
            rate = MODE_UNITS[mode] * 2 * batch * t * d * d / times[cfg] / 1e9
            lines.append(f"mode {mode} {cfg}: {times[cfg] * 1e3:.1f} us, {rate:.0f} TFLOP/s")
        if times:  # else the table keeps its entry
            ts.CONFIGS[mode] = min(times, key=times.get)
            run.emit(
                f"lact_swiglu_{MODE_NAMES[mode]}_us",
                times[ts.CONFIGS[mode]] * 1e3,
                "us",
                f"one chunk, 16 batch x heads x 2048 tokens, D=H=384; block {ts.CONFIGS[mode]}",
            )
        lines.append(f"mode {mode} chosen {ts.CONFIGS[mode]}")
    (run.out / "sweep.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def layer_inputs(run: Run, batch: int, t: int, d: int, seed: int = 0) -> list[torch.Tensor]:
    """Model-like inputs: q, k L2-normalised rows, v through SiLU, LaCT-scale rates, sigmoid gates,
    initial weights as the mixer builds them (rank-32 W0/W2 + I/2, W1 ~ N(0, 1/d))."""
    g = torch.Generator(device="cpu").manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(run.device)

    q, k = (torch.nn.functional.normalize(randn(batch, t, d), dim=-1) for _ in range(2))
    v = torch.nn.functional.silu(randn(batch, t, d))
    lrs = [torch.nn.functional.softplus(randn(batch, t) - 5.0) for _ in range(3)]
    gate = torch.sigmoid(randn(batch, t))
    rank = 32 if d >= 64 else 4
    eye = torch.eye(d, device=run.device)
    w0, w2 = (
        randn(batch, d, rank) / math.sqrt(2 * rank) @ (randn(batch, rank, d) / math.sqrt(4 * d)) + eye / 2
        for _ in range(2)
    )
    w1 = randn(batch, d, d) / math.sqrt(d)
    dt = torch.float32 if run.dry else torch.bfloat16
    return [q.to(dt), k.to(dt), v.to(dt), *lrs, gate, w0, w1, w2]


def layer_forward(
    inputs: list[torch.Tensor], backend: str, chunk: int, autocast: bool
) -> tuple[torch.Tensor, FastWeights]:
    """The fast-weight layer's forward on inputs (q, k, v, lr0, lr1, lr2, gate, w0, w1, w2):
    (o, final weights)."""
    q, k, v, lr0, lr1, lr2, gate, w0, w1, w2 = inputs
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        o, trace = lact_fast_weight(
            q,
            k,
            v,
            lr0,
            lr1,
            lr2,
            FastWeights(w0, w1, w2),
            chunk_size=chunk,
            momentum_gate=gate,
            ops=OPS[backend],
        )
    return o, trace.final.weights


def layer_pass(inputs: list[torch.Tensor], backend: str, chunk: int, grad_o: torch.Tensor, autocast: bool):
    """fwd+bwd of the fast-weight layer; returns (o, final weights, input gradients)."""
    o, weights = layer_forward(inputs, backend, chunk, autocast)
    o.backward(grad_o)
    return o, weights, [x.grad for x in inputs]


class LayerCase:
    """The fast-weight layer's benchmark case: the 760M shapes (D = H = 384, 4 batch x 4 heads,
    L = 16K, chunk 2048, momentum on; tiny in a dry run), model-like bf16 inputs, an output
    gradient, the pass's FLOPs, and the float32 reference on the same bf16-rounded inputs."""

    NAMES = ("q", "k", "v", "lr0", "lr1", "lr2", "gate", "w0", "w1", "w2")

    def __init__(self, run: Run, rate: float) -> None:
        self.batch, self.t, self.d, self.chunk = (4, 40, 16, 8) if run.dry else (16, 16384, 384, 2048)
        batch, t, d, chunk = self.batch, self.t, self.d, self.chunk
        self.shape = f"D=H={d}, {batch} batch x heads, L={t}, chunk {chunk}, momentum"
        self.base = layer_inputs(run, batch, t, d)
        g = torch.Generator(device="cpu").manual_seed(9)
        self.grad_o = torch.randn(batch, t, d, generator=g).to(run.device, self.base[0].dtype)
        updates = (t - 1) // chunk
        self.flops_fwd = 18 * d * d * chunk * batch * updates + 6 * d * d * (t - updates * chunk) * batch
        self.flops = 3 * self.flops_fwd
        self.rate = rate
        self.goal = (
            f"3 x {self.flops_fwd / 1e9:.0f} GFLOP forward over {rate:.0f} TFLOP/s measured; goal >= 0.5"
        )
        self.tol = 1e-4 if run.dry else 3e-2
        ref_in = [x.detach().double().float().clone().requires_grad_(True) for x in self.base]
        # o, final weights, input grads
        self.ref = list(layer_pass(ref_in, "torch", chunk, self.grad_o.float(), autocast=False))

    def inputs(self) -> list[torch.Tensor]:
        """Fresh leaves holding the bf16 inputs."""
        return [x.detach().clone().requires_grad_(True) for x in self.base]

    def errors(self, o: torch.Tensor, weights: FastWeights, grads: list[torch.Tensor]) -> dict[str, float]:
        """Relative errors against the float32 reference: output, final weights, every input's gradient."""
        errs = {"output": rel_err(o, self.ref[0])}
        errs |= {
            f"final_{n}": rel_err(a, b)
            for n, a, b in zip(("w0", "w1", "w2"), weights, self.ref[1], strict=True)
        }
        errs |= {f"grad_{n}": rel_err(a, b) for n, a, b in zip(self.NAMES, grads, self.ref[2], strict=True)}
        return errs

    def util(self, ms: float) -> float:
        return self.flops / (ms * 1e-3) / (self.rate * 1e12)


def check_and_time_layer(run: Run, rate: float) -> None:
    case = LayerCase(run, rate)
    chunk, shape, base, grad_o, goal = case.chunk, case.shape, case.base, case.grad_o, case.goal
    print("[check] Triton kernels vs float32 torch reference", flush=True)
    fast_in = case.inputs()

    def check() -> None:
        o, w, grads = layer_pass(fast_in, "triton", chunk, grad_o, autocast=False)
        for x in fast_in:
            x.grad = None
        errs = case.errors(o, w, grads)
        worst = max(errs, key=errs.get)
        verdict = "PASS" if errs[worst] < case.tol else "FAIL"
        note = f"{shape}; max over output, final weights, 10 input grads: {worst}"
        run.emit(
            "lact_triton_vs_reference_output_rel_err",
            errs["output"],
            "ratio",
            shape,
            "PASS" if errs["output"] < case.tol else "FAIL",
        )
        run.emit("lact_triton_vs_reference_max_rel_err", errs[worst], "ratio", note, verdict)
        print("   " + ", ".join(f"{n} {e:.2e}" for n, e in errs.items()), flush=True)

    run.phase("check", check)
    case.ref.clear()  # the reference's tensors go before the timings

    print("[time] fast-weight layer fwd+bwd, ours and the torch reference (bf16 autocast)", flush=True)
    t_fast = run.time_ms(lambda: layer_pass(fast_in, "triton", chunk, grad_o, False), grad_to_none=fast_in)
    for x in fast_in:
        x.grad = None
    if not run.dry:
        run.phase("profile", lambda: profile_layer(run, fast_in, chunk, grad_o))
        run.phase("host profile", lambda: host_profile(run, fast_in, chunk, grad_o))
        run.later.append(lambda: graph_time(run, case, fast_in))
    ref_bf16 = [x.detach().clone().requires_grad_(True) for x in base]
    t_ref = run.time_ms(
        lambda: layer_pass(ref_bf16, "torch", chunk, grad_o, not run.dry), grad_to_none=ref_bf16
    )
    with torch.no_grad():
        t_fwd = run.time_ms(
            lambda: lact_fast_weight(
                *base[:6], FastWeights(*base[7:]), chunk_size=chunk, momentum_gate=base[6], ops=TritonOps
            )
        )
    run.emit("lact_fastweight_fwd_ms", t_fwd, "ms", f"Triton, {shape}")
    run.emit("lact_fastweight_fwdbwd_ms", t_fast, "ms", f"Triton, {shape}")
    run.emit("lact_reference_fwdbwd_ms", t_ref, "ms", f"torch reference under bf16 autocast, {shape}")
    run.emit("lact_triton_speedup", t_ref / t_fast, "x", f"fwd+bwd, reference / Triton, {shape}")
    util = case.util(t_fast)
    run.emit(
        "lact_fastweight_util",
        util,
        "ratio",
        f"fwd+bwd, Triton, {goal}",
        "PASS" if util >= 0.5 else "below goal",
    )
    run.emit(
        "lact_fastweight_fwd_util",
        case.flops_fwd / (t_fwd * 1e-3) / (rate * 1e12),
        "ratio",
        f"forward only, Triton, {shape}",
    )


def inductor_layer(run: Run, rate: float) -> None:
    """The torch reference's chunk loop compiled whole by TorchInductor (default mode: cuBLAS for
    the products, its own fused Triton for the rest) under bf16 autocast, against our default
    kernels in the same phase: the compile time, the check against the float32 reference, fwd+bwd
    time launched eagerly and replayed from a CUDA graph (`lact_fastweight_util_inductor_default`,
    `lact_fastweight_util_graph_inductor_default`), and each kernel's GPU time (profile_inductor.txt).
    max-autotune (its own Triton GEMM templates with the element-wise work fused in) is left out:
    it autotunes each of the pass's ~100 products on its own, ~14 s each on an H100 (23 took 334 s
    on 2026-11-26), past one device call's ten minutes."""
    case = LayerCase(run, rate)
    chunk = case.chunk

    def fwd(*xs: torch.Tensor) -> tuple[torch.Tensor, FastWeights]:
        return layer_forward(list(xs), "torch", chunk, autocast=not run.dry)

    fast_in = case.inputs()
    t_ours = run.time_ms(
        lambda: layer_pass(fast_in, "triton", chunk, case.grad_o, False), grad_to_none=fast_in
    )
    run.emit("lact_fastweight_fwdbwd_ms_beside_inductor", t_ours, "ms", f"ours, {case.shape}")
    torch._dynamo.reset()
    compiled = torch.compile(fwd, fullgraph=True)

    def step() -> tuple[torch.Tensor, FastWeights]:
        o, weights = compiled(*fast_in)
        o.backward(case.grad_o)
        return o, weights

    for x in fast_in:
        x.grad = None
    start = time.time()
    o, weights = step()
    if not run.dry:
        torch.cuda.synchronize()
    run.emit("lact_inductor_compile_s_default", time.time() - start, "s", f"first fwd+bwd, {case.shape}")
    errs = case.errors(o, weights, [x.grad for x in fast_in])
    worst = max(errs, key=errs.get)
    run.emit(
        "lact_inductor_vs_reference_max_rel_err_default",
        errs[worst],
        "ratio",
        f"{case.shape}; bf16 autocast vs float32; max over output, final weights, 10 input grads: {worst}",
        "PASS" if errs[worst] < case.tol else "FAIL",
    )
    del o, weights
    ms = run.time_ms(step, grad_to_none=fast_in)
    run.emit("lact_fastweight_fwdbwd_ms_inductor_default", ms, "ms", case.shape)
    run.emit("lact_fastweight_util_inductor_default", case.util(ms), "ratio", f"fwd+bwd, {case.goal}")
    run.emit("lact_inductor_default_over_ours", ms / t_ours, "x", "inductor / ours, launched eagerly")
    for x in fast_in:
        x.grad = None
    profile_to(run, step, "profile_inductor.txt", "inductor default")
    if run.dry:
        return
    theirs = replay_ms(run, step, fast_in)
    ours = replay_ms(run, lambda: layer_pass(fast_in, "triton", chunk, case.grad_o, False), fast_in)
    note = f"fwd+bwd from a CUDA graph, {case.shape}"
    run.emit("lact_fastweight_fwdbwd_graph_ms_inductor_default", theirs, "ms", note)
    run.emit("lact_fastweight_util_graph_inductor_default", case.util(theirs), "ratio", note)
    run.emit("lact_fastweight_fwdbwd_graph_ms_beside_inductor", ours, "ms", f"ours, {note}")
    run.emit("lact_fastweight_util_graph_beside_inductor", case.util(ours), "ratio", f"ours, {note}")
    run.emit("lact_inductor_default_over_ours_graph", theirs / ours, "x", f"inductor / ours, {note}")


def profile_layer(run: Run, inputs: list[torch.Tensor], chunk: int, grad_o: torch.Tensor) -> None:
    """GPU time per kernel of one fwd+bwd, to OUT/profile_layer.txt (where the time goes)."""
    layer_pass(inputs, "triton", chunk, grad_o, False)  # compiled and warm before profiling
    for x in inputs:  # else the profiled pass adds its gradients onto these: kernels of its own
        x.grad = None
    profile_to(run, lambda: layer_pass(inputs, "triton", chunk, grad_o, False), "profile_layer.txt", "layer")
    for x in inputs:
        x.grad = None


def host_profile(run: Run, inputs: list[torch.Tensor], chunk: int, grad_o: torch.Tensor) -> None:
    """Where the host's time goes in eager fwd+bwd (cProfile over 5 passes, to
    OUT/host_layer.txt), and how long launching takes against the GPU's finishing: launching
    close to the whole pass means the pass is host-bound."""
    import cProfile
    import io
    import pstats

    layer_pass(inputs, "triton", chunk, grad_o, False)
    torch.cuda.synchronize()
    launch, total = [], []
    for _ in range(5):
        for x in inputs:
            x.grad = None
        start = time.perf_counter()
        layer_pass(inputs, "triton", chunk, grad_o, False)
        launch.append(time.perf_counter() - start)
        torch.cuda.synchronize()
        total.append(time.perf_counter() - start)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(5):
        for x in inputs:
            x.grad = None
        layer_pass(inputs, "triton", chunk, grad_o, False)
    torch.cuda.synchronize()
    profiler.disable()
    for x in inputs:
        x.grad = None
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("tottime").print_stats(35)
    stats.sort_stats("cumulative").print_stats(35)
    host, wall = statistics.median(launch) * 1e3, statistics.median(total) * 1e3
    head = f"launching {host:.2f} ms of a {wall:.2f} ms pass (medians of 5, no profiler)\n"
    (run.out / "host_layer.txt").write_text(head + text.getvalue())
    print(f"[host] {head}", flush=True)


def replay_ms(run: Run, fn: Callable[[], object], leaves: list[torch.Tensor]) -> float:
    """Median time of fn (a fwd+bwd into the leaves' .grad) replayed from a CUDA graph: warmed up on
    a side stream, captured once, gradients cleared around it."""
    for x in leaves:
        x.grad = None
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
            for x in leaves:
                x.grad = None
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    ms = run.time_ms(graph.replay)
    del graph
    for x in leaves:
        x.grad = None
    torch.cuda.empty_cache()
    return ms


def graph_time(run: Run, case: LayerCase, inputs: list[torch.Tensor]) -> None:
    """The same fwd+bwd replayed from a CUDA graph: the kernels' own speed, without launch
    overhead. Run last (a failed capture can spoil the context)."""
    print("[time] fast-weight layer fwd+bwd from a CUDA graph", flush=True)
    ms = replay_ms(run, lambda: layer_pass(inputs, "triton", case.chunk, case.grad_o, False), inputs)
    util = case.util(ms)
    run.emit("lact_fastweight_fwdbwd_graph_ms", ms, "ms", f"Triton, CUDA graph replay, {case.shape}")
    run.emit(
        "lact_fastweight_util_graph",
        util,
        "ratio",
        f"Triton, fwd+bwd from a CUDA graph, {case.shape}; {case.goal}",
        "PASS" if util >= 0.5 else "below goal",
    )


def time_window_attention(run: Run) -> None:
    """LaCT's sliding-window attention at paper-760m's shapes (1 x 16384 tokens, 24 heads of 64,
    window 2048, bf16), fwd+bwd on each path; each path's output and input gradients against the
    float32 `band` path on the same bf16-rounded inputs."""
    n, t, heads, d, window = (1, 40, 2, 8, 8) if run.dry else (1, 16384, 24, 64, 2048)
    shape = f"{n} x {t} tokens, {heads} heads of {d}, window {window}"
    g = torch.Generator(device="cpu").manual_seed(4)
    dtype = torch.float32 if run.dry else torch.bfloat16
    base = [torch.randn(n, t, heads, d, generator=g).to(run.device, dtype) for _ in range(3)]
    grad_o = torch.randn(n, t, heads, d, generator=g).to(run.device, dtype)
    backward = not run.dry  # FlexAttention has no CPU backward

    def attend(path: str, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        o = sliding_window_attention(*xs, window, path=path)
        if not backward:
            return [o]
        return [o, *torch.autograd.grad(o, xs, grad_o.to(o.dtype))]

    ref = attend("band", [x.float().requires_grad_(backward) for x in base])
    ms = {}
    for path in ATTENTION_PATHS:
        xs = [x.clone().requires_grad_(backward) for x in base]
        got = attend(path, xs)
        err = max(rel_err(a, b) for a, b in zip(got, ref, strict=True))
        tol = 1e-4 if run.dry else 2e-2
        what = "output and q, k, v grads" if backward else "output"
        run.emit(
            f"lact_window_attn_max_rel_err_{path}",
            err,
            "ratio",
            f"{shape}; {what} vs float32 band",
            "PASS" if err < tol else "FAIL",
        )
        ms[path] = run.time_ms(lambda p=path, xs=xs: attend(p, xs))
        run.emit(
            f"lact_window_attn_fwdbwd_ms_{path}",
            ms[path],
            "ms",
            f"{shape}, {'fwd+bwd' if backward else 'fwd'}",
        )
    run.emit("lact_window_attn_flex_speedup", ms["band"] / ms["flex"], "x", f"band / flex, {shape}")


def cublas_bound(run: Run, rate: float) -> None:
    """A floor under the fast-weight pass on cuBLAS: every matmul of its fwd+bwd (at exactly the
    FLOPs `lact_fastweight_util` counts, none recomputed) alone on torch.bmm, replayed from one CUDA
    graph, with the element-wise work, the weight updates and the launches free. Its share of the
    matmul rate is the most a pass built from cuBLAS products could reach (bound.txt: each product's
    own rate)."""
    batch, t, d, c = (4, 40, 16, 8) if run.dry else (16, 16384, 384, 2048)
    h, updates = d, (t - 1) // c
    # (m, k, n) per product, [m x k] @ [k x n] for each of `batch` streams; k = c or 2c: a weight
    # gradient or step (token-major operands, the left one transposed), else tokens times a weight
    updating = [
        *[(c, d, 2 * h), (c, h, d), (c, d, 2 * h), (c, d, h), (2 * h, c, d), (d, c, h)],  # forward
        *[(c, d, h), (c, 2 * h, d), (c, d, 2 * h), (c, d, h), (c, 4 * h, d), (c, 2 * h, d)],  # backward
        *[(2 * h, 2 * c, d), (d, 2 * c, h)],  # the weight gradients, apply and step products together
    ]
    apply_only = [(c, d, 2 * h), (c, h, d), (c, d, h), (c, 2 * h, d), (2 * h, c, d), (d, c, h)]
    dtype = torch.float32 if run.dry else torch.bfloat16

    def operands(m: int, k: int, n: int) -> tuple[torch.Tensor, ...]:
        a = (
            torch.randn(batch, k, m, device=run.device, dtype=dtype).transpose(1, 2)
            if k >= c
            else (torch.randn(batch, m, k, device=run.device, dtype=dtype))
        )
        b = (
            torch.randn(batch, n, k, device=run.device, dtype=dtype).transpose(1, 2)
            if k < c
            else (torch.randn(batch, k, n, device=run.device, dtype=dtype))
        )
        return a, b, torch.empty(batch, m, n, device=run.device, dtype=dtype)

    made = {shape: operands(*shape) for shape in {*updating, *apply_only}}
    products = [made[s] for s in updating] * updates + [made[s] for s in apply_only] * (t > updates * c)
    flops = sum(2 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2] for a, b, _ in products)

    def replayable(items: list[tuple[torch.Tensor, ...]]) -> Callable[[], object]:
        def run_all() -> None:
            for a, b, out in items:
                torch.bmm(a, b, out=out)

        if run.dry:
            return run_all
        run_all()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            run_all()
        return graph.replay

    lines = []
    for (m, k, n), ops in sorted(made.items()):
        reps = 10
        ms = run.time_ms(replayable([ops] * reps), rep=100) / reps
        lines.append(
            f"[{m} x {k}] @ [{k} x {n}] x {batch}: {ms * 1e3:.1f} us, {2 * batch * m * k * n / ms / 1e9:.0f} TFLOP/s"
        )
    ms = run.time_ms(replayable(products), rep=200)
    lines.append(f"whole pass: {len(products)} products, {flops / 1e9:.0f} GFLOP in {ms:.3f} ms")
    (run.out / "bound.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    note = f"D=H={d}, {batch} batch x heads, L={t}, chunk {c}: {len(products)} cuBLAS products, graph replay"
    run.emit("lact_fastweight_cublas_bound_ms", ms, "ms", note)
    run.emit(
        "lact_fastweight_util_cublas_bound", flops / (ms * 1e-3) / (rate * 1e12), "ratio", f"{note}; goal 0.5"
    )


# the model options' other paths (config fields), each with the metric suffix naming it
OTHER_PATHS = {"compile0": {"lact_compile": False}, "band_attention": {"lact_attention": "band"}}
TORCH_KERNELS = {"torch_kernels": {"kernel_backend": "torch"}}


def model_step(run: Run, dtype: torch.dtype, seq: int, **overrides: object):
    """A paper-760m model (tiny on a dry run; `overrides` set config fields) in `dtype` on the
    device, seed 0, and its training step on fixed token ids: step() -> loss."""
    preset = "tiny" if run.dry else "paper-760m"
    if not run.dry:
        torch.cuda.empty_cache()  # the previous model's blocks
    torch.manual_seed(0)
    with run.device:  # initialise on the device: a CPU init of 760M parameters takes longer than the steps
        model = build_model(preset, 32000, mixer="lact", **overrides).to(dtype)
    ids = torch.randint(0, 32000, (1, seq), generator=torch.Generator().manual_seed(1)).to(run.device)

    def step() -> float:
        model.zero_grad(set_to_none=True)
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        return out.loss.item()

    return model, step


def time_model(run: Run, path: str = "", profile: bool = False) -> None:
    """The training step with the default options (plain metric names), or on one of OTHER_PATHS
    (names suffixed with it). `profile`: also each kernel's GPU time in one step, to
    OUT/profile_760m.txt."""
    preset, seq = ("tiny", 64) if run.dry else ("paper-760m", 16384)
    suffix = f"_{path}" if path else ""
    print(f"[time] {preset} training step, 1 x {seq}{suffix}", flush=True)
    overrides = OTHER_PATHS[path] if path else {}
    model, train_step = model_step(run, torch.float32 if run.dry else torch.bfloat16, seq, **overrides)
    losses = []

    def step() -> None:
        losses.append(train_step())

    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    if not run.dry:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(1 if run.dry else 4):
        start = time.perf_counter()
        step()
        if not run.dry:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    sec = statistics.median(times)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    ok = all(math.isfinite(x) for x in losses)
    note = (
        f"{preset} ({params:.0f}M params), bf16 weights, 1x{seq}, fwd+bwd, no optimizer; loss {losses[-1]:.3f}; "
        f"first step {first:.0f} s"
    )
    verdict = "PASS" if ok else "FAIL (non-finite loss)"
    run.emit(f"lact_760m_tok_s{suffix}", seq / sec, "tokens/s", note, verdict)
    run.emit(f"lact_760m_step_ms{suffix}", sec * 1e3, "ms", note)
    if not run.dry:
        run.emit(f"lact_760m_peak_gib{suffix}", torch.cuda.max_memory_allocated() / 2**30, "GiB", note)
    if profile:
        profile_to(run, step, "profile_760m.txt", f"{preset}{suffix}, one training step")


def path_exactness(run: Run) -> None:
    """Each model option's other path against the default, on paper-760m cut to 2 layers (1 x 16384
    tokens). In float32 the other paths must agree with the default
    (`lact_760m_2layer_fp32_grad_rel_err_<path>`), and the default (whose LaCT kernels multiply in
    TF32) with the torch reference kernels (`..._torch_kernels`); in bf16 each path's distance
    from the float32 default is its rounding error (`..._bf16_...`; `default` for the default)."""
    seq = 64 if run.dry else 16384
    paths = {"default": {}, **OTHER_PATHS}
    (reference,) = TORCH_KERNELS
    runs = [(torch.float32, name) for name in (*paths, reference)] + [
        (torch.bfloat16, name) for name in paths
    ]
    grads: dict[tuple[torch.dtype, str], dict[str, torch.Tensor]] = {}
    for dtype, name in runs:
        print(f"[check] 2-layer model, {dtype}, {name}", flush=True)
        overrides = {**paths, **TORCH_KERNELS}[name]
        model, step = model_step(run, dtype, seq, num_hidden_layers=2, **overrides)
        step()
        grads[dtype, name] = {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}
        del model, step
    want = grads[torch.float32, "default"]
    for dtype, name in runs:
        if (dtype, name) == (torch.float32, "default"):
            continue
        tag = "fp32" if dtype == torch.float32 else "bf16"
        tol = 1e-1 if dtype == torch.bfloat16 else 2e-2 if name == reference else 1e-3
        what = f"2-layer paper-760m, 1x{seq}, {tag} {name} path vs float32 default"
        compare_grads(run, f"lact_760m_2layer_{tag}_grad_rel_err_{name}", grads[dtype, name], want, what, tol)


def compare_grads(
    run: Run, metric: str, got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], what: str, tol: float
) -> None:
    """The relative error of all of `got`'s parameter gradients against `want`'s (same model, same
    step), as one vector, PASS below tol: bf16 rounding alone leaves single small gradients (a bias
    summed over 16K tokens) tens of percent apart, so the worst parameter is only named in the note."""
    if got.keys() != want.keys():
        raise RuntimeError(f"{metric}: the runs have gradients for different parameters")
    err = grads_rel_err([got[n] for n in want], list(want.values()))
    each = {n: rel_err(got[n], want[n]) for n in want}
    worst = max(each, key=each.get)
    note = f"{what}; all {len(want)} parameters as one vector; worst single one {worst} {each[worst]:.3f}"
    run.emit(metric, err, "ratio", note, "PASS" if err < tol else "FAIL")


def refine_steps(run: Run) -> None:
    """ReFINE on the LaCT `small` model (1 x 4096 tokens, 8 positions x 5-token rollouts, cached
    positions), as `refine train` runs it on a GPU. First in float32 without autocast, each fast
    mode's loss and gradients against the naive mode's, the reference way
    (`lact_refine_grad_rel_err_<mode>`; the LaCT kernels multiply in TF32); then each mode's step
    time under bf16 autocast over NTP's, timed interleaved (`lact_refine_over_ntp_<mode>`)."""
    preset, tokens = ("tiny", 512) if run.dry else ("small", 4096)
    args = argparse.Namespace(rollout_len=5, positions=8, margin=20, dry_run=run.dry)
    bench = StepBench(preset, tokens, args, mixer="lact")
    shape = f"{preset} lact, 1x{tokens} tokens, 8 positions x 5-token rollouts, cached positions"
    mixed = bench.autocast
    bench.autocast = contextlib.nullcontext  # float32 throughout for the exactness check
    naive_loss, naive = bench.grads("naive_precomputed", 0)
    for mode in ("branched", "fused-eager", "fused"):
        loss, grads = bench.grads(f"{mode}_precomputed", 0)
        err = max(grads_rel_err(grads, naive), abs(loss - naive_loss) / abs(naive_loss))
        run.emit(
            f"lact_refine_grad_rel_err_{mode}",
            err,
            "ratio",
            f"{shape}; float32; {mode} vs naive, the larger of the loss's and all gradients' relative error",
            "PASS" if err < 1e-2 else "FAIL",
        )
    bench.autocast = mixed
    modes = ("ntp", "branched_precomputed", "fused_precomputed")
    seconds = bench.paired(modes, 1 if run.dry else 5, 1 if run.dry else 2)
    for mode, sec in zip(modes, seconds, strict=True):
        name = mode.removesuffix("_precomputed")
        run.emit(f"lact_refine_step_ms_{name}", sec * 1e3, "ms", f"{shape}; fp32 weights, bf16 autocast")
        if name != "ntp":
            run.emit(
                f"lact_refine_over_ntp_{name}",
                sec / seconds[0],
                "x",
                f"{shape}; interleaved with NTP's steps",
            )


def profile_to(run: Run, fn: Callable[[], object], name: str, title: str) -> None:
    """Each kernel's own GPU time in one call of fn, most first, to OUT/name."""
    activities = [ProfilerActivity.CPU] + ([] if run.dry else [ProfilerActivity.CUDA])
    with profile(activities=activities) as prof:
        fn()
        if not run.dry:
            torch.cuda.synchronize()
    sort = "self_cpu_time_total" if run.dry else "self_cuda_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=90)
    (run.out / name).write_text(f"{title}\n{table}")
    print(f"[profile] {title}\n" + "\n".join(table.splitlines()[:30]), flush=True)


def model_phase(run: Run) -> None:
    """paper-760m's step with the default options (profiled), then on each option's other path."""
    run.phase("paper-760m training step", lambda: time_model(run, profile=True))
    for path, overrides in OTHER_PATHS.items():
        run.phase(f"paper-760m training step, {overrides}", lambda p=path: time_model(run, p))


PHASES = ("sweep", "layer", "inductor", "attention", "bound", "model", "exact", "refine")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for results.jsonl and RESULTS.md")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (Triton interpreter)")
    parser.add_argument(
        "--budget-s", type=float, default=540, help="skip the model phase past this many seconds"
    )
    parser.add_argument(
        "--phases", default=",".join(PHASES), help=f"comma-separated, of {', '.join(PHASES)} (default: all)"
    )
    args = parser.parse_args()
    phases = args.phases.split(",")
    if unknown := set(phases) - set(PHASES):
        parser.error(f"--phases: unknown {', '.join(sorted(unknown))}; choose from {', '.join(PHASES)}")
    run = Run(args)
    rate = matmul_rate(run)
    if "sweep" in phases:
        run.phase("SwiGLU kernel block sweep", lambda: sweep_swiglu(run))
    if "layer" in phases:
        run.phase("fast-weight layer", lambda: check_and_time_layer(run, rate))
    if "inductor" in phases:
        run.phase("fast-weight layer compiled by inductor", lambda: inductor_layer(run, rate))
    if "bound" in phases:
        run.phase("cuBLAS bound", lambda: cublas_bound(run, rate))
    if "attention" in phases:
        run.phase("window attention", lambda: time_window_attention(run))
    for fn in run.later:
        run.phase("CUDA-graph layer timing", fn)
    if "model" in phases:
        model_phase(run)
    if "exact" in phases:
        run.phase("model paths' exactness", lambda: path_exactness(run))
    if "refine" in phases:
        run.phase("ReFINE steps on LaCT", lambda: refine_steps(run))
    print(f"\n{'metric':<42} {'value':>18}  verdict")
    for name, value, verdict in ROWS:
        print(f"{name:<42} {value:>18}  {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
