"""The causal-LM shell: embeddings, blocks of (token mixer + SwiGLU MLP), final norm, LM head,
and the state API (`prefill`, `decode`, `forward_branched`) that ReFINE's rollouts branch from.

Parameter names follow fla's models (`model.embeddings`, `model.layers.{i}.attn_norm/attn/
mlp_norm/mlp`, `model.norm`, `lm_head`), so fla checkpoints load. The mixer (`attn`) is
pluggable (`mixer.py`); this file knows nothing of its internals.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from refine_tasks.kernels import (
    IGNORE_INDEX,
    Backend,
    add_rms_norm,
    cross_entropy,
    resolve_backend,
    rms_norm,
    swiglu_mlp,
)
from refine_tasks.models.cache import FastWeightCache
from refine_tasks.models.checkpoint import check_checkpoint, load_config
from refine_tasks.models.configuration import FastWeightConfig
from refine_tasks.models.decoding import EagerDecodeStream, GraphDecoder
from refine_tasks.models.layers import RMSNorm
from refine_tasks.models.mixer import mixer_class
from refine_tasks.models.state import (
    BranchedOutput,
    Capture,
    DecodeOutput,
    LayerState,
    PrefillOutput,
    State,
)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor, backend: Backend) -> Tensor:
        return swiglu_mlp(x, self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight, backend)


class Block(nn.Module):
    """Pre-norm residual block: h + mixer(norm(h)), then + mlp(norm(.))."""

    def __init__(self, config: FastWeightConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.attn = mixer_class(config.mixer)(config, layer_idx)
        self.mlp_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.mlp = SwiGLU(config.hidden_size, config.mlp_size)

    def _mlp(self, h: Tensor, mixed: Tensor, backend: Backend) -> Tensor:
        normed, residual = add_rms_norm(mixed, h, self.mlp_norm.weight, self.mlp_norm.eps, backend)
        return residual + self.mlp(normed, backend)

    def forward(
        self,
        h: Tensor,
        backend: Backend,
        state: LayerState | None = None,
        capture: Capture | None = None,
        output_final_state: bool = False,
    ) -> tuple[Tensor, LayerState | None, LayerState | None]:
        """h [B, T, D] -> (h, captured state or None, final state or None)."""
        out = self.attn(
            rms_norm(h, self.attn_norm.weight, self.attn_norm.eps, backend),
            backend=backend,
            state=state,
            capture=capture,
            output_final_state=output_final_state,
        )
        return self._mlp(h, out.hidden, backend), out.captured, out.final

    def step(self, h: Tensor, state: LayerState, backend: Backend) -> tuple[Tensor, LayerState]:
        """One token for each of N streams: h [N, D]."""
        mixed, new = self.attn.step(
            rms_norm(h, self.attn_norm.weight, self.attn_norm.eps, backend), state, backend=backend
        )
        return self._mlp(h, mixed, backend), new


class FastWeightModel(nn.Module):
    def __init__(self, config: FastWeightConfig) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList([Block(config, i) for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.norm_eps)


class FastWeightForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = FastWeightConfig
    base_model_prefix = "model"
    _no_split_modules = ["Block"]
    _is_stateful = True
    _tied_weights_keys = {"lm_head.weight": "model.embeddings.weight"}

    def __init__(self, config: FastWeightConfig) -> None:
        super().__init__(config)
        self.model = FastWeightModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self._decoders: dict = {}
        self.post_init()

    # ---- Hugging Face plumbing -------------------------------------------------------------
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):  # as fla: normal(0, std), padding row included
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif hasattr(module, "init_weights") and module is not self:
            module.init_weights(std)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embeddings = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Hugging Face loading, plus: a local directory's tensors are checked first (a missing or
        wrongly shaped tensor is an error naming it), and fla DeltaNet directories load too."""
        path = Path(pretrained_model_name_or_path)
        if path.is_dir():
            config = kwargs.get("config") or load_config(path)
            with torch.device("meta"):
                check_checkpoint(path, cls(config), config)
            kwargs["config"] = config
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # our cache is the fixed-size State, not a growing key/value cache

    @property
    def backend(self) -> Backend:
        """Kernel backend for this model's device (see refine_tasks.kernels.backend)."""
        return resolve_backend(self.lm_head.weight.device, self.config.kernel_backend)

    def empty_state(self, batch_size: int) -> State:
        """The State of `batch_size` streams that have consumed nothing."""
        w = self.lm_head.weight
        return State([layer.attn.empty_state(batch_size, w.device, w.dtype) for layer in self.model.layers])

    # ---- full-sequence passes --------------------------------------------------------------
    def _run(
        self,
        input_ids: Tensor,
        state: State | None = None,
        capture: Tensor | None = None,
        output_final_state: bool = False,
    ) -> tuple[Tensor, State | None, State | None]:
        """Hidden [B, T, D] after the final norm, captured State, final State."""
        backend = self.backend
        h = self.model.embeddings(input_ids)
        at = None if capture is None else Capture(capture)  # one per pass: every layer shares its plans
        captured, final = [], []
        for i, layer in enumerate(self.model.layers):
            h, c, f = layer(h, backend, None if state is None else state.layers[i], at, output_final_state)
            captured.append(c)
            final.append(f)
        h = rms_norm(h, self.model.norm.weight, self.model.norm.eps, backend)
        return (
            h,
            State(captured) if capture is not None else None,
            State(final) if output_final_state else None,
        )

    def forward(
        self,
        input_ids: Tensor,
        labels: Tensor | None = None,
        past_key_values: FastWeightCache | None = None,
        use_cache: bool | None = False,
        attention_mask: Tensor | None = None,
        logits_to_keep: int = 0,
        return_dict: bool = True,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Hugging Face causal-LM forward. labels [B, T] (shifted inside, IGNORE_INDEX skipped).

        With `past_key_values` (a FastWeightCache) the input continues from its state; with
        `use_cache` the output carries the new cache. Padding is not supported.
        """
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError(
                "attention_mask with zeros: padded batches are not supported by the recurrent state"
            )
        state = past_key_values.state if past_key_values is not None else None
        seen = past_key_values.seen_tokens if past_key_values is not None else 0
        if state is not None and input_ids.shape[1] == 1 and not torch.is_grad_enabled():
            out = self._decode_eager(state, input_ids[:, 0])
            hidden, new_state = out.hidden[:, None], out.state
        else:
            hidden, _, new_state = self._run(input_ids, state, output_final_state=bool(use_cache))
        if logits_to_keep and labels is None:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            targets = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), IGNORE_INDEX)], dim=1)
            loss = cross_entropy(logits.flatten(0, 1), targets.flatten().to(logits.device), self.backend)
        cache = FastWeightCache(new_state, seen + input_ids.shape[1]) if use_cache else None
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=cache)

    def prepare_inputs_for_generation(
        self,
        input_ids: Tensor,
        past_key_values: FastWeightCache | None = None,
        use_cache: bool = True,
        **kwargs,
    ) -> dict:
        if past_key_values is not None:
            input_ids = input_ids[:, past_key_values.seen_tokens :]
        return {"input_ids": input_ids, "past_key_values": past_key_values, "use_cache": use_cache}

    # ---- the state API ---------------------------------------------------------------------
    def prefill(
        self,
        input_ids: Tensor,
        capture: Tensor | None = None,
        return_logits: bool = True,
        return_final: bool = True,
    ) -> PrefillOutput:
        """Run input_ids [B, T]; capture: LongTensor [B, P] of prefix lengths 1..T (any order).

        Returns hidden [B, T, D], logits [B, T, V] (or None), the captured State (B*P streams,
        row b*P+j after input_ids[b, :capture[b, j]]) and the final State (B streams; None
        without `return_final`, which spares its per-layer ops when only prefixes are continued).
        """
        _check_ids(input_ids, "input_ids")
        if capture is not None:
            _check_positions(capture, input_ids, "capture")
        hidden, captured, final = self._run(input_ids, capture=capture, output_final_state=return_final)
        return PrefillOutput(hidden, self.lm_head(hidden) if return_logits else None, captured, final)

    def decode(self, state: State, tokens: Tensor) -> DecodeOutput:
        """One token for each of N independent streams: tokens [N] -> logits [N, V], hidden [N, D],
        new State. No gradients; the input State is not modified. On CUDA it replays a CUDA graph."""
        if tokens.dim() != 1 or tokens.shape[0] != state.batch_size:
            raise ValueError(
                f"tokens must be [N] with N = state.batch_size = {state.batch_size}, got {tuple(tokens.shape)}"
            )
        with torch.no_grad():
            if self.lm_head.weight.device.type == "cuda":
                return self.graph_decoder(state.batch_size).decode(state, tokens)
            return self._decode_eager(state, tokens)

    def decode_stream(self, state: State):
        """Rollouts without per-step State copies: `.step(tokens [N]) -> DecodeOutput` advances the
        streams from `state` (copied once). On CUDA the outputs are views valid until the next
        step (see decoding.DecodeStream); use `decode` when each step's State must be kept."""
        if self.lm_head.weight.device.type == "cuda":
            return self.graph_decoder(state.batch_size).stream(state)
        return EagerDecodeStream(self, state)

    def graph_decoder(self, batch_size: int):
        """The CUDA-graph decoder for `batch_size` streams (built on first use, then reused)."""
        weights = (self.lm_head.weight.data_ptr(), self.lm_head.weight.dtype)
        if any(key[1:] != weights for key in self._decoders):  # moved or cast: captured pointers are stale
            self._decoders.clear()
        key = (batch_size, *weights)
        if key not in self._decoders:
            self._decoders[key] = GraphDecoder(self, batch_size)
        return self._decoders[key]

    def _decode_eager(self, state: State, tokens: Tensor) -> DecodeOutput:
        backend = self.backend
        h = self.model.embeddings(tokens)
        layers = []
        for i, layer in enumerate(self.model.layers):
            h, new = layer.step(h, state.layers[i], backend)
            layers.append(new)
        h = rms_norm(h, self.model.norm.weight, self.model.norm.eps, backend)
        return DecodeOutput(self.lm_head(h), h, State(layers))

    def forward_branched(self, input_ids: Tensor, positions: Tensor, branch_tokens: Tensor) -> BranchedOutput:
        """The main sequence and, from the state after input_ids[b, :positions[b, j]], branch
        branch_tokens[b, j] ([B, P, L]), in one autograd graph.

        Layer by layer: the main sequence runs with its state captured at the positions (the
        sequence split there, segment states chained), then all B*P branches run in one
        batch from those states, so branch inputs of layer l+1 are branch outputs of layer l.
        """
        _check_ids(input_ids, "input_ids")
        _check_positions(positions, input_ids, "positions")
        B, P, L = branch_tokens.shape
        if (B, P) != tuple(positions.shape):
            raise ValueError(
                f"branch_tokens {tuple(branch_tokens.shape)} must be [B, P, L] with [B, P] = positions {tuple(positions.shape)}"
            )
        backend = self.backend
        h = self.model.embeddings(input_ids)
        hb = self.model.embeddings(branch_tokens.reshape(B * P, L))
        at = Capture(positions)  # one per pass: every layer shares its plans
        for layer in self.model.layers:
            h, captured, _ = layer(h, backend, capture=at)
            hb, _, _ = layer(hb, backend, state=captured)
        h = rms_norm(h, self.model.norm.weight, self.model.norm.eps, backend)
        hb = rms_norm(hb, self.model.norm.weight, self.model.norm.eps, backend).view(B, P, L, -1)
        return BranchedOutput(self.lm_head(h), h, self.lm_head(hb), hb)


def _check_ids(input_ids: Tensor, name: str) -> None:
    if input_ids.dim() != 2 or input_ids.shape[1] < 1:
        raise ValueError(
            f"{name} must be a LongTensor [B, T] with T >= 1, got shape {tuple(input_ids.shape)}"
        )


def _check_positions(positions: Tensor, input_ids: Tensor, name: str) -> None:
    B, T = input_ids.shape
    if positions.dim() != 2 or positions.shape[0] != B:
        raise ValueError(
            f"{name} must be a LongTensor [B, P] with B = {B}, got shape {tuple(positions.shape)}"
        )
    if positions.numel() and (int(positions.min()) < 1 or int(positions.max()) > T):
        raise ValueError(
            f"{name} are prefix lengths and must lie in 1..{T} (the sequence length), "
            f"got min {int(positions.min())}, max {int(positions.max())}"
        )
