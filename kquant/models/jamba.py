"""AI21 Jamba: conversion/jamba.py JambaModel (llama.cpp as vendored in llama-cpp-python 0.3.36).

Mamba (v1) and attention layers (`attn_layer_period` / `attn_layer_offset`), dense and MoE feed-forward
layers (`expert_layer_period` / `expert_layer_offset`; per-expert tensors stacked down, gate, up), the
Mamba mixer with RMS norms on dt, B and C; A_log -> -exp(A_log) as conversion/mamba.py. Mini-Jamba's
`.moe.` names and its one-expert dense layers are renamed as the converter renames them. The vocabulary
is the SentencePiece model (the converter's LlamaHfVocab fallback without one is not ported)."""

from __future__ import annotations

from gguf import MODEL_ARCH

from ..errors import InputError, UnsupportedError
from .. import vocab as V
from .base import Experts, TextModel, register
from .hparams import HFConfig
from .mamba import neg_exp, reshaped


def _jamba_init(hp: dict) -> None:
    # transformers configuration_jamba.py JambaConfig.__init__
    if hp.get("num_key_value_heads") is None:
        hp["num_key_value_heads"] = hp["num_attention_heads"]
    if hp.get("mamba_dt_rank") == "auto":
        hp["mamba_dt_rank"] = -(hp["hidden_size"] // -16)  # math.ceil(hidden_size / 16)


# transformers 4.57.6 configuration_jamba.py __init__ defaults, for the keys llama.cpp reads
JAMBA_CONFIG = HFConfig("jamba", dict(
    vocab_size=65536, tie_word_embeddings=False, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=8, hidden_act="silu", rms_norm_eps=1e-6, pad_token_id=0,
    bos_token_id=1, eos_token_id=2, sliding_window=None, max_position_embeddings=262144, num_experts_per_tok=2,
    num_experts=16, expert_layer_period=2, expert_layer_offset=1, attn_layer_period=8, attn_layer_offset=4,
    mamba_d_state=16, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank="auto", mamba_conv_bias=True,
    mamba_proj_bias=False,
), post_init=_jamba_init)

JAMBA_MAMBA = {
    "mamba.in_proj": "ssm_in", "mamba.conv1d": "ssm_conv1d", "mamba.x_proj": "ssm_x", "mamba.dt_proj": "ssm_dt",
    "mamba.dt_layernorm": "ssm_dt_norm", "mamba.A_log": "ssm_a", "mamba.b_layernorm": "ssm_b_norm",
    "mamba.c_layernorm": "ssm_c_norm", "mamba.D": "ssm_d", "mamba.out_proj": "ssm_out",
}
JAMBA_ATTN = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output"}
JAMBA_DENSE = {"feed_forward.gate_proj": "ffn_gate", "feed_forward.up_proj": "ffn_up", "feed_forward.down_proj": "ffn_down"}
JAMBA_EXPERTS = Experts(
    source="model.layers.{bid}.feed_forward.experts.{xid}.{w}.weight",
    order=(("down_proj", "ffn_down_exps"), ("gate_proj", "ffn_gate_exps"), ("up_proj", "ffn_up_exps")),
    count_keys=("num_local_experts", "num_experts"),
)


@register("JambaForCausalLM")
class JambaModel(TextModel):
    model_arch = MODEL_ARCH.JAMBA
    inverse_refused = 'the converter writes the Mamba A as -exp(A_log): not undone exactly'
    configs = (JAMBA_CONFIG,)
    layer = {"input_layernorm": "attn_norm", "pre_ff_layernorm": "ffn_norm", "feed_forward.router": "ffn_gate_inp"} \
        | JAMBA_MAMBA | JAMBA_ATTN | JAMBA_DENSE
    globals_ = {"model.embed_tokens": "token_embd", "model.final_layernorm": "output_norm", "lm_head": "output"}
    bias_ok = ("mamba.in_proj", "mamba.conv1d", "mamba.dt_proj", "mamba.out_proj")
    bare_params = ("mamba.A_log", "mamba.D")
    experts = JAMBA_EXPERTS

    def _is_attn(self, bid: int) -> bool:
        hp = self.hp
        return bid >= hp["attn_layer_offset"] and (bid - hp["attn_layer_offset"]) % hp["attn_layer_period"] == 0

    def _is_moe(self, bid: int) -> bool:
        hp = self.hp
        return bid >= hp["expert_layer_offset"] and (bid - hp["expert_layer_offset"]) % hp["expert_layer_period"] == 0

    def layer_modules(self, bid: int) -> dict[str, str]:
        m = {"input_layernorm": "attn_norm", "pre_ff_layernorm": "ffn_norm"}
        m |= JAMBA_ATTN if self._is_attn(bid) else JAMBA_MAMBA
        return m | ({"feed_forward.router": "ffn_gate_inp"} if self._is_moe(bid) else JAMBA_DENSE)

    def layer_experts(self, bid: int) -> Experts | None:
        return JAMBA_EXPERTS if self._is_moe(bid) else None

    def prepare(self) -> None:
        hp = self.hp
        for kind in ("attn", "expert"):
            period, offset = hp.get(f"{kind}_layer_period"), hp.get(f"{kind}_layer_offset")
            if isinstance(period, bool) or not isinstance(period, int) or period <= 0:
                raise InputError(f"{self.config_path}: '{kind}_layer_period' must be a positive integer, got {period!r}")
            if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < period:
                # JambaConfig._check_supported_offset
                raise InputError(f"{self.config_path}: '{kind}_layer_offset' must be an integer in [0, {period}), got {offset!r}")
        self.d_model = self.find_hparam(["hidden_size", "mamba_d_model"])
        self.d_inner = hp["mamba_expand"] * self.d_model
        self.d_state = self.find_hparam(["mamba_d_state"], True) or 16
        self.dt_rank = self.find_hparam(["mamba_dt_rank"], True) or -(self.d_model // -16)
        self.d_conv = self.find_hparam(["mamba_d_conv"], True) or 4
        for k in ("d_inner", "d_state", "dt_rank", "d_conv"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise InputError(f"{self.config_path}: mamba {k} must be a positive integer, got {v!r}")

    # JambaModel.modify_tensors: Mini-Jamba's names, its dense layers' single expert
    def filter_name(self, name: str) -> str | None:
        name = super().filter_name(name)
        if name is None:
            return None
        name = name.replace(".moe.", ".feed_forward.")
        parts = name.split(".")
        if name.startswith("model.layers.") and parts[2].isdigit() and not self._is_moe(int(parts[2])):
            name = name.replace(".experts.0.", ".")
        return name

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        e, di, ds, r = self.d_model, self.d_inner, self.d_state, self.dt_rank
        return super().tensor_shapes() | {
            "ssm_in": (2 * di, e), "ssm_conv1d": (di, 1, self.d_conv), "ssm_x": (r + 2 * ds, di), "ssm_dt": (di, r),
            "ssm_dt_norm": (r,), "ssm_a": (di, ds), "ssm_b_norm": (ds,), "ssm_c_norm": (ds,), "ssm_d": (di,),
            "ssm_out": (e, di), "output_norm": (e,)}

    def expected_shape(self, base: str, bias: bool):
        if base == "ssm_in" and bias:
            return (2 * self.d_inner,)
        return super().expected_shape(base, bias)

    def modify_tensors(self, t, name, gname, base, bid):
        if base == "ssm_conv1d" and gname.endswith(".weight"):  # squeeze
            shape = tuple(d for d in t[1] if d != 1)
            return [self.spec(gname, t, shape=shape, transform=reshaped(shape))]
        if name.endswith(".A_log"):
            return [self.spec(gname, t, transform=neg_exp(t[2]))]
        return [self.spec(gname, t)]

    # JambaModel.set_gguf_parameters (replaces TextModel's)
    def set_gguf_parameters(self) -> None:
        hp = self.hp
        rms_eps = self.find_hparam(["layer_norm_epsilon", "rms_norm_eps"], True) or 1e-6
        n_kv = hp["num_key_value_heads"]
        n_kv_vec = [n_kv if self._is_attn(i) else 0 for i in range(self.block_count)]
        self.kv.add_uint32(self.key("block_count"), self.block_count)
        self.u32("context_length", self.find_hparam(["max_position_embeddings", "n_ctx"]), "max_position_embeddings")
        self.u32("embedding_length", self.d_model, "hidden_size")
        self.u32("feed_forward_length", hp["intermediate_size"], "intermediate_size")
        self.u32("attention.head_count", hp["num_attention_heads"], "num_attention_heads")
        self.u32_array("attention.head_count_kv", n_kv_vec, "num_key_value_heads")
        self.u32("ssm.conv_kernel", self.d_conv, "mamba_d_conv")
        self.u32("ssm.inner_size", self.d_inner, "mamba_expand")
        self.u32("ssm.state_size", self.d_state, "mamba_d_state")
        self.u32("ssm.time_step_rank", self.dt_rank, "mamba_dt_rank")
        self.f32("attention.layer_norm_rms_epsilon", rms_eps, "rms_norm_eps")
        self.u32("expert_count", self.find_hparam(["num_local_experts", "num_experts"]), "num_experts")
        self.u32("expert_used_count", self.find_hparam(["num_experts_per_tok", "num_experts_per_token"]), "num_experts_per_tok")
        self.file_type_placeholder()

    # JambaModel.set_vocab
    def set_vocab(self, tokenizer_pre: str | None = None) -> None:
        if not (self.tok_folder / "tokenizer.model").is_file():
            raise UnsupportedError(f"{self.tok_folder}: no tokenizer.model (the converter's LlamaHfVocab fallback for "
                                   "Jamba is not ported)")
        V.set_vocab_sentencepiece(self.kv, self.tok_folder, self.hp)
