"""fp16 / bf16 bit conversion, checked exhaustively against numpy (IEEE round to nearest even)."""

import numpy as np
import pytest
from numba import njit

from kquant.ggml.kernels._common import bf16_to_fp32, fp16_round, fp16_to_fp32, fp32_to_bf16, fp32_to_fp16, nearest_int


@njit(cache=True)
def _all_fp16_to_fp32(codes):
    out = np.empty(codes.shape[0], dtype=np.float32)
    for i in range(codes.shape[0]):
        out[i] = fp16_to_fp32(codes[i])
    return out


@njit(cache=True)
def _many_fp32_to_fp16(x):
    out = np.empty(x.shape[0], dtype=np.uint16)
    for i in range(x.shape[0]):
        out[i] = fp32_to_fp16(x[i])
    return out


@njit(cache=True)
def _many_fp16_round(x):
    out = np.empty(x.shape[0], dtype=np.float32)
    for i in range(x.shape[0]):
        out[i] = fp16_round(x[i])
    return out


@njit(cache=True)
def _many_bf16(x):
    out = np.empty(x.shape[0], dtype=np.uint16)
    for i in range(x.shape[0]):
        out[i] = fp32_to_bf16(x[i])
    return out


@njit(cache=True)
def _many_nearest(x):
    out = np.empty(x.shape[0], dtype=np.int32)
    for i in range(x.shape[0]):
        out[i] = nearest_int(x[i])
    return out


def test_fp16_to_fp32_all_codes():
    codes = np.arange(65536, dtype=np.uint16)
    got = _all_fp16_to_fp32(codes)
    want = codes.view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    assert np.isnan(got[nan]).all()
    np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


def test_fp32_to_fp16_round_trips_every_finite_code():
    codes = np.arange(65536, dtype=np.uint16)
    f = codes.view(np.float16)
    keep = np.isfinite(f)
    np.testing.assert_array_equal(_many_fp32_to_fp16(f[keep].astype(np.float32)), codes[keep])


def test_fp32_to_fp16_midpoints_and_neighbours():
    # every midpoint between consecutive halves, and the floats just around it: ties go to even
    codes = np.arange(0, 0x7C00, dtype=np.uint32)
    lo = codes.astype(np.uint16).view(np.float16).astype(np.float64)
    hi = (codes + 1).astype(np.uint16).view(np.float16).astype(np.float64)
    mid = ((lo + hi) / 2).astype(np.float32)
    bits = mid.view(np.uint32)
    cand = np.concatenate([mid, (bits - 1).view(np.float32), (bits + 1).view(np.float32)])
    cand = np.concatenate([cand, -cand, np.float32([65504, 65519.99, 65520, 65536, 1e10, np.inf, -np.inf])])
    cand = cand[~np.isnan(cand)]
    with np.errstate(over="ignore"):
        want = cand.astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(_many_fp32_to_fp16(cand), want)


def test_fp32_to_fp16_random_bits():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 2**32, size=2_000_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = x[np.isfinite(x)]
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(_many_fp32_to_fp16(x), want)


def test_fp32_to_fp16_nan_is_quiet_with_sign():
    x = np.array([np.nan, -np.nan], dtype=np.float32)
    got = _many_fp32_to_fp16(x)
    assert got[0] == 0x7E00 and got[1] == 0xFE00


def test_bf16_round_to_nearest_even():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 2**32, size=1_000_000, dtype=np.uint64).astype(np.uint32)
    x = x[((x & 0x7FFFFFFF) <= 0x7F800000)]
    want = ((x + (0x7FFF + ((x >> 16) & 1))) >> 16).astype(np.uint16)
    np.testing.assert_array_equal(_many_bf16(x.view(np.float32)), want)
    assert _many_bf16(np.array([np.nan], dtype=np.float32))[0] & 0x7FC0 == 0x7FC0
    assert bf16_to_fp32(np.uint16(0x3F80)) == 1.0


def test_nearest_int_ties_to_even_and_wraps_like_c():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 3.49999, 4194303.0, -4194303.0], dtype=np.float32)
    np.testing.assert_array_equal(_many_nearest(x), [0, 2, 2, 0, -2, 3, 4194303, -4194303])

    # outside the documented range: the C trick's value, computed here with numpy float32
    big = np.array([1e7, -3e7, 5e9, np.inf], dtype=np.float32)
    val = (big + np.float32(12582912.0)).astype(np.float32).view(np.int32)
    np.testing.assert_array_equal(_many_nearest(big), (val & 0x007FFFFF) - 0x00400000)


def test_f16_kernel_equals_scalar_and_numpy():
    """The branch-free F16 row kernel against numpy's IEEE conversion on random bit patterns,
    every fp16 midpoint and the special values."""
    from kquant.ggml import quants

    rng = np.random.default_rng(3)
    bits = rng.integers(0, 2**32, size=1 << 21, dtype=np.uint64).astype(np.uint32)
    codes = np.arange(0, 0x7C00, dtype=np.uint32)
    lo = codes.astype(np.uint16).view(np.float16).astype(np.float64)
    hi = (codes + 1).astype(np.uint16).view(np.float16).astype(np.float64)
    mid = ((lo + hi) / 2).astype(np.float32).view(np.uint32)
    x = np.concatenate([bits, mid, mid - 1, mid + 1, mid | 0x80000000]).view(np.float32)
    x = np.concatenate([x, np.float32([0.0, -0.0, 65504, 65519.99, 65520, 65536, 1e-8, 6e-8, 3e-8, 2.98e-8])])
    x = x[np.isfinite(x)]
    x = x[: x.size // 256 * 256].reshape(-1, 256)
    from kquant.ggml.kernels.floats import quantize_f16

    got = np.empty((x.shape[0], 512), np.uint8)
    quantize_f16(x, np.empty(0, np.float32), got)  # the kernel itself: quants.quantize refuses overflow
    with np.errstate(over="ignore"):
        want = x.reshape(-1).astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(got.view(np.uint16).reshape(-1), want)
    finite = x[np.abs(x).max(axis=1) < 65504]
    np.testing.assert_array_equal(quants.quantize(finite, "F16").view(np.uint16).reshape(-1),
                                  finite.reshape(-1).astype(np.float16).view(np.uint16))
    with pytest.raises(ValueError, match="too large for F16"):
        quants.quantize(np.full((1, 32), 7e4, np.float32), "F16")
    nan = np.full((1, 32), np.nan, dtype=np.float32)

    out = np.empty((1, 64), np.uint8)
    quantize_f16(nan, np.empty(0, np.float32), out)
    assert (out.view(np.uint16) == 0x7E00).all()


def test_round_bf16_inplace_equals_numpy_rounding_and_the_bf16_kernel():
    """The pipeline's in-place BF16 rounding of its slabs == io.safetensors' numpy rounding ==
    quantize(BF16) then dequantize, bit for bit: every exponent at and around the tie points, NaNs
    (quieted, sign kept), infinities, subnormals, random bits; on threads and on strided rows."""
    from kquant.ggml import quants
    from kquant.ggml.types import QType
    from kquant.io.safetensors import bf16_round_fp32

    rng = np.random.default_rng(4)
    e = np.arange(256, dtype=np.uint32) << np.uint32(23)
    lo = np.array([0, 1, 0x7FFF, 0x8000, 0x8001, 0x18000, 0xFFFF, 0x7FFFFF, 0x7F0000, 0x400001], dtype=np.uint32)
    pats = (e[:, None] | lo[None, :]).reshape(-1)
    pats = np.concatenate([pats, pats | np.uint32(0x80000000), rng.integers(0, 2**32, 200_000, dtype=np.uint32)])
    pats = pats[: pats.size // 256 * 256]
    x = pats.view(np.float32).reshape(-1, 256)
    want = bf16_round_fp32(x).view(np.uint32)
    via_kernel = quants.dequantize(quants.quantize(x, QType.BF16, check_finite=False), QType.BF16, x.shape)
    assert np.array_equal(via_kernel.view(np.uint32), want)
    got = x.copy()
    assert quants.round_bf16_inplace(got) is got
    assert np.array_equal(got.view(np.uint32), want)
    with pytest.raises(ValueError, match="writable C-contiguous"):
        quants.round_bf16_inplace(x[:, ::2])


def test_fp16_round_is_the_round_trip():
    """fp16_round's in-place rounding of fp16's normal range (checked on all 2^32 floats once) equals
    fp16_to_fp32(fp32_to_fp16(f)): random bits, every midpoint and its neighbours, the range's ends."""
    rng = np.random.default_rng(2)
    x = rng.integers(0, 2**32, size=2_000_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    codes = np.arange(0, 0x7C00, dtype=np.uint32)
    lo = codes.astype(np.uint16).view(np.float16).astype(np.float64)
    hi = (codes + 1).astype(np.uint16).view(np.float16).astype(np.float64)
    bits = ((lo + hi) / 2).astype(np.float32).view(np.uint32)
    ends = np.uint32([0x38800000, 0x477FF000, 0x7F800000, 0x7FC00000, 0])
    near = np.concatenate([bits, ends])
    near = np.concatenate([near - 1, near, near + 1]).view(np.float32)
    x = np.concatenate([x, near, -near])
    with np.errstate(over="ignore", invalid="ignore"):
        want = x.astype(np.float16).astype(np.float32)
    got = _many_fp16_round(x)
    nan = np.isnan(want)
    assert np.isnan(got[nan]).all()
    np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


def test_count_nonfinite_counts_every_nan_and_inf_in_any_layout():
    """quantize's finiteness check (kquant.ggml.quants.count_nonfinite, a count of all-ones exponents)
    equals numpy's count of non-finite values: NaNs of any payload and sign, +-inf, and no finite value
    (the largest, subnormals, -0), in C-contiguous rows and in strided views."""
    from kquant.ggml.quants import count_nonfinite

    rng = np.random.default_rng(5)
    bits = rng.integers(0, 2**32, size=(37, 301), dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)  # every exponent, NaN payloads included
    x[0, :6] = [np.inf, -np.inf, np.finfo(np.float32).max, -np.finfo(np.float32).max, 1e-45, -0.0]
    for v in (x, x[:, ::3], x[::2, 1:], x.T, x[:0], x[:, :0]):
        assert count_nonfinite(v) == int((~np.isfinite(v)).sum())
    assert 0 < count_nonfinite(x) < x.size
