"""Q2_K, Q3_K and Q6_K kernels against libggml, byte for byte.

Quantize: kquant.kernels.q2_k / q3_k / q6_k vs ggml_quantize_chunk (kquant.reference), with and
without importance weights (the _ref and _impl paths), over many value distributions and
shapes, with fresh random seeds each run (the seed is in every failure message). Dequantize: vs
ggml's to_float (bitwise) and gguf-py's numpy dequantizer, on real and on raw random blocks.
"""

from __future__ import annotations

import numpy as np
import pytest

from kquant import reference
from kquant.kernels import q2_k, q3_k, q6_k
from kquant.types import QK_K, QType

pytestmark = pytest.mark.skipif(not reference.available(), reason="llama-cpp-python (libggml) not installed")

KERNELS = {**q2_k.KERNELS, **q3_k.KERNELS, **q6_k.KERNELS}
TYPES = [QType.Q2_K, QType.Q3_K, QType.Q6_K]
EMPTY = np.zeros(0, dtype=np.float32)

KINDS = [
    "normal",
    "student_t",
    "laplace",
    "outlier_cols",
    "zero_rows",
    "zero_subblocks",
    "constant_rows",
    "tiny",
    "huge",
    "single_nonzero",
    "pm_max",
    "ties",
    "few_levels",
    "subnormal",
    "near_flt_min",
    "mixed_scale",
    "positive",
    "negative",
    "nan_inf",
]


def make_x(kind: str, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """A float32 (rows, cols) test matrix of the named distribution."""
    shape = (rows, cols)
    if kind == "normal":
        x = rng.standard_normal(shape)
    elif kind == "student_t":
        x = rng.standard_t(2.5, shape) * 0.02
    elif kind == "laplace":
        x = rng.laplace(0.0, 0.05, shape)
    elif kind == "outlier_cols":
        x = rng.standard_normal(shape) * 0.02
        cols_out = rng.choice(cols, size=max(1, cols // 64), replace=False)
        x[:, cols_out] *= rng.uniform(20, 200, size=cols_out.size)
    elif kind == "zero_rows":
        x = rng.standard_normal(shape)
        x[::2] = 0.0
        x[1::4, : cols // 2] = -0.0
    elif kind == "zero_subblocks":  # some 16-value sub-blocks all zero, others tiny or normal
        x = rng.standard_normal(shape).reshape(rows, -1, 16)
        m = rng.random(x.shape[:2])
        x[m < 0.3] = 0.0
        x[(m >= 0.3) & (m < 0.4)] *= 1e-20
        x = x.reshape(shape)
    elif kind == "constant_rows":
        x = np.repeat(rng.standard_normal((rows, 1)), cols, axis=1)
        x[::3] = 1.0
        x[1::3] = -0.5
    elif kind == "tiny":
        x = rng.standard_normal(shape) * 10.0 ** rng.uniform(-30, -8, (rows, 1))
    elif kind == "huge":
        x = rng.uniform(-1, 1, shape) * rng.uniform(1e4, 6e4, (rows, 1))
    elif kind == "single_nonzero":
        x = np.zeros(shape)
        x[np.arange(rows), rng.integers(0, cols, rows)] = rng.standard_normal(rows) * 3
    elif kind == "pm_max":
        x = rng.choice([-1.0, 1.0], shape) * rng.uniform(0.1, 10, (rows, 1))
        x[:, 1::7] *= rng.uniform(0, 1, (rows, len(range(1, cols, 7))))
    elif kind == "ties":  # equal |max| with both signs; many exact rounding midpoints
        x = rng.integers(-8, 9, shape) * 0.25
    elif kind == "few_levels":
        x = rng.integers(-2, 3, shape).astype(np.float64) * rng.uniform(0.001, 1, (rows, 1))
    elif kind == "subnormal":
        x = rng.standard_normal(shape) * 1e-40
    elif kind == "near_flt_min":
        x = rng.standard_normal(shape) * 10.0 ** rng.uniform(-38.5, -36, (rows, 1))
    elif kind == "mixed_scale":  # per-value magnitudes 1e-6..1e4: fp16 sub-block scales underflow
        x = rng.standard_normal(shape) * 10.0 ** rng.integers(-6, 5, shape)
    elif kind == "nan_inf":
        x = rng.standard_normal(shape)
        m = rng.random(shape)
        x[m < 0.01] = np.nan
        x[(m >= 0.01) & (m < 0.02)] = np.inf
        x[(m >= 0.02) & (m < 0.03)] = -np.inf
    elif kind == "positive":  # min > 0 (clamped to 0 by the qkx searches)
        x = rng.uniform(0.5, 2.0, shape)
    elif kind == "negative":  # max < 0
        x = -rng.uniform(0.5, 2.0, shape)
    else:  # pragma: no cover
        raise ValueError(kind)
    return np.ascontiguousarray(x, dtype=np.float32)


def make_w(kind: str, cols: int, rng: np.random.Generator) -> np.ndarray:
    """An importance row (imatrix column weights) of the named kind."""
    if kind == "uniform":
        w = rng.uniform(0.01, 2.0, cols)
    elif kind == "zeros":
        w = rng.uniform(0.0, 1.0, cols)
        w[rng.random(cols) < 0.3] = 0.0
    elif kind == "zero_subblocks":
        w = rng.uniform(0.0, 1.0, cols).reshape(-1, 16)
        w[rng.random(w.shape[0]) < 0.3] = 0.0
        w = w.reshape(-1)
    elif kind == "heavy":
        w = np.abs(rng.standard_t(1.5, cols)) * 10.0
    elif kind == "all_zero":
        w = np.zeros(cols)
    else:  # pragma: no cover
        raise ValueError(kind)
    return w.astype(np.float32)


def ours(t: QType, x: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    out = np.zeros((x.shape[0], t.row_size(x.shape[1])), dtype=np.uint8)
    KERNELS[t].quantize(x, EMPTY if w is None else w, out)
    return out


def check(t: QType, x: np.ndarray, w: np.ndarray | None, what: str) -> None:
    got = ours(t, x, w)
    want = reference.quantize(x, t, w)
    if not np.array_equal(got, want):
        bad = np.argwhere(got != want)
        r, c = bad[0]
        b = c // t.type_size
        raise AssertionError(
            f"{t.name} {what}: {len(bad)} bytes differ; first row {r} block {b}: "
            f"got {got[r, b * t.type_size:(b + 1) * t.type_size].tolist()} "
            f"want {want[r, b * t.type_size:(b + 1) * t.type_size].tolist()}"
        )


def fresh_rng():
    seed = int(np.random.SeedSequence().entropy % 2**63)
    return seed, np.random.default_rng(seed)


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("kind", KINDS)
def test_quantize_unweighted(t, kind):
    seed, rng = fresh_rng()
    for rows, cols in [(1, QK_K), (9, 2 * QK_K), (3, 4096 + QK_K)]:
        x = make_x(kind, rows, cols, rng)
        check(t, x, None, f"{kind} {rows}x{cols} seed={seed}")


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("wkind", ["uniform", "zeros", "zero_subblocks", "heavy", "all_zero"])
def test_quantize_weighted(t, wkind):
    seed, rng = fresh_rng()
    for kind in KINDS:
        for rows, cols in [(1, QK_K), (4, 4 * QK_K)]:
            x = make_x(kind, rows, cols, rng)
            w = make_w(wkind, cols, rng)
            check(t, x, w, f"{kind} {rows}x{cols} weights={wkind} seed={seed}")


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_quantize_many_rows(t):
    """A larger matrix, so every prange thread gets rows; both paths."""
    seed, rng = fresh_rng()
    x = make_x("normal", 128, 4096, rng) * np.float32(0.03)
    check(t, x, None, f"128x4096 seed={seed}")
    check(t, x, make_w("uniform", 4096, rng), f"128x4096 weighted seed={seed}")


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_quantize_zero_weight_outliers(t):
    """Huge values that carry zero importance among tiny weighted ones: the fitted scales ignore
    them, so x/d gets far outside nearest_int's exact range."""
    seed, rng = fresh_rng()
    for _ in range(4):
        rows, cols = 8, 4 * QK_K
        x = rng.standard_normal((rows, cols)) * 10.0 ** rng.uniform(-10, -2)
        w = rng.uniform(0.5, 1.0, cols)
        per = int(rng.choice([16, 32, 64, 256]))
        idx = np.arange(0, cols, per) + rng.integers(0, per, cols // per)
        w[idx] = 0.0
        x[:, idx] = rng.choice([-1.0, 1.0], (rows, idx.size)) * 10.0 ** rng.uniform(2, 4.7)
        check(t, x.astype(np.float32), w.astype(np.float32), f"zero-weight outliers per={per} seed={seed}")


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_quantize_rounding_boundaries(t):
    """Values on the exact .5 points of a sub-block scale, nudged by an ulp either way."""
    seed, rng = fresh_rng()
    rows, cols = 32, 512
    nmax = {QType.Q2_K: 3, QType.Q3_K: 4, QType.Q6_K: 32}[t]
    lv = rng.integers(-2 * nmax, 2 * nmax + 1, (rows, cols)) * 0.5
    x = (lv / nmax * rng.uniform(0.01, 100, (rows, 1))).astype(np.float32)
    x += (rng.integers(-1, 2, x.shape) * np.spacing(x)).astype(np.float32)
    check(t, x, None, f"boundaries seed={seed}")
    check(t, x, make_w("uniform", cols, rng), f"boundaries weighted seed={seed}")


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_dequantize(t):
    import gguf

    _, rng = fresh_rng()
    rows, cols = 17, 4 * QK_K
    # quantized real data, plus raw random blocks (any code, any finite fp16 scale)
    q1 = ours(t, make_x("normal", rows, cols, rng), None)
    q2 = rng.integers(0, 256, q1.shape, dtype=np.uint8)
    blocks = q2.reshape(rows, -1, t.type_size)
    for pos in {QType.Q2_K: (81, 83), QType.Q3_K: (109,), QType.Q6_K: (209,)}[t]:
        blocks[:, :, pos] &= 0xBB  # keep the fp16 exponent < 31 (finite scales)
    for q in (q1, q2):
        got = np.empty((rows, cols), dtype=np.float32)
        KERNELS[t].dequantize(q, got)
        want = reference.dequantize(q, t, (rows, cols))
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
        g = gguf.quants.dequantize(q, gguf.GGMLQuantizationType(int(t)))
        np.testing.assert_array_equal(got, g)
