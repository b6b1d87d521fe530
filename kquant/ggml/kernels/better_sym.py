"""`rounding="best"` for the symmetric k-quants Q3_K and Q6_K (y = d * sc_j * l, 16 sub-blocks of
16 values): a stronger search for d and the sub-block scales in ggml's format.

Not a port: ggml's bytes come first (kquant.ggml.kernels.q3_k / q6_k), then each super-block is
searched again for the weighted squared error E = sum w (y - x)^2 that ggml's search targets:
  Q3_K  quantize_row_q3_K_ref: w = x^2 (make_q3_quants)    _impl: w = qw * sqrt(2*sum(x^2)/256 + x^2)
  Q6_K  quantize_row_q6_K_ref: w = x^2 (make_qx_quants)    _impl: w = qw

1. each sub-block's best real scale s_j: N_CAND inverse scales per sign (the largest |x| mapped
   near either end of the level range), nearest levels, the weighted least-squares scale;
2. candidate d: ggml's, and fp16(s_big / c) for the largest |s_j| mapped onto scale codes c
   near either end of the scale range (D_STEPS of them per end);
3. for each d: each sub-block takes the best of round(s_j/d) - 1 .. + 1 and ggml's own code
   (levels always the nearest), then d is refitted by weighted least squares (fp16) and kept if
   E drops.
The best (d, scales) are packed by ggml's own tail (q3_k.requantize_pack,
q6_k.requantize_pack_q6: nearest levels against the stored values, then the bit packing), decoded
with kquant's dequantizer, and replace ggml's block under _accept's rule (lower in E and in the
output error).
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import njit

from ..types import QK_K, QType
from . import q3_k, q6_k
from ._common import fp16_round, get_f16, put_f16
from ._accept import better, out_weights
from ._sweep import _U, fp16_near, sym_sweep, werr

# scratch of the exact searches (_sweep.sym_sweep): breakpoints, their elements, levels, the
# sweep's top steps and scores, the sub-block curvatures, the d candidates and their scores
Scratch = namedtuple("Scratch", "ts idx Lf cs cv hcurv dcs dcv")

N_CAND = 12  # Q6_K: inverse scales tried per sign, per sub-block
K_D = 4  # Q3_K: d candidates of the exact sweep over the sub-block steps (each with 2 fp16 neighbours)
D_STEPS = 4  # super-block scales tried per end of the scale range
NSUB = 16
SUB = 16
JIT = dict(cache=True, no_cfunc_wrapper=True, error_model="numpy")


@njit(inline="always", **JIT)  # called per sub-block with slices: inlined, no call or view costs
def _levels(x, o, s, lo, hi, L):
    """Nearest levels of 16 values for the step s (0 -> all 0)."""
    if s == 0.0 or not np.isfinite(s):
        for i in range(SUB):
            L[i] = 0
        return
    inv = 1.0 / s
    for i in range(SUB):
        v = np.rint(np.float64(x[o + i]) * inv)
        L[i] = np.int32(min(np.float64(hi), max(np.float64(lo), v)))


@njit(inline="always", **JIT)  # called per sub-block with slices: inlined, no call or view costs
def _err(x, o, w, s32, L):
    """E of one sub-block for the float32 step s32 (as the dequantizer multiplies it)."""
    e = 0.0
    for i in range(SUB):
        r = np.float64(np.float32(s32 * np.float32(L[i]))) - np.float64(x[o + i])
        e += w[i] * r * r
    return e


@njit(**JIT)
def _best_real_scale(x, o, w, lo, hi, L):
    """The best real step of one sub-block (see the module docstring, step 1)."""
    amax = 0.0
    mx = 0.0
    for i in range(SUB):
        a = abs(np.float64(x[o + i]))
        if a > amax:
            amax = a
            mx = np.float64(x[o + i])
    if amax == 0.0:
        return 0.0
    best = np.inf
    bs = 0.0
    for side in range(2):
        top = np.float64(-lo) if side == 0 else np.float64(hi)
        sgn = -1.0 if side == 0 else 1.0
        for k in range(N_CAND):
            c = top + 0.5 - (top * 0.5 + 0.5) * k / N_CAND
            _levels(x, o, sgn * mx / c, lo, hi, L)
            sxl = 0.0
            sll = 0.0
            for i in range(SUB):
                sxl += w[i] * np.float64(x[o + i]) * L[i]
                sll += w[i] * np.float64(L[i]) * L[i]
            if not sll > 0:
                continue
            s = sxl / sll
            _levels(x, o, s, lo, hi, L)
            e = 0.0
            for i in range(SUB):
                r = s * L[i] - np.float64(x[o + i])
                e += w[i] * r * r
            if e < best:
                best = e
                bs = s
    return bs


@njit(**JIT)
def _assign(x, o, w, D, sreal, sc0, sclo, schi, lo, hi, sc, L):
    """Best scale code per sub-block for the super-block scale D; returns the total E."""
    total = 0.0
    for j in range(NSUB):
        xo = o + SUB * j
        wj = w[SUB * j:SUB * (j + 1)]
        c0 = int(np.rint(sreal[j] / D)) if abs(sreal[j] / D) < 1e6 else 0
        best = np.inf
        bc = sc0[j]
        for t in range(4):
            c = sc0[j] if t == 3 else c0 - 1 + t
            c = min(schi, max(sclo, c))
            s32 = np.float32(D * np.float32(c))
            _levels(x, xo, np.float64(s32), lo, hi, L)
            e = _err(x, xo, wj, s32, L)
            if e < best:
                best = e
                bc = c
        sc[j] = bc
        total += best
    return total


@njit(**JIT)
def _refit(x, o, w, D, sc, lo, hi, L):
    """Weighted least-squares d for the scale codes sc and their nearest levels -> (fp16 d, E)."""
    sax = 0.0
    saa = 0.0
    for j in range(NSUB):
        xo = o + SUB * j
        s32 = np.float32(D * np.float32(sc[j]))
        _levels(x, xo, np.float64(s32), lo, hi, L)
        for i in range(SUB):
            a = np.float64(sc[j] * L[i])
            sax += w[SUB * j + i] * a * np.float64(x[xo + i])
            saa += w[SUB * j + i] * a * a
    if not saa > 0:
        return D, np.inf
    nD = fp16_round(np.float32(sax / saa))
    if nD == 0 or not np.isfinite(nD):
        return D, np.inf
    e = 0.0
    for j in range(NSUB):
        xo = o + SUB * j
        s32 = np.float32(nD * np.float32(sc[j]))
        _levels(x, xo, np.float64(s32), lo, hi, L)
        e += _err(x, xo, w[SUB * j:SUB * (j + 1)], s32, L)
    return nD, e


@njit(**JIT)
def _exact_real_scale(x, o, w, lo, hi, L, sw):
    """The exact best real step of one sub-block (_sweep.sym_sweep) and, through hcurv, the
    curvature sum w l^2 of its error there (0 for an all-zero sub-block)."""
    k = sym_sweep(x, o, w, 0, SUB, lo, hi, 1, sw.ts, sw.idx, sw.Lf, sw.cs, sw.cv)
    if k == 0:
        return 0.0, 0.0
    s = sw.cs[0]
    _levels(x, o, s, lo, hi, L)
    h = 0.0
    for i in range(SUB):
        h += w[i] * np.float64(L[i]) * L[i]
    return s, h


@njit(**JIT)
def _search(x, o, w, D0, sc0, sclo, schi, lo, hi, sreal, sc, bsc, L, exact, sw):
    """Best (d, scale codes) of one super-block -> bsc; returns d (fp16-exact)."""
    smax = 0.0
    sbig = 0.0
    for j in range(NSUB):
        if exact:
            sreal[j], sw.hcurv[j] = _exact_real_scale(x, o + SUB * j, w[SUB * j:SUB * (j + 1)], lo, hi, L, sw)
        else:
            sreal[j] = _best_real_scale(x, o + SUB * j, w[SUB * j:SUB * (j + 1)], lo, hi, L)
        if abs(sreal[j]) > smax:
            smax = abs(sreal[j])
            sbig = sreal[j]
    best = _assign(x, o, w, D0, sreal, sc0, sclo, schi, lo, hi, bsc, L)
    bD = D0
    if smax == 0.0:
        return bD
    nexact = 0
    if exact:
        # d for the scale codes: the same exact sweep on the sub-block steps, each weighted by
        # its error's curvature (E_j(s) ~ E_j(s_j) + h_j (s - s_j)^2), K_D best steps x 3 fp16
        nexact = 3 * sym_sweep(sreal, 0, sw.hcurv, 0, NSUB, sclo, schi, K_D, sw.ts, sw.idx, sw.Lf, sw.dcs, sw.dcv)
    for k in range(2 * D_STEPS + 1 + nexact):
        if k == 2 * D_STEPS:
            D = D0
        elif k > 2 * D_STEPS:
            D = fp16_near(sw.dcs[(k - 2 * D_STEPS - 1) // 3], (k - 2 * D_STEPS - 1) % 3)
        else:
            end = np.float64(sclo) if k < D_STEPS else np.float64(schi)
            c = end + (0.5 if end < 0 else -0.5) * (k % D_STEPS)
            D = fp16_round(np.float32(sbig / c))
        if D == 0 or not np.isfinite(D):
            continue
        e = _assign(x, o, w, D, sreal, sc0, sclo, schi, lo, hi, sc, L)
        if e < best:
            best = e
            bD = D
            for j in range(NSUB):
                bsc[j] = sc[j]
        nD, e2 = _refit(x, o, w, D, sc, lo, hi, L)
        if e2 < best:
            best = e2
            bD = nD
            for j in range(NSUB):
                bsc[j] = sc[j]
    return bD


@njit(**JIT)
def _weights(x, o, qw, w, q6):
    """ggml's weights of the super-block x[o:o+256] into w (unsigned indices: signed ones keep numba's
    negative-index test on every load, and the loops did not vectorize)."""
    n = _U(QK_K)
    o = _U(o)
    if qw.shape[0] == 0:
        for i in range(_U(0), n):
            w[i] = np.float64(x[o + i]) * x[o + i]
    elif q6:
        for i in range(_U(0), n):
            w[i] = qw[o + i]
    else:
        s2 = 0.0
        for i in range(_U(0), n):
            s2 += np.float64(x[o + i]) * x[o + i]
        for i in range(_U(0), n):
            xi = np.float64(x[o + i])
            w[i] = qw[o + i] * np.sqrt(2.0 * s2 / QK_K + xi * xi)


@njit(**JIT)
def ggml_block(blk, y, sc, q6):
    """ggml's Q6_K (q6) or Q3_K super-block blk: decoded into y, its 16 scale codes into sc; returns its d."""
    if q6:
        q6_k.dequantize_row_q6_k(blk, y)
        for j in range(NSUB):
            sc[j] = np.int32(np.int8(blk[q6_k.OFF_SC + j]))
        return get_f16(blk, q6_k.OFF_D)
    q3_k.dequantize_row_q3_k(blk, y)
    for j in range(NSUB):
        sc[j] = q3_k.scale6(blk, q3_k.OFF_SC, j)
    return get_f16(blk, q3_k.OFF_D)


@njit(**JIT)
def pack_block(tmp, xr, o, wk, D, sc, q6, y):
    """The super-block of xr[o:o+256] with d = D and scale codes sc, packed into tmp by ggml's own tail
    (nearest levels against the stored values, then the bit packing; wk: its work area), and decoded
    into y."""
    q6_k.load_block(xr, o, wk, q6_k.W_XT, q6_k.W_X)
    wk[q6_k.W_L:q6_k.W_L + QK_K] = 0
    if q6:
        put_f16(tmp, q6_k.OFF_D, D)
        for j in range(NSUB):
            tmp[q6_k.OFF_SC + j] = np.uint8(sc[j] & 0xFF)
        q6_k.requantize_pack_q6(wk, tmp, 0)
        q6_k.dequantize_row_q6_k(tmp, y)
    else:
        put_f16(tmp, q3_k.OFF_D, D)
        for k in range(12):
            tmp[q3_k.OFF_SC + k] = 0
        for j in range(NSUB):
            q3_k.put_scale6(tmp, q3_k.OFF_SC, j, np.int32(sc[j] + 32))
        q3_k.requantize_pack(wk, tmp, 0)
        q3_k.dequantize_row_q3_k(tmp, y)


@njit(nogil=True, **JIT)
def quantize_sym_best(x, qw, out, q6):
    """ggml's blocks, then each super-block replaced where the searched one is better (_accept.better)."""
    if q6:
        q6_k.quantize(x, qw, out)
        bs, lo, hi, sclo, schi = q6_k.TS, -32, 31, -128, 127
    else:
        q3_k.quantize(x, qw, out)
        bs, lo, hi, sclo, schi = q3_k.TS, -4, 3, -32, 31
    nb = x.shape[1] // QK_K
    wk = np.zeros(q6_k.WORK, dtype=np.float32)
    w = np.empty(QK_K, dtype=np.float64)
    u = np.empty(QK_K, dtype=np.float64)
    y = np.empty(QK_K, dtype=np.float32)
    tmp = np.empty(bs, dtype=np.uint8)
    sreal = np.empty(NSUB, dtype=np.float64)
    sc0 = np.empty(NSUB, dtype=np.int32)
    sc = np.empty(NSUB, dtype=np.int32)
    bsc = np.empty(NSUB, dtype=np.int32)
    L = np.empty(SUB, dtype=np.int32)
    sw = Scratch(np.empty(NSUB * 32, dtype=np.float64), np.empty(NSUB * 32, dtype=np.int64),
                 np.empty(NSUB, dtype=np.float64), np.empty(1, dtype=np.float64), np.empty(1, dtype=np.float64),
                 np.empty(NSUB, dtype=np.float64), np.empty(K_D, dtype=np.float64), np.empty(K_D, dtype=np.float64))
    for r in range(x.shape[0]):
        xr = x[r]
        orow = out[r]
        for b in range(nb):
            o = b * QK_K
            off = b * bs
            _weights(xr, o, qw, w, q6)
            D0 = ggml_block(orow[off:off + bs], y, sc0, q6)
            e_g = werr(xr, o, w, y, QK_K)
            if not e_g > 0 or not np.isfinite(D0) or D0 == 0:
                continue
            out_weights(qw, o, u, QK_K)
            u_g = werr(xr, o, u, y, QK_K)
            for j in range(NSUB):
                bsc[j] = sc0[j]
            D = _search(xr, o, w, D0, sc0, sclo, schi, lo, hi, sreal, sc, bsc, L, not q6, sw)
            pack_block(tmp, xr, o, wk, D, bsc, q6, y)
            if better(werr(xr, o, w, y, QK_K), werr(xr, o, u, y, QK_K), e_g, u_g):
                orow[off:off + bs] = tmp


@njit(nogil=True, **JIT)
def quantize_q3_k_best(x, qw, out):
    quantize_sym_best(x, qw, out, False)


@njit(nogil=True, **JIT)
def quantize_q6_k_best(x, qw, out):
    quantize_sym_best(x, qw, out, True)


BEST = {QType.Q3_K: quantize_q3_k_best, QType.Q6_K: quantize_q6_k_best}
