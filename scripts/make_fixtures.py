#!/usr/bin/env python3
"""Regenerate fixtures/golden/: inputs (fixed seed) and libggml's bytes for every type.

    .venv/bin/python scripts/make_fixtures.py [--types TQ1_0,MXFP4]   (default: every type with kernels)

Never edit the outputs by hand: they are ggml's answers (ggml_quantize_chunk and to_float from
llama-cpp-python 0.3.36), used by tests/test_golden.py to check kquant byte for byte.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from kquant import reference  # noqa: E402
from kquant.ggml import quants  # noqa: E402
from kquant.types import parse_qtype  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "golden")
ROWS, COLS = 4, 512
SEED = 20261123


def inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = (ROWS, COLS)
    d = {
        "normal": rng.standard_normal(n),
        "heavy": rng.standard_t(2.5, size=n) * 0.05,
        "laplace": rng.laplace(size=n) * 1e-3,
        "tiny": rng.standard_normal(n) * 1e-9,
        "huge": rng.standard_normal(n) * 5e3,
        "positive": rng.random(n) + 0.5,
    }
    oc = rng.standard_normal(n) * 0.1
    oc[:, rng.choice(COLS, 5, replace=False)] *= 300
    d["outlier_cols"] = oc
    mixed = rng.standard_normal(n)
    mixed[0] = 0.0  # all-zero row
    mixed[1] = 0.75  # constant row
    mixed[2] = 0.0
    mixed[2, 17] = -3.0  # one nonzero
    mixed[3, ::2] = 1.0
    mixed[3, 1::2] = -1.0  # +-max
    d["mixed"] = mixed
    return {k: v.astype(np.float32) for k, v in d.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", help="comma-separated types to write (the inputs are the same whichever)")
    args = ap.parse_args(argv)
    # default: every type kquant has kernels for
    types = [parse_qtype(n) for n in args.types.split(",")] if args.types else quants.supported_types()
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(SEED)
    xs = inputs(rng)
    imatrix = (rng.standard_t(3, size=COLS) ** 2).astype(np.float32)
    imatrix[rng.choice(COLS, 20, replace=False)] = 0.0
    np.savez_compressed(os.path.join(OUT, "inputs.npz"), imatrix=imatrix, **xs)
    for t in types:
        out = {}
        for name, x in xs.items():
            q = reference.quantize(x, t)
            out[name] = q
            out[name + "__deq"] = reference.dequantize(q, t, x.shape)
            if t.is_quantized:
                out[name + "__imatrix"] = reference.quantize(x, t, imatrix)
        np.savez_compressed(os.path.join(OUT, f"{t.name}.npz"), **out)
        print(f"{t.name}: {len(out)} arrays")
    return 0


if __name__ == "__main__":
    sys.exit(main())
