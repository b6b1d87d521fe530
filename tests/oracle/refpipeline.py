"""llama.cpp's own two-step pipeline, for tests and benchmarks (never used by kquant itself).

Step 1: `convert_hf_to_gguf.py --outtype bf16`, run by a separate Python that has torch and
transformers (KQUANT_REFCONV_PYTHON, made by scripts/setup_refconv.sh) from the llama.cpp sources
in the llama-cpp-python sdist (KQUANT_LLAMA_CPP; default: where scripts/setup_refconv.sh puts both).
Step 2: `llama_model_quantize` from llama-cpp-python (the whole of llama-quantize).
`compare_gguf` then says tensor by tensor and key by key where two GGUF files differ.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kquant.types import FileType, parse_ftype

REFCONV_DIR = Path(os.environ.get("KQUANT_REFCONV_DIR", Path.home() / ".cache" / "kquant" / "refconv"))


def refconv_python() -> str | None:
    """The Python of scripts/setup_refconv.sh's venv (KQUANT_REFCONV_PYTHON overrides)."""
    p = os.environ.get("KQUANT_REFCONV_PYTHON") or str(REFCONV_DIR / "venv" / "bin" / "python")
    return p if Path(p).exists() else None


def llama_cpp_dir() -> Path | None:
    """llama.cpp sources holding convert_hf_to_gguf.py (KQUANT_LLAMA_CPP overrides)."""
    p = Path(os.environ.get("KQUANT_LLAMA_CPP") or REFCONV_DIR / "llama.cpp")
    return p if (p / "convert_hf_to_gguf.py").exists() else None


def available() -> bool:
    return refconv_python() is not None and llama_cpp_dir() is not None


def convert_hf_bf16(model: str | Path, out: str | Path, extra_args=()) -> Path:
    """Run llama.cpp's convert_hf_to_gguf.py --outtype bf16 (in a reference process of convert_many)."""
    (r,) = convert_many([[model, "--outtype", "bf16", "--outfile", out, *extra_args]])
    if r.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py failed:\n{r.stderr[-4000:]}")
    return Path(out)


@dataclass
class RefResult:
    """One convert_hf_to_gguf.py run, as subprocess.CompletedProcess reports it."""

    returncode: int
    stderr: str


_IDLE: list[subprocess.Popen] = []  # reference processes of earlier convert_many calls, kept for the next
_IDLE_LOCK = threading.Lock()


def _close_idle() -> None:
    with _IDLE_LOCK:
        procs, _IDLE[:] = list(_IDLE), []
    for proc in procs:
        proc.stdin.close()
        proc.wait()


atexit.register(_close_idle)


def _server(py: str, src: Path) -> subprocess.Popen:
    """An idle reference process of an earlier call (its imports paid), or a new one."""
    with _IDLE_LOCK:
        while _IDLE:
            proc = _IDLE.pop()
            if proc.poll() is None:
                return proc
    errf = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen([py, str(Path(__file__).with_name("refconv_server.py")), str(src)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=errf, text=True, bufsize=1)
    proc.errf = errf
    return proc


# {chkhsh: pre-tokenizer name} every convert_many job's converter also recognises: the test vocabularies
# standing in for real ones (tests/test_arch.py EXTRA_PRE_HASHES, its trimmed tokenizers)
PRE_HASHES: dict[str, str] = {}


def convert_many(jobs: list[list[str]], workers: int = 2, timeout: float = 900,
                 pre_hashes: dict[str, str] | None = None) -> list[RefResult]:
    """Run `convert_hf_to_gguf.py ARGS` for each ARGS in `jobs`, in `workers` long-lived reference
    processes (refconv_server.py: the converter's imports are paid once per process, not per job;
    the processes stay up for this test process's later calls, each job starting from the state
    the server resets). `pre_hashes`: {chkhsh: pre-tokenizer name} the converter recognises
    besides its own table and PRE_HASHES. Results in job order. A job that kills or hangs its process fails
    alone; the next job gets a fresh process."""
    py, src = refconv_python(), llama_cpp_dir()
    if py is None or src is None:
        raise RuntimeError("reference converter not set up: bash scripts/setup_refconv.sh")
    hashes = {**PRE_HASHES, **(pre_hashes or {})}
    results: list[RefResult | None] = [None] * len(jobs)
    todo = iter(range(len(jobs)))
    lock = threading.Lock()

    def work() -> None:
        proc = None
        try:
            while True:
                with lock:
                    i = next(todo, None)
                if i is None:
                    return
                if proc is None or proc.poll() is not None:
                    proc = _server(py, src)
                timer = threading.Timer(timeout, proc.kill)
                timer.start()
                try:
                    proc.stdin.write(json.dumps({"args": [str(a) for a in jobs[i]], "pre_hashes": hashes}) + "\n")
                    proc.stdin.flush()
                    line = proc.stdout.readline()
                except (BrokenPipeError, OSError):
                    line = ""
                finally:
                    timer.cancel()
                if line:
                    r = json.loads(line)
                    results[i] = RefResult(r["rc"], r["log"])
                else:  # the process died (or was killed by the timer) on this job
                    proc.kill()
                    proc.wait()
                    proc.errf.seek(0)
                    results[i] = RefResult(proc.returncode or 1, "reference process died:\n" + proc.errf.read()[-4000:])
                    proc = None
        finally:
            if proc is not None and proc.poll() is None:
                with _IDLE_LOCK:
                    _IDLE.append(proc)

    threads = [threading.Thread(target=work) for _ in range(max(1, min(workers, len(jobs))))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def llama_quantize_rc(src: str | Path, out: str | Path, ftype, threads: int = 2, imatrix=None,
                      weights: dict | None = None, **params) -> int:
    """llama_model_quantize(src, out) with `ftype` and any llama_model_quantize_params fields -> its
    return code. `imatrix` (a kquant ImatrixData) is given as llama-quantize gives it: its weights
    in params.imatrix and the quantize.imatrix.* keys as kv_overrides (quantize.cpp). `weights`
    ({name: float32 values}) replaces the weights given (with imatrix=None: raw entries, no keys)."""
    import llama_cpp

    ft = parse_ftype(ftype) if not isinstance(ftype, FileType) else ftype
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = int(ft)
    p.nthread = threads
    for k, v in params.items():
        setattr(p, k, v)
    keep = []  # ctypes arrays that must outlive the call
    if weights is None and imatrix is not None:
        weights = imatrix.weights
    if weights:
        arr = (llama_cpp.llama_model_imatrix_data * (len(weights) + 1))()
        for i, (name, values) in enumerate(weights.items()):
            values = np.ascontiguousarray(values, dtype=np.float32)
            keep.append(values)
            arr[i].name = name.encode()
            arr[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            arr[i].size = values.size
        arr[len(weights)].name = None
        p.imatrix = arr
        keep.append(arr)
    if weights and imatrix is not None:
        INT, STR = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT, llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
        ovs = [(b"quantize.imatrix.file", STR, os.fsencode(imatrix.path)[:127])]
        if imatrix.datasets:
            ovs.append((b"quantize.imatrix.dataset", STR, imatrix.datasets[0].encode("utf-8", "surrogateescape")[:127]))
        ovs.append((b"quantize.imatrix.entries_count", INT, len(weights)))
        if imatrix.chunk_count > 0:
            ovs.append((b"quantize.imatrix.chunks_count", INT, imatrix.chunk_count))
        kvo = (llama_cpp.llama_model_kv_override * (len(ovs) + 1))()
        for i, (key, tag, val) in enumerate(ovs):
            kvo[i].key = key
            kvo[i].tag = tag
            if tag == STR:
                kvo[i].value.val_str = val
            else:
                kvo[i].value.val_i64 = val
        kvo[len(ovs)].key = b""
        p.kv_overrides = kvo
        keep.append(kvo)
    return llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(p))


def llama_quantize(src: str | Path, out: str | Path, ftype, threads: int = 2, imatrix=None, **params) -> Path:
    """llama_model_quantize_rc, raising when it fails."""
    rc = llama_quantize_rc(src, out, ftype, threads, imatrix, **params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed ({rc})")
    return Path(out)


def assert_identical(a: str | Path, b: str | Path, what: str = "") -> None:
    """Files a and b byte for byte the same; where not, compare_gguf's differences say where (read
    only then: parsing both files costs more than comparing their bytes)."""
    if Path(a).read_bytes() != Path(b).read_bytes():
        diffs = compare_gguf(a, b, ignore_keys=())
        raise AssertionError(f"{what}: {a} and {b} differ: {diffs[:20] or 'same metadata and tensors, other bytes'}")


def compare_gguf(a: str | Path, b: str | Path, ignore_keys=("general.name",)) -> list[str]:
    """Differences between two GGUF files: metadata keys/types/values, tensor order/types/shapes/bytes."""
    from kquant.io.gguf import GGUFFile

    diffs: list[str] = []
    with GGUFFile(a) as fa, GGUFFile(b) as fb:
        ka = {k: v for k, v in fa.metadata.items() if k not in ignore_keys}
        kb = {k: v for k, v in fb.metadata.items() if k not in ignore_keys}
        for k in sorted(set(ka) | set(kb)):
            if k not in ka or k not in kb:
                diffs.append(f"key {k}: only in {'b' if k not in ka else 'a'}")
                continue
            (ta, va), (tb, vb) = ka[k], kb[k]
            if ta != tb or getattr(va, "sub_type", None) != getattr(vb, "sub_type", None):
                diffs.append(f"key {k}: type {ta}/{getattr(va, 'sub_type', '')} vs {tb}/{getattr(vb, 'sub_type', '')}")
            elif list(va) != list(vb) if isinstance(va, list) else va != vb:
                diffs.append(f"key {k}: value {str(va)[:60]} vs {str(vb)[:60]}")
        na = [t.name for t in fa.tensors]
        nb = [t.name for t in fb.tensors]
        if na != nb:
            diffs.append(f"tensor order/names differ: {na[:5]}... vs {nb[:5]}...")
        tb = {t.name: t for t in fb.tensors}
        for t in fa.tensors:
            u = tb.get(t.name)
            if u is None:
                continue
            if t.qtype != u.qtype or tuple(t.shape) != tuple(u.shape):
                diffs.append(f"tensor {t.name}: {t.qtype.name}{list(t.shape)} vs {u.qtype.name}{list(u.shape)}")
            elif not np.array_equal(fa.data(t.name), fb.data(u.name)):
                n = int(np.count_nonzero(fa.data(t.name) != fb.data(u.name)))
                diffs.append(f"tensor {t.name} ({t.qtype.name}): {n} bytes differ")
    return diffs


def load_llama(path: str | Path, n_ctx: int = 128, n_threads: int = 2, **kw):
    """A GGUF loaded by llama.cpp (llama_cpp.Llama) with CPU weight repacking off (it crashes on these CPUs)."""
    import llama_cpp
    import llama_cpp.llama as high

    orig = llama_cpp.llama_model_default_params

    def no_repack():
        p = orig()
        p.use_extra_bufts = False
        return p

    high.llama_cpp.llama_model_default_params = no_repack
    try:
        return llama_cpp.Llama(str(path), n_ctx=n_ctx, verbose=False, n_threads=n_threads, **kw)
    finally:
        high.llama_cpp.llama_model_default_params = orig


def eval_logits(path: str | Path, text: bytes = b"The quick brown fox jumps over the lazy dog.", n_threads: int = 2):
    """Load a GGUF with llama.cpp and return (tokens, logits of every position)."""
    m = load_llama(path, n_threads=n_threads, logits_all=True)
    try:
        toks = m.tokenize(text)
        m.eval(toks)
        logits = np.array(m.scores[: len(toks)], dtype=np.float32)
    finally:
        m.close()
    return toks, logits


if __name__ == "__main__":  # python tests/oracle/refpipeline.py A.gguf B.gguf
    d = compare_gguf(sys.argv[1], sys.argv[2])
    print("\n".join(d) if d else "identical")
    sys.exit(1 if d else 0)
