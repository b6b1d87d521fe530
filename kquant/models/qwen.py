"""Qwen 2, Qwen 3 and their MoE variants: conversion/qwen.py (llama.cpp as vendored in llama-cpp-python 0.3.36)."""

from __future__ import annotations

from gguf import MODEL_ARCH

from ..errors import UnsupportedError
from .. import vocab as V
from .base import ATTN_BIASES, LLAMA_LAYER, MLP_BIASES, QK_NORM_LAYER, Experts, TextModel, register
from .hparams import HFConfig

_Q = dict(rope_type_alias=True, kv_heads_fallback=True)
QWEN2_CONFIG = HFConfig("qwen2", dict(
    vocab_size=151936, max_position_embeddings=32768, hidden_size=4096, intermediate_size=22016,
    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, rms_norm_eps=1e-6,
    rope_theta=10000.0, rope_scaling=None, use_sliding_window=False, sliding_window=4096,
    max_window_layers=28, tie_word_embeddings=False,
), **_Q)
QWEN3_CONFIG = HFConfig("qwen3", dict(
    vocab_size=151936, max_position_embeddings=32768, hidden_size=4096, intermediate_size=22016,
    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, head_dim=128,
    rms_norm_eps=1e-6, rope_theta=10000.0, rope_scaling=None, attention_bias=False,
    use_sliding_window=False, sliding_window=4096, max_window_layers=28, tie_word_embeddings=False,
), **_Q)
QWEN2_MOE_CONFIG = HFConfig("qwen2_moe", dict(
    vocab_size=151936, max_position_embeddings=32768, hidden_size=2048, intermediate_size=5632,
    num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16, rms_norm_eps=1e-6,
    rope_theta=10000.0, rope_scaling=None, use_sliding_window=False, sliding_window=4096,
    moe_intermediate_size=1408, shared_expert_intermediate_size=5632, num_experts_per_tok=4,
    num_experts=60, tie_word_embeddings=False,
), **_Q)
QWEN3_MOE_CONFIG = HFConfig("qwen3_moe", dict(
    vocab_size=151936, max_position_embeddings=32768, hidden_size=2048, intermediate_size=6144,
    num_hidden_layers=24, num_attention_heads=32, num_key_value_heads=4, rms_norm_eps=1e-6,
    rope_theta=10000.0, rope_scaling=None, attention_bias=False, use_sliding_window=False,
    sliding_window=4096, moe_intermediate_size=768, num_experts_per_tok=8, num_experts=128,
    tie_word_embeddings=False,
), **_Q)

QKV_BIASES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
MOE_LAYER = {k: v for k, v in LLAMA_LAYER.items() if not k.startswith("mlp.")} | {"mlp.gate": "ffn_gate_inp"}
QWEN_EXPERTS = Experts(
    source="model.layers.{bid}.mlp.experts.{xid}.{w}.weight",
    order=(("down_proj", "ffn_down_exps"), ("gate_proj", "ffn_gate_exps"), ("up_proj", "ffn_up_exps")),
    count_keys=("num_local_experts", "num_experts"),
)


@register("Qwen2ForCausalLM")
class Qwen2Model(TextModel):
    model_arch = MODEL_ARCH.QWEN2
    configs = (QWEN2_CONFIG,)
    bias_ok = ATTN_BIASES + MLP_BIASES
    bias_required = QKV_BIASES
    inverse_names = True

    def set_vocab(self, tokenizer_pre: str | None = None) -> None:
        try:
            V.set_vocab_sentencepiece(self.kv, self.tok_folder, self.hp)
        except FileNotFoundError:
            V.set_vocab_gpt2(self.kv, self.tok_folder, self.hp, self.hp["model_type"], tokenizer_pre)

    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        self.no_pooling()


@register("Qwen3ForCausalLM")
class Qwen3Model(Qwen2Model):
    model_arch = MODEL_ARCH.QWEN3
    configs = (QWEN3_CONFIG,)
    layer = LLAMA_LAYER | QK_NORM_LAYER
    bias_required = ()

    # Qwen3Model: rerankers write extra keys and a cls_out tensor (refused)
    def set_gguf_parameters(self) -> None:
        readme = self.folder / "README.md"
        text = readme.read_text(encoding="utf-8", errors="replace").lower() if readme.is_file() else ""
        hp = self.hp
        hints = [str(self.folder.name), str(hp.get("_name_or_path", "")), str(hp.get("model_type", "")),
                 str(hp.get("architectures", [""])[0] or "")]
        hints = [h.lower() for h in hints if h]
        origin = str(hp.get("architectures", [""])[0] or "").lower()
        if ("# qwen3-reranker" in text or "# qwen3-vl-reranker" in text
                or any("qwen3-reranker" in h or "qwen3-vl-reranker" in h for h in hints)
                or "sequenceclassification" in origin):
            raise UnsupportedError(f"{self.folder}: Qwen3 reranker models are not supported")
        super().set_gguf_parameters()


@register("Qwen2MoeForCausalLM")
class Qwen2MoeModel(TextModel):
    model_arch = MODEL_ARCH.QWEN2MOE
    configs = (QWEN2_MOE_CONFIG,)
    layer = MOE_LAYER | {
        "mlp.shared_expert.gate_proj": "ffn_gate_shexp",
        "mlp.shared_expert.up_proj": "ffn_up_shexp",
        "mlp.shared_expert.down_proj": "ffn_down_shexp",
        "mlp.shared_expert_gate": "ffn_gate_inp_shexp",
    }
    bias_ok = ATTN_BIASES
    bias_required = QKV_BIASES
    experts = QWEN_EXPERTS

    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        if (v := self.hp.get("moe_intermediate_size")) is not None:
            self.u32("expert_feed_forward_length", v, "moe_intermediate_size")
        if (v := self.hp.get("shared_expert_intermediate_size")) is not None:
            self.u32("expert_shared_feed_forward_length", v, "shared_expert_intermediate_size")


@register("Qwen3MoeForCausalLM")
class Qwen3MoeModel(Qwen2MoeModel):
    model_arch = MODEL_ARCH.QWEN3MOE
    configs = (QWEN3_MOE_CONFIG,)
    layer = MOE_LAYER | QK_NORM_LAYER
    bias_required = ()
