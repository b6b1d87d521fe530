"""Public quantize / dequantize: validation, allocation, dispatch through the kernel registry.

The registry is keyed by QType and filled from every family module in kquant.kernels
(`KERNELS` dicts); a type without kernels raises NotImplementedError naming it.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import lru_cache

import numba
import numpy as np
from numba import njit

from .errors import InputError
from .kernels import FAMILIES, Kernel
from .types import BLOCK_DTYPES, QType, parse_qtype

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


def _run_rows(fn, rows: int, cols: int, *arrays_and_args) -> None:
    """fn(*args) on disjoint row ranges of the leading 2-D arrays, on up to `_threads` threads
    (the kernels are nogil, so the ranges run in parallel)."""
    global _pool
    n = min(_threads, rows, max(1, rows * cols // MIN_VALUES_PER_THREAD))
    if n <= 1:
        fn(*arrays_and_args)
        return
    if _pool is None or _pool._max_workers < MAX_THREADS:
        _pool = ThreadPoolExecutor(max_workers=MAX_THREADS, thread_name_prefix="kquant")
    bounds = [rows * i // n for i in range(n + 1)]

    def part(a, b):
        return [v[a:b] if isinstance(v, np.ndarray) and v.ndim == 2 else v for v in arrays_and_args]

    futs = [_pool.submit(fn, *part(bounds[i], bounds[i + 1])) for i in range(1, n)]
    fn(*part(bounds[0], bounds[1]))
    for f in futs:
        f.result()


@lru_cache(maxsize=None)
def registry() -> dict[QType, Kernel]:
    """QType -> Kernel, merged from every kernel family module."""
    reg: dict[QType, Kernel] = {}
    for fam in FAMILIES:
        mod = importlib.import_module(f"kquant.kernels.{fam}")
        for t, k in mod.KERNELS.items():
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


@njit(nogil=True, cache=True)
def count_nonfinite(x):
    """Number of NaN/Inf values in a 2-D float32 array."""
    c = 0
    for r in range(x.shape[0]):
        for v in x[r]:
            if not np.isfinite(v):
                c += 1
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


@njit(nogil=True, cache=True)
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
             check_finite: bool = True) -> np.ndarray:
    """Quantize a 2-D float32 array row by row -> uint8 array (rows, bytes_per_row).

    Identical to ggml_quantize_chunk(type, x, ..., imatrix). `imatrix` is one importance weight
    per column (float32), used by the types whose ggml quantizer takes weights.
    """
    t = parse_qtype(qtype)
    k = kernel(t)
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
        _run_rows(k.quantize, rows, cols, x, qw, out)
        _check_scales(out, t)
    return out


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


# ====================================================================== first-run compilation
# Single-core seconds to compile each kernel family from an empty cache (scripts/bench_compile.py):
# only used to spread the cold families evenly over warm-up processes. A family's types share
# compiled helpers (Q4_K and Q5_K one driver), so they are compiled in the same process.
_FAMILY_COMPILE_S = {"legacy": 22.0, "q3_k": 14.0, "q4_k": 10.5, "q2_k": 8.5, "floats": 6.0, "iq4": 5.0, "q6_k": 3.0}


def _is_cached(disp) -> bool:
    """True when numba's on-disk cache holds a compiled overload of `disp` for this CPU (or the
    function is compiled in this process already); False when its first call would compile."""
    if disp.overloads:
        return True
    try:
        magic = disp.targetctx.codegen().magic_tuple()
        index = disp._cache._cache_file._load_index()  # {} when absent or stale (source changed)
        return any(key[1] == magic for key in index)
    except Exception:  # caching off (NullCache), or numba's internals moved: don't second-guess
        return True


def cold_types(types) -> list[QType]:
    """The types among `types` whose kernels would be compiled on their first call."""
    out = []
    for t in dict.fromkeys(parse_qtype(q) for q in types):
        k = registry().get(t)
        if k is not None and not (_is_cached(k.quantize) and _is_cached(k.dequantize)):
            out.append(t)
    return out


def _first_calls(types) -> None:
    """Call each type's kernels once on a tiny input, with the argument types real calls use."""
    x = np.linspace(-1.0, 1.0, 512, dtype=np.float32).reshape(2, 256)
    for t in types:
        t = parse_qtype(t)
        dequantize(quantize(x, t), t, x.shape)  # quantize also runs count_nonfinite and the scale check


def warm(types, jobs: int | None = None, on_start=None) -> list[QType]:
    """Compile the kernels of the cold `types` in up to `jobs` (default: cores) separate processes
    at once, so that this process then loads them from numba's on-disk cache instead of compiling
    them one after the other. Returns the types that were cold. A warm-up process that fails
    changes nothing: the first call then compiles in this process, as it would have anyway."""
    types = list(types)
    if not cold_types(types):
        return []
    # one warm-up at a time on this machine (batch workers start together): the others wait, then
    # find the kernels cached
    with _warm_lock():
        cold = cold_types(types)
        if cold:
            if on_start is not None:
                on_start(cold)
            _compile(cold, max(1, int(jobs or MAX_THREADS)))
    return cold


@contextmanager
def _warm_lock():
    from .fsutil import file_lock

    path = os.path.join(tempfile.gettempdir(), f"kquant-warm-{os.getuid()}.lock")
    try:
        lock = file_lock(path)
        lock.__enter__()
    except OSError:  # no writable temp directory: warm up unserialised
        yield
        return
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def _family(t: QType) -> str:
    """The kquant.kernels module that implements `t`."""
    return registry()[t].quantize.py_func.__module__.rsplit(".", 1)[-1]


def _compile(cold: list[QType], jobs: int) -> None:
    """First calls of `cold`, spread over `jobs` processes (in this one when jobs == 1)."""
    families: dict[str, list[QType]] = {}
    for t in cold:
        families.setdefault(_family(t), []).append(t)
    jobs = min(jobs, len(families))
    if jobs == 1:
        _first_calls(cold)
        return
    groups: list[list[QType]] = [[] for _ in range(jobs)]
    load = [0.0] * jobs
    for fam in sorted(families, key=lambda f: -_FAMILY_COMPILE_S.get(f, 2.0)):  # longest first, to the least loaded
        i = load.index(min(load))
        groups[i] += families[fam]
        load[i] += _FAMILY_COMPILE_S.get(fam, 2.0)
    from .fsutil import signals_held

    code = "import sys; from kquant.quants import _first_calls; _first_calls(sys.argv[1:])"
    env = dict(os.environ)  # the same numba settings and cache directory; this very kquant first
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    procs: list[subprocess.Popen] = []
    try:
        for g in groups:
            with signals_held():  # started and registered for the kill below with no interrupt in between
                procs.append(subprocess.Popen([sys.executable, "-c", code, *(t.name for t in g)], env=env,
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for p in procs:
            p.wait()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
