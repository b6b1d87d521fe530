"""`kquant batch` executors: one job (one model's pass, in any executor), in-process, worker processes
(spawn) and Ray tasks, all feeding results to the driver's state (Ctx: rows, manifest, log)."""

from __future__ import annotations

import os
import queue as queue_mod
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..errors import InputError, KquantError, OutputError, UnsupportedError
from .manifest import PROBE_PREFIX, Manifest, writable
from .plan import available_memory, cpu_count, estimate_job_bytes, plan_parallelism
from .report import DONE, FAILED, BatchReport, first_line

WORKER_STOP_SECONDS = 20.0  # wait for interrupted workers to remove their temp files
RAY_CANCEL_SECONDS = 30.0
POLL_SECONDS = 0.2


# ------------------------------------------------------------------ the driver's state (results recorded here)
@dataclass
class Ctx:
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
                files = [Path(x) for x in r.get("shards") or [o]]
                if not all(x.is_file() for x in files) or sum(x.stat().st_size for x in files) != r["file_bytes"]:
                    res["error"] = (f"{o}: written on {res['host']} but not visible here: OUTDIR must be a folder "
                                    "every worker and the driver share")
                    break
                self.manifest.record(p, self.fps[p.name], job["model"], self.ftypes[p.name], r)
                row.status, row.file_bytes, row.seconds = DONE, r["file_bytes"], r["seconds"]
                row.output = str(files[0])
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


# ------------------------------------------------------------------ one job (runs in any executor)
def run_job(job: dict, progress: Callable | None = None) -> dict:
    """Convert one model to its pending outputs; never raises for a model's own problems.

    job: {"index", "model", "path", "targets": [[output, TYPE], ...], "imatrix", "imatrix_name", "threads",
    "allow_nonfinite", "rounding", "split" (SplitOptions.as_json() or None)}.
    Returns {"index", "model", "error" (None or one line), "outputs": [...], "host", "pid"}.
    KeyboardInterrupt (SIGINT, SIGTERM through handle_termination, ray.cancel) propagates.
    """
    from ..pipeline import Options, convert_many

    out = {"index": job["index"], "model": job["model"], "error": None, "outputs": [],
           "host": socket.gethostname(), "pid": os.getpid()}
    try:
        split = None
        if job.get("split"):
            from ..io.gguf_split import SplitOptions

            split = SplitOptions(job["split"]["max_bytes"], job["split"]["max_tensors"])
        opts = Options(threads=job.get("threads"), allow_nonfinite=bool(job.get("allow_nonfinite")), force=True,
                       progress=progress, rounding=job.get("rounding") or "ggml", split=split)
        if job.get("imatrix"):
            from ..plan.imatrix import load_imatrix

            opts.imatrix = load_imatrix(job["imatrix"])
            # quantize.imatrix.file holds the path as `kquant convert --imatrix DIR/<name>.dat` would
            opts.imatrix.path = job.get("imatrix_name") or job["imatrix"]
        results = convert_many(job["path"], [(o, t) for o, t in job["targets"]], opts)
        for (o, t), r in zip(job["targets"], results):
            out["outputs"].append({"output": o, "type": t, "file_bytes": r.file_bytes, "tensor_bytes": r.total_bytes,
                                   "n_elements": r.n_elements, "seconds": round(r.seconds, 3), "shards": r.shards})
    except KquantError as e:
        out["error"] = first_line(e)
    except MemoryError:
        out["error"] = "out of memory"
    except Exception as e:  # a bug: keep going with the other models, say what it was
        out["error"] = first_line(RuntimeError(f"internal error: {type(e).__name__}: {e}"))
    return out




# ------------------------------------------------------------------ local executor
def run_local(ctx: Ctx, requested: int, threads: int | None) -> None:
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


def _run_inline(ctx: Ctx, threads: int | None) -> None:
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


def _run_pool(ctx: Ctx, n: int) -> None:
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


def _drain(result_q, ctx: Ctx) -> None:
    """Record results that arrived before the workers stopped (so the next run skips them)."""
    while True:
        try:
            msg = result_q.get(timeout=0.05)
        except (queue_mod.Empty, OSError, EOFError, ValueError):
            return
        if msg[0] == "result":
            ctx.result(msg[2])


# ------------------------------------------------------------------ Ray executor
def import_ray():
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
        w = writable(d)
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


def run_ray(ctx: Ctx, address: str | None, max_in_flight: int | None, threads: int | None,
             num_cpus: int | None = None) -> None:
    import logging
    import secrets

    ray = import_ray()
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
            raise UnsupportedError(f"{where} ({first_line(e)})") from None
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
        err = f"Ray task failed: {type(e).__name__}: {first_line(e)}"
    return {"index": job["index"], "model": job["model"], "outputs": [], "host": "?", "pid": None, "error": err}
