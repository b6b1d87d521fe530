"""Public quantize / dequantize: validation, allocation, dispatch through the kernel registry, threads.

The registry is keyed by QType and filled from the kernel modules the type declarations name
(kquant.ggml.types TYPES, `kernels`): each module's `KERNELS` dict. A declared type without
kernels (its module not written yet) raises NotImplementedError naming it. First-run
compilation (the cold-cache warm-up) lives in kquant.ggml.warm.
"""

from __future__ import annotations

import importlib
import importlib.util
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numba
import numpy as np
from numba import njit

from ..errors import InputError
from .kernels import Kernel
from .types import BLOCK_DTYPES, DECLS, TYPES, QType, parse_qtype

_EMPTY = np.empty(0, dtype=np.float32)
MAX_THREADS = max(1, int(numba.config.NUMBA_NUM_THREADS))  # cores, or the NUMBA_NUM_THREADS variable
MIN_VALUES_PER_THREAD = 1 << 16  # below this a tensor is not worth splitting across threads
_threads = MAX_THREADS
_pool: ThreadPoolExecutor | None = None


def set_threads(n: int) -> None:
    """Threads used by quantize/dequantize (1 .. MAX_THREADS)."""
    global _threads
    if not 1 <= int(n) <= MAX_THREADS:
        raise InputError(f"--threads {n}: must be between 1 and {MAX_THREADS}")
    _threads = int(n)


def _run_rows(fn, rows: int, cols: int, *arrays_and_args) -> int:
    """fn(*args) on disjoint row ranges of the leading 2-D arrays, on up to `_threads` threads
    (the kernels are nogil, so the ranges run in parallel). Returns the sum of what the calls
    return (a kernel's count of blocks ggml aborts on; None counts 0)."""
    global _pool
    n = min(_threads, rows, max(1, rows * cols // MIN_VALUES_PER_THREAD))
    if n <= 1:
        return int(fn(*arrays_and_args) or 0)
    if _pool is None or _pool._max_workers < MAX_THREADS:
        _pool = ThreadPoolExecutor(max_workers=MAX_THREADS, thread_name_prefix="kquant")
    bounds = [rows * i // n for i in range(n + 1)]

    def part(a, b):
        return [v[a:b] if isinstance(v, np.ndarray) and v.ndim == 2 else v for v in arrays_and_args]

    futs = [_pool.submit(fn, *part(bounds[i], bounds[i + 1])) for i in range(1, n)]
    failed = int(fn(*part(bounds[0], bounds[1])) or 0)
    for f in futs:
        failed += int(f.result() or 0)
    return failed


@lru_cache(maxsize=None)
def registry() -> dict[QType, Kernel]:
    """QType -> Kernel, merged from the `KERNELS` of every kernel module a type declares."""
    reg: dict[QType, Kernel] = {}
    for name in dict.fromkeys(d.kernels for d in TYPES if d.kernels):
        path = f"{__package__}.kernels.{name}"
        if importlib.util.find_spec(path) is None:
            continue  # declared, not written yet: its types have no kernels
        for t, k in importlib.import_module(path).KERNELS.items():
            assert DECLS[t].kernels == name, f"{t.name} is declared in kernels module {DECLS[t].kernels!r}, registered by {name!r}"
            assert t not in reg, f"{t.name} registered twice"
            reg[t] = k
    return reg


def kernel(qtype) -> Kernel:
    t = parse_qtype(qtype)
    try:
        return registry()[t]
    except KeyError:
        raise NotImplementedError(f"no kernels for type {t.name}") from None


def supported_types() -> list[QType]:
    return sorted(registry(), key=int)


ROUNDINGS = ("ggml", "best", "refine")  # rounding modes; "ggml" is ggml's own bytes
# kernel modules of each other mode; each exports a dict {QType: quantize} under the mode's name in
# capitals (BEST, REFINE); a type absent from every module writes ggml's blocks in that mode
MODE_MODULES = {
    "best": ("better_k", "better_sym", "better_legacy", "better_iq4", "better_iq", "better_scalar"),
    "refine": ("refine_legacy", "refine_k", "refine_iq4", "refine_iq"),
}
BETTER_MODULES = MODE_MODULES["best"]


def parse_rounding(rounding) -> str:
    r = str(rounding).lower()
    if r not in ROUNDINGS:
        raise InputError(f"unknown rounding {rounding!r}: choose one of {', '.join(ROUNDINGS)}")
    return r


@lru_cache(maxsize=None)
def mode_registry(mode: str) -> dict[QType, object]:
    """QType -> quantize kernel of a rounding mode other than ggml (same signature as Kernel.quantize)."""
    reg: dict = {}
    for name in MODE_MODULES[mode]:
        path = f"{__package__}.kernels.{name}"
        if importlib.util.find_spec(path) is None:
            continue
        for t, fn in getattr(importlib.import_module(path), mode.upper(), {}).items():
            assert t not in reg, f"{t.name} has two {mode} kernels"
            reg[t] = fn
    return reg


def better_registry() -> dict[QType, object]:
    """QType -> quantize kernel of rounding="best"."""
    return mode_registry("best")


def mode_types(mode: str) -> list[QType]:
    """Types whose rounding `mode` runs a search of its own (the others write ggml's blocks)."""
    return sorted(mode_registry(mode), key=int)


def better_types() -> list[QType]:
    """Types whose rounding="best" runs a search of its own (the others write ggml's blocks)."""
    return mode_types("best")


@njit(nogil=True, cache=True, no_cfunc_wrapper=True)
def count_nonfinite(x):
    """Number of NaN/Inf values (all-ones exponent) in a 2-D float32 array, any layout: a branch-free
    count of the bits, which vectorizes (memory speed, about 3x the np.isfinite loop it replaces)."""
    c = 0
    for r in range(x.shape[0]):
        n = 0
        for j in range(x.shape[1]):
            n += (np.float32(x[r, j]).view(np.uint32) & np.uint32(0x7F800000)) == np.uint32(0x7F800000)
        c += n
    return c


def _as_rows(x, name: str = "x") -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise ValueError(f"{name} must be float32, got {x.dtype}")
    if x.ndim == 1:
        x = x.reshape(1, -1)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows x columns), got shape {x.shape}")
    return np.ascontiguousarray(x)


@njit(nogil=True, cache=True, no_cfunc_wrapper=True)
def count_fp16_overflow(bits):
    """Number of fp16 codes (1-D uint16, any stride) with an all-ones exponent (inf or NaN)."""
    k = 0
    for i in range(bits.shape[0]):
        k += (bits[i] & np.uint16(0x7C00)) == np.uint16(0x7C00)
    return k


def _check_scales(q: np.ndarray, t: QType) -> None:
    """Raise if a stored fp16 scale (or an F16 value) overflowed: the input was out of fp16 range."""
    dt = BLOCK_DTYPES[t]
    fields = [f for f in ("d", "dmin", "v") if f in dt.names] if t not in (QType.F32, QType.BF16) else []
    if not fields or q.size == 0:
        return
    blocks = q.reshape(-1).view(dt)
    for f in fields:
        bad = int(count_fp16_overflow(blocks[f]))
        if bad:
            raise ValueError(
                f"values too large for {t.name}: {bad} fp16 {'value' if f == 'v' else 'scale'}(s) overflow (fp16 max 65504)"
            )


def quantize(x: np.ndarray, qtype, imatrix: np.ndarray | None = None, *, out: np.ndarray | None = None,
             check_finite: bool = True, rounding: str = "ggml") -> np.ndarray:
    """Quantize a 2-D float32 array row by row -> uint8 array (rows, bytes_per_row).

    rounding="ggml": identical to ggml_quantize_chunk(type, x, ..., imatrix). `imatrix` is one
    importance weight per column (float32), used by the types whose ggml quantizer takes weights.
    rounding="best": same type and layout, each block searched harder for a lower weighted error
    than ggml's, and kept only where it also lowers the output error (ggml's block elsewhere);
    see kernels/better_*.py and kernels/_accept.py.
    rounding="refine": the same guarantees from a bounded refit of ggml's block (a file converts
    within 2x of ggml mode's time; see kernels/refine_*.py and the README's cost tables).
    """
    t = parse_qtype(qtype)
    k = kernel(t)
    qfn = k.quantize
    mode = parse_rounding(rounding)
    if mode != "ggml":
        qfn = mode_registry(mode).get(t, qfn)
    x = _as_rows(x)
    rows, cols = x.shape
    if cols == 0:
        raise ValueError("x has no columns")
    if cols % t.block_size:
        raise ValueError(f"{t.name} needs a row length that is a multiple of {t.block_size}, got {cols}")
    if check_finite:
        bad = int(count_nonfinite(x))
        if bad:
            raise ValueError(f"x has {bad} non-finite value(s) (NaN or Inf)")
    qw = _EMPTY
    if imatrix is None and t.requires_imatrix:
        raise ValueError(f"{t.name} needs an importance matrix (imatrix): ggml_quantize_chunk aborts without one")
    if imatrix is not None:
        qw = np.ascontiguousarray(imatrix, dtype=np.float32).reshape(-1)
        if qw.shape[0] != cols:
            raise ValueError(f"imatrix has {qw.shape[0]} weights, x has {cols} columns")
        if not np.isfinite(qw).all():
            raise ValueError("imatrix has non-finite weights")
    row_bytes = t.row_size(cols)
    if out is None:
        out = np.empty((rows, row_bytes), dtype=np.uint8)
    elif out.shape != (rows, row_bytes) or out.dtype != np.uint8 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous uint8 array of shape {(rows, row_bytes)}")
    if rows:
        if k.prepare is not None:
            k.prepare()
        failed = _run_rows(qfn, rows, cols, x, qw, out)
        if failed:
            raise ValueError(f"{t.name}: ggml's search aborts on {failed} block(s) of this input "
                             "(non-finite values in its search)")
        _check_scales(out, t)
    return out


def round_bf16_inplace(x: np.ndarray) -> np.ndarray:
    """x (a writable C-contiguous float32 array) rounded to BF16 values in place, as the BF16
    kernel then its dequantizer would give them (no temporaries: the pipeline's 32 MB slabs)."""
    from .kernels.floats import round_bf16_inplace as kern

    if x.dtype != np.float32 or not x.flags.c_contiguous or not x.flags.writeable:
        raise ValueError("x must be a writable C-contiguous float32 array")
    if x.size:
        x2 = x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)
        _run_rows(kern, x2.shape[0], x2.shape[1], x2)
    return x


def dequantize(q: np.ndarray, qtype, shape) -> np.ndarray:
    """Dequantize a tensor of `shape` (numpy order, last axis = row) from its raw bytes -> float32."""
    t = parse_qtype(qtype)
    k = kernel(t)
    shape = tuple(int(d) for d in (shape if isinstance(shape, (tuple, list)) else (shape,)))
    if not shape or any(d < 0 for d in shape):
        raise ValueError(f"bad shape {shape}")
    cols = shape[-1]
    rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    if cols % t.block_size:
        raise ValueError(f"{t.name} needs a row length that is a multiple of {t.block_size}, got {cols}")
    q = np.asarray(q)
    if q.dtype != np.uint8:
        raise ValueError(f"q must be uint8, got {q.dtype}")
    row_bytes = t.row_size(cols)
    if q.size != rows * row_bytes:
        raise ValueError(f"{t.name} tensor of shape {shape} needs {rows * row_bytes} bytes, got {q.size}")
    q2 = np.ascontiguousarray(q).reshape(rows, row_bytes)
    out = np.empty((rows, cols), dtype=np.float32)
    if rows and cols:
        _run_rows(k.dequantize, rows, cols, q2, out)
    return out.reshape(shape)
