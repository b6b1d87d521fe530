"""DeepSeek V2 / V3 (and Kimi K2, which ships as DeepseekV3ForCausalLM), and DeepSeek-MoE (V1):
conversion/deepseek.py DeepseekV2Model and DeepseekModel (llama.cpp as vendored in llama-cpp-python 0.3.36).

MLA attention (q_a/q_b with a norm, or a plain q_proj when q_lora_rank is null; kv_a_proj_with_mqa
and its norm; kv_b_proj split into the 3-D attn_k_b (transposed) and attn_v_b), dense first
layers (`first_k_dense_replace`), then routed experts stacked into ffn_*_exps plus shared experts
(ffn_*_shexp) and the router's e_score_correction_bias (exp_probs_b). MTP/NextN layers (past
num_hidden_layers) are dropped, as the converter does by default (skip_mtp).

DeepSeek V3.2 (`DeepseekV32ForCausalLM`, DeepseekV32Model, GGUF architecture deepseek32): the same
layers plus the DSA lightning indexer of every layer (wq_b, wk, a LayerNorm k_norm with bias,
weights_proj); its NextN/MTP layers are kept as extra blocks (the converter's default, without
--no-mtp), with their nextn.* tensors. transformers 4.57.6 has no config class for it: the
converter reads config.json as it is. The language model of Kimi-VL and Kimi K2.5
(`KimiVLForConditionalGeneration`, `KimiK25ForConditionalGeneration`: remote-code composite configs, read as they
are with text_config merged over them; `language_model.` dropped, the vision tower not converted). The other names
the converter registers on DeepseekV2Model (DeepSeek-OCR, Youtu, Youtu-VL) are not registered here, so they are
refused as unsupported architectures. Kimi K2's tiktoken vocabulary
(tiktoken.model and Moonshot's TikTokenTokenizer, the converter's AutoTokenizer fallback with remote
code) is read by kquant.vocab.tiktoken.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gguf import MODEL_ARCH

from ..errors import InputError, UnsupportedError
from .. import vocab as V
from ..io.jsonio import read_json
from .base import LAYER_PREFIX, LLAMA_LAYER, Experts, HFJoin, HFTensor, TextModel, register
from .hparams import HFConfig
from .llama import LlamaModel, permute_qk
from .spec import TensorSpec


def _v2_init(hp: dict[str, Any]) -> None:
    # transformers 4.57.6 configuration_deepseek_v2.py DeepseekV2Config.__init__ (kv heads fallback and
    # the rope_scaling type alias are the HFConfig flags)
    hp["head_dim"] = hp["qk_rope_head_dim"]


def _v3_init(hp: dict[str, Any]) -> None:
    # transformers 4.57.6 configuration_deepseek_v3.py DeepseekV3Config.__init__
    hp["qk_head_dim"] = hp["qk_nope_head_dim"] + hp["qk_rope_head_dim"]
    hp["head_dim"] = hp["qk_rope_head_dim"]
    rs = hp.get("rope_scaling")
    if isinstance(rs, dict):
        for key in ("beta_fast", "beta_slow", "factor"):
            if key in rs:
                rs[key] = float(rs[key])


# transformers 4.57.6 __init__ defaults, for the keys llama.cpp reads
DEEPSEEK_V2_CONFIG = HFConfig("deepseek_v2", dict(
    vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=None, max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False,
    rope_theta=10000.0, rope_scaling=None, attention_bias=False, mlp_bias=False, first_k_dense_replace=0,
    kv_lora_rank=512, q_lora_rank=1536, n_group=None, n_routed_experts=64, n_shared_experts=2,
    qk_nope_head_dim=128, qk_rope_head_dim=64, routed_scaling_factor=1.0, topk_group=None, topk_method="greedy",
    v_head_dim=128, num_experts_per_tok=None, norm_topk_prob=False, moe_intermediate_size=1407,
), rope_type_alias=True, kv_heads_fallback=True, post_init=_v2_init)
DEEPSEEK_V3_CONFIG = HFConfig("deepseek_v3", dict(
    vocab_size=129280, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048, num_hidden_layers=61,
    num_attention_heads=128, num_key_value_heads=128, n_shared_experts=1, n_routed_experts=256,
    routed_scaling_factor=2.5, kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64, v_head_dim=128,
    qk_nope_head_dim=128, n_group=8, topk_group=4, num_experts_per_tok=8, first_k_dense_replace=3,
    norm_topk_prob=True, max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=False,
    rope_theta=10000.0, rope_scaling=None, rope_interleave=True, attention_bias=False,
), rope_type_alias=True, kv_heads_fallback=True, post_init=_v3_init)

# Kimi K2 (DeepseekV3ForCausalLM) ships model_type kimi_k2, a remote-code DeepseekV3Config: AutoConfig fails
# without trust_remote_code and the converter reads config.json as it is (no derived head_dim, no defaults)
KIMI_K2_CONFIG = HFConfig("kimi_k2", {}, raw=True)

_ATTN = {
    "input_layernorm": "attn_norm",
    "self_attn.kv_a_proj_with_mqa": "attn_kv_a_mqa",
    "self_attn.kv_a_layernorm": "attn_kv_a_norm",
    "self_attn.kv_b_proj": "attn_kv_b",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
}
_Q_PLAIN = {"self_attn.q_proj": "attn_q"}
_Q_LORA = {"self_attn.q_a_proj": "attn_q_a", "self_attn.q_a_layernorm": "attn_q_a_norm", "self_attn.q_b_proj": "attn_q_b"}
_DENSE = {"mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
_MOE = {"mlp.gate": "ffn_gate_inp", "mlp.gate.e_score_correction": "exp_probs_b"}
_SHARED = {"mlp.shared_experts.gate_proj": "ffn_gate_shexp", "mlp.shared_experts.up_proj": "ffn_up_shexp",
           "mlp.shared_experts.down_proj": "ffn_down_shexp"}
DEEPSEEK_EXPERTS = Experts(
    source="model.layers.{bid}.mlp.experts.{xid}.{w}.weight",
    order=(("down_proj", "ffn_down_exps"), ("gate_proj", "ffn_gate_exps"), ("up_proj", "ffn_up_exps")),
    count_keys=("n_routed_experts",),
)


def _k_b(n_head_kv: int, nope: int, v_dim: int):
    # DeepseekV2Model.modify_tensors: kv_b.view(n_head_kv, nope + v, kv_lora) split [nope, v] on dim 1, k_b transposed
    def f(arrs: list[np.ndarray]) -> np.ndarray:
        kv_b = arrs[0].reshape(n_head_kv, nope + v_dim, -1)
        return np.ascontiguousarray(kv_b[:, :nope, :].transpose(0, 2, 1))
    return f


def _v_b(n_head_kv: int, nope: int, v_dim: int):
    def f(arrs: list[np.ndarray]) -> np.ndarray:
        kv_b = arrs[0].reshape(n_head_kv, nope + v_dim, -1)
        return np.ascontiguousarray(kv_b[:, nope:, :])
    return f


def _positive_int(hp: dict, key: str, where) -> int:
    v = hp.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise InputError(f"{where}: {key!r} must be a positive integer, got {v!r}")
    return v


@register("DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM")
class DeepseekV2Model(TextModel):
    model_arch = MODEL_ARCH.DEEPSEEK2
    skip_mtp = True  # DeepseekV2Model.skip_mtp: layers past num_hidden_layers dropped
    configs = (DEEPSEEK_V2_CONFIG, DEEPSEEK_V3_CONFIG, KIMI_K2_CONFIG)
    layer = _ATTN | _Q_PLAIN | _Q_LORA | _DENSE | _MOE | _SHARED  # every module any layer may have
    bias_ok = ("mlp.gate.e_score_correction",)
    bias_only = ("mlp.gate.e_score_correction",)
    optional = ("mlp.gate.e_score_correction",)  # V3's noaux_tc router only
    split_modules = {"attn_kv_b": ("attn_k_b", "attn_v_b")}  # modify_tensors
    experts = DEEPSEEK_EXPERTS
    inverse_names = True
    # --hf-names: head by head, kv_b_proj is attn_k_b transposed back over attn_v_b (rows nope, then v)
    hf_joins = {"attn_k_b": HFJoin("self_attn.kv_b_proj.weight", 0, 2, transpose=True, flat=True),
                "attn_v_b": HFJoin("self_attn.kv_b_proj.weight", 1, 2, flat=True)}
    norm_of = {
        "attn_q": "attn_norm", "attn_q_a": "attn_norm", "attn_q_b": "attn_q_a_norm", "attn_kv_a_mqa": "attn_norm",
        "ffn_gate": "ffn_norm", "ffn_up": "ffn_norm", "ffn_gate_exps": "ffn_norm", "ffn_up_exps": "ffn_norm",
        "ffn_gate_inp": "ffn_norm", "ffn_gate_shexp": "ffn_norm", "ffn_up_shexp": "ffn_norm",
    }

    def __init__(self, hp: dict[str, Any], **kw):
        super().__init__(hp, **kw)
        where = self.config_path
        for k in ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "kv_lora_rank", "moe_intermediate_size"):
            _positive_int(hp, k, where)
        if hp.get("q_lora_rank") is not None:
            _positive_int(hp, "q_lora_rank", where)
        fk = hp.get("first_k_dense_replace")
        if fk is not None and (not isinstance(fk, int) or isinstance(fk, bool) or fk < 0):
            raise InputError(f"{where}: 'first_k_dense_replace' must be a non-negative integer, got {fk!r}")
        if hp.get("n_routed_experts") is None:
            raise UnsupportedError(f"{where}: DeepSeek models without routed experts (n_routed_experts null) are not supported")
        n_shared = hp.get("n_shared_experts")
        if n_shared is not None and (not isinstance(n_shared, int) or isinstance(n_shared, bool) or n_shared < 0):
            raise InputError(f"{where}: 'n_shared_experts' must be a non-negative integer, got {n_shared!r}")
        if hp.get("moe_layer_freq", 1) != 1:
            raise UnsupportedError(f"{where}: 'moe_layer_freq' other than 1 is not supported (llama.cpp's deepseek2 has none)")
        # the kv_b_proj split reads num_key_value_heads before set_gguf_parameters sets it to 1
        self.n_head_kv_hf = _positive_int(hp, "num_key_value_heads", where)

    # DeepseekV2Model.set_gguf_parameters: leading dense layers (None: all dense without MoE, none with)
    def n_dense(self) -> int:
        fk = self.hp.get("first_k_dense_replace")
        return fk if fk is not None else (self.block_count if self.hp.get("n_routed_experts") is None else 0)

    def layer_modules(self, bid: int) -> dict[str, str]:
        q = _Q_PLAIN if self.hp.get("q_lora_rank") is None else _Q_LORA
        if bid < self.n_dense():
            return _ATTN | q | _DENSE
        shared = _SHARED if self.hp.get("n_shared_experts") else {}
        return _ATTN | q | _MOE | shared

    def layer_experts(self, bid: int) -> Experts | None:
        return None if bid < self.n_dense() else self.experts

    def filter_name(self, name: str) -> str | None:
        name = super().filter_name(name)
        if name is None:
            return None
        # DeepseekV2Model.modify_tensors: tied lm_head skipped; MTP layers (past num_hidden_layers) skipped
        if self.hp.get("tie_word_embeddings", False) and name in ("lm_head.weight", "model.lm_head.weight"):
            return None
        if self.skip_mtp and name.startswith(LAYER_PREFIX):
            bid = name[len(LAYER_PREFIX):].split(".", 1)[0]
            if bid.isdecimal() and int(bid) >= self.hp["num_hidden_layers"]:
                return None
        return name

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        hp = self.hp
        e, n_head = hp["hidden_size"], hp["num_attention_heads"]
        nope, rope, v = hp["qk_nope_head_dim"], hp["qk_rope_head_dim"], hp["v_head_dim"]
        kv_lora, q_lora = hp["kv_lora_rank"], hp.get("q_lora_rank")
        ff_exp = hp["moe_intermediate_size"]
        ff_sh = ff_exp * (hp.get("n_shared_experts") or 0)
        s = super().tensor_shapes()
        s.update({
            "attn_q": (n_head * (nope + rope), e),
            "attn_kv_a_mqa": (kv_lora + rope, e), "attn_kv_a_norm": (kv_lora,),
            "attn_kv_b": (self.n_head_kv_hf * (nope + v), kv_lora),
            "attn_output": (e, n_head * v),
            "exp_probs_b": (self._n_expert,),
            "ffn_gate_shexp": (ff_sh, e), "ffn_up_shexp": (ff_sh, e), "ffn_down_shexp": (e, ff_sh),
            "ffn_gate_exps": (ff_exp, e), "ffn_up_exps": (ff_exp, e), "ffn_down_exps": (e, ff_exp),
        })
        if q_lora is not None:
            s.update({"attn_q_a": (q_lora, e), "attn_q_a_norm": (q_lora,), "attn_q_b": (n_head * (nope + rope), q_lora)})
        return s

    # DeepseekV2Model.modify_tensors: kv_b_proj -> attn_k_b (per head, transposed) + attn_v_b
    def modify_tensors(self, t: HFTensor, name: str, gname: str, base: str, bid: int | None) -> list[TensorSpec]:
        if base != "attn_kv_b":
            return super().modify_tensors(t, name, gname, base, bid)
        hp = self.hp
        n, nope, v = self.n_head_kv_hf, hp["qk_nope_head_dim"], hp["v_head_dim"]
        kv_lora = t[1][1]
        return [
            self.spec(f"blk.{bid}.attn_k_b.weight", t, shape=(n, kv_lora, nope), transform=_k_b(n, nope, v)),
            self.spec(f"blk.{bid}.attn_v_b.weight", t, shape=(n, v, kv_lora), transform=_v_b(n, nope, v)),
        ]

    # DeepseekV2Model.set_vocab: the GPT-2 vocabulary, else (no tokenizer.json) Kimi K2's tiktoken
    # vocabulary through its TikTokenTokenizer remote code
    def set_vocab(self, tokenizer_pre: str | None = None) -> None:
        folder = self.tok_folder
        if (folder / "tokenizer.json").is_file():
            V.set_vocab_gpt2(self.kv, folder, self.hp, self.hp["model_type"], tokenizer_pre)
        elif V.is_kimi_tokenizer(folder):
            V.set_vocab_kimi(self.kv, folder, self.hp, tokenizer_pre)
        else:
            raise UnsupportedError(f"{folder}: no tokenizer.json, nor a Kimi tiktoken.model with its tokenizer_config.json")

    # DeepseekV2Model.set_gguf_parameters (the DeepSeek-OCR branch is not taken: OCR is multimodal)
    def set_gguf_parameters(self) -> None:
        hp = self.hp
        hp["num_key_value_heads"] = 1  # MLA converts into MQA
        hp["rms_norm_eps"] = hp.get("rms_norm_eps", 1e-6)
        super().set_gguf_parameters()
        self.u32("leading_dense_block_count", self.n_dense(), "first_k_dense_replace")
        kv_lora = hp.get("kv_lora_rank", 512)
        self.u32("vocab_size", hp["vocab_size"], "vocab_size")
        if hp.get("q_lora_rank") is not None:
            self.u32("attention.q_lora_rank", hp["q_lora_rank"], "q_lora_rank")
        self.u32("attention.kv_lora_rank", kv_lora, "kv_lora_rank")
        self.u32("attention.key_length", kv_lora + hp["qk_rope_head_dim"], "kv_lora_rank + qk_rope_head_dim")
        self.u32("attention.value_length", kv_lora, "kv_lora_rank")
        self.u32("attention.key_length_mla", hp["qk_nope_head_dim"] + hp["qk_rope_head_dim"], "qk_nope_head_dim + qk_rope_head_dim")
        self.u32("attention.value_length_mla", hp["v_head_dim"], "v_head_dim")
        self.u32("expert_feed_forward_length", self.find_hparam(["moe_intermediate_size", "intermediate_size"]), "moe_intermediate_size")
        if (n := hp.get("n_routed_experts")) is not None:
            self.u32("expert_count", n, "n_routed_experts")
        self.u32("expert_shared_count", hp.get("n_shared_experts", 0), "n_shared_experts")
        if (v := hp.get("routed_scaling_factor")) is not None:
            self.f32("expert_weights_scale", v, "routed_scaling_factor")
        if (v := hp.get("norm_topk_prob")) is not None and v:
            if not isinstance(v, bool):
                raise InputError(f"{self.config_path}: norm_topk_prob must be true or false, got {v!r}")
            self.kv.add_bool(self.key("expert_weights_norm"), v)
        self.u32("rope.dimension_count", hp["qk_rope_head_dim"], "qk_rope_head_dim")
        # [TAG_DEEPSEEK2_YARN_LOG_MUL_FIX]: 0.1 * mscale_all_dim, whatever the rope type
        if (m := self.rp.get("mscale_all_dim")) is not None:
            if isinstance(m, bool) or not isinstance(m, (int, float)):
                raise InputError(f"{self.config_path}: rope_scaling.mscale_all_dim must be a number, got {m!r}")
            self.f32("rope.scaling.yarn_log_multiplier", 0.1 * m, "rope_scaling.mscale_all_dim")


# Kimi-VL (model_type kimi_vl) and Kimi K2.5 (kimi_k25) are remote-code composite configs: AutoConfig fails and the
# converter reads config.json as it is, text_config (a DeepSeek-V3 layout) merged over the top level
KIMI_VL_CONFIG = HFConfig("kimi_vl", {}, raw=True, text_config="deepseek_v3")
KIMI_K25_CONFIG = HFConfig("kimi_k25", {}, raw=True, text_config="kimi_k2")


@register("KimiVLForConditionalGeneration", "KimiK25ForConditionalGeneration")
class KimiVLModel(DeepseekV2Model):
    """conversion/deepseek.py DeepseekV2Model, as it serves Kimi-VL and Kimi K2.5: their language model."""

    configs = (KIMI_VL_CONFIG, KIMI_K25_CONFIG)
    inverse_names = False  # GGUF deepseek2 maps back to DeepseekV2/V3 (text-only) names


# DeepSeek V3.2 has no config class in transformers 4.57.6: the converter reads config.json as it is
DEEPSEEK_V32_CONFIG = HFConfig("deepseek_v32", {}, raw=True)
# gguf-py tensor_mapping.py: the DSA indexer (every layer) and the NextN/MTP block (layers past num_hidden_layers)
_INDEXER = {
    "self_attn.indexer.k_norm": "indexer.k_norm", "self_attn.indexer.weights_proj": "indexer.proj",
    "self_attn.indexer.wk": "indexer.attn_k", "self_attn.indexer.wq_b": "indexer.attn_q_b",
}
_NEXTN = {
    "eh_proj": "nextn.eh_proj", "enorm": "nextn.enorm", "hnorm": "nextn.hnorm", "embed_tokens": "nextn.embed_tokens",
    "shared_head.head": "nextn.shared_head_head", "shared_head.norm": "nextn.shared_head_norm",
}
ARCH_DEEPSEEK32 = "deepseek32"  # gguf-py MODEL_ARCH_NAMES[DEEPSEEK32] (newer than the gguf package kquant uses)


@register("DeepseekV32ForCausalLM")
class DeepseekV32Model(DeepseekV2Model):
    """conversion/deepseek.py DeepseekV32Model: DeepseekV2Model plus the DSA indexer, MTP layers kept."""

    configs = (DEEPSEEK_V32_CONFIG,)
    skip_mtp = False
    layer = DeepseekV2Model.layer | _INDEXER | _NEXTN
    bias_ok = DeepseekV2Model.bias_ok + ("self_attn.indexer.k_norm",)
    bias_required = ("self_attn.indexer.k_norm",)  # a LayerNorm: llama.cpp's deepseek32 loader requires its bias
    # llama.cpp's deepseek32 loader: the NextN block's own embeddings and head are optional
    optional = DeepseekV2Model.optional + ("embed_tokens", "shared_head.head", "shared_head.norm")
    norm_of = DeepseekV2Model.norm_of | {"indexer.attn_q_b": "attn_q_a_norm", "indexer.attn_k": "attn_norm",
                                         "indexer.proj": "attn_norm"}

    @classmethod
    def arch_name(cls) -> str:
        return ARCH_DEEPSEEK32

    # DeepseekV32Model.__init__: the NextN/MTP layers are extra blocks (without --no-mtp)
    def __init__(self, hp: dict[str, Any], **kw):
        super().__init__(hp, **kw)
        where = self.config_path
        for k in ("index_n_heads", "index_head_dim", "index_topk"):
            _positive_int(hp, k, where)
        if hp.get("q_lora_rank") is None:
            raise UnsupportedError(f"{where}: DeepSeek V3.2 without q_lora_rank is not supported (the indexer reads q_a)")
        n_nextn = hp.get("num_nextn_predict_layers", 0)
        if isinstance(n_nextn, bool) or not isinstance(n_nextn, int) or not 0 <= n_nextn <= 64:
            raise InputError(f"{where}: 'num_nextn_predict_layers' must be an integer in [0, 64], got {n_nextn!r}")
        self.n_main = hp["num_hidden_layers"]
        self.block_count = self.n_main + n_nextn

    def layer_modules(self, bid: int) -> dict[str, str]:
        mods = super().layer_modules(bid) | _INDEXER
        return mods | _NEXTN if bid >= self.n_main else mods

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        hp = self.hp
        e, v = hp["hidden_size"], hp["vocab_size"]
        n, d = hp["index_n_heads"], hp["index_head_dim"]
        return super().tensor_shapes() | {
            "indexer.attn_q_b": (n * d, hp["q_lora_rank"]), "indexer.attn_k": (d, e), "indexer.k_norm": (d,),
            "indexer.proj": (n, e),
            "nextn.eh_proj": (e, 2 * e), "nextn.enorm": (e,), "nextn.hnorm": (e,), "nextn.embed_tokens": (v, e),
            "nextn.shared_head_head": (v, e), "nextn.shared_head_norm": (e,),
        }

    # DeepseekV32Model.set_vocab: AutoTokenizer must say add_bos_token (an assert), then the GPT-2 vocabulary
    def set_vocab(self, tokenizer_pre: str | None = None) -> None:
        path = self.tok_folder / "tokenizer_config.json"
        tc = read_json(path) if path.is_file() else {}
        cls = tc.get("tokenizer_class") if isinstance(tc, dict) else None
        # transformers 4.57.6: LlamaTokenizer(Fast) defaults add_bos_token to true; other classes have no such attribute
        if cls not in ("LlamaTokenizerFast", "LlamaTokenizer") or tc.get("add_bos_token", True) is not True:
            raise UnsupportedError(f"{path}: DeepSeek V3.2 needs tokenizer_class LlamaTokenizerFast with add_bos_token "
                                   "true (llama.cpp's converter asserts it)")
        V.set_vocab_gpt2(self.kv, self.tok_folder, self.hp, self.hp["model_type"], tokenizer_pre)

    # DeepseekV32Model.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        hp = self.hp
        if (v := hp.get("num_nextn_predict_layers")) is not None:
            self.u32("nextn_predict_layers", v, "num_nextn_predict_layers")
        self.u32("attention.indexer.head_count", hp["index_n_heads"], "index_n_heads")
        self.u32("attention.indexer.key_length", hp["index_head_dim"], "index_head_dim")
        self.u32("attention.indexer.top_k", hp["index_topk"], "index_topk")


# DeepSeek-MoE (V1) has no config class in transformers 4.57.6: the converter reads config.json as it is
DEEPSEEK_CONFIG = HFConfig("deepseek", {}, raw=True)


@register("DeepseekForCausalLM")
class DeepseekModel(TextModel):
    """conversion/deepseek.py DeepseekModel: Llama attention (Q/K permuted), dense first layers, then
    routed + shared experts."""

    model_arch = MODEL_ARCH.DEEPSEEK
    configs = (DEEPSEEK_CONFIG,)
    layer = LLAMA_LAYER | {"mlp.gate": "ffn_gate_inp"} | _SHARED
    experts = DEEPSEEK_EXPERTS
    inverse_names = True
    undo_permute = True

    @classmethod
    def hf_row_order(cls, base, n_rows, n_head, n_head_kv):
        return LlamaModel.hf_row_order(base, n_rows, n_head, n_head_kv)

    def __init__(self, hp: dict[str, Any], **kw):
        super().__init__(hp, **kw)
        where = self.config_path
        for k in ("first_k_dense_replace", "moe_intermediate_size", "n_routed_experts", "n_shared_experts"):
            if k not in hp:
                raise InputError(f"{where}: missing key {k!r}")
        _positive_int(hp, "moe_intermediate_size", where)
        for k in ("first_k_dense_replace", "n_shared_experts"):
            v = hp[k]
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise InputError(f"{where}: {k!r} must be a non-negative integer, got {v!r}")
        if hp.get("moe_layer_freq", 1) != 1:
            raise UnsupportedError(f"{where}: 'moe_layer_freq' other than 1 is not supported (llama.cpp's deepseek has none)")

    def layer_modules(self, bid: int) -> dict[str, str]:
        attn = {k: v for k, v in LLAMA_LAYER.items() if not k.startswith("mlp.")}
        if bid < self.hp["first_k_dense_replace"]:
            return LLAMA_LAYER
        return attn | {"mlp.gate": "ffn_gate_inp"} | (_SHARED if self.hp["n_shared_experts"] else {})

    def layer_experts(self, bid: int) -> Experts | None:
        return None if bid < self.hp["first_k_dense_replace"] else self.experts

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        hp = self.hp
        e, ff_x = hp["hidden_size"], hp["moe_intermediate_size"]
        ff_sh = ff_x * hp["n_shared_experts"]
        s = super().tensor_shapes()
        s.update({"ffn_gate_shexp": (ff_sh, e), "ffn_up_shexp": (ff_sh, e), "ffn_down_shexp": (e, ff_sh),
                  "ffn_gate_exps": (ff_x, e), "ffn_up_exps": (ff_x, e), "ffn_down_exps": (e, ff_x)})
        return s

    # DeepseekModel.set_vocab
    def set_vocab(self, tokenizer_pre: str | None = None) -> None:
        try:
            V.set_vocab_sentencepiece(self.kv, self.tok_folder, self.hp)
        except FileNotFoundError:
            V.set_vocab_gpt2(self.kv, self.tok_folder, self.hp, self.hp["model_type"], tokenizer_pre)

    # DeepseekModel.modify_tensors: q/k permuted as LlamaModel.permute (k with num_key_value_heads)
    def modify_tensors(self, t: HFTensor, name: str, gname: str, base: str, bid: int | None) -> list[TensorSpec]:
        return permute_qk(self, t, name, gname) or super().modify_tensors(t, name, gname, base, bid)

    # DeepseekModel.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        hp = self.hp
        rope_dim = hp.get("head_dim")
        if rope_dim is None:
            rope_dim = hp["hidden_size"] // hp["num_attention_heads"]
        self.u32("rope.dimension_count", rope_dim, "head_dim")
        self.kv.add_string(self.key("rope.scaling.type"), "none")  # RopeScalingType.NONE
        self.u32("leading_dense_block_count", hp["first_k_dense_replace"], "first_k_dense_replace")
        self.u32("vocab_size", hp["vocab_size"], "vocab_size")
        self.u32("expert_feed_forward_length", hp["moe_intermediate_size"], "moe_intermediate_size")
        self.f32("expert_weights_scale", 1.0, "expert_weights_scale")
        self.u32("expert_count", hp["n_routed_experts"], "n_routed_experts")
        self.u32("expert_shared_count", hp["n_shared_experts"], "n_shared_experts")
