"""`rounding="best"` for the one-scale types TQ1_0, TQ2_0, Q2_0 (y = d*l), Q1_0 (y = +-d) and MXFP4
(y = 2^e * FP4 level): the block scale chosen for the weighted error in ggml's format.

Not a port: ggml's bytes come first (the exact ports in kquant.ggml.kernels.tq, q1q2, mxfp4), which
run no search: TQ1_0, TQ2_0 and Q2_0 take d = max |x| (so Q2_0's level +2 is never used), Q1_0 d =
mean |x|, MXFP4 the exponent floor(log2 max |x|) - 2. ggml ignores the imatrix for all five; the
objective is the plain squared error, or with an imatrix sum qw (y - x)^2 (as for Q8_0).
- TQ1_0, TQ2_0 (l in -1..1), Q2_0 (l in -1..2): the exact sweep over real steps
  (better_legacy.search_exact: _sweep.sym_sweep's best steps, their fp16 neighbours, a refit);
  the levels are packed by ggml's own TQ quantizer run on the levels themselves (max 1: d = 1, each
  value its trit), then d is overwritten.
- Q1_0: for ggml's signs the optimum is d = sum w |x| / sum w; its fp16 value and neighbours.
- MXFP4: the E8M0 exponents within E_SPAN of ggml's, each value at ggml's nearest level
  (best_index_mxfp4).
The best block is decoded with kquant's dequantizer and replaces ggml's only if its E is lower by
more than _accept.MARGIN (relative). E's weights (1, or the imatrix) are the output error's, so
this is _accept's rule with one search pass.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..types import QK1_0, QK2_0, QK_K, QType
from ._common import put_f16
from ._accept import MARGIN
from ._sweep import fp16_near, werr
from .better_legacy import K_EXACT, search_exact
from .mxfp4 import KVALUES, OFF_E, OFF_QS, TS_MXFP4, best_index, dequantize_row_mxfp4, e8m0_to_fp32_half, quantize_mxfp4
from .q1q2 import Q1_D, Q2_D, Q2_QS, TS_Q1_0, TS_Q2_0, dequantize_row_q1_0, dequantize_row_q2_0, quantize_q1_0, quantize_q2_0
from .tq import TQ1_D, TQ2_D, TS_TQ1_0, TS_TQ2_0, dequantize_row_tq1_0, dequantize_row_tq2_0
from .tq import quantize_row_tq1_0_ref, quantize_row_tq2_0_ref, quantize_tq1_0, quantize_tq2_0

E_SPAN = 2  # MXFP4 exponents tried: ggml's +- this
JIT = dict(cache=True, no_cfunc_wrapper=True, error_model="numpy")

K_TQ1_0, K_TQ2_0, K_Q2_0, K_Q1_0, K_MXFP4 = range(5)
QKS = np.array([QK_K, QK_K, QK2_0, QK1_0, 32], dtype=np.int64)
BYTES = np.array([TS_TQ1_0, TS_TQ2_0, TS_Q2_0, TS_Q1_0, TS_MXFP4], dtype=np.int64)
HI = np.array([1, 1, 2, 0, 0], dtype=np.int64)  # y = d*l kinds: l in [-1, HI]


@njit(**JIT)
def _dequant(kind, q, y):
    if kind == K_TQ1_0:
        dequantize_row_tq1_0(q, y)
    elif kind == K_TQ2_0:
        dequantize_row_tq2_0(q, y)
    elif kind == K_Q2_0:
        dequantize_row_q2_0(q, y)
    elif kind == K_Q1_0:
        dequantize_row_q1_0(q, y)
    else:
        dequantize_row_mxfp4(q, y)


@njit(**JIT)
def _pack_sym(kind, b, d, L, lev):
    """One TQ1_0 / TQ2_0 / Q2_0 block b: fp16 d, levels L."""
    if kind == K_Q2_0:  # 2-bit code l + 1 of value j in byte j / 4, bits 2 (j % 4)
        for j in range(QK2_0 // 4):
            b[Q2_QS + j] = 0
        for j in range(QK2_0):
            b[Q2_QS + j // 4] |= np.uint8((L[j] + 1) << (2 * (j % 4)))
        put_f16(b, Q2_D, d)
        return
    for j in range(QK_K):
        lev[j] = np.float32(L[j])
    if kind == K_TQ1_0:
        quantize_row_tq1_0_ref(lev, b)
        put_f16(b, TQ1_D, d)
    else:
        quantize_row_tq2_0_ref(lev, b)
        put_f16(b, TQ2_D, d)


@njit(**JIT)
def _search_mxfp4(x, o, w, e_g, b):
    """The exponent within E_SPAN of ggml's e_g with the lowest E at nearest levels -> block b."""
    best = np.inf
    be = -1
    for e in range(max(0, e_g - E_SPAN), min(254, e_g + E_SPAN) + 1):
        d = e8m0_to_fp32_half(e)
        err = 0.0
        for j in range(32):
            r = np.float64(KVALUES[best_index(x[o + j], d)] * d) - np.float64(x[o + j])
            err += w[j] * r * r
        if err < best:
            best = err
            be = e
    if be < 0:
        return False
    d = e8m0_to_fp32_half(be)
    b[OFF_E] = np.uint8(be)
    for j in range(16):
        b[OFF_QS + j] = np.uint8(best_index(x[o + j], d) | (best_index(x[o + 16 + j], d) << 4))
    return True


@njit(nogil=True, **JIT)
def improve(kind, x, qw, out):
    """ggml's blocks in `out`: each replaced where the searched one has a lower E."""
    weighted = qw.shape[0] == x.shape[1]
    n = QKS[kind]
    nbytes = BYTES[kind]
    hi = HI[kind]
    nb = x.shape[1] // n
    w = np.ones(n, dtype=np.float64)
    y = np.empty(n, dtype=np.float32)
    tmp = np.empty(nbytes, dtype=np.uint8)
    best = np.empty(nbytes, dtype=np.uint8)
    lev = np.empty(QK_K, dtype=np.float32)
    L = np.empty(n, dtype=np.int32)
    bL = np.empty(n, dtype=np.int32)
    ts = np.empty(2 * n, dtype=np.float64)
    idx = np.empty(2 * n, dtype=np.int64)
    Lf = np.empty(n, dtype=np.float64)
    cs = np.empty(K_EXACT, dtype=np.float64)
    cv = np.empty(K_EXACT, dtype=np.float64)
    for r in range(x.shape[0]):
        xr = x[r]
        orow = out[r]
        for ib in range(nb):
            o = ib * n
            off = ib * nbytes
            if weighted:
                for j in range(n):
                    w[j] = qw[o + j]
            tmp[:] = orow[off:off + nbytes]
            _dequant(kind, tmp, y)
            e_g = werr(xr, o, w, y, n)
            if not e_g > 0:
                continue
            e_b = np.inf
            if kind == K_Q1_0:  # ggml's signs, d = sum w |x| / sum w
                sw = 0.0
                sa = 0.0
                for j in range(n):
                    sw += w[j]
                    sa += w[j] * abs(np.float64(xr[o + j]))
                if not (sw > 0 and sa > 0):
                    continue
                for k in range(3):
                    d = fp16_near(sa / sw, k)
                    if d == 0:
                        continue
                    put_f16(tmp, Q1_D, d)
                    _dequant(kind, tmp, y)
                    e = werr(xr, o, w, y, n)
                    if e < e_b:
                        e_b = e
                        best[:] = tmp
            else:
                if kind == K_MXFP4:
                    if not _search_mxfp4(xr, o, w, np.int64(tmp[OFF_E]), tmp):
                        continue
                else:
                    e, d = search_exact(xr, o, w, -1, hi, L, bL, ts, idx, Lf, cs, cv, n)
                    if not e < e_g:
                        continue
                    _pack_sym(kind, tmp, d, bL, lev)
                _dequant(kind, tmp, y)
                e_b = werr(xr, o, w, y, n)
                best[:] = tmp
            if e_b < e_g * (1.0 - MARGIN):
                orow[off:off + nbytes] = best


@njit(nogil=True, **JIT)
def quantize_tq1_0_best(x, qw, out):
    quantize_tq1_0(x, qw, out)
    improve(K_TQ1_0, x, qw, out)


@njit(nogil=True, **JIT)
def quantize_tq2_0_best(x, qw, out):
    quantize_tq2_0(x, qw, out)
    improve(K_TQ2_0, x, qw, out)


@njit(nogil=True, **JIT)
def quantize_q2_0_best(x, qw, out):
    quantize_q2_0(x, qw, out)
    improve(K_Q2_0, x, qw, out)


@njit(nogil=True, **JIT)
def quantize_q1_0_best(x, qw, out):
    quantize_q1_0(x, qw, out)
    improve(K_Q1_0, x, qw, out)


@njit(nogil=True, **JIT)
def quantize_mxfp4_best(x, qw, out):
    quantize_mxfp4(x, qw, out)
    improve(K_MXFP4, x, qw, out)


BEST = {
    QType.TQ1_0: quantize_tq1_0_best,
    QType.TQ2_0: quantize_tq2_0_best,
    QType.Q2_0: quantize_q2_0_best,
    QType.Q1_0: quantize_q1_0_best,
    QType.MXFP4: quantize_mxfp4_best,
}
