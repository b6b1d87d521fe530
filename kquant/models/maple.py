"""deepgrove Maple: conversion/maple.py MapleModel (llama.cpp as vendored in llama-cpp-python 0.3.36).

A Qwen3-MoE-like decoder: Q/K-normed attention, 3:1 sliding-window / global layers (`layer_types`), partial
rotary, an MoE in every layer with per-expert tensors stacked as the converter stacks them (down, gate, up),
a softmax router, no shared expert; the experts' SwiGLU clamp (7.0, from the reference modeling code) written
per layer. transformers 4.57.6 has no config class for it: the converter reads config.json as it is. The
converter asserts silu, no shared experts, normalized top-k and NoPE global layers: kquant refuses the others."""

from __future__ import annotations

from ..errors import InputError, UnsupportedError
from .base import GLOBAL_NAMES, LLAMA_LAYER, QK_NORM_LAYER, Experts, TextModel, register
from .hparams import HFConfig

MAPLE_CONFIG = HFConfig("maple", {}, raw=True)

MAPLE_LAYER = {k: v for k, v in LLAMA_LAYER.items() if not k.startswith("mlp.")} | QK_NORM_LAYER | {"mlp.gate": "ffn_gate_inp"}
# MapleModel.modify_tensors stacks down, gate, up once a layer's experts are all there
MAPLE_EXPERTS = Experts(
    source="model.layers.{bid}.mlp.experts.{xid}.{w}.weight",
    order=(("down_proj", "ffn_down_exps"), ("gate_proj", "ffn_gate_exps"), ("up_proj", "ffn_up_exps")),
    count_keys=("num_experts",),
)


@register("MapleForCausalLM")
class MapleModel(TextModel):
    configs = (MAPLE_CONFIG,)
    layer = MAPLE_LAYER
    experts = MAPLE_EXPERTS
    inverse_names = True

    @classmethod
    def arch_name(cls) -> str:
        return "maple"  # gguf-py MODEL_ARCH_NAMES[MAPLE] (newer than the gguf package kquant uses)

    def prepare_tensors(self, hf, extra, where):
        # gguf-py tensor_mapping: the embeddings under either name (model.word_embeddings: some Maple exports)
        if any(n == "model.word_embeddings.weight" for n, _, _ in hf):
            self.globals_ = {"model.word_embeddings": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
        else:
            self.globals_ = GLOBAL_NAMES
        return super().prepare_tensors(hf, extra, where)

    def tensor_shapes(self):
        hp = self.hp
        e, f = hp["hidden_size"], hp["moe_intermediate_size"]
        return super().tensor_shapes() | {"ffn_gate_exps": (f, e), "ffn_up_exps": (f, e), "ffn_down_exps": (e, f)}

    # MapleModel.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        hp, where = self.hp, self.config_path
        super().set_gguf_parameters()
        # the converter's asserts
        if hp.get("hidden_act") != "silu":
            raise UnsupportedError(f"{where}: Maple with hidden_act {hp.get('hidden_act')!r} is not supported (silu only)")
        if hp.get("num_shared_experts", 0) != 0:
            raise UnsupportedError(f"{where}: Maple with shared experts is not supported (as the converter)")
        if not hp.get("norm_topk_prob", True):
            raise UnsupportedError(f"{where}: Maple without norm_topk_prob is not supported (as the converter)")
        if not hp.get("nope_on_global_attention", False):
            raise UnsupportedError(f"{where}: Maple with rope on its global layers is not supported (the converter "
                                   "requires nope_on_global_attention)")
        head_dim = hp.get("head_dim", hp["hidden_size"] // hp["num_attention_heads"])
        factor = self.rp.get("partial_rotary_factor", hp.get("partial_rotary_factor", 1.0))
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor <= 1:
            raise InputError(f"{where}: 'partial_rotary_factor' must be a number in (0, 1], got {factor!r}")
        self.u32("vocab_size", hp["vocab_size"], "vocab_size")
        self.u32("rope.dimension_count", int(head_dim * factor), "partial_rotary_factor")
        self.u32("attention.sliding_window", hp.get("sliding_window"), "sliding_window")
        layer_types = hp.get("layer_types")
        if not isinstance(layer_types, list):
            raise InputError(f"{where}: 'layer_types' must be a list, got {layer_types!r}"[:200])
        self.kv.add_array(self.key("attention.sliding_window_pattern"), [t == "sliding_attention" for t in layer_types])
        self.u32("expert_feed_forward_length", hp.get("moe_intermediate_size"), "moe_intermediate_size")
        self.kv.add_array(self.key("swiglu_clamp_exp"), [7.0] * self.block_count)  # modeling_maple.py's clamp
