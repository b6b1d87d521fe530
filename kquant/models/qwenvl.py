"""Qwen2-VL and Qwen2.5-VL: the language model of Qwen2VLForConditionalGeneration /
Qwen2_5_VLForConditionalGeneration, conversion/qwenvl.py Qwen2VLModel (llama.cpp as vendored in
llama-cpp-python 0.3.36).

A Qwen2 decoder (Q/K/V biases) under the qwen2vl architecture (both releases) whose M-RoPE sections
(`rope_scaling.mrope_section`) TextModel.set_gguf_parameters writes as rope.dimension_sections.
transformers 4.57.6's Qwen2VLConfig / Qwen2_5_VLConfig build the text class from `text_config`, or,
for the flat config.json of the original releases, from all their other keys. The vision tower
(`visual.*`) is dropped, as the converter does without --mmproj."""

from __future__ import annotations

from gguf import MODEL_ARCH

from .. import vocab as V
from .base import ATTN_BIASES, MLP_BIASES, TextModel, register
from .hparams import HFConfig
from .qwen import QKV_BIASES


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
