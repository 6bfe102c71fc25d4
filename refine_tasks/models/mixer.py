"""The token-mixer interface: what the causal-LM shell needs from a fast-weight layer.

The shell (`modeling.py`) owns embeddings, norms, MLPs, the LM head and the state API; it
knows nothing of a mixer's internals. A mixer owns its parameters and its per-layer state,
a dict of tensors with the stream as dim 0 (`LayerState`). To add one:

1. subclass `TokenMixer` in `refine_tasks/models/<name>.py` and implement the three methods;
2. add `"<name>": "refine_tasks.models.<name>:<Class>"` to `MIXERS` (imported on first use);
3. parameters: nn.Linear and nn.Embedding get normal(0, initializer_range) from the shell; any
   other submodule with parameters defines `init_weights(std: float)`.

The state API follows from `forward` alone: `prefill` passes `capture`, `forward_branched`
runs each layer on the main sequence with `capture=Capture(positions)` and then on the branches with
`state=captured`, so a mixer's captured states must be differentiable functions of its input
(gradients reach the prefix through them). `decode` calls `step`, which on CUDA is captured
in a CUDA graph: no host syncs and no data-dependent Python control flow in `step`.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from refine_tasks.kernels import Backend
from refine_tasks.models.state import Capture, LayerState

MIXERS: dict[str, str] = {
    "deltanet": "refine_tasks.models.deltanet.layer:DeltaNetMixer",
    "lact": "refine_tasks.models.lact.layer:LaCTMixer",
}


@dataclass
class MixerOutput:
    """hidden [B, T, D]; captured: B*P streams (row b*P+j after x[b, :positions[b, j]]) or None;
    final: B streams after all T tokens, or None when not asked for."""

    hidden: Tensor
    captured: LayerState | None = None
    final: LayerState | None = None


class TokenMixer(nn.Module, ABC):
    """One layer's token mixer. Built as `cls(config, layer_idx)` from a `FastWeightConfig`.

    `capturable`: `forward` with a `state` (no capture) is CUDA-graph safe, so short branch
    continuations may replay from graphs (`models.continuation`); off unless a mixer says so.
    """

    capturable: bool = False

    @abstractmethod
    def empty_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> LayerState:
        """The state of `batch_size` streams that have consumed nothing (dtype: the model's)."""

    @abstractmethod
    def forward(
        self,
        x: Tensor,
        *,
        backend: Backend,
        state: LayerState | None = None,
        capture: Capture | None = None,
        output_final_state: bool = False,
    ) -> MixerOutput:
        """Mix x [B, T, D] causally, starting from `state` (None: empty).

        capture: the pass's Capture; capture.positions, LongTensor [B, P], prefix lengths 0..T in
        any order; the captured state of row b*P+j has consumed x[b, :capture.positions[b, j]]
        (after `state`). Index structures derived from the positions go in `capture.derive`, so
        every layer of the pass shares them.
        """

    @abstractmethod
    def step(self, x: Tensor, state: LayerState, *, backend: Backend) -> tuple[Tensor, LayerState]:
        """One token for each of N streams: x [N, D] -> (y [N, D], new state). Never in place."""


def mixer_class(name: str) -> type[TokenMixer]:
    """The TokenMixer class registered as `name` in MIXERS."""
    if name not in MIXERS:
        raise ValueError(f"mixer={name!r}: unknown token mixer; known: {', '.join(sorted(MIXERS))}")
    module, _, attr = MIXERS[name].partition(":")
    return getattr(importlib.import_module(module), attr)
