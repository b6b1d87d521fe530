"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL (dense and MoE): the language model of
Qwen2VLForConditionalGeneration / Qwen2_5_VLForConditionalGeneration, conversion/qwenvl.py Qwen2VLModel,
and of Qwen3VLForConditionalGeneration / Qwen3VLMoeForConditionalGeneration, conversion/qwen3vl.py
Qwen3VLTextModel / Qwen3VLMoeTextModel (llama.cpp as vendored in llama-cpp-python 0.3.36).

A Qwen2 decoder (Q/K/V biases) under the qwen2vl architecture (both releases) whose M-RoPE sections
(`rope_scaling.mrope_section`) TextModel.set_gguf_parameters writes as rope.dimension_sections.
transformers 4.57.6's Qwen2VLConfig / Qwen2_5_VLConfig build the text class from `text_config`, or,
for the flat config.json of the original releases, from all their other keys. The vision tower
(`visual.*`) is dropped, as the converter does without --mmproj.

Qwen3-VL: Qwen3 / Qwen3-MoE decoders under qwen3vl / qwen3vlmoe plus the deepstack layer count (from
vision_config); the MoE's experts arrive stacked and transposed (gate_up_proj [n_expert, n_embd,
2 * n_ff], gate then up along the last axis; down_proj [n_expert, n_ff, n_embd]), streamed in slabs."""

from __future__ import annotations

import re

from gguf import MODEL_ARCH

from .. import vocab as V
from ..errors import InputError
from .base import ATTN_BIASES, MLP_BIASES, QK_NORM_LAYER, Experts, HFJoin, TextModel, register, rows
from .hparams import HFConfig
from .qwen import MOE_LAYER, QKV_BIASES, Qwen3Model, Qwen3MoeModel


def _text_init(hp: dict) -> None:
    # transformers configuration_qwen2_vl.py Qwen2VLTextConfig.__init__ (Qwen2_5_VLTextConfig: the same)
    if not hp.get("use_sliding_window"):
        hp["sliding_window"] = None
    if hp.get("num_key_value_heads") is None:
        hp["num_key_value_heads"] = hp["num_attention_heads"]
    rs = hp.get("rope_scaling")
    if isinstance(rs, dict) and "type" in rs:
        if rs["type"] == "mrope":
            rs["type"] = "default"
        rs["rope_type"] = rs["type"]


_TEXT = dict(
    vocab_size=152064, hidden_size=8192, intermediate_size=29568, num_hidden_layers=80, num_attention_heads=64,
    num_key_value_heads=8, hidden_act="silu", max_position_embeddings=32768, rms_norm_eps=1e-5,
    tie_word_embeddings=False, rope_theta=1000000.0, use_sliding_window=False, sliding_window=4096,
    max_window_layers=80, rope_scaling=None,
)
_COMPOSITE = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653)
_FLAT = ("text_config", "vision_config") + tuple(_COMPOSITE)  # Qwen2VLConfig.__init__'s own parameters
QWEN2VL_TEXT_CONFIG = HFConfig("qwen2_vl_text", _TEXT, post_init=_text_init)
QWEN25VL_TEXT_CONFIG = HFConfig("qwen2_5_vl_text", _TEXT, post_init=_text_init)
QWEN2VL_CONFIG = HFConfig("qwen2_vl", _COMPOSITE, text_config="qwen2_vl_text", flat_text_keys=_FLAT)
QWEN25VL_CONFIG = HFConfig("qwen2_5_vl", _COMPOSITE, text_config="qwen2_5_vl_text", flat_text_keys=_FLAT)


@register("Qwen2VLForConditionalGeneration")
class Qwen2VLModel(TextModel):
    model_arch = MODEL_ARCH.QWEN2VL
    configs = (QWEN2VL_CONFIG, QWEN2VL_TEXT_CONFIG)
    bias_ok = ATTN_BIASES + MLP_BIASES
    bias_required = QKV_BIASES
    inverse_names = True  # --hf-names: the language model's names (model.layers.*)

    # Qwen2VLModel.set_vocab
    def set_vocab(self, tokenizer_pre: str | None = None) -> None:
        if (self.tok_folder / "tokenizer.model").is_file():
            V.set_vocab_sentencepiece(self.kv, self.tok_folder, self.hp)
        else:
            V.set_vocab_gpt2(self.kv, self.tok_folder, self.hp, self.hp["model_type"], tokenizer_pre)


@register("Qwen2_5_VLForConditionalGeneration")
class Qwen25VLModel(Qwen2VLModel):
    """conversion/qwenvl.py registers Qwen2.5-VL on Qwen2VLModel: the qwen2vl architecture too."""

    configs = (QWEN25VL_CONFIG, QWEN25VL_TEXT_CONFIG)


def _qwen3vl_text_init(hp: dict) -> None:
    # transformers configuration_qwen3_vl(_moe).py Qwen3VL(Moe)TextConfig.__init__
    if hp.get("num_key_value_heads") is None:
        hp["num_key_value_heads"] = hp["num_attention_heads"]
    if "head_dim" in hp and not hp["head_dim"]:  # the MoE class: head_dim or hidden_size // num_attention_heads
        hp["head_dim"] = hp["hidden_size"] // hp["num_attention_heads"]
    if hp.get("mlp_only_layers", 0) is None:
        hp["mlp_only_layers"] = []


# transformers 4.57.6 configuration_qwen3_vl.py / configuration_qwen3_vl_moe.py __init__ defaults
QWEN3VL_TEXT_CONFIG = HFConfig("qwen3_vl_text", dict(
    vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=32, head_dim=128, hidden_act="silu", max_position_embeddings=128000, rms_norm_eps=1e-6,
    tie_word_embeddings=False, rope_theta=5000000.0, rope_scaling=None, attention_bias=False,
), post_init=_qwen3vl_text_init)
QWEN3VL_MOE_TEXT_CONFIG = HFConfig("qwen3_vl_moe_text", dict(
    vocab_size=151936, hidden_size=2048, intermediate_size=5632, num_hidden_layers=24, num_attention_heads=16,
    num_key_value_heads=16, hidden_act="silu", max_position_embeddings=128000, rms_norm_eps=1e-6,
    tie_word_embeddings=False, rope_theta=5000000.0, attention_bias=False, decoder_sparse_step=1,
    moe_intermediate_size=1408, num_experts_per_tok=4, num_experts=60, norm_topk_prob=True, mlp_only_layers=None,
    rope_scaling=None, head_dim=None,
), post_init=_qwen3vl_text_init)
_QWEN3VL = dict(_COMPOSITE, tie_word_embeddings=False)
QWEN3VL_CONFIG = HFConfig("qwen3_vl", _QWEN3VL, text_config="qwen3_vl_text")
QWEN3VL_MOE_CONFIG = HFConfig("qwen3_vl_moe", _QWEN3VL, text_config="qwen3_vl_moe_text")
DEEPSTACK_DEFAULT = [8, 16, 24]  # Qwen3VL(Moe)VisionConfig deepstack_visual_indexes


def deepstack_layers(model: TextModel) -> None:
    """Qwen3VLTextModel.set_gguf_parameters: n_deepstack_layers from vision_config (its class default when absent)."""
    vc = model.hp.get("vision_config") or {}
    if not isinstance(vc, dict):
        raise InputError(f"{model.config_path}: 'vision_config' must be an object, got {vc!r}"[:200])
    idx = vc.get("deepstack_visual_indexes", DEEPSTACK_DEFAULT)
    if not isinstance(idx, list):
        raise InputError(f"{model.config_path}: 'vision_config.deepstack_visual_indexes' must be a list, got {idx!r}"[:200])
    model.kv.add_uint32(model.key("n_deepstack_layers"), len(idx))


@register("Qwen3VLForConditionalGeneration")
class Qwen3VLTextModel(Qwen3Model):
    model_arch = MODEL_ARCH.QWEN3VL
    configs = (QWEN3VL_CONFIG, QWEN3VL_TEXT_CONFIG)
    inverse_names = True  # --hf-names: the language model's names (model.layers.*)

    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        deepstack_layers(self)


_QWEN3VL_EXPERT = re.compile(r"(model\.layers\.\d+\.mlp\.experts\.)(gate_up_proj|down_proj)")


@register("Qwen3VLMoeForConditionalGeneration")
class Qwen3VLMoeTextModel(Qwen3MoeModel):
    model_arch = MODEL_ARCH.QWEN3VLMOE
    configs = (QWEN3VL_MOE_CONFIG, QWEN3VL_MOE_TEXT_CONFIG)
    layer = MOE_LAYER | QK_NORM_LAYER | {"mlp.experts.gate_up_proj": "ffn_gate_up_exps", "mlp.experts.down_proj": "ffn_down_exps"}
    experts = Experts(source="", order=(), count_keys=("num_experts",), stacked=True)
    split_modules = {"ffn_gate_up_exps": ("ffn_gate_exps", "ffn_up_exps")}
    # --hf-names: the language model's names; gate and up transposed back side by side into gate_up_proj
    inverse_names = True
    hf_joins = {"ffn_gate_exps": HFJoin("mlp.experts.gate_up_proj", 0, 2, transpose=True, axis=1),
                "ffn_up_exps": HFJoin("mlp.experts.gate_up_proj", 1, 2, transpose=True, axis=1),
                "ffn_down_exps": HFJoin("mlp.experts.down_proj", transpose=True)}

    # the stacked expert tensors come without a .weight suffix
    def filter_name(self, name: str) -> str | None:
        name = super().filter_name(name)
        if name is not None and _QWEN3VL_EXPERT.fullmatch(name):
            name += ".weight"
        return name

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        s = super().tensor_shapes()
        e, f, n_x = self.hp["hidden_size"], self.hp["moe_intermediate_size"], self._n_expert
        return s | {"ffn_gate_up_exps": (n_x, e, 2 * f), "ffn_down_exps": (n_x, f, e)}  # HF [expert, in, out]

    # Qwen3VLMoeTextModel.modify_tensors: transposed, gate_up split along its last axis (gate first)
    def modify_tensors(self, t, name, gname, base, bid):
        if base == "ffn_down_exps":
            return self.stacked_experts(t, [(gname, None)], transpose=True)
        if base == "ffn_gate_up_exps":
            f = t[1][2] // 2
            return self.stacked_experts(t, [(f"blk.{bid}.ffn_gate_exps.weight", rows(0, f)),
                                            (f"blk.{bid}.ffn_up_exps.weight", rows(f, 2 * f))], transpose=True)
        return super().modify_tensors(t, name, gname, base, bid)

    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        deepstack_layers(self)
