"""IQ3_XXS and IQ3_S kernels against libggml, byte for byte.

Tables: the grids, kmap and neighbour lists (iq3xs_init_impl) against gguf-py's dequantizer grids
and a literal port of ggml's loops. Quantize: kquant.ggml.kernels.iq3 vs ggml_quantize_chunk without
and with importance weights, over many value distributions. Inputs on which ggml aborts (NaN, Inf,
overflow to Inf inside the search) are checked to abort ggml (in a child process) and to be
flagged by kquant. Dequantize: vs ggml's to_float (bitwise) and gguf-py.
Seeds are fresh on every run (set KQUANT_TEST_SEED to replay one; failures print it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from oracle import reference
from kquant.ggml import quants
from kquant.ggml.kernels import iq3
from kquant.types import BLOCK_DTYPES, QK_K, QType

from kernel_data import KERNELS, check, fresh_rng, make_w, make_x, ours

pytestmark = pytest.mark.skipif(not reference.available(), reason="llama-cpp-python (libggml) not installed")

TYPES = [QType.IQ3_XXS, QType.IQ3_S]
GRID = {QType.IQ3_XXS: 256, QType.IQ3_S: 512}

KINDS = [
    "normal",
    "student_t",
    "laplace",
    "outlier_cols",
    "zero_rows",
    "constant_rows_signed",
    "tiny",
    "huge",
    "single_nonzero",
    "pm_max",
    "positive",
    "negative",
    "ties",
    "few_levels",
    "subblock_scales",
    "zero_subblocks",
    "zero_subblocks16",
    "mixed_scale",
    "subnormal",
    "near_flt_min",
    "signed_zeros",  # NaNs replaced (ggml aborts on NaN: see test_abort)
]
WKINDS = ["uniform", "zeros", "zero_subblocks", "heavy", "all_zero"]
SHAPES = [(1, QK_K), (5, 2 * QK_K)]


def x_of(kind, rows, cols, rng):
    x = make_x(kind, rows, cols, rng)
    x[np.isnan(x)] = 1.0
    return x


# ------------------------------------------------------------------------------------------- tables
def _ggml_init(grid_size):
    """iq3xs_init_impl's loops, literally: (kmap, kneighbors)."""
    kgrid = iq3.KGRID_256 if grid_size == 256 else iq3.KGRID_512
    nwant = 2 if grid_size == 256 else 3
    grid = [[2 * ((int(g) >> 3 * i) & 7) + 1 for i in range(4)] for g in kgrid]
    kmap = [-1] * 4096
    for i, p in enumerate(grid):
        kmap[sum(((q - 1) // 2) << 3 * k for k, q in enumerate(p))] = i
    gridarr = np.array(grid)
    neighbours = []
    for i in range(4096):
        if kmap[i] >= 0:
            continue
        pos = np.array([2 * ((i >> 3 * k) & 7) + 1 for k in range(4)])
        d2 = ((gridarr - pos) ** 2).sum(axis=1).tolist()
        dist2 = sorted((d2[j], j) for j in range(grid_size))  # qsort with iq3_compare_func
        kmap[i] = -(len(neighbours) + 1)
        start = len(neighbours)
        neighbours.append(0)
        d, nhave = dist2[0][0], 1
        for dj, j in dist2:
            if dj > d:
                if nhave == nwant:
                    break
                d, nhave = dj, nhave + 1
            neighbours.append(j)
        neighbours[start] = len(neighbours) - start - 1
    return np.array(kmap), np.array(neighbours)


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_tables(t):
    import gguf

    gs = GRID[t]
    levels, kmap, nb = iq3.grid_tables(gs)
    assert iq3.grid_tables(gs)[1] is kmap  # built once
    want_kmap, want_nb = _ggml_init(gs)
    np.testing.assert_array_equal(kmap, want_kmap)
    np.testing.assert_array_equal(nb, want_nb)
    # the search's layout: each list in ggml's order, padded with copies of its last candidate
    start, npad, nq, nidx = iq3.search_tables(gs)
    for u in np.flatnonzero(kmap < 0):
        o = -kmap[u] - 1
        lst = list(nb[o + 1 : o + 1 + nb[o]])
        assert npad[u] % iq3.PAD == 0 and 0 <= npad[u] - len(lst) < iq3.PAD
        got = nidx[start[u] : start[u] + npad[u]]
        assert list(got) == lst + lst[-1:] * (int(npad[u]) - len(lst))
        np.testing.assert_array_equal(nq[:, start[u] : start[u] + npad[u]], 2 * levels[got].T + 1)
    assert not npad[kmap >= 0].any()
    cls = getattr(gguf.quants, t.name)
    cls.init_grid()
    np.testing.assert_array_equal(iq3.dequant_grid(gs).view(np.uint8).reshape(-1, 4),
                                  cls.grid.reshape(-1, 4).astype(np.uint8))
    np.testing.assert_array_equal(iq3.KSIGNS, np.frombuffer(gguf.quants.IQ2_XXS.ksigns, dtype=np.uint8))


# ----------------------------------------------------------------------------------------- quantize
@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("kind", KINDS)
def test_quantize_unweighted(t, kind):
    s, rng = fresh_rng()
    for rows, cols in SHAPES:
        check(t, x_of(kind, rows, cols, rng), None, f"{kind} {rows}x{cols} seed={s}")


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("wkind", WKINDS)
def test_quantize_weighted(t, wkind):
    s, rng = fresh_rng()
    for kind in KINDS:
        rows, cols = SHAPES[len(kind) % 2]
        x, w = x_of(kind, rows, cols, rng), make_w(wkind, cols, rng)
        check(t, x, w, f"{kind} {rows}x{cols} weights={wkind} seed={s}")


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_quantize_hand_built(t):
    """One-block cases: zeros, a constant, one outlier, +-max, one zero sub-block among others
    (IQ3_S then shifts the later sub-blocks' qs/signs down, as ggml's writer does)."""
    s, rng = fresh_rng()
    cases = np.zeros((8, QK_K), dtype=np.float32)
    cases[1] = 0.3
    cases[2, 77] = -5.0
    cases[3] = np.where(np.arange(QK_K) % 2, 1.0, -1.0)
    cases[4] = rng.standard_normal(QK_K)
    cases[4, 32:64] = 0.0
    cases[5] = rng.standard_normal(QK_K)
    cases[5, :32] = 0.0
    cases[5, 200:232] = -0.0
    cases[6] = rng.standard_normal(QK_K) * 1e-9  # IQ3_XXS: below GROUP_MAX_EPS_IQ3_XXS
    cases[7, ::8] = -1.0  # one negative per 8: an odd flip count in every group
    for w in (None, make_w("heavy", QK_K, rng)):
        check(t, cases, w, f"hand-built seed={s}")


# --------------------------------------------------------------------------------- ggml's aborts
_CHILD = """
import ctypes, glob, sys
import numpy as np
d = sys.argv[1]
lib = ctypes.CDLL(sorted(glob.glob(d + "/libggml-base.so*"))[0])
lib.ggml_quantize_chunk.restype = ctypes.c_size_t
i64, ptr = ctypes.c_int64, ctypes.c_void_p
lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ptr, ptr, i64, i64, i64, ptr]
z = np.load(sys.argv[2])
x, w, tid = z["x"], z["w"], int(z["tid"])
out = np.zeros(4096, np.uint8)
lib.ggml_quantize_init(tid)
lib.ggml_quantize_chunk(tid, x.ctypes.data, out.ctypes.data, 0, 1, x.size, w.ctypes.data if w.size else None)
sys.stdout.write("survived")
"""


def _ggml_aborts(t, x, w, tmp_path) -> bool:
    """Whether ggml_quantize_chunk aborts (SIGABRT) on one row x with weights w, in a child process."""
    p = tmp_path / "in.npz"
    np.savez(p, x=x.reshape(-1), w=np.zeros(0, np.float32) if w is None else w, tid=int(t))
    env = dict(os.environ, GGML_NO_BACKTRACE="1")
    r = subprocess.run([sys.executable, "-c", _CHILD, reference.lib_dir(), str(p)], capture_output=True, text=True,
                       timeout=60, env=env)
    assert (r.returncode, r.stdout) in ((0, "survived"), (-signal.SIGABRT, "")), (r.returncode, r.stderr[-2000:])
    return r.returncode != 0


def _flagged(t, q) -> bool:
    """kquant's abort mark: a NaN fp16 scale d."""
    d = q.reshape(-1).view(BLOCK_DTYPES[t])["d"]
    return bool((((d & 0x7C00) == 0x7C00) & ((d & 0x3FF) != 0)).any())


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_abort(t, tmp_path):
    """Where ggml aborts (run in a child process), kquant marks the block (kquant.ggml.quants then refuses
    the tensor); where ggml does not, kquant matches its bytes."""
    s, rng = fresh_rng()
    x = rng.standard_normal(QK_K).astype(np.float32)
    nan = x.copy()
    nan[rng.integers(QK_K)] = np.nan
    inf = x.copy()
    inf[rng.integers(QK_K)] = -np.inf
    w_max = np.full(QK_K, 3e38, dtype=np.float32)  # finite weights that overflow the search
    cases = {"nan": (nan, None), "inf": (inf, None), "1e20": (x * np.float32(1e20), None), "w=3e38": (x, w_max),
             "1e12": (x * np.float32(1e12), None), "1e6": (x * np.float32(1e6), None)}
    aborted = []
    for what, (xi, w) in cases.items():
        got = ours(t, xi.reshape(1, -1), w)
        aborts = _ggml_aborts(t, xi, w, tmp_path)
        assert _flagged(t, got) == aborts, f"{what}: ggml aborts={aborts} seed={s}"
        if aborts:
            aborted.append(what)
            with pytest.raises(ValueError, match=f"values too large for {t.name}"):
                quants.quantize(xi.reshape(1, -1), t, w, check_finite=False)
        else:
            np.testing.assert_array_equal(got, reference.quantize(xi.reshape(1, -1), t, w), err_msg=f"{what} seed={s}")
    assert {"1e20", "w=3e38"} <= set(aborted) and "1e6" not in aborted  # (a NaN aborts depending on where it is)


# ------------------------------------------------------------------------------- kquant.quantize
@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_quantize_api_threads(t):
    """Through kquant.quantize (row ranges on threads), with and without weights; a non-finite input
    is refused (ggml aborts on it)."""
    s, rng = fresh_rng()
    x = (rng.standard_normal((48, 1024)) * rng.uniform(1e-3, 10, (48, 1))).astype(np.float32)
    for w in (None, make_w("uniform", 1024, rng)):
        got = quants.quantize(x, t, w)
        np.testing.assert_array_equal(got, reference.quantize(x, t, w), err_msg=f"seed={s}")
        np.testing.assert_array_equal(quants.dequantize(got, t, x.shape), reference.dequantize(got, t, x.shape))
    x[3, 5] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        quants.quantize(x, t)


# --------------------------------------------------------------------------------------- dequantize
@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_dequantize(t):
    import gguf

    s, rng = fresh_rng()
    rows, cols = 9, 1024
    # quantized real data, plus raw random blocks (any grid index, sign and scale; finite d)
    q1 = ours(t, make_x("normal", rows, cols, rng), None)
    q2 = rng.integers(0, 256, q1.shape, dtype=np.uint8)
    q2.reshape(rows, -1, t.type_size)[:, :, iq3.XXS_D + 1 if t == QType.IQ3_XXS else iq3.S_D + 1] &= 0xBB  # finite d
    for q in (q1, q2):
        got = np.empty((rows, cols), dtype=np.float32)
        KERNELS[t].dequantize(q, got)
        want = reference.dequantize(q, t, (rows, cols))
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32), err_msg=f"seed={s}")
        g = gguf.quants.dequantize(q, gguf.GGMLQuantizationType(int(t)))
        np.testing.assert_array_equal(got, g, err_msg=f"seed={s}")
