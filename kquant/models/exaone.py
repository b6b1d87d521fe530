"""EXAONE 4: conversion/exaone.py Exaone4Model (llama.cpp as vendored in llama-cpp-python 0.3.36).

A TextModel (no Q/K permutation) with OLMo-2-style output norms, per-head q/k norms, sliding-window
layers and Llama 3 rope factors. EXAONE 3 and the MoE variant are not ported."""

from __future__ import annotations

from gguf import MODEL_ARCH

from ..errors import InputError
from .base import LLAMA_LAYER, QK_NORM_LAYER, TextModel, register
from .hparams import HFConfig
from .llama import llama3_rope_freqs


def _exaone4_layer_types(hp: dict) -> None:
    # transformers configuration_exaone4.py Exaone4Config.__init__
    if hp.get("layer_types") is None:
        step = hp.get("sliding_window_pattern") if hp.get("sliding_window") is not None else 0
        if not isinstance(step, int) or isinstance(step, bool) or step <= 0:
            raise InputError(f"config.json: 'layer_types' is missing and 'sliding_window_pattern' is {step!r} "
                             "(transformers cannot build the layer types either)")
        hp["layer_types"] = ["sliding_attention" if (i + 1) % step != 0 else "full_attention"
                             for i in range(hp["num_hidden_layers"])]


# transformers 4.57.6 configuration_exaone4.py __init__ defaults, for the keys llama.cpp reads
EXAONE4_CONFIG = HFConfig("exaone4", dict(
    vocab_size=102400, hidden_size=4096, intermediate_size=16384, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=32, max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=False,
    rope_theta=10000.0, rope_scaling=None, sliding_window=4096, sliding_window_pattern=4,
), rope_type_alias=True, post_init=_exaone4_layer_types)

EXAONE4_LAYER = {k: v for k, v in LLAMA_LAYER.items() if "layernorm" not in k} | QK_NORM_LAYER | {
    "post_attention_layernorm": "post_attention_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
}


@register("Exaone4ForCausalLM")
class Exaone4Model(TextModel):
    model_arch = MODEL_ARCH.EXAONE4
    configs = (EXAONE4_CONFIG,)
    layer = EXAONE4_LAYER
    inverse_names = True

    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        hp = self.hp
        self.u32("vocab_size", hp["vocab_size"], "vocab_size")
        if hp.get("sliding_window") is not None:
            self.u32("attention.sliding_window", hp["sliding_window"], "sliding_window")
            pattern = []
            if "layer_types" in hp:
                lt = hp["layer_types"]
                if not isinstance(lt, list) or not all(isinstance(t, str) for t in lt):
                    raise InputError(f"{self.config_path}: 'layer_types' must be a list of strings, got {str(lt)[:80]}")
                pattern = [t == "sliding_attention" for t in lt]
            elif "sliding_window_pattern" in hp:
                swp = hp["sliding_window_pattern"]
                if isinstance(swp, str) and swp:  # e.g. LLLG
                    pattern = [swp[i % len(swp)] == "L" for i in range(self.block_count)]
                elif isinstance(swp, int) and not isinstance(swp, bool) and swp > 0:  # e.g. 4
                    pattern = [(i + 1) % swp != 0 for i in range(self.block_count)]
                if len(pattern) != self.block_count:
                    pattern = []
            if pattern:
                self.kv.add_array(self.key("attention.sliding_window_pattern"), pattern)

    # Exaone4Model.generate_extra_tensors: LlamaModel's, with a default factor of 16
    def generate_extra_tensors(self):
        return llama3_rope_freqs(self, default_factor=16.0)
