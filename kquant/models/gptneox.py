"""GPT-NeoX (Pythia): conversion/gptneox.py GPTNeoXModel (llama.cpp as vendored in llama-cpp-python 0.3.36).

LayerNorms with biases, a fused QKV whose rows the converter regroups from per-head [q, k, v]
blocks into [all q, all k, all v] (bias too), biases on every projection, partial rotary, parallel
residual, the GPT-2 style vocabulary. Its parameter list writes no rope base and no file type
(llama-quantize adds the latter)."""

from __future__ import annotations

import numpy as np
from gguf import MODEL_ARCH

from ..errors import InputError
from .base import TextModel, register
from .hparams import HFConfig


def _neox_init(hp: dict) -> None:
    # transformers configuration_gpt_neox.py GPTNeoXConfig.__init__
    hp["partial_rotary_factor"] = hp["rotary_pct"]
    hp["rope_theta"] = hp["rotary_emb_base"]


# transformers 4.57.6 configuration_gpt_neox.py __init__ defaults, for the keys llama.cpp reads
GPTNEOX_CONFIG = HFConfig("gpt_neox", dict(
    vocab_size=50432, hidden_size=6144, num_hidden_layers=44, num_attention_heads=64, intermediate_size=24576,
    rotary_pct=0.25, rotary_emb_base=10000, max_position_embeddings=2048, layer_norm_eps=1e-5,
    bos_token_id=0, eos_token_id=2, tie_word_embeddings=False, use_parallel_residual=True, rope_scaling=None,
    attention_bias=True,
), rope_type_alias=True, post_init=_neox_init)

GPTNEOX_LAYER = {
    "input_layernorm": "attn_norm",
    "attention.query_key_value": "attn_qkv",
    "attention.dense": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.dense_h_to_4h": "ffn_up",
    "mlp.dense_4h_to_h": "ffn_down",
}


def neox_qkv_rows(n_head: int, n_embd: int) -> np.ndarray:
    """GPTNeoXModel.modify_tensors as a row gather: rows (head, [q|k|v], d) -> ([q|k|v], head, d)."""
    hd = n_embd // n_head
    return np.arange(3 * n_embd, dtype=np.int64).reshape(n_head, 3, hd).swapaxes(0, 1).reshape(-1)


@register("GPTNeoXForCausalLM")
class GPTNeoXModel(TextModel):
    model_arch = MODEL_ARCH.GPTNEOX
    configs = (GPTNEOX_CONFIG,)
    layer = GPTNEOX_LAYER
    globals_ = {"gpt_neox.embed_in": "token_embd", "gpt_neox.final_layer_norm": "output_norm", "embed_out": "output"}
    globals_bias_ok = ("gpt_neox.final_layer_norm",)
    bias_ok = tuple(GPTNEOX_LAYER)
    layer_prefix = "gpt_neox.layers."
    aliases = {"num_key_value_heads": ("num_attention_heads",)}
    inverse_names = True
    undo_permute = True  # inspect: the head count is needed to put the QKV rows back (hf_row_order)

    # GPTNeoXModel.set_gguf_parameters (replaces TextModel's)
    def set_gguf_parameters(self) -> None:
        hp = self.hp
        self.u32("context_length", hp["max_position_embeddings"], "max_position_embeddings")
        self.u32("embedding_length", hp["hidden_size"], "hidden_size")
        self.kv.add_uint32(self.key("block_count"), self.block_count)
        self.u32("feed_forward_length", hp["intermediate_size"], "intermediate_size")
        rotary_pct = hp["rotary_pct"]
        if isinstance(rotary_pct, bool) or not isinstance(rotary_pct, (int, float)) or not 0 <= rotary_pct <= 1:
            raise InputError(f"{self.config_path}: 'rotary_pct' must be a number in [0, 1], got {rotary_pct!r}")
        self.u32("rope.dimension_count", int(rotary_pct * (hp["hidden_size"] // hp["num_attention_heads"])), "rotary_pct")
        self.u32("attention.head_count", hp["num_attention_heads"], "num_attention_heads")
        parallel = hp.get("use_parallel_residual", True)
        if not isinstance(parallel, bool):
            raise InputError(f"{self.config_path}: 'use_parallel_residual' must be true or false, got {parallel!r}")
        self.kv.add_bool(self.key("use_parallel_residual"), parallel)
        self.f32("attention.layer_norm_epsilon", hp["layer_norm_eps"], "layer_norm_eps")

    def tensor_shapes(self):
        s = super().tensor_shapes()
        e = self.hp["hidden_size"]
        return s | {"attn_qkv": (3 * e, e), "attn_output": (e, e)}

    # GPTNeoXModel.modify_tensors: QKV rows regrouped (weight and bias)
    def modify_tensors(self, t, name, gname, base, bid):
        if base == "attn_qkv":
            rows = neox_qkv_rows(self.hp["num_attention_heads"], self.hp["hidden_size"])
            return [self.spec(gname, t, row_perm=rows)]
        return super().modify_tensors(t, name, gname, base, bid)

    @classmethod
    def hf_row_order(cls, base, n_rows, n_head, n_head_kv):
        if base == "attn_qkv":
            return np.argsort(neox_qkv_rows(n_head, n_rows // 3))
        return None
