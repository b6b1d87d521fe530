"""`kquant inspect` (GGUF / safetensors / HF folder listing) and `kquant dequantize` (GGUF -> safetensors).

GGUF files are read with kquant.io.gguf.GGUFFile, which validates every field before use (ports
ggml/src/gguf.cpp gguf_init_from_reader's checks); safetensors files and folders with
kquant.io.safetensors (ports safetensors/src/tensor.rs's header checks). `dequantize_file`
streams: rows of one tensor at a time, written through kquant.io.fsutil.atomic_output into a
safetensors file whose header is the one kquant.io.safetensors.write_safetensors writes.
`--hf-names` asks the model family (kquant.models, families with `inverse_names`) for the HF name
of every tensor and, where the conversion reordered rows (conversion/llama.py LlamaModel.permute),
the inverse row order.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from .io import jsonio
from .errors import InputError, KquantError, OutputError, UnsupportedError

GGUF_MAGIC = b"GGUF"
ARRAY_HEAD = 8  # elements of a long array shown without --full
ARRAY_FULL_MAX = 16  # arrays up to this length are shown whole
MAX_CONFIG_BYTES = 10 << 20
VALUE_WIDTH = 72  # characters of a metadata value in the table
OUT_DTYPES = {"F32": 4, "F16": 2, "BF16": 2}  # --dtype -> bytes per value
F16_MAX = 65504.0
SLAB_BYTES = 32 << 20  # float32 bytes of rows dequantized at once
GENERATED_TENSORS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")  # made by the converter, no HF tensor to go back to
SAFETENSORS_METADATA = {"format": "pt"}  # what transformers' save_pretrained writes


def _p(path) -> str:
    s = os.fspath(path)
    s = s if isinstance(s, str) else os.fsdecode(s)
    return s if s.isprintable() else repr(s)


def _num(v):
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def _show(v, width: int = VALUE_WIDTH) -> str:
    """A value on one printable line, shortened to `width` characters."""
    s = v if isinstance(v, str) else repr(v)
    if not s.isprintable():
        s = repr(s)[1:-1]
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from invalid UTF-8 in the file
        s = s.encode("utf-8", "backslashreplace").decode("utf-8")
    return s if len(s) <= width else s[: width - 3] + "..."


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def detect_format(path) -> str:
    """'folder', 'gguf' (magic 'GGUF' or a .gguf name) or 'safetensors' (anything else is tried as safetensors)."""
    p = Path(os.fspath(path))
    if p.is_dir():
        return "folder"
    if not p.exists():
        raise InputError(f"{_p(p)}: no such file or folder")
    try:
        with open(p, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise InputError(f"{_p(p)}: cannot open ({e.strerror or e})") from None
    return "gguf" if head == GGUF_MAGIC or p.suffix.lower() == ".gguf" else "safetensors"


# ====================================================================== inspect
def _meta_value(vtype, value, full: bool):
    """A metadata value for JSON: scalars as they are, long arrays summarised unless `full`."""
    from gguf import GGUFValueType

    if vtype == GGUFValueType.ARRAY:
        items = [_num(x) for x in value]
        if full or len(items) <= ARRAY_FULL_MAX:
            return items
        return {"type": "array", "element_type": value.sub_type.name, "length": len(items), "head": items[:ARRAY_HEAD]}
    return _num(value)


def _type_label(vtype, value) -> str:
    from gguf import GGUFValueType

    if vtype == GGUFValueType.ARRAY:
        return f"ARRAY[{value.sub_type.name}]"
    return vtype.name


def inspect_gguf(path, *, full: bool = False) -> dict:
    """Header, metadata and tensor table of a GGUF file (shapes in ggml order, ne[0] first)."""
    from .io.gguf_split import open_gguf
    from .types import FileType
    from .validate import type_name

    with open_gguf(path) as gf:
        shards = getattr(gf, "shards", None)  # a split set (io.gguf_split.GGUFSplit): the merged view
        meta = {k: _meta_value(t, v, full) for k, (t, v) in gf.metadata.items()}
        types = {k: _type_label(t, v) for k, (t, v) in gf.metadata.items()}
        tensors = []
        by_type: dict[str, dict] = {}
        n_el_total = bytes_total = 0
        for ti in gf.tensors:
            n_el = int(np.prod(ti.shape, dtype=np.int64)) if ti.shape else 1
            tn = type_name(ti.qtype)
            tensors.append({"name": ti.name, "type": tn, "shape": list(reversed(ti.shape)), "n_elements": n_el,
                            "bytes": ti.nbytes, "bits_per_weight": round(ti.nbytes * 8.0 / n_el, 4) if n_el else 0.0,
                            "offset": ti.offset_abs, **({"shard": gf.shard_index(ti.name) + 1} if shards else {})})
            e = by_type.setdefault(tn, {"count": 0, "n_elements": 0, "bytes": 0})
            e["count"] += 1
            e["n_elements"] += n_el
            e["bytes"] += ti.nbytes
            n_el_total += n_el
            bytes_total += ti.nbytes
        ft = gf.value("general.file_type")
        try:
            ft_name = FileType(ft).short_name if isinstance(ft, int) and not isinstance(ft, bool) else None
        except ValueError:
            ft_name = None
        arch = gf.value("general.architecture")
        return {
            "format": "gguf",
            "path": os.fspath(path),
            "shape_order": "ggml",
            "version": gf.version,
            "file_size": gf.file_size,
            "alignment": gf.alignment,
            "data_offset": gf.data_offset,
            "architecture": arch if isinstance(arch, str) else None,
            "file_type": ft_name if ft_name is not None else ft,
            "n_kv": len(gf.metadata),
            **({"shards": [{"path": s.path, "file_size": s.file_size, "n_tensors": len(s.tensors)} for s in shards]}
               if shards else {}),
            "metadata": meta,
            "metadata_types": types,
            "tensors": tensors,
            "summary": {"n_tensors": len(tensors), "n_elements": n_el_total, "tensor_bytes": bytes_total,
                        "bits_per_weight": round(bytes_total * 8.0 / n_el_total, 4) if n_el_total else 0.0,
                        "types": by_type},
        }


def _read_config(path: Path) -> tuple[dict | None, str | None]:
    """(config.json as a dict, None) or (None, why it could not be read)."""
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            return None, f"{_p(path)}: larger than {MAX_CONFIG_BYTES} bytes"
        doc = jsonio.read_json(path, MAX_CONFIG_BYTES)
    except OSError as e:
        return None, f"{_p(path)}: {e}"
    except KquantError as e:
        return None, str(e)
    if not isinstance(doc, dict):
        return None, f"{_p(path)}: top level is not an object"
    return doc, None


def inspect_checkpoint(path, *, config=None) -> dict:
    """Files, config.json and tensor table of a HF folder or a .safetensors file (stored shape order)."""
    from .io.safetensors import DTYPE_BITS, Checkpoint

    p = Path(os.fspath(path))
    cfg_path = Path(config) if config else (p / "config.json" if p.is_dir() else None)
    with Checkpoint.open(p) as ck:
        files = [{"path": f.path, "bytes": f.file_size, "n_tensors": len(f.tensors), "metadata": f.metadata} for f in ck.files]
        tensors = []
        by_dtype: dict[str, dict] = {}
        n_el_total = bytes_total = 0
        for name, ti in ck.tensors.items():
            n_el = ti.numel
            tensors.append({"name": name, "dtype": ti.dtype, "shape": list(ti.shape), "n_elements": n_el,
                            "bytes": ti.nbytes, "bits_per_weight": DTYPE_BITS[ti.dtype], "file": os.path.basename(ti.path)})
            e = by_dtype.setdefault(ti.dtype, {"count": 0, "n_elements": 0, "bytes": 0})
            e["count"] += 1
            e["n_elements"] += n_el
            e["bytes"] += ti.nbytes
            n_el_total += n_el
            bytes_total += ti.nbytes
    cfg, cfg_err = (None, None)
    if cfg_path is not None and cfg_path.is_file():
        cfg, cfg_err = _read_config(cfg_path)
    elif config:
        cfg_err = f"{_p(cfg_path)}: no such file"
    with Checkpoint.open(p) as ck:
        source = _source_format(ck, cfg, _p(cfg_path) if cfg_path is not None else _p(p))
    actions = source.pop("_actions", {})
    _bitnet_actions(cfg, source, actions, [t["name"] for t in tensors])
    for t in tensors:
        t["action"] = actions.get(t["name"], "passed through")
    out = {
        "format": "safetensors",
        "path": os.fspath(path),
        "shape_order": "numpy",
        "files": files,
        "config": cfg,
        "source_format": source,
        "tensors": tensors,
        "summary": {"n_tensors": len(tensors), "n_elements": n_el_total, "tensor_bytes": bytes_total,
                    "bits_per_weight": round(bytes_total * 8.0 / n_el_total, 4) if n_el_total else 0.0,
                    "dtypes": by_dtype},
    }
    if cfg_err:
        out["config_error"] = cfg_err
    return out


def _bitnet_actions(cfg: dict | None, source: dict, actions: dict, names: list[str]) -> None:
    """BitNet (models/bitnet.py): its attention / FFN matrices are made ternary before storage."""
    from .models.bitnet import BitnetModel

    archs = cfg.get("architectures") if isinstance(cfg, dict) else None
    if source.get("status") == "refused" or not (isinstance(archs, list) and archs and archs[0] in BitnetModel.hf_names):
        return
    mods = [m for m, g in BitnetModel.layer.items() if g in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_up", "ffn_down", "ffn_gate")]
    hit = [n for n in names if any(n.endswith(f".{m}.weight") for m in mods)]
    for n in hit:
        actions[n] = (actions[n] + ", then " if n in actions else "") + "made ternary (BitNet weight_quant)"
    source["ternary"] = len(hit)


def _source_format(ck, cfg: dict | None, where: str) -> dict:
    """Which source format the checkpoint is and what conversion does to each tensor (io.quantized)."""
    from .errors import KquantError
    from .io import quantized

    qc = cfg.get("quantization_config") if isinstance(cfg, dict) else None
    method = qc.get("quant_method") if isinstance(qc, dict) else None
    try:
        qc = quantized.qconfig(ck.folder, cfg, where)
        if qc:
            quantized.check_mxfp4_arch(qc, cfg, where)
        qplan = quantized.plan(ck, qc, where)
        src = quantized.QuantizedSource(ck, qplan, where) if qplan.method is not None else None
    except KquantError as e:
        return {"name": method or "float", "quant_method": method, "status": "refused", "error": str(e)}
    if src is None:
        odd = {n: f"refused ({ti.dtype} is read only as part of a quantization_config scheme)"
               for n, ti in ck.tensors.items() if ti.dtype not in ("F32", "F16", "BF16")}
        return {"name": "float", "quant_method": None, "status": "refused" if odd else "read as is",
                **({"error": f"{len(odd)} tensor(s) are not float and config.json has no quantization_config",
                    "_actions": odd} if odd else {})}
    actions = {}
    for out, parts in src.consumed.items():
        actions[parts[0]] = f"dequantized -> {out} ({src.source_types[out]})"
        for q in parts[1:]:
            actions[q] = f"consumed by {out}"
    for n in src.dropped:
        actions[n] = "dropped (unused by the converter)"
    for n, kind in qplan.raw.items():
        actions[n] = f"repacked into a {kind.upper()} tensor, its bytes passed through"
    if qplan.raw:
        return {"name": method, "quant_method": method, "status": "passed through", "n_raw": len(qplan.raw),
                "_actions": actions}
    fmt = qc.get("format") if method == "compressed-tensors" else None
    return {"name": method + (f" {fmt}" if fmt else ""), "quant_method": method, "status": "dequantized",
            "n_dequantized": len(src.consumed), "n_dropped": len(src.dropped), "_actions": actions}


def inspect_path(path, *, config=None, full: bool = False) -> dict:
    """`kquant inspect`: a GGUF file, a .safetensors file or a HF folder."""
    fmt = detect_format(path)
    if fmt == "gguf":
        return inspect_gguf(path, full=full)
    return inspect_checkpoint(path, config=config)


def inspect_json(info: dict) -> str:
    return json.dumps(info, allow_nan=False)


def print_inspect(info: dict, out=None) -> None:
    """The human-readable listing of inspect_path's result."""
    out = out or sys.stdout
    s = info["summary"]
    if info["format"] == "gguf":
        print(f"{_show(info['path'], 200)}: GGUF v{info['version']}, {_mib(info['file_size'])}, {s['n_tensors']} tensors, "
              f"{info['n_kv']} metadata keys, alignment {info['alignment']}", file=out)
        print(f"architecture {_show(info['architecture'])}, file type {_show(info['file_type'])}, "
              f"{s['n_elements']:,} weights, {s['bits_per_weight']:.4f} bits per weight", file=out)
        for i, sh in enumerate(info.get("shards", ())):
            print(f"shard {i + 1} of {len(info['shards'])}: {_show(sh['path'], 200)}, {_mib(sh['file_size'])}, "
                  f"{sh['n_tensors']} tensors", file=out)
        print("\nmetadata:", file=out)
        kw = max([len(k) for k in info["metadata"]] + [3])
        tw = max([len(t) for t in info["metadata_types"].values()] + [4])
        for k, v in info["metadata"].items():
            if isinstance(v, dict):
                v = f"[{v['length']} elements] " + ", ".join(_show(x, 24) for x in v["head"]) + ", ..."
            elif info["metadata_types"][k] == "FLOAT32" and isinstance(v, float):
                v = str(np.float32(v))  # the shortest text that reads back as the stored float32
            print(f"  {_show(k, 200):{kw}s} {info['metadata_types'][k]:{tw}s} {_show(v)}", file=out)
        cols = ("type", "type")
    else:
        nf = len(info["files"])
        print(f"{_show(info['path'], 200)}: safetensors, {nf} file{'s' if nf != 1 else ''}, {s['n_tensors']} tensors, "
              f"{_mib(s['tensor_bytes'])}, {s['n_elements']:,} weights", file=out)
        for f in info["files"]:
            md = f" metadata {_show(f['metadata'], 60)}" if f["metadata"] else ""
            print(f"  {_show(f['path'], 200)}: {_mib(f['bytes'])}, {f['n_tensors']} tensors{md}", file=out)
        cfg = info.get("config")
        if cfg:
            keys = ("architectures", "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "intermediate_size", "vocab_size", "torch_dtype")
            print("config: " + ", ".join(f"{k} {_show(cfg[k], 40)}" for k in keys if k in cfg), file=out)
            if isinstance(cfg.get("text_config"), dict):  # a multimodal config: its language model
                tc = cfg["text_config"]
                print("text_config: " + ", ".join(f"{k} {_show(tc[k], 40)}" for k in keys if k in tc), file=out)
        if info.get("config_error"):
            print(f"config: not readable ({_show(info['config_error'], 120)})", file=out)
        sf = info["source_format"]
        if sf["status"] == "refused":
            print(f"source format: {_show(sf['name'])}, refused: {_show(sf['error'], 300)}", file=out)
        elif sf["status"] == "dequantized":
            print(f"source format: {_show(sf['name'])}: {sf['n_dequantized']} tensors dequantized to float32 as "
                  f"llama.cpp's converter does, their scales consumed, {sf['n_dropped']} dropped, the rest passed through",
                  file=out)
        elif sf["status"] == "passed through":
            print(f"source format: {_show(sf['name'])}: {sf['n_raw']} tensors (codes and scales) repacked into ggml's "
                  f"{_show(sf['name']).upper()} blocks as llama.cpp's converter does, kept as they are", file=out)
        else:
            print("source format: float tensors, read as they are", file=out)
        if sf.get("ternary"):
            print(f"BitNet: {sf['ternary']} attention / FFN matrices made ternary (weight_quant) as llama.cpp's converter does",
                  file=out)
        cols = ("dtype", "dtype")
    print("\ntensors:", file=out)
    nw = max([len(t["name"]) for t in info["tensors"]] + [6])
    shapes = ["x".join(str(d) for d in t["shape"]) or "scalar" for t in info["tensors"]]
    sw = max([len(x) for x in shapes] + [5])
    print(f"  {'name':{nw}s} {'shape':>{sw}s} {cols[0]:>6s} {'bytes':>12s} {'bpw':>7s}", file=out)
    for t, shp in zip(info["tensors"], shapes):
        act = f"  {_show(t['action'], 200)}" if t.get("action", "passed through") != "passed through" else ""
        print(f"  {_show(t['name'], 200):{nw}s} {shp:>{sw}s} {t[cols[1]]:>6s} {t['bytes']:>12d} {t['bits_per_weight']:7.3f}{act}",
              file=out)
    groups = s.get("types") or s.get("dtypes") or {}
    parts = [f"{k} {v['count']} ({_mib(v['bytes'])})" for k, v in groups.items()]
    print(f"\n{s['n_tensors']} tensors, {_mib(s['tensor_bytes'])}, {s['bits_per_weight']:.4f} bits per weight: "
          + ", ".join(parts), file=out)


# ====================================================================== --hf-names
def _head_count(gf, key: str, default=None) -> int:
    v = gf.value(key, default)
    if isinstance(v, list) and v and all(isinstance(x, int) and not isinstance(x, bool) for x in v) and len(set(v)) == 1:
        v = v[0]  # per-layer array with one value
    if isinstance(v, list):
        raise UnsupportedError(f"{_p(gf.path)}: key {key!r} varies by layer; --hf-names cannot undo the Q/K permutation")
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise InputError(f"{_p(gf.path)}: key {key!r} is {v!r}, expected a positive integer")
    return v


def hf_name_map(gf) -> tuple[dict[str, tuple[str | list[str], np.ndarray | None, tuple | None]], list[str],
                             dict[str, tuple[list[str], list, tuple[int, ...], list]]]:
    """GGUF name -> (HF name, or one per expert for stacked experts; HF-row -> GGUF-row gather or None;
    the HF shape where it differs from the GGUF one, else None), the GGUF tensors with no HF name,
    and the HF tensors rebuilt from GGUF parts ({HF name: ([GGUF names, in part order], [their HFJoin], HF shape,
    [each part's HF-row -> GGUF-row gather within one slice, or None])}).

    The family of the file's architecture gives the names and, for llama, the Q/K rows back in
    HF order (conversion/llama.py LlamaModel.permute, inverted) from the file's head counts.
    A joined tensor (TextModel.hf_joins, models.base.HFJoin) is the inverse of a split, transpose or
    unstacking: Llama 4's and gpt-oss's stacked experts, DeepSeek's kv_b_proj, GPT-2's Conv1D weights.
    """
    from . import models  # imported here: validate imports numba, which `kquant inspect` does not need
    from .validate import layer_and_kind

    arch = gf.value("general.architecture")
    fam = models.inverse_family(arch) if isinstance(arch, str) else None
    if fam is None:
        why = models.inverse_refusal(arch) if isinstance(arch, str) else None
        if why:
            raise UnsupportedError(f"{_p(gf.path)}: --hf-names is not offered for {arch!r}: {why}")
        raise UnsupportedError(
            f"{_p(gf.path)}: --hf-names supports architectures {', '.join(models.inverse_architectures())}; this file is {arch!r}")
    try:
        fam = fam.inverse_for_file(gf.value)
    except InputError as e:
        raise InputError(f"{_p(gf.path)}: {e}") from None
    n_head = n_kv = None
    if fam.undo_permute:
        n_head = _head_count(gf, f"{arch}.attention.head_count")
        n_kv = _head_count(gf, f"{arch}.attention.head_count_kv", n_head)
    kinds = frozenset(layer_and_kind(t.name)[1] for t in gf.tensors)
    out: dict[str, tuple[str | list[str], np.ndarray | None, tuple | None]] = {}
    skipped: list[str] = []
    joins: dict[str, dict[int, tuple[str, object]]] = {}  # HF name -> {part: (GGUF name, HFJoin)}
    for ti in gf.tensors:
        name = ti.name
        if name in GENERATED_TENSORS:
            skipped.append(name)
            continue
        bid, kind = layer_and_kind(name)
        is_bias = kind.endswith(".bias") or (bid is None and name.endswith(".bias"))
        base = kind[: -len(".bias")] if kind.endswith(".bias") else kind
        join = fam.hf_joins.get(base + (".bias" if is_bias else "")) if bid is not None else None
        if join is not None:
            if len(ti.shape) not in (2, 3):
                raise InputError(f"{_p(gf.path)}: tensor {name!r} has shape {list(ti.shape)}, expected 2 or 3 dimensions")
            hf = f"{fam.layer_prefix}{bid}.{join.module}"
            per = int(ti.shape[1]) if len(ti.shape) == 3 else int(ti.shape[0])  # rows of one slice
            gather = fam.hf_row_order(base, per, n_head, n_kv) if n_head is not None else None  # Q/K rows permuted
            joins.setdefault(hf, {})[join.part] = (name, join, gather)
            out[name] = (hf, None, None)
            continue
        if bid is None:
            base = name.rsplit(".", 1)[0]
            hf = fam.hf_tensor_name(None, base, is_bias) if name.endswith((".weight", ".bias")) else None
        elif not is_bias and len(ti.shape) == 3 and (hf := fam.hf_expert_names(bid, base, int(ti.shape[0]))) is not None:
            out[name] = (hf, None, None)  # stacked experts: one HF tensor per expert (Experts.source)
            continue
        else:
            hf = fam.hf_tensor_name(bid, base, is_bias, kinds) if name.endswith((".weight", ".bias")) \
                or base in fam.inverse_bare else None
        if hf is None:
            raise UnsupportedError(f"{_p(gf.path)}: --hf-names: tensor {name!r} has no Hugging Face name for {arch}")
        gather = None
        if n_head is not None and bid is not None:
            gather = fam.hf_row_order(base, int(ti.shape[0]), n_head, n_kv)
        shape = tuple(int(d) for d in ti.shape)
        hf_shape = fam.hf_tensor_shape(base, is_bias, shape) if bid is not None else shape
        out[name] = (hf, gather, hf_shape if hf_shape != shape else None)
    joined: dict[str, tuple[list[str], list, tuple[int, ...], list]] = {}
    by_name = {t.name: t for t in gf.tensors}
    for hf, parts in joins.items():
        need = next(iter(parts.values()))[1].parts
        if sorted(parts) != list(range(need)):
            raise InputError(f"{_p(gf.path)}: --hf-names: {hf} needs {need} tensors, the file has "
                             f"{sorted(p[0] for p in parts.values())}")
        names, js, gathers = ([parts[i][k] for i in range(need)] for k in range(3))
        joined[hf] = (names, js, _joined_shape(gf, hf, [by_name[n] for n in names], js), gathers)
    return out, skipped, joined


def _joined_shape(gf, hf: str, parts: list, joins: list) -> tuple[int, ...]:
    """The HF shape of a joined tensor (models.base.HFJoin) from its GGUF parts; InputError when they do not fit."""
    dims = {len(t.shape) for t in parts}
    slices = {int(t.shape[0]) if len(t.shape) == 3 else 1 for t in parts}
    shapes = [tuple(int(d) for d in t.shape[-2:]) for t in parts]
    shapes = [s[::-1] if j.transpose else s for s, j in zip(shapes, joins)]  # each slice as it goes in
    j = joins[0]
    keep = 1 - j.axis  # the axis the parts must agree on
    if len(dims) != 1 or len(slices) != 1 or len({s[keep] for s in shapes}) != 1 or (
            j.interleave and len({s[j.axis] for s in shapes}) != 1):
        raise InputError(f"{_p(gf.path)}: --hf-names: {', '.join(t.name for t in parts)} do not fit together into {hf}")
    n = slices.pop()
    rows = sum(s[0] for s in shapes) if j.axis == 0 else shapes[0][0]
    cols = sum(s[1] for s in shapes) if j.axis == 1 else shapes[0][1]
    return (n * rows, cols) if j.flat or dims.pop() == 2 else (n, rows, cols)


def _joined_slices(readers: list, joins: list, gathers: list, n: int):
    """Slice by slice (one expert, one head, or the whole matrix) the rows of a joined HF tensor; a part's
    rows back in HF order first where the conversion permuted them (`gathers`: HF row -> GGUF row, or None)."""
    for x in range(n):
        pieces = []
        for rd, j, g in zip(readers, joins, gathers):
            per = rd.rows // n
            a = rd.read(x * per, (x + 1) * per)
            a = a if g is None else a[g]
            pieces.append(a.T if j.transpose else a)
        j = joins[0]
        if j.interleave:
            y = np.empty(pieces[0].shape[:1] + (pieces[0].shape[1] * len(pieces),), dtype=np.float32)
            for k, p in enumerate(pieces):
                y[:, k::len(pieces)] = p
        else:
            y = np.concatenate(pieces, axis=j.axis)
        yield y


# ====================================================================== dequantize
def _encode_rows(x: np.ndarray, dtype: str, name: str) -> np.ndarray:
    """float32 rows -> little-endian output values (F32 / F16 / BF16, round to nearest even)."""
    if dtype == "F32":
        return np.ascontiguousarray(x, dtype="<f4")
    if dtype == "F16":
        with np.errstate(over="ignore"):
            h = x.astype("<f2")
        bad = int(np.count_nonzero(np.isinf(h) & np.isfinite(x)))
        if bad:
            raise InputError(f"tensor {name}: {bad} value(s) beyond the F16 range (+-{F16_MAX:g}); use --dtype F32 or BF16")
        return h
    from .io.safetensors import fp32_to_bf16_bits

    return fp32_to_bf16_bits(x).astype("<u2")


def dequantize_file(path, out, *, dtype: str = "F32", hf_names: bool = False, force: bool = False,
                    progress=None) -> dict:
    """Dequantize every tensor of a GGUF file into a safetensors file, one slab at a time.

    Names are the GGUF ones, or the Hugging Face ones with `hf_names` (Q/K rows back in HF
    order; generated tensors such as rope_freqs dropped). `progress(i, n, name, type, seconds)`.
    """
    from .io.fsutil import atomic_output, check_not_input, handle_termination
    from .io.gguf_split import open_gguf
    from .io.safetensors import SafetensorsStreamWriter
    from .validate import TensorRows, type_name

    dtype = str(dtype).upper()
    if dtype not in OUT_DTYPES:
        raise InputError(f"--dtype {dtype}: must be one of {', '.join(OUT_DTYPES)}")
    t0 = time.perf_counter()
    with open_gguf(path) as gf:
        check_not_input(out, getattr(gf, "shard_paths", [path]))
        if hf_names:
            names, skipped, joined = hf_name_map(gf)
        else:
            names, skipped, joined = {t.name: (t.name, None, None) for t in gf.tensors}, [], {}
        todo = [t for t in gf.tensors if t.name in names]
        readers = {}
        for ti in todo:  # fail on an unsupported type before writing anything
            readers[ti.name] = TensorRows(gf, ti)
        part_of = {n: hf for hf, (parts, *_) in joined.items() for n in parts}
        todo = [t for t in todo if t.name not in part_of or joined[part_of[t.name]][0][0] == t.name]  # a join once
        entries = []
        for t in todo:
            (hf, _, hf_shape), shape = names[t.name], tuple(int(d) for d in t.shape)
            if t.name in part_of:
                shape = joined[part_of[t.name]][2]
            entries += [(h, dtype, shape[1:]) for h in hf] if isinstance(hf, list) else [(hf, dtype, hf_shape or shape)]
        with handle_termination(), atomic_output(out, force=force) as f:
            w = SafetensorsStreamWriter(f, entries, SAFETENSORS_METADATA)
            for i, ti in enumerate(todo):
                ts = time.perf_counter()
                rd = readers[ti.name]
                hf, gather, _ = names[ti.name]
                if ti.name in part_of:  # one slice (expert, head) at a time
                    parts, js, _, gathers = joined[part_of[ti.name]]
                    n = int(ti.shape[0]) if len(ti.shape) == 3 else 1
                    for y in _joined_slices([readers[p] for p in parts], js, gathers, n):
                        w.write(_encode_rows(y, dtype, ti.name))
                elif isinstance(hf, list):  # stacked experts: expert x is rows [x * r, (x + 1) * r)
                    r, step = rd.rows // len(hf), max(1, SLAB_BYTES // max(rd.cols * 4, 1))
                    for x in range(len(hf)):
                        for a in range(x * r, (x + 1) * r, step):
                            w.write(_encode_rows(rd.read(a, min(a + step, (x + 1) * r)), dtype, ti.name))
                elif gather is not None and len(ti.shape) == 1:  # a permuted bias: elements are the rows
                    w.write(_encode_rows(rd.read(0, 1).reshape(-1)[gather], dtype, ti.name))
                elif gather is not None:
                    step = max(1, SLAB_BYTES // max(rd.cols * 4, 1))
                    for a in range(0, rd.rows, step):
                        w.write(_encode_rows(rd.take(gather[a : a + step]), dtype, ti.name))
                else:
                    for _, rows in rd.slabs(SLAB_BYTES):
                        w.write(_encode_rows(rows, dtype, ti.name))
                if progress:
                    progress(i + 1, len(todo), hf if isinstance(hf, str) else ti.name, type_name(ti.qtype),
                             time.perf_counter() - ts)
            if w.written != sum(w.sizes):
                raise OutputError(f"{_p(out)}: wrote {w.written} data bytes, expected {sum(w.sizes)}")
    return {"input": os.fspath(path), "output": os.fspath(out), "dtype": dtype, "n_tensors": len(todo),
            "hf_names": bool(hf_names), "skipped": skipped, "bytes": w.total,
            "seconds": round(time.perf_counter() - t0, 3)}
