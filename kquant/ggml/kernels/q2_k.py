"""ggml's Q2_K (2-bit k-quant with 4-bit scales and mins per 16 values), ported to Numba.

Ports, from ggml/src/ggml-quants.c (llama.cpp as vendored in llama-cpp-python 0.3.36):
  quantize_row_q2_K_ref    the unweighted path (ggml_quantize_chunk with NULL weights)
  quantize_row_q2_K_impl   the importance-weighted path
  dequantize_row_q2_K
byte for byte. Every float expression is evaluated in float32, op by op, in C's order.

Speed: the 16 sub-blocks of a super-block are lanes (see kquant/ggml/kernels/q6_k.py):
make_qkx2_quants / make_qkx3_quants run for all of them at once (`qkx_search16`), each lane
following ggml's sequence of candidate scales exactly.

Block layout (block_q2_K, ggml-common.h, 84 bytes):

    offset  0  scales[16]  per sub-block: bit 3..0 = scale, bit 7..4 = min
    offset 16  qs[64]      2-bit quants
    offset 80  d           fp16 super-block scale of the scales
    offset 82  dmin        fp16 super-block scale of the mins

value[k] = d * (scales[k/16] & 0xF) * L[k] - dmin * (scales[k/16] >> 4), L[k] = 0..3, and for
k = 128*h + 32*t + l (h = 0, 1; t = 0..3; l = 0..31):

    qs[32*h + l]:  bit 7-6        5-4             3-2             1-0
                   L[128h+96+l]   L[128h+64+l]    L[128h+32+l]    L[128h+l]
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
    W_L,
    W_LANES,
    W_WT,
    W_X,
    W_XT,
    level,
    load_block,
    load_transposed,
    nearest_int,
    pack_2bit,
    requantize,
    sel,
    set_requant,
    sum16,
)

TS = QType.Q2_K.type_size  # 84 bytes per block
OFF_SC, OFF_QS, OFF_D, OFF_DMIN = field_offsets(QType.Q2_K, "scales", "qs", "d", "dmin")  # 0, 16, 80, 82
NMAX = 3  # make_qkx{2,3}_quants(16, 3, ...)
NMAX_SC = 15  # 4-bit scales and mins
NTRY = 5  # make_qp_quants' refinement passes

_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_F01 = np.float32(0.1)
_F3 = np.float32(NMAX)
_Q4SCALE = np.float32(15.0)
_QKF = np.float32(QK_K)
# make_qkx2_quants(16, 3, x, |x|, L, &min, Laux, -0.5f, 0.1f, 15, true) in quantize_row_q2_K_ref
REF_RMIN, REF_RDELTA, REF_NSTEP = np.float32(-0.5), np.float32(0.1), 15
# make_qkx3_quants(16, 3, x, weight, L, &min, Laux, -0.9f, 0.05f, 36, false) in quantize_row_q2_K_impl
IMPL_RMIN, IMPL_RDELTA, IMPL_NSTEP = np.float32(-0.9), np.float32(0.05), 36

# Work array: q6_k's W_XT, W_WT, W_X, W_L, then this module's lane arrays [16].
W_MIN = W_LANES  # running min (ggml's `min`, updated when a candidate wins)
W_MAX = W_LANES + 16  # max
W_SUMW = W_LANES + 32  # sum_w
W_SUMX = W_LANES + 48  # sum_x
W_BEST = W_LANES + 64  # best_error / best_mad
W_SCALE = W_LANES + 80  # scale of the best candidate
W_LISC = W_LANES + 96  # iscale that produced the current L
W_LMIN = W_LANES + 112  # min that produced the current L
W_DEGEN = W_LANES + 128  # 1.0 where ggml returns early (max == min, or max <= min)
W_SCALES = W_LANES + 144  # results: scales[16]
W_MINS = W_LANES + 160  # results: mins[16] (the_min = -min)
W_SW = W_LANES + 176  # sum of weights per sub-block (impl)
WORK = W_LANES + 192


@njit(cache=True, no_cfunc_wrapper=True, inline="always")
def _init_step(mn, mx, sw, sx, v, w):
    """if (x < min) min = x; if (x > max) max = x; sum_w += w; sum_x += w*x."""
    return sel(v < mn, v, mn), sel(v > mx, v, mx), sw + w, sx + w * v


@njit(cache=True, no_cfunc_wrapper=True, inline="always")
def _sums_step(sl, sl2, sxl, iv, mn, v, w):
    """l = MAX(0, MIN(nmax, nearest_int(iscale*(x - min)))); sum_l += w*l; sum_l2 += w*l*l; sum_xl += w*l*x."""
    fl = level(iv * (v - mn), 0, NMAX)
    wl = w * fl
    return sl + wl, sl2 + wl * fl, sxl + wl * v


@njit(cache=True, no_cfunc_wrapper=True, inline="always")
def _err_step(e, iv, mn, scale, vmin, v, w, use_mad):
    """error += w * |scale*l + min - x| (use_mad) or w * (scale*l + min - x)^2, l as in _sums_step."""
    fl = level(iv * (v - mn), 0, NMAX)
    diff = scale * fl + vmin - v
    return e + w * sel(use_mad, np.float32(abs(diff)), diff * diff)


@njit(cache=True, no_cfunc_wrapper=True, inline="always")
def _candidate16(iv, mn, first, wk, s, use_mad):
    """One candidate of make_qkx{2,3}_quants in lane s -> (error, D, scale, min).

    l = MAX(0, MIN(nmax, nearest_int(iscale*(x - min)))) for the 16 values, ggml's weighted
    least-squares fit of scale and min to them, then the error of that fit. `first` is ggml's
    opening pass: scale = 1/iscale, min unchanged, no fit. Both chains are written out in ggml's
    element order; the error chain recomputes l (LLVM merges the two).
    """
    a = _F0
    b = _F0
    c = _F0
    a, b, c = _sums_step(a, b, c, iv, mn, wk[W_XT + s + 0], wk[W_WT + s + 0])
    a, b, c = _sums_step(a, b, c, iv, mn, wk[W_XT + s + 16], wk[W_WT + s + 16])
    a, b, c = _sums_step(a, b, c, iv, mn, wk[W_XT + s + 32], wk[W_WT + s + 32])
    a, b, c = _sums_step(a, b, c, iv, mn, wk[W_XT + s + 48], wk[W_WT + s + 48])
    a, b, c = _sums_step(a, b, c, iv, mn, wk[W_XT + s + 64], wk[W_WT + s + 64])
    a, b, c = _sums_step(a, b, c, iv, mn, wk[W_XT + s + 80], wk[W_WT + s + 80])
    a, b, c = _sums_step(a, b, c, iv, mn, wk[W_XT + s + 96], wk[W_WT + s + 96])
    a, b, c = _sums_step(a, b, c, iv, mn, wk[W_XT + s + 112], wk[W_WT + s + 112])
    a, b, c = _sums_step(a, b, c, iv, mn, wk[W_XT + s + 128], wk[W_WT + s + 128])
    a, b, c = _sums_step(a, b, c, iv, mn, wk[W_XT + s + 144], wk[W_WT + s + 144])
    a, b, c = _sums_step(a, b, c, iv, mn, wk[W_XT + s + 160], wk[W_WT + s + 160])
    a, b, c = _sums_step(a, b, c, iv, mn, wk[W_XT + s + 176], wk[W_WT + s + 176])
    a, b, c = _sums_step(a, b, c, iv, mn, wk[W_XT + s + 192], wk[W_WT + s + 192])
    a, b, c = _sums_step(a, b, c, iv, mn, wk[W_XT + s + 208], wk[W_WT + s + 208])
    a, b, c = _sums_step(a, b, c, iv, mn, wk[W_XT + s + 224], wk[W_WT + s + 224])
    a, b, c = _sums_step(a, b, c, iv, mn, wk[W_XT + s + 240], wk[W_WT + s + 240])
    sum_w = wk[W_SUMW + s]
    sum_x = wk[W_SUMX + s]
    D = sum_w * b - a * a
    this_scale = (sum_w * c - sum_x * a) / D
    this_min = (b * sum_x - a * c) / D
    pos = this_min > _F0
    this_scale = sel(pos, np.float32(c / b), this_scale)
    this_min = sel(pos, _F0, this_min)
    scale = sel(first, np.float32(_F1 / iv), this_scale)
    vmin = sel(first, mn, this_min)
    e = _F0
    e = _err_step(e, iv, mn, scale, vmin, wk[W_XT + s + 0], wk[W_WT + s + 0], use_mad)
    e = _err_step(e, iv, mn, scale, vmin, wk[W_XT + s + 16], wk[W_WT + s + 16], use_mad)
    e = _err_step(e, iv, mn, scale, vmin, wk[W_XT + s + 32], wk[W_WT + s + 32], use_mad)
    e = _err_step(e, iv, mn, scale, vmin, wk[W_XT + s + 48], wk[W_WT + s + 48], use_mad)
    e = _err_step(e, iv, mn, scale, vmin, wk[W_XT + s + 64], wk[W_WT + s + 64], use_mad)
    e = _err_step(e, iv, mn, scale, vmin, wk[W_XT + s + 80], wk[W_WT + s + 80], use_mad)
    e = _err_step(e, iv, mn, scale, vmin, wk[W_XT + s + 96], wk[W_WT + s + 96], use_mad)
    e = _err_step(e, iv, mn, scale, vmin, wk[W_XT + s + 112], wk[W_WT + s + 112], use_mad)
    e = _err_step(e, iv, mn, scale, vmin, wk[W_XT + s + 128], wk[W_WT + s + 128], use_mad)
    e = _err_step(e, iv, mn, scale, vmin, wk[W_XT + s + 144], wk[W_WT + s + 144], use_mad)
    e = _err_step(e, iv, mn, scale, vmin, wk[W_XT + s + 160], wk[W_WT + s + 160], use_mad)
    e = _err_step(e, iv, mn, scale, vmin, wk[W_XT + s + 176], wk[W_WT + s + 176], use_mad)
    e = _err_step(e, iv, mn, scale, vmin, wk[W_XT + s + 192], wk[W_WT + s + 192], use_mad)
    e = _err_step(e, iv, mn, scale, vmin, wk[W_XT + s + 208], wk[W_WT + s + 208], use_mad)
    e = _err_step(e, iv, mn, scale, vmin, wk[W_XT + s + 224], wk[W_WT + s + 224], use_mad)
    e = _err_step(e, iv, mn, scale, vmin, wk[W_XT + s + 240], wk[W_WT + s + 240], use_mad)
    return e, D, scale, vmin


# ggml-quants.c: make_qkx2_quants (strict_degen=True: `max == min`) and make_qkx3_quants with
# weights (`max <= min`), n = 16, nmax = 3, for the 16 sub-blocks at once. Specialised from
# kquant/ggml/kernels/_search.py for speed: lanes = sub-blocks. Each candidate `is` is tried in order
# in every lane; ggml's "keep it if the error is smaller" becomes selects. Laux is not stored:
# the quants of a lane are re-derived at the end from the (iscale, min) that produced them.
@njit(cache=True, no_cfunc_wrapper=True, error_model="numpy")
def qkx_search16(wk, rmin, rdelta, nstep, use_mad, strict_degen):
    """Lanes read wk[W_XT], wk[W_WT]; writes wk[W_SCALES + s], wk[W_MINS + s] (the_min) and
    wk[W_L + 16*s + i] (L, 0..3)."""
    for s in range(NSUB):  # vectorized over s
        v = wk[W_XT + s]
        sw = wk[W_WT + s]
        mn = v
        mx = v
        sx = sw * v
        mn, mx, sw, sx = _init_step(mn, mx, sw, sx, wk[W_XT + s + 16], wk[W_WT + s + 16])
        mn, mx, sw, sx = _init_step(mn, mx, sw, sx, wk[W_XT + s + 32], wk[W_WT + s + 32])
        mn, mx, sw, sx = _init_step(mn, mx, sw, sx, wk[W_XT + s + 48], wk[W_WT + s + 48])
        mn, mx, sw, sx = _init_step(mn, mx, sw, sx, wk[W_XT + s + 64], wk[W_WT + s + 64])
        mn, mx, sw, sx = _init_step(mn, mx, sw, sx, wk[W_XT + s + 80], wk[W_WT + s + 80])
        mn, mx, sw, sx = _init_step(mn, mx, sw, sx, wk[W_XT + s + 96], wk[W_WT + s + 96])
        mn, mx, sw, sx = _init_step(mn, mx, sw, sx, wk[W_XT + s + 112], wk[W_WT + s + 112])
        mn, mx, sw, sx = _init_step(mn, mx, sw, sx, wk[W_XT + s + 128], wk[W_WT + s + 128])
        mn, mx, sw, sx = _init_step(mn, mx, sw, sx, wk[W_XT + s + 144], wk[W_WT + s + 144])
        mn, mx, sw, sx = _init_step(mn, mx, sw, sx, wk[W_XT + s + 160], wk[W_WT + s + 160])
        mn, mx, sw, sx = _init_step(mn, mx, sw, sx, wk[W_XT + s + 176], wk[W_WT + s + 176])
        mn, mx, sw, sx = _init_step(mn, mx, sw, sx, wk[W_XT + s + 192], wk[W_WT + s + 192])
        mn, mx, sw, sx = _init_step(mn, mx, sw, sx, wk[W_XT + s + 208], wk[W_WT + s + 208])
        mn, mx, sw, sx = _init_step(mn, mx, sw, sx, wk[W_XT + s + 224], wk[W_WT + s + 224])
        mn, mx, sw, sx = _init_step(mn, mx, sw, sx, wk[W_XT + s + 240], wk[W_WT + s + 240])
        mn = sel(mn > _F0, _F0, mn)
        degen = sel(strict_degen, mx == mn, mx <= mn)
        wk[W_MIN + s] = mn
        wk[W_MAX + s] = mx
        wk[W_SUMW + s] = sw
        wk[W_SUMX + s] = sx
        wk[W_DEGEN + s] = sel(degen, _F1, _F0)
    # it = 0 is ggml's opening pass (iscale = nmax/(max - min), always kept), it = k + 1 tries is = k
    for it in range(nstep + 2):
        first = it == 0
        step = sel(first, _F3, np.float32(rmin + rdelta * np.float32(it - 1)) + _F3)
        for s in range(NSUB):  # vectorized over s
            mn = wk[W_MIN + s]
            iscale = step / (wk[W_MAX + s] - mn)
            cur, D, this_scale, this_min = _candidate16(iscale, mn, first, wk, s, use_mad)
            take = first | ((D > _F0) & (cur < wk[W_BEST + s]))
            wk[W_BEST + s] = sel(take, cur, wk[W_BEST + s])
            wk[W_SCALE + s] = sel(take, this_scale, wk[W_SCALE + s])
            wk[W_LISC + s] = sel(take, iscale, wk[W_LISC + s])
            wk[W_LMIN + s] = sel(take, mn, wk[W_LMIN + s])
            wk[W_MIN + s] = sel(take, this_min, mn)
    for s in range(NSUB):
        degen = wk[W_DEGEN + s] != _F0
        wk[W_SCALES + s] = sel(degen, _F0, wk[W_SCALE + s])
        wk[W_MINS + s] = -wk[W_MIN + s]  # a degenerate lane kept its clamped min
        iv = wk[W_LISC + s]
        mn = wk[W_LMIN + s]
        for i in range(SUB):
            l = level(iv * (wk[W_X + SUB * s + i] - mn), 0, NMAX)
            wk[W_L + SUB * s + i] = sel(degen, _F0, l)


# ggml-quants.c: make_qp_quants(16, 15, x, L, quant_weights); x = wk[xo:xo+16], weights wk[W_SW:+16]
@njit(cache=True, no_cfunc_wrapper=True, error_model="numpy")
def qp_quants(wk, xo, nmax, L):
    """Scalar port (two calls per super-block); uint8 L as in C, including its wrap-around."""
    fmax = _F0
    for i in range(SUB):
        v = wk[xo + i]
        fmax = fmax if fmax > v else v
    if fmax < GROUP_MAX_EPS:  # all zero
        for i in range(SUB):
            L[i] = 0
        return _F0
    fnmax = np.float32(nmax)
    iscale = np.float32(fnmax / fmax)
    for i in range(SUB):
        L[i] = np.uint8(nearest_int(iscale * wk[xo + i]) & 0xFF)
    scale = np.float32(_F1 / iscale)
    best_mse = _F0
    for i in range(SUB):
        diff = wk[xo + i] - scale * np.float32(L[i])
        best_mse += wk[W_SW + i] * diff * diff
    for is_ in range(-4, 5):
        if is_ == 0:
            continue
        iscale_is = np.float32(_F01 * np.float32(is_) + fnmax) / fmax
        scale_is = np.float32(_F1 / iscale_is)
        mse = _F0
        for i in range(SUB):
            l = min(np.int32(nmax), nearest_int(iscale_is * wk[xo + i]))
            diff = wk[xo + i] - scale_is * np.float32(l)
            mse += wk[W_SW + i] * diff * diff
        if mse < best_mse:
            best_mse = mse
            iscale = iscale_is
    sumlx = _F0
    suml2 = _F0
    for i in range(SUB):
        v = wk[xo + i]
        w = wk[W_SW + i]
        l = min(np.int32(nmax), nearest_int(iscale * v))
        L[i] = np.uint8(l & 0xFF)
        fl = np.float32(l)
        sumlx += w * v * fl
        suml2 += w * fl * fl
    for _ in range(NTRY):
        n_changed = 0
        for i in range(SUB):
            v = wk[xo + i]
            w = wk[W_SW + i]
            li = np.int32(L[i])
            fli = np.float32(li)
            slx = sumlx - w * v * fli
            sl2 = suml2 - w * fli * fli
            if slx > _F0 and sl2 > _F0:
                new_l = min(np.int32(nmax), nearest_int(v * sl2 / slx))
                if new_l != li:
                    fnl = np.float32(new_l)
                    slx += w * v * fnl
                    sl2 += w * fnl * fnl
                    if slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = np.uint8(new_l & 0xFF)
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    return np.float32(sumlx / suml2) if suml2 > _F0 else _F0


@njit(cache=True, no_cfunc_wrapper=True, inline="always")
def _get_h(y, pos):
    return fp16_to_fp32(np.uint32(y[pos]) | (np.uint32(y[pos + 1]) << np.uint32(8)))


@njit(cache=True, no_cfunc_wrapper=True, inline="always")
def _put_h(y, pos, h):
    y[pos] = np.uint8(h & np.uint16(0xFF))
    y[pos + 1] = np.uint8(h >> np.uint16(8))


# ggml-quants.c: the tail shared by quantize_row_q2_K_ref and quantize_row_q2_K_impl
@njit(cache=True, no_cfunc_wrapper=True, error_model="numpy")
def requantize_pack(wk, y, yo):
    """Re-round each sub-block with its stored scale and min (l = (x + m)/d), then write qs."""
    dd = _get_h(y, yo + OFF_D)
    dm = _get_h(y, yo + OFF_DMIN)
    for j in range(NSUB):
        sc = np.int32(y[yo + OFF_SC + j])
        set_requant(wk, j, np.float32(dd * np.float32(sc & 0xF)), np.float32(dm * np.float32(sc >> 4)))
    requantize(wk, 0, NMAX, _F0, True)
    pack_2bit(wk, y, yo + OFF_QS)


# ggml-quants.c: quantize_row_q2_K_ref, one super-block
@njit(cache=True, no_cfunc_wrapper=True, error_model="numpy")
def quantize_block_q2_k_ref(x, base, y, yo, wk):
    load_block(x, base, wk, W_XT, W_X)
    for k in range(QK_K):
        wk[W_WT + k] = np.float32(abs(wk[W_XT + k]))
    # np.int64 / np.bool_: plain (not literal) argument types, so that the ref and impl paths
    # share one compiled qkx_search16 instead of one specialization each
    qkx_search16(wk, REF_RMIN, REF_RDELTA, np.int64(REF_NSTEP), np.bool_(True), np.bool_(True))
    max_scale = _F0
    max_min = _F0
    for j in range(NSUB):
        scale = wk[W_SCALES + j]
        if scale > max_scale:
            max_scale = scale
        vmin = wk[W_MINS + j]
        if vmin > max_min:
            max_min = vmin
    if max_scale > _F0:
        iscale = np.float32(_Q4SCALE / max_scale)
        for j in range(NSUB):
            y[yo + OFF_SC + j] = np.uint8(nearest_int(iscale * wk[W_SCALES + j]) & 0xFF)
        _put_h(y, yo + OFF_D, fp32_to_fp16(np.float32(max_scale / _Q4SCALE)))
    else:
        for j in range(NSUB):
            y[yo + OFF_SC + j] = 0
        _put_h(y, yo + OFF_D, fp32_to_fp16(_F0))
    if max_min > _F0:
        iscale = np.float32(_Q4SCALE / max_min)
        for j in range(NSUB):
            y[yo + OFF_SC + j] |= np.uint8((nearest_int(iscale * wk[W_MINS + j]) << 4) & 0xFF)
        _put_h(y, yo + OFF_DMIN, fp32_to_fp16(np.float32(max_min / _Q4SCALE)))
    else:
        _put_h(y, yo + OFF_DMIN, fp32_to_fp16(_F0))
    requantize_pack(wk, y, yo)


# ggml-quants.c: quantize_row_q2_K_impl, one super-block
@njit(cache=True, no_cfunc_wrapper=True, error_model="numpy")
def quantize_block_q2_k_impl(x, base, qw, y, yo, wk, Ls, Lm):
    sumx2 = _F0
    for j in range(QK_K):
        sumx2 += x[base + j] * x[base + j]
    sigma2 = np.float32(sumx2 / _QKF)
    load_block(x, base, wk, W_XT, W_X)
    load_transposed(qw, base, wk, W_WT)
    for k in range(QK_K):  # weight = qw * sqrtf(sigma2 + x*x)
        v = wk[W_XT + k]
        wk[W_WT + k] = wk[W_WT + k] * np.float32(np.sqrt(np.float32(sigma2 + v * v)))
    for s in range(NSUB):  # vectorized over s
        wk[W_SW + s] = sum16(wk, W_WT + s)
    qkx_search16(wk, IMPL_RMIN, IMPL_RDELTA, np.int64(IMPL_NSTEP), np.bool_(False), np.bool_(False))

    # np.int64: plain argument types, one compiled qp_quants for both calls (not one per constant)
    dm = qp_quants(wk, np.int64(W_SCALES), np.int64(NMAX_SC), Ls)
    mm = qp_quants(wk, np.int64(W_MINS), np.int64(NMAX_SC), Lm)
    _put_h(y, yo + OFF_D, fp32_to_fp16(dm))
    _put_h(y, yo + OFF_DMIN, fp32_to_fp16(mm))
    for j in range(NSUB):
        y[yo + OFF_SC + j] = Ls[j] | (Lm[j] << np.uint8(4))
    requantize_pack(wk, y, yo)


@njit(nogil=True, cache=True, no_cfunc_wrapper=True, error_model="numpy")
def quantize(x, qw, out):
    """ggml_quantize_chunk(GGML_TYPE_Q2_K, x, out, 0, rows, cols, qw or NULL). The row loop is
    here, not in a function of its own: every compiled call level costs a re-optimization of
    all it calls."""
    wk = np.empty(WORK, np.float32)
    Ls = np.empty(NSUB, np.uint8)
    Lm = np.empty(NSUB, np.uint8)
    for r in range(x.shape[0]):
        xr = x[r]
        y = out[r]
        for b in range(xr.shape[0] // QK_K):
            if qw.shape[0] == 0:
                quantize_block_q2_k_ref(xr, b * QK_K, y, b * TS, wk)
            else:
                quantize_block_q2_k_impl(xr, b * QK_K, qw, y, b * TS, wk, Ls, Lm)


# ggml-quants.c: dequantize_row_q2_K
@njit(cache=True, no_cfunc_wrapper=True, error_model="numpy")
def dequantize_row_q2_k(q, y):
    """One row of blocks q uint8[nb*84] -> y float32[nb*256]."""
    for b in range(q.shape[0] // TS):
        qo = b * TS
        yo = b * QK_K
        d = _get_h(q, qo + OFF_D)
        vmin = _get_h(q, qo + OFF_DMIN)
        for g in range(8):  # values 32g .. 32g+31: qs byte 32*(g//4) + m, bits 2*(g%4)
            qs = qo + OFF_QS + 32 * (g // 4)
            sh = 2 * (g % 4)
            s0 = np.int32(q[qo + OFF_SC + 2 * g])  # sub-blocks 2g, 2g + 1
            s1 = np.int32(q[qo + OFF_SC + 2 * g + 1])
            dl0 = np.float32(d * np.float32(s0 & 0xF))
            ml0 = np.float32(vmin * np.float32(s0 >> 4))
            dl1 = np.float32(d * np.float32(s1 & 0xF))
            ml1 = np.float32(vmin * np.float32(s1 >> 4))
            for m in range(32):
                l = (np.int32(q[qs + m]) >> sh) & 3
                first = m < SUB
                y[yo + 32 * g + m] = sel(first, dl0, dl1) * np.float32(l) - sel(first, ml0, ml1)


@njit(nogil=True, cache=True, no_cfunc_wrapper=True, error_model="numpy")
def dequantize(q, out):
    """ggml dequantize_row_q2_K over every row."""
    for r in range(q.shape[0]):
        dequantize_row_q2_k(q[r], out[r])


KERNELS = {QType.Q2_K: Kernel(quantize, dequantize)}
