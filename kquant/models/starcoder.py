"""StarCoder and StarCoder 2: conversion/starcoder.py StarCoderModel, StarCoder2Model (llama.cpp as vendored
in llama-cpp-python 0.3.36).

StarCoder 2 is a plain TextModel: GELU MLP (c_fc / c_proj), LayerNorms with biases, biases on
every projection (use_bias), the GPT-2 style vocabulary. StarCoder (GPTBigCode) is GPT-2 shaped
(learned positions, GPT-2 key names) with nn.Linear layers (nothing transposed) and a multi-query
fused QKV (n_embd + 2 head_dim rows); the converter always writes one KV head, so kquant refuses
`multi_query: false`."""

from __future__ import annotations

from gguf import MODEL_ARCH

from ..errors import UnsupportedError
from .base import ATTN_BIASES, GLOBAL_NAMES, TextModel, register
from .gpt2 import GPT2_ALIASES, GPT2_ATTRIBUTE_MAP, GPT2_REQUIRED, GPT2LayoutModel
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


def _bigcode_kv_heads(hp: dict) -> None:
    # transformers configuration_gpt_bigcode.py GPTBigCodeConfig.__init__
    hp["num_key_value_heads"] = 1 if hp["multi_query"] else hp["n_head"]


# transformers 4.57.6 configuration_gpt_bigcode.py GPTBigCodeConfig: __init__ defaults and attribute_map
GPT_BIGCODE_CONFIG = HFConfig("gpt_bigcode", dict(
    vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, n_inner=None, layer_norm_epsilon=1e-5,
    bos_token_id=50256, eos_token_id=50256, multi_query=True, tie_word_embeddings=True,
), attribute_map=GPT2_ATTRIBUTE_MAP, required_as=GPT2_REQUIRED, post_init=_bigcode_kv_heads)


@register("GPTBigCodeForCausalLM")
class StarCoderModel(GPT2LayoutModel):
    model_arch = MODEL_ARCH.STARCODER
    configs = (GPT_BIGCODE_CONFIG,)
    aliases = GPT2_ALIASES | {"num_key_value_heads": ("num_key_value_heads",)}

    def prepare(self) -> None:
        if not self.hp["multi_query"]:
            raise UnsupportedError(f"{self.config_path}: GPTBigCode without multi-query attention ('multi_query': false) is "
                                   "not supported (llama.cpp's converter writes one KV head whatever the config says)")

    def qkv_rows(self) -> int:
        e = self.hp["n_embd"]
        return e + 2 * (e // self.hp["n_head"])  # multi-query: all queries, one key head, one value head

    # StarCoderModel.set_gguf_parameters (replaces TextModel's)
    def set_gguf_parameters(self) -> None:
        hp = self.hp
        self.u32("context_length", hp["n_positions"], "n_positions")
        self.u32("embedding_length", hp["n_embd"], "n_embd")
        self.u32("feed_forward_length", 4 * hp["n_embd"], "n_embd")
        self.kv.add_uint32(self.key("block_count"), self.block_count)
        self.u32("attention.head_count", hp["n_head"], "n_head")
        self.kv.add_uint32(self.key("attention.head_count_kv"), 1)
        self.f32("attention.layer_norm_epsilon", hp["layer_norm_epsilon"], "layer_norm_epsilon")
        self.file_type_placeholder()
