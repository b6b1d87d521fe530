"""Plain float types: F32 (copy), F16 and BF16 (ggml_fp32_to_fp16_row, ggml_fp32_to_bf16_row_ref).

Importance weights do not apply to these types; ggml ignores them too.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..types import QType
from . import Kernel
from ._common import bf16_to_fp32, fp16_to_fp32, fp32_to_bf16, fp32_to_fp16


@njit(parallel=True, cache=True)
def quantize_f32(x, qw, out):
    rows, cols = x.shape
    for r in prange(rows):
        out[r, :] = x[r].view(np.uint8)


@njit(parallel=True, cache=True)
def dequantize_f32(q, out):
    rows = q.shape[0]
    for r in prange(rows):
        out[r, :] = q[r].view(np.float32)


@njit(parallel=True, cache=True)
def quantize_f16(x, qw, out):
    rows, cols = x.shape
    for r in prange(rows):
        o = out[r].view(np.uint16)
        for i in range(cols):
            o[i] = fp32_to_fp16(x[r, i])


@njit(parallel=True, cache=True)
def dequantize_f16(q, out):
    rows, cols = out.shape
    for r in prange(rows):
        h = q[r].view(np.uint16)
        for i in range(cols):
            out[r, i] = fp16_to_fp32(h[i])


@njit(parallel=True, cache=True)
def quantize_bf16(x, qw, out):
    rows, cols = x.shape
    for r in prange(rows):
        o = out[r].view(np.uint16)
        for i in range(cols):
            o[i] = fp32_to_bf16(x[r, i])


@njit(parallel=True, cache=True)
def dequantize_bf16(q, out):
    rows, cols = out.shape
    for r in prange(rows):
        h = q[r].view(np.uint16)
        for i in range(cols):
            out[r, i] = bf16_to_fp32(h[i])


KERNELS = {
    QType.F32: Kernel(quantize_f32, dequantize_f32),
    QType.F16: Kernel(quantize_f16, dequantize_f16),
    QType.BF16: Kernel(quantize_bf16, dequantize_bf16),
}
