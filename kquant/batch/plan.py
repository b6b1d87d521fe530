"""`kquant batch`: how many worker processes, and threads each, the cores and the memory allow."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError, KquantError

JOB_BASE_BYTES = 384 << 20  # a worker process: Python, numpy, numba, compiled kernels


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
    from ..pipeline import SLAB_BYTES, open_model

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
