"""ggml's legacy 32-wide block types Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0, ported to Numba.

Ports, from ggml/src/ggml-quants.c (llama.cpp as vendored in llama-cpp-python 0.3.36):
  quantize_row_q{4_0,4_1,5_0,5_1,8_0}_ref   the unweighted path (ggml_quantize_chunk with NULL weights)
  quantize_row_q{4_0,4_1,5_0,5_1}_impl      the importance-weighted path (quantize_q8_0 ignores weights)
  dequantize_row_q{4_0,4_1,5_0,5_1,8_0}
byte for byte. Every float expression is evaluated in float32, op by op, in C's order.

Exactness notes:
- C's float -> (u)int8 casts (`(int8_t)(x0 + 8.5f)`) are what gcc emits on x86-64: a truncating
  cvttss2si to int32 (INT_MIN when the value is NaN or out of range), keep the low byte.
  `_trunc_i8` reproduces that, so overflowing scales (1/d = inf for subnormal d) still match.
- The block max/min searches run as order-free integer reductions on the float bits, and fall
  back to ggml's sequential loop where the order could matter (NaN, signed zeros).

Speed notes (numba leaves LLVM's SLP vectorizer off, so only loops vectorize):
- Block loops get their trip count QK from the row shapes at run time (`_blocks`): a constant 32
  would be fully unrolled before the loop vectorizer sees it.
- All indices are uint64: numba's negative-index wraparound on signed indices turns contiguous
  loads into gathers.
- The weighted paths search up to LANES blocks of a row at once, one block per vector lane
  (see "weighted quantizers" below): make_qx_quants for Q4_0/Q5_0 here, make_qkx3_quants for
  Q4_1/Q5_1 through q4_k.search_qkx. The scalar ports in _search.py are their reference
  (tests/test_search.py).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..types import QK, QType, field_offsets
from . import Kernel, q4_k
from ._common import GROUP_MAX_EPS, fp16_to_fp32, fp32_to_fp16, level, sel


U = np.uint64
_U0 = U(0)
_U1 = U(1)
_U2 = U(2)
_U3 = U(3)

_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_HALF = np.float32(0.5)
_TWO31 = np.float32(2147483648.0)
_FLT_MAX = np.float32(3.4028234663852886e38)

# bytes per block (ggml-common.h block_q*: fields in order)
TS_Q4_0 = U(QType.Q4_0.type_size)  # d, qs[16]
TS_Q4_1 = U(QType.Q4_1.type_size)  # d, m, qs[16]
TS_Q5_0 = U(QType.Q5_0.type_size)  # d, qh[4], qs[16]
TS_Q5_1 = U(QType.Q5_1.type_size)  # d, m, qh[4], qs[16]
TS_Q8_0 = U(QType.Q8_0.type_size)  # d, qs[32]
Q4_0_D, Q4_0_QS = map(U, field_offsets(QType.Q4_0, "d", "qs"))
Q4_1_D, Q4_1_M, Q4_1_QS = map(U, field_offsets(QType.Q4_1, "d", "m", "qs"))
Q5_0_D, Q5_0_QH, Q5_0_QS = map(U, field_offsets(QType.Q5_0, "d", "qh", "qs"))
Q5_1_D, Q5_1_M, Q5_1_QH, Q5_1_QS = map(U, field_offsets(QType.Q5_1, "d", "m", "qh", "qs"))
Q8_0_D, Q8_0_QS = map(U, field_offsets(QType.Q8_0, "d", "qs"))

# float32 bit patterns, viewed as int32
_ABS = np.int32(0x7FFFFFFF)  # clears the sign bit
_INF_BITS = np.int32(0x7F800000)  # |x| bits above this are NaN
_NEG_INF_KEY = np.int32(-2139095041)  # _order_key(-inf); keys below it are negative NaNs
_I32_MAX = np.int32(0x7FFFFFFF)
_I32_MIN = np.int32(-0x80000000)


# ---------------------------------------------------------------- scalar helpers


@njit(error_model="numpy", cache=True, no_cfunc_wrapper=True, inline="always")
def _trunc_i8(f):
    """C `(int8_t)f` / `(uint8_t)f` as gcc x86-64 emits it: cvttss2si (INT_MIN if NaN/out of range), low byte, sign-extended."""
    t = np.int32(f if np.abs(f) < _TWO31 else _F0)
    return np.int32(np.int8(t))


@njit(error_model="numpy", cache=True, no_cfunc_wrapper=True, inline="always")
def _roundf(f):
    """C `roundf`: round half away from zero, in float32."""
    t = np.trunc(f)
    r = f - t  # exact
    if r >= _HALF:
        t += _F1
    elif r <= -_HALF:
        t -= _F1
    return t


@njit(error_model="numpy", cache=True, no_cfunc_wrapper=True, inline="always")
def _order_key(b):
    """float32 bits (int32) -> int32 key whose integer order is the float order (-0 sorts just below +0); self-inverse."""
    return np.int32(b ^ ((b >> 31) & _ABS))


@njit(error_model="numpy", cache=True, no_cfunc_wrapper=True, inline="always")
def minmax_keys(xb, o, n):
    """(smallest, largest) _order_key of the float32 bits xb[o:o+n] (int32 view): an order-free
    integer reduction that vectorizes. A key above _INF_BITS or below _NEG_INF_KEY is a NaN; the
    keys turn back into values with _order_key(k).view(np.float32)."""
    kmin = _I32_MAX
    kmax = _I32_MIN
    for j in range(n):
        k = _order_key(xb[o + j])
        kmin = min(kmin, k)
        kmax = max(kmax, k)
    return kmin, kmax


@njit(error_model="numpy", cache=True, no_cfunc_wrapper=True, inline="always")
def _put_h(y, pos, f):
    """Store float32 f as little-endian fp16 at y[pos], pos uint64."""
    h = fp32_to_fp16(f)
    y[pos] = np.uint8(h & np.uint16(0xFF))
    y[pos + _U1] = np.uint8(h >> np.uint16(8))


@njit(error_model="numpy", cache=True, no_cfunc_wrapper=True, inline="always")
def _get_h(q, pos):
    """Little-endian fp16 at q[pos] as float32, pos uint64."""
    return fp16_to_fp32(np.uint32(q[pos]) | (np.uint32(q[pos + _U1]) << np.uint32(8)))


@njit(error_model="numpy", cache=True, no_cfunc_wrapper=True, inline="always")
def _put_u32(y, pos, v):
    """memcpy of a little-endian uint32 to y[pos:pos+4]."""
    y[pos] = np.uint8(v & np.uint32(0xFF))
    y[pos + _U1] = np.uint8((v >> np.uint32(8)) & np.uint32(0xFF))
    y[pos + _U2] = np.uint8((v >> np.uint32(16)) & np.uint32(0xFF))
    y[pos + _U3] = np.uint8(v >> np.uint32(24))


@njit(error_model="numpy", cache=True, no_cfunc_wrapper=True, inline="always")
def _get_u32(q, pos):
    return (
        np.uint32(q[pos])
        | (np.uint32(q[pos + _U1]) << np.uint32(8))
        | (np.uint32(q[pos + _U2]) << np.uint32(16))
        | (np.uint32(q[pos + _U3]) << np.uint32(24))
    )


@njit(error_model="numpy", cache=True, no_cfunc_wrapper=True, inline="always")
def _blocks(n, nbytes, ts):
    """(blocks in the row, QK) as uint64, with QK (= 32) taken from the row shapes at run time.

    An opaque trip count keeps each per-block loop a loop that LLVM vectorizes; indexing stays
    within both rows whatever the shapes.
    """
    nb = U(nbytes) // ts
    return nb, (U(n) // nb if nb > _U0 else _U0)


# ---------------------------------------------------------------- block searches
# ggml's sequential loops over one block x[o:o+qk]. The kernels below run order-free integer
# reductions on the float bits instead (they vectorize) and call these only where the order
# matters. The fast searches are written out in each kernel: an inlined helper taking arrays
# costs NRT reference-count calls per block.


@njit(error_model="numpy", cache=True, no_cfunc_wrapper=True)
def _argmax_abs_seq(x, o, qk):
    """ggml: `if (amax < fabsf(v)) { amax = fabsf(v); max = v; }` from amax = max = 0."""
    amax = _F0
    mx = _F0
    for j in range(qk):
        v = x[o + j]
        if amax < np.abs(v):
            amax = np.abs(v)
            mx = v
    return mx


@njit(error_model="numpy", cache=True, no_cfunc_wrapper=True)
def _absmax_seq(x, o, qk):
    """ggml: `amax = MAX(amax, fabsf(v))` from 0, with MAX(a, b) = a > b ? a : b."""
    amax = _F0
    for j in range(qk):
        a = np.abs(x[o + j])
        amax = amax if amax > a else a
    return amax


@njit(error_model="numpy", cache=True, no_cfunc_wrapper=True)
def _minmax_seq(x, o, qk):
    """ggml: `if (v < min) min = v; if (v > max) max = v;` from FLT_MAX / -FLT_MAX."""
    mn = _FLT_MAX
    mx = -_FLT_MAX
    for j in range(qk):
        v = x[o + j]
        if v < mn:
            mn = v
        if v > mx:
            mx = v
    return mn, mx


# ---------------------------------------------------------------- reference (unweighted) quantizers


# ggml-quants.c quantize_row_q4_0_ref
@njit(error_model="numpy", cache=True, no_cfunc_wrapper=True)
def quantize_row_q4_0_ref(x, y):
    """One row: x float32[n], y uint8[n/32*18]."""
    xb = x.view(np.int32)
    nb, qk = _blocks(x.shape[0], y.shape[0], TS_Q4_0)
    half = qk // _U2
    for i in range(nb):
        o = i * qk
        p = i * TS_Q4_0
        # amax/max search (ggml: first v of largest |v|, NaNs skipped, 0 if none)
        m = np.int32(0)
        for j in range(qk):
            m = max(m, np.int32(xb[o + j] & _ABS))
        if m > _INF_BITS:  # a NaN: the sequential loop
            mx = _argmax_abs_seq(x, o, qk)
        elif m == 0:
            mx = _F0
        else:
            first = np.uint32(qk)
            for j in range(qk):
                first = min(first, np.uint32(j) if np.int32(xb[o + j] & _ABS) == m else np.uint32(qk))
            mx = x[o + U(first)]
        d = mx / np.float32(-8.0)
        id_ = _F1 / d if d != _F0 else _F0
        _put_h(y, p + Q4_0_D, d)
        q = p + Q4_0_QS
        for j in range(half):
            x0 = x[o + j] * id_
            x1 = x[o + half + j] * id_
            xi0 = min(np.int32(15), _trunc_i8(x0 + np.float32(8.5)))
            xi1 = min(np.int32(15), _trunc_i8(x1 + np.float32(8.5)))
            y[q + j] = np.uint8(xi0 | (xi1 << 4))


# ggml-quants.c quantize_row_q4_1_ref
@njit(error_model="numpy", cache=True, no_cfunc_wrapper=True)
def quantize_row_q4_1_ref(x, y):
    """One row: x float32[n], y uint8[n/32*20]."""
    xb = x.view(np.int32)
    nb, qk = _blocks(x.shape[0], y.shape[0], TS_Q4_1)
    half = qk // _U2
    for i in range(nb):
        o = i * qk
        p = i * TS_Q4_1
        # min/max search via order keys; sequential on NaN, or when an extreme is a zero
        # (ggml keeps the first zero's sign; keys would prefer -0 for min and +0 for max)
        kmin, kmax = minmax_keys(xb, o, qk)
        if kmax > _INF_BITS or kmin < _NEG_INF_KEY or kmin == 0 or kmin == -1 or kmax == 0 or kmax == -1:
            mn, mx = _minmax_seq(x, o, qk)
        else:
            mn = _order_key(kmin).view(np.float32)
            mx = _order_key(kmax).view(np.float32)
        d = (mx - mn) / np.float32(15.0)
        id_ = _F1 / d if d != _F0 else _F0
        _put_h(y, p + Q4_1_D, d)
        _put_h(y, p + Q4_1_M, mn)
        q = p + Q4_1_QS
        for j in range(half):
            x0 = (x[o + j] - mn) * id_
            x1 = (x[o + half + j] - mn) * id_
            xi0 = min(np.int32(15), _trunc_i8(x0 + _HALF))
            xi1 = min(np.int32(15), _trunc_i8(x1 + _HALF))
            y[q + j] = np.uint8(xi0 | (xi1 << 4))


# ggml-quants.c quantize_row_q5_0_ref
@njit(error_model="numpy", cache=True, no_cfunc_wrapper=True)
def quantize_row_q5_0_ref(x, y):
    """One row: x float32[n], y uint8[n/32*22]."""
    xb = x.view(np.int32)
    nb, qk = _blocks(x.shape[0], y.shape[0], TS_Q5_0)
    half = qk // _U2
    for i in range(nb):
        o = i * qk
        p = i * TS_Q5_0
        # amax/max search (ggml: first v of largest |v|, NaNs skipped, 0 if none)
        m = np.int32(0)
        for j in range(qk):
            m = max(m, np.int32(xb[o + j] & _ABS))
        if m > _INF_BITS:  # a NaN: the sequential loop
            mx = _argmax_abs_seq(x, o, qk)
        elif m == 0:
            mx = _F0
        else:
            first = np.uint32(qk)
            for j in range(qk):
                first = min(first, np.uint32(j) if np.int32(xb[o + j] & _ABS) == m else np.uint32(qk))
            mx = x[o + U(first)]
        d = mx / np.float32(-16.0)
        id_ = _F1 / d if d != _F0 else _F0
        _put_h(y, p + Q5_0_D, d)
        q = p + Q5_0_QS
        qh = np.uint32(0)
        for j in range(half):
            x0 = x[o + j] * id_
            x1 = x[o + half + j] * id_
            xi0 = np.uint32(np.uint8(min(np.int32(31), _trunc_i8(x0 + np.float32(16.5)))))
            xi1 = np.uint32(np.uint8(min(np.int32(31), _trunc_i8(x1 + np.float32(16.5)))))
            y[q + j] = np.uint8((xi0 & np.uint32(0x0F)) | ((xi1 & np.uint32(0x0F)) << np.uint32(4)))
            # the 5th bits go to qh, bit j and bit j + 16
            qh |= ((xi0 & np.uint32(0x10)) >> np.uint32(4)) << np.uint32(j)
            qh |= ((xi1 & np.uint32(0x10)) >> np.uint32(4)) << np.uint32(j + half)
        _put_u32(y, p + Q5_0_QH, qh)


# ggml-quants.c quantize_row_q5_1_ref
@njit(error_model="numpy", cache=True, no_cfunc_wrapper=True)
def quantize_row_q5_1_ref(x, y):
    """One row: x float32[n], y uint8[n/32*24]."""
    xb = x.view(np.int32)
    nb, qk = _blocks(x.shape[0], y.shape[0], TS_Q5_1)
    half = qk // _U2
    for i in range(nb):
        o = i * qk
        p = i * TS_Q5_1
        # min/max search via order keys; sequential on NaN, or when an extreme is a zero
        # (ggml keeps the first zero's sign; keys would prefer -0 for min and +0 for max)
        kmin, kmax = minmax_keys(xb, o, qk)
        if kmax > _INF_BITS or kmin < _NEG_INF_KEY or kmin == 0 or kmin == -1 or kmax == 0 or kmax == -1:
            mn, mx = _minmax_seq(x, o, qk)
        else:
            mn = _order_key(kmin).view(np.float32)
            mx = _order_key(kmax).view(np.float32)
        d = (mx - mn) / np.float32(31.0)
        id_ = _F1 / d if d != _F0 else _F0
        _put_h(y, p + Q5_1_D, d)
        _put_h(y, p + Q5_1_M, mn)
        q = p + Q5_1_QS
        qh = np.uint32(0)
        for j in range(half):
            x0 = (x[o + j] - mn) * id_
            x1 = (x[o + half + j] - mn) * id_
            xi0 = np.uint32(np.uint8(_trunc_i8(x0 + _HALF)))
            xi1 = np.uint32(np.uint8(_trunc_i8(x1 + _HALF)))
            y[q + j] = np.uint8((xi0 & np.uint32(0x0F)) | ((xi1 & np.uint32(0x0F)) << np.uint32(4)))
            qh |= ((xi0 & np.uint32(0x10)) >> np.uint32(4)) << np.uint32(j)
            qh |= ((xi1 & np.uint32(0x10)) >> np.uint32(4)) << np.uint32(j + half)
        _put_u32(y, p + Q5_1_QH, qh)


# ggml-quants.c quantize_row_q8_0_ref
@njit(error_model="numpy", cache=True, no_cfunc_wrapper=True)
def quantize_row_q8_0_ref(x, y):
    """One row: x float32[n], y uint8[n/32*34]."""
    xb = x.view(np.int32)
    nb, qk = _blocks(x.shape[0], y.shape[0], TS_Q8_0)
    for i in range(nb):
        o = i * qk
        p = i * TS_Q8_0
        # amax search (ggml: MAX over |v|; the order only matters when a NaN is present)
        m = np.int32(0)
        for j in range(qk):
            m = max(m, np.int32(xb[o + j] & _ABS))
        if m > _INF_BITS:
            amax = _absmax_seq(x, o, qk)
        else:
            amax = np.int32(m).view(np.float32)
        d = amax / np.float32(127.0)
        id_ = _F1 / d if d != _F0 else _F0
        _put_h(y, p + Q8_0_D, d)
        q = p + Q8_0_QS
        for j in range(qk):
            y[q + j] = np.uint8(_trunc_i8(_roundf(x[o + j] * id_)))


# ---------------------------------------------------------------- weighted quantizers (quant_weights != NULL)
#
# ggml runs make_qx_quants (Q4_0, Q5_0) or make_qkx3_quants (Q4_1, Q5_1) on one 32-value block
# after the other. Blocks are independent, so here up to LANES blocks of a row are searched
# together, one block per vector lane: a chunk of the row is transposed into one float32 scratch
# array (s[S_X + i*LANES + j] = x[32*j + i], j = block of the chunk), and each step over the
# lanes is a contiguous load. Every lane runs ggml's exact sequence for its block (the same
# candidate scales in the same order, every sum accumulated over i = 0..31 in order, the same
# float32 operations); only the lanes advance together, which LLVM turns into SIMD.
#
# make_qx_quants' 19 candidate scales are independent (each sums over the block with its own
# fixed iscale), and its "better than the best so far" test is replayed per lane with selects
# in C's order (is = 0 first, then -9..9). make_qkx3_quants' candidates are not independent (an
# accepted one replaces `min`, which the next ones use): Q4_1/Q5_1 run q4_k.py's lane search,
# which is exactly make_qkx3_quants(32, nmax, x, weights, L, &min, Laux, -0.9f, 0.05f, 36, false)
# per lane, the call these types make too. The scalar ports in _search.py stay the reference.

LANES = 32  # blocks per chunk (vector lanes)
_PLANE = QK * LANES
# make_qx_quants scratch (float32 offsets): planes (i*LANES + j), then one vector per lane quantity
S_X = 0  # x
S_W = S_X + _PLANE  # weight[i] = qw[i] * sqrtf(sigma2 + x[i]*x[i])
S_WX = S_W + _PLANE  # weight[i] * x[i] (C's `w*x[i]*l` evaluates w*x[i] first)
S_L = S_WX + _PLANE  # final L (as floats)
_V = S_L + _PLANE
S_AMAX = _V + 0 * LANES  # amax
S_MX = _V + 1 * LANES  # max (the x of largest |x|)
S_SC = _V + 2 * LANES  # scale (best so far)
S_BEST = _V + 3 * LANES  # best
S_BISC = _V + 4 * LANES  # iscale that produced the current L
QX_SCRATCH = _V + 5 * LANES
SCRATCH = max(QX_SCRATCH, q4_k.SCRATCH)
assert q4_k.LANES == LANES and q4_k.SUB == QK  # q4_k's planes hold LANES blocks of QK values

NCAND = 19  # make_qx_quants: the first pass (is = 0), then is = -9..9 without 0
_F01 = np.float32(0.1)


@njit(error_model="numpy", cache=True, no_cfunc_wrapper=True, inline="always")
def _row_sigma2(x):
    """`sum_x2 += x[j]*x[j]` in order, then `sum_x2/n_per_row` (prologue of the _impl quantizers)."""
    s = _F0
    for j in range(U(x.shape[0])):
        s += x[j] * x[j]
    return s / np.float32(x.shape[0])


@njit(error_model="numpy", cache=True, no_cfunc_wrapper=True)
def _load_weighted(s, sx, sw, x, qw, xo, n, sigma2, wx):
    """Transposes the n blocks at x[xo:] into s[sx], and their weights
    qw[i] * sqrtf(sigma2 + x[i]*x[i]) into s[sw] (and weight*x into s[S_WX] if wx)."""
    for j in range(n):
        for i in range(QK):
            k = U(i * LANES + j)
            s[U(sx) + k] = x[U(xo + QK * j + i)]
            s[U(sw) + k] = qw[U(xo + QK * j + i)]
    for i in range(QK):
        for j in range(n):
            k = U(i * LANES + j)
            v = s[U(sx) + k]
            w = s[U(sw) + k] * np.sqrt(sigma2 + v * v)
            s[U(sw) + k] = w
            if wx:
                s[U(S_WX) + k] = w * v


@njit(error_model="numpy", cache=True, no_cfunc_wrapper=True, inline="always")
def _qx_step(s, k, iv, a, b, lo, hi):
    """One element of make_qx_quants' sums: l = clamp(nearest_int(iscale*x)); sumlx += w*x*l; suml2 += w*l*l."""
    fl = level(iv * s[k + U(S_X)], lo, hi)
    return a + s[k + U(S_WX)] * fl, b + s[k + U(S_W)] * fl * fl


@njit(error_model="numpy", cache=True, no_cfunc_wrapper=True, inline="always")
def _qx_sums(s, j, iv, lo, hi):
    """make_qx_quants' (sumlx, suml2) of lane j for inverse scale iv, i = 0..31 in order."""
    o = U(j)
    a = _F0
    b = _F0
    a, b = _qx_step(s, o + U(0 * LANES), iv, a, b, lo, hi)
    a, b = _qx_step(s, o + U(1 * LANES), iv, a, b, lo, hi)
    a, b = _qx_step(s, o + U(2 * LANES), iv, a, b, lo, hi)
    a, b = _qx_step(s, o + U(3 * LANES), iv, a, b, lo, hi)
    a, b = _qx_step(s, o + U(4 * LANES), iv, a, b, lo, hi)
    a, b = _qx_step(s, o + U(5 * LANES), iv, a, b, lo, hi)
    a, b = _qx_step(s, o + U(6 * LANES), iv, a, b, lo, hi)
    a, b = _qx_step(s, o + U(7 * LANES), iv, a, b, lo, hi)
    a, b = _qx_step(s, o + U(8 * LANES), iv, a, b, lo, hi)
    a, b = _qx_step(s, o + U(9 * LANES), iv, a, b, lo, hi)
    a, b = _qx_step(s, o + U(10 * LANES), iv, a, b, lo, hi)
    a, b = _qx_step(s, o + U(11 * LANES), iv, a, b, lo, hi)
    a, b = _qx_step(s, o + U(12 * LANES), iv, a, b, lo, hi)
    a, b = _qx_step(s, o + U(13 * LANES), iv, a, b, lo, hi)
    a, b = _qx_step(s, o + U(14 * LANES), iv, a, b, lo, hi)
    a, b = _qx_step(s, o + U(15 * LANES), iv, a, b, lo, hi)
    a, b = _qx_step(s, o + U(16 * LANES), iv, a, b, lo, hi)
    a, b = _qx_step(s, o + U(17 * LANES), iv, a, b, lo, hi)
    a, b = _qx_step(s, o + U(18 * LANES), iv, a, b, lo, hi)
    a, b = _qx_step(s, o + U(19 * LANES), iv, a, b, lo, hi)
    a, b = _qx_step(s, o + U(20 * LANES), iv, a, b, lo, hi)
    a, b = _qx_step(s, o + U(21 * LANES), iv, a, b, lo, hi)
    a, b = _qx_step(s, o + U(22 * LANES), iv, a, b, lo, hi)
    a, b = _qx_step(s, o + U(23 * LANES), iv, a, b, lo, hi)
    a, b = _qx_step(s, o + U(24 * LANES), iv, a, b, lo, hi)
    a, b = _qx_step(s, o + U(25 * LANES), iv, a, b, lo, hi)
    a, b = _qx_step(s, o + U(26 * LANES), iv, a, b, lo, hi)
    a, b = _qx_step(s, o + U(27 * LANES), iv, a, b, lo, hi)
    a, b = _qx_step(s, o + U(28 * LANES), iv, a, b, lo, hi)
    a, b = _qx_step(s, o + U(29 * LANES), iv, a, b, lo, hi)
    a, b = _qx_step(s, o + U(30 * LANES), iv, a, b, lo, hi)
    a, b = _qx_step(s, o + U(31 * LANES), iv, a, b, lo, hi)
    return a, b


# ggml-quants.c: make_qx_quants(32, nmax, x, L, rmse_type=1, weight) for the n blocks in
# s[S_X], s[S_W], s[S_WX] at once. Leaves scale in s[S_SC + j] and the iscale that produced L in
# s[S_BISC + j]; s[S_AMAX + j] < GROUP_MAX_EPS marks an all-zero block (scale 0, L 0).
@njit(error_model="numpy", cache=True, no_cfunc_wrapper=True)
def _qx_search_lanes(s, n, nmax):
    lo = np.int32(-nmax)
    hi = np.int32(nmax - 1)
    fnmax = np.float32(nmax)
    # max, amax: `if (ax > amax) { amax = ax; max = x[i]; }` from 0, 0
    for j in range(n):
        s[U(S_AMAX + j)] = _F0
        s[U(S_MX + j)] = _F0
    for i in range(QK):
        for j in range(n):
            v = s[U(S_X + i * LANES + j)]
            av = np.float32(abs(v))
            take = av > s[U(S_AMAX + j)]
            s[U(S_AMAX + j)] = sel(take, av, s[U(S_AMAX + j)])
            s[U(S_MX + j)] = sel(take, v, s[U(S_MX + j)])
    # candidate 0 is the first pass: iscale = -nmax/max, scale = suml2 ? sumlx/suml2 : 0,
    # best = scale*sumlx. Then is = -9..9 (not 0): iscale = -(nmax + 0.1f*is)/max, taken if
    # suml2 > 0 && sumlx*sumlx > best*suml2 (and then suml2 != 0: the same scale expression).
    for c in range(NCAND):
        is_ = 0 if c == 0 else (c - 10 if c < 10 else c - 9)
        num = np.float32(-(fnmax + _F01 * np.float32(is_)))
        first = c == 0
        for j in range(n):
            iv = np.float32(num / s[U(S_MX + j)])
            a, b = _qx_sums(s, j, iv, lo, hi)
            take = first | ((b > _F0) & (a * a > s[U(S_BEST + j)] * b))
            sc = sel(b != _F0, np.float32(a / b), _F0)
            s[U(S_SC + j)] = sel(take, sc, s[U(S_SC + j)])
            s[U(S_BEST + j)] = sel(take, np.float32(sc * a), s[U(S_BEST + j)])
            s[U(S_BISC + j)] = sel(take, iv, s[U(S_BISC + j)])
    # L[i] = nmax + MAX(-nmax, MIN(nmax-1, nearest_int(iscale*x[i]))), 0 for an all-zero block
    for i in range(QK):
        for j in range(n):
            zero = s[U(S_AMAX + j)] < GROUP_MAX_EPS
            l = level(s[U(S_BISC + j)] * s[U(S_X + i * LANES + j)], lo, hi) + fnmax
            s[U(S_L + i * LANES + j)] = sel(zero, _F0, l)


# ggml-quants.c quantize_row_q4_0_impl (q5 = False) / quantize_row_q5_0_impl (q5 = True)
@njit(error_model="numpy", cache=True, no_cfunc_wrapper=True)
def _quantize_row_x0_impl(x, qw, y, s, q5):
    """One row with importance weights qw float32[n]: y uint8[n/32*18] (Q4_0) or [n/32*22] (Q5_0)."""
    ts = TS_Q5_0 if q5 else TS_Q4_0
    nb = np.int64(U(y.shape[0]) // ts)
    nmax = np.int64(16 if q5 else 8)
    sigma2 = _row_sigma2(x)
    for c0 in range(0, nb, LANES):
        n = min(LANES, nb - c0)
        _load_weighted(s, S_X, S_W, x, qw, c0 * QK, n, sigma2, True)
        _qx_search_lanes(s, n, nmax)
        for j in range(n):
            p = U(c0 + j) * ts
            d = sel(s[U(S_AMAX + j)] < GROUP_MAX_EPS, _F0, s[U(S_SC + j)])
            _put_h(y, p + (Q5_0_D if q5 else Q4_0_D), d)
            q = p + (Q5_0_QS if q5 else Q4_0_QS)
            qh = np.uint32(0)
            for t in range(QK // 2):
                xi0 = np.uint32(s[U(S_L + t * LANES + j)])
                xi1 = np.uint32(s[U(S_L + (t + QK // 2) * LANES + j)])
                y[q + U(t)] = np.uint8((xi0 & np.uint32(0x0F)) | ((xi1 & np.uint32(0x0F)) << np.uint32(4)))
                # Q5_0: the 5th bits go to qh, bit t and bit t + 16
                qh |= ((xi0 & np.uint32(0x10)) >> np.uint32(4)) << np.uint32(t)
                qh |= ((xi1 & np.uint32(0x10)) >> np.uint32(4)) << np.uint32(t + QK // 2)
            if q5:
                _put_u32(y, p + Q5_0_QH, qh)


# ggml-quants.c quantize_row_q4_1_impl (q5 = False) / quantize_row_q5_1_impl (q5 = True):
# make_qkx3_quants(32, nmax, xb, weight, L, &min, Laux, -0.9f, 0.05f, 36, false) per block,
# as q4_k.search_qkx lanes (its scratch layout: q4_k.S_X, q4_k.S_W, ...).
@njit(error_model="numpy", cache=True, no_cfunc_wrapper=True)
def _quantize_row_x1_impl(x, qw, y, s, q5):
    """One row with importance weights qw float32[n]: y uint8[n/32*20] (Q4_1) or [n/32*24] (Q5_1)."""
    ts = TS_Q5_1 if q5 else TS_Q4_1
    nb = np.int64(U(y.shape[0]) // ts)
    nmax = np.int64(31 if q5 else 15)
    sigma2 = _row_sigma2(x)
    for c0 in range(0, nb, LANES):
        n = min(LANES, nb - c0)
        _load_weighted(s, q4_k.S_X, q4_k.S_W, x, qw, c0 * QK, n, sigma2, False)
        q4_k.search_qkx(s, n, nmax, q4_k.IMPL_RMIN, q4_k.IMPL_RDELTA, np.int64(q4_k.IMPL_NSTEP), True)
        # L: the first pass's or the accepted candidate's nearest_int(iscale*(x[i] - min)), clamped
        # to 0..nmax; 0 for a block make_qkx3_quants returns early on (max <= min)
        for i in range(QK):
            for j in range(n):
                k = i * LANES + j
                degenerate = s[U(q4_k.S_MAX + j)] <= s[U(q4_k.S_MIN0 + j)]
                xi = s[U(q4_k.S_X + k)]
                l = level(s[U(q4_k.S_BISC + j)] * (xi - s[U(q4_k.S_BXMIN + j)]), 0, nmax)
                s[U(q4_k.S_L + k)] = sel(degenerate, _F0, l)
        for j in range(n):
            p = U(c0 + j) * ts
            _put_h(y, p + (Q5_1_D if q5 else Q4_1_D), s[U(q4_k.S_SCALES + j)])
            _put_h(y, p + (Q5_1_M if q5 else Q4_1_M), -s[U(q4_k.S_MINS + j)])
            q = p + (Q5_1_QS if q5 else Q4_1_QS)
            qh = np.uint32(0)
            for t in range(QK // 2):
                xi0 = np.uint32(s[U(q4_k.S_L + t * LANES + j)])
                xi1 = np.uint32(s[U(q4_k.S_L + (t + QK // 2) * LANES + j)])
                y[q + U(t)] = np.uint8((xi0 & np.uint32(0x0F)) | ((xi1 & np.uint32(0x0F)) << np.uint32(4)))
                # Q5_1: the 5th bits go to qh, bit t and bit t + 16
                qh |= ((xi0 & np.uint32(0x10)) >> np.uint32(4)) << np.uint32(t)
                qh |= ((xi1 & np.uint32(0x10)) >> np.uint32(4)) << np.uint32(t + QK // 2)
            if q5:
                _put_u32(y, p + Q5_1_QH, qh)


# ---------------------------------------------------------------- dequantizers


# ggml-quants.c dequantize_row_q4_0
@njit(error_model="numpy", cache=True, no_cfunc_wrapper=True)
def dequantize_row_q4_0(q, y):
    """One row: q uint8[n/32*18] -> y float32[n]."""
    nb, qk = _blocks(y.shape[0], q.shape[0], TS_Q4_0)
    half = qk // _U2
    for i in range(nb):
        p = i * TS_Q4_0
        o = i * qk
        d = _get_h(q, p + Q4_0_D)
        s = p + Q4_0_QS
        for j in range(half):
            b = np.int32(q[s + j])
            y[o + j] = np.float32((b & 0x0F) - 8) * d
            y[o + half + j] = np.float32((b >> 4) - 8) * d


# ggml-quants.c dequantize_row_q4_1
@njit(error_model="numpy", cache=True, no_cfunc_wrapper=True)
def dequantize_row_q4_1(q, y):
    """One row: q uint8[n/32*20] -> y float32[n]."""
    nb, qk = _blocks(y.shape[0], q.shape[0], TS_Q4_1)
    half = qk // _U2
    for i in range(nb):
        p = i * TS_Q4_1
        o = i * qk
        d = _get_h(q, p + Q4_1_D)
        m = _get_h(q, p + Q4_1_M)
        s = p + Q4_1_QS
        for j in range(half):
            b = np.int32(q[s + j])
            y[o + j] = np.float32(b & 0x0F) * d + m
            y[o + half + j] = np.float32(b >> 4) * d + m


# ggml-quants.c dequantize_row_q5_0
@njit(error_model="numpy", cache=True, no_cfunc_wrapper=True)
def dequantize_row_q5_0(q, y):
    """One row: q uint8[n/32*22] -> y float32[n]."""
    nb, qk = _blocks(y.shape[0], q.shape[0], TS_Q5_0)
    half = qk // _U2
    for i in range(nb):
        p = i * TS_Q5_0
        o = i * qk
        d = _get_h(q, p + Q5_0_D)
        qh = _get_u32(q, p + Q5_0_QH)
        s = p + Q5_0_QS
        for j in range(half):
            xh0 = np.int32(((qh >> np.uint32(j)) << np.uint32(4)) & np.uint32(0x10))
            xh1 = np.int32((qh >> np.uint32(j) + np.uint32(12)) & np.uint32(0x10))
            b = np.int32(q[s + j])
            y[o + j] = np.float32(((b & 0x0F) | xh0) - 16) * d
            y[o + half + j] = np.float32(((b >> 4) | xh1) - 16) * d


# ggml-quants.c dequantize_row_q5_1
@njit(error_model="numpy", cache=True, no_cfunc_wrapper=True)
def dequantize_row_q5_1(q, y):
    """One row: q uint8[n/32*24] -> y float32[n]."""
    nb, qk = _blocks(y.shape[0], q.shape[0], TS_Q5_1)
    half = qk // _U2
    for i in range(nb):
        p = i * TS_Q5_1
        o = i * qk
        d = _get_h(q, p + Q5_1_D)
        m = _get_h(q, p + Q5_1_M)
        qh = _get_u32(q, p + Q5_1_QH)
        s = p + Q5_1_QS
        for j in range(half):
            xh0 = np.int32(((qh >> np.uint32(j)) << np.uint32(4)) & np.uint32(0x10))
            xh1 = np.int32((qh >> np.uint32(j) + np.uint32(12)) & np.uint32(0x10))
            b = np.int32(q[s + j])
            y[o + j] = np.float32((b & 0x0F) | xh0) * d + m
            y[o + half + j] = np.float32((b >> 4) | xh1) * d + m


# ggml-quants.c dequantize_row_q8_0
@njit(error_model="numpy", cache=True, no_cfunc_wrapper=True)
def dequantize_row_q8_0(q, y):
    """One row: q uint8[n/32*34] -> y float32[n]."""
    nb, qk = _blocks(y.shape[0], q.shape[0], TS_Q8_0)
    for i in range(nb):
        p = i * TS_Q8_0
        o = i * qk
        d = _get_h(q, p + Q8_0_D)
        s = p + Q8_0_QS
        for j in range(qk):
            y[o + j] = np.float32(np.int8(q[s + j])) * d


# ---------------------------------------------------------------- drivers (ggml_quantize_chunk / to_float)


# ggml-quants.c quantize_q4_0
@njit(error_model="numpy", nogil=True, cache=True, no_cfunc_wrapper=True)
def quantize_q4_0(x, qw, out):
    """x float32[rows, n], qw float32[n] or empty, out uint8[rows, n/32*18]."""
    weighted = qw.shape[0] > 0
    for r in range(x.shape[0]):
        if weighted:
            _quantize_row_x0_impl(x[r], qw, out[r], np.empty(SCRATCH, dtype=np.float32), False)
        else:
            quantize_row_q4_0_ref(x[r], out[r])


# ggml-quants.c quantize_q4_1
@njit(error_model="numpy", nogil=True, cache=True, no_cfunc_wrapper=True)
def quantize_q4_1(x, qw, out):
    """x float32[rows, n], qw float32[n] or empty, out uint8[rows, n/32*20]."""
    weighted = qw.shape[0] > 0
    for r in range(x.shape[0]):
        if weighted:
            _quantize_row_x1_impl(x[r], qw, out[r], np.empty(SCRATCH, dtype=np.float32), False)
        else:
            quantize_row_q4_1_ref(x[r], out[r])


# ggml-quants.c quantize_q5_0
@njit(error_model="numpy", nogil=True, cache=True, no_cfunc_wrapper=True)
def quantize_q5_0(x, qw, out):
    """x float32[rows, n], qw float32[n] or empty, out uint8[rows, n/32*22]."""
    weighted = qw.shape[0] > 0
    for r in range(x.shape[0]):
        if weighted:
            _quantize_row_x0_impl(x[r], qw, out[r], np.empty(SCRATCH, dtype=np.float32), True)
        else:
            quantize_row_q5_0_ref(x[r], out[r])


# ggml-quants.c quantize_q5_1
@njit(error_model="numpy", nogil=True, cache=True, no_cfunc_wrapper=True)
def quantize_q5_1(x, qw, out):
    """x float32[rows, n], qw float32[n] or empty, out uint8[rows, n/32*24]."""
    weighted = qw.shape[0] > 0
    for r in range(x.shape[0]):
        if weighted:
            _quantize_row_x1_impl(x[r], qw, out[r], np.empty(SCRATCH, dtype=np.float32), True)
        else:
            quantize_row_q5_1_ref(x[r], out[r])


# ggml-quants.c quantize_q8_0 (importance weights are ignored)
@njit(error_model="numpy", nogil=True, cache=True, no_cfunc_wrapper=True)
def quantize_q8_0(x, qw, out):
    """x float32[rows, n], qw ignored, out uint8[rows, n/32*34]."""
    for r in range(x.shape[0]):
        quantize_row_q8_0_ref(x[r], out[r])


@njit(error_model="numpy", nogil=True, cache=True, no_cfunc_wrapper=True)
def dequantize_q4_0(q, out):
    for r in range(q.shape[0]):
        dequantize_row_q4_0(q[r], out[r])


@njit(error_model="numpy", nogil=True, cache=True, no_cfunc_wrapper=True)
def dequantize_q4_1(q, out):
    for r in range(q.shape[0]):
        dequantize_row_q4_1(q[r], out[r])


@njit(error_model="numpy", nogil=True, cache=True, no_cfunc_wrapper=True)
def dequantize_q5_0(q, out):
    for r in range(q.shape[0]):
        dequantize_row_q5_0(q[r], out[r])


@njit(error_model="numpy", nogil=True, cache=True, no_cfunc_wrapper=True)
def dequantize_q5_1(q, out):
    for r in range(q.shape[0]):
        dequantize_row_q5_1(q[r], out[r])


@njit(error_model="numpy", nogil=True, cache=True, no_cfunc_wrapper=True)
def dequantize_q8_0(q, out):
    for r in range(q.shape[0]):
        dequantize_row_q8_0(q[r], out[r])


KERNELS = {
    QType.Q4_0: Kernel(quantize_q4_0, dequantize_q4_0),
    QType.Q4_1: Kernel(quantize_q4_1, dequantize_q4_1),
    QType.Q5_0: Kernel(quantize_q5_0, dequantize_q5_0),
    QType.Q5_1: Kernel(quantize_q5_1, dequantize_q5_1),
    QType.Q8_0: Kernel(quantize_q8_0, dequantize_q8_0),
}
