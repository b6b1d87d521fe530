"""Falcon-H1 (attention and Mamba-2 in parallel in every layer): conversion/falcon_h1.py FalconH1Model on
conversion/mamba.py Mamba2Model (llama.cpp as vendored in llama-cpp-python 0.3.36).

The config's multipliers are folded into the weights as the converter folds them: each product in
torch's float32 arithmetic (float16 for F16 sources), one rounding per multiplication, in the
converter's order."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
from gguf import MODEL_ARCH

from ..errors import InputError, UnsupportedError
from .. import vocab as V
from .base import TextModel, register
from .hparams import HFConfig
from .mamba import MAMBA2_BARE, MAMBA2_BIAS_OK, MAMBA2_LAYER, find_prefixed, mamba2_name, mamba2_parameters, mamba2_spec

# Mamba2Model reads config.json as it is (no transformers config class, no defaults)
FALCON_H1_CONFIG = HFConfig("falcon_h1", {})
FALCON_H1_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
    "pre_ff_layernorm": "ffn_norm",
    "feed_forward.gate_proj": "ffn_gate", "feed_forward.up_proj": "ffn_up", "feed_forward.down_proj": "ffn_down",
} | MAMBA2_LAYER
FFN_PRE_NORM = re.compile(r"blk\.\d+\.ffn_norm")
FALCON_H1_GLOBALS = {"model.embed_tokens": "token_embd", "model.final_layernorm": "output_norm", "lm_head": "output"}


def scaled(factors, f16: bool):
    """x * f0 * f1 ... as torch computes `tensor * python_float` (float32 scalar, one rounding each)."""
    def f(arrs):
        x = arrs[0]
        for m in factors:
            x = x * np.float32(m)
            if f16:
                x = x.astype(np.float16).astype(np.float32)
        return x
    return f


def scaled_in_proj(m_in, chunks: list[tuple[int, int, float]], f16: bool):
    """FalconH1Model.modify_tensors in_proj: the whole tensor times ssm_in_multiplier, then each row
    range [a, b) of z, x, B, C, dt times its ssm_multipliers entry (in place)."""
    def f(arrs):
        x = scaled([m_in], f16)(arrs)
        for a, b, m in chunks:
            x[a:b] = scaled([m], f16)([x[a:b]])
        return x
    return f


@register("FalconH1ForCausalLM")
class FalconH1Model(TextModel):
    model_arch = MODEL_ARCH.FALCON_H1
    inverse_refused = "the converter writes A as -exp(A_log) and folds the config's multipliers into the weights: not undone exactly"
    configs = (FALCON_H1_CONFIG,)
    globals_ = FALCON_H1_GLOBALS
    bias_ok = MAMBA2_BIAS_OK + ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                "feed_forward.gate_proj", "feed_forward.up_proj", "feed_forward.down_proj")
    bias_only = ("mamba.dt_proj",)
    bare_params = MAMBA2_BARE
    prefixes = ("mamba",)

    def find_hparam(self, keys, optional: bool = False):  # FalconH1Model.find_hparam: mamba_-prefixed keys too
        return find_prefixed(self.hp, keys, self.prefixes, optional)

    def prepare(self) -> None:
        try:
            self.d_model = self.find_hparam(["hidden_size", "d_model", "dim"])
            self.n_group = self.find_hparam(["n_groups"])
            self.d_inner = self.find_hparam(["mamba_d_ssm"])
            self.d_head = self.find_hparam(["d_head"])
        except KeyError as e:
            raise InputError(f"{self.config_path}: {e.args[0]}") from None
        for k in ("n_group", "d_inner", "d_head"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise InputError(f"{self.config_path}: mamba_{k} must be a positive integer, got {v!r}")
        self.mult = {k: self.find_hparam([k], True) for k in (
            "attention_in_multiplier", "attention_out_multiplier", "ssm_in_multiplier", "ssm_out_multiplier",
            "mlp_multipliers", "ssm_multipliers", "key_multiplier", "lm_head_multiplier", "embedding_multiplier")}

    def layer_modules(self, bid: int) -> dict[str, str]:
        if self.hp.get("mamba_rms_norm", False):
            return FALCON_H1_LAYER
        return {k: v for k, v in FALCON_H1_LAYER.items() if k != "mamba.norm"}  # no gated norm

    # Mamba2Model.filter_tensors
    def filter_name(self, name: str) -> str | None:
        return super().filter_name(mamba2_name(name))

    def expected_shape(self, base: str, bias: bool):
        return None if base.startswith("ssm_") else super().expected_shape(base, bias)

    def factors(self, name: str) -> list[float] | None:
        """FalconH1Model.modify_tensors: the multipliers of one tensor, by its HF name, in order."""
        m = self.mult

        def need(*keys):
            for k in keys:
                if m[k] is None:
                    raise InputError(f"{self.config_path}: {k!r} is needed for tensor {name!r}")
            return [m[k] for k in keys]

        if "down_proj" in name:
            return [need("mlp_multipliers")[0][1]]
        if "gate_proj" in name:
            return [need("mlp_multipliers")[0][0]]
        if "k_proj" in name:
            return need("key_multiplier", "attention_in_multiplier")
        if "q_proj" in name or "v_proj" in name:
            return need("attention_in_multiplier")
        if "o_proj" in name:
            return need("attention_out_multiplier")
        if "out_proj" in name:
            return need("ssm_out_multiplier")
        if "in_proj" in name:
            return need("ssm_in_multiplier")
        if "lm_head" in name:
            return [self.hp["lm_head_multiplier"]]
        if "embed_tokens" in name:
            return [self.hp["embedding_multiplier"]]
        return None

    def modify_tensors(self, t, name, gname, base, bid):
        if name.endswith("pre_ff_layernorm.weight"):
            # gguf-py maps "...pre_ff_layernorm.weight" whole to FFN_PRE_NORM ("blk.N.ffn_norm"): no suffix
            return [self.spec(gname.removesuffix(".weight"), t)]
        f16 = t[2] == "F16"
        then = None
        factors = self.factors(name)
        if factors is not None and "in_proj" in name:
            hp = self.hp
            n, gs = hp["mamba_d_ssm"], hp["mamba_n_groups"] * hp["mamba_d_state"]
            zx = hp["ssm_multipliers"]
            chunks = [(0, n, zx[0]), (n, 2 * n, zx[1]), (2 * n, 2 * n + gs, zx[2]), (2 * n + gs, 2 * n + 2 * gs, zx[3]),
                      (2 * n + 2 * gs, t[1][0], zx[4])]
            then = scaled_in_proj(factors[0], chunks, f16)
        elif factors is not None:
            then = scaled(factors, f16)
        return [mamba2_spec(self, t, name, gname, self.n_group, self.d_inner, then=then)]

    def check_complete(self, out) -> None:
        super().check_complete([replace(t, name=t.name + ".weight") if FFN_PRE_NORM.fullmatch(t.name) else t for t in out])

    # Mamba2Model.set_gguf_parameters, then FalconH1Model.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        hp = self.hp
        d_conv = self.find_hparam(["conv_kernel", "d_conv"], True) or 4
        d_state = self.find_hparam(["state_size", "d_state"], True) or 128
        head_dim = self.find_hparam(["mamba_d_head", "head_dim"], True) or 64
        rms_eps = self.find_hparam(["layer_norm_epsilon", "rms_norm_eps"], True) or 1e-5
        mamba2_parameters(self, d_conv, d_state, head_dim, rms_eps,
                          ("mamba_d_conv", "mamba_d_ssm", "mamba_d_state", "mamba_d_head", "mamba_n_groups", "rms_norm_eps"))
        self.u32("vocab_size", hp["vocab_size"], "vocab_size")
        self.kv.add_uint32(self.key("block_count"), self.block_count)
        self.u32("context_length", hp.get("max_position_embeddings", 0), "max_position_embeddings")
        self.u32("feed_forward_length", hp["intermediate_size"], "intermediate_size")
        self.u32("attention.head_count", hp["num_attention_heads"], "num_attention_heads")
        self.u32("attention.head_count_kv", hp["num_key_value_heads"], "num_key_value_heads")
        if "head_dim" not in hp:
            raise InputError(f"{self.config_path}: missing key 'head_dim'")
        self.u32("attention.key_length", hp["head_dim"], "head_dim")
        self.u32("attention.value_length", hp["head_dim"], "head_dim")
        if hp.get("hidden_act") not in (None, "silu"):
            raise UnsupportedError(f"{self.config_path}: hidden_act {hp.get('hidden_act')!r}: only silu is supported")
        if self.d_inner % self.d_head:
            raise InputError(f"{self.config_path}: SSM inner size {self.d_inner} is not a multiple of head dim {self.d_head}")
        if (theta := self.rp.get("rope_theta")) is None:
            raise InputError(f"{self.config_path}: missing key 'rope_theta'")
        self.f32("rope.freq_base", theta, "rope_theta")

    def set_vocab(self, tokenizer_pre: str | None = None) -> None:
        V.set_vocab_gpt2(self.kv, self.tok_folder, self.hp, self.hp["model_type"], tokenizer_pre)
