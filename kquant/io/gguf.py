"""GGUF v3 streaming writer and strict reader.

The writer produces the bytes of gguf-py's `GGUFWriter` (gguf-py/gguf/gguf_writer.py) and of
ggml's `gguf_write_out` (ggml/src/gguf.cpp): header, KV pairs, tensor infos, zero padding to
`general.alignment`, then each tensor's data padded to the alignment. Tensors are declared up
front and their data is streamed in declared order, in as many chunks as the caller likes, so a
model never has to be in memory at once.

The reader ports the checks of ggml's `gguf_init_from_reader` (ggml/src/gguf.cpp) — the ones
added after the gguf.cpp CVEs: every count and length checked against the bytes left before
anything is allocated or looped over, known types only, no arrays of arrays, n_dims <= 4,
non-negative dims, element and byte counts without overflow, a power-of-two u32 alignment,
tensor offsets equal to the running padded size — and adds: data inside the file, no trailing
bytes, strict UTF-8 keys and tensor names, bools 0 or 1. The header is parsed through an mmap;
tensor data is read with pread (fsutil.pread_array): a file truncated meanwhile is an error, not SIGBUS.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from ..errors import InputError, OutputError, UnsupportedError
from .fsutil import file_stamp, open_regular, pread_array
from ..ggml.types import QType
from .gguf_kv import StringArray

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3  # what the writer emits
READ_VERSIONS = (2, 3)  # v2 and v3 are the same little-endian layout; v1 used 32-bit counts
DEFAULT_ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT
ALIGNMENT_KEY = "general.alignment"
GGML_MAX_DIMS = 4
GGML_MAX_NAME = 64  # tensor names must be shorter (ggml.h GGML_MAX_NAME, NUL included)
MAX_STRING_LENGTH = 1 << 30  # GGUF_MAX_STRING_LENGTH
MAX_ARRAY_ELEMENTS = 1 << 30  # GGUF_MAX_ARRAY_ELEMENTS
INT64_MAX = (1 << 63) - 1
HEADER_BYTES = 4 + 4 + 8 + 8  # magic, version, n_tensors, n_kv
MIN_KV_BYTES = 8 + 1 + 4 + 1  # key length, 1-byte key, type, 1-byte value
MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # name length, n_dims (0), type, offset

VT = GGUFValueType
# struct formats of the fixed-size value types (gguf-py GGUFWriter._simple_value_packing).
SCALAR_FORMAT: dict[GGUFValueType, str] = {
    VT.UINT8: "<B",
    VT.INT8: "<b",
    VT.UINT16: "<H",
    VT.INT16: "<h",
    VT.UINT32: "<I",
    VT.INT32: "<i",
    VT.FLOAT32: "<f",
    VT.BOOL: "<B",
    VT.UINT64: "<Q",
    VT.INT64: "<q",
    VT.FLOAT64: "<d",
}
ARRAY_DTYPE: dict[GGUFValueType, str] = {
    VT.UINT8: "<u1",
    VT.INT8: "<i1",
    VT.UINT16: "<u2",
    VT.INT16: "<i2",
    VT.UINT32: "<u4",
    VT.INT32: "<i4",
    VT.FLOAT32: "<f4",
    VT.BOOL: "<u1",
    VT.UINT64: "<u8",
    VT.INT64: "<i8",
    VT.FLOAT64: "<f8",
}
INT_RANGE: dict[GGUFValueType, tuple[int, int]] = {
    VT.UINT8: (0, 0xFF),
    VT.INT8: (-0x80, 0x7F),
    VT.UINT16: (0, 0xFFFF),
    VT.INT16: (-0x8000, 0x7FFF),
    VT.UINT32: (0, 0xFFFFFFFF),
    VT.INT32: (-0x80000000, 0x7FFFFFFF),
    VT.UINT64: (0, 0xFFFFFFFFFFFFFFFF),
    VT.INT64: (-(1 << 63), INT64_MAX),
}
FLOAT_TYPES = (VT.FLOAT32, VT.FLOAT64)
N_VALUE_TYPES = 13  # GGUF_TYPE_COUNT
_U64 = struct.Struct("<Q")


def _s(value, limit: int = 80) -> str:
    """repr() of a value for a one-line message, shortened."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def display_path(path) -> str:
    """A path for a one-line message (control characters escaped)."""
    if path is None:
        return "<stream>"
    s = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else str(path)
    return s if s.isprintable() else repr(s)


def pad_to(n: int, align: int) -> int:
    """GGML_PAD: n rounded up to a multiple of align."""
    return (n + align - 1) // align * align


def type_sizes(ggml_type: int) -> tuple[int, int] | None:
    """(block_size, type_size) of a ggml type id, or None if the id is unknown."""
    try:
        return QType(ggml_type).block_size, QType(ggml_type).type_size
    except ValueError:
        pass
    try:
        return GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        return None


def _type_enum(ggml_type: int):
    """QType when kquant knows the type, else gguf-py's GGMLQuantizationType."""
    try:
        return QType(ggml_type)
    except ValueError:
        return GGMLQuantizationType(ggml_type)


class TypedArray(list):
    """A GGUF array value: a list that remembers its element type (`sub_type`)."""

    def __init__(self, sub_type, items=()):
        super().__init__(items)
        self.sub_type = GGUFValueType(sub_type)

    def __repr__(self) -> str:
        return f"TypedArray({self.sub_type.name}, {list.__repr__(self)})"


# ====================================================================== writer
class GGUFStreamWriter:
    """Stream a GGUF file: add KV, declare tensors, write_header(), write_data() in order, finish().

    `ggml_n_dims=False` writes n_dims = len(shape) like gguf-py (convert_hf_to_gguf.py);
    `ggml_n_dims=True` drops leading numpy axes of size 1 like ggml's writer (`ggml_n_dims`,
    used by llama-quantize), e.g. shape (1, 4096) is stored as one dimension.
    """

    def __init__(self, path_or_fileobj, *, ggml_n_dims: bool = False, name=None):
        """`name`: the path to show in messages when writing to a file object (e.g. atomic_output's)."""
        self._own = not hasattr(path_or_fileobj, "write")
        if self._own:
            self.path = os.fspath(path_or_fileobj)
        else:
            self.path = name if name is not None else getattr(path_or_fileobj, "name", None)
        if self._own:
            try:
                self._f = open(self.path, "xb")
            except FileExistsError:
                raise OutputError(f"{display_path(self.path)}: already exists") from None
            except OSError as e:
                raise OutputError(f"{display_path(self.path)}: cannot create ({e.strerror or e})") from None
        else:
            self._f = path_or_fileobj
        self.ggml_n_dims = ggml_n_dims
        self._kv: dict[str, tuple[GGUFValueType, object, bytes]] = {}  # key -> (type, value, encoded)
        self._tensors: list[list] = []  # [name, shape, ggml_type, nbytes, offset, written]
        self._names: dict[str, int] = {}
        self.alignment = DEFAULT_ALIGNMENT
        self._state = "kv"
        self._pos = 0
        self._cur = 0

    # ------------------------------------------------------------ metadata
    def _err(self, what: str) -> OutputError:
        return OutputError(f"{display_path(self.path)}: {what}")

    def _encode_value(self, key: str, vtype, value, sub_type=None) -> tuple[GGUFValueType, object, bytes]:
        """Validate and encode one KV value (without the key): type id, [sub type, count,] payload."""
        try:
            vtype = GGUFValueType(vtype)
        except ValueError:
            raise self._err(f"metadata key {_s(key)} has unknown value type {_s(vtype)}") from None
        is_seq = isinstance(value, (list, tuple, np.ndarray, StringArray))
        if vtype == VT.ARRAY:
            if sub_type is None:
                sub_type = getattr(value, "sub_type", None)
            if sub_type is None or not is_seq:
                raise ValueError(f"metadata key {key!r}: an ARRAY value needs a sequence and its element type")
            items = value
        elif is_seq:
            sub_type, items = vtype, value  # (T, [..]) = array of T
        else:
            return vtype, value, struct.pack("<I", vtype) + self._encode_scalar(key, vtype, value)
        try:
            sub_type = GGUFValueType(sub_type)
        except ValueError:
            raise self._err(f"metadata key {_s(key)} has unknown element type {_s(sub_type)}") from None
        if sub_type == VT.ARRAY:
            raise self._err(f"metadata key {_s(key)} is an array of arrays, which ggml cannot read")
        if isinstance(items, StringArray):  # already encoded: kept as it is
            if sub_type != VT.STRING:
                raise ValueError(f"metadata key {key!r}: a StringArray is an array of STRING, not {sub_type.name}")
            return VT.ARRAY, items, struct.pack("<IIQ", VT.ARRAY, sub_type, len(items)) + items.payload
        if isinstance(items, np.ndarray):
            items = items.reshape(-1)
        payload = self._encode_array(key, sub_type, items)
        head = struct.pack("<IIQ", VT.ARRAY, sub_type, len(items))
        kept = items.tolist() if isinstance(items, np.ndarray) else list(items)
        return VT.ARRAY, TypedArray(sub_type, kept), head + payload

    def _encode_str(self, key: str, v) -> bytes:
        if isinstance(v, (bytes, bytearray)):
            b = bytes(v)
        elif isinstance(v, str):
            try:
                b = v.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                raise self._err(f"metadata key {_s(key)} string {_s(v)} is not encodable as UTF-8") from None
        else:
            raise self._err(f"metadata key {_s(key)} value {_s(v)} is not a string")
        return struct.pack("<Q", len(b)) + b

    def _encode_scalar(self, key: str, vtype: GGUFValueType, v) -> bytes:
        if vtype == VT.STRING:
            return self._encode_str(key, v)
        if vtype == VT.BOOL:
            if isinstance(v, (bool, np.bool_)) or (isinstance(v, (int, np.integer)) and int(v) in (0, 1)):
                return struct.pack("<B", int(bool(v)))
            raise self._err(f"metadata key {_s(key)} value {_s(v)} is not a BOOL")
        if vtype in FLOAT_TYPES:
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise self._err(f"metadata key {_s(key)} value {_s(v)} is not a {vtype.name}")
            try:
                return struct.pack(SCALAR_FORMAT[vtype], float(v))
            except OverflowError:
                raise self._err(f"metadata key {_s(key)} value {_s(v)} overflows {vtype.name}") from None
        lo, hi = INT_RANGE[vtype]
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or not lo <= int(v) <= hi:
            raise self._err(f"metadata key {_s(key)} value {_s(v)} does not fit {vtype.name}")
        return struct.pack(SCALAR_FORMAT[vtype], int(v))

    def _encode_array(self, key: str, sub_type: GGUFValueType, items) -> bytes:
        if len(items) > MAX_ARRAY_ELEMENTS:
            raise self._err(f"metadata key {_s(key)} array of {len(items)} elements exceeds {MAX_ARRAY_ELEMENTS}")
        if sub_type == VT.STRING:
            return b"".join(self._encode_str(key, v) for v in items)
        if not isinstance(items, np.ndarray):
            # a vocabulary's scores and token types: one numpy conversion when every item is a plain
            # int (or float, for a float array), which the checks below treat as the scalar path does;
            # anything else (bool, numpy scalars, ints past int64, non-numbers) item by item
            floats = sub_type in FLOAT_TYPES
            a = None
            if sub_type != VT.BOOL and set(map(type, items)) <= ({int, float} if floats else {int}):
                try:  # (ints to a float type through float64, as float(v) rounds them)
                    a = np.array(items, dtype=np.float64 if floats else np.int64)
                except OverflowError:
                    pass
            if a is None:
                return b"".join(self._encode_scalar(key, sub_type, v) for v in items)
            items = a
        a = items.reshape(-1)
        if sub_type in FLOAT_TYPES:
            if a.dtype.kind not in "iuf":
                raise self._err(f"metadata key {_s(key)} array dtype {a.dtype} is not numeric")
            with np.errstate(over="ignore"):
                out = a.astype(ARRAY_DTYPE[sub_type])
            if a.dtype.kind == "f" and not np.array_equal(np.isfinite(out), np.isfinite(a)):
                raise self._err(f"metadata key {_s(key)} array values overflow {sub_type.name}")
            return out.tobytes()
        if a.dtype.kind not in ("iub" if sub_type == VT.BOOL else "iu"):
            raise self._err(f"metadata key {_s(key)} array dtype {a.dtype} does not fit {sub_type.name}")
        lo, hi = (0, 1) if sub_type == VT.BOOL else INT_RANGE[sub_type]
        if a.size and (int(a.min()) < lo or int(a.max()) > hi):
            raise self._err(f"metadata key {_s(key)} array values do not fit {sub_type.name}")
        return a.astype(ARRAY_DTYPE[sub_type]).tobytes()

    def add_kv(self, key: str, vtype, value, sub_type=None) -> None:
        """Add one KV pair; (T, list) is an array of T; ARRAY needs sub_type or a TypedArray."""
        if self._state != "kv":
            raise ValueError("metadata must be added before write_header()")
        if not isinstance(key, str) or not key:
            raise self._err(f"metadata key {_s(key)} is not a non-empty string")
        if key in self._kv:
            raise ValueError(f"metadata key {key!r} added twice (use set_kv to replace)")
        self._kv[key] = self._encode_value(key, vtype, value, sub_type)

    def set_kv(self, key: str, vtype, value, sub_type=None) -> None:
        """Replace or add a KV pair, moving it to the end (ggml `gguf_set_val_*` semantics)."""
        self.remove_kv(key)
        self.add_kv(key, vtype, value, sub_type)

    def remove_kv(self, key: str) -> None:
        """Drop a KV pair if present (ggml `gguf_remove_key`)."""
        if self._state != "kv":
            raise ValueError("metadata must be changed before write_header()")
        self._kv.pop(key, None)

    def add_metadata(self, items) -> None:
        """Add KV pairs from a mapping key -> (type, value) or (ARRAY, value, sub_type), e.g. GGUFFile.metadata."""
        for key, v in dict(items).items():
            self.add_kv(key, *v)

    @property
    def metadata(self) -> dict[str, tuple[GGUFValueType, object]]:
        return {k: (t, v) for k, (t, v, _) in self._kv.items()}

    # ------------------------------------------------------------ tensors
    def add_tensor(self, name: str, shape, qtype) -> int:
        """Declare a tensor (numpy-order shape, ggml type); returns its byte size."""
        if self._state != "kv":
            raise ValueError("tensors must be declared before write_header()")
        if not isinstance(name, str):
            raise self._err(f"tensor name {_s(name)} is not a string")
        try:
            nb = name.encode("utf-8")
        except UnicodeEncodeError:
            raise self._err(f"tensor name {_s(name)} is not encodable as UTF-8") from None
        if len(nb) >= GGML_MAX_NAME:
            raise self._err(f"tensor name {_s(name)} is {len(nb)} bytes, ggml allows at most {GGML_MAX_NAME - 1}")
        if name in self._names:
            raise ValueError(f"tensor {name!r} declared twice")
        shape = tuple(shape)
        if len(shape) > GGML_MAX_DIMS:
            raise self._err(f"tensor {_s(name)} shape {shape} has more than {GGML_MAX_DIMS} dimensions")
        for d in shape:
            if isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer)) or d < 0:
                raise self._err(f"tensor {_s(name)} shape {_s(shape)} has an invalid dimension {_s(d)}")
        shape = tuple(int(d) for d in shape)
        gt = int(qtype)
        sizes = type_sizes(gt)
        if sizes is None:
            raise self._err(f"tensor {_s(name)} has unknown ggml type id {gt}")
        bs, ts = sizes
        row = shape[-1] if shape else 1
        if row % bs:
            raise self._err(f"tensor {_s(name)} row length {row} is not a multiple of {_type_enum(gt).name} block size {bs}")
        n_rows = 1
        for d in shape[:-1]:
            n_rows *= d
        nbytes = n_rows * (row // bs) * ts
        self._names[name] = len(self._tensors)
        self._tensors.append([name, shape, gt, nbytes, 0, 0])
        return nbytes

    add_tensor_info = add_tensor  # gguf-py's name for declaring a tensor

    def _ne(self, shape: tuple[int, ...]) -> list[int]:
        """GGUF dims (ne[0] = last numpy axis) as the writer stores them."""
        ne = list(reversed(shape))
        if not self.ggml_n_dims:
            return ne
        ne4 = ne + [1] * (GGML_MAX_DIMS - len(ne))
        n = 1
        for i in range(GGML_MAX_DIMS - 1, 0, -1):  # ggml_n_dims
            if ne4[i] > 1:
                n = i + 1
                break
        return ne4[:n]

    # ------------------------------------------------------------ output
    def _write(self, b) -> None:
        mv = memoryview(b)
        while mv.nbytes:  # a raw (unbuffered) file may take fewer bytes than offered
            n = self._f.write(mv)
            n = mv.nbytes if n is None else n
            self._pos += n
            mv = mv[n:]

    def _write_padding(self) -> None:
        n = -self._pos % self.alignment
        if n:
            self._write(b"\x00" * n)

    def write_header(self) -> int:
        """Write header, KV pairs and tensor infos, padded; returns the data section's offset."""
        if self._state != "kv":
            raise ValueError("write_header() called twice")
        al = self._kv.get(ALIGNMENT_KEY)
        if al is not None:
            t, v, _ = al
            if t != VT.UINT32 or not isinstance(v, (int, np.integer)) or v <= 0 or v & (v - 1):
                raise self._err(f"metadata key '{ALIGNMENT_KEY}' must be a UINT32 power of two, got {t.name} {_s(v)}")
            self.alignment = int(v)
        out = bytearray()
        out += GGUF_MAGIC + struct.pack("<IQQ", GGUF_VERSION, len(self._tensors), len(self._kv))
        for key, (_, _, enc) in self._kv.items():
            out += self._encode_str(key, key) + enc
        offset = 0
        for t in self._tensors:
            name, shape, gt, nbytes = t[:4]
            t[4] = offset
            ne = self._ne(shape)
            out += self._encode_str(name, name) + struct.pack("<I", len(ne))
            out += struct.pack(f"<{len(ne)}Q", *ne) + struct.pack("<IQ", gt, offset)
            offset += pad_to(nbytes, self.alignment)
        self._write(out)
        del out
        self._write_padding()
        self.data_offset = self._pos
        self._state = "data"
        self._advance()
        return self.data_offset

    def _advance(self) -> None:
        """Move past completed tensors, padding each to the alignment."""
        while self._cur < len(self._tensors) and self._tensors[self._cur][5] == self._tensors[self._cur][3]:
            self._write_padding()
            self._cur += 1

    def write_data(self, name: str, buf) -> None:
        """Append bytes (bytes-like or numpy array) of tensor `name`; tensors must come in declared order."""
        if self._state != "data":
            raise ValueError("write_data() before write_header() or after finish()")
        if isinstance(buf, np.ndarray):
            buf = np.ascontiguousarray(buf).reshape(-1).view(np.uint8)
        mv = memoryview(buf)
        n = mv.nbytes
        if mv.format != "B" or mv.ndim != 1:
            mv = mv.cast("B") if mv.c_contiguous else memoryview(bytes(mv))
        if self._cur >= len(self._tensors) or self._tensors[self._cur][0] != name:
            i = self._names.get(name)
            if i is not None and i < self._cur and n == 0:
                return
            expected = self._tensors[self._cur][0] if self._cur < len(self._tensors) else None
            if i is None:
                raise ValueError(f"write_data({name!r}): no such tensor was declared")
            if expected is None:
                raise ValueError(f"write_data({name!r}): every tensor is already complete")
            t = self._tensors[self._cur]
            raise ValueError(f"write_data({name!r}): expected tensor {expected!r} first ({t[3] - t[5]} of {t[3]} bytes missing)")
        t = self._tensors[self._cur]
        if t[5] + n > t[3]:
            raise ValueError(f"write_data({name!r}): {t[5] + n} bytes exceed its declared size {t[3]}")
        if n:
            self._write(mv)
        t[5] += n
        self._advance()

    def finish(self) -> int:
        """Check every tensor was written in full, flush; returns the file size."""
        if self._state == "kv":
            self.write_header()
        if self._state != "data":
            raise ValueError("finish() called twice")
        if self._cur < len(self._tensors):
            t = self._tensors[self._cur]
            raise ValueError(f"finish(): tensor {t[0]!r} has {t[5]} of {t[3]} bytes")
        self._f.flush()
        self._state = "done"
        return self._pos

    def close(self) -> None:
        if self._own and not self._f.closed:
            self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ====================================================================== reader
@dataclass(frozen=True)
class GGUFTensorInfo:
    """One tensor of a GGUF file: numpy-order shape, ggml type, absolute data range."""

    name: str
    shape: tuple[int, ...]
    qtype: object  # QType, or gguf.GGMLQuantizationType for types kquant does not handle
    offset_abs: int
    nbytes: int

    def require_qtype(self) -> QType:
        """The QType, or UnsupportedError for a ggml type kquant does not handle."""
        if isinstance(self.qtype, QType):
            return self.qtype
        known = ", ".join(t.name for t in QType)
        raise UnsupportedError(f"tensor {_s(self.name)} has ggml type {self.qtype.name} (id {int(self.qtype)}); supported: {known}")


class _Cursor:
    """Bounds-checked little-endian reads from a buffer."""

    def __init__(self, buf, where: str):
        self.buf = buf
        self.pos = 0
        self.end = len(buf)
        self.where = where

    def need(self, n: int, what: str) -> None:
        if n > self.end - self.pos:
            raise InputError(f"{self.where}: {what} needs {n} bytes at offset {self.pos}, the file has {self.end - self.pos} left")

    def unpack(self, fmt: str, size: int, what: str):
        self.need(size, what)
        v = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += size
        return v

    def u32(self, what: str) -> int:
        return self.unpack("<I", 4, what)

    def i32(self, what: str) -> int:
        return self.unpack("<i", 4, what)

    def u64(self, what: str) -> int:
        return self.unpack("<Q", 8, what)

    def i64(self, what: str) -> int:
        return self.unpack("<q", 8, what)

    def raw_string(self, what: str) -> bytes:
        n = self.u64(f"{what} length")
        if n > MAX_STRING_LENGTH:
            raise InputError(f"{self.where}: {what} length {n} exceeds the GGUF limit {MAX_STRING_LENGTH}")
        self.need(n, what)
        b = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return b

    def name(self, what: str) -> str:
        b = self.raw_string(what)
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{self.where}: {what} {_s(b)} is not valid UTF-8") from None


class GGUFFile:
    """A GGUF file validated before use: the header parsed through a mapping, tensor data read
    with pread (`data`, `read_bytes`), so that a file truncated meanwhile is an InputError, not SIGBUS."""

    def __init__(self, path):
        self.path = os.fspath(path)
        where = display_path(self.path)
        self._mm = None
        self._fd = None
        fd, st = open_regular(self.path, where)
        try:
            self.file_size = st.st_size
            if self.file_size < HEADER_BYTES:
                raise InputError(f"{where}: file is {self.file_size} bytes, a GGUF header needs {HEADER_BYTES}")
            self._stamp = file_stamp(fd)
            self._mm = mmap.mmap(fd, self.file_size, access=mmap.ACCESS_READ)  # the header only
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd  # tensor data: pread (see fsutil.pread_array)
        try:
            self._parse(_Cursor(self._mm, where))
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ parsing
    def _parse(self, c: _Cursor) -> None:
        w = c.where
        magic = bytes(c.buf[0:4])
        if magic != GGUF_MAGIC:
            raise InputError(f"{w}: field 'magic' is {_s(magic)}, expected b'GGUF'")
        c.pos = 4
        v = c.u32("version")
        if v not in READ_VERSIONS:
            if v == 0:
                raise InputError(f"{w}: field 'version' is 0, not a GGUF version")
            if v & 0xFFFF == 0:  # as ggml: a small version read with the other byte order
                raise UnsupportedError(f"{w}: field 'version' is {v:#x}, a byte-swapped (big-endian) GGUF; only little-endian is read")
            if v == 1:
                raise UnsupportedError(f"{w}: field 'version' is 1; GGUF v1 is no longer supported (2 and 3 are)")
            raise UnsupportedError(f"{w}: field 'version' is {v}; only GGUF versions 2 and 3 are read")
        self.version = v
        n_tensors = c.u64("tensor count")
        n_kv = c.u64("KV count")
        left = c.end - c.pos
        if n_tensors > INT64_MAX or n_tensors * MIN_TENSOR_INFO_BYTES > left:
            raise InputError(f"{w}: field 'n_tensors' is {n_tensors}, more than the {left} bytes left can describe")
        if n_kv > INT64_MAX or n_kv * MIN_KV_BYTES > left:
            raise InputError(f"{w}: field 'n_kv' is {n_kv}, more than the {left} bytes left can hold")

        self.metadata: dict[str, tuple[GGUFValueType, object]] = {}
        for i in range(n_kv):
            key = c.name(f"KV {i} key")
            if not key:
                raise InputError(f"{w}: KV {i} key is empty")
            if key in self.metadata:
                raise InputError(f"{w}: KV {i} key {_s(key)} is a duplicate")
            self.metadata[key] = self._read_value(c, key)

        self.alignment = DEFAULT_ALIGNMENT
        if ALIGNMENT_KEY in self.metadata:
            t, a = self.metadata[ALIGNMENT_KEY]
            if t != VT.UINT32:
                raise InputError(f"{w}: key '{ALIGNMENT_KEY}' has type {t.name}, must be UINT32")
            if a == 0 or a & (a - 1):
                raise InputError(f"{w}: key '{ALIGNMENT_KEY}' is {a}, not a power of two")
            self.alignment = a

        infos = []
        names: set[str] = set()
        for i in range(n_tensors):
            name = c.name(f"tensor {i} name")
            nb = len(name.encode("utf-8"))
            if nb >= GGML_MAX_NAME:
                raise InputError(f"{w}: tensor {i} name {_s(name)} is {nb} bytes, ggml allows at most {GGML_MAX_NAME - 1}")
            if name in names:
                raise InputError(f"{w}: tensor {i} name {_s(name)} is a duplicate")
            names.add(name)
            tn = f"tensor {_s(name)}"
            n_dims = c.u32(f"{tn} n_dims")
            if n_dims > GGML_MAX_DIMS:
                raise InputError(f"{w}: {tn} field 'n_dims' is {n_dims}, ggml allows at most {GGML_MAX_DIMS}")
            ne = []
            for j in range(n_dims):
                d = c.i64(f"{tn} ne[{j}]")
                if d < 0:
                    raise InputError(f"{w}: {tn} field 'ne[{j}]' is {d & 0xFFFFFFFFFFFFFFFF}, must be in [0, 2^63)")
                ne.append(d)
            numel = 1
            for d in ne:
                numel *= d
            if numel > INT64_MAX:
                raise InputError(f"{w}: {tn} field 'ne' {ne} has more than 2^63-1 elements")
            gt = c.i32(f"{tn} type")
            sizes = type_sizes(gt) if gt >= 0 else None
            if sizes is None:
                raise InputError(f"{w}: {tn} field 'type' is {gt}, not a known ggml type id")
            bs, ts = sizes
            row = ne[0] if ne else 1
            if row % bs:
                raise InputError(f"{w}: {tn} field 'ne[0]' is {row}, not a multiple of {_type_enum(gt).name} block size {bs}")
            nbytes = numel // bs * ts
            if nbytes > self.file_size:
                raise InputError(f"{w}: {tn} field 'ne' {ne} needs {nbytes} bytes, more than the {self.file_size}-byte file")
            offset = c.u64(f"{tn} offset")
            infos.append((name, tuple(reversed(ne)), _type_enum(gt), offset, nbytes))

        self.data_offset = pad_to(c.pos, self.alignment)
        pos = 0
        self.tensors: list[GGUFTensorInfo] = []
        for name, shape, qt, offset, nbytes in infos:
            if offset != pos:
                raise InputError(f"{w}: tensor {_s(name)} field 'offset' is {offset}, expected {pos} (aligned, after the previous tensor)")
            end = self.data_offset + offset + nbytes
            if end > self.file_size:
                begin = self.data_offset + offset
                raise InputError(f"{w}: tensor {_s(name)} data [{begin}, {end}) runs past the {self.file_size}-byte file")
            self.tensors.append(GGUFTensorInfo(name, shape, qt, self.data_offset + offset, nbytes))
            pos += pad_to(nbytes, self.alignment)
        limit = self.data_offset + pos
        if self.file_size > limit:
            raise InputError(f"{w}: {self.file_size - limit} trailing bytes after the tensor data (which ends at {limit})")
        self._by_name = {t.name: t for t in self.tensors}

    def _read_value(self, c: _Cursor, key: str):
        w = c.where
        kn = f"key {_s(key)}"
        t = c.u32(f"{kn} type")
        if t >= N_VALUE_TYPES:
            raise InputError(f"{w}: {kn} field 'type' is {t}, not a GGUF value type")
        t = GGUFValueType(t)
        if t != VT.ARRAY:
            return t, self._read_scalar(c, kn, t)
        st = c.u32(f"{kn} array type")
        if st >= N_VALUE_TYPES:
            raise InputError(f"{w}: {kn} field 'array type' is {st}, not a GGUF value type")
        st = GGUFValueType(st)
        if st == VT.ARRAY:
            raise InputError(f"{w}: {kn} is an array of arrays, which ggml does not read")
        n = c.u64(f"{kn} array length")
        if n > MAX_ARRAY_ELEMENTS:
            raise InputError(f"{w}: {kn} field 'array length' is {n}, above the GGUF limit {MAX_ARRAY_ELEMENTS}")
        if st == VT.STRING:
            c.need(n * 8, f"{kn} array of {n} strings")
            return t, TypedArray(st, self._read_strings(c, kn, n))
        dt = np.dtype(ARRAY_DTYPE[st])
        c.need(n * dt.itemsize, f"{kn} array of {n} {st.name}")
        a = np.frombuffer(c.buf, dt, count=n, offset=c.pos)
        c.pos += n * dt.itemsize
        if st == VT.BOOL:
            if n and int(a.max()) > 1:
                raise InputError(f"{w}: {kn} BOOL array holds {int(a.max())}, expected 0 or 1")
            return t, TypedArray(st, [bool(x) for x in a.tolist()])
        return t, TypedArray(st, a.tolist())

    @staticmethod
    def _read_strings(c: _Cursor, kn: str, n: int) -> list[str]:
        """n length-prefixed strings (the vocabulary: a tight loop, same checks as raw_string)."""
        buf, pos, end = c.buf, c.pos, c.end
        unpack = _U64.unpack_from
        items = []
        append = items.append
        for i in range(n):
            if end - pos < 8:
                c.pos = pos
                c.need(8, f"{kn} element {i} length")
            ln = unpack(buf, pos)[0]
            pos += 8
            if ln > MAX_STRING_LENGTH or ln > end - pos:
                c.pos = pos
                if ln > MAX_STRING_LENGTH:
                    raise InputError(f"{c.where}: {kn} element {i} length {ln} exceeds the GGUF limit {MAX_STRING_LENGTH}")
                c.need(ln, f"{kn} element {i}")
            append(buf[pos : pos + ln].decode("utf-8", "surrogateescape"))
            pos += ln
        c.pos = pos
        return items

    @staticmethod
    def _read_scalar(c: _Cursor, kn: str, t: GGUFValueType):
        if t == VT.STRING:
            return c.raw_string(f"{kn} value").decode("utf-8", "surrogateescape")
        fmt = SCALAR_FORMAT[t]
        v = c.unpack(fmt, struct.calcsize(fmt), f"{kn} value")
        if t == VT.BOOL:
            if v > 1:
                raise InputError(f"{c.where}: {kn} BOOL value is {v}, expected 0 or 1")
            return bool(v)
        return v

    # ------------------------------------------------------------ access
    def tensor(self, name: str) -> GGUFTensorInfo:
        try:
            return self._by_name[name]
        except KeyError:
            raise InputError(f"{display_path(self.path)}: no tensor named {_s(name)}") from None

    def data(self, name: str) -> np.ndarray:
        """The tensor's bytes as a read-only uint8 array."""
        return self.read_bytes(name, 0, self.tensor(name).nbytes)

    def read_bytes(self, name: str, start: int, stop: int) -> np.ndarray:
        """Bytes [start, stop) of the tensor's data (read-only uint8); InputError if the file
        changed since it was opened."""
        t = self.tensor(name)
        if not 0 <= start <= stop <= t.nbytes:
            raise ValueError(f"{display_path(self.path)}: tensor {_s(name)} bytes [{start}, {stop}) outside [0, {t.nbytes}]")
        if self._fd is None:
            raise ValueError(f"{display_path(self.path)}: file is closed")
        return pread_array(self._fd, t.offset_abs + start, stop - start, self._stamp, self.path)

    def value(self, key: str, default=None):
        """The value of a metadata key (without its type), or default."""
        v = self.metadata.get(key)
        return default if v is None else v[1]

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        mm, self._mm = self._mm, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:  # views still alive: unmapped when they go
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"GGUFFile({self.path!r}, v{self.version}, {len(self.metadata)} KV, {len(self.tensors)} tensors)"
