"""Tencent HY V4 (Hy4): conversion/hy_v4.py HYV4Model (llama.cpp as vendored in llama-cpp-python 0.3.36).

A DeepseekV2Model (MLA with q/kv LoRA and kv_b_proj split into attn_k_b / attn_v_b; dense first layers,
then sigmoid-routed experts with e_score_correction_bias and shared experts) with: pre-stacked experts
(`mlp.experts.gate_up_proj` split into gate and up, `mlp.experts.down_proj`), a head-wise gated attention
output (`self_attn.linear_gate`) and learnable sinks, independent hyper-connections around attention
and MLP (`hc_attn_layer` / `hc_mlp_layer`) and before the output norm (`model.hc_head`), whose mixing
matrices the converter keeps in F32, and the DSA lightning indexer on the layers `indexer_types` marks
"full". MTP layers (`model.mtp_layers.*`) are dropped as the converter drops them. transformers 4.57.6
has no config class for it: the converter reads config.json as it is.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from ..errors import InputError, UnsupportedError
from ..types import QType
from .base import GLOBAL_NAMES, HFJoin, register, rows
from .deepseek import _ATTN, _DENSE, _INDEXER, _Q_LORA, _SHARED, DeepseekV2Model, _positive_int
from .hparams import HFConfig

HY_V4_CONFIG = HFConfig("hy_v4", {}, raw=True)
ARCH_HY_V4 = "hy_v4"  # gguf-py MODEL_ARCH_NAMES[HY_V4] (newer than the gguf package kquant uses)

# gguf-py tensor_mapping.py (hy-v4 entries)
_HY_ATTN = {
    "self_attn.learnable_sink_param": "attn_sinks",
    "self_attn.linear_gate": "attn_gate",
    "hc_attn_layer.hc_pre.hc_fn": "hc_attn_fn", "hc_attn_layer.hc_pre.hc_base": "hc_attn_base",
    "hc_attn_layer.hc_pre.hc_scale": "hc_attn_scale",
    "hc_mlp_layer.hc_pre.hc_fn": "hc_ffn_fn", "hc_mlp_layer.hc_pre.hc_base": "hc_ffn_base",
    "hc_mlp_layer.hc_pre.hc_scale": "hc_ffn_scale",
}
_HY_MOE = {
    "mlp.gate": "ffn_gate_inp", "mlp.gate.e_score_correction": "exp_probs_b",
    "mlp.experts.gate_up_proj": "ffn_gate_up_exps",  # split into ffn_gate_exps / ffn_up_exps
    "mlp.experts.down_proj": "ffn_down_exps",
}
_HY_GLOBALS = GLOBAL_NAMES | {"model.hc_head.hc_head_fn": "output_hc_fn", "model.hc_head.hc_head_base": "output_hc_base",
                              "model.hc_head.hc_head_scale": "output_hc_scale"}
# HYV4Model.modify_tensors: bare parameters that get a ".weight" suffix
_BARE = re.compile(r".*(mlp\.experts\.down_proj|\.self_attn\.learnable_sink_param|\.hc_head\.hc_head_(?:fn|base|scale)"
                   r"|\.hc_(?:attn|mlp)_layer\.hc_pre\.hc_(?:fn|base|scale))")
# HYV4Model.tensor_force_quant: the iHC mixing matrices stay F32
_F32_KINDS = ("hc_attn_fn.weight", "hc_ffn_fn.weight", "output_hc_fn.weight")


@register("HYV4ForCausalLM")
class HYV4Model(DeepseekV2Model):
    configs = (HY_V4_CONFIG,)
    globals_ = _HY_GLOBALS
    layer = _ATTN | _Q_LORA | _DENSE | _HY_MOE | _SHARED | _HY_ATTN | _INDEXER
    bias_ok = DeepseekV2Model.bias_ok + ("self_attn.indexer.k_norm",)
    split_modules = DeepseekV2Model.split_modules | {"ffn_gate_up_exps": ("ffn_gate_exps", "ffn_up_exps")}
    experts = None  # stacked in the checkpoint (merge_expert = False)
    inverse_names = True
    # --hf-names: gate_up_proj is each expert's gate rows over its up rows; bare parameters lose ".weight"
    hf_joins = DeepseekV2Model.hf_joins | {"ffn_gate_exps": HFJoin("mlp.experts.gate_up_proj", 0, 2),
                                           "ffn_up_exps": HFJoin("mlp.experts.gate_up_proj", 1, 2)}
    bare_hf = ("attn_sinks", "ffn_down_exps", "hc_attn_fn", "hc_attn_base", "hc_attn_scale", "hc_ffn_fn",
               "hc_ffn_base", "hc_ffn_scale", "output_hc_fn", "output_hc_base", "output_hc_scale")
    norm_of = DeepseekV2Model.norm_of | {"attn_gate": "attn_norm", "indexer.attn_q_b": "attn_q_a_norm",
                                         "indexer.attn_k": "attn_norm", "indexer.proj": "attn_norm"}

    @classmethod
    def arch_name(cls) -> str:
        return ARCH_HY_V4

    def __init__(self, hp: dict[str, Any], **kw):
        super().__init__(hp, **kw)
        where = self.config_path
        if hp.get("q_lora_rank") is None:
            raise InputError(f"{where}: HY V4 needs 'q_lora_rank' (llama.cpp's hy_v4 loader requires it)")
        for k in ("hc_mult",):
            _positive_int(hp, k, where)
        # HYV4Model.prepare_tensors: num_key_value_heads = num_attention_heads (the kv_b_proj split reads it)
        self.n_head_kv_hf = _positive_int(hp, "num_attention_heads", where)
        self.is_full = self.indexer_is_full()
        self._n_dense = self.dense_count()

    # HYV4Model.indexer_is_full
    def indexer_is_full(self) -> list[bool] | None:
        hp, where = self.hp, self.config_path
        n_layer = hp["num_hidden_layers"]
        indexer_types = hp.get("indexer_types")
        if indexer_types is None:
            layer_types = hp.get("layer_types") or []
            sparse = {"sparse_attention", "deepseek_sparse_attention"}
            if not isinstance(layer_types, list) or not any(t in sparse for t in layer_types):
                return None
            if len(layer_types) < n_layer:
                raise InputError(f"{where}: HY V4 layer_types has {len(layer_types)} entries, need {n_layer}")
            self._check_indexer_hparams()
            return [t in sparse for t in layer_types[:n_layer]]
        self._check_indexer_hparams()
        if not isinstance(indexer_types, list) or len(indexer_types) < n_layer:
            raise InputError(f"{where}: HY V4 indexer_types must list {n_layer} entries, got {indexer_types!r}"[:200])
        unknown = {str(t) for t in indexer_types[:n_layer]} - {"full", "shared"}
        if unknown:
            raise InputError(f"{where}: HY V4 unknown indexer_types values: {sorted(unknown)}")
        is_full = [t == "full" for t in indexer_types[:n_layer]]
        if is_full and not is_full[0]:
            raise InputError(f"{where}: HY V4 layer 0 must be indexer_types 'full' (nothing precedes it to share)")
        return is_full

    def _check_indexer_hparams(self) -> None:
        for k in ("index_n_heads", "index_head_dim", "index_topk"):
            if k not in self.hp:
                raise InputError(f"{self.config_path}: HY V4 has DSA layers but no {k!r}")
            _positive_int(self.hp, k, self.config_path)

    # HYV4Model.set_gguf_parameters: first_k_dense_replace, or the leading "dense" run of mlp_layer_types
    def dense_count(self) -> int:
        hp, where = self.hp, self.config_path
        mlp_types = hp.get("mlp_layer_types")
        explicit = hp.get("first_k_dense_replace")
        derived = None
        if mlp_types is not None:
            if not isinstance(mlp_types, list):
                raise InputError(f"{where}: 'mlp_layer_types' must be a list, got {mlp_types!r}"[:200])
            lead = 0
            for t in mlp_types:
                if t != "dense":
                    break
                lead += 1
            if any(t == "dense" for t in mlp_types[lead:]):
                raise UnsupportedError(f"{where}: HY V4 with dense layers after MoE layers is not supported (as the converter)")
            derived = lead
        if explicit is not None and derived is not None and explicit != derived:
            raise InputError(f"{where}: HY V4 first_k_dense_replace ({explicit}) disagrees with mlp_layer_types "
                             f"leading-dense count ({derived})")
        if explicit is None:
            if derived is None:
                raise InputError(f"{where}: HY V4 needs first_k_dense_replace or mlp_layer_types to place dense layers")
            return derived
        return explicit

    def n_dense(self) -> int:
        return self._n_dense

    def layer_modules(self, bid: int) -> dict[str, str]:
        m = _ATTN | _Q_LORA | _HY_ATTN
        if self.is_full is not None and self.is_full[bid]:
            m = m | _INDEXER
        if bid < self.n_dense():
            return m | _DENSE
        return m | _HY_MOE | (_SHARED if self.hp.get("n_shared_experts") else {})

    def layer_experts(self, bid: int):
        return None

    def check_complete(self, out) -> None:
        super().check_complete(out)
        names = {t.name for t in out}
        for bid, full in enumerate(self.is_full or []):
            if full and f"blk.{bid}.indexer.k_norm.bias" not in names:
                raise InputError(f"{self.folder}: missing tensor model.layers.{bid}.self_attn.indexer.k_norm.bias")

    # HYV4Model.filter_tensors (MTP dropped) and modify_tensors' ".weight" suffixes
    def filter_name(self, name: str) -> str | None:
        if name.startswith("model.mtp_layers."):
            return None
        if _BARE.fullmatch(name):
            name += ".weight"
        elif name.endswith("mlp.experts.gate_up_proj"):
            name += ".weight"  # kquant: a bare parameter under its module's name, split by modify_tensors
        return super().filter_name(name)

    @classmethod
    def hf_tensor_name(cls, bid, base, is_bias, kinds=frozenset()):
        name = super().hf_tensor_name(bid, base, is_bias, kinds)
        return name[: -len(".weight")] if base in cls.bare_hf and name else name

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        hp = self.hp
        e, n_head, hc = hp["hidden_size"], hp["num_attention_heads"], hp["hc_mult"]
        n_x, ff_exp = hp["n_routed_experts"], hp["moe_intermediate_size"]
        s = super().tensor_shapes()
        s.update({
            "attn_sinks": (n_head,), "attn_gate": (n_head * hp["v_head_dim"], e),
            "hc_attn_fn": (2 * hc, hc * e), "hc_attn_base": (2 * hc,), "hc_attn_scale": (2,),
            "hc_ffn_fn": (2 * hc, hc * e), "hc_ffn_base": (2 * hc,), "hc_ffn_scale": (2,),
            "output_hc_fn": (hc, hc * e), "output_hc_base": (hc,), "output_hc_scale": (1,),
            "ffn_gate_inp": (n_x, e), "exp_probs_b": (n_x,),
            "ffn_gate_up_exps": (n_x, 2 * ff_exp, e), "ffn_down_exps": (n_x, e, ff_exp),
        })
        return s

    # HYV4Model.modify_tensors (gate_up split) and tensor_force_quant (F32 iHC matrices, fp32 lm_head)
    def modify_tensors(self, t, name, gname, base, bid):
        if base == "ffn_gate_up_exps":
            f = self.hp["moe_intermediate_size"]  # streamed in row slabs, never read whole
            return self.stacked_experts(t, [(f"blk.{bid}.ffn_gate_exps.weight", rows(0, f)),
                                            (f"blk.{bid}.ffn_up_exps.weight", rows(f, 2 * f))])
        specs = super().modify_tensors(t, name, gname, base, bid)
        lm_f32 = bool(self.hp.get("enable_lm_head_fp32", False))
        return [dataclasses.replace(s, ref_type=QType.F32)
                if s.name.endswith(_F32_KINDS) or (lm_f32 and s.name == "output.weight") else s for s in specs]

    # HYV4Model.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        hp = self.hp
        if hp.get("n_group") == 1 and hp.get("topk_group") == 1:  # no group routing: keys dropped
            hp.pop("n_group", None)
            hp.pop("topk_group", None)
        hp["first_k_dense_replace"] = self._n_dense
        super().set_gguf_parameters()
        self.kv.add_uint32(self.key("expert_gating_func"), 2)  # ExpertGatingFuncType.SIGMOID
        limit = hp.get("swiglu_limit", 0.0) or 0.0
        if isinstance(limit, bool) or not isinstance(limit, (int, float)):
            raise InputError(f"{self.config_path}: 'swiglu_limit' must be a number, got {limit!r}")
        if float(limit) > 0.0:
            self.kv.add_array(self.key("swiglu_clamp_exp"), [float(limit)] * self.block_count)
        self.u32("hyper_connection.count", hp["hc_mult"], "hc_mult")
        for k, key in (("hc_eps", "hyper_connection.epsilon"), ("hc_magnitude", "hyper_connection.magnitude")):
            if k not in hp:
                raise InputError(f"{self.config_path}: HY V4 needs {k!r}")
            self.f32(key, hp[k], k)
        if self.is_full is not None:
            self.u32("attention.indexer.head_count", hp["index_n_heads"], "index_n_heads")
            self.u32("attention.indexer.key_length", hp["index_head_dim"], "index_head_dim")
            self.u32("attention.indexer.top_k", hp["index_topk"], "index_topk")
            self.kv.add_array(self.key("attention.indexer.types"), self.is_full)
