"""StableLM (2, and StableLM 3B 4E1T's StableLMEpochForCausalLM): conversion/stablelm.py StableLMModel (llama.cpp as vendored in llama-cpp-python 0.3.36).

A TextModel with its own short parameter list (partial rotary dimension, parallel residual,
LayerNorm epsilon; no rope base), LayerNorms with biases and optional q/k/v biases. The per-head
q/k LayerNorms StableLM 2 12B stacks (qk_layernorm) and the Qwen-style vocabulary of old
StableLM 2 1.6B uploads are refused."""

from __future__ import annotations

from gguf import MODEL_ARCH

from ..errors import InputError, UnsupportedError
from .base import LLAMA_LAYER, TextModel, register
from .hparams import HFConfig

# transformers 4.57.6 configuration_stablelm.py __init__ defaults, for the keys llama.cpp reads
STABLELM_CONFIG = HFConfig("stablelm", dict(
    vocab_size=50304, intermediate_size=6912, hidden_size=2560, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=32, max_position_embeddings=4096, layer_norm_eps=1.0e-5, tie_word_embeddings=False,
    rope_theta=10000, rope_scaling=None, use_qkv_bias=False, qk_layernorm=False, use_parallel_residual=False,
    partial_rotary_factor=0.25,
))


# StableLM 3B 4E1T / Zephyr 3B (StableLMEpochForCausalLM, remote code): no transformers 4.57.6 class for
# model_type stablelm_epoch, so the converter reads config.json as it is (rope_pct, norm_eps; no
# use_parallel_residual key, so the converter writes true)
STABLELM_EPOCH_CONFIG = HFConfig("stablelm_epoch", {}, raw=True)


@register("StableLmForCausalLM", "StableLMEpochForCausalLM")
class StableLMModel(TextModel):
    model_arch = MODEL_ARCH.STABLELM
    configs = (STABLELM_CONFIG, STABLELM_EPOCH_CONFIG)
    layer = LLAMA_LAYER
    globals_bias_ok = ("model.norm",)
    bias_ok = ("input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
    inverse_names = True

    def prepare(self) -> None:
        if self.hp.get("qk_layernorm"):
            raise UnsupportedError(f"{self.config_path}: StableLM per-head q/k LayerNorms (qk_layernorm) are not supported")

    def set_vocab(self, tokenizer_pre: str | None = None) -> None:
        if not (self.tok_folder / "tokenizer.json").is_file():
            raise UnsupportedError(f"{self.tok_folder}: StableLM without tokenizer.json (Qwen-style vocabulary) is not supported")
        super().set_vocab(tokenizer_pre)

    # StableLMModel.set_gguf_parameters (replaces TextModel's)
    def set_gguf_parameters(self) -> None:
        hp = self.hp
        self.u32("context_length", hp["max_position_embeddings"], "max_position_embeddings")
        self.u32("embedding_length", hp["hidden_size"], "hidden_size")
        self.kv.add_uint32(self.key("block_count"), self.block_count)
        self.u32("feed_forward_length", hp["intermediate_size"], "intermediate_size")
        rotary_factor = self.rp.get("partial_rotary_factor")
        if isinstance(rotary_factor, bool) or not isinstance(rotary_factor, (int, float)) or not 0 < rotary_factor <= 1:
            raise InputError(f"{self.config_path}: 'partial_rotary_factor' must be a number in (0, 1], got {rotary_factor!r}")
        self.u32("rope.dimension_count", int(rotary_factor * (hp["hidden_size"] // hp["num_attention_heads"])),
                 "partial_rotary_factor")
        self.u32("attention.head_count", hp["num_attention_heads"], "num_attention_heads")
        self.u32("attention.head_count_kv", hp["num_key_value_heads"], "num_key_value_heads")
        parallel = hp["use_parallel_residual"] if "use_parallel_residual" in hp else True
        if not isinstance(parallel, bool):
            raise InputError(f"{self.config_path}: 'use_parallel_residual' must be true or false, got {parallel!r}")
        self.kv.add_bool(self.key("use_parallel_residual"), parallel)
        self.f32("attention.layer_norm_epsilon", self.find_hparam(["layer_norm_eps", "norm_eps"]), "layer_norm_eps")
        self.file_type_placeholder()
