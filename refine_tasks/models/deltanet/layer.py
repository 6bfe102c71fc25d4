"""The DeltaNet token mixer (Yang et al. 2024), with fla's parameter names and math.

x -> q, k, v projections -> depthwise short conv + SiLU each -> heads -> beta = sigmoid(b_proj x)
-> delta rule with L2-normalised q, k -> RMS norm per head (SiLU-gated by g_proj x if use_gate)
-> o_proj. State per stream: the delta-rule matrix `recurrent` [N, H, K, V] (float32 or
wider) and the conv tails `conv_q`, `conv_k`, `conv_v` [N, D, W] (fla's cache layout).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from refine_tasks.kernels import (
    Backend,
    conv_states,
    conv_windows,
    delta_rule,
    rms_norm,
    rms_norm_gated,
    short_conv,
    short_conv_step,
)
from refine_tasks.models.configuration import FastWeightConfig
from refine_tasks.models.deltanet.segments import chained_delta_rule, segment_plan
from refine_tasks.models.layers import RMSNorm
from refine_tasks.models.mixer import MixerOutput, TokenMixer
from refine_tasks.models.state import Capture, LayerState

CONVS = ("q", "k", "v")


class ShortConv(nn.Module):
    """Depthwise causal conv weights, stored as fla's ShortConvolution (an nn.Conv1d): [D, 1, W]."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, 1, width))

    def init_weights(self, std: float) -> None:
        nn.init.normal_(self.weight, mean=0.0, std=std)

    @property
    def kernel(self) -> Tensor:
        return self.weight[:, 0]


class DeltaNetMixer(TokenMixer):
    capturable = True  # fla's kernels and the torch ops here never sync with the host

    def __init__(self, config: FastWeightConfig, layer_idx: int) -> None:
        super().__init__()
        D, Dk, Dv, H = config.hidden_size, config.key_dim, config.value_dim, config.num_heads
        self.num_heads, self.head_k, self.head_v = H, Dk // H, Dv // H
        self.width = config.conv_size
        self.use_gate = config.use_gate
        self.allow_neg_eigval = config.allow_neg_eigval
        self.state_chain = config.state_chain
        self.q_proj = nn.Linear(D, Dk, bias=False)
        self.k_proj = nn.Linear(D, Dk, bias=False)
        self.v_proj = nn.Linear(D, Dv, bias=False)
        self.b_proj = nn.Linear(D, H, bias=False)
        self.q_conv1d = ShortConv(Dk, self.width)
        self.k_conv1d = ShortConv(Dk, self.width)
        self.v_conv1d = ShortConv(Dv, self.width)
        if self.use_gate:
            self.g_proj = nn.Linear(D, Dv, bias=False)
        self.o_norm = RMSNorm(self.head_v, config.norm_eps)  # per head; gated by silu(g) with use_gate
        self.o_proj = nn.Linear(Dv, D, bias=False)

    def empty_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> LayerState:
        state_dtype = torch.promote_types(dtype, torch.float32)
        state = {
            "recurrent": torch.zeros(
                batch_size, self.num_heads, self.head_k, self.head_v, device=device, dtype=state_dtype
            )
        }
        for name in CONVS:
            channels = getattr(self, f"{name}_conv1d").weight.shape[0]
            state[f"conv_{name}"] = torch.zeros(batch_size, channels, self.width, device=device, dtype=dtype)
        return state

    def _heads(self, t: Tensor, dim: int) -> Tensor:
        return t.unflatten(-1, (self.num_heads, dim))

    def _beta(self, x: Tensor) -> Tensor:
        beta = torch.sigmoid(self.b_proj(x))
        return beta * 2.0 if self.allow_neg_eigval else beta  # negative eigenvalues: beta in (0, 2)

    def _output(self, x: Tensor, o: Tensor, backend: Backend) -> Tensor:
        """Per-head norm (gated), heads merged, o_proj. o: [..., H, V]."""
        if self.use_gate:
            o = rms_norm_gated(
                o, self._heads(self.g_proj(x), self.head_v), self.o_norm.weight, self.o_norm.eps, backend
            )
        else:
            o = rms_norm(o, self.o_norm.weight, self.o_norm.eps, backend)
        return self.o_proj(o.flatten(-2).to(x.dtype))

    def forward(
        self,
        x: Tensor,
        *,
        backend: Backend,
        state: LayerState | None = None,
        capture: Capture | None = None,
        output_final_state: bool = False,
    ) -> MixerOutput:
        B, T, _ = x.shape
        raw = {name: getattr(self, f"{name}_proj")(x) for name in CONVS}  # pre-conv inputs [B, T, D*]
        mixed = {
            name: short_conv(
                raw[name], getattr(self, f"{name}_conv1d").kernel, backend, _get(state, f"conv_{name}")
            )
            for name in CONVS
        }
        q, k = self._heads(mixed["q"], self.head_k), self._heads(mixed["k"], self.head_k)
        v, beta = self._heads(mixed["v"], self.head_v), self._beta(x)
        initial = _get(state, "recurrent")
        captured = final = None
        if capture is None:
            o, last = delta_rule(
                q, k, v, beta, backend=backend, initial_state=initial, output_final_state=output_final_state
            )
        else:
            positions = capture.positions
            plan = capture.derive(("segments", T), lambda: segment_plan(positions, T, x.device))
            windows = capture.derive(("conv", self.width), lambda: conv_windows(positions, self.width))
            o, at_positions, last = chained_delta_rule(
                q,
                k,
                v,
                beta,
                positions,
                backend=backend,
                chain=self.state_chain,
                initial_state=initial,
                plan=plan,
            )
            captured = {"recurrent": at_positions.flatten(0, 1)}
            for name in CONVS:
                tails = conv_states(raw[name], positions, self.width, _get(state, f"conv_{name}"), windows)
                captured[f"conv_{name}"] = tails.flatten(0, 1)
        if output_final_state:
            ends = torch.full((B, 1), T, dtype=torch.long, device=x.device)
            final = {"recurrent": last}
            for name in CONVS:
                final[f"conv_{name}"] = conv_states(raw[name], ends, self.width, _get(state, f"conv_{name}"))[
                    :, 0
                ]
        return MixerOutput(self._output(x, o, backend), captured, final)

    def step(self, x: Tensor, state: LayerState, *, backend: Backend) -> tuple[Tensor, LayerState]:
        new: LayerState = {}
        mixed = {}
        for name in CONVS:
            conv = getattr(self, f"{name}_conv1d")
            mixed[name], new[f"conv_{name}"] = short_conv_step(
                getattr(self, f"{name}_proj")(x), state[f"conv_{name}"], conv.kernel
            )
        q, k = self._heads(mixed["q"], self.head_k), self._heads(mixed["k"], self.head_k)
        v, beta = self._heads(mixed["v"], self.head_v), self._beta(x)
        o, new["recurrent"] = delta_rule(
            q[:, None],
            k[:, None],
            v[:, None],
            beta[:, None],
            backend=backend,
            initial_state=state["recurrent"],
            output_final_state=True,
            mode="recurrent",
        )
        return self._output(x, o[:, 0], backend), new


def _get(state: LayerState | None, name: str) -> Tensor | None:
    return None if state is None else state[name]
