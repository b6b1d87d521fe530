"""`kquant batch`: the driver: discover, skip complete outputs, run the rest, record them."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Sequence

from ..errors import InputError, KquantError
from ..types import FileType, parse_ftype
from .discovery import discover, find_imatrix, output_name
from .executors import Ctx, import_ray, run_local, run_ray
from .manifest import (MANIFEST_NAME, Manifest, OutdirLock, check_complete, fingerprint, prepare_outdir, source_files,
                       sweep_temp_files)
from .report import FAILED, SKIPPED, BatchReport, OutputRow, first_line


def run_batch(root, outdir, types: Sequence, *, jobs: int | None = None, threads: int | None = None,
              imatrix_dir=None, executor: str = "local", address: str | None = None, force: bool = False,
              allow_nonfinite: bool = False, split=None, log: Callable[[str], None] | None = None,
              ray_num_cpus: int | None = None, rounding: str = "ggml") -> BatchReport:
    """Convert every model folder under `root` to each of `types` into `outdir`; see the `kquant.batch` docstring.

    `ray_num_cpus`: CPUs of the local Ray instance started when no `address` is given (default: all).
    Returns the report; an interrupt (SIGINT/SIGTERM/SIGHUP) stops the workers, removes temporary
    files and returns a report with `interrupted` set (the next run finishes the job).
    """
    from ..io.fsutil import handle_termination, signals_held

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
        import_ray()  # a missing extra is reported before anything is written
    found = discover(root, exclude=[os.path.abspath(os.fspath(outdir))])
    if not found.models:
        listed = "; ".join(f"{s.path.name}: {s.reason}" for s in found.skipped[:5])
        raise InputError(f"{root}: no model folder (config.json + .safetensors) found" + (f" ({listed})" if listed else ""))
    out = prepare_outdir(outdir)
    report = BatchReport(str(root), str(out), [f.short_name for f in ftypes], executor, skipped_folders=found.skipped)
    options = {"allow_nonfinite": bool(allow_nonfinite)}
    if rounding != "ggml":  # (absent for ggml: existing manifests stay valid)
        options["rounding"] = rounding
    if split is not None:  # io.gguf_split.SplitOptions: each output is a set of shards, resumed as one unit
        options["split"] = split.as_json()

    with OutdirLock(out):
        all_names = [output_name(m.name, f) for m in found.models for f in ftypes]
        report.removed_temp_files = len(sweep_temp_files(out, all_names + [MANIFEST_NAME]))
        manifest = Manifest(out)
        ctx = Ctx(report, manifest, out, {}, {}, {}, [], log)
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
                    ok, why, facts = check_complete(p, f, fp, manifest.outputs.get(name), split=split is not None)
                    if ok:
                        row.status, row.file_bytes, row.seconds = SKIPPED, facts["file_bytes"], facts["seconds"]
                        row.output = facts.get("first", row.output)
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
                                 "split": options.get("split"),
                                 "imatrix": None if imatrix is None else os.path.abspath(imatrix),
                                 "imatrix_name": None if imatrix is None else str(imatrix)})
        ctx.total_outputs = sum(len(j["targets"]) for j in ctx.jobs)
        try:
            with handle_termination():
                if ctx.jobs:
                    if executor == "ray":
                        run_ray(ctx, address, jobs, threads, ray_num_cpus)
                    else:
                        run_local(ctx, jobs or 1, threads)
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
                        ctx.say(f"cannot save the manifest: {first_line(e)}")
    report.seconds = time.perf_counter() - t0
    return report
