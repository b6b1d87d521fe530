"""gpt-oss: conversion/gpt_oss.py GptOssModel (llama.cpp as vendored in llama-cpp-python 0.3.36).

Attention with biases and per-head sinks, alternating sliding / full attention (written as one
sliding_window key: llama.cpp derives the pattern), a router with a bias, and experts that arrive
already stacked, one HF tensor per projection:
  * the BF16 release: `mlp.experts.gate_up_proj` [n_expert, hidden, 2 * ff] (gate and up
    interleaved along the last axis), `down_proj` [n_expert, ff, hidden], both stored [in, out]
    (transposed to GGUF's [out, in]), with `_bias` tensors [n_expert, 2 * ff] / [n_expert, hidden];
  * the original release (quantization_config.quant_method "mxfp4"): `*_blocks` [n_expert, out,
    in / 32, 16] and `*_scales` [n_expert, out, in / 32] (uint8), which the converter repacks into
    ggml's block_mxfp4 and writes as MXFP4 before every other tensor (generate_extra_tensors);
    kquant passes them through byte for byte (models.spec.TensorSpec.raw_type).
"""

from __future__ import annotations

import re
from functools import partial

import numpy as np
from gguf import MODEL_ARCH

from ..errors import InputError
from ..ggml.types import QType
from .base import HFJoin, HFTensor, LLAMA_LAYER, ATTN_BIASES, Experts, TextModel, last_axis, register
from .hparams import HFConfig
from .spec import TensorSpec

_YARN = {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
         "original_max_position_embeddings": 4096}


def _gpt_oss_init(hp: dict) -> None:
    # transformers configuration_gpt_oss.py GptOssConfig.__init__
    if hp.get("num_key_value_heads") is None:
        hp["num_key_value_heads"] = hp["num_attention_heads"]
    if hp.get("head_dim") is None:
        hp["head_dim"] = hp["hidden_size"] // hp["num_attention_heads"]
    if hp.get("layer_types") is None:
        hp["layer_types"] = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(hp["num_hidden_layers"])]
    hp["attention_bias"] = True
    rs = hp.get("rope_scaling")
    if isinstance(rs, dict) and "type" in rs:
        rs["rope_type"] = rs["type"]


# transformers 4.57.6 configuration_gpt_oss.py GptOssConfig.__init__ defaults
GPT_OSS_CONFIG = HFConfig("gpt_oss", dict(
    num_hidden_layers=36, num_local_experts=128, vocab_size=201088, hidden_size=2880, intermediate_size=2880,
    head_dim=64, num_attention_heads=64, num_key_value_heads=8, sliding_window=128, rope_theta=150000.0,
    tie_word_embeddings=False, hidden_act="silu", max_position_embeddings=131072, rms_norm_eps=1e-5,
    rope_scaling=_YARN, num_experts_per_tok=4, layer_types=None,
), post_init=_gpt_oss_init)

GPT_OSS_LAYER = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "post_attention_norm",  # gguf-py: ATTN_POST_NORM for gpt-oss
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.sinks": "attn_sinks",
    "mlp.router": "ffn_gate_inp",
    "mlp.experts.down_proj": "ffn_down_exps",
    "mlp.experts.gate_up_proj": "ffn_gate_exps",  # split into ffn_gate_exps and ffn_up_exps
}
assert set(LLAMA_LAYER) >= {k for k in GPT_OSS_LAYER if k.startswith("self_attn.") and k != "self_attn.sinks"}
_EXPERT_NAME = re.compile(r"(model\.layers\.\d+\.mlp\.experts\.)(gate_up_proj|down_proj)(_bias|_blocks|_scales)?")


@register("GptOssForCausalLM")
class GptOssModel(TextModel):
    model_arch = MODEL_ARCH.GPT_OSS
    configs = (GPT_OSS_CONFIG,)
    layer = GPT_OSS_LAYER
    bias_ok = ATTN_BIASES + ("mlp.router", "mlp.experts.down_proj", "mlp.experts.gate_up_proj")
    bias_required = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.router",
                     "mlp.experts.down_proj", "mlp.experts.gate_up_proj")
    experts = Experts(source="", order=(), count_keys=("num_local_experts",), stacked=True)
    split_modules = {"ffn_gate_exps": ("ffn_gate_exps", "ffn_up_exps")}  # gate_up_proj
    # --hf-names: the BF16 release's tensors (what transformers dequantizes the MXFP4 release into):
    # gate_up_proj [n_expert, hidden, 2 ff] is each expert's gate and up transposed, interleaved; its bias too
    inverse_names = True
    hf_joins = {"ffn_gate_exps": HFJoin("mlp.experts.gate_up_proj", 0, 2, transpose=True, axis=1, interleave=True),
                "ffn_up_exps": HFJoin("mlp.experts.gate_up_proj", 1, 2, transpose=True, axis=1, interleave=True),
                "ffn_down_exps": HFJoin("mlp.experts.down_proj", transpose=True),
                "ffn_gate_exps.bias": HFJoin("mlp.experts.gate_up_proj_bias", 0, 2, axis=1, interleave=True),
                "ffn_up_exps.bias": HFJoin("mlp.experts.gate_up_proj_bias", 1, 2, axis=1, interleave=True),
                "ffn_down_exps.bias": HFJoin("mlp.experts.down_proj_bias")}

    @classmethod
    def hf_tensor_name(cls, bid, base, is_bias, kinds=frozenset()):
        name = super().hf_tensor_name(bid, base, is_bias, kinds)
        return name[: -len(".weight")] if base == "attn_sinks" and name else name  # filter_name's ".weight", undone
    norm_of = {"attn_q": "attn_norm", "attn_k": "attn_norm", "attn_v": "attn_norm",
               "ffn_gate_exps": "post_attention_norm", "ffn_up_exps": "post_attention_norm",
               "ffn_gate_inp": "post_attention_norm"}

    # GptOssModel.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        self.u32("attention.sliding_window", self.hp["sliding_window"], "sliding_window")
        self.u32("expert_feed_forward_length", self.hp["intermediate_size"], "intermediate_size")

    # GptOssModel.filter_tensors ("sinks" -> ".weight") and the renames of its modify_tensors
    def filter_name(self, name: str) -> str | None:
        if "sinks" in name:
            name += ".weight"
        m = _EXPERT_NAME.fullmatch(name)
        if m is not None:
            kind = m.group(3)
            if kind in ("_blocks", "_scales"):  # handled by raw_tensors
                return name
            name = m.group(1) + m.group(2) + (".bias" if kind == "_bias" else ".weight")
        return super().filter_name(name)

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        s = super().tensor_shapes()
        hp = self.hp
        e, ff, n_x = hp["hidden_size"], hp["intermediate_size"], self._n_expert
        s["attn_sinks"] = (hp["num_attention_heads"],)
        s["ffn_down_exps"] = (n_x, ff, e)  # HF [expert, in, out]
        s["ffn_gate_exps"] = (n_x, e, 2 * ff)  # the fused gate_up_proj
        return s

    def expected_shape(self, base: str, bias: bool) -> tuple[int, ...] | None:
        if base in ("ffn_down_exps", "ffn_gate_exps"):
            w = self._shapes[base]
            return (w[0], w[2]) if bias else w
        return super().expected_shape(base, bias)

    # GptOssModel.modify_tensors: gate_up split into gate (even) and up (odd), the weights transposed
    def modify_tensors(self, t: HFTensor, name: str, gname: str, base: str, bid: int | None) -> list[TensorSpec]:
        if base == "ffn_down_exps" and not name.endswith(".bias"):
            return self.stacked_experts(t, [(gname, None)], transpose=True)
        if base == "ffn_gate_exps":
            ff = self.hp["intermediate_size"]
            up = gname.replace("ffn_gate_exps", "ffn_up_exps")
            if name.endswith(".bias"):
                return [self.spec(gname, t, shape=(t[1][0], ff), transform=partial(last_axis, start=0, step=2)),
                        self.spec(up, t, shape=(t[1][0], ff), transform=partial(last_axis, start=1, step=2))]
            even = np.arange(0, 2 * ff, 2)
            return self.stacked_experts(t, [(gname, even), (up, even + 1)], transpose=True)
        return super().modify_tensors(t, name, gname, base, bid)

    # GptOssModel.generate_extra_tensors / repack_mxfp4: the MXFP4 experts, in get_tensors order
    def raw_tensors(self, hf: list[HFTensor], where: str) -> tuple[list[TensorSpec], set[str]]:
        by = {n: (n, tuple(s), d) for n, s, d in hf}
        out: list[TensorSpec] = []
        used: set[str] = set()
        e, ff, n_x = self.hp["hidden_size"], self.hp["intermediate_size"], self._n_expert
        for n, shape, _ in hf:
            m = _EXPERT_NAME.fullmatch(n)
            if m is None or m.group(3) not in ("_blocks", "_scales"):
                continue
            pre, proj, kind = m.groups()
            other = pre + proj + ("_scales" if kind == "_blocks" else "_blocks")
            if other not in by:
                raise InputError(f"{where}: MXFP4 tensor {n!r} has no {other.rsplit('_', 1)[1]} tensor {other!r}")
            used.add(n)
            if kind == "_blocks":  # the pair is written when its scales come, as upstream
                continue
            bid = int(n.split(".")[2])
            if bid >= self.block_count:
                raise InputError(f"{where}: tensor {n!r} is for layer {bid} but num_hidden_layers is {self.block_count}")
            blocks, scales = by[other], by[n]
            rows, cols = (e, ff) if proj == "down_proj" else (2 * ff, e)
            want = (n_x, rows, cols // 32, 16)
            if tuple(blocks[1]) != want:
                raise InputError(f"{where}: tensor {other!r} has shape {list(blocks[1])}, expected {list(want)} from config.json")
            if proj == "down_proj":
                parts = [(f"blk.{bid}.ffn_down_exps.weight", None)]
            else:
                even = np.arange(0, 2 * ff, 2)
                parts = [(f"blk.{bid}.ffn_gate_exps.weight", even), (f"blk.{bid}.ffn_up_exps.weight", even + 1)]
            out.extend(self.raw_expert_tensors(blocks, scales, QType.MXFP4, parts, where))
        return out, used
