"""Q5_K kernels.

Ports from ggml/src/ggml-quants.c (llama.cpp as vendored in llama-cpp-python 0.3.36):
quantize_row_q5_K_ref (no importance weights), quantize_row_q5_K_impl (weighted) and
dequantize_row_q5_K. Quantization shares everything with Q4_K, down to the compiled parallel
driver (see q4_k.py: the search over sub-blocks as SIMD lanes, the 6-bit scale/min packing,
and the qh/qs packing of Q5_K); this module adds the dequantizer.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..types import QK_K, QType
from . import Kernel
from ._common import get_f16
from .q4_k import (
    JIT,
    NSUB,
    Q4K_D,
    Q4K_DMIN,
    Q5K_BYTES,
    Q5K_QH,
    Q5K_QS,
    SUB,
    U,
    pair_scales,
    quantize_q4_k_q5_k,
)

quantize_q5_k = quantize_q4_k_q5_k


# ggml-quants.c: dequantize_row_q5_K, one super-block
@njit(**JIT)
def q5_k_dequant_block(q, off, y, yo):
    d = get_f16(q, off + Q4K_D)
    dmin = get_f16(q, off + Q4K_DMIN)
    for g in range(NSUB // 2):
        d1, m1, d2, m2 = pair_scales(q, off, g, d, dmin)
        u1 = np.int32(1) << (2 * g)
        u2 = np.int32(2) << (2 * g)
        qo = off + Q5K_QS + SUB * g
        o = yo + 2 * SUB * g
        for l in range(SUB):
            h = np.int32(q[U(off + Q5K_QH + l)])
            y[U(o + l)] = d1 * np.float32(np.int32(q[U(qo + l)] & 0xF) + (16 if h & u1 else 0)) - m1
        for l in range(SUB):
            h = np.int32(q[U(off + Q5K_QH + l)])
            y[U(o + SUB + l)] = d2 * np.float32(np.int32(q[U(qo + l)] >> 4) + (16 if h & u2 else 0)) - m2


@njit(nogil=True, **JIT)
def dequantize_q5_k(q, out):
    nb = out.shape[1] // QK_K
    for r in range(out.shape[0]):
        qr = q[r]
        yr = out[r]
        for b in range(nb):
            q5_k_dequant_block(qr, b * Q5K_BYTES, yr, b * QK_K)


KERNELS = {QType.Q5_K: Kernel(quantize_q5_k, dequantize_q5_k)}
