#!/usr/bin/env python3
"""rounding="best" or "refine" against rounding="ggml" on real weights: per-tensor weighted rel-RMSE and time.

For every 2-D float tensor of the given checkpoints (safetensors files or HF folders) whose row
length fits the type, and every type: the weighted rel-RMSE sqrt(sum w e^2 / sum w x^2) under
ggml's own objective for that type (tests/objective.py: ggml's default weights, or the imatrix
path's weights with a synthetic importance row when --imatrix), for both roundings. Prints per
type the mean and the worst relative change of that figure over the tensors (worst must be <= 0),
the mean and worst change of the output error's rel-RMSE (weights: the importance row, or 1;
kernels/_accept.py: no block of a better mode is worse in it either), and the time ratio
mode/ggml (one thread, same process, CPU time of the thread: wall time on a loaded machine
charges long runs for other processes' turns).

    .venv/bin/python scripts/bench_rounding.py fixtures/tiny-llama /tmp/minilm/model.safetensors [--imatrix] [--rounding refine]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from kquant.ggml import quants  # noqa: E402
from kquant.io.safetensors import SafetensorsFile  # noqa: E402
from kquant.types import QType  # noqa: E402
from objective import weights  # noqa: E402

TYPES = "Q4_K,Q5_K,Q3_K,Q2_K,Q6_K,Q4_0,Q5_0,Q4_1,Q5_1,Q8_0,IQ4_NL,IQ4_XS,IQ3_S"


def tensors(paths):
    for p in paths:
        p = Path(p)
        files = sorted(p.glob("*.safetensors")) if p.is_dir() else [p]
        for f in files:
            st = SafetensorsFile(f)
            for name, info in st.tensors.items():
                if info.dtype not in ("F32", "F16", "BF16") or len(info.shape) != 2 or info.numel < 4096:
                    continue
                x = st.read(name)
                yield f"{f.parent.name}/{name}", np.ascontiguousarray(x, dtype=np.float32)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--types", default=TYPES)
    ap.add_argument("--imatrix", action="store_true", help="synthetic importance rows (chi-square, fixed seed)")
    ap.add_argument("--rounding", default="best", help="the mode compared with ggml (default best)")
    ap.add_argument("--verbose", action="store_true", help="one line per tensor")
    args = ap.parse_args(argv)
    types = [QType[t.strip().upper()] for t in args.types.split(",")]
    mode = quants.parse_rounding(args.rounding)
    quants.set_threads(1)
    rng = np.random.default_rng(0)
    rows = {t: [] for t in types}
    for name, x in tensors(args.paths):
        qw = (rng.chisquare(2, x.shape[1]) + 1e-3).astype(np.float32) if args.imatrix else None
        for t in types:
            if x.shape[1] % t.block_size or (qw is None and t.requires_imatrix):
                continue
            quants.quantize(x[:1], t, qw, rounding=mode)  # compile / load outside the timing
            quants.quantize(x[:1], t, qw)
            t0 = time.thread_time()
            g = quants.quantize(x, t, qw)
            t1 = time.thread_time()
            b = quants.quantize(x, t, qw, rounding=mode)
            t2 = time.thread_time()
            w = weights(t, x, qw)
            xd = x.astype(np.float64)
            sx = float((w * xd * xd).sum())
            eg = quants.dequantize(g, t, x.shape) - xd
            eb = quants.dequantize(b, t, x.shape) - xd
            rg = np.sqrt((w * eg * eg).sum() / sx)
            rb = np.sqrt((w * eb * eb).sum() / sx)
            u = np.ones(x.shape[1]) if qw is None else qw.astype(np.float64)  # the output error's weights
            pg = np.sqrt((u * eg * eg).sum() / (u * xd * xd).sum())
            pb = np.sqrt((u * eb * eb).sum() / (u * xd * xd).sum())
            rows[t].append((rb / rg - 1, pb / pg - 1, t1 - t0, t2 - t1))
            if args.verbose:
                print(f"{t.name:6s} {name:60s} {rg:.5f} -> {rb:.5f} ({(rb / rg - 1) * 100:+.2f}%)", file=sys.stderr)
    print(f"weighted rel-RMSE, rounding={mode} vs ggml ({'synthetic imatrix' if args.imatrix else 'no imatrix'}), "
          f"one thread, CPU time; load average {os.getloadavg()[0]:.1f}")
    print(f"{'type':6s} {'tensors':>7s} {'mean':>8s} {'worst':>8s} {'output':>8s} {'worst':>8s} {'time':>6s}")
    for t in types:
        r = rows[t]
        if not r:
            continue
        a = np.array(r)
        print(f"{t.name:6s} {len(r):7d} {a[:, 0].mean() * 100:+7.2f}% {a[:, 0].max() * 100:+7.2f}% "
              f"{a[:, 1].mean() * 100:+7.2f}% {a[:, 1].max() * 100:+7.2f}% {a[:, 3].sum() / a[:, 2].sum():5.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
