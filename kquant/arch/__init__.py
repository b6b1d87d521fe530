"""What convert_hf_to_gguf.py --outtype bf16 would write for a Hugging Face model folder, minus the bytes.

`load_spec` reads config.json (strictly), the safetensors headers and the tokenizer files and
returns a `ModelSpec`: the GGUF metadata in write order and, per GGUF tensor, its name, shape,
HF sources, the row gather / transform that builds it and the type the reference converter stores
it as (BF16, or F32 for 1-D tensors, norms and router gates). It mirrors
conversion/base.py ModelBase.write(): prepare_tensors (tensor order and content), then
prepare_metadata (general.*, set_gguf_parameters, set_vocab), from llama.cpp as vendored in
llama-cpp-python 0.3.36. Architecture specifics live in `tables.py`; tokenizers in kquant.vocab.
"""

from __future__ import annotations

import re
from math import prod
from pathlib import Path

from ..errors import InputError, UnsupportedError
from . import kv as K
from .hparams import read_config, rope_parameters, to_hparams
from .kv import KVRecorder
from .metadata import meta_kv
from .spec import ModelSpec, TensorSpec
from .tables import BY_HF_NAME, ParamCtx
from .tensors import build_tensors, safetensors_order

__all__ = ["ModelSpec", "TensorSpec", "load_spec", "supported_architectures"]

GGML_QUANT_VERSION = 2  # gguf-py constants.py GGML_QUANT_VERSION


def supported_architectures() -> list[str]:
    """HF `architectures` names kquant converts."""
    return sorted(BY_HF_NAME)


def load_spec(
    folder: str | Path,
    tensor_shapes: dict[str, tuple[tuple[int, ...], str]] | None = None,
    *,
    config_path: str | Path | None = None,
    tokenizer_folder: str | Path | None = None,
    vocab: bool = True,
    tokenizer_pre: str | None = None,
) -> ModelSpec:
    """Build the ModelSpec of the HF model in `folder` (see module docstring)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a directory")
    cfg_path = Path(config_path) if config_path is not None else folder / "config.json"
    tok_folder = Path(tokenizer_folder) if tokenizer_folder is not None else folder
    cfg = read_config(cfg_path)
    hf_arch = cfg["architectures"][0]
    table = BY_HF_NAME.get(hf_arch)
    if table is None:
        raise UnsupportedError(
            f"{cfg_path}: architecture {hf_arch!r} is not supported (supported: {', '.join(supported_architectures())})")
    hp = to_hparams(cfg, cfg_path)
    _check_hparams(cfg, hp, cfg_path)
    rp = rope_parameters(hp)
    _check_rope(rp, cfg_path)
    block_count = hp["num_hidden_layers"]

    hf = _hf_tensors(folder, tensor_shapes)
    _check_counts(table, hp, hf, cfg_path)  # before anything proportional to a count is built
    rec = KVRecorder(table.arch)
    rec.add_string(K.GENERAL_ARCHITECTURE, table.arch)  # GGUFWriter.__init__ add_architecture
    ctx = ParamCtx(kv=KVRecorder(table.arch), hp=hp, rp=rp, block_count=block_count, config_path=cfg_path, folder=folder)

    # prepare_tensors: generate_extra_tensors may record keys (phi3 attn_factor) before the metadata
    extra = table.extra(ctx) if table.extra is not None else []
    pre_kv = ctx.kv
    n_vocab_real = None
    if table.embd_trim:
        from ..vocab import gemma3_real_vocab

        n_vocab_real = gemma3_real_vocab(tok_folder, hp)  # reads tokenizer.json even for --dry-run
    tensors = build_tensors(table, hp, block_count, hf, extra, n_vocab_real, str(folder))

    # prepare_metadata: general.type + Metadata, set_gguf_parameters, quantization version, set_vocab
    for k, t, v in pre_kv.entries():
        rec.add_key_value(k, v, t)
    meta_kv(rec, folder, *_param_counts(tensors))
    ctx.kv = rec
    table.params(ctx)
    rec.add_uint32(K.GENERAL_QUANTIZATION_VERSION, GGML_QUANT_VERSION)
    if vocab:
        from ..vocab import set_vocab

        set_vocab(table.vocab, rec, tok_folder, hp, cfg["model_type"], tokenizer_pre)

    keys = rec.keys()
    ft_idx = keys.index(K.GENERAL_FILE_TYPE) if K.GENERAL_FILE_TYPE in keys else -1
    qv_idx = keys.index(K.GENERAL_QUANTIZATION_VERSION)
    kv = [e for e in rec.entries() if e[0] not in (K.GENERAL_FILE_TYPE, K.GENERAL_QUANTIZATION_VERSION)]
    n_expert = 0
    if table.experts is not None:
        n_expert = next(hp[k] for k in table.experts.count_keys if hp.get(k) is not None)
    return ModelSpec(
        arch=table.arch,
        kv=kv,
        tensors=tensors,
        n_layer=block_count,
        n_head=hp["num_attention_heads"],
        n_head_kv=hp.get("num_key_value_heads") or hp["num_attention_heads"],
        n_expert=n_expert,
        n_embd=hp["hidden_size"],
        tied_embeddings=not any(t.name == "output.weight" for t in tensors),
        file_type_index=ft_idx,
        quantization_version_index=qv_idx,
        hf_arch=hf_arch,
        hparams=hp,
    )


def _check_hparams(cfg: dict, hp: dict, path: Path) -> None:
    """Consistency checks the converter does not do but the runtime depends on."""
    n_head, n_embd = hp["num_attention_heads"], hp["hidden_size"]
    n_kv = hp.get("num_key_value_heads")
    if not isinstance(n_kv, int) or isinstance(n_kv, bool) or n_kv <= 0:
        raise InputError(f"{path}: 'num_key_value_heads' must be a positive integer, got {n_kv!r}")
    if n_head % n_kv:
        raise InputError(f"{path}: num_attention_heads {n_head} is not a multiple of num_key_value_heads {n_kv}")
    if cfg.get("head_dim") is None and n_embd % n_head:
        raise InputError(f"{path}: hidden_size {n_embd} is not divisible by num_attention_heads {n_head}")
    if hp.get("mlp_only_layers") or hp.get("decoder_sparse_step", 1) != 1:
        raise UnsupportedError(f"{path}: MoE models with dense layers (mlp_only_layers / decoder_sparse_step) are not supported")


# rope_scaling (transformers 4) / rope_parameters (5) values set_gguf_parameters and the rope
# tensors compute with; the names the message gives are the config keys
_ROPE_NUMBERS = ("factor", "low_freq_factor", "high_freq_factor", "attention_factor", "attn_factor", "beta_fast",
                 "beta_slow", "extrapolation_factor", "rope_theta", "partial_rotary_factor", "mscale", "mscale_all_dim")
_ROPE_INTS = ("original_max_position_embeddings",)
_F32_MAX = 3.4028234663852886e38


def _check_rope(rp, path: Path, where: str = "rope_scaling") -> None:
    """rope parameters have the types the converter computes with (one-line InputError naming the key)."""
    if not isinstance(rp, dict):
        raise InputError(f"{path}: {where!r} must be an object, got {rp!r}"[:200])
    for k, v in rp.items():
        if v is None:
            continue
        key = f"{where}.{k}"
        if k in ("full_attention", "sliding_attention"):
            _check_rope(v, path, key)
        elif k in ("type", "rope_type") and not isinstance(v, str):
            raise InputError(f"{path}: {key!r} must be a string, got {v!r}"[:200])
        elif k in _ROPE_NUMBERS and (isinstance(v, bool) or not isinstance(v, (int, float)) or not abs(v) <= _F32_MAX):
            raise InputError(f"{path}: {key!r} must be a finite number (float32 range), got {v!r}"[:200])
        elif k in ("rope_theta", "factor") and v <= 0:
            raise InputError(f"{path}: {key!r} must be positive, got {v!r}")
        elif k in _ROPE_INTS and (isinstance(v, bool) or not isinstance(v, int) or not 0 < v < 2**32):
            raise InputError(f"{path}: {key!r} must be a positive 32-bit integer, got {v!r}"[:200])
        elif k in ("long_factor", "short_factor") and not (isinstance(v, list) and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and abs(x) <= _F32_MAX for x in v)):
            raise InputError(f"{path}: {key!r} must be a list of numbers"[:200])


# config counts that size what load_spec builds (per-layer and per-expert name lists, rope tables,
# the vocabulary): each is bounded by what the checkpoint's headers hold before it is used
_DIM_KEYS = ("hidden_size", "intermediate_size", "vocab_size", "vocab_size_per_layer_input", "num_attention_heads",
             "num_key_value_heads", "head_dim", "moe_intermediate_size", "shared_expert_intermediate_size")
_LAYER_ID = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_EXPERT_ID = re.compile(r"\.experts\.(\d+)\.")


def _check_counts(table, hp: dict, hf: list[tuple[str, tuple[int, ...], str]], path: Path) -> None:
    """Refuse config counts larger than the checkpoint can hold (a layer-count bomb, a 10^9 vocab)."""
    layers = {m.group(1) for n, _, _ in hf if (m := _LAYER_ID.search(n))}
    n_layer = hp["num_hidden_layers"]
    if n_layer > len(layers):
        raise InputError(f"{path}: 'num_hidden_layers' is {n_layer} but the checkpoint has tensors for {len(layers)} layers")
    if table.experts is not None:
        experts = {m.group(1) for n, _, _ in hf if (m := _EXPERT_ID.search(n))}
        k = next((k for k in table.experts.count_keys if hp.get(k) is not None), None)  # as build_tensors picks it
        v = hp.get(k)
        if isinstance(v, int) and not isinstance(v, bool) and v > len(experts):
            raise InputError(f"{path}: {k!r} is {v} but the checkpoint has tensors for {len(experts)} experts")
    max_dim = max((d for _, shape, _ in hf for d in shape), default=0)
    for k in _DIM_KEYS:
        v = hp.get(k)
        if isinstance(v, int) and not isinstance(v, bool) and v > max_dim:
            raise InputError(f"{path}: {k!r} is {v}, larger than any tensor dimension in the checkpoint ({max_dim})")


def _hf_tensors(folder: Path, tensor_shapes) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, dtype) of every HF tensor in the order index_tensors yields them."""
    parts = safetensors_order(folder)
    if parts is None:
        if tensor_shapes is None:
            if any(p.name.startswith("pytorch_model") for p in folder.iterdir()):
                raise UnsupportedError(f"{folder}: only safetensors checkpoints are supported (found pytorch_model*.bin)")
            raise InputError(f"{folder}: no model*.safetensors files")
        return [(n, tuple(s), d) for n, (s, d) in sorted(tensor_shapes.items())]
    order = [t for _, ts in parts for t in ts]
    if tensor_shapes is not None:
        have = {n: (tuple(s), d) for n, s, d in order}
        given = {n: (tuple(s), d) for n, (s, d) in tensor_shapes.items()}
        if have != given:
            diff = sorted(set(have.items()) ^ set(given.items()))[:2]
            raise InputError(f"{folder}: tensor_shapes disagrees with the safetensors headers ({diff})")
    return order


# gguf-py gguf_writer.py GGUFWriter.get_total_parameter_count
def _param_counts(tensors: list[TensorSpec]) -> tuple[int, int, int, int]:
    total = shared = expert = 0
    expert_sum = n_expert_tensors = 0
    for t in tensors:
        size = prod(t.shape)
        if "_exps." in t.name and len(t.shape) >= 3:
            count = t.shape[-2 if ".bias" in t.name else -3]
            expert += size // count
            expert_sum += count
            n_expert_tensors += 1
        else:
            shared += size
        total += size
    return total, shared, expert, (expert_sum // n_expert_tensors) if n_expert_tensors else 0
