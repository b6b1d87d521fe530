"""The table cache beside numba's (kquant.ggml.kernels._tablecache): stored once, loaded by later
calls, rebuilt when missing, damaged, for other code or unwritable; the i-quant tables load
without their builders."""

from __future__ import annotations

import os

import numpy as np
import pytest

from kquant.ggml.kernels import _iqgrid, _tablecache, iq3


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    d.mkdir()
    monkeypatch.setattr(_tablecache, "cache_dir", lambda: str(d))
    return d


def _counting_builder(calls, value=3):
    def build():
        calls.append(1)
        return {"a": np.arange(10, dtype=np.int32) * value, "b": np.full((2, 3), value, dtype=np.uint16)}

    return build


def _check(arrays, value=3):
    np.testing.assert_array_equal(arrays["a"], np.arange(10, dtype=np.int32) * value)
    assert arrays["a"].dtype == np.int32 and arrays["b"].dtype == np.uint16 and arrays["b"].shape == (2, 3)
    assert (arrays["b"] == value).all()


def test_stored_then_loaded(cache):
    calls = []
    _check(_tablecache.load_or_build("t", "k1", _counting_builder(calls)))
    assert calls == [1] and os.listdir(cache) == ["t.kqtab.npz"]  # no temporary left behind
    _check(_tablecache.load_or_build("t", "k1", _counting_builder(calls)))
    assert calls == [1]  # loaded, not built


def test_other_key_rebuilds_and_replaces(cache):
    calls = []
    _tablecache.load_or_build("t", "k1", _counting_builder(calls))
    _check(_tablecache.load_or_build("t", "k2", _counting_builder(calls, 5)), 5)
    _check(_tablecache.load_or_build("t", "k2", _counting_builder(calls, 5)), 5)
    assert len(calls) == 2


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "bit_flip", "forged_array"])
def test_damaged_file_is_rebuilt(cache, damage):
    calls = []
    _tablecache.load_or_build("t", "k", _counting_builder(calls))
    path = cache / "t.kqtab.npz"
    raw = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(len(raw)))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "bit_flip":  # inside the data of the last array: the zip's CRC or the digest catches it
        b = bytearray(raw)
        b[raw.rfind(np.full((2, 3), 3, dtype=np.uint16).tobytes())] ^= 1
        path.write_bytes(bytes(b))
    else:  # a well-formed file whose arrays do not match its digest
        with np.load(path) as f:
            kept = {n: f[n] for n in f.files}
        kept["a"] = kept["a"] + 1
        np.savez(path, **kept)
    _check(_tablecache.load_or_build("t", "k", _counting_builder(calls)))
    assert len(calls) == 2
    _check(_tablecache.load_or_build("t", "k", _counting_builder(calls)))  # the rebuilt file is whole again
    assert len(calls) == 2


def test_unwritable_or_absent_cache_still_builds(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(_tablecache, "cache_dir", lambda: str(tmp_path / "missing"))  # every write fails
    _check(_tablecache.load_or_build("t", "k", _counting_builder(calls)))
    assert not (tmp_path / "missing").exists()
    monkeypatch.setattr(_tablecache, "cache_dir", lambda: None)  # numba caches nothing
    _check(_tablecache.load_or_build("t", "k", _counting_builder(calls)))
    assert len(calls) == 2


def test_stored_decorator(cache):
    calls = []

    @_tablecache.stored("dec")
    def tables(n):
        calls.append(n)
        return np.arange(n, dtype=np.int64), np.ones(n, dtype=np.float32)

    a, b = tables(4)
    a2, b2 = tables(4)
    assert calls == [4] and sorted(os.listdir(cache)) == ["dec-4.kqtab.npz"]
    np.testing.assert_array_equal(a2, np.arange(4))
    np.testing.assert_array_equal(b2, np.ones(4))
    assert not a.flags.writeable and not a2.flags.writeable and b2.dtype == np.float32
    tables(5)
    assert calls == [4, 5]


def test_cache_dir_is_numbas():
    d = _tablecache.cache_dir()
    assert d is not None and os.path.samefile(d, _iqgrid.lists._cache._cache_path)


def test_iq_tables_load_without_their_builders(monkeypatch):
    """Stored once (by this process or an earlier one), the i-quant tables load in a process that
    could not build them: what a warm start does."""
    want = {w: _iqgrid.search_tables(w) + _iqgrid.search_lists(w) for w in range(4)}
    want3 = {g: iq3.grid_tables(g) + iq3.search_tables(g) for g in (256, 512)}

    def refuse(*args):
        raise AssertionError("built again")

    monkeypatch.setattr(_iqgrid, "_build", refuse)
    monkeypatch.setattr(_iqgrid, "_lane_lists", refuse)
    _iqgrid._tables.cache_clear()
    try:
        for w, arrays in want.items():
            for a, b in zip(_iqgrid.search_tables(w) + _iqgrid.search_lists(w), arrays):
                assert a.dtype == b.dtype and a.flags.c_contiguous
                np.testing.assert_array_equal(a, b)
    finally:
        _iqgrid._tables.cache_clear()
    for g, arrays in want3.items():  # iq3's: the stored copies equal a fresh build
        fresh = iq3.grid_tables.__wrapped__.build(g)
        for a, b in zip(arrays[:3], fresh):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)


_SLOTS_CHILD = """
import numpy as np
from kquant.ggml import quants
from kquant.ggml.kernels import _iqgrid, iq1
from kquant.types import QType
x = np.random.default_rng(5).standard_normal((3, 512)).astype(np.float32)
w = np.random.default_rng(6).uniform(0.1, 2.0, 512).astype(np.float32)
k = quants.registry()[QType.IQ1_M]
assert not _iqgrid._SLOTS.any()  # nothing published yet
direct = np.zeros((3, QType.IQ1_M.row_size(512)), dtype=np.uint8)
assert k.quantize(x, w, direct) == 0  # no prepare: the kernel loads its tables in object mode
assert (_iqgrid._SLOTS != 0).sum() > 0
np.testing.assert_array_equal(direct, quants.quantize(x, QType.IQ1_M, w))
kx, codes, nidx, levels = _iqgrid.lists(_iqgrid.GRID_1S)
for got, want in zip((kx, codes, nidx, levels), _iqgrid.search_lists(_iqgrid.GRID_1S)):
    assert got.dtype == want.dtype and got.shape == want.shape and (got == want).all()
np.testing.assert_array_equal(iq1._packed(), iq1.packed_lists())
print("ok")
"""


def test_slots_without_prepare():
    """Compiled code finds the tables through the published slots; a kernel called before any
    `prepare` (a fresh process) loads them itself and gives kquant.quantize's bytes."""
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-c", _SLOTS_CHILD], capture_output=True, text=True, timeout=600,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-2000:]
