"""MosaicML MPT: conversion/mpt.py MPTModel (llama.cpp as vendored in llama-cpp-python 0.3.36).

`transformer.blocks.*` layers: LayerNorms without biases (no_bias), a fused Wqkv, ALiBi positions (no rope),
a 4 d_model up/down MLP, the output tied to `transformer.wte`. The converter's own parameter list: feed-forward
length 4 * d_model, LayerNorm epsilon 1e-5, the QKV clamp and the ALiBi bias bound from attn_config; no
file type key. transformers 4.57.6's MptConfig rebuilds attn_config from its own keys, so the converter never
sees `kv_n_heads` (no head_count_kv). The SEA-LION SentencePiece fallback and the activation scales of
MPT-30B-style `act.scales` checkpoints are refused."""

from __future__ import annotations

from ..errors import InputError, UnsupportedError
from .base import TextModel, register
from .hparams import HFConfig

# transformers 4.57.6 configuration_mpt.py MptAttentionConfig.__init__ (unknown keys dropped)
_ATTN_DEFAULTS = dict(attn_type="multihead_attention", attn_pdrop=0, attn_impl="torch", clip_qkv=None, softmax_scale=None,
                      prefix_lm=False, qk_ln=False, attn_uses_sequence_id=False, alibi=True, alibi_bias_max=8)


def _mpt_init(hp: dict) -> None:
    # MptConfig.__init__: attn_config = MptAttentionConfig(**attn_config) (its **kwargs are not kept)
    ac = hp.get("attn_config")
    if ac is None:
        ac = {}
    if not isinstance(ac, dict):
        raise InputError(f"'attn_config' must be an object, got {ac!r}"[:200])
    if ac.get("attn_type", "multihead_attention") not in ("multihead_attention", "multiquery_attention"):
        raise InputError(f"'attn_config.attn_type' must be multihead_attention or multiquery_attention, got {ac.get('attn_type')!r}")
    hp["attn_config"] = {k: ac.get(k, v) for k, v in _ATTN_DEFAULTS.items()}


MPT_ATTRIBUTE_MAP = {"num_attention_heads": "n_heads", "hidden_size": "d_model", "num_hidden_layers": "n_layers"}
MPT_CONFIG = HFConfig("mpt", dict(
    d_model=2048, n_heads=16, n_layers=24, expansion_ratio=4, max_seq_len=2048, vocab_size=50368,
    layer_norm_epsilon=1e-5, learned_pos_emb=True, logit_scale=None, no_bias=True, norm_type="low_precision_layernorm",
    tie_word_embeddings=True,  # (PretrainedConfig's default)
), attribute_map=MPT_ATTRIBUTE_MAP, post_init=_mpt_init,
    required_as={"hidden_size": ("d_model",), "num_hidden_layers": ("n_layers",), "num_attention_heads": ("n_heads",),
                 "intermediate_size": ()})

MPT_LAYER = {"norm_1": "attn_norm", "attn.Wqkv": "attn_qkv", "attn.out_proj": "attn_output", "norm_2": "ffn_norm",
             "ffn.up_proj": "ffn_up", "ffn.down_proj": "ffn_down"}


@register("MPTForCausalLM")
class MPTModel(TextModel):
    configs = (MPT_CONFIG,)
    layer = MPT_LAYER
    globals_ = {"transformer.wte": "token_embd", "transformer.norm_f": "output_norm", "lm_head": "output"}
    layer_prefix = "transformer.blocks."
    aliases = {"hidden_size": ("d_model",), "num_attention_heads": ("n_heads",), "num_key_value_heads": ("n_heads",)}
    inverse_names = True

    @classmethod
    def arch_name(cls) -> str:
        return "mpt"

    def prepare(self) -> None:
        hp = self.hp
        if not hp.get("no_bias", True):
            raise UnsupportedError(f"{self.config_path}: MPT with biases (no_bias false) is not supported")
        if hp["attn_config"]["qk_ln"]:
            raise UnsupportedError(f"{self.config_path}: MPT with q/k LayerNorms (qk_ln) is not supported")
        if hp.get("learned_pos_emb") and not hp["attn_config"]["alibi"]:
            raise UnsupportedError(f"{self.config_path}: MPT with learned positions instead of ALiBi is not supported")

    def tensor_shapes(self):
        e = self.hp["d_model"]
        s = super().tensor_shapes()
        s.update({"attn_qkv": (3 * e, e), "attn_output": (e, e), "ffn_up": (4 * e, e), "ffn_down": (e, 4 * e)})
        return s

    def filter_name(self, name: str) -> str | None:
        if "scales" in name:
            raise UnsupportedError(f"{self.folder}: MPT activation scales ({name!r}) are not supported")
        return super().filter_name(name)

    # MPTModel.set_vocab: the GPT-2 vocabulary (the SentencePiece fallback is not supported)
    def set_vocab(self, tokenizer_pre: str | None = None) -> None:
        if not (self.tok_folder / "tokenizer.json").is_file():
            raise UnsupportedError(f"{self.tok_folder}: MPT without tokenizer.json (SEA-LION's SentencePiece) is not supported")
        super().set_vocab(tokenizer_pre)

    # MPTModel.set_gguf_parameters (replaces TextModel's; no file type key)
    def set_gguf_parameters(self) -> None:
        hp = self.hp
        ac = hp["attn_config"]
        self.u32("context_length", hp["max_seq_len"], "max_seq_len")
        self.u32("embedding_length", hp["d_model"], "d_model")
        self.kv.add_uint32(self.key("block_count"), self.block_count)
        self.u32("feed_forward_length", 4 * hp["d_model"], "d_model")
        self.u32("attention.head_count", hp["n_heads"], "n_heads")
        self.kv.add_float32(self.key("attention.layer_norm_epsilon"), 1e-5)
        if ac["clip_qkv"] is not None:
            self.f32("attention.clamp_kqv", ac["clip_qkv"], "attn_config.clip_qkv")
        if ac["alibi"]:
            self.f32("attention.max_alibi_bias", ac["alibi_bias_max"], "attn_config.alibi_bias_max")
        else:
            self.kv.add_float32(self.key("attention.max_alibi_bias"), 0.0)
