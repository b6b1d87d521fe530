"""StarCoder 2: conversion/starcoder.py StarCoder2Model (llama.cpp as vendored in llama-cpp-python 0.3.36).

A plain TextModel: GELU MLP (c_fc / c_proj), LayerNorms with biases, biases on every projection
(use_bias), the GPT-2 style vocabulary. StarCoder 1 (gpt_bigcode) is not ported."""

from __future__ import annotations

from gguf import MODEL_ARCH

from .base import ATTN_BIASES, GLOBAL_NAMES, TextModel, register
from .hparams import HFConfig

# transformers 4.57.6 configuration_starcoder2.py __init__ defaults, for the keys llama.cpp reads
# (tie_word_embeddings: PretrainedConfig's default)
STARCODER2_CONFIG = HFConfig("starcoder2", dict(
    vocab_size=49152, hidden_size=3072, intermediate_size=12288, num_hidden_layers=30, num_attention_heads=24,
    num_key_value_heads=2, max_position_embeddings=4096, norm_epsilon=1e-5, rope_theta=10000.0, rope_scaling=None,
    sliding_window=None, use_bias=True, tie_word_embeddings=True,
), rope_type_alias=True)

STARCODER2_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.c_fc": "ffn_up",
    "mlp.c_proj": "ffn_down",
}


@register("Starcoder2ForCausalLM")
class StarCoder2Model(TextModel):
    model_arch = MODEL_ARCH.STARCODER2
    configs = (STARCODER2_CONFIG,)
    layer = STARCODER2_LAYER
    globals_ = GLOBAL_NAMES
    globals_bias_ok = ("model.norm",)
    bias_ok = ATTN_BIASES + ("input_layernorm", "post_attention_layernorm", "mlp.c_fc", "mlp.c_proj")
    inverse_names = True
