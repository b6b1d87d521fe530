"""Kimi Linear (`KimiLinearForCausalLM`, `KimiLinearModel`): conversion/kimi_linear.py KimiLinearModel
(llama.cpp as vendored in llama-cpp-python 0.3.36).

A hybrid of KDA (Kimi Delta Attention, linear attention) layers and MLA layers (those listed,
1-based, in `linear_attn_config.full_attn_layers`); head_count_kv is written per layer (0 for KDA,
1 for MLA: MLA as MQA). KDA layers: q/k/v projections with short depthwise convolutions
(`q_conv1d` ..., written 4-D [1, d_inner, 1, d_conv] and F32), the forget gate f_a/f_b, beta
(`b_proj`), A written as -exp(A_log), `dt_bias` as ssm_dt.bias, the output gate g_a/g_b and its
norm. MLA layers as DeepSeek's: a plain q_proj (or q_a/q_b), kv_a_proj_with_mqa, kv_b_proj split
into attn_k_b (transposed) / attn_v_b. Dense first layers (`first_k_dense_replace`), then
`block_sparse_moe` routed experts (w1/w2/w3 stacked) + shared experts and the router's
e_score_correction_bias. transformers 4.57.6 has no config class for model_type kimi_linear (the
checkpoint's remote code): the converter reads config.json as it is. The vocabulary is Kimi's
tiktoken one (kquant.vocab.tiktoken), with the eos id taken from the tokenizer, as the converter does.
"""

from __future__ import annotations

from typing import Any

from gguf import MODEL_ARCH

from ..errors import InputError, UnsupportedError
from .. import vocab as V
from .base import Experts, HFTensor, TextModel, register
from .deepseek import _k_b, _v_b
from .hparams import HFConfig
from .mamba import neg_exp, reshaped
from .spec import TensorSpec

KIMI_LINEAR_CONFIG = HFConfig("kimi_linear", {}, raw=True)

_COMMON = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.o_proj": "attn_output"}
# gguf-py tensor_mapping.py: the KDA layer's modules (Kimi Linear)
_KDA = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.q_conv1d": "ssm_conv1d_q", "self_attn.k_conv1d": "ssm_conv1d_k", "self_attn.v_conv1d": "ssm_conv1d_v",
    "self_attn.f_a_proj": "ssm_f_a", "self_attn.f_b_proj": "ssm_f_b", "self_attn.b_proj": "ssm_beta",
    "self_attn.A_log": "ssm_a", "self_attn.dt_proj": "ssm_dt",  # dt_bias, renamed (modify_tensors)
    "self_attn.g_a_proj": "ssm_g_a", "self_attn.g_b_proj": "ssm_g_b", "self_attn.o_norm": "ssm_norm",
}
_MLA = {
    "self_attn.kv_a_proj_with_mqa": "attn_kv_a_mqa", "self_attn.kv_a_layernorm": "attn_kv_a_norm",
    "self_attn.kv_b_proj": "attn_kv_b",
}
_Q_PLAIN = {"self_attn.q_proj": "attn_q"}
_Q_LORA = {"self_attn.q_a_proj": "attn_q_a", "self_attn.q_a_layernorm": "attn_q_a_norm", "self_attn.q_b_proj": "attn_q_b"}
_DENSE = {"mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
_MOE = {
    "block_sparse_moe.gate": "ffn_gate_inp", "block_sparse_moe.gate.e_score_correction": "exp_probs_b",
    "block_sparse_moe.shared_experts.gate_proj": "ffn_gate_shexp",
    "block_sparse_moe.shared_experts.up_proj": "ffn_up_shexp",
    "block_sparse_moe.shared_experts.down_proj": "ffn_down_shexp",
}
_CONVS = ("self_attn.q_conv1d", "self_attn.k_conv1d", "self_attn.v_conv1d")


def _pos_int(hp: dict, key: str, where, d: dict | None = None) -> int:
    v = (hp if d is None else d).get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise InputError(f"{where}: {key!r} must be a positive integer, got {v!r}")
    return v


@register("KimiLinearModel", "KimiLinearForCausalLM")
class KimiLinearModel(TextModel):
    model_arch = MODEL_ARCH.KIMI_LINEAR
    configs = (KIMI_LINEAR_CONFIG,)
    layer = _COMMON | _KDA | _MLA | _Q_LORA | _DENSE | _MOE  # every module any layer may have
    bias_ok = ("block_sparse_moe.gate.e_score_correction", "self_attn.dt_proj")
    bias_only = ("block_sparse_moe.gate.e_score_correction", "self_attn.dt_proj")
    optional = ("block_sparse_moe.gate.e_score_correction",)
    bare_params = ("self_attn.A_log",)
    split_modules = {"attn_kv_b": ("attn_k_b", "attn_v_b")}  # modify_tensors
    # KimiLinearModel.modify_tensors: experts stacked in the order w1 (gate), w2 (down), w3 (up)
    experts = Experts(
        source="model.layers.{bid}.block_sparse_moe.experts.{xid}.{w}.weight",
        order=(("w1", "ffn_gate_exps"), ("w2", "ffn_down_exps"), ("w3", "ffn_up_exps")),
        count_keys=("num_local_experts", "num_experts"),
    )
    inverse_names = False
    inverse_refused = "the converter writes the KDA A as -exp(A_log): not undone exactly"
    norm_of = {
        "attn_q": "attn_norm", "attn_k": "attn_norm", "attn_v": "attn_norm", "attn_q_a": "attn_norm",
        "attn_q_b": "attn_q_a_norm", "attn_kv_a_mqa": "attn_norm", "ssm_f_a": "attn_norm", "ssm_g_a": "attn_norm",
        "ssm_beta": "attn_norm",
        "ffn_gate": "ffn_norm", "ffn_up": "ffn_norm", "ffn_gate_exps": "ffn_norm", "ffn_up_exps": "ffn_norm",
        "ffn_gate_inp": "ffn_norm", "ffn_gate_shexp": "ffn_norm", "ffn_up_shexp": "ffn_norm",
    }

    def __init__(self, hp: dict[str, Any], **kw):
        super().__init__(hp, **kw)
        where = self.config_path
        for k in ("qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim", "kv_lora_rank", "moe_intermediate_size",
                  "num_key_value_heads", "num_attention_heads"):
            _pos_int(hp, k, where)
        if hp.get("q_lora_rank") is not None:
            _pos_int(hp, "q_lora_rank", where)
        for k in ("first_k_dense_replace", "num_shared_experts"):
            v = hp.get(k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InputError(f"{where}: {k!r} must be a non-negative integer, got {v!r}")
        if hp.get("moe_layer_freq", 1) != 1:
            raise UnsupportedError(f"{where}: 'moe_layer_freq' other than 1 is not supported (llama.cpp's kimi-linear has none)")
        lac = hp.get("linear_attn_config")
        if not isinstance(lac, dict):
            raise InputError(f"{where}: 'linear_attn_config' must be an object")
        full = lac.get("full_attn_layers")
        if not isinstance(full, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in full):
            raise InputError(f"{where}: 'linear_attn_config.full_attn_layers' must be a list of layer numbers")
        self.full_attn = {i - 1 for i in full}  # 1-based upstream
        lw = f"{where}: linear_attn_config"
        self.kda_head_dim = _pos_int(hp, "head_dim", lw, lac)
        self.d_conv = _pos_int(hp, "short_conv_kernel_size", lw, lac)
        self.kda_heads = _pos_int(hp, "num_heads", lw, lac)
        self.n_head_kv_hf = hp["num_key_value_heads"]  # the kv_b_proj split reads it before set_gguf_parameters sets 1

    def is_mla(self, bid: int) -> bool:
        return bid in self.full_attn

    def layer_modules(self, bid: int) -> dict[str, str]:
        if self.is_mla(bid):
            attn = _MLA | (_Q_PLAIN if self.hp.get("q_lora_rank") is None else _Q_LORA)
        else:
            attn = _KDA
        ffn = _DENSE if bid < self.hp["first_k_dense_replace"] else _MOE
        if ffn is _MOE and not self.hp["num_shared_experts"]:
            ffn = {k: v for k, v in _MOE.items() if "shared_experts" not in k}
        return _COMMON | attn | ffn

    def layer_experts(self, bid: int):
        return None if bid < self.hp["first_k_dense_replace"] else self.experts

    # KimiLinearModel.modify_tensors: dt_bias -> dt_proj.bias
    def filter_name(self, name: str) -> str | None:
        name = super().filter_name(name)
        if name is not None and name.endswith(".dt_bias"):
            name = name.rpartition(".dt_bias")[0] + ".dt_proj.bias"
        return name

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        hp = self.hp
        e, n_head = hp["hidden_size"], hp["num_attention_heads"]
        nope, rope, v = hp["qk_nope_head_dim"], hp["qk_rope_head_dim"], hp["v_head_dim"]
        kv_lora, q_lora = hp["kv_lora_rank"], hp.get("q_lora_rank")
        hd, nk = self.kda_head_dim, self.kda_heads
        d = hd * nk
        ff_exp = hp["moe_intermediate_size"]
        ff_sh = ff_exp * hp["num_shared_experts"]
        s = super().tensor_shapes()
        for k in ("attn_q", "attn_k", "attn_v", "attn_output"):  # per layer kind: layer_shapes
            del s[k]
        s.update({
            "ffn_gate_shexp": (ff_sh, e), "ffn_up_shexp": (ff_sh, e), "ffn_down_shexp": (e, ff_sh),
            "ffn_gate_exps": (ff_exp, e), "ffn_up_exps": (ff_exp, e), "ffn_down_exps": (e, ff_exp),
            "exp_probs_b": (self._n_expert,),
            "attn_kv_a_mqa": (kv_lora + rope, e), "attn_kv_a_norm": (kv_lora,),
            "attn_kv_b": (self.n_head_kv_hf * (nope + v), kv_lora),
            "ssm_f_a": (hd, e), "ssm_f_b": (d, hd), "ssm_beta": (nk, e), "ssm_a": (1, 1, nk, 1), "ssm_dt": (d,),
            "ssm_g_a": (hd, e), "ssm_g_b": (d, hd), "ssm_norm": (hd,),
        })
        if q_lora is not None:
            s.update({"attn_q_a": (q_lora, e), "attn_q_a_norm": (q_lora,), "attn_q_b": (n_head * (nope + rope), q_lora)})
        return s

    def layer_shapes(self, bid: int) -> dict[str, tuple[tuple[int, ...], ...]]:
        """Shapes (any of) of the tensors whose size depends on the layer kind (checked in modify_tensors)."""
        hp = self.hp
        e, n_head = hp["hidden_size"], hp["num_attention_heads"]
        if self.is_mla(bid):
            return {"attn_q": ((n_head * (hp["qk_nope_head_dim"] + hp["qk_rope_head_dim"]), e),),
                    "attn_output": ((e, n_head * hp["v_head_dim"]),)}
        d, k = self.kda_head_dim * self.kda_heads, self.d_conv
        conv = ((d, 1, k), (d, k))  # nn.Conv1d's [d_inner, 1, d_conv], or squeezed
        return {"attn_q": ((d, e),), "attn_k": ((d, e),), "attn_v": ((d, e),), "attn_output": ((e, d),),
                "ssm_conv1d_q": conv, "ssm_conv1d_k": conv, "ssm_conv1d_v": conv}

    def modify_tensors(self, t: HFTensor, name: str, gname: str, base: str, bid: int | None) -> list[TensorSpec]:
        if bid is not None and (want := self.layer_shapes(bid).get(base)) is not None and tuple(t[1]) not in want:
            raise InputError(f"{self.folder}: tensor {t[0]!r} has shape {list(t[1])}, expected {list(want[0])} from config.json")
        if any(name.endswith(c + ".weight") for c in _CONVS):
            # [d_inner, 1, d_conv] or [d_inner, d_conv] -> (1, d_inner, 1, d_conv): ggml ne [d_conv, 1, d_inner, 1]
            d_inner, d_conv = t[1][0], t[1][-1]
            shape = (1, d_inner, 1, d_conv)
            return [self.spec(gname, t, shape=shape, transform=reshaped(shape))]
        if name.endswith(".A_log"):
            return [self.spec(gname, t, transform=neg_exp(t[2]))]
        if base == "attn_kv_b":
            # MLA with the absorption optimization: kv_b split per head, k_b transposed (as DeepseekV2Model)
            hp = self.hp
            n, nope, v = self.n_head_kv_hf, hp["qk_nope_head_dim"], hp["v_head_dim"]
            kv_lora = t[1][1]
            return [
                self.spec(f"blk.{bid}.attn_k_b.weight", t, shape=(n, kv_lora, nope), transform=_k_b(n, nope, v)),
                self.spec(f"blk.{bid}.attn_v_b.weight", t, shape=(n, v, kv_lora), transform=_v_b(n, nope, v)),
            ]
        return super().modify_tensors(t, name, gname, base, bid)

    # KimiLinearModel.set_vocab: the GPT-2 vocabulary, else Kimi's tiktoken one with the tokenizer's eos id
    def set_vocab(self, tokenizer_pre: str | None = None) -> None:
        folder = self.tok_folder
        if (folder / "tokenizer.json").is_file():
            V.set_vocab_gpt2(self.kv, folder, self.hp, self.hp["model_type"], tokenizer_pre)
        elif V.is_kimi_tokenizer(folder):
            V.set_vocab_kimi(self.kv, folder, self.hp, tokenizer_pre, eos_from_tokenizer=True)
        else:
            raise UnsupportedError(f"{folder}: no tokenizer.json, nor a Kimi tiktoken.model with its tokenizer_config.json")

    # KimiLinearModel.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        hp = self.hp
        hp["num_key_value_heads"] = 1  # MLA KV cache: MQA
        super().set_gguf_parameters()
        self.u32("vocab_size", hp["vocab_size"], "vocab_size")
        self.kv.add_array(self.key("attention.head_count_kv"),
                          [hp["num_key_value_heads"] if self.is_mla(i) else 0 for i in range(hp["num_hidden_layers"])])
        self.u32("ssm.conv_kernel", self.d_conv, "linear_attn_config.short_conv_kernel_size")
        self.u32("kda.head_dim", self.kda_head_dim, "linear_attn_config.head_dim")
        if (q_lora := self.find_hparam(["q_lora_rank", "n_lora_q"], True)) is not None:
            self.u32("attention.q_lora_rank", q_lora, "q_lora_rank")
        kv_lora = self.find_hparam(["kv_lora_rank", "n_lora_kv"])
        self.u32("attention.kv_lora_rank", kv_lora, "kv_lora_rank")
        rope = self.find_hparam(["qk_rope_head_dim", "n_rot"])
        self.u32("rope.dimension_count", rope, "qk_rope_head_dim")
        self.u32("attention.key_length", kv_lora + rope, "kv_lora_rank + qk_rope_head_dim")
        if (k_mla := self.find_hparam(["n_embd_head_k_mla"], True)) is not None:
            self.u32("attention.key_length_mla", k_mla, "n_embd_head_k_mla")
        elif (nope := hp.get("qk_nope_head_dim")) is not None:
            self.u32("attention.key_length_mla", nope + rope, "qk_nope_head_dim + qk_rope_head_dim")
        if (v_mla := hp.get("n_embd_head_v_mla")) is not None:
            self.u32("attention.value_length_mla", v_mla, "n_embd_head_v_mla")
        elif (v := hp.get("v_head_dim")) is not None:
            self.u32("attention.value_length_mla", v, "v_head_dim")
        self.u32("expert_feed_forward_length", hp["moe_intermediate_size"], "moe_intermediate_size")
        self.u32("expert_shared_count", hp["num_shared_experts"], "num_shared_experts")
        self.u32("leading_dense_block_count", hp["first_k_dense_replace"], "first_k_dense_replace")
        self.f32("expert_weights_scale", hp["routed_scaling_factor"], "routed_scaling_factor")
