"""Mistral 3 (Mistral Small 3.1 / 3.2): the language model of Mistral3ForConditionalGeneration,
conversion/mistral3.py (llama.cpp as vendored in llama-cpp-python 0.3.36).

Upstream's Mistral3Model delegates to Ministral3Model, a LlamaModel under the mistral3
architecture, for every text_config but `mistral4` (a DeepseekV2Model). transformers 4.57.6's
Mistral3Config builds the text config class named by text_config["model_type"] ("mistral" when
absent); kquant supports the `mistral` one, for which Ministral3Model adds nothing to LlamaModel
(its yarn keys are for model_type `ministral3`). The vision tower and projector are dropped
(`vision_tower.*`, `multi_modal_projector.*`), as the converter does without --mmproj.
"""

from __future__ import annotations

from gguf import MODEL_ARCH

from .hparams import HFConfig
from .base import register
from .llama import LlamaModel

# transformers configuration_mistral3.py Mistral3Config (the text class: text_config["model_type"], default mistral)
MISTRAL3_CONFIG = HFConfig("mistral3", dict(
    image_token_index=10, projector_hidden_act="gelu", vision_feature_layer=-1, multimodal_projector_bias=False,
    spatial_merge_size=2,
), text_config="mistral", text_fixed=False)


# Mistral3Model / Mistral3Model.Ministral3Model
@register("Mistral3ForConditionalGeneration")
class Mistral3Model(LlamaModel):
    model_arch = MODEL_ARCH.MISTRAL3
    configs = (MISTRAL3_CONFIG,)
    inverse_names = True  # --hf-names: the language model's names (model.layers.*), as a text-only checkpoint has them
