"""Legacy block kernels (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) against libggml, byte for byte.

Quantize: kquant.ggml.kernels.legacy vs ggml_quantize_chunk (oracle.reference), with and without
importance weights, over many value distributions and shapes. Dequantize: vs ggml's to_float
(bitwise) and gguf-py's numpy dequantizer.
"""

from __future__ import annotations

import numpy as np
import pytest

from oracle import reference
from kquant.types import QType

from kernel_data import check_dequantize, check, make_w, make_x, ours

pytestmark = pytest.mark.skipif(not reference.available(), reason="llama-cpp-python (libggml) not installed")

TYPES = [QType.Q4_0, QType.Q4_1, QType.Q5_0, QType.Q5_1, QType.Q8_0]

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
        check_dequantize(t, q, rows, cols)


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
