"""OLMo, OLMo 2, OLMo 3, OLMoE and Seed-OSS: conversion/olmo.py OlmoModel, Olmo2Model, OlmoeModel, SeedOssModel
(llama.cpp as vendored in llama-cpp-python 0.3.36). OLMo 2/3, OLMoE and Seed-OSS are plain TextModels
(no Q/K permutation); OLMo (1) has LlamaModel's Q/K permutation and parameter-free LayerNorms (no norm
tensors at all). All use the GPT-2 style vocabulary."""

from __future__ import annotations

import numpy as np
from gguf import MODEL_ARCH

from ..errors import InputError
from .base import ATTN_BIASES, LLAMA_LAYER, MLP_BIASES, QK_NORM_LAYER, TextModel, register
from .hparams import HFConfig
from .llama import permute_qk, qk_permutation
from .qwen import MOE_LAYER, QWEN_EXPERTS


def _kv_heads(hp: dict) -> None:
    # configuration_olmo2.py / configuration_olmo3.py / configuration_seed_oss.py: "for backward compatibility"
    if hp.get("num_key_value_heads") is None:
        hp["num_key_value_heads"] = hp["num_attention_heads"]


def _olmo3_layer_types(hp: dict) -> None:
    # transformers configuration_olmo3.py Olmo3Config.__init__
    _kv_heads(hp)
    if hp.get("layer_types") is None:
        hp["layer_types"] = ["sliding_attention" if (i + 1) % 4 != 0 else "full_attention"
                             for i in range(hp["num_hidden_layers"])]


# transformers 4.57.6 configuration_<model>.py __init__ defaults, for the keys llama.cpp reads
_OLMO = dict(
    vocab_size=50304, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=None, max_position_embeddings=2048, tie_word_embeddings=False, rope_theta=10000.0,
    rope_scaling=None, attention_bias=False, rms_norm_eps=1e-5,
)
OLMO_CONFIG = HFConfig("olmo", {k: v for k, v in _OLMO.items() if k != "rms_norm_eps"} | dict(clip_qkv=None), post_init=_kv_heads)
OLMO2_CONFIG = HFConfig("olmo2", _OLMO, rope_type_alias=True, post_init=_kv_heads)
OLMO3_CONFIG = HFConfig("olmo3", _OLMO | dict(sliding_window=4096), rope_type_alias=True, post_init=_olmo3_layer_types)
SEED_OSS_CONFIG = HFConfig("seed_oss", dict(
    vocab_size=155136, hidden_size=4096, intermediate_size=27648, num_hidden_layers=64, num_attention_heads=80,
    num_key_value_heads=8, max_position_embeddings=524288, rms_norm_eps=1e-6, tie_word_embeddings=False,
    rope_theta=10000.0, rope_scaling=None, attention_bias=True, attention_out_bias=False, mlp_bias=False, head_dim=128,
), rope_type_alias=True, post_init=_kv_heads)

# OLMo 2 norms the attention and MLP outputs (no input norms); its q/k norms span all heads
OLMO2_LAYER = {k: v for k, v in LLAMA_LAYER.items() if "layernorm" not in k} | QK_NORM_LAYER | {
    "post_attention_layernorm": "post_attention_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
}


@register("Olmo2ForCausalLM", "Olmo3ForCausalLM")
class Olmo2Model(TextModel):
    model_arch = MODEL_ARCH.OLMO2
    configs = (OLMO2_CONFIG, OLMO3_CONFIG)
    layer = OLMO2_LAYER
    bias_ok = ATTN_BIASES
    inverse_names = True

    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        hp = self.hp
        if "sliding_window" in hp:
            self.u32("attention.sliding_window", hp["sliding_window"], "sliding_window")
            if "layer_types" in hp:
                lt = hp["layer_types"]
                if not isinstance(lt, list) or not all(isinstance(t, str) for t in lt):
                    raise InputError(f"{self.config_path}: 'layer_types' must be a list of strings, got {str(lt)[:80]}")
                pattern = [t == "sliding_attention" for t in lt]
            else:
                # Olmo2 does not use sliding window attention; Olmo3 defaults to it on all layers but every 4th
                pattern = [(i + 1) % 4 != 0 for i in range(self.block_count)]
            self.kv.add_array(self.key("attention.sliding_window_pattern"), pattern)

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        s = super().tensor_shapes()
        return s | {"attn_q_norm": s["attn_q"][:1], "attn_k_norm": s["attn_k"][:1]}


@register("SeedOssForCausalLM")
class SeedOssModel(TextModel):
    model_arch = MODEL_ARCH.SEED_OSS
    configs = (SEED_OSS_CONFIG,)
    layer = LLAMA_LAYER | {"post_attention_layernorm": "post_attention_norm"}
    bias_ok = ATTN_BIASES + MLP_BIASES
    inverse_names = True


@register("OlmoForCausalLM", "OLMoForCausalLM")
class OlmoModel(TextModel):
    model_arch = MODEL_ARCH.OLMO
    configs = (OLMO_CONFIG,)
    layer = {k: v for k, v in LLAMA_LAYER.items() if "layernorm" not in k}  # OlmoLayerNorm has no parameters
    globals_ = {"model.embed_tokens": "token_embd", "lm_head": "output"}
    inverse_names = True

    # OlmoModel.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        self.kv.add_float32(self.key("attention.layer_norm_epsilon"), 1e-5)
        if (clip_qkv := self.hp.get("clip_qkv")) is not None:
            self.f32("attention.clamp_kqv", clip_qkv, "clip_qkv")

    # OlmoModel.modify_tensors: LlamaModel's Q/K permutation (weights only)
    def modify_tensors(self, t, name, gname, base, bid):
        return permute_qk(self, t, name, gname, biases=False) or super().modify_tensors(t, name, gname, base, bid)

    @classmethod
    def hf_row_order(cls, base, n_rows, n_head, n_head_kv):
        if base in ("attn_q", "attn_k"):
            return np.argsort(qk_permutation(n_rows, n_head if base == "attn_q" else n_head_kv))
        return None


# transformers 4.57.6 configuration_olmoe.py OlmoeConfig.__init__ defaults, for the keys llama.cpp reads
OLMOE_CONFIG = HFConfig("olmoe", dict(
    vocab_size=50304, hidden_size=2048, intermediate_size=2048, num_hidden_layers=16, num_attention_heads=16,
    num_key_value_heads=None, max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False,
    rope_theta=10000.0, rope_scaling=None, attention_bias=False, clip_qkv=None, num_experts_per_tok=8,
    num_experts=64, norm_topk_prob=False,
), rope_type_alias=True, post_init=_kv_heads)


# conversion/olmo.py OlmoeModel: Llama-placed norms, q/k norms over all heads (as OLMo 2), experts merged
# per layer as Qwen2MoeModel does
@register("OlmoeForCausalLM")
class OlmoeModel(TextModel):
    model_arch = MODEL_ARCH.OLMOE
    configs = (OLMOE_CONFIG,)
    layer = MOE_LAYER | QK_NORM_LAYER
    bias_ok = ATTN_BIASES
    experts = QWEN_EXPERTS
    inverse_names = True

    # OlmoeModel.set_gguf_parameters: the RMS epsilon is overwritten with 1e-5 whatever the config says
    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        self.kv.add_float32(self.key("attention.layer_norm_rms_epsilon"), 1e-5)

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        s = super().tensor_shapes()
        return s | {"attn_q_norm": s["attn_q"][:1], "attn_k_norm": s["attn_k"][:1]}
