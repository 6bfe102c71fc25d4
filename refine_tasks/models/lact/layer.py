"""The LaCT token mixer (large-chunk test-time training, a1600012888/LaCT): sliding-window
attention plus a SwiGLU fast-weight network per head, updated once per large chunk.

x -> qkv. Attention: RoPE on q, k; causal window attention. Fast weights: q, k rescaled
per channel (qk_scale, qk_offset); q, k, v through SiLU; q, k L2-normalised per head and
RoPE'd; per-token rates softplus(lr_proj x + softplus^-1(base_lr)) and momentum gates
sigmoid(momentum_proj x); `refine_tasks.kernels.lact` applies then updates the weights chunk by
chunk; the output is RMS-normed per head and scaled by silu(ttt_scale_proj x). The two halves
are summed and projected by o_proj. Unlike LaCT's own cache, decoding is truly recurrent: the
state (`state.py`) carries the fast weights, the momentum, the current chunk's pending
tokens and the attention window, so prefill / decode / forward_branched are exact.
"""

from __future__ import annotations

import math
from functools import cache
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from refine_tasks.kernels import Backend, rms_norm
from refine_tasks.kernels.lact import (
    FastWeights,
    FastWeightState,
    TorchOps,
    TritonOps,
    fast_weight_update,
    lact_fast_weight,
    row_norms,
    swiglu_apply,
    swiglu_fast_weight_grad,
)
from refine_tasks.models.configuration import FastWeightConfig
from refine_tasks.models.lact.attention import rotary, sliding_window_attention
from refine_tasks.models.lact.config import LaCTOptions
from refine_tasks.models.lact.state import (
    MOMENTA,
    WEIGHTS,
    chunk_slots,
    fast_weights,
    gather_slots,
    ring_slots,
    state_keys,
    unroll_ring,
)
from refine_tasks.models.layers import RMSNorm
from refine_tasks.models.mixer import MixerOutput, TokenMixer
from refine_tasks.models.state import Capture, LayerState

L2_EPS = 1e-5  # LaCT's l2_norm: x / (||x|| + eps)


def compiled_features(setting: str | bool, x: Tensor) -> bool:
    """Whether `forward` computes its per-token features compiled (torch.compile fuses their dozens
    of element-wise ops, RoPE's above all, into a few kernels each way): `LaCTOptions.lact_compile`,
    True, False or "auto" (on for CUDA tensors outside CUDA-graph capture; a first call compiles).
    Only `forward` without a state asks; with one, and in `step` (one token), they run eagerly."""
    if setting == "auto":
        return x.is_cuda and not torch.cuda.is_current_stream_capturing()
    return bool(setting)


class InitialFastWeight(nn.Module):
    """The slow (learned) starting value of W0 or W2 [heads, out, in]: LaCT's low-rank
    parameterisation left @ right + I/2 when rank > 0, else a full matrix."""

    def __init__(self, heads: int, out_features: int, in_features: int, rank: int, gain: float) -> None:
        super().__init__()
        self.rank, self.gain = rank, gain
        if rank > 0:
            self.w_left = nn.Parameter(torch.empty(heads, out_features, rank))
            self.w_right = nn.Parameter(torch.empty(heads, rank, in_features))
        else:
            self.weight = nn.Parameter(torch.empty(heads, out_features, in_features))

    def init_weights(self, std: float) -> None:
        if self.rank > 0:
            nn.init.normal_(self.w_left, std=self.gain / math.sqrt(self.rank))
            nn.init.normal_(self.w_right, std=self.gain / math.sqrt(self.w_right.shape[-1]))
        else:
            nn.init.normal_(self.weight, std=1 / math.sqrt(self.weight.shape[-1]))

    def forward(self) -> Tensor:
        if self.rank <= 0:
            return self.weight
        w = self.w_left @ self.w_right
        return w + 0.5 * torch.eye(w.shape[1], w.shape[2], device=w.device, dtype=w.dtype)


class Features(NamedTuple):
    """Per-token inputs of both halves: attention q/k/v [N, T, attn heads, d]; fast-weight
    q/k/v [N, T, heads, d]; lr [N, T, heads, 3]; gate, scale [N, T, heads] (or None)."""

    aq: Tensor
    ak: Tensor
    av: Tensor
    fq: Tensor
    fk: Tensor
    fv: Tensor
    lr: Tensor
    gate: Tensor | None
    scale: Tensor | None


class LaCTMixer(TokenMixer):
    def __init__(self, config: FastWeightConfig, layer_idx: int) -> None:
        super().__init__()
        opts = self.opts = LaCTOptions.from_config(config)
        D = config.hidden_size
        self.heads, self.head_dim = config.num_heads, D // config.num_heads
        self.attn_heads, self.attn_dim = opts.num_attn_heads, D // opts.num_attn_heads
        d = self.head_dim
        self.qkv = nn.Linear(D, 3 * D, bias=False)
        self.o_proj = nn.Linear(D, D, bias=False)
        self.w0 = InitialFastWeight(self.heads, d, d, opts.w0_w2_low_rank, opts.fw_init_gain)
        self.w2 = InitialFastWeight(self.heads, d, d, opts.w0_w2_low_rank, opts.fw_init_gain)
        self.w1 = nn.Parameter(torch.empty(self.heads, d, d))
        self.lr_proj = nn.Linear(D, 3 * self.heads)
        self.qk_scale = nn.Parameter(torch.ones(D, 2))
        self.qk_offset = nn.Parameter(torch.zeros(D, 2))
        self.ttt_norm = RMSNorm(d, opts.ttt_norm_eps)  # per head, shared by the heads
        if opts.learnable_ttt_scale:
            self.ttt_scale_proj = nn.Linear(D, self.heads)
        if opts.use_momentum:
            self.momentum_proj = nn.Linear(D, self.heads)
        self.lr_offset = opts.base_lr + math.log(-math.expm1(-opts.base_lr))  # softplus^-1(base_lr)

    def init_weights(self, std: float) -> None:
        nn.init.ones_(self.qk_scale)
        nn.init.zeros_(self.qk_offset)
        nn.init.normal_(self.w1, std=1 / math.sqrt(self.head_dim))
        for name in ("lr_proj", "ttt_scale_proj", "momentum_proj"):
            if hasattr(self, name):
                nn.init.zeros_(getattr(self, name).bias)

    # ---- pieces shared by forward and step -----------------------------------------------
    def _wide(self) -> torch.dtype:
        return torch.promote_types(self.w1.dtype, torch.float32)

    def _initial(self) -> FastWeights:
        """The slow starting weights [heads, ., .] in the state's dtype."""
        return FastWeights(*(w.to(self._wide()) for w in (self.w0(), self.w1, self.w2())))

    def _norms(self, streams: int) -> FastWeights:
        """Row norms of the starting weights, repeated for `streams` streams: [streams*heads, rows]."""
        return FastWeights(*(m.repeat(streams, 1) for m in row_norms(self._initial())))

    def _features(self, x: Tensor, positions: Tensor) -> Features:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        theta, wide = self.opts.rope_theta, self._wide()

        def attn(t: Tensor) -> Tensor:
            return t.unflatten(-1, (self.attn_heads, self.attn_dim))

        def fast(t: Tensor) -> Tensor:  # per-head L2 norm, then RoPE over the attention heads' split
            t = t.unflatten(-1, (self.heads, self.head_dim)).to(wide)
            t = (t / (t.norm(dim=-1, keepdim=True) + L2_EPS)).to(x.dtype).flatten(-2)
            return rotary(attn(t), positions, theta).flatten(-2).unflatten(-1, (self.heads, self.head_dim))

        fq = fast(F.silu(q * self.qk_scale[:, 0] + self.qk_offset[:, 0]))
        fk = fast(F.silu(k * self.qk_scale[:, 1] + self.qk_offset[:, 1]))
        fv = F.silu(v).unflatten(-1, (self.heads, self.head_dim))
        lr = F.softplus(self.lr_proj(x).to(wide) + self.lr_offset).unflatten(-1, (self.heads, 3))
        gate = torch.sigmoid(self.momentum_proj(x).to(wide)) if self.opts.use_momentum else None
        scale = F.silu(self.ttt_scale_proj(x)) if self.opts.learnable_ttt_scale else None
        return Features(
            rotary(attn(q), positions, theta),
            rotary(attn(k), positions, theta),
            attn(v),
            fq,
            fk,
            fv,
            lr,
            gate,
            scale,
        )

    def _output(self, attn: Tensor, fw: Tensor, scale: Tensor | None, backend: Backend) -> Tensor:
        """attn [.., attn heads, d] + normed, scaled fast-weight output [.., heads, d] -> o_proj."""
        fw = rms_norm(fw, self.ttt_norm.weight, self.ttt_norm.eps, backend)
        if scale is not None:
            fw = fw * scale[..., None]
        return self.o_proj(attn.flatten(-2) + fw.flatten(-2).to(attn.dtype))

    def _compute_dtype(self, activations: torch.dtype, backend: Backend) -> torch.dtype:
        # Our Triton kernels take matmul operands in the activations' dtype (bf16 in training);
        # the torch reference computes in the state's dtype.
        return activations if backend == "fla" else self._wide()

    # ---- TokenMixer ----------------------------------------------------------------------
    def empty_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> LayerState:
        wide = torch.promote_types(dtype, torch.float32)
        n, h, d, c = batch_size, self.heads, self.head_dim, self.opts.lact_chunk_size
        init = self._initial()

        def zeros(*shape: int, dt: torch.dtype = wide) -> Tensor:
            return torch.zeros(*shape, device=device, dtype=dt)

        parts = {
            name: w.detach().to(device, wide).expand(n, -1, -1, -1).clone()
            for name, w in zip(WEIGHTS, init, strict=True)
        }
        parts |= {name: zeros(n, h, d, d) for name in MOMENTA}
        parts |= {
            "pending_k": zeros(n, h, c, d, dt=dtype),
            "pending_v": zeros(n, h, c, d, dt=dtype),
            "pending_lr": zeros(n, h, 3, c),
            "pending_gate": zeros(n, h, c),
            "window_k": zeros(n, self.opts.window_size - 1, self.attn_heads, self.attn_dim, dt=dtype),
            "window_v": zeros(n, self.opts.window_size - 1, self.attn_heads, self.attn_dim, dt=dtype),
            "position": torch.zeros(n, dtype=torch.long, device=device),
        }
        return {key: parts[key] for key in state_keys(self.opts.use_momentum)}

    def forward(  # TokenMixer.forward
        self, x: Tensor, *, backend: Backend, state: LayerState | None = None, capture: Capture | None = None,
        output_final_state: bool = False,
    ) -> MixerOutput:  # fmt: skip
        B, T, _ = x.shape
        positions = None if capture is None else capture.positions  # [B, P]
        start = state["position"] if state is not None else torch.zeros(B, dtype=torch.long, device=x.device)
        # compiled only from a fresh start (training, prefill): calls that continue a state are
        # short (rollouts, in CUDA-graph warm-ups too) and would each cost a compilation
        compiled = state is None and compiled_features(self.opts.lact_compile, x)
        features = _compiled_features() if compiled else LaCTMixer._features
        f = features(self, x, start[:, None] + torch.arange(T, device=x.device))
        window = self.opts.window_size
        keys, values, valid, history = f.ak, f.av, None, 0
        if state is not None:
            hk, valid = unroll_ring(state["window_k"], start, window)
            hv, _ = unroll_ring(state["window_v"], start, window)
            keys, values, history = torch.cat([hk, f.ak], 1), torch.cat([hv, f.av], 1), window - 1
            valid = torch.cat([valid, valid.new_ones(B, T)], 1)
        attn = sliding_window_attention(f.aq, keys, values, window, valid, self.opts.lact_attention)
        fw, captured, final = self._fast_weight_pass(f, state, start, positions, output_final_state, backend)
        ends = {
            "captured": positions,
            "final": torch.full((B, 1), T, device=x.device) if output_final_state else None,
        }
        for name, parts in (("captured", captured), ("final", final)):
            if parts is None:
                continue
            index, ok = ring_slots(start[:, None] + ends[name], start - history, window)
            parts["window_k"] = gather_slots(keys, 1, index, ok)
            parts["window_v"] = gather_slots(values, 1, index, ok)
            parts["position"] = (start[:, None] + ends[name]).flatten()
        order = state_keys(self.opts.use_momentum)
        return MixerOutput(
            self._output(attn, fw, f.scale, backend),
            None if captured is None else {k: captured[k] for k in order},
            None if final is None else {k: final[k] for k in order},
        )

    def step(self, x: Tensor, state: LayerState, *, backend: Backend) -> tuple[Tensor, LayerState]:
        """One token per stream, with no data-dependent control flow (CUDA-graph safe): the chunk
        update is computed for every stream and kept only where the token completes a chunk."""
        n, c, window = x.shape[0], self.opts.lact_chunk_size, self.opts.window_size
        pos = state["position"]
        f = self._features(x[:, None], pos[:, None])
        ring = torch.arange(window - 1, device=x.device)
        ring_valid = (ring[None] < pos[:, None]) | (pos[:, None] >= window - 1)
        attn = sliding_window_attention(
            f.aq,
            torch.cat([state["window_k"], f.ak], 1),
            torch.cat([state["window_v"], f.av], 1),
            window,
            torch.cat([ring_valid, ring_valid.new_ones(n, 1)], 1),
            self.opts.lact_attention,
        )
        new: LayerState = {}
        write = (ring[None] == torch.remainder(pos, window - 1)[:, None])[:, :, None, None]
        new["window_k"] = torch.where(write, f.ak, state["window_k"])
        new["window_v"] = torch.where(write, f.av, state["window_v"])
        slot = torch.arange(c, device=x.device)[None] == (pos % c)[:, None]  # [N, C]
        tokens = {
            "pending_k": (f.fk.transpose(1, 2), slot[:, None, :, None]),
            "pending_v": (f.fv.transpose(1, 2), slot[:, None, :, None]),
            "pending_lr": (f.lr.permute(0, 2, 3, 1), slot[:, None, None, :]),
            "pending_gate": (None if f.gate is None else f.gate.transpose(1, 2), slot[:, None, :]),
        }
        for name, (value, where) in tokens.items():
            if value is not None:
                new[name] = torch.where(where, value.to(state[name].dtype), state[name])
        cd = self._compute_dtype(x.dtype, backend)
        weights = fast_weights(state)
        as_cd = FastWeights(*(w.to(cd) for w in weights))
        fw = swiglu_apply(as_cd, f.fq.transpose(1, 2).flatten(0, 1).to(cd)).view(n, self.heads, 1, -1)
        full = (pos % c == c - 1).repeat_interleave(self.heads)[:, None, None]  # [N*heads, 1, 1]
        lrs = new["pending_lr"].flatten(0, 1).to(cd)
        step = swiglu_fast_weight_grad(
            as_cd,
            *(new[k].flatten(0, 1).to(cd) for k in ("pending_k", "pending_v")),
            lrs[:, 0],
            lrs[:, 1],
            lrs[:, 2],
        )
        momentum = fast_weights(state, keys=MOMENTA) if self.opts.use_momentum else None
        gate = new["pending_gate"].flatten(0, 1).mean(-1) if momentum is not None else None
        updated = fast_weight_update(
            FastWeightState(weights, momentum),
            FastWeights(*(s.to(weights.w0.dtype) for s in step)),
            self._norms(n),
            gate,
            self.opts.use_muon,
        )
        for names, old, upd in ((WEIGHTS, weights, updated.weights), (MOMENTA, momentum, updated.momentum)):
            if old is not None:
                for name, a, b in zip(names, old, upd, strict=True):
                    new[name] = torch.where(full, b, a).view_as(state[name])
        keep = (pos % c != c - 1).to(state["pending_lr"].dtype)
        for name in tokens:
            if name in new:
                new[name] = new[name] * keep.view(-1, *[1] * (new[name].dim() - 1)).to(new[name].dtype)
        new["position"] = pos + 1
        out = self._output(
            attn[:, 0], fw[:, :, 0].to(attn.dtype), None if f.scale is None else f.scale[:, 0], backend
        )
        return out, {k: new[k] for k in state_keys(self.opts.use_momentum)}

    # ---- the fast-weight half over a sequence ---------------------------------------------
    def _fast_weight_pass(
        self,
        f: Features,
        state: LayerState | None,
        start: Tensor,
        capture: Tensor | None,
        want_final: bool,
        backend: Backend,
    ) -> tuple[Tensor, dict | None, dict | None]:
        """Fast-weight output [B, T, heads, d] and the fast-weight parts of the captured / final
        states. Rows are grouped by how many pending tokens their state holds (without a state:
        one group of every row); each group runs the chunk schedule on (pending tokens + new
        tokens), which then starts at a chunk edge. Rows whose new tokens all stay inside their
        chunk, when no state is asked for, only apply."""
        B, T = f.fq.shape[:2]
        c = self.opts.lact_chunk_size
        if state is None:  # every row starts at a chunk edge with nothing pending
            return self._run_group(f, None, None, 0, capture, want_final, backend)
        offset = start % c
        simple = (offset + T <= c) & (capture is None and not want_final)
        groups = [(simple.nonzero()[:, 0], None)] if bool(simple.any()) else []
        rest = offset.masked_fill(simple, -1)
        groups += [((rest == n).nonzero()[:, 0], n) for n in rest.unique().tolist() if n >= 0]
        outs, caps, finals, rows = [], [], [], []
        for idx, n in groups:
            o, cap, fin = (
                self._apply_only(f, state, idx, backend)
                if n is None
                else self._run_group(f, state, idx, int(n), capture, want_final, backend)
            )
            outs.append(o)
            caps.append(cap)
            finals.append(fin)
            rows.append(idx)
        order = torch.cat(rows).argsort()
        fw = torch.cat(outs).index_select(0, order)
        P = 0 if capture is None else capture.shape[1]
        cap_order = (order[:, None] * P + torch.arange(P, device=order.device)).flatten()
        captured = _merge(caps, cap_order) if capture is not None else None
        final = _merge(finals, order) if want_final else None
        return fw, captured, final

    def _apply_only(self, f: Features, state: LayerState, idx: Tensor, backend: Backend):
        cd = self._compute_dtype(f.fq.dtype, backend)
        w = FastWeights(*(m.to(cd) for m in fast_weights(state, idx)))
        q = f.fq.index_select(0, idx).transpose(1, 2).flatten(0, 1).to(cd)
        o = swiglu_apply(w, q).view(len(idx), self.heads, -1, self.head_dim).transpose(1, 2)
        return o.to(f.fq.dtype), None, None

    def _run_group(
        self,
        f: Features,
        state: LayerState | None,
        idx: Tensor | None,
        n: int,
        capture: Tensor | None,
        want_final: bool,
        backend: Backend,
    ):
        G, T = f.fq.shape[0] if idx is None else len(idx), f.fq.shape[1]
        h, c = self.heads, self.opts.lact_chunk_size
        momentum_on = self.opts.use_momentum
        device = f.fq.device

        def rows(t: Tensor) -> Tensor:  # idx None: every row, in order (no copy)
            return t if idx is None else t.index_select(0, idx)

        # token sequences per (row, head), pending tokens first: k, v [G, h, E, d], lr [G, h, 3, E], gate [G, h, E]
        ext = {
            "pending_k": rows(f.fk).transpose(1, 2),
            "pending_v": rows(f.fv).transpose(1, 2),
            "pending_lr": rows(f.lr).permute(0, 2, 3, 1),
        }
        if momentum_on:
            ext["pending_gate"] = rows(f.gate).transpose(1, 2)
        dims = {"pending_k": 2, "pending_v": 2, "pending_lr": 3, "pending_gate": 2}
        q = rows(f.fq).transpose(1, 2)
        if n:
            ext = {
                k: torch.cat([rows(state[k]).narrow(dims[k], 0, n), t.to(state[k].dtype)], dims[k])
                for k, t in ext.items()
            }
            q = torch.cat([q.new_zeros(G, h, n, self.head_dim), q], 2)
        E = n + T
        init = self._initial()
        if state is None:
            weights = FastWeights(*(w.repeat(G, 1, 1) for w in init))
            momentum = None
        else:
            weights = fast_weights(state, idx)
            momentum = fast_weights(state, idx, MOMENTA) if momentum_on else None
        ends = (n + rows(capture)) if capture is not None else None
        keep = set(torch.div(ends, c, rounding_mode="floor").unique().tolist()) if ends is not None else set()
        last_edge = E % c == 0 and (want_final or (ends is not None and bool((ends == E).any())))
        cd = self._compute_dtype(f.fq.dtype, backend)
        lrs = ext["pending_lr"].flatten(0, 1)
        o, trace = lact_fast_weight(
            q.flatten(0, 1).to(cd),
            ext["pending_k"].flatten(0, 1).to(cd),
            ext["pending_v"].flatten(0, 1).to(cd),
            lrs[:, 0],
            lrs[:, 1],
            lrs[:, 2],
            weights,
            chunk_size=c,
            momentum_gate=ext["pending_gate"].flatten(0, 1) if momentum_on else None,
            use_muon=self.opts.use_muon,
            norms=self._norms(G),
            momentum=momentum,
            update_last_full_chunk=last_edge,
            keep=keep,
            ops=TritonOps if backend == "fla" else TorchOps,
        )
        out = o.view(G, h, E, -1)[:, :, n:].transpose(1, 2).to(f.fq.dtype)

        def cut(at: Tensor, chunks: list[FastWeightState], pick: Tensor) -> dict[str, Tensor]:
            """State parts after prefix lengths `at` [G, P] (ext coordinates); chunks[i] is the
            fast-weight state at the edge before each, pick [G, P] indexes it."""
            edge = torch.div(at, c, rounding_mode="floor") * c
            index, ok = chunk_slots(edge, at - edge, c)
            parts = {k: gather_slots(t, dims[k], index, ok) for k, t in ext.items()}
            gi = torch.arange(G, device=at.device)[:, None].expand_as(pick)
            for names, attr in ((WEIGHTS, "weights"), (MOMENTA, "momentum")):
                if attr == "momentum" and not momentum_on:
                    continue
                for i, name in enumerate(names):
                    stacked = torch.stack(
                        [getattr(s, attr)[i].view(G, h, *getattr(s, attr)[i].shape[1:]) for s in chunks]
                    )
                    parts[name] = stacked[pick, gi].flatten(0, 1)
            return parts

        captured = final = None
        if ends is not None:
            kept = sorted(keep)
            pick = torch.searchsorted(
                torch.tensor(kept, device=ends.device), torch.div(ends, c, rounding_mode="floor")
            )
            captured = cut(ends, [trace.at[k] for k in kept], pick)
        if want_final:
            at = torch.full((G, 1), E, device=device)
            final = cut(at, [trace.final], torch.zeros_like(at))
        return out, captured, final


@cache
def _compiled_features():
    """`LaCTMixer._features` compiled once for every layer (the module is an input, so the layers
    share one graph)."""
    return torch.compile(LaCTMixer._features)


def _merge(parts: list[dict[str, Tensor] | None], order: Tensor) -> dict[str, Tensor]:
    """Concatenate the groups' state parts and put the rows back in order."""
    return {k: torch.cat([p[k] for p in parts]).index_select(0, order) for k in parts[0]}
