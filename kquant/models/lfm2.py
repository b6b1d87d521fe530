"""Liquid LFM2 and LFM2-MoE (short-convolution + attention hybrids): conversion/lfm2.py LFM2Model and
LFM2MoeModel (llama.cpp as vendored in llama-cpp-python 0.3.36). The ColBERT / embedding, vision and
audio variants are not ported."""

from __future__ import annotations

from gguf import MODEL_ARCH

from ..errors import InputError
from .base import Experts, TextModel, register
from .hparams import HFConfig
from .mamba import reshaped


# transformers 4.57.6 configuration_lfm2.py Lfm2Config.__init__: the original config keys (theta,
# block_ff_dim, tie_embedding) win; layer_types from full_attn_idxs (consumed, not kept) when absent
def _lfm2_init(hp: dict) -> None:
    if "theta" in hp:
        hp["rope_theta"] = hp["theta"]
    if "block_ff_dim" in hp:
        hp["intermediate_size"] = hp["block_ff_dim"]
    if "tie_embedding" in hp:
        hp["tie_word_embeddings"] = hp["tie_embedding"]
    idxs = hp.pop("full_attn_idxs", None)
    if hp.get("layer_types") is None:
        idxs = idxs if idxs is not None else list(range(hp["num_hidden_layers"]))
        if not isinstance(idxs, list):
            raise InputError(f"config.json: 'full_attn_idxs' must be a list, got {idxs!r}")
        hp["layer_types"] = ["full_attention" if i in idxs else "conv" for i in range(hp["num_hidden_layers"])]


LFM2_CONFIG = HFConfig("lfm2", dict(
    vocab_size=65536, hidden_size=2560, intermediate_size=12288, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, max_position_embeddings=128_000, norm_eps=0.00001, tie_word_embeddings=True,
    rope_theta=1000000.0, conv_bias=False, conv_L_cache=3, block_multiple_of=256, block_ffn_dim_multiplier=1.0,
    block_auto_adjust_ff_dim=True, layer_types=None,
), post_init=_lfm2_init)
# transformers 4.57.6 has no lfm2_moe config class: the converter reads config.json as it is
LFM2_MOE_CONFIG = HFConfig("lfm2_moe", {})

LFM2_GLOBALS = {"model.embed_tokens": "token_embd", "model.embedding_norm": "token_embd_norm", "lm_head": "output"}
LFM2_FFN = {"feed_forward.w1": "ffn_gate", "feed_forward.w2": "ffn_down", "feed_forward.w3": "ffn_up"}
LFM2_NORMS = {"operator_norm": "attn_norm", "ffn_norm": "ffn_norm"}
LFM2_ATTN = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.out_proj": "attn_output", "self_attn.q_layernorm": "attn_q_norm", "self_attn.k_layernorm": "attn_k_norm",
}
LFM2_CONV = {"conv.conv": "shortconv.conv", "conv.in_proj": "shortconv.in_proj", "conv.out_proj": "shortconv.out_proj"}
LFM2_MOE = {"feed_forward.gate": "ffn_gate_inp", "feed_forward.expert_bias": "exp_probs_b"}
LFM2_EXPERTS = Experts(
    source="model.layers.{bid}.feed_forward.experts.{xid}.{w}.weight",
    order=(("w1", "ffn_gate_exps"), ("w2", "ffn_down_exps"), ("w3", "ffn_up_exps")),
    count_keys=("num_local_experts", "num_experts"),
)
NORM_OF = {"attn_q": "attn_norm", "attn_k": "attn_norm", "attn_v": "attn_norm", "shortconv.in_proj": "attn_norm",
           "ffn_gate": "ffn_norm", "ffn_up": "ffn_norm", "ffn_gate_exps": "ffn_norm", "ffn_up_exps": "ffn_norm",
           "ffn_gate_inp": "ffn_norm"}


@register("Lfm2ForCausalLM", "LFM2ForCausalLM")
class LFM2Model(TextModel):
    model_arch = MODEL_ARCH.LFM2
    inverse_names = True  # --hf-names: "model." names (not "lfm."), the short convolutions (e, 1, L) again
    configs = (LFM2_CONFIG,)
    globals_ = LFM2_GLOBALS
    layer = LFM2_NORMS | LFM2_FFN | LFM2_ATTN
    bias_ok = ("conv.conv", "conv.in_proj", "conv.out_proj")
    norm_of = NORM_OF

    def is_conv(self, bid: int) -> bool:
        """LFM2Model: every layer type but "conv" is attention."""
        lt = self.hp.get("layer_types")
        if not isinstance(lt, list) or len(lt) != self.block_count:
            raise InputError(f"{self.config_path}: layer_types must be a list of num_hidden_layers ({self.block_count}) entries")
        return lt[bid] == "conv"

    def layer_modules(self, bid: int) -> dict[str, str]:
        return LFM2_NORMS | LFM2_FFN | (LFM2_CONV if self.is_conv(bid) else LFM2_ATTN)

    def tied(self) -> bool:
        return bool(self.hp.get("tie_word_embeddings", self.hp.get("tie_embedding", False)))

    # LFM2Model.filter_tensors (audio tensors are skipped by the multimodal filter)
    def filter_name(self, name: str) -> str | None:
        return super().filter_name(name.replace("lfm.", "model."))

    def ff_dim(self) -> int:
        """LFM2Model._add_feed_forward_length (Lfm2MLP's own size)."""
        hp = self.hp
        ff = self.find_hparam(["block_ff_dim", "intermediate_size"])
        if hp["block_auto_adjust_ff_dim"]:
            ff = int(2 * ff / 3)
            if (mult := hp["block_ffn_dim_multiplier"]) is not None:
                ff = int(mult * ff)
            m = hp["block_multiple_of"]
            ff = m * ((ff + m - 1) // m)
        return ff

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        hp = self.hp
        e, f = hp["hidden_size"], self.ff_dim()
        s = super().tensor_shapes()
        return s | {"ffn_gate": (f, e), "ffn_up": (f, e), "ffn_down": (e, f), "token_embd_norm": (e,),
                    "shortconv.conv": (e, 1, hp["conv_L_cache"]), "shortconv.in_proj": (3 * e, e),
                    "shortconv.out_proj": (e, e)}

    @classmethod
    def hf_layer(cls, kinds):
        return LFM2_NORMS | LFM2_FFN | LFM2_ATTN | LFM2_CONV

    @classmethod
    def hf_tensor_shape(cls, base, is_bias, shape):
        return (shape[0], 1, shape[1]) if base == "shortconv.conv" and not is_bias and len(shape) == 2 else shape

    # LFM2Model.modify_tensors: the conv op needs a 2-D tensor
    def modify_tensors(self, t, name, gname, base, bid):
        if "conv.conv" in name and len(t[1]) == 3 and t[1][1] == 1:
            shape = (t[1][0], t[1][2])
            return [self.spec(gname, t, shape=shape, transform=reshaped(shape))]
        return super().modify_tensors(t, name, gname, base, bid)

    def kv_heads_per_layer(self) -> list[int]:
        n = self.hp["num_key_value_heads"]
        return [0 if self.is_conv(i) else n for i in range(self.block_count)]

    def set_gguf_parameters(self) -> None:
        hp = self.hp
        n_kv = hp["num_key_value_heads"]
        hp["num_key_value_heads"] = self.kv_heads_per_layer()  # set only for attention layers (upstream, in place)
        try:
            super().set_gguf_parameters()
        finally:
            hp["num_key_value_heads"] = n_kv
        self.u32("vocab_size", hp["vocab_size"], "vocab_size")
        self.u32("shortconv.l_cache", hp["conv_L_cache"], "conv_L_cache")
        self.f32("attention.layer_norm_rms_epsilon", hp["norm_eps"], "norm_eps")
        self.u32("feed_forward_length", self.ff_dim(), "block_ff_dim")


@register("Lfm2MoeForCausalLM")
class LFM2MoeModel(LFM2Model):
    model_arch = MODEL_ARCH.LFM2MOE
    configs = (LFM2_MOE_CONFIG,)
    bias_ok = LFM2Model.bias_ok + ("feed_forward.expert_bias",)
    bias_only = ("feed_forward.expert_bias",)
    experts = LFM2_EXPERTS

    @classmethod
    def hf_layer(cls, kinds):
        return super().hf_layer(kinds) | LFM2_MOE

    def is_conv(self, bid: int) -> bool:
        super().is_conv(bid)  # checks layer_types
        return self.hp["layer_types"][bid] != "full_attention"  # LFM2MoeModel: only "full_attention" is attention

    def n_dense(self) -> int:
        n = self.hp.get("num_dense_layers")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise InputError(f"{self.config_path}: 'num_dense_layers' must be a non-negative integer, got {n!r}")
        return n

    def layer_modules(self, bid: int) -> dict[str, str]:
        ffn = LFM2_FFN if bid < self.n_dense() else LFM2_MOE
        return LFM2_NORMS | ffn | (LFM2_CONV if self.is_conv(bid) else LFM2_ATTN)

    def layer_experts(self, bid: int) -> Experts | None:
        return None if bid < self.n_dense() else self.experts

    # LFM2MoeModel.filter_tensors
    def filter_name(self, name: str) -> str | None:
        if name.endswith(".expert_bias"):
            name = name.replace(".expert_bias", ".expert_bias.bias")
        return TextModel.filter_name(self, name)

    def ff_dim(self) -> int:
        return self.hp["intermediate_size"]

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        s = super().tensor_shapes()
        return s | {"exp_probs_b": (self._n_expert,)}

    def set_gguf_parameters(self) -> None:
        hp = self.hp
        n_kv = hp["num_key_value_heads"]
        hp["num_key_value_heads"] = self.kv_heads_per_layer()
        try:
            TextModel.set_gguf_parameters(self)
        finally:
            hp["num_key_value_heads"] = n_kv
        self.u32("expert_feed_forward_length", hp["moe_intermediate_size"], "moe_intermediate_size")
        self.u32("leading_dense_block_count", self.n_dense(), "num_dense_layers")
        self.kv.add_uint32(self.key("expert_gating_func"), 2)  # gguf ExpertGatingFuncType.SIGMOID
        self.u32("vocab_size", hp["vocab_size"], "vocab_size")
        self.u32("shortconv.l_cache", hp["conv_L_cache"], "conv_L_cache")
