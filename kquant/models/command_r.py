"""Command R and Command R7B: conversion/command_r.py CommandR2Model, Cohere2Model (llama.cpp as vendored
in llama-cpp-python 0.3.36).

Plain TextModels (no Q/K permutation) with a parallel attention/MLP block behind one LayerNorm
(weights only), embeddings tied to the output, a logit scale and the GPT-2 style vocabulary.
Command R+ carries per-head q/k LayerNorms (use_qk_norm; llama.cpp loads them only for 64+ layers,
so kquant refuses use_qk_norm on fewer layers and its absence on more). Command R7B (Cohere2)
interleaves sliding-window layers; the converter writes no pattern, llama.cpp's cohere2 runtime
assumes every 4th layer is global, so kquant refuses any other `layer_types` (it would convert
and run wrongly). Cohere2's bias tensors are dropped after checking they are zero, as upstream
means to (its check raises on the converter's lazy tensors, so upstream cannot convert them at all).
The MoE variant (Cohere2MoeForCausalLM) is not ported."""

from __future__ import annotations

from gguf import MODEL_ARCH

from ..errors import InputError, UnsupportedError
from .base import TextModel, register
from .hparams import HFConfig


def _cohere_kv_heads(hp: dict) -> None:
    # transformers configuration_cohere.py CohereConfig.__init__: "for backward compatibility"
    if hp.get("num_key_value_heads") is None:
        hp["num_key_value_heads"] = hp["num_attention_heads"]


def _cohere2_init(hp: dict) -> None:
    # transformers configuration_cohere2.py Cohere2Config.__init__ (head_dim always derived)
    _cohere_kv_heads(hp)
    hp["head_dim"] = hp["hidden_size"] // hp["num_attention_heads"]
    if hp.get("layer_types") is None:
        step = hp.get("sliding_window_pattern", 4)
        if not isinstance(step, int) or isinstance(step, bool) or step <= 0:
            raise InputError(f"config.json: 'sliding_window_pattern' must be a positive integer, got {step!r}")
        hp["layer_types"] = ["sliding_attention" if (i + 1) % step else "full_attention"
                             for i in range(hp["num_hidden_layers"])]


# transformers 4.57.6 configuration_cohere.py / configuration_cohere2.py __init__ defaults, for the keys
# llama.cpp reads
_COHERE = dict(
    vocab_size=256000, hidden_size=8192, intermediate_size=22528, logit_scale=0.0625, num_hidden_layers=40,
    num_attention_heads=64, num_key_value_heads=None, max_position_embeddings=8192, layer_norm_eps=1e-5,
    tie_word_embeddings=True, rope_theta=10000.0, rope_scaling=None, attention_bias=False,
)
COHERE_CONFIG = HFConfig("cohere", _COHERE | dict(use_qk_norm=False), post_init=_cohere_kv_heads)
COHERE2_CONFIG = HFConfig("cohere2", _COHERE | dict(sliding_window=4096, layer_types=None), post_init=_cohere2_init)

COHERE_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
# tied: the architecture has no output tensor (llama.cpp reuses token_embd)
COHERE_GLOBALS = {"model.embed_tokens": "token_embd", "model.norm": "output_norm"}


def _number(model: TextModel, key: str):
    if key not in model.hp:
        raise InputError(f"{model.config_path}: missing key {key!r}")
    return model.hp[key]


@register("CohereForCausalLM")
class CommandR2Model(TextModel):
    model_arch = MODEL_ARCH.COMMAND_R
    configs = (COHERE_CONFIG,)
    layer = COHERE_LAYER
    globals_ = COHERE_GLOBALS
    inverse_names = True

    def __init__(self, hp, **kw):
        super().__init__(hp, **kw)
        # CommandR2Model.__init__: trained context (model_max_length) over max_position_embeddings
        self.hp["max_position_embeddings"] = self.find_hparam(["model_max_length", "max_position_embeddings"])

    def prepare(self) -> None:
        # kquant: llama.cpp's command-r runtime loads q/k norms exactly when n_layer >= 64 (Command R+)
        if bool(self.hp.get("use_qk_norm")) != (self.block_count >= 64):
            raise UnsupportedError(f"{self.config_path}: use_qk_norm={self.hp.get('use_qk_norm')!r} with {self.block_count} layers: "
                                   "llama.cpp's command-r runtime expects q/k norms exactly when there are 64 layers or more")

    def layer_modules(self, bid: int) -> dict[str, str]:
        if self.hp.get("use_qk_norm"):
            return self.layer | {"self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"}
        return self.layer

    def tensor_shapes(self):
        s = super().tensor_shapes()
        hp = self.hp
        hd = hp["hidden_size"] // hp["num_attention_heads"]
        # CohereLayerNorm((num_heads, head_dim)): one weight row per head
        return s | {"attn_q_norm": (hp["num_attention_heads"], hd), "attn_k_norm": (hp["num_key_value_heads"], hd)}

    # CommandR2Model.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        self.f32("logit_scale", _number(self, "logit_scale"), "logit_scale")
        self.kv.add_string(self.key("rope.scaling.type"), "none")  # RopeScalingType.NONE


@register("Cohere2ForCausalLM")
class Cohere2Model(TextModel):
    model_arch = MODEL_ARCH.COHERE2
    configs = (COHERE2_CONFIG,)
    layer = COHERE_LAYER
    globals_ = COHERE_GLOBALS
    bias_ok = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
    inverse_names = True

    def prepare(self) -> None:
        lt = self.hp["layer_types"]
        if not isinstance(lt, list) or not all(isinstance(t, str) for t in lt):
            raise InputError(f"{self.config_path}: 'layer_types' must be a list of strings, got {str(lt)[:80]}")
        fixed = ["sliding_attention" if (i + 1) % 4 else "full_attention" for i in range(self.block_count)]
        if lt[: self.block_count] != fixed:
            raise UnsupportedError(f"{self.config_path}: 'layer_types' {str(lt)[:80]} differs from the pattern llama.cpp's "
                                   "cohere2 runtime assumes (every 4th layer global; the converter writes no pattern)")

    # Cohere2Model.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        hp = self.hp
        self.f32("logit_scale", _number(self, "logit_scale"), "logit_scale")
        self.u32("attention.sliding_window", _number(self, "sliding_window"), "sliding_window")
        self.u32("vocab_size", hp["vocab_size"], "vocab_size")
        rotary_pct = _number(self, "rotary_pct")
        if isinstance(rotary_pct, bool) or not isinstance(rotary_pct, (int, float)) or not 0 < rotary_pct <= 1:
            raise InputError(f"{self.config_path}: 'rotary_pct' must be a number in (0, 1], got {rotary_pct!r}")
        self.u32("rope.dimension_count", int(rotary_pct * (hp["hidden_size"] // hp["num_attention_heads"])), "rotary_pct")
        self.kv.add_string(self.key("rope.scaling.type"), "none")  # RopeScalingType.NONE

    # Cohere2Model.modify_tensors: biases are zero in the released weights; the runtime has none
    def modify_tensors(self, t, name, gname, base, bid):
        if name.endswith(".bias"):
            if self.read_source(t[0]).any():
                raise InputError(f"{self.folder}: bias tensor {t[0]!r} is not zero (Cohere2 in llama.cpp has no biases)")
            return []
        return super().modify_tensors(t, name, gname, base, bid)
