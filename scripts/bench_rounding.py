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

With --bound: also how far any rounding of the format could go, per type (Q4_0-Q5_1, Q2_K-Q6_K):
the same weighted rel-RMSE with every sub-block given its own free real scale (and offset): exact
for y = d*l, a thorough search for y = d*q + m (--bound-density 2 tries 4x the starts: does it
move?), on up to BOUND_ROWS rows of each tensor, against ggml's error on the same rows. The format stores those scales as
6-bit codes (4-bit for Q2_K) times an fp16 super-block scale, and Q4_K/Q5_K/Q2_K's offset as a
non-negative min, so the true limit is at most this far below ggml.
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


# per type: sub-block length, affine (y = d*q + m) or not (y = d*l), lowest and highest level
BOUND_SPECS = {
    QType.Q4_0: (32, False, -8, 7), QType.Q5_0: (32, False, -16, 15),
    QType.Q4_1: (32, True, 0, 15), QType.Q5_1: (32, True, 0, 31),
    QType.Q4_K: (32, True, 0, 15), QType.Q5_K: (32, True, 0, 31), QType.Q2_K: (16, True, 0, 3),
    QType.Q3_K: (16, False, -4, 3), QType.Q6_K: (16, False, -32, 31),
}
BOUND_ROWS = 64


def free_scale_error(x: np.ndarray, w: np.ndarray, n: int, affine: bool, lo: int, hi: int, density: int = 1) -> float:
    """sum w (y - x)^2 with each n-value sub-block's real scale (and offset) free.

    y = d*l (exact): every step at which some level changes (|x_i| / (k + 0.5)) is tried just below and
    just above, each time with the weighted least-squares step for the levels there (the optimum of that
    interval when it lies inside it), both signs: the minimum over real d up to the 1e-9 nudges.
    y = d*q + m (a thorough search, not exact): 440 starts times density^2 spread over plausible
    scales and offsets, each followed by 4 weighted least-squares steps for (d, m)."""
    S = x.reshape(-1, n).astype(np.float64)
    W = w.reshape(-1, n)
    best = np.full(len(S), np.inf)

    def score(d, m):
        L = np.clip(np.rint((S - m) / d), lo, hi)
        return (W * (d * L + m - S) ** 2).sum(1), L

    if not affine:
        top = max(-lo, hi)
        for i in range(n):
            a = np.abs(S[:, i:i + 1])
            for k in range(top):
                b = a / (k + 0.5)
                ok = b > 0
                for d in (b * (1.0 - 1e-9), b * (1.0 + 1e-9), -b * (1.0 - 1e-9), -b * (1.0 + 1e-9)):
                    d = np.where(ok, d, 1.0)
                    e, L = score(d, 0.0)
                    best = np.where(ok[:, 0], np.minimum(best, e), best)
                    sll = (W * L * L).sum(1, keepdims=True)
                    sxl = (W * S * L).sum(1, keepdims=True)
                    good = ok & (sll > 0) & (sxl != 0)
                    e2, _ = score(np.where(good, sxl / np.where(sll > 0, sll, 1.0), 1.0), 0.0)
                    best = np.where(good[:, 0], np.minimum(best, e2), best)
        return float(best.sum())
    mn = S.min(1, keepdims=True)
    rg = np.maximum(S.max(1, keepdims=True) - mn, 1e-30)
    sw = W.sum(1, keepdims=True)
    sx = (W * S).sum(1, keepdims=True)
    for c in np.linspace(max(hi - 5.0, 1.0), hi + 1.5, 40 * density):
        for f in np.linspace(-0.6, 0.6, 11 * density):
            d, m = rg / c, mn + f * rg / c
            for _ in range(4):
                e, L = score(d, m)
                best = np.minimum(best, e)
                sl = (W * L).sum(1, keepdims=True)
                sll = (W * L * L).sum(1, keepdims=True)
                sxl = (W * S * L).sum(1, keepdims=True)
                det = sw * sll - sl * sl
                ok = det > 1e-300
                dn = np.where(ok, (sw * sxl - sx * sl) / np.where(ok, det, 1.0), d)
                mm = np.where(ok, (sll * sx - sl * sxl) / np.where(ok, det, 1.0), m)
                good = dn > 0
                d, m = np.where(good, dn, d), np.where(good, mm, m)
    return float(best.sum())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--types", default=TYPES)
    ap.add_argument("--imatrix", action="store_true", help="synthetic importance rows (chi-square, fixed seed)")
    ap.add_argument("--rounding", default="best", help="the mode compared with ggml (default best)")
    ap.add_argument("--verbose", action="store_true", help="one line per tensor")
    ap.add_argument("--bound", action="store_true",
                    help="also the error with free real sub-block scales: how far any rounding of the format could go")
    ap.add_argument("--bound-density", type=int, default=1, help="--bound's starts times this (does it converge?)")
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
            bound = here = np.nan
            if args.bound and t in BOUND_SPECS:
                k = np.linspace(0, x.shape[0] - 1, min(BOUND_ROWS, x.shape[0])).astype(int)
                ek = (w[k] * eg[k] * eg[k]).sum()
                if ek > 0:
                    bound = np.sqrt(free_scale_error(xd[k], w[k], *BOUND_SPECS[t], args.bound_density) / ek) - 1
                    here = np.sqrt((w[k] * eb[k] * eb[k]).sum() / ek) - 1  # the mode on the same rows
            rows[t].append((rb / rg - 1, pb / pg - 1, t1 - t0, t2 - t1, bound, here))
            if args.verbose:
                print(f"{t.name:6s} {name:60s} {rg:.5f} -> {rb:.5f} ({(rb / rg - 1) * 100:+.2f}%)", file=sys.stderr)
    print(f"weighted rel-RMSE, rounding={mode} vs ggml ({'synthetic imatrix' if args.imatrix else 'no imatrix'}), "
          f"one thread, CPU time; load average {os.getloadavg()[0]:.1f}")
    print(f"{'type':6s} {'tensors':>7s} {'mean':>8s} {'worst':>8s} {'output':>8s} {'worst':>8s} {'time':>6s}"
          + (f" {'free scales':>11s} {'(' + mode + ' there)':>13s}" if args.bound else ""))
    for t in types:
        r = rows[t]
        if not r:
            continue
        a = np.array(r)
        print(f"{t.name:6s} {len(r):7d} {a[:, 0].mean() * 100:+7.2f}% {a[:, 0].max() * 100:+7.2f}% "
              f"{a[:, 1].mean() * 100:+7.2f}% {a[:, 1].max() * 100:+7.2f}% {a[:, 3].sum() / a[:, 2].sum():5.1f}x"
              + (f" {a[:, 4].mean() * 100:+10.2f}% {a[:, 5].mean() * 100:+12.2f}%" if args.bound and t in BOUND_SPECS
                 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
