"""ggml's MXFP4 (OCP microscaling FP4: E2M1 values, one E8M0 scale per 32), ported to Numba.

Ports, from ggml/src/ggml-quants.c (llama.cpp as vendored in llama-cpp-python 0.3.36):
  quantize_row_mxfp4_ref   what quantize_mxfp4 runs; it ignores importance weights
                           (GGML_UNUSED(quant_weights)), and so does this kernel
  best_index_mxfp4, dequantize_row_mxfp4
and ggml-impl.h ggml_e8m0_to_fp32_half, byte for byte.

    block_mxfp4  (32 values, 17 bytes)  offset 0 e (E8M0 exponent), 1 qs[16]:
                 byte j = code(x[j]) | code(x[16 + j]) << 4, value = kvalues_mxfp4[code] * 2^(e-128)

kvalues_mxfp4 (ggml-common.h kvalues_fp4) are the E2M1 values doubled, hence the "half" scale.
The exponent is `(uint8_t)(floorf(log2f(amax)) - 2 + 127)`: numba's float32 log2 calls the C
library's log2f, as ggml does, and the float -> uint8 cast is gcc's x86-64 cvttss2si + low byte
(an exponent below 0 wraps, inf gives 0), so tiny and subnormal blocks match too.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..types import QType, field_offsets
from . import Kernel
from ._common import sel

JIT = dict(cache=True, no_cfunc_wrapper=True, error_model="numpy")
U = np.uint64
_U0, _U2 = U(0), U(2)
_F0 = np.float32(0.0)

TS_MXFP4 = U(QType.MXFP4.type_size)  # 17
OFF_E, OFF_QS = map(U, field_offsets(QType.MXFP4, "e", "qs"))

# ggml-common.h kvalues_fp4 (int8), as float32 (exact)
KVALUES = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], dtype=np.float32)

_ABS = np.int32(0x7FFFFFFF)
_INF_BITS = np.int32(0x7F800000)
_TWO31 = np.float32(2147483648.0)
_MIN_NORMAL = np.int32(0x00800000)
_MANT = np.int32(0x007FFFFF)
_NEAR_TWO = np.int32(0x007FE000)  # mantissa of 2 - 2^-10: log2 of a larger one may round up to 1


@njit(**JIT, inline="always")
def _blocks(n, nbytes, ts):
    """(blocks in the row, block length) as uint64, the length taken from the row shapes at run time
    (a constant trip count would be fully unrolled before LLVM's loop vectorizer sees the loop)."""
    nb = U(nbytes) // ts
    return nb, (U(n) // nb if nb > _U0 else _U0)


# ggml-impl.h ggml_e8m0_to_fp32_half
@njit(**JIT, inline="always")
def e8m0_to_fp32_half(e):
    """2^(e-128) as float32: 0x00200000 << e for e < 2 (subnormals), else exponent field e - 1."""
    e = np.uint32(e)
    bits = sel(e < np.uint32(2), np.uint32(np.uint32(0x00200000) << e), np.uint32((e - np.uint32(1)) << np.uint32(23)))
    return np.uint32(bits).view(np.float32)


# ggml-quants.c best_index_mxfp4
@njit(**JIT, inline="always")
def best_index(v, d):
    """The first code i of smallest fabsf(kvalues_mxfp4[i]*d - v) (NaN v: 0).

    Over the 8 codes of value >= 0 at |v|, then moved to the negative half for v < 0, which is the
    same choice bit for bit: negation is exact, so code 8 + i at v has code i's error at -v, and
    the codes of the other sign never win: their error fl(a*d + |v|) is >= code 0's |v|, and code
    0 comes first. Straight-line, so the caller's loop over a block's values vectorizes."""
    t = np.abs(v)
    best = np.abs(KVALUES[0] * d - t)
    bi = np.int64(0)
    for i in range(1, 8):
        err = np.abs(KVALUES[i] * d - t)
        c = err < best
        best = sel(c, err, best)
        bi = sel(c, np.int64(i), bi)
    return sel((v < _F0) & (bi > np.int64(0)), bi + np.int64(8), bi)


# ggml-quants.c quantize_row_mxfp4_ref
@njit(**JIT)
def quantize_row_mxfp4_ref(x, y):
    """One row: x float32[n], y uint8[n/32*17]."""
    xb = x.view(np.int32)
    nb, qk = _blocks(x.shape[0], y.shape[0], TS_MXFP4)
    half = qk // _U2
    for i in range(nb):
        o = i * qk
        p = i * TS_MXFP4
        # ggml: `if (amax < fabsf(v)) amax = fabsf(v)` from 0: NaNs skipped, order-free on the bits
        m = np.int32(0)
        for j in range(qk):
            a = xb[o + j] & _ABS
            m = max(m, sel(a > _INF_BITS, np.int32(0), np.int32(a)))
        amax = np.int32(m).view(np.float32)
        e = np.int32(0)
        if m >= _MIN_NORMAL and m < _INF_BITS and (m & _MANT) < _NEAR_TWO:
            # a finite normal amax not just below a power of two: floor(log2f(amax)) is its exponent k
            # (log2f is faithfully rounded and exact at powers of two, so its result lies in
            # [k, k + 1 - 2^-11] for |k| <= 127; glibc's checked on every such float: 0 exceptions)
            e = ((m >> np.int32(23)) - np.int32(127) - np.int32(2) + np.int32(127)) & np.int32(0xFF)
        elif amax > _F0:
            f = np.float32(np.floor(np.log2(amax))) - np.float32(2.0) + np.float32(127.0)
            # (uint8_t)f: cvttss2si (INT_MIN if out of int32 range), low byte
            e = np.int32(f) & np.int32(0xFF) if np.abs(f) < _TWO31 else np.int32(0)
        d = e8m0_to_fp32_half(e)
        y[p + OFF_E] = np.uint8(e)
        q = p + OFF_QS
        for j in range(half):
            y[q + j] = np.uint8(best_index(x[o + j], d) | (best_index(x[o + half + j], d) << np.int64(4)))


# ggml-quants.c dequantize_row_mxfp4
@njit(**JIT)
def dequantize_row_mxfp4(q, y):
    """One row: q uint8[n/32*17] -> y float32[n]."""
    kv = KVALUES
    nb, qk = _blocks(y.shape[0], q.shape[0], TS_MXFP4)
    half = qk // _U2
    for i in range(nb):
        p = i * TS_MXFP4
        o = i * qk
        d = e8m0_to_fp32_half(q[p + OFF_E])
        s = p + OFF_QS
        for j in range(half):
            b = q[s + j]
            y[o + j] = kv[b & np.uint8(0x0F)] * d
            y[o + half + j] = kv[b >> np.uint8(4)] * d


# ggml-quants.c quantize_mxfp4 (importance weights unused)
@njit(**JIT, nogil=True)
def quantize_mxfp4(x, qw, out):
    """x float32[rows, n], qw ignored (as ggml), out uint8[rows, n/32*17]."""
    for r in range(x.shape[0]):
        quantize_row_mxfp4_ref(x[r], out[r])


@njit(**JIT, nogil=True)
def dequantize_mxfp4(q, out):
    for r in range(out.shape[0]):
        dequantize_row_mxfp4(q[r], out[r])


KERNELS = {QType.MXFP4: Kernel(quantize_mxfp4, dequantize_mxfp4)}
