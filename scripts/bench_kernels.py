#!/usr/bin/env python3
"""Kernel throughput: kquant vs libggml (ggml_quantize_chunk), measured in the same run.

Prints, per type, MB/s of float32 input for kquant and for the reference, with one thread and
with all threads (the reference run on N Python threads over disjoint row ranges, as
llama-quantize splits rows), the ratio, and whether the bytes matched. Also times the first
call (compile or cache load) of each kernel.

    .venv/bin/python scripts/bench_kernels.py [--rows 2048] [--cols 4096] [--types Q4_K,Q8_0] [--imatrix]

With --cpu: one thread only, kquant and the reference both run in the calling thread, timed by
that thread's CPU time (time.thread_time), so other processes on a loaded machine do not skew the
ratio.

With --rounding best|refine: per type, kquant's time in that mode against its ggml mode instead
(CPU time of one thread, so a loaded machine does not skew the ratio; no reference run). With
--processes N as well, that measurement runs in N fresh processes one after another and each
type's median ratio and range are printed: on a shared machine a whole process can run a kernel
20-50% slower than the next one does (its mode's ratio moving with it), so one process's ratio is
one draw.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))  # oracle/

from oracle import reference  # noqa: E402
from kquant.ggml import quants  # noqa: E402
from kquant.types import parse_qtype  # noqa: E402

ALL = ("Q4_0,Q4_1,Q5_0,Q5_1,Q8_0,Q2_K,Q3_K,Q4_K,Q5_K,Q6_K,F16,BF16,IQ4_NL,IQ4_XS,TQ1_0,TQ2_0,MXFP4,Q1_0,Q2_0,"
       "IQ3_XXS,IQ3_S,IQ2_XXS,IQ2_XS,IQ2_S,IQ1_S,IQ1_M")


def best_time(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def best_cpu(fn, repeat: int) -> float:
    """The smallest CPU time of the calling thread over `repeat` calls of fn."""
    best = float("inf")
    for _ in range(repeat):
        c = time.thread_time()
        fn()
        best = min(best, time.thread_time() - c)
    return best


def ref_threaded(x, t, qw, n_threads):
    rows = x.shape[0]
    out = np.empty((rows, t.row_size(x.shape[1])), dtype=np.uint8)
    bounds = np.linspace(0, rows, n_threads + 1).astype(int)

    def work(a, b):
        out[a:b] = reference.quantize(x[a:b], t, qw)

    ths = [threading.Thread(target=work, args=(bounds[i], bounds[i + 1])) for i in range(n_threads)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    return out


def rounding_ratios(args) -> int:
    """kquant's time in args.rounding against its ggml mode, one thread, CPU time."""
    rng = np.random.default_rng(0)
    x = (rng.standard_t(5, size=(args.rows, args.cols)) * 0.02).astype(np.float32)
    qw = rng.random(args.cols).astype(np.float32) + 0.1 if args.imatrix else None
    quants.set_threads(1)
    mode = quants.parse_rounding(args.rounding)
    print(f"input {args.rows}x{args.cols} float32, imatrix={'yes' if args.imatrix else 'no'}, one thread, CPU time, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'type':6} {'ggml MB/s':>10} {mode + ' MB/s':>12} {'ratio':>6}")
    mb = x.nbytes / 1e6
    for name in args.types.split(","):
        t = parse_qtype(name)
        if not t.is_quantized or t not in quants.mode_registry(mode):
            continue
        w = qw
        if w is None and t.requires_imatrix:
            w = rng.random(args.cols).astype(np.float32) + 0.1
        times = [float("inf"), float("inf")]
        for r in ("ggml", mode):
            quants.quantize(x[:1], t, w, rounding=r)
        for _ in range(args.repeat):  # alternated, so a slower spell of the machine hits both modes
            for i, r in enumerate(("ggml", mode)):
                c = time.thread_time()
                quants.quantize(x, t, w, rounding=r)
                times[i] = min(times[i], time.thread_time() - c)
        print(f"{t.name:6} {mb / times[0]:10.3g} {mb / times[1]:12.3g} {times[1] / times[0]:6.2f}")
    quants.set_threads(quants.MAX_THREADS)
    return 0


def rounding_ratios_processes(args, argv) -> int:
    """rounding_ratios in args.processes fresh processes, one after another: per type the median ratio
    and its range."""
    child, skip = [], False  # the same arguments without --processes: each child measures once
    for a in (sys.argv[1:] if argv is None else argv):
        if skip or a.startswith("--processes="):
            skip = False
        elif a == "--processes":
            skip = True
        else:
            child.append(a)
    ratios: dict[str, list[float]] = {}
    for k in range(args.processes):
        run = subprocess.run([sys.executable, os.path.abspath(__file__), *child], capture_output=True, text=True)
        if run.returncode != 0:
            print(run.stderr.strip().splitlines()[-1] if run.stderr.strip() else "a child run failed",
                  file=sys.stderr)
            return 1
        lines = run.stdout.splitlines()
        if k == 0:
            print(lines[0].replace("one thread", f"one thread, {args.processes} processes"))
        for line in lines[2:]:
            f = line.split()
            ratios.setdefault(f[0], []).append(float(f[-1]))
    mode = quants.parse_rounding(args.rounding)
    print(f"{'type':6} {mode + '/ggml median':>18} {'min':>6} {'max':>6}")
    for name, r in ratios.items():
        print(f"{name:6} {statistics.median(r):18.2f} {min(r):6.2f} {max(r):6.2f}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--types", default=ALL)
    ap.add_argument("--imatrix", action="store_true", help="use importance weights (ggml's weighted path)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cpu", action="store_true",
                    help="one thread, both sides timed by the calling thread's CPU time (loaded machines)")
    ap.add_argument("--rounding", default="ggml", help="best or refine: time that mode against ggml mode")
    ap.add_argument("--processes", type=int, default=1,
                    help="with --rounding: measure in this many fresh processes, print each type's median ratio")
    args = ap.parse_args(argv)
    if quants.parse_rounding(args.rounding) != "ggml":
        if args.processes > 1:
            return rounding_ratios_processes(args, argv)
        return rounding_ratios(args)

    if not reference.available():
        print("the reference (llama-cpp-python) is not installed: pip install -e '.[test]'", file=sys.stderr)
        return 1
    rng = np.random.default_rng(0)
    x = (rng.standard_t(5, size=(args.rows, args.cols)) * 0.02).astype(np.float32)
    qw = rng.random(args.cols).astype(np.float32) + 0.1 if args.imatrix else None
    mb = x.nbytes / 1e6
    n_all = quants.MAX_THREADS
    print(f"input {args.rows}x{args.cols} float32 = {mb:.1f} MB, imatrix={'yes' if args.imatrix else 'no'}, "
          + ("one thread, CPU time of the thread" if args.cpu else f"threads: 1 and {n_all}")
          + f", load average {os.getloadavg()[0]:.1f}")
    hdr = f"{'type':6} {'first call s':>12} {'kq 1t MB/s':>11} {'ref 1t':>8} {'ratio':>6} "
    if not args.cpu:
        hdr += f"{'kq {0}t'.format(n_all):>8} {'ref {0}t'.format(n_all):>8} {'ratio':>6} "
    hdr += " bytes"
    print(hdr)
    print("-" * len(hdr))
    for name in args.types.split(","):
        t = parse_qtype(name)
        w = qw if t.is_quantized else None
        if w is None and t.requires_imatrix:  # ggml aborts without weights: these always get them
            w = rng.random(args.cols).astype(np.float32) + 0.1
        tc = time.perf_counter()
        quants.quantize(x[:1], t, None if w is None else w)
        first = time.perf_counter() - tc
        row = [f"{t.name:6}", f"{first:12.2f}"]
        same = True
        for n in (1,) if args.cpu else (1, n_all):
            quants.set_threads(n)
            got = quants.quantize(x, t, w)
            want = ref_threaded(x, t, w, n)
            if args.cpu:
                tk = best_cpu(lambda: quants.quantize(x, t, w, check_finite=False), args.repeat)
                tr = best_cpu(lambda: reference.quantize(x, t, w), args.repeat)
            else:
                tk = best_time(lambda: quants.quantize(x, t, w, check_finite=False), args.repeat)
                tr = best_time(lambda: ref_threaded(x, t, w, n), args.repeat)
            same &= bool(np.array_equal(got, want))
            row += [f"{mb / tk:11.3g}" if n == 1 else f"{mb / tk:8.3g}", f"{mb / tr:8.3g}", f"{tr / tk:6.2f}"]
        quants.set_threads(n_all)
        print(" ".join(row), " identical" if same else " DIFFERENT")
    return 0


if __name__ == "__main__":
    sys.exit(main())
