"""The shared decoder every family module extends, and the registry of families.

Ports, from llama.cpp's conversion/base.py (vendored in llama-cpp-python 0.3.36):
  ModelBase.register                                   -> `register` (keyed by the HF `architectures` name)
  ModelBase.index_tensors / get_model_part_names      -> `safetensors_order` (part files sorted, names sorted per file)
  ModelBase/TextModel.filter_tensors                   -> `TextModel.filter_name`
  ModelBase.prepare_tensors                           -> `TextModel.prepare_tensors` (skip list, block id, F32 forcing)
  TextModel.set_gguf_parameters                        -> `TextModel.set_gguf_parameters`
  TextModel.set_vocab                                  -> `TextModel.set_vocab`
  Qwen2MoeModel/LlamaModel.modify_tensors expert merge -> `TextModel.merge_experts`
A family is a subclass that says which HF names it serves (`@register(...)`), its GGUF
architecture, its per-layer module map and its config classes, and overrides the hooks that
differ: `set_gguf_parameters`, `generate_extra_tensors`, `set_vocab`, `filter_name`,
`modify_tensors`, `layer_modules` / `layer_experts` (layers may differ), `tensor_shapes`.
Nothing here reads tensor data: a `TensorSpec` says how each GGUF tensor is built from HF tensors
(row gather, transform, stacking; experts that arrive stacked, `stacked_experts`; tensors already
in a ggml type, `raw_tensors` / `raw_expert_tensors`, passed through), the pipeline builds it.

Shapes are numpy order (last axis = ggml ne[0]); every HF tensor must map, be filtered as
upstream filters it, or be one of the tensors upstream drops; missing tensors are errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, Keys

from ..errors import InputError, UnsupportedError
from ..io.gguf_kv import KVRecorder
from ..io.jsonio import read_json
from ..io.safetensors import SafetensorsFile
from ..ggml.types import QType
from .. import vocab as V
from .hparams import CONFIG_CLASSES, HFConfig, find_hparam, rope_parameters
from .spec import TensorSpec

# ModelBase.prepare_tensors: "we don't need these"
DROPPED_SUFFIXES = (".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")
# ModelBase.prepare_tensors: tensor types always stored as F32 (the ones our architectures have)
F32_BASES = ("ffn_gate_inp", "ffn_gate_inp_shexp", "position_embd", "ssm_conv1d", "shortconv.conv",
             "ssm_conv1d_q", "ssm_conv1d_k", "ssm_conv1d_v",  # "Kimi KDA conv weights should be F32"
             "indexer.proj")  # INDEXER_PROJ: "DSA indexer weights should be F32"
SOURCE_DTYPES = ("BF16", "F16", "F32")
F32_MAX = 3.4028234663852886e38
LAYER_PREFIX = "model.layers."

# per-layer HF module paths (under "model.layers.{bid}.") -> GGUF names (under "blk.{bid}.")
LLAMA_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
QK_NORM_LAYER = {"self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"}
GLOBAL_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
ATTN_BIASES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
MLP_BIASES = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")

# GGUF kind -> the norm whose output it reads (same block); automix weighs errors by that norm's gain
NORM_OF = {
    "attn_q": "attn_norm", "attn_k": "attn_norm", "attn_v": "attn_norm", "attn_qkv": "attn_norm",
    "ffn_gate": "ffn_norm", "ffn_up": "ffn_norm", "ffn_gate_exps": "ffn_norm", "ffn_up_exps": "ffn_norm",
    "ffn_gate_inp": "ffn_norm", "ffn_gate_shexp": "ffn_norm", "ffn_up_shexp": "ffn_norm",
}

# conversion/base.py TextModel.set_gguf_parameters: score function -> gguf ExpertGatingFuncType
GATING_FUNCS = {"softmax": 1, "sigmoid": 2, "sqrtsoftplus": 4}

HFTensor = tuple[str, tuple[int, ...], str]  # (name, shape, dtype) from a safetensors header


@dataclass(frozen=True)
class Experts:
    """Per-expert HF tensors merged into one 3-D GGUF tensor per projection (modify_tensors).

    `stacked`: the checkpoint holds the experts already stacked, one HF tensor [n_expert, ...] per
    projection (gpt-oss); `source` / `order` are then empty and the family's modify_tensors maps
    them (`TextModel.stacked_experts`)."""

    source: str  # HF name of one expert: "model.layers.{bid}.<...>.{xid}.{w}.weight"
    order: tuple[tuple[str, str], ...]  # (HF projection, GGUF base) in the order upstream yields them
    count_keys: tuple[str, ...]  # hparams giving the expert count
    stacked: bool = False


@dataclass(frozen=True)
class HFJoin:
    """One GGUF tensor as a part of the HF tensor it was made from (`dequantize --hf-names`).

    A 3-D GGUF part [n, rows, cols] is n slices, a 2-D one a single slice. Slice x of the HF tensor
    is slice x of each of its `parts` GGUF tensors (transposed when `transpose`), put side by side
    along `axis` (0: rows, 1: columns; `interleave`: element by element, gate/up as gpt-oss fuses
    them); the HF tensor is the slices stacked ([n, ...]), or concatenated along rows when `flat`.
    The inverse of the conversion's split, transpose and unstacking, exact value for value."""

    module: str  # HF name under the layer prefix and block id, suffix included ("attn.c_attn.weight")
    part: int = 0
    parts: int = 1
    transpose: bool = False
    axis: int = 0
    interleave: bool = False
    flat: bool = False


FAMILIES: dict[str, type["TextModel"]] = {}  # HF architectures name -> family class
VARIANTS: list[type["TextModel"]] = []  # classes a family picks by config (TextModel.for_config), not by HF name


def register(*hf_names: str):
    """Class decorator (conversion/base.py ModelBase.register): the family serves these HF names."""

    def wrap(cls: type[TextModel]) -> type[TextModel]:
        cls.hf_names = hf_names
        for n in hf_names:
            if n in FAMILIES:
                raise ValueError(f"{n} is registered twice ({FAMILIES[n].__name__}, {cls.__name__})")
            FAMILIES[n] = cls
        for c in cls.configs:
            CONFIG_CLASSES.setdefault(c.model_type, c)
        return cls

    return wrap


def variant(cls: type["TextModel"]) -> type["TextModel"]:
    """Class decorator: a variant its family's `for_config` picks (upstream's __init__ switching model_arch)."""
    VARIANTS.append(cls)
    return cls


def ref_type(gguf_name: str, n_dims: int) -> QType:
    """The type prepare_tensors picks for --outtype bf16."""
    if n_dims <= 1 or gguf_name.endswith("_norm.weight"):
        return QType.F32
    base = re.sub(r"^blk\.\d+\.", "", gguf_name.rsplit(".", 1)[0])
    if base in F32_BASES or gguf_name[-7:] not in (".weight", ".lora_a", ".lora_b"):
        return QType.F32
    return QType.BF16


def header_entries(path: Path) -> list[HFTensor]:
    """(name, shape, dtype) of every tensor of a safetensors file, from its validated header."""
    with SafetensorsFile(path) as f:
        return [(t.name, t.shape, t.dtype) for t in f.tensors.values()]


def safetensors_order(folder: Path, headers: dict[str, list[HFTensor]] | None = None) -> list[tuple[str, list[HFTensor]]] | None:
    """[(part file, [(name, shape, dtype), ...] sorted by name)] in index_tensors order, or None if no parts.

    `headers` ({path: entries}) gives the entries of files already parsed (an open Checkpoint)."""
    headers = headers or {}
    parts = sorted(p.name for p in folder.iterdir() if p.name.startswith("model") and p.name.endswith(".safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        data = read_json(index)
        wm = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
            raise InputError(f"{index}: missing or malformed 'weight_map'")
        parts = sorted(dict.fromkeys(wm.values()))
    if not parts:
        return None
    out = []
    for part in parts:
        path = folder / part
        entries = headers.get(str(path))
        out.append((part, sorted(entries if entries is not None else header_entries(path), key=lambda t: t[0])))
    if index.is_file():
        in_parts = {n for _, ts in out for n, _, _ in ts}
        if in_parts != set(wm):
            missing = sorted(set(wm) - in_parts)[:3]
            extra = sorted(in_parts - set(wm))[:3]
            raise InputError(f"{index}: weight_map does not match the part files (missing {missing}, extra {extra})")
    return out


# conversion/base.py TextModel.filter_tensors (multimodal skip)
def is_multimodal(name: str) -> bool:
    return (
        name.startswith(("mlp", "vit.", "vpm.", "siglip2.", "conformer.", "merger.", "resampler.", "sound_encoder.",
                         "sound_projection.", "speech_embeddings."))
        or "visual." in name or "vision." in name or "audio." in name or "talker." in name
        or "vision_" in name or "audio_" in name
        or "token2wav." in name or "code2wav." in name
        or "projector." in name or "pre_mm_projector_norm" in name
        or "image_newline" in name or "view_seperator" in name
        or "patch_embed" in name or "patch_embedding" in name
        or "patch_merger." in name or "patch_merge_mlp." in name or "model.connector." in name
    )


def rows(start: int, stop: int) -> np.ndarray:
    """A row gather taking rows [start, stop) of a source: one HF tensor split into several GGUF ones."""
    return np.arange(start, stop, dtype=np.int64)


def stack(arrs: list[np.ndarray]) -> np.ndarray:
    """Per-expert 2-D sources -> one 3-D tensor, expert index first."""
    return np.stack(arrs, axis=0)


def last_axis(arrs: list[np.ndarray], start: int, step: int) -> np.ndarray:
    """Every `step`-th element of the last axis from `start` (a fused, interleaved bias split)."""
    return np.ascontiguousarray(arrs[0][..., start::step])


def expert_rows(n_expert: int, rows: int, pick: np.ndarray) -> np.ndarray:
    """row_perm of a pre-stacked [n_expert, rows, cols] source keeping rows `pick` of every expert."""
    pick = np.asarray(pick, dtype=np.int64)
    return (np.arange(n_expert, dtype=np.int64)[:, None] * rows + pick[None, :]).reshape(-1)


class TextModel:
    """A decoder-only text model as conversion/base.py TextModel converts it.

    One instance per conversion: `hp` is the emulated AutoConfig dict (models.hparams), `kv` the
    metadata recorder the parameter and vocabulary hooks write into."""

    hf_names: ClassVar[tuple[str, ...]] = ()  # set by @register; the first names the family in messages
    model_arch: ClassVar[MODEL_ARCH]
    configs: ClassVar[tuple[HFConfig, ...]] = ()  # the transformers config classes (model_type) it reads
    layer: ClassVar[dict[str, str]] = LLAMA_LAYER  # HF per-layer module -> GGUF per-layer base name
    globals_: ClassVar[dict[str, str]] = GLOBAL_NAMES  # HF module -> GGUF name, outside the layers
    globals_bias_ok: ClassVar[tuple[str, ...]] = ()  # HF modules outside the layers that may carry a .bias
    bias_ok: ClassVar[tuple[str, ...]] = ()  # per-layer modules that may carry a .bias
    bias_required: ClassVar[tuple[str, ...]] = ()
    bias_only: ClassVar[tuple[str, ...]] = ()  # per-layer modules that have a .bias and no .weight (exp_probs_b, Mamba dt_bias)
    attention_free: ClassVar[bool] = False  # no attention heads at all (Mamba): head counts 0, not checked
    # the converter takes a config without num_key_value_heads (the key is then not written and
    # llama.cpp uses head_count): set where its config is read as it is and its code falls back
    kv_heads_default: ClassVar[bool] = False
    bare_params: ClassVar[tuple[str, ...]] = ()  # per-layer parameters without a suffix (A_log, D): GGUF name neither
    optional: ClassVar[tuple[str, ...]] = ()  # per-layer modules a checkpoint may lack (check_complete)
    # GGUF base of a fused HF module (layer map) -> the GGUF bases modify_tensors splits it into
    split_modules: ClassVar[dict[str, tuple[str, ...]]] = {}
    skip_names: ClassVar[tuple[str, ...]] = ()  # HF tensors the class filters out (filter_tensors)
    experts: ClassVar[Experts | None] = None
    # a complete layer's experts are written when the next non-expert tensor arrives, every complete layer then in
    # layer order (GrokModel.modify_tensors), not as soon as the layer's last expert is read
    experts_wait: ClassVar[bool] = False
    norm_of: ClassVar[dict[str, str]] = NORM_OF  # automix: matrix kind -> the norm feeding it
    inverse_names: ClassVar[bool] = False  # `dequantize --hf-names` maps this family's GGUF names back
    inverse_refused: ClassVar[str] = ""  # why it does not (one line, said when asked), for families without it
    # --hf-names for HF tensors the conversion split, transposed or unstacked: GGUF kind (base, or
    # base + ".bias") -> how it goes back into its HF tensor (HFJoin, rebuilt by inspect.dequantize_file)
    hf_joins: ClassVar[dict[str, "HFJoin"]] = {}
    inverse_bare: ClassVar[tuple[str, ...]] = ()  # per-layer GGUF kinds without a .weight / .bias suffix --hf-names maps
    undo_permute: ClassVar[bool] = False  # LlamaModel.undo_permute: Q/K rows permuted for rotary heads
    layer_prefix: ClassVar[str] = LAYER_PREFIX  # HF name prefix of the per-layer modules ("transformer.h.", ...)
    # canonical dimension -> the config keys that hold it in this family's hparams (GPT-2: n_embd, ...)
    aliases: ClassVar[dict[str, tuple[str, ...]]] = {}
    # rope types TextModel.set_gguf_parameters only warns about ("Unknown RoPE type"), writing nothing (Gemma 4's
    # "proportional": the family writes it as rope_freqs); any other unknown type is refused
    unknown_rope_types: ClassVar[tuple[str, ...]] = ()

    def __init__(self, hp: dict[str, Any], *, kv: KVRecorder | None = None, config_path: Any = None,
                 folder: Path | None = None, tok_folder: Path | None = None):
        self.hp = hp
        self.rp = rope_parameters(hp)
        # conversion/base.py TextModel.__init__
        self.block_count = self.find_hparam(["n_layers", "num_hidden_layers", "n_layer", "num_layers"])
        self.config_path = config_path
        self.folder = folder
        self.tok_folder = tok_folder if tok_folder is not None else folder
        self.kv = kv if kv is not None else KVRecorder(self.arch_name())
        self.not_converted: list[str] = []  # vision/audio tensors filtered out (prepare_tensors)

    def dim(self, key: str):
        """A canonical dimension (hidden_size, num_attention_heads, num_key_value_heads, intermediate_size,
        vocab_size, head_dim) from the config, through the family's `aliases`; None when absent."""
        for k in (key,) + self.aliases.get(key, ()):
            if self.hp.get(k) is not None:
                return self.hp[k]
        return None

    @classmethod
    def for_config(cls, hp: dict[str, Any]) -> type["TextModel"]:
        """The class converting a checkpoint of this config: `cls`, or a `variant` with another GGUF
        architecture (as upstream's __init__ switches model_arch from the config)."""
        return cls

    @classmethod
    def arch_name(cls) -> str:
        """The GGUF architecture name (general.architecture)."""
        return MODEL_ARCH_NAMES[cls.model_arch]

    # ---------------------------------------------------------------- metadata
    def key(self, name: str) -> str:
        return f"{self.kv.arch}.{name}"

    def u32(self, name: str, v, what: str) -> None:
        """`{arch}.name` as UINT32; InputError naming the config key `what` unless an integer."""
        if isinstance(v, bool) or not isinstance(v, int):
            raise InputError(f"{self.config_path}: {what} must be an integer, got {v!r}")
        if not 0 <= v < 2**32:  # GGUF UINT32 (gguf-py's struct.pack would raise)
            raise InputError(f"{self.config_path}: {what} must be a 32-bit unsigned integer, got {v!r}")
        self.kv.add_uint32(self.key(name), v)

    def u32_array(self, name: str, values: list, what: str) -> None:
        """`{arch}.name` as an array of integers in [0, 2**31) (gguf-py writes them INT32); InputError naming the
        config key `what` otherwise."""
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**31:
                raise InputError(f"{self.config_path}: {what} entries must be integers, got {v!r}")
        self.kv.add_array(self.key(name), values)

    def f32(self, name: str, v, what: str) -> None:
        """`{arch}.name` as FLOAT32; InputError naming the config key `what` unless a number."""
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise InputError(f"{self.config_path}: {what} must be a number, got {v!r}")
        if not abs(v) <= F32_MAX:  # GGUF FLOAT32 (gguf-py's struct.pack would raise)
            raise InputError(f"{self.config_path}: {what} must be within float32 range, got {v!r}")
        self.kv.add_float32(self.key(name), v)

    def file_type_placeholder(self) -> None:
        # GGUFWriter.add_file_type position marker; load_spec removes it and reports its index
        self.kv.add_uint32(Keys.General.FILE_TYPE, 32)

    def find_hparam(self, keys, optional: bool = False):
        return find_hparam(self.hp, keys, optional)

    # conversion/base.py TextModel.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        hp, rp = self.hp, self.rp
        self.kv.add_uint32(self.key("block_count"), self.block_count)
        n_ctx = self.find_hparam(["max_position_embeddings", "n_ctx", "n_positions", "max_length", "max_sequence_length", "model_max_length"], True)
        if n_ctx is not None:
            self.u32("context_length", n_ctx, "max_position_embeddings")
        if (n_embd := self.find_hparam(["hidden_size", "n_embd", "dim"], True)) is not None:
            self.u32("embedding_length", n_embd, "hidden_size")
        n_ff = self.find_hparam(["prefix_dense_intermediate_size", "dense_intermediate_size", "intermediate_size", "n_inner", "hidden_dim"], True)
        if n_ff is not None:
            self.u32("feed_forward_length", n_ff, "intermediate_size")
        if (n_head := self.find_hparam(["num_attention_heads", "n_head", "n_heads"], True)) is not None:
            self.u32("attention.head_count", n_head, "num_attention_heads")
        if (n_head_kv := self.find_hparam(["num_key_value_heads", "n_kv_heads"], True)) is not None:
            if isinstance(n_head_kv, list):  # per layer (hybrids: 0 for recurrent layers)
                self.u32_array("attention.head_count_kv", n_head_kv, "num_key_value_heads")
            else:
                self.u32("attention.head_count_kv", n_head_kv, "num_key_value_heads")
        if hp.get("is_causal") is False:
            self.kv.add_bool(self.key("attention.causal"), False)

        rope_params = rp.get("full_attention", rp)
        if (rope_type := rope_params.get("rope_type")) is not None:
            rope_factor = rope_params.get("factor")
            if rope_type == "linear" and rope_factor is not None:
                self.kv.add_string(self.key("rope.scaling.type"), "linear")  # RopeScalingType.LINEAR
                self.f32("rope.scaling.factor", rope_factor, "rope_scaling.factor")
            elif rope_type == "yarn" and rope_factor is not None:
                self.kv.add_string(self.key("rope.scaling.type"), "yarn")  # RopeScalingType.YARN
                self.f32("rope.scaling.factor", rope_factor, "rope_scaling.factor")
                if "original_max_position_embeddings" not in rope_params:
                    raise InputError(f"{self.config_path}: rope type yarn needs 'original_max_position_embeddings' (in rope_parameters or rope_scaling, or at the top level)")
                self.u32("rope.scaling.original_context_length", rope_params["original_max_position_embeddings"], "original_max_position_embeddings")
                if (v := rope_params.get("extrapolation_factor")) is not None:
                    self.f32("rope.scaling.yarn_ext_factor", v, "rope_scaling.extrapolation_factor")
                if (v := rope_params.get("attention_factor", rope_params.get("attn_factor"))) is not None:
                    self.f32("rope.scaling.yarn_attn_factor", v, "rope_scaling.attention_factor")
                if (v := rope_params.get("beta_fast")) is not None:
                    self.f32("rope.scaling.yarn_beta_fast", v, "rope_scaling.beta_fast")
                if (v := rope_params.get("beta_slow")) is not None:
                    self.f32("rope.scaling.yarn_beta_slow", v, "rope_scaling.beta_slow")
            elif rope_type == "su" or rope_type == "longrope":
                self.kv.add_string(self.key("rope.scaling.type"), "longrope")  # RopeScalingType.LONGROPE
            elif rope_type == "dynamic" or (isinstance(rope_type, str) and rope_type.lower() == "llama3"):
                pass  # dynamic: model-specific; llama3: handled by generate_extra_tensors
            elif rope_type not in ("default", "mrope") + self.unknown_rope_types:  # mrope: "Unknown RoPE type" warning upstream, nothing written
                raise UnsupportedError(f"{self.config_path}: rope_scaling type {rope_type!r} is not supported (linear, yarn, llama3, longrope)")
        if "mrope_section" in rp:
            sections = rp["mrope_section"]
            if not isinstance(sections, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in sections):
                raise InputError(f"{self.config_path}: 'mrope_section' must be a list of integers, got {sections!r}")
            while len(sections) < 4:  # [time, height, width, extra], padded in place as upstream
                sections.append(0)
            self.kv.add_array(self.key("rope.dimension_sections"), sections[:4])
        if (rope_theta := rope_params.get("rope_theta")) is not None:
            self.f32("rope.freq_base", rope_theta, "rope_theta")
        if (local_theta := rp.get("sliding_attention", {}).get("rope_theta")) is not None:
            self.f32("rope.freq_base_swa", local_theta, "rope_local_base_freq")
        if (f_rms_eps := self.find_hparam(["rms_norm_eps", "norm_eps"], True)) is not None:
            self.f32("attention.layer_norm_rms_epsilon", f_rms_eps, "rms_norm_eps")
        if (f_norm_eps := self.find_hparam(["layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"], True)) is not None:
            self.f32("attention.layer_norm_epsilon", f_norm_eps, "layer_norm_eps")
        if (n_experts := self.find_hparam(["num_local_experts", "num_experts", "n_routed_experts"], True)) is not None:
            self.u32("expert_count", n_experts, "num_experts")
        if (n_used := self.find_hparam(["num_experts_per_tok", "num_experts_per_token", "top_k_experts"], True)) is not None:
            self.u32("expert_used_count", n_used, "num_experts_per_tok")
        if (n_expert_groups := hp.get("n_group")) is not None:
            self.u32("expert_group_count", n_expert_groups, "n_group")
        if (n_group_used := hp.get("topk_group")) is not None:
            self.u32("expert_group_used_count", n_group_used, "topk_group")
        score_keys = ["score_function", "scoring_func", "score_func", "moe_router_activation",
                      "moe_router_activation_func", "expert_selection_fn"]
        if (score_func := self.find_hparam(score_keys, True)) is not None:
            if not isinstance(score_func, str) or score_func not in GATING_FUNCS:
                raise UnsupportedError(f"{self.config_path}: expert score gating function {score_func!r} is not supported "
                                       f"({', '.join(GATING_FUNCS)})"[:300])
            self.kv.add_uint32(self.key("expert_gating_func"), GATING_FUNCS[score_func])
        if (head_dim := hp.get("head_dim")) is not None:
            self.u32("attention.key_length", head_dim, "head_dim")
            self.u32("attention.value_length", head_dim, "head_dim")
        self.file_type_placeholder()

    # conversion/base.py TextModel._try_set_pooling_type (only the "no pooling" outcome is supported)
    def no_pooling(self) -> None:
        if (self.folder / "modules.json").is_file():
            raise UnsupportedError(f"{self.folder / 'modules.json'}: sentence-transformers (embedding) models are not supported")
        if self.hp.get("classifier_pooling") is not None:
            raise UnsupportedError(f"{self.config_path}: classifier_pooling (classification heads) is not supported")

    def generate_extra_tensors(self) -> list[tuple[str, np.ndarray]]:
        """Tensors without an HF source (rope factors), written first; may record metadata keys."""
        return []

    def write_vocab(self, tokenizer_pre: str | None = None) -> None:
        """set_vocab, after refusing tokenizer files out of proportion to the config's vocabulary."""
        try:
            with V.gc_paused():
                V.check_tokenizer_files(self.tok_folder, self.hp)
                self.set_vocab(tokenizer_pre)
        finally:
            V.clear_tokenizer_cache()  # the parsed tokenizer.json is not needed while the tensors stream

    # conversion/base.py TextModel.set_vocab
    def set_vocab(self, tokenizer_pre: str | None = None) -> None:
        V.set_vocab_gpt2(self.kv, self.tok_folder, self.hp, self.hp["model_type"], tokenizer_pre)

    def prepare(self) -> None:
        """Anything the tensor hooks need beyond the config, read before the tensors are mapped."""

    def read_source(self, name: str) -> np.ndarray:
        """One HF tensor's values as float32, for the few hooks upstream that read data while mapping
        (small tensors only: Cohere2's zero biases, Apertus' xIELU scalars)."""
        from ..io.safetensors import Checkpoint

        if self.folder is None:
            raise InputError(f"{self.hf_names[0]}: tensor {name!r} must be read, but no model folder was given")
        with Checkpoint.open(self.folder) as ck:
            return ck.read(name)

    # ---------------------------------------------------------------- tensors
    def filter_name(self, name: str) -> str | None:
        """The name upstream indexes a tensor under, or None when a filter_tensors drops it."""
        if name in self.skip_names:  # GemmaModel / Gemma2Model: lm_head
            return None
        if is_multimodal(name):
            return None
        if name.endswith("e_score_correction_bias"):
            name = name.replace("e_score_correction_bias", "e_score_correction.bias")
        if "language_model." in name:
            name = name.replace("language_model.", "")
        return name

    def is_multimodal(self, name: str) -> bool:
        """Whether a tensor `filter_name` dropped belongs to a vision/audio part (reported as not converted)."""
        return is_multimodal(name)

    def layer_modules(self, bid: int) -> dict[str, str]:
        """HF module -> GGUF base name of layer `bid` (override where layers differ, e.g. dense then MoE)."""
        return self.layer

    def layer_experts(self, bid: int) -> Experts | None:
        """The routed experts of layer `bid`, or None for a dense layer."""
        return self.experts

    def n_expert(self) -> int:
        """The expert count from the config (0 for a dense model); InputError unless a positive integer."""
        if self.experts is None:
            return 0
        x = self.experts
        n = next((self.hp[k] for k in x.count_keys if k in self.hp and self.hp[k] is not None), 0)
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            raise InputError(f"{self.folder}: expert count ({'/'.join(x.count_keys)}) must be a positive integer")
        return n

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """GGUF base name -> expected (weight) shape from the hyperparameters."""
        hp = self.hp
        e = self.dim("hidden_size")
        n_head = self.dim("num_attention_heads")
        n_kv = self.dim("num_key_value_heads") or n_head
        hd = hp.get("head_dim") or e // n_head
        f, n_vocab = self.dim("intermediate_size") or 4 * e, self.dim("vocab_size")
        n_ff_exp = hp.get("moe_intermediate_size") or f
        n_ff_shexp = hp.get("shared_expert_intermediate_size") or f
        q, kv = n_head * hd, n_kv * hd
        return {
            "token_embd": (n_vocab, e), "output": (n_vocab, e), "output_norm": (e,),
            "attn_norm": (e,), "ffn_norm": (e,), "post_attention_norm": (e,), "post_ffw_norm": (e,),
            "attn_q": (q, e), "attn_k": (kv, e), "attn_v": (kv, e), "attn_output": (e, q),
            "attn_q_norm": (hd,), "attn_k_norm": (hd,), "attn_qkv": (q + 2 * kv, e),
            "ffn_gate": (f, e), "ffn_down": (e, f), "ffn_up": (f, e),
            "ffn_gate_inp": (self._n_expert, e), "ffn_gate_inp_shexp": (1, e),
            "ffn_gate_shexp": (n_ff_shexp, e), "ffn_up_shexp": (n_ff_shexp, e), "ffn_down_shexp": (e, n_ff_shexp),
            "ffn_gate_exps": (n_ff_exp, e), "ffn_up_exps": (n_ff_exp, e), "ffn_down_exps": (e, n_ff_exp),
        }

    def expected_shape(self, base: str, bias: bool) -> tuple[int, ...] | None:
        w = self._shapes.get(base)
        if w is None:
            return None
        return (w[0],) if bias else w

    def modify_tensors(self, t: HFTensor, name: str, gname: str, base: str, bid: int | None) -> list[TensorSpec]:
        """GGUF tensors made from one HF tensor (after filter_name); default: the tensor as it is.

        Families return a row gather (`row_perm`: permutation, `rows(a, b)` to split one tensor into
        several), a `transform`, or several TensorSpecs sharing the source."""
        return [self.spec(gname, t)]

    def spec(self, gname: str, t: HFTensor, *, shape=None, row_perm=None, transform=None) -> TensorSpec:
        shape = tuple(t[1]) if shape is None else tuple(shape)
        return TensorSpec(name=gname, shape=shape, sources=(t[0],), ref_type=ref_type(gname, len(shape)),
                          row_perm=row_perm, transform=transform)

    def stacked_experts(self, t: HFTensor, parts: list[tuple[str, np.ndarray | None]], *,
                        transpose: bool = False) -> list[TensorSpec]:
        """One pre-stacked HF expert tensor [n_expert, rows, cols] ([n_expert, in, out] with
        `transpose`, as `x @ W` stores it) -> 3-D GGUF tensors [n_expert, out, in]: one per
        (GGUF name, rows of each expert's (transposed) matrix to keep, or None for all), e.g. a fused
        gate_up split into gate and up. Streamed in row slabs by the pipeline, never whole."""
        n_x, a, b = t[1]
        rows, cols = (b, a) if transpose else (a, b)
        out = []
        for gname, pick in parts:
            n = rows if pick is None else len(pick)
            perm = None if pick is None else expert_rows(n_x, rows, pick)
            out.append(TensorSpec(name=gname, shape=(n_x, n, cols), sources=(t[0],), ref_type=ref_type(gname, 3),
                                  row_perm=perm, transpose=transpose))
        return out

    def raw_expert_tensors(self, packed: HFTensor, scales: HFTensor, qtype: QType,
                           parts: list[tuple[str, np.ndarray | None]], where: str) -> list[TensorSpec]:
        """Pre-stacked experts already in a ggml block type (MXFP4: `packed` [n_expert, rows, cols / 32,
        16] uint8 codes, `scales` [n_expert, rows, cols / 32] E8M0) -> 3-D GGUF tensors of that type,
        one per (GGUF name, rows of each expert to keep or None), passed through byte for byte.
        Strict: dtypes, the scales' shape and the block size must fit exactly (one-line InputError)."""
        if qtype != QType.MXFP4:
            raise UnsupportedError(f"{where}: pre-quantized {qtype.name} sources are not supported")
        (pn, psh, pdt), (sn, ssh, sdt) = packed, scales
        if pdt != "U8" or sdt != "U8":
            raise InputError(f"{where}: MXFP4 tensors {pn!r} / {sn!r} have dtypes {pdt} / {sdt}, expected U8")
        if len(psh) != 4 or psh[-1] != qtype.block_size // 2 or min(psh) <= 0:
            raise InputError(f"{where}: MXFP4 blocks {pn!r} have shape {list(psh)}, expected "
                             f"[experts, rows, blocks, {qtype.block_size // 2}]")
        if tuple(ssh) != tuple(psh[:3]):
            raise InputError(f"{where}: MXFP4 scales {sn!r} have shape {list(ssh)}, expected {list(psh[:3])} "
                             f"for blocks {pn!r} of shape {list(psh)}")
        n_x, rows, nb = psh[:3]
        out = []
        for gname, pick in parts:
            n = rows if pick is None else len(pick)
            perm = None if pick is None else expert_rows(n_x, rows, pick)
            out.append(TensorSpec(name=gname, shape=(n_x, n, nb * qtype.block_size), sources=(pn, sn),
                                  ref_type=qtype, row_perm=perm, raw_type=qtype))
        return out

    def raw_tensors(self, hf: list[HFTensor], where: str) -> tuple[list[TensorSpec], set[str]]:
        """GGUF tensors a family writes before all others straight from already-quantized HF tensors
        (gpt-oss's MXFP4 experts: written in its generate_extra_tensors), and the HF names they use
        (skipped by prepare_tensors). Default: none."""
        return [], set()

    # Qwen2MoeModel / LlamaModel.modify_tensors: stack the experts of one layer, one tensor per projection
    def merge_experts(self, x: Experts, bid: int, buf: dict, where: str) -> list[TensorSpec]:
        specs = []
        for w, gbase in x.order:
            names = [x.source.format(bid=bid, xid=xid, w=w) for xid in range(self._n_expert)]
            exp = self.expected_shape(gbase, False)
            for n in names:
                if buf[n][0] != exp:
                    raise InputError(f"{where}: tensor {n!r} has shape {list(buf[n][0])}, expected {list(exp)} from config.json")
            gname = f"blk.{bid}.{gbase}.weight"
            shape = (self._n_expert,) + exp
            sources = tuple(self._hf_names.get(n, n) for n in names)  # as stored (filter_name may rename)
            specs.append(TensorSpec(name=gname, shape=shape, sources=sources, ref_type=ref_type(gname, 3), transform=stack))
        return specs

    def map_name(self, name: str, where: str) -> tuple[str, int | None, bool | None]:
        """(GGUF base, block id, is_bias) for an HF tensor name (is_bias None: a bare parameter, no
        suffix either side); InputError when it maps to nothing."""
        m = re.fullmatch(re.escape(self.layer_prefix) + r"(\d+)\.(.+)", name)
        if m and m.group(2) in self.bare_params and int(m.group(1)) < self.block_count:
            bid = int(m.group(1))
            if m.group(2) in (layer := self.layer_modules(bid)):
                return layer[m.group(2)], bid, None
        for suffix, is_bias in ((".weight", False), (".bias", True)):
            if not name.endswith(suffix):
                continue
            base = name[: -len(suffix)]
            if base in self.globals_ and (not is_bias or base in self.globals_bias_ok):
                return self.globals_[base], None, is_bias
            m = re.fullmatch(re.escape(self.layer_prefix) + r"(\d+)\.(.+)", base)
            if m:
                bid, module = int(m.group(1)), m.group(2)
                layer = self.layer_modules(bid) if bid < self.block_count else self.layer
                allowed = (module in self.bias_ok or module in self.bias_only) if is_bias else module not in self.bias_only
                if module in layer and allowed:
                    if bid >= self.block_count:
                        raise InputError(f"{where}: tensor {name!r} is for layer {bid} but num_hidden_layers is {self.block_count}")
                    return layer[module], bid, is_bias
        raise InputError(f"{where}: unexpected tensor {name!r} for {self.hf_names[0]}")

    # conversion/base.py ModelBase.prepare_tensors
    def prepare_tensors(self, hf: list[HFTensor], extra: list[tuple[str, np.ndarray]], where: str) -> list[TensorSpec]:
        """TensorSpecs in write order for HF tensors `hf` [(name, shape, dtype)] in index order."""
        self._n_expert = self.n_expert()
        self._shapes = self.tensor_shapes()
        out, raw_names = self.raw_tensors(hf, where)
        for name, data in extra:  # generate_extra_tensors come first
            out.append(TensorSpec(name=name, shape=tuple(data.shape), sources=(), ref_type=ref_type(name, data.ndim),
                                  generated=data))

        seen: dict[str, str] = {}  # name after filter_name -> HF name
        self._hf_names = seen
        expert_buf: dict[int, dict[str, tuple[tuple[int, ...], str]]] = {}
        expert_names: dict[str, int] = {}  # HF name of one expert's projection -> layer
        held: dict[int, list[TensorSpec]] = {}  # experts_wait: complete layers' stacked experts not yet written
        for bid in range(self.block_count):
            if (x := self.layer_experts(bid)) is not None:
                for xid in range(self._n_expert):
                    for w, _ in x.order:
                        expert_names[x.source.format(bid=bid, xid=xid, w=w)] = bid

        for orig, shape, dtype in hf:
            if orig in raw_names:
                continue
            name = self.filter_name(orig)
            if name is None and self.is_multimodal(orig):
                self.not_converted.append(orig)
            if name is None or name.endswith(DROPPED_SUFFIXES):
                continue
            if name in seen:
                raise InputError(f"{where}: tensors {seen[name]!r} and {orig!r} both map to {name!r}")
            seen[name] = orig
            if dtype not in SOURCE_DTYPES:
                raise UnsupportedError(f"{where}: tensor {orig!r} has dtype {dtype}; supported: {', '.join(SOURCE_DTYPES)}")

            if name in expert_names:
                bid = expert_names[name]
                x = self.layer_experts(bid)
                buf = expert_buf.setdefault(bid, {})
                buf[name] = (shape, dtype)
                if len(buf) >= self._n_expert * len(x.order):
                    held[bid] = self.merge_experts(x, bid, buf, where)
                    if not self.experts_wait:
                        out.extend(held.pop(bid))
                    del expert_buf[bid]
                continue
            for b in sorted(held):  # experts_wait: the complete layers, in layer order, before this tensor
                out.extend(held.pop(b))

            base, bid, is_bias = self.map_name(name, where)
            suffix = "" if is_bias is None else ".bias" if is_bias else ".weight"
            gname = (f"blk.{bid}.{base}" if bid is not None else base) + suffix
            exp = self.expected_shape(base, is_bias)
            if exp is not None and tuple(shape) != exp:
                raise InputError(f"{where}: tensor {orig!r} has shape {list(shape)}, expected {list(exp)} from config.json")
            out.extend(self.modify_tensors((orig, tuple(shape), dtype), name, gname, base, bid))

        if held:
            raise UnsupportedError(f"{where}: the checkpoint ends with experts (layer {min(held)}): llama.cpp's converter "
                                   "writes a layer's experts only when a later tensor arrives, so its file would lack them")
        if expert_buf:
            bid = min(expert_buf)
            have = len(expert_buf[bid])
            need = self._n_expert * len(self.layer_experts(bid).order)
            raise InputError(f"{where}: layer {bid} has {have} expert tensors, expected {need}")
        self.check_complete(out)
        return out

    def tied(self) -> bool:
        """The config says lm_head is the embedding (no output.weight needed). A config read as it is (no
        transformers class) that does not say: PretrainedConfig's default, tied (save_pretrained leaves a
        class default out, and the converter writes output only from an lm_head it finds)."""
        return bool(self.hp.get("tie_word_embeddings", True))

    def check_complete(self, out: list[TensorSpec]) -> None:
        """Every tensor the runtime needs is present (upstream does not check; a missing one fails at load)."""
        names = {t.name for t in out}
        if len(names) != len(out):
            dup = next(t.name for i, t in enumerate(out) if any(u.name == t.name for u in out[:i]))
            raise InputError(f"{self.folder}: two source tensors make GGUF tensor {dup!r}")
        need: list[tuple[str, str]] = []  # (GGUF name, HF name)
        for hf_base, g in self.globals_.items():
            if g == "output" and self.tied():
                continue  # tied: no lm_head, llama.cpp reuses token_embd
            need.append((g + ".weight", hf_base + ".weight"))
        for bid in range(self.block_count):
            pre = f"{self.layer_prefix}{bid}."
            layer = self.layer_modules(bid)
            for module, g in layer.items():
                if module in self.optional:
                    continue
                sfx = "" if module in self.bare_params else ".bias" if module in self.bias_only else ".weight"
                for g2 in self.split_modules.get(g, (g,)):
                    need.append((f"blk.{bid}.{g2}{sfx}", pre + module + sfx))
            for module in self.bias_required:
                need.append((f"blk.{bid}.{layer[module]}.bias", pre + module + ".bias"))
            if (x := self.layer_experts(bid)) is not None:
                for w, g in x.order:
                    need.append((f"blk.{bid}.{g}.weight", x.source.format(bid=bid, xid=0, w=w)))
        missing = [hf for g, hf in need if g not in names]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise InputError(f"{self.folder}: missing tensor(s) {', '.join(missing[:3])}{more}")

    # ---------------------------------------------------------------- GGUF -> HF (dequantize --hf-names)
    @classmethod
    def hf_layer(cls, kinds: frozenset[str]) -> dict[str, str]:
        """HF per-layer module -> GGUF base for the inverse map, given the GGUF per-layer kinds of the
        file (a family whose layers differ returns every module any layer may have)."""
        return cls.layer

    @classmethod
    def hf_tensor_name(cls, bid: int | None, base: str, is_bias: bool, kinds: frozenset[str] = frozenset()) -> str | None:
        """The HF name of a GGUF tensor (`base`: its name without block prefix and suffix), or None."""
        if bid is None:
            hf = {g: h for h, g in cls.globals_.items()}.get(base)
            if hf is None or (is_bias and hf not in cls.globals_bias_ok):
                return None
            return hf + (".bias" if is_bias else ".weight")
        mod = {g: h for h, g in cls.hf_layer(kinds).items()}.get(base)
        if mod is None or (is_bias and mod not in cls.bias_ok and mod not in cls.bias_only) or (
                not is_bias and mod in cls.bias_only):
            return None
        if mod.endswith("e_score_correction") and is_bias:  # filter_name's rename, undone
            return f"{cls.layer_prefix}{bid}.{mod}_bias"
        if mod.endswith("expert_bias") and is_bias:  # filter_name's ".expert_bias" -> ".expert_bias.bias", undone
            return f"{cls.layer_prefix}{bid}.{mod}"
        return f"{cls.layer_prefix}{bid}.{mod}" + (".bias" if is_bias else ".weight")

    @classmethod
    def hf_tensor_shape(cls, base: str, is_bias: bool, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The HF shape of a per-layer GGUF tensor (llama-quantize drops trailing ggml dims of size 1)."""
        return shape

    @classmethod
    def hf_expert_names(cls, bid: int, base: str, n_expert: int) -> list[str] | None:
        """The per-expert HF names of a stacked expert tensor (`base`: e.g. ffn_down_exps), or None."""
        x = cls.experts
        w = next((w for w, g in x.order if g == base), None) if x is not None else None
        if w is None:
            return None
        return [x.source.format(bid=bid, xid=i, w=w) for i in range(n_expert)]

    @classmethod
    def inverse_for_file(cls, value) -> type["TextModel"]:
        """The class whose HF names and row orders `dequantize --hf-names` uses for one file of this
        architecture (`value(key)`: its metadata, None when absent); default: this class."""
        return cls

    @classmethod
    def hf_row_order(cls, base: str, n_rows: int, n_head: int, n_head_kv: int) -> np.ndarray | None:
        """HF row j = GGUF row gather[j] for tensors whose rows the conversion reordered, else None."""
        return None


class Headless:
    """Mixin for a headless base model (LlamaModel, Qwen2Model, Qwen3Model): saved without "model." in its
    tensor names (the converter prefixes them: `if self.hf_arch == "LlamaModel": name = "model." + name`) and
    without lm_head. Its GGUF architecture maps back to the *ForCausalLM names, not these."""

    inverse_names = False

    def filter_name(self, name: str) -> str | None:
        name = super().filter_name(name)
        return None if name is None else "model." + name

    def tied(self) -> bool:
        return True  # no lm_head: llama.cpp reads token_embd as the output
