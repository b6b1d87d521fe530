"""Legacy block kernels (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) against libggml, byte for byte.

Quantize: kquant.kernels.legacy vs ggml_quantize_chunk (kquant.reference), with and without
importance weights, over many value distributions and shapes. Dequantize: vs ggml's to_float
(bitwise) and gguf-py's numpy dequantizer.
"""

from __future__ import annotations

import numpy as np
import pytest

from kquant import reference
from kquant.kernels.legacy import KERNELS
from kquant.types import QType

pytestmark = pytest.mark.skipif(not reference.available(), reason="llama-cpp-python (libggml) not installed")

TYPES = [QType.Q4_0, QType.Q4_1, QType.Q5_0, QType.Q5_1, QType.Q8_0]
EMPTY = np.zeros(0, dtype=np.float32)

FINITE_KINDS = [
    "normal",
    "student_t",
    "laplace",
    "outlier_cols",
    "zero_rows",
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
]
NONFINITE_KINDS = ["nan_inf", "random_bits", "signed_zeros"]


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
        x[:: 2] = 0.0
        x[1::4, : cols // 2] = -0.0
    elif kind == "constant_rows":
        x = np.repeat(rng.standard_normal((rows, 1)), cols, axis=1)
        x[::3] = 1.0
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
    elif kind == "ties":
        # equal |max| with both signs, rounding boundaries x*id + 0.5 exactly on .5
        x = rng.integers(-8, 9, shape) * 0.25
    elif kind == "few_levels":
        x = rng.integers(-2, 3, shape).astype(np.float64) * rng.uniform(0.001, 1, (rows, 1))
    elif kind == "subnormal":
        # float32 subnormals: 1/d overflows to inf inside ggml's ref quantizers
        x = rng.standard_normal(shape) * 1e-40
    elif kind == "near_flt_min":
        x = rng.standard_normal(shape) * 10.0 ** rng.uniform(-38.5, -36, (rows, 1))
    elif kind == "mixed_scale":
        x = rng.standard_normal(shape) * 10.0 ** rng.integers(-6, 5, shape)
    elif kind == "nan_inf":
        x = rng.standard_normal(shape)
        m = rng.random(shape)
        x[m < 0.01] = np.nan
        x[(m >= 0.01) & (m < 0.02)] = np.inf
        x[(m >= 0.02) & (m < 0.03)] = -np.inf
    elif kind == "random_bits":
        # any float32 bit pattern: NaNs with payloads, infinities, subnormals, huge values
        return rng.integers(0, 2**32, shape, dtype=np.uint64).astype(np.uint32).view(np.float32)
    elif kind == "signed_zeros":
        # ggml keeps the sign of the first zero that sets its min/max; NaNs mixed in
        x = rng.choice([0.0, -0.0, 0.0, -0.0, 1.0, -1.0, np.nan], shape) * rng.choice([1.0, 0.0], (rows, 1), p=[0.5, 0.5])
        x[rng.random(shape) < 0.5] = rng.choice([0.0, -0.0])
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
            f"want {want[r, b * t.type_size:(b + 1) * t.type_size].tolist()} "
            f"x={x[r, b * 32:(b + 1) * 32].tolist()}"
        )


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("kind", FINITE_KINDS + NONFINITE_KINDS)
def test_quantize_unweighted(t, kind):
    rng = np.random.default_rng()
    for rows, cols in [(1, 32), (7, 64), (33, 128), (3, 4096 + 256)]:
        x = make_x(kind, rows, cols, rng)
        check(t, x, None, f"{kind} {rows}x{cols}")


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("wkind", ["uniform", "zeros", "heavy", "all_zero"])
def test_quantize_weighted(t, wkind):
    rng = np.random.default_rng()
    for kind in FINITE_KINDS:
        for rows, cols in [(1, 32), (5, 96), (3, 4096 + 256)]:
            x = make_x(kind, rows, cols, rng)
            w = make_w(wkind, cols, rng)
            check(t, x, w, f"{kind} {rows}x{cols} weights={wkind}")


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_quantize_rounding_boundaries(t):
    """Values placed on the exact .5 points of each block's scale, where truncation vs rounding matters."""
    rng = np.random.default_rng()
    rows, cols = 64, 256
    nmax = {QType.Q4_0: 8, QType.Q4_1: 15, QType.Q5_0: 16, QType.Q5_1: 31, QType.Q8_0: 127}[t]
    lv = rng.integers(-2 * nmax, 2 * nmax + 1, (rows, cols)) * 0.5
    x = (lv / nmax * rng.uniform(0.01, 100, (rows, 1))).astype(np.float32)
    x += (rng.integers(-1, 2, x.shape) * np.spacing(x)).astype(np.float32)
    check(t, x, None, "boundaries")
    check(t, x, make_w("uniform", cols, rng), "boundaries weighted")


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_dequantize(t):
    import gguf

    rng = np.random.default_rng()
    rows, cols = 17, 512
    # quantized real data, plus raw random blocks (any code, any finite fp16 scale)
    q1 = ours(t, make_x("normal", rows, cols, rng), None)
    q2 = rng.integers(0, 256, q1.shape, dtype=np.uint8)
    blocks = q2.reshape(rows, -1, t.type_size)
    nscale = 2 if t in (QType.Q4_1, QType.Q5_1) else 1
    for s in range(nscale):  # keep fp16 exponent < 31 (finite scales)
        blocks[:, :, 2 * s + 1] &= 0xBB
    for q in (q1, q2):
        got = np.empty((rows, cols), dtype=np.float32)
        KERNELS[t].dequantize(q, got)
        want = reference.dequantize(q, t, (rows, cols))
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
        g = gguf.quants.dequantize(q, gguf.GGMLQuantizationType(int(t)))
        np.testing.assert_array_equal(got, g)


@pytest.mark.parametrize("t", [QType.Q4_1, QType.Q5_1], ids=lambda t: t.name)
def test_quantize_weighted_zero_range_after_search(t):
    """The only nonzero value has weight 0: make_qkx3_quants moves min to 0 == max mid-search and
    then divides by (max - min) = 0, which C turns into inf (no exception) and must be matched."""
    x = np.zeros((2, 32), dtype=np.float32)
    x[0, 26] = -1.7841711044311523
    x[1, 29] = -0.18550845980644226
    w = np.array(
        [0.0, 0.348, 0.6215, 0.02166, 0.8746, 0.854, 0.0443, 0.0, 0.1848, 0.6956, 0.155, 0.0, 0.9586, 0.985, 0.0, 0.1636,
         0.3949, 0.278, 0.9557, 0.2993, 0.5611, 0.4074, 0.1387, 0.3847, 0.0, 0.0, 0.0, 0.5819, 0.0765, 0.7299, 0.674, 0.0],
        dtype=np.float32,
    )
    check(t, x, w, "zero range after search")
