"""BitNet b1.58: conversion/bitnet.py BitnetModel (llama.cpp as vendored in llama-cpp-python 0.3.36).

A TextModel (TextModel's parameters, not LlamaModel's: no Q/K permutation, no vocab_size key) with
the sub-norms `self_attn.inner_attn_ln` / `mlp.ffn_layernorm` (1bitLLM's names: the only ones
gguf-py's tensor map knows), rope scaling "linear" with factor 1.0, a SentencePiece vocabulary,
and every attention / FFN matrix made ternary by weight_quant before it is stored:
    scale = max(mean(|w|), 1e-5);  w' = clamp(round(w / scale), -1, 1) * scale
computed as upstream computes it in torch float32 (iscale = 1 / scale, `round(w * iscale) /
iscale`, the mean in torch's summation order: models/torch_sum.py), then cast back to the
source's dtype. Checkpoints whose matrices are already packed ternary codes (`quantization_config`
`quant_method: "bitnet"`, uint8 weights + `weight_scale`) are unpacked by io/quantized.py first,
as ModelBase.dequant_model's dequant_bitnet does, and then go through weight_quant too.

The transformers BitNetForCausalLM layout (microsoft/bitnet-b1.58-2B-4T: `attn_sub_norm` /
`ffn_sub_norm`, a tokenizer.json without tokenizer.model) is refused, as the converter fails on it
(no tensor mapping for the sub-norms; _set_vocab_sentencepiece needs tokenizer.model)."""

from __future__ import annotations

import numpy as np
from gguf import MODEL_ARCH

from ..errors import UnsupportedError
from ..io.safetensors import bf16_round_fp32
from .base import LLAMA_LAYER, TextModel, register
from .hparams import HFConfig
from .torch_sum import torch_mean
from .. import vocab as V

# transformers 4.57.6 configuration_bitnet.py BitNetConfig.__init__ defaults, for the keys llama.cpp reads
BITNET_CONFIG = HFConfig("bitnet", dict(
    vocab_size=128256, hidden_size=2560, intermediate_size=6912, num_hidden_layers=30, num_attention_heads=20,
    num_key_value_heads=5, max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=False,
    rope_theta=500000.0, attention_bias=False,
), kv_heads_fallback=True)

# gguf-py's BITNET tensor list has no OUTPUT: lm_head cannot be mapped (llama.cpp uses token_embd)
BITNET_GLOBALS = {"model.embed_tokens": "token_embd", "model.norm": "output_norm"}
BITNET_LAYER = LLAMA_LAYER | {"self_attn.inner_attn_ln": "attn_sub_norm", "mlp.ffn_layernorm": "ffn_sub_norm"}
TERNARY = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_up", "ffn_down", "ffn_gate")  # BitnetModel.modify_tensors
TRANSFORMERS_NAMES = ("self_attn.attn_sub_norm", "mlp.ffn_sub_norm")


# BitnetModel.weight_quant (torch float32; `.type(dtype)` back to the tensor's own dtype)
def weight_quant(w: np.ndarray, dtype: str, threads: int | None = None) -> np.ndarray:
    """The ternary weights, float32 values of `dtype` ("BF16", "F16" or "F32")."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    scale = max(torch_mean(np.abs(w), threads), np.float32(1e-5))  # .abs().mean().clamp(min=1e-5)
    iscale = np.float32(1) / np.float32(scale)  # 1 / scale: reciprocal() * 1
    r = w * iscale
    np.rint(r, out=r)  # torch.round: half to even
    np.clip(r, np.float32(-1), np.float32(1), out=r)
    r /= iscale
    if dtype == "BF16":
        return bf16_round_fp32(r)
    if dtype == "F16":
        return r.astype(np.float16).astype(np.float32)
    return r


@register("BitnetForCausalLM", "BitNetForCausalLM")
class BitnetModel(TextModel):
    model_arch = MODEL_ARCH.BITNET
    configs = (BITNET_CONFIG,)
    layer = BITNET_LAYER
    globals_ = BITNET_GLOBALS
    # dequantize --hf-names not offered: the file holds the ternary weights, not the checkpoint's
    inverse_names = False

    def filter_name(self, name: str) -> str | None:
        if any(name.endswith(f".{m}.weight") for m in TRANSFORMERS_NAMES):
            raise UnsupportedError(f"{self.folder}: BitNet tensor {name!r} (transformers' BitNetForCausalLM layout) is not "
                                   "supported: llama.cpp's converter maps only 1bitLLM's inner_attn_ln / ffn_layernorm")
        return super().filter_name(name)

    # TextModel._set_vocab_sentencepiece
    def set_vocab(self, tokenizer_pre: str | None = None) -> None:
        V.set_vocab_sentencepiece(self.kv, self.tok_folder, self.hp)

    # BitnetModel.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        self.kv.add_string(self.key("rope.scaling.type"), "linear")  # RopeScalingType.LINEAR
        self.kv.add_float32(self.key("rope.scaling.factor"), 1.0)

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        s = super().tensor_shapes()
        s["attn_sub_norm"] = (s["attn_norm"][0],)
        s["ffn_sub_norm"] = (s["ffn_gate"][0],)
        return s

    # BitnetModel.modify_tensors
    def modify_tensors(self, t, name, gname, base, bid):
        if base in TERNARY and not gname.endswith(".bias"):
            dtype = t[2]
            return [self.spec(gname, t, transform=lambda a, dt=dtype: weight_quant(a[0], dt))]
        return super().modify_tensors(t, name, gname, base, bid)
