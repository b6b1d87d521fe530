"""Gemma, Gemma 2 and Gemma 3 (text, and the language model of Gemma3ForConditionalGeneration):
conversion/gemma.py (llama.cpp as vendored in llama-cpp-python 0.3.36)."""

from __future__ import annotations

from typing import Callable

import numpy as np
from gguf import MODEL_ARCH, Keys

from ..errors import InputError
from .. import vocab as V
from .base import QK_NORM_LAYER, TextModel, register, rows
from .hparams import HFConfig, find_hparam


def _gemma3_bidirectional(hp: dict) -> None:
    # transformers configuration_gemma3.py Gemma3TextConfig.__init__
    if hp.get("use_bidirectional_attention"):
        hp["sliding_window"] = hp["sliding_window"] // 2 + 1


GEMMA_CONFIG = HFConfig("gemma", dict(
    vocab_size=256000, max_position_embeddings=8192, hidden_size=3072, intermediate_size=24576,
    num_hidden_layers=28, num_attention_heads=16, head_dim=256, num_key_value_heads=16,
    rms_norm_eps=1e-6, rope_theta=10000.0, attention_bias=False, tie_word_embeddings=True,
))
GEMMA2_CONFIG = HFConfig("gemma2", dict(
    vocab_size=256000, max_position_embeddings=8192, hidden_size=2304, intermediate_size=9216,
    num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4, head_dim=256,
    rms_norm_eps=1e-6, rope_theta=10000.0, attention_bias=False, query_pre_attn_scalar=256,
    sliding_window=4096, final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
    tie_word_embeddings=True,
))
GEMMA3_CONFIG = HFConfig("gemma3_text", dict(
    vocab_size=262208, max_position_embeddings=131072, hidden_size=2304, intermediate_size=9216,
    num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4, head_dim=256,
    rms_norm_eps=1e-6, rope_theta=1_000_000.0, attention_bias=False, query_pre_attn_scalar=256,
    sliding_window=4096, final_logit_softcapping=None, attn_logit_softcapping=None,
    use_bidirectional_attention=False, rope_local_base_freq=10_000.0, rope_scaling=None,
    tie_word_embeddings=True,
), post_init=_gemma3_bidirectional)
# transformers configuration_gemma3.py Gemma3Config: builds a Gemma3TextConfig from text_config
GEMMA3_MM_CONFIG = HFConfig("gemma3", dict(
    mm_tokens_per_image=256, boi_token_index=255_999, eoi_token_index=256_000, image_token_index=262_144,
    initializer_range=0.02,
), text_config="gemma3_text")

GEMMA2_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
UNTIED = {"model.embed_tokens": "token_embd", "model.norm": "output_norm"}  # lm_head is skipped


def norm_plus_one(src_dtype: str) -> Callable[[list[np.ndarray]], np.ndarray]:
    """`data_torch + 1`: in float16 for F16 sources (torch keeps F16), else in float32."""
    if src_dtype == "F16":
        return lambda arrs: (arrs[0].astype(np.float16) + np.float16(1)).astype(np.float32)
    return lambda arrs: arrs[0] + np.float32(1)


def need_spm(folder) -> None:
    if not (folder / "tokenizer.model").is_file():
        raise InputError(f"{folder / 'tokenizer.model'}: file not found (this architecture needs a SentencePiece model)")


@register("GemmaForCausalLM")
class GemmaModel(TextModel):
    model_arch = MODEL_ARCH.GEMMA
    inverse_refused = "the converter writes the norm weights plus one, rounded to the source's float type: not undone exactly"
    configs = (GEMMA_CONFIG,)
    globals_ = UNTIED
    skip_names = ("lm_head.weight",)

    def set_vocab(self, tokenizer_pre: str | None = None) -> None:
        need_spm(self.tok_folder)
        V.set_vocab_sentencepiece(self.kv, self.tok_folder, self.hp)
        sv = V.SpecialVocab(self.tok_folder, load_merges=False, special_token_types=["prefix", "suffix", "middle", "fsep", "eot"])
        sv.set_special_token("prefix", 67)
        sv.set_special_token("suffix", 69)
        sv.set_special_token("middle", 68)
        sv.set_special_token("fsep", 70)
        sv.set_special_token("eot", 107)
        sv.chat_template = None  # do not add it twice
        sv.add_to_gguf(self.kv)
        self.kv.add_bool(Keys.Tokenizer.ADD_PREFIX, False)

    def set_gguf_parameters(self) -> None:
        hp = self.hp
        self.u32("context_length", hp["max_position_embeddings"], "max_position_embeddings")
        self.u32("embedding_length", hp["hidden_size"], "hidden_size")
        self.kv.add_uint32(self.key("block_count"), self.block_count)
        self.u32("feed_forward_length", hp["intermediate_size"], "intermediate_size")
        self.u32("attention.head_count", hp["num_attention_heads"], "num_attention_heads")
        n_kv = hp["num_key_value_heads"] if "num_key_value_heads" in hp else hp["num_attention_heads"]
        self.u32("attention.head_count_kv", n_kv, "num_key_value_heads")
        self.f32("attention.layer_norm_rms_epsilon", hp["rms_norm_eps"], "rms_norm_eps")
        self.u32("attention.key_length", hp["head_dim"], "head_dim")
        self.u32("attention.value_length", hp["head_dim"], "head_dim")
        self.file_type_placeholder()

    # GemmaModel.modify_tensors: the HF RMSNorm multiplies by (1 + w), llama.cpp by w
    def modify_tensors(self, t, name, gname, base, bid):
        if name.endswith("norm.weight"):
            return [self.spec(gname, t, transform=norm_plus_one(t[2]))]
        return super().modify_tensors(t, name, gname, base, bid)


@register("Gemma2ForCausalLM")
class Gemma2Model(GemmaModel):
    model_arch = MODEL_ARCH.GEMMA2
    configs = (GEMMA2_CONFIG,)
    layer = GEMMA2_LAYER

    def set_vocab(self, tokenizer_pre: str | None = None) -> None:
        need_spm(self.tok_folder)
        V.set_vocab_sentencepiece(self.kv, self.tok_folder, self.hp)
        self.kv.add_bool(Keys.Tokenizer.ADD_PREFIX, False)

    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        hp = self.hp
        self.f32("attn_logit_softcapping", hp["attn_logit_softcapping"], "attn_logit_softcapping")
        self.f32("final_logit_softcapping", hp["final_logit_softcapping"], "final_logit_softcapping")
        self.u32("attention.sliding_window", hp["sliding_window"], "sliding_window")


# Gemma3ForConditionalGeneration: the language model only (language_model.* prefix dropped by
# filter_name, the vision tower and projector by is_multimodal), as the converter writes it without --mmproj
@register("Gemma3ForCausalLM", "Gemma3ForConditionalGeneration")
class Gemma3Model(GemmaModel):
    model_arch = MODEL_ARCH.GEMMA3
    configs = (GEMMA3_CONFIG, GEMMA3_MM_CONFIG)
    layer = GEMMA2_LAYER | QK_NORM_LAYER
    globals_ = TextModel.globals_
    skip_names = ()

    def set_vocab(self, tokenizer_pre: str | None = None) -> None:
        if (self.tok_folder / "tokenizer.model").is_file():
            V.set_vocab_sentencepiece(self.kv, self.tok_folder, self.hp)
            self.kv.add_bool(Keys.Tokenizer.ADD_PREFIX, False)
        else:
            V.set_vocab_gpt2(self.kv, self.tok_folder, self.hp, self.hp["model_type"], tokenizer_pre)

    def set_gguf_parameters(self) -> None:
        TextModel.set_gguf_parameters(self)
        hp = self.hp
        self.u32("context_length", hp.get("max_position_embeddings", 131072), "max_position_embeddings")
        self.u32("attention.head_count", hp.get("num_attention_heads", 8), "num_attention_heads")
        self.f32("attention.layer_norm_rms_epsilon", hp.get("rms_norm_eps", 1e-6), "rms_norm_eps")
        self.u32("attention.key_length", hp.get("head_dim", 256), "head_dim")
        self.u32("attention.value_length", hp.get("head_dim", 256), "head_dim")
        self.f32("rope.freq_base", self.rp.get("full_attention", self.rp).get("rope_theta", 1_000_000.0), "rope_theta")
        if hp.get("attn_logit_softcapping") is not None:
            raise InputError(f"{self.config_path}: Gemma 3 has no attn_logit_softcapping, got {hp['attn_logit_softcapping']!r}")
        if final := hp.get("final_logit_softcapping"):
            self.f32("final_logit_softcapping", final, "final_logit_softcapping")
        if hp.get("sliding_window_pattern") != 1:
            self.u32("attention.sliding_window", hp["sliding_window"], "sliding_window")
        self.u32("attention.head_count_kv", hp.get("num_key_value_heads", 4), "num_key_value_heads")

    # Gemma3Model.modify_tensors: rows of token_embd kept (reads tokenizer.json even for --dry-run)
    def prepare(self) -> None:
        folder = self.tok_folder
        V.check_tokenizer_files(folder, self.hp)
        if (folder / "tokenizer.model").is_file():
            n = find_hparam(self.hp, ["vocab_size_per_layer_input", "vocab_size"], True)
            self.n_vocab_real = n or len(V.read_spm_model(folder / "tokenizer.model").pieces)
            return
        path = folder / "tokenizer.json"
        tj = V.read_tokenizer_json(path)
        model = tj.get("model")
        if not isinstance(model, dict) or not isinstance(model.get("vocab"), dict):
            raise InputError(f"{path}: missing key 'model.vocab'")
        self.n_vocab_real = len(model["vocab"]) + len(tj.get("added_tokens", []))

    def expected_shape(self, base: str, bias: bool):
        return None if base == "token_embd" else super().expected_shape(base, bias)

    def modify_tensors(self, t, name, gname, base, bid):
        if base != "token_embd":
            return super().modify_tensors(t, name, gname, base, bid)
        shape, n_vocab = t[1], self.hp["vocab_size"]
        if shape[0] < n_vocab:
            raise InputError(f"{self.folder}: tensor {t[0]!r} has {shape[0]} rows, fewer than vocab_size {n_vocab}")
        n = min(shape[0], self.n_vocab_real)
        if n == shape[0]:
            return [self.spec(gname, t)]
        return [self.spec(gname, t, shape=(n,) + tuple(shape[1:]), row_perm=rows(0, n))]
