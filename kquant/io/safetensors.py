"""Strict safetensors reader (pread, one tensor or a few rows at a time) and a small writer.

The header checks port huggingface/safetensors `SafeTensors::read_metadata` and
`Metadata::validate` (safetensors/src/tensor.rs) and add the ones a hostile file needs: every
JSON type, duplicate names, NaN literals, overflow, holes, overlaps and trailing bytes. No torch,
no pickle: `*.bin`/`*.pt` checkpoints are refused, never unpickled.

Folder rules (`Checkpoint.open`), modelled on llama.cpp's convert_hf_to_gguf.py
(conversion/base.py `ModelBase.index_tensors`) but stricter:
  * `model.safetensors.index.json` present: it is authoritative, as in convert_hf_to_gguf.py;
    its shards must be safe relative paths inside the folder, must exist, and must hold exactly
    the tensors the index assigns to them. Other `*.safetensors` files are ignored.
  * weight files must not resolve (through symlinks) outside the folder, except into the
    `blobs/` folder of a Hugging Face cache snapshot (`models--*/snapshots/<rev>/`).
  * no index: the `model*.safetensors` files are used. One file is read as is; several are
    accepted only as a complete `model-NNNNN-of-MMMMM.safetensors` set (convert_hf_to_gguf.py
    would merge any `model*` files, which silently mixes leftovers); a name in two files is an
    error.
  * no `model*.safetensors`: `consolidated*.safetensors` (Mistral format) is unsupported,
    `*.bin`/`*.pt`/`*.pth`/`*.ckpt` pickles are refused, anything else is "no weights".
`Checkpoint.tensors` lists tensors in convert_hf_to_gguf.py's order: shard files sorted by
name, and within each shard tensors sorted by name (gguf-py `SafetensorsLocal`).

Data is read with pread into fresh arrays, not through a mapping: a file truncated by another
process while it is read would turn an access to a mapping into SIGBUS; a read instead comes up
short, and the file's size and mtime are compared with those at opening after every read, so
any change is the one-line error "PATH changed while reading".
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import jsonio
from ..errors import InputError, UnsupportedError
from .fsutil import file_stamp, open_regular, pread_array

HEADER_LEN_BYTES = 8  # u64 little-endian header length prefix
MAX_HEADER_SIZE = 100_000_000  # safetensors/src/tensor.rs MAX_HEADER_SIZE
MAX_INDEX_SIZE = 100_000_000  # a model.safetensors.index.json larger than this is not an index
HEADER_PAD = 8  # the safetensors writer pads the JSON header with spaces to a multiple of 8
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
SHARD_RE = re.compile(r"^model-(\d+)-of-(\d+)\.safetensors$")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
MAX_NDIM = 64  # no real checkpoint comes near; bounds the work a hostile shape list can cause
TENSOR_KEYS = frozenset(("dtype", "shape", "data_offsets"))
METADATA_KEY = "__metadata__"

# safetensors `Dtype` -> bits per element (safetensors/src/tensor.rs `Dtype::bitsize`).
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}
FLOAT_DTYPES = ("F32", "F16", "BF16")  # the dtypes read() widens to float32
# numpy dtypes the writer accepts as raw data for the other safetensors dtypes (test fixtures).
RAW_NUMPY: dict[str, str] = {
    "BOOL": "|b1",
    "U8": "|u1",
    "I8": "|i1",
    "F8_E5M2": "|u1",
    "F8_E4M3": "|u1",
    "F8_E8M0": "|u1",
    "I16": "<i2",
    "U16": "<u2",
    "I32": "<i4",
    "U32": "<u4",
    "C64": "<c8",
    "F64": "<f8",
    "I64": "<i8",
    "U64": "<u8",
}


def _s(value, limit: int = 80) -> str:
    """repr() of a value for a one-line message, shortened."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _p(path) -> str:
    """A path for a one-line message (control characters escaped)."""
    s = os.fspath(path)
    s = s if isinstance(s, str) else os.fsdecode(s)
    return s if s.isprintable() else repr(s)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _strict_json(text: str, where: str):
    """Parse JSON refusing NaN/Infinity, duplicate keys and pathological nesting (kquant.jsonio)."""
    return jsonio.loads(text, where)


def _pread_exact(fd: int, n: int, offset: int, where: str) -> bytes:
    """Read exactly n bytes at offset (pread loop)."""
    chunks = []
    got = 0
    while got < n:
        b = os.pread(fd, n - got, offset + got)
        if not b:
            raise InputError(f"{where}: file ended after {offset + got} bytes, expected {offset + n}")
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a safetensors file: dtype name, numpy-order shape, absolute byte range."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute in the file
    nbytes: int
    path: str

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class SafetensorsFile:
    """One .safetensors file, validated before anything in it is trusted; data is read with pread."""

    def __init__(self, path):
        self.path = os.fspath(path)
        where = _p(self.path)
        self._fd: int | None = None
        fd, st = open_regular(self.path, where)
        try:
            size = st.st_size
            self.file_size = size
            self._stamp = file_stamp(fd)
            self.metadata, self.tensors, self.header_len = self._parse_header(fd, size, where)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    # ---------------------------------------------------------------- header validation
    def _parse_header(self, fd: int, size: int, where: str):
        if size < HEADER_LEN_BYTES:
            raise InputError(f"{where}: file is {size} bytes, a safetensors file has at least {HEADER_LEN_BYTES}")
        n = int.from_bytes(_pread_exact(fd, HEADER_LEN_BYTES, 0, where), "little")
        if n > MAX_HEADER_SIZE:
            raise InputError(f"{where}: header length {n} exceeds the safetensors limit {MAX_HEADER_SIZE}")
        if HEADER_LEN_BYTES + n > size:
            raise InputError(f"{where}: header length {n} runs past the end of the {size}-byte file")
        raw = _pread_exact(fd, n, HEADER_LEN_BYTES, where)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{where}: header is not valid UTF-8 (byte {e.start})") from None
        header = _strict_json(text, f"{where}: header")
        if not isinstance(header, dict):
            raise InputError(f"{where}: header is a JSON {type(header).__name__}, expected an object")

        metadata: dict[str, str] | None = None
        if METADATA_KEY in header:
            md = header[METADATA_KEY]
            if not isinstance(md, dict):
                raise InputError(f"{where}: field '{METADATA_KEY}' is {_s(md)}, expected an object of strings")
            for k, v in md.items():
                if not isinstance(v, str):
                    raise InputError(f"{where}: field {METADATA_KEY}.{_s(k)} is {_s(v)}, expected a string")
            metadata = md

        data_start = HEADER_LEN_BYTES + n
        data_len = size - data_start
        entries = []
        for name, e in header.items():
            if name == METADATA_KEY:
                continue
            entries.append(self._check_entry(name, e, data_len, where))

        # Offsets sorted, contiguous from 0: no hole, no overlap (Metadata::validate).
        entries.sort(key=lambda t: (t[3], t[4]))
        pos = 0
        tensors: dict[str, TensorInfo] = {}
        for name, dtype, shape, begin, end in entries:
            if begin != pos:
                what = "overlaps the previous tensor" if begin < pos else f"leaves a hole after byte {pos}"
                raise InputError(f"{where}: tensor {_s(name)} field 'data_offsets' [{begin}, {end}] {what}")
            pos = end
            tensors[name] = TensorInfo(name, dtype, shape, data_start + begin, end - begin, self.path)
        if pos != data_len:
            if pos < data_len:
                raise InputError(
                    f"{where}: {data_len - pos} trailing bytes after the last tensor (data ends at {pos}, file has {data_len})"
                )
            raise InputError(f"{where}: tensor data ends at {pos}, past the {data_len} data bytes in the file")
        return metadata, tensors, n

    @staticmethod
    def _check_entry(name: str, e, data_len: int, where: str):
        tn = f"tensor {_s(name)}"
        if not isinstance(e, dict):
            raise InputError(f"{where}: {tn} entry is {_s(e)}, expected an object")
        keys = set(e)
        if keys != TENSOR_KEYS:
            missing = sorted(TENSOR_KEYS - keys)
            extra = sorted(keys - TENSOR_KEYS)
            what = f"missing field {_s(missing[0])}" if missing else f"unexpected field {_s(extra[0])}"
            raise InputError(f"{where}: {tn} {what} (expected exactly dtype, shape, data_offsets)")
        dtype = e["dtype"]
        if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
            raise InputError(f"{where}: {tn} field 'dtype' is {_s(dtype)}, not a safetensors dtype")
        shape = e["shape"]
        if not isinstance(shape, list):
            raise InputError(f"{where}: {tn} field 'shape' is {_s(shape)}, expected a list of integers")
        if len(shape) > MAX_NDIM:
            raise InputError(f"{where}: {tn} field 'shape' has {len(shape)} dimensions, more than {MAX_NDIM}")
        for i, d in enumerate(shape):
            if not _is_int(d) or d < 0:
                raise InputError(f"{where}: {tn} field 'shape[{i}]' is {_s(d)}, expected a non-negative integer")
        numel = 0 if 0 in shape else 1
        if numel:
            for d in shape:  # stop as soon as the product exceeds what the file can hold
                numel *= d
                if numel * DTYPE_BITS[dtype] > data_len * 8:
                    raise InputError(f"{where}: {tn} field 'shape' {_s(shape)} needs more bytes than the {data_len} in the file")
        offs = e["data_offsets"]
        if not isinstance(offs, list) or len(offs) != 2 or not all(_is_int(o) for o in offs):
            raise InputError(f"{where}: {tn} field 'data_offsets' is {_s(offs)}, expected [begin, end] integers")
        begin, end = offs
        if begin < 0 or end < begin:
            raise InputError(f"{where}: {tn} field 'data_offsets' is {_s(offs)}, expected 0 <= begin <= end")
        if end > data_len:
            raise InputError(f"{where}: {tn} field 'data_offsets' end {end} is past the {data_len} data bytes in the file")
        bits = numel * DTYPE_BITS[dtype]
        if bits % 8:
            raise InputError(f"{where}: {tn} field 'shape' {_s(shape)} of {dtype} is not a whole number of bytes")
        if end - begin != bits // 8:
            raise InputError(
                f"{where}: {tn} field 'data_offsets' spans {end - begin} bytes, shape {_s(shape)} of {dtype} needs {bits // 8}"
            )
        return name, dtype, tuple(shape), begin, end

    # ---------------------------------------------------------------- data access
    def _info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise InputError(f"{_p(self.path)}: no tensor named {_s(name)}") from None

    def _read_bytes(self, offset: int, nbytes: int) -> np.ndarray:
        """`nbytes` bytes at `offset` in a new array; InputError if the file changed meanwhile."""
        if self._fd is None:
            raise ValueError(f"{_p(self.path)}: file is closed")
        return pread_array(self._fd, offset, nbytes, self._stamp, self.path)

    def _float_dtype(self, info: TensorInfo) -> str:
        if info.dtype not in FLOAT_DTYPES:
            raise UnsupportedError(
                f"{_p(self.path)}: tensor {_s(info.name)} has dtype {info.dtype}; only F32, F16 and BF16 are read"
            )
        return info.dtype

    def read_raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as a uint8 array."""
        info = self._info(name)
        return self._read_bytes(info.offset, info.nbytes)

    def _decode(self, dtype: str, offset: int, count: int) -> np.ndarray:
        """float32 values of `count` elements at `offset` (1-D)."""
        if count == 0:
            return np.zeros(0, np.float32)
        raw = self._read_bytes(offset, count * (DTYPE_BITS[dtype] // 8))
        if dtype == "F32":
            return raw.view("<f4")
        if dtype == "F16":
            return raw.view("<f2").astype(np.float32)
        out = np.empty(count, np.float32)  # BF16: the top half of an f32, widened in one pass
        np.left_shift(raw.view("<u2"), 16, out=out.view(np.uint32), dtype=np.uint32)
        return out

    def read(self, name: str) -> np.ndarray:
        """Whole tensor as float32."""
        info = self._info(name)
        dtype = self._float_dtype(info)
        return self._decode(dtype, info.offset, info.numel).reshape(info.shape)

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows start:stop of the first axis as float32, reading only those bytes."""
        info = self._info(name)
        dtype = self._float_dtype(info)
        if not info.shape:
            raise ValueError(f"{_p(self.path)}: tensor {_s(name)} is a scalar, it has no rows")
        n_rows = info.shape[0]
        if not (_is_int(start) and _is_int(stop) and 0 <= start <= stop <= n_rows):
            raise ValueError(f"{_p(self.path)}: tensor {_s(name)} rows [{start}, {stop}) outside [0, {n_rows}]")
        row_elems = 1
        for d in info.shape[1:]:
            row_elems *= d
        item = DTYPE_BITS[dtype] // 8
        offset, count = info.offset + start * row_elems * item, (stop - start) * row_elems
        return self._decode(dtype, offset, count).reshape((stop - start, *info.shape[1:]))

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"SafetensorsFile({self.path!r}, {len(self.tensors)} tensors)"


# -------------------------------------------------------------------- checkpoint folders
def _weights_listing(folder: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(folder) if e.is_file())
    except OSError as e:
        raise InputError(f"{_p(folder)}: cannot list folder ({e.strerror or e})") from None


def _safe_shard(folder: Path, shard, index_path: Path) -> str:
    """Validate a shard name from the index; return it normalised (relative, '/'-separated)."""
    where = f"{_p(index_path)}: field 'weight_map' shard {_s(shard)}"
    if not isinstance(shard, str) or not shard:
        raise InputError(f"{where} is not a non-empty string")
    if "\x00" in shard or "\\" in shard:
        raise InputError(f"{where} contains a NUL or backslash")
    if os.path.isabs(shard):
        raise InputError(f"{where} is an absolute path")
    parts = [p for p in shard.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise InputError(f"{where} leaves the folder ('..')")
    rel = "/".join(parts)
    if not os.path.isfile(os.path.join(folder, rel)):
        raise InputError(f"{where} does not exist")
    _check_inside(folder, rel, where)
    return rel


def _allowed_roots(folder: Path) -> list[str]:
    """Where a weight file in `folder` may resolve to: the folder, and for a Hugging Face cache
    snapshot (models--*/snapshots/<rev>) the repository's blobs/ folder its symlinks point into."""
    roots = [os.path.realpath(folder)]
    real = Path(roots[0])
    if real.parent.name == "snapshots" and real.parent.parent.name.startswith("models--"):
        blobs = real.parent.parent / "blobs"
        if blobs.is_dir():
            roots.append(os.path.realpath(blobs))
    return roots


def _check_inside(folder: Path, rel: str, where: str) -> None:
    """InputError if folder/rel resolves (through symlinks) outside the allowed roots."""
    target = os.path.realpath(os.path.join(folder, rel))
    if not any(os.path.commonpath([r, target]) == r for r in _allowed_roots(folder)):
        raise InputError(f"{where} resolves outside the folder (symlink to {_p(target)})")


class Checkpoint:
    """The safetensors weights of a Hugging Face folder (or one file), validated across shards."""

    def __init__(self, folder: Path, files: list[SafetensorsFile], tensors: dict[str, TensorInfo], config=None):
        self.folder = folder
        self.files = files
        self.tensors = tensors
        self.config = config  # kept for callers; the reader does not use it
        self._file_of = {f.path: f for f in files}

    @classmethod
    def open(cls, path, config=None) -> "Checkpoint":
        """Open a folder (model.safetensors, or index + shards) or one .safetensors file."""
        p = Path(os.fspath(path))
        if p.is_dir():
            return cls._open_folder(p, config)
        if p.name == INDEX_NAME and p.is_file():
            return cls._open_index(p.parent, p, config)
        if not p.exists():
            raise InputError(f"{_p(p)}: no such file or folder")
        if p.name.lower().endswith(PICKLE_SUFFIXES):
            raise UnsupportedError(f"{_p(p)}: pickle checkpoints are not read (never unpickled); convert to safetensors first")
        return cls._from_files(p.parent, [SafetensorsFile(p)], None, config)

    @classmethod
    def _open_folder(cls, folder: Path, config) -> "Checkpoint":
        index = folder / INDEX_NAME
        if index.is_file():
            return cls._open_index(folder, index, config)
        names = _weights_listing(folder)
        model = [n for n in names if n.startswith("model") and n.endswith(".safetensors")]
        if not model:
            other_st = [n for n in names if n.endswith(".safetensors")]
            pickles = [n for n in names if n.lower().endswith(PICKLE_SUFFIXES)]
            if any(n.startswith("consolidated") for n in other_st):
                raise UnsupportedError(
                    f"{_p(folder)}: only Mistral 'consolidated' weights found ({other_st[0]}); kquant reads Hugging Face model*.safetensors"
                )
            if other_st:
                raise InputError(f"{_p(folder)}: no model.safetensors or {INDEX_NAME}; found only {_s(other_st)}")
            if pickles:
                raise UnsupportedError(
                    f"{_p(folder)}: only pickle weights found ({pickles[0]}); "
                    "pickle checkpoints are not read (never unpickled), convert to safetensors"
                )
            raise InputError(f"{_p(folder)}: no weights found (expected model.safetensors or {INDEX_NAME} + shards)")
        m = [SHARD_RE.match(n) for n in model]
        if len(model) > 1 or m[0]:
            totals = {int(x.group(2)) for x in m if x}
            if not all(m) or len(totals) != 1:
                raise InputError(
                    f"{_p(folder)}: several model*.safetensors files {_s(model)} and no {INDEX_NAME}; which are the weights is ambiguous"
                )
            total = totals.pop()
            have = sorted(int(x.group(1)) for x in m)
            if have != list(range(1, total + 1)):
                missing = sorted(set(range(1, total + 1)) - set(have))
                raise InputError(
                    f"{_p(folder)}: shards of {total} without {INDEX_NAME} are incomplete: missing part {missing[0] if missing else have}"
                )
        for n in model:
            _check_inside(folder, n, f"{_p(folder / n)}:")
        files = [SafetensorsFile(folder / n) for n in model]
        return cls._from_files(folder, files, None, config)

    @classmethod
    def _open_index(cls, folder: Path, index: Path, config) -> "Checkpoint":
        where = _p(index)
        try:
            size = index.stat().st_size
            if size > MAX_INDEX_SIZE:
                raise InputError(f"{where}: {size} bytes, larger than any index ({MAX_INDEX_SIZE})")
            raw = index.read_bytes()
        except OSError as e:
            raise InputError(f"{where}: cannot read ({e.strerror or e})") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{where}: not valid UTF-8 (byte {e.start})") from None
        doc = _strict_json(text, where)
        if not isinstance(doc, dict):
            raise InputError(f"{where}: top level is {type(doc).__name__}, expected an object")
        wm = doc.get("weight_map")
        if not isinstance(wm, dict):
            raise InputError(f"{where}: field 'weight_map' is {_s(wm)}, expected an object of tensor -> shard")
        if not wm:
            raise InputError(f"{where}: field 'weight_map' is empty")
        norm: dict[str, str] = {}  # shard as written -> normalised
        weight_map: dict[str, str] = {}
        for tname, shard in wm.items():
            if shard not in norm:
                norm[shard] = _safe_shard(folder, shard, index)
            weight_map[tname] = norm[shard]
        shards = sorted(set(weight_map.values()))
        files = []
        try:
            for s in shards:
                files.append(SafetensorsFile(folder / s))
            seen: dict[str, str] = {}
            for s, f in zip(shards, files):
                for tname in f.tensors:
                    listed = weight_map.get(tname)
                    if listed is None:
                        raise InputError(f"{where}: tensor {_s(tname)} in shard {_s(s)} is not listed in field 'weight_map'")
                    if tname in seen:
                        raise InputError(f"{where}: tensor {_s(tname)} is in both shard {_s(seen[tname])} and {_s(s)}")
                    if listed != s:
                        raise InputError(f"{where}: field 'weight_map' puts tensor {_s(tname)} in {_s(listed)} but it is in {_s(s)}")
                    seen[tname] = s
            for tname, s in weight_map.items():
                if tname not in seen:
                    raise InputError(f"{where}: tensor {_s(tname)} listed in field 'weight_map' is missing from shard {_s(s)}")
        except BaseException:
            for f in files:
                f.close()
            raise
        return cls._from_files(folder, files, index, config)

    @classmethod
    def _from_files(cls, folder: Path, files: list[SafetensorsFile], index, config) -> "Checkpoint":
        """Merge files (already in name order; tensors by name within each), refusing a name in two files."""
        tensors: dict[str, TensorInfo] = {}
        owner: dict[str, str] = {}
        for f in files:
            for tname in sorted(f.tensors):
                if tname in tensors:
                    for g in files:
                        g.close()
                    raise InputError(f"{_p(folder)}: tensor {_s(tname)} is in both {_p(owner[tname])} and {_p(f.path)}")
                tensors[tname] = f.tensors[tname]
                owner[tname] = f.path
        return cls(folder, files, tensors, config)

    def _file(self, name: str) -> SafetensorsFile:
        info = self.tensors.get(name)
        if info is None:
            raise InputError(f"{_p(self.folder)}: no tensor named {_s(name)}")
        return self._file_of[info.path]

    def read(self, name: str) -> np.ndarray:
        """Whole tensor as float32."""
        return self._file(name).read(name)

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows start:stop of the first axis as float32."""
        return self._file(name).read_rows(name, start, stop)

    def read_raw(self, name: str) -> np.ndarray:
        """The tensor's bytes (uint8)."""
        return self._file(name).read_raw(name)

    def read_raw_range(self, name: str, offset: int, nbytes: int) -> np.ndarray:
        """Bytes [offset, offset + nbytes) of a tensor's data (uint8), reading only those."""
        info = self.tensors[name]
        if not (0 <= offset and nbytes >= 0 and offset + nbytes <= info.nbytes):
            raise ValueError(f"tensor {name!r}: bytes [{offset}, {offset + nbytes}) outside [0, {info.nbytes}]")
        if nbytes == 0:
            return np.zeros(0, np.uint8)
        return self._file(name)._read_bytes(info.offset + offset, nbytes)

    def close(self) -> None:
        for f in self.files:
            f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# -------------------------------------------------------------------- writer
def fp32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits, round to nearest even, NaN kept quiet (ggml_compute_fp32_to_bf16).

    The one BF16 rounding; the pipeline's intermediate BF16 values are `bf16_round_fp32`."""
    return (bf16_round_fp32(x).view(np.uint32) >> np.uint32(16)).astype(np.uint16)


def bf16_round_fp32(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to BF16 (ggml_compute_fp32_to_bf16, as float32), a new array.

    Computed in place on one copy: a single slab-sized temporary, since the pipeline runs this
    on every 32 MB slab."""
    src = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    u = src.copy()
    nan = (src & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    tmp = u >> np.uint32(16)
    tmp &= np.uint32(1)
    tmp += np.uint32(0x7FFF)
    u += tmp  # wraps only for NaNs, replaced below
    del tmp
    u &= np.uint32(0xFFFF0000)
    if nan.any():
        u[nan] = ((src[nan] >> np.uint32(16)) | np.uint32(64)) << np.uint32(16)
    return u.view(np.float32)


def _encode(name: str, arr, dtype: str | None) -> tuple[str, np.ndarray]:
    """(safetensors dtype, little-endian contiguous array) for one tensor."""
    a = np.asarray(arr)
    if dtype is None:
        if a.dtype == np.float32 or a.dtype == np.float64:
            dtype = "F32"
        elif a.dtype == np.float16:
            dtype = "F16"
        else:
            raise ValueError(f"tensor {name!r}: numpy dtype {a.dtype} needs an explicit safetensors dtype")
    if dtype == "F32":
        return dtype, np.ascontiguousarray(a, dtype="<f4")
    if dtype == "F16":
        return dtype, np.ascontiguousarray(a, dtype="<f2")
    if dtype == "BF16":
        if a.dtype == np.uint16:
            return dtype, np.ascontiguousarray(a, dtype="<u2")
        return dtype, fp32_to_bf16_bits(a).astype("<u2")
    if dtype in RAW_NUMPY:
        want = np.dtype(RAW_NUMPY[dtype])
        if a.dtype.kind != want.kind or a.dtype.itemsize != want.itemsize:
            raise ValueError(f"tensor {name!r}: {dtype} needs numpy {want}, got {a.dtype}")
        return dtype, np.ascontiguousarray(a, dtype=want)
    raise ValueError(f"tensor {name!r}: cannot write safetensors dtype {dtype!r}")


class SafetensorsStreamWriter:
    """A safetensors file whose tensors are declared first and streamed in order (the one writer).

    `entries`: (name, safetensors dtype, numpy-order shape); the header is written at once, then
    `write` appends each tensor's little-endian bytes, in the declared order."""

    def __init__(self, f, entries: list[tuple[str, str, tuple[int, ...]]], metadata: dict | None = None):
        header: dict = {}
        if metadata is not None:
            header[METADATA_KEY] = dict(metadata)
        pos = 0
        self.sizes = []
        for name, dtype, shape in entries:
            n = DTYPE_BITS[dtype] * int(np.prod(shape, dtype=np.int64)) // 8
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + n]}
            self.sizes.append(n)
            pos += n
        hb = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        hb += b" " * (-len(hb) % HEADER_PAD)
        self.f = f
        self.total = HEADER_LEN_BYTES + len(hb) + pos  # bytes of the whole file
        f.write(len(hb).to_bytes(HEADER_LEN_BYTES, "little"))
        f.write(hb)
        self.written = 0  # data bytes so far

    def write(self, a: np.ndarray) -> None:
        if a.nbytes:
            self.f.write(np.ascontiguousarray(a).reshape(-1).view(np.uint8).data)
        self.written += a.nbytes


def write_safetensors(path_or_fileobj, tensors: dict, metadata: dict | None = None, dtype=None) -> int:
    """Write tensors (dict name -> array) as safetensors; dtype: None (from numpy), a name, or a dict.

    BF16 takes uint16 arrays as raw bits and rounds float arrays to nearest even. Returns bytes written.
    """
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ValueError("safetensors metadata must map str -> str")
    enc = []
    for name, arr in tensors.items():
        if not isinstance(name, str) or name == METADATA_KEY:
            raise ValueError(f"invalid tensor name {name!r}")
        dt = dtype.get(name) if isinstance(dtype, dict) else dtype
        enc.append((name, *_encode(name, arr, dt)))
    own = not hasattr(path_or_fileobj, "write")
    f = open(path_or_fileobj, "wb") if own else path_or_fileobj
    try:
        w = SafetensorsStreamWriter(f, [(name, dt, a.shape) for name, dt, a in enc], metadata)
        for _, _, a in enc:
            w.write(a.reshape(-1))
        f.flush()
    finally:
        if own:
            f.close()
    return w.total
