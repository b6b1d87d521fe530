"""GGUF writer and strict reader: byte equality with gguf-py's GGUFWriter and ggml's writer,
round trips with gguf-py's reader, every malformed case built with struct.pack, and a bounded
fuzz (mutated valid files) cross-checked against ggml's own gguf_init_from_file."""

from __future__ import annotations

import atexit
import ctypes
import io
import os
import shutil
import struct
import tempfile
import time

import gguf
import numpy as np

from oracle import refpipeline
import pytest
from gguf import GGMLQuantizationType as GT
from gguf import GGUFValueType as VT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kquant.errors import InputError, OutputError, UnsupportedError
from kquant.io.gguf import GGUFFile, GGUFStreamWriter, TypedArray
from kquant.types import QType


# --------------------------------------------------------------------- raw builders
def u32(v):
    return struct.pack("<I", v)


def i32(v):
    return struct.pack("<i", v)


def u64(v):
    return struct.pack("<Q", v)


def gstr(s):
    b = s.encode() if isinstance(s, str) else s
    return u64(len(b)) + b


def kv(key, vtype, payload):
    return gstr(key) + u32(vtype) + payload


def kv_str(key, value):
    return kv(key, VT.STRING, gstr(value))


def ti(name, ne, gtype, offset):
    return gstr(name) + u32(len(ne)) + b"".join(u64(d) for d in ne) + u32(gtype) + u64(offset)


def gguf_bytes(kvs, tis, data, *, version=3, n_tensors=None, n_kv=None, align=32, magic=b"GGUF"):
    head = magic + u32(version) + u64(len(tis) if n_tensors is None else n_tensors) + u64(len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(tis)
    body += b"\x00" * (-len(body) % align)
    return body + data


F32_DATA = np.arange(8, dtype=np.float32).tobytes()  # tensor "a": ne [4, 2] F32 = 32 bytes
Q8_DATA = bytes(range(34))  # tensor "b": ne [32] Q8_0 = 34 bytes, padded to 64


def base_parts():
    kvs = [kv_str("general.architecture", "llama"), kv("llama.block_count", VT.UINT32, u32(2))]
    tis = [ti("a", [4, 2], GT.F32, 0), ti("b", [32], GT.Q8_0, 32)]
    data = F32_DATA + Q8_DATA + b"\x00" * 30
    return kvs, tis, data


def write(tmp_path, blob, name="x.gguf"):
    p = tmp_path / name
    p.write_bytes(blob)
    return p


def expect(tmp_path, blob, exc, *words):
    p = write(tmp_path, blob)
    with pytest.raises(exc) as ei:
        GGUFFile(p)
    msg = str(ei.value)
    assert "\n" not in msg
    assert str(p) in msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


# --------------------------------------------------------------------- ggml oracle
class _GGUFInitParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]


_LOG_CB = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_silent = _LOG_CB(lambda level, text, ud: None)


def _ggml():
    try:
        from oracle import reference

        lib = reference._lib()
    except Exception:
        return None
    lib.gguf_init_from_file.restype = ctypes.c_void_p
    lib.gguf_init_from_file.argtypes = [ctypes.c_char_p, _GGUFInitParams]
    lib.gguf_free.argtypes = [ctypes.c_void_p]
    lib.gguf_get_meta_size.restype = ctypes.c_size_t
    lib.gguf_get_meta_size.argtypes = [ctypes.c_void_p]
    lib.gguf_get_meta_data.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.ggml_log_set.argtypes = [_LOG_CB, ctypes.c_void_p]
    lib.ggml_log_set(_silent, None)
    return lib


GGML = _ggml()
needs_ggml = pytest.mark.skipif(GGML is None, reason="llama-cpp-python (libggml) not installed")


def ggml_accepts(path) -> bool:
    ctx = GGML.gguf_init_from_file(os.fsencode(path), _GGUFInitParams(True, None))
    if not ctx:
        return False
    GGML.gguf_free(ctx)
    return True


def ggml_meta(path) -> bytes:
    """Header bytes as ggml's own writer (gguf_write_out, only_meta) re-emits them."""
    ctx = GGML.gguf_init_from_file(os.fsencode(path), _GGUFInitParams(True, None))
    assert ctx
    try:
        n = GGML.gguf_get_meta_size(ctx)
        buf = ctypes.create_string_buffer(n)
        GGML.gguf_get_meta_data(ctx, buf)
        return buf.raw
    finally:
        GGML.gguf_free(ctx)


# --------------------------------------------------------------------- valid files
def test_base_file_reads(tmp_path):
    kvs, tis, data = base_parts()
    with GGUFFile(write(tmp_path, gguf_bytes(kvs, tis, data))) as f:
        assert f.version == 3
        assert f.metadata == {"general.architecture": (VT.STRING, "llama"), "llama.block_count": (VT.UINT32, 2)}
        a, b = f.tensors
        assert (a.name, a.shape, a.qtype, a.nbytes) == ("a", (2, 4), QType.F32, 32)
        assert (b.name, b.shape, b.qtype, b.nbytes) == ("b", (32,), QType.Q8_0, 34)
        assert b.offset_abs == a.offset_abs + 32 and a.offset_abs % 32 == 0
        np.testing.assert_array_equal(f.data("a").view(np.float32), np.arange(8, dtype=np.float32))
        assert bytes(f.data("b")) == Q8_DATA
        assert not f.data("a").flags.writeable


def test_version_2_and_unpadded_last_tensor_accepted(tmp_path):
    kvs, tis, data = base_parts()
    f = GGUFFile(write(tmp_path, gguf_bytes(kvs, tis, data[:-30], version=2)))
    assert f.version == 2 and len(f.tensors) == 2


def test_zero_dims_and_zero_size_tensors(tmp_path):
    # ggml accepts n_dims == 0 (a scalar: every ne is 1) and dimensions of 0
    tis = [ti("s", [], GT.F32, 0), ti("z", [0, 3], GT.F32, 32)]
    f = GGUFFile(write(tmp_path, gguf_bytes([], tis, b"\x01\x02\x03\x04" + b"\x00" * 28)))
    assert f.tensors[0].shape == () and f.tensors[0].nbytes == 4
    assert f.tensors[1].shape == (3, 0) and f.tensors[1].nbytes == 0 and f.data("z").size == 0


def test_type_outside_qtype_listed_but_unsupported(tmp_path):
    tis = [ti("q", [256], GT.Q8_K, 0), ti("i", [2], GT.I32, 320)]
    f = GGUFFile(write(tmp_path, gguf_bytes([], tis, b"\x00" * 320 + b"\x00" * 8)))
    assert f.tensors[0].qtype == GT.Q8_K and f.tensors[0].nbytes == 292
    assert len(f.data("q")) == 292
    with pytest.raises(UnsupportedError, match="Q8_K"):
        f.tensors[0].require_qtype()
    assert f.tensors[1].require_qtype.__self__.qtype == GT.I32
    with pytest.raises(UnsupportedError, match="I32"):
        f.tensors[1].require_qtype()


def test_invalid_utf8_string_value_round_trips(tmp_path):
    kvs = [kv("k", VT.STRING, gstr(b"\xff\xfeok")), kv("arr", VT.ARRAY, u32(VT.STRING) + u64(1) + gstr(b"\x80"))]
    blob = gguf_bytes(kvs, [], b"")
    f = GGUFFile(write(tmp_path, blob))
    out = io.BytesIO()
    w = GGUFStreamWriter(out)
    w.add_metadata(f.metadata)
    w.finish()
    assert out.getvalue() == blob


# --------------------------------------------------------------------- malformed files
def test_too_small(tmp_path):
    expect(tmp_path, b"GGUF\x03\x00\x00\x00", InputError, "bytes")


def test_not_a_regular_file(tmp_path):
    with pytest.raises(InputError, match="not a regular file"):
        GGUFFile(tmp_path)
    with pytest.raises(InputError, match="cannot open"):
        GGUFFile(tmp_path / "missing.gguf")


def test_bad_magic(tmp_path):
    kvs, tis, data = base_parts()
    expect(tmp_path, gguf_bytes(kvs, tis, data, magic=b"GGML"), InputError, "magic", "GGML")


@pytest.mark.parametrize(
    "version, exc, word",
    [(0, InputError, "version"), (1, UnsupportedError, "v1"), (0x03000000, UnsupportedError, "byte-swapped"),
     (4, UnsupportedError, "version"), (0x12345678, UnsupportedError, "version")],
)
def test_versions(tmp_path, version, exc, word):
    kvs, tis, data = base_parts()
    expect(tmp_path, gguf_bytes(kvs, tis, data, version=version), exc, word)


@pytest.mark.parametrize("count", [2**64 - 1, 2**63, 2**40, 10**6])
def test_huge_counts_rejected_fast(tmp_path, count):
    kvs, tis, data = base_parts()
    t0 = time.perf_counter()
    expect(tmp_path, gguf_bytes(kvs, tis, data, n_tensors=count), InputError, "n_tensors", str(count))
    expect(tmp_path, gguf_bytes(kvs, tis, data, n_kv=count), InputError, "n_kv", str(count))
    assert time.perf_counter() - t0 < 1.0


def test_counts_larger_than_present(tmp_path):
    kvs, tis, data = base_parts()
    # 3 KV declared, 2 present: the third key is read from the tensor infos and fails somewhere in them
    with pytest.raises(InputError):
        GGUFFile(write(tmp_path, gguf_bytes(kvs, tis, data, n_kv=3)))
    # tensor infos cut short
    head = b"GGUF" + u32(3) + u64(1) + u64(len(kvs)) + b"".join(kvs)
    expect(tmp_path, head + u64(1) + b"a" + u32(1), InputError, "tensor 'a' ne[0]", "needs 8 bytes")
    expect(tmp_path, head + u64(3) + b"a", InputError, "tensor 0 name", "needs 3 bytes")


def test_string_lengths(tmp_path):
    k = u64(2**64 - 1) + b"key"
    expect(tmp_path, gguf_bytes([k], [], b""), InputError, "KV 0 key length", str(2**64 - 1), "limit")
    k = u64(1000) + b"key" + u32(VT.UINT8) + b"\x01" * 20
    expect(tmp_path, gguf_bytes([k], [], b""), InputError, "KV 0 key", "needs 1000 bytes")
    v = kv("k", VT.STRING, u64(2**31))
    expect(tmp_path, gguf_bytes([v], [], b""), InputError, "key 'k' value length", "limit")
    v = kv("k", VT.STRING, u64(500) + b"abc")
    expect(tmp_path, gguf_bytes([v], [], b""), InputError, "key 'k' value", "needs 500")


def test_empty_duplicate_and_non_utf8_keys(tmp_path):
    expect(tmp_path, gguf_bytes([kv("", VT.UINT8, b"\x01")], [], b""), InputError, "KV 0 key is empty")
    dup = [kv("k", VT.UINT8, b"\x01"), kv("k", VT.UINT8, b"\x02")]
    expect(tmp_path, gguf_bytes(dup, [], b""), InputError, "KV 1 key 'k'", "duplicate")
    expect(tmp_path, gguf_bytes([kv(b"\xff", VT.UINT8, b"\x01")], [], b""), InputError, "KV 0 key", "UTF-8")


@pytest.mark.parametrize("t", [13, 255, 2**32 - 1])
def test_unknown_value_type(tmp_path, t):
    expect(tmp_path, gguf_bytes([kv("k", t, b"\x00" * 8)], [], b""), InputError, "key 'k'", "type", str(t))


def test_arrays(tmp_path):
    nested = kv("k", VT.ARRAY, u32(VT.ARRAY) + u64(1) + u32(VT.UINT8) + u64(1) + b"\x01")
    expect(tmp_path, gguf_bytes([nested], [], b""), InputError, "key 'k'", "array of arrays")
    bad_sub = kv("k", VT.ARRAY, u32(77) + u64(0))
    expect(tmp_path, gguf_bytes([bad_sub], [], b""), InputError, "key 'k'", "array type", "77")
    huge = kv("k", VT.ARRAY, u32(VT.UINT8) + u64(2**40))
    expect(tmp_path, gguf_bytes([huge], [], b""), InputError, "key 'k'", "array length", str(2**40))
    short = kv("k", VT.ARRAY, u32(VT.UINT32) + u64(1000) + u32(1))
    expect(tmp_path, gguf_bytes([short], [], b""), InputError, "key 'k'", "1000 UINT32")
    strs = kv("k", VT.ARRAY, u32(VT.STRING) + u64(2**29) + gstr("x"))
    t0 = time.perf_counter()
    expect(tmp_path, gguf_bytes([strs], [], b""), InputError, "key 'k'", "strings")
    assert time.perf_counter() - t0 < 1.0
    strs = kv("k", VT.ARRAY, u32(VT.STRING) + u64(3) + gstr("x") + u64(2**62) + b"\x00" * 16)
    expect(tmp_path, gguf_bytes([strs], [], b""), InputError, "key 'k' element 1 length", "limit")


def test_bools(tmp_path):
    expect(tmp_path, gguf_bytes([kv("k", VT.BOOL, b"\x02")], [], b""), InputError, "key 'k'", "BOOL", "2")
    arr = kv("k", VT.ARRAY, u32(VT.BOOL) + u64(2) + b"\x01\x07")
    expect(tmp_path, gguf_bytes([arr], [], b""), InputError, "key 'k'", "BOOL", "7")


def test_alignment(tmp_path):
    kvs, tis, data = base_parts()
    wrong_type = kv("general.alignment", VT.UINT64, u64(32))
    expect(tmp_path, gguf_bytes(kvs + [wrong_type], tis, data), InputError, "general.alignment", "UINT64")
    for a in (0, 3, 48):
        al = kv("general.alignment", VT.UINT32, u32(a))
        expect(tmp_path, gguf_bytes(kvs + [al], tis, data, align=max(a, 1)), InputError, "general.alignment", str(a))
    al = kv("general.alignment", VT.UINT32, u32(64))
    tis64 = [ti("a", [4, 2], GT.F32, 0), ti("b", [32], GT.Q8_0, 64)]
    f = GGUFFile(write(tmp_path, gguf_bytes(kvs + [al], tis64, F32_DATA + b"\x00" * 32 + Q8_DATA, align=64)))
    assert f.alignment == 64 and f.tensors[1].offset_abs % 64 == 0 and bytes(f.data("b")) == Q8_DATA


def test_tensor_names(tmp_path):
    kvs, _, _ = base_parts()
    long = "x" * 64
    expect(tmp_path, gguf_bytes(kvs, [ti(long, [4], GT.F32, 0)], b"\x00" * 32), InputError, "tensor 0 name", "64 bytes")
    ok = "x" * 63
    assert GGUFFile(write(tmp_path, gguf_bytes(kvs, [ti(ok, [4], GT.F32, 0)], b"\x00" * 16))).tensors[0].name == ok
    dup = [ti("a", [4], GT.F32, 0), ti("a", [4], GT.F32, 32)]
    expect(tmp_path, gguf_bytes(kvs, dup, b"\x00" * 48), InputError, "tensor 1 name 'a'", "duplicate")
    expect(tmp_path, gguf_bytes(kvs, [ti(b"\xc3", [4], GT.F32, 0)], b"\x00" * 16), InputError, "tensor 0 name", "UTF-8")


def test_dims(tmp_path):
    kvs, _, _ = base_parts()
    five = gstr("a") + u32(5) + u64(1) * 5 + u32(GT.F32) + u64(0)
    expect(tmp_path, gguf_bytes(kvs, [five], b"\x00" * 4), InputError, "tensor 'a'", "n_dims", "5")
    big = gstr("a") + u32(2**32 - 1)
    expect(tmp_path, gguf_bytes(kvs, [big], b""), InputError, "n_dims")
    expect(tmp_path, gguf_bytes(kvs, [ti("a", [4, 2**63], GT.F32, 0)], b""), InputError, "tensor 'a'", "ne[1]", str(2**63))
    expect(tmp_path, gguf_bytes(kvs, [ti("a", [2**62, 4], GT.F32, 0)], b""), InputError, "tensor 'a'", "2^63-1 elements")
    expect(tmp_path, gguf_bytes(kvs, [ti("a", [2**31, 2**31], GT.F32, 0)], b""), InputError, "tensor 'a'", "needs", "bytes")


@pytest.mark.parametrize("t", [4, 5, 31, 36, 99, 2**31 - 1, -1])
def test_unknown_ggml_type(tmp_path, t):
    kvs, _, _ = base_parts()
    blob = gguf_bytes(kvs, [gstr("a") + u32(1) + u64(32) + i32(t) + u64(0)], b"\x00" * 128)
    expect(tmp_path, blob, InputError, "tensor 'a'", "type", str(t))


def test_block_size_multiple(tmp_path):
    kvs, _, _ = base_parts()
    expect(tmp_path, gguf_bytes(kvs, [ti("a", [48, 2], GT.Q4_K, 0)], b"\x00" * 512), InputError, "ne[0]", "48", "256")


def test_offsets(tmp_path):
    kvs, tis, data = base_parts()
    for off in (0, 16, 33, 64):  # overlap, misaligned, hole
        bad = [tis[0], ti("b", [32], GT.Q8_0, off)]
        expect(tmp_path, gguf_bytes(kvs, bad, data + b"\x00" * 64), InputError, "tensor 'b'", "offset", str(off))
    bad = [ti("a", [4, 2], GT.F32, 32), tis[1]]
    expect(tmp_path, gguf_bytes(kvs, bad, data), InputError, "tensor 'a'", "offset", "expected 0")


def test_data_inside_file_and_no_trailing_bytes(tmp_path):
    kvs, tis, data = base_parts()
    expect(tmp_path, gguf_bytes(kvs, tis, data[:40]), InputError, "tensor 'b'", "runs past")
    expect(tmp_path, gguf_bytes(kvs, tis, data + b"\x00"), InputError, "1 trailing bytes")
    expect(tmp_path, gguf_bytes(kvs, [], b"junk"), InputError, "trailing bytes")


@needs_ggml
def test_ggml_rejects_what_we_reject(tmp_path):
    """Sanity of the oracle: a selection of the malformed files above is refused by ggml too."""
    kvs, tis, data = base_parts()
    bad = [
        gguf_bytes(kvs, tis, data, magic=b"GGML"),
        gguf_bytes(kvs, tis, data, version=1),
        gguf_bytes(kvs, tis, data, n_tensors=2**63),
        gguf_bytes([kv("k", VT.UINT8, b"\x01"), kv("k", VT.UINT8, b"\x02")], [], b""),
        gguf_bytes([kv("k", VT.ARRAY, u32(VT.ARRAY) + u64(0))], [], b""),
        gguf_bytes(kvs + [kv("general.alignment", VT.UINT32, u32(3))], tis, data),
        gguf_bytes(kvs, [ti("x" * 64, [4], GT.F32, 0)], b"\x00" * 32),
        gguf_bytes(kvs, [ti("a", [4, 2**63], GT.F32, 0)], b""),
        gguf_bytes(kvs, [gstr("a") + u32(1) + u64(32) + i32(4) + u64(0)], b"\x00" * 32),
        gguf_bytes(kvs, [tis[0], ti("b", [32], GT.Q8_0, 16)], data),
    ]
    for blob in bad:
        p = write(tmp_path, blob)
        assert not ggml_accepts(p)
        with pytest.raises((InputError, UnsupportedError)):
            GGUFFile(p)
    assert ggml_accepts(write(tmp_path, gguf_bytes(kvs, tis, data)))


# --------------------------------------------------------------------- writer
def _gguf_py_file(path, alignment=None):
    w = gguf.GGUFWriter(path, "llama")
    if alignment:
        w.add_custom_alignment(alignment)
    w.add_uint8("t.u8", 255)
    w.add_int8("t.i8", -128)
    w.add_uint16("t.u16", 65535)
    w.add_int16("t.i16", -32768)
    w.add_uint32("t.u32", 2**32 - 1)
    w.add_int32("t.i32", -(2**31))
    w.add_float32("t.f32", 0.1)
    w.add_uint64("t.u64", 2**64 - 1)
    w.add_int64("t.i64", -(2**63))
    w.add_float64("t.f64", 1e300)
    w.add_bool("t.bool", False)
    w.add_string("t.str", "héllo\nworld")
    w.add_array("t.tokens", ["<s>", "</s>", "ü", ""])
    w.add_array("t.scores", [0.0, -1.5, 3.25])
    w.add_key_value("t.types", [1, 2, 3], VT.ARRAY, sub_type=VT.INT32)
    w.add_key_value("t.bools", [True, False], VT.ARRAY, sub_type=VT.BOOL)
    rng = np.random.default_rng(0)
    tensors = {
        "f32": rng.standard_normal((3, 5)).astype(np.float32),
        "f16": rng.standard_normal((7,)).astype(np.float16),
        "q4k": rng.integers(0, 256, (2, 144), dtype=np.uint8),
        "q80": rng.integers(0, 256, (1, 3, 34), dtype=np.uint8),
    }
    raw = {"q4k": (GT.Q4_K, (2, 256)), "q80": (GT.Q8_0, (1, 3, 32))}
    for name, a in tensors.items():
        w.add_tensor(name, a, raw_dtype=raw[name][0] if name in raw else None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    shapes = {n: raw[n][1] if n in raw else a.shape for n, a in tensors.items()}
    types = {"f32": QType.F32, "f16": QType.F16, "q4k": QType.Q4_K, "q80": QType.Q8_0}
    return tensors, shapes, types


@pytest.mark.parametrize("alignment", [None, 64])
def test_writer_matches_gguf_py_bytes(tmp_path, alignment):
    ref = tmp_path / "ref.gguf"
    tensors, shapes, types = _gguf_py_file(ref, alignment)
    f = GGUFFile(ref)
    out = io.BytesIO()
    w = GGUFStreamWriter(out)
    w.add_metadata(f.metadata)  # same KV, same order, typed arrays kept
    for name in tensors:
        assert w.add_tensor(name, shapes[name], types[name]) == tensors[name].nbytes
    w.write_header()
    for name, a in tensors.items():
        b = a.tobytes()
        for i in range(0, len(b), 7):  # several chunks per tensor
            w.write_data(name, b[i : i + 7])
    assert w.finish() == ref.stat().st_size
    assert out.getvalue() == ref.read_bytes()


def test_writer_explicit_values_match_gguf_py(tmp_path):
    ref = tmp_path / "ref.gguf"
    tensors, shapes, types = _gguf_py_file(ref)
    p = tmp_path / "mine.gguf"
    with GGUFStreamWriter(p) as w:
        w.add_kv("general.architecture", VT.STRING, "llama")
        for key, t, v in [
            ("t.u8", VT.UINT8, 255), ("t.i8", VT.INT8, -128), ("t.u16", VT.UINT16, 65535),
            ("t.i16", VT.INT16, -32768), ("t.u32", VT.UINT32, 2**32 - 1), ("t.i32", VT.INT32, -(2**31)),
            ("t.f32", VT.FLOAT32, 0.1), ("t.u64", VT.UINT64, 2**64 - 1), ("t.i64", VT.INT64, -(2**63)),
            ("t.f64", VT.FLOAT64, 1e300), ("t.bool", VT.BOOL, False), ("t.str", VT.STRING, "héllo\nworld"),
            ("t.tokens", VT.STRING, ["<s>", "</s>", "ü", ""]),
            ("t.scores", VT.FLOAT32, np.array([0.0, -1.5, 3.25], dtype=np.float32)),
            ("t.types", VT.INT32, np.array([1, 2, 3])),
        ]:
            w.add_kv(key, t, v)
        w.add_kv("t.bools", VT.ARRAY, TypedArray(VT.BOOL, [True, False]))
        for name in tensors:
            w.add_tensor(name, shapes[name], types[name])
        w.write_header()
        for name, a in tensors.items():
            w.write_data(name, a)
        w.finish()
    assert p.read_bytes() == ref.read_bytes()


def test_round_trip_with_gguf_py_reader(tmp_path):
    p = tmp_path / "mine.gguf"
    rng = np.random.default_rng(1)
    a = rng.standard_normal((4, 64)).astype(np.float32)
    q = rng.integers(0, 256, (4, 2 * 210), dtype=np.uint8)
    with GGUFStreamWriter(p) as w:
        w.add_kv("general.architecture", VT.STRING, "llama")
        w.add_kv("general.alignment", VT.UINT32, 128)
        w.add_kv("llama.context_length", VT.UINT32, 4096)
        w.add_kv("tokenizer.ggml.tokens", VT.STRING, ["a", "b"])
        w.add_tensor("a", a.shape, QType.F32)
        w.add_tensor("q", (4, 512), QType.Q6_K)
        w.add_tensor("empty", (0, 32), QType.F32)
        w.write_header()
        w.write_data("a", a)
        w.write_data("q", q)
        w.finish()
    r = gguf.GGUFReader(p)
    assert r.fields["llama.context_length"].contents() == 4096
    assert r.fields["tokenizer.ggml.tokens"].contents() == ["a", "b"]
    assert r.alignment == 128
    ra = {t.name: t for t in r.tensors}
    np.testing.assert_array_equal(ra["a"].data, a)
    assert ra["q"].tensor_type == GT.Q6_K and bytes(ra["q"].data.tobytes()) == q.tobytes()
    mine = GGUFFile(p)
    assert [t.name for t in mine.tensors] == ["a", "q", "empty"]
    assert mine.tensors[1].shape == (4, 512) and mine.tensors[2].shape == (0, 32)
    for t in mine.tensors:
        assert t.offset_abs == ra[t.name].data_offset
        assert t.offset_abs % 128 == 0


def test_reader_writer_copy_is_identical(tmp_path):
    ref = tmp_path / "ref.gguf"
    _gguf_py_file(ref)
    f = GGUFFile(ref)
    p = tmp_path / "copy.gguf"
    with GGUFStreamWriter(p) as w:
        w.add_metadata(f.metadata)
        for t in f.tensors:
            w.add_tensor(t.name, t.shape, t.qtype)
        w.write_header()
        for t in f.tensors:
            w.write_data(t.name, f.data(t.name))
        w.finish()
    assert p.read_bytes() == ref.read_bytes()


@needs_ggml
def test_ggml_n_dims_mode_matches_ggml_writer(tmp_path):
    """ggml_n_dims=True reproduces the header ggml's gguf_write_out (llama-quantize) emits."""
    shapes = {"row": (1, 64), "col": (64, 1), "cube": (1, 1, 32), "vec": (8,), "scalar": (), "m": (2, 3, 32)}
    p = tmp_path / "numpy_dims.gguf"
    q = tmp_path / "ggml_dims.gguf"
    for path, mode in ((p, False), (q, True)):
        with GGUFStreamWriter(path, ggml_n_dims=mode) as w:
            w.add_kv("general.architecture", VT.STRING, "llama")
            w.add_kv("a.f", VT.FLOAT32, [1.0, 2.0])
            w.add_kv("a.b", VT.BOOL, True)
            for n, s in shapes.items():
                w.add_tensor(n, s, QType.F32)
            w.write_header()
            for n, s in shapes.items():
                w.write_data(n, np.zeros(s, np.float32))
            w.finish()
    meta = ggml_meta(p)
    assert q.read_bytes()[: len(meta)] == meta
    assert p.read_bytes() != q.read_bytes()
    got = {t.name: t.shape for t in GGUFFile(q).tensors}
    assert got == {"row": (64,), "col": (64, 1), "cube": (32,), "vec": (8,), "scalar": (1,), "m": (2, 3, 32)}


def test_writer_streaming_rules(tmp_path):
    w = GGUFStreamWriter(io.BytesIO())
    w.add_tensor("a", (2, 4), QType.F32)
    w.add_tensor("z", (0,), QType.F32)
    w.add_tensor("b", (32,), QType.Q8_0)
    with pytest.raises(ValueError, match="before write_header"):
        w.write_data("a", b"")
    w.write_header()
    with pytest.raises(ValueError, match="expected tensor 'a'"):
        w.write_data("b", b"\x00" * 34)
    with pytest.raises(ValueError, match="no such tensor"):
        w.write_data("nope", b"\x00")
    w.write_data("a", b"\x00" * 16)
    with pytest.raises(ValueError, match="exceed"):
        w.write_data("a", b"\x00" * 17)
    with pytest.raises(ValueError, match="16 of 32"):
        w.finish()
    w.write_data("a", np.zeros(4, np.float32))
    w.write_data("z", b"")  # zero-byte tensor: skipped over, an empty write is accepted
    w.write_data("b", np.zeros(34, np.uint8))
    with pytest.raises(ValueError, match="already complete"):
        w.write_data("b", b"\x00")
    w.finish()
    with pytest.raises(ValueError, match="called twice"):
        w.finish()
    with pytest.raises(ValueError, match="before write_header"):
        w.add_kv("x", VT.UINT8, 1)


def test_writer_rejects_unrepresentable_values(tmp_path):
    w = GGUFStreamWriter(io.BytesIO())
    for t, v in [(VT.UINT8, 256), (VT.INT8, -129), (VT.UINT32, -1), (VT.UINT64, 2**64), (VT.INT32, 1.5),
                 (VT.UINT16, True), (VT.BOOL, 2), (VT.FLOAT32, "x"), (VT.FLOAT32, 1e300), (VT.STRING, 3),
                 (VT.UINT8, [1, 300]), (VT.INT16, np.array([40000]))]:
        with pytest.raises(OutputError) as ei:
            w.add_kv("k", t, v)
        assert "'k'" in str(ei.value)
    with pytest.raises(OutputError, match="array of arrays"):
        w.add_kv("k", VT.ARRAY, [[1]], VT.ARRAY)
    with pytest.raises(ValueError, match="element type"):
        w.add_kv("k", VT.ARRAY, [1, 2])
    w.add_kv("k", VT.UINT8, 1)
    with pytest.raises(ValueError, match="twice"):
        w.add_kv("k", VT.UINT8, 1)
    with pytest.raises(OutputError, match="64 bytes"):
        w.add_tensor("x" * 64, (4,), QType.F32)
    with pytest.raises(OutputError, match="block size"):
        w.add_tensor("t", (100,), QType.Q4_K)
    with pytest.raises(OutputError, match="more than 4"):
        w.add_tensor("t", (1, 1, 1, 1, 1), QType.F32)
    with pytest.raises(OutputError, match="unknown ggml type"):
        w.add_tensor("t", (4,), 4)
    w.add_kv("general.alignment", VT.UINT32, 48)
    with pytest.raises(OutputError, match="power of two"):
        w.write_header()


def test_set_kv_moves_key_to_end_like_ggml():
    w = GGUFStreamWriter(io.BytesIO())
    w.add_kv("a", VT.UINT32, 1)
    w.add_kv("general.file_type", VT.UINT32, 32)
    w.add_kv("b", VT.UINT32, 2)
    w.set_kv("general.file_type", VT.UINT32, 15)
    w.remove_kv("missing")
    assert list(w.metadata) == ["a", "b", "general.file_type"]
    assert w.metadata["general.file_type"] == (VT.UINT32, 15)


def test_writer_path_refuses_existing_file(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"keep")
    with pytest.raises(OutputError, match="already exists"):
        GGUFStreamWriter(p)
    assert p.read_bytes() == b"keep"


# --------------------------------------------------------------------- fuzz
def _fuzz_base() -> bytes:
    out = io.BytesIO()
    w = GGUFStreamWriter(out)
    w.add_kv("general.architecture", VT.STRING, "llama")
    w.add_kv("general.alignment", VT.UINT32, 32)
    w.add_kv("a.u8", VT.UINT8, 7)
    w.add_kv("a.b", VT.BOOL, True)
    w.add_kv("a.f64", VT.FLOAT64, 2.5)
    w.add_kv("tok", VT.STRING, ["x", "yy", "zzz"])
    w.add_kv("sc", VT.FLOAT32, [1.0, 2.0])
    w.add_tensor("f", (2, 8), QType.F32)
    w.add_tensor("q", (1, 32), QType.Q8_0)
    w.add_tensor("k", (256,), QType.Q4_K)
    w.write_header()
    w.write_data("f", np.arange(16, dtype=np.float32))
    w.write_data("q", bytes(range(34)))
    w.write_data("k", bytes(144))
    w.finish()
    return out.getvalue()


FUZZ_BASE = _fuzz_base()
EXTREMES = [0, 1, 2, 3, 4, 31, 32, 33, 63, 64, 255, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, len(FUZZ_BASE) - 1), st.integers(0, 255)),
    st.tuples(st.just("u64"), st.integers(0, len(FUZZ_BASE) - 8), st.sampled_from(EXTREMES)),
    st.tuples(st.just("u32"), st.integers(0, len(FUZZ_BASE) - 4), st.sampled_from(EXTREMES[:15])),
    st.tuples(st.just("cut"), st.integers(0, len(FUZZ_BASE)), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, len(FUZZ_BASE)), st.integers(0, 255)),
)


def apply_mutations(base: bytes, muts) -> bytes:
    b = bytearray(base)
    for kind, pos, val in muts:
        pos = min(pos, len(b))
        if kind == "flip" and pos < len(b):
            b[pos] = val
        elif kind == "u64" and pos + 8 <= len(b):
            b[pos : pos + 8] = struct.pack("<Q", val)
        elif kind == "u32" and pos + 4 <= len(b):
            b[pos : pos + 4] = struct.pack("<I", val % 2**32)
        elif kind == "cut":
            del b[pos:]
        elif kind == "insert":
            b[pos:pos] = bytes([val])
    return bytes(b)


_FUZZ_DIR = tempfile.mkdtemp(prefix="kquant-gguf-fuzz-")
atexit.register(shutil.rmtree, _FUZZ_DIR, True)


@settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(st.lists(mutation, min_size=1, max_size=4))
def test_fuzz_reader_only_raises_kquant_errors(muts):
    blob = apply_mutations(FUZZ_BASE, muts)
    p = os.path.join(_FUZZ_DIR, "f.gguf")
    with open(p, "wb") as fh:
        fh.write(blob)
    t0 = time.perf_counter()
    try:
        f = GGUFFile(p)
    except (InputError, UnsupportedError) as e:
        assert "\n" not in str(e)
        accepted = False
    else:
        accepted = True
        for t in f.tensors:
            assert len(f.data(t.name)) == t.nbytes
            try:
                t.require_qtype()
            except UnsupportedError:
                pass
        f.close()
    assert time.perf_counter() - t0 < 1.0
    if accepted and GGML is not None:
        assert ggml_accepts(p), "kquant accepted a file ggml rejects"


# --------------------------------------------------------------------- real files
VOCAB_DIR = str((refpipeline.llama_cpp_dir() or refpipeline.REFCONV_DIR / "llama.cpp") / "models")  # scripts/setup_refconv.sh
VOCABS = ["ggml-vocab-aquila.gguf", "ggml-vocab-bert-bge.gguf", "ggml-vocab-llama-spm.gguf", "ggml-vocab-phi-3.gguf"]


def ggml_keys_and_tokens(path):
    """KV keys and tokenizer.ggml.tokens as ggml's gguf.cpp reads them."""
    lib = GGML
    lib.gguf_get_n_kv.restype = ctypes.c_int64
    lib.gguf_get_n_kv.argtypes = [ctypes.c_void_p]
    lib.gguf_get_key.restype = ctypes.c_char_p
    lib.gguf_get_key.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    lib.gguf_find_key.restype = ctypes.c_int64
    lib.gguf_find_key.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.gguf_get_arr_n.restype = ctypes.c_size_t
    lib.gguf_get_arr_n.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    lib.gguf_get_arr_str.restype = ctypes.c_char_p
    lib.gguf_get_arr_str.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t]
    ctx = lib.gguf_init_from_file(os.fsencode(path), _GGUFInitParams(True, None))
    assert ctx
    try:
        keys = [lib.gguf_get_key(ctx, i).decode() for i in range(lib.gguf_get_n_kv(ctx))]
        k = lib.gguf_find_key(ctx, b"tokenizer.ggml.tokens")
        toks = [lib.gguf_get_arr_str(ctx, k, i) for i in range(lib.gguf_get_arr_n(ctx, k))]
        return keys, toks
    finally:
        lib.gguf_free(ctx)


@pytest.mark.parametrize("name", VOCABS)
def test_llama_cpp_vocab_files(name):
    """llama.cpp's own vocab GGUFs read, agree with ggml, and re-encode byte for byte."""
    path = os.path.join(VOCAB_DIR, name)
    if not os.path.exists(path):
        pytest.skip(f"{path} not unpacked")
    f = GGUFFile(path)
    toks = f.metadata["tokenizer.ggml.tokens"][1]
    assert toks.sub_type == VT.STRING and len(toks) > 1000
    out = io.BytesIO()
    w = GGUFStreamWriter(out)
    w.add_metadata(f.metadata)
    w.finish()
    orig = open(path, "rb").read()
    if f.version == 3:  # these files stop right after the KV pairs; the writer pads to the alignment
        assert out.getvalue() == orig + b"\x00" * (-len(orig) % 32)
    else:  # v2: same layout once the version field is set to 3
        assert out.getvalue()[8:] == orig[8:] + b"\x00" * (-len(orig) % 32)
    if GGML is not None:
        keys, gtoks = ggml_keys_and_tokens(path)
        assert list(f.metadata) == keys
        # ggml's C strings stop at a NUL; compare the bytes up to there
        assert [t.encode("utf-8", "surrogateescape").split(b"\x00")[0] for t in toks] == gtoks


def test_numpy_array_values_are_flattened():
    w = GGUFStreamWriter(io.BytesIO())
    w.add_kv("k", VT.INT32, np.array([[1, 2], [3, 4]]))
    w.add_kv("f", VT.FLOAT32, np.array([1.5, 2.5], np.float64))
    assert w.metadata["k"] == (VT.ARRAY, [1, 2, 3, 4]) and w.metadata["k"][1].sub_type == VT.INT32
    with pytest.raises(OutputError, match="overflow"):
        w.add_kv("g", VT.FLOAT32, np.array([1e300]))


@pytest.mark.parametrize("t,items", [
    (VT.FLOAT32, [0.0, -1.5, 1e-45, 3.4028235e38, 3.4028235677973366e38, float("inf"), float("nan"), 1, 2**60 + 1]),
    (VT.FLOAT64, [0.1, 2**70, -3]), (VT.INT32, [0, -2**31, 2**31 - 1]), (VT.UINT64, [0, 2**64 - 1, 2**63]),
    (VT.UINT8, [0, 255]), (VT.INT64, []), (VT.FLOAT32, [1.0, np.float32(2.5), 3]), (VT.INT32, [1, True]),
    (VT.FLOAT32, [1.0, True]), (VT.FLOAT32, [1.0, 1e300]), (VT.UINT8, [1, 256]), (VT.UINT64, [-1, 2**64 - 1]),
    (VT.FLOAT32, [1.0, 10**400]), (VT.INT32, [1, 2.0]), (VT.BOOL, [True, 0]), (VT.FLOAT32, [1.0, "x"]),
])
def test_list_arrays_encode_as_item_by_item(t, items):
    """A list array (a vocabulary's scores and token types) is encoded through numpy when its items are
    plain ints / floats: the same bytes, or the same refusal, as encoding it item by item."""
    w = GGUFStreamWriter(io.BytesIO())

    def one_by_one():
        return b"".join(w._encode_scalar("k", t, v) for v in items)

    try:
        want = one_by_one()
    except OutputError:
        with pytest.raises(OutputError, match="'k'"):
            w.add_kv("k", t, items)
        return
    w.add_kv("k", t, items)
    assert w._kv["k"][2][16:] == want


def test_writer_inside_atomic_output(tmp_path):
    from kquant.io.fsutil import atomic_output

    final = tmp_path / "model.gguf"
    with atomic_output(final) as fh:
        w = GGUFStreamWriter(fh, name=final)
        w.add_kv("general.architecture", VT.STRING, "llama")
        with pytest.raises(OutputError) as ei:
            w.add_kv("x", VT.UINT8, 300)
        assert str(ei.value).startswith(f"{final}: ")
        w.add_tensor("t", (2, 32), QType.Q8_0)
        w.write_header()
        with pytest.raises(ValueError, match="exceed"):
            w.write_data("t", b"\x00" * 100)
        with pytest.raises(ValueError, match="before write_header"):
            w.add_tensor("u", (4,), QType.F32)
        w.write_data("t", b"\x00" * 68)
        w.finish()
    f = GGUFFile(final)
    assert f.tensors[0].shape == (2, 32) and f.tensors[0].nbytes == 68
