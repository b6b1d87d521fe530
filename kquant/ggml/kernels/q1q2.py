"""ggml's 1- and 2-bit scalar types Q1_0 and Q2_0, ported to Numba.

Ports, from ggml/src/ggml-quants.c (llama.cpp as vendored in llama-cpp-python 0.3.36):
  quantize_row_q1_0_ref, quantize_row_q2_0_ref   what quantize_q1_0 / quantize_q2_0 run, with
                                                 or without importance weights (the weighted
                                                 branch calls the same _ref function row by row)
  dequantize_row_q1_0, dequantize_row_q2_0
byte for byte. Every float expression is evaluated in float32, op by op, in C's order.

    block_q1_0  (128 values, 18 bytes)  offset 0 d (fp16), 2 qs[16]: bit j of the block = x[j] >= 0
    block_q2_0  ( 64 values, 18 bytes)  offset 0 d (fp16), 2 qs[16]: 2-bit code of x[j] in byte j/4,
                                        bits 2(j%4)..: 0 = -d, 1 = 0, 2 = +d, 3 = +2d

Q1_0's scale is the mean |x| of its block, summed in element order (a float32 chain ggml cannot
reorder). Here 8 blocks are summed at once, each in its own order, so the chains overlap.
Q2_0's scale is the block's largest |x| (NaNs skipped): an order-free integer max on the bits.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..types import QK1_0, QType, field_offsets
from . import Kernel
from ._common import get_f16, put_f16, sel

JIT = dict(cache=True, no_cfunc_wrapper=True, error_model="numpy")  # float x/0 gives inf/nan, as in C
U = np.uint64
_U0, _U1, _U2, _U4, _U8 = U(0), U(1), U(2), U(4), U(8)
_F0 = np.float32(0.0)
_F1 = np.float32(1.0)

TS_Q1_0 = U(QType.Q1_0.type_size)  # 18
TS_Q2_0 = U(QType.Q2_0.type_size)  # 18
Q1_D, Q1_QS = map(U, field_offsets(QType.Q1_0, "d", "qs"))
Q2_D, Q2_QS = map(U, field_offsets(QType.Q2_0, "d", "qs"))

SUM_LANES = 8  # Q1_0 blocks whose |x| sums run side by side

_ABS = np.int32(0x7FFFFFFF)
_INF_BITS = np.int32(0x7F800000)
_TWO31 = np.float32(2147483648.0)
_HALF = np.float32(0.5)
_THREE_HALVES = np.float32(1.5)


@njit(**JIT, inline="always")
def _blocks(n, nbytes, ts):
    """(blocks in the row, block length) as uint64, the length taken from the row shapes at run time
    (a constant trip count would be fully unrolled before LLVM's loop vectorizer sees the loop)."""
    nb = U(nbytes) // ts
    return nb, (U(n) // nb if nb > _U0 else _U0)


# ---------------------------------------------------------------- Q1_0


@njit(**JIT)
def _q1_sums(x, nb, qk, sums):
    """sums[i] = ggml's `sum_abs` of block i: fabsf(x[j]) added for j = 0 .. qk-1 in order."""
    i = _U0
    L = U(SUM_LANES)
    while i + L <= nb:
        o = i * qk
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = _F0
        for j in range(qk):
            s0 += np.abs(x[o + j])
            s1 += np.abs(x[o + qk + j])
            s2 += np.abs(x[o + U(2) * qk + j])
            s3 += np.abs(x[o + U(3) * qk + j])
            s4 += np.abs(x[o + U(4) * qk + j])
            s5 += np.abs(x[o + U(5) * qk + j])
            s6 += np.abs(x[o + U(6) * qk + j])
            s7 += np.abs(x[o + U(7) * qk + j])
        sums[i] = s0
        sums[i + _U1] = s1
        sums[i + _U2] = s2
        sums[i + U(3)] = s3
        sums[i + _U4] = s4
        sums[i + U(5)] = s5
        sums[i + U(6)] = s6
        sums[i + U(7)] = s7
        i += L
    while i < nb:
        o = i * qk
        s = _F0
        for j in range(qk):
            s += np.abs(x[o + j])
        sums[i] = s
        i += _U1


# ggml-quants.c quantize_row_q1_0_ref
@njit(**JIT)
def quantize_row_q1_0_ref(x, y, sums):
    """One row: x float32[n], y uint8[n/128*18]; sums: float32 scratch of n/128."""
    nb, qk = _blocks(x.shape[0], y.shape[0], TS_Q1_0)
    _q1_sums(x, nb, qk, sums)
    nbytes = qk // _U8
    for i in range(nb):
        o = i * qk
        p = i * TS_Q1_0
        put_f16(y, p + Q1_D, sums[i] / np.float32(QK1_0))
        q = p + Q1_QS
        for j in range(nbytes):
            b = np.int64(0)
            for k in range(8):
                b |= np.int64(x[o + _U8 * j + U(k)] >= _F0) << np.int64(k)
            y[q + j] = np.uint8(b)


@njit(**JIT, inline="always")
def _quiet(f):
    """f with a signaling NaN made quiet: ggml's GGML_FP16_TO_FP32 computes a NaN scale through a
    float multiply, and Q1_0 stores the scale itself (the other types multiply it anyway)."""
    b = np.float32(f).view(np.uint32)
    nan = (b & np.uint32(0x7F800000)) == np.uint32(0x7F800000)
    nan = nan & ((b & np.uint32(0x007FFFFF)) != np.uint32(0))
    return np.uint32(sel(nan, np.uint32(b | np.uint32(0x00400000)), b)).view(np.float32)


# ggml-quants.c dequantize_row_q1_0
@njit(**JIT)
def dequantize_row_q1_0(q, y):
    """One row: q uint8[n/128*18] -> y float32[n]."""
    nb, qk = _blocks(y.shape[0], q.shape[0], TS_Q1_0)
    for i in range(nb):
        p = i * TS_Q1_0
        o = i * qk
        d = _quiet(get_f16(q, p + Q1_D))
        neg_d = -d
        s = p + Q1_QS
        for j in range(qk):
            bit = (q[s + j // _U8] >> np.uint8(j % _U8)) & np.uint8(1)
            y[o + j] = sel(bit != np.uint8(0), d, neg_d)


# ---------------------------------------------------------------- Q2_0


@njit(**JIT, inline="always")
def _q2_code(v):
    """C: q = (int)roundf(v) + 1 clamped to [0, 3]. roundf rounds half away from zero; the int
    conversion of NaN or |v| >= 2^31 is gcc's cvttss2si, INT_MIN, so the code is 0."""
    c = np.int64(v > -_HALF) + np.int64(v >= _HALF) + np.int64(v >= _THREE_HALVES)
    return sel(np.abs(v) < _TWO31, c, np.int64(0))


# ggml-quants.c quantize_row_q2_0_ref
@njit(**JIT)
def quantize_row_q2_0_ref(x, y):
    """One row: x float32[n], y uint8[n/64*18]."""
    xb = x.view(np.int32)
    nb, qk = _blocks(x.shape[0], y.shape[0], TS_Q2_0)
    nbytes = qk // _U4
    for i in range(nb):
        o = i * qk
        p = i * TS_Q2_0
        # ggml: `if (a > amax) amax = a` over |x| from 0: NaNs skipped, order-free on the bits
        m = np.int32(0)
        for j in range(qk):
            a = xb[o + j] & _ABS
            m = max(m, sel(a > _INF_BITS, np.int32(0), np.int32(a)))
        d = np.int32(m).view(np.float32)
        id_ = _F1 / d if d > _F0 else _F0
        put_f16(y, p + Q2_D, d)
        q = p + Q2_QS
        for j in range(nbytes):
            b = np.int64(0)
            for k in range(4):
                b |= _q2_code(x[o + _U4 * j + U(k)] * id_) << np.int64(2 * k)
            y[q + j] = np.uint8(b)


# ggml-quants.c dequantize_row_q2_0
@njit(**JIT)
def dequantize_row_q2_0(q, y):
    """One row: q uint8[n/64*18] -> y float32[n]."""
    nb, qk = _blocks(y.shape[0], q.shape[0], TS_Q2_0)
    for i in range(nb):
        p = i * TS_Q2_0
        o = i * qk
        d = get_f16(q, p + Q2_D)
        s = p + Q2_QS
        for j in range(qk):
            c = (np.int32(q[s + j // _U4]) >> np.int32(_U2 * (j % _U4))) & np.int32(3)
            y[o + j] = np.float32(c - np.int32(1)) * d


# ---------------------------------------------------------------- drivers (ggml_quantize_chunk / to_float)


# ggml-quants.c quantize_q1_0 (importance weights: the same _ref call per row)
@njit(**JIT, nogil=True)
def quantize_q1_0(x, qw, out):
    """x float32[rows, n], qw ignored (as ggml), out uint8[rows, n/128*18]."""
    sums = np.empty(max(1, x.shape[1] // QK1_0), dtype=np.float32)
    for r in range(x.shape[0]):
        quantize_row_q1_0_ref(x[r], out[r], sums)


# ggml-quants.c quantize_q2_0 (importance weights: the same _ref call per row)
@njit(**JIT, nogil=True)
def quantize_q2_0(x, qw, out):
    """x float32[rows, n], qw ignored (as ggml), out uint8[rows, n/64*18]."""
    for r in range(x.shape[0]):
        quantize_row_q2_0_ref(x[r], out[r])


@njit(**JIT, nogil=True)
def dequantize_q1_0(q, out):
    for r in range(out.shape[0]):
        dequantize_row_q1_0(q[r], out[r])


@njit(**JIT, nogil=True)
def dequantize_q2_0(q, out):
    for r in range(out.shape[0]):
        dequantize_row_q2_0(q[r], out[r])


KERNELS = {
    QType.Q1_0: Kernel(quantize_q1_0, dequantize_q1_0),
    QType.Q2_0: Kernel(quantize_q2_0, dequantize_q2_0),
}
