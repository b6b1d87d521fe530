"""ggml's 4-bit non-linear quants IQ4_NL and IQ4_XS, ported to Numba.

Ports, from ggml/src/ggml-quants.c (llama.cpp as vendored in llama-cpp-python 0.3.36):
  quantize_row_iq4_nl_impl   one (super-)block, weighted or not; what quantize_iq4_nl and
                             quantize_iq4_xs (ggml_quantize_chunk's paths, ntry = 7) call
  dequantize_row_iq4_nl, dequantize_row_iq4_xs
byte for byte. Every float expression is evaluated in float32, op by op, in C's order.

Both types map 4-bit codes through the same 16-entry table (`kvalues_iq4nl`) instead of a
linear grid. IQ4_NL: blocks of 32 values with one fp16 scale (18 bytes, 4.5 bits per weight).
IQ4_XS: super-blocks of 256 with one fp16 scale and eight 6-bit signed sub-block scales
(136 bytes, 4.25 bits per weight):

    block_iq4_nl  offset 0 d (fp16), 2 qs[16]
    block_iq4_xs  offset 0 d (fp16), 2 scales_h (uint16: 2 high bits per sub-block),
                  4 scales_l[4] (4 low bits per sub-block), 8 qs[128]

qs packs sub-block i's values j and 16 + j into byte 16 i + j (low nibble, high nibble).

Not one of llama.cpp's k-quant mixes: kquant uses them as candidates of the automatic mix
(kquant.automix), where IQ4_XS is a cheaper alternative to Q4_K at nearly the same error.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..types import QK, QK_K, QType, field_offsets
from . import Kernel
from ._common import GROUP_MAX_EPS, get_f16, nearest_int, put_f16, sel

JIT = dict(cache=True, no_cfunc_wrapper=True, error_model="numpy")  # float x/0 gives inf/nan, as in C
NTRY = 7  # quantize_iq4_nl / quantize_iq4_xs pass ntry = 7
NLANES = 2 * NTRY + 2  # the first pass and the 2 NTRY + 1 trial scales
KVALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.float32)
NL_BYTES, XS_BYTES = QType.IQ4_NL.type_size, QType.IQ4_XS.type_size  # 18, 136
NL_D, NL_QS = field_offsets(QType.IQ4_NL, "d", "qs")
XS_D, XS_SCALES_H, XS_SCALES_L, XS_QS = field_offsets(QType.IQ4_XS, "d", "scales_h", "scales_l", "qs")
_F0 = np.float32(0.0)
_F1 = np.float32(1.0)


@njit(**JIT)
def best_index(x):
    """ggml-quants.c best_index_int8(16, kvalues_iq4nl, x): the nearest table entry (binary search)."""
    kv = KVALUES
    if x <= kv[0]:
        return 0
    if x >= kv[15]:
        return 15
    ml = 0
    mu = 15
    while mu - ml > 1:
        mav = (ml + mu) // 2
        if x < kv[mav]:
            mu = mav
        else:
            ml = mav
    return mu - 1 if x - kv[mu - 1] < kv[mu] - x else mu


@njit(**JIT)
def lane_sums(x, bo, weight, ids, sqx, sq2):
    """For each lane t: sum over the 32 values j of w_j q x_j and w_j q^2, q = the table entry
    nearest ids[t] x_j (best_index, branch-free: lo/hi are the entries either side of it)."""
    kv = KVALUES
    for t in range(NLANES):
        sqx[t] = _F0
        sq2[t] = _F0
    for j in range(32):
        xv = x[bo + j]
        w = weight[j]
        for t in range(NLANES):
            al = ids[t] * xv
            lo = kv[0]
            hi = kv[15]
            for k in range(1, 15):  # lo: the last entry <= al (ascending); hi: the first > al (descending)
                lo = sel(al < kv[k], lo, kv[k])
                hi = sel(al < kv[15 - k], kv[15 - k], hi)
            q = sel(al - lo < hi - al, lo, hi)
            sqx[t] += w * q * xv
            sq2[t] += w * q * q


@njit(**JIT)
def impl_block(x, xo, sbs, qw, weighted, out, off, L, scales, weight, ids, sqx, sq2):
    """quantize_row_iq4_nl_impl(sbs, 32, x + xo, ...) with ntry = NTRY; writes the block at out[off:].
    sbs = 32: an IQ4_NL block; sbs = 256: an IQ4_XS super-block. L .. sq2: scratch."""
    kv = KVALUES
    sigma2 = _F0
    for j in range(sbs):
        sigma2 += x[xo + j] * x[xo + j]
    sigma2 *= np.float32(2.0) / np.float32(sbs)
    nb = sbs // 32
    max_scale = _F0
    amax_scale = _F0
    for ib in range(nb):
        bo = xo + ib * 32
        if weighted:
            for j in range(32):
                weight[j] = qw[bo + j] * np.sqrt(sigma2 + x[bo + j] * x[bo + j])
        else:
            for j in range(32):
                weight[j] = x[bo + j] * x[bo + j]
        amax = _F0
        mx = _F0
        for j in range(32):
            ax = abs(x[bo + j])
            if ax > amax:
                amax = ax
                mx = x[bo + j]
        if amax < GROUP_MAX_EPS:
            scales[ib] = _F0
            continue
        # the first pass (id = 1/d for d = max/127) and the 2 NTRY + 1 trial scales are independent
        # sums: lane 0 and lanes 1.., each summed in ggml's element order; then ggml's sequential
        # choice among them
        ids[0] = _F1 / (-mx / kv[0])  # ntry > 0
        for t in range(1, NLANES):
            ids[t] = np.float32(t - 1 - NTRY - 127) / mx
        lane_sums(x, bo, weight, ids, sqx, sq2)
        d = sqx[0] / sq2[0] if sq2[0] > _F0 else _F0
        best = d * sqx[0]
        for t in range(1, NLANES):
            if sq2[t] > _F0 and sqx[t] * sqx[t] > best * sq2[t]:
                d = sqx[t] / sq2[t]
                best = d * sqx[t]
        scales[ib] = d
        abs_d = abs(d)
        if abs_d > amax_scale:
            amax_scale = abs_d
            max_scale = d
    if nb > 1:
        d = -max_scale / np.float32(32.0)
        put_f16(out, off + XS_D, d)
        iid = _F1 / d if d != _F0 else _F0
        sh = 0
        for ib in range(nb):
            l = nearest_int(iid * scales[ib])
            l = max(-32, min(31, l))
            dl = d * np.float32(l)
            idl = _F1 / dl if dl != _F0 else _F0
            bo = xo + ib * 32
            for j in range(32):
                L[ib * 32 + j] = best_index(idl * x[bo + j])
            l += 32
            if ib % 2 == 0:
                out[off + XS_SCALES_L + ib // 2] = np.uint8(l & 0xF)
            else:
                out[off + XS_SCALES_L + ib // 2] |= np.uint8((l & 0xF) << 4)
            sh |= (l >> 4) << (2 * ib)
        out[off + XS_SCALES_H] = np.uint8(sh & 0xFF)
        out[off + XS_SCALES_H + 1] = np.uint8((sh >> 8) & 0xFF)
        qo = off + XS_QS
    else:
        put_f16(out, off + NL_D, scales[0])
        iid = _F1 / scales[0] if scales[0] != _F0 else _F0
        for j in range(32):
            L[j] = best_index(iid * x[xo + j])
        qo = off + NL_QS
    for i in range(nb):
        for j in range(16):
            out[qo + 16 * i + j] = np.uint8(L[32 * i + j] | (L[32 * i + 16 + j] << 4))


# IQ4_NL and IQ4_XS drivers: the same loop written out in each (a shared driver is one more
# compiled call level, which costs a re-optimization of all it calls)
@njit(nogil=True, **JIT)
def quantize_iq4_nl(x, qw, out):
    weighted = qw.shape[0] == x.shape[1]
    L = np.zeros(QK, dtype=np.int64)
    scales = np.zeros(QK // 32, dtype=np.float32)
    weight = np.zeros(32, dtype=np.float32)
    ids = np.zeros(NLANES, dtype=np.float32)
    sqx = np.zeros(NLANES, dtype=np.float32)
    sq2 = np.zeros(NLANES, dtype=np.float32)
    nblk = x.shape[1] // QK
    for r in range(x.shape[0]):
        xr = x[r]
        orow = out[r]
        for b in range(nblk):
            impl_block(xr, b * QK, QK, qw, weighted, orow, b * NL_BYTES, L, scales, weight, ids, sqx, sq2)


@njit(nogil=True, **JIT)
def quantize_iq4_xs(x, qw, out):
    weighted = qw.shape[0] == x.shape[1]
    L = np.zeros(QK_K, dtype=np.int64)
    scales = np.zeros(QK_K // 32, dtype=np.float32)
    weight = np.zeros(32, dtype=np.float32)
    ids = np.zeros(NLANES, dtype=np.float32)
    sqx = np.zeros(NLANES, dtype=np.float32)
    sq2 = np.zeros(NLANES, dtype=np.float32)
    nblk = x.shape[1] // QK_K
    for r in range(x.shape[0]):
        xr = x[r]
        orow = out[r]
        for b in range(nblk):
            impl_block(xr, b * QK_K, QK_K, qw, weighted, orow, b * XS_BYTES, L, scales, weight, ids, sqx, sq2)


@njit(**JIT)
def dequant32(qr, qo, dl, yr, yo):
    """32 values from the 16 bytes at qr[qo:]: dl * table[nibble] (low nibbles first)."""
    kv = KVALUES
    for j in range(16):
        c = qr[qo + j]
        yr[yo + j] = dl * kv[c & 0xF]
        yr[yo + 16 + j] = dl * kv[c >> 4]


@njit(nogil=True, **JIT)
def dequantize_iq4_nl(q, out):
    for r in range(out.shape[0]):
        qr = q[r]
        orow = out[r]
        for b in range(out.shape[1] // QK):
            off = b * NL_BYTES
            dequant32(qr, off + NL_QS, get_f16(qr, off + NL_D), orow, b * QK)


@njit(nogil=True, **JIT)
def dequantize_iq4_xs(q, out):
    for r in range(out.shape[0]):
        qr = q[r]
        orow = out[r]
        for b in range(out.shape[1] // QK_K):
            off = b * XS_BYTES
            d = get_f16(qr, off + XS_D)
            sh = np.int64(qr[off + XS_SCALES_H]) | (np.int64(qr[off + XS_SCALES_H + 1]) << 8)
            for ib in range(QK_K // 32):
                ls = ((np.int64(qr[off + XS_SCALES_L + ib // 2]) >> (4 * (ib % 2))) & 0xF) | (((sh >> (2 * ib)) & 3) << 4)
                dequant32(qr, off + XS_QS + 16 * ib, d * np.float32(ls - 32), orow, b * QK_K + 32 * ib)


KERNELS = {
    QType.IQ4_NL: Kernel(quantize_iq4_nl, dequantize_iq4_nl),
    QType.IQ4_XS: Kernel(quantize_iq4_xs, dequantize_iq4_xs),
}
