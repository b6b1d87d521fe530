"""IBM Granite (dense): conversion/granite.py GraniteModel (llama.cpp as vendored in llama-cpp-python 0.3.36).

A LlamaModel whose config's *_multiplier / logits_scaling keys become the GGUF scale keys; GraniteMoeModel
(GraniteMoe, GraniteMoeShared) adds stacked experts whose fused gate/up tensor is split in two. The hybrid
(Mamba-2), SWA, switch and vision variants are not ported."""

from __future__ import annotations

from gguf import MODEL_ARCH

from ..errors import UnsupportedError
from .base import ATTN_BIASES, LLAMA_LAYER, ref_type, register, middle_rows, rows
from .hparams import HFConfig
from .llama import LlamaModel
from .spec import TensorSpec


def _kv_heads(hp: dict) -> None:
    # configuration_granite*.py Granite*Config.__init__: "for backward compatibility"
    if hp.get("num_key_value_heads") is None:
        hp["num_key_value_heads"] = hp["num_attention_heads"]
    # rope_config_validation (no `type` -> `rope_type` alias in these classes) rejects a rope_scaling without
    # rope_type; AutoConfig then fails and the converter reads config.json raw, without the class defaults
    rs = hp.get("rope_scaling")
    if isinstance(rs, dict) and "rope_type" not in rs:
        raise UnsupportedError("rope_scaling without 'rope_type' (transformers 4.57.6 rejects it and llama.cpp's "
                               "converter then reads config.json without the config class defaults; not emulated)")


# transformers 4.57.6 configuration_granite.py __init__ defaults, for the keys llama.cpp reads
GRANITE_CONFIG = HFConfig("granite", dict(
    vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=None, max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False,
    rope_theta=10000.0, rope_scaling=None, attention_bias=False, mlp_bias=False, embedding_multiplier=1.0,
    logits_scaling=1.0, residual_multiplier=1.0, attention_multiplier=1.0,
), post_init=_kv_heads)


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


# transformers 4.57.6 configuration_granitemoe.py / configuration_granitemoeshared.py __init__ defaults
_GRANITE_MOE = dict(
    vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=None, max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False,
    rope_theta=10000.0, rope_scaling=None, attention_bias=False, embedding_multiplier=1.0, logits_scaling=1.0,
    residual_multiplier=1.0, attention_multiplier=1.0, num_local_experts=8, num_experts_per_tok=2,
)
GRANITE_MOE_CONFIG = HFConfig("granitemoe", _GRANITE_MOE, post_init=_kv_heads)
GRANITE_MOE_SHARED_CONFIG = HFConfig("granitemoeshared", _GRANITE_MOE | dict(shared_intermediate_size=0), post_init=_kv_heads)

_ATTN = {k: v for k, v in LLAMA_LAYER.items() if not k.startswith("mlp.")}
# experts stored stacked: input_linear (n_expert, 2 * n_ff, n_embd) is gate and up fused, split by modify_tensors
GRANITE_MOE_LAYER = _ATTN | {
    "block_sparse_moe.router.layer": "ffn_gate_inp",
    "block_sparse_moe.input_linear": "ffn_gate_up_exps",
    "block_sparse_moe.output_linear": "ffn_down_exps",
}
GRANITE_SHARED_MLP = {"shared_mlp.input_linear": "ffn_gate_up_shexp", "shared_mlp.output_linear": "ffn_down_shexp"}


@register("GraniteMoeForCausalLM", "GraniteMoeSharedForCausalLM")
class GraniteMoeModel(GraniteModel):
    model_arch = MODEL_ARCH.GRANITE_MOE
    configs = (GRANITE_MOE_CONFIG, GRANITE_MOE_SHARED_CONFIG)
    bias_ok = ATTN_BIASES
    inverse_names = False  # stacked and fused experts have no per-tensor HF name
    split_modules = {"ffn_gate_up_exps": ("ffn_gate_exps", "ffn_up_exps"),
                     "ffn_gate_up_shexp": ("ffn_gate_shexp", "ffn_up_shexp")}

    def layer_modules(self, bid: int) -> dict[str, str]:
        # GraniteMoeShared: a shared MLP in every layer when shared_intermediate_size > 0
        return GRANITE_MOE_LAYER | (GRANITE_SHARED_MLP if self.hp.get("shared_intermediate_size") else {})

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        hp = self.hp
        n = hp.get("num_local_experts")
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            # the converter would write the shared MLP as a dense FFN; neither transformers nor llama.cpp run that
            raise UnsupportedError(f"{self.config_path}: 'num_local_experts' must be a positive integer for {self.hf_names[0]}, got {n!r}")
        e, f = hp["hidden_size"], hp["intermediate_size"]
        sf = hp.get("shared_intermediate_size") or 0
        return super().tensor_shapes() | {
            "ffn_gate_inp": (n, e), "ffn_gate_up_exps": (n, 2 * f, e), "ffn_down_exps": (n, e, f),
            "ffn_gate_up_shexp": (2 * sf, e), "ffn_down_shexp": (e, sf),
        }

    # GraniteMoeModel.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        if v := self.hp.get("shared_intermediate_size"):
            self.u32("expert_shared_feed_forward_length", v, "shared_intermediate_size")

    # GraniteMoeModel.modify_tensors: input_linear (gate and up fused) split in two
    def modify_tensors(self, t, name, gname, base, bid):
        if base == "ffn_gate_up_exps":
            n, f2, e = t[1]
            f = f2 // 2
            return [TensorSpec(name=f"blk.{bid}.{g}.weight", shape=(n, f, e), sources=(t[0],),
                               ref_type=ref_type(g + ".weight", 3), transform=middle_rows(a, a + f))
                    for g, a in (("ffn_gate_exps", 0), ("ffn_up_exps", f))]
        if base == "ffn_gate_up_shexp":
            f = t[1][0] // 2
            return [self.spec(f"blk.{bid}.{g}.weight", t, shape=(f, t[1][1]), row_perm=rows(a, a + f))
                    for g, a in (("ffn_gate_shexp", 0), ("ffn_up_shexp", f))]
        return super().modify_tensors(t, name, gname, base, bid)
