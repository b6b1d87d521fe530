"""`kquant batch`: every model folder under a root to several file types; resumable; local or Ray.

Not a port: llama.cpp has no batch mode. Each model is one `pipeline.convert_many` call (every
source tensor read once and quantized to all requested types in that pass), so each output has
exactly the bytes `kquant convert` writes. Outputs are only renamed into place when complete
(`io.fsutil.atomic_output`). A manifest in OUTDIR (`.kquant-batch.json`, written by the driver only)
records per output a fingerprint of its sources (names, sizes and mtimes of the model folder's
files and of the imatrix, kquant version, type, options) and the size and mtime of the file
written. A re-run skips an output only when the file is still the one recorded, its header parses
(`io.gguf.GGUFFile`: tensor data inside the file, no trailing bytes) and its general.file_type is
the type asked for; anything else is redone. Temporary files of a killed run are removed. A split
output (`--split-max-size` / `--split-max-tensors`) is one unit: its shards are recorded together,
and it is skipped only when the shards present are exactly those recorded, unchanged, and open as a
set (io.gguf_split.GGUFSplit); otherwise it is redone whole and stale shards are removed.

Executors: in-process (`--jobs 1`), worker processes (`--jobs N`, spawn, numba threads = cores // N)
or Ray tasks (`--executor ray`: one task per model; OUTDIR must be on a filesystem every node sees,
which is probed on each node before any work).
"""

from __future__ import annotations
# the names other code and the tests use; the parts: discovery, manifest (+ OutdirLock), plan
# (parallelism), executors (one job; in-process, worker processes, Ray), report, driver (run_batch)
from .discovery import discover, find_imatrix
from .driver import run_batch
from .executors import probe_worker
from .manifest import MANIFEST_NAME, MANIFEST_VERSION, PROBE_PREFIX, Manifest, OutdirLock, prepare_outdir
from .plan import cpu_count, plan_parallelism

__all__ = ["MANIFEST_NAME", "MANIFEST_VERSION", "PROBE_PREFIX", "Manifest", "OutdirLock", "cpu_count", "discover",
           "find_imatrix", "plan_parallelism", "prepare_outdir", "probe_worker", "run_batch"]
