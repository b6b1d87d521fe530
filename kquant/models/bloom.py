"""BigScience BLOOM: conversion/bloom.py BloomModel (llama.cpp as vendored in llama-cpp-python 0.3.36).

`h.*` layers (the `transformer.` prefix removed as the converter removes it): LayerNorms and every
projection with biases, ALiBi positions, a LayerNorm after the embeddings, a 4 n_embed MLP. The fused
query_key_value is stored per head ([head][q, k, v][dim]); the converter regroups its rows (and bias)
as all q, then all k, then all v (GPT-2's order). Its own parameter list: context length from
`seq_length` (else the hidden size), feed-forward 4 n_embed, head_count_kv = head_count."""

from __future__ import annotations

import numpy as np
from gguf import MODEL_ARCH

from ..errors import InputError
from .base import TextModel, register
from .hparams import HFConfig


def _bloom_init(hp: dict) -> None:
    # transformers 4.57.6 configuration_bloom.py BloomConfig.__init__: n_embed (older configs) is the hidden size
    n_embed = hp.pop("n_embed", None)
    if n_embed is not None:
        hp["hidden_size"] = n_embed


# transformers 4.57.6 configuration_bloom.py BloomConfig: __init__ defaults and attribute_map
BLOOM_CONFIG = HFConfig("bloom", dict(
    vocab_size=250880, hidden_size=64, n_layer=2, n_head=8, layer_norm_epsilon=1e-5, bos_token_id=1, eos_token_id=2,
    tie_word_embeddings=True,  # (PretrainedConfig's default)
), attribute_map={"num_hidden_layers": "n_layer", "num_attention_heads": "n_head"}, post_init=_bloom_init,
    required_as={"hidden_size": ("hidden_size", "n_embed"), "num_hidden_layers": ("n_layer",),
                 "num_attention_heads": ("n_head",), "intermediate_size": ()})

BLOOM_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attention.query_key_value": "attn_qkv",
    "self_attention.dense": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.dense_h_to_4h": "ffn_up",
    "mlp.dense_4h_to_h": "ffn_down",
}


def qkv_regroup(n_head: int, head_dim: int) -> np.ndarray:
    """BloomModel.modify_tensors as a row gather: out row (part, h, j) = source row (h, part, j)."""
    return np.arange(3 * n_head * head_dim, dtype=np.int64).reshape(n_head, 3, head_dim).transpose(1, 0, 2).reshape(-1)


@register("BloomForCausalLM", "BloomModel")
class BloomModel(TextModel):
    model_arch = MODEL_ARCH.BLOOM
    configs = (BLOOM_CONFIG,)
    layer = BLOOM_LAYER
    globals_ = {"word_embeddings": "token_embd", "word_embeddings_layernorm": "token_embd_norm", "ln_f": "output_norm",
                "lm_head": "output"}
    globals_bias_ok = ("word_embeddings_layernorm", "ln_f")
    bias_ok = tuple(BLOOM_LAYER)
    bias_required = tuple(BLOOM_LAYER)  # llama.cpp's bloom loader requires every bias
    layer_prefix = "h."
    aliases = {"num_attention_heads": ("n_head",), "num_key_value_heads": ("n_head",)}
    inverse_names = True
    undo_permute = True  # inspect: the head count is needed to put the QKV rows back (hf_row_order)

    def tied(self) -> bool:
        return True  # BloomForCausalLM ties lm_head to the embeddings (llama.cpp's bloom reuses token_embd)

    def check_complete(self, out) -> None:
        super().check_complete(out)
        names = {t.name for t in out}
        for g, hf in (("token_embd_norm.bias", "word_embeddings_layernorm.bias"), ("output_norm.bias", "ln_f.bias")):
            if g not in names:
                raise InputError(f"{self.folder}: missing tensor {hf}")

    # BloomModel.modify_tensors: "transformer." removed
    def filter_name(self, name: str) -> str | None:
        return super().filter_name(name.replace("transformer.", ""))

    def tensor_shapes(self):
        e = self.hp["hidden_size"]
        return super().tensor_shapes() | {"attn_qkv": (3 * e, e), "attn_output": (e, e), "ffn_up": (4 * e, e),
                                          "ffn_down": (e, 4 * e), "token_embd_norm": (e,)}

    # BloomModel.modify_tensors: query_key_value rows (and bias) regrouped q / k / v
    def modify_tensors(self, t, name, gname, base, bid):
        if base == "attn_qkv":
            n_head, e = self.hp["n_head"], self.hp["hidden_size"]
            if e % n_head:
                raise InputError(f"{self.config_path}: hidden_size {e} is not divisible by n_head {n_head}")
            return [self.spec(gname, t, row_perm=qkv_regroup(n_head, e // n_head))]
        return super().modify_tensors(t, name, gname, base, bid)

    @classmethod
    def hf_row_order(cls, base, n_rows, n_head, n_head_kv):
        if base == "attn_qkv" and n_rows % (3 * n_head) == 0:
            return np.argsort(qkv_regroup(n_head, n_rows // (3 * n_head)))
        return None

    # BloomModel.set_gguf_parameters (replaces TextModel's)
    def set_gguf_parameters(self) -> None:
        hp = self.hp
        n_embed, n_head = hp["hidden_size"], hp["n_head"]
        self.u32("context_length", hp.get("seq_length", n_embed), "seq_length")
        self.u32("embedding_length", n_embed, "hidden_size")
        self.u32("feed_forward_length", 4 * n_embed, "hidden_size")
        self.kv.add_uint32(self.key("block_count"), self.block_count)
        self.u32("attention.head_count", n_head, "n_head")
        self.u32("attention.head_count_kv", n_head, "n_head")
        self.f32("attention.layer_norm_epsilon", hp["layer_norm_epsilon"], "layer_norm_epsilon")
        self.file_type_placeholder()
