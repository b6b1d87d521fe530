"""`rounding="best"` for the affine k-quants Q4_K, Q5_K and Q2_K: a stronger search in ggml's format.

Not a port: ggml's bytes come first (the exact ports in q4_k.py / q2_k.py), then each
super-block is searched again for the weighted squared error ggml's search minimises:

    E = sum_i w_i (y_i - x_i)^2,   y = fp16(d)*sc_j * q_i - fp16(dmin)*m_j   (sub-block j of i)

with ggml's weights for the path it takes: Q4_K/Q5_K quantize_row_q*_K_ref w = av_x + |x|
(av_x = rms of the 32-value sub-block), _impl w = qw * sqrt(2*sum(x^2)/256 + x^2); Q2_K
quantize_row_q2_K_ref w = |x| (ggml's ref search compares candidates by weighted absolute error
with these weights; the squared error is used here, as in its _impl), _impl
w = qw * sqrt(sum(x^2)/256 + x^2).

Two starts, each followed by a coordinate descent (N_PASSES passes); the better result is kept:
0. ggml's block;
1. each sub-block's own best real (scale, min) (better_legacy's affine search), with d, dmin
   putting the largest of each on the top code.
One pass of the descent:
1. with fp16(d), fp16(dmin) fixed, each sub-block tries every scale code within SC_RADIUS of
   its own; for each, the weighted least-squares min given the levels, rounded to the code grid
   (and its two neighbours), levels re-rounded to the nearest, error exact;
2. with the codes and levels fixed, (d, dmin) are the 2x2 weighted least-squares solution,
   stored as fp16; levels re-rounded against the fp16 values; kept only if E drops.

The candidate is packed with ggml's packers (Q4_K/Q5_K: put_scale_min_k4, pack_q4/pack_q5;
Q2_K: q2_k.requantize_pack, which also re-rounds the levels), decoded with kquant's
dequantizer (what llama.cpp decodes, tests/test_rounding.py), and replaces ggml's block under
_accept's rule: lower in E and in the output error, so no block gets worse in either. Rows are
independent, so the result does not depend on the thread count.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..types import QK_K, QType
from . import q2_k, q6_k
from ._common import fp16_round, get_f16, put_f16
from ._accept import better, out_weights
from ._sweep import _U, werr, werr2
from .better_legacy import search_aff
from .q4_k import (
    JIT,
    NSUB,
    Q4K_BYTES,
    Q4K_D,
    Q4K_DMIN,
    Q4K_QS,
    Q4K_SCALES,
    Q5K_BYTES,
    S_L,
    SCRATCH,
    LANES,
    SUB,
    get_scale_min_k4,
    pack_q4,
    pack_q5,
    put_scale_min_k4,
    q4_k_dequant_block,
    quantize_q4_k_q5_k,
)
from .q5_k import q5_k_dequant_block

N_PASSES = 2  # descent passes per super-block
SC_RADIUS = 2  # 6-bit scales tried around the current one


@njit(**JIT)
def k45_weights(x, o, qw, w):
    """ggml's weights of the super-block at x[o:o+256] -> w (float64). Unsigned indices, as better_sym's
    _weights."""
    n = _U(QK_K)
    o = _U(o)
    if qw.shape[0] > 0:  # quantize_row_q4_K_impl / q5_K_impl
        s2 = 0.0
        for i in range(_U(0), n):
            s2 += np.float64(x[o + i]) * x[o + i]
        sigma2 = 2.0 * s2 / QK_K
        for i in range(_U(0), n):
            xi = np.float64(x[o + i])
            w[i] = qw[o + i] * np.sqrt(sigma2 + xi * xi)
    else:  # quantize_row_q4_K_ref / q5_K_ref
        for j in range(_U(0), _U(NSUB)):
            b = _U(SUB) * j
            s2 = 0.0
            for i in range(_U(0), _U(SUB)):
                s2 += np.float64(x[o + b + i]) ** 2
            av = np.sqrt(s2 / SUB)
            for i in range(_U(0), _U(SUB)):
                w[b + i] = av + abs(np.float64(x[o + b + i]))


@njit(inline="always", **JIT)  # called per sub-block with slices: inlined, no call or view costs
def _sub_levels(x, o, ds, dm, nmax, ql, sub):
    """Nearest levels of one sub-block for step ds, offset dm: ql[i] = clamp(round((x + dm)/ds))."""
    if not ds > 0:
        for i in range(sub):
            ql[i] = 0
        return
    inv = 1.0 / ds
    hi = np.float64(nmax)
    for i in range(sub):
        v = np.rint((np.float64(x[o + i]) + dm) * inv)
        ql[i] = np.int32(min(hi, max(0.0, v)))


@njit(inline="always", **JIT)  # called per sub-block with slices: inlined, no call or view costs
def _sub_err(x, o, w, ds, dm, ql, sub):
    e = 0.0
    for i in range(sub):
        d = ds * ql[i] - dm - np.float64(x[o + i])
        e += w[i] * d * d
    return e


@njit(**JIT)
def _descent(x, o, w, nmax, D, M, sc, mn, q, ql, bq, nsub, sub, smax):
    """Coordinate descent on (d, dmin, sc[nsub], m[nsub], q[nsub*sub]) of one super-block (in place),
    scales and mins in 0..smax.
    D, M are fp16-exact float32 values; returns the final (D, M)."""
    for _ in range(N_PASSES):
        # 1. sub-block scales and mins for fixed D, M
        for j in range(nsub):
            xo = o + sub * j
            wj = w[sub * j:sub * (j + 1)]
            ds = np.float64(np.float32(D * np.float32(sc[j])))
            dm = np.float64(np.float32(M * np.float32(mn[j])))
            _sub_levels(x, xo, ds, dm, nmax, ql, sub)
            best = _sub_err(x, xo, wj, ds, dm, ql, sub)
            bsc = sc[j]
            bm = mn[j]
            for i in range(sub):
                bq[i] = ql[i]
            for c in range(max(0, sc[j] - SC_RADIUS), min(smax, sc[j] + SC_RADIUS) + 1):
                ds = np.float64(np.float32(D * np.float32(c)))
                _sub_levels(x, xo, ds, dm, nmax, ql, sub)
                # least-squares offset for these levels: M*m = sum w (ds*q - x) / sum w
                sw = 0.0
                sr = 0.0
                for i in range(sub):
                    sw += wj[i]
                    sr += wj[i] * (ds * ql[i] - np.float64(x[xo + i]))
                mc = mn[j]
                if M != 0 and sw > 0:
                    mc = int(np.rint(sr / sw / M)) if abs(sr / sw / M) < 1e6 else mn[j]
                for m in range(mc - 1, mc + 2):
                    if m < 0 or m > smax:
                        continue
                    dmc = np.float64(np.float32(M * np.float32(m)))
                    _sub_levels(x, xo, ds, dmc, nmax, ql, sub)
                    e = _sub_err(x, xo, wj, ds, dmc, ql, sub)
                    if e < best:
                        best = e
                        bsc = c
                        bm = m
                        for i in range(sub):
                            bq[i] = ql[i]
            sc[j] = bsc
            mn[j] = bm
            for i in range(sub):
                q[sub * j + i] = bq[i]
        # 2. joint (d, dmin) for fixed sc, m, q: minimise sum w (D*a - M*b - x)^2, a = sc*q, b = m
        saa = 0.0
        sab = 0.0
        sbb = 0.0
        sax = 0.0
        sbx = 0.0
        for j in range(nsub):
            for i in range(sub):
                k = sub * j + i
                a = np.float64(sc[j] * q[k])
                b = np.float64(mn[j])
                xi = np.float64(x[o + k])
                wk = w[k]
                saa += wk * a * a
                sab += wk * a * b
                sbb += wk * b * b
                sax += wk * a * xi
                sbx += wk * b * xi
        det = saa * sbb - sab * sab
        if det > 1e-12 * saa * sbb and saa > 0:
            nD = (sax * sbb - sab * sbx) / det
            nM = (sax * sab - saa * sbx) / det
        elif saa > 0:
            nD = sax / saa
            nM = np.float64(M)
        else:
            break
        if not (np.isfinite(nD) and np.isfinite(nM)) or abs(nD) > 6e4 or abs(nM) > 6e4 or nD <= 0:
            break
        nD32 = fp16_round(np.float32(nD))
        nM32 = fp16_round(np.float32(nM))
        # accept the new (D, M) if the requantized super-block is better
        e_old = 0.0
        e_new = 0.0
        for j in range(nsub):
            xo = o + sub * j
            wj = w[sub * j:sub * (j + 1)]
            for i in range(sub):
                ql[i] = q[sub * j + i]
            e_old += _sub_err(x, xo, wj, np.float64(np.float32(D * np.float32(sc[j]))),
                              np.float64(np.float32(M * np.float32(mn[j]))), ql, sub)
            ds = np.float64(np.float32(nD32 * np.float32(sc[j])))
            dm = np.float64(np.float32(nM32 * np.float32(mn[j])))
            _sub_levels(x, xo, ds, dm, nmax, ql, sub)
            e_new += _sub_err(x, xo, wj, ds, dm, ql, sub)
        if e_new < e_old:
            D = nD32
            M = nM32
            for j in range(nsub):
                ds = np.float64(np.float32(D * np.float32(sc[j])))
                dm = np.float64(np.float32(M * np.float32(mn[j])))
                _sub_levels(x, o + sub * j, ds, dm, nmax, ql, sub)
                for i in range(sub):
                    q[sub * j + i] = ql[i]
    return D, M


@njit(**JIT)
def _real_start(x, o, w, nmax, sc, mn, L, bL, nsub, sub, smax):
    """A start for the descent from each sub-block's own best (scale, min) (the Q4_1/Q5_1 search of
    better_legacy, y = s*q - m): d, dmin put the largest of each on code smax. -> (D, M), sc, mn."""
    sr = np.empty(nsub, dtype=np.float64)
    mr = np.empty(nsub, dtype=np.float64)
    smx = 0.0
    mmx = 0.0
    for j in range(nsub):
        e, d, m = search_aff(x, o + sub * j, w[sub * j:sub * (j + 1)], nmax, L, bL, sub)
        sr[j] = np.float64(d) if e < np.inf else 0.0
        mr[j] = -np.float64(m) if e < np.inf else 0.0
        smx = max(smx, sr[j])
        mmx = max(mmx, mr[j])
    D = fp16_round(np.float32(smx / smax))
    M = fp16_round(np.float32(mmx / smax))
    for j in range(nsub):
        sc[j] = min(smax, max(0, int(np.rint(sr[j] / D)))) if D > 0 else 0
        mn[j] = min(smax, max(0, int(np.rint(mr[j] / M)))) if M > 0 else 0
    return D, M


@njit(**JIT)
def pack_k45(out, off, q5, D, M, sc, mn, q, s):
    """Packs a Q4_K / Q5_K super-block with ggml's packers (q in s[S_L] lanes 0..7)."""
    put_f16(out, off + Q4K_D, D)
    put_f16(out, off + Q4K_DMIN, M)
    for j in range(NSUB):
        put_scale_min_k4(j, out, off + Q4K_SCALES, sc[j], mn[j])
    for j in range(NSUB):
        for i in range(SUB):
            s[np.uint64(S_L + i * LANES + j)] = np.float32(q[SUB * j + i])
    if q5:
        pack_q5(s, 0, out, off)
    else:
        pack_q4(s, 0, out, off + Q4K_QS)


@njit(**JIT)
def k45_ggml_start(x, qw, out):
    """ggml's Q4_K / Q5_K blocks of x into out (quantize_q4_k_q5_k), then what a pass over its super-blocks
    needs: (blocks per row, is Q5_K, block bytes, nmax, pack scratch, w, y, tmp block, sc, mn, q, ql)."""
    quantize_q4_k_q5_k(x, qw, out)
    nb = x.shape[1] // QK_K
    q5 = nb > 0 and out.shape[1] == nb * Q5K_BYTES
    bs = Q5K_BYTES if q5 else Q4K_BYTES
    return (nb, q5, bs, 31 if q5 else 15, np.zeros(SCRATCH, dtype=np.float32), np.empty(QK_K, dtype=np.float64),
            np.empty(QK_K, dtype=np.float32), np.empty(bs, dtype=np.uint8), np.empty(NSUB, dtype=np.int32),
            np.empty(NSUB, dtype=np.int32), np.empty(QK_K, dtype=np.int32), np.empty(SUB, dtype=np.int32))


@njit(**JIT)
def k45_ggml_block(xr, o, qw, orow, off, q5, w, u, y, sc, mn):
    """ggml's Q4_K / Q5_K super-block at orow[off:]: its weights into w, the output error's into u (with
    an imatrix; without one u stays the caller's ones), its weighted error E and output error E_u, its
    D and M (returned) and 6-bit scales / mins (into sc, mn). E = 0 means keep ggml's block: exact
    already, NaN input (allow_nonfinite), or a non-finite / non-positive D."""
    k45_weights(xr, o, qw, w)
    if qw.shape[0] != 0:
        out_weights(qw, o, u, QK_K)
    if q5:
        q5_k_dequant_block(orow, off, y, 0)
    else:
        q4_k_dequant_block(orow, off, y, 0, SUB)
    e_g, u_g = werr2(xr, o, w, u, y, QK_K)
    D = get_f16(orow, off + Q4K_D)
    M = get_f16(orow, off + Q4K_DMIN)
    if not e_g > 0 or not (np.isfinite(D) and np.isfinite(M)) or D <= 0:
        return 0.0, u_g, D, M
    for j in range(NSUB):
        sc[j], mn[j] = get_scale_min_k4(j, orow, off + Q4K_SCALES)
    return e_g, u_g, D, M


@njit(**JIT)
def k45_packed_error(tmp, xr, o, w, y, q5, D, M, sc, mn, q, s):
    """Packs the Q4_K / Q5_K super-block (D, M, sc, mn, q) into tmp and returns its weighted error."""
    pack_k45(tmp, 0, q5, D, M, sc, mn, q, s)
    if q5:
        q5_k_dequant_block(tmp, 0, y, 0)
    else:
        q4_k_dequant_block(tmp, 0, y, 0, SUB)
    return werr(xr, o, w, y, QK_K)


@njit(nogil=True, **JIT)
def quantize_q4_k_q5_k_best(x, qw, out):
    """ggml's blocks (quantize_q4_k_q5_k), then each super-block improved where E and the output error
    drop (_accept.better)."""
    nb, q5, bs, nmax, s, w, y, tmp, sc, mn, q, ql = k45_ggml_start(x, qw, out)
    bq = np.empty(SUB, dtype=np.int32)
    L = np.empty(SUB, dtype=np.int32)
    bL = np.empty(SUB, dtype=np.int32)
    u = np.ones(QK_K)
    for r in range(x.shape[0]):
        xr = x[r]
        orow = out[r]
        for b in range(nb):
            o = b * QK_K
            off = b * bs
            e_g, best_u, D, M = k45_ggml_block(xr, o, qw, orow, off, q5, w, u, y, sc, mn)
            if not e_g > 0:
                continue
            for start in range(2):  # 0: from ggml's block; 1: from the real sub-block optima
                if start == 1:
                    D, M = _real_start(xr, o, w, nmax, sc, mn, L, bL, NSUB, SUB, 63)
                    if not D > 0:
                        continue
                D, M = _descent(xr, o, w, nmax, D, M, sc, mn, q, ql, bq, NSUB, SUB, 63)
                e_b = k45_packed_error(tmp, xr, o, w, y, q5, D, M, sc, mn, q, s)
                e_u = werr(xr, o, u, y, QK_K)
                if better(e_b, e_u, e_g, best_u):
                    best_u = e_u
                    orow[off:off + bs] = tmp


# ---------------------------------------------------------------- Q2_K: 16 sub-blocks of 16, 4-bit scales and mins


@njit(**JIT)
def q2_k_weights(x, o, qw, w):
    """ggml's weights of a Q2_K super-block (quantize_row_q2_K_ref: |x|; _impl: qw*sqrt(sum(x^2)/256 + x^2)).
    Unsigned indices, as better_sym's _weights."""
    n = _U(QK_K)
    o = _U(o)
    if qw.shape[0] > 0:
        s2 = 0.0
        for i in range(_U(0), n):
            s2 += np.float64(x[o + i]) * x[o + i]
        for i in range(_U(0), n):
            xi = np.float64(x[o + i])
            w[i] = qw[o + i] * np.sqrt(s2 / QK_K + xi * xi)
    else:
        for i in range(_U(0), n):
            w[i] = abs(np.float64(x[o + i]))


@njit(**JIT)
def q2_k_ggml_start(x, qw, out):
    """ggml's Q2_K blocks of x into out (q2_k.quantize), then what a pass over its super-blocks needs:
    (blocks per row, block bytes, ggml's work area, w, y, tmp block, sc, mn, q, ql)."""
    q2_k.quantize(x, qw, out)
    return (x.shape[1] // QK_K, q2_k.TS, np.zeros(q2_k.WORK, dtype=np.float32), np.empty(QK_K, dtype=np.float64),
            np.empty(QK_K, dtype=np.float32), np.empty(q2_k.TS, dtype=np.uint8), np.empty(16, dtype=np.int32),
            np.empty(16, dtype=np.int32), np.empty(QK_K, dtype=np.int32), np.empty(16, dtype=np.int32))


@njit(**JIT)
def q2_k_ggml_block(xr, o, qw, orow, off, w, y, sc, mn):
    """ggml's Q2_K super-block at orow[off:]: its weights into w, its weighted error E, its D and M (returned)
    and 4-bit scales / mins (into sc, mn). E = 0 means keep ggml's block (as k45_ggml_block)."""
    q2_k_weights(xr, o, qw, w)
    q2_k.dequantize_row_q2_k(orow[off:off + q2_k.TS], y)
    e_g = werr(xr, o, w, y, QK_K)
    D = get_f16(orow, off + q2_k.OFF_D)
    M = get_f16(orow, off + q2_k.OFF_DMIN)
    if not e_g > 0 or not (np.isfinite(D) and np.isfinite(M)) or D <= 0:
        return 0.0, D, M
    for j in range(16):
        v = np.int32(orow[off + q2_k.OFF_SC + j])
        sc[j] = v & 0xF
        mn[j] = v >> 4
    return e_g, D, M


@njit(**JIT)
def q2_k_packed_error(tmp, wk, xr, o, w, y, D, M, sc, mn):
    """Packs a Q2_K super-block with ggml's tail (d, dmin, scales, then the nearest levels for the stored
    values and the qs packing: q2_k.requantize_pack) into tmp and returns its weighted error."""
    put_f16(tmp, q2_k.OFF_D, D)
    put_f16(tmp, q2_k.OFF_DMIN, M)
    for j in range(16):
        tmp[q2_k.OFF_SC + j] = np.uint8(sc[j] | (mn[j] << 4))
    q6_k.load_block(xr, o, wk, q6_k.W_XT, q6_k.W_X)
    wk[q6_k.W_L:q6_k.W_L + QK_K] = 0
    q2_k.requantize_pack(wk, tmp, 0)
    q2_k.dequantize_row_q2_k(tmp, y)
    return werr(xr, o, w, y, QK_K)


@njit(nogil=True, **JIT)
def quantize_q2_k_best(x, qw, out):
    """ggml's blocks (q2_k.quantize), then each super-block improved where E and the output error
    drop (_accept.better)."""
    nb, bs, wk, w, y, tmp, sc, mn, q, ql = q2_k_ggml_start(x, qw, out)
    bq = np.empty(16, dtype=np.int32)
    u = np.empty(QK_K)
    for r in range(x.shape[0]):
        xr = x[r]
        orow = out[r]
        for b in range(nb):
            o = b * QK_K
            off = b * bs
            e_g, D, M = q2_k_ggml_block(xr, o, qw, orow, off, w, y, sc, mn)
            if not e_g > 0:
                continue
            out_weights(qw, o, u, QK_K)
            best_u = werr(xr, o, u, y, QK_K)
            for start in range(2):  # 0: from ggml's block; 1: from the real sub-block optima
                if start == 1:
                    D, M = _real_start(xr, o, w, 3, sc, mn, ql, bq, 16, 16, 15)
                    if not D > 0:
                        continue
                D, M = _descent(xr, o, w, 3, D, M, sc, mn, q, ql, bq, 16, 16, 15)
                e_b = q2_k_packed_error(tmp, wk, xr, o, w, y, D, M, sc, mn)
                e_u = werr(xr, o, u, y, QK_K)
                if better(e_b, e_u, e_g, best_u):
                    best_u = e_u
                    orow[off:off + bs] = tmp


BEST = {QType.Q4_K: quantize_q4_k_q5_k_best, QType.Q5_K: quantize_q4_k_q5_k_best, QType.Q2_K: quantize_q2_k_best}
