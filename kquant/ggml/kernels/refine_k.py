"""`rounding="refine"` for the k-quants Q2_K, Q3_K, Q4_K, Q5_K, Q6_K: ggml's super-block improved by
a bounded least-squares refit (1.4-2.0x ggml's kernel time, Q3_K and Q5_K without an imatrix the
most: scripts/bench_rounding.py --rounding refine).

Not a port: ggml's bytes come first (the exact ports in q2_k.py .. q6_k.py), then each super-block
is refitted for the weighted squared error E that better_k / better_sym target (ggml's weights for
the path it takes; see those modules). With D = fp16(d), M = fp16(dmin), sub-block j's values are
D*sc_j*q (Q3_K, Q6_K) or D*sc_j*q - M*m_j (Q2_K, Q4_K, Q5_K), levels q the nearest. N_PASSES of:
1. per sub-block, for its current levels, the weighted least-squares step (and offset) in closed
   form, rounded to the nearest scale (and min) code for the current D (M); the levels are
   rounded again and the new codes kept if the sub-block's E drops;
2. for the codes and levels, the least-squares D (Q3_K, Q6_K: D = Sxa/Saa) or (D, M) (the 2x2
   normal equations), stored as fp16; the levels rounded again; kept if E drops.
A super-block whose codes, D and M the refit leaves as ggml wrote them keeps ggml's block without
more work (ggml's levels are the nearest for its stored scales, so the refit would rebuild it).
Otherwise the refit's E and output error are summed from its own codes and levels, with the
dequantizer's float32 values exactly (D*sc*l, or D*sc*q - M*m: the value each packed level decodes to),
and the refit is packed, its levels as they are, only if both are lower than ggml's block's
(_accept.better; Q2_K's also only if it shrinks x no more than ggml's block: _accept.refit_better).
Summing in lane order rather than packing and decoding first made Q3_K's refine 18-23% faster and
Q2_K's 7-15% (in-process A/B; no gain for Q4_K / Q5_K, which packed their own levels already). The
refits are inlined into their kernels: a call passing the scratch tuple's arrays costs reference
counting per super-block (inlined, with the sizes constant: Q2_K 5%, Q3_K 10%, Q5_K 8%, Q6_K 5% faster; 2-6 s
more first-run compile per kernel).
Lane by lane: the affine refit's sums (a sub-block's least-squares sums, its errors) run over one
lane at a time, the lane's sums in local variables. Written value by value across the lanes into
per-lane arrays, the sums stayed in memory (numba's arrays may alias one another, so LLVM loaded
and stored every sum at every value, scalar code; seen in the machine code under perf): the same
sums in the same order, Q4_K / Q5_K refine 4-5% faster. ggml's block's two errors (E, E_u) come
from one pass (_sweep.werr2) and the refit's Q4_K / Q5_K levels are packed as they lie rather
than copied back first: with the lanes, Q4_K 7-10%, Q5_K 9-15% faster, Q3_K / Q6_K 1-3%
(in-process A/B, same bytes). Lane by lane, Q4_K / Q5_K's scratch is in sub-block order rather than
transposed (_ix: no transposed copy, and each lane's values are contiguous): 5% more (median of 41
alternated pairs). Q2_K's refit (16 lanes of 16 values) keeps the transposed scratch and the loops
value by value across the lanes: lane by lane it was 3-5% slower.
Super-blocks are independent: the bytes do not depend on the thread count.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import njit

from ..types import QK_K, QType
from . import q2_k, q3_k, q6_k
from ._common import fp16_round, put_f16
from ._accept import better, out_errors, out_weights, refit_better
from ._sweep import werr2
from .better_k import k45_ggml_block, k45_ggml_start, q2_k_ggml_block, q2_k_ggml_start
from .better_sym import _weights as _sym_weights
from .better_sym import ggml_block
from .q4_k import NSUB, Q4K_D, Q4K_DMIN, Q4K_QS, Q4K_SCALES, Q5K_QH, Q5K_QS, SUB, put_scale_min_k4

# _refit_sym's scratch: the super-block transposed (values, weights, levels, new levels, output error
# weights), and per sub-block: inverse steps, float32 steps, the sums of x*l and l*l, two error sums
SymScratch = namedtuple("SymScratch", "XT WT LT L2T UT inv st sxl sll ae au")
# _refit_affine's: the super-block in _ix's layout (values, weights, levels, new levels, output error weights),
# and per sub-block: steps, offsets, inverse steps, the sums of w, wq, wq^2, wx, wxq, three error sums
AffScratch = namedtuple("AffScratch", "XT WT QT Q2T UT ds dm inv m0 m1 m2 mx mxq ae au ag")
N_PASSES = 1  # refit passes per super-block (one: a second gains little for its cost)
JIT = dict(cache=True, no_cfunc_wrapper=True, error_model="numpy")
# The per-lane helpers are inlined (inline="always"): a call that passes arrays costs reference-count
# work per call (with the symmetric refit's runtime lane count, 2-8% of the whole kernel here).


# ---------------------------------------------------------------- affine: y = D*sc*q - M*m


@njit(inline="always", **JIT)
def _ix(n, sub, i, s):
    """Where value i of lane (sub-block) s lies in the refit's scratch: transposed (n i + s) for Q2_K,
    whose 16 lanes of 16 values are summed value by value across the lanes; in sub-block order
    (sub s + i) for Q4_K / Q5_K, summed lane by lane (module docstring)."""
    return n * i + s if sub <= 16 else sub * s + i


@njit(**JIT)
def _aff_scratch():
    return AffScratch(np.empty(QK_K, dtype=np.float32), np.empty(QK_K), np.empty(QK_K, dtype=np.int32),
                      np.empty(QK_K, dtype=np.int32), np.ones(QK_K), np.empty(16), np.empty(16), np.empty(16),
                      np.empty(16), np.empty(16), np.empty(16), np.empty(16), np.empty(16), np.empty(16),
                      np.empty(16), np.empty(16))


@njit(inline="always", **JIT)
def _aff_level(xd, dm, inv, hi):
    """The nearest level 0..hi of the value xd (float64) for the step 1/inv and offset dm (inv 0: 0)."""
    return np.int32(min(hi, max(0.0, np.rint((xd + dm) * inv))))


@njit(inline="always", **JIT)
def _lane_aff_levels(XT, inv, dm, nmax, n, sub, QT):
    """QT[k] = the nearest level 0..nmax of XT[k] (k = _ix(n, sub, i, s)) for lane s's step 1/inv[s] and offset dm[s]
    (_sub_levels per sub-block; inv 0: level 0)."""
    hi = np.float64(nmax)
    for i in range(sub):
        for s in range(n):
            k = _ix(n, sub, i, s)
            QT[k] = _aff_level(np.float64(XT[k]), dm[s], inv[s], hi)


@njit(inline="always", **JIT)
def _aff_lane_err(XT, WT, n, sub, j, ds, dm, QT):
    """E of lane j (_ix's layout, n lanes of sub values) for step ds, offset dm: _sub_err per sub-block."""
    e = 0.0
    for i in range(sub):
        k = _ix(n, sub, i, j)
        d = ds * QT[k] - dm - np.float64(XT[k])
        e += WT[k] * d * d
    return e


@njit(inline="always", **JIT)
def _aff_lanes_err(XT, WT, UT, n, sub, ds, dm, QT, ae, au, ag):
    """(E, E_u, G) of the refit (_ix's layout, n lanes of sub values) for the float32 steps ds and
    offsets dm (as float64): its values are the dequantizer's float32 ds*q - dm exactly, G = |sum u x (y - x)|
    (_accept.out_errors). Each lane's sums run over its values in order, then are added in lane order.
    Lane by lane for Q4_K / Q5_K, value by value across the lanes for Q2_K (module docstring)."""
    e = 0.0
    eu = 0.0
    g = 0.0
    if sub > 16:
        for s in range(n):
            a = 0.0
            b = 0.0
            c = 0.0
            d32 = np.float32(ds[s])
            m32 = np.float32(dm[s])
            for i in range(sub):
                k = _ix(n, sub, i, s)
                xd = np.float64(XT[k])
                r = np.float64(np.float32(d32 * np.float32(QT[k])) - m32) - xd
                a += WT[k] * r * r
                b += UT[k] * r * r
                c += UT[k] * xd * r
            e += a
            eu += b
            g += c
        return e, eu, abs(g)
    for s in range(n):
        ae[s] = 0.0
        au[s] = 0.0
        ag[s] = 0.0
    for i in range(sub):
        for s in range(n):
            k = _ix(n, sub, i, s)
            xd = np.float64(XT[k])
            r = np.float64(np.float32(np.float32(ds[s]) * np.float32(QT[k])) - np.float32(dm[s])) - xd
            ae[s] += WT[k] * r * r
            au[s] += UT[k] * r * r
            ag[s] += UT[k] * xd * r
    for s in range(n):
        e += ae[s]
        eu += au[s]
        g += ag[s]
    return e, eu, abs(g)


@njit(inline="always", **JIT)
def _aff_levels_err(XT, WT, inv, ds, dm, nmax, n, sub, QT):
    """_lane_aff_levels into QT, and the sum over lanes of _aff_lane_err for them (each lane's sum
    over its values in order, then in lane order), lane by lane (module docstring)."""
    hi = np.float64(nmax)
    e = 0.0
    for s in range(n):
        a = 0.0
        ds_ = ds[s]
        dm_ = dm[s]
        iv = inv[s]
        for i in range(sub):
            k = _ix(n, sub, i, s)
            xd = np.float64(XT[k])
            qk = _aff_level(xd, dm_, iv, hi)
            QT[k] = qk
            d = ds_ * qk - dm_ - xd
            a += WT[k] * d * d
        e += a
    return e


@njit(inline="always", **JIT)
def _steps(D, M, sc, mn, n, ds, dm, inv):
    """Each sub-block's float32 step D*sc and offset M*m (as float64), and the inverse step (0 if not > 0)."""
    for s in range(n):
        ds[s] = np.float64(np.float32(D * np.float32(sc[s])))
        dm[s] = np.float64(np.float32(M * np.float32(mn[s])))
        inv[s] = 1.0 / ds[s] if ds[s] > 0 else 0.0


@njit(inline="always", **JIT)
def _refit_affine(x, o, w, nmax, D, M, sc, mn, nsub, sub, smax, sw):
    """N_PASSES of steps 1-2 (module docstring) on one super-block, in place; returns (D, M, changed):
    changed False means the codes, D and M are ggml's (its levels are the nearest for them), so its block
    stands; otherwise sw.QT holds the levels (laid out as XT). sw: AffScratch. The super-block is copied
    into XT in _ix's layout (transposed for Q2_K: XT[nsub i + s] = x[o + sub s + i]); its sub-blocks are
    the lanes, each lane's sums running over its values in order."""
    XT, WT, QT, Q2T, _, ds, dm, inv, m0, m1, m2, mx, mxq, ae, _, _ = sw
    n = nsub
    for s in range(n):
        for i in range(sub):
            k = _ix(n, sub, i, s)
            XT[k] = x[o + sub * s + i]
            WT[k] = w[sub * s + i]
    changed = False
    _steps(D, M, sc, mn, n, ds, dm, inv)
    _lane_aff_levels(XT, inv, dm, nmax, n, sub, QT)  # the nearest levels for ggml's scales
    for _ in range(N_PASSES):
        # 1. codes of each sub-block from its least-squares (step, offset) for its levels; with the sums,
        # each sub-block's E (ae[s]: _aff_lane_err's sum, kept up to date below, so step 2 has E)
        if sub > 16:  # Q4_K / Q5_K: lane by lane (module docstring)
            for s in range(n):
                a0 = 0.0
                a1 = 0.0
                a2 = 0.0
                ax = 0.0
                axq = 0.0
                ee = 0.0
                ds_ = ds[s]
                dm_ = dm[s]
                for i in range(sub):
                    k = _ix(n, sub, i, s)
                    fq = np.float64(QT[k])
                    xi = np.float64(XT[k])
                    wk = WT[k]
                    a0 += wk
                    a1 += wk * fq
                    a2 += wk * fq * fq
                    ax += wk * xi
                    axq += wk * xi * fq
                    d = ds_ * fq - dm_ - xi
                    ee += wk * d * d
                m0[s] = a0
                m1[s] = a1
                m2[s] = a2
                mx[s] = ax
                mxq[s] = axq
                ae[s] = ee
        else:  # Q2_K (16 lanes of 16): value by value across the lanes
            for s in range(n):
                m0[s] = 0.0
                m1[s] = 0.0
                m2[s] = 0.0
                mx[s] = 0.0
                mxq[s] = 0.0
                ae[s] = 0.0
            for i in range(sub):
                for s in range(n):
                    k = _ix(n, sub, i, s)
                    fq = np.float64(QT[k])
                    xi = np.float64(XT[k])
                    wk = WT[k]
                    m0[s] += wk
                    m1[s] += wk * fq
                    m2[s] += wk * fq * fq
                    mx[s] += wk * xi
                    mxq[s] += wk * xi * fq
                    d = ds[s] * fq - dm[s] - xi
                    ae[s] += wk * d * d
        if D > 0 and M > 0:
            for j in range(n):
                s0, s1, s2, sx, sxq = m0[j], m1[j], m2[j], mx[j], mxq[j]
                det = s0 * s2 - s1 * s1
                if not det > 1e-12 * s0 * s2:
                    continue
                st = (s0 * sxq - sx * s1) / det  # x ~ st*q - mt
                mt = -(s2 * sx - s1 * sxq) / det
                if not (np.isfinite(st) and np.isfinite(mt)):
                    continue
                c = min(smax, max(0, int(np.rint(min(st / D, 1e6)))))
                cm = min(smax, max(0, int(np.rint(min(max(mt / M, -1e6), 1e6)))))
                if c == sc[j] and cm == mn[j]:
                    continue
                dsc = np.float64(np.float32(D * np.float32(c)))
                dmc = np.float64(np.float32(M * np.float32(cm)))
                iv = 1.0 / dsc if dsc > 0 else 0.0
                for i in range(sub):  # lane j's levels for the new codes, into Q2T (scratch until step 2)
                    k = _ix(n, sub, i, j)
                    Q2T[k] = _aff_level(np.float64(XT[k]), dmc, iv, np.float64(nmax))
                e1 = _aff_lane_err(XT, WT, n, sub, j, dsc, dmc, Q2T)
                if e1 < ae[j]:
                    ae[j] = e1
                    sc[j] = c
                    mn[j] = cm
                    ds[j] = dsc
                    dm[j] = dmc
                    inv[j] = iv
                    changed = True
                    a1 = 0.0
                    a2 = 0.0
                    ax = 0.0
                    for i in range(sub):
                        k = _ix(n, sub, i, j)
                        QT[k] = Q2T[k]
                        fq = np.float64(QT[k])
                        xi = np.float64(XT[k])
                        a1 += WT[k] * fq
                        a2 += WT[k] * fq * fq
                        ax += WT[k] * xi * fq
                    m1[j] = a1
                    m2[j] = a2
                    mxq[j] = ax
        # 2. joint (D, M) for the codes and levels: minimise sum w (D*a - M*b - x)^2, a = sc*q, b = m,
        # from each sub-block's sums (b is one value per sub-block)
        saa = 0.0
        sab = 0.0
        sbb = 0.0
        sax = 0.0
        sbx = 0.0
        for j in range(n):
            fc = np.float64(sc[j])
            b = np.float64(mn[j])
            saa += fc * fc * m2[j]
            sab += fc * b * m1[j]
            sbb += b * b * m0[j]
            sax += fc * mxq[j]
            sbx += b * mx[j]
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
        if nD32 == D and nM32 == M:
            break
        e_old = 0.0  # _aff_lane_err's sums, in lane order
        for s in range(n):
            e_old += ae[s]
        _steps(nD32, nM32, sc, mn, n, ds, dm, inv)
        e_new = _aff_levels_err(XT, WT, inv, ds, dm, nmax, n, sub, Q2T)
        if not e_new < e_old:
            _steps(D, M, sc, mn, n, ds, dm, inv)  # ds, dm back to the kept D, M (the caller's errors use them)
            break
        D = nD32
        M = nM32
        changed = True
        QT[:] = Q2T
    return D, M, changed


@njit(**JIT)
def _pack_k45_t(out, off, q5, D, M, sc, mn, QT):
    """better_k.pack_k45 (ggml's packing) from the refit's levels as _refit_affine leaves them (QT[SUB j + i]:
    level i of sub-block j), without copying them into pack_k45's transposed scratch first."""
    put_f16(out, off + Q4K_D, D)
    put_f16(out, off + Q4K_DMIN, M)
    for j in range(NSUB):
        put_scale_min_k4(j, out, off + Q4K_SCALES, sc[j], mn[j])
    qo = off + Q4K_QS
    if q5:  # bit j of qh[i]: level i of sub-block j > 15
        for i in range(SUB):
            h = np.int32(0)
            for j in range(NSUB):
                h |= np.int32(QT[SUB * j + i] > 15) << j
            out[off + Q5K_QH + i] = np.uint8(h)
        qo = off + Q5K_QS
    for g in range(NSUB // 2):
        for i in range(SUB):
            lo = QT[SUB * 2 * g + i] & 0xF
            hi = QT[SUB * (2 * g + 1) + i] & 0xF
            out[qo + SUB * g + i] = np.uint8(lo | (hi << 4))


@njit(inline="always", **JIT)
def _layout_u(qw, u, UT, nsub, sub):
    """UT = u (the block's output error weights) in the refit's layout (_ix); without an imatrix both
    are all ones from the start and stay so."""
    if qw.shape[0] != 0:
        for s in range(nsub):
            for i in range(sub):
                UT[_ix(nsub, sub, i, s)] = u[sub * s + i]


@njit(inline="always", **JIT)
def _refit_errors(qw, u, nsub, sub, sw):
    """(E, E_u, G) of _refit_affine's result (_aff_lanes_err), u the block's output error weights
    (the caller's), laid out as sw.UT first."""
    _layout_u(qw, u, sw.UT, nsub, sub)
    return _aff_lanes_err(sw.XT, sw.WT, sw.UT, nsub, sub, sw.ds, sw.dm, sw.QT, sw.ae, sw.au, sw.ag)


@njit(nogil=True, **JIT)
def quantize_q4_k_q5_k_refine(x, qw, out):
    """ggml's blocks (quantize_q4_k_q5_k), then each super-block refitted where E and the output error
    drop (_accept.better); a refit is packed only when it is kept."""
    nb, q5, bs, nmax, _, w, y, _, sc, mn, _, _ = k45_ggml_start(x, qw, out)
    u = np.ones(QK_K)
    sw = _aff_scratch()
    for r in range(x.shape[0]):
        xr = x[r]
        orow = out[r]
        for b in range(nb):
            o = b * QK_K
            off = b * bs
            e_g, u_g, D, M = k45_ggml_block(xr, o, qw, orow, off, q5, w, u, y, sc, mn)
            if not e_g > 0:
                continue
            D, M, changed = _refit_affine(xr, o, w, nmax, D, M, sc, mn, NSUB, SUB, 63, sw)
            if not changed:
                continue
            e_b, u_b, _ = _refit_errors(qw, u, NSUB, SUB, sw)
            if better(e_b, u_b, e_g, u_g):
                _pack_k45_t(orow, off, q5, D, M, sc, mn, sw.QT)


@njit(**JIT)
def _pack_q2_k(blk, off, D, M, sc, mn, q):
    """The Q2_K super-block (D, M, 4-bit scales sc and mins mn, levels q 0..3 in natural order) packed into
    blk[off:] as ggml lays it out: value 128 h + 32 t + m in bits 2t+1..2t of qs[32 h + m]."""
    for j in range(16):
        blk[off + q2_k.OFF_SC + j] = np.uint8(sc[j] | (mn[j] << 4))
    for h in range(2):
        for m in range(32):
            v = 0
            for t in range(4):
                v |= q[128 * h + 32 * t + m] << (2 * t)
            blk[off + q2_k.OFF_QS + 32 * h + m] = np.uint8(v)
    put_f16(blk, off + q2_k.OFF_D, D)
    put_f16(blk, off + q2_k.OFF_DMIN, M)


@njit(nogil=True, **JIT)
def quantize_q2_k_refine(x, qw, out):
    """ggml's blocks (q2_k.quantize), then each super-block refitted where E and the output error
    drop and x shrinks no more (_accept.refit_better); a refit is packed only when it is kept."""
    nb, bs, _, w, y, _, sc, mn, q, _ = q2_k_ggml_start(x, qw, out)
    u = np.empty(QK_K)
    sw = _aff_scratch()
    out_weights(qw, 0, u, QK_K)
    for r in range(x.shape[0]):
        xr = x[r]
        orow = out[r]
        for b in range(nb):
            o = b * QK_K
            off = b * bs
            e_g, D, M = q2_k_ggml_block(xr, o, qw, orow, off, w, y, sc, mn)
            if not e_g > 0:
                continue
            D, M, changed = _refit_affine(xr, o, w, 3, D, M, sc, mn, 16, 16, 15, sw)
            if not changed:
                continue
            if qw.shape[0] != 0:
                out_weights(qw, o, u, QK_K)
            e_b, u_b, g_b = _refit_errors(qw, u, 16, 16, sw)
            if refit_better(e_b, (u_b, g_b), e_g, out_errors(xr, o, u, y, QK_K)):
                for s in range(16):  # the levels in sub-block order (_refit_affine's are transposed)
                    for i in range(16):
                        q[16 * s + i] = sw.QT[_ix(16, 16, i, s)]
                _pack_q2_k(orow, off, D, M, sc, mn, q)


# ---------------------------------------------------------------- symmetric: y = D*sc*l (Q3_K, Q6_K)


@njit(inline="always", **JIT)
def _lane_levels(XT, inv, lo, hi, LT, n16):
    """LT[16 i + s] = the nearest level of XT[16 i + s] for the step 1/inv[s] (inv 0: level 0); n16 = 16."""
    flo = np.float64(lo)
    fhi = np.float64(hi)
    for i in range(16):
        for s in range(n16):
            v = np.rint(np.float64(XT[16 * i + s]) * inv[s])
            LT[16 * i + s] = np.int32(min(fhi, max(flo, v)))


@njit(inline="always", **JIT)
def _inv_step(s64):
    """1/s64 as _levels uses it; 0 for a zero or non-finite step (its levels are then all 0)."""
    return 1.0 / s64 if s64 != 0.0 and np.isfinite(s64) else 0.0


@njit(inline="always", **JIT)
def _lane_err(XT, WT, s, st32, LT):
    """E of sub-block s (transposed layout) for the float32 step st32."""
    e = 0.0
    for i in range(16):
        k = 16 * i + s
        r = np.float64(np.float32(st32 * np.float32(LT[k]))) - np.float64(XT[k])
        e += WT[k] * r * r
    return e


@njit(inline="always", **JIT)
def _lanes_err(XT, WT, UT, st, LT, ae, au, n16, both):
    """(E, E_u) of the whole super-block (transposed layout) for the float32 steps st and levels LT: each
    sub-block's sums run over its values in order (as _lane_err), the 16 lanes at once, then added in
    lane order. E_u (weights UT) only when both, else 0."""
    for s in range(n16):
        ae[s] = 0.0
        au[s] = 0.0
    for i in range(16):
        for s in range(n16):
            k = 16 * i + s
            r = np.float64(np.float32(st[s] * np.float32(LT[k]))) - np.float64(XT[k])
            ae[s] += WT[k] * r * r
            if both:
                au[s] += UT[k] * r * r
    e = 0.0
    u = 0.0
    for s in range(16):
        e += ae[s]
        u += au[s]
    return e, u


@njit(inline="always", **JIT)
def _refit_sym(x, o, w, D, sc, lo, hi, sclo, schi, sw, e_cur, n16):
    """N_PASSES of steps 1-2 (module docstring) on one super-block of 16 x 16, in place; returns (D, changed)
    as _refit_affine. sw: SymScratch. e_cur: E of ggml's block, kept up to date as sub-blocks change (step
    2's reference: the caller checks the result exactly, from its levels).
    The super-block is copied transposed (XT[16 i + s] = x[o + 16 s + i]) so that the 16 sub-blocks are 16
    vector lanes; each lane's sums still run over its values in order, as a sub-block at a time would."""
    XT, WT, LT, L2T, UT, inv, st, sxl, sll, ae, au = sw
    changed = False
    for s in range(16):
        for i in range(16):
            XT[16 * i + s] = x[o + 16 * s + i]
            WT[16 * i + s] = w[16 * s + i]
    for s in range(16):
        inv[s] = _inv_step(np.float64(np.float32(D * np.float32(sc[s]))))
    _lane_levels(XT, inv, lo, hi, LT, n16)
    for _ in range(N_PASSES):
        for s in range(16):
            sxl[s] = 0.0
            sll[s] = 0.0
        for i in range(16):
            for s in range(n16):
                k = 16 * i + s
                fl = np.float64(LT[k])
                sxl[s] += WT[k] * np.float64(XT[k]) * fl
                sll[s] += WT[k] * fl * fl
        sax = 0.0
        saa = 0.0
        for j in range(16):
            if sll[j] > 0:
                t = sxl[j] / sll[j] / np.float64(D)
                c = min(schi, max(sclo, int(np.rint(min(max(t, -1e6), 1e6)))))
                if c != sc[j]:
                    e0 = _lane_err(XT, WT, j, np.float32(D * np.float32(sc[j])), LT)
                    s1 = np.float32(D * np.float32(c))
                    iv = _inv_step(np.float64(s1))
                    for i in range(16):  # lane j's levels for s1, into L2T (scratch until step 2)
                        v = np.rint(np.float64(XT[16 * i + j]) * iv)
                        L2T[16 * i + j] = np.int32(min(np.float64(hi), max(np.float64(lo), v)))
                    e1 = _lane_err(XT, WT, j, s1, L2T)
                    if e1 < e0:
                        sc[j] = c
                        changed = True
                        e_cur += e1 - e0
                        a = 0.0
                        b = 0.0
                        for i in range(16):
                            k = 16 * i + j
                            LT[k] = L2T[k]
                            fl = np.float64(L2T[k])
                            a += WT[k] * np.float64(XT[k]) * fl
                            b += WT[k] * fl * fl
                        sxl[j] = a
                        sll[j] = b
            fc = np.float64(sc[j])
            sax += fc * sxl[j]
            saa += fc * fc * sll[j]
        if not saa > 0:
            break
        nD = sax / saa
        if not np.isfinite(nD) or abs(nD) > 6e4:
            break
        nD32 = fp16_round(np.float32(nD))
        if nD32 == D or nD32 == 0:
            break
        for s in range(16):
            st[s] = np.float32(nD32 * np.float32(sc[s]))
            inv[s] = _inv_step(np.float64(st[s]))
        _lane_levels(XT, inv, lo, hi, L2T, n16)
        e_new = _lanes_err(XT, WT, UT, st, L2T, ae, au, n16, False)[0]
        if not e_new < e_cur:
            break
        D = nD32
        changed = True
        e_cur = e_new
        LT[:] = L2T
    return D, changed


@njit(**JIT)
def _pack_sym(blk, off, D, sc, LT, LN, q6):
    """The super-block of fp16 scale D, scale codes sc and levels LT (transposed layout, as _refit_sym's)
    packed into blk[off:] as ggml lays it out (q3_k.py / q6_k.py docstrings). LN: scratch."""
    for k in range(QK_K):  # natural order, stored with ggml's offset (4 for Q3_K, 32 for Q6_K)
        LN[k] = LT[16 * (k & 15) + (k >> 4)] + (32 if q6 else 4)
    if q6:
        put_f16(blk, off + q6_k.OFF_D, D)
        for j in range(16):
            blk[off + q6_k.OFF_SC + j] = np.uint8(sc[j] & 0xFF)
        for h in range(2):
            j = 128 * h
            ql = off + q6_k.OFF_QL + 64 * h
            qh = off + q6_k.OFF_QH + 32 * h
            for m in range(32):
                l1, l2, l3, l4 = LN[j + m], LN[j + m + 32], LN[j + m + 64], LN[j + m + 96]
                blk[ql + m] = np.uint8((l1 & 0xF) | ((l3 & 0xF) << 4))
                blk[ql + m + 32] = np.uint8((l2 & 0xF) | ((l4 & 0xF) << 4))
                blk[qh + m] = np.uint8((l1 >> 4) | ((l2 >> 4) << 2) | ((l3 >> 4) << 4) | ((l4 >> 4) << 6))
        return
    put_f16(blk, off + q3_k.OFF_D, D)
    for k in range(12):
        blk[off + q3_k.OFF_SC + k] = 0
    for j in range(16):
        q3_k.put_scale6(blk, off + q3_k.OFF_SC, j, np.int32(sc[j] + 32))
    for m in range(32):  # hmask[m] bit t = the high bit of L[32 t + m]
        hb = 0
        for t in range(8):
            hb |= (LN[32 * t + m] >> 2) << t
        blk[off + q3_k.OFF_HM + m] = np.uint8(hb)
    for h in range(2):  # qs[32 h + m] bits 2t+1..2t = the low 2 bits of L[128 h + 32 t + m]
        for m in range(32):
            v = 0
            for t in range(4):
                v |= (LN[128 * h + 32 * t + m] & 3) << (2 * t)
            blk[off + q3_k.OFF_QS + 32 * h + m] = np.uint8(v)


@njit(nogil=True, **JIT)
def quantize_sym_refine(x, qw, out, q6):
    """ggml's blocks, then each super-block refitted where E and the output error drop (_accept.better).
    The refit's errors are summed from its levels (the dequantizer's float32 D*sc*l, exactly), so a
    refit is packed only when it is kept."""
    if q6:
        q6_k.quantize(x, qw, out)
        bs, lo, hi, sclo, schi = q6_k.TS, -32, 31, -128, 127
    else:
        q3_k.quantize(x, qw, out)
        bs, lo, hi, sclo, schi = q3_k.TS, -4, 3, -32, 31
    nb = x.shape[1] // QK_K
    if nb == 0:
        return
    n16 = x.shape[1] // (nb * 16)  # 16, unknown to the compiler: lane loops over it are not unrolled (5% faster)
    w = np.empty(QK_K, dtype=np.float64)
    u = np.empty(QK_K, dtype=np.float64)
    y = np.empty(QK_K, dtype=np.float32)
    sc = np.empty(16, dtype=np.int32)
    LN = np.empty(QK_K, dtype=np.int32)
    sw = SymScratch(np.empty(QK_K, dtype=np.float32), np.empty(QK_K), np.empty(QK_K, dtype=np.int32),
                    np.empty(QK_K, dtype=np.int32), np.ones(QK_K), np.empty(16), np.empty(16, dtype=np.float32),
                    np.empty(16), np.empty(16), np.empty(16), np.empty(16))
    UT, st = sw.UT, sw.st
    out_weights(qw, 0, u, QK_K)
    for r in range(x.shape[0]):
        xr = x[r]
        orow = out[r]
        for b in range(nb):
            o = b * QK_K
            off = b * bs
            _sym_weights(xr, o, qw, w, q6)
            if qw.shape[0] != 0:
                out_weights(qw, o, u, QK_K)
            D = ggml_block(orow[off:off + bs], y, sc, q6)
            e_g, u_g = werr2(xr, o, w, u, y, QK_K)
            if not e_g > 0 or not np.isfinite(D) or D == 0:
                continue
            D, changed = _refit_sym(xr, o, w, D, sc, lo, hi, sclo, schi, sw, e_g, n16)
            if not changed:
                continue
            _layout_u(qw, u, UT, 16, 16)
            for s in range(16):
                st[s] = np.float32(D * np.float32(sc[s]))
            e_b, u_b = _lanes_err(sw.XT, sw.WT, UT, st, sw.LT, sw.ae, sw.au, n16, True)
            if better(e_b, u_b, e_g, u_g):
                _pack_sym(orow, off, D, sc, sw.LT, LN, q6)


@njit(nogil=True, **JIT)
def quantize_q3_k_refine(x, qw, out):
    quantize_sym_refine(x, qw, out, False)


@njit(nogil=True, **JIT)
def quantize_q6_k_refine(x, qw, out):
    quantize_sym_refine(x, qw, out, True)


REFINE = {
    QType.Q2_K: quantize_q2_k_refine,
    QType.Q3_K: quantize_q3_k_refine,
    QType.Q4_K: quantize_q4_k_q5_k_refine,
    QType.Q5_K: quantize_q4_k_q5_k_refine,
    QType.Q6_K: quantize_q6_k_refine,
}
