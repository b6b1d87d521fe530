"""Numba kernels, one module per family; names mirror ggml-quants.c.

Every family module exports `KERNELS: dict[QType, Kernel]`. A kernel pair works on flat,
C-contiguous arrays and never raises (validation is the caller's job, in kquant.quants):

    quantize(x: float32[:, ::1], qw: float32[::1], out: uint8[:, ::1]) -> None
        rows in parallel (prange); `qw` is the importance row (length = columns) or empty
        for ggml's unweighted path.
    dequantize(q: uint8[:, ::1], out: float32[:, ::1]) -> None
"""

from typing import Callable, NamedTuple


class Kernel(NamedTuple):
    quantize: Callable
    dequantize: Callable


FAMILIES = ("floats", "legacy", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k")
