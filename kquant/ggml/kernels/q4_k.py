"""Q4_K kernels, and the quantizer Q5_K shares with them.

Ports from ggml/src/ggml-quants.c (llama.cpp as vendored in llama-cpp-python 0.3.36):
quantize_row_q4_K_ref (no importance weights), quantize_row_q4_K_impl (weighted),
dequantize_row_q4_K, get_scale_min_k4 (and the packing loop that is its inverse), and the
parts of quantize_row_q5_K_ref / _impl that differ from Q4_K (nmax 31, the qh/qs packing):
Q4_K and Q5_K quantize through one compiled driver, `quantize_q4_k_q5_k` (q5_k.py adds the
Q5_K dequantizer). make_qkx2_quants / make_qkx3_quants / make_qp_quants are specialised here.

Why specialised searches instead of kquant.ggml.kernels._search: make_qkx2/3 run once per 32-value
sub-block, and their candidate scales are NOT independent (an accepted candidate replaces
`min`, which the following candidates' iscale and `x - min` use), so candidates cannot be
vector lanes. Sub-blocks are independent, though: here up to LANES of them (whole super-blocks
of one row) are the vector lanes. Every sub-block still runs the exact C sequence (same
candidates in the same order, every sum accumulated over i = 0..31 in order, the same float32
operations), only many of them advance together, which LLVM turns into SIMD. A chunk of
super-blocks is transposed into scratch (`xt[i*LANES + j] = x[32*j + i]`, j = sub-block in the
chunk) so that each step over lanes is a contiguous load. make_qp_quants likewise runs the
scales and the mins of every super-block of the chunk as lanes.

All scratch of a row lives in ONE float32 array addressed with compile-time offsets and stride
and unsigned indices (no negative-index wraparound), so LLVM proves the regions do not alias
and vectorizes the lane loops.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..types import QK_K, QType, field_offsets
from . import Kernel
from ._common import GROUP_MAX_EPS, fp16_round, get_f16, nearest_int, put_f16

NSUB = QK_K // 32  # sub-blocks per super-block
SUB = 32  # values per sub-block
LANES = 32  # sub-blocks searched together (4 super-blocks); stride of the transposed scratch
SB_PER_CHUNK = LANES // NSUB

# block_q4_K (ggml-common.h): d, dmin (fp16), scales[12], qs[128]
Q4K_D, Q4K_DMIN, Q4K_SCALES, Q4K_QS = field_offsets(QType.Q4_K, "d", "dmin", "scales", "qs")
Q4K_BYTES = QType.Q4_K.type_size  # 144
# block_q5_K: d, dmin (fp16), scales[12] as in block_q4_K, then qh[32], qs[128]
Q5K_QH, Q5K_QS = field_offsets(QType.Q5_K, "qh", "qs")
Q5K_BYTES = QType.Q5_K.type_size  # 176
assert field_offsets(QType.Q5_K, "d", "dmin", "scales") == (Q4K_D, Q4K_DMIN, Q4K_SCALES)  # Q5_K shares Q4_K's head

F0 = np.float32(0.0)
F1 = np.float32(1.0)
F15 = np.float32(15.0)
F01 = np.float32(0.1)
F2 = np.float32(2.0)
F32 = np.float32(32.0)
F63 = np.float32(63.0)
FQK_K = np.float32(QK_K)

# make_qkx2_quants / make_qkx3_quants arguments used by Q4_K and Q5_K
Q4K_REF_RMIN, Q4K_REF_RDELTA, Q4K_REF_NSTEP = np.float32(-1.0), np.float32(0.1), 20
Q5K_REF_RMIN, Q5K_REF_RDELTA, Q5K_REF_NSTEP = np.float32(-0.5), np.float32(0.1), 15
IMPL_RMIN, IMPL_RDELTA, IMPL_NSTEP = np.float32(-0.9), np.float32(0.05), 36

# Scratch layout (float32 offsets). Planes of SUB*LANES are transposed chunks (i*LANES + j);
# vectors of LANES hold one value per sub-block j.
_PLANE = SUB * LANES
S_X = 0  # x
S_W = S_X + _PLANE  # weights
S_LA = S_W + _PLANE  # Laux of the current candidate (as floats)
S_L = S_LA + _PLANE  # final quants (as floats)
_V = S_L + _PLANE
S_MIN = _V + 0 * LANES  # C's `min` during the search (replaced on acceptance)
S_MAX = _V + 1 * LANES
S_SUMW = _V + 2 * LANES
S_SUMX = _V + 3 * LANES
S_ISC = _V + 4 * LANES  # iscale of the current candidate
S_SL = _V + 5 * LANES
S_SL2 = _V + 6 * LANES
S_SXL = _V + 7 * LANES
S_TSC = _V + 8 * LANES  # this_scale
S_TMIN = _V + 9 * LANES  # this_min
S_D = _V + 10 * LANES  # D
S_ERR = _V + 11 * LANES  # cur_error
S_BERR = _V + 12 * LANES  # best_error
S_BSC = _V + 13 * LANES  # scale (best so far)
S_BISC = _V + 14 * LANES  # iscale that produced the best L
S_BXMIN = _V + 15 * LANES  # min that produced the best L
S_SCALES = _V + 16 * LANES  # scales[j] (make_qkx*'s return value)
S_MINS = _V + 17 * LANES  # mins[j] (make_qkx*'s *the_min)
S_SW = _V + 18 * LANES  # av_x (ref) / sw[j] (impl)
S_DQ = _V + 19 * LANES  # fp16(d) * sc, final pass
S_DMQ = _V + 20 * LANES  # fp16(dmin) * m, final pass
S_MIN0 = _V + 21 * LANES  # min after `if (min > 0) min = 0`, before the search
S_SIG = _V + 22 * LANES  # sigma2 of the lane's super-block (impl)
# make_qp_quants(8, 63, ...) of the impl path, lanes p = 2*sb (scales) and 2*sb + 1 (mins):
# planes of NSUB*LANES (i*LANES + p) and lane vectors
S_QX = _V + 23 * LANES  # x (the 8 scales or mins)
S_QW = S_QX + NSUB * LANES  # quant_weights (sw)
S_QL = S_QW + NSUB * LANES  # L (uint8 values, as floats)
_QV = S_QL + NSUB * LANES
S_QMAX = _QV + 0 * LANES
S_QISC = _QV + 1 * LANES  # iscale
S_QBEST = _QV + 2 * LANES  # best_mse
S_QMSE = _QV + 3 * LANES
S_QSLX = _QV + 4 * LANES  # sumlx
S_QSL2 = _QV + 5 * LANES  # suml2
S_QRES = _QV + 6 * LANES  # return value
SCRATCH = _QV + 7 * LANES

JIT = dict(cache=True, no_cfunc_wrapper=True, error_model="numpy")  # numpy error model: float x/0 gives inf/nan, never raises
U = np.uint64  # scratch indices are cast to unsigned: no wraparound code, affine addresses
# Integer arguments of the shared routines are passed as np.int64(...) values, not literals:
# numba compiles a routine once per argument types, and a literal is a type of its own.


@njit(**JIT)
def clamp_q(l, nmax):
    """MAX(0, MIN(nmax, l)) as int32."""
    return np.int32(max(np.int32(0), min(np.int32(nmax), l)))


# 6-bit scales (sc) and mins (m) of the 8 sub-blocks in block_q4_K/q5_K `scales[12]`:
#
#   byte   | bit 7 6        | bit 5 4 3 2 1 0
#   0..3   | sc[b+4] >> 4   | sc[b]            (b = byte)
#   4..7   |  m[b]   >> 4   |  m[b-4]
#
#   byte   | bit 7 6 5 4    | bit 3 2 1 0
#   8..11  | m[b-4] & 15    | sc[b-4] & 15
#
# Sub-blocks 0-3 keep all 6 bits in bytes 0-7; sub-blocks 4-7 keep their low nibbles in
# bytes 8-11 and their top 2 bits in bits 6-7 of bytes 0-7.


# ggml-quants.c: get_scale_min_k4 -> (sc, m)
@njit(**JIT)
def get_scale_min_k4(j, q, off):
    if j < 4:
        return np.int32(q[off + j] & 63), np.int32(q[off + j + 4] & 63)
    d = (q[off + j + 4] & 0xF) | ((q[off + j - 4] >> 6) << 4)
    m = (q[off + j + 4] >> 4) | ((q[off + j] >> 6) << 4)
    return np.int32(d), np.int32(m)


# dequantize_row_q4_K / _q5_K: the scales and mins of sub-blocks 2g and 2g + 1 of the block at off
@njit(**JIT)
def pair_scales(q, off, g, d, dmin):
    sc, m = get_scale_min_k4(2 * g, q, off + Q4K_SCALES)
    d1 = d * np.float32(sc)
    m1 = dmin * np.float32(m)
    sc, m = get_scale_min_k4(2 * g + 1, q, off + Q4K_SCALES)
    d2 = d * np.float32(sc)
    m2 = dmin * np.float32(m)
    return d1, m1, d2, m2


# ggml-quants.c: the packing loop of quantize_row_q4_K_ref/_impl (inverse of get_scale_min_k4).
# One step, for sub-block j; must run for j = 0..7 in order. ls, lm are C uint8_t values.
@njit(**JIT)
def put_scale_min_k4(j, q, off, ls, lm):
    ls = np.int32(ls) & 0xFF
    lm = np.int32(lm) & 0xFF
    if j < 4:
        q[off + j] = np.uint8(ls)
        q[off + j + 4] = np.uint8(lm)
    else:
        q[off + j + 4] = np.uint8((ls & 0xF) | ((lm & 0xF) << 4))
        q[off + j - 4] = np.uint8(np.int32(q[off + j - 4]) | (((ls >> 4) << 6) & 0xFF))
        q[off + j] = np.uint8(np.int32(q[off + j]) | (((lm >> 4) << 6) & 0xFF))


@njit(**JIT)
def load_transposed(s, base, x, xo, n):
    """s[base + i*LANES + j] = x[xo + 32*j + i] for the n sub-blocks at x[xo:]."""
    for j in range(n):
        for i in range(SUB):
            s[U(base + i * LANES + j)] = x[xo + SUB * j + i]


# ggml-quants.c: make_qkx2_quants (strict=False) / make_qkx3_quants (strict=True) with n = 32,
# use_mad = false and weights given, for the n sub-blocks in s[S_X], s[S_W] at once.
# Leaves scale in s[S_SCALES+j], the_min in s[S_MINS+j], and the (iscale, min) that rebuild
# the returned L in s[S_BISC+j], s[S_BXMIN+j] (iscale 0 for a degenerate sub-block: L = 0).
@njit(**JIT)
def search_qkx(s, n, nmax, rmin, rdelta, nstep, strict):
    fnmax = np.float32(nmax)
    for j in range(n):
        x0 = s[U(S_X + j)]
        w0 = s[U(S_W + j)]
        s[U(S_MIN + j)] = x0
        s[U(S_MAX + j)] = x0
        s[U(S_SUMW + j)] = w0
        s[U(S_SUMX + j)] = w0 * x0
    for i in range(1, SUB):
        for j in range(n):
            xi = s[U(S_X + i * LANES + j)]
            w = s[U(S_W + i * LANES + j)]
            mn = s[U(S_MIN + j)]
            mx = s[U(S_MAX + j)]
            s[U(S_MIN + j)] = xi if xi < mn else mn
            s[U(S_MAX + j)] = xi if xi > mx else mx
            s[U(S_SUMW + j)] += w
            s[U(S_SUMX + j)] += w * xi
    for j in range(n):
        mn = s[U(S_MIN + j)]
        mn = F0 if mn > F0 else mn
        s[U(S_MIN + j)] = mn
        s[U(S_MIN0 + j)] = mn
        iscale = np.float32(fnmax / (s[U(S_MAX + j)] - mn))
        s[U(S_BISC + j)] = iscale
        s[U(S_BXMIN + j)] = mn
        s[U(S_BSC + j)] = np.float32(F1 / iscale)
        s[U(S_BERR + j)] = F0
    # initial L and best_error
    for i in range(SUB):
        for j in range(n):
            xi = s[U(S_X + i * LANES + j)]
            mn = s[U(S_MIN + j)]
            fl = np.float32(clamp_q(nearest_int(s[U(S_BISC + j)] * (xi - mn)), nmax))
            diff = np.float32(s[U(S_BSC + j)] * fl + mn - xi)
            s[U(S_BERR + j)] += s[U(S_W + i * LANES + j)] * (diff * diff)
    for is_ in range(nstep + 1):
        num = np.float32(rmin + rdelta * np.float32(is_) + fnmax)
        for j in range(n):
            s[U(S_ISC + j)] = np.float32(num / (s[U(S_MAX + j)] - s[U(S_MIN + j)]))
            s[U(S_SL + j)] = F0
            s[U(S_SL2 + j)] = F0
            s[U(S_SXL + j)] = F0
        for i in range(SUB):
            for j in range(n):
                xi = s[U(S_X + i * LANES + j)]
                fl = np.float32(clamp_q(nearest_int(s[U(S_ISC + j)] * (xi - s[U(S_MIN + j)])), nmax))
                s[U(S_LA + i * LANES + j)] = fl
                wl = s[U(S_W + i * LANES + j)] * fl
                s[U(S_SL + j)] += wl
                s[U(S_SL2 + j)] += wl * fl
                s[U(S_SXL + j)] += wl * xi
        for j in range(n):
            sum_w = s[U(S_SUMW + j)]
            sum_x = s[U(S_SUMX + j)]
            sl = s[U(S_SL + j)]
            sl2 = s[U(S_SL2 + j)]
            sxl = s[U(S_SXL + j)]
            D = np.float32(sum_w * sl2 - sl * sl)
            this_scale = np.float32((sum_w * sxl - sum_x * sl) / D)
            this_min = np.float32((sl2 * sum_x - sl * sxl) / D)
            pos = this_min > F0
            s[U(S_TMIN + j)] = F0 if pos else this_min
            s[U(S_TSC + j)] = np.float32(sxl / sl2) if pos else this_scale
            s[U(S_D + j)] = D
            s[U(S_ERR + j)] = F0
        for i in range(SUB):
            for j in range(n):
                diff = np.float32(
                    s[U(S_TSC + j)] * s[U(S_LA + i * LANES + j)] + s[U(S_TMIN + j)] - s[U(S_X + i * LANES + j)]
                )
                s[U(S_ERR + j)] += s[U(S_W + i * LANES + j)] * (diff * diff)
        for j in range(n):
            take = (s[U(S_D + j)] > F0) & (s[U(S_ERR + j)] < s[U(S_BERR + j)])
            mn = s[U(S_MIN + j)]
            s[U(S_BERR + j)] = s[U(S_ERR + j)] if take else s[U(S_BERR + j)]
            s[U(S_BSC + j)] = s[U(S_TSC + j)] if take else s[U(S_BSC + j)]
            s[U(S_BISC + j)] = s[U(S_ISC + j)] if take else s[U(S_BISC + j)]
            s[U(S_BXMIN + j)] = mn if take else s[U(S_BXMIN + j)]
            s[U(S_MIN + j)] = s[U(S_TMIN + j)] if take else mn
    for j in range(n):
        mn0 = s[U(S_MIN0 + j)]
        mx = s[U(S_MAX + j)]
        degenerate = (mx <= mn0) if strict else (mx == mn0)
        s[U(S_SCALES + j)] = F0 if degenerate else s[U(S_BSC + j)]
        s[U(S_MINS + j)] = -mn0 if degenerate else -s[U(S_MIN + j)]
        s[U(S_BISC + j)] = F0 if degenerate else s[U(S_BISC + j)]


# ggml-quants.c: quantize_row_q4_K_ref / q5_K_ref, weights of each sub-block:
# weights[l] = av_x + fabsf(x[l]), av_x = sqrtf(sum_x2/32) over the sub-block.
@njit(**JIT)
def ref_weights(s, n):
    for j in range(n):
        s[U(S_SW + j)] = F0
    for i in range(SUB):
        for j in range(n):
            xi = s[U(S_X + i * LANES + j)]
            s[U(S_SW + j)] += xi * xi
    for j in range(n):
        s[U(S_SW + j)] = np.float32(np.sqrt(np.float32(s[U(S_SW + j)] / F32)))
    for i in range(SUB):
        for j in range(n):
            s[U(S_W + i * LANES + j)] = s[U(S_SW + j)] + np.float32(abs(s[U(S_X + i * LANES + j)]))


# ggml-quants.c: quantize_row_q4_K_impl / q5_K_impl, weights of each sub-block and sw[j]:
# weights[l] = qw[l] * sqrtf(sigma2 + x[l]*x[l]), sigma2 = 2*sum_x2/QK_K over the super-block.
@njit(**JIT)
def impl_weights(s, n, x, xo, qw):
    load_transposed(s, S_W, qw, xo, n)
    for sb in range(n // NSUB):
        o = xo + sb * QK_K
        sum_x2 = F0
        for l in range(QK_K):
            sum_x2 += x[o + l] * x[o + l]
        sigma2 = np.float32(F2 * sum_x2 / FQK_K)
        for j in range(NSUB):
            s[U(S_SIG + sb * NSUB + j)] = sigma2
    for i in range(SUB):
        for j in range(n):
            xi = s[U(S_X + i * LANES + j)]
            s[U(S_W + i * LANES + j)] *= np.float32(np.sqrt(np.float32(s[U(S_SIG + j)] + xi * xi)))
    for j in range(n):
        s[U(S_SW + j)] = F0
    for i in range(SUB):
        for j in range(n):
            s[U(S_SW + j)] += s[U(S_W + i * LANES + j)]


# ggml-quants.c: quantize_row_q4_K_ref / q5_K_ref, super-block scales of the super-block
# whose sub-blocks are lanes l0..l0+7: packs scales[12] at out[off:], returns (d, dmin).
@njit(**JIT)
def ref_pack_scales(s, l0, out, off):
    max_scale = F0
    max_min = F0
    for j in range(NSUB):
        sc = s[U(S_SCALES + l0 + j)]
        if sc > max_scale:
            max_scale = sc
        mn = s[U(S_MINS + l0 + j)]
        if mn > max_min:
            max_min = mn
    inv_scale = np.float32(F63 / max_scale) if max_scale > F0 else F0
    inv_min = np.float32(F63 / max_min) if max_min > F0 else F0
    for j in range(NSUB):
        ls = min(63, nearest_int(inv_scale * s[U(S_SCALES + l0 + j)]) & 0xFF)
        lm = min(63, nearest_int(inv_min * s[U(S_MINS + l0 + j)]) & 0xFF)
        put_scale_min_k4(j, out, off, ls, lm)
    return np.float32(max_scale / F63), np.float32(max_min / F63)


# ggml-quants.c: make_qp_quants(8, 63, x, L, quant_weights), for P = 2*nsb problems at once:
# lane p = 2*sb solves the scales, lane 2*sb + 1 the mins of the chunk's super-block sb (x in
# s[S_QX + i*LANES + p], weights in s[S_QW + ...]); L -> s[S_QL + ...], result -> s[S_QRES + p].
# Specialised rather than kquant.ggml.kernels._search.make_qp_quants: the 2 calls per super-block
# become SIMD lanes (~4x less time), and `max = MAX(max, x[i])` keeps C's NaN behaviour
# (MAX(a, b) = a > b ? a : b, so a NaN x[i] is taken; _search uses max(), which skips it).
# The refinement loop runs all 5 passes: a pass that changes nothing leaves the state as it
# was, so the passes after C's `break` change nothing either.
@njit(**JIT)
def qp_quants(s, P, nv, ntry):
    nmax = 63
    fnmax = np.float32(nmax)
    for p in range(P):
        s[U(S_QMAX + p)] = F0
    for i in range(nv):
        for p in range(P):
            mx = s[U(S_QMAX + p)]
            xi = s[U(S_QX + i * LANES + p)]
            s[U(S_QMAX + p)] = mx if mx > xi else xi
    for p in range(P):
        s[U(S_QISC + p)] = np.float32(fnmax / s[U(S_QMAX + p)])
        s[U(S_QBEST + p)] = F0
    for i in range(nv):
        for p in range(P):
            xi = s[U(S_QX + i * LANES + p)]
            iscale = s[U(S_QISC + p)]
            fl = np.float32(nearest_int(iscale * xi) & 0xFF)  # L[i] = nearest_int(...), uint8_t
            diff = np.float32(xi - np.float32(F1 / iscale) * fl)
            s[U(S_QBEST + p)] += s[U(S_QW + i * LANES + p)] * diff * diff
    for is_ in range(-4, 5):
        if is_ == 0:
            continue
        for p in range(P):
            s[U(S_QMSE + p)] = F0
        num = np.float32(F01 * np.float32(is_) + fnmax)
        for i in range(nv):
            for p in range(P):
                xi = s[U(S_QX + i * LANES + p)]
                iscale_is = np.float32(num / s[U(S_QMAX + p)])
                fl = np.float32(min(np.int32(nmax), nearest_int(iscale_is * xi)))
                diff = np.float32(xi - np.float32(F1 / iscale_is) * fl)
                s[U(S_QMSE + p)] += s[U(S_QW + i * LANES + p)] * diff * diff
        for p in range(P):
            take = s[U(S_QMSE + p)] < s[U(S_QBEST + p)]
            s[U(S_QBEST + p)] = s[U(S_QMSE + p)] if take else s[U(S_QBEST + p)]
            s[U(S_QISC + p)] = np.float32(num / s[U(S_QMAX + p)]) if take else s[U(S_QISC + p)]
    for p in range(P):
        s[U(S_QSLX + p)] = F0
        s[U(S_QSL2 + p)] = F0
    for i in range(nv):
        for p in range(P):
            xi = s[U(S_QX + i * LANES + p)]
            w = s[U(S_QW + i * LANES + p)]
            l = min(np.int32(nmax), nearest_int(s[U(S_QISC + p)] * xi))
            fl = np.float32(l)
            s[U(S_QL + i * LANES + p)] = np.float32(l & 0xFF)
            s[U(S_QSLX + p)] += w * xi * fl
            s[U(S_QSL2 + p)] += w * fl * fl
    for itry in range(ntry):
        for i in range(nv):
            for p in range(P):
                xi = s[U(S_QX + i * LANES + p)]
                w = s[U(S_QW + i * LANES + p)]
                fLi = s[U(S_QL + i * LANES + p)]
                sumlx = s[U(S_QSLX + p)]
                suml2 = s[U(S_QSL2 + p)]
                slx = np.float32(sumlx - w * xi * fLi)
                sl2 = np.float32(suml2 - w * fLi * fLi)
                new_l = min(np.int32(nmax), nearest_int(xi * sl2 / slx))
                fnl = np.float32(new_l)
                slx = np.float32(slx + w * xi * fnl)
                sl2 = np.float32(sl2 + w * fnl * fnl)
                take = (
                    (s[U(S_QSLX + p)] - w * xi * fLi > F0)
                    & (s[U(S_QSL2 + p)] - w * fLi * fLi > F0)
                    & (np.int32(fLi) != new_l)
                    & (slx * slx * suml2 > sumlx * sumlx * sl2)
                )
                s[U(S_QL + i * LANES + p)] = np.float32(new_l & 0xFF) if take else fLi
                s[U(S_QSLX + p)] = slx if take else sumlx
                s[U(S_QSL2 + p)] = sl2 if take else suml2
    for p in range(P):
        allzero = s[U(S_QMAX + p)] < GROUP_MAX_EPS
        suml2 = s[U(S_QSL2 + p)]
        res = np.float32(s[U(S_QSLX + p)] / suml2) if suml2 > F0 else F0
        s[U(S_QRES + p)] = F0 if allzero else res
    for i in range(nv):
        for p in range(P):
            allzero = s[U(S_QMAX + p)] < GROUP_MAX_EPS
            s[U(S_QL + i * LANES + p)] = F0 if allzero else s[U(S_QL + i * LANES + p)]


# ggml-quants.c: quantize_row_q4_K_impl / q5_K_impl, the super-block scales:
# d_block = make_qp_quants(8, 63, scales, Ls, sw), m_block = make_qp_quants(8, 63, mins, Lm, sw)
# for the nsb super-blocks of the chunk (lanes of qp_quants: 2*sb and 2*sb + 1).
@njit(**JIT)
def impl_qp_inputs(s, nsb):
    for i in range(NSUB):
        for sb in range(nsb):
            s[U(S_QX + i * LANES + 2 * sb)] = s[U(S_SCALES + sb * NSUB + i)]
            s[U(S_QX + i * LANES + 2 * sb + 1)] = s[U(S_MINS + sb * NSUB + i)]
            sw = s[U(S_SW + sb * NSUB + i)]
            s[U(S_QW + i * LANES + 2 * sb)] = sw
            s[U(S_QW + i * LANES + 2 * sb + 1)] = sw
    # n = 8 values and 5 refinement passes, as values LLVM cannot see (s.shape[0] == SCRATCH at
    # run time): constant trip counts get every lane loop unrolled 8-40 times over, which costs
    # seconds of compile time and buys nothing measurable.
    one = np.int64(s.shape[0] // SCRATCH)
    qp_quants(s, 2 * nsb, one * NSUB, one * 5)


# ggml-quants.c: quantize_row_q4_K_impl / q5_K_impl, packing Ls/Lm of super-block sb
# (q5_K_impl clamps them to 63, q4_K_impl does not); returns (d_block, m_block).
@njit(**JIT)
def impl_pack_scales(s, sb, out, off, clamp63):
    for j in range(NSUB):
        ls = np.int32(s[U(S_QL + j * LANES + 2 * sb)])
        lm = np.int32(s[U(S_QL + j * LANES + 2 * sb + 1)])
        if clamp63:
            ls = min(63, ls)
            lm = min(63, lm)
        put_scale_min_k4(j, out, off, ls, lm)
    return s[U(S_QRES + 2 * sb)], s[U(S_QRES + 2 * sb + 1)]


# ggml-quants.c: stores d, dmin and reads back each sub-block's d = fp16(d)*sc, dm = fp16(dmin)*m
# for the final pass (lanes l0..l0+7).
@njit(**JIT)
def put_d_dmin(s, l0, out, d_off, dmin_off, scales_off, d, dmin):
    put_f16(out, d_off, d)
    put_f16(out, dmin_off, dmin)
    d = fp16_round(d)
    dmin = fp16_round(dmin)
    for j in range(NSUB):
        sc, m = get_scale_min_k4(j, out, scales_off)
        s[U(S_DQ + l0 + j)] = d * np.float32(sc)
        s[U(S_DMQ + l0 + j)] = dmin * np.float32(m)


# ggml-quants.c: the final pass of quantize_row_q4_K/q5_K _ref/_impl:
# L = MAX(0, MIN(nmax, nearest_int((x + dm)/d))) if d != 0, else make_qkx*'s L. -> s[S_L]
@njit(**JIT)
def final_quants(s, n, nmax):
    for i in range(SUB):
        for j in range(n):
            xi = s[U(S_X + i * LANES + j)]
            d = s[U(S_DQ + j)]
            lq = clamp_q(nearest_int(np.float32(xi + s[U(S_DMQ + j)]) / d), nmax)
            lf = clamp_q(nearest_int(s[U(S_BISC + j)] * (xi - s[U(S_BXMIN + j)])), nmax)
            s[U(S_L + i * LANES + j)] = np.float32(lq if d != F0 else lf)


# ggml-quants.c: quantize_row_q4_K_ref / quantize_row_q4_K_impl, the qs packing:
# qs[32*g + i] = L[64g + i] | L[64g + 32 + i] << 4 (sub-blocks 2g, 2g+1 = lanes l0+2g, +1).
@njit(**JIT)
def pack_q4(s, l0, out, qo):
    for g in range(NSUB // 2):
        for i in range(SUB):
            lo = np.int32(s[U(S_L + i * LANES + l0 + 2 * g)])
            hi = np.int32(s[U(S_L + i * LANES + l0 + 2 * g + 1)])
            out[qo + SUB * g + i] = np.uint8(lo | (hi << 4))


# ggml-quants.c: quantize_row_q5_K_ref / quantize_row_q5_K_impl, the qh/qs packing of the
# super-block in lanes l0..l0+7: bit j of qh[i] = L[32*j + i] > 15;
# qs[32*g + i] = (L[64g + i] & 15) | (L[64g + 32 + i] & 15) << 4.
@njit(**JIT)
def pack_q5(s, l0, out, off):
    for i in range(SUB):
        h = np.int32(0)
        for j in range(NSUB):
            h |= np.int32(s[U(S_L + i * LANES + l0 + j)] > F15) << j
        out[off + Q5K_QH + i] = np.uint8(h)
    for g in range(NSUB // 2):
        for i in range(SUB):
            lo = np.int32(s[U(S_L + i * LANES + l0 + 2 * g)]) & 0xF
            hi = np.int32(s[U(S_L + i * LANES + l0 + 2 * g + 1)]) & 0xF
            out[off + Q5K_QS + SUB * g + i] = np.uint8(lo | (hi << 4))


# ggml-quants.c: quantize_q4_K and quantize_q5_K (quantize_row_q*_K_ref over all rows when
# quant_weights is NULL, else quantize_row_q*_K_impl per row; q5 = 0: Q4_K, 1: Q5_K), a chunk
# of nsb super-blocks of a row starting at super-block c0 at a time. One driver serves both types
# (the type follows from the row size: 144 or 176 bytes per super-block) so numba compiles
# it once; the chunk step is written out in it, not called (every compiled call level costs a
# re-optimization of all it calls).
@njit(nogil=True, **JIT)
def quantize_q4_k_q5_k(x, qw, out):
    nbt = x.shape[1] // QK_K
    q5 = np.int64(1 if nbt > 0 and out.shape[1] == nbt * Q5K_BYTES else 0)
    weighted = qw.shape[0] > 0
    nmax = np.int64(31 if q5 else 15)
    bs = Q5K_BYTES if q5 else Q4K_BYTES
    for r in range(x.shape[0]):
        s = np.empty(SCRATCH, dtype=np.float32)
        xr = x[r]
        orow = out[r]
        for c0 in range(0, nbt, SB_PER_CHUNK):
            nsb = min(SB_PER_CHUNK, nbt - c0)
            n = nsb * NSUB
            xo = c0 * QK_K
            load_transposed(s, S_X, xr, xo, n)
            if weighted:  # make_qkx3_quants(32, nmax, x, weights, L, &the_min, Laux, -0.9f, 0.05f, 36, false)
                impl_weights(s, n, xr, xo, qw)
                search_qkx(s, n, nmax, IMPL_RMIN, IMPL_RDELTA, np.int64(IMPL_NSTEP), weighted)
                impl_qp_inputs(s, nsb)
            elif q5:  # make_qkx2_quants(32, 31, x, weights, L, &the_min, Laux, -0.5f, 0.1f, 15, false)
                ref_weights(s, n)
                search_qkx(s, n, nmax, Q5K_REF_RMIN, Q5K_REF_RDELTA, np.int64(Q5K_REF_NSTEP), weighted)
            else:  # make_qkx2_quants(32, 15, x, weights, L, &the_min, Laux, -1.f, 0.1f, 20, false)
                ref_weights(s, n)
                search_qkx(s, n, nmax, Q4K_REF_RMIN, Q4K_REF_RDELTA, np.int64(Q4K_REF_NSTEP), weighted)
            for sb in range(nsb):
                off = (c0 + sb) * bs
                if weighted:
                    d, dmin = impl_pack_scales(s, sb, orow, off + Q4K_SCALES, q5)  # q5_K_impl clamps Ls/Lm to 63
                else:
                    d, dmin = ref_pack_scales(s, sb * NSUB, orow, off + Q4K_SCALES)
                put_d_dmin(s, sb * NSUB, orow, off + Q4K_D, off + Q4K_DMIN, off + Q4K_SCALES, d, dmin)
            final_quants(s, n, nmax)
            for sb in range(nsb):
                if q5:
                    pack_q5(s, sb * NSUB, orow, (c0 + sb) * Q5K_BYTES)
                else:
                    pack_q4(s, sb * NSUB, orow, (c0 + sb) * Q4K_BYTES + Q4K_QS)


quantize_q4_k = quantize_q4_k_q5_k


# ggml-quants.c: dequantize_row_q4_K, one super-block. `sub` is SUB (32) passed as a run-time
# value: with a constant trip count LLVM unrolls these loops into scalar code instead of
# vectorizing them (numba runs LLVM without the SLP vectorizer).
@njit(**JIT)
def q4_k_dequant_block(q, off, y, yo, sub):
    d = get_f16(q, off + Q4K_D)
    dmin = get_f16(q, off + Q4K_DMIN)
    for g in range(NSUB // 2):
        d1, m1, d2, m2 = pair_scales(q, off, g, d, dmin)
        qo = off + Q4K_QS + SUB * g
        o = yo + 2 * SUB * g
        for l in range(sub):
            y[U(o + l)] = d1 * np.float32(np.int32(q[U(qo + l)]) & np.int32(0xF)) - m1
        for l in range(sub):
            y[U(o + SUB + l)] = d2 * np.float32(np.int32(q[U(qo + l)]) >> np.int32(4)) - m2


@njit(nogil=True, **JIT)
def dequantize_q4_k(q, out):
    nb = out.shape[1] // QK_K
    sub = out.shape[1] // max(nb, 1) // NSUB  # == SUB
    for r in range(out.shape[0]):
        qr = q[r]
        yr = out[r]
        for b in range(nb):
            q4_k_dequant_block(qr, b * Q4K_BYTES, yr, b * QK_K, sub)


KERNELS = {QType.Q4_K: Kernel(quantize_q4_k, dequantize_q4_k)}
