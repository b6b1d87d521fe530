"""`rounding="best"` for the legacy 32-wide types Q4_0, Q5_0, Q8_0 (y = d*l) and Q4_1, Q5_1
(y = d*q + m): a stronger scale search in ggml's format.

Not a port: ggml's bytes come first (kquant.ggml.kernels.legacy's exact port), then every block
is searched again for the weighted squared error E = sum w (y - x)^2 that ggml's weighted path
minimises (quantize_row_q4_0_impl .. q5_1_impl: w = qw * sqrt(sigma2 + x^2), sigma2 =
sum(x^2)/n over the row). Without an imatrix ggml runs no search at all (quantize_row_*_ref:
scale from the max or the min/max); the objective is then the plain squared error (w = 1), and
also for Q8_0, whose ggml quantizer ignores the imatrix (with one, w = qw).

The search, per block: N_CAND inverse scales spread over a range around ggml's (for y = d*l: the
largest |x| mapped to levels near either end of the signed range, see SPAN; for y = d*q + m: (max - min)
mapped to nmax - 2 .. nmax + 1 levels); for each, the levels by nearest rounding, then the
weighted least-squares d (and m) for those levels, stored as fp16, the levels rounded again
against the stored values, E exact. The best candidate is decoded with kquant's dequantizer and
replaces ggml's block under _accept's rule (lower in E and in the output error).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..types import QK, QType
from ._common import fp16_round, put_f16
from ._accept import better, out_weights
from ._sweep import fp16_near, sym_sweep, werr
from .legacy import (
    Q4_0_D,
    Q4_0_QS,
    Q4_1_D,
    Q4_1_M,
    Q4_1_QS,
    Q5_0_D,
    Q5_0_QH,
    Q5_0_QS,
    Q5_1_D,
    Q5_1_M,
    Q5_1_QH,
    Q5_1_QS,
    Q8_0_D,
    Q8_0_QS,
    dequantize_row_q4_0,
    dequantize_row_q4_1,
    dequantize_row_q5_0,
    dequantize_row_q5_1,
    dequantize_row_q8_0,
    quantize_q4_0,
    quantize_q4_1,
    quantize_q5_0,
    quantize_q5_1,
    quantize_q8_0,
)

TS_Q4_0, TS_Q4_1, TS_Q5_0, TS_Q5_1, TS_Q8_0 = (int(t.type_size) for t in (QType.Q4_0, QType.Q4_1, QType.Q5_0, QType.Q5_1, QType.Q8_0))
N_CAND = 12  # inverse scales tried per block (per sign for y = d*l)
SPAN = 3.0  # y = d*l: the largest |x| is mapped to levels top + 0.5 down to top - min(SPAN, 0.4*top)
K_EXACT = 4  # steps of the exact sweep tried in fp16 (Q4_0, Q5_0)
JIT = dict(cache=True, no_cfunc_wrapper=True, error_model="numpy")

# kinds: one per type; (lowest level, highest level, affine, 5th bit in qh)
K_Q4_0, K_Q4_1, K_Q5_0, K_Q5_1, K_Q8_0 = 0, 1, 2, 3, 4


@njit(**JIT)
def _dequant(kind, q, y):
    if kind == K_Q4_0:
        dequantize_row_q4_0(q, y)
    elif kind == K_Q4_1:
        dequantize_row_q4_1(q, y)
    elif kind == K_Q5_0:
        dequantize_row_q5_0(q, y)
    elif kind == K_Q5_1:
        dequantize_row_q5_1(q, y)
    else:
        dequantize_row_q8_0(q, y)


@njit(inline="always", **JIT)
def put_header(kind, y, p, d, m):
    """The block at y[p:]: its fp16 d (and m for Q4_1 / Q5_1); returns the position of its qs."""
    if kind == K_Q8_0:
        put_f16(y, p + Q8_0_D, d)
        return p + Q8_0_QS
    if kind == K_Q4_0:
        put_f16(y, p + Q4_0_D, d)
        return p + Q4_0_QS
    if kind == K_Q4_1:
        put_f16(y, p + Q4_1_D, d)
        put_f16(y, p + Q4_1_M, m)
        return p + Q4_1_QS
    if kind == K_Q5_0:
        put_f16(y, p + Q5_0_D, d)
        return p + Q5_0_QS
    put_f16(y, p + Q5_1_D, d)
    put_f16(y, p + Q5_1_M, m)
    return p + Q5_1_QS


@njit(inline="always", **JIT)
def put_nibbles(y, qs, j, a, b, qh, five):
    """Codes a (value j) and b (value j + 16) of a 4- or 5-bit block whose qs start at y[qs]: their low
    4 bits into byte j, their 5th bits (five) into qh, returned."""
    y[qs + j] = np.uint8((a & np.uint32(15)) | ((b & np.uint32(15)) << np.uint32(4)))
    if five:
        qh |= ((a >> np.uint32(4)) & np.uint32(1)) << np.uint32(j)
        qh |= ((b >> np.uint32(4)) & np.uint32(1)) << (np.uint32(j) + np.uint32(16))
    return qh


@njit(inline="always", **JIT)
def put_qh(kind, y, p, qh):
    """The 5th bits of a Q5_0 / Q5_1 block at y[p:] (bit j: value j's)."""
    h = p + (Q5_0_QH if kind == K_Q5_0 else Q5_1_QH)
    for k in range(4):
        y[h + k] = np.uint8((qh >> np.uint32(8 * k)) & np.uint32(0xFF))


@njit(**JIT)
def _pack(kind, y, p, d, m, L):
    """One block at y[p:]: fp16 d (and m), levels L (stored codes: l + offset for y = d*l). (A position, not a
    slice: no array view is built per block.)"""
    qs = put_header(kind, y, p, d, m)
    if kind == K_Q8_0:
        for j in range(QK):
            y[qs + j] = np.uint8(np.int32(L[j]) & 0xFF)
        return
    half = QK // 2
    five = kind == K_Q5_0 or kind == K_Q5_1
    qh = np.uint32(0)
    for j in range(half):  # same layout as quantize_row_q*_ref: low nibbles, 5th bits in qh
        qh = put_nibbles(y, qs, j, np.uint32(L[j]), np.uint32(L[half + j]), qh, five)
    if five:
        put_qh(kind, y, p, qh)


@njit(**JIT)
def levels_sym(x, o, d, lo, hi, L, n):
    """Levels l of y = d*l for the n values at x[o:] (nearest, clamped to [lo, hi])."""
    inv = 1.0 / np.float64(d)
    for j in range(n):
        v = np.rint(np.float64(x[o + j]) * inv)
        L[j] = np.int32(min(np.float64(hi), max(np.float64(lo), v)))


@njit(**JIT)
def err_sym(x, o, w, d, L, n):
    e = 0.0
    for j in range(n):
        r = np.float64(np.float32(np.float32(L[j]) * d)) - np.float64(x[o + j])
        e += w[j] * r * r
    return e


@njit(**JIT)
def _search_sym(x, o, w, lo, hi, L, bL):
    """Best fp16 d for y = d*l, l in [lo, hi]; levels -> bL (as l), returns (E, d)."""
    amax = 0.0
    mx = 0.0
    for j in range(QK):
        a = abs(np.float64(x[o + j]))
        if a > amax:
            amax = a
            mx = np.float64(x[o + j])
    best = np.inf
    bd = np.float32(0.0)
    if amax == 0.0:
        return best, bd
    for side in range(2):
        top = np.float64(-lo) if side == 0 else np.float64(hi)  # |levels| the max maps to
        sgn = -1.0 if side == 0 else 1.0
        for k in range(N_CAND):
            c = top + 0.5 - (min(SPAN, top * 0.4) + 0.5) * k / N_CAND
            d0 = sgn * mx / c
            if d0 == 0.0:
                continue
            levels_sym(x, o, d0, lo, hi, L, QK)
            sxl = 0.0
            sll = 0.0
            for j in range(QK):
                sxl += w[j] * np.float64(x[o + j]) * L[j]
                sll += w[j] * np.float64(L[j]) * L[j]
            if not sll > 0:
                continue
            d = fp16_round(np.float32(sxl / sll))
            if d == 0 or not np.isfinite(d):
                continue
            levels_sym(x, o, d, lo, hi, L, QK)
            e = err_sym(x, o, w, d, L, QK)
            if e < best:
                best = e
                bd = d
                for j in range(QK):
                    bL[j] = L[j]
    return best, bd


@njit(**JIT)
def search_exact(x, o, w, lo, hi, L, bL, ts, idx, Lf, cs, cv, n):
    """y = d*l over the n values at x[o:]: the K_EXACT best real steps of the exact sweep
    (_sweep.sym_sweep), each stored as fp16 and its two fp16 neighbours, nearest levels, then a
    weighted least-squares refit of the best; levels -> bL, returns (E, d)."""
    best = np.inf
    bd = np.float32(0.0)
    k = sym_sweep(x, o, w, 0, n, lo, hi, K_EXACT, ts, idx, Lf, cs, cv)
    for c in range(k):
        for j in range(3):
            d = fp16_near(cs[c], j)
            if d == 0:
                continue
            levels_sym(x, o, d, lo, hi, L, n)
            e = err_sym(x, o, w, d, L, n)
            if e < best:
                best = e
                bd = d
                for i in range(n):
                    bL[i] = L[i]
    if best < np.inf:
        sxl = 0.0
        sll = 0.0
        for i in range(n):
            sxl += w[i] * np.float64(x[o + i]) * bL[i]
            sll += w[i] * np.float64(bL[i]) * bL[i]
        d = fp16_round(np.float32(sxl / sll)) if sll > 0 else np.float32(0.0)
        if d != 0 and np.isfinite(d):
            levels_sym(x, o, d, lo, hi, L, n)
            e = err_sym(x, o, w, d, L, n)
            if e < best:
                best = e
                bd = d
                for i in range(n):
                    bL[i] = L[i]
    return best, bd


@njit(**JIT)
def _levels_aff(x, o, d, m, nmax, L, n):
    inv = 1.0 / np.float64(d)
    for j in range(n):
        v = np.rint((np.float64(x[o + j]) - m) * inv)
        L[j] = np.int32(min(np.float64(nmax), max(0.0, v)))


@njit(**JIT)
def _err_aff(x, o, w, d, m, L, n):
    e = 0.0
    for j in range(n):
        r = np.float64(np.float32(np.float32(L[j]) * d + m)) - np.float64(x[o + j])
        e += w[j] * r * r
    return e


@njit(**JIT)
def search_aff(x, o, w, nmax, L, bL, n):
    """Best fp16 (d, m) for y = d*q + m, q in [0, nmax], over n values; levels -> bL, returns (E, d, m)."""
    mn = np.float64(x[o])
    mx = mn
    for j in range(1, n):
        v = np.float64(x[o + j])
        mn = min(mn, v)
        mx = max(mx, v)
    best = np.inf
    bd = np.float32(0.0)
    bm = np.float32(0.0)
    if mx == mn:
        return best, bd, bm
    sw = 0.0
    sx = 0.0
    for j in range(n):
        sw += w[j]
        sx += w[j] * np.float64(x[o + j])
    for k in range(N_CAND):
        c = np.float64(nmax) + 1.0 - 3.0 * k / N_CAND  # nmax + 1 .. nmax - 2 levels over the range
        d0 = (mx - mn) / c
        m0 = mn
        for it in range(2):
            _levels_aff(x, o, d0, m0, nmax, L, n)
            sl = 0.0
            sll = 0.0
            sxl = 0.0
            for j in range(n):
                fl = np.float64(L[j])
                sl += w[j] * fl
                sll += w[j] * fl * fl
                sxl += w[j] * fl * np.float64(x[o + j])
            det = sw * sll - sl * sl
            if not det > 1e-12 * sw * sll:
                break
            d0 = (sw * sxl - sx * sl) / det
            m0 = (sll * sx - sl * sxl) / det
            if not (np.isfinite(d0) and np.isfinite(m0)) or not d0 > 0:
                break
            d = fp16_round(np.float32(d0))
            m = fp16_round(np.float32(m0))
            if d == 0 or not (np.isfinite(d) and np.isfinite(m)):
                break
            d0 = np.float64(d)
            m0 = np.float64(m)
            _levels_aff(x, o, d, m, nmax, L, n)
            e = _err_aff(x, o, w, d, m, L, n)
            if e < best:
                best = e
                bd = d
                bm = m
                for j in range(n):
                    bL[j] = L[j]
    return best, bd, bm


@njit(nogil=True, **JIT)
def quantize_legacy_best(kind, x, qw, out):
    """ggml's blocks, then each block replaced where the searched one is better (_accept.better)."""
    if kind == K_Q4_0:
        quantize_q4_0(x, qw, out)
        lo, hi, bs = -8, 7, TS_Q4_0
    elif kind == K_Q4_1:
        quantize_q4_1(x, qw, out)
        lo, hi, bs = 0, 15, TS_Q4_1
    elif kind == K_Q5_0:
        quantize_q5_0(x, qw, out)
        lo, hi, bs = -16, 15, TS_Q5_0
    elif kind == K_Q5_1:
        quantize_q5_1(x, qw, out)
        lo, hi, bs = 0, 31, TS_Q5_1
    else:
        quantize_q8_0(x, qw, out)
        lo, hi, bs = -128, 127, TS_Q8_0
    affine = kind == K_Q4_1 or kind == K_Q5_1
    n = x.shape[1]
    nb = n // QK
    w = np.ones(QK, dtype=np.float64)
    u = np.empty(QK, dtype=np.float64)
    y = np.empty(QK, dtype=np.float32)
    tmp = np.zeros(bs, dtype=np.uint8)
    L = np.empty(QK, dtype=np.int32)
    bL = np.empty(QK, dtype=np.int32)
    bL2 = np.empty(QK, dtype=np.int32)
    ts = np.empty(QK * 16, dtype=np.float64)
    idx = np.empty(QK * 16, dtype=np.int64)
    Lf = np.empty(QK, dtype=np.float64)
    cs = np.empty(K_EXACT, dtype=np.float64)
    cv = np.empty(K_EXACT, dtype=np.float64)
    weighted = qw.shape[0] > 0
    for r in range(x.shape[0]):
        xr = x[r]
        orow = out[r]
        sigma2 = 0.0
        if weighted and kind != K_Q8_0:
            for i in range(n):
                sigma2 += np.float64(xr[i]) * xr[i]
            sigma2 /= n
        for b in range(nb):
            o = b * QK
            if weighted:
                for j in range(QK):
                    xi = np.float64(xr[o + j])
                    w[j] = qw[o + j] if kind == K_Q8_0 else qw[o + j] * np.sqrt(sigma2 + xi * xi)
            _dequant(kind, orow[b * bs:(b + 1) * bs], y)
            e_g = werr(xr, o, w, y, QK)
            if not e_g > 0:
                continue
            if affine:
                e, d, m = search_aff(xr, o, w, hi, L, bL, QK)
                codes = bL
            else:
                e, d = _search_sym(xr, o, w, lo, hi, L, bL)
                if kind != K_Q8_0:
                    e2, d2 = search_exact(xr, o, w, lo, hi, L, bL2, ts, idx, Lf, cs, cv, QK)
                    if e2 < e:
                        e = e2
                        d = d2
                        for j in range(QK):
                            bL[j] = bL2[j]
                m = np.float32(0.0)
                for j in range(QK):
                    L[j] = bL[j] - lo if kind != K_Q8_0 else bL[j]
                codes = L
            if not e < e_g:
                continue
            out_weights(qw, o, u, QK)  # ggml's block's output error, needed only now
            u_g = werr(xr, o, u, y, QK)
            _pack(kind, tmp, 0, d, m, codes)
            _dequant(kind, tmp, y)
            if better(werr(xr, o, w, y, QK), werr(xr, o, u, y, QK), e_g, u_g):
                orow[b * bs:(b + 1) * bs] = tmp


@njit(nogil=True, **JIT)
def quantize_q4_0_best(x, qw, out):
    quantize_legacy_best(K_Q4_0, x, qw, out)


@njit(nogil=True, **JIT)
def quantize_q4_1_best(x, qw, out):
    quantize_legacy_best(K_Q4_1, x, qw, out)


@njit(nogil=True, **JIT)
def quantize_q5_0_best(x, qw, out):
    quantize_legacy_best(K_Q5_0, x, qw, out)


@njit(nogil=True, **JIT)
def quantize_q5_1_best(x, qw, out):
    quantize_legacy_best(K_Q5_1, x, qw, out)


@njit(nogil=True, **JIT)
def quantize_q8_0_best(x, qw, out):
    quantize_legacy_best(K_Q8_0, x, qw, out)


BEST = {
    QType.Q4_0: quantize_q4_0_best,
    QType.Q4_1: quantize_q4_1_best,
    QType.Q5_0: quantize_q5_0_best,
    QType.Q5_1: quantize_q5_1_best,
    QType.Q8_0: quantize_q8_0_best,
}
