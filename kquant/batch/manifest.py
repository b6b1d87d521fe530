"""`kquant batch`: fingerprints, the manifest (OUTDIR/.kquant-batch.json), completeness checks,
temporary-file sweeping, the OUTDIR lock (io.fsutil.file_lock) and the OUTDIR write probe."""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
from pathlib import Path
from typing import Sequence

from ..io import jsonio
from ..errors import InputError, KquantError, OutputError
from ..types import FileType
from .discovery import entries, is_file
from .report import first_line

MANIFEST_NAME = ".kquant-batch.json"
LOCK_NAME = ".kquant-batch.lock"
PROBE_PREFIX = ".kquant-batch-probe-"
MANIFEST_VERSION = 1


# ------------------------------------------------------------------ fingerprints and the manifest
def stat_entry(p: Path) -> list:
    st = os.stat(p)  # follows symlinks (HF cache blobs)
    return [p.name, st.st_size, st.st_mtime_ns]


def source_files(model_dir: Path) -> list[list]:
    """[name, size, mtime_ns] of every visible regular file in the model folder, sorted."""
    return [stat_entry(model_dir / e.name) for e in entries(model_dir) if not e.name.startswith(".") and is_file(e)]


def fingerprint(files: list, ftype: FileType, imatrix: Path | None, options: dict) -> str:
    """sha256 of what an output depends on: sources, imatrix, type, options, kquant version."""
    from .. import __version__

    doc = {
        "kquant": __version__,
        "type": ftype.short_name,
        "files": files,
        "imatrix": None if imatrix is None else [str(imatrix)] + stat_entry(imatrix)[1:],
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
            self.note = f"{first_line(e)}; every output is checked again"
            return
        if isinstance(doc, dict) and doc.get("version") == MANIFEST_VERSION and isinstance(doc.get("outputs"), dict):
            self.outputs = {k: v for k, v in doc["outputs"].items() if _valid_record(v)}
        else:
            self.note = f"{self.path}: not a version {MANIFEST_VERSION} manifest; every output is checked again"

    def record(self, out: Path, fp: str, model: str, ftype: FileType, res: dict) -> None:
        """`out`: the output as named (a split output: OUT.gguf, its shards listed in res["shards"])."""
        shards = [Path(x) for x in res.get("shards") or ()]
        st = (shards[0] if shards else out).stat()
        self.outputs[out.name] = {
            "model": model,
            "type": ftype.short_name,
            "fingerprint": fp,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "tensor_bytes": res["tensor_bytes"],
            "n_elements": res["n_elements"],
            "seconds": res["seconds"],
            **({"shards": [stat_entry(x) for x in shards]} if shards else {}),
        }

    def save(self) -> None:
        from .. import __version__
        from ..io.fsutil import atomic_output

        doc = {"version": MANIFEST_VERSION, "kquant": __version__, "outputs": dict(sorted(self.outputs.items()))}
        with atomic_output(self.path, force=True, replaces_input=True) as f:  # read, then rewritten
            f.write((json.dumps(doc, indent=1) + "\n").encode("utf-8"))


def check_complete(out: Path, ftype: FileType, fp: str, record: dict | None,
                   split: bool = False) -> tuple[bool, str, dict]:
    """(complete, why not, facts) for an existing output: recorded, unchanged, header valid, right type.

    A split output (`split`) is checked as one unit: the shards recorded are the shards present,
    each unchanged, and the set opens (io.gguf_split.open_gguf checks every shard)."""
    from ..io.gguf import GGUFFile

    if split:
        return _check_split_complete(out, ftype, fp, record)
    if not out.is_file():
        return False, "missing", {}
    if record is None:
        return False, "not recorded in the manifest", {}
    if record.get("fingerprint") != fp:
        return False, "source, imatrix or options changed", {}
    st = out.stat()
    if st.st_size != record.get("size") or st.st_mtime_ns != record.get("mtime_ns"):
        return False, "file changed since it was written", {}
    ok, why, totals = _file_totals(GGUFFile, out, ftype)
    if not ok:
        return False, why, {}
    return True, "", {"file_bytes": st.st_size, **totals, "seconds": record.get("seconds")}


def _check_split_complete(out: Path, ftype: FileType, fp: str, record: dict | None) -> tuple[bool, str, dict]:
    from ..io.gguf_split import GGUFSplit, existing_shards

    present = existing_shards(out)
    if not present:
        return False, "missing", {}
    if record is None or not record.get("shards"):
        return False, "not recorded in the manifest", {}
    if record.get("fingerprint") != fp:
        return False, "source, imatrix or options changed", {}
    try:
        now = [stat_entry(x) for x in present]
    except OSError:
        return False, "shards changed while checking", {}
    if now != record["shards"]:
        return False, "shards changed since they were written (or a set is incomplete)", {}
    ok, why, totals = _file_totals(GGUFSplit, present[0], ftype)
    if not ok:
        return False, why, {}
    return True, "", {"file_bytes": sum(e[1] for e in now), **totals, "seconds": record.get("seconds"),
                      "first": str(present[0])}


def _file_totals(opener, path: Path, ftype: FileType) -> tuple[bool, str, dict]:
    """(ok, why not, {tensor_bytes, n_elements}) of a written GGUF (or split set, by `opener`) whose
    general.file_type must be `ftype`."""
    from ..pipeline import FILE_TYPE_KEY

    try:
        with opener(path) as g:
            ft = g.value(FILE_TYPE_KEY)
            totals = {"tensor_bytes": sum(t.nbytes for t in g.tensors), "n_elements": sum(_prod(t.shape) for t in g.tensors)}
    except KquantError as e:
        return False, f"unreadable ({first_line(e)})", {}
    if ft != int(ftype):
        return False, f"general.file_type is {ft}, not {int(ftype)} ({ftype.short_name})", {}
    return True, "", totals


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def sweep_temp_files(outdir: Path, names: Sequence[str]) -> list[Path]:
    """Remove `.NAME.kquant-tmp-*` files of these outputs (left by a killed run), and those of
    their shards (`.NAME-00001-of-00004.gguf.kquant-tmp-*` for NAME.gguf); returns them."""
    from ..io.fsutil import MAX_TMP_BASE, TMP_MARK
    from ..io.gguf_split import SHARD_RE

    prefixes = tuple(f".{n[:MAX_TMP_BASE]}{TMP_MARK}" for n in names)
    split_prefixes = {n[: -len(".gguf")] for n in names if n.endswith(".gguf")}

    def is_shard_tmp(name: str) -> bool:
        if not name.startswith(".") or TMP_MARK not in name:
            return False
        m = SHARD_RE.match(name[1:].split(TMP_MARK)[0])
        return bool(m) and m.group("prefix") in split_prefixes

    gone = []
    for e in entries(outdir):
        if e.name.startswith(prefixes) or is_shard_tmp(e.name):
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
        from ..io.fsutil import file_lock

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
    problem = writable(p)
    if problem:
        raise OutputError(f"{p}: {problem}")
    return p


def writable(d: Path) -> str | None:
    from ..io.fsutil import created, signals_held

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
