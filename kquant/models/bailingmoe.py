"""Ling (Bailing MoE): conversion/bailingmoe.py BailingMoeModel and BailingMoeV2Model (llama.cpp as
vendored in llama-cpp-python 0.3.36).

Both have no config class in transformers 4.57.6 (model_type bailing_moe, remote code only): the
converter reads config.json as it is.

Ling 2.0 (`BailingMoeV2ForCausalLM`): fused QKV (attn_qkv, as stored), per-head Q/K norms, partial
rotary embeddings, `first_k_dense_replace` dense layers then sigmoid-routed experts (stacked into
ffn_*_exps) with the router's `expert_bias` (exp_probs_b) and shared experts; NextN/MTP layers past
num_hidden_layers kept as extra blocks (block_count includes them) with their nextn.* tensors and
`final_layernorm` (layer_output_norm), as the converter keeps them.

Ling 1 (`BailingMoeForCausalLM`, Ling-lite / Ling-plus): the fused QKV split into attn_q / attn_k /
attn_v with Q and K permuted as LlamaModel.permute does, every layer MoE with shared experts.
`norm_head` (the lm_head divided by its column norms in torch float32) is refused: torch's
reduction order is not reproduced bit for bit.
"""

from __future__ import annotations

import numpy as np
from gguf import MODEL_ARCH

from ..errors import InputError, UnsupportedError
from .base import Experts, HFJoin, HFTensor, TextModel, register, rows
from .hparams import HFConfig
from .llama import qk_permutation
from .spec import TensorSpec

BAILING_CONFIG = HFConfig("bailing_moe", {}, raw=True)

_GLOBALS = {"model.word_embeddings": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
_ATTN = {
    "input_layernorm": "attn_norm",
    "attention.query_key_value": "attn_qkv",
    "attention.dense": "attn_output",
    "post_attention_layernorm": "ffn_norm",
}
_QK_NORM = {"attention.query_layernorm": "attn_q_norm", "attention.key_layernorm": "attn_k_norm"}
_DENSE = {"mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
_ROUTER = {"mlp.gate": "ffn_gate_inp"}
_EXPERT_BIAS = {"mlp.gate.expert_bias": "exp_probs_b"}  # filter_tensors: .expert_bias -> .expert_bias.bias
_SHARED = {"mlp.shared_experts.gate_proj": "ffn_gate_shexp", "mlp.shared_experts.up_proj": "ffn_up_shexp",
           "mlp.shared_experts.down_proj": "ffn_down_shexp"}
_NEXTN = {
    "eh_proj": "nextn.eh_proj", "enorm": "nextn.enorm", "hnorm": "nextn.hnorm", "embed_tokens": "nextn.embed_tokens",
    "shared_head.head": "nextn.shared_head_head", "shared_head.norm": "nextn.shared_head_norm",
    "final_layernorm": "layer_output_norm",
}
# llama.cpp's bailingmoe2 loader: the NextN block's own embeddings and head are optional
_NEXTN_OPTIONAL = ("embed_tokens", "shared_head.head", "shared_head.norm")
BAILING_EXPERTS = Experts(
    source="model.layers.{bid}.mlp.experts.{xid}.{w}.weight",
    order=(("down_proj", "ffn_down_exps"), ("gate_proj", "ffn_gate_exps"), ("up_proj", "ffn_up_exps")),
    count_keys=("num_local_experts", "num_experts"),
)


def _count(model: TextModel, key: str, *, positive: bool = False) -> int:
    v = model.hp.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < (1 if positive else 0):
        kind = "positive" if positive else "non-negative"
        raise InputError(f"{model.config_path}: {key!r} must be a {kind} integer, got {v!r}")
    return v


def _head_dim(hp: dict) -> int:
    hd = hp.get("head_dim")
    return hd if hd is not None else hp["hidden_size"] // hp["num_attention_heads"]


class _BailingBase(TextModel):
    configs = (BAILING_CONFIG,)
    globals_ = _GLOBALS
    experts = BAILING_EXPERTS

    def tensor_shapes(self):
        hp = self.hp
        e, hd = hp["hidden_size"], _head_dim(hp)
        n_head = hp["num_attention_heads"]
        n_kv = hp.get("num_key_value_heads") or n_head
        f_sh = self.shared_ff()
        return super().tensor_shapes() | {
            "attn_qkv": ((n_head + 2 * n_kv) * hd, e), "attn_output": (e, n_head * hd), "attn_q_norm": (hd,),
            "attn_k_norm": (hd,), "exp_probs_b": (self._n_expert,),
            "ffn_gate_shexp": (f_sh, e), "ffn_up_shexp": (f_sh, e), "ffn_down_shexp": (e, f_sh),
        }

    def shared_ff(self) -> int:
        return self.hp["moe_intermediate_size"] * self.hp["num_shared_experts"]

    def set_gguf_parameters_common(self, rope_dim: int) -> None:
        hp = self.hp
        self.u32("rope.dimension_count", rope_dim, "head_dim")
        self.u32("leading_dense_block_count", hp["first_k_dense_replace"], "first_k_dense_replace")
        self.u32("vocab_size", hp["vocab_size"], "vocab_size")
        self.u32("expert_feed_forward_length", hp["moe_intermediate_size"], "moe_intermediate_size")


@register("BailingMoeV2ForCausalLM")
class BailingMoeV2Model(_BailingBase):
    model_arch = MODEL_ARCH.BAILINGMOE2
    inverse_names = True  # --hf-names: QKV as stored, NextN blocks under their layer's names, expert_bias renamed back
    layer = _ATTN | _QK_NORM | _DENSE | _ROUTER | _EXPERT_BIAS | _SHARED | _NEXTN  # any layer's modules
    bias_ok = ("mlp.gate.expert_bias",)
    bias_only = ("mlp.gate.expert_bias",)
    optional = ("mlp.gate.expert_bias",) + _NEXTN_OPTIONAL  # expert_bias: moe_router_enable_expert_bias only
    norm_of = TextModel.norm_of | {"attn_qkv": "attn_norm"}

    # BailingMoeV2Model.__init__: the NextN/MTP layers are extra blocks
    def __init__(self, hp, **kw):
        super().__init__(hp, **kw)
        for k in ("first_k_dense_replace", "num_shared_experts"):
            _count(self, k)
        _count(self, "moe_intermediate_size", positive=True)
        n_nextn = hp.get("num_nextn_predict_layers", 0)
        if isinstance(n_nextn, bool) or not isinstance(n_nextn, int) or not 0 <= n_nextn <= 64:
            raise InputError(f"{self.config_path}: 'num_nextn_predict_layers' must be an integer in [0, 64], got {n_nextn!r}")
        self.n_main = hp["num_hidden_layers"]
        self.block_count = self.n_main + n_nextn

    def layer_modules(self, bid: int) -> dict[str, str]:
        mods = _ATTN | _QK_NORM
        if bid < self.hp["first_k_dense_replace"]:
            mods = mods | _DENSE
        else:
            mods = mods | _ROUTER | _EXPERT_BIAS | (_SHARED if self.hp["num_shared_experts"] else {})
        return mods | _NEXTN if bid >= self.n_main else mods

    def layer_experts(self, bid: int) -> Experts | None:
        return None if bid < self.hp["first_k_dense_replace"] else self.experts

    def filter_name(self, name: str) -> str | None:
        # BailingMoeV2Model.filter_tensors
        if name.endswith(".expert_bias"):
            name = name.replace(".expert_bias", ".expert_bias.bias")
        return super().filter_name(name)

    def shared_ff(self) -> int:
        hp = self.hp
        v = hp.get("moe_shared_expert_intermediate_size")
        return v if v is not None else hp["moe_intermediate_size"] * hp["num_shared_experts"]

    def tensor_shapes(self):
        e, v = self.hp["hidden_size"], self.hp["vocab_size"]
        return super().tensor_shapes() | {
            "nextn.eh_proj": (e, 2 * e), "nextn.enorm": (e,), "nextn.hnorm": (e,), "nextn.embed_tokens": (v, e),
            "nextn.shared_head_head": (v, e), "nextn.shared_head_norm": (e,), "layer_output_norm": (e,),
        }

    # BailingMoeV2Model.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        hp = self.hp
        factor = self.rp.get("partial_rotary_factor", 0.5)
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor <= 1:
            raise InputError(f"{self.config_path}: 'partial_rotary_factor' must be a number in (0, 1], got {factor!r}")
        self.set_gguf_parameters_common(int(_head_dim(hp) * factor))
        self.u32("expert_shared_feed_forward_length", self.shared_ff(), "moe_shared_expert_intermediate_size")
        self.f32("expert_weights_scale", hp.get("routed_scaling_factor"), "routed_scaling_factor")
        self.u32("expert_shared_count", hp["num_shared_experts"], "num_shared_experts")
        if not isinstance(hp.get("norm_topk_prob"), bool):
            raise InputError(f"{self.config_path}: 'norm_topk_prob' must be true or false, got {hp.get('norm_topk_prob')!r}")
        self.kv.add_bool(self.key("expert_weights_norm"), hp["norm_topk_prob"])
        if (v := hp.get("num_nextn_predict_layers")) is not None:
            self.u32("nextn_predict_layers", v, "num_nextn_predict_layers")


@register("BailingMoeForCausalLM")
class BailingMoeModel(_BailingBase):
    model_arch = MODEL_ARCH.BAILINGMOE
    layer = _ATTN | _ROUTER | _SHARED
    split_modules = {"attn_qkv": ("attn_q", "attn_k", "attn_v")}  # modify_tensors
    # --hf-names: attn_q / attn_k rows un-permuted (LlamaModel.hf_row_order, the file's head counts), then
    # q, k, v stacked back into query_key_value
    inverse_names = True
    undo_permute = True
    hf_joins = {g: HFJoin("attention.query_key_value.weight", i, 3) for i, g in enumerate(("attn_q", "attn_k", "attn_v"))}

    @classmethod
    def hf_row_order(cls, base, n_rows, n_head, n_head_kv):
        if base in ("attn_q", "attn_k"):
            return np.argsort(qk_permutation(n_rows, n_head if base == "attn_q" else n_head_kv))
        return None

    def __init__(self, hp, **kw):
        super().__init__(hp, **kw)
        _count(self, "num_shared_experts", positive=True)  # llama.cpp's bailingmoe loader requires the shared experts
        _count(self, "moe_intermediate_size", positive=True)
        _count(self, "num_key_value_heads", positive=True)
        if _count(self, "first_k_dense_replace") != 0:
            raise UnsupportedError(f"{self.config_path}: Ling with dense layers (first_k_dense_replace > 0) is not "
                                   "supported (llama.cpp's bailingmoe runtime has none)")
        if hp.get("norm_head"):
            raise UnsupportedError(f"{self.config_path}: 'norm_head' is not supported (the converter normalizes lm_head "
                                   "in torch float32, whose reduction order kquant does not reproduce bit for bit)")

    # BailingMoeModel.modify_tensors: query_key_value split into q, k, v, q and k permuted (LlamaModel.permute)
    def modify_tensors(self, t: HFTensor, name: str, gname: str, base: str, bid: int | None) -> list[TensorSpec]:
        if base != "attn_qkv":
            return super().modify_tensors(t, name, gname, base, bid)
        hp = self.hp
        hd, n_head, n_kv = _head_dim(hp), hp["num_attention_heads"], hp["num_key_value_heads"]
        q, k = n_head * hd, n_kv * hd
        e = t[1][1]
        return [
            self.spec(f"blk.{bid}.attn_q.weight", t, shape=(q, e), row_perm=qk_permutation(q, n_head)),
            self.spec(f"blk.{bid}.attn_k.weight", t, shape=(k, e), row_perm=q + qk_permutation(k, n_kv)),
            self.spec(f"blk.{bid}.attn_v.weight", t, shape=(k, e), row_perm=rows(q + k, q + 2 * k)),
        ]

    # BailingMoeModel.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        hp = self.hp
        self.set_gguf_parameters_common(_head_dim(hp))
        self.f32("expert_weights_scale", 1.0, "expert_weights_scale")
        self.u32("expert_shared_count", hp["num_shared_experts"], "num_shared_experts")
        if not isinstance(hp.get("norm_topk_prob"), bool):
            raise InputError(f"{self.config_path}: 'norm_topk_prob' must be true or false, got {hp.get('norm_topk_prob')!r}")
        self.kv.add_bool(self.key("expert_weights_norm"), hp["norm_topk_prob"])
