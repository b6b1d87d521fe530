"""StepFun Step 3.5 / 3.7 Flash: conversion/step3.py Step35Model (llama.cpp as vendored in llama-cpp-python 0.3.36).

The language model of Step3p5ForCausalLM and Step3p7ForConditionalGeneration, in the checkpoints'
own layout (StepFun's remote code, the one the converter maps): Q/K-normed attention with a head-wise
output gate (`self_attn.g_proj`), full and sliding-window layers with their own head counts
(`attention_other_setting`), one rope base per kind (`rope_theta` as a per-layer list), dense
layers then MoE layers (`moe_layers_enum`) with experts stored stacked (`moe.gate_proj` ...), a
sigmoid router with a selection bias (`moe.router_bias`) and a shared expert (`share_expert.*`);
every RMSNorm weight is stored zero-centred and written + 1. The MTP layers appended past
num_hidden_layers are kept as nextn blocks (the converter's default, without --no-mtp). A llama3
rope gives the rope_freqs tensor of the full-attention layers' rotary part. transformers 4.57.6 has
no config class for either: the converter reads config.json as it is (Step 3.7's text_config merged
over the top level); the vision tower and projector are dropped, as without --mmproj.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from gguf import MODEL_ARCH

from ..errors import InputError, UnsupportedError
from .base import TextModel, register
from .gemma import norm_plus_one
from .hparams import HFConfig
from .llama import torch_pow_f32

STEP3P5_CONFIG = HFConfig("step3p5", {}, raw=True)
STEP3P7_CONFIG = HFConfig("step3p7", {}, raw=True, text_config="step3p5")

# gguf-py tensor_mapping.py (step3.5 entries and the shared llama-style ones)
_ATTN = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "self_attn.g_proj": "attn_gate",
}
_DENSE = {"mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
_MOE = {
    "moe.gate": "ffn_gate_inp", "moe.router_bias": "exp_probs_b",
    "moe.gate_proj": "ffn_gate_exps", "moe.up_proj": "ffn_up_exps", "moe.down_proj": "ffn_down_exps",
    "share_expert.gate_proj": "ffn_gate_shexp", "share_expert.up_proj": "ffn_up_shexp",
    "share_expert.down_proj": "ffn_down_shexp",
}
_NEXTN = {
    "eh_proj": "nextn.eh_proj", "enorm": "nextn.enorm", "hnorm": "nextn.hnorm", "embed_tokens": "nextn.embed_tokens",
    "shared_head.head": "nextn.shared_head_head", "shared_head.norm": "nextn.shared_head_norm",
}


def _pad(arr: list, n: int, default) -> list:
    # Step35Model.set_gguf_parameters._pad
    arr = list(arr)
    if len(arr) < n:
        arr = arr + [default] * (n - len(arr))
    return arr[:n]


@register("Step3p5ForCausalLM", "Step3p7ForConditionalGeneration")
class Step35Model(TextModel):
    model_arch = MODEL_ARCH.STEP35
    configs = (STEP3P5_CONFIG, STEP3P7_CONFIG)
    layer = _ATTN | _DENSE | _MOE | _NEXTN
    bias_ok = ("moe.router_bias",)
    bias_only = ("moe.router_bias",)
    # a layer is dense or MoE (checked whole in check_complete); the MTP head's own embeddings and head may be absent
    optional = tuple(_DENSE) + tuple(_MOE) + ("embed_tokens", "shared_head.head")
    aliases = {"num_key_value_heads": ("num_attention_groups",)}
    inverse_names = False
    inverse_refused = "the converter adds 1 to every RMSNorm weight in float32: not undone exactly"
    norm_of = {"attn_q": "attn_norm", "attn_k": "attn_norm", "attn_v": "attn_norm", "attn_gate": "attn_norm",
               "ffn_gate": "ffn_norm", "ffn_up": "ffn_norm", "ffn_gate_exps": "ffn_norm", "ffn_up_exps": "ffn_norm",
               "ffn_gate_inp": "ffn_norm", "ffn_gate_shexp": "ffn_norm", "ffn_up_shexp": "ffn_norm"}

    # Step35Model.__init__: the MTP layers appended past num_hidden_layers are extra blocks
    def __init__(self, hp: dict[str, Any], **kw):
        super().__init__(hp, **kw)
        where = self.config_path
        n_nextn = hp.get("num_nextn_predict_layers", 0)
        if isinstance(n_nextn, bool) or not isinstance(n_nextn, int) or not 0 <= n_nextn <= 64:
            raise InputError(f"{where}: 'num_nextn_predict_layers' must be an integer in [0, 64], got {n_nextn!r}")
        self.n_main = hp["num_hidden_layers"]
        self.block_count = self.n_main + n_nextn
        for k in ("num_attention_groups", "head_dim", "sliding_window"):
            v = hp.get(k)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise InputError(f"{where}: {k!r} must be a positive integer, got {v!r}")
        aos = hp.get("attention_other_setting") or {}
        if not isinstance(aos, dict):
            raise InputError(f"{where}: 'attention_other_setting' must be an object, got {aos!r}"[:200])
        layer_types = _pad(hp.get("layer_types") or [], self.block_count, "full_attention")
        factors = _pad(hp.get("partial_rotary_factors") or [], self.block_count, 0.5)
        if [1.0 if lt == "sliding_attention" else 0.5 for lt in layer_types] != factors:  # upstream asserts it
            raise UnsupportedError(f"{where}: 'partial_rotary_factors' must be 1.0 on sliding and 0.5 on full attention "
                                   "layers (the converter asserts it)")
        self.swa = [lt == "sliding_attention" for lt in layer_types]
        self.heads = [aos.get("num_attention_heads", hp["num_attention_heads"]) if s else hp["num_attention_heads"]
                      for s in self.swa]
        self.kv_heads = [aos.get("num_attention_groups", hp["num_attention_groups"]) if s else hp["num_attention_groups"]
                         for s in self.swa]
        for v in self.heads + self.kv_heads:
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise InputError(f"{where}: attention head counts must be positive integers, got {v!r}")
        # Step35Model.set_gguf_parameters: rope_theta as a list gives the full (first) and sliding (second) bases;
        # done here, before the rope parameters are checked (nothing in between reads them)
        rope_theta = hp.get("rope_theta")
        if isinstance(rope_theta, list):
            if len(rope_theta) < 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in rope_theta):
                raise InputError(f"{where}: 'rope_theta' as a list needs at least two numbers, got {rope_theta!r}"[:200])
            self.rope_theta_list = rope_theta
            hp["rope_theta"] = float(rope_theta[0])
            hp["local_rope_theta"] = float(rope_theta[1])
            self.rp["rope_theta"] = hp["rope_theta"]
            self.rp["sliding_attention"] = {"rope_theta": hp["local_rope_theta"]}

    def layer_modules(self, bid: int) -> dict[str, str]:
        m = _ATTN | _DENSE | _MOE
        return m | _NEXTN if bid >= self.n_main else m

    # Step35Model.filter_tensors: router bias as a bias; the MTP layers' shared head renamed
    def filter_name(self, name: str) -> str | None:
        name = super().filter_name(name)
        if name is None:
            return None
        if name.endswith(".moe.router_bias"):
            name += ".bias"
        parts = name.split(".")
        if name.startswith("model.layers.") and parts[2].isdecimal() and int(parts[2]) >= self.n_main:
            name = name.replace(".transformer.", ".").replace("shared_head.output", "shared_head.head")
        return name

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        hp = self.hp
        e, v = hp["hidden_size"], hp["vocab_size"]
        n_x, ff_x, ff_sh = hp.get("moe_num_experts"), hp.get("moe_intermediate_size"), hp.get("share_expert_dim")
        s = {k: w for k, w in super().tensor_shapes().items()
             if k not in ("attn_q", "attn_k", "attn_v", "attn_output")}  # per layer: checked in modify_tensors
        hd = hp["head_dim"]
        s.update({"attn_q_norm": (hd,), "attn_k_norm": (hd,),
                  "nextn.eh_proj": (e, 2 * e), "nextn.enorm": (e,), "nextn.hnorm": (e,), "nextn.embed_tokens": (v, e),
                  "nextn.shared_head_head": (v, e), "nextn.shared_head_norm": (e,)})
        if n_x:
            s.update({"ffn_gate_inp": (n_x, e), "exp_probs_b": (n_x,), "ffn_gate_exps": (n_x, ff_x, e),
                      "ffn_up_exps": (n_x, ff_x, e), "ffn_down_exps": (n_x, e, ff_x)})
        if ff_sh:
            s.update({"ffn_gate_shexp": (ff_sh, e), "ffn_up_shexp": (ff_sh, e), "ffn_down_shexp": (e, ff_sh)})
        return s

    def check_complete(self, out) -> None:
        super().check_complete(out)
        names = {t.name for t in out}
        for bid in range(self.block_count):
            dense = all(f"blk.{bid}.{g}.weight" in names for g in _DENSE.values())
            moe = all(f"blk.{bid}.{g}.weight" in names for g in ("ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"))
            if not dense and not moe:
                raise InputError(f"{self.folder}: layer {bid} has neither a whole dense MLP (mlp.*_proj) "
                                 "nor whole MoE experts (moe.gate, moe.*_proj)")

    # Step35Model.modify_tensors: zero-centred norms + 1 (squeezes are no-ops for these shapes)
    def modify_tensors(self, t, name, gname, base, bid):
        if bid is not None and base in ("attn_q", "attn_k", "attn_v", "attn_output", "attn_gate"):
            e, hd = self.hp["hidden_size"], self.hp["head_dim"]
            q, kv = self.heads[bid] * hd, self.kv_heads[bid] * hd
            want = {"attn_q": (q, e), "attn_k": (kv, e), "attn_v": (kv, e), "attn_output": (e, q),
                    "attn_gate": (self.heads[bid], e)}[base]
            if tuple(t[1]) != want:
                raise InputError(f"{self.folder}: tensor {t[0]!r} has shape {list(t[1])}, expected {list(want)} from config.json")
        if name.endswith("norm.weight"):
            return [self.spec(gname, t, transform=norm_plus_one(t[2]))]
        return super().modify_tensors(t, name, gname, base, bid)

    # Step35Model.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        hp, where = self.hp, self.config_path
        super().set_gguf_parameters()
        self.kv.add_array(self.key("attention.head_count"), self.heads)
        self.kv.add_array(self.key("attention.head_count_kv"), self.kv_heads)
        self.u32("attention.sliding_window", hp["sliding_window"], "sliding_window")
        self.kv.add_array(self.key("attention.sliding_window_pattern"), self.swa)
        self.u32("attention.value_length", hp["head_dim"], "head_dim")
        for k in ("moe_num_experts", "moe_top_k", "moe_intermediate_size", "share_expert_dim"):
            if k not in hp:
                raise InputError(f"{where}: missing key {k!r}")
        self.u32("expert_count", hp["moe_num_experts"], "moe_num_experts")
        self.u32("expert_used_count", hp["moe_top_k"], "moe_top_k")
        self.u32("expert_feed_forward_length", hp["moe_intermediate_size"], "moe_intermediate_size")
        self.u32("expert_shared_feed_forward_length", hp["share_expert_dim"], "share_expert_dim")
        if (v := hp.get("moe_router_scaling_factor")) is not None:
            self.f32("expert_weights_scale", v, "moe_router_scaling_factor")
        if (v := hp.get("norm_expert_weight")) is not None:
            if not isinstance(v, bool):
                raise InputError(f"{where}: 'norm_expert_weight' must be true or false, got {v!r}")
            self.kv.add_bool(self.key("expert_weights_norm"), v)
        leading_dense = 0
        enum = hp.get("moe_layers_enum")
        if isinstance(enum, str) and enum.strip():
            try:
                moe_layers = sorted(int(i) for i in enum.strip().split(","))
            except ValueError:
                raise InputError(f"{where}: 'moe_layers_enum' must list layer numbers, got {enum!r}"[:200]) from None
            if moe_layers:
                leading_dense = max(0, moe_layers[0])
        self.u32("leading_dense_block_count", leading_dense, "moe_layers_enum")
        every = hp.get("moe_every_n_layer", 1)
        if isinstance(every, bool) or not isinstance(every, int):
            raise InputError(f"{where}: 'moe_every_n_layer' must be an integer, got {every!r}")
        self.u32("moe_every_n_layers", every, "moe_every_n_layer")
        self.f32("attention.layer_norm_rms_epsilon", hp.get("rms_norm_eps", 1e-5), "rms_norm_eps")
        for key, name in (("swiglu_limits", "swiglu_clamp_exp"), ("swiglu_limits_shared", "swiglu_clamp_shexp")):
            if (limits := hp.get(key)) is not None:
                if not isinstance(limits, list) or not all(
                        v is None or isinstance(v, (int, float)) and not isinstance(v, bool) for v in limits):
                    raise InputError(f"{where}: {key!r} must be a list of numbers, got {limits!r}"[:200])
                self.kv.add_array(self.key(name), _pad([0.0 if v is None else float(v) for v in limits], self.block_count, 0.0))
        if self.block_count > self.n_main:
            self.u32("nextn_predict_layers", self.block_count - self.n_main, "num_nextn_predict_layers")

    # Step35Model.generate_extra_tensors: llama3 rope factors for the full-attention layers' rotary dims, in
    # torch's float32 for the frequencies and Python's float64 for the rest, padded with 1.0 to head_dim / 2
    def generate_extra_tensors(self) -> list[tuple[str, np.ndarray]]:
        hp = self.hp
        rope_params = self.rp.get("full_attention", self.rp)
        if str(rope_params.get("rope_type") or "").lower() != "llama3":
            return []
        f32 = np.float32
        base = float(hp.get("rope_theta", 10000.0))
        storage_dim = int(hp["head_dim"])
        layer_types = (hp.get("layer_types") or [])[: self.block_count]
        factors = (hp.get("partial_rotary_factors") or [])[: self.block_count]
        full = next((float(f) for lt, f in zip(layer_types, factors) if lt == "full_attention"), None)
        if full is None:  # upstream: StopIteration
            raise InputError(f"{self.config_path}: a llama3 rope needs a full_attention layer with a partial_rotary_factor")
        rotary_dim = int(storage_dim * full)
        expo = np.arange(0, rotary_dim, 2, dtype=f32) / f32(rotary_dim)
        freqs = (f32(1) / torch_pow_f32(f32(base), expo)) * f32(1.0)
        factor = float(rope_params.get("factor", 8.0))
        low = float(rope_params.get("low_freq_factor", 1.0))
        high = float(rope_params.get("high_freq_factor", 4.0))
        old = int(rope_params.get("original_max_position_embeddings", 8192))
        if not (factor > 0 and low > 0 and high > low and old > 0):
            raise InputError(f"{self.config_path}: llama3 rope_scaling needs positive factors and high_freq_factor > low_freq_factor")
        low_wavelen, high_wavelen = old / low, old / high
        out: list[float] = []
        for freq in freqs:
            wavelen = 2 * math.pi / float(freq)
            if wavelen < high_wavelen:
                out.append(1.0)
            elif wavelen > low_wavelen:
                out.append(factor)
            else:
                smooth = (old / wavelen - low) / (high - low)
                out.append(1.0 / ((1.0 - smooth) / factor + smooth))
        if len(out) < storage_dim // 2:
            out.extend([1.0] * (storage_dim // 2 - len(out)))
        return [("rope_freqs.weight", np.array(out, dtype=np.float64).astype(np.float32))]
