"""MiniMax-M2 (`MiniMaxM2ForCausalLM`): conversion/minimax.py MiniMaxM2Model (llama.cpp as vendored in
llama-cpp-python 0.3.36).

A MoE decoder: attention with Q/K RMSNorms over the whole projection (n_head * head_dim wide, not per
head), partial rotary embeddings (`rotary_dim`), sigmoid-routed experts (`block_sparse_moe`, w1/w2/w3
stacked into ffn_*_exps) with the router's `e_score_correction_bias` (exp_probs_b), no shared expert.
transformers 4.57.6 has no config class for model_type minimax_m2: the converter reads config.json as
it is. MiniMax-01 (`MiniMaxText01ForCausalLM`, lightning attention) and MiniMax-M3 are not ported.
"""

from __future__ import annotations

from gguf import MODEL_ARCH

from ..errors import InputError
from .base import LLAMA_LAYER, QK_NORM_LAYER, Experts, TextModel, register
from .hparams import HFConfig

MINIMAX_M2_CONFIG = HFConfig("minimax_m2", {}, raw=True)

MINIMAX_M2_LAYER = {k: v for k, v in LLAMA_LAYER.items() if not k.startswith("mlp.")} | QK_NORM_LAYER | {
    "block_sparse_moe.gate": "ffn_gate_inp",
    "block_sparse_moe.e_score_correction": "exp_probs_b",  # filter_name: e_score_correction_bias -> .bias
}


@register("MiniMaxM2ForCausalLM")
class MiniMaxM2Model(TextModel):
    model_arch = MODEL_ARCH.MINIMAXM2
    inverse_names = True  # --hf-names: experts unstacked (Experts.source), e_score_correction_bias renamed back
    configs = (MINIMAX_M2_CONFIG,)
    layer = MINIMAX_M2_LAYER
    bias_ok = ("block_sparse_moe.e_score_correction",)
    bias_only = ("block_sparse_moe.e_score_correction",)
    # MiniMaxM2Model.modify_tensors: experts stacked in the order w1, w2, w3
    experts = Experts(
        source="model.layers.{bid}.block_sparse_moe.experts.{xid}.{w}.weight",
        order=(("w1", "ffn_gate_exps"), ("w2", "ffn_down_exps"), ("w3", "ffn_up_exps")),
        count_keys=("num_local_experts", "num_experts"),
    )

    def __init__(self, hp, **kw):
        super().__init__(hp, **kw)
        for k in ("head_dim", "rotary_dim"):  # the converter (find_hparam) and llama.cpp's loader need both
            v = hp.get(k)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise InputError(f"{self.config_path}: {k!r} must be a positive integer, got {v!r}")

    def tensor_shapes(self):
        s = super().tensor_shapes()
        hd = self.hp["head_dim"]
        n_head = self.dim("num_attention_heads")
        n_kv = self.dim("num_key_value_heads") or n_head
        return s | {"attn_q_norm": (n_head * hd,), "attn_k_norm": (n_kv * hd,), "exp_probs_b": (self._n_expert,)}

    # MiniMaxM2Model.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        self.u32("expert_feed_forward_length", self.find_hparam(["intermediate_size"]), "intermediate_size")
        self.u32("rope.dimension_count", self.find_hparam(["rotary_dim"]), "rotary_dim")
