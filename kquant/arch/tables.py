"""Per-architecture tables: HF tensor names -> GGUF names, hyperparameters -> GGUF keys.

Each supported Hugging Face architecture is one `ArchTable` (data) and the shared functions below
port the converter code it selects, from llama.cpp's conversion/ package as vendored in
llama-cpp-python 0.3.36:
  base.py   TextModel.set_gguf_parameters            -> `text_model_params`
  llama.py  LlamaModel (Llama, Mistral, Mixtral)      -> `llama_params`, `llama3_rope_freqs`
  qwen.py   Qwen2Model, Qwen3Model, Qwen2MoeModel, Qwen3MoeModel
  gemma.py  GemmaModel, Gemma2Model, Gemma3Model      -> `gemma_params`, `gemma2_params`, `gemma3_params`
  phi.py    Phi3MiniModel                             -> `phi3_params`, `phi3_rope_factors`
Tensor names are those gguf-py's TensorNameMap gives for the architecture (gguf-py/gguf/
tensor_mapping.py filtered by constants.py MODEL_TENSORS[arch]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..errors import InputError, UnsupportedError
from . import kv as K
from .hparams import find_hparam
from .kv import KVRecorder

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
GEMMA2_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
PHI3_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.qkv_proj": "attn_qkv",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
MIXTRAL_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "block_sparse_moe.gate": "ffn_gate_inp",
}
QWEN_MOE_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate": "ffn_gate_inp",
}
QWEN2_MOE_SHARED = {
    "mlp.shared_expert.gate_proj": "ffn_gate_shexp",
    "mlp.shared_expert.up_proj": "ffn_up_shexp",
    "mlp.shared_expert.down_proj": "ffn_down_shexp",
    "mlp.shared_expert_gate": "ffn_gate_inp_shexp",
}
GLOBAL_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
ATTN_BIASES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
MLP_BIASES = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@dataclass(frozen=True)
class Experts:
    """Per-expert HF tensors merged into one 3-D GGUF tensor per projection (modify_tensors)."""

    marker: str  # substring of the HF names buffered per layer ("block_sparse_moe.experts" / "experts")
    source: str  # HF name of one expert: "model.layers.{bid}.<...>.{xid}.{w}.weight"
    order: tuple[tuple[str, str], ...]  # (HF projection, GGUF base) in the order upstream yields them
    count_keys: tuple[str, ...]  # hparams giving the expert count


@dataclass(frozen=True)
class ArchTable:
    """Everything that distinguishes one HF architecture in convert_hf_to_gguf.py."""

    hf_names: tuple[str, ...]
    arch: str  # GGUF architecture name
    layer: dict[str, str]  # HF per-layer module -> GGUF per-layer base name
    params: Callable[["ParamCtx"], None]  # set_gguf_parameters port
    vocab: str  # set_vocab recipe (kquant.vocab.set_vocab)
    globals_: dict[str, str] = field(default_factory=lambda: dict(GLOBAL_NAMES))
    bias_ok: tuple[str, ...] = ()  # per-layer modules that may carry a .bias
    bias_required: tuple[str, ...] = ()
    skip_names: tuple[str, ...] = ()  # HF tensors the class filters out (filter_tensors)
    permute_qk: bool = False  # LlamaModel.undo_permute
    norm_shift: bool = False  # Gemma: +1 on every "*norm.weight"
    experts: Experts | None = None
    extra: Callable[["ParamCtx"], list[tuple[str, np.ndarray]]] | None = None  # generate_extra_tensors
    embd_trim: bool = False  # Gemma3: keep only the rows of real tokens in token_embd
    gate_up_fused: bool = False  # Phi-3: ffn_up holds gate and up, (2 * n_ff, n_embd)


@dataclass
class ParamCtx:
    """What the ported set_gguf_parameters code reads: hparams, rope_parameters, block count."""

    kv: KVRecorder
    hp: dict[str, Any]
    rp: dict[str, Any]
    block_count: int
    config_path: Any
    folder: Any


def _key(ctx: ParamCtx, name: str) -> str:
    return f"{ctx.kv.arch}.{name}"


def _file_type_placeholder(ctx: ParamCtx) -> None:
    # GGUFWriter.add_file_type position marker; load_spec removes it and reports its index
    ctx.kv.add_uint32(K.GENERAL_FILE_TYPE, 32)


_F32_MAX = 3.4028234663852886e38


def _u32(ctx: ParamCtx, name: str, v, what: str) -> None:
    if isinstance(v, bool) or not isinstance(v, int):
        raise InputError(f"{ctx.config_path}: {what} must be an integer, got {v!r}")
    if not 0 <= v < 2**32:  # GGUF UINT32 (gguf-py's struct.pack would raise)
        raise InputError(f"{ctx.config_path}: {what} must be a 32-bit unsigned integer, got {v!r}")
    ctx.kv.add_uint32(_key(ctx, name), v)


def _f32(ctx: ParamCtx, name: str, v, what: str) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InputError(f"{ctx.config_path}: {what} must be a number, got {v!r}")
    if not abs(v) <= _F32_MAX:  # GGUF FLOAT32 (gguf-py's struct.pack would raise)
        raise InputError(f"{ctx.config_path}: {what} must be within float32 range, got {v!r}")
    ctx.kv.add_float32(_key(ctx, name), v)


# conversion/base.py TextModel.set_gguf_parameters
def text_model_params(ctx: ParamCtx) -> None:
    hp, rp = ctx.hp, ctx.rp
    ctx.kv.add_uint32(_key(ctx, "block_count"), ctx.block_count)
    n_ctx = find_hparam(hp, ["max_position_embeddings", "n_ctx", "n_positions", "max_length", "max_sequence_length", "model_max_length"], True)
    if n_ctx is not None:
        _u32(ctx, "context_length", n_ctx, "max_position_embeddings")
    if (n_embd := find_hparam(hp, ["hidden_size", "n_embd", "dim"], True)) is not None:
        _u32(ctx, "embedding_length", n_embd, "hidden_size")
    n_ff = find_hparam(hp, ["prefix_dense_intermediate_size", "dense_intermediate_size", "intermediate_size", "n_inner", "hidden_dim"], True)
    if n_ff is not None:
        _u32(ctx, "feed_forward_length", n_ff, "intermediate_size")
    if (n_head := find_hparam(hp, ["num_attention_heads", "n_head", "n_heads"], True)) is not None:
        _u32(ctx, "attention.head_count", n_head, "num_attention_heads")
    if (n_head_kv := find_hparam(hp, ["num_key_value_heads", "n_kv_heads"], True)) is not None:
        _u32(ctx, "attention.head_count_kv", n_head_kv, "num_key_value_heads")
    if hp.get("is_causal") is False:
        ctx.kv.add_bool(_key(ctx, "attention.causal"), False)

    rope_params = rp.get("full_attention", rp)
    if (rope_type := rope_params.get("rope_type")) is not None:
        rope_factor = rope_params.get("factor")
        if rope_type == "linear" and rope_factor is not None:
            ctx.kv.add_string(_key(ctx, "rope.scaling.type"), K.ROPE_SCALING_LINEAR)
            _f32(ctx, "rope.scaling.factor", rope_factor, "rope_scaling.factor")
        elif rope_type == "yarn" and rope_factor is not None:
            ctx.kv.add_string(_key(ctx, "rope.scaling.type"), K.ROPE_SCALING_YARN)
            _f32(ctx, "rope.scaling.factor", rope_factor, "rope_scaling.factor")
            if "original_max_position_embeddings" not in rope_params:
                raise InputError(f"{ctx.config_path}: rope type yarn needs 'original_max_position_embeddings' (in rope_parameters or rope_scaling, or at the top level)")
            _u32(ctx, "rope.scaling.original_context_length", rope_params["original_max_position_embeddings"], "original_max_position_embeddings")
            if (v := rope_params.get("extrapolation_factor")) is not None:
                _f32(ctx, "rope.scaling.yarn_ext_factor", v, "rope_scaling.extrapolation_factor")
            if (v := rope_params.get("attention_factor", rope_params.get("attn_factor"))) is not None:
                _f32(ctx, "rope.scaling.yarn_attn_factor", v, "rope_scaling.attention_factor")
            if (v := rope_params.get("beta_fast")) is not None:
                _f32(ctx, "rope.scaling.yarn_beta_fast", v, "rope_scaling.beta_fast")
            if (v := rope_params.get("beta_slow")) is not None:
                _f32(ctx, "rope.scaling.yarn_beta_slow", v, "rope_scaling.beta_slow")
        elif rope_type == "su" or rope_type == "longrope":
            ctx.kv.add_string(_key(ctx, "rope.scaling.type"), K.ROPE_SCALING_LONGROPE)
        elif rope_type == "dynamic" or (isinstance(rope_type, str) and rope_type.lower() == "llama3"):
            pass  # dynamic: model-specific; llama3: handled by generate_extra_tensors
        elif rope_type != "default":
            raise UnsupportedError(f"{ctx.config_path}: rope_scaling type {rope_type!r} is not supported (linear, yarn, llama3, longrope)")

    if "mrope_section" in rp:
        raise UnsupportedError(f"{ctx.config_path}: mrope_section (multimodal rope) is not supported")
    if (rope_theta := rope_params.get("rope_theta")) is not None:
        _f32(ctx, "rope.freq_base", rope_theta, "rope_theta")
    if (local_theta := rp.get("sliding_attention", {}).get("rope_theta")) is not None:
        _f32(ctx, "rope.freq_base_swa", local_theta, "rope_local_base_freq")
    if (f_rms_eps := find_hparam(hp, ["rms_norm_eps", "norm_eps"], True)) is not None:
        _f32(ctx, "attention.layer_norm_rms_epsilon", f_rms_eps, "rms_norm_eps")
    if (f_norm_eps := find_hparam(hp, ["layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"], True)) is not None:
        _f32(ctx, "attention.layer_norm_epsilon", f_norm_eps, "layer_norm_eps")
    if (n_experts := find_hparam(hp, ["num_local_experts", "num_experts", "n_routed_experts"], True)) is not None:
        _u32(ctx, "expert_count", n_experts, "num_experts")
    if (n_used := find_hparam(hp, ["num_experts_per_tok", "num_experts_per_token", "top_k_experts"], True)) is not None:
        _u32(ctx, "expert_used_count", n_used, "num_experts_per_tok")
    for k in ("n_group", "topk_group", "score_function", "scoring_func", "score_func"):
        if hp.get(k) is not None:
            raise UnsupportedError(f"{ctx.config_path}: {k!r} (grouped/scored expert routing) is not supported")
    if (head_dim := hp.get("head_dim")) is not None:
        _u32(ctx, "attention.key_length", head_dim, "head_dim")
        _u32(ctx, "attention.value_length", head_dim, "head_dim")
    _file_type_placeholder(ctx)


# conversion/llama.py LlamaModel.set_gguf_parameters
def llama_params(ctx: ParamCtx) -> None:
    text_model_params(ctx)
    hp = ctx.hp
    _u32(ctx, "vocab_size", hp["vocab_size"], "vocab_size")
    if (rope_dim := hp.get("head_dim")) is None:
        rope_dim = hp["hidden_size"] // hp["num_attention_heads"]
    _u32(ctx, "rope.dimension_count", rope_dim, "head_dim")


# conversion/base.py TextModel._try_set_pooling_type (only the "no pooling" outcome is supported)
def _no_pooling(ctx: ParamCtx) -> None:
    if (ctx.folder / "modules.json").is_file():
        raise UnsupportedError(f"{ctx.folder / 'modules.json'}: sentence-transformers (embedding) models are not supported")
    if ctx.hp.get("classifier_pooling") is not None:
        raise UnsupportedError(f"{ctx.config_path}: classifier_pooling (classification heads) is not supported")


# conversion/qwen.py Qwen2Model.set_gguf_parameters
def qwen2_params(ctx: ParamCtx) -> None:
    text_model_params(ctx)
    _no_pooling(ctx)


# conversion/qwen.py Qwen3Model (rerankers write extra keys and a cls_out tensor: refused)
def qwen3_params(ctx: ParamCtx) -> None:
    readme = ctx.folder / "README.md"
    text = readme.read_text(encoding="utf-8", errors="replace").lower() if readme.is_file() else ""
    hints = [str(ctx.folder.name), str(ctx.hp.get("_name_or_path", "")), str(ctx.hp.get("model_type", "")),
             str(ctx.hp.get("architectures", [""])[0] or "")]
    hints = [h.lower() for h in hints if h]
    origin = str(ctx.hp.get("architectures", [""])[0] or "").lower()
    if ("# qwen3-reranker" in text or "# qwen3-vl-reranker" in text
            or any("qwen3-reranker" in h or "qwen3-vl-reranker" in h for h in hints)
            or "sequenceclassification" in origin):
        raise UnsupportedError(f"{ctx.folder}: Qwen3 reranker models are not supported")
    qwen2_params(ctx)


# conversion/qwen.py Qwen2MoeModel.set_gguf_parameters
def qwen_moe_params(ctx: ParamCtx) -> None:
    text_model_params(ctx)
    if (v := ctx.hp.get("moe_intermediate_size")) is not None:
        _u32(ctx, "expert_feed_forward_length", v, "moe_intermediate_size")
    if (v := ctx.hp.get("shared_expert_intermediate_size")) is not None:
        _u32(ctx, "expert_shared_feed_forward_length", v, "shared_expert_intermediate_size")


# conversion/gemma.py GemmaModel.set_gguf_parameters
def gemma_params(ctx: ParamCtx) -> None:
    hp = ctx.hp
    _u32(ctx, "context_length", hp["max_position_embeddings"], "max_position_embeddings")
    _u32(ctx, "embedding_length", hp["hidden_size"], "hidden_size")
    ctx.kv.add_uint32(_key(ctx, "block_count"), ctx.block_count)
    _u32(ctx, "feed_forward_length", hp["intermediate_size"], "intermediate_size")
    _u32(ctx, "attention.head_count", hp["num_attention_heads"], "num_attention_heads")
    n_kv = hp["num_key_value_heads"] if "num_key_value_heads" in hp else hp["num_attention_heads"]
    _u32(ctx, "attention.head_count_kv", n_kv, "num_key_value_heads")
    _f32(ctx, "attention.layer_norm_rms_epsilon", hp["rms_norm_eps"], "rms_norm_eps")
    _u32(ctx, "attention.key_length", hp["head_dim"], "head_dim")
    _u32(ctx, "attention.value_length", hp["head_dim"], "head_dim")
    _file_type_placeholder(ctx)


# conversion/gemma.py Gemma2Model.set_gguf_parameters
def gemma2_params(ctx: ParamCtx) -> None:
    gemma_params(ctx)
    hp = ctx.hp
    _f32(ctx, "attn_logit_softcapping", hp["attn_logit_softcapping"], "attn_logit_softcapping")
    _f32(ctx, "final_logit_softcapping", hp["final_logit_softcapping"], "final_logit_softcapping")
    _u32(ctx, "attention.sliding_window", hp["sliding_window"], "sliding_window")


# conversion/gemma.py Gemma3Model.set_gguf_parameters
def gemma3_params(ctx: ParamCtx) -> None:
    text_model_params(ctx)
    hp = ctx.hp
    _u32(ctx, "context_length", hp.get("max_position_embeddings", 131072), "max_position_embeddings")
    _u32(ctx, "attention.head_count", hp.get("num_attention_heads", 8), "num_attention_heads")
    _f32(ctx, "attention.layer_norm_rms_epsilon", hp.get("rms_norm_eps", 1e-6), "rms_norm_eps")
    _u32(ctx, "attention.key_length", hp.get("head_dim", 256), "head_dim")
    _u32(ctx, "attention.value_length", hp.get("head_dim", 256), "head_dim")
    _f32(ctx, "rope.freq_base", ctx.rp.get("full_attention", ctx.rp).get("rope_theta", 1_000_000.0), "rope_theta")
    if hp.get("attn_logit_softcapping") is not None:
        raise InputError(f"{ctx.config_path}: Gemma 3 has no attn_logit_softcapping, got {hp['attn_logit_softcapping']!r}")
    if final := hp.get("final_logit_softcapping"):
        _f32(ctx, "final_logit_softcapping", final, "final_logit_softcapping")
    if hp.get("sliding_window_pattern") != 1:
        _u32(ctx, "attention.sliding_window", hp["sliding_window"], "sliding_window")
    _u32(ctx, "attention.head_count_kv", hp.get("num_key_value_heads", 4), "num_key_value_heads")


def _phi3_rope(ctx: ParamCtx) -> tuple[int, int, int, int, int]:
    hp, rp = ctx.hp, ctx.rp
    n_embd = find_hparam(hp, ["hidden_size", "n_embd"])
    n_head = find_hparam(hp, ["num_attention_heads", "n_head"])
    max_pos = find_hparam(hp, ["n_positions", "max_position_embeddings"])
    if "original_max_position_embeddings" not in rp:
        raise InputError(f"{ctx.config_path}: missing key 'original_max_position_embeddings'")
    orig_max_pos = rp["original_max_position_embeddings"]
    rot_pct = rp.get("partial_rotary_factor", 1.0)
    rope_dims = int(rot_pct * n_embd) // n_head
    return n_embd, n_head, max_pos, orig_max_pos, rope_dims


# conversion/phi.py Phi3MiniModel.set_gguf_parameters
def phi3_params(ctx: ParamCtx) -> None:
    hp = ctx.hp
    n_embd, n_head, max_pos, orig_max_pos, rope_dims = _phi3_rope(ctx)
    n_head_kv = find_hparam(hp, ["num_key_value_heads", "n_head_kv"])
    _u32(ctx, "context_length", max_pos, "max_position_embeddings")
    _u32(ctx, "rope.scaling.original_context_length", orig_max_pos, "original_max_position_embeddings")
    _u32(ctx, "embedding_length", n_embd, "hidden_size")
    _u32(ctx, "feed_forward_length", find_hparam(hp, ["intermediate_size"]), "intermediate_size")
    ctx.kv.add_uint32(_key(ctx, "block_count"), ctx.block_count)
    _u32(ctx, "attention.head_count", n_head, "num_attention_heads")
    _u32(ctx, "attention.head_count_kv", n_head_kv, "num_key_value_heads")
    _f32(ctx, "attention.layer_norm_rms_epsilon", find_hparam(hp, ["rms_norm_eps"]), "rms_norm_eps")
    _u32(ctx, "rope.dimension_count", rope_dims, "partial_rotary_factor")
    _f32(ctx, "rope.freq_base", ctx.rp.get("full_attention", ctx.rp)["rope_theta"], "rope_theta")
    _file_type_placeholder(ctx)
    sliding_window = hp.get("sliding_window")
    if sliding_window is None:
        sliding_window = 0
    _u32(ctx, "attention.sliding_window", sliding_window, "sliding_window")


# conversion/phi.py Phi3MiniModel.generate_extra_tensors
def phi3_rope_factors(ctx: ParamCtx) -> list[tuple[str, np.ndarray]]:
    _, _, max_pos, orig_max_pos, rope_dims = _phi3_rope(ctx)
    rp = ctx.rp
    long_factors = rp.get("long_factor")
    short_factors = rp.get("short_factor")
    if not long_factors:
        return []
    if not isinstance(max_pos, int) or not isinstance(orig_max_pos, int) or max_pos <= 0 or orig_max_pos <= 1:
        raise InputError(f"{ctx.config_path}: 'max_position_embeddings' ({max_pos!r}) and "
                         f"'original_max_position_embeddings' ({orig_max_pos!r}) must be positive integers, the latter > 1")
    scale = max_pos / orig_max_pos
    rope_scaling_type = (rp.get("rope_type") or "").lower()
    if len(rope_scaling_type) == 0:
        raise InputError(f"{ctx.config_path}: missing key 'rope_scaling.type'")
    if rope_scaling_type == "su" or rope_scaling_type == "longrope":
        attn_factor = math.sqrt(1 + math.log(scale) / math.log(orig_max_pos)) if scale > 1.0 else 1.0
    elif rope_scaling_type == "yarn":
        attn_factor = 0.1 * math.log(scale) + 1.0 if scale > 1.0 else 1.0
    else:
        raise UnsupportedError(f"{ctx.config_path}: rope scaling type {rope_scaling_type!r} is not supported for Phi-3")
    ctx.kv.add_float32(_key(ctx, "rope.scaling.attn_factor"), attn_factor)
    if long_factors is None or short_factors is None:
        raise InputError(f"{ctx.config_path}: missing key 'rope_scaling.long_factor' or 'rope_scaling.short_factor'")
    if len(long_factors) != len(short_factors) or len(long_factors) != rope_dims / 2:
        raise InputError(f"{ctx.config_path}: rope_scaling long/short factors must have {rope_dims // 2} entries, got {len(long_factors)} and {len(short_factors)}")
    return [
        ("rope_factors_long.weight", np.array(long_factors, dtype=np.float32)),
        ("rope_factors_short.weight", np.array(short_factors, dtype=np.float32)),
    ]


# conversion/llama.py LlamaModel.generate_extra_tensors, in torch's float32 arithmetic: a Python
# number divided by a 0-d tensor is `tensor.reciprocal() * number` (torch/_tensor.py __rdiv__),
# tensor-scalar ops round to float32 after each step.
def llama3_rope_freqs(ctx: ParamCtx) -> list[tuple[str, np.ndarray]]:
    rope_params = ctx.rp.get("full_attention", ctx.rp)
    if not rope_params or str(rope_params.get("rope_type", "")).lower() != "llama3":
        return []
    f32 = np.float32
    base = rope_params.get("rope_theta", 10000.0)
    if (dim := ctx.hp.get("head_dim")) is None:
        dim = ctx.hp["hidden_size"] // ctx.hp["num_attention_heads"]
    # 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    expo = np.arange(0, dim, 2, dtype=f32) / f32(dim)  # (dim/2,)
    freqs = (f32(1) / torch_pow_f32(f32(base), expo)) * f32(1.0)
    factor = rope_params.get("factor", 8.0)
    low_freq_factor = rope_params.get("low_freq_factor", 1.0)
    high_freq_factor = rope_params.get("high_freq_factor", 4.0)
    old_context_len = rope_params.get("original_max_position_embeddings", 8192)
    # kquant: transformers' _validate_llama3_parameters rules, as errors (upstream divides by zero)
    for k, v in (("factor", factor), ("low_freq_factor", low_freq_factor), ("high_freq_factor", high_freq_factor),
                 ("original_max_position_embeddings", old_context_len)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf"):
            raise InputError(f"{ctx.config_path}: 'rope_scaling.{k}' must be a positive number, got {v!r}")
    if not low_freq_factor < high_freq_factor:
        raise InputError(f"{ctx.config_path}: 'rope_scaling.high_freq_factor' ({high_freq_factor}) must be greater "
                         f"than 'rope_scaling.low_freq_factor' ({low_freq_factor})")
    low_freq_wavelen = old_context_len / low_freq_factor  # Python floats, as upstream
    high_freq_wavelen = old_context_len / high_freq_factor
    out = np.empty(len(freqs), dtype=f32)  # (dim/2,)
    for i, freq in enumerate(freqs):
        wavelen = (f32(1) / freq) * f32(2 * math.pi)  # 2 * math.pi / freq
        if wavelen < f32(high_freq_wavelen):
            out[i] = 1
        elif wavelen > f32(low_freq_wavelen):
            out[i] = factor
        else:
            # (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            smooth = ((f32(1) / wavelen) * f32(old_context_len) - f32(low_freq_factor)) / f32(high_freq_factor - low_freq_factor)
            # 1 / ((1 - smooth) / factor + smooth)
            out[i] = (f32(1) / ((f32(1) - smooth) / f32(factor) + smooth)) * f32(1)
    return [("rope_freqs.weight", out)]


def torch_pow_f32(base: np.float32, expo: np.ndarray) -> np.ndarray:
    """float32 `base ** expo`, rounded from float64.

    torch evaluates this with SLEEF's powf (1-ulp, not correctly rounded) on AVX2/AVX-512 CPUs,
    so a few (base, head_dim) pairs can differ in the last bit; every official Llama 3.x rope
    configuration (theta 500000, head_dim 64/128) matches exactly.
    """
    return np.power(np.float64(base), expo.astype(np.float64)).astype(np.float32)


_LLAMA_HF = ("LlamaForCausalLM", "LLaMAForCausalLM")

TABLES: list[ArchTable] = [
    ArchTable(
        hf_names=_LLAMA_HF, arch="llama", layer=LLAMA_LAYER, params=llama_params, vocab="llama",
        bias_ok=ATTN_BIASES + MLP_BIASES, permute_qk=True, extra=llama3_rope_freqs,
    ),
    ArchTable(
        hf_names=("MistralForCausalLM",), arch="llama", layer=LLAMA_LAYER, params=llama_params, vocab="llama",
        bias_ok=ATTN_BIASES + MLP_BIASES, permute_qk=True, extra=llama3_rope_freqs,
    ),
    ArchTable(
        hf_names=("MixtralForCausalLM",), arch="llama", layer=MIXTRAL_LAYER, params=llama_params, vocab="llama",
        bias_ok=ATTN_BIASES, permute_qk=True, extra=llama3_rope_freqs,
        experts=Experts(
            marker="block_sparse_moe.experts",
            source="model.layers.{bid}.block_sparse_moe.experts.{xid}.{w}.weight",
            order=(("w1", "ffn_gate_exps"), ("w2", "ffn_down_exps"), ("w3", "ffn_up_exps")),
            count_keys=("num_local_experts",),
        ),
    ),
    ArchTable(
        hf_names=("Qwen2ForCausalLM",), arch="qwen2", layer=LLAMA_LAYER, params=qwen2_params, vocab="qwen2",
        bias_ok=ATTN_BIASES + MLP_BIASES, bias_required=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ),
    ArchTable(
        hf_names=("Qwen3ForCausalLM",), arch="qwen3", layer={**LLAMA_LAYER, **QK_NORM_LAYER}, params=qwen3_params,
        vocab="qwen2", bias_ok=ATTN_BIASES + MLP_BIASES,
    ),
    ArchTable(
        hf_names=("Qwen2MoeForCausalLM",), arch="qwen2moe", layer={**QWEN_MOE_LAYER, **QWEN2_MOE_SHARED},
        params=qwen_moe_params, vocab="default", bias_ok=ATTN_BIASES,
        bias_required=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        experts=Experts(
            marker="experts",
            source="model.layers.{bid}.mlp.experts.{xid}.{w}.weight",
            order=(("down_proj", "ffn_down_exps"), ("gate_proj", "ffn_gate_exps"), ("up_proj", "ffn_up_exps")),
            count_keys=("num_local_experts", "num_experts"),
        ),
    ),
    ArchTable(
        hf_names=("Qwen3MoeForCausalLM",), arch="qwen3moe", layer={**QWEN_MOE_LAYER, **QK_NORM_LAYER},
        params=qwen_moe_params, vocab="default", bias_ok=ATTN_BIASES,
        experts=Experts(
            marker="experts",
            source="model.layers.{bid}.mlp.experts.{xid}.{w}.weight",
            order=(("down_proj", "ffn_down_exps"), ("gate_proj", "ffn_gate_exps"), ("up_proj", "ffn_up_exps")),
            count_keys=("num_local_experts", "num_experts"),
        ),
    ),
    ArchTable(
        hf_names=("GemmaForCausalLM",), arch="gemma", layer=LLAMA_LAYER, params=gemma_params, vocab="gemma",
        globals_={"model.embed_tokens": "token_embd", "model.norm": "output_norm"}, skip_names=("lm_head.weight",),
        norm_shift=True,
    ),
    ArchTable(
        hf_names=("Gemma2ForCausalLM",), arch="gemma2", layer=GEMMA2_LAYER, params=gemma2_params, vocab="gemma2",
        globals_={"model.embed_tokens": "token_embd", "model.norm": "output_norm"}, skip_names=("lm_head.weight",),
        norm_shift=True,
    ),
    ArchTable(
        hf_names=("Gemma3ForCausalLM",), arch="gemma3", layer={**GEMMA2_LAYER, **QK_NORM_LAYER}, params=gemma3_params,
        vocab="gemma3", norm_shift=True, embd_trim=True,
    ),
    ArchTable(
        hf_names=("Phi3ForCausalLM",), arch="phi3", layer=PHI3_LAYER, params=phi3_params, vocab="phi3",
        extra=phi3_rope_factors, gate_up_fused=True,
    ),
]

BY_HF_NAME: dict[str, ArchTable] = {n: t for t in TABLES for n in t.hf_names}
