"""EXAONE 3 and 4: conversion/exaone.py ExaoneModel, Exaone4Model (llama.cpp as vendored in llama-cpp-python 0.3.36).

EXAONE 3 / 3.5 (model_type "exaone") has no transformers 4.57.6 config class (remote code only),
so the converter reads its config.json as it is: GPT-2 style module names (transformer.h.N,
attn.attention.*, mlp.c_fc_0 / c_fc_1 / c_proj), num_layers, layer_norm_epsilon, Llama 3 rope
factors (a config.json without rms_norm_eps is refused: the converter's file lacks the RMS epsilon
llama.cpp's exaone runtime requires). EXAONE 4 is a TextModel (no Q/K permutation) with OLMo-2-style output norms, per-head
q/k norms, sliding-window layers and Llama 3 rope factors. The MoE variant is not ported."""

from __future__ import annotations

from gguf import MODEL_ARCH

from ..errors import InputError, UnsupportedError
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


# no transformers 4.57.6 class: config.json as it is (ModelBase.load_hparams' fallback)
EXAONE_CONFIG = HFConfig("exaone", {}, raw=True, required_as={"num_hidden_layers": ("num_layers", "num_hidden_layers")})


@register("ExaoneForCausalLM")
class ExaoneModel(TextModel):
    model_arch = MODEL_ARCH.EXAONE
    configs = (EXAONE_CONFIG,)
    layer = {
        "ln_1": "attn_norm",
        "attn.attention.q_proj": "attn_q",
        "attn.attention.k_proj": "attn_k",
        "attn.attention.v_proj": "attn_v",
        "attn.attention.out_proj": "attn_output",
        "ln_2": "ffn_norm",
        "mlp.c_fc_0": "ffn_gate",
        "mlp.c_fc_1": "ffn_up",
        "mlp.c_proj": "ffn_down",
    }
    globals_ = {"transformer.wte": "token_embd", "transformer.ln_f": "output_norm", "lm_head": "output"}
    layer_prefix = "transformer.h."
    aliases = {"num_key_value_heads": ("num_attention_heads",)}
    inverse_names = True

    def prepare(self) -> None:
        # kquant: the converter writes layer_norm_epsilon as attention.layer_norm_epsilon (TextModel's generic
        # lookup), but llama.cpp's exaone runtime requires attention.layer_norm_rms_epsilon: only a config.json
        # that also states rms_norm_eps gives a file llama.cpp loads
        if self.hp.get("rms_norm_eps") is None:
            raise UnsupportedError(f"{self.config_path}: EXAONE 3 config without 'rms_norm_eps': llama.cpp's converter "
                                   "would write no attention.layer_norm_rms_epsilon, which its exaone runtime requires")

    # ExaoneModel.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        hp = self.hp
        if hp.get("activation_function") != "silu":  # upstream asserts it
            raise UnsupportedError(f"{self.config_path}: EXAONE with activation_function {hp.get('activation_function')!r} "
                                   "is not supported (llama.cpp's converter asserts silu)")
        rotary_factor = self.rp.get("partial_rotary_factor")
        rotary_factor = rotary_factor if rotary_factor is not None else 1.0
        self.u32("rope.dimension_count", int(rotary_factor * (hp["hidden_size"] // hp["num_attention_heads"])),
                 "partial_rotary_factor")

    # ExaoneModel.generate_extra_tensors: LlamaModel's, with a default factor of 8
    def generate_extra_tensors(self):
        return llama3_rope_freqs(self, default_factor=8.0)
