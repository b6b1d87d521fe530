#!/usr/bin/env python3
"""First-call cost of the kernels: compile with an empty numba cache, then load from it.

Each measurement runs in a fresh process whose NUMBA_CACHE_DIR is a new empty directory
("cold": what a user pays on the first run after install) and then in another fresh process on
the same directory ("warm": every later run). Per type it times the first quantize call, the
first weighted (importance) call and the first dequantize call on a tiny input; the total is the
issue's "all types together" figure, printed against its 30 s target.

    .venv/bin/python scripts/bench_compile.py [--types Q4_K,Q6_K] [--opt 3] [--jobs N]

--jobs N: the cold run warms the cache the way `kquant` does before a conversion
(kquant.ggml.warm.warm: the cold types spread over N processes), then times the first calls.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 60.0  # issue 17: every kernel of every type, cold, on 2 cores


def child(types: list[str], jobs: int) -> dict:
    t0 = time.perf_counter()
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from kquant.ggml import quants, warm
    from kquant.types import parse_qtype

    out = {"import": time.perf_counter() - t0, "types": {}}
    qts = [parse_qtype(n) for n in types]
    if jobs:
        t = time.perf_counter()
        warm.warm(qts, jobs=jobs)
        out["warm"] = time.perf_counter() - t
    x = np.linspace(-1, 1, 2 * 256, dtype=np.float32).reshape(2, 256)
    w = np.linspace(0.5, 2, 256, dtype=np.float32)
    for q in qts:
        r = {}
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
    out["total"] = time.perf_counter() - t0
    return out


def run(types: str, cache: str, opt: int | None, jobs: int) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
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
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
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
    print(f"numba opt level: {a.opt if a.opt is not None else 'default'}; warm-up processes: {a.jobs or 'none'}")
    print(f"{'type':6} {'cold quant':>10} {'weighted':>9} {'dequant':>8} {'cold sum':>9} {'warm sum':>9}")
    for name, r in cold["types"].items():
        c = sum(r.values())
        wsum = sum(warm["types"][name].values())
        print(f"{name:6} {r['quantize']:10.2f} {r.get('weighted', 0):9.2f} {r['dequantize']:8.2f} {c:9.2f} {wsum:9.2f}")
    if "warm" in cold:
        print(f"kernels.warm over {a.jobs} processes: {cold['warm']:.2f} s")
    print(f"import kquant: cold {cold['import']:.2f} s, warm {warm['import']:.2f} s")
    print(f"all types, first calls: cold {cold['total']:.1f} s (target < {TARGET_S:.0f} s: "
          f"{cold['total'] / TARGET_S:.2f}x of it), warm {warm['total']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
