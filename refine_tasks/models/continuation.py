"""Branches continued from captured states, with gradients: eagerly, or replayed from CUDA graphs.

In the fused ReFINE step the rollout tokens continue, differentiably, from the states captured
in the main pass: N streams x L tokens through every layer. That is a few hundred small
kernels forward and twice as many backward for only N*L tokens, so run eagerly it is
host-bound (1.3B, 8 x 5 tokens, H100: 70 ms of wall time for 10 ms of GPU work, forward
alone). `GraphedContinuation` captures the forward and the backward once per shape; a replay is
one launch each, and an autograd Function joins them to the surrounding graph: gradients flow
into the captured states (so on into the prefix) and accumulate into the parameters as usual.

The backward graph writes the parameters' gradients into static buffers and hands them to
autograd without a copy (a copy of every gradient would cost ~5 GiB at 1.3B). Autograd may keep
such a buffer as a parameter's `.grad`; before the next replay, a `.grad` still sharing a
buffer is moved to its own memory (only under gradient accumulation or `zero_grad(set_to_none=
False)`; the usual step has set it to None by then).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.func import functional_call

from refine_tasks.models.cache import FastWeightCache
from refine_tasks.models.decoding import warm_up
from refine_tasks.models.state import State

if TYPE_CHECKING:
    from refine_tasks.models.modeling import FastWeightForCausalLM

MAX_GRAPHS = 2  # shapes kept per run: each holds every parameter's gradient buffer (~5 GiB at 1.3B)


def continue_eager(model: FastWeightForCausalLM, state: State, tokens: Tensor) -> Tensor:
    """logits [N, L, V] of tokens [N, L], each stream from its row of `state`."""
    # seen_tokens (0) is bookkeeping for generate() only; the state is what continues.
    return model(tokens, past_key_values=FastWeightCache(state, 0)).logits


class GraphedContinuation:
    """The continuation's forward and backward for one shape (streams, length, state layout),
    captured under the autocast settings active at construction."""

    def __init__(self, model: FastWeightForCausalLM, state: State, tokens: Tensor) -> None:
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        self.pointers = [p.data_ptr() for p in self.params]  # captured addresses of the weights
        self.autocast = _autocast(tokens.device)
        self.names = [sorted(layer) for layer in state.layers]
        self.tokens = tokens.detach().clone()
        self.states = [t.detach().clone().requires_grad_(True) for t in state.tensors()]
        device = tokens.device

        def run() -> tuple[Tensor, list[Tensor]]:
            # Views made here stand in for the states and the weights, so the backward ends at
            # nodes of this stream: the weights' own AccumulateGrad nodes belong to the default
            # stream (the main pass made them), and a capture must not make it wait.
            states = [t.view_as(t) for t in self.states]
            weights = {name: p.view_as(p) for name, p in named}
            cache = FastWeightCache(self._state(states), 0)
            logits = functional_call(model, weights, (self.tokens,), {"past_key_values": cache}).logits
            return logits, states + list(weights.values())

        def forward_and_backward() -> None:
            logits, leaves = run()
            torch.autograd.grad(logits, leaves, torch.ones_like(logits), allow_unused=True)

        warm_up(device, forward_and_backward)
        pool = torch.cuda.graph_pool_handle()
        self.forward_graph, self.backward_graph = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.forward_graph, pool=pool):
            self.logits, leaves = run()
        self.grad_logits = torch.zeros_like(self.logits)
        with torch.cuda.graph(self.backward_graph, pool=pool):
            self.grads = torch.autograd.grad(self.logits, leaves, self.grad_logits, allow_unused=True)
        self._pending: weakref.ref | None = None  # the replayed forward whose backward has not run

    @property
    def pending(self) -> bool:
        """A replayed forward still awaits its backward (its saved activations are the graph's)."""
        return self._pending is not None and self._pending() is not None

    def _state(self, tensors: list[Tensor]) -> State:
        it = iter(tensors)
        return State([{name: next(it) for name in names} for names in self.names])

    def matches(self, state: State, tokens: Tensor) -> bool:
        mine = self.states
        theirs = state.tensors()
        return (
            tokens.shape == self.tokens.shape
            and _autocast(tokens.device) == self.autocast
            and len(theirs) == len(mine)
            and all(a.shape == b.shape and a.dtype == b.dtype for a, b in zip(theirs, mine, strict=True))
        )

    def __call__(self, state: State, tokens: Tensor) -> Tensor:
        return _Replay.apply(self, tokens, *state.tensors(), *self.params)

    def reclaim_grads(self) -> None:
        """Move any parameter `.grad` that still shares a static gradient buffer to its own memory."""
        for p, g in zip(self.params, self.grads[len(self.states) :], strict=True):
            if g is not None and p.grad is not None and p.grad.data_ptr() == g.data_ptr():
                p.grad = p.grad.clone()


def _autocast(device: torch.device) -> tuple[bool, torch.dtype]:
    return torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type)


class _Replay(torch.autograd.Function):
    @staticmethod
    def forward(ctx, graphed: GraphedContinuation, tokens: Tensor, *inputs: Tensor) -> Tensor:
        graphed.tokens.copy_(tokens)
        torch._foreach_copy_(graphed.states, list(inputs[: len(graphed.states)]))
        graphed.forward_graph.replay()
        graphed._pending = weakref.ref(ctx)  # dies with the autograd graph if backward never runs
        ctx.graphed = graphed
        return graphed.logits.detach().clone()  # the buffer is rewritten by the next replay

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logits: Tensor):
        graphed: GraphedContinuation = ctx.graphed
        graphed.grad_logits.copy_(grad_logits)
        graphed.reclaim_grads()
        graphed.backward_graph.replay()
        graphed._pending = None
        n = len(graphed.states)
        states = [g.clone() if g is not None else None for g in graphed.grads[:n]]
        params = [g.detach() if g is not None else None for g in graphed.grads[n:]]
        return None, None, *states, *params


class ContinuationGraphs:
    """The captured continuations of one training run, one per shape (streams, length, state
    layout), at most `limit` (the oldest shape goes first: a short last batch). Each holds every
    parameter's gradient buffer (~5 GiB at 1.3B), so the run that made them owns them and
    `clear`s them when it is done; nothing else keeps them alive."""

    def __init__(self, limit: int = MAX_GRAPHS) -> None:
        self.limit = limit
        self.graphs: list[GraphedContinuation] = []

    def __len__(self) -> int:
        return len(self.graphs)

    def clear(self) -> None:
        self.graphs.clear()

    def for_call(self, model: FastWeightForCausalLM, state: State, tokens: Tensor) -> GraphedContinuation:
        """The graph of this call's shape, captured on first use."""
        pointers = [p.data_ptr() for p in model.parameters() if p.requires_grad]
        self.graphs[:] = [g for g in self.graphs if g.pointers == pointers]  # weights moved or cast: stale
        graphed = next((g for g in self.graphs if g.matches(state, tokens)), None)
        if graphed is None:
            del self.graphs[: max(0, len(self.graphs) - self.limit + 1)]
            graphed = GraphedContinuation(model, state, tokens)
            self.graphs.append(graphed)
        return graphed


def continue_branches(
    model: FastWeightForCausalLM, state: State, tokens: Tensor, graphs: ContinuationGraphs | None = None
) -> Tensor:
    """Tokens [N, L] continued from `state` (N streams) with gradients: logits [N, L, V].

    With `graphs` (the caller's), on CUDA, gradients on and every mixer capturable, the two passes
    replay from CUDA graphs captured on first use per shape; otherwise they run eagerly. Same
    computation either way (on an H100 at 1.3B the two differ by no more than the eager step run
    twice)."""
    usable = (
        graphs is not None
        and tokens.is_cuda
        and torch.is_grad_enabled()
        and all(getattr(layer.attn, "capturable", False) for layer in model.model.layers)
    )
    if not usable:
        return continue_eager(model, state, tokens)
    graphed = graphs.for_call(model, state, tokens)
    if graphed.pending:  # its saved activations belong to a forward still awaiting backward
        return continue_eager(model, state, tokens)
    return graphed(state, tokens)
