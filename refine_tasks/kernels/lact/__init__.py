"""LaCT's SwiGLU fast-weight layer: torch reference (`reference.py`, the CPU path) beside our
Triton kernels (`triton_*.py`, one path per operation), and the large-chunk schedule over either
(`chunked.py`; the caller names the steps: `TorchOps` or `TritonOps`)."""

from refine_tasks.kernels.lact.chunked import (
    ChunkOps,
    FastWeightState,
    LaCTTrace,
    TorchOps,
    fast_weight_update,
    lact_fast_weight,
)
from refine_tasks.kernels.lact.reference import (
    FastWeights,
    momentum_step,
    newton_schulz,
    renormalised_update,
    row_norms,
    swiglu_apply,
    swiglu_fast_weight_grad,
)
from refine_tasks.kernels.lact.triton_ops import TritonOps

__all__ = [
    "ChunkOps",
    "FastWeightState",
    "FastWeights",
    "LaCTTrace",
    "TorchOps",
    "TritonOps",
    "fast_weight_update",
    "lact_fast_weight",
    "momentum_step",
    "newton_schulz",
    "renormalised_update",
    "row_norms",
    "swiglu_apply",
    "swiglu_fast_weight_grad",
]
