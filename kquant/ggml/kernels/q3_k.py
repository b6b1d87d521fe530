"""ggml's Q3_K (3-bit k-quant, 16 6-bit scales per 256 values), ported to Numba.

Ports, from ggml/src/ggml-quants.c (llama.cpp as vendored in llama-cpp-python 0.3.36):
  quantize_row_q3_K_ref    the unweighted path (ggml_quantize_chunk with NULL weights)
  quantize_row_q3_K_impl   the importance-weighted path
  dequantize_row_q3_K
byte for byte. Every float expression is evaluated in float32, op by op, in C's order.

Speed: the 16 sub-blocks of a super-block are lanes (see kquant/ggml/kernels/q6_k.py): make_q3_quants
runs for all of them at once (`q3_search16`), each lane following ggml's sequence exactly; the
weighted path uses q6_k's make_qx_quants lanes.

Block layout (block_q3_K, ggml-common.h, 110 bytes):

    offset  0  hmask[32]   high bit of each quant
    offset 32  qs[64]      low 2 bits of each quant
    offset 96  scales[12]  16 6-bit sub-block scales, stored + 32
    offset 108 d           fp16 super-block scale

Quant L[k] (0..7, value = d * (scale[k/16] - 32) * (L[k] - 4)), k = 128*h + 32*t + l:

    qs[32*h + l]   bits 2t+1..2t = L[128h + 32t + l] & 3          (t = 0..3)
    hmask[k % 32]  bit k/32      = L[k] >> 2

Scales: 6-bit s[j], j = 0..15, split into a low nibble and 2 high bits:

    byte  0..7  :  bit 7..4 = s[j+8] & 0xF, bit 3..0 = s[j] & 0xF         (j = byte)
    byte  8..11 :  bit 7-6     5-4        3-2        1-0
                   s[m+12]>>4  s[m+8]>>4  s[m+4]>>4  s[m]>>4              (m = byte - 8)

dequantize_row_q3_K unpacks them 4 at a time with 32-bit masks (the "aux/kmask" trick):
aux[0..2] = the 12 bytes as little-endian uint32, tmp = aux[2], then
    aux[0] = (aux[0] & 0x0f0f0f0f)        | ((tmp >> 0 & 0x03030303) << 4)   -> s[0..3]
    aux[1] = (aux[1] & 0x0f0f0f0f)        | ((tmp >> 2 & 0x03030303) << 4)   -> s[4..7]
    aux[2] = ((aux[0] >> 4) & 0x0f0f0f0f) | ((tmp >> 4 & 0x03030303) << 4)   -> s[8..11]
    aux[3] = ((aux[1] >> 4) & 0x0f0f0f0f) | ((tmp >> 6 & 0x03030303) << 4)   -> s[12..15]
(aux[0], aux[1] on the right are the original words); byte for byte that is `scale6` here.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..types import QK_K, QType, field_offsets
from . import Kernel
from ._common import GROUP_MAX_EPS, fp16_to_fp32, fp32_to_fp16
from .q6_k import (
    NSUB,
    SUB,
    W_AMAX,
    W_CH,
    W_L,
    W_LT,
    W_SCALES,
    W_SL2,
    W_SLX,
    W_SW,
    W_WT,
    W_X,
    W_XT,
    WORK,
    absmax16,
    level,
    load_block,
    load_transposed,
    nearest_int,
    pack_2bit,
    qx_levels16,
    qx_search1,
    qx_search16,
    requantize,
    sel,
    set_requant,
    sum16,
    wrap_i8,
)

TS = QType.Q3_K.type_size  # 110 bytes per block
OFF_HM, OFF_QS, OFF_SC, OFF_D = field_offsets(QType.Q3_K, "hmask", "qs", "scales", "d")  # 0, 32, 96, 108
NMAX = 4  # make_q3_quants(16, 4, ...) / make_qx_quants(16, 4, ...)
NMAX_SC = 32  # make_qx_quants(16, 32, scales, ...) in the weighted path
NTRY = 5  # make_q3_quants' refinement passes

_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_F2 = np.float32(2.0)
_F4 = np.float32(NMAX)
_M32 = np.float32(-32.0)
_QKF = np.float32(QK_K)


@njit(cache=True, no_cfunc_wrapper=True, inline="always")
def _q3_first(a, b, iv, v, lo, hi):
    """make_q3_quants' first pass, one element: l = clamp(nearest_int(iscale*x)); sums of w*x*l, w*l*l (w = x*x)."""
    w = v * v
    fl = level(iv * v, lo, hi)
    return a + w * v * fl, b + w * fl * fl, fl


@njit(cache=True, no_cfunc_wrapper=True, inline="always")
def _q3_try(sumlx, suml2, ch, v, li, lo, hi):
    """make_q3_quants' refinement, one element, ggml's branches as selects -> (sumlx, suml2, changed, L)."""
    w = v * v
    slx = sumlx - w * v * li
    sl2 = suml2 - w * li * li
    nl = level(v * sl2 / slx, lo, hi)
    slx2 = slx + w * v * nl
    sl22 = sl2 + w * nl * nl
    take = (slx > _F0) & (nl != li) & (sl22 > _F0) & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22)
    tf = sel(take, _F1, _F0)
    # L = take ? nl : li, as exact arithmetic on small integers: with a select LLVM turns the
    # store back into a conditional one, which it does not vectorize
    return sel(take, slx2, sumlx), sel(take, sl22, suml2), ch + tf, li + (nl - li) * tf


# ggml-quants.c: make_q3_quants(16, 4, x, L, do_rmse=true), for the 16 sub-blocks at once.
# Specialised from kquant/ggml/kernels/_search.py for speed: lanes = sub-blocks, n = 16 written out.
# A pass that changes nothing leaves the state as it was, so running further passes in a lane
# that ggml would have stopped is a no-op; we stop when no lane changed.
@njit(cache=True, no_cfunc_wrapper=True, error_model="numpy")
def q3_search16(wk):
    """Lanes read wk[W_XT]; writes wk[W_SCALES + s] and wk[W_L + 16*s + i] (L, 0..7)."""
    lo = np.int32(-NMAX)
    hi = np.int32(NMAX - 1)
    for s in range(NSUB):  # vectorized over s
        am, mx = absmax16(wk, W_XT + s)
        wk[W_AMAX + s] = am
        iv = np.float32(-NMAX) / mx
        a = _F0
        b = _F0
        a, b, wk[W_LT + s + 0] = _q3_first(a, b, iv, wk[W_XT + s + 0], lo, hi)
        a, b, wk[W_LT + s + 16] = _q3_first(a, b, iv, wk[W_XT + s + 16], lo, hi)
        a, b, wk[W_LT + s + 32] = _q3_first(a, b, iv, wk[W_XT + s + 32], lo, hi)
        a, b, wk[W_LT + s + 48] = _q3_first(a, b, iv, wk[W_XT + s + 48], lo, hi)
        a, b, wk[W_LT + s + 64] = _q3_first(a, b, iv, wk[W_XT + s + 64], lo, hi)
        a, b, wk[W_LT + s + 80] = _q3_first(a, b, iv, wk[W_XT + s + 80], lo, hi)
        a, b, wk[W_LT + s + 96] = _q3_first(a, b, iv, wk[W_XT + s + 96], lo, hi)
        a, b, wk[W_LT + s + 112] = _q3_first(a, b, iv, wk[W_XT + s + 112], lo, hi)
        a, b, wk[W_LT + s + 128] = _q3_first(a, b, iv, wk[W_XT + s + 128], lo, hi)
        a, b, wk[W_LT + s + 144] = _q3_first(a, b, iv, wk[W_XT + s + 144], lo, hi)
        a, b, wk[W_LT + s + 160] = _q3_first(a, b, iv, wk[W_XT + s + 160], lo, hi)
        a, b, wk[W_LT + s + 176] = _q3_first(a, b, iv, wk[W_XT + s + 176], lo, hi)
        a, b, wk[W_LT + s + 192] = _q3_first(a, b, iv, wk[W_XT + s + 192], lo, hi)
        a, b, wk[W_LT + s + 208] = _q3_first(a, b, iv, wk[W_XT + s + 208], lo, hi)
        a, b, wk[W_LT + s + 224] = _q3_first(a, b, iv, wk[W_XT + s + 224], lo, hi)
        a, b, wk[W_LT + s + 240] = _q3_first(a, b, iv, wk[W_XT + s + 240], lo, hi)
        wk[W_SLX + s] = a
        wk[W_SL2 + s] = b
    for _ in range(NTRY):
        # Each step waits on the previous one (a division and ~50 cycles of latency), so lanes
        # s and s + 8 run as two interleaved chains: vector width 8, twice the parallelism.
        for s in range(NSUB // 2):  # vectorized over s
            a0 = wk[W_SLX + s]
            b0 = wk[W_SL2 + s]
            a1 = wk[W_SLX + s + 8]
            b1 = wk[W_SL2 + s + 8]
            c0 = _F0
            c1 = _F0
            a0, b0, c0, wk[W_LT + s + 0] = _q3_try(a0, b0, c0, wk[W_XT + s + 0], wk[W_LT + s + 0], lo, hi)
            a1, b1, c1, wk[W_LT + s + 8] = _q3_try(a1, b1, c1, wk[W_XT + s + 8], wk[W_LT + s + 8], lo, hi)
            a0, b0, c0, wk[W_LT + s + 16] = _q3_try(a0, b0, c0, wk[W_XT + s + 16], wk[W_LT + s + 16], lo, hi)
            a1, b1, c1, wk[W_LT + s + 24] = _q3_try(a1, b1, c1, wk[W_XT + s + 24], wk[W_LT + s + 24], lo, hi)
            a0, b0, c0, wk[W_LT + s + 32] = _q3_try(a0, b0, c0, wk[W_XT + s + 32], wk[W_LT + s + 32], lo, hi)
            a1, b1, c1, wk[W_LT + s + 40] = _q3_try(a1, b1, c1, wk[W_XT + s + 40], wk[W_LT + s + 40], lo, hi)
            a0, b0, c0, wk[W_LT + s + 48] = _q3_try(a0, b0, c0, wk[W_XT + s + 48], wk[W_LT + s + 48], lo, hi)
            a1, b1, c1, wk[W_LT + s + 56] = _q3_try(a1, b1, c1, wk[W_XT + s + 56], wk[W_LT + s + 56], lo, hi)
            a0, b0, c0, wk[W_LT + s + 64] = _q3_try(a0, b0, c0, wk[W_XT + s + 64], wk[W_LT + s + 64], lo, hi)
            a1, b1, c1, wk[W_LT + s + 72] = _q3_try(a1, b1, c1, wk[W_XT + s + 72], wk[W_LT + s + 72], lo, hi)
            a0, b0, c0, wk[W_LT + s + 80] = _q3_try(a0, b0, c0, wk[W_XT + s + 80], wk[W_LT + s + 80], lo, hi)
            a1, b1, c1, wk[W_LT + s + 88] = _q3_try(a1, b1, c1, wk[W_XT + s + 88], wk[W_LT + s + 88], lo, hi)
            a0, b0, c0, wk[W_LT + s + 96] = _q3_try(a0, b0, c0, wk[W_XT + s + 96], wk[W_LT + s + 96], lo, hi)
            a1, b1, c1, wk[W_LT + s + 104] = _q3_try(a1, b1, c1, wk[W_XT + s + 104], wk[W_LT + s + 104], lo, hi)
            a0, b0, c0, wk[W_LT + s + 112] = _q3_try(a0, b0, c0, wk[W_XT + s + 112], wk[W_LT + s + 112], lo, hi)
            a1, b1, c1, wk[W_LT + s + 120] = _q3_try(a1, b1, c1, wk[W_XT + s + 120], wk[W_LT + s + 120], lo, hi)
            a0, b0, c0, wk[W_LT + s + 128] = _q3_try(a0, b0, c0, wk[W_XT + s + 128], wk[W_LT + s + 128], lo, hi)
            a1, b1, c1, wk[W_LT + s + 136] = _q3_try(a1, b1, c1, wk[W_XT + s + 136], wk[W_LT + s + 136], lo, hi)
            a0, b0, c0, wk[W_LT + s + 144] = _q3_try(a0, b0, c0, wk[W_XT + s + 144], wk[W_LT + s + 144], lo, hi)
            a1, b1, c1, wk[W_LT + s + 152] = _q3_try(a1, b1, c1, wk[W_XT + s + 152], wk[W_LT + s + 152], lo, hi)
            a0, b0, c0, wk[W_LT + s + 160] = _q3_try(a0, b0, c0, wk[W_XT + s + 160], wk[W_LT + s + 160], lo, hi)
            a1, b1, c1, wk[W_LT + s + 168] = _q3_try(a1, b1, c1, wk[W_XT + s + 168], wk[W_LT + s + 168], lo, hi)
            a0, b0, c0, wk[W_LT + s + 176] = _q3_try(a0, b0, c0, wk[W_XT + s + 176], wk[W_LT + s + 176], lo, hi)
            a1, b1, c1, wk[W_LT + s + 184] = _q3_try(a1, b1, c1, wk[W_XT + s + 184], wk[W_LT + s + 184], lo, hi)
            a0, b0, c0, wk[W_LT + s + 192] = _q3_try(a0, b0, c0, wk[W_XT + s + 192], wk[W_LT + s + 192], lo, hi)
            a1, b1, c1, wk[W_LT + s + 200] = _q3_try(a1, b1, c1, wk[W_XT + s + 200], wk[W_LT + s + 200], lo, hi)
            a0, b0, c0, wk[W_LT + s + 208] = _q3_try(a0, b0, c0, wk[W_XT + s + 208], wk[W_LT + s + 208], lo, hi)
            a1, b1, c1, wk[W_LT + s + 216] = _q3_try(a1, b1, c1, wk[W_XT + s + 216], wk[W_LT + s + 216], lo, hi)
            a0, b0, c0, wk[W_LT + s + 224] = _q3_try(a0, b0, c0, wk[W_XT + s + 224], wk[W_LT + s + 224], lo, hi)
            a1, b1, c1, wk[W_LT + s + 232] = _q3_try(a1, b1, c1, wk[W_XT + s + 232], wk[W_LT + s + 232], lo, hi)
            a0, b0, c0, wk[W_LT + s + 240] = _q3_try(a0, b0, c0, wk[W_XT + s + 240], wk[W_LT + s + 240], lo, hi)
            a1, b1, c1, wk[W_LT + s + 248] = _q3_try(a1, b1, c1, wk[W_XT + s + 248], wk[W_LT + s + 248], lo, hi)
            wk[W_SLX + s] = a0
            wk[W_SL2 + s] = b0
            wk[W_CH + s] = c0
            wk[W_SLX + s + 8] = a1
            wk[W_SL2 + s + 8] = b1
            wk[W_CH + s + 8] = c1
        changed = _F0
        for s in range(NSUB):
            changed += wk[W_CH + s]
        if changed == _F0:  # no lane changed: every lane has reached ggml's break
            break
    for s in range(NSUB):
        ok = wk[W_AMAX + s] >= GROUP_MAX_EPS
        b = wk[W_SL2 + s]
        wk[W_SCALES + s] = sel(ok & (b > _F0), np.float32(wk[W_SLX + s] / b), _F0)
        for i in range(SUB):
            wk[W_L + SUB * s + i] = sel(ok, wk[W_LT + SUB * i + s] + _F4, _F0)


@njit(cache=True, no_cfunc_wrapper=True, inline="always")
def scale6(y, sco, j):
    """The 6-bit scale of sub-block j as ggml reads it back, minus 32."""
    lo4 = np.int32(y[sco + j] & 0xF) if j < 8 else np.int32(y[sco + j - 8] >> 4)
    hi2 = np.int32((y[sco + 8 + j % 4] >> (2 * (j // 4))) & 3)
    return np.int32(lo4 | (hi2 << 4)) - 32


@njit(cache=True, no_cfunc_wrapper=True, inline="always")
def put_scale6(y, sco, j, l):
    """ggml's packing of the 6-bit value l (0..63) of sub-block j into scales[12] (zeroed first)."""
    if j < 8:
        y[sco + j] = np.uint8(l & 0xF)
    else:
        y[sco + j - 8] |= np.uint8((l & 0xF) << 4)
    l >>= 4
    y[sco + j % 4 + 8] |= np.uint8((l << (2 * (j // 4))) & 0xFF)


# ggml-quants.c: the tail shared by quantize_row_q3_K_ref and quantize_row_q3_K_impl
@njit(cache=True, no_cfunc_wrapper=True, error_model="numpy")
def requantize_pack(wk, y, yo):
    """Re-round every sub-block with the stored scales, then write hmask and qs."""
    dd = fp16_to_fp32(np.uint32(y[yo + OFF_D]) | (np.uint32(y[yo + OFF_D + 1]) << np.uint32(8)))
    for j in range(NSUB):
        set_requant(wk, j, np.float32(dd * np.float32(scale6(y, yo + OFF_SC, j))), _F0)
    requantize(wk, -4, 3, _F4, False)
    # hmask[k % 32] bit k/32 = L[k] > 3, and L[k] keeps its 2 low bits
    for m in range(32):
        hb = 0
        for t in range(8):
            k = W_L + 32 * t + m
            high = wk[k] > np.float32(3.0)
            hb |= sel(high, np.int32(1 << t), np.int32(0))
            wk[k] = wk[k] - sel(high, _F4, _F0)
        y[yo + OFF_HM + m] = np.uint8(hb)
    pack_2bit(wk, y, yo + OFF_QS)


# ggml-quants.c: quantize_row_q3_K_ref, one super-block
@njit(cache=True, no_cfunc_wrapper=True, error_model="numpy")
def quantize_block_q3_k_ref(x, base, y, yo, wk):
    load_block(x, base, wk, W_XT, W_X)
    q3_search16(wk)
    max_scale = _F0
    amax = _F0
    for j in range(NSUB):
        scale = np.float32(abs(wk[W_SCALES + j]))
        if scale > amax:
            amax = scale
            max_scale = wk[W_SCALES + j]
    for k in range(12):
        y[yo + OFF_SC + k] = 0
    if max_scale != _F0:
        iscale = np.float32(_M32 / max_scale)
        for j in range(NSUB):
            l = wrap_i8(nearest_int(iscale * wk[W_SCALES + j]))
            l = max(np.int32(-32), min(np.int32(31), l)) + 32
            put_scale6(y, yo + OFF_SC, j, l)
        dh = fp32_to_fp16(np.float32(_F1 / iscale))
    else:
        dh = fp32_to_fp16(_F0)
    y[yo + OFF_D] = np.uint8(dh & np.uint16(0xFF))
    y[yo + OFF_D + 1] = np.uint8(dh >> np.uint16(8))
    requantize_pack(wk, y, yo)


# ggml-quants.c: quantize_row_q3_K_impl, one super-block (quant_weights != NULL)
@njit(cache=True, no_cfunc_wrapper=True, error_model="numpy")
def quantize_block_q3_k_impl(x, base, qw, y, yo, wk, Ls):
    sumx2 = _F0
    for j in range(QK_K):
        sumx2 += x[base + j] * x[base + j]
    sigma2 = np.float32(_F2 * sumx2 / _QKF)
    load_block(x, base, wk, W_XT, W_X)
    load_transposed(qw, base, wk, W_WT)
    for k in range(QK_K):  # weight = qw * sqrtf(sigma2 + x*x)
        v = wk[W_XT + k]
        wk[W_WT + k] = wk[W_WT + k] * np.float32(np.sqrt(np.float32(sigma2 + v * v)))
    for s in range(NSUB):  # vectorized over s
        wk[W_SW + s] = sum16(wk, W_WT + s)
    nmax = np.int64(NMAX)  # not a literal: Q3_K and Q6_K share one compiled search
    qx_search16(wk, nmax)
    qx_levels16(wk, nmax)

    for k in range(12):
        y[yo + OFF_SC + k] = 0
    d_block = qx_search1(wk, np.int64(NMAX_SC), Ls)  # over the scales wk[W_SCALES], weights wk[W_SW]
    for j in range(NSUB):
        put_scale6(y, yo + OFF_SC, j, np.int32(Ls[j]))
    dh = fp32_to_fp16(d_block)
    y[yo + OFF_D] = np.uint8(dh & np.uint16(0xFF))
    y[yo + OFF_D + 1] = np.uint8(dh >> np.uint16(8))
    requantize_pack(wk, y, yo)


@njit(nogil=True, cache=True, no_cfunc_wrapper=True, error_model="numpy")
def quantize(x, qw, out):
    """ggml_quantize_chunk(GGML_TYPE_Q3_K, x, out, 0, rows, cols, qw or NULL). The row loop is
    here, not in a function of its own: every compiled call level costs a re-optimization of
    all it calls."""
    wk = np.empty(WORK, np.float32)
    Ls = np.empty(NSUB, np.int8)
    for r in range(x.shape[0]):
        xr = x[r]
        y = out[r]
        for b in range(xr.shape[0] // QK_K):
            if qw.shape[0] == 0:
                quantize_block_q3_k_ref(xr, b * QK_K, y, b * TS, wk)
            else:
                quantize_block_q3_k_impl(xr, b * QK_K, qw, y, b * TS, wk, Ls)


# ggml-quants.c: dequantize_row_q3_K
@njit(cache=True, no_cfunc_wrapper=True, error_model="numpy")
def dequantize_row_q3_k(q, y):
    """One row of blocks q uint8[nb*110] -> y float32[nb*256]."""
    for b in range(q.shape[0] // TS):
        qo = b * TS
        yo = b * QK_K
        d_all = fp16_to_fp32(np.uint32(q[qo + OFF_D]) | (np.uint32(q[qo + OFF_D + 1]) << np.uint32(8)))
        for g in range(8):  # values 32g .. 32g+31: qs byte 32*(g//4) + m, bits 2*(g%4); hmask bit g
            qs = qo + OFF_QS + 32 * (g // 4)
            sh = 2 * (g % 4)
            dl0 = np.float32(d_all * np.float32(scale6(q, qo + OFF_SC, 2 * g)))  # sub-blocks 2g, 2g + 1
            dl1 = np.float32(d_all * np.float32(scale6(q, qo + OFF_SC, 2 * g + 1)))
            for m in range(32):
                q2 = (np.int32(q[qs + m]) >> sh) & 3
                hb = (np.int32(q[qo + OFF_HM + m]) >> g) & 1
                y[yo + 32 * g + m] = sel(m < SUB, dl0, dl1) * np.float32(q2 - 4 + 4 * hb)


@njit(nogil=True, cache=True, no_cfunc_wrapper=True, error_model="numpy")
def dequantize(q, out):
    """ggml dequantize_row_q3_K over every row."""
    for r in range(q.shape[0]):
        dequantize_row_q3_k(q[r], out[r])


KERNELS = {QType.Q3_K: Kernel(quantize, dequantize)}
