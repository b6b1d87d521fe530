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

Kind dispatch: numba types every branch of a function it compiles, including the branches for
other kinds and the callees they call. A function taking the type as an int (even a literal one)
therefore compiles every kind's callees; that costs nothing lasting where those are shared
dispatchers (compiled once, cached), but it is waste where they are themselves specialized per
kind. refine_legacy is a small `inline="always"` dispatcher called with a module-level constant:
inlined, its tests of `kind` (written directly in the condition, not through a variable) are
resolved before typing, and only that type's path is compiled (refine Q4_0 compiled Q4_1's
`_refine_affine` and more before: 40 s instead of 17 s). Inlining a large driver whole costs more
than it saves (better_iq.improve, quantize_legacy_best, the Q3_K / Q6_K drivers: measured, not kept).

Drivers are serial `nogil` loops over rows; kquant.ggml.quants runs disjoint row ranges on
threads. (numba's `parallel=True` costs several seconds of compile time per driver, which added
up to more than a minute of first-run compilation for all types; plain threads scale the same.)
"""

import hashlib
import os
from pathlib import Path
from typing import Callable, NamedTuple

_HERE = Path(__file__).resolve().parent
# what a compiled kernel can depend on: every kernel module (a kernel calls into other modules' jitted
# helpers and freezes their module-level constants) and the type declarations (block layouts)
KERNEL_SOURCES = tuple(sorted(_HERE.glob("*.py"))) + (_HERE.parent / "types.py",)


def sources_stamp(files) -> bytes:
    """sha256 over the names and contents of `files` (in the order given)."""
    h = hashlib.sha256()
    for f in files:
        h.update(Path(f).name.encode() + b"\0" + Path(f).read_bytes() + b"\0")
    return h.digest()


def _stamp_numba_caches() -> None:
    """Make numba's on-disk cache of every kernel depend on all of KERNEL_SOURCES, not its own file only.

    numba checks a cached function against its own source file (content hash in numba >= 0.68, mtime
    and size before), but the cached machine code also holds what it inlined or linked from other
    modules: after an edit or an upgrade that changes only a helper's module (better_iq4's index search,
    q3_k's dequantizer), every caller in an unchanged file would load its old code. Each locator class
    numba tries is given a stamp that adds KERNEL_SOURCES' hash for files of this package. Uses
    numba internals (CacheImpl._locator_classes); if they move, caching stays numba's own."""
    try:
        from numba.core import caching

        impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl")
        classes = list(impl._locator_classes)
    except (ImportError, AttributeError):
        return
    stamp = sources_stamp(KERNEL_SOURCES)
    here = str(_HERE)

    def stamped(cls):
        if getattr(cls, "_kquant_stamp", None) is not None:
            return cls

        class Stamped(cls):
            _kquant_stamp = stamp

            def get_source_stamp(self):
                own = super().get_source_stamp()
                py = getattr(self, "_py_file", None)
                if py and os.path.dirname(os.path.abspath(py)) == here:
                    return (own, self._kquant_stamp)
                return own

        Stamped.__name__ = Stamped.__qualname__ = cls.__name__
        return Stamped

    impl._locator_classes = [stamped(c) for c in classes]


_stamp_numba_caches()


class Kernel(NamedTuple):
    quantize: Callable
    dequantize: Callable
    prepare: Callable | None = None  # loads what the kernels read from Python (their tables), once
