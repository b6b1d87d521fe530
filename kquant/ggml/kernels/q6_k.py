"""ggml's Q6_K (6-bit k-quant, 16 scales of int8 per 256 values), ported to Numba.

Ports, from ggml/src/ggml-quants.c (llama.cpp as vendored in llama-cpp-python 0.3.36):
  quantize_row_q6_K_ref    the unweighted path (ggml_quantize_chunk with NULL weights)
  quantize_row_q6_K_impl   the importance-weighted path
  dequantize_row_q6_K
byte for byte. Every float expression is evaluated in float32, op by op, in C's order.

Speed: ggml runs make_qx_quants(16, 32, ...) once per 16-value sub-block, one after the other.
Here the 16 sub-blocks of a super-block are searched together (`qx_search16`): the super-block
is transposed so that sub-block s is lane s, and every per-sub-block sum is still accumulated
in ggml's element order, so each lane computes exactly ggml's numbers. This module also holds
the lane machinery shared with q3_k.py and q2_k.py (intrinsics, work-array layout, chains).

Block layout (block_q6_K, ggml-common.h, 210 bytes):

    offset  0  ql[128]    low 4 bits of the 256 quants
    offset 128 qh[64]     high 2 bits
    offset 192 scales[16] int8 sub-block scales (signed)
    offset 208 d          fp16 super-block scale

Quant L[k] (0..63, value = d * scales[k/16] * (L[k] - 32)) for k = 128*h + 32*t + l,
h = half (0, 1), t = quarter of the half (0..3), l = 0..31:

    ql[64*h + l]      = L[128h + l] & 0xF        | (L[128h + 64 + l] & 0xF) << 4     (t = 0, 2)
    ql[64*h + 32 + l] = L[128h + 32 + l] & 0xF   | (L[128h + 96 + l] & 0xF) << 4     (t = 1, 3)
    qh[32*h + l]      = L[128h + l] >> 4 | (L[128h + 32 + l] >> 4) << 2
                        | (L[128h + 64 + l] >> 4) << 4 | (L[128h + 96 + l] >> 4) << 6

          bit  7   6   5   4   3   2   1   0
    ql       [ L(t=2|3) & 0xF ][ L(t=0|1) & 0xF ]
    qh       [ t=3  ][ t=2  ][ t=1  ][ t=0  ]      (L >> 4, 2 bits each)

scales[j] is signed: d * scales[j] may be negative (ggml picks the sign of the largest scale).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..types import QK_K, QType, field_offsets
from . import Kernel
from ._common import GROUP_MAX_EPS, fp16_to_fp32, fp32_to_fp16, level, nearest_int, sel  # noqa: F401 (re-exported to q2_k/q3_k)

SUB = 16  # values per sub-block
NSUB = QK_K // SUB  # sub-blocks per super-block: the lanes of the searches
NCAND = 19  # make_qx_quants tries is = -9..9 (is = 0 is its first pass)
TS = QType.Q6_K.type_size  # 210 bytes per block
OFF_QL, OFF_QH, OFF_SC, OFF_D = field_offsets(QType.Q6_K, "ql", "qh", "scales", "d")  # 0, 128, 192, 208
NMAX = 32  # make_qx_quants(16, 32, ...)

_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_F01 = np.float32(0.1)
_M128 = np.float32(-128.0)


# ---------------------------------------------------------------- lane machinery
#
# The searches keep one lane per sub-block and must vectorize across lanes. Three rules make
# LLVM do that and keep compile times sane:
#  * everything a vectorized loop touches lives in one float32 work array at constant offsets
#    (W_* below), so LLVM proves the accesses independent without runtime alias checks;
#  * each lane's sequential sum over its 16 values is written out as a straight-line chain
#    (LLVM only vectorizes innermost loops, and does not unroll these early enough);
#  * chains use only arithmetic and the intrinsics of _common (sel, nearest_int, level): a Python conditional expression
#    splits numba's IR into basic blocks (slow to compile) and an @njit helper left as a call
#    blocks vectorization.


@njit(cache=True, no_cfunc_wrapper=True, inline="always")
def wrap_i8(v):
    """C's conversion of an int to int8_t (keep the low byte)."""
    return np.int32(np.int32(np.int32(v & np.int32(0xFF)) ^ np.int32(0x80)) - np.int32(0x80))


# Work array (float32, one per row). Lane arrays are [16], one value per sub-block.
W_XT = 0  # x of the super-block, transposed: value i of sub-block s at 16*i + s [256]
W_WT = 256  # weights, transposed [256]
W_LT = 512  # quants, transposed [256] (q3_k)
W_X = 768  # x of the super-block in natural order [256]
W_L = 1024  # quants in natural order, as floats [256]
W_DK = 1280  # requantization: d of each value's sub-block [256]
W_MK = 1536  # requantization: m of each value's sub-block [256] (q2_k)
W_MX = 1792  # lane: the signed value of max |x|
W_AMAX = 1808  # lane: max |x|
W_SCALES = 1824  # lane: the scale found
W_BISC = 1840  # lane: the winning inverse scale
W_SW = 1856  # lane: sum of weights (q3_k)
W_SLX = 1872  # lane: running sums (q3_k)
W_SL2 = 1888
W_CH = 1904
W_ISC = 1920  # [19 candidates x 16 lanes] inverse scales
W_ACC_LX = W_ISC + NCAND * NSUB  # [19 x 16] sum w*x*l
W_ACC_L2 = W_ACC_LX + NCAND * NSUB  # [19 x 16] sum w*l*l
WORK = W_ACC_L2 + NCAND * NSUB
W_LANES = W_MX  # first lane array (q2_k lays out its own lane arrays from here)


@njit(cache=True, no_cfunc_wrapper=True, inline="always")
def load_block(src, base, wk, wo_t, wo_n):
    """wk[wo_t + 16*i + s] = wk[wo_n + 16*s + i] = src[base + 16*s + i] (transposed and natural copies)."""
    for k in range(QK_K):
        wk[wo_n + k] = src[base + k]
    for s in range(NSUB):
        for i in range(SUB):
            wk[wo_t + SUB * i + s] = wk[wo_n + SUB * s + i]


@njit(cache=True, no_cfunc_wrapper=True, inline="always")
def load_transposed(src, base, wk, wo_t):
    """wk[wo_t + 16*i + s] = src[base + 16*s + i]."""
    for s in range(NSUB):
        for i in range(SUB):
            wk[wo_t + SUB * i + s] = src[base + SUB * s + i]


@njit(cache=True, no_cfunc_wrapper=True, inline="always")
def _absmax_step(am, mx, v):
    """if (fabsf(x) > amax) { amax = fabsf(x); max = x; }"""
    ax = np.float32(abs(v))
    better = ax > am
    return sel(better, ax, am), sel(better, v, mx)


@njit(cache=True, no_cfunc_wrapper=True, inline="always")
def absmax16(wk, o):
    """(amax, max) of the 16 values wk[o + 16*i], ggml's loop (first occurrence wins)."""
    am = _F0
    mx = _F0
    am, mx = _absmax_step(am, mx, wk[o + 0])
    am, mx = _absmax_step(am, mx, wk[o + 16])
    am, mx = _absmax_step(am, mx, wk[o + 32])
    am, mx = _absmax_step(am, mx, wk[o + 48])
    am, mx = _absmax_step(am, mx, wk[o + 64])
    am, mx = _absmax_step(am, mx, wk[o + 80])
    am, mx = _absmax_step(am, mx, wk[o + 96])
    am, mx = _absmax_step(am, mx, wk[o + 112])
    am, mx = _absmax_step(am, mx, wk[o + 128])
    am, mx = _absmax_step(am, mx, wk[o + 144])
    am, mx = _absmax_step(am, mx, wk[o + 160])
    am, mx = _absmax_step(am, mx, wk[o + 176])
    am, mx = _absmax_step(am, mx, wk[o + 192])
    am, mx = _absmax_step(am, mx, wk[o + 208])
    am, mx = _absmax_step(am, mx, wk[o + 224])
    am, mx = _absmax_step(am, mx, wk[o + 240])
    return am, mx


@njit(cache=True, no_cfunc_wrapper=True, inline="always")
def sum16(wk, o):
    """0 + wk[o] + wk[o + 16] + ... + wk[o + 240], in that order."""
    a = _F0
    a += wk[o + 0]
    a += wk[o + 16]
    a += wk[o + 32]
    a += wk[o + 48]
    a += wk[o + 64]
    a += wk[o + 80]
    a += wk[o + 96]
    a += wk[o + 112]
    a += wk[o + 128]
    a += wk[o + 144]
    a += wk[o + 160]
    a += wk[o + 176]
    a += wk[o + 192]
    a += wk[o + 208]
    a += wk[o + 224]
    a += wk[o + 240]
    return a


@njit(cache=True, no_cfunc_wrapper=True, inline="always")
def _qx_step(a, b, iv, v, w, lo, hi):
    """One element of make_qx_quants' sums: l = clamp(nearest_int(iscale*x)); sumlx += w*x*l; suml2 += w*l*l."""
    fl = level(iv * v, lo, hi)
    return a + w * v * fl, b + w * fl * fl


@njit(cache=True, no_cfunc_wrapper=True, inline="always")
def qx_sums16(iv, wk, xo, wo, stride, lo, hi):
    """make_qx_quants' (sumlx, suml2) over x = wk[xo + stride*i], w = wk[wo + stride*i], i = 0..15."""
    a = _F0
    b = _F0
    a, b = _qx_step(a, b, iv, wk[xo + 0 * stride], wk[wo + 0 * stride], lo, hi)
    a, b = _qx_step(a, b, iv, wk[xo + 1 * stride], wk[wo + 1 * stride], lo, hi)
    a, b = _qx_step(a, b, iv, wk[xo + 2 * stride], wk[wo + 2 * stride], lo, hi)
    a, b = _qx_step(a, b, iv, wk[xo + 3 * stride], wk[wo + 3 * stride], lo, hi)
    a, b = _qx_step(a, b, iv, wk[xo + 4 * stride], wk[wo + 4 * stride], lo, hi)
    a, b = _qx_step(a, b, iv, wk[xo + 5 * stride], wk[wo + 5 * stride], lo, hi)
    a, b = _qx_step(a, b, iv, wk[xo + 6 * stride], wk[wo + 6 * stride], lo, hi)
    a, b = _qx_step(a, b, iv, wk[xo + 7 * stride], wk[wo + 7 * stride], lo, hi)
    a, b = _qx_step(a, b, iv, wk[xo + 8 * stride], wk[wo + 8 * stride], lo, hi)
    a, b = _qx_step(a, b, iv, wk[xo + 9 * stride], wk[wo + 9 * stride], lo, hi)
    a, b = _qx_step(a, b, iv, wk[xo + 10 * stride], wk[wo + 10 * stride], lo, hi)
    a, b = _qx_step(a, b, iv, wk[xo + 11 * stride], wk[wo + 11 * stride], lo, hi)
    a, b = _qx_step(a, b, iv, wk[xo + 12 * stride], wk[wo + 12 * stride], lo, hi)
    a, b = _qx_step(a, b, iv, wk[xo + 13 * stride], wk[wo + 13 * stride], lo, hi)
    a, b = _qx_step(a, b, iv, wk[xo + 14 * stride], wk[wo + 14 * stride], lo, hi)
    a, b = _qx_step(a, b, iv, wk[xo + 15 * stride], wk[wo + 15 * stride], lo, hi)
    return a, b


# ggml-quants.c: make_qx_quants(16, nmax, x, L, rmse_type=1, qw), for the 16 sub-blocks at once.
# Specialised from kquant/ggml/kernels/_search.py for speed: lanes = sub-blocks, n fixed at 16. The
# 19 candidate scales (is = -9..9) are summed first, then each lane replays ggml's sequential
# "is this candidate better" chain over them, so the chosen scale and quants are ggml's.
@njit(cache=True, no_cfunc_wrapper=True, error_model="numpy")
def qx_search16(wk, nmax):
    """Lanes read wk[W_XT], wk[W_WT]; writes wk[W_SCALES + s] and the winning inverse scale
    wk[W_BISC + s]; wk[W_AMAX + s] < GROUP_MAX_EPS marks an all-zero sub-block (scale 0, L 0)."""
    for s in range(NSUB):  # vectorized over s
        wk[W_AMAX + s], wk[W_MX + s] = absmax16(wk, W_XT + s)
    fnmax = np.float32(nmax)
    lo = np.int32(-nmax)
    hi = np.int32(nmax - 1)
    for c in range(NCAND):
        # is = c - 9; is = 0 reproduces the first pass's iscale = -nmax/max exactly
        num = np.float32(-(fnmax + _F01 * np.float32(c - 9)))
        for s in range(NSUB):
            wk[W_ISC + NSUB * c + s] = num / wk[W_MX + s]
    for c in range(NCAND):
        for s in range(NSUB):  # vectorized over s
            k = NSUB * c + s
            wk[W_ACC_LX + k], wk[W_ACC_L2 + k] = qx_sums16(wk[W_ISC + k], wk, W_XT + s, W_WT + s, NSUB, lo, hi)
    for s in range(NSUB):
        if wk[W_AMAX + s] < GROUP_MAX_EPS:
            wk[W_SCALES + s] = _F0
            wk[W_BISC + s] = _F0
            continue
        c0 = 9
        sumlx = wk[W_ACC_LX + NSUB * c0 + s]
        suml2 = wk[W_ACC_L2 + NSUB * c0 + s]
        scale = np.float32(sumlx / suml2) if suml2 != _F0 else _F0
        best = np.float32(scale * sumlx)
        bc = c0
        for c in range(NCAND):
            if c == c0:
                continue
            sumlx = wk[W_ACC_LX + NSUB * c + s]
            suml2 = wk[W_ACC_L2 + NSUB * c + s]
            if suml2 > _F0 and sumlx * sumlx > best * suml2:
                scale = np.float32(sumlx / suml2)
                best = np.float32(scale * sumlx)
                bc = c
        wk[W_SCALES + s] = scale
        wk[W_BISC + s] = wk[W_ISC + NSUB * bc + s]


@njit(cache=True, no_cfunc_wrapper=True, error_model="numpy")
def qx_levels16(wk, nmax):
    """wk[W_L + 16*s + i] = nmax + clamp(nearest_int(bisc[s] * x)): make_qx_quants' L (0 for an all-zero sub-block)."""
    lo = np.int32(-nmax)
    hi = np.int32(nmax - 1)
    fnmax = np.float32(nmax)
    for s in range(NSUB):
        iv = wk[W_BISC + s]
        ok = wk[W_AMAX + s] >= GROUP_MAX_EPS
        for i in range(SUB):
            wk[W_L + SUB * s + i] = sel(ok, level(iv * wk[W_X + SUB * s + i], lo, hi) + fnmax, _F0)


# ggml-quants.c: make_qx_quants(16, nmax, x, L, rmse_type=1, qw) for one group of 16 values: Q3_K
# searches its 16 sub-block scales wk[W_SCALES] with weights wk[W_SW]. Specialised from
# _search.py: lanes = the 19 candidates.
@njit(cache=True, no_cfunc_wrapper=True, error_model="numpy")
def qx_search1(wk, nmax, L):
    """Writes L[0:16] (int8, nmax + l) and returns the scale."""
    fmax = _F0
    amax = _F0
    for i in range(SUB):
        ax = np.float32(abs(wk[W_SCALES + i]))
        if ax > amax:
            amax = ax
            fmax = wk[W_SCALES + i]
    if amax < GROUP_MAX_EPS:  # all zero
        for i in range(SUB):
            L[i] = 0
        return _F0
    fnmax = np.float32(nmax)
    lo = np.int32(-nmax)
    hi = np.int32(nmax - 1)
    for c in range(NCAND):
        wk[W_ISC + c] = np.float32(-(fnmax + _F01 * np.float32(c - 9))) / fmax
    for c in range(NCAND):  # vectorized over c
        wk[W_ACC_LX + c], wk[W_ACC_L2 + c] = qx_sums16(wk[W_ISC + c], wk, W_SCALES, W_SW, 1, lo, hi)
    c0 = 9
    sumlx = wk[W_ACC_LX + c0]
    suml2 = wk[W_ACC_L2 + c0]
    scale = np.float32(sumlx / suml2) if suml2 != _F0 else _F0
    best = np.float32(scale * sumlx)
    bc = c0
    for c in range(NCAND):
        if c == c0:
            continue
        sumlx = wk[W_ACC_LX + c]
        suml2 = wk[W_ACC_L2 + c]
        if suml2 > _F0 and sumlx * sumlx > best * suml2:
            scale = np.float32(sumlx / suml2)
            best = np.float32(scale * sumlx)
            bc = c
    iv = wk[W_ISC + bc]
    for i in range(SUB):
        L[i] = np.int8(np.int32(level(iv * wk[W_SCALES + i], lo, hi)) + nmax)
    return scale


@njit(cache=True, no_cfunc_wrapper=True, inline="always")
def set_requant(wk, j, d, m):
    """Sub-block j will be re-rounded with scale d and offset m (ggml skips it when d == 0)."""
    for i in range(SUB):
        wk[W_DK + SUB * j + i] = d
        wk[W_MK + SUB * j + i] = m


@njit(cache=True, no_cfunc_wrapper=True, inline="always")
def requantize(wk, lo, hi, off, affine):
    """L = off + MAX(lo, MIN(hi, nearest_int(x/d))), or nearest_int((x + m)/d) when affine, for
    every value whose sub-block has d != 0; the others keep their L. One flat loop without
    branches, so LLVM vectorizes it (L and the levels are small integers: the blend is exact)."""
    for k in range(QK_K):
        d = wk[W_DK + k]
        v = wk[W_X + k]
        v = sel(affine, np.float32(v + wk[W_MK + k]), v)
        new = level(v / d, lo, hi) + off
        old = wk[W_L + k]
        wk[W_L + k] = old + (new - old) * sel(d != _F0, _F1, _F0)


@njit(cache=True, no_cfunc_wrapper=True, inline="always")
def pack_2bit(wk, y, qo):
    """qs[32*h + l] = L[128h + l] | L[128h + 32 + l] << 2 | L[128h + 64 + l] << 4 | L[128h + 96 + l] << 6 (Q2_K, Q3_K)."""
    for h in range(2):
        j = W_L + 128 * h
        for l in range(32):
            y[qo + 32 * h + l] = np.uint8(
                np.int32(wk[j + l])
                | (np.int32(wk[j + l + 32]) << 2)
                | (np.int32(wk[j + l + 64]) << 4)
                | (np.int32(wk[j + l + 96]) << 6)
            )


# ---------------------------------------------------------------- Q6_K


# ggml-quants.c: quantize_row_q6_K_ref / quantize_row_q6_K_impl, one super-block
@njit(cache=True, no_cfunc_wrapper=True, error_model="numpy")
def quantize_block_q6_k(x, base, qw, y, yo, wk):
    """x[base:base+256] -> y[yo:yo+210]; qw empty = NULL (weights x*x) else qw[base:base+256]."""
    load_block(x, base, wk, W_XT, W_X)
    if qw.shape[0] == 0:
        for k in range(QK_K):
            wk[W_WT + k] = wk[W_XT + k] * wk[W_XT + k]
    else:
        load_transposed(qw, base, wk, W_WT)
    nmax = np.int64(NMAX)  # not a literal: Q3_K and Q6_K share one compiled search
    qx_search16(wk, nmax)
    qx_levels16(wk, nmax)

    max_scale = _F0
    max_abs_scale = _F0
    for ib in range(NSUB):
        scale = wk[W_SCALES + ib]
        abs_scale = np.float32(abs(scale))
        if abs_scale > max_abs_scale:
            max_abs_scale = abs_scale
            max_scale = scale
    if max_abs_scale < GROUP_MAX_EPS:
        for k in range(TS):
            y[yo + k] = 0
        return

    iscale = np.float32(_M128 / max_scale)
    dh = fp32_to_fp16(np.float32(_F1 / iscale))
    y[yo + OFF_D] = np.uint8(dh & np.uint16(0xFF))
    y[yo + OFF_D + 1] = np.uint8(dh >> np.uint16(8))
    for ib in range(NSUB):
        q = wrap_i8(min(np.int32(127), nearest_int(iscale * wk[W_SCALES + ib])))
        y[yo + OFF_SC + ib] = np.uint8(q & 0xFF)
    requantize_pack_q6(wk, y, yo)


# ggml-quants.c: the tail of quantize_row_q6_K_ref / _impl: re-round every value with the stored
# d and int8 scales (x in wk[W_X]), then write ql and qh.
@njit(cache=True, no_cfunc_wrapper=True, error_model="numpy")
def requantize_pack_q6(wk, y, yo):
    dd = fp16_to_fp32(np.uint32(y[yo + OFF_D]) | (np.uint32(y[yo + OFF_D + 1]) << np.uint32(8)))
    for ib in range(NSUB):
        q = np.int32(np.int8(y[yo + OFF_SC + ib]))
        set_requant(wk, ib, np.float32(dd * np.float32(q)), _F0)
    requantize(wk, -32, 31, np.float32(32.0), False)

    for h in range(2):
        j = W_L + 128 * h
        ql = yo + OFF_QL + 64 * h
        qh = yo + OFF_QH + 32 * h
        for l in range(32):
            l1 = np.int32(wk[j + l])
            l2 = np.int32(wk[j + l + 32])
            l3 = np.int32(wk[j + l + 64])
            l4 = np.int32(wk[j + l + 96])
            y[ql + l] = np.uint8((l1 & 0xF) | ((l3 & 0xF) << 4))
            y[ql + l + 32] = np.uint8((l2 & 0xF) | ((l4 & 0xF) << 4))
            y[qh + l] = np.uint8((l1 >> 4) | ((l2 >> 4) << 2) | ((l3 >> 4) << 4) | ((l4 >> 4) << 6))


@njit(nogil=True, cache=True, no_cfunc_wrapper=True, error_model="numpy")
def quantize(x, qw, out):
    """ggml_quantize_chunk(GGML_TYPE_Q6_K, x, out, 0, rows, cols, qw or NULL). The row loop is
    here, not in a function of its own: every compiled call level costs a re-optimization of
    all it calls."""
    wk = np.empty(WORK, np.float32)
    for r in range(x.shape[0]):
        xr = x[r]
        y = out[r]
        for b in range(xr.shape[0] // QK_K):
            quantize_block_q6_k(xr, b * QK_K, qw, y, b * TS, wk)


# ggml-quants.c: dequantize_row_q6_K
@njit(cache=True, no_cfunc_wrapper=True, error_model="numpy")
def dequantize_row_q6_k(q, y):
    """One row of blocks q uint8[nb*210] -> y float32[nb*256]."""
    for b in range(q.shape[0] // TS):
        qo = b * TS
        yo = b * QK_K
        d = fp16_to_fp32(np.uint32(q[qo + OFF_D]) | (np.uint32(q[qo + OFF_D + 1]) << np.uint32(8)))
        for h in range(2):
            ql = qo + OFF_QL + 64 * h
            qh = qo + OFF_QH + 32 * h
            sc = qo + OFF_SC + 8 * h
            for is_ in range(2):  # l in 16*is_ .. +15: one scale per quarter (ggml's d * sc * q, left to right)
                s1 = d * np.float32(np.int8(q[sc + is_]))
                s2 = d * np.float32(np.int8(q[sc + is_ + 2]))
                s3 = d * np.float32(np.int8(q[sc + is_ + 4]))
                s4 = d * np.float32(np.int8(q[sc + is_ + 6]))
                for i in range(16):
                    l = 16 * is_ + i
                    hb = np.int32(q[qh + l])
                    a = np.int32(q[ql + l])
                    c = np.int32(q[ql + l + 32])
                    q1 = np.int32((a & 0xF) | (((hb >> 0) & 3) << 4)) - 32
                    q2 = np.int32((c & 0xF) | (((hb >> 2) & 3) << 4)) - 32
                    q3 = np.int32((a >> 4) | (((hb >> 4) & 3) << 4)) - 32
                    q4 = np.int32((c >> 4) | (((hb >> 6) & 3) << 4)) - 32
                    y[yo + 128 * h + l] = s1 * np.float32(q1)
                    y[yo + 128 * h + l + 32] = s2 * np.float32(q2)
                    y[yo + 128 * h + l + 64] = s3 * np.float32(q3)
                    y[yo + 128 * h + l + 96] = s4 * np.float32(q4)


@njit(nogil=True, cache=True, no_cfunc_wrapper=True, error_model="numpy")
def dequantize(q, out):
    """ggml dequantize_row_q6_K over every row."""
    for r in range(q.shape[0]):
        dequantize_row_q6_k(q[r], out[r])


KERNELS = {QType.Q6_K: Kernel(quantize, dequantize)}
