"""Apple OpenELM: conversion/openelm.py OpenELMModel (llama.cpp as vendored in llama-cpp-python 0.3.36).

Layer-wise scaling: every layer has its own query / KV head counts (`num_query_heads`, `num_kv_heads`) and
feed-forward width (`ffn_multipliers` * model_dim, made divisible by `ffn_dim_divisor`), all written as
per-layer arrays. A fused qkv_proj with per-head Q/K RMSNorms, a fused gate/up `ffn.proj_1` split at the
layer's width, the output tied to the embedding (`share_input_output_layers`). Remote code: no transformers
class, the converter reads config.json as it is. The vocabulary is Llama 2's tokenizer.model, which OpenELM
releases do not ship: the converter's built-in llama-spm fallback for a folder without it is refused."""

from __future__ import annotations

from gguf import MODEL_ARCH

from ..errors import InputError, UnsupportedError
from .. import vocab as V
from .base import TextModel, register, rows
from .hparams import HFConfig, find_hparam

OPENELM_CONFIG = HFConfig("openelm", {}, raw=True, required_as={
    "hidden_size": ("model_dim",), "num_hidden_layers": ("num_transformer_layers",), "num_attention_heads": (),
    "intermediate_size": ()})

OPENELM_LAYER = {
    "attn_norm": "attn_norm",
    "attn.qkv_proj": "attn_qkv",
    "attn.out_proj": "attn_output",
    "attn.q_norm": "attn_q_norm",
    "attn.k_norm": "attn_k_norm",
    "ffn_norm": "ffn_norm",
    "ffn.proj_1": "ffn_gate",  # split into ffn_gate and ffn_up (modify_tensors)
    "ffn.proj_2": "ffn_down",
}
OPENELM_RMS_EPS = 1e-6  # OpenELMModel.set_gguf_parameters (modeling_openelm.py's fixed epsilon)


# OpenELMModel._make_divisible (configuration_openelm.py make_divisible)
def make_divisible(v: float | int, divisor: int) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:  # "Make sure that round down does not go down by more than 10%"
        new_v += divisor
    return new_v


def _int_list(hp: dict, key: str, n: int, where) -> list[int]:
    v = hp.get(key)
    if not isinstance(v, list) or len(v) != n or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v):
        raise InputError(f"{where}: {key!r} must list {n} positive integers (one per layer), got {v!r}"[:200])
    return v


@register("OpenELMForCausalLM")
class OpenELMModel(TextModel):
    model_arch = MODEL_ARCH.OPENELM
    configs = (OPENELM_CONFIG,)
    layer = OPENELM_LAYER
    globals_ = {"transformer.token_embeddings": "token_embd", "transformer.norm": "output_norm", "lm_head": "output"}
    layer_prefix = "transformer.layers."
    split_modules = {"ffn_gate": ("ffn_gate", "ffn_up")}
    norm_of = {"attn_qkv": "attn_norm", "ffn_gate": "ffn_norm", "ffn_up": "ffn_norm"}
    inverse_refused = "the per-layer feed-forward widths that split ffn.proj_1 are not in the GGUF file"

    # OpenELMModel.__init__
    def __init__(self, hp, **kw):
        super().__init__(hp, **kw)
        where = self.config_path
        n = self.block_count
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise InputError(f"{where}: 'num_transformer_layers' must be a positive integer, got {n!r}")
        for k in ("model_dim", "head_dim", "ffn_dim_divisor", "vocab_size"):
            v = hp.get(k)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise InputError(f"{where}: {k!r} must be a positive integer, got {v!r}")
        mult = hp.get("ffn_multipliers")
        if not isinstance(mult, list) or len(mult) != n or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < 2**20 for x in mult):
            raise InputError(f"{where}: 'ffn_multipliers' must list {n} positive numbers (one per layer), got {mult!r}"[:200])
        self._n_embd = hp["model_dim"]
        self._num_kv_heads = _int_list(hp, "num_kv_heads", n, where)
        self._num_query_heads = _int_list(hp, "num_query_heads", n, where)
        self._ffn_dims = [make_divisible(m * self._n_embd, hp["ffn_dim_divisor"]) for m in mult]
        for q, kv in zip(self._num_query_heads, self._num_kv_heads):
            if q % kv:  # llama.cpp's GQA needs whole groups
                raise InputError(f"{where}: num_query_heads {q} is not a multiple of num_kv_heads {kv}")
        if not hp.get("share_input_output_layers", False):
            raise UnsupportedError(f"{where}: OpenELM with share_input_output_layers false is not supported "
                                   "(llama.cpp's openelm runtime reads the output from the embedding)")

    # OpenELMModel.find_hparam: the layer count is num_transformer_layers
    def find_hparam(self, keys, optional: bool = False):
        if "n_layers" in keys:
            return self.hp.get("num_transformer_layers")
        return find_hparam(self.hp, keys, optional)

    def dim(self, key: str):
        """Layer 0's head counts (llama_hparams n_head(0) / n_head_kv(0), what llama-quantize reads)."""
        if key == "hidden_size":
            return self.hp["model_dim"]
        if key == "num_attention_heads":
            return self.hp["num_query_heads"][0]
        if key == "num_key_value_heads":
            return self.hp["num_kv_heads"][0]
        return super().dim(key)

    def tied(self) -> bool:
        return True

    def tensor_shapes(self):
        e, hd = self._n_embd, self.hp["head_dim"]
        return {"token_embd": (self.hp["vocab_size"], e), "output_norm": (e,), "attn_norm": (e,), "ffn_norm": (e,),
                "attn_q_norm": (hd,), "attn_k_norm": (hd,)}

    def layer_shapes(self, bid: int) -> dict[str, tuple[int, ...]]:
        e, hd, f = self._n_embd, self.hp["head_dim"], self._ffn_dims[bid]
        q, kv = self._num_query_heads[bid], self._num_kv_heads[bid]
        return {"attn_qkv": ((q + 2 * kv) * hd, e), "attn_output": (e, q * hd), "ffn_gate": (2 * f, e), "ffn_down": (e, f)}

    # OpenELMModel.modify_tensors: ffn.proj_1 split at the layer's feed-forward width (gate, then up)
    def modify_tensors(self, t, name, gname, base, bid):
        if bid is not None and (exp := self.layer_shapes(bid).get(base)) is not None and tuple(t[1]) != exp:
            raise InputError(f"{self.folder}: tensor {t[0]!r} has shape {list(t[1])}, expected {list(exp)} from config.json")
        if base == "ffn_gate":
            f = self._ffn_dims[bid]
            return [self.spec(f"blk.{bid}.ffn_gate.weight", t, shape=(f, t[1][1]), row_perm=rows(0, f)),
                    self.spec(f"blk.{bid}.ffn_up.weight", t, shape=(f, t[1][1]), row_perm=rows(f, 2 * f))]
        return super().modify_tensors(t, name, gname, base, bid)

    # OpenELMModel.set_vocab
    def set_vocab(self, tokenizer_pre: str | None = None) -> None:
        try:
            V.set_vocab_sentencepiece(self.kv, self.tok_folder, self.hp)
        except FileNotFoundError:
            raise UnsupportedError(f"{self.tok_folder}: no tokenizer.model (OpenELM uses Llama 2's; the converter's "
                                   "built-in llama-spm vocabulary is not supported: copy tokenizer.model into the folder)") from None

    # OpenELMModel.set_gguf_parameters (replaces TextModel's)
    def set_gguf_parameters(self) -> None:
        hp = self.hp
        head_dim = hp["head_dim"]
        self.kv.add_uint32(self.key("block_count"), self.block_count)
        self.u32("context_length", hp.get("max_context_length"), "max_context_length")
        self.u32("embedding_length", self._n_embd, "model_dim")
        self.kv.add_array(self.key("feed_forward_length"), self._ffn_dims)
        self.kv.add_array(self.key("attention.head_count"), self._num_query_heads)
        self.kv.add_array(self.key("attention.head_count_kv"), self._num_kv_heads)
        self.f32("rope.freq_base", hp.get("rope_freq_constant"), "rope_freq_constant")
        self.kv.add_float32(self.key("attention.layer_norm_rms_epsilon"), OPENELM_RMS_EPS)
        self.u32("rope.dimension_count", int(1.0 * head_dim), "head_dim")
        self.u32("attention.key_length", head_dim, "head_dim")
        self.u32("attention.value_length", head_dim, "head_dim")
        self.file_type_placeholder()
