"""First-run compilation: compile the cold kernels a job needs in parallel processes.

Numba compiles a kernel on its first call and caches it on disk beside the source. On an empty
cache `warm` splits the cold types' kernels into up to one group per core, grouped by the module
that defines their quantizer (types sharing a compiled driver, Q4_K and Q5_K, stay together) and
balanced by their measured compile seconds (kquant.ggml.types `compile_s`): this process compiles
one group itself while a separate process compiles each other group, so that this process then
loads those from the cache. The kernels of quantize's input and scale checks and the pipeline's
BF16 rounding, which every job calls, are compiled once, here.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager

import numpy as np

from .quants import MAX_THREADS, dequantize, mode_registry, parse_rounding, quantize, registry, round_bf16_inplace
from .types import DECLS, QType, parse_qtype


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


def _needs(types, dequant) -> tuple[list[QType], set[QType], set[QType]]:
    """(all types, those whose quantizer is needed, those whose dequantizer is needed)."""
    q = {parse_qtype(t) for t in types}
    d = q if dequant is None else {parse_qtype(t) for t in dequant}
    both = [parse_qtype(t) for t in types] + [parse_qtype(t) for t in (dequant or ())]
    return list(dict.fromkeys(both)), q, d


def cold_types(types, dequant=None, rounding: str = "ggml") -> list[QType]:
    """The types among `types` (their quantizers, and their `rounding` mode's when not ggml) and
    `dequant` (their dequantizers; default: those of `types` too) whose kernels would be compiled on
    their first call."""
    out = []
    every, q, d = _needs(types, dequant)
    modal = {} if parse_rounding(rounding) == "ggml" else mode_registry(parse_rounding(rounding))
    for t in every:
        k = registry().get(t)
        if k is not None and ((t in q and not _is_cached(k.quantize)) or (t in d and not _is_cached(k.dequantize))
                              or (t in q and t in modal and not _is_cached(modal[t]))):
            out.append(t)
    return out


def first_calls(types, dequant=None, checks: bool = True, rounding: str = "ggml") -> None:
    """Call each type's kernels once on a tiny input, with the argument types real calls use: the
    quantizer of each type (and its `rounding` mode's, when not ggml), and its dequantizer when in
    `dequant` (default: every type). checks: through kquant.quantize (its input and scale checks)
    and the pipeline's BF16 rounding too; otherwise the type's kernels only."""
    x = np.linspace(-1.0, 1.0, 512, dtype=np.float32).reshape(2, 256)
    d = None if dequant is None else {parse_qtype(t) for t in dequant}
    modal = {} if parse_rounding(rounding) == "ggml" else mode_registry(parse_rounding(rounding))
    for t in types:
        t = parse_qtype(t)
        w = np.ones(x.shape[1], dtype=np.float32) if t.requires_imatrix else None
        if checks:
            q = quantize(x, t, w)  # also runs count_nonfinite and the scale check
        else:  # the arguments quantize passes (no imatrix: an empty float32 row)
            q = np.empty((x.shape[0], t.row_size(x.shape[1])), dtype=np.uint8)
            if registry()[t].prepare is not None:
                registry()[t].prepare()
            registry()[t].quantize(x, np.empty(0, dtype=np.float32) if w is None else w, q)
        if t in modal:  # the same arguments, the mode's kernel
            modal[t](x, np.empty(0, dtype=np.float32) if w is None else w, np.empty_like(q))
        if d is None or t in d:
            dequantize(q, t, x.shape)
    if types and checks:
        round_bf16_inplace(x.copy())  # the pipeline rounds every BF16 slab with it


def _first_calls_argv(argv: list[str]) -> None:
    """first_calls of a warm-up process: the rounding mode (@ggml, @best, ...), then NAME (quantizer
    only) or NAME:d (and its dequantizer); no checks (the process that starts it compiles those)."""
    mode, names = argv[0][1:], argv[1:]
    first_calls([a.split(":")[0] for a in names], [a.split(":")[0] for a in names if a.endswith(":d")], checks=False,
                rounding=mode)


def warm(types, jobs: int | None = None, on_start=None, dequant=None, rounding: str = "ggml") -> list[QType]:
    """Compile the kernels of the cold `types` in up to `jobs` (default: cores) processes at once
    (this one and jobs - 1 others), so that this process then loads the others' from numba's
    on-disk cache instead of compiling everything one after the other: the quantizers of `types`
    (and their `rounding` mode's), the dequantizers of `dequant` (default: of `types` too; a
    conversion needs only its sources'). Returns the types that were cold. A
    warm-up process that fails (or cannot start) changes nothing: the first call then compiles in
    this process, as it would have anyway."""
    types = list(types)
    dequant = None if dequant is None else list(dequant)
    if not cold_types(types, dequant, rounding):
        return []
    # one warm-up at a time per numba cache (batch workers start together): the others wait, then
    # find the kernels cached; processes on other caches (NUMBA_CACHE_DIR) do not wait for it
    with _warm_lock():
        cold = cold_types(types, dequant, rounding)
        if cold:
            if on_start is not None:
                on_start(cold)
            _compile(cold, _needs(types, dequant)[2], max(1, int(jobs or MAX_THREADS)), parse_rounding(rounding))
    return cold


@contextmanager
def _warm_lock():
    from ..io.fsutil import file_lock
    from .kernels._tablecache import cache_dir

    d = cache_dir()
    where = hashlib.sha1(os.path.realpath(d).encode()).hexdigest()[:16] if d else "nocache"
    path = os.path.join(tempfile.gettempdir(), f"kquant-warm-{os.getuid()}-{where}.lock")
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
    """The kernel module that defines `t`'s quantizer (Q5_K: q4_k, whose driver it shares)."""
    return registry()[t].quantize.py_func.__module__.rsplit(".", 1)[-1]


CHECKS_S = 1.0  # CPU seconds to compile the checks' and BF16 rounding's kernels (first_calls checks=True)
START_S = 1.0  # CPU seconds for a warm-up process to start (python, numpy, numba, kquant.ggml, numba's typing)


def _groups(cold: list[QType], jobs: int) -> list[list[QType]]:
    """`cold` split into at most `jobs` groups of whole families, longest family first to the
    least loaded group; group 0 is this process's (it also compiles the checks), the others
    each pay a process start."""
    families: dict[str, list[QType]] = {}
    for t in cold:
        families.setdefault(_family(t), []).append(t)
    jobs = max(1, min(jobs, len(families)))
    groups: list[list[QType]] = [[] for _ in range(jobs)]
    load = [CHECKS_S] + [START_S] * (jobs - 1)

    def cost(fam: str) -> float:
        per_driver: dict = {}  # types sharing one compiled quantizer (Q4_K, Q5_K) count it once
        for t in families[fam]:
            per_driver.setdefault(registry()[t].quantize, DECLS[t].compile_s)
        return sum(per_driver.values())

    for fam in sorted(families, key=lambda f: (-cost(f), f)):
        i = load.index(min(load))
        groups[i] += families[fam]
        load[i] += cost(fam)
    return groups  # none empty: an empty group's load is below any filled one's


def _compile(cold: list[QType], dequant: set[QType], jobs: int, rounding: str = "ggml") -> None:
    """First calls of `cold` (and of the dequantizers of those in `dequant`; the quantizers of the
    `rounding` mode too): one group in this process, each other group in a process of its own, at
    the same time (see _groups)."""
    groups = _groups(cold, jobs)
    from ..io.fsutil import signals_held

    code = f"import sys; from {__name__} import _first_calls_argv; _first_calls_argv(sys.argv[1:])"
    env = dict(os.environ)  # the same numba settings and cache directory; this very kquant first
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    procs: list[subprocess.Popen] = []
    try:
        for g in groups[1:]:
            with signals_held():  # started and registered for the kill below with no interrupt in between
                names = [t.name + (":d" if t in dequant else "") for t in g]
                try:
                    procs.append(subprocess.Popen([sys.executable, "-c", code, "@" + rounding, *names], env=env,
                                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                except OSError:  # no process to be had: its first calls compile here, as they would have
                    pass
        first_calls(groups[0], [t for t in groups[0] if t in dequant], rounding=rounding)
        for p in procs:
            p.wait()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
