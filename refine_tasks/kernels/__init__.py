"""Kernels: each op as a torch reference (the CPU path) beside Triton kernels (the GPU path).

Ops know nothing of layers. `resolve_backend` picks the implementation from the model config's
`kernel_backend` and the tensors' device. Folders hold an op with its reference beside its
kernels: `delta_rule/` (`naive` beside fla's kernels), `state_chain/`, `lact/`.
"""

from refine_tasks.kernels.backend import Backend, resolve_backend
from refine_tasks.kernels.cross_entropy import IGNORE_INDEX, cross_entropy
from refine_tasks.kernels.delta_rule.naive import delta_rule_chunked, delta_rule_recurrent
from refine_tasks.kernels.delta_rule.ops import delta_rule
from refine_tasks.kernels.mlp import swiglu_mlp
from refine_tasks.kernels.norms import add_rms_norm, l2_normalize, rms_norm, rms_norm_gated
from refine_tasks.kernels.short_conv import conv_states, conv_windows, short_conv, short_conv_step

__all__ = [
    "IGNORE_INDEX",
    "Backend",
    "add_rms_norm",
    "conv_states",
    "conv_windows",
    "cross_entropy",
    "delta_rule",
    "delta_rule_chunked",
    "delta_rule_recurrent",
    "l2_normalize",
    "resolve_backend",
    "rms_norm",
    "rms_norm_gated",
    "short_conv",
    "short_conv_step",
    "swiglu_mlp",
]
