"""GLM-4 and GLM-4.5/4.6/4.7 (MoE): conversion/glm.py Glm4Model and Glm4MoeModel (llama.cpp as
vendored in llama-cpp-python 0.3.36).

GLM-4 (0414) is a dense decoder with fused gate/up projections (`ffn_up`, 2 * n_ff rows), q/k/v
biases, post-attention and post-MLP norms and partial rotary embeddings. GLM-4.5 and later
(`Glm4MoeForCausalLM`) have `first_k_dense_replace` dense layers, then a sigmoid-routed MoE
(routed experts stacked into `*_exps`, shared experts, `e_score_correction_bias`), and
`num_nextn_predict_layers` NextN/MTP layers after the main ones, which the converter keeps by
default (without --no-mtp) as extra blocks: block_count includes them and their eh_proj / enorm /
hnorm / embed_tokens / shared_head tensors become `blk.N.nextn.*`.

GLM-4.1V (`Glm4vForConditionalGeneration`) and GLM-4.5V (`Glm4vMoeForConditionalGeneration`): the
converter registers them on Glm4Model / Glm4MoeModel; their text model (`text_config`, under
model.language_model.*) is written as GLM-4 / GLM-4.5 under the glm4 / glm4moe architectures, with
the M-RoPE sections (`rope_scaling.mrope_section`) as rope.dimension_sections. With M-RoPE,
Glm4Model permutes the rotary rows of Q/K (weights and biases) to NeoX order (normal_to_neox:
per head, even rotary rows, then odd ones, then the non-rotary rows); the MoE release needs no
permutation. The vision tower (model.visual.*) is not converted, as without --mmproj.

Not registered: `Glm4MoeLiteForCausalLM` (a DeepSeek-2 MLA model)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from gguf import MODEL_ARCH

from ..errors import InputError, UnsupportedError
from ..io.gguf_kv import TOK_LIST, TOK_MODEL, TOK_PRE, TOK_TYPE
from .. import vocab as V
from .base import LLAMA_LAYER, NORM_OF, QK_NORM_LAYER, Experts, TextModel, register
from .deepseek import _NEXTN as DEEPSEEK_NEXTN, DeepseekV2Model
from .hparams import HFConfig

# transformers 4.57.6 configuration_glm4.py Glm4Config.__init__ defaults, for the keys llama.cpp reads
GLM4_CONFIG = HFConfig("glm4", dict(
    vocab_size=151552, hidden_size=4096, intermediate_size=13696, num_hidden_layers=40, num_attention_heads=32,
    num_key_value_heads=2, partial_rotary_factor=0.5, head_dim=128, max_position_embeddings=131072,
    rms_norm_eps=0.00000015625, tie_word_embeddings=False, rope_theta=10000.0, attention_bias=True,
))
# configuration_glm4_moe.py Glm4MoeConfig.__init__ (no head_dim default; rope_scaling "type" copied to "rope_type")
GLM4_MOE_CONFIG = HFConfig("glm4_moe", dict(
    vocab_size=151552, hidden_size=4096, intermediate_size=10944, num_hidden_layers=46, num_attention_heads=96,
    partial_rotary_factor=0.5, num_key_value_heads=8, max_position_embeddings=131072, rms_norm_eps=1e-5,
    tie_word_embeddings=False, rope_theta=10000.0, rope_scaling=None, attention_bias=False,
    moe_intermediate_size=1408, num_experts_per_tok=8, n_shared_experts=1, n_routed_experts=128,
    routed_scaling_factor=1.0, n_group=1, topk_group=1, first_k_dense_replace=1, norm_topk_prob=True,
    use_qk_norm=False,
), rope_type_alias=True)
# configuration_glm4v.py Glm4vTextConfig.__init__ (no head_dim, partial_rotary_factor or attention_bias)
# and Glm4vConfig.__init__ (the composite: text_config, vision_config and the image/video token ids)
GLM4V_TEXT_CONFIG = HFConfig("glm4v_text", dict(
    vocab_size=151552, hidden_size=4096, intermediate_size=13696, num_hidden_layers=40, num_attention_heads=32,
    num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-5, tie_word_embeddings=False,
    rope_theta=10000.0, rope_scaling=None, image_token_id=None, video_token_id=None,
), rope_type_alias=True, kv_heads_fallback=True)
GLM4V_CONFIG = HFConfig("glm4v", dict(
    image_token_id=151343, video_token_id=151344, image_start_token_id=151339, image_end_token_id=151340,
    video_start_token_id=151341, video_end_token_id=151342,
), text_config="glm4v_text")
# configuration_glm4v_moe.py Glm4vMoeTextConfig.__init__ / Glm4vMoeConfig.__init__
GLM4V_MOE_TEXT_CONFIG = HFConfig("glm4v_moe_text", dict(
    vocab_size=151424, hidden_size=4096, intermediate_size=10944, num_hidden_layers=46, num_attention_heads=96,
    partial_rotary_factor=0.5, num_key_value_heads=8, max_position_embeddings=65536, rms_norm_eps=1e-5,
    tie_word_embeddings=False, rope_theta=10000.0, rope_scaling=None, attention_bias=True,
    moe_intermediate_size=1408, num_experts_per_tok=8, n_shared_experts=1, n_routed_experts=128,
    routed_scaling_factor=1.0, n_group=1, topk_group=1, first_k_dense_replace=1, norm_topk_prob=True,
), rope_type_alias=True)
GLM4V_MOE_CONFIG = HFConfig("glm4v_moe", dict(
    image_token_id=151363, video_token_id=151364, image_start_token_id=151339, image_end_token_id=151340,
    video_start_token_id=151341, video_end_token_id=151342,
), text_config="glm4v_moe_text")

QKV_BIASES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
ATTENTION = {k: v for k, v in LLAMA_LAYER.items() if not k.startswith("mlp.") and k != "post_attention_layernorm"}
GLM4_LAYER = ATTENTION | {
    "post_attention_layernorm": "ffn_norm",
    "post_self_attn_layernorm": "post_attention_norm",
    "post_mlp_layernorm": "post_ffw_norm",
    "mlp.gate_up_proj": "ffn_up",  # gate and up fused: (2 * n_ff, n_embd)
    "mlp.down_proj": "ffn_down",
}
# GLM4_MOE has no ffn_norm: gguf-py maps post_attention_layernorm to post_attention_norm for it
MOE_ATTENTION = ATTENTION | {"post_attention_layernorm": "post_attention_norm"}
DENSE_MLP = {"mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
ROUTER = {"mlp.gate": "ffn_gate_inp", "mlp.gate.e_score_correction": "exp_probs_b"}
SHARED = {
    "mlp.shared_experts.gate_proj": "ffn_gate_shexp",
    "mlp.shared_experts.up_proj": "ffn_up_shexp",
    "mlp.shared_experts.down_proj": "ffn_down_shexp",
}
NEXTN = {
    "eh_proj": "nextn.eh_proj", "enorm": "nextn.enorm", "hnorm": "nextn.hnorm",
    "embed_tokens": "nextn.embed_tokens", "shared_head.head": "nextn.shared_head_head",
    "shared_head.norm": "nextn.shared_head_norm",
}
# llama.cpp's glm4-moe loader: the NextN block's own embeddings and head are optional (it falls back
# to token_embd / output)
NEXTN_OPTIONAL = ("embed_tokens", "shared_head.head", "shared_head.norm")
GLM4_MOE_EXPERTS = Experts(
    source="model.layers.{bid}.mlp.experts.{xid}.{w}.weight",
    order=(("down_proj", "ffn_down_exps"), ("gate_proj", "ffn_gate_exps"), ("up_proj", "ffn_up_exps")),
    count_keys=("n_routed_experts",),
)
EXPERT_GATING_SIGMOID = 2  # gguf-py constants.py ExpertGatingFuncType.SIGMOID


def added_vocab(folder, model_type: str) -> dict[str, int]:
    """transformers' tokenizer.get_added_vocab(): added token content -> id (the higher id wins)."""
    tok = V.HFTokenizer(folder, model_type, only=())
    return {content: i for i, (content, _, _) in sorted(tok.added.items())}


# TextModel._set_vocab_glm / Glm4Model.set_vocab
def set_glm_special(rec, folder, model_type: str, ids: dict[str, str], hp: dict, tokenizer_pre: str | None) -> None:
    """The gpt2 vocabulary, then SpecialVocab with `ids` ({type: added token}) set where the files leave them unset."""
    tokens, toktypes, tokpre = V.get_vocab_base(folder, hp, model_type, tokenizer_pre)
    rec.add_string(TOK_MODEL, "gpt2")
    rec.add_string(TOK_PRE, tokpre)
    rec.add_array(TOK_LIST, tokens)
    rec.add_array(TOK_TYPE, toktypes)
    added = added_vocab(folder, model_type)
    sv = V.SpecialVocab(folder, load_merges=True)
    for typ, content in ids.items():
        if content not in added:
            raise UnsupportedError(f"{folder / 'tokenizer.json'}: GLM vocabulary without the added token {content!r}")
        sv.set_special_token(typ, added[content])
    sv.add_to_gguf(rec)


def rope_dimension(model: TextModel, default_factor: float) -> int:
    """int(head_dim * partial_rotary_factor) (Glm4Model / Glm4MoeModel.set_gguf_parameters)."""
    hp = model.hp
    rope_dim = hp.get("head_dim")
    if rope_dim is None:
        rope_dim = hp["hidden_size"] // hp["num_attention_heads"]
    factor = model.rp.get("partial_rotary_factor", default_factor)
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor <= 1:
        raise InputError(f"{model.config_path}: 'partial_rotary_factor' must be a number in (0, 1], got {factor!r}")
    return int(rope_dim * factor)


def nextn_layers(model: TextModel) -> int:
    """config.json's num_nextn_predict_layers (0 when absent): the NextN/MTP blocks after the main ones."""
    n = model.hp.get("num_nextn_predict_layers", 0)
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 64:
        raise InputError(f"{model.config_path}: 'num_nextn_predict_layers' must be an integer in [0, 64], got {n!r}")
    return n


# Glm4Model.normal_to_neox, as a row gather: out row (h, i) = source row (h, perm[i])
def normal_to_neox(n_rows: int, head_dim: int, rot: int) -> np.ndarray:
    """Row order of normal_to_neox(W): per head of `head_dim` rows, the even rows of the first `rot`
    (int(head_dim * partial_rotary_factor)), the odd ones, then the non-rotary rows."""
    if head_dim <= 0 or n_rows % head_dim:
        raise InputError(f"cannot permute {n_rows} rows into heads of {head_dim} rows (Glm4Model.normal_to_neox)")
    if rot % 2 or not 0 <= rot <= head_dim:
        raise InputError(f"rotary dimension {rot} of heads of {head_dim} rows must be even (Glm4Model.normal_to_neox)")
    one = np.concatenate([np.arange(0, rot, 2), np.arange(1, rot, 2), np.arange(rot, head_dim)]).astype(np.int64)
    return (np.arange(n_rows // head_dim, dtype=np.int64)[:, None] * head_dim + one[None, :]).reshape(-1)


@register("Glm4ForCausalLM", "Glm4vForConditionalGeneration")
class Glm4Model(TextModel):
    model_arch = MODEL_ARCH.GLM4
    configs = (GLM4_CONFIG, GLM4V_CONFIG, GLM4V_TEXT_CONFIG)
    layer = GLM4_LAYER
    bias_ok = QKV_BIASES
    inverse_names = True
    # --hf-names on a file with M-RoPE sections (inverse_for_file): the rotary dimension of its Q/K rows
    mrope_rot_dim: ClassVar[int] = 0

    # Glm4Model.modify_tensors: with M-RoPE the Q/K rows (weights and biases) go to NeoX order
    def modify_tensors(self, t, name, gname, base, bid):
        if "mrope_section" in self.rp and name.endswith(("q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias")):
            hp = self.hp
            head_dim = hp.get("head_dim", hp["hidden_size"] // hp["num_attention_heads"])
            rot = int(head_dim * self.rp.get("partial_rotary_factor", 0.5))
            return [self.spec(gname, t, row_perm=normal_to_neox(t[1][0], head_dim, rot))]
        return super().modify_tensors(t, name, gname, base, bid)

    @classmethod
    def inverse_for_file(cls, value):
        """A GLM-4 file with rope.dimension_sections came from M-RoPE (GLM-4.1V): its Q/K rows are permuted."""
        arch = cls.arch_name()
        if value(f"{arch}.rope.dimension_sections") is None:
            return cls
        rot = value(f"{arch}.rope.dimension_count")
        if isinstance(rot, bool) or not isinstance(rot, int) or rot <= 0 or rot % 2:
            raise InputError(f"key '{arch}.rope.dimension_count' is {rot!r}, expected a positive even integer")
        return type("Glm4vInverse", (cls,), {"undo_permute": True, "mrope_rot_dim": rot})

    @classmethod
    def hf_row_order(cls, base, n_rows, n_head, n_head_kv):
        if not cls.mrope_rot_dim or base not in ("attn_q", "attn_k"):
            return None
        head_dim = n_rows // (n_head if base == "attn_q" else n_head_kv)
        return np.argsort(normal_to_neox(n_rows, head_dim, cls.mrope_rot_dim))

    def tensor_shapes(self):
        shapes = super().tensor_shapes()
        f, e = shapes["ffn_up"]
        return shapes | {"ffn_up": (2 * f, e)}

    # Glm4Model.set_vocab
    def set_vocab(self, tokenizer_pre: str | None = None) -> None:
        ids = {"eos": "<|endoftext|>", "eot": "<|user|>", "unk": "<|endoftext|>", "bos": "<|endoftext|>"}
        set_glm_special(self.kv, self.tok_folder, self.hp["model_type"], ids, self.hp, tokenizer_pre)

    # Glm4Model.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        self.u32("rope.dimension_count", rope_dimension(self, 0.5), "partial_rotary_factor")


# the converter registers both on Glm4MoeModel ("unlike GLM4V non-MoE, we don't need to permute Q/K here
# since GLM4V_MOE uses Neox ordering already")
@register("Glm4MoeForCausalLM", "Glm4vMoeForConditionalGeneration")
class Glm4MoeModel(TextModel):
    model_arch = MODEL_ARCH.GLM4_MOE
    configs = (GLM4_MOE_CONFIG, GLM4V_MOE_CONFIG, GLM4V_MOE_TEXT_CONFIG)
    layer = MOE_ATTENTION | QK_NORM_LAYER | DENSE_MLP | ROUTER | SHARED | NEXTN  # any layer's modules
    bias_ok = QKV_BIASES
    bias_only = ("mlp.gate.e_score_correction",)
    optional = NEXTN_OPTIONAL
    experts = GLM4_MOE_EXPERTS
    inverse_names = True
    norm_of = {k: ("post_attention_norm" if v == "ffn_norm" else v) for k, v in NORM_OF.items()}

    # Glm4MoeModel.__init__: the NextN/MTP layers are extra blocks (the converter's default, no --no-mtp)
    def __init__(self, hp, **kw):
        super().__init__(hp, **kw)
        self.n_main = hp["num_hidden_layers"]
        self.block_count = self.n_main + nextn_layers(self)

    def prepare(self) -> None:
        hp = self.hp
        for k in ("first_k_dense_replace", "n_shared_experts"):
            v = hp.get(k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InputError(f"{self.config_path}: {k!r} must be a non-negative integer, got {v!r}")

    def layer_modules(self, bid: int) -> dict[str, str]:
        hp = self.hp
        mods = dict(MOE_ATTENTION)
        if hp.get("use_qk_norm"):
            mods |= QK_NORM_LAYER
        if bid < hp["first_k_dense_replace"]:
            mods |= DENSE_MLP
        else:
            mods |= ROUTER
            if hp["n_shared_experts"] > 0:
                mods |= SHARED
        if bid >= self.n_main:
            mods |= NEXTN
        return mods

    def layer_experts(self, bid: int) -> Experts | None:
        return None if bid < self.hp["first_k_dense_replace"] else self.experts

    def tensor_shapes(self):
        shapes = super().tensor_shapes()
        e, n_vocab, n_exp = self.hp["hidden_size"], self.hp["vocab_size"], self._n_expert
        f_sh = (self.hp.get("moe_intermediate_size") or 0) * (self.hp.get("n_shared_experts") or 0)
        return shapes | {
            "exp_probs_b": (n_exp,),
            "ffn_gate_shexp": (f_sh, e), "ffn_up_shexp": (f_sh, e), "ffn_down_shexp": (e, f_sh),
            "nextn.eh_proj": (e, 2 * e), "nextn.enorm": (e,), "nextn.hnorm": (e,), "nextn.embed_tokens": (n_vocab, e),
            "nextn.shared_head_head": (n_vocab, e), "nextn.shared_head_norm": (e,),
        }

    # TextModel._set_vocab_glm
    def set_vocab(self, tokenizer_pre: str | None = None) -> None:
        ids = {"bos": "[gMASK]", "eot": "<|user|>", "unk": "<|endoftext|>", "eom": "<|observation|>"}
        set_glm_special(self.kv, self.tok_folder, self.hp["model_type"], ids, self.hp, tokenizer_pre)

    # Glm4MoeModel.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        hp = self.hp
        self.u32("rope.dimension_count", rope_dimension(self, 0.5), "partial_rotary_factor")
        if (v := hp.get("n_routed_experts")) is not None:
            self.u32("expert_count", v, "n_routed_experts")
        if (v := hp.get("moe_intermediate_size")) is not None:
            self.u32("expert_feed_forward_length", v, "moe_intermediate_size")
        if (v := hp.get("n_shared_experts")) is not None:
            self.u32("expert_shared_count", v, "n_shared_experts")
        if (v := hp.get("first_k_dense_replace")) is not None:
            self.u32("leading_dense_block_count", v, "first_k_dense_replace")
        self.kv.add_uint32(self.key("expert_gating_func"), EXPERT_GATING_SIGMOID)
        if (v := hp.get("routed_scaling_factor")) is not None:
            self.f32("expert_weights_scale", v, "routed_scaling_factor")
        if (v := hp.get("norm_topk_prob")) is not None:
            if not isinstance(v, bool):
                raise InputError(f"{self.config_path}: 'norm_topk_prob' must be true or false, got {v!r}")
            self.kv.add_bool(self.key("expert_weights_norm"), v)
        if (v := hp.get("num_nextn_predict_layers")) is not None:
            self.u32("nextn_predict_layers", v, "num_nextn_predict_layers")


# GLM-4.7-Flash has no config class in transformers 4.57.6: the converter reads config.json as it is
GLM4_MOE_LITE_CONFIG = HFConfig("glm4_moe_lite", {}, raw=True)


@register("Glm4MoeLiteForCausalLM")
class Glm4MoeLiteModel(DeepseekV2Model):
    """conversion/glm.py Glm4MoeLiteModel (GLM-4.7-Flash): DeepSeek-V2's MLA and MoE (GGUF deepseek2), GLM's
    vocabulary, and the NextN/MTP layers (past num_hidden_layers) kept as extra blocks with their nextn.* tensors
    (the converter's default, without --no-mtp)."""

    configs = (GLM4_MOE_LITE_CONFIG,)
    skip_mtp = False
    layer = DeepseekV2Model.layer | DEEPSEEK_NEXTN
    # llama.cpp's deepseek2 loader: the NextN block's own embeddings and head are optional
    optional = DeepseekV2Model.optional + ("embed_tokens", "shared_head.head", "shared_head.norm")
    inverse_names = False  # GGUF deepseek2 maps back to DeepseekV2/V3 names (its NextN blocks are not mapped)

    # Glm4MoeLiteModel.__init__: num_nextn_predict_layers extra blocks, none (skip_mtp) when it is 0
    def __init__(self, hp, **kw):
        super().__init__(hp, **kw)
        n = nextn_layers(self)
        self.n_main = hp["num_hidden_layers"]
        self.n_nextn = n
        self.skip_mtp = n == 0
        self.block_count = self.n_main + n

    def layer_modules(self, bid: int) -> dict[str, str]:
        mods = super().layer_modules(bid)
        return mods | DEEPSEEK_NEXTN if bid >= self.n_main else mods

    def tensor_shapes(self):
        e, v = self.hp["hidden_size"], self.hp["vocab_size"]
        return super().tensor_shapes() | {
            "nextn.eh_proj": (e, 2 * e), "nextn.enorm": (e,), "nextn.hnorm": (e,), "nextn.embed_tokens": (v, e),
            "nextn.shared_head_head": (v, e), "nextn.shared_head_norm": (e,)}

    # TextModel._set_vocab_glm
    def set_vocab(self, tokenizer_pre: str | None = None) -> None:
        ids = {"bos": "[gMASK]", "eot": "<|user|>", "unk": "<|endoftext|>", "eom": "<|observation|>"}
        set_glm_special(self.kv, self.tok_folder, self.hp["model_type"], ids, self.hp, tokenizer_pre)

    # Glm4MoeLiteModel.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        if not self.skip_mtp:
            self.u32("nextn_predict_layers", self.n_nextn, "num_nextn_predict_layers")


# Solar Open has no config class in transformers 4.57.6: the converter reads config.json as it is
SOLAR_OPEN_CONFIG = HFConfig("solar_open", {}, raw=True)


@register("SolarOpenForCausalLM")
class SolarOpenModel(Glm4MoeModel):
    """conversion/glm.py SolarOpenModel (Upstage Solar Open): GLM-4.5's MoE layout (GGUF glm4moe) with its own
    special tokens."""

    configs = (SOLAR_OPEN_CONFIG,)
    inverse_names = False  # GGUF glm4moe maps back to Glm4MoeForCausalLM's names (the same layout)

    # SolarOpenModel.set_vocab: eos / eot <|endoftext|>, unk <unk>, bos <|startoftext|> from the added vocabulary
    def set_vocab(self, tokenizer_pre: str | None = None) -> None:
        ids = {"eos": "<|endoftext|>", "eot": "<|endoftext|>", "unk": "<unk>", "bos": "<|startoftext|>"}
        set_glm_special(self.kv, self.tok_folder, self.hp["model_type"], ids, self.hp, tokenizer_pre)
