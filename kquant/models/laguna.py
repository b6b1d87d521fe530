"""Poolside Laguna: conversion/laguna.py LagunaModel (llama.cpp as vendored in llama-cpp-python 0.3.36).

Q/K-normed attention with an output gate (`self_attn.g_proj`, per head or per element), heads per layer
(`num_attention_heads_per_layer`), full and sliding-window layers with their own rope bases and partial
rotary factors (rope_parameters per layer type), dense first layers (`mlp_layer_types`) then MoE layers:
per-expert tensors stacked as the converter stacks them, a sigmoid router with a score-correction bias
(`mlp.experts.e_score_correction_bias`) and a shared expert. The GPT-2 vocabulary with `</assistant>` made a
control token, the resolved chat_template.jinja, and the second eos id as eot. transformers 4.57.6 has no
LagunaConfig: the converter reads config.json as it is (in the checkpoint's own layout, not transformers 5's
stacked one, which it cannot map).
"""

from __future__ import annotations

from ..errors import InputError, UnsupportedError
from ..io.gguf_kv import TOK_LIST, TOK_MODEL, TOK_PRE, TOK_TYPE, StringArray
from ..io.jsonio import read_text
from .. import vocab as V
from .base import QK_NORM_LAYER, Experts, TextModel, register
from .hparams import HFConfig

LAGUNA_CONFIG = HFConfig("laguna", {}, raw=True)

_ATTN = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.g_proj": "attn_gate",
} | QK_NORM_LAYER
_DENSE = {"mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
_MOE = {"mlp.gate": "ffn_gate_inp", "mlp.experts.e_score_correction": "exp_probs_b",
        "mlp.shared_expert.gate_proj": "ffn_gate_shexp", "mlp.shared_expert.up_proj": "ffn_up_shexp",
        "mlp.shared_expert.down_proj": "ffn_down_shexp"}
# LagunaModel.modify_tensors stacks gate, up, down in this order once a layer's experts are all there
LAGUNA_EXPERTS = Experts(
    source="model.layers.{bid}.mlp.experts.{xid}.{w}.weight",
    order=(("gate_proj", "ffn_gate_exps"), ("up_proj", "ffn_up_exps"), ("down_proj", "ffn_down_exps")),
    count_keys=("num_local_experts", "num_experts"),
)


@register("LagunaForCausalLM")
class LagunaModel(TextModel):
    configs = (LAGUNA_CONFIG,)
    layer = _ATTN | _DENSE | _MOE
    bias_ok = ("mlp.experts.e_score_correction",)
    bias_only = ("mlp.experts.e_score_correction",)
    optional = ("mlp.experts.e_score_correction",)
    experts = LAGUNA_EXPERTS
    inverse_names = True
    norm_of = TextModel.norm_of | {"attn_gate": "attn_norm"}

    @classmethod
    def arch_name(cls) -> str:
        return "laguna"  # gguf-py MODEL_ARCH_NAMES[LAGUNA] (newer than the gguf package kquant uses)

    def prepare(self) -> None:
        hp, where = self.hp, self.config_path
        n_layer = hp["num_hidden_layers"]
        types = hp.get("mlp_layer_types")
        if not isinstance(types, list) or len(types) < n_layer:
            raise InputError(f"{where}: 'mlp_layer_types' must list {n_layer} layers, got {types!r}"[:200])
        self._sparse = [t != "dense" for t in types[:n_layer]]
        heads = hp.get("num_attention_heads_per_layer") or [hp["num_attention_heads"]] * n_layer
        if not isinstance(heads, list) or len(heads) != n_layer or not all(
                isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in heads):
            raise InputError(f"{where}: 'num_attention_heads_per_layer' must list {n_layer} positive integers, got {heads!r}"[:200])
        self._heads = heads
        rp = self.rp
        if "full_attention" not in rp:  # upstream: self.rope_parameters["full_attention"] (KeyError)
            raise InputError(f"{where}: Laguna needs 'rope_parameters' per layer type (full_attention, sliding_attention)")
        self._gates = self.attn_gate_types()

    # LagunaModel._attn_gate_types
    def attn_gate_types(self) -> list[str]:
        hp, where = self.hp, self.config_path
        n_layer = hp["num_hidden_layers"]
        gating, gating_types = hp.get("gating"), hp.get("gating_types")

        def norm(t) -> str:
            s = str(t).replace("-", "_")
            if s in ("per_element", "per_head"):
                return s
            raise InputError(f"{where}: Laguna: unrecognised attention gate type {t!r}")

        if gating_types:
            if not isinstance(gating_types, list) or len(gating_types) != n_layer:
                raise InputError(f"{where}: 'gating_types' must list {n_layer} layers")
            types = [norm(t) for t in gating_types]
        elif isinstance(gating, str):
            types = [norm(gating)] * n_layer
        elif gating is True:
            types = ["per_head"] * n_layer
        else:
            raise InputError(f"{where}: Laguna: cannot determine the attention gate type (gating={gating!r}, "
                             f"gating_types={gating_types!r})"[:300])
        if any(t == "per_element" for t in types) and not (isinstance(gating, str) and norm(gating) == "per_element"):
            raise UnsupportedError(f"{where}: a per-element attention gate needs gating = \"per-element\" (the converter "
                                   "refuses it otherwise)")
        return types

    def layer_modules(self, bid: int) -> dict[str, str]:
        return _ATTN | (_MOE if self._sparse[bid] else _DENSE)

    def layer_experts(self, bid: int):
        return self.experts if self._sparse[bid] else None

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        hp = self.hp
        e, n_x = hp["hidden_size"], self._n_expert
        ff_x, ff_sh = hp["moe_intermediate_size"], hp["shared_expert_intermediate_size"]
        s = {k: w for k, w in super().tensor_shapes().items() if k not in ("attn_q", "attn_output")}
        s.update({"exp_probs_b": (n_x,), "ffn_gate_exps": (ff_x, e), "ffn_up_exps": (ff_x, e), "ffn_down_exps": (e, ff_x),
                  "ffn_gate_shexp": (ff_sh, e), "ffn_up_shexp": (ff_sh, e), "ffn_down_shexp": (e, ff_sh)})
        return s

    # LagunaModel.modify_tensors: q / o and the gate's width per layer (heads per layer, gate type)
    def modify_tensors(self, t, name, gname, base, bid):
        if bid is not None and base in ("attn_q", "attn_output", "attn_gate"):
            e, hd, n_head = self.hp["hidden_size"], self.hp["head_dim"], self._heads[bid]
            gate = n_head * hd if self._gates[bid] == "per_element" else n_head
            want = {"attn_q": (n_head * hd, e), "attn_output": (e, n_head * hd), "attn_gate": (gate, e)}[base]
            if tuple(t[1]) != want:
                raise InputError(f"{self.folder}: tensor {t[0]!r} has shape {list(t[1])}, expected {list(want)} "
                                 f"(layer {bid}: {n_head} heads, {self._gates[bid]} gate)")
        return super().modify_tensors(t, name, gname, base, bid)

    # LagunaModel.set_vocab / get_vocab_base
    def set_vocab(self, tokenizer_pre: str | None = None) -> None:
        rec, folder, hp = self.kv, self.tok_folder, self.hp
        tokens, toktypes, tokpre = V.get_vocab_base(folder, hp, hp["model_type"], tokenizer_pre)
        toktypes = [V.CONTROL if tok == "</assistant>" else typ for tok, typ in zip(tokens, toktypes)]
        rec.add_string(TOK_MODEL, "gpt2")
        rec.add_string(TOK_PRE, tokpre)
        rec.add_array(TOK_LIST, StringArray(tokens))
        rec.add_array(TOK_TYPE, toktypes)
        V.SpecialVocab(folder, load_merges=True).add_to_gguf(rec)
        tmpl = folder / "chat_template.jinja"
        if tmpl.is_file():  # read_text(encoding="utf-8"): universal newlines
            rec.add_chat_template(read_text(tmpl, what="template").replace("\r\n", "\n").replace("\r", "\n"))
        eos = hp.get("eos_token_id")
        if isinstance(eos, list):
            extra = [x for x in eos if x != hp.get("bos_token_id")]
            if extra:
                if isinstance(extra[0], bool) or not isinstance(extra[0], int) or extra[0] < 0:
                    raise InputError(f"{self.config_path}: 'eos_token_id' entries must be token ids, got {extra[0]!r}")
                rec.add_special_token_id("eot", extra[0])

    # LagunaModel.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        hp, where = self.hp, self.config_path
        super().set_gguf_parameters()
        self.u32("vocab_size", hp["vocab_size"], "vocab_size")
        self.kv.add_array(self.key("attention.head_count"), self._heads)
        if (sw := hp.get("sliding_window") or 0) > 0:
            self.u32("attention.sliding_window", sw, "sliding_window")
        self.u32("expert_feed_forward_length", hp["moe_intermediate_size"], "moe_intermediate_size")
        self.u32("expert_shared_feed_forward_length", hp["shared_expert_intermediate_size"], "shared_expert_intermediate_size")
        self.kv.add_bool(self.key("expert_weights_norm"), True)
        scale = hp.get("moe_routed_scaling_factor")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise InputError(f"{where}: 'moe_routed_scaling_factor' must be a number, got {scale!r}")
        self.f32("expert_weights_scale", float(scale), "moe_routed_scaling_factor")
        self.kv.add_uint32(self.key("expert_gating_func"), 2)  # ExpertGatingFuncType.SIGMOID
        lead = 0
        for s in self._sparse:
            if s:
                break
            lead += 1
        self.u32("leading_dense_block_count", lead, "mlp_layer_types")
        head_dim = hp["head_dim"]
        full = self.rp["full_attention"]
        self.u32("rope.dimension_count", int(head_dim * float(full.get("partial_rotary_factor", 1.0))), "partial_rotary_factor")
        if (swa := self.rp.get("sliding_attention")) is not None:
            self.u32("rope.dimension_count_swa", int(head_dim * float(swa.get("partial_rotary_factor", 1.0))),
                     "partial_rotary_factor")
