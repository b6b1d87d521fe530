"""Qwen 2, Qwen 3, their MoE variants and Qwen3-Next: conversion/qwen.py (llama.cpp as vendored in llama-cpp-python 0.3.36)."""

from __future__ import annotations

import re

import numpy as np
from gguf import MODEL_ARCH

from ..errors import InputError, UnsupportedError
from .. import vocab as V
from .gemma import norm_plus_one
from .mamba import neg_exp, reshaped
from .base import ATTN_BIASES, LLAMA_LAYER, MLP_BIASES, QK_NORM_LAYER, Experts, Headless, TextModel, register
from .hparams import HFConfig
from .spec import TensorSpec

_Q = dict(rope_type_alias=True, kv_heads_fallback=True)
QWEN2_CONFIG = HFConfig("qwen2", dict(
    vocab_size=151936, max_position_embeddings=32768, hidden_size=4096, intermediate_size=22016,
    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, rms_norm_eps=1e-6,
    rope_theta=10000.0, rope_scaling=None, use_sliding_window=False, sliding_window=4096,
    max_window_layers=28, tie_word_embeddings=False,
), **_Q)
QWEN3_CONFIG = HFConfig("qwen3", dict(
    vocab_size=151936, max_position_embeddings=32768, hidden_size=4096, intermediate_size=22016,
    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, head_dim=128,
    rms_norm_eps=1e-6, rope_theta=10000.0, rope_scaling=None, attention_bias=False,
    use_sliding_window=False, sliding_window=4096, max_window_layers=28, tie_word_embeddings=False,
), **_Q)
QWEN2_MOE_CONFIG = HFConfig("qwen2_moe", dict(
    vocab_size=151936, max_position_embeddings=32768, hidden_size=2048, intermediate_size=5632,
    num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16, rms_norm_eps=1e-6,
    rope_theta=10000.0, rope_scaling=None, use_sliding_window=False, sliding_window=4096,
    moe_intermediate_size=1408, shared_expert_intermediate_size=5632, num_experts_per_tok=4,
    num_experts=60, tie_word_embeddings=False,
), **_Q)
QWEN3_MOE_CONFIG = HFConfig("qwen3_moe", dict(
    vocab_size=151936, max_position_embeddings=32768, hidden_size=2048, intermediate_size=6144,
    num_hidden_layers=24, num_attention_heads=32, num_key_value_heads=4, rms_norm_eps=1e-6,
    rope_theta=10000.0, rope_scaling=None, attention_bias=False, use_sliding_window=False,
    sliding_window=4096, moe_intermediate_size=768, num_experts_per_tok=8, num_experts=128,
    tie_word_embeddings=False,
), **_Q)

QKV_BIASES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
MOE_LAYER = {k: v for k, v in LLAMA_LAYER.items() if not k.startswith("mlp.")} | {"mlp.gate": "ffn_gate_inp"}
QWEN_EXPERTS = Experts(
    source="model.layers.{bid}.mlp.experts.{xid}.{w}.weight",
    order=(("down_proj", "ffn_down_exps"), ("gate_proj", "ffn_gate_exps"), ("up_proj", "ffn_up_exps")),
    count_keys=("num_local_experts", "num_experts"),
)


@register("Qwen2ForCausalLM")
class Qwen2Model(TextModel):
    model_arch = MODEL_ARCH.QWEN2
    configs = (QWEN2_CONFIG,)
    bias_ok = ATTN_BIASES + MLP_BIASES
    bias_required = QKV_BIASES
    inverse_names = True

    def set_vocab(self, tokenizer_pre: str | None = None) -> None:
        try:
            V.set_vocab_sentencepiece(self.kv, self.tok_folder, self.hp)
        except FileNotFoundError:
            V.set_vocab_gpt2(self.kv, self.tok_folder, self.hp, self.hp["model_type"], tokenizer_pre)

    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        self.no_pooling()


@register("Qwen3ForCausalLM")
class Qwen3Model(Qwen2Model):
    model_arch = MODEL_ARCH.QWEN3
    configs = (QWEN3_CONFIG,)
    layer = LLAMA_LAYER | QK_NORM_LAYER
    bias_required = ()

    # Qwen3Model: rerankers write extra keys and a cls_out tensor (refused)
    def set_gguf_parameters(self) -> None:
        readme = self.folder / "README.md"
        text = readme.read_text(encoding="utf-8", errors="replace").lower() if readme.is_file() else ""
        hp = self.hp
        hints = [str(self.folder.name), str(hp.get("_name_or_path", "")), str(hp.get("model_type", "")),
                 str((hp.get("architectures") or [""])[0] or "")]  # None: a text class merged over a composite
        hints = [h.lower() for h in hints if h]
        origin = str((hp.get("architectures") or [""])[0] or "").lower()
        if ("# qwen3-reranker" in text or "# qwen3-vl-reranker" in text
                or any("qwen3-reranker" in h or "qwen3-vl-reranker" in h for h in hints)
                or "sequenceclassification" in origin):
            raise UnsupportedError(f"{self.folder}: Qwen3 reranker models are not supported")
        super().set_gguf_parameters()


# conversion/qwen.py Qwen2Model.modify_tensors prefixes every name (`if self.hf_arch == "Qwen2Model": name =
# f"model.{name}"`); Qwen3Model's names map as they are, bare through gguf-py's qwen3-embedding entries or with
# "model." (embedding checkpoints with a sentence-transformers modules.json are refused by no_pooling)
@register("Qwen2Model")
class Qwen2HeadlessModel(Headless, Qwen2Model):
    pass


@register("Qwen3Model")
class Qwen3HeadlessModel(Headless, Qwen3Model):
    def filter_name(self, name: str) -> str | None:
        return Qwen3Model.filter_name(self, name) if name.startswith("model.") else super().filter_name(name)


@register("Qwen2MoeForCausalLM")
class Qwen2MoeModel(TextModel):
    model_arch = MODEL_ARCH.QWEN2MOE
    configs = (QWEN2_MOE_CONFIG,)
    layer = MOE_LAYER | {
        "mlp.shared_expert.gate_proj": "ffn_gate_shexp",
        "mlp.shared_expert.up_proj": "ffn_up_shexp",
        "mlp.shared_expert.down_proj": "ffn_down_shexp",
        "mlp.shared_expert_gate": "ffn_gate_inp_shexp",
    }
    bias_ok = ATTN_BIASES
    bias_required = QKV_BIASES
    experts = QWEN_EXPERTS
    inverse_names = True

    @classmethod
    def hf_tensor_shape(cls, base, is_bias, shape):
        return (1,) + tuple(shape) if base == "ffn_gate_inp_shexp" and len(shape) == 1 else shape  # shared_expert_gate (1, e)

    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        if (v := self.hp.get("moe_intermediate_size")) is not None:
            self.u32("expert_feed_forward_length", v, "moe_intermediate_size")
        if (v := self.hp.get("shared_expert_intermediate_size")) is not None:
            self.u32("expert_shared_feed_forward_length", v, "shared_expert_intermediate_size")


@register("Qwen3MoeForCausalLM")
class Qwen3MoeModel(Qwen2MoeModel):
    model_arch = MODEL_ARCH.QWEN3MOE
    configs = (QWEN3_MOE_CONFIG,)
    layer = MOE_LAYER | QK_NORM_LAYER
    bias_required = ()


# transformers 4.57.6 configuration_qwen3_next.py Qwen3NextConfig.__init__: defaults, and layer_types
# derived from the (undeclared) full_attention_interval kwarg when absent
def _qwen3_next_layer_types(hp: dict) -> None:
    if hp.get("layer_types") is None:
        interval = hp.get("full_attention_interval", 4)
        if isinstance(interval, bool) or not isinstance(interval, int) or interval <= 0:
            raise InputError(f"config.json: 'full_attention_interval' must be a positive integer, got {interval!r}")
        hp["layer_types"] = ["linear_attention" if (i + 1) % interval else "full_attention"
                             for i in range(hp["num_hidden_layers"])]


QWEN3_NEXT_CONFIG = HFConfig("qwen3_next", dict(
    vocab_size=151936, hidden_size=2048, intermediate_size=5632, num_hidden_layers=48, num_attention_heads=16,
    num_key_value_heads=2, hidden_act="silu", max_position_embeddings=32768, rms_norm_eps=1e-6,
    tie_word_embeddings=False, rope_theta=10000.0, rope_scaling=None, partial_rotary_factor=0.25,
    attention_bias=False, head_dim=256, linear_conv_kernel_dim=4, linear_key_head_dim=128,
    linear_value_head_dim=128, linear_num_key_heads=16, linear_num_value_heads=32, decoder_sparse_step=1,
    moe_intermediate_size=512, shared_expert_intermediate_size=512, num_experts_per_tok=10, num_experts=512,
    norm_topk_prob=True, mlp_only_layers=[], layer_types=None,
), post_init=_qwen3_next_layer_types)

QWEN3_NEXT_COMMON = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "post_attention_norm",
    "mlp.gate": "ffn_gate_inp",
    "mlp.shared_expert.gate_proj": "ffn_gate_shexp",
    "mlp.shared_expert.up_proj": "ffn_up_shexp",
    "mlp.shared_expert.down_proj": "ffn_down_shexp",
    "mlp.shared_expert_gate": "ffn_gate_inp_shexp",
}
QWEN3_NEXT_FULL = QWEN3_NEXT_COMMON | {k: v for k, v in LLAMA_LAYER.items() if k.startswith("self_attn.")} | QK_NORM_LAYER
QWEN3_NEXT_LINEAR = QWEN3_NEXT_COMMON | {
    "linear_attn.in_proj_qkvz": "attn_qkv",  # split into attn_qkv and attn_gate
    "linear_attn.in_proj_ba": "ssm_ba",
    "linear_attn.conv1d": "ssm_conv1d",
    "linear_attn.dt_proj": "ssm_dt",  # dt_bias, renamed
    "linear_attn.A_log": "ssm_a",
    "linear_attn.norm": "ssm_norm",
    "linear_attn.out_proj": "ssm_out",
}
# _QwenMtpMixin: mtp.* remapped onto layer num_hidden_layers + i, then gguf-py's nextn names
QWEN3_NEXT_MTP = QWEN3_NEXT_FULL | {
    "eh_proj": "nextn.eh_proj", "enorm": "nextn.enorm", "hnorm": "nextn.hnorm",
    "shared_head.norm": "nextn.shared_head_norm",
}
QWEN3_NEXT_BARE = ("linear_attn.A_log",)
MTP_REMAP = {"fc": "eh_proj", "pre_fc_norm_embedding": "enorm", "pre_fc_norm_hidden": "hnorm", "norm": "shared_head.norm"}


def qkvz_rows(hp: dict) -> tuple[np.ndarray, np.ndarray]:
    """Qwen3NextModel.modify_tensors in_proj_qkvz reorder as row gathers: per key head [q, k, v, z]
    -> [q of every head, k of every head, v of every head] (attn_qkv) and [z of every head] (attn_gate)."""
    hk, hv = hp["linear_key_head_dim"], hp["linear_value_head_dim"]
    nk, nv = hp["linear_num_key_heads"], hp["linear_num_value_heads"]
    vz = nv // nk * hv
    per = 2 * hk + 2 * vz
    heads = np.arange(nk, dtype=np.int64)[:, None] * per

    def part(off: int, n: int) -> np.ndarray:
        return (heads + off + np.arange(n, dtype=np.int64)[None, :]).reshape(-1)

    return np.concatenate([part(0, hk), part(hk, hk), part(2 * hk, vz)]), part(2 * hk + vz, vz)


@register("Qwen3NextForCausalLM")
class Qwen3NextModel(Qwen2MoeModel):
    """conversion/qwen.py Qwen3NextModel (with _QwenMtpMixin): gated delta-net and full-attention layers,
    routed + shared experts, the MTP layers appended as nextn blocks."""

    model_arch = MODEL_ARCH.QWEN3NEXT
    inverse_names = False
    inverse_refused = "the converter writes A as -exp(A_log) and the norm weights plus one: not undone exactly"
    configs = (QWEN3_NEXT_CONFIG,)
    layer = QWEN3_NEXT_FULL
    bias_ok = ("linear_attn.dt_proj",)
    bias_required = ()
    bias_only = ("linear_attn.dt_proj",)
    bare_params = QWEN3_NEXT_BARE
    n_mtp = 0

    def layer_types(self) -> list[str]:
        lt, n = self.hp.get("layer_types"), self.hp["num_hidden_layers"]
        if not isinstance(lt, list) or len(lt) != n:
            raise InputError(f"{self.config_path}: layer_types must be a list of num_hidden_layers ({n}) entries")
        return lt

    def layer_modules(self, bid: int) -> dict[str, str]:
        if bid >= self.hp["num_hidden_layers"]:
            return QWEN3_NEXT_MTP
        return QWEN3_NEXT_LINEAR if self.layer_types()[bid] == "linear_attention" else QWEN3_NEXT_FULL

    # _QwenMtpMixin.filter_tensors: mtp.* -> model.layers.{num_hidden_layers + i}.*
    def filter_name(self, name: str) -> str | None:
        name = super().filter_name(name)
        if name is None:
            return None
        if name.startswith("model.mtp."):
            name = name.replace("model.", "", 1)
        if name.startswith("mtp."):
            base = self.hp["num_hidden_layers"]
            parts = name.split(".", 3)
            if len(parts) == 4 and parts[1] == "layers" and parts[2].isdecimal():
                name = f"model.layers.{base + int(parts[2])}.{parts[3]}"
            elif len(parts) == 3 and parts[1] in MTP_REMAP:
                name = f"model.layers.{base}.{MTP_REMAP[parts[1]]}.{parts[2]}"
        if name.endswith(".dt_bias"):  # Qwen3NextModel.modify_tensors
            name = name.rpartition(".dt_bias")[0] + ".dt_proj.bias"
        return name

    # _QwenMtpMixin.__init__: block_count += mtp_num_hidden_layers, else the mtp.layers.* found
    def prepare_tensors(self, hf, extra, where):
        n_mtp = self.hp.get("mtp_num_hidden_layers", 0)
        if isinstance(n_mtp, bool) or not isinstance(n_mtp, int) or n_mtp < 0:
            raise InputError(f"{self.config_path}: 'mtp_num_hidden_layers' must be a non-negative integer, got {n_mtp!r}")
        if n_mtp == 0:
            for name, _, _ in hf:
                parts = name.removeprefix("model.").split(".", 3)
                if len(parts) == 4 and parts[:2] == ["mtp", "layers"] and parts[2].isdecimal():
                    n_mtp = max(n_mtp, int(parts[2]) + 1)
        if n_mtp == 0:
            raise UnsupportedError(f"{where}: Qwen3-Next without MTP layers (mtp.*) is refused: convert_hf_to_gguf.py "
                                   "needs them unless --no-mtp, which kquant does not offer")
        self.n_mtp = n_mtp
        self.block_count = self.hp["num_hidden_layers"] + n_mtp
        return super().prepare_tensors(hf, extra, where)

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        hp = self.hp
        s = super().tensor_shapes()
        e, hd = hp["hidden_size"], hp.get("head_dim") or hp["hidden_size"] // hp["num_attention_heads"]
        q = hp["num_attention_heads"] * hd
        hk, hv = hp["linear_key_head_dim"], hp["linear_value_head_dim"]
        nk, nv = hp["linear_num_key_heads"], hp["linear_num_value_heads"]
        if nk <= 0 or nv % nk:
            raise InputError(f"{self.config_path}: linear_num_value_heads {nv} is not a multiple of linear_num_key_heads {nk}")
        conv = 2 * nk * hk + nv * hv
        return s | {
            "attn_q": (2 * q, e), "attn_output": (e, q),  # query and its output gate
            "attn_qkv": (2 * nk * hk + 2 * nv * hv, e), "ssm_ba": (2 * nv, e),
            "ssm_conv1d": (conv, 1, hp["linear_conv_kernel_dim"]), "ssm_dt": (nv,), "ssm_a": (nv,),
            "ssm_norm": (hv,), "ssm_out": (e, nv * hv),
            "nextn.eh_proj": (e, 2 * e), "nextn.enorm": (e,), "nextn.hnorm": (e,), "nextn.shared_head_norm": (e,),
        }

    # Qwen3NextModel.modify_tensors
    def modify_tensors(self, t, name, gname, base, bid):
        if name.endswith(".A_log"):
            return [self.spec(gname, t, transform=neg_exp(t[2]))]
        if "conv1d" in name:
            shape = tuple(d for d in t[1] if d != 1)  # squeeze
            return [self.spec(gname, t, shape=shape, transform=reshaped(shape))]
        if name.endswith("norm.weight") and not name.endswith("linear_attn.norm.weight"):
            return [self.spec(gname, t, transform=norm_plus_one(t[2]))]
        if "in_proj_qkvz.weight" in name:
            qkv, z = qkvz_rows(self.hp)
            return [self.spec(gname, t, shape=(len(qkv), t[1][1]), row_perm=qkv),
                    self.spec(f"blk.{bid}.attn_gate.weight", t, shape=(len(z), t[1][1]), row_perm=z)]
        return super().modify_tensors(t, name, gname, base, bid)

    def set_gguf_parameters(self) -> None:
        hp = self.hp
        super().set_gguf_parameters()
        self.u32("nextn_predict_layers", self.n_mtp, "mtp_num_hidden_layers")
        self.u32("ssm.conv_kernel", hp["linear_conv_kernel_dim"], "linear_conv_kernel_dim")
        self.u32("ssm.state_size", hp["linear_key_head_dim"], "linear_key_head_dim")
        self.u32("ssm.group_count", hp["linear_num_key_heads"], "linear_num_key_heads")
        self.u32("ssm.time_step_rank", hp["linear_num_value_heads"], "linear_num_value_heads")
        self.u32("ssm.inner_size", hp["linear_value_head_dim"] * hp["linear_num_value_heads"], "linear_value_head_dim")
        if hp.get("layer_types") is not None:
            recurrent = [t == "linear_attention" for t in self.layer_types()] + [False] * self.n_mtp
            self.kv.add_array(self.key("attention.recurrent_layers"), recurrent)
        self.u32("full_attention_interval", hp.get("full_attention_interval", 4), "full_attention_interval")
        rope_dim = hp.get("head_dim")
        if rope_dim is None:
            rope_dim = hp["hidden_size"] // hp["num_attention_heads"]
        self.u32("rope.dimension_count", int(rope_dim * self.rp.get("partial_rotary_factor", 0.25)), "head_dim")


# transformers 4.57.6 has no Qwen3.5 config classes: the converter reads config.json as it is
# Qwen3_5ForConditionalGeneration's config (model_type qwen3_5) nests the text config (qwen3_5_text) under
# text_config; transformers 4.57.6 has neither class, so the converter reads config.json as it is
QWEN35_CONFIGS = (HFConfig("qwen3_5_text", {}), HFConfig("qwen3_5", {}, raw=True, text_config="qwen3_5_text"))
QWEN35_COMMON = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "post_attention_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}
QWEN35_FULL = QWEN35_COMMON | {k: v for k, v in QWEN3_NEXT_FULL.items() if k.startswith("self_attn.")}
QWEN35_LINEAR = QWEN35_COMMON | {
    "linear_attn.in_proj_qkv": "attn_qkv",
    "linear_attn.in_proj_z": "attn_gate",
    "linear_attn.in_proj_b": "ssm_beta",
    "linear_attn.in_proj_a": "ssm_alpha",
    "linear_attn.conv1d": "ssm_conv1d",
    "linear_attn.dt_proj": "ssm_dt",
    "linear_attn.A_log": "ssm_a",
    "linear_attn.norm": "ssm_norm",
    "linear_attn.out_proj": "ssm_out",
}
QWEN35_MTP = QWEN35_FULL | {k: v for k, v in QWEN3_NEXT_MTP.items() if k not in QWEN3_NEXT_FULL}
QWEN35_DEFAULT_MROPE_SECTION = [11, 11, 10, 0]  # _Qwen35MRopeMixin


def v_tiled(nk: int, r: int, hd: int) -> np.ndarray:
    """_LinearAttentionVReorderBase._reorder_v_heads as a gather: V heads grouped by K head
    [K0: v0..v(r-1), K1: ...] -> tiled [v0 of every K head, v1 of every K head, ...]."""
    return np.arange(nk * r * hd, dtype=np.int64).reshape(nk, r, hd).transpose(1, 0, 2).reshape(-1)


@register("Qwen3_5ForCausalLM", "Qwen3_5ForConditionalGeneration")
class Qwen35Model(Qwen3NextModel):
    """conversion/qwen.py Qwen3_5TextModel (_Qwen35MRopeMixin, _LinearAttentionVReorderBase on
    Qwen3NextModel): the text-only checkpoint with a flat config.json (dense MLP), and the language model of
    Qwen3_5ForConditionalGeneration (model.language_model.*; model.visual.* not converted, as without --mmproj)."""

    model_arch = MODEL_ARCH.QWEN35
    configs = QWEN35_CONFIGS
    layer = QWEN35_FULL
    experts = None

    def layer_types(self) -> list[str]:
        hp, n = self.hp, self.hp["num_hidden_layers"]
        lt = hp.get("layer_types")
        if lt is None:  # no config class fills it in; the runtime uses full_attention_interval
            interval = hp.get("full_attention_interval", 4)
            lt = ["linear_attention" if (i + 1) % interval else "full_attention" for i in range(n)]
        if not isinstance(lt, list) or len(lt) != n:
            raise InputError(f"{self.config_path}: layer_types must be a list of num_hidden_layers ({n}) entries")
        return lt

    def layer_modules(self, bid: int) -> dict[str, str]:
        if bid >= self.hp["num_hidden_layers"]:
            return QWEN35_MTP
        return QWEN35_LINEAR if self.layer_types()[bid] == "linear_attention" else QWEN35_FULL

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        hp = self.hp
        s = super().tensor_shapes()
        e, hk, hv = hp["hidden_size"], hp["linear_key_head_dim"], hp["linear_value_head_dim"]
        nk, nv = hp["linear_num_key_heads"], hp["linear_num_value_heads"]
        return s | {"attn_qkv": (2 * nk * hk + nv * hv, e), "attn_gate": (nv * hv, e), "ssm_beta": (nv, e),
                    "ssm_alpha": (nv, e)}

    # _LinearAttentionVReorderBase.modify_tensors, then Qwen3NextModel.modify_tensors
    def modify_tensors(self, t, name, gname, base, bid):
        hp = self.hp
        nk, nv = hp.get("linear_num_key_heads", 0), hp.get("linear_num_value_heads", 0)
        if not (nk > 0 and nv > 0 and nk != nv and "linear_attn." in name):
            return super().modify_tensors(t, name, gname, base, bid)
        hk, hv, r = hp["linear_key_head_dim"], hp["linear_value_head_dim"], nv // nk
        qk = 2 * nk * hk
        if ".in_proj_qkv." in name:
            perm = np.concatenate([np.arange(qk, dtype=np.int64), qk + v_tiled(nk, r, hv)])
            return [self.spec(gname, t, row_perm=perm)]
        if ".in_proj_z." in name:
            return [self.spec(gname, t, row_perm=v_tiled(nk, r, hv))]
        if ".in_proj_b." in name or ".in_proj_a." in name:
            return [self.spec(gname, t, row_perm=v_tiled(nk, r, 1))]
        if ".A_log" in name or ".dt_bias" in name or ".dt_proj" in name:
            perm = v_tiled(nk, r, 1)
            if name.endswith(".A_log"):
                exp = neg_exp(t[2])
                return [self.spec(gname, t, transform=lambda a: exp([a[0][perm]]))]
            return [self.spec(gname, t, row_perm=perm)]
        if ".conv1d" in name:
            shape = tuple(d for d in t[1] if d != 1)  # squeeze
            perm = np.concatenate([np.arange(qk, dtype=np.int64), qk + v_tiled(nk, r, hv)])
            return [self.spec(gname, t, shape=shape, transform=lambda a: a[0].reshape(shape)[perm])]
        if ".out_proj." in name:
            cols = v_tiled(nk, r, hv)
            return [self.spec(gname, t, transform=lambda a: a[0][:, cols])]
        return super().modify_tensors(t, name, gname, base, bid)

    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        if "mrope_section" not in self.rp:
            self.kv.add_array(self.key("rope.dimension_sections"), list(QWEN35_DEFAULT_MROPE_SECTION))


QWEN35_MOE_CONFIGS = (HFConfig("qwen3_5_moe_text", {}), HFConfig("qwen3_5_moe", {}, raw=True, text_config="qwen3_5_moe_text"))
QWEN35_MOE_FFN = {
    "mlp.gate": "ffn_gate_inp",
    "mlp.shared_expert.gate_proj": "ffn_gate_shexp", "mlp.shared_expert.up_proj": "ffn_up_shexp",
    "mlp.shared_expert.down_proj": "ffn_down_shexp", "mlp.shared_expert_gate": "ffn_gate_inp_shexp",
}
# transformers 5 stores the experts of a layer fused: (n_expert, 2 * n_ff, n_embd) and (n_expert, n_embd, n_ff)
FUSED_EXPERTS = {"mlp.experts.gate_up_proj": "ffn_gate_exps", "mlp.experts.down_proj": "ffn_down_exps"}


@register("Qwen3_5MoeForCausalLM", "Qwen3_5MoeForConditionalGeneration")
class Qwen35MoeModel(Qwen35Model):
    """conversion/qwen.py Qwen3_5MoeTextModel: Qwen35Model with routed + shared experts, per expert or
    fused (Qwen2MoeModel.modify_tensors splits gate_up_proj)."""

    model_arch = MODEL_ARCH.QWEN35MOE
    configs = QWEN35_MOE_CONFIGS
    experts = None  # per layer: QWEN_EXPERTS unless the checkpoint's experts are fused
    fused: bool | str = False  # False, or the suffix of the fused tensors ("" or ".weight")

    def n_expert(self) -> int:
        n = next((self.hp[k] for k in QWEN_EXPERTS.count_keys if self.hp.get(k) is not None), 0)
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            raise InputError(f"{self.folder}: expert count (num_experts) must be a positive integer")
        return n

    def layer_experts(self, bid: int):
        return None if self.fused is not False else QWEN_EXPERTS

    def layer_modules(self, bid: int) -> dict[str, str]:
        m = {k: v for k, v in super().layer_modules(bid).items() if not k.startswith("mlp.")} | QWEN35_MOE_FFN
        return m | FUSED_EXPERTS if self.fused is not False else m

    def prepare_tensors(self, hf, extra, where):
        fused = [n for n, _, _ in hf if n.removesuffix(".weight").endswith(tuple(FUSED_EXPERTS))]
        self.fused = (".weight" if fused[0].endswith(".weight") else "") if fused else False
        self.bare_params = QWEN3_NEXT_BARE + (tuple(FUSED_EXPERTS) if self.fused == "" else ())
        if self.fused is False:  # per-expert tensors: the count is bounded by what the checkpoint holds
            found = {m.group(1) for n, _, _ in hf if (m := re.search(r"\.experts\.(\d+)\.", n))}
            if self.n_expert() > len(found):
                raise InputError(f"{where}: num_experts is {self.n_expert()} but the checkpoint has tensors for {len(found)} experts")
        return super().prepare_tensors(hf, extra, where)

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        s = super().tensor_shapes()
        if self.fused is not False:
            for k in ("ffn_gate_exps", "ffn_down_exps"):
                s.pop(k)  # checked in modify_tensors
        return s

    # Qwen2MoeModel.modify_tensors: fused expert tensors
    def modify_tensors(self, t, name, gname, base, bid):
        n_exp, e = self._n_expert, self.hp["hidden_size"]
        ff = self.hp["moe_intermediate_size"]
        if name.removesuffix(".weight").endswith("mlp.experts.down_proj"):
            if tuple(t[1]) != (n_exp, e, ff):
                raise InputError(f"{self.folder}: tensor {t[0]!r} has shape {list(t[1])}, expected {[n_exp, e, ff]}")
            return [self.spec(f"blk.{bid}.ffn_down_exps.weight", t)]
        if name.removesuffix(".weight").endswith("mlp.experts.gate_up_proj"):
            if tuple(t[1]) != (n_exp, 2 * ff, e):
                raise InputError(f"{self.folder}: tensor {t[0]!r} has shape {list(t[1])}, expected {[n_exp, 2 * ff, e]}")
            shape = (n_exp, ff, e)
            return [self.spec(f"blk.{bid}.ffn_gate_exps.weight", t, shape=shape, transform=lambda a: a[0][:, :ff]),
                    self.spec(f"blk.{bid}.ffn_up_exps.weight", t, shape=shape, transform=lambda a: a[0][:, ff:])]
        return super().modify_tensors(t, name, gname, base, bid)

    def check_complete(self, out) -> None:
        if self.fused == "":  # bare HF names, GGUF names with .weight
            out = out + [TensorSpec(name=re.sub(r"\.weight$", "", t.name), shape=t.shape, sources=t.sources,
                                    ref_type=t.ref_type) for t in out if t.name.endswith(("ffn_gate_exps.weight", "ffn_down_exps.weight"))]
        super().check_complete(out)
