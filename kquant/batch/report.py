"""`kquant batch`: the report (one row per output, the folders skipped, the models failed)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from .discovery import SkippedDir

MAX_ERROR_CHARS = 300

DONE, SKIPPED, FAILED, INTERRUPTED = "done", "skipped", "failed", "interrupted"


# ------------------------------------------------------------------ one line of an error
def first_line(e: BaseException) -> str:
    s = str(e).splitlines()[0] if str(e) else type(e).__name__
    return s if len(s) <= MAX_ERROR_CHARS else s[: MAX_ERROR_CHARS - 3] + "..."


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
