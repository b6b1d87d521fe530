"""Plain float types: F32 (copy), F16 and BF16 (ggml_fp32_to_fp16_row, ggml_fp32_to_bf16_row_ref).

Importance weights do not apply to these types; ggml ignores them too.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..types import QType
from . import Kernel
from ._common import bf16_to_fp32, fp16_to_fp32, fp32_to_bf16, sel


@njit(nogil=True, cache=True, no_cfunc_wrapper=True)
def quantize_f32(x, qw, out):
    rows, cols = x.shape
    for r in range(rows):
        out[r, :] = x[r].view(np.uint8)


@njit(nogil=True, cache=True, no_cfunc_wrapper=True)
def dequantize_f32(q, out):
    rows = q.shape[0]
    for r in range(rows):
        out[r, :] = q[r].view(np.float32)


@njit(cache=True, no_cfunc_wrapper=True)
def _row_to_f16(a, o):
    # _common.fp32_to_fp16 (round to nearest even, NaN -> sign|0x7E00) without branches, so that
    # LLVM vectorizes the loop: all three cases are computed and one is selected per value.
    U = np.uint32
    for i in range(a.shape[0]):
        b = a[i]
        sign = (b >> U(16)) & U(0x8000)
        m = b & U(0x7FFFFFFF)
        # normal half: rebias the exponent, round the 13 dropped mantissa bits (a carry is correct)
        r = (((m >> U(23)) - U(112)) << U(10)) | ((m >> U(13)) & U(0x3FF))
        rem = m & U(0x1FFF)
        r = r + U((rem > U(0x1000)) | ((rem == U(0x1000)) & ((r & U(1)) == U(1))))
        # below 2^-14: a half subnormal (or zero), the 24-bit significand shifted right and rounded
        sh = min(U(126) - min(m >> U(23), U(126)), U(31))
        sm = (m & U(0x7FFFFF)) | U(0x800000)
        rs = sm >> sh
        srem = sm & ((U(1) << sh) - U(1))
        shalf = U(1) << (sh - U(1))
        rs = rs + U((srem > shalf) | ((srem == shalf) & ((rs & U(1)) == U(1))))
        v = sel(m < U(0x38800000), U(rs), U(r))  # (numba widens uint32 arithmetic: narrow it back)
        v = sel(m >= U(0x47800000), U(0x7C00), v)  # >= 65536 and inf
        v = sel(m > U(0x7F800000), U(0x7E00), v)  # NaN
        o[i] = np.uint16(sign | v)


@njit(nogil=True, cache=True, no_cfunc_wrapper=True)
def quantize_f16(x, qw, out):
    rows, cols = x.shape
    for r in range(rows):
        _row_to_f16(x[r].view(np.uint32), out[r].view(np.uint16))


@njit(nogil=True, cache=True, no_cfunc_wrapper=True)
def dequantize_f16(q, out):
    rows, cols = out.shape
    for r in range(rows):
        h = q[r].view(np.uint16)
        for i in range(cols):
            out[r, i] = fp16_to_fp32(h[i])


@njit(nogil=True, cache=True, no_cfunc_wrapper=True)
def quantize_bf16(x, qw, out):
    rows, cols = x.shape
    for r in range(rows):
        o = out[r].view(np.uint16)
        for i in range(cols):
            o[i] = fp32_to_bf16(x[r, i])


@njit(nogil=True, cache=True, no_cfunc_wrapper=True)
def dequantize_bf16(q, out):
    rows, cols = out.shape
    for r in range(rows):
        h = q[r].view(np.uint16)
        for i in range(cols):
            out[r, i] = bf16_to_fp32(h[i])


@njit(nogil=True, cache=True, no_cfunc_wrapper=True)
def round_bf16_inplace(x):
    """x (2-D float32) := its values rounded to BF16 (fp32 -> bf16 -> fp32, ggml's rounding), in place."""
    rows, cols = x.shape
    for r in range(rows):
        u = x[r].view(np.uint32)
        for i in range(cols):
            u[i] = np.uint32(fp32_to_bf16(x[r, i])) << np.uint32(16)


KERNELS = {
    QType.F32: Kernel(quantize_f32, dequantize_f32),
    QType.F16: Kernel(quantize_f16, dequantize_f16),
    QType.BF16: Kernel(quantize_bf16, dequantize_bf16),
}
