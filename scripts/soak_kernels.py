#!/usr/bin/env python3
"""A long randomized byte comparison of kquant's kernels with libggml (ggml_quantize_chunk).

The kernel tests (tests/test_kernels_*.py) run each value distribution once per session, on
small shapes; this runs every finite distribution of tests/kernel_data.py with every kind of
importance weights (and without, where ggml allows it) on larger shapes, for as many rounds as
asked, each on a fresh seed that a failure prints. For changes to a kernel's search, before
they land (the suite's time budget has no room for this).

    .venv/bin/python scripts/soak_kernels.py --types IQ1_S,IQ1_M --rounds 20 [--rows 8] [--cols 4096]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))  # oracle/, kernel_data

from oracle import reference  # noqa: E402
from kernel_data import FINITE_KINDS, WKINDS, make_w, make_x, ours  # noqa: E402
from kquant.types import parse_qtype  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", required=True, help="comma-separated type names")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=None, help="first round's seed (default: fresh)")
    args = ap.parse_args(argv)
    if not reference.available():
        print("the reference (llama-cpp-python) is not installed", file=sys.stderr)
        return 1
    seed = args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % 2**63)
    bad = 0
    for name in args.types.split(","):
        t = parse_qtype(name)
        wkinds = list(WKINDS) + ([] if t.requires_imatrix else [None])
        n = blocks = 0
        tic = time.perf_counter()
        for r in range(args.rounds):
            rng = np.random.default_rng(seed + r)
            for kind in FINITE_KINDS:
                for wkind in wkinds:
                    x = make_x(kind, args.rows, args.cols, rng)
                    w = None if wkind is None else make_w(wkind, args.cols, rng)
                    got = ours(t, x, w)
                    want = reference.quantize(x, t, w)
                    n += 1
                    blocks += x.size // t.block_size
                    if not np.array_equal(got, want):
                        bad += 1
                        rows = np.flatnonzero((got != want).any(axis=1))
                        print(f"{t.name} DIFFERENT: {kind} weights={wkind} seed={seed + r} rows {rows.tolist()}")
        print(f"{t.name}: {n} matrices, {blocks} blocks, {'all identical' if not bad else f'{bad} different'} "
              f"({time.perf_counter() - tic:.0f} s, seeds {seed}..{seed + args.rounds - 1})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
