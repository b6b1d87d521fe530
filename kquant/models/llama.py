"""Llama, Mistral and Mixtral: conversion/llama.py LlamaModel (llama.cpp as vendored in llama-cpp-python 0.3.36)."""

from __future__ import annotations

import math
import re

import numpy as np
from gguf import MODEL_ARCH, Keys

from ..errors import InputError, UnsupportedError
from .. import vocab as V
from .base import ATTN_BIASES, LLAMA_LAYER, MLP_BIASES, Experts, Headless, TextModel, register
from .hparams import HFConfig


def _llama_head_dim(hp: dict) -> None:
    # transformers configuration_llama.py LlamaConfig.__init__
    if hp.get("head_dim") is None:
        hp["head_dim"] = hp["hidden_size"] // hp["num_attention_heads"]


# transformers 4.57.6 configuration_<model>.py __init__ defaults, for the keys llama.cpp reads
LLAMA_CONFIG = HFConfig("llama", dict(
    vocab_size=32000, max_position_embeddings=2048, hidden_size=4096, intermediate_size=11008,
    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=None, rms_norm_eps=1e-6,
    rope_theta=10000.0, rope_scaling=None, attention_bias=False, mlp_bias=False, head_dim=None,
    tie_word_embeddings=False,
), rope_type_alias=True, kv_heads_fallback=True, post_init=_llama_head_dim)
MISTRAL_CONFIG = HFConfig("mistral", dict(
    vocab_size=32000, max_position_embeddings=4096 * 32, hidden_size=4096, intermediate_size=14336,
    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, sliding_window=4096,
    head_dim=None, rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
), kv_heads_fallback=True)
MIXTRAL_CONFIG = HFConfig("mixtral", dict(
    vocab_size=32000, max_position_embeddings=4096 * 32, hidden_size=4096, intermediate_size=14336,
    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, sliding_window=None,
    head_dim=None, rms_norm_eps=1e-5, rope_theta=1e6, num_experts_per_tok=2, num_local_experts=8,
    tie_word_embeddings=False,
), kv_heads_fallback=True)


# conversion/llama.py LlamaModel.permute as a row gather
def qk_permutation(n_rows: int, n_head: int) -> np.ndarray:
    """Row order of permute(W, n_head): out row (h, j, t) = source row (h, t, j), j < hd/2, t < 2."""
    if n_rows % (2 * n_head):
        raise InputError(f"cannot permute {n_rows} rows into {n_head} rotary heads (needs a multiple of {2 * n_head})")
    return np.arange(n_rows, dtype=np.int64).reshape(n_head, 2, n_rows // n_head // 2).swapaxes(1, 2).reshape(-1)


def llama_vocab_and_rope_dim(model) -> None:
    """LlamaModel.set_gguf_parameters' own keys: vocab_size, and the rope dimension (head_dim, else
    hidden_size / num_attention_heads)."""
    hp = model.hp
    model.u32("vocab_size", hp["vocab_size"], "vocab_size")
    if (rope_dim := hp.get("head_dim")) is None:
        rope_dim = hp["hidden_size"] // hp["num_attention_heads"]
    model.u32("rope.dimension_count", rope_dim, "head_dim")


def permute_qk(model, t, name: str, gname: str, biases: bool = True):
    """LlamaModel.modify_tensors' undo of the HF Q/K permutation (q with num_attention_heads, k with
    num_key_value_heads), for the weights and, with `biases`, the biases: [TensorSpec], or None when
    `name` is neither (the caller falls through to its default)."""
    n_head = model.hp["num_attention_heads"]
    suffixes = (".weight", ".bias") if biases else (".weight",)
    if name.endswith(tuple("q_proj" + s for s in suffixes)):
        return [model.spec(gname, t, row_perm=qk_permutation(t[1][0], n_head))]
    if name.endswith(tuple("k_proj" + s for s in suffixes)):
        n_kv = model.hp.get("num_key_value_heads") or n_head
        return [model.spec(gname, t, row_perm=qk_permutation(t[1][0], n_kv))]
    return None


def torch_pow_f32(base: np.float32, expo: np.ndarray) -> np.ndarray:
    """float32 `base ** expo`, rounded from float64.

    torch evaluates this with SLEEF's powf (1-ulp, not correctly rounded) on AVX2/AVX-512 CPUs,
    so a few (base, head_dim) pairs can differ in the last bit; every official Llama 3.x rope
    configuration (theta 500000, head_dim 64/128) matches exactly.
    """
    return np.power(np.float64(base), expo.astype(np.float64)).astype(np.float32)


# conversion/llama.py LlamaModel.generate_extra_tensors (exaone.py Exaone4Model has a copy), in
# torch's float32 arithmetic: a Python number divided by a 0-d tensor is `tensor.reciprocal() * number` (torch/_tensor.py __rdiv__), tensor-scalar ops
# round to float32 after each step.
def llama3_rope_freqs(self: TextModel, default_factor: float, equal_factors_ok: bool = False) -> list[tuple[str, np.ndarray]]:
    """rope_freqs.weight for a llama3 rope (none otherwise); `default_factor` when the config has no factor.

    `equal_factors_ok`: low_freq_factor == high_freq_factor is allowed (Llama 4 Scout's config; its
    config class does not validate rope): no frequency then falls between the two wavelengths."""
    rope_params = self.rp.get("full_attention", self.rp)
    if not rope_params or str(rope_params.get("rope_type", "")).lower() != "llama3":
        return []
    f32 = np.float32
    base = rope_params.get("rope_theta", 10000.0)
    if (dim := self.hp.get("head_dim")) is None:
        dim = self.hp["hidden_size"] // self.hp["num_attention_heads"]
    # 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    expo = np.arange(0, dim, 2, dtype=f32) / f32(dim)  # (dim/2,)
    freqs = (f32(1) / torch_pow_f32(f32(base), expo)) * f32(1.0)
    factor = rope_params.get("factor", default_factor)
    low_freq_factor = rope_params.get("low_freq_factor", 1.0)
    high_freq_factor = rope_params.get("high_freq_factor", 4.0)
    old_context_len = rope_params.get("original_max_position_embeddings", 8192)
    # kquant: transformers' _validate_llama3_parameters rules, as errors (upstream divides by zero)
    for k, v in (("factor", factor), ("low_freq_factor", low_freq_factor), ("high_freq_factor", high_freq_factor),
                 ("original_max_position_embeddings", old_context_len)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf"):
            raise InputError(f"{self.config_path}: 'rope_scaling.{k}' must be a positive number, got {v!r}")
    if not (low_freq_factor < high_freq_factor or equal_factors_ok and low_freq_factor == high_freq_factor):
        raise InputError(f"{self.config_path}: 'rope_scaling.high_freq_factor' ({high_freq_factor}) must be greater "
                         f"than 'rope_scaling.low_freq_factor' ({low_freq_factor})")
    low_freq_wavelen = old_context_len / low_freq_factor  # Python floats, as upstream
    high_freq_wavelen = old_context_len / high_freq_factor
    out = np.empty(len(freqs), dtype=f32)  # (dim/2,)
    for i, freq in enumerate(freqs):
        wavelen = (f32(1) / freq) * f32(2 * math.pi)  # 2 * math.pi / freq
        if wavelen < f32(high_freq_wavelen):
            out[i] = 1
        elif wavelen > f32(low_freq_wavelen):
            out[i] = factor
        else:
            # (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            with np.errstate(divide="ignore", invalid="ignore"):  # equal factors: a wavelength exactly on the edge (torch: inf/nan too)
                smooth = ((f32(1) / wavelen) * f32(old_context_len) - f32(low_freq_factor)) / f32(high_freq_factor - low_freq_factor)
                # 1 / ((1 - smooth) / factor + smooth)
                out[i] = (f32(1) / ((f32(1) - smooth) / f32(factor) + smooth)) * f32(1)
    return [("rope_freqs.weight", out)]


@register("LlamaForCausalLM", "LLaMAForCausalLM")
class LlamaModel(TextModel):
    model_arch = MODEL_ARCH.LLAMA
    configs = (LLAMA_CONFIG, MISTRAL_CONFIG, MIXTRAL_CONFIG)
    bias_ok = ATTN_BIASES + MLP_BIASES
    undo_permute = True
    inverse_names = True

    # LlamaModel.set_vocab
    def set_vocab(self, tokenizer_pre: str | None = None) -> None:
        folder, rec, hp = self.tok_folder, self.kv, self.hp
        if (folder / "tekken.json").is_file() and not (folder / "tokenizer.json").is_file():
            raise UnsupportedError(f"{folder}: Mistral tekken.json tokenizers are not supported")
        tc_file = folder / "tokenizer_config.json"
        if tc_file.is_file():
            tc = V.read_object(tc_file)
            if (add_prefix_space := tc.get("add_prefix_space")) is not None:
                rec.add_bool(Keys.Tokenizer.ADD_PREFIX, add_prefix_space)
            if tc.get("tokenizer_class") == "HybridDNATokenizer":
                raise UnsupportedError(f"{tc_file}: HybridDNATokenizer is not supported")
        try:
            V.set_vocab_sentencepiece(rec, folder, hp)
        except FileNotFoundError:
            if V.llama_hf_kind(folder) == "spm-bpe":
                raise UnsupportedError(
                    f"{folder}: SentencePiece-style tokenizer.json without tokenizer.model is not supported") from None
            V.set_vocab_gpt2(rec, folder, hp, hp["model_type"], tokenizer_pre)
        if hp.get("vocab_size", 32000) == 32016:  # CodeLlama
            sv = V.SpecialVocab(folder, load_merges=False, special_token_types=["prefix", "suffix", "middle", "eot"])
            sv.set_special_token("prefix", 32007)
            sv.set_special_token("suffix", 32008)
            sv.set_special_token("middle", 32009)
            sv.set_special_token("eot", 32010)
            sv.add_to_gguf(rec)
        if hp.get("vocab_size", 32000) == 49152:  # granite small models
            rec.add_bool("tokenizer.ggml.add_bos_token", False)

    # LlamaModel.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        llama_vocab_and_rope_dim(self)

    # LlamaModel.filter_tensors
    def filter_name(self, name: str) -> str | None:
        if "text_model." in name:
            name = name.replace("text_model.", "")
        return super().filter_name(name)

    # LlamaModel.modify_tensors: undo the HF Q/K permutation
    def modify_tensors(self, t, name, gname, base, bid):
        return permute_qk(self, t, name, gname) or super().modify_tensors(t, name, gname, base, bid)

    @classmethod
    def hf_row_order(cls, base, n_rows, n_head, n_head_kv):
        if base in ("attn_q", "attn_k"):
            return np.argsort(qk_permutation(n_rows, n_head if base == "attn_q" else n_head_kv))
        return None

    # --hf-names: a "llama" file with experts has Mixtral's layout (block_sparse_moe)
    @classmethod
    def hf_layer(cls, kinds):
        return cls.layer | MixtralModel.layer if cls.experts is None and "ffn_gate_exps" in kinds else cls.layer

    @classmethod
    def hf_expert_names(cls, bid, base, n_expert):
        if cls.experts is None and cls.model_arch == MODEL_ARCH.LLAMA:
            return MixtralModel.hf_expert_names(bid, base, n_expert)
        return super().hf_expert_names(bid, base, n_expert)

    # LlamaModel.generate_extra_tensors
    def generate_extra_tensors(self) -> list[tuple[str, np.ndarray]]:
        return llama3_rope_freqs(self, default_factor=8.0)


# conversion/llama.py LlamaModel.modify_tensors (`if self.hf_arch == "LlamaModel": name = "model." + name`)
@register("LlamaModel")
class LlamaHeadlessModel(Headless, LlamaModel):
    pass


@register("MistralForCausalLM")
class MistralModel(LlamaModel):
    inverse_names = False  # GGUF arch "llama" maps back to LlamaForCausalLM names


@register("MixtralForCausalLM")
class MixtralModel(LlamaModel):
    layer = {k: v for k, v in LLAMA_LAYER.items() if not k.startswith("mlp.")} | {"block_sparse_moe.gate": "ffn_gate_inp"}
    bias_ok = ATTN_BIASES
    inverse_names = False
    experts = Experts(
        source="model.layers.{bid}.block_sparse_moe.experts.{xid}.{w}.weight",
        order=(("w1", "ffn_gate_exps"), ("w2", "ffn_down_exps"), ("w3", "ffn_up_exps")),
        count_keys=("num_local_experts",),
    )


def _smollm3_no_rope(hp: dict) -> None:
    # transformers configuration_smollm3.py SmolLM3Config.__init__
    if hp.get("num_key_value_heads") is None:
        hp["num_key_value_heads"] = hp["num_attention_heads"]
    if hp.get("no_rope_layers") is None:
        step = hp.get("no_rope_layer_interval", 4)
        hp["no_rope_layers"] = [int((i + 1) % step != 0) for i in range(hp["num_hidden_layers"])]


SMOLLM3_CONFIG = HFConfig("smollm3", dict(
    vocab_size=128256, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
    num_key_value_heads=4, max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=2000000.0,
    rope_scaling=None, use_sliding_window=False, sliding_window=None, no_rope_layer_interval=4,
    attention_bias=False, mlp_bias=False, tie_word_embeddings=True,
), rope_type_alias=True, post_init=_smollm3_no_rope)


# conversion/llama.py SmolLM3Model: LlamaModel under the smollm3 architecture. The converter writes
# nothing about the NoPE layers: llama.cpp's smollm3 graph (src/models/smollm3.cpp) skips rope on
# every 4th layer, whatever the config says.
@register("SmolLM3ForCausalLM")
class SmolLM3Model(LlamaModel):
    model_arch = MODEL_ARCH.SMOLLM3
    configs = (SMOLLM3_CONFIG,)
    inverse_names = True

    def set_gguf_parameters(self) -> None:
        # kquant: a NoPE pattern other than llama.cpp's fixed one would convert but run wrongly
        hp = self.hp
        nope = hp["no_rope_layers"]
        fixed = [int((i + 1) % 4 != 0) for i in range(self.block_count)]
        if not isinstance(nope, list) or [bool(x) for x in nope[: self.block_count]] != [bool(x) for x in fixed]:
            raise UnsupportedError(f"{self.config_path}: 'no_rope_layers' {str(nope)[:80]} differs from the pattern llama.cpp's "
                                   "smollm3 runtime assumes (no rope on every 4th layer)")
        super().set_gguf_parameters()


def _apertus_kv_heads(hp: dict) -> None:
    # transformers configuration_apertus.py ApertusConfig.__init__
    if hp.get("num_key_value_heads") is None:
        hp["num_key_value_heads"] = hp["num_attention_heads"]


APERTUS_CONFIG = HFConfig("apertus", dict(
    vocab_size=131072, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=None, max_position_embeddings=65536, rms_norm_eps=1e-5, tie_word_embeddings=False,
    rope_theta=12000000.0, rope_scaling={"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192,
                                         "low_freq_factor": 1.0, "high_freq_factor": 4.0},
    attention_bias=False,
), rope_type_alias=True, post_init=_apertus_kv_heads)

# xIELU activation parameters per layer (model.layers.{bid}.mlp.act_fn.<param>) -> GGUF metadata key
XIELU_KEYS = {"alpha_n": "xielu.alpha_n", "alpha_p": "xielu.alpha_p", "beta": "xielu.beta", "eps": "xielu.eps"}


# conversion/llama.py ApertusModel: LlamaModel without the Q/K permutation, RMS-normed q/k, an
# up/down MLP with the xIELU activation, whose per-layer scalars become metadata arrays
@register("ApertusForCausalLM")
class ApertusModel(LlamaModel):
    model_arch = MODEL_ARCH.APERTUS
    configs = (APERTUS_CONFIG,)
    layer = {
        "attention_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "self_attn.q_norm": "attn_q_norm",
        "self_attn.k_norm": "attn_k_norm",
        "feedforward_layernorm": "ffn_norm",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    bias_ok = ()
    undo_permute = False
    inverse_names = True

    # ApertusModel.modify_tensors (xIELU part): each array is written when its last layer's scalar is seen
    def prepare_tensors(self, hf, extra, where):
        n_layers = self.hp["num_hidden_layers"]
        seen: dict[str, dict[int, str]] = {k: {} for k in XIELU_KEYS}
        rest, done = [], []
        for t in hf:
            m = re.fullmatch(r"model\.layers\.(\d+)\.mlp\.act_fn\.(alpha_n|alpha_p|beta|eps)", t[0])
            if m is None:
                rest.append(t)
                continue
            bid, param = int(m.group(1)), m.group(2)
            if bid >= n_layers:
                raise InputError(f"{where}: tensor {t[0]!r} is for layer {bid} but num_hidden_layers is {n_layers}")
            if int(np.prod(t[1])) != 1:
                raise InputError(f"{where}: tensor {t[0]!r} has shape {list(t[1])}, expected one value")
            seen[param][bid] = t[0]
            if len(seen[param]) == n_layers:
                done.append(param)
        missing = [p for p in XIELU_KEYS if p not in done]
        if missing:  # upstream writes no key then, and llama.cpp's apertus runtime cannot load the file
            raise InputError(f"{where}: xIELU parameter mlp.act_fn.{missing[0]} is missing for some layers")
        from ..io.safetensors import Checkpoint

        with Checkpoint.open(self.folder) as ck:
            for param in done:
                self.kv.add_array(XIELU_KEYS[param], [float(ck.read(seen[param][b]).reshape(-1)[0]) for b in sorted(seen[param])])
        return super().prepare_tensors(rest, extra, where)

    # LlamaModel.modify_tensors with undo_permute False
    def modify_tensors(self, t, name, gname, base, bid):
        return TextModel.modify_tensors(self, t, name, gname, base, bid)

    @classmethod
    def hf_row_order(cls, base, n_rows, n_head, n_head_kv):
        return None


# transformers 4.57.6 configuration_arcee.py ArceeConfig.__init__ defaults, for the keys llama.cpp reads
# (kv heads fallback, head_dim from hidden_size / num_attention_heads, the rope_scaling type alias)
ARCEE_CONFIG = HFConfig("arcee", dict(
    vocab_size=32000, hidden_size=2560, intermediate_size=18432, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=None, max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False,
    rope_theta=10000.0, rope_scaling=None, attention_bias=False, mlp_bias=False, head_dim=None,
), rope_type_alias=True, kv_heads_fallback=True, post_init=_llama_head_dim)


# conversion/llama.py ArceeModel: LlamaModel (Q/K permuted) under the arcee architecture, an up/down
# MLP (ReLU^2, no gate), and TextModel._try_set_pooling_type
@register("ArceeForCausalLM")
class ArceeModel(LlamaModel):
    model_arch = MODEL_ARCH.ARCEE
    configs = (ARCEE_CONFIG,)
    layer = {k: v for k, v in LLAMA_LAYER.items() if k != "mlp.gate_proj"}
    inverse_names = True

    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        self.no_pooling()
