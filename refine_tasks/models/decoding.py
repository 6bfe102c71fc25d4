"""Decoding on CUDA without per-token launch overhead: one decode step captured in a CUDA graph.

A step of a 24-layer model is a few hundred small kernels; launched one by one from Python
they take ~30x the time the GPU needs. The graph replays them all in one launch. It reads
static input buffers (tokens, State) and writes static outputs, so `decode` copies the
caller's State in and the results out (the caller's tensors are never aliased), while a
`DecodeStream` keeps its State on the device and only feeds the previous output back in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor, nn

from refine_tasks.models.state import DecodeOutput, State


class StepModel(Protocol):
    """What a decoder needs of a model (the shell, `FastWeightForCausalLM`): its output head (device
    and dtype), empty states and one eager decode step. A protocol, so the shell imports this module
    and not the other way round."""

    lm_head: nn.Linear

    def empty_state(self, batch_size: int) -> State: ...

    def _decode_eager(self, state: State, tokens: Tensor) -> DecodeOutput: ...


WARMUP_STEPS = 3  # Triton autotuning and lazy allocations must happen before capture


def warm_up(device: torch.device, step: Callable[[], object]) -> None:
    """Run `step` WARMUP_STEPS times on a side stream, as a CUDA-graph capture of it needs."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(WARMUP_STEPS):
            step()
    torch.cuda.current_stream(device).wait_stream(side)


class GraphDecoder:
    """A captured decode step for a fixed number of streams, on the model's device and dtype."""

    def __init__(self, model: StepModel, batch_size: int) -> None:
        device = model.lm_head.weight.device
        self.tokens = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.state = model.empty_state(batch_size)
        with torch.no_grad():
            warm_up(device, lambda: model._decode_eager(self.state, self.tokens))
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph):
            self.out = model._decode_eager(self.state, self.tokens)
        self._inputs = self.state.tensors()
        self._outputs = self.out.state.tensors()

    def decode(self, state: State, tokens: Tensor) -> DecodeOutput:
        """Functional step: copies `state` in, replays, returns copies (the caller owns them)."""
        self.tokens.copy_(tokens)
        torch._foreach_copy_(self._inputs, state.tensors())
        self.graph.replay()
        return DecodeOutput(self.out.logits.clone(), self.out.hidden.clone(), self.out.state.clone())

    def stream(self, state: State) -> DecodeStream:
        """A stepper that keeps its streams' State on the device between steps (one copy in)."""
        return DecodeStream(self, state)


class DecodeStream:
    """Step N streams token by token without copying the State in and out each step.

    `step` returns views of the decoder's output buffers, valid until the next step or decode
    call of this decoder: clone what you keep. One stream per decoder at a time."""

    def __init__(self, decoder: GraphDecoder, state: State) -> None:
        self.decoder = decoder
        torch._foreach_copy_(decoder._inputs, state.tensors())
        self._fresh = True

    def step(self, tokens: Tensor) -> DecodeOutput:
        """tokens [N] -> logits [N, V], hidden [N, D], state (views of the decoder's buffers)."""
        d = self.decoder
        if not self._fresh:
            torch._foreach_copy_(d._inputs, d._outputs)
        self._fresh = False
        d.tokens.copy_(tokens)
        d.graph.replay()
        return d.out


class EagerDecodeStream:
    """The CPU counterpart of DecodeStream: plain eager steps, same interface."""

    def __init__(self, model: StepModel, state: State) -> None:
        self.model = model
        self.state = state

    def step(self, tokens: Tensor) -> DecodeOutput:
        with torch.no_grad():
            out = self.model._decode_eager(self.state, tokens)
        self.state = out.state
        return out
