"""Q4_K and Q5_K kernels against libggml, byte for byte.

Quantize: kquant.kernels.q4_k / q5_k vs ggml_quantize_chunk (kquant.reference), without
importance weights (quantize_row_q*_K_ref) and with them (quantize_row_q*_K_impl), over many
value distributions and shapes, including rows whose super-block count is not a multiple of
the kernels' lane chunk. Dequantize: vs ggml's to_float (bitwise) and gguf-py's dequantizer.
Seeds are fresh on every run (set KQUANT_TEST_SEED to replay one; failures print it).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from kquant import reference
from kquant.kernels.q4_k import KERNELS as K4
from kquant.kernels.q4_k import SB_PER_CHUNK
from kquant.kernels.q5_k import KERNELS as K5
from kquant.types import QK_K, QType

pytestmark = pytest.mark.skipif(not reference.available(), reason="llama-cpp-python (libggml) not installed")

KERNELS = {**K4, **K5}
TYPES = [QType.Q4_K, QType.Q5_K]
EMPTY = np.zeros(0, dtype=np.float32)

KINDS = [
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
    "positive",
    "negative",
    "few_levels",
    "subblock_scales",
    "zero_subblocks",
    "mixed_scale",
    "subnormal",
    "nan_inf",
]
WKINDS = ["uniform", "zeros", "heavy", "all_zero"]
# 1 super-block; 2; one full lane chunk + 1 (partial last chunk); 4096 + 256
SHAPES = [(1, QK_K), (7, 2 * QK_K), (5, (SB_PER_CHUNK + 1) * QK_K), (3, 4096 + QK_K)]


def seed() -> int:
    return int(os.environ.get("KQUANT_TEST_SEED") or np.random.SeedSequence().entropy % 2**63)


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
    elif kind == "positive":  # min > 0: the `min = 0` clamp and the this_min > 0 branch
        x = rng.uniform(0.5, 2.0, shape) * rng.uniform(0.01, 10, (rows, 1))
    elif kind == "negative":
        x = -rng.uniform(0.5, 2.0, shape) * rng.uniform(0.01, 10, (rows, 1))
    elif kind == "few_levels":
        x = rng.integers(-2, 3, shape).astype(np.float64) * rng.uniform(0.001, 1, (rows, 1))
    elif kind == "subblock_scales":
        # sub-blocks of very different magnitude: small ones get sc = 0, so d == 0 and the
        # search's own L is kept (the `if (!d) continue;` path)
        x = rng.standard_normal(shape) * 10.0 ** rng.uniform(-5, 0, (rows, cols // 32)).repeat(32, axis=1)
    elif kind == "zero_subblocks":
        x = rng.standard_normal(shape)
        x.reshape(rows, -1, 32)[rng.random((rows, cols // 32)) < 0.3] = 0.0
    elif kind == "mixed_scale":
        x = rng.standard_normal(shape) * 10.0 ** rng.integers(-6, 5, shape)
    elif kind == "subnormal":
        x = rng.standard_normal(shape) * 1e-40
    elif kind == "nan_inf":
        x = rng.standard_normal(shape)
        m = rng.random(shape)
        x[m < 0.01] = np.nan
        x[(m >= 0.01) & (m < 0.02)] = np.inf
        x[(m >= 0.02) & (m < 0.03)] = -np.inf
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
        ts = t.type_size
        raise AssertionError(
            f"{t.name} {what}: {len(bad)} bytes differ; first row {r} super-block {b}: "
            f"got {got[r, b * ts:(b + 1) * ts].tolist()} want {want[r, b * ts:(b + 1) * ts].tolist()}"
        )


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("kind", KINDS)
def test_quantize_unweighted(t, kind):
    s = seed()
    rng = np.random.default_rng(s)
    for rows, cols in SHAPES:
        check(t, make_x(kind, rows, cols, rng), None, f"{kind} {rows}x{cols} seed={s}")


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("wkind", WKINDS)
def test_quantize_weighted(t, wkind):
    s = seed()
    rng = np.random.default_rng(s)
    for kind in KINDS:
        for rows, cols in SHAPES:
            x = make_x(kind, rows, cols, rng)
            check(t, x, make_w(wkind, cols, rng), f"{kind} {rows}x{cols} weights={wkind} seed={s}")


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_quantize_many_rows(t):
    """A larger matrix with several row scales: the parallel driver and many search outcomes."""
    s = seed()
    rng = np.random.default_rng(s)
    x = (rng.standard_normal((256, 2048)) * rng.uniform(1e-3, 10, (256, 1))).astype(np.float32)
    check(t, x, None, f"256x2048 seed={s}")
    check(t, x, make_w("uniform", 2048, rng), f"256x2048 weighted seed={s}")


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_dequantize(t):
    import gguf

    s = seed()
    rng = np.random.default_rng(s)
    rows, cols = 17, 1024
    # quantized real data, plus raw random blocks (any code, any finite fp16 d / dmin)
    q1 = ours(t, make_x("normal", rows, cols, rng), None)
    q2 = rng.integers(0, 256, q1.shape, dtype=np.uint8)
    blocks = q2.reshape(rows, -1, t.type_size)
    blocks[:, :, 1] &= 0xBB  # fp16 exponent < 31: finite d
    blocks[:, :, 3] &= 0xBB  # and dmin
    for q in (q1, q2):
        got = np.empty((rows, cols), dtype=np.float32)
        KERNELS[t].dequantize(q, got)
        want = reference.dequantize(q, t, (rows, cols))
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32), err_msg=f"seed={s}")
        g = gguf.quants.dequantize(q, gguf.GGMLQuantizationType(int(t)))
        np.testing.assert_array_equal(got, g, err_msg=f"seed={s}")
