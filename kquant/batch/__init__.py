"""`kquant batch` (the code is in executors.py until the split into modules)."""

from .executors import (MANIFEST_NAME, MANIFEST_VERSION, PROBE_PREFIX, Manifest, OutdirLock, cpu_count, discover,
                        find_imatrix, plan_parallelism, prepare_outdir, probe_worker, run_batch)

__all__ = ["MANIFEST_NAME", "MANIFEST_VERSION", "PROBE_PREFIX", "Manifest", "OutdirLock", "cpu_count", "discover",
           "find_imatrix", "plan_parallelism", "prepare_outdir", "probe_worker", "run_batch"]
