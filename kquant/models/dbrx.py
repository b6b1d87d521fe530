"""Databricks DBRX: conversion/dbrx.py DbrxModel (llama.cpp as vendored in llama-cpp-python 0.3.36).

`transformer.blocks.*` layers: LayerNorms without biases (`norm_attn_norm.norm_1` / `norm_2`, the second
written as attn_output_norm), a fused Wqkv with grouped KV heads, and an MoE FFN whose experts arrive fused in
three 2-D parameters without a `.weight` suffix, `ffn.experts.mlp.{w1,v1,w2}` [n_expert * ffn_hidden_size,
d_model]: w1 / v1 viewed as [n_expert, ffn, d_model] (gate / up), w2 viewed so and each expert transposed
(down). The converter's own parameter list (attn_config / ffn_config nested as DbrxConfig keeps them); every
2-D tensor, the router included, stays BF16 (DbrxModel.tensor_force_quant)."""

from __future__ import annotations

from dataclasses import replace

from gguf import MODEL_ARCH

from ..errors import InputError, UnsupportedError
from ..ggml.types import QType
from .base import HFJoin, TextModel, register
from .hparams import HFConfig

# transformers 4.57.6 configuration_dbrx.py DbrxAttentionConfig / DbrxFFNConfig __init__ defaults
_ATTN_DEFAULTS = dict(attn_pdrop=0.0, clip_qkv=None, kv_n_heads=1, rope_theta=10000.0)
_FFN_DEFAULTS = dict(ffn_act_fn=None, ffn_hidden_size=3584, moe_num_experts=4, moe_top_k=1, moe_jitter_eps=None,
                     moe_loss_weight=0.01, moe_normalize_expert_weights=1.0)
_SUB_IGNORED = ("model_type", "attn_implementation", "transformers_version", "_commit_hash", "torch_dtype", "dtype")


def _sub_config(hp: dict, key: str, defaults: dict) -> dict:
    sub = hp.get(key)
    if sub is None:
        sub = {}
    if not isinstance(sub, dict):
        raise InputError(f"{key!r} must be an object, got {sub!r}"[:200])
    unknown = sorted(k for k in sub if k not in defaults and k not in _SUB_IGNORED)
    if unknown:  # the sub-config class raises "Found unknown kwargs" (AutoConfig fails)
        raise InputError(f"{key!r} has keys DbrxConfig does not know: {', '.join(unknown)}"[:200])
    return {**defaults, **{k: v for k, v in sub.items() if k in defaults}}


def _dbrx_init(hp: dict) -> None:
    # DbrxConfig.__init__: the sub-configs built from their dicts, num_key_value_heads from attn_config
    hp["attn_config"] = _sub_config(hp, "attn_config", _ATTN_DEFAULTS)
    hp["ffn_config"] = _sub_config(hp, "ffn_config", _FFN_DEFAULTS)
    if hp["ffn_config"]["ffn_act_fn"] is None:
        hp["ffn_config"]["ffn_act_fn"] = {"name": "silu"}
    hp["num_key_value_heads"] = hp["attn_config"]["kv_n_heads"]
    if hp.get("tie_word_embeddings"):
        raise InputError("tie_word_embeddings is not supported for DBRX models (DbrxConfig raises)")


DBRX_ATTRIBUTE_MAP = {"num_attention_heads": "n_heads", "hidden_size": "d_model", "num_hidden_layers": "n_layers",
                      "max_position_embeddings": "max_seq_len"}
DBRX_CONFIG = HFConfig("dbrx", dict(
    d_model=2048, n_heads=16, n_layers=24, max_seq_len=2048, vocab_size=32000, tie_word_embeddings=False,
), attribute_map=DBRX_ATTRIBUTE_MAP, post_init=_dbrx_init,
    required_as={"hidden_size": ("d_model",), "num_hidden_layers": ("n_layers",), "num_attention_heads": ("n_heads",),
                 "intermediate_size": ()})

# gguf-py tensor_mapping.py (dbrx entries)
DBRX_LAYER = {
    "norm_attn_norm.norm_1": "attn_norm",
    "norm_attn_norm.attn.Wqkv": "attn_qkv",
    "norm_attn_norm.attn.out_proj": "attn_output",
    "norm_attn_norm.norm_2": "attn_output_norm",
    "ffn.router.layer": "ffn_gate_inp",
    "ffn.experts.mlp.w1": "ffn_gate_exps",
    "ffn.experts.mlp.v1": "ffn_up_exps",
    "ffn.experts.mlp.w2": "ffn_down_exps",
}
_EXPERT_PARAMS = ("ffn.experts.mlp.w1", "ffn.experts.mlp.v1", "ffn.experts.mlp.w2")


@register("DbrxForCausalLM")
class DbrxModel(TextModel):
    model_arch = MODEL_ARCH.DBRX
    configs = (DBRX_CONFIG,)
    layer = DBRX_LAYER
    globals_ = {"transformer.wte": "token_embd", "transformer.norm_f": "output_norm", "lm_head": "output"}
    layer_prefix = "transformer.blocks."
    aliases = {"hidden_size": ("d_model",), "num_attention_heads": ("n_heads",), "max_position_embeddings": ("max_seq_len",)}
    norm_of = {"attn_qkv": "attn_norm", "ffn_gate_inp": "attn_output_norm", "ffn_gate_exps": "attn_output_norm",
               "ffn_up_exps": "attn_output_norm"}
    inverse_names = True
    # --hf-names: the experts go back into the fused [n_expert * ffn, d_model] parameters (w2 transposed back)
    hf_joins = {"ffn_gate_exps": HFJoin("ffn.experts.mlp.w1", flat=True),
                "ffn_up_exps": HFJoin("ffn.experts.mlp.v1", flat=True),
                "ffn_down_exps": HFJoin("ffn.experts.mlp.w2", transpose=True, flat=True)}

    def prepare(self) -> None:
        ac = self.hp["attn_config"]
        if ac["clip_qkv"] is None:  # add_clamp_kqv(None): the converter fails in struct.pack
            raise UnsupportedError(f"{self.config_path}: DBRX without 'attn_config.clip_qkv' cannot be converted "
                                   "(llama.cpp's converter writes it unconditionally and fails on null)")
        act = self.hp["ffn_config"]["ffn_act_fn"]
        if not isinstance(act, dict):
            raise InputError(f"{self.config_path}: 'ffn_config.ffn_act_fn' must be an object like {{\"name\": \"silu\"}}, "
                             f"got {act!r}"[:200])
        if act.get("name", "silu") != "silu":
            raise UnsupportedError(f"{self.config_path}: DBRX with ffn_act_fn other than silu is not supported "
                                   "(llama.cpp's dbrx runtime uses SiLU)")

    def n_expert(self) -> int:
        n = self.hp["ffn_config"]["moe_num_experts"]
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise InputError(f"{self.config_path}: 'ffn_config.moe_num_experts' must be a positive integer, got {n!r}")
        return n

    def tensor_shapes(self):
        s = super().tensor_shapes()
        e, f = self.hp["d_model"], self.hp["ffn_config"]["ffn_hidden_size"]
        if isinstance(f, bool) or not isinstance(f, int) or f <= 0:
            raise InputError(f"{self.config_path}: 'ffn_config.ffn_hidden_size' must be a positive integer, got {f!r}")
        fused = (self._n_expert * f, e)  # as stored: no .weight, 2-D
        return s | {"attn_output_norm": (e,), "ffn_gate_exps": fused, "ffn_up_exps": fused, "ffn_down_exps": fused}

    # DbrxModel.modify_tensors: the fused expert parameters get a ".weight" suffix before mapping
    def filter_name(self, name: str) -> str | None:
        name = super().filter_name(name)
        if name is not None and name.startswith(self.layer_prefix) and name.endswith(_EXPERT_PARAMS):
            name += ".weight"
        return name

    # DbrxModel.modify_tensors: experts viewed as [n_expert, ffn, d_model], w2 permuted (0, 2, 1);
    # DbrxModel.tensor_force_quant: every 2-D tensor (the router too) stays BF16
    def modify_tensors(self, t, name, gname, base, bid):
        n_x, f, e = self._n_expert, self.hp["ffn_config"]["ffn_hidden_size"], self.hp["d_model"]
        if base in ("ffn_gate_exps", "ffn_up_exps"):
            return [self.spec(gname, t, shape=(n_x, f, e))]
        if base == "ffn_down_exps":
            return [replace(self.spec(gname, t, shape=(n_x, e, f)), transpose=True)]
        out = super().modify_tensors(t, name, gname, base, bid)
        return [replace(s, ref_type=QType.BF16) if len(s.shape) > 1 else s for s in out]

    # DbrxModel.set_gguf_parameters (replaces TextModel's)
    def set_gguf_parameters(self) -> None:
        hp = self.hp
        fc, ac = hp["ffn_config"], hp["attn_config"]
        self.kv.add_uint32(self.key("block_count"), self.block_count)
        self.u32("context_length", hp["max_seq_len"], "max_seq_len")
        self.u32("embedding_length", hp["d_model"], "d_model")
        self.u32("feed_forward_length", fc["ffn_hidden_size"], "ffn_config.ffn_hidden_size")
        self.u32("attention.head_count", hp["n_heads"], "n_heads")
        self.u32("attention.head_count_kv", ac["kv_n_heads"], "attn_config.kv_n_heads")
        self.f32("rope.freq_base", ac["rope_theta"], "attn_config.rope_theta")
        self.f32("attention.clamp_kqv", ac["clip_qkv"], "attn_config.clip_qkv")
        self.u32("expert_count", fc["moe_num_experts"], "ffn_config.moe_num_experts")
        self.u32("expert_used_count", fc["moe_top_k"], "ffn_config.moe_top_k")
        self.kv.add_float32(self.key("attention.layer_norm_epsilon"), 1e-5)
        self.file_type_placeholder()
