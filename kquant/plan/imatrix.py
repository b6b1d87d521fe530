"""Importance matrices (`--imatrix`) read exactly as llama-quantize reads them.

Ports, from llama.cpp as vendored in llama-cpp-python 0.3.36:
  common/imatrix-loader.cpp common_imatrix_load (GGUF: `<tensor>.in_sum2` / `<tensor>.counts` F32
  tensors, `imatrix.datasets` / `imatrix.chunk_count` / `imatrix.chunk_size` keys) and
  common_imatrix_load_legacy (the .dat format); tools/quantize/quantize.cpp load_imatrix (the
  normalisation: GGUF sums / count per expert, 1 where the count is 0; legacy sums / ncall),
  prepare_imatrix (--include-weights / --exclude-weights) and the quantize.imatrix.* kv_overrides of
  llama_quantize (L500-540, written by src/llama-quant.cpp as UINT32 / STRING after general.file_type);
  the non-finite check and the per-tensor lookup (size check ne[0] * ne[2], token_embd exemption,
  "Missing importance matrix" for types that require one) of src/llama-quant.cpp llama_model_quantize_impl.

Where llama.cpp reads garbage, crashes or quietly ruins the quantization, this module raises
InputError instead: every length and count is checked against the file; truncated or trailing
data, duplicate legacy entries, counts that are negative, non-finite or do not divide the sums,
non-string datasets and an all-zero importance vector (which makes ggml's weighted quantizers emit
zero scales) are errors here. Files llama-quantize reads normally give the same numbers, bit for bit.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from gguf import GGUFValueType

from ..errors import InputError
from ..types import FileType, parse_qtype
from .recipe import requires_imatrix

GGUF_MAGIC = b"GGUF"

# common/imatrix-loader.h
KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"
SUMS_SUFFIX = ".in_sum2"
COUNTS_SUFFIX = ".counts"

# tools/quantize/quantize.cpp LLM_KV_QUANTIZE_IMATRIX_*
KV_FILE = "quantize.imatrix.file"
KV_DATASET = "quantize.imatrix.dataset"
KV_N_ENTRIES = "quantize.imatrix.entries_count"
KV_N_CHUNKS = "quantize.imatrix.chunks_count"
KV_STR_MAX = 127  # llama_model_kv_override.val_str is char[128]: strncpy(.., 127)

MAX_COUNT = float(1 << 63)  # std::lround of a float is undefined from here on
LEGACY_MIN_ENTRY_BYTES = 4 + 4 + 4 + 4  # name length, ncall, nval, one float
I32 = struct.Struct("<i")


@dataclass
class ImatrixData:
    """Importance weights per GGUF tensor name, normalised as llama-quantize normalises them."""

    weights: dict[str, np.ndarray]  # name -> float32 (n_per_row * n_expert), expert-major
    datasets: list[str]
    chunk_count: int  # llama-quantize's m_last_call (int32; <= 0: not written to the output)
    path: str  # the file name as given: it is written to quantize.imatrix.file
    legacy: bool = False
    chunk_size: int = 0
    n_loaded: int = 0  # entries in the file, before --include-weights / --exclude-weights

    # tools/quantize/quantize.cpp llama_quantize: the kv_overrides for quantize.imatrix.*
    def kv(self) -> list[tuple[str, GGUFValueType, object]]:
        """The quantize.imatrix.* keys llama-quantize appends after general.file_type (none without weights)."""
        if not self.weights:
            return []
        out = [(KV_FILE, GGUFValueType.STRING, _c_str(os.fsencode(self.path)))]
        if self.datasets:  # only the first one (a TODO upstream)
            out.append((KV_DATASET, GGUFValueType.STRING, _c_str(self.datasets[0].encode("utf-8", "surrogateescape"))))
        # LLAMA_KV_OVERRIDE_TYPE_INT is written as gguf_set_val_u32((uint32_t) std::abs(val_i64))
        out.append((KV_N_ENTRIES, GGUFValueType.UINT32, len(self.weights)))
        if self.chunk_count > 0:
            out.append((KV_N_CHUNKS, GGUFValueType.UINT32, self.chunk_count))
        return out


TOKEN_EMBD_NAMES = ("token_embd.weight", "per_layer_token_embd.weight")  # llama-quant.cpp tensor_name_match_token_embd


# src/llama-quant.cpp llama_model_quantize_impl: the per-tensor imatrix lookup (main loop, `quantize` branch)
def weights_for(weights: dict[str, np.ndarray], name: str, shape, src_type, new_type, ftype) -> np.ndarray | None:
    """The (n_expert, n_per_row) importance rows llama-quantize gives a tensor, or None; raises where it throws.

    shape is numpy order (ne[2], ne[1], ne[0]); src_type the tensor's type in the input GGUF.
    """
    if src_type == new_type:  # `quantize = cur_type != new_type`: copied, never looked up
        return None
    n_per_row = int(shape[-1])
    n_expert = int(shape[-3]) if len(shape) >= 3 else 1  # ne[2]
    w = weights.get(name)  # (remap_imatrix only renames with --prune-layers)
    if w is not None and w.size != n_per_row * n_expert:
        if name not in TOKEN_EMBD_NAMES:  # "tok_embd should be ignored in this case": no error for these
            raise InputError(
                f"imatrix size {w.size} is different from tensor size {n_per_row * n_expert} for {name} "
                f"(llama-quantize stops here too)"
            )
        w = None
    if w is None and requires_imatrix(name, parse_qtype(new_type), FileType(ftype)):
        raise InputError(f"Missing importance matrix for tensor {name} in a very low-bit quantization ({new_type.name})")
    return None if w is None else np.asarray(w, dtype=np.float32).reshape(n_expert, n_per_row)


def _c_str(b: bytes) -> str:
    """strncpy(val_str, s, 127); val_str[127] = 0 -> the string as Python str (bytes kept via surrogateescape)."""
    return b.split(b"\0", 1)[0][:KV_STR_MAX].decode("utf-8", "surrogateescape")


@dataclass
class _Loaded:
    """common_imatrix: raw sums and integer counts per entry."""

    entries: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (float32 sums, int64 counts)
    datasets: list[str]
    chunk_count: int
    chunk_size: int
    legacy: bool


def load_imatrix(path, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> ImatrixData:
    """Read a GGUF or legacy .dat importance matrix and apply --include-weights / --exclude-weights."""
    include, exclude = list(include), list(exclude)
    if include and exclude:
        # llama_quantize: usage() ("--include-weights and --exclude-weights cannot be used together")
        raise InputError("--include-weights and --exclude-weights cannot be used together")
    fname = os.fspath(path)
    where = f"imatrix {fname!r}"
    try:
        with open(fname, "rb") as f:
            head = f.read(len(GGUF_MAGIC))
    except OSError as e:
        raise InputError(f"{where}: cannot open ({e.strerror or e})") from None
    loaded = _load_gguf(fname, where) if head == GGUF_MAGIC else _load_legacy(fname, where)
    weights = _normalise(loaded)
    n_loaded = len(weights)
    weights = _select(weights, include, exclude)
    _check_values(weights, loaded, where)
    return ImatrixData(
        weights=weights,
        datasets=loaded.datasets,
        chunk_count=loaded.chunk_count,
        path=fname,
        legacy=loaded.legacy,
        chunk_size=loaded.chunk_size,
        n_loaded=n_loaded,
    )


# common/imatrix-loader.cpp common_imatrix_load (GGUF part)
def _load_gguf(fname: str, where: str) -> _Loaded:
    from ..io.gguf import GGUFFile

    with GGUFFile(fname) as g:
        if len(g.tensors) < 1:
            raise InputError(f"{where}: no data in file (no tensors)")
        # gguf_init_from_file (no_alloc = false) reads the whole padded data section, last padding included
        blob_end = g.data_offset + sum(-(-t.nbytes // g.alignment) * g.alignment for t in g.tensors)
        if g.file_size < blob_end:
            raise InputError(
                f"{where}: tensor data ends {blob_end - g.file_size} byte(s) short of its padded size "
                f"({blob_end} bytes; ggml: 'failed to read tensor data binary blob')"
            )
        md = g.metadata
        missing = [k for k in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE) if k not in md]
        if missing:
            # quantize.cpp load_imatrix: "missing imatrix metadata in file %s"
            raise InputError(f"{where}: missing imatrix metadata in file (no key {', '.join(missing)})")
        vt, ds = md[KEY_DATASETS]
        if vt != GGUFValueType.ARRAY or getattr(ds, "sub_type", None) != GGUFValueType.STRING:
            raise InputError(f"{where}: key {KEY_DATASETS} must be an array of strings, it is {_type_name(vt, ds)}")
        # gguf_get_arr_str -> const char *: a string ends at its first NUL
        datasets = [s.split("\0", 1)[0] for s in ds]
        counts_meta = []
        for key in (KEY_CHUNK_COUNT, KEY_CHUNK_SIZE):
            vt, v = md[key]
            if vt != GGUFValueType.UINT32:  # gguf_get_val_u32 aborts on any other type
                raise InputError(f"{where}: key {key} must be UINT32, it is {_type_name(vt, v)}")
            counts_meta.append(v - (1 << 32) if v >= 1 << 31 else v)  # stored in an int32_t
        chunk_count, chunk_size = counts_meta

        pairs: dict[str, list] = {}
        for t in g.tensors:
            name = t.name
            if not name:
                continue
            if name.endswith(SUMS_SUFFIX):
                pairs.setdefault(name[: -len(SUMS_SUFFIX)], [None, None])[0] = t
            elif name.endswith(COUNTS_SUFFIX):
                pairs.setdefault(name[: -len(COUNTS_SUFFIX)], [None, None])[1] = t
        entries: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name in sorted(pairs, key=lambda s: s.encode("utf-8")):  # std::map order
            ts, tc = pairs[name]
            if ts is None or tc is None:
                have, lack = (SUMS_SUFFIX, COUNTS_SUFFIX) if tc is None else (COUNTS_SUFFIX, SUMS_SUFFIX)
                raise InputError(f"{where}: mismatched sums and counts for {name!r} (has its {have}, no {lack})")
            for t in (ts, tc):
                if int(t.qtype) != 0:
                    raise InputError(f"{where}: sums and counts for {name!r} must be F32, {t.name} is {t.qtype.name}")
            sums = np.array(g.data(ts.name).view("<f4"), dtype=np.float32)
            raw_counts = np.array(g.data(tc.name).view("<f4"), dtype=np.float32)
            entries[name] = (sums, _gguf_counts(raw_counts, sums.size, name, where))
        if not entries:
            raise InputError(f"{where}: no importance matrix entries (no *{SUMS_SUFFIX} / *{COUNTS_SUFFIX} tensor pairs)")
    return _Loaded(entries, datasets, chunk_count, chunk_size, legacy=False)


def _type_name(vt, v) -> str:
    sub = getattr(v, "sub_type", None)
    return f"ARRAY of {GGUFValueType(sub).name}" if sub is not None else GGUFValueType(vt).name


def _gguf_counts(c: np.ndarray, n_sums: int, name: str, where: str) -> np.ndarray:
    """std::lround of each F32 count, after checking what llama.cpp does not."""
    if c.size < 1:
        raise InputError(f"{where}: {name}{COUNTS_SUFFIX} has no elements")  # llama.cpp divides by zero
    if n_sums < 1:
        raise InputError(f"{where}: {name}{SUMS_SUFFIX} has no elements")
    if n_sums % c.size:
        raise InputError(
            f"{where}: {name}{SUMS_SUFFIX} has {n_sums} values, not a multiple of its {c.size} count(s)"
        )
    bad = ~np.isfinite(c) | (c < 0) | (c >= MAX_COUNT)
    if bad.any():
        j = int(np.argmax(bad))
        raise InputError(f"{where}: {name}{COUNTS_SUFFIX}[{j}] is {float(c[j])!r}, not a count (>= 0, finite)")
    # lround: half away from zero; exact in float64 for a float32 below 2^63
    return np.floor(c.astype(np.float64) + 0.5).astype(np.int64)


# common/imatrix-loader.cpp common_imatrix_load_legacy
def _load_legacy(fname: str, where: str) -> _Loaded:
    try:
        with open(fname, "rb") as f:
            buf = f.read()
    except OSError as e:
        raise InputError(f"{where}: cannot read ({e.strerror or e})") from None
    end = len(buf)
    pos = 0

    def i32(what: str) -> int:
        nonlocal pos
        if end - pos < 4:
            raise InputError(f"{where}: legacy imatrix truncated: {what} needs 4 bytes at offset {pos}, {end - pos} left")
        v = I32.unpack_from(buf, pos)[0]
        pos += 4
        return v

    def take(n: int, what: str) -> bytes:
        nonlocal pos
        if n > end - pos:
            raise InputError(f"{where}: legacy imatrix truncated: {what} needs {n} bytes at offset {pos}, {end - pos} left")
        b = buf[pos : pos + n]
        pos += n
        return b

    if end < 4:
        raise InputError(f"{where}: no data in file ({end} bytes; neither GGUF nor a legacy imatrix)")
    n_entries = i32("entry count")
    if n_entries < 1:
        raise InputError(f"{where}: no data in file (legacy entry count {n_entries})")
    if n_entries * LEGACY_MIN_ENTRY_BYTES > end - pos:
        raise InputError(
            f"{where}: legacy entry count {n_entries} needs at least {n_entries * LEGACY_MIN_ENTRY_BYTES} bytes, "
            f"the file has {end - pos} left (not an imatrix file?)"
        )
    entries: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for i in range(n_entries):
        n = i32(f"entry {i + 1} name length")
        if n < 0:
            raise InputError(f"{where}: entry {i + 1} name length is {n}")
        # std::string{name_as_vec.data()}: the name ends at its first NUL
        name = take(n, f"entry {i + 1} name").split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        ncall = i32(f"entry {name!r} ncall")
        nval = i32(f"entry {name!r} value count")
        if nval < 1:
            raise InputError(f"{where}: entry {name!r} has {nval} values (failed reading number of values)")
        sums = np.frombuffer(take(4 * nval, f"entry {name!r} {nval} values"), dtype="<f4").astype(np.float32)
        if name in entries:
            raise InputError(f"{where}: entry {name!r} appears twice (llama.cpp would keep the last one)")
        entries[name] = (sums, np.array([ncall], dtype=np.int64))

    # the trailing data (chunk count + dataset name) is optional
    chunk_count = 0
    datasets: list[str] = []
    if pos < end:
        chunk_count = i32("trailing chunk count")
        if pos < end:
            n = i32("trailing dataset name length")
            if n < 0:
                raise InputError(f"{where}: trailing dataset name length is {n}")
            ds = take(n, "trailing dataset name")
            if n > 0:
                datasets.append(ds.split(b"\0", 1)[0].decode("utf-8", "surrogateescape"))
        if pos < end:
            raise InputError(f"{where}: {end - pos} unexpected bytes after the legacy imatrix data (offset {pos})")
    return _Loaded(entries, datasets, chunk_count, 0, legacy=True)


# tools/quantize/quantize.cpp load_imatrix (normalisation)
def _normalise(loaded: _Loaded) -> dict[str, np.ndarray]:
    """name -> float32 weights: GGUF sums[j] / (float)count[j] (1 where count <= 0); legacy sums / (float)ncall."""
    out: dict[str, np.ndarray] = {}
    for name, (sums, counts) in loaded.entries.items():
        if not loaded.legacy:
            ne0 = sums.size // counts.size
            s = sums.reshape(counts.size, ne0)
            e = np.ones_like(s)
            cf = counts.astype(np.float32)  # (float) entry.counts[j]
            live = cf > np.float32(0)
            e[live] = s[live] / cf[live, None]
            out[name] = e.reshape(-1)
        else:
            ncall = int(counts[0])
            out[name] = sums / np.float32(ncall) if ncall > 0 else sums.copy()
    return out


# tools/quantize/quantize.cpp prepare_imatrix
def _select(weights: dict[str, np.ndarray], include: list[str], exclude: list[str]) -> dict[str, np.ndarray]:
    """--exclude-weights drops entries whose name contains a pattern; --include-weights keeps only those that do."""
    if exclude:
        weights = {k: v for k, v in weights.items() if not any(p in k for p in exclude)}
    if include:
        weights = {k: v for k, v in weights.items() if any(p in k for p in include)}
    return weights


def _check_values(weights: dict[str, np.ndarray], loaded: _Loaded, where: str) -> None:
    """llama-quant.cpp's non-finite check (naming the entry), plus: no all-zero importance vector."""
    for name, w in weights.items():
        bad = int(np.count_nonzero(~np.isfinite(w)))
        if bad:
            # src/llama-quant.cpp: "imatrix contains non-finite value %f"
            raise InputError(
                f"{where}: entry {name!r} has {bad} non-finite importance value(s) "
                f"(llama-quantize: 'imatrix contains non-finite value'); exclude it with --exclude-weights {name}"
            )
        counts = loaded.entries[name][1]
        n_slices = 1 if loaded.legacy else counts.size
        for j, s in enumerate(w.reshape(n_slices, -1)):
            if not s.any():
                part = f" expert {j}" if n_slices > 1 else ""
                raise InputError(
                    f"{where}: entry {name!r}{part}: every importance value is zero (count {int(counts[j])}); "
                    f"llama-quantize would take it and ggml's weighted quantizers emit zero scales (an all-zero tensor); "
                    f"exclude it with --exclude-weights {name}"
                )
