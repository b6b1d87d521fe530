"""Check kquant/models/vml_exp.py against torch.exp on float32 inputs: every one of the 2^32 bit patterns
(default, in chunks), or `--sample N` random ones plus every BF16 input. Run with the reference converter's
python (scripts/setup_refconv.sh) on an AVX-512 machine; prints the mismatch count (bit for bit, NaN payloads included)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import torch

spec = importlib.util.spec_from_file_location("vml_exp", Path(__file__).parent.parent / "kquant" / "models" / "vml_exp.py")
vml = importlib.util.module_from_spec(spec)
spec.loader.exec_module(vml)


def check(bits: np.ndarray) -> int:
    x = bits.view(np.float32)
    want = torch.exp(torch.from_numpy(x.copy())).numpy()
    got = vml.vml_exp(x)
    bad = got.view(np.uint32) != want.view(np.uint32)
    for i in np.flatnonzero(bad)[:5]:
        print(f"  x={bits[i]:#010x} ({x[i]!r}): torch {want.view(np.uint32)[i]:#010x}, kquant {got.view(np.uint32)[i]:#010x}")
    return int(np.count_nonzero(bad))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample", type=int, default=0)
    ap.add_argument("--chunk-bits", type=int, default=24)
    ap.add_argument("--binades", type=str, default="", help="e.g. -1:3: every input in [2^a, 2^(b+1)) and its negative")
    ap.add_argument("--main", type=int, default=0, help="N random inputs with |x| < 87.33654 (the vector path)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}")
    t0, bad, n = time.time(), 0, 0
    if a.binades or a.main:
        if a.main:
            rng = np.random.default_rng(1)
            b = rng.integers(0, 0x42AEAC4F, a.main, dtype=np.uint64).astype(np.uint32)
            b[: a.main // 2] |= np.uint32(0x80000000)
            bad += check(b)
            n += b.size
        if a.binades:
            e0, e1 = (int(v) for v in a.binades.split(":"))
            for e in range(e0, e1 + 1):
                lo = (127 + e) << 23
                for sign in (0, 0x80000000):
                    b = (np.arange(lo, lo + (1 << 23), dtype=np.uint64) | sign).astype(np.uint32)
                    bad += check(b)
                    n += b.size
                print(f"  binade 2^{e}: {n} checked, {bad} mismatches, {time.time() - t0:.0f} s", flush=True)
    elif a.sample:
        rng = np.random.default_rng(0)
        for b in (rng.integers(0, 2**32, a.sample, dtype=np.uint64).astype(np.uint32),
                  (np.arange(1 << 16, dtype=np.uint32) << 16)):
            bad += check(b)
            n += b.size
    else:
        step = 1 << a.chunk_bits
        for lo in range(0, 1 << 32, step):
            bad += check(np.arange(lo, lo + step, dtype=np.uint64).astype(np.uint32))
            n += step
            if lo // step % 16 == 15:
                print(f"  {n / 2**32:.0%} checked, {bad} mismatches, {time.time() - t0:.0f} s", flush=True)
    print(f"{n} inputs, {bad} mismatches ({time.time() - t0:.0f} s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
