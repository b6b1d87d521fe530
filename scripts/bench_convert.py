#!/usr/bin/env python3
"""HF folder -> Q4_K_M: kquant vs llama.cpp's two steps, wall time and peak RSS, in one run.

Builds (once, cached in --work) a ~0.5B-parameter BF16 Llama checkpoint with 256-divisible
shapes and heavy-tailed random weights, then times, each in its own process (peak RSS from
wait4's ru_maxrss):
  1. llama.cpp convert_hf_to_gguf.py --outtype bf16   (needs scripts/setup_refconv.sh)
  2. llama.cpp llama_model_quantize Q4_K_M, 2 threads (llama-cpp-python)
  3. kquant convert --type Q4_K_M --threads 2
and checks that both Q4_K_M files are identical.

`--model deepseek` builds a DeepSeek-V3-shaped BF16 MoE instead (~0.59B parameters: MLA with
q_lora, one dense layer then 4 MoE layers of 64 routed experts + 1 shared, the router's
e_score_correction_bias, the DeepSeek-V3 tokenizer fixture), written one tensor at a time.

`--source fp8` re-writes that checkpoint as DeepSeek-V3 / Qwen3-FP8 publish theirs (linear
weights F8_E4M3 with float32 `weight_scale_inv` per 128x128 block, `quant_method: fp8`) and
converts that instead: the dequantizing source layer, measured the same way.

`--imatrix` gives both sides the same synthetic importance matrix (one entry per matmul weight,
log-normal values, legacy .dat format as llama-imatrix writes it), which the i-quant file types
below IQ3_S need (IQ2_M, IQ2_XS, IQ1_S, ...): both quantize with it.

`--rounding best,refine` also times kquant's other rounding modes on the same checkpoint (same
command, `--rounding MODE`), each against kquant's ggml mode and llama.cpp's two steps, and checks
that each file has the same tensors, types and metadata as the ggml-mode file but
`quantize.rounding` (the bytes differ by design).

    .venv/bin/python scripts/bench_convert.py [--work /tmp/kquant-bench] [--layers 28] [--type Q4_K_M] [--source bf16|fp8]
        [--model llama|deepseek] [--imatrix] [--rounding best,refine]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # oracle/
sys.path.insert(0, str(ROOT / "scripts"))


def _hwm_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def run(cmd: list[str], env=None) -> tuple[float, float]:
    """Run a command; return (wall seconds, peak RSS MB of that process).

    Peak RSS is the process's own VmHWM, polled until it exits (ru_maxrss would start from the
    parent's RSS at fork time, which survives execve)."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0.0
    while True:
        peak = max(peak, _hwm_mb(p.pid))
        try:
            p.wait(timeout=0.02)
            break
        except subprocess.TimeoutExpired:
            pass
    wall = time.perf_counter() - t
    err = p.stderr.read().decode(errors="replace")
    if p.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err[-3000:]}")
    return wall, peak


def warm(folder: Path) -> None:
    for f in folder.iterdir():
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass


def make_fp8(src: Path, dst: Path) -> None:
    """`src` (BF16 Llama) with every linear weight as FP8 e4m3 + 128x128 block scales, one tensor
    at a time (tests/quant_sources.py's quantizer)."""
    import json
    import shutil

    import numpy as np

    from kquant.io.safetensors import Checkpoint, SafetensorsStreamWriter
    from quant_sources import _is_linear, fp8

    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.suffix != ".safetensors" and f.name != "config.json":
            shutil.copy(f, dst / f.name)
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                  "weight_block_size": [128, 128]}
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    with Checkpoint.open(src) as ck:
        entries = []
        for n, ti in ck.tensors.items():
            if _is_linear(n):
                r, c = ti.shape
                entries += [(n, "F8_E4M3", ti.shape), (n + "_scale_inv", "F32", (-(-r // 128), -(-c // 128)))]
            else:
                entries.append((n, ti.dtype, ti.shape))
        tmp = dst / "model.safetensors.tmp"
        with open(tmp, "wb") as fh:
            w = SafetensorsStreamWriter(fh, sorted(entries))
            for n, dt, _ in sorted(entries):
                if n.endswith("_scale_inv"):
                    continue
                if _is_linear(n):
                    codes, scale = fp8(np.asarray(ck.read(n), np.float32), "block", (128, 128))
                    w.write(codes)  # "x.weight" sorts just before "x.weight_scale_inv"
                    w.write(scale)
                else:
                    w.write(np.asarray(ck.read_raw(n)))
        tmp.rename(dst / "model.safetensors")


DEEPSEEK = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=5, first_k_dense_replace=1,
                num_attention_heads=8, num_key_value_heads=8, q_lora_rank=384, kv_lora_rank=256, qk_nope_head_dim=64,
                qk_rope_head_dim=32, v_head_dim=64, n_routed_experts=64, n_shared_experts=1, num_experts_per_tok=6,
                moe_intermediate_size=384, n_group=8, topk_group=4, vocab_size=129280)


def make_deepseek(out: Path, seed: int = 7) -> None:
    """A DeepSeek-V3-shaped BF16 checkpoint (DEEPSEEK's sizes), streamed to disk one tensor at a time
    (heavy-tailed weights tiled from a 1M-value pool, so building it takes seconds)."""
    import gzip
    import json

    import numpy as np

    from kquant.io.safetensors import SafetensorsStreamWriter, fp32_to_bf16_bits

    c = dict(DEEPSEEK)
    cfg = {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", **c,
           "max_position_embeddings": 163840, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "routed_scaling_factor": 2.5,
           "scoring_func": "sigmoid", "topk_method": "noaux_tc", "norm_topk_prob": True, "tie_word_embeddings": False,
           "bos_token_id": 0, "eos_token_id": 1, "torch_dtype": "bfloat16",
           "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096, "beta_fast": 32,
                            "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}}
    out.mkdir(parents=True, exist_ok=True)
    tok = ROOT / "fixtures" / "tokenizers" / "deepseek-v3"
    (out / "tokenizer.json").write_bytes(gzip.decompress((tok / "tokenizer.json.gz").read_bytes()))
    (out / "tokenizer_config.json").write_bytes((tok / "tokenizer_config.json").read_bytes())
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    e, v, nh = c["hidden_size"], c["vocab_size"], c["num_attention_heads"]
    nope, rope, vd = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
    ql, kvl, fx, nx = c["q_lora_rank"], c["kv_lora_rank"], c["moe_intermediate_size"], c["n_routed_experts"]
    t: dict[str, tuple[tuple[int, ...], str]] = {"model.embed_tokens.weight": ((v, e), "w"), "lm_head.weight": ((v, e), "w"),
                                                 "model.norm.weight": ((e,), "n")}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t.update({p + "input_layernorm.weight": ((e,), "n"), p + "post_attention_layernorm.weight": ((e,), "n"),
                  p + "self_attn.q_a_proj.weight": ((ql, e), "w"), p + "self_attn.q_a_layernorm.weight": ((ql,), "n"),
                  p + "self_attn.q_b_proj.weight": ((nh * (nope + rope), ql), "w"),
                  p + "self_attn.kv_a_proj_with_mqa.weight": ((kvl + rope, e), "w"),
                  p + "self_attn.kv_a_layernorm.weight": ((kvl,), "n"),
                  p + "self_attn.kv_b_proj.weight": ((nh * (nope + vd), kvl), "w"),
                  p + "self_attn.o_proj.weight": ((e, nh * vd), "w")})
        mlps = [(p + "mlp.", c["intermediate_size"])] if i < c["first_k_dense_replace"] else \
            [(p + "mlp.shared_experts.", fx * c["n_shared_experts"])] + [(p + f"mlp.experts.{x}.", fx) for x in range(nx)]
        if i >= c["first_k_dense_replace"]:
            t[p + "mlp.gate.weight"] = ((nx, e), "w")
            t[p + "mlp.gate.e_score_correction_bias"] = ((nx,), "b")
        for q, f in mlps:
            t.update({q + "gate_proj.weight": ((f, e), "w"), q + "up_proj.weight": ((f, e), "w"),
                      q + "down_proj.weight": ((e, f), "w")})
    g = np.random.default_rng(seed)
    pool = (g.standard_t(4, size=1 << 20) * 0.03).astype(np.float32)
    entries = [(n, "F32" if kind == "b" else "BF16", shape) for n, (shape, kind) in sorted(t.items())]
    tmp = out / "model.safetensors.tmp"
    with open(tmp, "wb") as fh:
        w = SafetensorsStreamWriter(fh, entries)
        for n, dt, shape in entries:
            kind = t[n][1]
            size = int(np.prod(shape))
            if kind == "n":
                x = 1 + 0.1 * g.standard_normal(size).astype(np.float32)
            elif kind == "b":
                x = g.standard_normal(size).astype(np.float32)
            else:
                x = np.resize(np.roll(pool, -int(g.integers(1 << 20))), size)
            w.write(x.astype("<f4") if dt == "F32" else fp32_to_bf16_bits(x).astype("<u2"))
    tmp.rename(out / "model.safetensors")


def make_imatrix(model: Path, out: Path) -> None:
    """A legacy llama-imatrix .dat for `model`: an entry (log-normal values, 100 calls) per 2-D weight
    but token_embd, under its GGUF name (kquant's spec names them)."""
    import struct

    import numpy as np

    from kquant import models

    spec = models.load_spec(model, vocab=False)
    rng = np.random.default_rng(11)
    ents = [(t.name, t.shape) for t in spec.tensors if len(t.shape) >= 2 and t.name != "token_embd.weight"]
    with open(out, "wb") as f:
        f.write(struct.pack("<i", len(ents)))
        for name, shape in ents:
            n = shape[-1] * (shape[0] if len(shape) == 3 else 1)
            f.write(struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", 100, n))
            f.write((np.exp(rng.normal(0, 1.0, n)) * 100).astype("<f4").tobytes())
        f.write(struct.pack("<ii", 100, len(b"synthetic")) + b"synthetic")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/kquant-bench"))
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--ffn", type=int, default=4096)
    ap.add_argument("--type", default="Q4_K_M")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", choices=("llama", "deepseek"), default="llama",
                    help="the dense Llama, or a DeepSeek-V3-shaped MoE (MLA, dense first layer, 64 experts)")
    ap.add_argument("--source", choices=("bf16", "fp8"), default="bf16",
                    help="checkpoint format converted: the BF16 model, or it as FP8 with 128x128 block scales")
    ap.add_argument("--imatrix", action="store_true",
                    help="quantize both sides with the same synthetic importance matrix (IQ2_M, IQ1_S, ... need one)")
    ap.add_argument("--rounding", default="",
                    help="comma-separated kquant rounding modes (best, refine) timed too, against ggml mode")
    a = ap.parse_args(argv)
    modes = [m for m in a.rounding.split(",") if m and m != "ggml"]

    from oracle import refpipeline  # light: numpy only until a comparison runs

    if not refpipeline.available():
        print("reference converter missing: bash scripts/setup_refconv.sh", file=sys.stderr)
        return 1
    model = a.work / f"llama-{a.layers}L-{a.hidden}"
    if a.model == "deepseek":
        model = a.work / "deepseek-v3-moe"
        if not (model / "model.safetensors").exists():
            print(f"building {model} ...", file=sys.stderr)
            subprocess.run([sys.executable, str(Path(__file__)), "--make-deepseek", str(model)], check=True)
    elif not (model / "model.safetensors").exists():
        # built in a child process: this one must stay small, since a child's ru_maxrss starts
        # from its parent's RSS at fork time (it survives execve)
        print(f"building {model} ...", file=sys.stderr)
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tiny_model.py"), "--out", str(model),
                        "--layers", str(a.layers), "--hidden", str(a.hidden), "--heads", str(a.hidden // 64),
                        "--kv-heads", str(a.hidden // 256), "--ffn", str(a.ffn), "--vocab", "32000", "--seed", "7"],
                       check=True)
    if a.source == "fp8":
        fp8_model = a.work / f"{model.name}-fp8"
        if not (fp8_model / "model.safetensors").exists():
            print(f"building {fp8_model} ...", file=sys.stderr)
            subprocess.run([sys.executable, str(Path(__file__)), "--make-fp8", str(model), str(fp8_model)], check=True)
        model = fp8_model
    import numpy as np

    from kquant.io.safetensors import Checkpoint

    with Checkpoint.open(model) as ck:  # headers only
        n_params = sum(int(np.prod(t.shape)) for t in ck.tensors.values())
    src_mb = sum(f.stat().st_size for f in model.iterdir()) / 1e6
    print(f"model: {model} ({a.source}, {n_params / 1e9:.3f} B parameters, {src_mb:.0f} MB on disk), type {a.type}, "
          f"{a.threads} threads")

    bf16 = a.work / "ref-bf16.gguf"
    ref_q = a.work / f"ref-{a.type}.gguf"
    kq_q = a.work / f"kquant-{a.type}.gguf"
    for f in (bf16, ref_q, kq_q):
        f.unlink(missing_ok=True)
    py = refpipeline.refconv_python()
    conv = str(refpipeline.llama_cpp_dir() / "convert_hf_to_gguf.py")
    env = dict(os.environ, NUMBA_NUM_THREADS=str(a.threads))
    im_args, im_py = [], ""
    if a.imatrix:
        im = a.work / f"{model.name}.imatrix.dat"
        if not im.exists():
            make_imatrix(model, im)
        im_args = ["--imatrix", str(im)]
        im_py = f"from kquant.plan.imatrix import load_imatrix; im = load_imatrix({str(im)!r}); "

    # numba's on-disk cache is warm after one small call: first-call compile is not what we time here
    run([sys.executable, "-c", "from kquant.ggml import quants, warm; warm.warm(list(quants.registry()))"], env)

    warm(model)
    t1, m1 = run([py, conv, str(model), "--outtype", "bf16", "--outfile", str(bf16)])
    q = (f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); from oracle import refpipeline as r; {im_py}"
         f"r.llama_quantize({str(bf16)!r}, {str(ref_q)!r}, {a.type!r}, threads={a.threads}{', imatrix=im' if im_py else ''})")
    t2, m2 = run([sys.executable, "-c", q])
    warm(model)
    t3, m3 = run([sys.executable, "-m", "kquant.cli", "convert", str(model), "-o", str(kq_q), "--type", a.type,
                  "--threads", str(a.threads), "-q", *im_args], env)
    diffs = refpipeline.compare_gguf(kq_q, ref_q, ignore_keys=())
    same = "identical" if not diffs else f"DIFFERENT ({len(diffs)}: {diffs[:3]})"
    print(f"{'step':44s} {'wall s':>8s} {'peak RSS MB':>12s}")
    print(f"{'llama.cpp convert_hf_to_gguf.py --outtype bf16':44s} {t1:8.1f} {m1:12.0f}")
    print(f"{'llama.cpp llama-quantize ' + a.type:44s} {t2:8.1f} {m2:12.0f}")
    print(f"{'llama.cpp total':44s} {t1 + t2:8.1f} {max(m1, m2):12.0f}")
    print(f"{'kquant convert ' + a.type:44s} {t3:8.1f} {m3:12.0f}")
    print(f"speed-up vs llama.cpp: {(t1 + t2) / t3:.2f}x   peak RSS: {m3:.0f} MB vs {max(m1, m2):.0f} MB   "
          f"output: {same}")
    bad = bool(diffs)
    for mode in modes:
        # the mode's kernels compiled (or loaded from the cache) beforehand, as the ggml ones above
        run([sys.executable, "-c", "import numpy as np; from kquant.ggml import quants; "
             "x = np.linspace(-1, 1, 512, dtype=np.float32).reshape(2, 256); w = np.ones(256, np.float32); "
             f"[quants.quantize(x, t, w, rounding={mode!r}) for t in quants.mode_registry({mode!r})]"], env)
        out = a.work / f"kquant-{a.type}-{mode}.gguf"
        out.unlink(missing_ok=True)
        warm(model)
        t, m = run([sys.executable, "-m", "kquant.cli", "convert", str(model), "-o", str(out), "--type", a.type,
                    "--threads", str(a.threads), "-q", "--rounding", mode, *im_args], env)
        layout = _layout_diffs(out, kq_q)
        print(f"{'kquant convert ' + a.type + ' --rounding ' + mode:44s} {t:8.1f} {m:12.0f}   "
              f"{t / t3:.2f}x the time of kquant's ggml mode; llama.cpp's two steps {(t1 + t2) / t:.2f}x its time, "
              f"llama-quantize alone {t2 / t:.2f}x; "
              f"layout: {'same as ggml mode' if not layout else 'DIFFERENT ' + str(layout[:3])}")
        bad = bad or bool(layout)
        out.unlink(missing_ok=True)
    return 0 if not bad else 2


def _layout_diffs(a: Path, b: Path) -> list[str]:
    """What differs between two GGUF files but tensor bytes and quantize.rounding: names, order, shapes,
    types, offsets, other metadata."""
    from gguf import GGUFReader

    SKIP = ("quantize.rounding", "GGUF.kv_count")  # the one extra key, and so the count
    ra, rb = GGUFReader(str(a)), GGUFReader(str(b))
    out = []
    fa = {k: (f.types, [bytes(f.parts[i]) for i in f.data]) for k, f in ra.fields.items() if k not in SKIP}
    fb = {k: (f.types, [bytes(f.parts[i]) for i in f.data]) for k, f in rb.fields.items() if k not in SKIP}
    out += [f"metadata {k}" for k in sorted(set(fa) ^ set(fb))]
    out += [f"metadata {k}" for k in sorted(set(fa) & set(fb)) if fa[k] != fb[k]]
    ta = [(t.name, t.tensor_type, tuple(t.shape), t.data_offset - ra.data_offset) for t in ra.tensors]
    tb = [(t.name, t.tensor_type, tuple(t.shape), t.data_offset - rb.data_offset) for t in rb.tensors]
    out += [f"tensor {x[0]}" for x, y in zip(ta, tb) if x != y]
    if len(ta) != len(tb):
        out.append(f"{len(ta)} vs {len(tb)} tensors")
    return out


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--make-deepseek":  # the child process building the MoE checkpoint
        make_deepseek(Path(sys.argv[2]))
        sys.exit(0)
    if len(sys.argv) == 4 and sys.argv[1] == "--make-fp8":  # the child process building the FP8 checkpoint
        make_fp8(Path(sys.argv[2]), Path(sys.argv[3]))
        sys.exit(0)
    sys.exit(main())
