"""Tencent Hunyuan dense: conversion/hunyuan.py HunYuanModel (llama.cpp as vendored in llama-cpp-python 0.3.36).

A plain TextModel (no Q/K permutation) with per-head q/k norms (`query_layernorm` / `key_layernorm`) and
the NTK-alpha ("dynamic") rope folded into the frequency base. Only the tokenizer.json vocabulary is ported:
the tiktoken `hy.tiktoken` path needs the checkpoint's own remote code. HunYuanMoEV1ForCausalLM is not
ported: its converter path always loads that remote-code tokenizer (tiktoken's `mergeable_ranks`)."""

from __future__ import annotations

from gguf import MODEL_ARCH

from ..errors import InputError, UnsupportedError
from .. import vocab as V
from ..io.jsonio import read_json
from .base import ATTN_BIASES, LLAMA_LAYER, TextModel, register
from .hparams import HFConfig


def _hunyuan_init(hp: dict) -> None:
    # configuration_hunyuan_v1_dense.py HunYuanDenseV1Config.__init__: "for backward compatibility"
    if hp.get("num_key_value_heads") is None:
        hp["num_key_value_heads"] = hp["num_attention_heads"]
    # eod_token_id is an __init__ parameter the class never stores: to_dict() has no such key
    hp.pop("eod_token_id", None)


# transformers 4.57.6 configuration_hunyuan_v1_dense.py __init__ defaults, for the keys llama.cpp reads
# (rope_scaling is stored as given: no `type` -> `rope_type` alias, no validation)
HUNYUAN_DENSE_CONFIG = HFConfig("hunyuan_v1_dense", dict(
    vocab_size=290943, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=None, max_position_embeddings=2048, rms_norm_eps=1e-5, pad_token_id=0, bos_token_id=1,
    eos_token_id=2, tie_word_embeddings=False, rope_theta=10000.0, rope_scaling=None,
    attention_bias=False, head_dim=None,
), post_init=_hunyuan_init)

HUNYUAN_CTX = 256 * 1024  # HunYuanModel.set_gguf_parameters: "256k context length"


@register("HunYuanDenseV1ForCausalLM")
class HunYuanModel(TextModel):
    model_arch = MODEL_ARCH.HUNYUAN_DENSE
    configs = (HUNYUAN_DENSE_CONFIG,)
    layer = LLAMA_LAYER | {"self_attn.query_layernorm": "attn_q_norm", "self_attn.key_layernorm": "attn_k_norm"}
    bias_ok = ATTN_BIASES
    inverse_names = True

    # HunYuanModel.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        hp = self.hp
        saved_num_experts = hp.pop("num_experts", None)  # HunYuanVL variants: num_experts=1, no expert_count key
        super().set_gguf_parameters()
        if saved_num_experts is not None and saved_num_experts > 1:
            hp["num_experts"] = saved_num_experts
        rp = self.rp
        rope_type = rp.get("rope_type")
        if rope_type in ("dynamic", "xdrope"):
            # NTK-aware alpha scaling folded into the base
            alpha = rp.get("alpha", 50)
            base = rp.get("rope_theta", 10000.0)
            dim = hp["head_dim"]
            if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 2:
                raise InputError(f"{self.config_path}: 'head_dim' must be an integer > 2 for the dynamic (alpha) rope, got {dim!r}")
            if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
                raise InputError(f"{self.config_path}: 'rope_scaling.alpha' must be a positive number, got {alpha!r}")
            self.f32("rope.freq_base", base * (alpha ** (dim / (dim - 2))), "rope_scaling.alpha")
            self.kv.add_string(self.key("rope.scaling.type"), "none")  # RopeScalingType.NONE
            self.kv.add_float32(self.key("rope.scaling.factor"), 1)
            if rope_type == "dynamic":
                # upstream asserts these (its context length of 256k assumes them)
                if base != 10000.0 or hp["max_position_embeddings"] not in (32 * 1024, 256 * 1024):
                    raise UnsupportedError(f"{self.config_path}: the dynamic (alpha) rope needs rope_theta 10000 and "
                                           "max_position_embeddings 32768 or 262144 (llama.cpp's converter asserts it)")
                self.kv.add_uint32(self.key("rope.scaling.original_context_length"), HUNYUAN_CTX)
                self.kv.add_uint32(self.key("context_length"), HUNYUAN_CTX)

    # HunYuanModel.set_vocab (the tokenizer.json path)
    def set_vocab(self, tokenizer_pre: str | None = None) -> None:
        folder, rec, hp = self.tok_folder, self.kv, self.hp
        if not (folder / "tokenizer.json").is_file():
            raise UnsupportedError(f"{folder}: no tokenizer.json (Hunyuan's tiktoken tokenizer needs its remote code; not supported)")
        pad = hp.get("pad_token_id")
        if isinstance(pad, int) and not isinstance(pad, bool) and pad < 0:
            raise UnsupportedError(f"{self.config_path}: a negative pad_token_id (HunYuanVL OCR configs) is not supported")
        V.set_vocab_gpt2(rec, folder, hp, hp["model_type"], tokenizer_pre)
        # "Fix EOS/EOT tokens that are incorrect in upstream configs" (under transformers 4.57.6 the config dict
        # never holds eod_token_id, see _hunyuan_init)
        if (eod_id := hp.get("eod_token_id")) is not None:
            V.check_token_id(self.config_path, "eod_token_id", eod_id)
            rec.add_special_token_id("eos", eod_id)
        gen_cfg = self.folder / "generation_config.json"
        if gen_cfg.is_file():
            data = read_json(gen_cfg)
            eos = data.get("eos_token_id") if isinstance(data, dict) else None
            if isinstance(eos, list) and len(eos) >= 2:
                rec.add_special_token_id("eot", V.check_token_id(gen_cfg, "eos_token_id", eos[0]))

    # HunYuanModel.modify_tensors: a tied lm_head is dropped
    def modify_tensors(self, t, name, gname, base, bid):
        if name == "lm_head.weight" and self.hp.get("tie_word_embeddings", False):
            return []
        return super().modify_tensors(t, name, gname, base, bid)
