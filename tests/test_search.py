"""Scale searches: the scalar ports in kquant.ggml.kernels._search against the lane-vectorized
weighted legacy paths (kquant.ggml.kernels.legacy), and those paths against libggml on inputs the
per-family tests do not cover (squares that overflow, infinities, weights at the float32
extremes, chunk boundaries of the lane layout).

The scalar ports are no longer called by any kernel; the first group of tests keeps them
checked: a row quantizer written the way ggml writes quantize_row_q{4,5}_{0,1}_impl, calling
_search.make_qx_quants / make_qkx3_quants per block, must give the kernels' bytes.
"""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from oracle import reference
from kquant.ggml.kernels import legacy
from kquant.ggml.kernels._common import fp32_to_fp16
from kquant.ggml.kernels._search import make_qkx3_quants, make_qx_quants
from kquant.types import QType

QK = 32
WEIGHTED = [QType.Q4_0, QType.Q4_1, QType.Q5_0, QType.Q5_1]
# type -> (nmax, search, bytes per block, offset of qs); search 0 = make_qx_quants, 1 = make_qkx3_quants
SPEC = {
    QType.Q4_0: (8, 0, 18, 2),
    QType.Q5_0: (16, 0, 22, 6),
    QType.Q4_1: (15, 1, 20, 4),
    QType.Q5_1: (31, 1, 24, 8),
}


# ggml-quants.c quantize_row_q{4_0,5_0,4_1,5_1}_impl, one row, with the scalar _search ports
@njit(cache=True, error_model="numpy")
def _scalar_row(x, qw, y, nmax, qkx, ts, qs):
    n = x.shape[0]
    sum_x2 = np.float32(0.0)
    for j in range(n):
        sum_x2 += x[j] * x[j]
    sigma2 = np.float32(sum_x2 / np.float32(n))
    weight = np.empty(QK, dtype=np.float32)
    L8 = np.empty(QK, dtype=np.int8)
    L = np.empty(QK, dtype=np.uint8)
    Laux = np.empty(QK, dtype=np.uint8)
    for ib in range(n // QK):
        o = ib * QK
        for j in range(QK):
            weight[j] = qw[o + j] * np.sqrt(sigma2 + x[o + j] * x[o + j])
        p = ib * ts
        if qkx:
            d, the_min = make_qkx3_quants(
                QK, nmax, x[o : o + QK], weight, L, Laux, np.float32(-0.9), np.float32(0.05), 36, False
            )
            m = fp32_to_fp16(-the_min)
            y[p + 2] = np.uint8(m & 0xFF)
            y[p + 3] = np.uint8(m >> 8)
        else:
            d = make_qx_quants(QK, nmax, x[o : o + QK], L8, 1, weight)
            for j in range(QK):
                L[j] = np.uint8(L8[j])
        h = fp32_to_fp16(d)
        y[p] = np.uint8(h & 0xFF)
        y[p + 1] = np.uint8(h >> 8)
        qh = 0
        for j in range(QK // 2):
            lo = np.int64(L[j])
            hi = np.int64(L[j + QK // 2])
            y[p + qs + j] = np.uint8((lo & 15) | ((hi & 15) << 4))
            qh |= ((lo >> 4) & 1) << j
            qh |= ((hi >> 4) & 1) << (j + QK // 2)
        if nmax > 15:  # Q5_0 / Q5_1: qh after d (and m)
            for k in range(4):
                y[p + qs - 4 + k] = np.uint8((qh >> (8 * k)) & 0xFF)


def scalar(t: QType, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    nmax, qkx, ts, qs = SPEC[t]
    out = np.zeros((x.shape[0], t.row_size(x.shape[1])), dtype=np.uint8)
    for r in range(x.shape[0]):
        _scalar_row(x[r], w, out[r], nmax, qkx, ts, qs)
    return out


def kernel(t: QType, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    out = np.zeros((x.shape[0], t.row_size(x.shape[1])), dtype=np.uint8)
    legacy.KERNELS[t].quantize(x, w, out)
    return out


def inputs(rng: np.random.Generator, rows: int, cols: int):
    """(name, x) pairs: ordinary and degenerate blocks, and values whose squares overflow."""
    shape = (rows, cols)
    yield "normal", rng.standard_normal(shape)
    yield "student_t", rng.standard_t(2.5, shape) * 0.02
    x = rng.standard_normal(shape) * 0.02
    x[:, rng.choice(cols, max(1, cols // 50), replace=False)] *= 100
    yield "outliers", x
    x = rng.standard_normal(shape)
    x[:, : cols // 2] = 0.0  # all-zero blocks
    x[:, cols // 2 : cols // 2 + QK] = -1.5  # constant negative block (make_qkx3_quants: max <= min)
    x[:, -QK:] = 2.5  # constant positive block
    yield "degenerate", x
    yield "few_levels", rng.integers(-2, 3, shape) * rng.uniform(0.001, 1, (rows, 1))
    yield "tiny", rng.standard_normal(shape) * 10.0 ** rng.uniform(-42, -20, (rows, 1))
    yield "overflow_sq", rng.standard_normal(shape) * 1e20  # sum of squares = inf: inf weights
    yield "near_max", rng.uniform(-1, 1, shape) * 3.4e38
    yield "wide_range", rng.standard_normal(shape) * 10.0 ** rng.uniform(-40, 38, shape)


def weights(rng: np.random.Generator, cols: int):
    yield "uniform", rng.uniform(0.01, 2.0, cols)
    w = rng.uniform(0.0, 1.0, cols)
    w[rng.random(cols) < 0.3] = 0.0
    w[:QK] = 0.0  # a block without weight
    yield "zeros", w
    yield "heavy", np.abs(rng.standard_t(1.5, cols)) * 10.0
    yield "huge", rng.random(cols) * 1e30
    yield "subnormal", rng.random(cols) * 1e-40


SHAPES = [(2, QK), (3, 31 * QK), (2, 32 * QK), (2, 33 * QK), (2, 4096 + 96)]  # lanes: 1, 31, 32, 32+1, 4*32+3


def _assert_same(t, x, w, got, want, what):
    if not np.array_equal(got, want):
        r, c = np.argwhere(got != want)[0]
        b = c // t.type_size
        raise AssertionError(
            f"{t.name} {what}: first difference row {r} block {b}: got "
            f"{got[r, b * t.type_size:(b + 1) * t.type_size].tolist()} want "
            f"{want[r, b * t.type_size:(b + 1) * t.type_size].tolist()}"
        )


@pytest.mark.parametrize("t", WEIGHTED, ids=lambda t: t.name)
def test_scalar_ports_match_lane_kernels(t):
    """_search.make_qx_quants / make_qkx3_quants, block by block, give the lane kernels' bytes."""
    rng = np.random.default_rng()
    with np.errstate(all="ignore"):
        for rows, cols in SHAPES:
            for xname, x in inputs(rng, rows, cols):
                x = np.ascontiguousarray(x, dtype=np.float32)
                for wname, w in weights(rng, cols):
                    w = w.astype(np.float32)
                    _assert_same(t, x, w, kernel(t, x, w), scalar(t, x, w), f"{xname} {rows}x{cols} w={wname}")


@pytest.mark.skipif(not reference.available(), reason="llama-cpp-python (libggml) not installed")
@pytest.mark.parametrize("t", WEIGHTED, ids=lambda t: t.name)
def test_weighted_edges_against_libggml(t):
    """The lane kernels against ggml_quantize_chunk on the same inputs, plus infinities and NaN.

    NaN is only tested with one payload (np.nan): ggml's vectorized sums add in an operand order
    gcc chooses, so which of two different NaNs survives is not portable C semantics (and
    kquant.ggml.quants.quantize rejects non-finite input before a kernel runs)."""
    rng = np.random.default_rng()
    with np.errstate(all="ignore"):
        for rows, cols in SHAPES:
            cases = list(inputs(rng, rows, cols))
            x = rng.standard_normal((rows, cols))
            m = rng.random((rows, cols))
            x[m < 0.02] = np.inf
            x[m > 0.98] = -np.inf
            cases.append(("inf", x))
            x = rng.standard_normal((rows, cols))
            x[rng.random((rows, cols)) < 0.02] = np.nan
            cases.append(("nan", x))
            for xname, x in cases:
                x = np.ascontiguousarray(x, dtype=np.float32)
                for wname, w in weights(rng, cols):
                    w = w.astype(np.float32)
                    want = reference.quantize(x, t, w)
                    _assert_same(t, x, w, kernel(t, x, w), want, f"{xname} {rows}x{cols} w={wname}")
