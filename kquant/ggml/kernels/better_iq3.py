"""`rounding="best"` for IQ3_S (y = d * (1 + 2 s_ib) * grid value * sign): the super-block scale
and the 4-bit sub-block scales searched again in ggml's format.

Not a port: ggml's bytes come first (kquant.ggml.kernels.iq3's exact port). ggml picks each
sub-block's grid points, signs and real scale s*_ib, then stores d = max(s*)/31 * 1.033 and
s_ib = round((s*_ib / d - 1) / 2) with no search. Here the grid points and signs stay as ggml
wrote them (read back through the dequantizer with d = 1, s = 0: u = grid value * sign), so the
error of a sub-block is a quadratic in its step t = d (1 + 2 s): E_ib = A - 2 t B_ib + t^2 C_ib,
B = sum w x u, C = sum w u^2, against quantize_row_iq3_s_impl's weights (x^2 without an imatrix,
else qw * sqrt(2*sum(x^2)/256 + x^2)). Every fp16 d within a factor D_RANGE of max(B/C)/31 is
tried, each sub-block taking the odd multiplier 1 + 2 s nearest to (B/C) / d; the best (d, s) is
decoded with kquant's dequantizer and replaces ggml's block only if its E is lower by more than
ACCEPT_MARGIN (relative).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..types import QK_K, QType
from ._common import fp16_to_fp32, fp32_to_fp16, get_f16, put_f16
from .iq3 import S_BYTES, S_D, S_SCALES, dequantize_iq3_s, quantize_iq3_s

D_RANGE = (0.8, 1.25)  # fp16 d tried: this factor range around max(B/C)/31
REFINE_RANGE = (0.9, 1.12)  # rounding="refine": the narrower range (about half the fp16 codes)
ACCEPT_MARGIN = 1e-9
NSUB = QK_K // 32
JIT = dict(cache=True, error_model="numpy")


@njit(**JIT)
def _werr(x, o, w, y):
    e = 0.0
    for i in range(QK_K):
        d = np.float64(y[0, i]) - np.float64(x[o + i])
        e += w[i] * d * d
    return e


@njit(nogil=True, **JIT)
def quantize_iq3_s_best(x, qw, out):
    """ggml's blocks, then each super-block's scales replaced where that lowers E."""
    _iq3_s_scales(x, qw, out, D_RANGE[0], D_RANGE[1])


@njit(nogil=True, **JIT)
def quantize_iq3_s_refine(x, qw, out):
    """rounding="refine": the same search over REFINE_RANGE."""
    _iq3_s_scales(x, qw, out, REFINE_RANGE[0], REFINE_RANGE[1])


@njit(nogil=True, **JIT)
def _iq3_s_scales(x, qw, out, r0, r1):
    quantize_iq3_s(x, qw, out)
    weighted = qw.shape[0] == x.shape[1]
    nbl = x.shape[1] // QK_K
    tmp = np.empty((1, S_BYTES), dtype=np.uint8)
    y = np.empty((1, QK_K), dtype=np.float32)
    u = np.empty((1, QK_K), dtype=np.float32)
    w = np.empty(QK_K, dtype=np.float64)
    B = np.empty(NSUB, dtype=np.float64)
    C = np.empty(NSUB, dtype=np.float64)
    sc = np.empty(NSUB, dtype=np.int64)
    bsc = np.empty(NSUB, dtype=np.int64)
    for r in range(x.shape[0]):
        xr = x[r]
        orow = out[r]
        for ibl in range(nbl):
            o = ibl * QK_K
            off = ibl * S_BYTES
            D0 = get_f16(orow, off + S_D)
            if not np.isfinite(D0) or D0 == 0:
                continue  # an all-zero super-block, or one where ggml aborts (NaN scale kept)
            s2 = 0.0
            for i in range(QK_K):
                s2 += np.float64(xr[o + i]) * xr[o + i]
            for i in range(QK_K):
                xi = np.float64(xr[o + i])
                w[i] = qw[o + i] * np.sqrt(2.0 * s2 / QK_K + xi * xi) if weighted else xi * xi
            tmp[0, :] = orow[off:off + S_BYTES]
            dequantize_iq3_s(tmp, y)
            e_g = _werr(xr, o, w, y)
            if not e_g > 0:
                continue
            put_f16(tmp[0], S_D, np.float32(1.0))
            for k in range(NSUB // 2):
                tmp[0, S_SCALES + k] = 0
            dequantize_iq3_s(tmp, u)
            smax = 0.0
            for ib in range(NSUB):
                b = 0.0
                c = 0.0
                for i in range(32 * ib, 32 * ib + 32):
                    uv = np.float64(u[0, i])
                    b += w[i] * np.float64(xr[o + i]) * uv
                    c += w[i] * uv * uv
                B[ib] = b
                C[ib] = c
                if c > 0 and b / c > smax:
                    smax = b / c
            if not smax > 0 or not np.isfinite(smax):
                continue
            h0 = np.int64(fp32_to_fp16(np.float32(smax / 31 * r0)))
            h1 = np.int64(fp32_to_fp16(np.float32(smax / 31 * r1)))
            best = np.inf
            bD = np.float32(0.0)
            for h in range(max(h0, 1), min(h1, 0x7BFF) + 1):
                D = np.float64(fp16_to_fp32(np.uint16(h)))
                e = 0.0
                for ib in range(NSUB):
                    s = 0
                    if C[ib] > 0:
                        s = min(15, max(0, np.int64(np.rint((B[ib] / C[ib] / D - 1.0) * 0.5))))
                    sc[ib] = s
                    t = D * (1 + 2 * s)
                    e += C[ib] * t * t - 2.0 * B[ib] * t
                if e < best:
                    best = e
                    bD = np.float32(D)
                    for ib in range(NSUB):
                        bsc[ib] = sc[ib]
            if bD == 0:
                continue
            put_f16(tmp[0], S_D, bD)
            for k in range(NSUB // 2):
                tmp[0, S_SCALES + k] = np.uint8(bsc[2 * k] | (bsc[2 * k + 1] << 4))
            dequantize_iq3_s(tmp, y)
            e_b = _werr(xr, o, w, y)
            if e_b < e_g * (1.0 - ACCEPT_MARGIN):
                orow[off:off + S_BYTES] = tmp[0]


BEST = {QType.IQ3_S: quantize_iq3_s_best}
REFINE = {QType.IQ3_S: quantize_iq3_s_refine}
