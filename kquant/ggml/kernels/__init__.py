"""Numba kernels, one module per family; names mirror ggml-quants.c.

How a kernel module registers (the only steps; nothing else lists modules or types):

1. The type's declaration in kquant.ggml.types `TYPES` names the module: `kernels="iq2"`.
2. The module `kquant/ggml/kernels/iq2.py` exports `KERNELS: dict[QType, Kernel]` for the
   types it implements (those whose declaration names it; the registry asserts this).

kquant.ggml.quants.registry() imports every module a declaration names, when it exists; a
declared type whose module is missing, or absent from its module's KERNELS, has no kernels
(quantize/dequantize raise NotImplementedError naming it). Block field offsets come from the
declared layout: `D, QS = field_offsets(QType.X, "d", "qs")` at module level (compile-time
constants for numba), sizes from `QType.X.type_size` / `.block_size`.

A kernel pair works on flat, C-contiguous arrays and never raises (validation is the caller's
job, in kquant.ggml.quants):

    quantize(x: float32[:, ::1], qw: float32[::1], out: uint8[:, ::1]) -> None
        `qw` is the importance row (length = columns) or empty for ggml's unweighted path.
    dequantize(q: uint8[:, ::1], out: float32[:, ::1]) -> None

rounding="best" / "refine" (kquant.ggml.quants.MODE_MODULES): the modules better_*.py export
`BEST: dict[QType, quantize]`, refine_*.py `REFINE`, with the same quantize
signature; each runs ggml's kernel first and replaces a block only where its own search lowers
ggml's weighted error.

Drivers are serial `nogil` loops over rows; kquant.ggml.quants runs disjoint row ranges on
threads. (numba's `parallel=True` costs several seconds of compile time per driver, which added
up to more than a minute of first-run compilation for all types; plain threads scale the same.)
"""

from typing import Callable, NamedTuple


class Kernel(NamedTuple):
    quantize: Callable
    dequantize: Callable
    prepare: Callable | None = None  # loads what the kernels read from Python (their tables), once
