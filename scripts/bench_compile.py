#!/usr/bin/env python3
"""First-call cost of the kernels: compile with an empty numba cache, then load from it.

Each measurement runs in a fresh process whose NUMBA_CACHE_DIR is a new empty directory
("cold": what a user pays on the first run after install) and then in another fresh process on
the same directory ("warm": every later run). Per type it times the first quantize call, the
first weighted (importance) call and the first dequantize call on a tiny input; the total is the
issue's "every kernel of every type" figure, printed against its 60 s target. Besides wall
seconds it prints the CPU seconds of the process and its children (the measure that holds on a
shared machine: wall time grows with the load average, which is printed too).

    .venv/bin/python scripts/bench_compile.py [--types Q4_K,Q6_K] [--opt 3] [--jobs N]
    .venv/bin/python scripts/bench_compile.py --ftypes IQ2_M,IQ1_S | all

--jobs N: the cold run warms the cache the way `kquant` does before a conversion
(kquant.ggml.warm.warm: the cold types spread over N processes), then times the first calls.

--ftypes: the issue's other two figures, per file type: a whole `kquant convert` of
fixtures/tiny-llama (with a synthetic imatrix, which the i-quant file types need) on a new empty
numba cache (cold first conversion, target < 20 s on 2 cores), then again on that cache (warm
start, target < 1 s). Python's own bytecode cache is on for these runs (in a temporary
PYTHONPYCACHEPREFIX, as an installed package has its .pyc files) even where
PYTHONDONTWRITEBYTECODE is set, so the warm start does not count compiling kquant's sources.
--repeat N runs each file type N times (each cold run on a new empty cache) and prints each
figure's median, against the noise of a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 60.0  # issue 17: every kernel of every type, cold, on 2 cores
FIRST_CONVERSION_S = 20.0  # issue 17: a cold-cache first conversion to any single file type
WARM_START_S = 1.0  # issue 17: a warm start


def _cpu(who=resource.RUSAGE_SELF) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def child(types: list[str], jobs: int) -> dict:
    t0, c0 = time.perf_counter(), _cpu()
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from kquant.ggml import quants, warm
    from kquant.types import parse_qtype

    out = {"import": time.perf_counter() - t0, "types": {}, "cpu": {}}
    qts = [parse_qtype(n) for n in types]
    if jobs:
        t = time.perf_counter()
        warm.warm(qts, jobs=jobs)
        out["warm"] = time.perf_counter() - t
    x = np.linspace(-1, 1, 2 * 256, dtype=np.float32).reshape(2, 256)
    w = np.linspace(0.5, 2, 256, dtype=np.float32)
    for q in qts:
        r = {}
        c = _cpu()
        t = time.perf_counter()
        b = quants.quantize(x, q, w if q.requires_imatrix else None)
        r["quantize"] = time.perf_counter() - t
        if q.is_quantized:
            t = time.perf_counter()
            quants.quantize(x, q, w)
            r["weighted"] = time.perf_counter() - t
        t = time.perf_counter()
        quants.dequantize(b, q, x.shape)
        r["dequantize"] = time.perf_counter() - t
        out["types"][q.name] = r
        out["cpu"][q.name] = _cpu() - c
    out["total"] = time.perf_counter() - t0
    out["total_cpu"] = _cpu() - c0 + _cpu(resource.RUSAGE_CHILDREN)  # children: the warm-up processes
    return out


def run(types: str, cache: str, opt: int | None, jobs: int) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPYCACHEPREFIX=os.path.join(cache, "pyc"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # kquant's .pyc files, as installed (the warm run reads them)
    if opt is not None:
        env["NUMBA_OPT"] = str(opt)
    p = subprocess.run([sys.executable, __file__, "--child", "--types", types, "--jobs", str(jobs)],
                       env=env, capture_output=True, text=True, check=True)
    return json.loads(p.stdout)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default=None, help="comma-separated (default: every type with kernels)")
    ap.add_argument("--opt", type=int, help="NUMBA_OPT for the child processes (numba's default: 3)")
    ap.add_argument("--jobs", type=int, default=0, help="warm the cache with kquant.ggml.warm.warm over N processes first")
    ap.add_argument("--ftypes", default=None,
                    help="comma-separated file types (or 'all'): time a whole cold then warm conversion of each")
    ap.add_argument("--repeat", type=int, default=1, help="--ftypes: runs per file type (medians printed)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.ftypes is not None:
        return bench_ftypes(a.ftypes, a.opt, max(1, a.repeat))
    if a.types is None:
        sys.path.insert(0, str(ROOT))
        from kquant.ggml.quants import registry

        a.types = ",".join(t.name for t in registry())
    if a.child:
        print(json.dumps(child(a.types.split(","), a.jobs)))
        return 0
    with tempfile.TemporaryDirectory(prefix="kquant-numba-cache-") as cache:
        cold = run(a.types, cache, a.opt, a.jobs)
        warm = run(a.types, cache, a.opt, 0)
    print(f"numba opt level: {a.opt if a.opt is not None else 'default'}; warm-up processes: {a.jobs or 'none'}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'type':7} {'cold quant':>10} {'weighted':>9} {'dequant':>8} {'cold sum':>9} {'cold cpu':>9} {'warm sum':>9}")
    for name, r in cold["types"].items():
        c = sum(r.values())
        wsum = sum(warm["types"][name].values())
        print(f"{name:7} {r['quantize']:10.2f} {r.get('weighted', 0):9.2f} {r['dequantize']:8.2f} {c:9.2f} "
              f"{cold['cpu'][name]:9.2f} {wsum:9.2f}")
    if "warm" in cold:
        print(f"kernels.warm over {a.jobs} processes: {cold['warm']:.2f} s")
    print(f"import kquant: cold {cold['import']:.2f} s, warm {warm['import']:.2f} s")
    print(f"all types, first calls: cold {cold['total']:.1f} s wall, {cold['total_cpu']:.1f} s CPU "
          f"(target < {TARGET_S:.0f} s: {cold['total'] / TARGET_S:.2f}x of it), warm {warm['total']:.1f} s "
          f"({warm['total_cpu']:.1f} s CPU)")
    return 0


def _convert(ftype: str, cache: str, out: Path, imatrix: Path, opt: int | None) -> tuple[float, float]:
    """One `kquant convert` of fixtures/tiny-llama on numba cache `cache`: (wall s, CPU s of it and
    its warm-up processes)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=str(ROOT),
               PYTHONPYCACHEPREFIX=str(Path(imatrix).parent / "pycache"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if opt is not None:
        env["NUMBA_OPT"] = str(opt)
    cmd = [sys.executable, "-m", "kquant.cli", "convert", str(ROOT / "fixtures" / "tiny-llama"), "-o", str(out),
           "--type", ftype, "--imatrix", str(imatrix), "--force", "-q"]
    c, t = _cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t, _cpu(resource.RUSAGE_CHILDREN) - c
    if p.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return wall, cpu


def bench_ftypes(ftypes: str, opt: int | None, repeat: int = 1) -> int:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_convert import make_imatrix

    from kquant.types import FileType, parse_ftype

    names = [ft.short_name for ft in FileType] if ftypes == "all" else [parse_ftype(n).short_name for n in ftypes.split(",")]
    print(f"file type: whole `kquant convert` of fixtures/tiny-llama with an imatrix; cold = empty numba cache "
          f"(target < {FIRST_CONVERSION_S:.0f} s), warm = again (target < {WARM_START_S:.0f} s); {os.cpu_count()} cores"
          + (f"; medians of {repeat} runs" if repeat > 1 else ""))
    print(f"{'file type':10} {'cold wall':>9} {'cold cpu':>9} {'warm wall':>9} {'warm cpu':>9} {'load':>5}")
    worst = (0.0, "")
    with tempfile.TemporaryDirectory(prefix="kquant-bench-compile-") as work:
        w = Path(work)
        im = w / "imatrix.dat"
        make_imatrix(ROOT / "fixtures" / "tiny-llama", im)
        _convert("F16", tempfile.mkdtemp(dir=work), w / "out.gguf", im, opt)  # kquant's .pyc files (not timed)
        for name in names:
            runs = []
            for _ in range(repeat):
                with tempfile.TemporaryDirectory(prefix="numba-", dir=work) as cache:
                    load = os.getloadavg()[0]
                    runs.append((*_convert(name, cache, w / "out.gguf", im, opt),
                                 *_convert(name, cache, w / "out.gguf", im, opt), load))
            cw, cc, ww, wc, load = (statistics.median(r[i] for r in runs) for i in range(5))
            worst = max(worst, (cw, name))
            print(f"{name:10} {cw:9.2f} {cc:9.2f} {ww:9.2f} {wc:9.2f} {load:5.1f}", flush=True)
    print(f"worst cold first conversion: {worst[1]} {worst[0]:.1f} s wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
