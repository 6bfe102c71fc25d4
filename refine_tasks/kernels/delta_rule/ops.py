"""The delta rule behind one call for both backends: our torch reference or fla's Triton kernels.

`delta_rule` is what the DeltaNet mixer calls. `mode="chunk"` is the training/prefill form,
`mode="recurrent"` the decoding form (fla: `fused_recurrent_delta_rule`). Shapes as in
`delta_rule_reference`; `cu_seqlens` packs N sequences into one row ([1, total, H, D] inputs,
N initial/final states), each with its own state; `cu_seqlens_cpu`, its host copy, spares fla
the device sync of reading the bounds back.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from refine_tasks.kernels.backend import Backend
from refine_tasks.kernels.delta_rule.naive import delta_rule_chunked, delta_rule_recurrent
from refine_tasks.kernels.norms import l2_normalize

L2_EPS = 1e-6  # fla's in-kernel q/k L2 norm: x / sqrt(sum(x^2) + eps)


def delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    *,
    backend: Backend,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
    cu_seqlens_cpu: Tensor | None = None,
    normalize_qk: bool = True,
    mode: Literal["chunk", "recurrent"] = "chunk",
) -> tuple[Tensor, Tensor | None]:
    """o [B, T, H, V] in v's dtype and, if asked, the final state [N, H, K, V] (float32 or wider).

    q, k: [B, T, H, K]; v: [B, T, H, V]; beta: [B, T, H]; initial_state: [N, H, K, V].
    `normalize_qk` L2-normalises q and k first (inside the kernel on fla).
    """
    scale = q.shape[-1] ** -0.5
    if backend == "triton":
        return _fla_delta_rule(
            q,
            k,
            v,
            beta,
            scale,
            initial_state,
            output_final_state,
            cu_seqlens,
            cu_seqlens_cpu,
            normalize_qk,
            mode,
        )
    if normalize_qk:
        q, k = l2_normalize(q, L2_EPS), l2_normalize(k, L2_EPS)
    rule = delta_rule_chunked if mode == "chunk" else delta_rule_recurrent
    if cu_seqlens is None:
        o, final = rule(q, k, v, beta, scale, initial_state)
    else:
        bounds = (cu_seqlens if cu_seqlens_cpu is None else cu_seqlens_cpu).tolist()
        pieces = [
            rule(
                *(x[:, s:e] for x in (q, k, v, beta)),
                scale,
                None if initial_state is None else initial_state[n : n + 1],
            )
            for n, (s, e) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))
        ]
        o = torch.cat([p[0] for p in pieces], dim=1)
        final = torch.cat([p[1] for p in pieces], dim=0)
    return o.to(v.dtype), (final if output_final_state else None)


def _fla_delta_rule(
    q, k, v, beta, scale, initial_state, output_final_state, cu_seqlens, cu_seqlens_cpu, normalize_qk, mode
):
    from fla.ops.delta_rule import chunk_delta_rule, fused_recurrent_delta_rule

    if mode == "chunk" and q.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(
            f"fla's chunk_delta_rule needs bfloat16/float16 inputs, got {q.dtype}: run the model in bf16 "
            f"(torch_dtype=torch.bfloat16) or use the torch backend (REFINE_KERNEL_BACKEND=torch)"
        )
    if mode == "chunk":
        kernel, extra = chunk_delta_rule, {"cu_seqlens_cpu": cu_seqlens_cpu}
    else:
        kernel, extra = fused_recurrent_delta_rule, {}
    return kernel(
        q=q,
        k=k,
        v=v,
        beta=beta,
        scale=scale,
        initial_state=initial_state,
        output_final_state=output_final_state,
        use_qk_l2norm_in_kernel=normalize_qk,
        cu_seqlens=cu_seqlens,
        **extra,
    )
