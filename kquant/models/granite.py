"""IBM Granite (dense): conversion/granite.py GraniteModel (llama.cpp as vendored in llama-cpp-python 0.3.36).

A LlamaModel whose config's *_multiplier / logits_scaling keys become the GGUF scale keys. The MoE,
hybrid (Mamba-2) and vision variants are not ported."""

from __future__ import annotations

from gguf import MODEL_ARCH

from ..errors import UnsupportedError
from .base import register
from .hparams import HFConfig
from .llama import LlamaModel


def _kv_heads(hp: dict) -> None:
    # configuration_granite.py GraniteConfig.__init__: "for backward compatibility"
    if hp.get("num_key_value_heads") is None:
        hp["num_key_value_heads"] = hp["num_attention_heads"]


# transformers 4.57.6 configuration_granite.py __init__ defaults, for the keys llama.cpp reads
GRANITE_CONFIG = HFConfig("granite", dict(
    vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=None, max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False,
    rope_theta=10000.0, rope_scaling=None, attention_bias=False, mlp_bias=False, embedding_multiplier=1.0,
    logits_scaling=1.0, residual_multiplier=1.0, attention_multiplier=1.0,
), rope_type_alias=True, post_init=_kv_heads)


@register("GraniteForCausalLM")
class GraniteModel(LlamaModel):
    model_arch = MODEL_ARCH.GRANITE
    configs = (GRANITE_CONFIG,)
    inverse_names = True

    # GraniteModel.set_gguf_parameters: head_dim ignored, the multipliers written as scales
    def set_gguf_parameters(self) -> None:
        hp = self.hp
        if hp.get("spatial_target_layers") or hp.get("deepstack_layer_map"):
            raise UnsupportedError(f"{self.config_path}: Granite 4 Vision language models are not supported")
        if hp.get("head_dim"):
            hp.pop("head_dim")
        super().set_gguf_parameters()
        for key, name in (("attention_multiplier", "attention.scale"), ("embedding_multiplier", "embedding_scale"),
                          ("residual_multiplier", "residual_scale"), ("logits_scaling", "logit_scale")):
            if v := hp.get(key):
                self.f32(name, v, key)

    # GraniteModel.filter_tensors: multimodal tensors skipped
    def filter_name(self, name: str) -> str | None:
        if (name.startswith("encoder.") or "image_" in name or "layerwise_projectors" in name
                or "spatial_projectors" in name):
            return None
        return super().filter_name(name)
