"""Q2_K, Q3_K and Q6_K kernels against libggml, byte for byte.

Quantize: kquant.ggml.kernels.q2_k / q3_k / q6_k vs ggml_quantize_chunk (oracle.reference), with and
without importance weights (the _ref and _impl paths), over many value distributions and
shapes, with fresh random seeds each run (the seed is in every failure message; set
KQUANT_TEST_SEED to replay one). Dequantize: vs ggml's to_float (bitwise) and gguf-py's numpy
dequantizer, on real and on raw random blocks.
"""

from __future__ import annotations

import numpy as np
import pytest

from oracle import reference
from kquant.types import QK_K, QType

from kernel_data import check_dequantize, check, fresh_rng, make_w, make_x, ours

pytestmark = pytest.mark.skipif(not reference.available(), reason="llama-cpp-python (libggml) not installed")

TYPES = [QType.Q2_K, QType.Q3_K, QType.Q6_K]

KINDS = [
    "normal",
    "student_t",
    "laplace",
    "outlier_cols",
    "zero_rows",
    "zero_subblocks16",
    "constant_rows_signed",
    "tiny",
    "huge",
    "single_nonzero",
    "pm_max",
    "ties",
    "few_levels",
    "subnormal",
    "near_flt_min",
    "mixed_scale",
    "positive_unit",
    "negative_unit",
    "nan_inf",
]


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
    _, rng = fresh_rng()
    rows, cols = 17, 4 * QK_K
    # quantized real data, plus raw random blocks (any code, any finite fp16 scale)
    q1 = ours(t, make_x("normal", rows, cols, rng), None)
    q2 = rng.integers(0, 256, q1.shape, dtype=np.uint8)
    blocks = q2.reshape(rows, -1, t.type_size)
    for pos in {QType.Q2_K: (81, 83), QType.Q3_K: (109,), QType.Q6_K: (209,)}[t]:
        blocks[:, :, pos] &= 0xBB  # keep the fp16 exponent < 31 (finite scales)
    for q in (q1, q2):
        check_dequantize(t, q, rows, cols)
