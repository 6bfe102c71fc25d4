"""The naive way to score branches: every prefix + branch as its own full sequence.

What `forward_branched` must equal; the tests and the benchmarks compare against it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from refine_tasks.models.modeling import FastWeightForCausalLM
from refine_tasks.models.state import BranchedOutput


def forward_branched_naive(
    model: FastWeightForCausalLM, input_ids: Tensor, positions: Tensor, branch_tokens: Tensor
) -> BranchedOutput:
    """Same contract as `model.forward_branched`, one forward pass per (row, branch)."""
    B, P, L = branch_tokens.shape
    main = model.prefill(input_ids)
    logits, hidden = [], []
    for b in range(B):
        for j in range(P):
            p = int(positions[b, j])
            run = model.prefill(torch.cat([input_ids[b, :p], branch_tokens[b, j]])[None])
            logits.append(run.logits[0, p:])
            hidden.append(run.hidden[0, p:])
    return BranchedOutput(
        main.logits,
        main.hidden,
        torch.stack(logits).unflatten(0, (B, P)),
        torch.stack(hidden).unflatten(0, (B, P)),
    )
