"""Arcee Trinity (`AfmoeForCausalLM`): conversion/afmoe.py AfmoeModel (llama.cpp as vendored in
llama-cpp-python 0.3.36).

A LlamaModel (its vocabulary and rope keys) whose modify_tensors skips LlamaModel's: Q/K are not
permuted. Each layer has Q/K norms, a sigmoid gate on the attention output (self_attn.gate_proj ->
attn_gate), norms before and after attention and the MLP (post_attention_norm, ffn_norm,
post_ffw_norm), `num_dense_layers` dense layers, then sigmoid-routed experts (mlp.router.gate, the
`expert_bias` -> exp_probs_b, experts stacked gate, up, down) and shared experts. transformers
4.57.6 has no config class for model_type afmoe: the converter reads config.json as it is.
"""

from __future__ import annotations

from gguf import MODEL_ARCH

from ..errors import InputError
from .base import LLAMA_LAYER, QK_NORM_LAYER, Experts, TextModel, register
from .hparams import HFConfig
from .llama import LlamaModel

AFMOE_CONFIG = HFConfig("afmoe", {}, raw=True)

_ATTN = {k: v for k, v in LLAMA_LAYER.items() if not k.startswith("mlp.") and k != "post_attention_layernorm"} | {
    "post_attention_layernorm": "post_attention_norm",  # ATTN_POST_NORM (FFN_NORM is not an afmoe tensor)
    "pre_mlp_layernorm": "ffn_norm",  # FFN_PRE_NORM
    "post_mlp_layernorm": "post_ffw_norm",  # FFN_POST_NORM
    "self_attn.gate_proj": "attn_gate",
} | QK_NORM_LAYER
_DENSE = {"mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
_MOE = {"mlp.router.gate": "ffn_gate_inp", "mlp.expert_bias": "exp_probs_b"}  # filter_tensors: .expert_bias -> .bias
_SHARED = {"mlp.shared_experts.gate_proj": "ffn_gate_shexp", "mlp.shared_experts.up_proj": "ffn_up_shexp",
           "mlp.shared_experts.down_proj": "ffn_down_shexp"}


@register("AfmoeForCausalLM")
class AfmoeModel(LlamaModel):
    model_arch = MODEL_ARCH.AFMOE
    configs = (AFMOE_CONFIG,)
    layer = _ATTN | _DENSE | _MOE | _SHARED  # any layer's modules
    bias_ok = ("mlp.expert_bias",)
    bias_only = ("mlp.expert_bias",)
    undo_permute = False
    inverse_names = True  # --hf-names: experts unstacked (Experts.source), expert_bias without the filter's ".bias"
    # AfmoeModel.modify_tensors: experts stacked in the order gate, up, down
    experts = Experts(
        source="model.layers.{bid}.mlp.experts.{xid}.{w}.weight",
        order=(("gate_proj", "ffn_gate_exps"), ("up_proj", "ffn_up_exps"), ("down_proj", "ffn_down_exps")),
        count_keys=("num_local_experts", "num_experts"),
    )
    norm_of = TextModel.norm_of | {"attn_gate": "attn_norm"}

    def __init__(self, hp, **kw):
        super().__init__(hp, **kw)
        for k in ("num_dense_layers", "num_shared_experts"):
            v = hp.get(k, 0)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InputError(f"{self.config_path}: {k!r} must be a non-negative integer, got {v!r}")

    def n_dense(self) -> int:
        # llama.cpp's afmoe loader: dense layers are the leading_dense_block_count (absent: none)
        return self.hp.get("num_dense_layers", 0)

    def layer_modules(self, bid: int) -> dict[str, str]:
        if bid < self.n_dense():
            return _ATTN | _DENSE
        return _ATTN | _MOE | (_SHARED if self.hp.get("num_shared_experts") else {})

    def layer_experts(self, bid: int) -> Experts | None:
        return None if bid < self.n_dense() else self.experts

    def filter_name(self, name: str) -> str | None:
        # AfmoeModel.filter_tensors
        if name.endswith(".expert_bias"):
            name = name.replace(".expert_bias", ".expert_bias.bias")
        return super().filter_name(name)

    def tensor_shapes(self):
        s = super().tensor_shapes()
        hp = self.hp
        e = hp["hidden_size"]
        q = s["attn_q"][0]
        f_sh = (hp.get("moe_intermediate_size") or 0) * (hp.get("num_shared_experts") or 0)
        return s | {"attn_gate": (q, e), "exp_probs_b": (self._n_expert,),
                    "ffn_gate_shexp": (f_sh, e), "ffn_up_shexp": (f_sh, e), "ffn_down_shexp": (e, f_sh)}

    # AfmoeModel.modify_tensors: ModelBase.modify_tensors, not LlamaModel's (no Q/K permutation)
    def modify_tensors(self, t, name, gname, base, bid):
        return TextModel.modify_tensors(self, t, name, gname, base, bid)

    @classmethod
    def hf_row_order(cls, base, n_rows, n_head, n_head_kv):
        return None

    # AfmoeModel.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        hp = self.hp
        if (v := hp.get("num_shared_experts")) is not None:
            self.u32("expert_shared_count", v, "num_shared_experts")
        if (v := hp.get("moe_intermediate_size")) is not None:
            self.u32("expert_feed_forward_length", v, "moe_intermediate_size")
        if (v := hp.get("num_dense_layers")) is not None:
            self.u32("leading_dense_block_count", v, "num_dense_layers")
        if (v := hp.get("route_norm")) is not None:
            if not isinstance(v, bool):
                raise InputError(f"{self.config_path}: 'route_norm' must be true or false, got {v!r}")
            self.kv.add_bool(self.key("expert_weights_norm"), v)
        if (v := hp.get("route_scale")) is not None:
            self.f32("expert_weights_scale", v, "route_scale")
        if (v := hp.get("sliding_window")) is not None:
            self.u32("attention.sliding_window", v, "sliding_window")
