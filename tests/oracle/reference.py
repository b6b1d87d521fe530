"""ctypes bindings to ggml's C reference quantizers, as shipped in llama-cpp-python.

Used by the tests and the benchmarks as the oracle; kquant itself never needs it. Raises
`ReferenceUnavailable` when llama-cpp-python is not installed (`pip install kquant[test]`).
"""

from __future__ import annotations

import ctypes
import glob
import os
from functools import lru_cache

import numpy as np

from kquant.types import QType, parse_qtype


class ReferenceUnavailable(RuntimeError):
    pass


class _TypeTraits(ctypes.Structure):
    # ggml.h `struct ggml_type_traits`
    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


def lib_dir() -> str:
    try:
        import importlib.util

        spec = importlib.util.find_spec("llama_cpp")
    except Exception:  # pragma: no cover
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ReferenceUnavailable("llama-cpp-python is not installed (pip install 'kquant[test]')")
    d = os.path.join(list(spec.submodule_search_locations)[0], "lib")
    if not glob.glob(os.path.join(d, "libggml-base.so*")):
        raise ReferenceUnavailable(f"no libggml-base.so in {d}")
    return d


@lru_cache(maxsize=None)
def _lib() -> ctypes.CDLL:
    d = lib_dir()
    base = ctypes.CDLL(sorted(glob.glob(os.path.join(d, "libggml-base.so*")))[0], mode=ctypes.RTLD_GLOBAL)
    base.ggml_quantize_chunk.restype = ctypes.c_size_t
    base.ggml_quantize_chunk.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
    ]
    base.ggml_quantize_init.argtypes = [ctypes.c_int]
    base.ggml_quantize_init.restype = None
    base.ggml_get_type_traits.argtypes = [ctypes.c_int]
    base.ggml_get_type_traits.restype = ctypes.POINTER(_TypeTraits)
    return base


def available() -> bool:
    try:
        _lib()
        return True
    except (ReferenceUnavailable, OSError):
        return False


def quantize(x: np.ndarray, qtype, imatrix: np.ndarray | None = None) -> np.ndarray:
    """ggml_quantize_chunk over all rows of a 2-D float32 array -> uint8 (rows, row_bytes)."""
    t = parse_qtype(qtype)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError("reference.quantize takes a 2-D array")
    rows, cols = x.shape
    out = np.zeros((rows, t.row_size(cols)), dtype=np.uint8)
    lib = _lib()
    lib.ggml_quantize_init(int(t))
    imp = None
    if imatrix is not None:
        imatrix = np.ascontiguousarray(imatrix, dtype=np.float32)
        assert imatrix.shape == (cols,)
        imp = imatrix.ctypes.data
    n = lib.ggml_quantize_chunk(int(t), x.ctypes.data, out.ctypes.data, 0, rows, cols, imp)
    assert n == out.nbytes, (n, out.nbytes)
    return out


def dequantize(q: np.ndarray, qtype, shape) -> np.ndarray:
    """ggml's `to_float` (dequantize_row_*) over a whole tensor."""
    t = parse_qtype(qtype)
    rows, cols = int(np.prod(shape[:-1])) if len(shape) > 1 else 1, int(shape[-1])
    q = np.ascontiguousarray(q, dtype=np.uint8).reshape(-1)
    assert q.size == rows * t.row_size(cols)
    out = np.empty(rows * cols, dtype=np.float32)
    if t == QType.F32:
        out[:] = q.view(np.float32)
    else:
        traits = _lib().ggml_get_type_traits(int(t)).contents
        fn = _TO_FLOAT(traits.to_float)
        fn(q.ctypes.data, out.ctypes.data, rows * cols)
    return out.reshape(shape)
