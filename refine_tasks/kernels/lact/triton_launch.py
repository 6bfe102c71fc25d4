"""Launch helpers shared by the LaCT Triton kernels: interpreter detection, block sizes, grid sides.

Plain integer arithmetic here, not `triton.cdiv` / `triton.next_power_of_2`: called from Python
those go through Triton's constexpr-function wrapper, a cost paid on every launch of every chunk.
"""

from __future__ import annotations

from functools import cache

from triton import knobs


@cache
def interpreting() -> bool:
    """True under TRITON_INTERPRET=1 (kernels run on CPU tensors through numpy, for tests). Triton
    decides this once per process, when the kernels are decorated, so the answer is cached."""
    return bool(knobs.runtime.interpret)


def cdiv(n: int, d: int) -> int:
    return -(-n // d)


def next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def pow2_block(n: int, cap: int) -> int:
    """The power of two covering n, between 16 (tl.dot's smallest tile side) and cap."""
    return max(16, min(cap, next_pow2(n)))
