"""ggml's ternary types TQ1_0 and TQ2_0 (BitNet b1.58, TriLMs), ported to Numba.

Ports, from ggml/src/ggml-quants.c (llama.cpp as vendored in llama-cpp-python 0.3.36):
  quantize_row_tq1_0_ref, quantize_row_tq2_0_ref   what quantize_tq1_0 / quantize_tq2_0 run;
                                                   both ignore importance weights, as here
  dequantize_row_tq1_0, dequantize_row_tq2_0
byte for byte. Every value becomes a trit t = lroundf(x * id) + 1 in {0, 1, 2}, id = 1/amax.

    block_tq1_0  (256 values, 54 bytes)  offset 0 qs[48], 48 qh[4], 52 d (fp16)
      qs[m],      m < 32: trits of x[m + 32 n],       n = 0..4, base 3, most significant first
      qs[32 + m], m < 16: trits of x[160 + m + 16 n], n = 0..4
      qh[j],      j < 4:  trits of x[240 + j + 4 n],  n = 0..3, then times 3
      each byte stored as ceil(v * 256 / 243): the trit n is ((uint8)(byte * 3^n) * 3) >> 8
    block_tq2_0  (256 values, 66 bytes)  offset 0 qs[64], 64 d (fp16)
      qs[32 k + m] bits 2n..2n+1 = trit of x[128 k + m + 32 n], n = 0..3

Exactness notes: amax is ggml's `MAX(amax, fabsf(v))` (a NaN resets the running max), taken
as an integer max on the bits unless a NaN is present. lroundf of NaN or |v| >= 2^63 is glibc's
(long)v = LONG_MIN, so the int trit is LONG_MIN + 1 truncated to int: 1. Only the low 8 bits of a
trit reach a byte (`uint8_t q`), which is all `_trit` keeps exact beyond 2^31.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..types import QType, field_offsets
from . import Kernel
from ._common import get_f16, put_f16, sel

JIT = dict(cache=True, no_cfunc_wrapper=True, error_model="numpy")
U = np.uint64
_U0, _U2, _U4, _U5 = U(0), U(2), U(4), U(5)
_F0 = np.float32(0.0)
_F1 = np.float32(1.0)

TS_TQ1_0 = U(QType.TQ1_0.type_size)  # 54
TS_TQ2_0 = U(QType.TQ2_0.type_size)  # 66
TQ1_QS, TQ1_QH, TQ1_D = map(U, field_offsets(QType.TQ1_0, "qs", "qh", "d"))
TQ2_QS, TQ2_D = map(U, field_offsets(QType.TQ2_0, "qs", "d"))

_ABS = np.int32(0x7FFFFFFF)
_INF_BITS = np.int32(0x7F800000)
_TWO31 = np.float32(2147483648.0)
_HALF = np.float32(0.5)


@njit(**JIT, inline="always")
def _blocks(n, nbytes, ts):
    """(blocks in the row, block length) as uint64, the length taken from the row shapes at run time
    (a constant trip count would be fully unrolled before LLVM's loop vectorizer sees the loop)."""
    nb = U(nbytes) // ts
    return nb, (U(n) // nb if nb > _U0 else _U0)


@njit(**JIT)
def _absmax_seq(x, o, qk):
    """ggml: `amax = MAX(amax, fabsf(v))` from 0, with MAX(a, b) = a > b ? a : b."""
    amax = _F0
    for j in range(qk):
        a = np.abs(x[o + j])
        amax = amax if amax > a else a
    return amax


@njit(**JIT, inline="always")
def _amax(x, xb, o, qk):
    """ggml's amax of x[o:o+qk] (xb: the same values as int32 bits)."""
    m = np.int32(0)
    for j in range(qk):
        m = max(m, np.int32(xb[o + j] & _ABS))
    if m > _INF_BITS:  # a NaN: the order matters
        return _absmax_seq(x, o, qk)
    return np.int32(m).view(np.float32)


@njit(**JIT, inline="always")
def _trit(v):
    """C `int xi = lroundf(v) + 1`: round half away from zero, plus one; 1 for NaN and |v| >= 2^31
    (exact there in the low 8 bits: such a float is a multiple of 256, and lroundf's LONG_MIN too)."""
    t = np.trunc(v)
    r = v - t  # exact
    t = t + sel(r >= _HALF, _F1, _F0) - sel(r <= -_HALF, _F1, _F0)
    return sel(np.abs(v) < _TWO31, np.int64(np.int32(t)) + np.int64(1), np.int64(1))


@njit(**JIT, inline="always")
def _ceil243(q):
    """(uint8_t)(((uint16_t)q * 256 + 242) / 243) of the uint8 q (given as any int)."""
    return (((q & np.int64(0xFF)) * np.int64(256) + np.int64(242)) // np.int64(243)) & np.int64(0xFF)


# ggml-quants.c quantize_row_tq1_0_ref
@njit(**JIT)
def quantize_row_tq1_0_ref(x, y):
    """One row: x float32[n], y uint8[n/256*54]."""
    xb = x.view(np.int32)
    nb, qk = _blocks(x.shape[0], y.shape[0], TS_TQ1_0)
    w = qk // U(8)  # 32: bytes of the first qs run
    h = w // _U2  # 16: bytes of the second
    nh = qk // U(64)  # 4: qh bytes
    three = np.int64(3)
    for i in range(nb):
        o = i * qk
        p = i * TS_TQ1_0
        d = _amax(x, xb, o, qk)
        id_ = _F1 / d if d != _F0 else _F0
        put_f16(y, p + TQ1_D, d)
        # 5 values per byte, along 32 bytes
        for m in range(w):
            q = np.int64(0)
            for n in range(5):
                q = q * three + _trit(x[o + m + w * U(n)] * id_)
            y[p + TQ1_QS + m] = np.uint8(_ceil243(q))
        # along 16 bytes
        xo = o + _U5 * w
        for m in range(h):
            q = np.int64(0)
            for n in range(5):
                q = q * three + _trit(x[xo + m + h * U(n)] * id_)
            y[p + TQ1_QS + w + m] = np.uint8(_ceil243(q))
        # 4 values per byte, the first in the most significant trit
        xo = xo + _U5 * h
        for j in range(nh):
            q = np.int64(0)
            for n in range(4):
                q = q * three + _trit(x[xo + j + nh * U(n)] * id_)
            y[p + TQ1_QH + j] = np.uint8(_ceil243(q * three))


# ggml-quants.c quantize_row_tq2_0_ref
@njit(**JIT)
def quantize_row_tq2_0_ref(x, y):
    """One row: x float32[n], y uint8[n/256*66]."""
    xb = x.view(np.int32)
    nb, qk = _blocks(x.shape[0], y.shape[0], TS_TQ2_0)
    w = qk // U(8)  # 32
    for i in range(nb):
        o = i * qk
        p = i * TS_TQ2_0
        d = _amax(x, xb, o, qk)
        id_ = _F1 / d if d != _F0 else _F0
        put_f16(y, p + TQ2_D, d)
        for k in range(2):
            xo = o + U(k) * _U4 * w
            qo = p + TQ2_QS + U(k) * w
            for m in range(w):
                q = np.int64(0)
                for n in range(4):
                    q += (_trit(x[xo + m + w * U(n)] * id_) & np.int64(3)) << np.int64(2 * n)
                y[qo + m] = np.uint8(q)


@njit(**JIT, inline="always")
def _untrit(b, p3, d):
    """(float)(xi - 1) * d, xi = ((uint16_t)(uint8_t)(b * p3) * 3) >> 8, p3 = pow3[n] for trit n."""
    qq = (np.int32(b) * p3) & np.int32(0xFF)
    return np.float32(((qq * np.int32(3)) >> np.int32(8)) - np.int32(1)) * d


# ggml-quants.c dequantize_row_tq1_0
@njit(**JIT)
def dequantize_row_tq1_0(q, y):
    """One row: q uint8[n/256*54] -> y float32[n]."""
    nb, qk = _blocks(y.shape[0], q.shape[0], TS_TQ1_0)
    w = qk // U(8)
    h = w // _U2
    nh = qk // U(64)
    for i in range(nb):
        p = i * TS_TQ1_0
        o = i * qk
        d = get_f16(q, p + TQ1_D)
        # three runs of bytes: qs[0:32] (5 trits each), qs[32:48] (5), qh[0:4] (4); the values
        # of a run go out trit by trit: y[count n + m] = trit n of byte m
        for run in range(3):
            count = w if run == 0 else (h if run == 1 else nh)
            qo = p + (TQ1_QS if run == 0 else (TQ1_QS + w if run == 1 else TQ1_QH))
            yo = o + (_U0 if run == 0 else (_U5 * w if run == 1 else _U5 * (w + h)))
            p3 = np.int32(1)
            for n in range(5 if run < 2 else 4):
                yn = yo + count * U(n)
                for m in range(count):
                    y[yn + m] = _untrit(q[qo + m], p3, d)
                p3 = np.int32(p3 * np.int32(3))


# ggml-quants.c dequantize_row_tq2_0
@njit(**JIT)
def dequantize_row_tq2_0(q, y):
    """One row: q uint8[n/256*66] -> y float32[n]."""
    nb, qk = _blocks(y.shape[0], q.shape[0], TS_TQ2_0)
    w = qk // U(8)
    for i in range(nb):
        p = i * TS_TQ2_0
        o = i * qk
        d = get_f16(q, p + TQ2_D)
        for kn in range(8):  # 32 bytes k = kn // 4, bits 2n.., n = kn % 4
            qo = p + TQ2_QS + U(kn // 4) * w
            sh = np.int32(2 * (kn % 4))
            yo = o + U(kn) * w
            for m in range(w):
                c = (np.int32(q[qo + m]) >> sh) & np.int32(3)
                y[yo + m] = np.float32(c - np.int32(1)) * d


# ggml-quants.c quantize_tq1_0 / quantize_tq2_0 (importance weights unused)
@njit(**JIT, nogil=True)
def quantize_tq1_0(x, qw, out):
    """x float32[rows, n], qw ignored (as ggml), out uint8[rows, n/256*54]."""
    for r in range(x.shape[0]):
        quantize_row_tq1_0_ref(x[r], out[r])


@njit(**JIT, nogil=True)
def quantize_tq2_0(x, qw, out):
    """x float32[rows, n], qw ignored (as ggml), out uint8[rows, n/256*66]."""
    for r in range(x.shape[0]):
        quantize_row_tq2_0_ref(x[r], out[r])


@njit(**JIT, nogil=True)
def dequantize_tq1_0(q, out):
    for r in range(out.shape[0]):
        dequantize_row_tq1_0(q[r], out[r])


@njit(**JIT, nogil=True)
def dequantize_tq2_0(q, out):
    for r in range(out.shape[0]):
        dequantize_row_tq2_0(q[r], out[r])


KERNELS = {
    QType.TQ1_0: Kernel(quantize_tq1_0, dequantize_tq1_0),
    QType.TQ2_0: Kernel(quantize_tq2_0, dequantize_tq2_0),
}
