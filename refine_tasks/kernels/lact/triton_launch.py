"""Launch helpers shared by the LaCT Triton kernels: interpreter detection and block sizes."""

from __future__ import annotations

import triton
from triton import knobs


def interpreting() -> bool:
    """True under TRITON_INTERPRET=1 (kernels run on CPU tensors through numpy, for tests)."""
    return bool(knobs.runtime.interpret)


def pow2_block(n: int, cap: int) -> int:
    """The power of two covering n, between 16 (tl.dot's smallest tile side) and cap."""
    return max(16, min(cap, triton.next_power_of_2(n)))
