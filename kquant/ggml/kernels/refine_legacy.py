"""`rounding="refine"` for the legacy 32-wide types Q4_0, Q5_0, Q8_0 (y = d*l) and Q4_1, Q5_1
(y = d*q + m): ggml's block improved by a bounded, vectorized refit (cost: below).

Not a port: ggml's block comes first (kquant.ggml.kernels.legacy's exact port; for Q4_0 .. Q5_1
without an imatrix the same operations in place, its bytes written only where it stays), then each
block is refitted for the weighted squared error E = sum w (y - x)^2 that better_legacy targets (ggml's
weighted path: w = qw * sqrt(sigma2 + x^2), sigma2 = sum(x^2)/n over the row; without an imatrix
w = 1; Q8_0 w = qw or 1). From ggml's levels (read back from its decoded values), N_ITER Lloyd
steps: the weighted least-squares d (and m) for the current levels (closed form: d = Sxl/Sll;
the 2x2 normal equations for d, m), stored as fp16, then the nearest levels against the stored
values, E exact (the dequantizer's float32 arithmetic). A step's (d, m) replaces ggml's block under
_accept's rule (E and the output error both lower; of those, the lowest output error): no block
gets worse in either.

Three paths. Where E is also the output error (no imatrix, w = 1; Q8_0, w = qw), `_refine_one`
(y = d*l) works block by block from ggml's levels and d (sums of w*x*l, w*l*l, w*x*x: ggml's E and
the fit in closed form), and the decision needs no second pass (a closed form with its rounding
bounded; see there); `_refine_affine` (Q4_1, Q5_1) computes ggml's blocks itself, fused
with the refit's sums, and tests each refit exactly unless a closed form with its rounding bounded
certifies that it passes (`_certified`: 99.8% / 99.4% of the refits kept on bench_rounding's tensors).
With an imatrix (Q4_0 .. Q5_1: two errors to lower), LANES blocks of a row are refitted at once,
one block per vector lane, every sum accumulated per lane in element order. Either way the result
is the same on every machine and thread count. Cost against ggml's own kernel
(`bench_rounding.py --rounding refine`, one thread): the README's table (ggml's kernels without an
imatrix are one pass over a block, about 10 ns).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..types import QK, QType
from ._accept import MARGIN
from ._common import fp16_round, get_f16, level, put_f16, sel
from .better_legacy import K_Q4_0, K_Q4_1, K_Q5_0, K_Q5_1, K_Q8_0, _dequant, _pack, put_header, put_nibbles, put_qh
from .legacy import (
    Q4_0_D,
    Q4_0_QS,
    Q4_1_D,
    Q4_1_M,
    Q5_0_D,
    Q5_0_QS,
    Q5_1_D,
    Q5_1_M,
    Q8_0_D,
    Q8_0_QS,
    quantize_q4_0,
    quantize_q4_1,
    quantize_q5_0,
    quantize_q5_1,
    quantize_q8_0,
    quantize_row_q4_0_ref,
    quantize_row_q4_1_ref,
    quantize_row_q5_0_ref,
    quantize_row_q5_1_ref,
)
from .legacy import _ABS as ABS
from .legacy import _argmax_abs_seq as argmax_abs_seq
from .legacy import _INF_BITS as INF_BITS
from .legacy import _NEG_INF_KEY as NEG_INF_KEY
from .legacy import _order_key as order_key
from .legacy import minmax_keys

U = np.uint64
LANES = 16  # blocks refitted at once
N_ITER = 1  # least-squares refits (Lloyd steps) per block on the imatrix path (_refine_one makes one)
JIT = dict(cache=True, no_cfunc_wrapper=True, error_model="numpy")
_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
BS_Q4_1 = QType.Q4_1.type_size
BS_Q5_1 = QType.Q5_1.type_size


@njit(**JIT)
def _solve(n, affine, sw, sl, sll, sx, sxl, cd, cm, ci, ok):
    """Per lane: the weighted least-squares d (and m) for the current levels, as fp16 values ->
    cd, cm; ci = 1/d; ok = usable."""
    for j in range(n):
        if affine:
            det = sw[j] * sll[j] - sl[j] * sl[j]
            good = det > 1e-12 * sw[j] * sll[j]
            d = (sw[j] * sxl[j] - sx[j] * sl[j]) / det
            m = (sll[j] * sx[j] - sl[j] * sxl[j]) / det
        else:
            good = sll[j] > 0
            d = sxl[j] / sll[j]
            m = 0.0
        d16 = fp16_round(np.float32(d)) if good and np.isfinite(d) and abs(d) < 65504.0 else _F0
        m16 = fp16_round(np.float32(m)) if good and np.isfinite(m) and abs(m) < 65504.0 else _F0
        ok[j] = d16 != 0 and (d16 > 0 or not affine)
        cd[j] = d16
        cm[j] = m16
        ci[j] = _F1 / d16 if ok[j] else _F0


@njit(inline="always", **JIT)
def refine_legacy(kind, x, qw, out):
    """ggml's blocks, then each block replaced where a least-squares refit lowers E and the output error.
    Inlined into each type's kernel with `kind` a constant (kernels/__init__.py: kind dispatch)."""
    weighted = qw.shape[0] > 0
    if kind == K_Q4_0:
        if weighted:
            quantize_q4_0(x, qw, out)
            _refine_weighted(kind, x, qw, out, -8, 7, 18, Q4_0_D, Q4_0_D)
        else:  # one error to lower (w = 1), y = d*l; ggml's blocks are computed there
            _refine_one(kind, x, qw, out, -8, 7, 18, Q4_0_D)
    elif kind == K_Q5_0:
        if weighted:
            quantize_q5_0(x, qw, out)
            _refine_weighted(kind, x, qw, out, -16, 15, 22, Q5_0_D, Q5_0_D)
        else:
            _refine_one(kind, x, qw, out, -16, 15, 22, Q5_0_D)
    elif kind == K_Q4_1:
        if weighted:
            quantize_q4_1(x, qw, out)
            _refine_weighted(kind, x, qw, out, 0, 15, 20, Q4_1_D, Q4_1_M)
        else:  # ggml's blocks are computed there, written only where they stay
            _refine_affine(kind, x, out)
    elif kind == K_Q5_1:
        if weighted:
            quantize_q5_1(x, qw, out)
            _refine_weighted(kind, x, qw, out, 0, 31, 24, Q5_1_D, Q5_1_M)
        else:
            _refine_affine(kind, x, out)
    else:  # Q8_0: one error to lower (w = qw or 1), y = d*l
        quantize_q8_0(x, qw, out)
        _refine_one(kind, x, qw, out, -128, 127, 34, Q8_0_D)


@njit(**JIT)
def _refine_weighted(kind, x, qw, out, lo, hi, bs, doff, moff):
    """Q4_0 .. Q5_1 with an imatrix: E's weights differ from the output error's, both are tested."""
    affine = kind == K_Q4_1 or kind == K_Q5_1
    ncols = x.shape[1]
    nb = ncols // QK
    P = QK * LANES
    X = np.empty(P, dtype=np.float32)
    W = np.empty(P, dtype=np.float64)
    Wu = np.empty(P, dtype=np.float64)  # the output error's weights (_accept.out_weights)
    yrow = np.empty(ncols, dtype=np.float32)
    f64 = lambda: np.zeros(LANES, dtype=np.float64)  # noqa: E731
    eg, e, sw, sl, sll, sx, sxl = f64(), f64(), f64(), f64(), f64(), f64(), f64()
    ug, bu, eu = f64(), f64(), f64()
    cd = np.zeros(LANES, dtype=np.float32)
    cm = np.zeros(LANES, dtype=np.float32)
    ci = np.zeros(LANES, dtype=np.float32)
    bd = np.zeros(LANES, dtype=np.float32)
    bm = np.zeros(LANES, dtype=np.float32)
    ok = np.zeros(LANES, dtype=np.bool_)
    codes = np.empty(QK, dtype=np.int32)
    flo = np.float32(lo)
    for r in range(x.shape[0]):
        xr = x[r]
        orow = out[r]
        _dequant(kind, orow, yrow)
        sigma2 = 0.0
        for i in range(ncols):
            sigma2 += np.float64(xr[i]) * xr[i]
        sigma2 /= ncols
        for c0 in range(0, nb, LANES):
            n = min(LANES, nb - c0)
            nu = U(n)
            # ggml's d, m per lane -> the inverse step to read its levels back
            for j in range(n):
                p = (c0 + j) * bs
                ug[j] = 0.0
                cd[j] = get_f16(orow, p + doff)
                cm[j] = get_f16(orow, p + moff) if affine else _F0
                ci[j] = _F1 / cd[j] if cd[j] != 0 else _F0
                eg[j] = 0.0
                sw[j] = 0.0
                sl[j] = 0.0
                sll[j] = 0.0
                sx[j] = 0.0
                sxl[j] = 0.0
            # ggml's weights (float64, as tests/objective.py)
            for i in range(QK):
                for j in range(nu):
                    src = U((c0 + np.int64(j)) * QK + i)
                    q = np.float64(qw[src])
                    xd = np.float64(xr[src])
                    W[U(i * LANES) + j] = q * np.sqrt(sigma2 + xd * xd)
                    Wu[U(i * LANES) + j] = q
            # transpose, E of ggml's block and the sums of its levels
            for i in range(QK):
                for j in range(nu):
                    src = U((c0 + np.int64(j)) * QK + i)
                    k = U(i * LANES) + j
                    xv = xr[src]
                    X[k] = xv
                    xd = np.float64(xv)
                    yv = yrow[src]
                    wk = W[k]
                    rr = np.float64(yv) - xd
                    eg[j] += wk * rr * rr
                    ug[j] += Wu[k] * rr * rr
                    fl = np.float64(level((yv - cm[j]) * ci[j], lo, hi))
                    sw[j] += wk
                    sl[j] += wk * fl
                    sll[j] += wk * fl * fl
                    sx[j] += wk * xd
                    sxl[j] += wk * xd * fl
            for j in range(n):
                bu[j] = ug[j]
                bd[j] = _F0
                bm[j] = _F0
            for _ in range(N_ITER):
                _solve(n, affine, sw, sl, sll, sx, sxl, cd, cm, ci, ok)
                for j in range(n):
                    e[j] = 0.0
                    eu[j] = 0.0
                    sw[j] = 0.0
                    sl[j] = 0.0
                    sll[j] = 0.0
                    sx[j] = 0.0
                    sxl[j] = 0.0
                for i in range(QK):
                    for j in range(nu):
                        k = U(i * LANES) + j
                        xv = X[k]
                        xd = np.float64(xv)
                        wk = W[k]
                        f = level((xv - cm[j]) * ci[j], lo, hi)
                        yv = np.float32(f * cd[j]) + cm[j]  # the dequantizer's float32 (cm = 0 for y = d*l)
                        rr = np.float64(yv) - xd
                        e[j] += wk * rr * rr
                        eu[j] += Wu[k] * rr * rr
                        fl = np.float64(f)
                        sw[j] += wk
                        sl[j] += wk * fl
                        sll[j] += wk * fl * fl
                        sx[j] += wk * xd
                        sxl[j] += wk * xd * fl
                for j in range(n):
                    # _accept.better, per lane: E below ggml's block's, output error below the kept one's
                    take = ok[j] and e[j] < eg[j] * (1.0 - MARGIN) and eu[j] < bu[j] * (1.0 - MARGIN)
                    bu[j] = sel(take, eu[j], bu[j])
                    bd[j] = sel(take, cd[j], bd[j])
                    bm[j] = sel(take, cm[j], bm[j])
            # write the lanes that beat ggml's block
            for j in range(n):
                if bd[j] == 0:
                    continue
                inv = _F1 / bd[j]
                for i in range(QK):
                    f = level((X[U(i * LANES + j)] - bm[j]) * inv, lo, hi)
                    codes[i] = np.int32(f - flo) if (kind == K_Q4_0 or kind == K_Q5_0) else np.int32(f)
                _pack(kind, orow, (c0 + j) * bs, bd[j], bm[j], codes)


# how far from a tie level() can round wrongly: x * fl(1/d) is within 2.01 * 2^-24 * |x/d| of x/d, so a
# level off the nearest one costs at most 4.02 * 2^-24 * |x/d| * d^2 more squared error (|x/d| <= 1 - lo)
TIE = 4.1 * 2.0**-24


@njit(inline="always", **JIT)
def _oct(P, z):
    """sum(P[z:z+8]) in a fixed order (the same on every machine)."""
    return ((P[z] + P[z + 4]) + (P[z + 2] + P[z + 6])) + ((P[z + 1] + P[z + 5]) + (P[z + 3] + P[z + 7]))


@njit(inline="always", **JIT)
def _quad(P, z):
    """sum(P[z:z+4]) in a fixed order (the same on every machine)."""
    return (P[z] + P[z + 2]) + (P[z + 1] + P[z + 3])


@njit(inline="always", **JIT)
def _write(kind, orow, p, xr, o, d16, lo, hi, n16):
    """y = d*l (Q4_0, Q5_0, Q8_0): the block at orow[p:] for xr[o:o+32], d16 and the nearest levels, in
    better_legacy._pack's layout; n16 = 16. Inlined (called per block as a function taking arrays,
    the same loop took 9x as long in a test) and with unsigned indices (signed ones keep numba's
    wraparound test, which left the vectorized loop storing byte by byte: 15% of the Q4_0 kernel)."""
    ci = _F1 / d16
    p = U(p)
    o = U(o)
    nu = U(n16)
    qs = put_header(kind, orow, p, d16, _F0)
    if kind == K_Q8_0:
        for i in range(nu + nu):
            orow[qs + i] = np.uint8(np.int32(level(xr[o + i] * ci, lo, hi)) & 0xFF)
        return
    off = np.int32(lo)  # stored code = level - lo
    qh = np.uint32(0)
    for j in range(nu):
        a = np.uint32(np.int32(level(xr[o + j] * ci, lo, hi)) - off)
        b = np.uint32(np.int32(level(xr[o + j + U(16)] * ci, lo, hi)) - off)
        qh = put_nibbles(orow, qs, j, a, b, qh, kind == K_Q5_0)
    if kind == K_Q5_0:
        put_qh(kind, orow, p, qh)


@njit(inline="always", **JIT)
def _levels(xr, o, d16, m16, lo, hi, F, n32):
    """F[:32] = the nearest levels of xr[o:o+32] at d16 and m16 (y = d*q + m); n32 = 32."""
    ci = _F1 / d16
    o = U(o)
    for i in range(U(n32)):
        F[i] = level((xr[o + i] - m16) * ci, lo, hi)


@njit(inline="always", **JIT)
def _write_affine(kind, orow, p, F, d16, m16, n16):
    """y = d*q + m (Q4_1, Q5_1): the block at orow[p:] with d16, m16 and the levels F[:32] (as _write)."""
    p = U(p)
    nu = U(n16)
    qs = put_header(kind, orow, p, d16, m16)
    qh = np.uint32(0)
    for j in range(nu):
        qh = put_nibbles(orow, qs, j, np.uint32(np.int32(F[j])), np.uint32(np.int32(F[j + nu])), qh, kind == K_Q5_1)
    if kind == K_Q5_1:
        put_qh(kind, orow, p, qh)


@njit(inline="always", **JIT)
def _write_affine_x(kind, orow, p, xr, o, d16, m16, hi, n16):
    """_levels then _write_affine in one pass, without the levels' scratch: the same bytes (Q4_1 5%
    faster in _refine_affine, where nearly every refit is certified and written this way)."""
    p = U(p)
    o = U(o)
    nu = U(n16)
    ci = _F1 / d16
    qs = put_header(kind, orow, p, d16, m16)
    qh = np.uint32(0)
    for j in range(nu):
        a = np.uint32(np.int32(level((xr[o + j] - m16) * ci, 0, hi)))
        b = np.uint32(np.int32(level((xr[o + j + nu] - m16) * ci, 0, hi)))
        qh = put_nibbles(orow, qs, j, a, b, qh, kind == K_Q5_1)
    if kind == K_Q5_1:
        put_qh(kind, orow, p, qh)


@njit(inline="always", **JIT)
def amax_first(x, xb, o, qk):
    """(max, m) of quantize_row_q4_0_ref / q5_0_ref's search over x[o:o+qk]: the first v of largest
    |v| (NaNs skipped, 0 if none; xb = x's bits), and m the largest |v|'s bits (a NaN's when above
    INF_BITS). qk unknown to the compiler (a literal 32 unrolls both loops to scalar code). ggml's
    row kernels (legacy.py) keep the same lines inline: this helper inlined there made them 8-10%
    slower (in-process A/B, same bytes)."""
    m = np.int32(0)
    for j in range(qk):
        m = max(m, np.int32(xb[o + j] & ABS))
    if m > INF_BITS:  # a NaN: the sequential loop
        mx = argmax_abs_seq(x, o, qk)
    elif m == 0:
        mx = _F0
    else:
        first = np.uint32(qk)
        for j in range(qk):
            first = min(first, np.uint32(j) if np.int32(xb[o + j] & ABS) == m else np.uint32(qk))
        mx = x[o + U(first)]
    return mx, m


@njit(**JIT)
def _ggml_row_values(xr, xb, nb, k8, lo, hi, lrow, RD, RI, RDG, RG):
    """Q4_0 / Q5_0 (quantize_row_q4_0_ref / q5_0_ref), not written: per block of the row xr (bits xb)
    ggml's d, 1/d and fp16 d (RD, RI, RDG), whether its block can be rebuilt from them (RG: finite,
    nonzero, in fp16's range; else _ggml_row_write copies ggml's own), and its levels code + lo into
    lrow (as float32): the same float32 operations as ggml's code (trunc is floor here: the argument
    is > 0). The scales first, in a loop of their own (it vectorizes)."""
    flo = np.float32(lo)
    goff = np.float32(0.5 - lo)  # ggml's code: (int8_t)(x/d + 8.5f), at most 15 (Q5_0: 16.5f, 31)
    ftop = np.float32(hi - lo)
    n = U(4 * k8)
    for b in range(nb):
        mx, m = amax_first(xr, xb, U(b * QK), n)
        d = mx / flo
        id_ = _F1 / d if d != _F0 else _F0
        dg = fp16_round(d)
        RG[b] = m > 0 and m < INF_BITS and d != _F0 and abs(id_) < np.inf and abs(dg) <= 65504.0
        RD[b] = d
        RI[b] = id_
        RDG[b] = dg
    for b in range(nb):
        o = U(b * QK)
        id_ = RI[b]
        for i in range(n):
            lrow[o + i] = min(ftop, np.floor(xr[o + i] * id_ + goff)) + flo


@njit(**JIT)
def _ggml_row_write(five, xr, orow, nb, bs, k8, lo, RD, RI, RG, TK, grow):
    """ggml's Q4_0 / Q5_0 (five) blocks of the row where no refit was written (TK false): rebuilt from
    d and 1/d as quantize_row_q4_0_ref / q5_0_ref compute them where RG (finite values: the casts need
    no emulation), else copied from that function's row (computed once, into grow)."""
    have_g = False
    off = np.float32(0.5 - lo)
    top = np.int32(-2 * lo - 1)
    n16 = U(2 * k8)
    for b in range(nb):
        if TK[b]:
            continue
        p = U(b * bs)
        if RG[b]:
            o = U(b * QK)
            id_ = RI[b]
            put_f16(orow, p + (Q5_0_D if five else Q4_0_D), RD[b])
            qs = p + (Q5_0_QS if five else Q4_0_QS)
            qh = np.uint32(0)
            for j in range(n16):
                a = np.uint32(min(top, np.int32(xr[o + j] * id_ + off)))
                c = np.uint32(min(top, np.int32(xr[o + j + U(16)] * id_ + off)))
                qh = put_nibbles(orow, qs, j, a, c, qh, five)
            if five:
                put_qh(K_Q5_0, orow, p, qh)
        else:
            if not have_g:
                if five:
                    quantize_row_q5_0_ref(xr, grow)
                else:
                    quantize_row_q4_0_ref(xr, grow)
                have_g = True
            for i in range(p, p + U(bs)):
                orow[i] = grow[i]


@njit(inline="always", **JIT)
def _ggml_e_bound(kind, G, d):
    """An upper bound on (G*l - x)^2 for every value of a Q4_0 / Q5_0 / Q8_0 block, so ggml's E =
    sum w (G*l - x)^2 is at most it times sum w (w >= 0): the margin's test is all that uses E in
    _refine_one, and larger is its safe side. Per value |G*l - x| <= |G - d|*|l| + |d|*|l - x/d|, d
    ggml's float32 scale, G its fp16 rounding. Q8_0: l = roundf(x*(1/d)), |l| <= 127, |l - x/d| <=
    0.5 + 127 * 2.01 * 2^-24, and d is not kept: |G - d| <= max(2^-11 |G|, 2^-25) (fp16's rounding,
    normal or subnormal), |d| <= |G| + that. Q4_0 / Q5_0: l = min(hi, floor(x*(1/d) + 0.5 - lo)) + lo
    with x/d in [lo, -lo], at most one step off (at the clamped top), |l| <= -lo."""
    if kind == K_Q8_0:
        gd = max(abs(G) * 2.0**-11, 2.0**-25)
        b = 127.0 * gd + 0.5001 * (abs(G) + gd)
    else:
        b = (16.0 if kind == K_Q5_0 else 8.0) * abs(G - d) + 1.0001 * abs(d)
    return b * b * (1.0 + 1e-6)


@njit(**JIT)
def _refine_one(kind, x, qw, out, lo, hi, bs, doff):
    """y = d*l (Q4_0, Q5_0, Q8_0) where E is the output error: no imatrix (w = 1), or Q8_0 (w = qw).

    ggml's decoded values are y = d_g*l, exact in float32, so one pass over ggml's levels l gives
    the sums Sxl = sum w*x*l and Sll = sum w*l*l (4 partial sums of 8 values each, one float64
    vector, then _quad: a fixed order), hence the least-squares d = Sxl/Sll. ggml's E only sets the
    margin's size, where larger is safe: _ggml_e_bound bounds each value's squared error, times sum w
    (32, or summed too with an imatrix). Against summing E, Sxy and Syy over the decoded values, then
    Sxx = sum w*x*x and ggml's E from it: the same bytes, and each step faster (in-process A/B): Q8_0
    8% and Q4_0 / Q5_0 3%, then without Sxx Q4_0 / Q5_0 / Q8_0 5-6% (Q8_0 with an imatrix 14%, with
    the partial sums below). Unsigned indices, and 4 partial sums rather than 8 of 4 values: with
    signed ones the loop took 3x as long in isolation (Q4_0 7-9%, Q8_0 3-6%). Q8_0 reads its int8
    codes; Q4_0 / Q5_0 come here without ggml's blocks: _ggml_row_values computes ggml's scales
    and levels of the row, and _ggml_row_write writes ggml's blocks after the row's refits, where
    none was written (against ggml's row quantized, written and decoded first: the
    same bytes, Q4_0 12% and Q5_0 30% faster, in-process A/B; both helpers are row-level functions
    of their own, kind-independent, so the per-type specializations of this one only type their
    calls: written inline here, the same code doubled every legacy refine kernel's first-run
    compile, Q8_0's too). ggml's levels at the refit's fp16 d have E = eg + delta in closed form
    (l*d is exact in float32), and the nearest levels at that d are at least as good up to
    level()'s rounding near ties (tau), so the block is written when eg + delta + tau, with
    float64's rounding bounded, is below eg: no second pass. The sums of a run of LANES blocks come
    first, then its decisions in loops of their own (each no longer waits on its block's sums:
    Q4_0 9%, Q5_0 10% faster; split into three loops, the d's, their fp16 rounding and the tests,
    of which the first and last vectorize: 6-9% more), then its writes."""
    ncols = x.shape[1]
    nb = ncols // QK
    if nb == 0:
        return
    weighted = qw.shape[0] > 0
    if weighted:
        for i in range(ncols):
            if not qw[i] >= 0:  # the closed form needs w >= 0 (nearest levels minimise each term)
                return
    fused = kind != K_Q8_0  # Q4_0 / Q5_0 (no imatrix): ggml's blocks computed here, not read
    k8 = ncols // (nb * 4)  # 8, unknown to the compiler: loops over it are not unrolled (the sums: 2.4x faster)
    k4 = ncols // (nb * 8)  # 4, likewise
    P = np.empty(12, dtype=np.float64)  # 4 partial sums of each of sxl, sll and (with an imatrix) the weights
    lrow = np.empty(0 if kind == K_Q8_0 else ncols, dtype=np.float32)  # Q8_0 reads its codes
    nf = nb if fused else 0
    RD = np.empty(nf, dtype=np.float32)  # Q4_0 / Q5_0, per block of the row: ggml's d, 1/d, fp16 d,
    RI = np.empty(nf, dtype=np.float32)
    RDG = np.empty(nf, dtype=np.float32)
    RG = np.empty(nf, dtype=np.bool_)  # whether its block can be rebuilt from them
    grow = np.empty(out.shape[1] if fused else 0, dtype=np.uint8)
    xbits = x.view(np.int32)
    tie = TIE * (1.0 - lo)
    TK = np.zeros(nb, dtype=np.bool_)  # per block of the row: a refit written
    DD = np.zeros(LANES, dtype=np.float32)  # per block of a run of LANES: the refit's d16,
    EG = np.zeros(LANES)  # ggml's E, the fit's sums and ggml's d
    SXL = np.zeros(LANES)
    SLL = np.zeros(LANES)
    SW = np.zeros(LANES)
    DG = np.zeros(LANES, dtype=np.float32)
    DQ = np.zeros(LANES, dtype=np.float32)  # the refit's d before its fp16 rounding
    for r in range(x.shape[0]):
        xr = x[r]
        orow = out[r]
        if fused:
            _ggml_row_values(xr, xbits[r], nb, k8, lo, hi, lrow, RD, RI, RDG, RG)
        for b in range(nb):
            jb = b % LANES
            o = b * QK
            p = b * bs
            dg = RDG[b] if fused else get_f16(orow, p + doff)
            qs = U(p) + Q8_0_QS
            if not weighted:  # w = 1: Sxl and Sll only (ggml's E from a bound below), 4 partial sums of 8
                ou = U(o)
                for k in range(U(k4)):
                    s = 0.0
                    t = 0.0
                    for j in range(8):
                        i = k + U(4 * j)
                        xv = np.float64(xr[ou + i])
                        lv = np.float64(np.int8(orow[qs + i])) if kind == K_Q8_0 else np.float64(lrow[ou + i])
                        s += xv * lv
                        t += lv * lv
                    P[k] = s
                    P[U(4) + k] = t
                sxl = _quad(P, 0)
                sll = _quad(P, 4)
            else:  # Q8_0 with an imatrix (w = qw): Sxl, Sll and the weights' sum, from its int8 codes
                ou = U(o)
                for k in range(U(k4)):
                    s = 0.0
                    t = 0.0
                    sw = 0.0
                    for j in range(8):
                        i = k + U(4 * j)
                        xv = np.float64(xr[ou + i])
                        lv = np.float64(np.int8(orow[qs + i]))
                        wv = np.float64(qw[ou + i])
                        s += wv * xv * lv
                        t += wv * lv * lv
                        sw += wv
                    P[k] = s
                    P[U(4) + k] = t
                    P[U(8) + k] = sw
                sxl = _quad(P, 0)
                sll = _quad(P, 4)
            # ggml's E (the margin's test alone uses it, where larger is safe): at most the bound on one
            # value's squared error times the weights' sum
            SW[jb] = _quad(P, 8) if weighted else 32.0
            EG[jb] = _ggml_e_bound(kind, np.float64(dg), np.float64(RD[b]) if fused else 0.0) * SW[jb]
            SXL[jb] = sxl
            SLL[jb] = sll
            DG[jb] = dg
            if jb < LANES - 1 and b < nb - 1:
                continue
            # the decisions of the run, independent of each other (no chain through a block's sums):
            # the refits' d, their fp16 rounding, then the tests, each in a loop of its own (the first
            # and last without branches: they vectorize)
            n = U(jb + 1)
            for q in range(n):
                DQ[q] = np.float32(SXL[q] / SLL[q] if SLL[q] > 0 else 0.0)
            for q in range(n):
                DD[q] = fp16_round(DQ[q])
            b0 = U(b - jb)
            for q in range(n):
                sxl = SXL[q]
                sll = SLL[q]
                # ggml's levels l at d16: E changes by delta (l*d is exact in float32); err bounds its
                # float64 rounding (sums of terms of one sign). (No np.isfinite: NaN fails the test.)
                D = np.float64(DD[q])
                G = np.float64(DG[q])
                A = D - G
                delta = A * ((D + G) * sll - 2.0 * sxl)
                err = 1e-13 * abs(A) * ((abs(D) + abs(G)) * sll + 2.0 * abs(sxl))
                tau = tie * D * D * SW[q]
                take = (abs(D) > 0.0) & (abs(D) <= 65504.0) & (delta + err + tau + EG[q] * (MARGIN + 1e-13) < 0.0)
                TK[b0 + q] = take & (RG[b0 + q] if fused else True)
            # the writes, after LANES decisions: a decision no longer waits on a mispredicted branch
            # (Q8_0 20% faster). One call site: each inlined copy costs seconds of compile time.
            for q in range(jb + 1):
                bq = b - jb + q
                if TK[bq]:
                    _write(kind, orow, bq * bs, xr, bq * QK, DD[q], lo, hi, 2 * k8)
        if fused:
            _ggml_row_write(kind == K_Q5_0, xr, orow, nb, bs, k8, lo, RD, RI, RG, TK, grow)


U24 = 2.0**-24  # float32's unit roundoff
EPS = 1e-6  # (a + b)^2 <= a^2 (1 + EPS) + b^2 (1 + 1/EPS)


@njit(inline="always", **JIT)
def _certified(eb, sxy, syy, sx, sy, dg, mg, mn, d, d16, m16, fhi):
    """True when the refit (d16, m16) of a Q4_1 / Q5_1 block (w = 1), written with its nearest
    levels, is sure to pass _refine_affine's exact test (its E, summed in float64, below ggml's E with
    _accept's margin), so the test can be skipped: the same bytes. From pass one's sums over ggml's
    decoded values y (sxy, syy, sx, sy) and an upper bound eb on ggml's E = sum (y - x)^2
    (_ggml_e_bound_affine), no second pass and no square root.

    - ggml's levels q at (d16, m16): q*d16 + m16 = A*(q*dg + mg) + B (A = d16/dg, B = m16 - A*mg), so
      sum (A*y + B - x)^2 = E + delta in closed form (delta's float64 rounding bounded by err, its
      terms bounded by AM-GM: 2|B*y| <= B^2 + y^2, ...); y is q*dg + mg rounded to float32 (g2).
    - The nearest levels at (d16, m16) are at least as good, up to level()'s rounding of
      (x - m16)*(1/d16) near a tie, 3.0001 * 2^-24 * |t| with |t| < hi, each costing at most twice
      that times d16^2 (tau); level()'s rounding is exact only for |t| < 2^22 (ggml's nearest_int):
      required with room, from the block's range (mn, d).
    - The refit's values q*d16 + m16 rounded to float32 (c2), and the exact test's own float64 sums
      (1e-12).
    With (a + b)^2 <= a^2 (1 + EPS) + b^2 (1 + 1/EPS) twice, the refit's E is at most
    K*(E + delta + err) + R (K = (1 + EPS)^2 (1 + 1e-12)), below E*(1 - MARGIN) when K*(delta + err)
    + R < -E*(K - 1 + MARGIN): E's coefficient there is negative, so its upper bound eb may stand in."""
    A = np.float64(d16) / np.float64(dg)  # inf or nan when dg = 0: not certified
    B = np.float64(m16) - A * np.float64(mg)
    A1 = A - 1.0
    A2 = A * A - 1.0
    BB = QK * B * B
    delta = A2 * syy + 2.0 * A * B * sy - 2.0 * A1 * sxy + BB - 2.0 * B * sx
    sxx = 2.0 * (eb + syy)  # >= sum x^2
    err = 1e-13 * (abs(A2) * syy + abs(A) * (BB + syy) + abs(A1) * (sxx + syy) + 2.0 * BB + sxx)
    big = fhi * np.float64(d16) + abs(np.float64(m16)) + abs(A * np.float64(mg))  # >= |q*d16 + m16|, |A*y|
    g2 = 2.0 * A * A * (1.01 * U24) ** 2 * syy + 2.0 * (1e-14 * big) ** 2
    tau = QK * 6.1 * U24 * (fhi + 1.0) * np.float64(d16) * np.float64(d16)
    c2 = QK * (U24 * big) ** 2
    k1 = (1.0 + EPS) * (1.0 + 1e-12)
    K = (1.0 + EPS) * k1
    R = (g2 * (1.0 + 1.0 / EPS) + tau) * k1 + c2 * (1.0 + 1.0 / EPS) * (1.0 + 1e-12)
    inside = abs(np.float64(mn) - np.float64(m16)) + 1.001 * fhi * np.float64(d) < 2.0**20 * np.float64(d16)
    return inside & (K * (delta + err) + R < -eb * (K - 1.0 + MARGIN))


@njit(inline="always", **JIT)
def _ggml_e_bound_affine(d, dg, mn, mg, fhi):
    """An upper bound on ggml's E = sum (y - x)^2 of a Q4_1 / Q5_1 block (ok in _refine_affine): per
    value |y - x| <= d*|q - (x - mn)/d| + q*|dg - d| + |mg - mn| + |y - (q*dg + mg)|, with ggml's level
    q = min(hi, (int)((x - mn)*(1/d) + 0.5f)) at most 0.5 + 2^-16 from (x - mn)/d (its float32
    rounding), q <= hi, and y the float32 rounding of q*dg + mg (twice 2^-24, fused or not)."""
    d = np.float64(d)
    dg = np.float64(dg)
    mg = np.float64(mg)
    b = 0.5001 * d + fhi * abs(dg - d) + abs(mg - np.float64(mn)) + 2.0**-23 * (fhi * dg + abs(mg))
    return QK * b * b * (1.0 + 1e-6)


@njit(inline="always", **JIT)
def _ggml_q(xf, mn, id_, hi):
    """ggml's Q4_1 / Q5_1 level of xf, (int8_t)((x - min)*id + 0.5f), capped at hi, as float32: for a
    block that is ok in _refine_affine the argument lies in [0.5, hi + 0.5], where the plain
    conversion gives the same (ggml's cast emulated here made the pass 10% slower)."""
    return np.float32(min(np.int32((xf - mn) * id_ + np.float32(0.5)), np.int32(hi)))


@njit(**JIT)
def _refine_affine(kind, x, out):
    """y = d*q + m (Q4_1, Q5_1) without an imatrix (w = 1: E is the output error), fused with ggml's
    own quantizer: per block, ggml's scale, min and levels as quantize_row_q4_1_ref computes them
    (the same float32 operations), the least-squares sums for those levels over its decoded values
    (the dequantizer's float32, in a loop of their own before the sums: 3-4% faster; 4 partial
    sums of 8 values each, one float64 vector), the refit's (d, m) from the 2x2 normal equations in
    fp16, then after a run of LANES blocks, per block, the refit's nearest levels (the ones written)
    and, unless `_certified` vouches that the refit passes (from the sums and a bound on ggml's E),
    its E and ggml's exactly (q*d + m rounds in float32): the same bytes, Q4_1 / Q5_1 11% / 12%
    faster (A/B); ggml's E summed only where the exact test runs, and 4 partial sums instead of 8:
    7-8% more (the same bytes on 573,440 hostile blocks and t(5) data); the fits after the run's
    sums, in loops of their own: 6-10% more. A block whose refit is not
    lower gets ggml's bytes: rebuilt from its min, d and levels with the same packing, or, where
    the block's min or max is a zero (ggml keeps the first zero's sign, the keys need not), a value
    or the scale or its inverse is not finite, copied from ggml's own quantizer run once on that
    row. Each block is written once. Against writing ggml's blocks first and refitting from their
    decoded values (the same bytes; A/B in one process): 16% / 22% faster (Q4_1 / Q5_1) on
    bench_rounding's tensors, 7% / 15% on t(5) data. (Copying those blocks from slices of the row
    inside the block loop made the whole loop a third slower: reference counting.)"""
    ncols = x.shape[1]
    nb = ncols // QK
    if nb == 0:
        return
    hi = 15 if kind == K_Q4_1 else 31
    bs = BS_Q4_1 if kind == K_Q4_1 else BS_Q5_1
    fhi = np.float32(hi)
    k8 = ncols // (nb * 4)  # 8, unknown to the compiler (as in _refine_one)
    k4 = ncols // (nb * 8)  # 4, likewise: pass one's partial sums (one float64 vector of them)
    P = np.empty(16, dtype=np.float64)  # 4 partial sums of each of sxy, syy, sx, sy; 8 of an E
    inv_n = 1.0 / QK
    CT = np.zeros(LANES, dtype=np.bool_)  # the refit passes the exact test (_certified)
    SS = np.zeros((4, LANES))  # the fit's sums, for _certified
    GM = np.zeros((2, LANES), dtype=np.float32)  # ggml's d and m in fp16
    TK = np.zeros(LANES, dtype=np.bool_)  # per block of a run of LANES: a refit to test, its d16, m16, a bound on ggml's E
    DD = np.zeros(LANES, dtype=np.float32)
    MM = np.zeros(LANES, dtype=np.float32)
    EE = np.zeros(LANES, dtype=np.float64)
    OK = np.zeros(LANES, dtype=np.bool_)  # ggml's block finite (a refit may replace it)
    DQ = np.zeros(LANES, dtype=np.float32)  # the refit's d and m before their fp16 rounding
    MQ = np.zeros(LANES, dtype=np.float32)
    F = np.zeros(QK, dtype=np.float32)
    MN = np.zeros(LANES, dtype=np.float32)  # ggml's min and d per block of the run (its bytes where it stays)
    DG = np.zeros(LANES, dtype=np.float32)
    GG = np.zeros(LANES, dtype=np.bool_)  # ggml's block rebuilt from mn, d (else copied from its own row)
    grow = np.empty(out.shape[1], dtype=np.uint8)
    xbits = x.view(np.int32)
    for r in range(x.shape[0]):
        xr = x[r]
        xb = xbits[r]
        orow = out[r]
        have_g = False
        for b in range(nb):
            jb = b % LANES
            o = U(b * QK)
            # ggml's min, max, d and 1/d (quantize_row_q4_1_ref; the sign of a zero min does not
            # change the levels or the values)
            kmin, kmax = minmax_keys(xb, o, U(4 * k8))
            mn = order_key(kmin).view(np.float32)
            d = (order_key(kmax).view(np.float32) - mn) / fhi
            id_ = _F1 / d if d != _F0 else _F0
            ok = kmax < INF_BITS and kmin > NEG_INF_KEY and abs(d) < np.inf and abs(id_) < np.inf
            # a zero extreme: ggml keeps the first zero's sign, the keys may not (the values are the same)
            GG[jb] = ok and kmin != 0 and kmin != -1 and kmax != 0 and kmax != -1
            MN[jb] = mn
            DG[jb] = d
            dg = fp16_round(d)
            mg = fp16_round(mn)
            for i in range(U(4 * k8)):  # the dequantizer's values (a loop of its own: it vectorizes)
                F[i] = _ggml_q(xr[o + i], mn, id_, hi) * dg + mg
            for k in range(U(k4)):
                s = 0.0
                t = 0.0
                sx = 0.0
                sy = 0.0
                for j in range(8):
                    i = k + U(4 * j)
                    xv = np.float64(xr[o + i])
                    yv = np.float64(F[i])
                    s += xv * yv
                    t += yv * yv
                    sx += xv
                    sy += yv
                P[k] = s
                P[U(4) + k] = t
                P[U(8) + k] = sx
                P[U(12) + k] = sy
            OK[jb] = ok
            SS[0, jb] = _quad(P, 0)
            SS[1, jb] = _quad(P, 4)
            SS[2, jb] = _quad(P, 8)
            SS[3, jb] = _quad(P, 12)
            GM[0, jb] = dg
            GM[1, jb] = mg
            if jb < LANES - 1 and b < nb - 1:
                continue
            # the run's fits, their fp16 rounding, and the certificates, each in a loop of its own (the
            # first and last without branches: they vectorize; in the loop above: 20% slower)
            n = U(jb + 1)
            for q in range(n):
                # the fit x ~ a*y + b for ggml's values is the fit for its levels: d = a*dg, m = a*mg + b
                sxy = SS[0, q]
                syy = SS[1, q]
                sx = SS[2, q]
                sy = SS[3, q]
                vy = syy - sy * sy * inv_n
                a = (sxy - sx * sy * inv_n) / vy if vy > 0 else 0.0
                DQ[q] = np.float32(a * GM[0, q])
                MQ[q] = np.float32(a * GM[1, q] + (sx - a * sy) * inv_n)
                EE[q] = _ggml_e_bound_affine(DG[q], GM[0, q], MN[q], GM[1, q], fhi)
            for q in range(n):
                DD[q] = fp16_round(DQ[q])
                MM[q] = fp16_round(MQ[q])
            for q in range(n):
                d16 = DD[q]
                m16 = MM[q]
                TK[q] = OK[q] & (d16 > 0) & (d16 <= 65504.0) & (abs(m16) <= 65504.0)
                CT[q] = TK[q] & _certified(EE[q], SS[0, q], SS[1, q], SS[2, q], SS[3, q], GM[0, q], GM[1, q], MN[q],
                                           DG[q], d16, m16, fhi)
            for q in range(jb + 1):
                bq = b - jb + q
                o = U(bq * QK)
                p = bq * bs
                refit = TK[q]
                if refit:
                    # certified: levelled and written in one pass; else the levels once, for its E (exact) and the write
                    wd = DD[q]
                    wm = MM[q]
                    if CT[q]:
                        _write_affine_x(kind, orow, p, xr, o, wd, wm, hi, 2 * k8)
                        continue
                    # ggml's E (EE holds a bound), then the refit's
                    wd = DG[q]
                    id_ = _F1 / wd if wd != _F0 else _F0
                    for k in range(k8):
                        e = 0.0
                        for j in range(4):
                            i = U(k + 8 * j)
                            y = _ggml_q(xr[o + i], MN[q], id_, hi) * GM[0, q] + GM[1, q]
                            rr = np.float64(y) - np.float64(xr[o + i])
                            e += rr * rr
                        P[k] = e
                    eg = _oct(P, 0)
                    wd = DD[q]
                    _levels(xr, o, wd, wm, 0, hi, F, 4 * k8)
                    for k in range(k8):
                        e = 0.0
                        for j in range(4):
                            i = k + 8 * j
                            rr = np.float64(np.float32(F[i] * wd) + wm) - np.float64(xr[o + U(i)])
                            e += rr * rr
                        P[k] = e
                    refit = _oct(P, 0) < eg * (1.0 - MARGIN)
                if not refit:  # ggml's block stays: its levels and packing (quantize_row_q4_1_ref / q5_1_ref)
                    if not GG[q]:  # from ggml's row, quantized once for the row
                        if not have_g:
                            if kind == K_Q4_1:
                                quantize_row_q4_1_ref(xr, grow)
                            else:
                                quantize_row_q5_1_ref(xr, grow)
                            have_g = True
                        for i in range(bs):
                            orow[p + i] = grow[p + i]
                        continue
                    wm = MN[q]
                    wd = DG[q]
                    id_ = _F1 / wd if wd != _F0 else _F0
                    for i in range(U(4 * k8)):
                        F[i] = _ggml_q(xr[o + i], wm, id_, hi)
                _write_affine(kind, orow, p, F, wd, wm, 2 * k8)


@njit(nogil=True, **JIT)
def quantize_q4_0_refine(x, qw, out):
    refine_legacy(K_Q4_0, x, qw, out)


@njit(nogil=True, **JIT)
def quantize_q4_1_refine(x, qw, out):
    refine_legacy(K_Q4_1, x, qw, out)


@njit(nogil=True, **JIT)
def quantize_q5_0_refine(x, qw, out):
    refine_legacy(K_Q5_0, x, qw, out)


@njit(nogil=True, **JIT)
def quantize_q5_1_refine(x, qw, out):
    refine_legacy(K_Q5_1, x, qw, out)


@njit(nogil=True, **JIT)
def quantize_q8_0_refine(x, qw, out):
    refine_legacy(K_Q8_0, x, qw, out)


REFINE = {
    QType.Q4_0: quantize_q4_0_refine,
    QType.Q4_1: quantize_q4_1_refine,
    QType.Q5_0: quantize_q5_0_refine,
    QType.Q5_1: quantize_q5_1_refine,
    QType.Q8_0: quantize_q8_0_refine,
}
