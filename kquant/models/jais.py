"""Jais 2 (Inception / G42): conversion/jais.py Jais2Model (llama.cpp as vendored in llama-cpp-python 0.3.36).

A TextModel (TextModel.set_gguf_parameters, the GPT-2 vocabulary) plus the rotary dimension: LayerNorms with
biases, q/k/v/o and an up/down MLP (ReLU^2, no gate) with biases, no Q/K permutation. transformers 4.57.6 has
no Jais2Config: the converter reads config.json as it is. The original Jais (`JAISLMHeadModel`, ALiBi) is not
ported."""

from __future__ import annotations

from gguf import MODEL_ARCH

from ..errors import InputError
from .base import ATTN_BIASES, TextModel, register
from .hparams import HFConfig

JAIS2_CONFIG = HFConfig("jais2", {}, raw=True)

JAIS2_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


@register("Jais2ForCausalLM")
class Jais2Model(TextModel):
    model_arch = MODEL_ARCH.JAIS2
    configs = (JAIS2_CONFIG,)
    layer = JAIS2_LAYER
    globals_bias_ok = ("model.norm",)
    bias_ok = ATTN_BIASES + ("input_layernorm", "post_attention_layernorm", "mlp.up_proj", "mlp.down_proj")
    # llama.cpp's jais2 loader requires these biases
    bias_required = ("input_layernorm", "post_attention_layernorm", "self_attn.o_proj", "mlp.up_proj", "mlp.down_proj")
    inverse_names = True

    def check_complete(self, out) -> None:
        super().check_complete(out)
        if not any(t.name == "output_norm.bias" for t in out):
            raise InputError(f"{self.folder}: missing tensor model.norm.bias")

    # Jais2Model.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        hp = self.hp
        head_dim = hp.get("head_dim", hp["hidden_size"] // hp["num_attention_heads"])
        self.u32("rope.dimension_count", head_dim, "head_dim")
