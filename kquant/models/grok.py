"""xAI Grok: conversion/grok.py GrokModel (llama.cpp as vendored in llama-cpp-python 0.3.36).

Two checkpoint layouts, both as the converter maps them (gguf-py tensor_mapping.py): Grok-1's
(`transformer.decoder_layer.*`: rms_norm .. rms_norm_3, multi_head_attention.query/key/value/linear, a
router and experts `moe.{x}.linear / linear_1 / linear_v`, the last norm as layer_output_norm) and Grok-2's
(`model.layers.*`: pre/post attention and MoE norms, self_attn, block_sparse_moe experts w1/w2/w3 and an
optional dense mlp). Experts are merged per layer (gate, down, up). Remote code: no transformers class,
the converter reads config.json as it is. Soft-capping, embedding / logit / attention-output scales and
the YaRN keys come from the config's own names. Vocabulary: tokenizer.model (SentencePiece), else
tokenizer.json with chat_template.jinja (Grok-2's), as the converter requires."""

from __future__ import annotations

from gguf import MODEL_ARCH

from ..errors import InputError
from .. import vocab as V
from .base import Experts, TextModel, register
from .hparams import HFConfig

# model_type "grok-1" (hpcai-tech's Grok1Config), "grok" (keyfan/grok-1-hf's GrokConfig): both remote code
GROK_CONFIGS = (HFConfig("grok-1", {}, raw=True), HFConfig("grok", {}, raw=True))

GROK1_LAYER = {
    "rms_norm": "attn_norm",
    "multi_head_attention.query": "attn_q",
    "multi_head_attention.key": "attn_k",
    "multi_head_attention.value": "attn_v",
    "multi_head_attention.linear": "attn_output",
    "rms_norm_1": "attn_output_norm",
    "rms_norm_2": "ffn_norm",
    "router": "ffn_gate_inp",
    "rms_norm_3": "layer_output_norm",
}
GROK1_GLOBALS = {"transformer.in_out_embed": "token_embd", "transformer.rms_norm": "output_norm", "lm_head": "output"}
GROK1_EXPERTS = Experts(
    source="transformer.decoder_layer.{bid}.moe.{xid}.{w}.weight",
    order=(("linear", "ffn_gate_exps"), ("linear_1", "ffn_down_exps"), ("linear_v", "ffn_up_exps")),
    count_keys=("num_local_experts",),
)
GROK2_LAYER = {
    "pre_attn_norm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attn_norm": "attn_output_norm",
    "pre_moe_norm": "ffn_norm",
    "block_sparse_moe.gate": "ffn_gate_inp",
    "post_moe_norm": "post_ffw_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
GROK2_GLOBALS = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
GROK2_EXPERTS = Experts(
    source="model.layers.{bid}.block_sparse_moe.experts.{xid}.{w}.weight",
    order=(("w1", "ffn_gate_exps"), ("w2", "ffn_down_exps"), ("w3", "ffn_up_exps")),
    count_keys=("num_local_experts",),
)
GROK_SOFTCAP = 30.0  # GrokModel.set_gguf_parameters: attn / router logit soft-capping defaults
YARN_KEYS = ("scaling_factor", "original_max_position_embeddings", "extrapolation_factor", "attn_factor", "beta_fast",
             "beta_slow")


@register("GrokForCausalLM", "Grok1ForCausalLM")
class GrokModel(TextModel):
    model_arch = MODEL_ARCH.GROK
    configs = GROK_CONFIGS
    layer = GROK1_LAYER
    globals_ = GROK1_GLOBALS
    layer_prefix = "transformer.decoder_layer."
    optional = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")  # Grok-2's dense MLP (llama.cpp: not required)
    experts_wait = True  # GrokModel.modify_tensors: merged when the next non-expert tensor arrives; after the last, never
    norm_of = {"attn_q": "attn_norm", "attn_k": "attn_norm", "attn_v": "attn_norm", "ffn_gate_inp": "ffn_norm",
               "ffn_gate_exps": "ffn_norm", "ffn_up_exps": "ffn_norm", "ffn_gate": "ffn_norm", "ffn_up": "ffn_norm"}
    inverse_refused = "the checkpoint's layout (Grok-1's transformer.decoder_layer or Grok-2's model.layers names) is not in the GGUF file"

    def __init__(self, hp, **kw):
        super().__init__(hp, **kw)
        self._experts = GROK1_EXPERTS
        for k in ("num_local_experts", "embedding_multiplier_scale", "output_multiplier_scale"):
            if k not in hp:  # upstream reads them unguarded (KeyError)
                raise InputError(f"{self.config_path}: missing key {k!r} (llama.cpp's converter needs it for Grok)")

    # the layout: Grok-2's when the checkpoint has model.layers.* tensors, else Grok-1's
    def prepare_tensors(self, hf, extra, where):
        if any(n.startswith("model.layers.") for n, _, _ in hf):
            self.layer, self.globals_, self.layer_prefix, self._experts = GROK2_LAYER, GROK2_GLOBALS, "model.layers.", GROK2_EXPERTS
        return super().prepare_tensors(hf, extra, where)

    def n_expert(self) -> int:
        n = self.hp.get("num_local_experts")
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise InputError(f"{self.config_path}: 'num_local_experts' must be a positive integer, got {n!r}")
        return n

    def layer_experts(self, bid: int) -> Experts | None:
        return self._experts

    def tensor_shapes(self):
        e = self.hp["hidden_size"]
        return super().tensor_shapes() | {"attn_output_norm": (e,), "layer_output_norm": (e,)}

    # GrokModel.set_vocab
    def set_vocab(self, tokenizer_pre: str | None = None) -> None:
        folder = self.tok_folder
        if (folder / "tokenizer.model").is_file():
            V.set_vocab_sentencepiece(self.kv, folder, self.hp)
            return
        if not (folder / "tokenizer.json").is_file() or not (folder / "chat_template.jinja").is_file():
            raise InputError(f"{folder}: Grok needs tokenizer.model, or tokenizer.json with chat_template.jinja "
                             "(Grok-2's, from alvarobartt/grok-2-tokenizer)")
        V.set_vocab_gpt2(self.kv, folder, self.hp, self.hp["model_type"], tokenizer_pre)

    # GrokModel.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        hp = self.hp
        self.f32("attn_logit_softcapping", hp.get("attn_logit_softcapping", GROK_SOFTCAP), "attn_logit_softcapping")
        self.f32("router_logit_softcapping", hp.get("router_logit_softcapping", GROK_SOFTCAP), "router_logit_softcapping")
        if final := hp.get("final_logit_softcapping"):
            self.f32("final_logit_softcapping", final, "final_logit_softcapping")
        if (rope_dim := hp.get("head_dim")) is None:
            rope_dim = hp["hidden_size"] // hp["num_attention_heads"]
        if isinstance(rope_dim, bool) or not isinstance(rope_dim, int) or rope_dim <= 0:
            raise InputError(f"{self.config_path}: 'head_dim' must be a positive integer, got {rope_dim!r}")
        if (moe_ff := hp.get("moe_intermediate_size")) is not None:
            self.u32("expert_feed_forward_length", moe_ff, "moe_intermediate_size")
        if hp.get("rope_type") in ("yarn", "original"):  # "Treat "original" as "yarn", seems to have been a mistake"
            missing = [k for k in YARN_KEYS if k not in hp]
            if missing:
                raise InputError(f"{self.config_path}: rope_type {hp['rope_type']!r} needs {', '.join(missing)}")
            self.kv.add_string(self.key("rope.scaling.type"), "yarn")
            self.f32("rope.scaling.factor", hp["scaling_factor"], "scaling_factor")
            self.u32("rope.scaling.original_context_length", hp["original_max_position_embeddings"],
                     "original_max_position_embeddings")
            self.f32("rope.scaling.yarn_ext_factor", hp["extrapolation_factor"], "extrapolation_factor")
            self.f32("rope.scaling.yarn_attn_factor", hp["attn_factor"], "attn_factor")
            self.f32("rope.scaling.yarn_beta_fast", hp["beta_fast"], "beta_fast")
            self.f32("rope.scaling.yarn_beta_slow", hp["beta_slow"], "beta_slow")
        if temp_len := hp.get("attn_temperature_len"):
            self.u32("attention.temperature_length", temp_len, "attn_temperature_len")
        self.f32("attention.output_scale", hp.get("attn_output_multiplier", rope_dim ** -0.5), "attn_output_multiplier")
        self.f32("embedding_scale", hp["embedding_multiplier_scale"], "embedding_multiplier_scale")
        self.f32("logit_scale", hp["output_multiplier_scale"], "output_multiplier_scale")
