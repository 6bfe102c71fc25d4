"""LaCT's options on top of `FastWeightConfig`, and the LaCT side of each preset.

`FastWeightConfig` keeps mixer options as extra attributes; `LaCTOptions.from_config` reads
them (with LaCT's defaults) and checks them. `num_heads` is the number of fast-weight heads.
The paper's 760M model (a1600012888/LaCT, configs/760M_lact_swiglu_nh4_fwlow_rank_momentum):
hidden 1536, 24 layers, 4 fast-weight heads of 384, 24 attention heads, window 2048, chunk 2048,
momentum on, Muon off (`use_muon=True` is its `_muon` variant), rank-32 initial W0/W2.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from refine_tasks.models.lact.attention import ATTENTION_CHOICES

# LaCT-specific fields of each preset (shapes come from models/presets.py).
LACT_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"num_attn_heads": 4, "window_size": 8, "lact_chunk_size": 8, "w0_w2_low_rank": 4},
    "small": {"num_attn_heads": 6, "window_size": 512, "lact_chunk_size": 512, "w0_w2_low_rank": 16},
    "paper-760m": {
        "num_attn_heads": 24,
        "window_size": 2048,
        "lact_chunk_size": 2048,
        "w0_w2_low_rank": 32,
        "rope_theta": 1_000_000.0,
    },
}


@dataclass(frozen=True)
class LaCTOptions:
    """LaCT's layer options, named as in its configuration file."""

    num_attn_heads: int = 0  # 0: hidden_size // 64
    window_size: int = 2048  # sliding-window attention: each token sees itself and window-1 before
    lact_chunk_size: int = 2048  # tokens per fast-weight update
    use_momentum: bool = True
    use_muon: bool = False
    w0_w2_low_rank: int = 32  # initial W0, W2 = left @ right + I / 2; <= 0: full matrices
    fw_init_gain: float = 0.5
    base_lr: float = 1e-3  # softplus(lr_proj(x) + softplus^-1(base_lr)): rate at a zero projection
    rope_theta: float = 10_000.0
    learnable_ttt_scale: bool = True
    ttt_norm_eps: float = 1e-5
    # How the layer runs (same function either way), saved with the checkpoint like the rest.
    # Window attention: "flex" (FlexAttention, block-sparse; 2.6x faster fwd+bwd than "band" at 16K
    # tokens on an H100), "band" (SDPA under a band mask) or "auto" (flex on CUDA, band elsewhere).
    lact_attention: str = "auto"
    # torch.compile of the per-token features (from a fresh start: training, prefill): True, False
    # or "auto" (on for CUDA tensors outside CUDA-graph capture; a first call compiles, ~20 s).
    lact_compile: str | bool = "auto"

    @classmethod
    def from_config(cls, config: Any) -> LaCTOptions:
        values = {f.name: getattr(config, f.name, f.default) for f in fields(cls)}
        if not values["num_attn_heads"]:
            values["num_attn_heads"] = max(1, config.hidden_size // 64)
        opts = cls(**values)
        opts.check(config.hidden_size, config.num_heads)
        return opts

    def check(self, hidden_size: int, num_heads: int) -> None:
        def bad(field: str, why: str) -> ValueError:
            return ValueError(f"FastWeightConfig.{field}={getattr(self, field, None)!r} (LaCT): {why}")

        if hidden_size % self.num_attn_heads or (hidden_size // self.num_attn_heads) % 2:
            raise bad(
                "num_attn_heads", f"must divide hidden_size={hidden_size} into heads of even size (RoPE)"
            )
        if hidden_size % num_heads:
            raise ValueError(
                f"FastWeightConfig.num_heads={num_heads} (LaCT fast-weight heads): must divide "
                f"hidden_size={hidden_size}"
            )
        if (hidden_size // num_heads) % (hidden_size // self.num_attn_heads):
            raise bad("num_attn_heads", "a fast-weight head must hold whole attention heads (shared RoPE)")
        if self.window_size < 2:
            raise bad("window_size", "must be >= 2 (the token itself and at least one before)")
        if self.lact_chunk_size < 1:
            raise bad("lact_chunk_size", "must be >= 1")
        if self.base_lr <= 0:
            raise bad("base_lr", "must be > 0")
        if self.lact_attention not in ATTENTION_CHOICES:
            raise bad("lact_attention", f"expected one of {', '.join(map(repr, ATTENTION_CHOICES))}")
        if not isinstance(self.lact_compile, bool) and self.lact_compile != "auto":
            raise bad("lact_compile", "expected true, false or 'auto'")
