"""OrionStar Orion: conversion/orion.py OrionModel (llama.cpp as vendored in llama-cpp-python 0.3.36).

Llama's module layout with LayerNorms (weights and biases; the config calls their epsilon rms_norm_eps), no
Q/K permutation, the SentencePiece vocabulary, and the converter's own short parameter list (file type first,
the "Meta AI original pth" data layout, the context length from max_sequence_length, max_position_embeddings
or model_max_length). transformers 4.57.6 has no config class for it: config.json is read as it is."""

from __future__ import annotations

from gguf import MODEL_ARCH

from ..errors import InputError
from .. import vocab as V
from .base import LLAMA_LAYER, TextModel, register
from .hparams import HFConfig

ORION_CONFIG = HFConfig("orion", {}, raw=True)


@register("OrionForCausalLM")
class OrionModel(TextModel):
    model_arch = MODEL_ARCH.ORION
    configs = (ORION_CONFIG,)
    layer = LLAMA_LAYER
    globals_bias_ok = ("model.norm",)
    bias_ok = ("input_layernorm", "post_attention_layernorm")
    bias_required = ("input_layernorm", "post_attention_layernorm")  # llama.cpp's orion loader requires them
    inverse_names = True

    def check_complete(self, out) -> None:
        super().check_complete(out)
        if not any(t.name == "output_norm.bias" for t in out):
            raise InputError(f"{self.folder}: missing tensor model.norm.bias")

    def tied(self) -> bool:
        return False  # llama.cpp's orion loader requires output.weight

    # OrionModel.set_vocab
    def set_vocab(self, tokenizer_pre: str | None = None) -> None:
        V.set_vocab_sentencepiece(self.kv, self.tok_folder, self.hp)

    # OrionModel.set_gguf_parameters (replaces TextModel's)
    def set_gguf_parameters(self) -> None:
        hp = self.hp
        head_count = hp["num_attention_heads"]
        head_count_kv = hp.get("num_key_value_heads", head_count)
        key = next((k for k in ("max_sequence_length", "max_position_embeddings", "model_max_length") if k in hp), None)
        if key is None:
            raise InputError(f"{self.config_path}: no context length (max_sequence_length, max_position_embeddings "
                             "or model_max_length)")
        self.file_type_placeholder()
        self.kv.add_string(self.key("tensor_data_layout"), "Meta AI original pth")
        self.u32("context_length", hp[key], key)
        self.u32("embedding_length", hp["hidden_size"], "hidden_size")
        self.kv.add_uint32(self.key("block_count"), self.block_count)
        self.u32("feed_forward_length", hp["intermediate_size"], "intermediate_size")
        self.u32("attention.head_count", head_count, "num_attention_heads")
        self.u32("attention.head_count_kv", head_count_kv, "num_key_value_heads")
        self.f32("attention.layer_norm_epsilon", hp["rms_norm_eps"], "rms_norm_eps")
