#!/usr/bin/env python3
"""Single-read multi-type pass (`kquant batch`, `convert_many`) vs one `kquant convert` per type.

Builds a small Llama checkpoint (scripts/make_tiny_model.py; default about 60 M parameters, BF16)
in a temporary folder and times, for the same types:

  library  one `pipeline.convert_many` call for all types  vs  one `pipeline.convert` per type
           (same process, kernels already loaded: the pure saving of reading, widening, the NaN
           check and the BF16 rounding done once instead of once per type)
  cli      one `kquant batch` process                      vs  one `kquant convert` process per type
           (what a user runs: also the per-process start-up and kernel load)

and the shared per-pass work alone (read, widen to float32, NaN/Inf check, BF16 rounding of every
tensor), which `convert_many` does once and separate converts once per type. Every measurement is
the best of --repeat runs, in wall-clock and in CPU seconds (all threads and child processes:
steadier than wall time on a shared machine); the source stays in the page cache, so a
cold disk or a network filesystem favours the single read further. Outputs are checked byte-identical.

    .venv/bin/python scripts/bench_batch.py [--types Q4_K_M,Q5_K_M,Q8_0] [--layers 4] [--hidden 1024] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from kquant import pipeline  # noqa: E402
from make_tiny_model import make  # noqa: E402

KQUANT = [sys.executable, "-m", "kquant.cli"]


def _cpu() -> float:
    """CPU seconds of this process (all threads) and of its finished children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def best_time(fn, repeat: int) -> tuple[float, float]:
    """(best wall seconds, best CPU seconds) over `repeat` runs."""
    wall = cpu = float("inf")
    for _ in range(repeat):
        t, c = time.perf_counter(), _cpu()
        fn()
        wall, cpu = min(wall, time.perf_counter() - t), min(cpu, _cpu() - c)
    return wall, cpu


def _figures(a_name: str, a: tuple, b_name: str, b: tuple) -> dict:
    return {f"{a_name}_s": round(a[0], 3), f"{a_name}_cpu_s": round(a[1], 3), f"{b_name}_s": round(b[0], 3),
            f"{b_name}_cpu_s": round(b[1], 3), "speedup": round(a[0] / b[0], 3), "cpu_speedup": round(a[1] / b[1], 3)}


def read_pass(model: Path) -> None:
    """The work convert_many shares between types: every slab read, checked and rounded."""
    from kquant.ggml import quants

    with pipeline.open_model(model) as ckpt:
        spec = pipeline.build_spec(ckpt, model, vocab=False)
        for t in spec.tensors:
            for _, slab in pipeline.iter_source_slabs(ckpt, t):
                quants.count_nonfinite(slab)
                pipeline.round_through(slab, t.ref_type)


def run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default="Q4_K_M,Q5_K_M,Q8_0")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--ffn", type=int, default=2816)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-cli", action="store_true", help="library figures only")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    types = [t.strip() for t in a.types.split(",") if t.strip()]

    with tempfile.TemporaryDirectory(prefix="kquant-bench-batch-") as tmp:
        d = Path(tmp)
        model = make(d / "root" / "model", layers=a.layers, hidden=a.hidden, heads=8, kv_heads=4, ffn=a.ffn,
                     vocab=a.vocab, seed=7)
        src_mb = sum(f.stat().st_size for f in model.iterdir()) / 1e6
        n_params = (2 * a.vocab * a.hidden + a.layers * (a.hidden * a.hidden * 3 + 3 * a.hidden * a.ffn)) / 1e6
        print(f"model: {a.layers} layers, hidden {a.hidden}, ffn {a.ffn}, vocab {a.vocab}: ~{n_params:.0f} M params, "
              f"{src_mb:.0f} MB BF16; types {','.join(types)}; best of {a.repeat}", file=sys.stderr)
        opts = lambda: pipeline.Options(force=True)  # noqa: E731
        pipeline.convert_many(model, [(d / f"warm-{t}.gguf", t) for t in types], opts())  # load the kernels

        sep = d / "sep"
        one = d / "one"
        sep.mkdir()
        one.mkdir()
        lib_sep = best_time(lambda: [pipeline.convert(model, sep / f"model-{t}.gguf", t, opts()) for t in types], a.repeat)
        lib_one = best_time(lambda: pipeline.convert_many(model, [(one / f"model-{t}.gguf", t) for t in types], opts()),
                              a.repeat)
        for t in types:
            assert (sep / f"model-{t}.gguf").read_bytes() == (one / f"model-{t}.gguf").read_bytes(), t
        read_s = best_time(lambda: read_pass(model), a.repeat)
        res = {"params_m": round(n_params, 1), "source_mb": round(src_mb, 1), "types": types,
               "library": _figures("separate_convert", lib_sep, "convert_many", lib_one)}
        res["library"]["shared_read_pass_s"] = round(read_s[0], 3)
        res["library"]["shared_read_pass_cpu_s"] = round(read_s[1], 3)
        if not a.skip_cli:
            def cli_sep():
                for t in types:
                    run(KQUANT + ["convert", str(model), "-o", str(sep / f"model-{t}.gguf"), "-t", t, "--force", "-q"])

            def cli_batch():
                shutil.rmtree(d / "bout", ignore_errors=True)
                run(KQUANT + ["batch", str(d / "root"), "-o", str(d / "bout"), *sum((["-t", t] for t in types), []), "-q"])

            cli_s = best_time(cli_sep, a.repeat)
            cli_b = best_time(cli_batch, a.repeat)
            for t in types:
                assert (sep / f"model-{t}.gguf").read_bytes() == (d / "bout" / f"model-{t}.gguf").read_bytes(), t
            res["cli"] = _figures("separate_kquant_convert", cli_s, "kquant_batch", cli_b)
    if a.json:
        print(json.dumps(res))
    else:
        n = len(types)
        lib = res["library"]
        print(f"library: {n} x convert {lib['separate_convert_s']:.2f} s ({lib['separate_convert_cpu_s']:.2f} s CPU), "
              f"convert_many {lib['convert_many_s']:.2f} s ({lib['convert_many_cpu_s']:.2f} s CPU) -> "
              f"{lib['speedup']:.2f}x wall, {lib['cpu_speedup']:.2f}x CPU; shared read pass alone "
              f"{lib['shared_read_pass_s']:.2f} s ({lib['shared_read_pass_cpu_s']:.2f} s CPU)")
        if "cli" in res:
            c = res["cli"]
            print(f"cli:     {n} x kquant convert {c['separate_kquant_convert_s']:.2f} s ({c['separate_kquant_convert_cpu_s']:.2f} s CPU), "
                  f"kquant batch {c['kquant_batch_s']:.2f} s ({c['kquant_batch_cpu_s']:.2f} s CPU) -> "
                  f"{c['speedup']:.2f}x wall, {c['cpu_speedup']:.2f}x CPU")
        print("outputs byte-identical: yes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
