"""kquant.plan.imatrix against llama.cpp's own imatrix reading and llama_model_quantize.

1. Files: GGUF importance matrices written with gguf-py exactly as tools/imatrix/imatrix.cpp
   save_imatrix writes them (general.type, imatrix.datasets / chunk_count / chunk_size, per entry
   `<name>.in_sum2` F32 [n, n_mat] and `<name>.counts` F32 [1, n_mat]), and legacy .dat files
   packed with struct as save_imatrix_legacy writes them; the normalised numbers are checked by hand.
2. The oracle: llama-quantize's reading code itself, compiled from fixtures/imatrix (verbatim
   common/imatrix-loader.cpp and quantize.cpp load_imatrix + prepare_imatrix) against the installed
   libggml-base: weights bit for bit, datasets, chunk count, include/exclude, and the malformed
   files both reject; the files kquant rejects and llama.cpp reads anyway are listed explicitly.
3. Live: llama_model_quantize (llama-cpp-python 0.3.36) given the weights and the quantize.imatrix.*
   overrides exactly as llama-quantize passes them, on tiny llama-shaped GGUFs (dense and MoE, F32 and
   BF16 tensors, heavy-tailed values); every output tensor's type and bytes must equal kquant's
   (recipe.plan_types(has_imatrix=True) + quants.quantize per expert), and the metadata must end
   with ImatrixData.kv().
"""

from __future__ import annotations

import ctypes
import shutil
import struct
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from oracle import refpipeline
from kquant.errors import InputError
from kquant.plan.imatrix import (
    KV_DATASET,
    KV_FILE,
    KV_N_CHUNKS,
    KV_N_ENTRIES,
    ImatrixData,
    load_imatrix,
)
from kquant.types import FileType, QType

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "imatrix"


def _vt():
    import gguf

    return gguf.GGUFValueType


# ---------------------------------------------------------------------------------------------
# writers
# ---------------------------------------------------------------------------------------------


def gguf_imatrix(
    path: Path,
    entries: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    *,
    datasets=("calibration.txt",),
    chunk_count=10,
    chunk_size=512,
    drop=(),
    kv_as: dict | None = None,  # key -> f(writer, key, value) instead of the usual type (gguf-py writer)
    tensors: list[tuple[str, np.ndarray]] | None = None,
    ggml: bool = False,
) -> Path:
    """An imatrix GGUF as imatrix.cpp save_imatrix writes it; entries: name -> (sums (n_mat, n), counts (n_mat,)).

    Written with gguf-py's GGUFWriter, or with `ggml=True` byte for byte as ggml's gguf_write_to_file
    does it (n_dims = ggml_n_dims: a one-expert entry is 1-D; empty dataset arrays are possible).
    """
    import gguf

    if tensors is None:
        tensors = []
        for name in sorted(entries or {}):
            sums, counts = entries[name]
            sums = np.asarray(sums, np.float32)
            tensors.append((name + ".in_sum2", sums.reshape(-1, sums.shape[-1])))
            tensors.append((name + ".counts", np.asarray(counts, np.float32).reshape(-1, 1)))
    if ggml:
        from kquant.io.gguf import GGUFStreamWriter

        VTy = gguf.GGUFValueType
        with GGUFStreamWriter(path, ggml_n_dims=True) as w:
            w.add_kv("general.type", VTy.STRING, "imatrix")
            w.add_kv("imatrix.datasets", VTy.ARRAY, list(datasets), sub_type=VTy.STRING)
            w.add_kv("imatrix.chunk_count", VTy.UINT32, chunk_count)
            w.add_kv("imatrix.chunk_size", VTy.UINT32, chunk_size)
            for name, a in tensors:
                w.add_tensor(name, a.shape, QType.F32)
            w.write_header()
            for name, a in tensors:
                w.write_data(name, a)
            w.finish()
        return path
    w = gguf.GGUFWriter(str(path), "imatrix")
    w.kv_data[0].pop("general.architecture")  # save_imatrix writes no architecture
    w.add_string("general.type", "imatrix")
    kv_as = kv_as or {}
    if "imatrix.datasets" not in drop:
        kv_as.get("imatrix.datasets", lambda w, k, v: w.add_array(k, list(v)))(w, "imatrix.datasets", datasets)
    for key, v in (("imatrix.chunk_count", chunk_count), ("imatrix.chunk_size", chunk_size)):
        if key not in drop:
            kv_as.get(key, lambda w, k, v: w.add_uint32(k, v))(w, key, v)
    for name, a in tensors:
        w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def legacy_imatrix(path: Path, entries, *, trailer=(10, b"calibration.txt"), tail: bytes = b"") -> Path:
    """A .dat as save_imatrix_legacy writes it; entries: [(name, ncall, float32 values)]."""
    b = bytearray(struct.pack("<i", len(entries)))
    for name, ncall, values in entries:
        nb = name.encode() if isinstance(name, str) else name
        v = np.asarray(values, np.float32)
        b += struct.pack("<i", len(nb)) + nb + struct.pack("<ii", ncall, v.size) + v.astype("<f4").tobytes()
    if trailer is not None:
        n_chunks, dataset = trailer
        b += struct.pack("<i", n_chunks) + struct.pack("<i", len(dataset)) + dataset
    b += tail
    path.write_bytes(bytes(b))
    return path


def _f32(*v) -> np.ndarray:
    return np.array(v, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# 1. numbers, by hand
# ---------------------------------------------------------------------------------------------


def test_gguf_normalisation(tmp_path):
    rng = np.random.default_rng(1)
    s2 = rng.random((1, 64), dtype=np.float32) * 1000
    s4 = rng.random((4, 32), dtype=np.float32) * 1000
    # counts as floats: 3 (inexact quotient), 0 (no data -> 1), 2.5 (lround -> 3), 2^24+1 (stored as 2^24)
    c4 = _f32(3, 0, 2.5, 2**24 + 1)
    p = gguf_imatrix(tmp_path / "m.gguf", {"blk.0.attn_q.weight": (s2, _f32(7)), "blk.0.ffn_up_exps.weight": (s4, c4)},
                     datasets=["a.txt", "b.txt"], chunk_count=12, chunk_size=256)
    m = load_imatrix(p)
    assert not m.legacy and m.datasets == ["a.txt", "b.txt"] and m.chunk_count == 12 and m.chunk_size == 256
    assert set(m.weights) == {"blk.0.attn_q.weight", "blk.0.ffn_up_exps.weight"}
    w = m.weights["blk.0.attn_q.weight"]
    assert w.dtype == np.float32 and w.shape == (64,)
    assert np.array_equal(w.view(np.uint32), (s2[0] / np.float32(7)).view(np.uint32))
    e = m.weights["blk.0.ffn_up_exps.weight"].reshape(4, 32)
    for j, c in enumerate([3, None, 3, 2**24]):
        want = np.ones(32, np.float32) if c is None else s4[j] / np.float32(c)
        assert np.array_equal(e[j].view(np.uint32), want.view(np.uint32)), j


def test_legacy_normalisation(tmp_path):
    v = np.random.default_rng(2).random(96, dtype=np.float32) * 50
    p = legacy_imatrix(tmp_path / "m.dat", [("blk.0.attn_k.weight", 3, v), ("raw0", 0, v[:32]), ("rawneg", -2, v[:32])],
                       trailer=(42, b"wiki.train.raw"))
    m = load_imatrix(p)
    assert m.legacy and m.chunk_count == 42 and m.datasets == ["wiki.train.raw"] and m.chunk_size == 0
    assert np.array_equal(m.weights["blk.0.attn_k.weight"].view(np.uint32), (v / np.float32(3)).view(np.uint32))
    assert np.array_equal(m.weights["raw0"], v[:32]) and np.array_equal(m.weights["rawneg"], v[:32])
    # the trailer is optional; an empty dataset name is no dataset
    m = load_imatrix(legacy_imatrix(tmp_path / "n.dat", [("x", 1, v)], trailer=None))
    assert m.chunk_count == 0 and m.datasets == []
    m = load_imatrix(legacy_imatrix(tmp_path / "o.dat", [("x", 1, v)], trailer=(5, b"")))
    assert m.chunk_count == 5 and m.datasets == []
    # names and datasets end at their first NUL, as C strings
    m = load_imatrix(legacy_imatrix(tmp_path / "q.dat", [(b"x\0junk", 1, v)], trailer=(5, b"d.txt\0junk")))
    assert list(m.weights) == ["x"] and m.datasets == ["d.txt"]


def test_include_exclude(tmp_path):
    v = _f32(1, 2, 3, 4)
    names = ["blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.1.ffn_down.weight", "output.weight"]
    p = legacy_imatrix(tmp_path / "m.dat", [(n, 1, v) for n in names])
    assert set(load_imatrix(p, exclude=["attn_"]).weights) == {"blk.1.ffn_down.weight", "output.weight"}
    assert set(load_imatrix(p, exclude=["attn_q", "output"]).weights) == {"blk.0.attn_k.weight", "blk.1.ffn_down.weight"}
    assert set(load_imatrix(p, include=["blk.0.", "output"]).weights) == {"blk.0.attn_q.weight", "blk.0.attn_k.weight", "output.weight"}
    assert set(load_imatrix(p, include=["attn_q", "attn_q"]).weights) == {"blk.0.attn_q.weight"}
    m = load_imatrix(p, include=["nothing"])
    assert m.weights == {} and m.kv() == [] and m.n_loaded == 4
    with pytest.raises(InputError, match="cannot be used together"):
        load_imatrix(p, include=["a"], exclude=["b"])
    # a bad value in an excluded entry is not looked at (llama-quant.cpp checks what it is given)
    bad = legacy_imatrix(tmp_path / "nan.dat", [("good", 1, v), ("bad", 1, _f32(1, np.nan, 3, 4))])
    with pytest.raises(InputError, match="'bad'.*non-finite"):
        load_imatrix(bad)
    assert list(load_imatrix(bad, exclude=["bad"]).weights) == ["good"]


def test_kv(tmp_path):
    VTy = _vt()
    v = _f32(1, 2)
    p = legacy_imatrix(tmp_path / "m.dat", [("a", 1, v), ("b", 1, v)], trailer=(7, b"set.txt"))
    m = load_imatrix(p)
    assert m.kv() == [
        (KV_FILE, VTy.STRING, str(p)),
        (KV_DATASET, VTy.STRING, "set.txt"),
        (KV_N_ENTRIES, VTy.UINT32, 2),
        (KV_N_CHUNKS, VTy.UINT32, 7),
    ]
    assert load_imatrix(p, exclude=["b"]).kv()[2] == (KV_N_ENTRIES, VTy.UINT32, 1)
    # no dataset key without a dataset; no chunk key unless the count is > 0 (a u32 above 2^31-1 is an int32 < 0)
    m = load_imatrix(gguf_imatrix(tmp_path / "g.gguf", {"a": (v.reshape(1, 2), _f32(1))}, datasets=[], chunk_count=0x80000000, ggml=True))
    assert m.chunk_count < 0 and [k for k, _, _ in m.kv()] == [KV_FILE, KV_N_ENTRIES]
    # strncpy(val_str, .., 127): byte truncation, even inside a UTF-8 sequence
    ds = "dataset/" + "é" * 70
    m = ImatrixData({"a": v}, [ds], 3, "x" * 200)
    kv = dict((k, val) for k, _, val in m.kv())
    assert kv[KV_FILE] == "x" * 127
    assert kv[KV_DATASET].encode("utf-8", "surrogateescape") == ds.encode()[:127]


def test_weights_for():
    from kquant.plan.imatrix import weights_for

    F = FileType.MOSTLY_Q4_K_M
    w = {"a.weight": np.arange(8 * 32, dtype=np.float32), "token_embd.weight": _f32(1), "per_layer_token_embd.weight": _f32(1)}
    got = weights_for(w, "a.weight", (8, 5, 32), QType.BF16, QType.Q4_0, F)  # ne[2] = 8 experts of 32
    assert got.shape == (8, 32) and np.array_equal(got.reshape(-1), w["a.weight"])
    assert weights_for(w, "a.weight", (8, 5, 32), QType.Q4_0, QType.Q4_0, F) is None  # copied: not looked up
    assert weights_for(w, "missing.weight", (5, 32), QType.BF16, QType.Q4_K, F) is None  # "did not find weights"
    for name in ("token_embd.weight", "per_layer_token_embd.weight"):  # wrong size: ignored for these two only
        assert weights_for(w, name, (5, 32), QType.BF16, QType.Q4_K, F) is None
    with pytest.raises(InputError, match="imatrix size 256 is different from tensor size 32 for a.weight"):
        weights_for(w, "a.weight", (5, 32), QType.BF16, QType.Q4_K, F)
    # Q2_K inside Q2_K_S needs weights (token_embd / output never do)
    with pytest.raises(InputError, match="Missing importance matrix for tensor blk.0.x.weight"):
        weights_for(w, "blk.0.x.weight", (5, 256), QType.BF16, QType.Q2_K, FileType.MOSTLY_Q2_K_S)
    assert weights_for(w, "token_embd.weight", (5, 256), QType.BF16, QType.Q2_K, FileType.MOSTLY_Q2_K_S) is None
    assert weights_for(w, "blk.0.x.weight", (5, 256), QType.BF16, QType.Q2_K, FileType.MOSTLY_Q2_K) is None


# ---------------------------------------------------------------------------------------------
# malformed files
# ---------------------------------------------------------------------------------------------


def _entries(n_mat=1, n=32, count=5.0):
    s = np.random.default_rng(3).random((n_mat, n), dtype=np.float32) + np.float32(0.5)
    return {"blk.0.attn_q.weight": (s, np.full(n_mat, count, np.float32))}


def _truncate(p: Path, n: int) -> Path:
    b = p.read_bytes()
    p.write_bytes(b[:-n])
    return p


def _append(p: Path, tail: bytes) -> Path:
    p.write_bytes(p.read_bytes() + tail)
    return p


V32 = np.arange(1, 33, dtype=np.float32)
# name -> (builder(dir) -> path, llama.cpp's fate: "fails" (exit 1 / abort), "quantize" (loads, then
# llama_model_quantize rejects the data), "reads" (llama.cpp reads it and goes on: kquant is stricter),
# None (not run through the oracle))
BAD_FILES = {
    # GGUF
    "gguf_no_chunk_size": (lambda d: gguf_imatrix(d / "f.gguf", _entries(), drop=("imatrix.chunk_size",)), "fails"),
    "gguf_no_datasets": (lambda d: gguf_imatrix(d / "f.gguf", _entries(), drop=("imatrix.datasets",)), "fails"),
    "gguf_chunk_count_i32": (
        lambda d: gguf_imatrix(d / "f.gguf", _entries(), kv_as={"imatrix.chunk_count": lambda w, k, v: w.add_int32(k, v)}),
        "fails",
    ),
    "gguf_sums_f16": (
        lambda d: gguf_imatrix(d / "f.gguf", tensors=[("a.in_sum2", np.ones((1, 32), np.float16)), ("a.counts", _f32(1).reshape(1, 1))]),
        "fails",
    ),
    "gguf_no_counts": (lambda d: gguf_imatrix(d / "f.gguf", tensors=[("a.in_sum2", np.ones((1, 32), np.float32))]), "fails"),
    "gguf_no_sums": (lambda d: gguf_imatrix(d / "f.gguf", tensors=[("a.counts", _f32(1).reshape(1, 1))]), "fails"),
    "gguf_no_tensors": (lambda d: gguf_imatrix(d / "f.gguf", {}), "fails"),
    "gguf_truncated_data": (lambda d: _truncate(gguf_imatrix(d / "f.gguf", _entries()), 40), "fails"),
    "gguf_no_final_padding": (lambda d: _truncate(gguf_imatrix(d / "f.gguf", _entries()), 10), "fails"),
    "gguf_truncated_header": (lambda d: _write(d / "f.gguf", gguf_imatrix(d / "g.gguf", _entries()).read_bytes()[:100]), "fails"),
    "gguf_nan_sum": (lambda d: gguf_imatrix(d / "f.gguf", {"a": (np.where(V32 == 3, np.nan, V32).reshape(1, 32), _f32(2))}), "quantize"),
    "gguf_inf_sum": (lambda d: gguf_imatrix(d / "f.gguf", {"a": (np.where(V32 == 3, np.inf, V32).reshape(1, 32), _f32(2))}), "quantize"),
    "gguf_datasets_str": (
        lambda d: gguf_imatrix(d / "f.gguf", _entries(), kv_as={"imatrix.datasets": lambda w, k, v: w.add_string(k, "x")}),
        "reads",
    ),
    "gguf_counts_not_dividing": (lambda d: gguf_imatrix(d / "f.gguf", tensors=[("a.in_sum2", np.ones((1, 10), np.float32)), ("a.counts", np.ones((3, 1), np.float32))]), "reads"),
    "gguf_nan_count": (lambda d: gguf_imatrix(d / "f.gguf", {"a": (V32.reshape(1, 32), _f32(np.nan))}), "reads"),
    "gguf_negative_count": (lambda d: gguf_imatrix(d / "f.gguf", {"a": (V32.reshape(1, 32), _f32(-4))}), "reads"),
    "gguf_zero_sums": (lambda d: gguf_imatrix(d / "f.gguf", {"a": (np.zeros((2, 32), np.float32), _f32(0, 9))}), "reads"),
    "gguf_no_pairs": (lambda d: gguf_imatrix(d / "f.gguf", tensors=[("a.weight", np.ones((1, 32), np.float32))]), "reads"),
    "gguf_trailing": (lambda d: _append(gguf_imatrix(d / "f.gguf", _entries()), b"\0" * 64), "reads"),
    # legacy
    "dat_empty_file": (lambda d: _write(d / "f.dat", b""), "fails"),
    "dat_zero_entries": (lambda d: _write(d / "f.dat", struct.pack("<i", 0)), "fails"),
    "dat_huge_entries": (lambda d: _write(d / "f.dat", struct.pack("<i", 10**9) + b"\0" * 64), "fails"),
    # llama.cpp fails too, after allocating nval floats (8 GiB): not run through the oracle
    "dat_huge_nval": (lambda d: _write(d / "f.dat", struct.pack("<ii", 1, 1) + b"a" + struct.pack("<ii", 1, 2**31 - 1) + b"\0" * 64), None),
    "dat_zero_nval": (lambda d: _write(d / "f.dat", struct.pack("<ii", 1, 1) + b"a" + struct.pack("<ii", 1, 0) + b"\0" * 64), "fails"),
    "dat_truncated_values": (lambda d: _truncate(legacy_imatrix(d / "f.dat", [("a", 1, V32)], trailer=None), 5), "fails"),
    "dat_truncated_name": (lambda d: _write(d / "f.dat", struct.pack("<ii", 1, 50) + b"a" * 20), "fails"),
    "dat_nan": (lambda d: legacy_imatrix(d / "f.dat", [("a", 1, np.where(V32 == 3, np.nan, V32))]), "quantize"),
    "dat_negative_name_len": (lambda d: _write(d / "f.dat", struct.pack("<ii", 1, -5) + b"\0" * 64), None),
    "dat_duplicate": (lambda d: legacy_imatrix(d / "f.dat", [("a", 1, V32), ("a", 2, V32)]), "reads"),
    "dat_zero_values": (lambda d: legacy_imatrix(d / "f.dat", [("a", 1, np.zeros(32, np.float32))]), "reads"),
    "dat_trailing": (lambda d: legacy_imatrix(d / "f.dat", [("a", 1, V32)], tail=b"xyz"), "reads"),
    "dat_short_trailer": (lambda d: legacy_imatrix(d / "f.dat", [("a", 1, V32)], trailer=None, tail=b"\1\0"), "reads"),
    "dat_short_dataset": (lambda d: legacy_imatrix(d / "f.dat", [("a", 1, V32)], trailer=None, tail=struct.pack("<ii", 3, 40) + b"abc"), "reads"),
    "dat_negative_dataset_len": (lambda d: legacy_imatrix(d / "f.dat", [("a", 1, V32)], trailer=None, tail=struct.pack("<ii", 3, -1)), "reads"),
}

def _write(p: Path, b: bytes) -> Path:
    p.write_bytes(b)
    return p


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_malformed(tmp_path, case, oracle):
    build, fate = BAD_FILES[case]
    p = build(tmp_path)
    with pytest.raises(InputError) as ei:
        load_imatrix(p)
    assert str(p) in str(ei.value)
    if oracle is None or fate is None:
        return
    res = oracle(p)
    if fate == "fails":
        assert res is None, f"llama.cpp read {case}"
    elif fate == "quantize":  # loaded, non-finite values reach llama_model_quantize, which throws
        assert res is not None and not all(np.isfinite(w).all() for w in res["weights"].values())
    else:
        assert res is not None, f"llama.cpp now rejects {case}: the 'reads' label is stale"


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="cannot open"):
        load_imatrix(tmp_path / "nope.gguf")


# ---------------------------------------------------------------------------------------------
# 2. the oracle: llama-quantize's reading code, compiled
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def oracle(tmp_path_factory):
    """f(path, include=(), exclude=()) -> {"weights", "datasets", "m_last_call"} or None where llama-quantize exits."""
    try:
        import llama_cpp  # noqa: F401

        from oracle import reference

        lib = reference.lib_dir()
    except Exception:
        return None
    inc = Path(lib).parent.parent / "include"
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None or not (inc / "gguf.h").exists():
        return None
    exe = tmp_path_factory.mktemp("imatrix_oracle") / "harness"
    cmd = [cxx, "-std=c++17", "-O1", f"-I{FIXTURES}", f"-I{inc}", str(FIXTURES / "harness.cpp"),
           str(FIXTURES / "imatrix-loader.cpp"), f"-L{lib}", "-lggml-base", f"-Wl,-rpath,{lib}", "-o", str(exe)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"cannot build the imatrix oracle:\n{r.stderr[-3000:]}")

    def run(path, include=(), exclude=()):
        out = Path(str(path) + ".oracle")
        args = [str(exe), str(path), str(out)]
        for p in include:
            args += ["-i", p]
        for p in exclude:
            args += ["-e", p]
        r = subprocess.run(args, capture_output=True)
        if r.returncode != 0:
            return None
        return _parse_oracle(out.read_bytes())

    return run


def _parse_oracle(b: bytes) -> dict:
    pos = 0

    def u(fmt):
        nonlocal pos
        v = struct.unpack_from(fmt, b, pos)[0]
        pos += struct.calcsize(fmt)
        return v

    def s():
        nonlocal pos
        n = u("<I")
        pos += n
        return b[pos - n : pos].decode("utf-8", "surrogateescape")

    m_last = u("<i")
    datasets = [s() for _ in range(u("<I"))]
    weights = {}
    for _ in range(u("<I")):
        name = s()
        n = u("<Q")
        weights[name] = np.frombuffer(b, "<f4", count=n, offset=pos).copy()
        pos += 4 * n
    assert pos == len(b)
    return {"weights": weights, "datasets": datasets, "m_last_call": m_last}


def _realistic_entries(rng, names_shapes, counts_for):
    """name -> (sums, counts) like llama-imatrix: sum of squared activations, heavy-tailed, some dead columns."""
    out = {}
    for name, (n_mat, n) in names_shapes.items():
        counts = np.asarray(counts_for(name, n_mat), np.float32)
        scale = np.exp(rng.normal(0.0, 1.5, (n_mat, n))).astype(np.float32)
        scale[rng.random((n_mat, n)) < 0.05] = 0  # dead input channels
        out[name] = ((scale * np.maximum(counts, 1)[:, None]).astype(np.float32), counts)
    return out


def _same(a: ImatrixData, o: dict) -> None:
    assert sorted(a.weights) == sorted(o["weights"])
    for k, w in a.weights.items():
        assert w.dtype == np.float32
        assert np.array_equal(w.view(np.uint32), o["weights"][k].view(np.uint32)), k
    assert a.datasets == o["datasets"]
    assert a.chunk_count == o["m_last_call"]


def test_oracle_gguf(tmp_path, oracle):
    if oracle is None:
        pytest.skip("no C++ compiler / llama-cpp-python headers for the oracle")
    rng = np.random.default_rng(4)
    shapes = {"blk.0.attn_q.weight": (1, 256), "blk.0.ffn_down_exps.weight": (8, 64), "output.weight": (1, 512)}
    counts = {"blk.0.attn_q.weight": [5120], "output.weight": [3.0], "blk.0.ffn_down_exps.weight": [0, 1, 2.5, 7, 1e6 + 1, 0.49, 3, 2**24 + 1]}
    e = _realistic_entries(rng, shapes, lambda n, m: counts[n])
    e["blk.0.ffn_down_exps.weight"][0][0, :] = np.nan  # count 0: replaced by ones, not an error
    for ggml in (False, True):
        p = gguf_imatrix(tmp_path / f"m{ggml}.gguf", e, datasets=["wiki.txt", "code.txt"], chunk_count=10, chunk_size=512, ggml=ggml)
        _same(load_imatrix(p), oracle(p))
    for ds, cc in [([], 0), (["only.txt"], 0xFFFFFFFF)]:  # no datasets; a chunk count that is -1 as int32
        q = gguf_imatrix(tmp_path / f"n{cc}.gguf", e, datasets=ds, chunk_count=cc, ggml=True)
        _same(load_imatrix(q), oracle(q))
    for inc, exc in [(["attn"], []), (["exps", "output"], []), ([], ["attn_q"]), ([], ["blk.", "output"]), ([""], [])]:
        _same(load_imatrix(p, inc, exc), oracle(p, inc, exc))
    assert oracle(p, ["a"], ["b"]) is None  # llama-quantize: usage()


def test_oracle_legacy(tmp_path, oracle):
    if oracle is None:
        pytest.skip("no C++ compiler / llama-cpp-python headers for the oracle")
    rng = np.random.default_rng(5)
    ents = [("blk.%d.ffn_up.weight" % i, int(rng.integers(1, 100)), rng.random(128, dtype=np.float32) * 300) for i in range(12)]
    ents.append(("blk.0.ffn_gate_exps.weight", 0, rng.random(4 * 64, dtype=np.float32)))
    ents.append(("big", 2**24 + 3, rng.random(64, dtype=np.float32) * 1e9))
    for trailer in [(33, b"wiki.train.raw"), None, (-3, b""), (0, b"\xc3\xa9t\xc3\xa9")]:
        p = legacy_imatrix(tmp_path / "m.dat", ents, trailer=trailer)
        _same(load_imatrix(p), oracle(p))
    _same(load_imatrix(p, include=["blk.1"]), oracle(p, include=["blk.1"]))


# ---------------------------------------------------------------------------------------------
# 3. live: llama_model_quantize with the importance matrix
# ---------------------------------------------------------------------------------------------

LIVE_FTYPES = [FileType.MOSTLY_Q4_K_M, FileType.MOSTLY_Q5_K_M, FileType.MOSTLY_Q3_K_M, FileType.MOSTLY_Q4_0, FileType.MOSTLY_Q2_K,
               FileType.MOSTLY_IQ4_XS, FileType.MOSTLY_IQ4_NL, FileType.MOSTLY_TQ1_0, FileType.MOSTLY_TQ2_0,
               FileType.MOSTLY_MXFP4_MOE, FileType.MOSTLY_Q1_0, FileType.MOSTLY_Q2_0, FileType.MOSTLY_IQ2_M, FileType.MOSTLY_IQ3_XS,
               FileType.MOSTLY_IQ3_M]
ROWS = 32
BF16, F32 = QType.BF16, QType.F32


def _dense(n_layer=8, n_embd=256, n_ff=512):
    ts = [("token_embd.weight", (64, n_embd), BF16), ("output_norm.weight", (n_embd,), F32), ("output.weight", (64, n_embd), BF16)]
    for i in range(n_layer):
        b = f"blk.{i}."
        ts += [
            (b + "attn_norm.weight", (n_embd,), F32),
            (b + "attn_q.weight", (ROWS, n_embd), F32 if i == 0 else BF16),
            (b + "attn_k.weight", (ROWS, n_embd), BF16),
            (b + "attn_v.weight", (ROWS, n_embd), BF16),
            (b + "attn_output.weight", (ROWS, n_embd), BF16),
            (b + "ffn_norm.weight", (n_embd,), F32),
            (b + "ffn_gate.weight", (ROWS, n_embd), BF16),
            (b + "ffn_up.weight", (ROWS, n_embd), F32 if i == 1 else BF16),
            (b + "ffn_down.weight", (ROWS, n_ff), BF16),
        ]
    return ts + [("blk.0.odd.weight", (ROWS, 40), BF16)]  # 40 % 32 != 0: F16 in every file type


def _moe(n_layer=2, n_embd=256, n_ff_exp=512, n_expert=4):
    ts = [("token_embd.weight", (64, n_embd), BF16), ("output_norm.weight", (n_embd,), F32), ("output.weight", (64, n_embd), BF16)]
    for i in range(n_layer):
        b = f"blk.{i}."
        ts += [
            (b + "attn_norm.weight", (n_embd,), F32),
            (b + "attn_q.weight", (ROWS, n_embd), BF16),
            (b + "attn_k.weight", (ROWS, n_embd), BF16),
            (b + "attn_v.weight", (ROWS, n_embd), BF16),
            (b + "attn_output.weight", (ROWS, n_embd), BF16),
            (b + "ffn_norm.weight", (n_embd,), F32),
            (b + "ffn_gate_inp.weight", (n_expert, n_embd), F32),
            (b + "ffn_gate_exps.weight", (n_expert, 12, n_embd), BF16),
            (b + "ffn_up_exps.weight", (n_expert, 12, n_embd), F32),
            (b + "ffn_down_exps.weight", (n_expert, 12, n_ff_exp), BF16),
        ]
    return ts


# name -> (arch facts, n_head, n_head_kv, n_expert, tensors, imatrix entries left out)
LIVE_MODELS = {
    "dense": (8, 4, 1, 0, _dense(), ("blk.3.attn_k.weight", "blk.5.ffn_down.weight")),
    "moe": (2, 4, 4, 4, _moe(), ("blk.1.ffn_up_exps.weight",)),
}


def _heavy(rng, shape) -> np.ndarray:
    """Student-t values (df 3) with per-row scales over two decades and a few outliers."""
    x = rng.standard_t(3, shape).astype(np.float32)
    x *= np.exp(rng.normal(0, 1.2, shape[:-1] + (1,))).astype(np.float32) * np.float32(0.02)
    flat = x.reshape(-1)
    flat[rng.integers(0, flat.size, max(1, flat.size // 2000))] *= np.float32(40)
    return x


def _to_bf16(x: np.ndarray) -> np.ndarray:
    """Round to nearest even BF16 -> (uint16 bits, float32 value)."""
    u = x.view(np.uint32)
    bits = ((u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)).astype(np.uint16)
    return bits, (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


_QUIET_LOG: list = []  # the callback must outlive the module: llama.cpp keeps the pointer


def _quiet(llama_cpp) -> None:
    _QUIET_LOG.append(llama_cpp.llama_log_callback(lambda level, text, user_data: None))
    llama_cpp.llama_log_set(_QUIET_LOG[-1], ctypes.c_void_p(0))


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """Per model: GGUF path, source arrays (float32, as llama.cpp sees them), facts, imatrix."""
    import gguf

    from kquant.plan.recipe import ModelFacts

    llama_cpp = pytest.importorskip("llama_cpp")
    _quiet(llama_cpp)
    d = tmp_path_factory.mktemp("imatrix_live")
    rng = np.random.default_rng(6)
    out = {}
    for model, (n_layer, n_head, n_head_kv, n_expert, tensors, left_out) in LIVE_MODELS.items():
        src = d / f"{model}.gguf"
        w = gguf.GGUFWriter(str(src), "llama")
        w.add_context_length(128)
        w.add_embedding_length(256)
        w.add_block_count(n_layer)
        w.add_feed_forward_length(512)
        w.add_head_count(n_head)
        w.add_head_count_kv(n_head_kv)
        w.add_layer_norm_rms_eps(1e-5)
        if n_expert:
            w.add_expert_count(n_expert)
            w.add_expert_used_count(2)
        data = {}
        for name, shape, t in tensors:
            x = _heavy(rng, shape) if len(shape) > 1 else (1 + rng.normal(0, 0.1, shape)).astype(np.float32)
            if t is BF16:
                bits, x = _to_bf16(x)
                w.add_tensor(name, bits, raw_dtype=gguf.GGMLQuantizationType.BF16)
            else:
                w.add_tensor(name, x)
            data[name] = (x, t)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        # the importance matrix llama-imatrix would collect: every matmul weight but token_embd
        shapes = {n: (s[0] if len(s) == 3 else 1, s[-1]) for n, s, _ in tensors if len(s) > 1 and n != "token_embd.weight"}
        for n in left_out:
            del shapes[n]
        shapes["blk.99.attn_q.weight"] = (1, 256)  # not in the model: ignored, but counted
        ents = _realistic_entries(rng, shapes, lambda n, m: [5120] if m == 1 else [1200, 0, 37, 977][:m])
        ents["token_embd.weight"] = (np.ones((1, 128), np.float32), _f32(1))  # wrong size: token_embd is exempt
        long_name = "imatrix-" + "x" * 120 + ".gguf"  # quantize.imatrix.file is cut at 127 bytes
        ip = gguf_imatrix(d / long_name, ents, datasets=["dataset/" + "é" * 70, "second.txt"], chunk_count=10, chunk_size=512)
        facts = ModelFacts("llama", n_layer, n_head, n_head_kv, n_expert=n_expert)
        out[model] = SimpleNamespace(src=src, data=data, facts=facts, imatrix=load_imatrix(ip), names=[n for n, _, _ in tensors])
    return out


def _kq(x: np.ndarray, t: QType, w) -> np.ndarray:
    """kquant's bytes for rows x in type t with importance row w (or None)."""
    from kquant.ggml import quants

    return quants.quantize(np.ascontiguousarray(x), t, w, check_finite=False)


def _expected_weights(weights: dict, name: str, shape: tuple) -> np.ndarray | None:
    """llama-quant.cpp: the entry if its size is ne[0] * ne[2]; none if absent; token_embd exempt; else it throws."""
    n_expert = shape[0] if len(shape) == 3 else 1
    w = weights.get(name)
    if w is None:
        return None
    if w.size != shape[-1] * n_expert:
        assert name in ("token_embd.weight", "per_layer_token_embd.weight"), name
        return None
    return w.reshape(n_expert, shape[-1])


def _check_live(m, ftype: FileType, im: ImatrixData, dst: Path) -> None:
    """llama_model_quantize with `im`: every output tensor's type and bytes equal kquant's; metadata ends with im.kv()."""
    from kquant.io.gguf import GGUFFile
    from kquant.plan.imatrix import weights_for
    from kquant.plan.recipe import TensorIn, plan_types

    from kquant.ggml import quants

    table = quants.supported_types()
    ins = [TensorIn(n, m.data[n][0].shape, m.data[n][1]) for n in m.names]
    try:
        types = plan_types(ins, ftype, m.facts, has_imatrix=True)
        for t, q in zip(ins, types):  # a tensor left out of the matrix that needs one (IQ3_XS's IQ3_XXS)
            weights_for(im.weights, t.name, t.shape, t.src_type, q, ftype)
    except InputError:  # or Q1_0 (no fallback type) on a row that is not a multiple of 128
        assert refpipeline.llama_quantize_rc(m.src, dst, ftype, imatrix=im) != 0  # llama-quantize refuses too
        return
    missing = sorted({t.name for t in types if t.is_quantized and t not in table})
    if missing:
        pytest.skip(f"kquant kernels not there yet for {', '.join(missing)}")
    assert refpipeline.llama_quantize_rc(m.src, dst, ftype, imatrix=im) == 0
    planned = {t.name: q for t, q in zip(ins, types)}
    used = changed = 0
    with GGUFFile(dst) as g:
        assert {t.name for t in g.tensors} == set(m.names)
        for ti in g.tensors:
            t = planned[ti.name]
            assert ti.qtype is t, f"{ti.name}: llama.cpp {ti.qtype.name}, kquant {t.name}"
            x, src_t = m.data[ti.name]
            got = g.data(ti.name)
            w = _expected_weights(im.weights, ti.name, x.shape)
            mine_w = weights_for(im.weights, ti.name, x.shape, src_t, t, ftype)  # kquant's lookup agrees
            if t is src_t:
                assert mine_w is None
            else:
                assert (mine_w is None) == (w is None) and (w is None or np.array_equal(mine_w, w)), ti.name
            if not t.is_quantized:
                if t is src_t:
                    want = (_to_bf16(x)[0].view(np.uint8) if t is BF16 else x.view(np.uint8)).reshape(-1)
                else:
                    want = _kq(x.reshape(-1, x.shape[-1]), t, None).reshape(-1)
                assert np.array_equal(got, want), ti.name
                continue
            used += w is not None
            rows = x.reshape(-1, x.shape[-1])
            per = x.shape[1] if x.ndim == 3 else rows.shape[0]
            mine = np.concatenate(
                [_kq(rows[e * per : (e + 1) * per], t, None if w is None else w[e]) for e in range(rows.shape[0] // per)]
            )
            bad = np.flatnonzero((mine.reshape(rows.shape[0], -1) != got.reshape(rows.shape[0], -1)).any(axis=1))
            assert bad.size == 0, f"{ti.name} ({t.name}): {bad.size} of {rows.shape[0]} rows differ, first {bad[:5]}"
            if w is not None and (t.requires_imatrix or not np.array_equal(mine, _kq(rows, t, None))):
                changed += 1  # the importance weights did change these bytes
        # metadata: the input's keys, quantization_version, file_type, then the quantize.imatrix.* keys
        keys = list(g.metadata)
        tail = keys[keys.index("general.file_type") + 1 :]
        assert [(k, *g.metadata[k]) for k in tail] == im.kv()
    if ftype is FileType.MOSTLY_MXFP4_MOE:  # Q8_0 and MXFP4: ggml ignores importance weights
        assert changed == 0
    else:
        assert changed > 0 and used >= changed


@pytest.mark.parametrize("ftype", LIVE_FTYPES, ids=lambda f: f.short_name)
@pytest.mark.parametrize("model", list(LIVE_MODELS))
def test_live_quantize(live, model, ftype, tmp_path):
    """Every tensor of llama_model_quantize's output (with the imatrix) equals kquant's bytes."""
    _check_live(live[model], ftype, live[model].imatrix, tmp_path / "out.gguf")


def test_live_q2_k_s(live, tmp_path):
    """Q2_K_S needs an entry for every Q2_K tensor: both refuse a matrix without one, both agree with a full one."""
    from kquant.plan.imatrix import weights_for

    m = live["dense"]
    ftype = FileType.MOSTLY_Q2_K_S
    im = m.imatrix
    assert "blk.3.attn_k.weight" not in im.weights
    assert refpipeline.llama_quantize_rc(m.src, tmp_path / "a.gguf", ftype, imatrix=im) != 0
    x = m.data["blk.3.attn_k.weight"][0]
    with pytest.raises(InputError, match="Missing importance matrix for tensor blk.3.attn_k.weight"):
        weights_for(im.weights, "blk.3.attn_k.weight", x.shape, BF16, QType.Q2_K, ftype)
    full = dict(im.weights)
    rng = np.random.default_rng(7)
    for name in LIVE_MODELS["dense"][5]:
        full[name] = np.exp(rng.normal(0, 1.5, m.data[name][0].shape[-1])).astype(np.float32)
    _check_live(m, ftype, ImatrixData(full, im.datasets, im.chunk_count, im.path), tmp_path / "b.gguf")


NEEDS_IMATRIX = [FileType.MOSTLY_IQ2_XXS, FileType.MOSTLY_IQ2_XS, FileType.MOSTLY_IQ2_S, FileType.MOSTLY_IQ2_M,
                 FileType.MOSTLY_IQ1_S, FileType.MOSTLY_IQ1_M, FileType.MOSTLY_IQ3_XXS, FileType.MOSTLY_Q2_K_S]


def _full_matrix(m, model: str) -> ImatrixData:
    """m's importance matrix with entries for the tensors LIVE_MODELS leaves out (per expert for 3-D ones)."""
    full = dict(m.imatrix.weights)
    rng = np.random.default_rng(8)
    for name in LIVE_MODELS[model][5]:
        shape = m.data[name][0].shape
        n = shape[-1] * (shape[0] if len(shape) == 3 else 1)
        full[name] = np.exp(rng.normal(0, 1.5, n)).astype(np.float32)
    return ImatrixData(full, m.imatrix.datasets, m.imatrix.chunk_count, m.imatrix.path)


@pytest.mark.parametrize("ftype", NEEDS_IMATRIX, ids=lambda f: f.short_name)
@pytest.mark.parametrize("model", list(LIVE_MODELS))
def test_live_types_that_need_an_imatrix(live, model, ftype, tmp_path):
    """The file types llama-quantize refuses without a matrix, with a complete one: every tensor's
    type and bytes equal llama_model_quantize's (IQ1/IQ2/IQ3_XXS mixtures, MoE and GQA rules)."""
    _check_live(live[model], ftype, _full_matrix(live[model], model), tmp_path / "out.gguf")


def test_live_converter_slabs(live, tmp_path):
    """pipeline._encode in slabs that cut across experts gives llama.cpp's bytes for a 3-D tensor."""
    from kquant import pipeline
    from kquant.io.gguf import GGUFFile
    from kquant.plan.imatrix import weights_for

    m = live["moe"]
    ftype = FileType.MOSTLY_Q4_K_M
    dst = tmp_path / "out.gguf"
    assert refpipeline.llama_quantize_rc(m.src, dst, ftype, imatrix=m.imatrix) == 0
    with GGUFFile(dst) as g:
        for name in ("blk.0.ffn_down_exps.weight", "blk.0.ffn_gate_exps.weight"):
            x, _ = m.data[name]
            ti = g.tensor(name)
            w = weights_for(m.imatrix.weights, name, x.shape, BF16, ti.qtype, ftype)
            pt = pipeline.PlannedTensor(SimpleNamespace(name=name, shape=x.shape), ti.qtype, w)
            rows = x.reshape(-1, x.shape[-1])
            parts = [pipeline._encode(rows[a : a + 5], pt, a) for a in range(0, rows.shape[0], 5)]
            assert np.array_equal(np.concatenate(parts).reshape(-1), g.data(name)), name


def test_live_size_mismatch_and_nonfinite(live, tmp_path):
    """A wrong-size entry (not token_embd) and a non-finite value: llama_model_quantize fails, kquant raises."""
    from kquant import pipeline
    from kquant.plan.imatrix import weights_for

    m = live["dense"]
    bad = dict(m.imatrix.weights)
    bad["blk.0.attn_q.weight"] = np.ones(128, np.float32)
    assert refpipeline.llama_quantize_rc(m.src, tmp_path / "a.gguf", FileType.MOSTLY_Q4_K_M, weights=bad) != 0
    with pytest.raises(InputError, match="imatrix size 128 is different from tensor size 256 for blk.0.attn_q.weight"):
        weights_for(bad, "blk.0.attn_q.weight", (ROWS, 256), BF16, QType.Q4_K, FileType.MOSTLY_Q4_K_M)
    spec = SimpleNamespace(arch="llama", n_layer=1, n_head=4, n_head_kv=4, n_expert=0, kv=[],
                           tensors=[SimpleNamespace(name="blk.0.attn_q.weight", shape=(ROWS, 256), ref_type=BF16, raw_type=None)])
    with pytest.raises(InputError, match="blk.0.attn_q.weight"):  # the converter's own lookup, at plan time
        pipeline.plan_from_spec(spec, FileType.MOSTLY_Q4_K_M, None, ImatrixData(bad, [], 1, "bad.gguf"))

    # F16 (a shape fallback) ignores the weights, but llama-quantize still looks them up and checks the size
    odd = dict(m.imatrix.weights)
    odd["blk.0.odd.weight"] = np.ones(32, np.float32)
    assert refpipeline.llama_quantize_rc(m.src, tmp_path / "c.gguf", FileType.MOSTLY_Q4_K_M, weights=odd) != 0
    with pytest.raises(InputError, match="imatrix size 32 is different from tensor size 40"):
        weights_for(odd, "blk.0.odd.weight", (ROWS, 40), BF16, QType.F16, FileType.MOSTLY_Q4_K_M)

    nan = dict(m.imatrix.weights)
    nan["blk.99.attn_q.weight"] = np.where(np.arange(256) == 7, np.nan, 1).astype(np.float32)  # even unused
    assert refpipeline.llama_quantize_rc(m.src, tmp_path / "b.gguf", FileType.MOSTLY_Q4_K_M, weights=nan) != 0
    ents = {k: (v.reshape(1, -1), _f32(1)) for k, v in nan.items()}
    with pytest.raises(InputError, match="blk.99.attn_q.weight.*non-finite"):
        load_imatrix(gguf_imatrix(tmp_path / "nan.gguf", ents))
