"""Strict safetensors reader, Checkpoint folder rules and the writer: every malformed header
built by hand, files cross-checked with the `safetensors` package, and a bounded fuzz."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import struct
import tempfile
import time
import tracemalloc

import numpy as np
import pytest
import safetensors
import safetensors.numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kquant.errors import InputError, UnsupportedError
from kquant.io.safetensors import Checkpoint, SafetensorsFile, fp32_to_bf16_bits, write_safetensors


# --------------------------------------------------------------------- builders
def st_bytes(header, data=b"", *, raw_header: bytes | None = None, header_len: int | None = None) -> bytes:
    h = raw_header if raw_header is not None else json.dumps(header).encode()
    n = len(h) if header_len is None else header_len
    return struct.pack("<Q", n) + h + data


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


BASE_HEADER = {"__metadata__": {"format": "pt"}, "a": entry("F32", [2, 2], 0, 16), "b": entry("F16", [3], 16, 22)}
BASE_DATA = np.arange(4, dtype=np.float32).tobytes() + np.array([1, 2, 3], np.float16).tobytes()


def write(tmp_path, blob, name="x.safetensors"):
    p = tmp_path / name
    p.write_bytes(blob)
    return p


def expect(tmp_path, blob, exc, *words):
    p = write(tmp_path, blob)
    with pytest.raises(exc) as ei:
        SafetensorsFile(p)
    msg = str(ei.value)
    assert "\n" not in msg and str(p) in msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


def with_entry(name, e, data=BASE_DATA, header=BASE_HEADER):
    h = dict(header)
    h[name] = e
    return st_bytes(h, data)


# --------------------------------------------------------------------- valid files
def test_base_file(tmp_path):
    with SafetensorsFile(write(tmp_path, st_bytes(BASE_HEADER, BASE_DATA))) as f:
        assert f.metadata == {"format": "pt"}
        assert list(f.tensors) == ["a", "b"]
        a = f.tensors["a"]
        assert (a.dtype, a.shape, a.nbytes, a.numel) == ("F32", (2, 2), 16, 4)
        assert a.offset == 8 + f.header_len
        np.testing.assert_array_equal(f.read("a"), np.arange(4, dtype=np.float32).reshape(2, 2))
        assert not f.read("a").flags.writeable
        np.testing.assert_array_equal(f.read("b"), np.array([1, 2, 3], np.float32))
        assert f.read("b").dtype == np.float32
        assert bytes(f.read_raw("b")) == np.array([1, 2, 3], np.float16).tobytes()


def test_tensors_listed_in_offset_order(tmp_path):
    h = {"z": entry("F32", [1], 0, 4), "a": entry("F32", [1], 8, 12), "m": entry("F32", [1], 4, 8)}
    f = SafetensorsFile(write(tmp_path, st_bytes(h, b"\x00" * 12)))
    assert list(f.tensors) == ["z", "m", "a"]


def test_empty_and_zero_size(tmp_path):
    f = SafetensorsFile(write(tmp_path, st_bytes({})))
    assert f.tensors == {} and f.metadata is None
    h = {"e": entry("BF16", [0, 4], 0, 0), "s": entry("F32", [], 0, 4)}
    f = SafetensorsFile(write(tmp_path, st_bytes(h, b"\x00\x00\x80\x3f")))
    assert f.read("e").shape == (0, 4) and f.read("s") == np.float32(1.0) and f.read("s").shape == ()


def test_bf16_and_rows(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3, 5)).astype(np.float32)
    bits = fp32_to_bf16_bits(x)
    p = tmp_path / "b.safetensors"
    write_safetensors(p, {"w": bits, "h": x.astype(np.float16), "f": x}, dtype={"w": "BF16", "h": "F16", "f": "F32"})
    widened = (bits.astype(np.uint32) << 16).view(np.float32)
    with SafetensorsFile(p) as f:
        np.testing.assert_array_equal(f.read("w"), widened)
        for name, want in (("w", widened), ("h", x.astype(np.float16).astype(np.float32)), ("f", x)):
            for a, b in ((0, 6), (2, 4), (5, 6), (3, 3)):
                r = f.read_rows(name, a, b)
                assert r.shape == (b - a, 3, 5) and r.dtype == np.float32
                np.testing.assert_array_equal(r, want[a:b])
        with pytest.raises(ValueError, match="rows"):
            f.read_rows("w", 4, 7)
        with pytest.raises(ValueError, match="rows"):
            f.read_rows("w", 3, 2)
        with pytest.raises(InputError, match="no tensor named 'nope'"):
            f.read("nope")


def test_read_rows_memory_is_bounded(tmp_path):
    rows, cols = 4096, 1024  # 8 MiB of BF16
    p = tmp_path / "big.safetensors"
    write_safetensors(p, {"emb": np.ones((rows, cols), np.uint16)}, dtype="BF16")
    with SafetensorsFile(p) as f:
        tracemalloc.start()
        try:
            r = f.read_rows("emb", 100, 116)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert r.shape == (16, cols)
        assert peak < 16 * cols * 4 * 3  # a few row blocks, nowhere near the 8 MiB tensor


def test_bf16_rounding_matches_ggml():
    x = np.array(
        [1.0, 1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, -1 - 2**-8, 3.0e38, np.inf, -np.inf, 1e-45, -0.0],
        dtype=np.float32,
    )
    assert fp32_to_bf16_bits(x).tolist() == [0x3F80, 0x3F80, 0x3F82, 0x3F81, 0xBF80, 0x7F62, 0x7F80, 0xFF80, 0x0000, 0x8000]
    nan = np.array([0x7F800001, 0xFFC00000], np.uint32).view(np.float32)
    assert fp32_to_bf16_bits(nan).tolist() == [0x7FC0, 0xFFC0]
    try:
        from oracle import reference

        lib = reference._lib()
    except Exception:
        return
    import ctypes

    rng = np.random.default_rng(3)
    y = (rng.standard_normal(4096) * np.exp(rng.uniform(-40, 40, 4096))).astype(np.float32)
    out = np.zeros(4096, np.uint16)
    lib.ggml_fp32_to_bf16_row_ref.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    lib.ggml_fp32_to_bf16_row_ref(y.ctypes.data, out.ctypes.data, 4096)
    np.testing.assert_array_equal(fp32_to_bf16_bits(y), out)


def test_writer_output_read_by_safetensors_package(tmp_path):
    rng = np.random.default_rng(1)
    t = {"f32": rng.standard_normal((3, 4)).astype(np.float32), "f16": rng.standard_normal(5).astype(np.float16),
         "i64": np.arange(3, dtype=np.int64), "bf": np.array([0x3F80, 0x4000], np.uint16)}
    p = tmp_path / "w.safetensors"
    n = write_safetensors(p, t, {"format": "pt", "x": "é"}, dtype={"i64": "I64", "bf": "BF16"})
    assert n == p.stat().st_size and (n - 8 - struct.unpack("<Q", p.read_bytes()[:8])[0]) == 48 + 10 + 24 + 4
    with safetensors.safe_open(str(p), "numpy") as g:
        assert g.metadata() == {"format": "pt", "x": "é"}
        np.testing.assert_array_equal(g.get_tensor("f32"), t["f32"])
        np.testing.assert_array_equal(g.get_tensor("f16"), t["f16"])
        np.testing.assert_array_equal(g.get_tensor("i64"), t["i64"])
    raw = dict(safetensors.deserialize(p.read_bytes()))
    assert raw["bf"]["dtype"] == "BF16" and bytes(raw["bf"]["data"]) == t["bf"].tobytes()
    with SafetensorsFile(p) as f:
        np.testing.assert_array_equal(f.read("bf"), np.array([1.0, 2.0], np.float32))
        with pytest.raises(UnsupportedError) as ei:
            f.read("i64")
        assert "'i64'" in str(ei.value) and "I64" in str(ei.value)
        with pytest.raises(UnsupportedError):
            f.read_rows("i64", 0, 1)
        assert bytes(f.read_raw("i64")) == t["i64"].tobytes()


def test_reads_files_written_by_safetensors_package(tmp_path):
    p = tmp_path / "ref.safetensors"
    t = {"b": np.ones((2, 3), np.float32), "a": np.arange(4, dtype=np.float16), "c": np.zeros(3, np.uint8)}
    safetensors.numpy.save_file(t, str(p), metadata={"k": "v"})
    with SafetensorsFile(p) as f:
        assert f.metadata == {"k": "v"}
        np.testing.assert_array_equal(f.read("b"), t["b"])
        np.testing.assert_array_equal(f.read("a"), t["a"].astype(np.float32))
        assert f.tensors["c"].dtype == "U8"


# --------------------------------------------------------------------- malformed files
def test_file_too_small_and_not_regular(tmp_path):
    expect(tmp_path, b"\x00" * 7, InputError, "7 bytes")
    with pytest.raises(InputError, match="not a regular file"):
        SafetensorsFile(tmp_path)
    with pytest.raises(InputError, match="cannot open"):
        SafetensorsFile(tmp_path / "missing.safetensors")
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        SafetensorsFile(fifo)  # must not block


@pytest.mark.parametrize("n", [100_000_001, 2**63, 2**64 - 1])
def test_header_length_capped_before_allocating(tmp_path, n):
    t0 = time.perf_counter()
    expect(tmp_path, st_bytes(BASE_HEADER, BASE_DATA, header_len=n), InputError, "header length", str(n), "limit")
    assert time.perf_counter() - t0 < 0.5


def test_header_length_past_file(tmp_path):
    expect(tmp_path, st_bytes(BASE_HEADER, b"", header_len=1000), InputError, "header length 1000", "past the end")


def test_header_text(tmp_path):
    expect(tmp_path, st_bytes(None, raw_header=b'{"a\xff": 1}'), InputError, "UTF-8")
    expect(tmp_path, st_bytes(None, raw_header=b"{not json"), InputError, "invalid JSON")
    expect(tmp_path, st_bytes(None, raw_header=b"[1, 2]"), InputError, "header is a JSON list")
    expect(tmp_path, st_bytes(None, raw_header=b'"x"'), InputError, "expected an object")
    nested = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    t0 = time.perf_counter()
    expect(tmp_path, st_bytes(None, raw_header=nested), InputError, "nested too deeply")
    assert time.perf_counter() - t0 < 1.0
    nan = b'{"a": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 0]}}'
    expect(tmp_path, st_bytes(None, raw_header=nan), InputError, "NaN")
    inf = b'{"a": {"dtype": "F32", "shape": [Infinity], "data_offsets": [0, 0]}}'
    expect(tmp_path, st_bytes(None, raw_header=inf), InputError, "Infinity")
    big = b'{"a": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 0]}}'
    expect(tmp_path, st_bytes(None, raw_header=big), InputError, "invalid JSON")


def test_trailing_spaces_in_header_accepted(tmp_path):
    h = json.dumps(BASE_HEADER).encode() + b"       "
    assert list(SafetensorsFile(write(tmp_path, st_bytes(None, BASE_DATA, raw_header=h))).tensors) == ["a", "b"]


def test_duplicate_names(tmp_path):
    raw = b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}'
    expect(tmp_path, st_bytes(None, b"\x00" * 8, raw_header=raw), InputError, "duplicate key 'a'")
    raw = b'{"__metadata__": {"k": "1", "k": "2"}}'
    expect(tmp_path, st_bytes(None, raw_header=raw), InputError, "duplicate key 'k'")


def test_metadata_field(tmp_path):
    for md, word in (([1], "__metadata__"), ({"k": 1}, "__metadata__.'k'"), ("x", "__metadata__"), ({"k": None}, "__metadata__.'k'"),
                     ({"a\nb": None}, "__metadata__.'a\\nb'")):  # a key with a newline: still one line
        h = {"__metadata__": md}
        expect(tmp_path, st_bytes(h), InputError, word)


def test_entry_structure(tmp_path):
    expect(tmp_path, with_entry("c", [1, 2]), InputError, "tensor 'c'", "expected an object")
    expect(tmp_path, with_entry("c", {"dtype": "F32", "shape": [0]}), InputError, "tensor 'c'", "missing field 'data_offsets'")
    e = entry("F32", [0], 22, 22)
    e["extra"] = 1
    expect(tmp_path, with_entry("c", e), InputError, "tensor 'c'", "unexpected field 'extra'")


@pytest.mark.parametrize("dtype", ["F31", "f32", 32, None, "", ["F32"]])
def test_unknown_dtype(tmp_path, dtype):
    expect(tmp_path, with_entry("c", entry(dtype, [0], 22, 22)), InputError, "tensor 'c'", "dtype", repr(dtype)[:10])


@pytest.mark.parametrize(
    "shape, word",
    [("2", "shape"), ({"0": 1}, "shape"), ([True], "shape[0]"), ([1.0], "shape[0]"), ([-1], "shape[0]"),
     ([2, None], "shape[1]"), ([2] * 65, "65 dimensions")],
)
def test_bad_shapes(tmp_path, shape, word):
    expect(tmp_path, with_entry("c", entry("F32", shape, 22, 22)), InputError, "tensor 'c'", word)


def test_shape_overflow(tmp_path):
    t0 = time.perf_counter()
    expect(tmp_path, with_entry("c", entry("F32", [2**62, 2**62, 2**62], 22, 22)), InputError, "tensor 'c'", "needs more bytes")
    expect(tmp_path, with_entry("c", entry("F32", [2**32] * 64, 22, 22)), InputError, "needs more bytes")
    # a zero anywhere makes the product 0, however large the rest
    assert SafetensorsFile(write(tmp_path, with_entry("c", entry("F32", [2**62, 0, 2**62], 22, 22)))).tensors["c"].nbytes == 0
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize(
    "offs, word",
    [([0], "data_offsets"), ([0, 1, 2], "data_offsets"), ("0,4", "data_offsets"), ([0.0, 4], "data_offsets"),
     ([False, 4], "data_offsets"), ([-4, 0], "0 <= begin"), ([8, 4], "0 <= begin"), ([22, 2**64], "past the")],
)
def test_bad_offsets(tmp_path, offs, word):
    e = {"dtype": "F32", "shape": [1], "data_offsets": offs}
    expect(tmp_path, with_entry("c", e), InputError, "tensor 'c'", word)


def test_size_mismatch(tmp_path):
    h = dict(BASE_HEADER, a=entry("F32", [2, 1], 0, 16))
    expect(tmp_path, st_bytes(h, BASE_DATA), InputError, "tensor 'a'", "spans 16 bytes", "needs 8")
    h = dict(BASE_HEADER, a=entry("F32", [2, 3], 0, 16))
    expect(tmp_path, st_bytes(h, BASE_DATA), InputError, "tensor 'a'", "needs more bytes than the 22")
    h = {"f4": entry("F4", [3], 0, 2)}
    expect(tmp_path, st_bytes(h, b"\x00\x00"), InputError, "tensor 'f4'", "whole number of bytes")
    h = {"f4": entry("F4", [4], 0, 2)}
    f = SafetensorsFile(write(tmp_path, st_bytes(h, b"\x00\x00")))
    with pytest.raises(UnsupportedError, match="F4"):
        f.read("f4")


def test_layout_holes_overlaps_trailing(tmp_path):
    hole = {"a": entry("F32", [1], 0, 4), "b": entry("F32", [1], 8, 12)}
    expect(tmp_path, st_bytes(hole, b"\x00" * 12), InputError, "tensor 'b'", "hole after byte 4")
    not_zero = {"a": entry("F32", [1], 4, 8)}
    expect(tmp_path, st_bytes(not_zero, b"\x00" * 8), InputError, "tensor 'a'", "hole after byte 0")
    overlap = {"a": entry("F32", [2], 0, 8), "b": entry("F32", [1], 4, 8)}
    expect(tmp_path, st_bytes(overlap, b"\x00" * 8), InputError, "tensor 'b'", "overlaps")
    same = {"a": entry("F32", [1], 0, 4), "b": entry("F32", [1], 0, 4)}
    expect(tmp_path, st_bytes(same, b"\x00" * 4), InputError, "overlaps")
    expect(tmp_path, st_bytes(BASE_HEADER, BASE_DATA + b"\x00"), InputError, "1 trailing bytes")
    expect(tmp_path, st_bytes(BASE_HEADER, BASE_DATA[:-1]), InputError, "tensor 'b'", "past the 21 data bytes")


def test_other_dtypes_recognised(tmp_path):
    h = {}
    pos = 0
    for dt, size in (("I64", 8), ("U8", 1), ("F64", 8), ("BOOL", 1), ("F8_E4M3", 1), ("F8_E5M2", 1), ("I32", 4), ("C64", 8)):
        h[dt.lower()] = entry(dt, [2], pos, pos + 2 * size)
        pos += 2 * size
    f = SafetensorsFile(write(tmp_path, st_bytes(h, b"\x00" * pos)))
    for name, info in f.tensors.items():
        with pytest.raises(UnsupportedError) as ei:
            f.read(name)
        assert repr(name) in str(ei.value) and info.dtype in str(ei.value)
        assert len(f.read_raw(name)) == info.nbytes


# --------------------------------------------------------------------- Checkpoint folders
def make(folder, name, tensors):
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(folder / name, {k: np.full(v, i, np.float32) for i, (k, v) in enumerate(tensors.items())})


def index(folder, weight_map, extra=None):
    doc = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    doc.update(extra or {})
    (folder / "model.safetensors.index.json").write_text(json.dumps(doc))


def expect_ckpt(path, exc, *words):
    with pytest.raises(exc) as ei:
        Checkpoint.open(path)
    msg = str(ei.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


def test_single_file_folder_and_path(tmp_path):
    make(tmp_path, "model.safetensors", {"b": (2, 3), "a": (4,)})
    for p in (tmp_path, tmp_path / "model.safetensors"):
        with Checkpoint.open(p, config={"x": 1}) as c:
            assert list(c.tensors) == ["a", "b"]  # convert_hf_to_gguf.py order: by name
            assert c.folder == tmp_path and c.config == {"x": 1}
            np.testing.assert_array_equal(c.read("b"), np.zeros((2, 3), np.float32))
            np.testing.assert_array_equal(c.read_rows("b", 1, 2), np.zeros((1, 3), np.float32))
            assert len(c.read_raw("a")) == 16
            with pytest.raises(InputError, match="no tensor named 'zz'"):
                c.read("zz")


def sharded(tmp_path):
    make(tmp_path, "model-00001-of-00002.safetensors", {"z.w": (2,), "y.w": (2,)})
    make(tmp_path, "model-00002-of-00002.safetensors", {"a.w": (3,), "x.w": (1,)})
    wm = {"z.w": "model-00001-of-00002.safetensors", "y.w": "model-00001-of-00002.safetensors",
          "a.w": "model-00002-of-00002.safetensors", "x.w": "model-00002-of-00002.safetensors"}
    return wm


def test_index_and_shards(tmp_path):
    wm = sharded(tmp_path)
    index(tmp_path, wm)
    make(tmp_path, "model.safetensors", {"stray": (1,)})  # not in the index: ignored, like convert_hf_to_gguf.py
    for p in (tmp_path, tmp_path / "model.safetensors.index.json"):
        with Checkpoint.open(p) as c:
            assert list(c.tensors) == ["y.w", "z.w", "a.w", "x.w"]
            assert os.path.basename(c.tensors["a.w"].path) == "model-00002-of-00002.safetensors"
            np.testing.assert_array_equal(c.read("a.w"), np.zeros(3, np.float32))


def test_complete_shards_without_index(tmp_path):
    sharded(tmp_path)
    with Checkpoint.open(tmp_path) as c:
        assert list(c.tensors) == ["y.w", "z.w", "a.w", "x.w"]


def test_incomplete_or_ambiguous_shards_without_index(tmp_path):
    make(tmp_path, "model-00001-of-00002.safetensors", {"a": (1,)})
    expect_ckpt(tmp_path, InputError, "incomplete", "missing part 2")
    make(tmp_path, "model-00002-of-00003.safetensors", {"b": (1,)})
    expect_ckpt(tmp_path, InputError, "ambiguous")
    d = tmp_path / "d2"
    make(d, "model.safetensors", {"a": (1,)})
    make(d, "model-00001-of-00001.safetensors", {"b": (1,)})
    expect_ckpt(d, InputError, "ambiguous", "model.safetensors")


def test_duplicate_tensor_across_unindexed_shards(tmp_path):
    make(tmp_path, "model-00001-of-00002.safetensors", {"a": (1,)})
    make(tmp_path, "model-00002-of-00002.safetensors", {"a": (1,)})
    expect_ckpt(tmp_path, InputError, "tensor 'a' is in both")


def test_index_weight_map_field(tmp_path):
    make(tmp_path, "model-00001-of-00001.safetensors", {"a": (1,)})
    p = tmp_path / "model.safetensors.index.json"
    for doc, word in (({}, "weight_map"), ({"weight_map": []}, "weight_map"), ({"weight_map": {}}, "empty"),
                      ({"weight_map": {"a": 5}}, "shard 5"), ([], "expected an object")):
        p.write_text(json.dumps(doc))
        expect_ckpt(tmp_path, InputError, str(p), word)
    p.write_text('{"weight_map": {"a": "x", "a": "y"}}')
    expect_ckpt(tmp_path, InputError, "duplicate key 'a'")
    p.write_bytes(b"\xff{}")
    expect_ckpt(tmp_path, InputError, "UTF-8")


@pytest.mark.parametrize("shard, word", [("/etc/passwd", "absolute"), ("../x.safetensors", ".."),
                                         ("a/../../x.safetensors", ".."), ("", "non-empty"), ("a\\b", "backslash"),
                                         ("nope.safetensors", "does not exist")])
def test_index_shard_paths(tmp_path, shard, word):
    make(tmp_path, "model-00001-of-00001.safetensors", {"a": (1,)})
    index(tmp_path, {"a": shard})
    expect_ckpt(tmp_path, InputError, "weight_map", word)


def test_index_shard_symlink_outside(tmp_path):
    outside = tmp_path / "outside"
    make(outside, "w.safetensors", {"a": (1,)})
    folder = tmp_path / "m"
    folder.mkdir()
    os.symlink(outside / "w.safetensors", folder / "model-00001-of-00001.safetensors")
    index(folder, {"a": "model-00001-of-00001.safetensors"})
    expect_ckpt(folder, InputError, "resolves outside")
    # a symlink that stays inside the folder is fine
    make(folder, "real.safetensors", {"a": (1,)})
    os.unlink(folder / "model-00001-of-00001.safetensors")
    os.symlink("real.safetensors", folder / "model-00001-of-00001.safetensors")
    assert list(Checkpoint.open(folder).tensors) == ["a"]


def test_unindexed_file_symlink_outside(tmp_path):
    outside = tmp_path / "outside"
    make(outside, "w.safetensors", {"a": (1,)})
    folder = tmp_path / "m"
    folder.mkdir()
    os.symlink(outside / "w.safetensors", folder / "model.safetensors")
    expect_ckpt(folder, InputError, "model.safetensors", "resolves outside")


def test_hugging_face_cache_snapshot_symlinks_into_blobs(tmp_path):
    repo = tmp_path / "hub" / "models--org--name"
    blobs, snap = repo / "blobs", repo / "snapshots" / "0123abcd"
    make(blobs, "sha-1", {"a.w": (2,)})
    make(blobs, "sha-2", {"b.w": (3,)})
    snap.mkdir(parents=True)
    os.symlink("../../blobs/sha-1", snap / "model-00001-of-00002.safetensors")
    os.symlink("../../blobs/sha-2", snap / "model-00002-of-00002.safetensors")
    index(snap, {"a.w": "model-00001-of-00002.safetensors", "b.w": "model-00002-of-00002.safetensors"})
    with Checkpoint.open(snap) as c:
        assert list(c.tensors) == ["a.w", "b.w"]
    os.unlink(snap / "model-00002-of-00002.safetensors")
    make(tmp_path / "elsewhere", "x", {"b.w": (3,)})
    os.symlink(tmp_path / "elsewhere" / "x", snap / "model-00002-of-00002.safetensors")
    expect_ckpt(snap, InputError, "resolves outside")


def test_index_consistency(tmp_path):
    wm = sharded(tmp_path)
    index(tmp_path, dict(wm, **{"a.w": "model-00001-of-00002.safetensors"}))
    expect_ckpt(tmp_path, InputError, "'a.w'", "model-00001-of-00002.safetensors", "but it is in")
    index(tmp_path, dict(wm, extra="model-00002-of-00002.safetensors"))
    expect_ckpt(tmp_path, InputError, "'extra'", "missing from shard")
    wm2 = dict(wm)
    del wm2["x.w"]
    index(tmp_path, wm2)
    expect_ckpt(tmp_path, InputError, "'x.w'", "not listed")
    make(tmp_path, "model-00003-of-00002.safetensors", {"a.w": (3,)})
    index(tmp_path, dict(wm, **{"q": "model-00003-of-00002.safetensors"}))
    expect_ckpt(tmp_path, InputError, "'a.w'")


def test_pickle_only_and_no_weights(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x02 not really a pickle")
    expect_ckpt(tmp_path, UnsupportedError, "pickle", "pytorch_model.bin")
    expect_ckpt(tmp_path / "pytorch_model.bin", UnsupportedError, "pickle")
    e = tmp_path / "empty"
    e.mkdir()
    (e / "config.json").write_text("{}")
    expect_ckpt(e, InputError, "no weights")
    expect_ckpt(tmp_path / "missing", InputError, "no such")


def test_consolidated_and_other_safetensors(tmp_path):
    make(tmp_path, "consolidated.safetensors", {"a": (1,)})
    expect_ckpt(tmp_path, UnsupportedError, "consolidated")
    d = tmp_path / "d"
    make(d, "adapter_model.safetensors", {"a": (1,)})
    expect_ckpt(d, InputError, "adapter_model.safetensors")


def test_bad_shard_file_is_reported(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 4)
    expect_ckpt(tmp_path, InputError, "model.safetensors", "4 bytes")


# --------------------------------------------------------------------- fuzz
def _fuzz_base() -> bytes:
    d = tempfile.mkdtemp(prefix="kquant-st-base-")
    atexit.register(shutil.rmtree, d, True)
    p = os.path.join(d, "b.safetensors")
    write_safetensors(
        p,
        {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "h": np.ones(4, np.float16), "b": np.array([0x3F80] * 2, np.uint16),
         "i": np.arange(2, dtype=np.int64)},
        {"format": "pt"},
        dtype={"b": "BF16", "i": "I64"},
    )
    with open(p, "rb") as fh:
        return fh.read()


FUZZ_BASE = _fuzz_base()
HEADER_END = 8 + struct.unpack("<Q", FUZZ_BASE[:8])[0]
JSON_BYTES = b'{}[]",:0123456789-.eE tfnaNI\\u' + bytes([0x80, 0xFF, 0x00])

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, HEADER_END - 1), st.sampled_from(list(JSON_BYTES))),
    st.tuples(st.just("flip"), st.integers(0, len(FUZZ_BASE) - 1), st.integers(0, 255)),
    st.tuples(st.just("len"), st.just(0), st.sampled_from([0, 1, 7, 8, HEADER_END - 9, HEADER_END - 7, 2**32, 2**64 - 1])),
    st.tuples(st.just("cut"), st.integers(0, len(FUZZ_BASE)), st.just(0)),
    st.tuples(st.just("insert"), st.integers(8, HEADER_END), st.sampled_from(list(JSON_BYTES))),
    st.tuples(st.just("delete"), st.integers(8, HEADER_END - 1), st.just(0)),
)


def apply_mutations(base: bytes, muts) -> bytes:
    b = bytearray(base)
    for kind, pos, val in muts:
        if kind == "flip" and pos < len(b):
            b[pos] = val
        elif kind == "len" and len(b) >= 8:
            b[0:8] = struct.pack("<Q", val)
        elif kind == "cut":
            del b[pos:]
        elif kind == "insert" and pos <= len(b):
            b[pos:pos] = bytes([val])
        elif kind == "delete" and pos < len(b):
            del b[pos]
    return bytes(b)


_FUZZ_DIR = tempfile.mkdtemp(prefix="kquant-st-fuzz-")
atexit.register(shutil.rmtree, _FUZZ_DIR, True)


def _exercise(path: str) -> bool:
    try:
        f = SafetensorsFile(path)
    except (InputError, UnsupportedError) as e:
        assert "\n" not in str(e)
        return False
    for name, info in f.tensors.items():
        assert len(f.read_raw(name)) == info.nbytes
        try:
            a = f.read(name)
            assert a.dtype == np.float32 and a.shape == info.shape
            if info.shape and info.shape[0]:
                assert f.read_rows(name, 0, 1).shape == (1, *info.shape[1:])
        except UnsupportedError:
            pass
    f.close()
    return True


@settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(st.lists(mutation, min_size=1, max_size=4))
def test_fuzz_bytes_only_raises_kquant_errors(muts):
    blob = apply_mutations(FUZZ_BASE, muts)
    p = os.path.join(_FUZZ_DIR, "f.safetensors")
    with open(p, "wb") as fh:
        fh.write(blob)
    t0 = time.perf_counter()
    accepted = _exercise(p)
    assert time.perf_counter() - t0 < 1.0
    if accepted:  # the reference parser accepts everything we accept
        safetensors.deserialize(blob)


json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(st.sampled_from(["w", "h", "b", "i", "__metadata__"]), st.sampled_from(["dtype", "shape", "data_offsets", None]), json_value)
def test_fuzz_header_values_only_raise_kquant_errors(name, field, value):
    n = struct.unpack("<Q", FUZZ_BASE[:8])[0]
    header = json.loads(FUZZ_BASE[8 : 8 + n])
    if field is None or name == "__metadata__":
        header[name] = value
    else:
        header[name][field] = value
    blob = st_bytes(header, FUZZ_BASE[8 + n :])
    p = os.path.join(_FUZZ_DIR, "h.safetensors")
    with open(p, "wb") as fh:
        fh.write(blob)
    if _exercise(p):
        safetensors.deserialize(blob)
