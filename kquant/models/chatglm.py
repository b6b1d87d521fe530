"""GLM-4 (9B, GLM-Edge) in transformers' own layout: conversion/chatglm.py ChatGLMModel (llama.cpp as vendored
in llama-cpp-python 0.3.36), for `GlmForCausalLM`.

A TextModel with its own short parameter list: the context length from `seq_length`, else the hidden size
(GlmConfig has no seq_length, so the converter writes hidden_size), the RMS epsilon from `layernorm_epsilon`
(else 1e-5), half the head's rotary dimension, rope base 10000 * `rope_ratio`, add_bos_token false; q/k/v with
biases, gate and up fused in one `mlp.gate_up_proj` kept fused (ffn_up, llama.cpp's chatglm splits it). The
GPT-2 vocabulary with GLM's added tokens as eos / eot / unk. `ChatGLMModel` / `ChatGLMForConditionalGeneration`
(THUDM's remote-code layout, whose tokenizers only load through that remote code) are not registered here.
"""

from __future__ import annotations

from gguf import MODEL_ARCH

from ..errors import InputError, UnsupportedError
from .base import ATTN_BIASES, TextModel, register
from .glm import added_vocab, set_glm_special
from .hparams import HFConfig

# transformers 4.57.6 configuration_glm.py GlmConfig.__init__ defaults, for the keys llama.cpp reads
GLM_CONFIG = HFConfig("glm", dict(
    vocab_size=151552, hidden_size=4096, intermediate_size=13696, num_hidden_layers=40, num_attention_heads=32,
    num_key_value_heads=2, partial_rotary_factor=0.5, head_dim=128, max_position_embeddings=131072,
    rms_norm_eps=0.00000015625, tie_word_embeddings=False, rope_theta=10000.0, pad_token_id=151329,
    eos_token_id=[151329, 151336, 151338], bos_token_id=None, attention_bias=True,
))

GLM_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_up_proj": "ffn_up",  # gate and up fused, kept fused
    "mlp.down_proj": "ffn_down",
}


@register("GlmForCausalLM")
class ChatGLMModel(TextModel):
    model_arch = MODEL_ARCH.CHATGLM
    configs = (GLM_CONFIG,)
    layer = GLM_LAYER
    bias_ok = ATTN_BIASES
    inverse_names = True  # fused gate_up_proj is one GGUF tensor: its name maps back as it is

    def prepare(self) -> None:
        hp = self.hp
        if "THUDM/chatglm3-6b" in str(hp.get("_name_or_path", "")):
            raise UnsupportedError(f"{self.config_path}: ChatGLM3's vocabulary (remote code) is not supported")
        e, n_head = hp["hidden_size"], hp["num_attention_heads"]
        hd = hp.get("head_dim")
        if hd is not None and hd * n_head != e:  # llama.cpp's chatglm: attn_output is [n_embd, n_embd]
            raise UnsupportedError(f"{self.config_path}: head_dim {hd} * num_attention_heads {n_head} != hidden_size {e} "
                                   "is not supported by llama.cpp's chatglm")

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        hp = self.hp
        return super().tensor_shapes() | {"ffn_up": (2 * hp["intermediate_size"], hp["hidden_size"])}

    # ChatGLMModel.filter_tensors
    def filter_name(self, name: str) -> str | None:
        if name.endswith(".rotary_pos_emb.inv_freq"):
            return None
        return super().filter_name(name.removeprefix("transformer."))

    # ChatGLMModel.set_vocab (the GlmForCausalLM branch)
    def set_vocab(self, tokenizer_pre: str | None = None) -> None:
        hp = self.hp
        padded = hp.get("padded_vocab_size", hp["vocab_size"])
        ids = {"eos": "<|endoftext|>", "eot": "<|user|>", "unk": "<|endoftext|>"}
        added = added_vocab(self.tok_folder, hp["model_type"])
        if added and max(added.values()) >= padded:  # upstream: assert max(tokenizer.get_vocab().values()) < vocab_size
            raise InputError(f"{self.tok_folder / 'tokenizer.json'}: token id {max(added.values())} is not below the "
                             f"vocabulary size {padded}")
        set_glm_special(self.kv, self.tok_folder, hp["model_type"], ids, hp, tokenizer_pre)

    # ChatGLMModel.set_gguf_parameters (replaces TextModel's)
    def set_gguf_parameters(self) -> None:
        hp = self.hp
        n_embed = hp.get("hidden_size", hp.get("n_embed"))
        n_head = hp.get("n_head", hp.get("num_attention_heads"))
        n_head_kv = hp.get("multi_query_group_num", hp.get("num_key_value_heads", n_head))
        self.u32("context_length", hp.get("seq_length", n_embed), "seq_length")
        self.u32("embedding_length", n_embed, "hidden_size")
        self.u32("feed_forward_length", hp.get("ffn_hidden_size", hp.get("intermediate_size", 4 * n_embed)), "intermediate_size")
        self.kv.add_uint32(self.key("block_count"), self.block_count)
        self.u32("attention.head_count", n_head, "num_attention_heads")
        self.u32("attention.head_count_kv", n_head_kv, "num_key_value_heads")
        self.f32("attention.layer_norm_rms_epsilon", hp.get("layernorm_epsilon", 1e-5), "layernorm_epsilon")
        self.file_type_placeholder()
        rope_dim = hp["attention_dim"] if "attention_dim" in hp else hp["hidden_size"] // hp["num_attention_heads"]
        factor = self.rp.get("partial_rotary_factor", 0.5)
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor <= 1:
            raise InputError(f"{self.config_path}: 'partial_rotary_factor' must be a number in (0, 1], got {factor!r}")
        self.u32("rope.dimension_count", int(rope_dim * factor), "partial_rotary_factor")
        self.kv.add_bool("tokenizer.ggml.add_bos_token", False)
        rope_freq = 10000
        if "rope_ratio" in hp:
            rope_freq = rope_freq * hp["rope_ratio"]
        self.f32("rope.freq_base", rope_freq, "rope_ratio")
