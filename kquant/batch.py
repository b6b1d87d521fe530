"""`kquant batch`: every model folder under a root to several file types; resumable; local or Ray.

Not a port: llama.cpp has no batch mode. Each model is one `pipeline.convert_many` call (every
source tensor read once and quantized to all requested types in that pass), so each output has
exactly the bytes `kquant convert` writes. Outputs are only renamed into place when complete
(`io.fsutil.atomic_output`). A manifest in OUTDIR (`.kquant-batch.json`, written by the driver only)
records per output a fingerprint of its sources (names, sizes and mtimes of the model folder's
files and of the imatrix, kquant version, type, options) and the size and mtime of the file
written. A re-run skips an output only when the file is still the one recorded, its header parses
(`io.gguf.GGUFFile`: tensor data inside the file, no trailing bytes) and its general.file_type is
the type asked for; anything else is redone. Temporary files of a killed run are removed.

Executors: in-process (`--jobs 1`), worker processes (`--jobs N`, spawn, numba threads = cores // N)
or Ray tasks (`--executor ray`: one task per model; OUTDIR must be on a filesystem every node sees,
which is probed on each node before any work).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue as queue_mod
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .io import jsonio
from .errors import InputError, KquantError, OutputError, UnsupportedError
from .types import FileType, parse_ftype

MANIFEST_NAME = ".kquant-batch.json"
LOCK_NAME = ".kquant-batch.lock"
PROBE_PREFIX = ".kquant-batch-probe-"
MANIFEST_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_SUFFIX = ".safetensors"
INDEX_NAME = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
IMATRIX_SUFFIXES = (".gguf", ".dat")  # looked up in this order: DIR/<folder name><suffix>
HF_CACHE_PREFIX = "models--"  # Hugging Face cache: models--ORG--NAME/snapshots/<rev>/
MAX_DEPTH = 8  # folder levels searched below ROOT
JOB_BASE_BYTES = 384 << 20  # a worker process: Python, numpy, numba, compiled kernels
WORKER_STOP_SECONDS = 20.0  # wait for interrupted workers to remove their temp files
RAY_CANCEL_SECONDS = 30.0
POLL_SECONDS = 0.2
MAX_ERROR_CHARS = 300

DONE, SKIPPED, FAILED, INTERRUPTED = "done", "skipped", "failed", "interrupted"


# ------------------------------------------------------------------ discovery
@dataclass
class ModelDir:
    name: str  # output prefix: the folder name (HF cache snapshot: ORG--NAME)
    path: Path  # as found under ROOT (a symlink stays a symlink)


@dataclass
class SkippedDir:
    path: Path
    reason: str


@dataclass
class Discovery:
    models: list[ModelDir]
    skipped: list[SkippedDir]


def _entries(d: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(d) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError:
        return []


def classify(d: Path) -> str | None:
    """None if `d` is a model folder (config.json + safetensors weights), else why it is not."""
    files = {e.name for e in _entries(d) if _is_file(e)}
    has_config = CONFIG_NAME in files
    has_weights = INDEX_NAME in files or any(n.endswith(WEIGHTS_SUFFIX) for n in files)
    if has_config and has_weights:
        return None
    if has_config:
        if any(n.lower().endswith(PICKLE_SUFFIXES) for n in files):
            return "config.json but only PyTorch pickle weights (convert them to safetensors)"
        return "config.json but no .safetensors weights"
    if has_weights:
        return "safetensors weights but no config.json"
    return "no config.json or .safetensors weights"


def _is_file(e: os.DirEntry) -> bool:
    try:
        return e.is_file()  # follows symlinks
    except OSError:
        return False


def _is_dir(e: os.DirEntry) -> bool:
    try:
        return e.is_dir()  # follows symlinks: symlinked model folders count
    except OSError:
        return False


def model_name(d: Path) -> str:
    """The output prefix of a model folder: its name, or ORG--NAME for a Hugging Face cache snapshot."""
    if d.parent.name == "snapshots" and d.parent.parent.name.startswith(HF_CACHE_PREFIX):
        return d.parent.parent.name[len(HF_CACHE_PREFIX):]
    return d.name


def discover(root, exclude: Sequence = ()) -> Discovery:
    """Model folders under `root` (or `root` itself), and the top-most folders holding none.

    Hidden folders (.git, .cache, ...) and the `exclude` folders (OUTDIR) are not searched.
    """
    root = Path(os.fspath(root))
    if not root.is_dir():
        raise InputError(f"{root}: not a folder" if root.exists() else f"{root}: no such folder")
    excluded = {os.path.realpath(p) for p in exclude}
    seen: set[str] = set()
    models: list[ModelDir] = []

    def visit(d: Path, depth: int) -> tuple[int, list[SkippedDir]]:
        real = os.path.realpath(d)
        if real in seen or real in excluded:  # a symlink loop, or a folder reached twice
            return -1, []
        seen.add(real)
        reason = classify(d)
        if reason is None:
            models.append(ModelDir(model_name(d), d))
            return 1, []
        found, skipped = 0, []
        if depth < MAX_DEPTH:
            for e in _entries(d):
                if e.name.startswith(".") or not _is_dir(e):
                    continue
                sub = d / e.name
                n, s = visit(sub, depth + 1)
                if n == 0:
                    skipped.append(SkippedDir(sub, classify(sub) or "no model folder inside"))
                elif n > 0:
                    found += n
                    skipped += s
        return found, skipped

    _, skipped = visit(root, 0)
    models.sort(key=lambda m: (m.name, str(m.path)))
    by_name: dict[str, ModelDir] = {}
    for m in models:
        if m.name in by_name:
            raise InputError(
                f"two model folders are named {m.name!r} ({by_name[m.name].path} and {m.path}): "
                "their outputs would collide; rename one or run them as separate batches"
            )
        by_name[m.name] = m
    return Discovery(models, skipped)


def output_name(model: str, ftype: FileType) -> str:
    """`<folder name>-<TYPE>.gguf`."""
    return f"{model}-{ftype.short_name}.gguf"


def find_imatrix(imatrix_dir, model: str) -> Path | None:
    """DIR/<model>.gguf, else DIR/<model>.dat, else None."""
    if imatrix_dir is None:
        return None
    for suffix in IMATRIX_SUFFIXES:
        p = Path(os.fspath(imatrix_dir)) / f"{model}{suffix}"
        if p.is_file():
            return p
    return None


# ------------------------------------------------------------------ fingerprints and the manifest
def _stat_entry(p: Path) -> list:
    st = os.stat(p)  # follows symlinks (HF cache blobs)
    return [p.name, st.st_size, st.st_mtime_ns]


def source_files(model_dir: Path) -> list[list]:
    """[name, size, mtime_ns] of every visible regular file in the model folder, sorted."""
    return [_stat_entry(model_dir / e.name) for e in _entries(model_dir) if not e.name.startswith(".") and _is_file(e)]


def fingerprint(files: list, ftype: FileType, imatrix: Path | None, options: dict) -> str:
    """sha256 of what an output depends on: sources, imatrix, type, options, kquant version."""
    from . import __version__

    doc = {
        "kquant": __version__,
        "type": ftype.short_name,
        "files": files,
        "imatrix": None if imatrix is None else [str(imatrix)] + _stat_entry(imatrix)[1:],
        "options": options,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _valid_record(v) -> bool:
    """A manifest record with the field types check_complete and the report use (others are re-checked)."""
    def is_int(x):
        return isinstance(x, int) and not isinstance(x, bool)

    return (isinstance(v, dict) and isinstance(v.get("fingerprint"), str) and is_int(v.get("size"))
            and is_int(v.get("mtime_ns"))
            and (v.get("seconds") is None or (isinstance(v["seconds"], (int, float)) and not isinstance(v["seconds"], bool)
                                              and math.isfinite(v["seconds"]))))


class Manifest:
    """OUTDIR/.kquant-batch.json: output file name -> record of how and when it was written."""

    def __init__(self, outdir: Path):
        self.path = outdir / MANIFEST_NAME
        self.outputs: dict[str, dict] = {}
        self.note = None
        if not self.path.exists() and not self.path.is_symlink():
            return
        try:
            doc = jsonio.read_json(self.path)
        except InputError as e:  # kquant's own state: a damaged manifest only costs a re-check
            self.note = f"{_first_line(e)}; every output is checked again"
            return
        if isinstance(doc, dict) and doc.get("version") == MANIFEST_VERSION and isinstance(doc.get("outputs"), dict):
            self.outputs = {k: v for k, v in doc["outputs"].items() if _valid_record(v)}
        else:
            self.note = f"{self.path}: not a version {MANIFEST_VERSION} manifest; every output is checked again"

    def record(self, out: Path, fp: str, model: str, ftype: FileType, res: dict) -> None:
        st = out.stat()
        self.outputs[out.name] = {
            "model": model,
            "type": ftype.short_name,
            "fingerprint": fp,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "tensor_bytes": res["tensor_bytes"],
            "n_elements": res["n_elements"],
            "seconds": res["seconds"],
        }

    def save(self) -> None:
        from . import __version__
        from .io.fsutil import atomic_output

        doc = {"version": MANIFEST_VERSION, "kquant": __version__, "outputs": dict(sorted(self.outputs.items()))}
        with atomic_output(self.path, force=True, replaces_input=True) as f:  # read, then rewritten
            f.write((json.dumps(doc, indent=1) + "\n").encode("utf-8"))


def check_complete(out: Path, ftype: FileType, fp: str, record: dict | None) -> tuple[bool, str, dict]:
    """(complete, why not, facts) for an existing output: recorded, unchanged, header valid, right type."""
    from .io.gguf import GGUFFile
    from .pipeline import FILE_TYPE_KEY

    if not out.is_file():
        return False, "missing", {}
    if record is None:
        return False, "not recorded in the manifest", {}
    if record.get("fingerprint") != fp:
        return False, "source, imatrix or options changed", {}
    st = out.stat()
    if st.st_size != record.get("size") or st.st_mtime_ns != record.get("mtime_ns"):
        return False, "file changed since it was written", {}
    try:
        with GGUFFile(out) as g:
            ft = g.value(FILE_TYPE_KEY)
            tensor_bytes = sum(t.nbytes for t in g.tensors)
            n_elements = sum(_prod(t.shape) for t in g.tensors)
    except KquantError as e:
        return False, f"unreadable ({_first_line(e)})", {}
    if ft != int(ftype):
        return False, f"general.file_type is {ft}, not {int(ftype)} ({ftype.short_name})", {}
    return True, "", {"file_bytes": st.st_size, "tensor_bytes": tensor_bytes, "n_elements": n_elements,
                      "seconds": record.get("seconds")}


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _first_line(e: BaseException) -> str:
    s = str(e).splitlines()[0] if str(e) else type(e).__name__
    return s if len(s) <= MAX_ERROR_CHARS else s[: MAX_ERROR_CHARS - 3] + "..."


def sweep_temp_files(outdir: Path, names: Sequence[str]) -> list[Path]:
    """Remove `.NAME.kquant-tmp-*` files of these outputs (left by a killed run); returns them."""
    from .io.fsutil import MAX_TMP_BASE, TMP_MARK

    prefixes = tuple(f".{n[:MAX_TMP_BASE]}{TMP_MARK}" for n in names)
    gone = []
    for e in _entries(outdir):
        if e.name.startswith(prefixes):
            try:
                os.unlink(outdir / e.name)
                gone.append(outdir / e.name)
            except FileNotFoundError:
                pass
    return gone


class OutdirLock:
    """An exclusive flock on OUTDIR/.kquant-batch.lock: one batch per output folder at a time."""

    def __init__(self, outdir: Path):
        self.path = outdir / LOCK_NAME
        self._cm = None

    def __enter__(self):
        from .io.fsutil import file_lock

        cm = file_lock(self.path, blocking=False)
        try:
            locked = cm.__enter__()
        except OSError as e:
            raise OutputError(f"{self.path}: cannot create the batch lock ({e.strerror or e})") from None
        if not locked:
            cm.__exit__(None, None, None)
            raise OutputError(f"{self.path.parent}: another kquant batch is writing to this folder")
        self._cm = cm
        return self

    def __exit__(self, *exc):
        cm, self._cm = self._cm, None
        if cm is not None:
            cm.__exit__(None, None, None)


def prepare_outdir(outdir) -> Path:
    """Create OUTDIR if needed and check a file can be created in it."""
    p = Path(os.path.abspath(os.fspath(outdir)))
    if p.exists() and not p.is_dir():
        raise OutputError(f"{p}: exists and is not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{p}: cannot create the output folder ({e.strerror or e})") from None
    problem = _writable(p)
    if problem:
        raise OutputError(f"{p}: {problem}")
    return p


def _writable(d: Path) -> str | None:
    from .io.fsutil import created, signals_held

    probe = d / f"{PROBE_PREFIX}{socket.gethostname()}-{os.getpid()}"
    try:
        with signals_held():  # created and removed with no interrupt in between
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            os.close(fd)
            created(probe)
            os.unlink(probe)
    except OSError as e:
        return f"cannot create a file in it ({e.strerror or e})"
    return None


# ------------------------------------------------------------------ parallelism
def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def available_memory() -> int | None:
    """MemAvailable in bytes (Linux), else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def estimate_job_bytes(model_path: Path, n_types: int) -> int:
    """Peak memory of one model's pass, from the safetensors headers (a rough upper estimate).

    A tensor is read in SLAB_BYTES float32 slabs, held as read, rounded and once per type encoded;
    a tensor that is not a 2-D matrix (or that a transform combines) is read whole.
    """
    from .pipeline import SLAB_BYTES, open_model

    try:
        with open_model(model_path) as ckpt:
            infos = list(ckpt.tensors.values())
    except (KquantError, OSError):
        return JOB_BASE_BYTES
    if not infos:
        return JOB_BASE_BYTES
    largest = max(ti.numel for ti in infos) * 4
    largest_whole = max((ti.numel * 4 for ti in infos if len(ti.shape) != 2), default=0)
    return JOB_BASE_BYTES + (3 + n_types) * min(largest, SLAB_BYTES) + 2 * largest_whole


def plan_parallelism(requested: int, n_jobs: int, cpus: int, mem_available: int | None, job_bytes: int,
                     threads: int | None = None) -> tuple[int, int, list[str]]:
    """(worker processes, numba threads each, notes): requested capped by cores, memory and job count."""
    if requested < 1:
        raise InputError(f"--jobs {requested}: must be at least 1")
    notes = []
    jobs = requested
    if jobs > cpus:
        notes.append(f"--jobs {requested} capped to {cpus} (the cores of this machine)")
        jobs = cpus
    if mem_available is not None and job_bytes > 0:
        fit = max(1, mem_available // job_bytes)
        if jobs > fit:
            notes.append(
                f"--jobs capped to {fit}: about {job_bytes / 2**30:.1f} GiB per model, "
                f"{mem_available / 2**30:.1f} GiB available"
            )
            jobs = fit
    jobs = max(1, min(jobs, n_jobs))
    return jobs, threads if threads is not None else max(1, cpus // jobs), notes


# ------------------------------------------------------------------ one job (runs in any executor)
def run_job(job: dict, progress: Callable | None = None) -> dict:
    """Convert one model to its pending outputs; never raises for a model's own problems.

    job: {"index", "model", "path", "targets": [[output, TYPE], ...], "imatrix", "imatrix_name", "threads",
    "allow_nonfinite"}.
    Returns {"index", "model", "error" (None or one line), "outputs": [...], "host", "pid"}.
    KeyboardInterrupt (SIGINT, SIGTERM through handle_termination, ray.cancel) propagates.
    """
    from .pipeline import Options, convert_many

    out = {"index": job["index"], "model": job["model"], "error": None, "outputs": [],
           "host": socket.gethostname(), "pid": os.getpid()}
    try:
        opts = Options(threads=job.get("threads"), allow_nonfinite=bool(job.get("allow_nonfinite")), force=True,
                       progress=progress, rounding=job.get("rounding") or "ggml")
        if job.get("imatrix"):
            from .plan.imatrix import load_imatrix

            opts.imatrix = load_imatrix(job["imatrix"])
            # quantize.imatrix.file holds the path as `kquant convert --imatrix DIR/<name>.dat` would
            opts.imatrix.path = job.get("imatrix_name") or job["imatrix"]
        results = convert_many(job["path"], [(o, t) for o, t in job["targets"]], opts)
        for (o, t), r in zip(job["targets"], results):
            out["outputs"].append({"output": o, "type": t, "file_bytes": r.file_bytes, "tensor_bytes": r.total_bytes,
                                   "n_elements": r.n_elements, "seconds": round(r.seconds, 3)})
    except KquantError as e:
        out["error"] = _first_line(e)
    except MemoryError:
        out["error"] = "out of memory"
    except Exception as e:  # a bug: keep going with the other models, say what it was
        out["error"] = _first_line(RuntimeError(f"internal error: {type(e).__name__}: {e}"))
    return out


# ------------------------------------------------------------------ report
@dataclass
class OutputRow:
    model: str
    type: str
    output: str
    status: str = INTERRUPTED
    file_bytes: int | None = None
    bpw: float | None = None
    seconds: float | None = None
    error: str | None = None
    note: str | None = None  # why an existing file was redone

    def as_json(self) -> dict:
        return {
            "model": self.model, "type": self.type, "output": self.output, "status": self.status,
            "file_bytes": self.file_bytes, "bits_per_weight": None if self.bpw is None else round(self.bpw, 4),
            "seconds": self.seconds, "error": self.error, "redone_because": self.note,
        }


@dataclass
class BatchReport:
    root: str
    outdir: str
    types: list[str]
    executor: str
    rows: list[OutputRow] = field(default_factory=list)
    skipped_folders: list[SkippedDir] = field(default_factory=list)
    failed: dict = field(default_factory=dict)  # model -> error
    interrupted: bool = False
    jobs: int = 1
    threads: int | None = None
    seconds: float = 0.0
    removed_temp_files: int = 0

    @property
    def exit_code(self) -> int:
        """0 all done, 1 a model failed, 130 interrupted."""
        if self.interrupted:
            return 130
        return 1 if self.failed else 0

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.rows)

    def as_json(self) -> dict:
        return {
            "root": self.root, "outdir": self.outdir, "types": self.types, "executor": self.executor,
            "jobs": self.jobs, "threads_per_job": self.threads, "seconds": round(self.seconds, 3),
            "outputs": [r.as_json() for r in self.rows],
            "skipped_folders": [{"path": str(s.path), "reason": s.reason} for s in self.skipped_folders],
            "failed_models": [{"model": m, "error": e} for m, e in self.failed.items()],
            "counts": {s: self.count(s) for s in (DONE, SKIPPED, FAILED, INTERRUPTED)},
            "interrupted": self.interrupted, "ok": self.exit_code == 0,
        }

    def print_table(self, stream=sys.stdout) -> None:
        w = max([len("model")] + [len(r.model) for r in self.rows])
        print(f"{'model':{w}s}  {'type':7s} {'size':>10s} {'bpw':>7s} {'time':>8s}  status", file=stream)
        for r in self.rows:
            size = "-" if r.file_bytes is None else f"{r.file_bytes / 2**20:.2f} MiB"
            bpw = "-" if r.bpw is None else f"{r.bpw:.3f}"
            sec = "-" if r.seconds is None else f"{r.seconds:.1f} s"
            status = r.status
            if r.status == SKIPPED:
                status = "skipped (complete)"
            elif r.status == FAILED and r.error:
                status = f"failed: {r.error[:80]}"
            print(f"{r.model:{w}s}  {r.type:7s} {size:>10s} {bpw:>7s} {sec:>8s}  {status}", file=stream)
        for s in self.skipped_folders:
            print(f"not a model: {s.path} ({s.reason})", file=stream)
        print(f"{self.count(DONE)} written, {self.count(SKIPPED)} already complete, {self.count(FAILED)} failed, "
              f"{self.count(INTERRUPTED)} not done; {len(self.skipped_folders)} folder(s) skipped; "
              f"{self.seconds:.1f} s ({self.executor}, {self.jobs} job(s))", file=stream)


# ------------------------------------------------------------------ the driver
@dataclass
class _Ctx:
    report: BatchReport
    manifest: Manifest
    outdir: Path
    rows: dict  # (model, TYPE) -> OutputRow
    fps: dict  # output name -> fingerprint
    ftypes: dict  # output name -> FileType
    jobs: list  # job dicts
    log: Callable | None
    done_outputs: int = 0
    total_outputs: int = 0
    finished: set = field(default_factory=set)  # job indexes with a result

    def say(self, msg: str) -> None:
        if self.log:
            self.log(msg)

    def tensor(self, job: dict, i: int, n: int, name: str, types: str) -> None:
        if self.log:
            self.log(f"[{self.done_outputs}/{self.total_outputs} outputs] {job['model']} [{i:4d}/{n}] {name} -> {types}")

    def result(self, res: dict) -> None:
        """Record one job's outcome in the rows and the manifest."""
        job = self.jobs[res["index"]]
        if res["index"] in self.finished:
            return
        self.finished.add(res["index"])
        if res["error"] is None:
            by_out = {o["output"]: o for o in res["outputs"]}
            for o, t in job["targets"]:
                r = by_out[o]
                p = Path(o)
                row = self.rows[(job["model"], t)]
                if not p.is_file() or p.stat().st_size != r["file_bytes"]:
                    res["error"] = (f"{o}: written on {res['host']} but not visible here: OUTDIR must be a folder "
                                    "every worker and the driver share")
                    break
                self.manifest.record(p, self.fps[p.name], job["model"], self.ftypes[p.name], r)
                row.status, row.file_bytes, row.seconds = DONE, r["file_bytes"], r["seconds"]
                row.bpw = r["tensor_bytes"] * 8.0 / max(r["n_elements"], 1)
            self.manifest.save()
        if res["error"] is not None:
            self.report.failed[job["model"]] = res["error"]
            for _, t in job["targets"]:
                row = self.rows[(job["model"], t)]
                row.status, row.error = FAILED, res["error"]
            self.say(f"{job['model']}: failed: {res['error']}")
        else:
            self.done_outputs += len(job["targets"])
            self.say(f"[{self.done_outputs}/{self.total_outputs} outputs] {job['model']}: wrote "
                     + ", ".join(Path(o).name for o, _ in job["targets"]))


def run_batch(root, outdir, types: Sequence, *, jobs: int | None = None, threads: int | None = None,
              imatrix_dir=None, executor: str = "local", address: str | None = None, force: bool = False,
              allow_nonfinite: bool = False, log: Callable[[str], None] | None = None,
              ray_num_cpus: int | None = None, rounding: str = "ggml") -> BatchReport:
    """Convert every model folder under `root` to each of `types` into `outdir`; see the module docstring.

    `ray_num_cpus`: CPUs of the local Ray instance started when no `address` is given (default: all).
    Returns the report; an interrupt (SIGINT/SIGTERM/SIGHUP) stops the workers, removes temporary
    files and returns a report with `interrupted` set (the next run finishes the job).
    """
    from .io.fsutil import handle_termination, signals_held

    t0 = time.perf_counter()
    if executor not in ("local", "ray"):
        raise InputError(f"--executor {executor!r}: must be local or ray")
    if address is not None and executor != "ray":
        raise InputError("--address is for --executor ray")
    if jobs is not None and jobs < 1:
        raise InputError(f"--jobs {jobs}: must be at least 1")
    if threads is not None and threads < 1:
        raise InputError(f"--threads {threads}: must be at least 1")
    ftypes: list[FileType] = []
    for t in types:
        try:
            ft = parse_ftype(t)
        except ValueError as e:
            raise InputError(str(e)) from None
        if ft not in ftypes:
            ftypes.append(ft)
    if not ftypes:
        raise InputError("batch: give at least one --type")
    if imatrix_dir is not None and not Path(imatrix_dir).is_dir():
        raise InputError(f"--imatrix-dir {imatrix_dir}: no such folder")
    if executor == "ray":
        _import_ray()  # a missing extra is reported before anything is written
    found = discover(root, exclude=[os.path.abspath(os.fspath(outdir))])
    if not found.models:
        listed = "; ".join(f"{s.path.name}: {s.reason}" for s in found.skipped[:5])
        raise InputError(f"{root}: no model folder (config.json + .safetensors) found" + (f" ({listed})" if listed else ""))
    out = prepare_outdir(outdir)
    report = BatchReport(str(root), str(out), [f.short_name for f in ftypes], executor, skipped_folders=found.skipped)
    options = {"allow_nonfinite": bool(allow_nonfinite)}
    if rounding != "ggml":  # (absent for ggml: existing manifests stay valid)
        options["rounding"] = rounding

    with OutdirLock(out):
        all_names = [output_name(m.name, f) for m in found.models for f in ftypes]
        report.removed_temp_files = len(sweep_temp_files(out, all_names + [MANIFEST_NAME]))
        manifest = Manifest(out)
        ctx = _Ctx(report, manifest, out, {}, {}, {}, [], log)
        if manifest.note:
            ctx.say(manifest.note)
        if report.removed_temp_files:
            ctx.say(f"removed {report.removed_temp_files} temporary file(s) left by an interrupted run")
        for m in found.models:
            imatrix = find_imatrix(imatrix_dir, m.name)
            if imatrix_dir is not None and imatrix is None:
                ctx.say(f"{m.name}: no {m.name}.gguf or {m.name}.dat in {imatrix_dir}: converted without an imatrix")
            try:
                files = source_files(m.path)
            except OSError as e:
                files = None
                err = f"{m.path}: cannot read the folder ({e.strerror or e})"
            targets = []
            for f in ftypes:
                name = output_name(m.name, f)
                p = out / name
                row = OutputRow(m.name, f.short_name, str(p))
                report.rows.append(row)
                ctx.rows[(m.name, f.short_name)] = row
                if files is None:
                    row.status, row.error = FAILED, err
                    report.failed[m.name] = err
                    continue
                fp = fingerprint(files, f, imatrix, options)
                ctx.fps[name], ctx.ftypes[name] = fp, f
                if not force:
                    ok, why, facts = check_complete(p, f, fp, manifest.outputs.get(name))
                    if ok:
                        row.status, row.file_bytes, row.seconds = SKIPPED, facts["file_bytes"], facts["seconds"]
                        row.bpw = facts["tensor_bytes"] * 8.0 / max(facts["n_elements"], 1)
                        continue
                    if why != "missing":
                        row.note = why
                        ctx.say(f"{name}: redoing ({why})")
                targets.append([str(p), f.short_name])
            if targets:
                # absolute paths: a worker's current folder is not the driver's (Ray)
                ctx.jobs.append({"index": len(ctx.jobs), "model": m.name, "path": os.path.abspath(m.path),
                                 "targets": targets, "threads": threads, "allow_nonfinite": bool(allow_nonfinite),
                                 "rounding": rounding,
                                 "imatrix": None if imatrix is None else os.path.abspath(imatrix),
                                 "imatrix_name": None if imatrix is None else str(imatrix)})
        ctx.total_outputs = sum(len(j["targets"]) for j in ctx.jobs)
        try:
            with handle_termination():
                if ctx.jobs:
                    if executor == "ray":
                        _run_ray(ctx, address, jobs, threads, ray_num_cpus)
                    else:
                        _run_local(ctx, jobs or 1, threads)
        except KeyboardInterrupt:
            report.interrupted = True
            ctx.say("interrupted: stopping; complete outputs are kept, the next run finishes the job")
        finally:
            with signals_held():
                sweep_temp_files(out, all_names + [MANIFEST_NAME])
                if ctx.finished:
                    try:
                        manifest.save()
                    except KquantError as e:
                        ctx.say(f"cannot save the manifest: {_first_line(e)}")
    report.seconds = time.perf_counter() - t0
    return report


# ------------------------------------------------------------------ local executor
def _run_local(ctx: _Ctx, requested: int, threads: int | None) -> None:
    cpus = cpu_count()
    if requested == 1:
        ctx.report.jobs, ctx.report.threads = 1, threads
        _run_inline(ctx, threads)
        return
    n_types = max(len(j["targets"]) for j in ctx.jobs)
    job_bytes = max(estimate_job_bytes(Path(j["path"]), n_types) for j in ctx.jobs)
    n, per_job, notes = plan_parallelism(requested, len(ctx.jobs), cpus, available_memory(), job_bytes, threads)
    for note in notes:
        ctx.say(note)
    try:
        import numba

        per_job = min(per_job, numba.config.NUMBA_NUM_THREADS)
    except ImportError:
        pass
    ctx.report.jobs, ctx.report.threads = n, per_job
    if n == 1:
        _run_inline(ctx, per_job if threads is not None else None)
        return
    for j in ctx.jobs:
        j["threads"] = per_job
    _run_pool(ctx, n)


def _run_inline(ctx: _Ctx, threads: int | None) -> None:
    for job in ctx.jobs:
        job["threads"] = threads

        def progress(i, n, tensors, seconds, job=job):
            ctx.tensor(job, i, n, tensors[0].name, ",".join(t.qtype.ggml_name for t in tensors))

        ctx.result(run_job(job, progress if ctx.log else None))


def _worker_main(task_q, result_q, verbose: bool) -> None:
    """A worker process: run jobs from task_q until None; SIGINT is the parent's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us with SIGTERM
    while True:
        item = task_q.get()
        if item is None:
            return
        result_q.put(("start", item["index"], os.getpid()))

        def progress(i, n, tensors, seconds, idx=item["index"]):
            result_q.put(("tensor", idx, i, n, tensors[0].name, ",".join(t.qtype.ggml_name for t in tensors)))

        try:
            res = run_job(item, progress if verbose else None)
        except KeyboardInterrupt:  # SIGTERM (fsutil.Terminated): temp files are already removed
            return
        result_q.put(("result", item["index"], res))


def _run_pool(ctx: _Ctx, n: int) -> None:
    import multiprocessing as mp

    mpc = mp.get_context("spawn")  # no fork of a process that may have started numba threads
    task_q, result_q = mpc.Queue(), mpc.Queue()
    for j in ctx.jobs:
        task_q.put(j)
    for _ in range(n):
        task_q.put(None)
    verbose = ctx.log is not None
    workers: dict = {}  # Process -> job index or None
    started = 0

    def spawn():
        nonlocal started
        p = mpc.Process(target=_worker_main, args=(task_q, result_q, verbose), name=f"kquant-batch-{started}", daemon=True)
        p.start()
        started += 1
        workers[p] = None

    for _ in range(n):
        spawn()
    try:
        while len(ctx.finished) < len(ctx.jobs):
            try:
                msg = result_q.get(timeout=POLL_SECONDS)
            except queue_mod.Empty:
                msg = None
            if msg is not None:
                kind, idx = msg[0], msg[1]
                if kind == "start":
                    for p in workers:
                        if p.pid == msg[2]:
                            workers[p] = idx
                elif kind == "tensor":
                    ctx.tensor(ctx.jobs[idx], *msg[2:])
                elif kind == "result":
                    for p in workers:
                        if workers[p] == idx:
                            workers[p] = None
                    ctx.result(msg[2])
                continue
            for p in list(workers):
                if p.is_alive() or p.exitcode is None:
                    continue
                idx = workers.pop(p)
                if p.exitcode != 0:  # killed (out of memory?) or crashed
                    if idx is not None:
                        code = p.exitcode
                        why = f"signal {-code}" if code < 0 else f"exit code {code}"
                        ctx.result({"index": idx, "model": ctx.jobs[idx]["model"], "outputs": [], "host": socket.gethostname(),
                                    "pid": p.pid, "error": f"worker process died ({why}; out of memory?)"})
                    if len(ctx.finished) < len(ctx.jobs):
                        spawn()
                        task_q.put(None)
            if not workers and len(ctx.finished) < len(ctx.jobs):
                for j in ctx.jobs:
                    if j["index"] not in ctx.finished:
                        ctx.result({"index": j["index"], "model": j["model"], "outputs": [], "host": socket.gethostname(),
                                    "pid": None, "error": "lost: every worker process exited"})
    except KeyboardInterrupt:
        _stop_workers(list(workers))
        _drain(result_q, ctx)
        raise
    finally:
        for p in workers:
            p.join(timeout=WORKER_STOP_SECONDS)
            if p.is_alive():
                p.kill()
                p.join()
        for q in (task_q, result_q):
            q.cancel_join_thread()
            q.close()


def _stop_workers(procs) -> None:
    """SIGTERM each worker (its atomic outputs remove their temp files), then wait; SIGKILL stragglers."""
    for p in procs:
        if p.is_alive():
            try:
                os.kill(p.pid, signal.SIGTERM)
            except OSError:
                pass
    deadline = time.monotonic() + WORKER_STOP_SECONDS
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()


def _drain(result_q, ctx: _Ctx) -> None:
    """Record results that arrived before the workers stopped (so the next run skips them)."""
    while True:
        try:
            msg = result_q.get(timeout=0.05)
        except (queue_mod.Empty, OSError, EOFError, ValueError):
            return
        if msg[0] == "result":
            ctx.result(msg[2])


# ------------------------------------------------------------------ Ray executor
def _import_ray():
    try:
        import ray
    except ImportError:
        raise UnsupportedError("--executor ray needs Ray: pip install 'kquant[ray]'") from None
    return ray


def probe_worker(outdir: str, token: str, model_paths: Sequence[str]) -> dict:
    """Run on a worker node: can it see the driver's OUTDIR (the token file), write there, read the models?"""
    d = Path(outdir)
    problems = []
    if not d.is_dir():
        problems.append(f"OUTDIR {outdir} does not exist there")
    else:
        if not (d / token).is_file():
            problems.append(f"OUTDIR {outdir} is not the driver's folder (a shared filesystem is needed)")
        w = _writable(d)
        if w:
            problems.append(f"OUTDIR {outdir}: {w}")
    missing = [p for p in model_paths if not os.path.isdir(p)]
    if missing:
        problems.append(f"{len(missing)} model folder(s) not visible, e.g. {missing[0]}")
    return {"host": socket.gethostname(), "problems": problems}


def _ray_job(job: dict, verbose: bool) -> dict:
    """A Ray task: one model's pass; progress lines go to the worker's stderr (Ray forwards them)."""

    def progress(i, n, tensors, seconds):
        types = ",".join(t.qtype.ggml_name for t in tensors)
        print(f"{job['model']} [{i:4d}/{n}] {tensors[0].name} -> {types}", file=sys.stderr, flush=True)

    return run_job(job, progress if verbose else None)


def _run_ray(ctx: _Ctx, address: str | None, max_in_flight: int | None, threads: int | None,
             num_cpus: int | None = None) -> None:
    import logging
    import secrets

    ray = _import_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    own = not ray.is_initialized()
    if own:
        kw = dict(include_dashboard=False, log_to_driver=ctx.log is not None, logging_level=logging.WARNING)
        try:
            if address:
                ray.init(address=address, **kw)
            else:
                ray.init(address="local", num_cpus=num_cpus or cpu_count(), **kw)
        except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
            where = f"--address {address}: cannot connect to the Ray cluster" if address else "cannot start a local Ray instance"
            raise UnsupportedError(f"{where} ({_first_line(e)})") from None
    per_task = threads or 1
    ctx.report.threads = per_task
    ctx.report.jobs = max_in_flight or len(ctx.jobs)
    pending: dict = {}
    try:
        # every node must see OUTDIR (the same folder: a token written here) and the model folders
        token = f"{PROBE_PREFIX}{secrets.token_hex(8)}"
        tok = ctx.outdir / token
        tok.write_bytes(b"")
        try:
            probe = ray.remote(num_cpus=0, max_retries=0)(probe_worker)
            nodes = [nd for nd in ray.nodes() if nd.get("Alive")]
            refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(nd["NodeID"], soft=False)).remote(
                str(ctx.outdir), token, [j["path"] for j in ctx.jobs]) for nd in nodes]
            answers = ray.get(refs)
        finally:
            tok.unlink(missing_ok=True)
        bad = [a for a in answers if a["problems"]]
        if bad:
            raise OutputError(f"Ray worker on {bad[0]['host']}: {bad[0]['problems'][0]}; --executor ray needs OUTDIR and "
                              "the models on a filesystem shared by every node")
        if not any(float(nd.get("Resources", {}).get("CPU", 0)) >= per_task for nd in nodes):
            raise InputError(f"--threads {per_task}: no Ray node has that many CPUs")
        ctx.say(f"ray: {len(nodes)} node(s), {per_task} CPU(s) per model")
        task = ray.remote(max_retries=0)(_ray_job).options(num_cpus=per_task)
        verbose = ctx.log is not None
        queue_ = list(ctx.jobs)
        while queue_ or pending:
            while queue_ and (max_in_flight is None or len(pending) < max_in_flight):
                j = queue_.pop(0)
                j["threads"] = per_task
                pending[task.remote(j, verbose)] = j
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                ctx.result(_ray_result(ray, ref, pending.pop(ref)))
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=False)  # KeyboardInterrupt in the task: its atomic outputs clean up
        deadline = time.monotonic() + RAY_CANCEL_SECONDS
        while pending and time.monotonic() < deadline:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=1.0)
            for ref in ready:
                res = _ray_result(ray, ref, pending.pop(ref))
                if res["error"] is None:  # finished before the cancel reached it
                    ctx.result(res)
        raise
    finally:
        if own:
            ray.shutdown()


def _ray_result(ray, ref, job: dict) -> dict:
    try:
        return ray.get(ref)
    except ray.exceptions.TaskCancelledError:
        err = "cancelled"
    except ray.exceptions.RayError as e:
        err = f"Ray task failed: {type(e).__name__}: {_first_line(e)}"
    return {"index": job["index"], "model": job["model"], "outputs": [], "host": "?", "pid": None, "error": err}
