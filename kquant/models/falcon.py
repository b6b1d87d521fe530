"""Falcon: conversion/falcon.py FalconModel (llama.cpp as vendored in llama-cpp-python 0.3.36).

The fused QKV holds n_head_kv groups of (n_head / n_head_kv queries, one key, one value); the
converter regroups its rows into all queries, all keys, all values ("jploski" layout). LayerNorms
with biases; falcon-40b's new decoder architecture has two per layer (ln_attn, ln_mlp), falcon-7b
one (input_layernorm). The GPT-2 style vocabulary.

What the converter cannot convert, kquant refuses: linear biases (`bias`: the regrouping views
the QKV bias as a matrix and fails), a serial block (`parallel_attn` false: post_attention_layernorm
has no GGUF name), and multi-query checkpoints without `num_kv_heads` (falcon-7b's config.json:
transformers 4.57.6's FalconConfig then sets num_kv_heads = num_attention_heads, which the QKV
tensor does not match)."""

from __future__ import annotations

import numpy as np
from gguf import MODEL_ARCH

from ..errors import InputError, UnsupportedError
from .base import TextModel, register
from .hparams import HFConfig


def _falcon_init(hp: dict) -> None:
    # transformers configuration_falcon.py FalconConfig.__init__
    if hp.get("n_embed") is not None:
        hp["hidden_size"] = hp["n_embed"]
    if hp.get("num_kv_heads") is None:
        hp["num_kv_heads"] = hp["num_attention_heads"]
    if hp.get("ffn_hidden_size") is None:
        hp["ffn_hidden_size"] = hp["hidden_size"] * 4


# transformers 4.57.6 configuration_falcon.py __init__ defaults, for the keys llama.cpp reads
FALCON_CONFIG = HFConfig("falcon", dict(
    vocab_size=65024, hidden_size=4544, num_hidden_layers=32, num_attention_heads=71, layer_norm_epsilon=1e-5,
    num_kv_heads=None, alibi=False, new_decoder_architecture=False, multi_query=True, parallel_attn=True, bias=False,
    max_position_embeddings=2048, rope_theta=10000.0, rope_scaling=None, bos_token_id=11, eos_token_id=11,
    ffn_hidden_size=None, tie_word_embeddings=True,
), post_init=_falcon_init, required_as={"intermediate_size": ()})

FALCON_LAYER = {
    "self_attention.query_key_value": "attn_qkv",
    "self_attention.dense": "attn_output",
    "mlp.dense_h_to_4h": "ffn_up",
    "mlp.dense_4h_to_h": "ffn_down",
}
FALCON7B_NORMS = {"input_layernorm": "attn_norm"}
FALCON40B_NORMS = {"ln_mlp": "attn_norm", "ln_attn": "attn_norm_2"}


def falcon_qkv_rows(n_head: int, n_head_kv: int, head_dim: int) -> np.ndarray:
    """FalconModel.modify_tensors as a row gather: (group, [q.. | k | v], d) -> (all q, all k, all v)."""
    r = n_head // n_head_kv
    idx = np.arange((n_head + 2 * n_head_kv) * head_dim, dtype=np.int64).reshape(n_head_kv, r + 2, head_dim)
    return np.concatenate([idx[:, :r].reshape(-1), idx[:, r].reshape(-1), idx[:, r + 1].reshape(-1)])


@register("FalconForCausalLM", "RWForCausalLM")
class FalconModel(TextModel):
    model_arch = MODEL_ARCH.FALCON
    configs = (FALCON_CONFIG,)
    layer = FALCON_LAYER | FALCON7B_NORMS
    globals_ = {"transformer.word_embeddings": "token_embd", "transformer.ln_f": "output_norm", "lm_head": "output"}
    globals_bias_ok = ("transformer.ln_f",)
    bias_ok = ("input_layernorm", "ln_attn", "ln_mlp")
    layer_prefix = "transformer.h."
    aliases = {"num_key_value_heads": ("num_kv_heads", "n_head_kv"), "num_attention_heads": ("n_head",),
               "intermediate_size": ("ffn_hidden_size",)}
    # dequantize --hf-names: attn_norm is ln_mlp when the file has attn_norm_2 (falcon-40b's ln_attn), else
    # input_layernorm (falcon-7b); the QKV rows go back into their groups (the file's head counts)
    inverse_names = True
    undo_permute = True

    @classmethod
    def hf_layer(cls, kinds):
        return FALCON_LAYER | (FALCON40B_NORMS if "attn_norm_2" in kinds else FALCON7B_NORMS)

    @classmethod
    def hf_row_order(cls, base, n_rows, n_head, n_head_kv):
        if base != "attn_qkv":
            return None
        if n_rows % (n_head + 2 * n_head_kv):
            raise InputError(f"attn_qkv has {n_rows} rows, not a multiple of {n_head + 2 * n_head_kv} heads")
        return np.argsort(falcon_qkv_rows(n_head, n_head_kv, n_rows // (n_head + 2 * n_head_kv)))

    def prepare(self) -> None:
        hp = self.hp
        if hp.get("bias"):
            raise UnsupportedError(f"{self.config_path}: Falcon with linear biases ('bias': true) is not supported "
                                   "(llama.cpp's converter cannot regroup the QKV bias)")
        if not hp.get("parallel_attn", True):
            raise UnsupportedError(f"{self.config_path}: Falcon with a serial block ('parallel_attn': false) is not supported "
                                   "(llama.cpp's converter has no name for its post_attention_layernorm)")
        if hp.get("alibi"):
            raise UnsupportedError(f"{self.config_path}: Falcon with ALiBi is not supported (llama.cpp's falcon runtime uses rope)")
        if "num_kv_heads" not in self._cfg_keys and "n_head_kv" not in self._cfg_keys and hp.get("multi_query", True) \
                and not hp.get("new_decoder_architecture"):
            raise UnsupportedError(f"{self.config_path}: multi-query Falcon without 'num_kv_heads' is not supported: "
                                   "transformers 4.57.6 reads it as num_kv_heads = num_attention_heads and llama.cpp's "
                                   "converter then fails on the QKV tensor; add \"num_kv_heads\": 1 to config.json")

    @property
    def _cfg_keys(self) -> set[str]:
        from ..io.jsonio import read_json
        return set(read_json(self.config_path))

    def layer_modules(self, bid: int) -> dict[str, str]:
        return FALCON_LAYER | (FALCON40B_NORMS if self.hp.get("new_decoder_architecture") else FALCON7B_NORMS)

    def _heads(self) -> tuple[int, int, int]:
        n_head = self.find_hparam(["num_attention_heads", "n_head"])
        n_head_kv = self.find_hparam(["num_kv_heads", "n_head_kv"], optional=True) or 1
        if not isinstance(n_head_kv, int) or isinstance(n_head_kv, bool) or n_head_kv <= 0 or n_head % n_head_kv:
            raise InputError(f"{self.config_path}: 'num_kv_heads' must divide num_attention_heads, got {n_head_kv!r}")
        return n_head, n_head_kv, self.hp["hidden_size"] // n_head

    def tensor_shapes(self):
        e = self.hp["hidden_size"]
        f = 4 * e  # what the converter writes as feed_forward_length; another ffn_hidden_size cannot load
        n_head, n_head_kv, hd = self._heads()
        return super().tensor_shapes() | {
            "attn_qkv": ((n_head + 2 * n_head_kv) * hd, e), "attn_output": (e, e), "attn_norm_2": (e,),
            "ffn_up": (f, e), "ffn_down": (e, f),
        }

    # FalconModel.set_gguf_parameters (replaces TextModel's)
    def set_gguf_parameters(self) -> None:
        hp = self.hp
        n_head = hp.get("num_attention_heads")
        if n_head is None:
            n_head = hp["n_head"]  # old name
        n_head_kv = hp.get("num_kv_heads")
        if n_head_kv is None:
            n_head_kv = hp.get("n_head_kv", 1)  # old name
        self.kv.add_uint32(self.key("context_length"), 2048)  # not in config.json
        self.kv.add_string(self.key("tensor_data_layout"), "jploski")  # qkv tensor transform
        self.u32("embedding_length", hp["hidden_size"], "hidden_size")
        self.u32("feed_forward_length", 4 * hp["hidden_size"], "hidden_size")
        self.kv.add_uint32(self.key("block_count"), self.block_count)
        self.u32("attention.head_count", n_head, "num_attention_heads")
        self.u32("attention.head_count_kv", n_head_kv, "num_kv_heads")
        self.f32("attention.layer_norm_epsilon", hp["layer_norm_epsilon"], "layer_norm_epsilon")
        self.file_type_placeholder()

    # FalconModel.modify_tensors: the QKV rows regrouped
    def modify_tensors(self, t, name, gname, base, bid):
        if "query_key_value" in name:
            return [self.spec(gname, t, row_perm=falcon_qkv_rows(*self._heads()))]
        return super().modify_tensors(t, name, gname, base, bid)
