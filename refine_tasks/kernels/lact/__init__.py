"""LaCT's SwiGLU fast-weight layer: torch reference (`reference.py`, the CPU path) beside our
Triton kernels (`triton_*.py`), and the large-chunk schedule over both (`chunked.py`)."""

from refine_tasks.kernels.lact.chunked import (
    FastWeightState,
    LaCTBackend,
    LaCTTrace,
    chunk_ops,
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

__all__ = [
    "FastWeightState",
    "FastWeights",
    "LaCTBackend",
    "LaCTTrace",
    "chunk_ops",
    "fast_weight_update",
    "lact_fast_weight",
    "momentum_step",
    "newton_schulz",
    "renormalised_update",
    "row_norms",
    "swiglu_apply",
    "swiglu_fast_weight_grad",
]
