"""Phi-2, Phi-3 and Phi-3.5-MoE: conversion/phi.py Phi2Model, Phi3MiniModel, PhiMoeModel (llama.cpp as vendored
in llama-cpp-python 0.3.36)."""

from __future__ import annotations

import math

import numpy as np
from gguf import MODEL_ARCH

from ..errors import InputError, UnsupportedError
from .. import vocab as V
from .base import LLAMA_LAYER, Experts, TextModel, register
from .hparams import HFConfig


# transformers 4.57.6 configuration_phi.py __init__ defaults, for the keys llama.cpp reads
PHI_CONFIG = HFConfig("phi", dict(
    vocab_size=51200, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
    num_key_value_heads=None, hidden_act="gelu_new", max_position_embeddings=2048, layer_norm_eps=1e-5,
    tie_word_embeddings=False, rope_theta=10000.0, rope_scaling=None, partial_rotary_factor=0.5,
    qk_layernorm=False, bos_token_id=1, eos_token_id=2,
), kv_heads_fallback=True, rope_type_alias=True)
PHI2_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.dense": "attn_output",
    "mlp.fc1": "ffn_up", "mlp.fc2": "ffn_down",
}


@register("PhiForCausalLM")
class Phi2Model(TextModel):
    """Phi-2 (and Phi-1 / 1.5): parallel attention and MLP after one LayerNorm, biases everywhere
    (lm_head too), partial rotary, the GPT-2 style vocabulary."""

    model_arch = MODEL_ARCH.PHI2
    configs = (PHI_CONFIG,)
    layer = PHI2_LAYER
    globals_ = {"model.embed_tokens": "token_embd", "model.final_layernorm": "output_norm", "lm_head": "output"}
    globals_bias_ok = ("model.final_layernorm", "lm_head")
    bias_ok = tuple(PHI2_LAYER)
    inverse_names = True

    def prepare(self) -> None:
        if self.hp.get("qk_layernorm"):
            raise UnsupportedError(f"{self.config_path}: qk_layernorm (Q/K LayerNorms) is not supported: "
                                   "llama.cpp's phi2 architecture has no such tensors")

    def tensor_shapes(self):
        s = super().tensor_shapes()
        e = self.hp["hidden_size"]
        return s | {"attn_output": (e, e)}

    # Phi2Model.set_gguf_parameters (replaces TextModel's)
    def set_gguf_parameters(self) -> None:
        rot = self.rp.get("partial_rotary_factor")
        if isinstance(rot, bool) or not isinstance(rot, (int, float)) or not 0 <= rot <= 1:
            raise InputError(f"{self.config_path}: 'partial_rotary_factor' must be a number in [0, 1], got {rot!r}")
        try:
            n_embd = self.find_hparam(["hidden_size", "n_embd"])
            n_head = self.find_hparam(["num_attention_heads", "n_head"])
            n_ctx = self.find_hparam(["n_positions", "max_position_embeddings"])
            eps = self.find_hparam(["layer_norm_epsilon", "layer_norm_eps"])
        except KeyError as e:
            raise InputError(f"{self.config_path}: {e.args[0]}") from None
        self.u32("context_length", n_ctx, "max_position_embeddings")
        self.u32("embedding_length", n_embd, "hidden_size")
        self.u32("feed_forward_length", 4 * n_embd, "hidden_size")
        self.kv.add_uint32(self.key("block_count"), self.block_count)
        self.u32("attention.head_count", n_head, "num_attention_heads")
        self.u32("attention.head_count_kv", n_head, "num_attention_heads")
        self.f32("attention.layer_norm_epsilon", eps, "layer_norm_eps")
        n_rot = int(rot * n_embd) // n_head
        if n_rot % 2:  # the converter writes it; llama.cpp's rope aborts on an odd dimension count
            raise UnsupportedError(f"{self.config_path}: partial_rotary_factor {rot} gives an odd rotary dimension "
                                   f"count ({n_rot}), which llama.cpp cannot run")
        self.u32("rope.dimension_count", n_rot, "partial_rotary_factor")
        self.file_type_placeholder()
        self.kv.add_add_special_token("bos", False)


def _phi3_rope_type(hp: dict) -> None:
    # transformers configuration_phi3.py Phi3Config.__init__ (su / yarn renamed longrope)
    rs = hp.get("rope_scaling")
    if isinstance(rs, dict) and rs.get("type") in ("su", "yarn"):
        rs["type"] = "longrope"


PHI3_CONFIG = HFConfig("phi3", dict(
    vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=None, max_position_embeddings=4096,
    original_max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0, rope_scaling=None,
    partial_rotary_factor=1.0, sliding_window=None, tie_word_embeddings=False,
), kv_heads_fallback=True, post_init=_phi3_rope_type)


@register("Phi3ForCausalLM")
class Phi3MiniModel(TextModel):
    model_arch = MODEL_ARCH.PHI3
    inverse_names = True
    configs = (PHI3_CONFIG,)
    layer = {
        "input_layernorm": "attn_norm",
        "self_attn.qkv_proj": "attn_qkv",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_up_proj": "ffn_up",  # gate and up fused: (2 * n_ff, n_embd)
        "mlp.down_proj": "ffn_down",
    }

    def tensor_shapes(self):
        shapes = super().tensor_shapes()
        f, e = shapes["ffn_up"]
        return shapes | {"ffn_up": (2 * f, e)}

    def _rope(self) -> tuple[int, int, int, int, int]:
        rp = self.rp
        n_embd = self.find_hparam(["hidden_size", "n_embd"])
        n_head = self.find_hparam(["num_attention_heads", "n_head"])
        max_pos = self.find_hparam(["n_positions", "max_position_embeddings"])
        if "original_max_position_embeddings" not in rp:
            raise InputError(f"{self.config_path}: missing key 'original_max_position_embeddings'")
        orig_max_pos = rp["original_max_position_embeddings"]
        rot_pct = rp.get("partial_rotary_factor", 1.0)
        rope_dims = int(rot_pct * n_embd) // n_head
        return n_embd, n_head, max_pos, orig_max_pos, rope_dims

    def set_gguf_parameters(self) -> None:
        n_embd, n_head, max_pos, orig_max_pos, rope_dims = self._rope()
        n_head_kv = self.find_hparam(["num_key_value_heads", "n_head_kv"])
        self.u32("context_length", max_pos, "max_position_embeddings")
        self.u32("rope.scaling.original_context_length", orig_max_pos, "original_max_position_embeddings")
        self.u32("embedding_length", n_embd, "hidden_size")
        self.u32("feed_forward_length", self.find_hparam(["intermediate_size"]), "intermediate_size")
        self.kv.add_uint32(self.key("block_count"), self.block_count)
        self.u32("attention.head_count", n_head, "num_attention_heads")
        self.u32("attention.head_count_kv", n_head_kv, "num_key_value_heads")
        self.f32("attention.layer_norm_rms_epsilon", self.find_hparam(["rms_norm_eps"]), "rms_norm_eps")
        self.u32("rope.dimension_count", rope_dims, "partial_rotary_factor")
        self.f32("rope.freq_base", self.rp.get("full_attention", self.rp)["rope_theta"], "rope_theta")
        self.file_type_placeholder()
        sliding_window = self.hp.get("sliding_window")
        if sliding_window is None:
            sliding_window = 0
        self.u32("attention.sliding_window", sliding_window, "sliding_window")

    def generate_extra_tensors(self) -> list[tuple[str, np.ndarray]]:
        _, _, max_pos, orig_max_pos, rope_dims = self._rope()
        rp = self.rp
        long_factors = rp.get("long_factor")
        short_factors = rp.get("short_factor")
        if not long_factors:
            return []
        if not isinstance(max_pos, int) or not isinstance(orig_max_pos, int) or max_pos <= 0 or orig_max_pos <= 1:
            raise InputError(f"{self.config_path}: 'max_position_embeddings' ({max_pos!r}) and "
                             f"'original_max_position_embeddings' ({orig_max_pos!r}) must be positive integers, the latter > 1")
        scale = max_pos / orig_max_pos
        rope_scaling_type = (rp.get("rope_type") or "").lower()
        if len(rope_scaling_type) == 0:
            raise InputError(f"{self.config_path}: missing key 'rope_scaling.type'")
        if rope_scaling_type == "su" or rope_scaling_type == "longrope":
            attn_factor = math.sqrt(1 + math.log(scale) / math.log(orig_max_pos)) if scale > 1.0 else 1.0
        elif rope_scaling_type == "yarn":
            attn_factor = 0.1 * math.log(scale) + 1.0 if scale > 1.0 else 1.0
        else:
            raise UnsupportedError(f"{self.config_path}: rope scaling type {rope_scaling_type!r} is not supported for Phi-3")
        self.kv.add_float32(self.key("rope.scaling.attn_factor"), attn_factor)
        if long_factors is None or short_factors is None:
            raise InputError(f"{self.config_path}: missing key 'rope_scaling.long_factor' or 'rope_scaling.short_factor'")
        if len(long_factors) != len(short_factors) or len(long_factors) != rope_dims / 2:
            raise InputError(f"{self.config_path}: rope_scaling long/short factors must have {rope_dims // 2} entries, got {len(long_factors)} and {len(short_factors)}")
        return [
            ("rope_factors_long.weight", np.array(long_factors, dtype=np.float32)),
            ("rope_factors_short.weight", np.array(short_factors, dtype=np.float32)),
        ]

    # Phi3MiniModel.set_vocab
    def set_vocab(self, tokenizer_pre: str | None = None) -> None:
        folder, rec, hp = self.tok_folder, self.kv, self.hp
        tc_file = folder / "tokenizer_config.json"
        if tc_file.is_file():
            tc = V.read_object(tc_file)
            if "tokenizer_class" not in tc:
                raise InputError(f"{tc_file}: missing key 'tokenizer_class'")
            if tc["tokenizer_class"] == "GPT2Tokenizer":
                V.set_vocab_gpt2(rec, folder, hp, hp["model_type"], tokenizer_pre)
                return
        tokenizer_path = folder / "tokenizer.model"
        if not tokenizer_path.is_file():
            raise InputError(f"{tokenizer_path}: file not found (Phi-3 needs a SentencePiece tokenizer.model)")
        spm = V.read_spm_model(tokenizer_path)
        vocab_size = hp.get("vocab_size", len(spm.pieces))
        if len(spm.pieces) > vocab_size:
            raise InputError(f"{tokenizer_path}: {len(spm.pieces)} pieces but config.json vocab_size is {vocab_size}")
        tokens = [f"[PAD{i}]" for i in range(vocab_size)]
        scores = [V.SPM_PAD_SCORE] * vocab_size
        toktypes = [V.UNUSED] * vocab_size
        for token_id, (piece, score, typ) in enumerate(spm.pieces):
            toktype = V.NORMAL
            if typ in (V.UNKNOWN, V.CONTROL, V.UNUSED, V.BYTE):
                toktype = typ
            tokens[token_id] = piece
            scores[token_id] = score
            toktypes[token_id] = toktype

        def put(path, token_id: int, token: str, special) -> None:
            if token_id >= vocab_size:
                raise InputError(f"{path}: token id {token_id} ({token!r}) is outside vocab_size {vocab_size}")
            tokens[token_id] = token
            scores[token_id] = V.SPM_ADDED_SCORE
            toktypes[token_id] = V.CONTROL if special else V.USER_DEFINED

        added_tokens_file = folder / "added_tokens.json"
        if added_tokens_file.is_file():
            for key, token_id in V.read_object(added_tokens_file).items():
                token_id = V.check_token_id(added_tokens_file, key, token_id)
                if token_id >= vocab_size:
                    continue
                put(added_tokens_file, token_id, key, False)
        if tc_file.is_file():
            for token_id, data in V.added_tokens_decoder(tc_file, tc).items():
                put(tc_file, token_id, data["content"], data.get("special"))
        tj_file = folder / "tokenizer.json"
        if tj_file.is_file():
            for data in V.read_tokenizer_json(tj_file).get("added_tokens", []):
                if not isinstance(data, dict) or not isinstance(data.get("content"), str):
                    raise InputError(f"{tj_file}: malformed entry in 'added_tokens'")
                put(tj_file, V.check_token_id(tj_file, data["content"], data.get("id")), data["content"], data.get("special"))
        V.write_spm_vocab(rec, folder, tokens, scores, toktypes)


def _phimoe_rope(hp: dict) -> None:
    # transformers configuration_phimoe.py PhimoeConfig.__init__
    if hp.get("num_key_value_heads") is None:
        hp["num_key_value_heads"] = hp["num_attention_heads"]
    rs = hp.get("rope_scaling")
    if isinstance(rs, dict):
        if "rope_type" not in rs:
            rs["rope_type"] = rs.get("type", None)
        if "original_max_position_embeddings" in rs:
            hp["original_max_position_embeddings"] = rs["original_max_position_embeddings"]
        for k in ("short_mscale", "long_mscale"):
            if isinstance(rs.get(k), bool) or not isinstance(rs.get(k), (int, float)):
                # __init__ raises TypeError: AutoConfig fails and the converter reads config.json raw
                raise UnsupportedError(f"rope_scaling.{k} must be a number (transformers 4.57.6 rejects the config and "
                                       "llama.cpp's converter then reads config.json without the class defaults; not emulated)")


PHIMOE_CONFIG = HFConfig("phimoe", dict(
    vocab_size=32064, hidden_size=4096, intermediate_size=6400, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, max_position_embeddings=4096 * 32, rms_norm_eps=1e-5, tie_word_embeddings=False,
    rope_theta=1e6, rope_scaling=None, sliding_window=None, num_experts_per_tok=2, num_local_experts=16,
    attention_bias=False, lm_head_bias=False,
), post_init=_phimoe_rope)

_PHIMOE_ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")


# conversion/phi.py PhiMoeModel: Phi3MiniModel's parameters, rope factors and vocabulary; LayerNorms with biases,
# separate q/k/v projections, Mixtral-style experts
@register("PhiMoEForCausalLM")
class PhiMoeModel(Phi3MiniModel):
    model_arch = MODEL_ARCH.PHIMOE
    configs = (PHIMOE_CONFIG,)
    layer = {k: v for k, v in LLAMA_LAYER.items() if not k.startswith("mlp.")} | {"block_sparse_moe.gate": "ffn_gate_inp"}
    bias_ok = ("input_layernorm", "post_attention_layernorm") + _PHIMOE_ATTN
    bias_required = ("input_layernorm", "post_attention_layernorm")
    globals_bias_ok = ("model.norm", "lm_head")
    inverse_names = True
    experts = Experts(
        source="model.layers.{bid}.block_sparse_moe.experts.{xid}.{w}.weight",
        order=(("w1", "ffn_gate_exps"), ("w2", "ffn_down_exps"), ("w3", "ffn_up_exps")),
        count_keys=("num_local_experts", "num_experts"),
    )

    def tensor_shapes(self):
        return TextModel.tensor_shapes(self)

    # PhiMoeModel.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        self.u32("expert_used_count", self.find_hparam(["num_experts_per_tok", "num_experts_per_token"]), "num_experts_per_tok")
        self.u32("expert_count", self.find_hparam(["num_local_experts", "num_experts"]), "num_local_experts")
