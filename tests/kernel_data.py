"""Shared test data and the libggml comparison for the kernel tests (tests/test_kernels_*.py).

`make_x` knows every value distribution any of those files uses; each file picks its own list.
"""

from __future__ import annotations

import os

import numpy as np

from oracle import reference
from kquant.ggml.quants import registry
from kquant.types import QType

KERNELS = registry()  # QType -> kernels, as kquant.ggml.quants dispatches
EMPTY = np.zeros(0, dtype=np.float32)


def qtype_id(t: QType) -> str:
    """pytest id for a QType parameter."""
    return t.name


# make_x kinds with no NaN or Inf (ggml's IQ searches assert on NaN: the whole process aborts)
FINITE_KINDS = [
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
]
# any bits (NaN, Inf), then signed zeros: for the types ggml quantizes whatever it is given
RAW_KINDS = ["nan_inf", "random_bits", "signed_zeros"]
WKINDS = ["uniform", "zeros", "zero_subblocks", "heavy", "all_zero"]  # make_w kinds


def fresh_rng() -> tuple[int, np.random.Generator]:
    """A seed (KQUANT_TEST_SEED if set, else fresh entropy) and a generator seeded with it."""
    seed = int(os.environ.get("KQUANT_TEST_SEED") or np.random.SeedSequence().entropy % 2**63)
    return seed, np.random.default_rng(seed)


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
    elif kind in ("constant_rows", "constant_rows_signed"):
        x = np.repeat(rng.standard_normal((rows, 1)), cols, axis=1)
        x[::3] = 1.0
        if kind == "constant_rows_signed":
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
    elif kind in ("positive", "negative", "positive_unit", "negative_unit"):
        # min > 0 or max < 0: the qkx searches' `min = 0` clamp and the this_min > 0 branch;
        # values in [0.5, 2), times a per-row scale unless "_unit"
        x = rng.uniform(0.5, 2.0, shape)
        if not kind.endswith("_unit"):
            x = x * rng.uniform(0.01, 10, (rows, 1))
        if kind.startswith("negative"):
            x = -x
    elif kind == "ties":
        # equal |max| with both signs, rounding boundaries x*id + 0.5 exactly on .5
        x = rng.integers(-8, 9, shape) * 0.25
    elif kind == "few_levels":
        x = rng.integers(-2, 3, shape).astype(np.float64) * rng.uniform(0.001, 1, (rows, 1))
    elif kind == "subblock_scales":
        # sub-blocks of very different magnitude: small ones get sc = 0, so d == 0 and the
        # search's own L is kept (the `if (!d) continue;` path)
        x = rng.standard_normal(shape) * 10.0 ** rng.uniform(-5, 0, (rows, cols // 32)).repeat(32, axis=1)
    elif kind == "zero_subblocks":  # some 32-value sub-blocks all zero
        x = rng.standard_normal(shape)
        x.reshape(rows, -1, 32)[rng.random((rows, cols // 32)) < 0.3] = 0.0
    elif kind == "zero_subblocks16":  # some 16-value sub-blocks all zero, others tiny or normal
        x = rng.standard_normal(shape).reshape(rows, -1, 16)
        m = rng.random(x.shape[:2])
        x[m < 0.3] = 0.0
        x[(m >= 0.3) & (m < 0.4)] *= 1e-20
        x = x.reshape(shape)
    elif kind == "subnormal":
        # float32 subnormals: 1/d overflows to inf inside ggml's ref quantizers
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
    elif kind == "zero_subblocks":  # some 16-column groups all zero
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
    """kquant's quantization of `x` (importance row `w`, or None for the unweighted path)."""
    out = np.zeros((x.shape[0], t.row_size(x.shape[1])), dtype=np.uint8)
    KERNELS[t].quantize(x, EMPTY if w is None else w, out)
    return out


def check(t: QType, x: np.ndarray, w: np.ndarray | None, what: str) -> None:
    """Assert `ours` equals libggml's bytes; else name the first differing row and block, with its input."""
    got = ours(t, x, w)
    want = reference.quantize(x, t, w)
    if not np.array_equal(got, want):
        bad = np.argwhere(got != want)
        r, c = bad[0]
        b = c // t.type_size
        ts, bs = t.type_size, t.block_size
        raise AssertionError(
            f"{t.name} {what}: {len(bad)} bytes differ; first row {r} block {b}: "
            f"got {got[r, b * ts:(b + 1) * ts].tolist()} want {want[r, b * ts:(b + 1) * ts].tolist()} "
            f"x={x[r, b * bs:(b + 1) * bs].tolist()}"
        )


def check_grid(t: QType, kinds, shapes, wkind: str | None = None, make=None) -> None:
    """`check` every kind at every (rows, cols) shape, on one fresh seed: unweighted, or with
    make_w(wkind) importance weights. `make` replaces make_x (same signature)."""
    make = make or make_x
    s, rng = fresh_rng()
    for kind in kinds:
        for rows, cols in shapes:
            x = make(kind, rows, cols, rng)
            if wkind is None:
                check(t, x, None, f"{kind} {rows}x{cols} seed={s}")
            else:
                check(t, x, make_w(wkind, cols, rng), f"{kind} {rows}x{cols} weights={wkind} seed={s}")


def check_dequantize(t: QType, q: np.ndarray, rows: int, cols: int, what: str = "", gguf_py: bool = True) -> np.ndarray:
    """Assert kquant's dequantization of `q` equals ggml's to_float bit for bit, and (gguf_py)
    gguf-py's numpy dequantizer; returns kquant's (rows, cols) float32 result."""
    got = np.empty((rows, cols), dtype=np.float32)
    KERNELS[t].dequantize(q, got)
    want = reference.dequantize(q, t, (rows, cols))
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32), err_msg=what)
    if gguf_py:
        import gguf

        g = gguf.quants.dequantize(q, gguf.GGMLQuantizationType(int(t)))
        np.testing.assert_array_equal(got, g, err_msg=what)
    return got
