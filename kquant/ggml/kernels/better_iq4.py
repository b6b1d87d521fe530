"""`rounding="best"` for IQ4_NL and IQ4_XS (y = d * kvalues_iq4nl[i]): a stronger scale search in
ggml's format.

Not a port: ggml's bytes come first (kquant.ggml.kernels.iq4), then each block is searched again
for the weighted squared error E = sum w (y - x)^2 that quantize_row_iq4_nl_impl targets
(w = x^2 without an imatrix, else qw * sqrt(sigma2 + x^2), sigma2 = 2*sum(x^2)/n over the block
of n = 32 (IQ4_NL) or 256 (IQ4_XS) values).

Per 32 values: N_CAND inverse scales per end of the table (ggml tries 15 near its negative end
only), each giving nearest table indices, the weighted least-squares d for them, the indices
again against that d (fp16 for IQ4_NL), E. IQ4_XS then picks the super-block scale among ggml's
and D_STEPS per end of the 6-bit code range, codes round(s_j/d) +- 1 and ggml's per sub-block,
and a least-squares refit of d, as better_sym does for Q3_K. A searched block replaces ggml's under
_accept's rule (its decoded E and output error both lower).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..types import QK, QK_K, QType
from ._common import fp16_round, get_f16, put_f16, sel
from ._accept import better, out_weights
from ._sweep import werr
from .iq4 import (
    KVALUES,
    NL_BYTES,
    NL_D,
    NL_QS,
    XS_BYTES,
    XS_D,
    XS_QS,
    XS_SCALES_H,
    XS_SCALES_L,
    dequantize_iq4_nl,
    dequantize_iq4_xs,
    quantize_iq4_nl,
    quantize_iq4_xs,
)

N_CAND = 12
D_STEPS = 4
JIT = dict(cache=True, no_cfunc_wrapper=True, error_model="numpy")


@njit(inline="always", **JIT)
def _nearest(v):
    """iq4.best_index(v) without its data-dependent branches: the count of table midpoints v is at or
    past, each tested with best_index's own float32 expression (v - kv[m-1] >= kv[m] - v). Away from
    the pair bracketing v the test cannot flip (its two sides have opposite signs), so the count is
    best_index's answer; NaN gives 15 as there."""
    kv = KVALUES
    n = 0
    for m in range(1, 16):
        n += 1 if v - kv[m - 1] >= kv[m] - v else 0
    return sel(v != v, 15, n)


@njit(**JIT)
def _index(x, o, d, L):
    """Nearest table index of 32 values for the step d."""
    inv = np.float32(1.0 / d) if d != 0 else np.float32(0.0)
    for j in range(32):
        L[j] = _nearest(np.float32(inv * x[o + j]))


@njit(**JIT)
def _err(x, o, w, d32, L):
    e = 0.0
    for j in range(32):
        r = np.float64(np.float32(d32 * KVALUES[L[j]])) - np.float64(x[o + j])
        e += w[j] * r * r
    return e


@njit(**JIT)
def _fit32(x, o, w, L, bL, round16):
    """Best d of 32 values (fp16 when round16) -> (E, d); indices -> bL."""
    amax = 0.0
    mx = 0.0
    for j in range(32):
        a = abs(np.float64(x[o + j]))
        if a > amax:
            amax = a
            mx = np.float64(x[o + j])
    best = np.inf
    bd = 0.0
    if amax == 0.0:
        return best, bd
    for side in range(2):
        end = -127.0 if side == 0 else 113.0
        for k in range(N_CAND):
            c = end * (1.08 - 0.3 * k / N_CAND)
            _index(x, o, mx / c, L)
            sxq = 0.0
            sqq = 0.0
            for j in range(32):
                q = np.float64(KVALUES[L[j]])
                sxq += w[j] * q * np.float64(x[o + j])
                sqq += w[j] * q * q
            if not sqq > 0:
                continue
            d = sxq / sqq
            if round16:
                d = np.float64(fp16_round(np.float32(d)))
            if d == 0 or not np.isfinite(d):
                continue
            _index(x, o, d, L)
            e = _err(x, o, w, np.float32(d), L)
            if e < best:
                best = e
                bd = d
                for j in range(32):
                    bL[j] = L[j]
    return best, bd


@njit(**JIT)
def _weights(x, o, n, qw, w):
    if qw.shape[0] == 0:
        for j in range(n):
            w[j] = np.float64(x[o + j]) * x[o + j]
        return
    s2 = 0.0
    for j in range(n):
        s2 += np.float64(x[o + j]) * x[o + j]
    for j in range(n):
        xj = np.float64(x[o + j])
        w[j] = qw[o + j] * np.sqrt(2.0 * s2 / n + xj * xj)


@njit(**JIT)
def _pack_qs(out, qo, L, nb):
    """qs packing of ggml's impl: byte 16 i + j = L[32 i + j] | L[32 i + 16 + j] << 4."""
    for i in range(nb):
        for j in range(16):
            out[qo + 16 * i + j] = np.uint8(L[32 * i + j] | (L[32 * i + 16 + j] << 4))


@njit(nogil=True, **JIT)
def quantize_iq4_nl_best(x, qw, out):
    """ggml's blocks, then each block replaced where a searched one is better (_accept.better)."""
    quantize_iq4_nl(x, qw, out)
    w = np.empty(QK, dtype=np.float64)
    u = np.empty(QK, dtype=np.float64)
    y = np.empty((1, QK), dtype=np.float32)
    tmp = np.zeros((1, NL_BYTES), dtype=np.uint8)
    L = np.empty(QK, dtype=np.int64)
    bL = np.empty(QK, dtype=np.int64)
    for r in range(x.shape[0]):
        xr = x[r]
        for b in range(x.shape[1] // QK):
            o = b * QK
            off = b * NL_BYTES
            _weights(xr, o, QK, qw, w)
            dequantize_iq4_nl(out[r:r + 1, off:off + NL_BYTES], y)
            e_g = werr(xr, o, w, y[0], QK)
            if not e_g > 0:
                continue
            e, d = _fit32(xr, o, w, L, bL, True)
            if not e < e_g:
                continue
            out_weights(qw, o, u, QK)  # ggml's block's output error, needed only now
            u_g = werr(xr, o, u, y[0], QK)
            put_f16(tmp[0], NL_D, np.float32(d))
            _pack_qs(tmp[0], NL_QS, bL, 1)
            dequantize_iq4_nl(tmp, y)
            if better(werr(xr, o, w, y[0], QK), werr(xr, o, u, y[0], QK), e_g, u_g):
                out[r, off:off + NL_BYTES] = tmp[0]


@njit(**JIT)
def _assign_xs(x, o, w, D, sreal, sc0, sc, L):
    total = 0.0
    for j in range(8):
        bo = o + 32 * j
        wj = w[32 * j:32 * (j + 1)]
        c0 = int(np.rint(sreal[j] / D)) if abs(sreal[j] / D) < 1e6 else 0
        best = np.inf
        bc = sc0[j]
        for t in range(4):
            c = sc0[j] if t == 3 else c0 - 1 + t
            c = min(31, max(-32, c))
            dl = np.float32(D * np.float32(c))
            _index(x, bo, dl, L)
            e = _err(x, bo, wj, dl, L)
            if e < best:
                best = e
                bc = c
        sc[j] = bc
        total += best
    return total


@njit(**JIT)
def _refit_xs(x, o, w, D, sc, L):
    sxq = 0.0
    sqq = 0.0
    for j in range(8):
        bo = o + 32 * j
        _index(x, bo, np.float32(D * np.float32(sc[j])), L)
        for i in range(32):
            a = np.float64(sc[j]) * np.float64(KVALUES[L[i]])
            sxq += w[32 * j + i] * a * np.float64(x[bo + i])
            sqq += w[32 * j + i] * a * a
    if not sqq > 0:
        return D, np.inf
    nD = fp16_round(np.float32(sxq / sqq))
    if nD == 0 or not np.isfinite(nD):
        return D, np.inf
    e = 0.0
    for j in range(8):
        bo = o + 32 * j
        dl = np.float32(nD * np.float32(sc[j]))
        _index(x, bo, dl, L)
        e += _err(x, bo, w[32 * j:32 * (j + 1)], dl, L)
    return nD, e


@njit(**JIT)
def _search_xs(xr, o, w, D0, sc0, sreal, sc, bsc, L, bL):
    """Best (d, 6-bit scale codes -> bsc) of one IQ4_XS super-block for the weights w; returns d."""
    smax = 0.0
    sbig = 0.0
    for j in range(8):
        bsc[j] = sc0[j]
        e, d = _fit32(xr, o + 32 * j, w[32 * j:32 * (j + 1)], L, bL, False)
        sreal[j] = d if e < np.inf else 0.0
        if abs(sreal[j]) > smax:
            smax = abs(sreal[j])
            sbig = sreal[j]
    best = _assign_xs(xr, o, w, D0, sreal, sc0, bsc, L)
    bD = D0
    if smax > 0:
        for k in range(2 * D_STEPS):
            end = -32.0 if k < D_STEPS else 31.0
            c = end + (0.5 if end < 0 else -0.5) * (k % D_STEPS)
            D = fp16_round(np.float32(sbig / c))
            if D == 0 or not np.isfinite(D):
                continue
            e = _assign_xs(xr, o, w, D, sreal, sc0, sc, L)
            if e < best:
                best = e
                bD = D
                for j in range(8):
                    bsc[j] = sc[j]
            nD, e2 = _refit_xs(xr, o, w, D, sc, L)
            if e2 < best:
                best = e2
                bD = nD
                for j in range(8):
                    bsc[j] = sc[j]
    return bD


@njit(**JIT)
def _pack_xs(t, xr, o, bD, bsc, L, LL):
    """Packs the IQ4_XS super-block (d, scale codes bsc) as quantize_row_iq4_nl_impl (sbs = 256) does."""
    put_f16(t, XS_D, bD)
    shn = 0
    for j in range(8):
        dl = np.float32(bD * np.float32(bsc[j]))
        _index(xr, o + 32 * j, dl, L)
        for i in range(32):
            LL[32 * j + i] = L[i]
        l = bsc[j] + 32
        if j % 2 == 0:
            t[XS_SCALES_L + j // 2] = np.uint8(l & 0xF)
        else:
            t[XS_SCALES_L + j // 2] |= np.uint8((l & 0xF) << 4)
        shn |= (l >> 4) << (2 * j)
    t[XS_SCALES_H] = np.uint8(shn & 0xFF)
    t[XS_SCALES_H + 1] = np.uint8((shn >> 8) & 0xFF)
    _pack_qs(t, XS_QS, LL, 8)


@njit(nogil=True, **JIT)
def quantize_iq4_xs_best(x, qw, out):
    """ggml's super-blocks, then each replaced where a searched one is better (_accept.better)."""
    quantize_iq4_xs(x, qw, out)
    w = np.empty(QK_K, dtype=np.float64)
    u = np.empty(QK_K, dtype=np.float64)
    y = np.empty((1, QK_K), dtype=np.float32)
    tmp = np.zeros((1, XS_BYTES), dtype=np.uint8)
    L = np.empty(QK, dtype=np.int64)
    bL = np.empty(QK, dtype=np.int64)
    LL = np.empty(QK_K, dtype=np.int64)
    sreal = np.empty(8, dtype=np.float64)
    sc0 = np.empty(8, dtype=np.int32)
    sc = np.empty(8, dtype=np.int32)
    bsc = np.empty(8, dtype=np.int32)
    for r in range(x.shape[0]):
        xr = x[r]
        for b in range(x.shape[1] // QK_K):
            o = b * QK_K
            off = b * XS_BYTES
            blk = out[r, off:off + XS_BYTES]
            _weights(xr, o, QK_K, qw, w)
            dequantize_iq4_xs(out[r:r + 1, off:off + XS_BYTES], y)
            e_g = werr(xr, o, w, y[0], QK_K)
            D0 = get_f16(blk, XS_D)
            if not e_g > 0 or D0 == 0 or not np.isfinite(D0):
                continue
            sh = np.int64(blk[XS_SCALES_H]) | (np.int64(blk[XS_SCALES_H + 1]) << 8)
            for j in range(8):
                ls = ((np.int64(blk[XS_SCALES_L + j // 2]) >> (4 * (j % 2))) & 0xF) | (((sh >> (2 * j)) & 3) << 4)
                sc0[j] = np.int32(ls - 32)
            out_weights(qw, o, u, QK_K)
            u_g = werr(xr, o, u, y[0], QK_K)
            bD = _search_xs(xr, o, w, D0, sc0, sreal, sc, bsc, L, bL)
            _pack_xs(tmp[0], xr, o, bD, bsc, L, LL)
            dequantize_iq4_xs(tmp, y)
            if better(werr(xr, o, w, y[0], QK_K), werr(xr, o, u, y[0], QK_K), e_g, u_g):
                out[r, off:off + XS_BYTES] = tmp[0]


BEST = {QType.IQ4_NL: quantize_iq4_nl_best, QType.IQ4_XS: quantize_iq4_xs_best}
