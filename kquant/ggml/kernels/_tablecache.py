"""Lookup tables kept on disk beside numba's cache, so that a new process loads them instead of
building them again (the i-quants' grids and neighbour lists: up to seconds to build,
milliseconds to load).

    load_or_build(name, key, build)   build()'s dict of arrays, stored under `name` for `key`
    @stored("name")                   the same for a function of hashable arguments returning a
                                      tuple of arrays, keyed by its module's source and arguments

Where: `<dir>/<name>.kqtab.npz`, `<dir>` the directory numba caches this package's compiled
kernels in (NUMBA_CACHE_DIR, the `__pycache__` beside the sources, or numba's user-wide cache when
the source tree is read-only; found through a never-compiled @njit(cache=True) function here),
so a cold numba cache is a cold table cache too.

The file is an uncompressed .npz: the arrays plus `_key` (a hash of what the tables depend on:
`key_of` the builder's module source and inputs) and `_digest` (sha256 of every array's name,
dtype, shape and bytes). A file that is missing, unreadable, truncated, for another key or
failing its digest is ignored and rebuilt. Writes go to a new temporary file in the same
directory, then `os.replace`: readers never see a partial file, concurrent writers each write a
whole one and the last rename wins. A directory that cannot be written (read-only install, full
disk) only costs the rebuild: the tables then live in this process's memory only.
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
import sys
from typing import Callable

import numpy as np
from numba import njit

FORMAT = b"kquant-tables-1"  # bump when the file layout changes


def key_of(*parts) -> str:
    """sha256 (hex) of `parts`: bytes, str, numbers or numpy arrays (dtype, shape and bytes)."""
    h = hashlib.sha256(FORMAT)
    for p in parts:
        if isinstance(p, np.ndarray):
            b = repr((p.dtype.str, p.shape)).encode() + np.ascontiguousarray(p).tobytes()
        elif isinstance(p, bytes):
            b = p
        else:
            b = repr(p).encode()
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def module_source(module: str) -> bytes:
    """The source file of `module` (stored tables are valid for the code that built them only)."""
    with open(sys.modules[module].__file__, "rb") as f:
        return f.read()


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(repr((name, a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _anchor():  # never called: numba's cache directory for this package is looked up through it
    return 0


try:
    _ANCHOR = njit(cache=True)(_anchor)
except Exception:  # numba finds no cache directory at all: no table cache either
    _ANCHOR = None


def cache_dir() -> str | None:
    """The directory numba caches this package's kernels in, or None when it caches nothing
    (or numba's internals moved)."""
    path = getattr(getattr(_ANCHOR, "_cache", None), "_cache_path", None)
    return path if isinstance(path, str) and os.path.isdir(path) else None


def _load(path: str, key: str) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {n: f[n] for n in f.files}
    except Exception:  # missing, or damaged in any way (zip, header, data): rebuild
        return None
    stored_key, digest = arrays.pop("_key", None), arrays.pop("_digest", None)
    if stored_key is None or digest is None or str(stored_key) != key or str(digest) != _digest(arrays):
        return None
    return arrays


def _store(path: str, key: str, arrays: dict[str, np.ndarray]) -> None:
    tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:  # created new (O_EXCL), with the umask's permissions like numba's own cache files
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, _key=np.array(key), _digest=np.array(_digest(arrays)), **arrays)
        os.replace(tmp, path)
    except Exception:  # no space, a vanished directory, ...: this process keeps its tables in memory
        try:
            os.unlink(tmp)
        except OSError:
            pass


def load_or_build(name: str, key: str, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """build()'s arrays for `key`: loaded from the table cache when stored there for this key,
    else built and stored (see the module docstring)."""
    d = cache_dir()
    path = os.path.join(d, f"{name}.kqtab.npz") if d else None
    if path is not None:
        arrays = _load(path, key)
        if arrays is not None:
            return arrays
    arrays = {n: np.ascontiguousarray(a) for n, a in build().items()}
    if path is not None:
        _store(path, key, arrays)
    return arrays


def stored(name: str):
    """Decorator: fn(*args) -> tuple of arrays, stored as `<name>-<args>` and keyed by fn's module
    source, name and arguments; the arrays returned (built or loaded) are read-only."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args):
            def build():
                return {f"a{i}": a for i, a in enumerate(fn(*args))}

            key = key_of(module_source(fn.__module__), fn.__qualname__, *args)
            arrays = load_or_build("-".join([name, *map(str, args)]), key, build)
            out = tuple(arrays[f"a{i}"] for i in range(len(arrays)))
            for a in out:
                a.setflags(write=False)
            return out

        wrapper.build = fn  # the uncached builder (tests compare the two)
        return wrapper

    return deco
