"""GPT-2: conversion/gpt2.py GPT2Model (llama.cpp as vendored in llama-cpp-python 0.3.36).

Learned position embeddings, LayerNorms with biases, a fused QKV and biases on every projection,
all Conv1D layers (weights stored (in, out)) transposed to (out, in); the GPT-2 vocabulary. The
config uses GPT-2's own key names (n_embd, n_layer, n_head, n_positions; transformers'
attribute_map maps hidden_size & co. onto them). Checkpoints saved without the `transformer.`
prefix (openai-community/gpt2) convert the same; `dequantize --hf-names` writes the names
transformers' save_pretrained gives them (with the prefix) and transposes the Conv1D weights back.
RuGPT3XLForCausalLM (separate Q/K/V fused by the converter) is not ported."""

from __future__ import annotations

import numpy as np
from gguf import MODEL_ARCH

from ..errors import InputError
from .base import HFJoin, TextModel, register
from .hparams import HFConfig

# transformers 4.57.6 configuration_gpt2.py GPT2Config: __init__ defaults and attribute_map
GPT2_ATTRIBUTE_MAP = {"hidden_size": "n_embd", "max_position_embeddings": "n_positions",
                      "num_attention_heads": "n_head", "num_hidden_layers": "n_layer"}
GPT2_REQUIRED = {"hidden_size": ("n_embd",), "num_hidden_layers": ("n_layer",), "num_attention_heads": ("n_head",),
                 "intermediate_size": ()}
GPT2_CONFIG = HFConfig("gpt2", dict(
    vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, n_inner=None, layer_norm_epsilon=1e-5,
    bos_token_id=50256, eos_token_id=50256, tie_word_embeddings=True,  # (PretrainedConfig's default)
), attribute_map=GPT2_ATTRIBUTE_MAP, required_as=GPT2_REQUIRED)

GPT2_LAYER = {
    "ln_1": "attn_norm",
    "attn.c_attn": "attn_qkv",
    "attn.c_proj": "attn_output",
    "ln_2": "ffn_norm",
    "mlp.c_fc": "ffn_up",
    "mlp.c_proj": "ffn_down",
}
GPT2_GLOBALS = {"transformer.wte": "token_embd", "transformer.wpe": "position_embd", "transformer.ln_f": "output_norm",
                "lm_head": "output"}
GPT2_ALIASES = {"hidden_size": ("n_embd",), "num_attention_heads": ("n_head",), "num_key_value_heads": ("n_head",)}
CONV1D = ("attn_qkv", "attn_output", "ffn_up", "ffn_down")  # GPT2Model.modify_tensors: c_attn, c_proj, c_fc


def transpose(arrs: list[np.ndarray]) -> np.ndarray:
    """Conv1D weight (in, out) -> (out, in) (data_torch.transpose(1, 0))."""
    return np.ascontiguousarray(arrs[0].T)


class GPT2LayoutModel(TextModel):
    """GPT-2's module layout, shared by GPT-2 and GPTBigCode (starcoder.py): `transformer.h.*` layers,
    learned positions, LayerNorms and every projection with biases, a fused QKV, a 4 n_embd MLP, GPT-2's
    config key names. Not registered: the transposes are GPT-2's own (Conv1D), GPTBigCode's layers are Linear."""

    layer = GPT2_LAYER
    globals_ = GPT2_GLOBALS
    globals_bias_ok = ("transformer.ln_f",)
    bias_ok = tuple(GPT2_LAYER)
    bias_required = tuple(GPT2_LAYER)
    layer_prefix = "transformer.h."
    aliases = GPT2_ALIASES
    inverse_names = True

    def qkv_rows(self) -> int:
        """Rows of the fused QKV: n_embd each for Q, K and V (GPT-2)."""
        return 3 * self.hp["n_embd"]

    def tensor_shapes(self):
        e, n_vocab = self.hp["n_embd"], self.hp["vocab_size"]
        return {
            "token_embd": (n_vocab, e), "output": (n_vocab, e), "position_embd": (self.hp["n_positions"], e),
            "output_norm": (e,), "attn_norm": (e,), "ffn_norm": (e,),
            "attn_qkv": (self.qkv_rows(), e), "attn_output": (e, e), "ffn_up": (4 * e, e), "ffn_down": (e, 4 * e),
        }


@register("GPT2LMHeadModel")
class GPT2Model(GPT2LayoutModel):
    model_arch = MODEL_ARCH.GPT2
    configs = (GPT2_CONFIG,)
    hf_joins = {g: HFJoin(f"{m}.weight", transpose=True) for m, g in GPT2_LAYER.items() if g in CONV1D}  # (in, out) again

    def filter_name(self, name: str) -> str | None:
        # tensor_mapping.py lists GPT-2's names with and without the "transformer." prefix
        if name.startswith(("h.", "wte.", "wpe.", "ln_f.")):
            name = "transformer." + name
        return super().filter_name(name)

    def expected_shape(self, base: str, bias: bool):
        w = super().expected_shape(base, bias)
        return w[::-1] if base in CONV1D and not bias and w is not None else w

    # GPT2Model.set_gguf_parameters (replaces TextModel's)
    def set_gguf_parameters(self) -> None:
        hp = self.hp
        self.kv.add_uint32(self.key("block_count"), self.block_count)
        if "n_ctx" not in hp:  # GPT2Config has no n_ctx: only a config.json that states it gives one
            raise InputError(f"{self.config_path}: missing key 'n_ctx' (llama.cpp's converter reads the context length from it)")
        self.u32("context_length", hp["n_ctx"], "n_ctx")
        self.u32("embedding_length", hp["n_embd"], "n_embd")
        self.u32("feed_forward_length", 4 * hp["n_embd"], "n_embd")
        self.u32("attention.head_count", hp["n_head"], "n_head")
        self.f32("attention.layer_norm_epsilon", hp["layer_norm_epsilon"], "layer_norm_epsilon")
        self.file_type_placeholder()

    # GPT2Model.modify_tensors: Conv1D weights transposed
    def modify_tensors(self, t, name, gname, base, bid):
        if base in CONV1D and name.endswith(".weight"):
            return [self.spec(gname, t, shape=t[1][::-1], transform=transpose)]
        return super().modify_tensors(t, name, gname, base, bid)
