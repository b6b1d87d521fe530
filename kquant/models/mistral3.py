"""Mistral 3 (Mistral Small 3.1 / 3.2, Ministral 3): the language model of Mistral3ForConditionalGeneration
and Ministral3ForCausalLM, conversion/mistral3.py (llama.cpp as vendored in llama-cpp-python 0.3.36).

Upstream's Mistral3Model delegates to Ministral3Model, a LlamaModel under the mistral3
architecture, for every text_config but `mistral4` (a DeepseekV2Model). transformers 4.57.6's
Mistral3Config builds the text config class named by text_config["model_type"] ("mistral" when
absent). For the `mistral` one Ministral3Model adds nothing to LlamaModel. `ministral3` (Ministral 3)
has no transformers 4.57.6 class: AutoConfig fails and the converter reads config.json as it is
(text_config merged over the top level); Ministral3Model then adds the YaRN log multiplier and the
Llama-4 attention temperature scale. The vision tower and projector are dropped (`vision_tower.*`,
`multi_modal_projector.*`), as the converter does without --mmproj.
"""

from __future__ import annotations

from gguf import MODEL_ARCH

from ..errors import InputError, UnsupportedError
from .hparams import HFConfig
from .base import register
from .llama import LlamaModel

# transformers configuration_mistral3.py Mistral3Config (the text class: text_config["model_type"], default mistral)
MISTRAL3_CONFIG = HFConfig("mistral3", dict(
    image_token_index=10, projector_hidden_act="gelu", vision_feature_layer=-1, multimodal_projector_bias=False,
    spatial_merge_size=2,
), text_config="mistral", text_fixed=False)
# Ministral 3: no config class in transformers 4.57.6 (config.json read as it is)
MINISTRAL3_CONFIG = HFConfig("ministral3", {}, raw=True)


# Mistral3Model / Mistral3Model.Ministral3Model
@register("Mistral3ForConditionalGeneration", "Ministral3ForCausalLM")
class Mistral3Model(LlamaModel):
    model_arch = MODEL_ARCH.MISTRAL3
    configs = (MISTRAL3_CONFIG, MINISTRAL3_CONFIG)
    inverse_names = True  # --hf-names: the language model's names (model.layers.*), as a text-only checkpoint has them

    # Mistral3Model.Ministral3Model.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        if self.hp.get("model_type") == "ministral3":
            rp = self.rp
            if not rp:  # upstream: assert rope_params
                raise InputError(f"{self.config_path}: ministral3 needs 'rope_parameters'")
            if rp.get("rope_type") != "yarn":  # upstream: assert rope_type == "yarn"
                raise UnsupportedError(f"{self.config_path}: ministral3 rope_type {rp.get('rope_type')!r} is not "
                                       "supported (the converter requires 'yarn')")
            for k in ("mscale_all_dim", "llama_4_scaling_beta"):
                if k not in rp:
                    raise InputError(f"{self.config_path}: ministral3 needs 'rope_parameters.{k}'")
            self.f32("rope.scaling.yarn_log_multiplier", rp["mscale_all_dim"], "rope_parameters.mscale_all_dim")
            self.f32("attention.temperature_scale", rp["llama_4_scaling_beta"], "rope_parameters.llama_4_scaling_beta")
