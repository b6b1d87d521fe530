"""Numba kernels, one module per family; names mirror ggml-quants.c.

Every family module exports `KERNELS: dict[QType, Kernel]`. A kernel pair works on flat,
C-contiguous arrays and never raises (validation is the caller's job, in kquant.quants):

    quantize(x: float32[:, ::1], qw: float32[::1], out: uint8[:, ::1]) -> None
        `qw` is the importance row (length = columns) or empty for ggml's unweighted path.
    dequantize(q: uint8[:, ::1], out: float32[:, ::1]) -> None

Drivers are serial `nogil` loops over rows; kquant.quants runs disjoint row ranges on threads.
(numba's `parallel=True` costs several seconds of compile time per driver, which added up to
more than a minute of first-run compilation for all types; plain threads scale the same.)
"""

from typing import Callable, NamedTuple


class Kernel(NamedTuple):
    quantize: Callable
    dequantize: Callable


FAMILIES = ("floats", "legacy", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4", "iq2", "iq1")
