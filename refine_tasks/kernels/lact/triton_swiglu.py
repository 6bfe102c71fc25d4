"""The SwiGLU token stage of the fast-weight layer: tokens projected onto the hidden layer, then
an element-wise SwiGLU expression, writing only what the following matmuls (`triton_gemm.bmm`)
consume.

Every stage of the layer starts by projecting tokens onto the hidden layer (g = x W0^T,
u = x W2^T, and for the step e = v W1). Modes:

- APPLY: x = q. Writes silu(g) u, the hidden of f(q).
- STEP: x = k, y = v. Writes [lr0 b | lr2 a] and lr1 h, the left factors of the update step
  (h = silu(g) u, a = e silu(g), b = e u silu'(g)).
- APPLY_BWD: x = q, y = dO (so e is the hidden's gradient). Writes silu(g) u and the gradients
  w.r.t. g and u.
- STEP_BWD: x = k, y = v, plus the step's incoming gradients G0, G2 [H, D], G1 [D, H]. Writes
  [g_bar | u_bar | lr0 b | lr2 a], [e_bar | lr1 h] and the learning rates' gradients.

Two paths compute the same outputs, chosen per call by the environment variable
REFINE_LACT_SWIGLU: `fused` (the default; `triton_swiglu_fused`, projections in registers),
`split` (`triton_swiglu_split`, projections as GEMMs, then an element-wise kernel) or `mixed`
(per mode, the path named in MIXED).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from refine_tasks.kernels.lact.triton_launch import variant
from refine_tasks.kernels.lact.triton_swiglu_epilogue import (
    APPLY,
    APPLY_BWD,
    OUT_WIDTHS,
    STEP,
    STEP_BWD,
    Projections,
    TokenStage,
)
from refine_tasks.kernels.lact.triton_swiglu_fused import swiglu_fused
from refine_tasks.kernels.lact.triton_swiglu_split import swiglu_split

SWIGLU_ENV = "REFINE_LACT_SWIGLU"
SWIGLU_PATHS = {"fused": swiglu_fused, "split": swiglu_split}
# `mixed`: the path per mode. Measured per mode on an H100 at the 760M chunk shape
# (benchmarks/RESULTS.md, lact_swiglu_<mode>_us_<path>): the forward modes are about as fast on
# either path keeping their projections, and the fused one is a single launch (the layer is
# host-bound once the split path's GEMMs add theirs); the backward modes read the kept projections
# back faster on the split path than in the fused kernel, whose epilogue then sets its pace.
MIXED: dict[int, str] = {APPLY: "fused", STEP: "fused", APPLY_BWD: "split", STEP_BWD: "split"}
BACKWARD_OF = {APPLY: APPLY_BWD, STEP: STEP_BWD}

__all__ = [
    "APPLY",
    "APPLY_BWD",
    "MIXED",
    "STEP",
    "STEP_BWD",
    "SWIGLU_ENV",
    "Projections",
    "TokenOutputs",
    "swiglu_path",
    "swiglu_tokens",
]


class TokenOutputs(NamedTuple):
    """out_a [B, T, a*H]; out_b [B, T, b*H] or None; the learning rates' gradients [B, 3, T]
    (STEP_BWD) or None; APPLY's and STEP's projections from the split path, else None."""

    out_a: Tensor
    out_b: Tensor | None
    rate_grads: Tensor | None
    projections: Projections | None


def swiglu_path() -> str:
    """`fused`, `split` or `mixed`: REFINE_LACT_SWIGLU, else `fused`."""
    return variant(SWIGLU_ENV, (*SWIGLU_PATHS, "mixed"), "fused")


def mode_path(mode: int, path: str) -> str:
    """The path (`fused` or `split`) that runs `mode` under the switch's value `path`."""
    return MIXED[mode] if path == "mixed" else path


def swiglu_tokens(
    mode: int,
    x: Tensor,
    w02: Tensor,
    w1: Tensor,
    y: Tensor | None = None,
    lrs: Tensor | None = None,
    g02: Tensor | None = None,
    g1: Tensor | None = None,
    saved: Projections | None = None,
    keep: bool = False,
    rate_grads: Tensor | None = None,
) -> TokenOutputs:
    """Run one mode over x [B, T, D] (inner stride 1). w02 = [W0; W2] [B, 2H, D], w1 [B, D, H]
    (x's dtype; each batch row's matrix dense, batch stride free: views of the packed state);
    y [B, T, D]; lrs [B, 3, T] float32 (lr0, lr1, lr2); g02 [B, 2H, D], g1 [B, D, H] the step's
    incoming gradients (STEP_BWD, laid out as w02, w1); saved: the forward mode's projections
    (APPLY's for APPLY_BWD, STEP's for STEP_BWD), read back instead of recomputed; keep: a
    gradient will follow, so APPLY and STEP hand back their projections where the matching
    backward mode runs on the split path (the fused backward modes recompute them as fast as they
    read them; the split path's forward hands them back in any case); rate_grads: a [B, 3, T]
    tensor (a view will do) for STEP_BWD's rate gradients. Returns `TokenOutputs`."""
    batch, t, d = x.shape
    h = w1.shape[2]
    if w02.shape != (batch, 2 * h, d) or w1.shape != (batch, d, h):
        raise ValueError(
            f"swiglu_tokens: w02 {tuple(w02.shape)} / w1 {tuple(w1.shape)} do not fit x {tuple(x.shape)}"
        )
    width_a, width_b = OUT_WIDTHS[mode]
    out_a = x.new_empty(batch, t, width_a * h)
    out_b = x.new_empty(batch, t, width_b * h) if width_b else out_a
    y = x if y is None else y
    lrs = out_a if lrs is None else lrs
    g02 = w02 if g02 is None else g02
    g1 = w1 if g1 is None else g1
    if x.stride(2) != 1 or y.stride(2) != 1 or lrs.stride(-1) != 1:
        raise ValueError("swiglu_tokens: x, y and lrs need a unit stride on their last axis")
    for name, m in (("w02", w02), ("w1", w1), ("g02", g02), ("g1", g1)):
        if m.stride()[1:] != (m.shape[2], 1):
            raise ValueError(
                f"swiglu_tokens: {name} {tuple(m.shape)} strides {m.stride()}: each matrix must be dense"
            )
    path = swiglu_path()
    keep = keep and mode in BACKWARD_OF and mode_path(BACKWARD_OF[mode], path) == "split"
    stage = TokenStage(mode, x, y, w02, w1, g02, g1, lrs, out_a, out_b, saved, keep)
    dlr, projections = SWIGLU_PATHS[mode_path(mode, path)](stage)
    if mode == STEP_BWD:  # per hidden tile [B, 3, tiles, T]: summed here, in a fixed order
        rate_grads = torch.sum(dlr, 2, out=rate_grads) if rate_grads is not None else dlr.sum(2)
    return TokenOutputs(out_a, out_b if width_b else None, rate_grads, projections)
