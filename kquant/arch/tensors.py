"""HF tensor list -> the ordered GGUF tensor list convert_hf_to_gguf.py writes.

Ports, from llama.cpp's conversion/base.py (vendored in llama-cpp-python 0.3.36):
  ModelBase.index_tensors / get_model_part_names      -> `safetensors_order` (part files sorted, names sorted per file)
  ModelBase/TextModel/LlamaModel/GemmaModel.filter_tensors -> `_filter_name`
  ModelBase.prepare_tensors                           -> `build_tensors` (skip list, block id, F32 forcing)
  LlamaModel.permute / modify_tensors                 -> `qk_permutation`, expert merging
  Qwen2MoeModel.modify_tensors, Gemma*.modify_tensors -> expert merging, norm +1, embedding trim
Shapes are numpy order (last axis = ggml ne[0]); every HF tensor must map, be filtered as
upstream filters it, or be one of the tensors upstream drops; missing tensors are errors.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import numpy as np

from .. import jsonio
from ..errors import InputError, UnsupportedError
from ..safetensors_io import MAX_HEADER_SIZE
from ..types import QType
from .spec import TensorSpec
from .tables import ArchTable

# ModelBase.prepare_tensors: "we don't need these"
DROPPED_SUFFIXES = (".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")
# ModelBase.prepare_tensors: tensor types always stored as F32 (the ones our architectures have)
F32_BASES = ("ffn_gate_inp", "ffn_gate_inp_shexp")
SOURCE_DTYPES = ("BF16", "F16", "F32")
LAYER_PREFIX = "model.layers."


def safetensors_order(folder: Path) -> list[tuple[str, list[tuple[str, tuple[int, ...], str]]]] | None:
    """[(part file, [(name, shape, dtype), ...] sorted by name)] in index_tensors order, or None if no parts."""
    parts = sorted(p.name for p in folder.iterdir() if p.name.startswith("model") and p.name.endswith(".safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        from .hparams import read_json

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
        out.append((part, sorted(_read_header(path), key=lambda t: t[0])))
    if index.is_file():
        in_parts = {n for _, ts in out for n, _, _ in ts}
        if in_parts != set(wm):
            missing = sorted(set(wm) - in_parts)[:3]
            extra = sorted(in_parts - set(wm))[:3]
            raise InputError(f"{index}: weight_map does not match the part files (missing {missing}, extra {extra})")
    return out


def _read_header(path: Path) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, dtype) of every tensor in a safetensors file, header only."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            size = path.stat().st_size
            if n <= 0 or 8 + n > size:
                raise InputError(f"{path}: not a safetensors file (header length {n}, file size {size})")
            if n > MAX_HEADER_SIZE:
                raise InputError(f"{path}: header length {n} exceeds the safetensors limit {MAX_HEADER_SIZE}")
            raw = f.read(n)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    hdr = jsonio.loads(raw, f"{path}: header")
    if not isinstance(hdr, dict):
        raise InputError(f"{path}: malformed safetensors header (not an object)")
    out = []
    for name, meta in hdr.items():
        if name == "__metadata__":
            continue
        if not isinstance(meta, dict) or "dtype" not in meta or "shape" not in meta:
            raise InputError(f"{path}: malformed header entry for tensor {name!r}")
        shape, dtype = meta["shape"], meta["dtype"]
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape) \
                or not isinstance(dtype, str):
            raise InputError(f"{path}: malformed shape or dtype for tensor {name!r}")
        out.append((name, tuple(shape), dtype))
    return out


# conversion/base.py TextModel.filter_tensors (multimodal skip) + ModelBase.filter_tensors renames
def _is_multimodal(name: str) -> bool:
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


def _filter_name(table: ArchTable, name: str) -> str | None:
    """The name upstream indexes a tensor under, or None when a filter_tensors drops it."""
    if table.arch == "llama" and "text_model." in name:  # LlamaModel.filter_tensors
        name = name.replace("text_model.", "")
    if name in table.skip_names:  # GemmaModel / Gemma2Model: lm_head
        return None
    if _is_multimodal(name):
        return None
    if name.endswith("e_score_correction_bias"):
        name = name.replace("e_score_correction_bias", "e_score_correction.bias")
    if "language_model." in name:
        name = name.replace("language_model.", "")
    return name


# conversion/llama.py LlamaModel.permute as a row gather
def qk_permutation(n_rows: int, n_head: int) -> np.ndarray:
    """Row order of permute(W, n_head): out row (h, j, t) = source row (h, t, j), j < hd/2, t < 2."""
    if n_rows % (2 * n_head):
        raise InputError(f"cannot permute {n_rows} rows into {n_head} rotary heads (needs a multiple of {2 * n_head})")
    return np.arange(n_rows, dtype=np.int64).reshape(n_head, 2, n_rows // n_head // 2).swapaxes(1, 2).reshape(-1)


def _norm_plus_one(src_dtype: str) -> Callable[[list[np.ndarray]], np.ndarray]:
    """`data_torch + 1`: in float16 for F16 sources (torch keeps F16), else in float32."""
    if src_dtype == "F16":
        return lambda arrs: (arrs[0].astype(np.float16) + np.float16(1)).astype(np.float32)
    return lambda arrs: arrs[0] + np.float32(1)


def _stack(arrs: list[np.ndarray]) -> np.ndarray:
    return np.stack(arrs, axis=0)


def ref_type(gguf_name: str, n_dims: int) -> QType:
    """The type prepare_tensors picks for --outtype bf16."""
    if n_dims <= 1 or gguf_name.endswith("_norm.weight"):
        return QType.F32
    base = gguf_name.rsplit(".", 1)[0].split(".")[-1]
    if base in F32_BASES or gguf_name[-7:] not in (".weight", ".lora_a", ".lora_b"):
        return QType.F32
    return QType.BF16


class _Dims:
    """Expected tensor shapes from the hyperparameters."""

    def __init__(self, hp: dict, n_expert: int, gate_up_fused: bool = False):
        self.gate_up_fused = gate_up_fused
        self.n_embd = hp["hidden_size"]
        self.n_head = hp["num_attention_heads"]
        self.n_kv = hp.get("num_key_value_heads") or self.n_head
        self.hd = hp.get("head_dim") or self.n_embd // self.n_head
        self.n_ff = hp["intermediate_size"]
        self.n_vocab = hp["vocab_size"]
        self.n_expert = n_expert
        self.n_ff_exp = hp.get("moe_intermediate_size") or self.n_ff
        self.n_ff_shexp = hp.get("shared_expert_intermediate_size") or self.n_ff

    def shape(self, base: str, bias: bool) -> tuple[int, ...] | None:
        e, q, kv, f = self.n_embd, self.n_head * self.hd, self.n_kv * self.hd, self.n_ff
        w = {
            "token_embd": (self.n_vocab, e), "output": (self.n_vocab, e), "output_norm": (e,),
            "attn_norm": (e,), "ffn_norm": (e,), "post_attention_norm": (e,), "post_ffw_norm": (e,),
            "attn_q": (q, e), "attn_k": (kv, e), "attn_v": (kv, e), "attn_output": (e, q),
            "attn_q_norm": (self.hd,), "attn_k_norm": (self.hd,), "attn_qkv": (q + 2 * kv, e),
            "ffn_gate": (f, e), "ffn_down": (e, f), "ffn_up": (f, e),
            "ffn_gate_inp": (self.n_expert, e), "ffn_gate_inp_shexp": (1, e),
            "ffn_gate_shexp": (self.n_ff_shexp, e), "ffn_up_shexp": (self.n_ff_shexp, e),
            "ffn_down_shexp": (e, self.n_ff_shexp),
            "ffn_gate_exps": (self.n_ff_exp, e), "ffn_up_exps": (self.n_ff_exp, e), "ffn_down_exps": (e, self.n_ff_exp),
        }.get(base)
        if w is None:
            return None
        if base == "ffn_up" and self.gate_up_fused:
            w = (2 * f, e)
        return (w[0],) if bias else w


def build_tensors(
    table: ArchTable,
    hp: dict,
    block_count: int,
    hf: list[tuple[str, tuple[int, ...], str]],
    extra: list[tuple[str, np.ndarray]],
    n_vocab_real: int | None,
    where: str,
) -> list[TensorSpec]:
    """TensorSpecs in write order for HF tensors `hf` [(name, shape, dtype)] in index order."""
    n_expert = 0
    if table.experts is not None:
        n_expert = next((hp[k] for k in table.experts.count_keys if k in hp and hp[k] is not None), 0)
        if not isinstance(n_expert, int) or n_expert <= 0:
            raise InputError(f"{where}: expert count ({'/'.join(table.experts.count_keys)}) must be a positive integer")
    dims = _Dims(hp, n_expert, table.gate_up_fused)
    n_head, n_kv = dims.n_head, dims.n_kv

    out: list[TensorSpec] = []
    for name, data in extra:  # generate_extra_tensors come first
        out.append(TensorSpec(name=name, shape=tuple(data.shape), sources=(), ref_type=ref_type(name, data.ndim),
                              generated=data))

    # reverse maps: HF name -> (GGUF base, bid or None, is_bias)
    seen: dict[str, str] = {}
    expert_buf: dict[int, dict[str, tuple[tuple[int, ...], str]]] = {}
    expert_names: dict[str, tuple[int, int, str]] = {}
    if table.experts is not None:
        x = table.experts
        for bid in range(block_count):
            for xid in range(n_expert):
                for w, _ in x.order:
                    expert_names[x.source.format(bid=bid, xid=xid, w=w)] = (bid, xid, w)

    produced: set[str] = set()
    for orig, shape, dtype in hf:
        name = _filter_name(table, orig)
        if name is None or name.endswith(DROPPED_SUFFIXES):
            continue
        if name in seen:
            raise InputError(f"{where}: tensors {seen[name]!r} and {orig!r} both map to {name!r}")
        seen[name] = orig
        if dtype not in SOURCE_DTYPES:
            raise UnsupportedError(f"{where}: tensor {orig!r} has dtype {dtype}; supported: {', '.join(SOURCE_DTYPES)}")

        if name in expert_names:
            bid, xid, w = expert_names[name]
            buf = expert_buf.setdefault(bid, {})
            buf[name] = (shape, dtype)
            if len(buf) >= n_expert * len(table.experts.order):
                out.extend(_merge_experts(table, dims, bid, buf, where))
                del expert_buf[bid]
            continue

        gguf_base, bid, is_bias = _map_name(table, name, block_count, where)
        suffix = ".bias" if is_bias else ".weight"
        gname = (f"blk.{bid}.{gguf_base}" if bid is not None else gguf_base) + suffix
        exp = dims.shape(gguf_base, is_bias)
        if exp is not None and tuple(shape) != exp and not (table.embd_trim and gguf_base == "token_embd"):
            raise InputError(f"{where}: tensor {orig!r} has shape {list(shape)}, expected {list(exp)} from config.json")

        row_perm = None
        transform = None
        out_shape = tuple(shape)
        if table.permute_qk and name.endswith(("q_proj.weight", "q_proj.bias")):
            row_perm = qk_permutation(shape[0], n_head)
        elif table.permute_qk and name.endswith(("k_proj.weight", "k_proj.bias")):
            row_perm = qk_permutation(shape[0], n_kv)
        if table.embd_trim and gguf_base == "token_embd":
            if shape[0] < dims.n_vocab:
                raise InputError(f"{where}: tensor {orig!r} has {shape[0]} rows, fewer than vocab_size {dims.n_vocab}")
            n = min(shape[0], n_vocab_real if n_vocab_real is not None else shape[0])
            if n != shape[0]:
                row_perm = np.arange(n, dtype=np.int64)
                out_shape = (n,) + tuple(shape[1:])
        if table.norm_shift and name.endswith("norm.weight"):
            transform = _norm_plus_one(dtype)
        out.append(TensorSpec(name=gname, shape=out_shape, sources=(orig,), ref_type=ref_type(gname, len(out_shape)),
                              row_perm=row_perm, transform=transform))
        produced.add(gname)

    if expert_buf:
        bid = min(expert_buf)
        have = len(expert_buf[bid])
        raise InputError(f"{where}: layer {bid} has {have} expert tensors, expected {n_expert * len(table.experts.order)}")
    _check_complete(table, hp, block_count, produced, out, where)
    return out


def _map_name(table: ArchTable, name: str, block_count: int, where: str) -> tuple[str, int | None, bool]:
    """(GGUF base, block id, is_bias) for an HF tensor name; InputError when it maps to nothing."""
    for suffix, is_bias in ((".weight", False), (".bias", True)):
        if not name.endswith(suffix):
            continue
        base = name[: -len(suffix)]
        if base in table.globals_ and not is_bias:
            return table.globals_[base], None, False
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", base)
        if m:
            bid, module = int(m.group(1)), m.group(2)
            if module in table.layer and (not is_bias or module in table.bias_ok):
                if bid >= block_count:
                    raise InputError(f"{where}: tensor {name!r} is for layer {bid} but num_hidden_layers is {block_count}")
                return table.layer[module], bid, is_bias
    raise InputError(f"{where}: unexpected tensor {name!r} for {table.hf_names[0]}")


def _merge_experts(table: ArchTable, dims: _Dims, bid: int, buf: dict, where: str) -> list[TensorSpec]:
    """Qwen2MoeModel / LlamaModel.modify_tensors: stack the experts of one layer, one tensor per projection."""
    x = table.experts
    specs = []
    for w, gbase in x.order:
        names = [x.source.format(bid=bid, xid=xid, w=w) for xid in range(dims.n_expert)]
        exp = dims.shape(gbase, False)
        for n in names:
            if buf[n][0] != exp:
                raise InputError(f"{where}: tensor {n!r} has shape {list(buf[n][0])}, expected {list(exp)} from config.json")
        gname = f"blk.{bid}.{gbase}.weight"
        shape = (dims.n_expert,) + exp
        specs.append(TensorSpec(name=gname, shape=shape, sources=tuple(names), ref_type=ref_type(gname, 3), transform=_stack))
    return specs


def _check_complete(table: ArchTable, hp: dict, block_count: int, produced: set[str], out: list[TensorSpec], where: str) -> None:
    """Every tensor the runtime needs is present (upstream does not check; a missing one fails at load)."""
    names = {t.name for t in out}
    need: list[tuple[str, str]] = []  # (GGUF name, HF name)
    for hf_base, g in table.globals_.items():
        if g == "output" and hp.get("tie_word_embeddings", False):
            continue  # tied: no lm_head, llama.cpp reuses token_embd
        need.append((g + ".weight", hf_base + ".weight"))
    for bid in range(block_count):
        pre = f"{LAYER_PREFIX}{bid}."
        for module, g in table.layer.items():
            need.append((f"blk.{bid}.{g}.weight", pre + module + ".weight"))
        for module in table.bias_required:
            need.append((f"blk.{bid}.{table.layer[module]}.bias", pre + module + ".bias"))
        if table.experts is not None:
            for w, g in table.experts.order:
                need.append((f"blk.{bid}.{g}.weight", table.experts.source.format(bid=bid, xid=0, w=w)))
    missing = [hf for g, hf in need if g not in names]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise InputError(f"{where}: missing tensor(s) {', '.join(missing[:3])}{more}")
