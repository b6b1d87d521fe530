"""`rounding="refine"` for IQ4_NL (y = d * kvalues_iq4nl[i], 32 values): ggml's block improved by
a bounded refit (about 1.4x ggml's kernel time: scripts/bench_rounding.py --rounding refine).

Not a port: ggml's bytes come first (kquant.ggml.kernels.iq4), then each block is refitted for
the weighted squared error better_iq4 targets (quantize_row_iq4_nl_impl's weights). ggml tries
15 scales that map the largest |x| near the table's negative end (-127) and keeps the best
weighted least-squares d among them; one candidate is added here: the largest |x| mapped onto
the positive end (113), the nearest indices, their weighted least-squares d (fp16), the nearest
indices again. (A Lloyd step from ggml's own block gains almost nothing: ggml's d is already the
least-squares one for its indices.) It replaces ggml's block only if its decoded E and its output
error are both lower (_accept.better).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..types import QK, QType
from ._common import fp16_round, get_f16, put_f16
from ._accept import better, out_weights
from ._sweep import werr as _werr
from .better_iq4 import _err, _index, _pack_qs, _weights
from .iq4 import KVALUES, NL_BYTES, NL_D, NL_QS, dequantize_iq4_nl, quantize_iq4_nl

JIT = dict(cache=True, no_cfunc_wrapper=True, error_model="numpy")


@njit(**JIT)
def _lsq(x, o, w, L):
    """The fp16 weighted least-squares d for the table indices L (0 when there is none)."""
    sxq = 0.0
    sqq = 0.0
    for j in range(QK):
        q = np.float64(KVALUES[L[j]])
        sxq += w[j] * q * np.float64(x[o + j])
        sqq += w[j] * q * q
    if not sqq > 0:
        return np.float32(0.0)
    d = sxq / sqq
    if not np.isfinite(d) or abs(d) > 65504.0:
        return np.float32(0.0)
    return fp16_round(np.float32(d))


@njit(nogil=True, **JIT)
def quantize_iq4_nl_refine(x, qw, out):
    """ggml's blocks, then each block replaced where a refit is better (_accept.better)."""
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
            e_g = _werr(xr, o, w, y[0], QK)
            d0 = get_f16(out[r], off + NL_D)
            if not e_g > 0 or d0 == 0 or not np.isfinite(d0):
                continue
            amax = 0.0
            mx = 0.0
            for j in range(QK):
                a = abs(np.float64(xr[o + j]))
                if a > amax:
                    amax = a
                    mx = np.float64(xr[o + j])
            _index(xr, o, np.float32(mx / 113.0), L)  # max |x| on the table's top
            bd = _lsq(xr, o, w, L)
            if bd == 0:
                continue
            _index(xr, o, bd, bL)
            if not _err(xr, o, w, bd, bL) < e_g:
                continue
            out_weights(qw, o, u, QK)  # ggml's block's output error, needed only now
            u_g = _werr(xr, o, u, y[0], QK)
            put_f16(tmp[0], NL_D, bd)
            _pack_qs(tmp[0], NL_QS, bL, 1)
            dequantize_iq4_nl(tmp, y)
            if better(_werr(xr, o, w, y[0], QK), _werr(xr, o, u, y[0], QK), e_g, u_g):
                out[r, off:off + NL_BYTES] = tmp[0]


REFINE = {QType.IQ4_NL: quantize_iq4_nl_refine}
