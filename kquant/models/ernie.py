"""ERNIE 4.5 dense and MoE: conversion/ernie.py Ernie4_5Model and Ernie4_5MoeModel (llama.cpp as
vendored in llama-cpp-python 0.3.36).

Dense: a Llama-like decoder; `ernie.` prefixes become `model.`, fused `qkv_proj` / `up_gate_proj`
(remote-code checkpoints) are split into q/k/v and gate/up. Vocabulary: SentencePiece, plus
`add_prefix_space` from tokenizer_config.json. MoE: the layers transformers makes sparse
(`(i + 1) % moe_layer_interval == 0` within [moe_layer_start_index, moe_layer_end_index]) hold a
router, an optional `moe_statics.e_score_correction_bias` (1, n_expert), experts stacked gate, up,
down and shared experts; the others are dense. The MTP tensors (`model.mtp_block.*`,
`mtp_emb_norm`, `mtp_hidden_norm`, `mtp_linear_proj`) are dropped, as upstream drops them.
Upstream's MoE class does not split fused tensors (it would write an unsplit attn_qkv llama.cpp
cannot load): kquant refuses them there, as it refuses biases (`use_bias`)."""

from __future__ import annotations

import re

from gguf import Keys, MODEL_ARCH

from ..errors import InputError, UnsupportedError
from .. import vocab as V
from .base import LLAMA_LAYER, Experts, TextModel, register, rows
from .hparams import HFConfig


def _ernie_moe_init(hp: dict) -> None:
    # configuration_ernie4_5_moe.py: attribute_map aliases (set after __init__, so they win) and
    # moe_layer_end_index = num_hidden_layers - 1 when -1
    for alias, key in (("num_experts", "moe_num_experts"), ("num_experts_per_tok", "moe_k")):
        if alias in hp:
            hp[key] = hp.pop(alias)
    if hp.get("moe_layer_end_index") == -1:
        hp["moe_layer_end_index"] = hp["num_hidden_layers"] - 1


def _ernie_init(hp: dict) -> None:
    # configuration_ernie4_5.py: head_dim None -> hidden_size // num_attention_heads
    if hp.get("head_dim") is None:
        hp["head_dim"] = hp["hidden_size"] // hp["num_attention_heads"]


# transformers 4.57.6 configuration_ernie4_5.py / configuration_ernie4_5_moe.py __init__ defaults
ERNIE4_5_CONFIG = HFConfig("ernie4_5", dict(
    vocab_size=103424, hidden_size=1024, intermediate_size=3072, num_hidden_layers=18, num_attention_heads=16,
    num_key_value_heads=2, max_position_embeddings=131072, rms_norm_eps=1e-05, tie_word_embeddings=True,
    rope_theta=500000.0, rope_scaling=None, use_bias=False, head_dim=128,
), rope_type_alias=True, kv_heads_fallback=True, post_init=_ernie_init)
ERNIE4_5_MOE_CONFIG = HFConfig("ernie4_5_moe", dict(
    vocab_size=103424, hidden_size=2560, intermediate_size=12288, num_hidden_layers=28, num_attention_heads=20,
    num_key_value_heads=4, max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=True,
    rope_theta=500000.0, rope_scaling=None, use_bias=False, moe_intermediate_size=1536, moe_k=6,
    moe_num_experts=64, moe_num_shared_experts=2, moe_layer_start_index=1, moe_layer_end_index=-1,
    moe_layer_interval=1, moe_norm_min=1e-12,
), rope_type_alias=True, post_init=_ernie_moe_init)

FUSED = {"self_attn.qkv_proj": "attn_qkv", "mlp.up_gate_proj": "ffn_up_gate"}
ATTENTION = {k: v for k, v in LLAMA_LAYER.items() if not k.startswith("mlp.")}
DENSE_MLP = {k: v for k, v in LLAMA_LAYER.items() if k.startswith("mlp.")}
ROUTER = {"mlp.gate": "ffn_gate_inp", "mlp.moe_statics.e_score_correction": "exp_probs_b"}
SHARED = {
    "mlp.shared_experts.gate_proj": "ffn_gate_shexp",
    "mlp.shared_experts.up_proj": "ffn_up_shexp",
    "mlp.shared_experts.down_proj": "ffn_down_shexp",
}
ERNIE_EXPERTS = Experts(
    source="model.layers.{bid}.mlp.experts.{xid}.{w}.weight",
    order=(("gate_proj", "ffn_gate_exps"), ("up_proj", "ffn_up_exps"), ("down_proj", "ffn_down_exps")),
    count_keys=("moe_num_experts",),
)
# Ernie4_5MoeModel.filter_tensors: MTP tensors, matched on the name as it arrives
MTP = tuple(re.compile(p) for p in (r"model.mtp_block.(\d+)", r"model.mtp_emb_norm.(\d+)", r"model.mtp_hidden_norm.(\d+)",
                                     r"model.mtp_linear_proj.(\d+)"))


@register("Ernie4_5_ForCausalLM", "Ernie4_5ForCausalLM")
class Ernie4_5Model(TextModel):
    model_arch = MODEL_ARCH.ERNIE4_5
    inverse_refused = "the checkpoint's names (\"ernie.\" or \"model.\", fused qkv_proj / up_gate_proj or not) cannot be told from the GGUF file"
    configs = (ERNIE4_5_CONFIG,)
    layer = LLAMA_LAYER | FUSED
    optional = tuple(FUSED)  # either fused or split: the split GGUF names are required

    # Ernie4_5Model.set_vocab
    def set_vocab(self, tokenizer_pre: str | None = None) -> None:
        if not (self.tok_folder / "tokenizer.model").is_file():
            raise UnsupportedError(f"{self.tok_folder}: ERNIE 4.5 needs its SentencePiece tokenizer.model")
        V.set_vocab_sentencepiece(self.kv, self.tok_folder, self.hp)
        tc = self.tok_folder / "tokenizer_config.json"
        if tc.is_file():
            cfg = V.read_object(tc)
            if "add_prefix_space" in cfg:
                v = cfg["add_prefix_space"]
                if not isinstance(v, bool):
                    raise InputError(f"{tc}: 'add_prefix_space' must be true or false, got {v!r}")
                self.kv.add_bool(Keys.Tokenizer.ADD_PREFIX, v)

    # Ernie4_5Model.filter_tensors
    def filter_name(self, name: str) -> str | None:
        if "ernie." in name:
            name = name.replace("ernie.", "model.")
        return super().filter_name(name)

    def tensor_shapes(self):
        shapes = super().tensor_shapes()
        f, e = shapes["ffn_up"]
        return shapes | {"ffn_up_gate": (2 * f, e)}

    # Ernie4_5Model.modify_tensors: qkv_proj -> q, k, v; up_gate_proj -> gate (first half), up
    def modify_tensors(self, t, name, gname, base, bid):
        if base not in ("attn_qkv", "ffn_up_gate"):
            return super().modify_tensors(t, name, gname, base, bid)
        pre = f"blk.{bid}."
        e = t[1][1]
        if base == "attn_qkv":
            hp = self.hp
            hd = hp.get("head_dim") or hp["hidden_size"] // hp["num_attention_heads"]
            q, kv = hp["num_attention_heads"] * hd, hp["num_key_value_heads"] * hd
            parts = (("attn_q", 0, q), ("attn_k", q, q + kv), ("attn_v", q + kv, q + 2 * kv))
        else:
            half = t[1][0] // 2
            parts = (("ffn_gate", 0, half), ("ffn_up", half, 2 * half))
        return [self.spec(f"{pre}{g}.weight", t, shape=(b - a, e), row_perm=rows(a, b)) for g, a, b in parts]


@register("Ernie4_5_MoeForCausalLM")
class Ernie4_5MoeModel(Ernie4_5Model):
    model_arch = MODEL_ARCH.ERNIE4_5_MOE
    inverse_refused = ""
    configs = (ERNIE4_5_MOE_CONFIG,)
    layer = LLAMA_LAYER | ROUTER | SHARED  # any layer's modules
    bias_only = ("mlp.moe_statics.e_score_correction",)
    optional = ("mlp.moe_statics.e_score_correction",)  # llama.cpp's loader does not require it
    experts = ERNIE_EXPERTS
    inverse_names = True  # the dense class is not: its fused / "ernie." names cannot be told from the GGUF file

    def prepare(self) -> None:
        hp = self.hp
        for k in ("moe_layer_start_index", "moe_layer_end_index", "moe_layer_interval", "moe_num_shared_experts", "moe_k"):
            v = hp.get(k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InputError(f"{self.config_path}: {k!r} must be a non-negative integer, got {v!r}")
        if hp["moe_layer_interval"] == 0:
            raise InputError(f"{self.config_path}: 'moe_layer_interval' must be positive")

    # Ernie4_5_MoeDecoderLayer: which layers transformers builds sparse
    def is_moe(self, bid: int) -> bool:
        hp = self.hp
        return ((bid + 1) % hp["moe_layer_interval"] == 0
                and hp["moe_layer_start_index"] <= bid <= hp["moe_layer_end_index"])

    def layer_modules(self, bid: int) -> dict[str, str]:
        if not self.is_moe(bid):
            return ATTENTION | DENSE_MLP
        return ATTENTION | ROUTER | (SHARED if self.hp["moe_num_shared_experts"] > 0 else {})

    def layer_experts(self, bid: int) -> Experts | None:
        return self.experts if self.is_moe(bid) else None

    def tensor_shapes(self):
        shapes = super().tensor_shapes()
        hp = self.hp
        e, f_sh = hp["hidden_size"], (hp.get("moe_intermediate_size") or 0) * hp["moe_num_shared_experts"]
        return shapes | {"ffn_gate_shexp": (f_sh, e), "ffn_up_shexp": (f_sh, e), "ffn_down_shexp": (e, f_sh)}

    def expected_shape(self, base: str, bias: bool):
        if base == "exp_probs_b":
            return (1, self._n_expert)  # Ernie4_5_MoeStatics: (num_experts_groups = 1, num_experts)
        return super().expected_shape(base, bias)

    @classmethod
    def hf_tensor_shape(cls, base, is_bias, shape):
        return (1,) + tuple(shape) if base == "exp_probs_b" and len(shape) == 1 else shape

    # Ernie4_5MoeModel.filter_tensors
    def filter_name(self, name: str) -> str | None:
        if any(p.match(name) for p in MTP):
            return None
        return super().filter_name(name)

    # Ernie4_5MoeModel.modify_tensors: everything but the experts goes through ModelBase.modify_tensors
    def modify_tensors(self, t, name, gname, base, bid):
        return TextModel.modify_tensors(self, t, name, gname, base, bid)

    # Ernie4_5MoeModel.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        hp = self.hp
        self.u32("expert_count", hp["moe_num_experts"], "moe_num_experts")
        self.u32("expert_used_count", hp["moe_k"], "moe_k")
        self.u32("interleave_moe_layer_step", hp["moe_layer_interval"], "moe_layer_interval")
        self.u32("leading_dense_block_count", hp["moe_layer_start_index"], "moe_layer_start_index")
        if (v := hp.get("moe_intermediate_size")) is not None:
            self.u32("expert_feed_forward_length", v, "moe_intermediate_size")
        if (n_shared := hp.get("moe_num_shared_experts")) is not None:
            self.u32("expert_shared_count", n_shared, "moe_num_shared_experts")
            ff, n_kv = hp.get("intermediate_size"), hp.get("num_key_value_heads")
            if n_shared > 0 and ff is not None and n_kv is not None:
                self.u32("expert_shared_feed_forward_length", ff // n_kv, "intermediate_size")
