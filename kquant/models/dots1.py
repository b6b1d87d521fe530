"""rednote dots.llm1: conversion/dots1.py Dots1Model (llama.cpp as vendored in llama-cpp-python 0.3.36).

A Qwen2MoeModel with q/k norms, `first_k_dense_replace` dense layers first, then routed experts (merged per
layer), shared experts (`mlp.shared_experts`, kept whole) and the router's score-correction bias (exp_probs_b)."""

from __future__ import annotations

from gguf import MODEL_ARCH

from ..errors import InputError, UnsupportedError
from .base import ATTN_BIASES, LLAMA_LAYER, QK_NORM_LAYER, Experts, register
from .hparams import HFConfig
from .qwen import MOE_LAYER, Qwen2MoeModel


def _dots1_init(hp: dict) -> None:
    # transformers configuration_dots1.py Dots1Config.__init__
    if hp.get("num_key_value_heads") is None:
        hp["num_key_value_heads"] = hp["num_attention_heads"]
    if hp.get("layer_types") is None:
        n, sw, mwl = hp["num_hidden_layers"], hp.get("sliding_window"), hp.get("max_window_layers")
        hp["layer_types"] = ["sliding_attention" if sw is not None and isinstance(mwl, int) and i >= mwl
                             else "full_attention" for i in range(n)]


# transformers 4.57.6 configuration_dots1.py __init__ defaults, for the keys llama.cpp reads
DOTS1_CONFIG = HFConfig("dots1", dict(
    vocab_size=152064, hidden_size=4608, intermediate_size=10944, moe_intermediate_size=1408, num_hidden_layers=62,
    num_attention_heads=32, num_key_value_heads=32, n_shared_experts=None, n_routed_experts=None, n_group=1,
    topk_group=1, num_experts_per_tok=None, first_k_dense_replace=0, norm_topk_prob=False, max_position_embeddings=2048,
    rms_norm_eps=1e-6, tie_word_embeddings=False, rope_theta=10000.0, rope_scaling=None, attention_bias=False,
    routed_scaling_factor=1.0, sliding_window=4096, max_window_layers=62, layer_types=None,
), post_init=_dots1_init)

DOTS1_DENSE_LAYER = LLAMA_LAYER | QK_NORM_LAYER
DOTS1_MOE_LAYER = MOE_LAYER | QK_NORM_LAYER | {
    "mlp.gate.e_score_correction": "exp_probs_b",  # filter_name: e_score_correction_bias -> .bias
    "mlp.shared_experts.gate_proj": "ffn_gate_shexp",
    "mlp.shared_experts.up_proj": "ffn_up_shexp",
    "mlp.shared_experts.down_proj": "ffn_down_shexp",
}
DOTS1_EXPERTS = Experts(
    source="model.layers.{bid}.mlp.experts.{xid}.{w}.weight",
    order=(("down_proj", "ffn_down_exps"), ("gate_proj", "ffn_gate_exps"), ("up_proj", "ffn_up_exps")),
    count_keys=("num_experts",),  # Dots1Model.__init__ copies n_routed_experts there
)


@register("Dots1ForCausalLM")
class Dots1Model(Qwen2MoeModel):
    model_arch = MODEL_ARCH.DOTS1
    configs = (DOTS1_CONFIG,)
    layer = DOTS1_MOE_LAYER
    bias_ok = ATTN_BIASES + ("mlp.gate.e_score_correction",)
    bias_required = ()
    bias_only = ("mlp.gate.e_score_correction",)
    experts = DOTS1_EXPERTS
    inverse_names = True

    # Dots1Model.__init__
    def __init__(self, hp, **kw):
        hp["num_experts"] = hp["n_routed_experts"]
        super().__init__(hp, **kw)
        k = hp.get("first_k_dense_replace")
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise InputError(f"{self.config_path}: 'first_k_dense_replace' must be a non-negative integer, got {k!r}")

    def layer_modules(self, bid: int) -> dict[str, str]:
        return DOTS1_DENSE_LAYER if bid < self.hp["first_k_dense_replace"] else DOTS1_MOE_LAYER

    @classmethod
    def hf_layer(cls, kinds):
        return DOTS1_DENSE_LAYER | DOTS1_MOE_LAYER

    def layer_experts(self, bid: int) -> Experts | None:
        return None if bid < self.hp["first_k_dense_replace"] else DOTS1_EXPERTS

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        s = super().tensor_shapes()
        hp = self.hp
        e, f_exp, n_sh = hp["hidden_size"], hp["moe_intermediate_size"], hp.get("n_shared_experts")
        if isinstance(n_sh, bool) or not isinstance(n_sh, int) or n_sh <= 0:
            raise InputError(f"{self.config_path}: 'n_shared_experts' must be a positive integer, got {n_sh!r}")
        f_sh = f_exp * n_sh  # Dots1MoE: one MLP of moe_intermediate_size * n_shared_experts
        return s | {"exp_probs_b": (self._n_expert,), "ffn_gate_shexp": (f_sh, e), "ffn_up_shexp": (f_sh, e),
                    "ffn_down_shexp": (e, f_sh)}

    # Dots1Model.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        hp = self.hp
        if self.key("expert_gating_func") not in self.kv:
            # kquant: upstream writes the file, llama.cpp's build_moe_ffn aborts on it (gating function NONE)
            raise UnsupportedError(f"{self.config_path}: llama.cpp's dots1 runtime needs an expert gating function "
                                   "(config.json 'scoring_func', e.g. \"sigmoid\")")
        self.u32("leading_dense_block_count", hp["first_k_dense_replace"], "first_k_dense_replace")
        self.u32("expert_shared_count", hp["n_shared_experts"], "n_shared_experts")
        self.f32("expert_weights_scale", hp["routed_scaling_factor"], "routed_scaling_factor")
        norm = hp["norm_topk_prob"]
        if not isinstance(norm, bool):
            raise InputError(f"{self.config_path}: 'norm_topk_prob' must be true or false, got {norm!r}")
        self.kv.add_bool(self.key("expert_weights_norm"), norm)
