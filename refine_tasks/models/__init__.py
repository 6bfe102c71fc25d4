"""Fast-weight causal LMs: one shell with a pluggable token mixer (DeltaNet, LaCT) and the state API.

    from refine_tasks.models import build_model
    model = build_model("tiny", vocab_size=4096)
    out = model.prefill(ids, capture=positions)        # states after each prefix
    step = model.decode(out.captured, next_tokens)       # N streams, one token each
    br = model.forward_branched(ids, positions, tokens)  # training: prefix + branches, one graph

Importing this package registers the config and model with AutoConfig / AutoModelForCausalLM.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from refine_tasks.models.branched import forward_branched_naive
from refine_tasks.models.cache import FastWeightCache
from refine_tasks.models.configuration import FastWeightConfig
from refine_tasks.models.mixer import MIXERS, MixerOutput, TokenMixer, mixer_class
from refine_tasks.models.modeling import FastWeightForCausalLM
from refine_tasks.models.presets import PRESETS, build_model, load_model, preset_config
from refine_tasks.models.state import BranchedOutput, DecodeOutput, LayerState, PrefillOutput, State

AutoConfig.register(FastWeightConfig.model_type, FastWeightConfig, exist_ok=True)
AutoModelForCausalLM.register(FastWeightConfig, FastWeightForCausalLM, exist_ok=True)

__all__ = [
    "MIXERS",
    "PRESETS",
    "BranchedOutput",
    "DecodeOutput",
    "FastWeightCache",
    "FastWeightConfig",
    "FastWeightForCausalLM",
    "LayerState",
    "MixerOutput",
    "PrefillOutput",
    "State",
    "TokenMixer",
    "build_model",
    "load_model",
    "forward_branched_naive",
    "mixer_class",
    "preset_config",
]
