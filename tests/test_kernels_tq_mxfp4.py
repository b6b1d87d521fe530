"""TQ1_0, TQ2_0, MXFP4, Q1_0 and Q2_0 kernels against libggml, byte for byte.

Quantize: kquant.ggml.kernels.{tq,mxfp4,q1q2} vs ggml_quantize_chunk (oracle.reference), without
importance weights and with them (all five ignore them in ggml: quantize_tq*_0 and
quantize_mxfp4 never read them, quantize_q1_0 / quantize_q2_0 call the same _ref function row
by row), over many value distributions and shapes, plus hand-built blocks. Dequantize: vs ggml's
to_float, bitwise, on quantized data and on random bytes (every code; every E8M0 exponent).
Seeds are fresh on every run (set KQUANT_TEST_SEED to replay one; failures print it).
"""

from __future__ import annotations

import numpy as np
import pytest

import kquant
from oracle import reference
from kquant.types import QK_K, QType

from kernel_data import check_dequantize, FINITE_KINDS, RAW_KINDS, WKINDS, check, check_grid, fresh_rng, make_w, make_x, ours, qtype_id

pytestmark = pytest.mark.skipif(not reference.available(), reason="llama-cpp-python (libggml) not installed")

TYPES = [QType.TQ1_0, QType.TQ2_0, QType.MXFP4, QType.Q1_0, QType.Q2_0]

KINDS = [k for k in FINITE_KINDS if k not in ("subblock_scales", "zero_subblocks16")] + RAW_KINDS
WKINDS = [k for k in WKINDS if k != "zero_subblocks"]
SHAPES = [(1, QK_K), (7, 2 * QK_K), (3, 4096 + QK_K)]


@pytest.mark.parametrize("t", TYPES, ids=qtype_id)
def test_quantize_unweighted(t):
    check_grid(t, KINDS, SHAPES)


@pytest.mark.parametrize("t", TYPES, ids=qtype_id)
def test_quantize_weighted(t):
    """ggml ignores the weights for these types; the bytes must still be what it writes with them."""
    s, rng = fresh_rng()
    for wkind in WKINDS:
        for kind in KINDS:
            rows, cols = SHAPES[1]
            x = make_x(kind, rows, cols, rng)
            check(t, x, make_w(wkind, cols, rng), f"{kind} {rows}x{cols} weights={wkind} seed={s}")


def _blocks_of(t: QType, rows: list[np.ndarray]) -> np.ndarray:
    """Hand-built blocks, one per row, each padded with its own pattern to one block."""
    bs = t.block_size
    return np.stack([np.resize(np.float32(r), bs) for r in rows]).astype(np.float32)


@pytest.mark.parametrize("t", TYPES, ids=qtype_id)
def test_hand_built_blocks(t):
    """Zeros (both signs), a constant, one outlier, +-max, a NaN that resets TQ's running max
    (values before it may exceed the final amax), infinities, FLT_MAX, subnormals."""
    nan, inf = np.float32(np.nan), np.float32(np.inf)
    fmax, sub = np.finfo(np.float32).max, np.float32(1e-45)
    rows = [
        [0.0],
        [-0.0, 0.0],
        [0.75],
        [-0.75],
        [0.0] * 17 + [-3.0],
        [1.0, -1.0],
        [5.0, -7.0, nan, 1.0, 0.4, -0.5, 0.5, -0.2],
        [nan, 0.3, -0.9],
        [0.1, 0.2, 0.3, nan],
        [inf, 1.0, -2.0],
        [-inf, nan, 0.5, 3.0],
        [fmax, -fmax, 1.0],
        [sub, -sub, 2 * sub, 0.0],
        [0.5, -0.5, 1.5, -1.5, 0.49999997, -0.49999997],
    ]
    check(t, _blocks_of(t, rows), None, "hand-built")


def test_mxfp4_exponent_at_every_binade():
    """e = (uint8_t)(floorf(log2f(amax)) - 2 + 127): amax at, just below and just above every
    power of two (where log2f's rounding decides floorf), subnormal to FLT_MAX."""
    t = QType.MXFP4
    k = np.arange(-149, 128, dtype=np.float64)
    p2 = np.ldexp(np.float32(1), k.astype(int)).astype(np.float32)
    # and every normal binade's mantissas around 2 - 2^-10, where the kernel stops trusting the
    # exponent field and calls log2f
    near = (np.arange(1, 255, dtype=np.uint32)[:, None] << 23) | np.uint32([0x7FDFFF, 0x7FE000, 0x7FE001, 0x7FF000])
    amax = np.concatenate([p2, np.nextafter(p2, np.float32(0)), np.nextafter(p2, np.float32(np.inf)), p2 * np.float32(1.5),
                           near.ravel().view(np.float32)])
    amax = amax[np.isfinite(amax) & (amax > 0)]
    s, rng = fresh_rng()
    x = rng.uniform(-1, 1, (amax.size, t.block_size)).astype(np.float32) * amax[:, None]
    x[np.arange(amax.size), rng.integers(0, t.block_size, amax.size)] = amax * rng.choice([-1, 1], amax.size)
    check(t, x, None, f"binades seed={s}")


@pytest.mark.parametrize("t", TYPES, ids=qtype_id)
def test_quantize_api_threads(t):
    """Through the public kquant.quantize / dequantize (type by name, row ranges on threads), a
    larger matrix with several row scales."""
    s, rng = fresh_rng()
    x = (rng.standard_normal((256, 2048)) * rng.uniform(1e-3, 10, (256, 1))).astype(np.float32)
    for w in (None, make_w("uniform", 2048, rng)):
        got = kquant.quantize(x, t.name.lower(), w)
        np.testing.assert_array_equal(got, reference.quantize(x, t, w), err_msg=f"seed={s}")
    deq = kquant.dequantize(got, t, x.shape)
    np.testing.assert_array_equal(deq.view(np.uint32), reference.dequantize(got, t, x.shape).view(np.uint32))


def _random_blocks(t: QType, rng: np.random.Generator, n_blocks: int) -> np.ndarray:
    """Random bytes; for MXFP4 the E8M0 byte runs through all 256 exponents."""
    q = rng.integers(0, 256, (n_blocks, t.type_size), dtype=np.uint8)
    if t == QType.MXFP4:
        q[:, 0] = np.arange(n_blocks) % 256
    return q


@pytest.mark.parametrize("t", TYPES, ids=qtype_id)
def test_dequantize(t):
    """Bitwise equal to ggml's to_float: on quantized data, and on random blocks (any code, any
    fp16 scale including inf and NaN; for MXFP4 every exponent)."""
    s, rng = fresh_rng()
    rows, cols = 8, 4096
    q1 = ours(t, make_x("normal", rows, cols, rng), None)
    q2 = _random_blocks(t, rng, rows * cols // t.block_size).reshape(rows, -1)
    for q in (q1, q2):
        check_dequantize(t, q, rows, cols, f"{t.name} seed={s}", gguf_py=False)


def test_weights_are_ignored():
    """As in ggml: the same bytes with and without an importance row."""
    s, rng = fresh_rng()
    x = make_x("student_t", 4, 1024, rng)
    for t in TYPES:
        np.testing.assert_array_equal(ours(t, x, make_w("heavy", 1024, rng)), ours(t, x, None), err_msg=f"{t.name} seed={s}")
