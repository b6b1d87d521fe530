"""Check kquant/models/vml_exp.py against torch.exp on float32 inputs: every one of the 2^32 bit patterns
(default, in chunks), or `--sample N` random ones plus every BF16 input. Run with the reference converter's
python (scripts/setup_refconv.sh); prints the mismatch count (bit for bit, NaN payloads included).

`--kernel z0|ex` picks the port (default: the one vml_exp.torch_exp_kernel() picks for this machine: z0 on
AVX-512 Intel CPUs, ex on others). `--tail` also computes torch.exp of every chunk as rows of 8 of a
non-contiguous 2-D view: ATen calls vmsExp once per row (n = 8 < 16), so every input also goes through
the kernel's remainder path, not only its 16-wide main loop. `--direct` compares with the port's MKL kernel
itself (mkl_vml_kernel_sExp_Z0HAynn / _EXHAynn in torch's libtorch_cpu.so, found with `nm`, called with
ctypes) instead of torch.exp: checks a port on a machine where MKL would pick the other kernel (Z0 needs
AVX-512)."""

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


PORT = vml.vml_exp
TAIL = False
TORCH_EXP = None  # torch.exp on a float32 array, or the MKL kernel called directly (--direct)


def mkl_kernel(kernel: str):
    """mkl_vml_kernel_sExp_<kernel>HAynn(n, x, y) of torch's libtorch_cpu.so as a function of a float32 array."""
    import ctypes
    import subprocess

    path = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    want = {"vmsExp", f"mkl_vml_kernel_sExp_{kernel.upper()}HAynn"}
    addr = {}
    for line in subprocess.run(["nm", str(path)], capture_output=True, text=True, check=True).stdout.splitlines():
        f = line.split()
        if len(f) == 3 and f[2] in want:
            addr[f[2]] = int(f[0], 16)
    lib = ctypes.CDLL(str(path))
    base = ctypes.cast(lib.vmsExp, ctypes.c_void_p).value - addr["vmsExp"]
    fp = ctypes.POINTER(ctypes.c_float)
    fn = ctypes.CFUNCTYPE(None, ctypes.c_int, fp, fp)(base + addr[f"mkl_vml_kernel_sExp_{kernel.upper()}HAynn"])

    def run(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        y = np.empty_like(x)
        fn(x.size, x.ctypes.data_as(fp), y.ctypes.data_as(fp))
        return y
    return run


def check(bits: np.ndarray) -> int:
    x = bits.view(np.float32)
    want = TORCH_EXP(x)
    got = PORT(x)
    bad = got.view(np.uint32) != want.view(np.uint32)
    if TAIL and x.size % 8 == 0:  # rows of 8: one vmsExp call each, the remainder path
        buf = np.zeros((x.size // 8, 9), dtype=np.float32)
        buf[:, :8] = x.reshape(-1, 8)
        rows = torch.exp(torch.from_numpy(buf)[:, :8]).numpy().reshape(-1)
        bad |= got.view(np.uint32) != rows.view(np.uint32)
    for i in np.flatnonzero(bad)[:5]:
        print(f"  x={bits[i]:#010x} ({x[i]!r}): torch {want.view(np.uint32)[i]:#010x}, kquant {got.view(np.uint32)[i]:#010x}")
    return int(np.count_nonzero(bad))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample", type=int, default=0)
    ap.add_argument("--chunk-bits", type=int, default=24)
    ap.add_argument("--binades", type=str, default="", help="e.g. -1:3: every input in [2^a, 2^(b+1)) and its negative")
    ap.add_argument("--main", type=int, default=0, help="N random inputs with |x| < 87.33654 (the vector path)")
    ap.add_argument("--kernel", choices=("z0", "ex"), default=None, help="the port to check (default: this machine's)")
    ap.add_argument("--tail", action="store_true", help="also every input in vmsExp calls of length 8")
    ap.add_argument("--direct", action="store_true", help="against the MKL kernel called directly, not torch.exp")
    a = ap.parse_args()
    global PORT, TAIL, TORCH_EXP
    kernel = a.kernel or vml.torch_exp_kernel()
    PORT, TAIL = vml.KERNELS[kernel], a.tail and not a.direct
    TORCH_EXP = mkl_kernel(kernel) if a.direct else lambda x: torch.exp(torch.from_numpy(x.copy())).numpy()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, port {kernel}, tail {TAIL}, "
          f"against {'the MKL kernel' if a.direct else 'torch.exp'}")
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
