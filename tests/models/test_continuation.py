"""Branch continuations from captured states (models.continuation): the eager path's numbers and
gradients, and which mixers may replay from CUDA graphs (the graphed path itself needs a GPU:
`benchmarks/gpu_refine_step.py` checks it against the eager path there)."""

from __future__ import annotations

import torch
from models_helpers import VOCAB, randomized, rel_err

from refine_tasks.models import FastWeightCache, build_model, mixer_class
from refine_tasks.models.continuation import ContinuationGraphs, continue_branches


def test_continuation_equals_the_sequence_run_whole_and_reaches_the_prefix():
    """Tokens continued from the state captured after a prefix give the logits that prefix +
    tokens give as one sequence, and the loss's gradient reaches the prefix's embeddings."""
    model = randomized(build_model("tiny", VOCAB).double(), seed=2)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, VOCAB, (1, 40), generator=g)
    positions = torch.tensor([[13, 29]])
    branch = torch.randint(0, VOCAB, (2, 5), generator=g)
    pre = model.prefill(ids, capture=positions)
    logits = continue_branches(model, pre.captured, branch, ContinuationGraphs())  # CPU: the eager path
    for j, p in enumerate(positions[0].tolist()):
        whole = model(torch.cat([ids[:, :p], branch[j : j + 1]], dim=1)).logits[0, p:]
        assert rel_err(logits[j], whole) < 1e-10
    (logits * torch.randn(logits.shape, generator=g, dtype=logits.dtype)).sum().backward()
    grad = model.model.embeddings.weight.grad
    assert grad is not None and bool(grad[ids[0, :13]].abs().sum() > 0)  # prefix tokens got gradient


def test_continuation_matches_a_forward_with_the_cache():
    model = randomized(build_model("tiny", VOCAB).double(), seed=5)
    g = torch.Generator().manual_seed(6)
    state = model.prefill(torch.randint(0, VOCAB, (3, 17), generator=g)).final
    tokens = torch.randint(0, VOCAB, (3, 4), generator=g)
    want = model(tokens, past_key_values=FastWeightCache(state, 0)).logits
    assert torch.equal(continue_branches(model, state, tokens, None), want)


def test_only_mixers_whose_forward_is_graph_safe_are_capturable():
    assert mixer_class("deltanet").capturable
    assert not mixer_class("lact").capturable  # its forward branches on chunk fill on the host
