"""`FastWeightConfig`: the Hugging Face config of every fast-weight LM here (one shell, a mixer).

Field names follow fla's DeltaNetConfig so an fla checkpoint's config maps onto this one
(`fla_checkpoint.py`). Options of another mixer (e.g. LaCT's window) are extra keyword
arguments: PretrainedConfig keeps them as attributes and the mixer reads them. Kernel choices
(`kernel_backend`, `state_chain`, and a mixer's own such as LaCT's attention path) are fields
too: resolved when the model runs from this config and the tensors' device, never from the
environment, and saved with every checkpoint.
"""

from __future__ import annotations

from transformers import PretrainedConfig

from refine_tasks.kernels.backend import CHOICES as BACKEND_CHOICES
from refine_tasks.models.mixer import MIXERS

STATE_CHAIN_CHOICES = ("auto", "torch", "triton")


class FastWeightConfig(PretrainedConfig):
    model_type = "refine_fastweight"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        mixer: str = "deltanet",
        vocab_size: int = 32000,
        hidden_size: int = 2048,
        num_hidden_layers: int = 24,
        num_heads: int = 16,
        expand_k: float = 1.0,
        expand_v: float = 1.0,
        conv_size: int = 4,
        use_gate: bool = False,
        allow_neg_eigval: bool = False,
        hidden_ratio: int | None = 4,
        intermediate_size: int | None = None,
        norm_eps: float = 1e-6,
        initializer_range: float = 0.02,
        kernel_backend: str = "auto",
        state_chain: str = "auto",
        tie_word_embeddings: bool = False,
        use_cache: bool = True,
        pad_token_id: int | None = None,
        bos_token_id: int | None = 1,
        eos_token_id: int | None = 2,
        **kwargs,
    ) -> None:
        self.mixer = mixer
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_heads = num_heads
        self.expand_k = expand_k
        self.expand_v = expand_v
        self.conv_size = conv_size
        self.use_gate = use_gate
        self.allow_neg_eigval = allow_neg_eigval
        self.hidden_ratio = hidden_ratio
        self.intermediate_size = intermediate_size
        self.norm_eps = norm_eps
        self.initializer_range = initializer_range
        # "fla" named the Triton backend in configs saved before 2026-12-02
        self.kernel_backend = "triton" if kernel_backend == "fla" else kernel_backend
        self.state_chain = state_chain
        self.use_cache = use_cache
        self._validate()
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    def _validate(self) -> None:
        if self.mixer not in MIXERS:
            raise ValueError(
                f"FastWeightConfig.mixer={self.mixer!r}: expected one of {', '.join(sorted(MIXERS))}"
            )
        if self.kernel_backend not in BACKEND_CHOICES:
            raise ValueError(
                f"FastWeightConfig.kernel_backend={self.kernel_backend!r}: expected one of {', '.join(BACKEND_CHOICES)}"
            )
        if self.state_chain not in STATE_CHAIN_CHOICES:
            raise ValueError(
                f"FastWeightConfig.state_chain={self.state_chain!r}: expected one of {', '.join(STATE_CHAIN_CHOICES)}"
            )
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_heads", "conv_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(
                    f"FastWeightConfig.{name}={getattr(self, name)!r}: must be a positive integer"
                )
        for name in ("expand_k", "expand_v"):
            dim = self.hidden_size * getattr(self, name)
            if dim != int(dim) or int(dim) % self.num_heads:
                raise ValueError(
                    f"FastWeightConfig.{name}={getattr(self, name)!r}: hidden_size * {name} = {dim} must be an "
                    f"integer divisible by num_heads={self.num_heads}"
                )

    @property
    def key_dim(self) -> int:
        return int(self.hidden_size * self.expand_k)

    @property
    def value_dim(self) -> int:
        return int(self.hidden_size * self.expand_v)

    @property
    def mlp_size(self) -> int:
        """SwiGLU width: `intermediate_size`, else 2/3 * hidden_ratio * hidden_size rounded up to 256 (fla's rule)."""
        if self.intermediate_size is not None:
            return self.intermediate_size
        size = int(self.hidden_size * (self.hidden_ratio or 4) * 2 / 3)
        return 256 * ((size + 255) // 256)
