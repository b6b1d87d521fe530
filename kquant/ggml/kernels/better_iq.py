"""`rounding="best"` for the grid i-quants IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S: the
super-block scale and the sub-block scales searched again in ggml's format.

Not a port: ggml's bytes come first (the exact ports in kquant.ggml.kernels.iq1, iq2, iq3). All
seven decode a value as d * (1 + 2 s_j) * u: d the fp16 super-block scale, s_j in [0, SMAX] a
sub-block's scale (4 bits, IQ1: 3 bits) over 32 values (16 for IQ2_XS, IQ2_S, IQ1_M), u the grid
value times its sign (IQ1: plus the group's shift; IQ2's d (0.5 + s) / 4 and IQ3_XXS's d (0.5 + s)
/ 2 are the same up to a constant). ggml picks the grid points, signs and a real scale per
sub-block, then stores d = max(scale) / (2 SMAX + 1) times a fudge factor and rounds each s with
no search. Here the grid points and signs stay as ggml wrote them (read back through the
dequantizer with d = 1, s = 0), so a sub-block's error is a quadratic in its step t = d (1 + 2 s):
E_j = A - 2 t B_j + t^2 C_j, B = sum w x u, C = sum w u^2, against the impl's weights (ggml-quants.c
quantize_row_iq*_impl: qw * sqrt(sigma2 + x^2), sigma2 = sum(x^2)/256, times 2 except IQ2_XXS /
IQ2_XS; without an imatrix x^2, IQ2_S 0.25 sigma2 + x^2). Every fp16 d within a factor D_RANGE of
max(B/C) / (2 SMAX + 1) is tried, each sub-block taking the multiplier nearest to (B/C) / d (the
exact optimum for that d); the best (d, s) is decoded with kquant's dequantizer and replaces
ggml's block under _accept's rule (its E and its output error both lower).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..types import QK_K, QType
from ._common import fp16_to_fp32, fp32_to_fp16, put_f16
from ._accept import better, out_weights
from ._sweep import werr
from .iq1 import M_BYTES as IQ1M_BYTES, M_SC as IQ1M_SC, S_BYTES as IQ1S_BYTES, S_D as IQ1S_D, S_QH as IQ1S_QH
from .iq1 import dequantize_iq1_m, dequantize_iq1_s, quantize_iq1_m, quantize_iq1_s
from .iq2 import S_BYTES as IQ2S_BYTES, S_D as IQ2S_D, S_SCALES as IQ2S_SCALES
from .iq2 import XS_BYTES as IQ2XS_BYTES, XS_D as IQ2XS_D, XS_SCALES as IQ2XS_SCALES
from .iq2 import XXS_BYTES as IQ2XXS_BYTES, XXS_D as IQ2XXS_D, XXS_QS as IQ2XXS_QS
from .iq2 import dequantize_iq2_s, dequantize_iq2_xs, dequantize_iq2_xxs, quantize_iq2_s, quantize_iq2_xs, quantize_iq2_xxs
from .iq3 import S_BYTES as IQ3S_BYTES, S_D as IQ3S_D, S_SCALES as IQ3S_SCALES
from .iq3 import XXS_BYTES as IQ3XXS_BYTES, XXS_D as IQ3XXS_D, XXS_SAS as IQ3XXS_SAS
from .iq3 import dequantize_iq3_s, dequantize_iq3_xxs, quantize_iq3_s, quantize_iq3_xxs

D_RANGE = (0.8, 1.25)  # fp16 d tried: this factor range around max(B/C) / (2 SMAX + 1)
JIT = dict(cache=True, no_cfunc_wrapper=True, error_model="numpy")

# kinds; per kind: block bytes, sub-blocks per 256, largest s, sigma2 factor of the weights
K_IQ1_S, K_IQ1_M, K_IQ2_XXS, K_IQ2_XS, K_IQ2_S, K_IQ3_XXS, K_IQ3_S = range(7)
BYTES = np.array([IQ1S_BYTES, IQ1M_BYTES, IQ2XXS_BYTES, IQ2XS_BYTES, IQ2S_BYTES, IQ3XXS_BYTES, IQ3S_BYTES], dtype=np.int64)
NSUB = np.array([8, 16, 8, 16, 16, 8, 8], dtype=np.int64)
SMAX = np.array([7, 7, 15, 15, 15, 15, 15], dtype=np.int64)
SIGMA_K = np.array([2.0, 2.0, 1.0, 1.0, 2.0, 2.0, 2.0])


@njit(**JIT)
def _dequant(kind, q, y):
    if kind == K_IQ1_S:
        dequantize_iq1_s(q, y)
    elif kind == K_IQ1_M:
        dequantize_iq1_m(q, y)
    elif kind == K_IQ2_XXS:
        dequantize_iq2_xxs(q, y)
    elif kind == K_IQ2_XS:
        dequantize_iq2_xs(q, y)
    elif kind == K_IQ2_S:
        dequantize_iq2_s(q, y)
    elif kind == K_IQ3_XXS:
        dequantize_iq3_xxs(q, y)
    else:
        dequantize_iq3_s(q, y)


@njit(**JIT)
def _nib(b, p, hi, v):
    """Nibble `hi` (0 low, 1 high) of byte b[p] set to v."""
    if hi:
        b[p] = np.uint8((b[p] & 0x0F) | (v << 4))
    else:
        b[p] = np.uint8((b[p] & 0xF0) | v)


@njit(**JIT)
def _put(kind, b, d, sc):
    """One block b (uint8[BYTES]): its fp16 d set to d, its sub-block scales to sc (codes, other bits kept)."""
    if kind == K_IQ1_S:  # qh uint16 per 32: scale in bits 12..14 (bit 15: the shift's sign)
        put_f16(b, IQ1S_D, d)
        for j in range(8):
            p = IQ1S_QH + 2 * j + 1
            b[p] = np.uint8((b[p] & 0x8F) | (sc[j] << 4))
    elif kind == K_IQ1_M:  # 4 uint16: 3-bit scales at bits 3 (j % 4), d's nibble t in bits 12..15 of word t
        h = np.int64(fp32_to_fp16(np.float32(d)))
        for t in range(4):
            v = ((h >> (4 * t)) & 0xF) << 12
            for k in range(4):
                v |= sc[4 * t + k] << (3 * k)
            b[IQ1M_SC + 2 * t] = np.uint8(v & 0xFF)
            b[IQ1M_SC + 2 * t + 1] = np.uint8(v >> 8)
    elif kind == K_IQ2_XXS:  # per 32: the scale in bits 28..31 of the second uint32
        put_f16(b, IQ2XXS_D, d)
        for j in range(8):
            _nib(b, IQ2XXS_QS + 8 * j + 7, 1, sc[j])
    elif kind == K_IQ2_XS or kind == K_IQ2_S:  # scales[8]: per 16, low nibble first
        put_f16(b, IQ2XS_D if kind == K_IQ2_XS else IQ2S_D, d)
        p = IQ2XS_SCALES if kind == K_IQ2_XS else IQ2S_SCALES
        for j in range(16):
            _nib(b, p + j // 2, j % 2, sc[j])
    elif kind == K_IQ3_XXS:  # scales_and_signs uint32 per 32: the scale in bits 28..31
        put_f16(b, IQ3XXS_D, d)
        for j in range(8):
            _nib(b, IQ3XXS_SAS + 4 * j + 3, 1, sc[j])
    else:  # IQ3_S scales[4]: per 32, low nibble first
        put_f16(b, IQ3S_D, d)
        for j in range(8):
            _nib(b, IQ3S_SCALES + j // 2, j % 2, sc[j])


@njit(**JIT)
def _try_steps(B, C, R, nsub, smax, sc, bsc, h0, h1, stride, best, bh):
    """search_steps' loop over the fp16 codes h0, h0 + stride, ... <= h1; -> (best E, its code)."""
    for h in range(h0, h1 + 1, stride):
        D = np.float64(fp16_to_fp32(np.uint16(h)))
        half_inv = 0.5 / D
        e = 0.0
        for j in range(nsub):  # s nearest to (R / D - 1) / 2: R / D's nearest odd multiplier
            sc[j] = min(smax, max(0, np.int64(np.rint(R[j] * half_inv - 0.5))))
            t = D * (1 + 2 * sc[j])
            e += C[j] * t * t - 2.0 * B[j] * t
        if e < best:
            best = e
            bh = h
            for j in range(nsub):
                bsc[j] = sc[j]
    return best, bh


@njit(**JIT)
def search_steps(B, C, R, nsub, smax, sc, bsc, stride=1):
    """The fp16 d and s_j in [0, smax] minimising sum_j C_j t_j^2 - 2 B_j t_j, t_j = d (1 + 2 s_j),
    over d within D_RANGE of max(B/C) / (2 smax + 1); s -> bsc, returns d (0: no candidate). R: scratch.
    stride > 1 (refine): every stride-th fp16 code, then every code within stride of the best of those."""
    tmax = 0.0
    for j in range(nsub):
        R[j] = B[j] / C[j] if C[j] > 0 else -1.0  # (-1: s = 0)
        tmax = max(tmax, R[j])
    if not tmax > 0 or not np.isfinite(tmax):
        return np.float32(0.0)
    top = 2 * smax + 1
    h0 = np.int64(fp32_to_fp16(np.float32(tmax / top * D_RANGE[0])))
    h1 = np.int64(fp32_to_fp16(np.float32(tmax / top * D_RANGE[1])))
    h0 = max(h0, 1)
    h1 = min(h1, 0x7BFF)
    best, bh = _try_steps(B, C, R, nsub, smax, sc, bsc, h0, h1, stride, np.inf, -1)
    if stride > 1 and bh >= 0:
        best, bh = _try_steps(B, C, R, nsub, smax, sc, bsc, max(h0, bh - stride + 1), min(h1, bh + stride - 1), 1,
                              best, bh)
    return np.float32(fp16_to_fp32(np.uint16(bh))) if bh >= 0 else np.float32(0.0)


@njit(nogil=True, **JIT)
def improve(kind, x, qw, out, stride=1):
    """ggml's blocks in `out`: each super-block's d and sub-block scales replaced where that lowers E and the
    output error (_accept.better). stride: search_steps' (1: every fp16 d in range)."""
    weighted = qw.shape[0] == x.shape[1]
    nbytes = BYTES[kind]
    nsub = NSUB[kind]
    smax = SMAX[kind]
    sl = QK_K // nsub
    nbl = x.shape[1] // QK_K
    tmp = np.empty((1, nbytes), dtype=np.uint8)
    y = np.empty((1, QK_K), dtype=np.float32)
    u = np.empty((1, QK_K), dtype=np.float32)
    w = np.empty(QK_K, dtype=np.float64)
    uw = np.empty(QK_K, dtype=np.float64)
    B = np.empty(16, dtype=np.float64)
    C = np.empty(16, dtype=np.float64)
    R = np.empty(16, dtype=np.float64)
    sc = np.zeros(16, dtype=np.int64)
    bsc = np.zeros(16, dtype=np.int64)
    zeros = np.zeros(16, dtype=np.int64)
    for r in range(x.shape[0]):
        xr = x[r]
        orow = out[r]
        for ibl in range(nbl):
            o = ibl * QK_K
            off = ibl * nbytes
            s2 = 0.0
            for i in range(QK_K):
                s2 += np.float64(xr[o + i]) * xr[o + i]
            sigma2 = SIGMA_K[kind] * s2 / QK_K
            for i in range(QK_K):
                xi = np.float64(xr[o + i])
                if weighted:
                    w[i] = qw[o + i] * np.sqrt(sigma2 + xi * xi)
                else:
                    w[i] = 0.25 * sigma2 + xi * xi if kind == K_IQ2_S else xi * xi
            tmp[0, :] = orow[off:off + nbytes]
            _dequant(kind, tmp, y)
            e_g = werr(xr, o, w, y[0], QK_K)
            if not e_g > 0:
                continue  # exact, or ggml's block is not finite (where ggml aborts; refused later)
            out_weights(qw, o, uw, QK_K)
            u_g = werr(xr, o, uw, y[0], QK_K)
            _put(kind, tmp[0], np.float32(1.0), zeros)
            _dequant(kind, tmp, u)
            for j in range(nsub):
                b = 0.0
                c = 0.0
                for i in range(sl * j, sl * j + sl):
                    uv = np.float64(u[0, i])
                    b += w[i] * np.float64(xr[o + i]) * uv
                    c += w[i] * uv * uv
                B[j] = b
                C[j] = c
            bD = search_steps(B, C, R, nsub, smax, sc, bsc, stride)
            if bD == 0:
                continue
            _put(kind, tmp[0], bD, bsc)
            _dequant(kind, tmp, y)
            if better(werr(xr, o, w, y[0], QK_K), werr(xr, o, uw, y[0], QK_K), e_g, u_g):
                orow[off:off + nbytes] = tmp[0]


@njit(nogil=True, **JIT)
def quantize_iq1_s_best(x, qw, out):
    n = quantize_iq1_s(x, qw, out)
    improve(K_IQ1_S, x, qw, out)
    return n


@njit(nogil=True, **JIT)
def quantize_iq1_m_best(x, qw, out):
    n = quantize_iq1_m(x, qw, out)
    improve(K_IQ1_M, x, qw, out)
    return n


@njit(nogil=True, **JIT)
def quantize_iq2_xxs_best(x, qw, out):
    n = quantize_iq2_xxs(x, qw, out)
    improve(K_IQ2_XXS, x, qw, out)
    return n


@njit(nogil=True, **JIT)
def quantize_iq2_xs_best(x, qw, out):
    n = quantize_iq2_xs(x, qw, out)
    improve(K_IQ2_XS, x, qw, out)
    return n


@njit(nogil=True, **JIT)
def quantize_iq2_s_best(x, qw, out):
    n = quantize_iq2_s(x, qw, out)
    improve(K_IQ2_S, x, qw, out)
    return n


@njit(nogil=True, **JIT)
def quantize_iq3_xxs_best(x, qw, out):
    quantize_iq3_xxs(x, qw, out)
    improve(K_IQ3_XXS, x, qw, out)


@njit(nogil=True, **JIT)
def quantize_iq3_s_best(x, qw, out):
    quantize_iq3_s(x, qw, out)
    improve(K_IQ3_S, x, qw, out)


BEST = {
    QType.IQ1_S: quantize_iq1_s_best,
    QType.IQ1_M: quantize_iq1_m_best,
    QType.IQ2_XXS: quantize_iq2_xxs_best,
    QType.IQ2_XS: quantize_iq2_xs_best,
    QType.IQ2_S: quantize_iq2_s_best,
    QType.IQ3_XXS: quantize_iq3_xxs_best,
    QType.IQ3_S: quantize_iq3_s_best,
}
