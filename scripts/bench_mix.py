#!/usr/bin/env python3
"""Benchmark kquant's automatic mix against llama.cpp's mixes at the same file size, by perplexity.

The model: a tiny Llama trained on local text by scripts/train_tiny_lm.py (cached in
/tmp/kquant-tinylm; rebuilt when missing, ~15 min on 2 cores), its held-out text and an
importance matrix computed the way llama-imatrix does from separate calibration text.

For each of (no imatrix, with the imatrix) and each --recipes file type (default Q4_K_M; those
llama-quantize refuses without an imatrix, IQ2_M, IQ3_XXS, ..., with the imatrix only):
  reference  llama.cpp's own pipeline: convert_hf_to_gguf.py --outtype bf16 (the reference venv
             of scripts/setup_refconv.sh), then llama_model_quantize (the imatrix given as
             llama-quantize gives it: params.imatrix and the quantize.imatrix.* kv overrides)
  kquant     kquant convert --target-size <that file's size> (same imatrix)
then every file is evaluated by llama.cpp itself (llama-cpp-python, CPU repacking off) on the
held-out text: chunks of N_CTX tokens, BOS first, the second half of each chunk scored, as
llama-perplexity does; perplexity, and the mean KL divergence of each file's next-token
distribution from the BF16 model's over the same positions.

    .venv/bin/python scripts/bench_mix.py [--recipes Q4_K_M,Q3_K_M] [--cache DIR] [--json OUT]

Models used so far (scripts/train_tiny_lm.py, `--out DIR` then `--cache DIR` here):
  A /tmp/kquant-tinylm       defaults: 4 layers, hidden 256, ffn 768, GQA 4/2, vocab 4096, 900 steps
  C /tmp/kquant-tinylm-c     --init-std 0.006 --seed 2 --lr 3e-3 --steps 1000
  D /tmp/kquant-tinylm-d     --steps 5000 --seed 3 --threads 2 (trained 5.5x longer than A: the main benchmark)
  D2 /tmp/kquant-tinylm-d2   --steps 5000 --seed 7 --threads 2 (D's recipe, another seed)
  T /tmp/kquant-tinylm-t     --tie --steps 5000 --seed 11 --threads 2 (output matrix tied to the embeddings;
                             the rounding benchmark used --tie --steps 450 --seed 11, BF16 perplexity
                             28.71 on its 3 copies)
  B /tmp/kquant-tinylm-fit   --layers 6 --ffn 512 --kv-heads 4 --seed 1 --steps 600 (only for --fit)
  E /tmp/kquant-tinylm-e     --layers 6 --steps 4000 --seed 5 (only for --fit: automix's constants)

`--realizations K` also rewrites the model K times under random function-preserving permutations
(see realizations()) and compares the two mixes on every copy: one file's perplexity carries a
rounding-draw term several paired standard errors wide, the mean over copies does not.

What kquant writes: `--kquant auto` (default) its automatic mix at the llama.cpp file's size;
`--kquant recipe` the same recipe as llama.cpp (same tensor types, checked), so with
`--rounding best` (or refine) the two files differ only in rounding. `--rounding best|refine|ggml` (default ggml)
is kquant's rounding. `--work DIR` puts every file written elsewhere (the model folder is then
only read), e.g. the rounding benchmark of the README (tied model T, untied model A):
    scripts/bench_mix.py --cache /tmp/kquant-tinylm-t --work /tmp/bench-t --realizations 2 \
        --recipes Q4_K_M,Q3_K_M,Q2_K,Q4_0 --kquant recipe --rounding best --eval-tokens 32768

`--fit` instead measures, for each quantizable tensor alone quantized to Q3_K (all others Q8_0),
the KL divergence of llama.cpp's next-token distribution from the all-Q8_0 model's on the
calibration text, divided by automix's relative output error: the per-kind sensitivities
behind kquant.automix.SENSITIVITY (run it on a model other than the benchmark one).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # oracle/

from kquant import automix  # noqa: E402
from oracle import refpipeline  # noqa: E402
from kquant import pipeline as cv  # noqa: E402
from kquant.plan.imatrix import load_imatrix  # noqa: E402
from kquant.types import QType, parse_ftype  # noqa: E402

CACHE = Path(os.environ.get("KQUANT_TINYLM", "/tmp/kquant-tinylm"))
LLAMA_CPP = Path(os.environ.get("KQUANT_LLAMA_CPP", "/tmp/sdist/llama_cpp_python-0.3.36/vendor/llama.cpp"))
DEFAULT_REFCONV = "/tmp/refconv/bin/python"  # scripts/setup_refconv.sh's default venv
N_CTX = 128  # the tiny model's training context
# --fit quantizes each tensor to the first of these its rows allow (Q3_K where the row is a multiple
# of 256; Q4_0 elsewhere, e.g. SmolLM2-135M's 576-wide rows): KL / rel is taken to be independent of the type
FIT_TYPES = (QType.Q3_K, QType.Q4_0)
FIT_TOKENS = 4096


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ensure_model(cache: Path, train_args=()) -> Path:
    """The trained model folder (training it first when missing)."""
    model = cache / "model"
    if (model / "model.safetensors").exists() and (cache / "imatrix.gguf").exists():
        return model
    py = refpipeline.refconv_python() or "/tmp/refconv/bin/python"
    if not Path(py).exists():
        raise SystemExit("no Python with torch: run scripts/setup_refconv.sh (or set KQUANT_REFCONV_PYTHON)")
    log(f"training the tiny LM into {cache} (takes ~15 min) ...")
    subprocess.run([py, str(ROOT / "scripts" / "train_tiny_lm.py"), "--out", str(cache), *train_args], check=True)
    return model


# ---------------------------------------------------------------- llama.cpp side
def llama_bf16(model: Path, out: Path) -> Path:
    """convert_hf_to_gguf.py --outtype bf16 (the reference venv), or kquant's byte-identical BF16."""
    if out.exists():
        return out
    os.environ.setdefault("KQUANT_LLAMA_CPP", str(LLAMA_CPP))
    if Path(DEFAULT_REFCONV).exists():
        os.environ.setdefault("KQUANT_REFCONV_PYTHON", DEFAULT_REFCONV)
    if refpipeline.available():
        refpipeline.convert_hf_bf16(model, out)
    else:
        log("reference converter not set up: BF16 file from kquant (byte-identical by the project's tests)")
        cv.convert(model, out, "BF16", cv.Options())
    return out


def llama_quantize(src: Path, dst: Path, ftype: str, im=None) -> Path:
    """llama_model_quantize, the imatrix given as llama-quantize gives it (refpipeline)."""
    return refpipeline.llama_quantize(src, dst, ftype, imatrix=im)


class LlamaEval:
    """A GGUF loaded in llama.cpp (CPU repacking off, as refpipeline.eval_logits), scoring chunks."""

    def __init__(self, path: Path, n_ctx: int = N_CTX, threads: int = 2):
        self.m = refpipeline.load_llama(path, n_ctx=n_ctx, n_threads=threads, n_batch=n_ctx, n_ubatch=n_ctx,
                                        logits_all=True, n_threads_batch=threads)
        self.n_ctx = n_ctx

    def tokenize(self, text: str) -> list[int]:
        return self.m.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def chunk_logprobs(self, chunk: list[int]) -> np.ndarray:
        """log-softmax of the scored positions (second half) of one chunk (BOS first, as llama-perplexity)."""
        toks = [self.m.token_bos()] + list(chunk[1:])
        self.m.reset()
        self.m.eval(toks)
        lg = np.array(self.m.scores[: len(toks)], dtype=np.float64)
        first = len(toks) // 2
        z = lg[first : len(toks) - 1]
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    def close(self):
        self.m.close()


_MEASURED: dict = {}


def _measured(src: Path, recipe: str, im, rounding: str):
    """automix.measure_model, once per (model, imatrix, rounding): another recipe reuses the
    measurement, its own types set as each curve's recipe type (measured again when one is not a
    candidate there)."""
    import dataclasses

    key = (str(src), im is None, rounding)  # one imatrix per model in this script
    if key in _MEASURED:
        m = _MEASURED[key]
        types = {t.name: t.qtype for t in cv.dry_run(src, recipe, cv.Options(imatrix=im)).tensors}
        if all(types[c.name] in c.types if not c.fixed else types[c.name] == c.recipe for c in m.curves):
            curves = [dataclasses.replace(c, recipe=types[c.name]) for c in m.curves]
            return dataclasses.replace(m, curves=curves, ftype=parse_ftype(recipe))
    m = _MEASURED[key] = automix.measure_model(src, recipe, cv.Options(imatrix=im, rounding=rounding))
    return m


def kquant_file(src: Path, out: Path, recipe: str, im, ref: Path, a):
    """kquant's file to compare with llama.cpp's `ref` (see --kquant / --rounding) -> (path, the
    automatic mix or None, seconds of its measuring pass)."""
    opts = dict(imatrix=im, rounding=a.rounding, force=True)
    if a.kquant == "recipe":
        cv.convert(src, out, recipe, cv.Options(**opts))
        assert tensor_types(out) == tensor_types(ref), f"{out}: tensor types differ from llama.cpp's {recipe}"
        return out, None, 0.0
    t = time.perf_counter()
    measured = _measured(src, recipe, im, a.rounding)
    seconds = time.perf_counter() - t
    mix = automix.mix_for_budget(measured, target_size=ref.stat().st_size)
    cv.convert(src, out, recipe, cv.Options(type_map=mix.type_map, **opts))
    assert out.stat().st_size <= ref.stat().st_size
    log(f"[{out.name}] " + mix.summary())
    return out, mix, seconds


def tensor_types(path: Path) -> dict[str, int]:
    from kquant.io.gguf import GGUFFile

    return {t.name: int(t.qtype) for t in GGUFFile(path).tensors}


def chunks_of(tokens: list[int], n_ctx: int, n_tokens: int) -> list[list[int]]:
    n = min(len(tokens), n_tokens) // n_ctx
    return [tokens[i * n_ctx : (i + 1) * n_ctx] for i in range(n)]


def evaluate(ref: Path, paths: dict[str, Path], chunks: list[list[int]]) -> dict[str, dict]:
    """Perplexity of `ref` and of every file in `paths`, and each file's mean KL(ref || file) over
    the scored positions, in one pass over the chunks (all models loaded at once)."""
    ev0 = LlamaEval(ref)
    evs = {k: LlamaEval(p) for k, p in paths.items()}
    nll = {k: 0.0 for k in ["ref", *paths]}
    per_chunk = {k: [] for k in ["ref", *paths]}  # summed NLL of each chunk's scored tokens
    kl = {k: 0.0 for k in paths}
    cnt = 0
    try:
        for ch in chunks:
            lp0 = ev0.chunk_logprobs(ch)
            first = len(ch) // 2
            tgt = np.array(ch[first + 1 :])
            idx = np.arange(len(tgt))
            per_chunk["ref"].append(-float(lp0[idx, tgt].sum()))
            nll["ref"] += per_chunk["ref"][-1]
            p0 = np.exp(lp0)
            for k, ev in evs.items():
                lp = ev.chunk_logprobs(ch)
                per_chunk[k].append(-float(lp[idx, tgt].sum()))
                nll[k] += per_chunk[k][-1]
                kl[k] += float((p0 * (lp0 - lp)).sum())
            cnt += len(tgt)
    finally:
        ev0.close()
        for ev in evs.values():
            ev.close()
    out = {"ref": {"ppl": math.exp(nll["ref"] / cnt), "chunk_nll": per_chunk["ref"]}}
    for k in paths:
        out[k] = {"ppl": math.exp(nll[k] / cnt), "kl": kl[k] / cnt, "chunk_nll": per_chunk[k]}
    return out


def paired_se(a: list[float], b: list[float], n_tokens: int) -> float:
    """Standard error of the difference of two files' mean NLL per token over the same chunks
    (chunks as the independent units: the paired difference's spread across chunks)."""
    d = np.asarray(b) - np.asarray(a)
    return float(d.std(ddof=1) * math.sqrt(len(d)) / n_tokens) if len(d) > 1 else math.nan


def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def recipes_for(model: Path, recipes: str, use_im: bool) -> list[str]:
    """The --recipes llama-quantize makes in this mode: without an imatrix it refuses IQ2_M, IQ1_S, ...
    (kquant's dry run says which), so those are compared with the imatrix only."""
    out = []
    for r in recipes.split(","):
        need = None if use_im else cv.dry_run(model, r).needs_imatrix
        if need is None:
            out.append(r)
        else:
            log(f"{r} without an imatrix: skipped (llama-quantize refuses it: {need[0]} would be {need[1].name})")
    return out


# ---------------------------------------------------------------- benchmark
def bench(a) -> dict:
    model = ensure_model(a.cache) if a.model is None else Path(a.model)
    cache = a.cache if a.model is None else Path(a.model).parent
    work = a.work or cache / "bench"
    work.mkdir(parents=True, exist_ok=True)
    imatrix_path = cache / "imatrix.gguf"
    bf16 = llama_bf16(model, work / "bf16.gguf")
    ev = LlamaEval(bf16)
    tokens = ev.tokenize(read_text(cache / "heldout.txt"))
    ev.close()
    chunks = chunks_of(tokens, N_CTX, a.eval_tokens)
    log(f"held-out: {len(chunks)} chunks of {N_CTX} tokens ({len(chunks) * (N_CTX // 2 - 1)} scored)")
    res = {"model": str(model), "eval_chunks": len(chunks), "n_ctx": N_CTX, "scored_tokens": len(chunks) * (N_CTX // 2 - 1),
           "bf16": {"file_bytes": bf16.stat().st_size}}
    files: dict[str, Path] = {}
    for label, use_im in (("no_imatrix", False), ("imatrix", True)):
        if a.only and a.only != label:
            continue
        im = load_imatrix(imatrix_path) if use_im else None
        res[label] = {}
        for recipe in recipes_for(model, a.recipes, use_im):
            ref = work / f"llama-{recipe}-{label}.gguf"
            if not ref.exists():
                llama_quantize(bf16, ref, recipe, im)
            size = ref.stat().st_size
            # sanity: kquant's own recipe file is byte-identical to llama.cpp's
            mine = work / f"kquant-{recipe}-{label}.gguf"
            cv.convert(model, mine, recipe, cv.Options(imatrix=im, force=True))
            identical = mine.read_bytes() == ref.read_bytes()
            mine.unlink()
            auto, mix, seconds = kquant_file(model, work / f"kquant-{a.kquant}-{a.rounding}-{recipe}-{label}.gguf",
                                             recipe, im, ref, a)
            res[label]["measure_seconds"] = round(seconds, 2)
            res[label][recipe] = {"target_size": size, "kquant_recipe_identical": identical,
                                  "within_budget": auto.stat().st_size <= size,
                                  "llama": {"file_bytes": size}, "kquant_auto": {"file_bytes": auto.stat().st_size},
                                  "mix": mix and {k: v for k, v in mix.as_json().items() if k != "tensors"}}
            files[f"{label}/{recipe}/llama"] = ref
            files[f"{label}/{recipe}/kquant_auto"] = auto
    t = time.perf_counter()
    ev = evaluate(bf16, files, chunks)
    log(f"evaluated {len(files) + 1} files in {time.perf_counter() - t:.0f} s")
    res["bf16"]["ppl"] = base = ev["ref"]["ppl"]
    for key, r in ev.items():
        if key == "ref":
            continue
        label, recipe, name = key.split("/")
        res[label][recipe][name].update(r)
    for label in ("no_imatrix", "imatrix"):
        for recipe, row in res.get(label, {}).items():
            if not isinstance(row, dict):
                continue
            gap_ref = row["llama"]["ppl"] - base
            gap_auto = row["kquant_auto"]["ppl"] - base
            row["gap_closed"] = (1 - gap_auto / gap_ref) if gap_ref > 0 else None
            row["kl_reduction"] = 1 - row["kquant_auto"]["kl"] / row["llama"]["kl"]
            # kquant minus llama.cpp in mean NLL per scored token, with its paired standard error
            a_nll, b_nll = row["llama"].pop("chunk_nll"), row["kquant_auto"].pop("chunk_nll")
            n_tok = res["scored_tokens"]
            row["nll_diff"] = (sum(b_nll) - sum(a_nll)) / n_tok
            row["nll_diff_se"] = paired_se(a_nll, b_nll, n_tok)
    return res


# ---------------------------------------------------------------- realizations
# One file's perplexity on held-out text carries, besides the chunk-to-chunk noise the paired
# standard error covers, a term FIXED for that file: to first order the NLL moves by
# -<onehot(y) - p, d logits>, linear in the particular rounding errors, and unless the model is
# perfectly calibrated on the held-out text its mean over the text is not zero. Two files of equal
# quality can differ by several paired standard errors that way. `--realizations K` measures it:
# the model is rewritten K times under random permutations that leave its function unchanged
# (hidden channels everywhere, FFN neurons, KV heads with their query groups, query heads within
# a group, value dims within a KV head) but move values between quantization blocks, so each copy's files are independent
# rounding draws of the same mix; the means over copies compare the methods, not one draw.
def permuted_model(model: Path, out: Path, seed: int, im=None, parts=("hidden", "ffn", "heads")):
    """A function-identical copy of a Llama HF folder (see above), and `im` permuted to match."""
    import shutil

    from kquant.plan.imatrix import ImatrixData
    from kquant.io.safetensors import Checkpoint, write_safetensors

    cfg = json.loads((model / "config.json").read_text())
    L, H = cfg["num_hidden_layers"], cfg["hidden_size"]
    nh, nkv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    hd = cfg.get("head_dim", H // nh)
    rng = np.random.default_rng(seed)

    def perm(n, part):
        return rng.permutation(n) if part in parts else np.arange(n)

    ck = Checkpoint.open(model / "model.safetensors")
    t = {n: np.array(ck.read(n)) for n in ck.tensors}
    ck.close()
    pi = perm(H, "hidden")  # hidden channels
    w = dict(im.weights) if im is not None else {}

    def perm_im(name, p):
        if name in w:
            w[name] = np.asarray(w[name]).reshape(-1)[p]

    t["model.embed_tokens.weight"] = t["model.embed_tokens.weight"][:, pi]
    t["model.norm.weight"] = t["model.norm.weight"][pi]
    if "lm_head.weight" in t:
        t["lm_head.weight"] = t["lm_head.weight"][:, pi]
        perm_im("output.weight", pi)
    for i in range(L):
        p = f"model.layers.{i}."
        for n in ("input_layernorm", "post_attention_layernorm"):
            t[p + n + ".weight"] = t[p + n + ".weight"][pi]
        for n, g in (("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
                     ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up")):
            t[p + n + ".weight"] = t[p + n + ".weight"][:, pi]
            perm_im(f"blk.{i}.{g}.weight", pi)
        t[p + "self_attn.o_proj.weight"] = t[p + "self_attn.o_proj.weight"][pi, :]
        t[p + "mlp.down_proj.weight"] = t[p + "mlp.down_proj.weight"][pi, :]
        sg = perm(t[p + "mlp.gate_proj.weight"].shape[0], "ffn")  # FFN neurons
        t[p + "mlp.gate_proj.weight"] = t[p + "mlp.gate_proj.weight"][sg]
        t[p + "mlp.up_proj.weight"] = t[p + "mlp.up_proj.weight"][sg]
        t[p + "mlp.down_proj.weight"] = t[p + "mlp.down_proj.weight"][:, sg]
        perm_im(f"blk.{i}.ffn_down.weight", sg)
        # attention: KV heads (with their query groups), query heads within a group, value dims
        # within a KV head (not rotated by RoPE, unlike query/key dims)
        kv_order = perm(nkv, "heads")
        rep = nh // nkv
        q_heads = np.concatenate([g * rep + perm(rep, "heads") for g in kv_order])
        vdim = [perm(hd, "heads") for _ in range(nkv)]
        v_rows = np.concatenate([g * hd + vdim[g] for g in kv_order])
        o_cols = np.concatenate([h * hd + vdim[h // rep] for h in q_heads])
        k_rows = np.concatenate([np.arange(g * hd, (g + 1) * hd) for g in kv_order])
        q_rows = np.concatenate([np.arange(h * hd, (h + 1) * hd) for h in q_heads])
        t[p + "self_attn.q_proj.weight"] = t[p + "self_attn.q_proj.weight"][q_rows]
        t[p + "self_attn.k_proj.weight"] = t[p + "self_attn.k_proj.weight"][k_rows]
        t[p + "self_attn.v_proj.weight"] = t[p + "self_attn.v_proj.weight"][v_rows]
        t[p + "self_attn.o_proj.weight"] = t[p + "self_attn.o_proj.weight"][:, o_cols]
        perm_im(f"blk.{i}.attn_output.weight", o_cols)
    out.mkdir(parents=True, exist_ok=True)
    for f in model.iterdir():
        if f.name != "model.safetensors" and f.is_file():
            shutil.copy2(f, out / f.name)
    write_safetensors(out / "model.safetensors", t, metadata={"format": "pt"}, dtype="BF16")  # exact: BF16 values
    pim = None if im is None else ImatrixData(weights=w, datasets=im.datasets, chunk_count=im.chunk_count, path=im.path)
    return out, pim


def realizations(a) -> dict:
    """--realizations K: llama.cpp's mix and kquant's automatic mix of K+1 function-identical copies."""
    model = ensure_model(a.cache) if a.model is None else Path(a.model)
    cache = a.cache if a.model is None else Path(a.model).parent
    work = a.work or cache / "realizations"
    work.mkdir(parents=True, exist_ok=True)
    bf16 = llama_bf16(model, (cache / "bench" if not a.work and (cache / "bench").exists() else work) / "bf16.gguf")
    ev = LlamaEval(bf16)
    chunks = chunks_of(ev.tokenize(read_text(cache / "heldout.txt")), N_CTX, a.eval_tokens)
    ev.close()
    n_tok = len(chunks) * (N_CTX // 2 - 1)
    files: dict[str, Path] = {}
    mixes: dict[str, dict] = {}
    res: dict = {"model": str(model), "copies": a.realizations + 1, "scored_tokens": n_tok,
                 "kquant": a.kquant, "rounding": a.rounding}
    labels = [lb for lb in ("no_imatrix", "imatrix") if not a.only or a.only == lb]
    im0 = load_imatrix(cache / "imatrix.gguf") if "imatrix" in labels else None
    for k in range(a.realizations + 1):
        # copy 0 is the model itself; each other copy (and its BF16 file) is made once for all modes
        if k == 0:
            src, pim, cbf = model, im0, bf16
        else:
            src, pim = permuted_model(model, work / f"copy{k}", seed=1000 + k, im=im0)
            cbf = work / f"copy{k}-bf16.gguf"
            if not cbf.exists():
                cv.convert(src, cbf, "BF16", cv.Options())
        for label in labels:
            im = pim if label == "imatrix" else None
            for recipe in recipes_for(model, a.recipes, im is not None):
                tag = f"{label}/{recipe}/{k}"
                ref = work / f"llama-{recipe}-{label}-{k}.gguf"
                if not ref.exists():
                    llama_quantize(cbf, ref, recipe, im)
                auto, mix, seconds = kquant_file(src, work / f"kquant-{a.kquant}-{a.rounding}-{recipe}-{label}-{k}.gguf",
                                                 recipe, im, ref, a)
                files[f"{tag}/llama"] = ref
                files[f"{tag}/kquant_auto"] = auto
                mixes[tag] = {"file_bytes": auto.stat().st_size, "llama_file_bytes": ref.stat().st_size,
                              "measure_seconds": round(seconds, 1),
                              "types": mix.as_json()["type_counts"] if mix else "recipe"}
                log(f"[{tag}] files ready: {mixes[tag]}")
    t = time.perf_counter()
    ev = evaluate(bf16, files, chunks)
    log(f"evaluated {len(files) + 1} files in {time.perf_counter() - t:.0f} s")
    base = ev["ref"]["ppl"]
    res["bf16_ppl"] = base
    for label in ("no_imatrix", "imatrix"):
        for recipe in a.recipes.split(","):
            keys = [k for k in files if k.startswith(f"{label}/{recipe}/") and k.endswith("/llama")]
            if not keys:
                continue
            rows = []
            for key in keys:
                pre = key[: -len("llama")]
                r0, r1 = ev[pre + "llama"], ev[pre + "kquant_auto"]
                rows.append({**mixes[pre[:-1]], "llama_ppl": r0["ppl"], "kquant_ppl": r1["ppl"], "llama_kl": r0["kl"],
                             "kquant_kl": r1["kl"],
                             "nll_diff": (sum(r1["chunk_nll"]) - sum(r0["chunk_nll"])) / n_tok,
                             "nll_diff_se": paired_se(r0["chunk_nll"], r1["chunk_nll"], n_tok)})
            d = np.array([r["nll_diff"] for r in rows])
            lg = np.log([r["llama_ppl"] for r in rows]) - math.log(base)
            kq = np.log([r["kquant_ppl"] for r in rows]) - math.log(base)
            sd = lambda x: float(x.std(ddof=1)) if len(x) > 1 else math.nan  # noqa: E731
            res.setdefault(label, {})[recipe] = {
                "copies": rows,
                "mean_nll_diff": float(d.mean()),
                "mean_nll_diff_se": sd(d) / math.sqrt(len(d)),
                "llama_nll_gap_mean": float(lg.mean()), "llama_nll_gap_sd": sd(lg),
                "kquant_nll_gap_mean": float(kq.mean()), "kquant_nll_gap_sd": sd(kq),
                "gap_closed_mean": float(1 - kq.mean() / lg.mean()),
                "kl_reduction_mean": float(1 - np.mean([r["kquant_kl"] for r in rows]) / np.mean([r["llama_kl"] for r in rows])),
                "kl_lower_in_copies": sum(r["kquant_kl"] < r["llama_kl"] for r in rows),
                **{f"{who}_{m}_mean": float(np.mean([r[f"{who}_{m}"] for r in rows]))
                   for who in ("llama", "kquant") for m in ("ppl", "kl")},
            }
    return res


def markdown_rows(res: dict) -> list[str]:
    """One README table row per (recipe, imatrix): means over the copies."""
    out = []
    for recipe in dict.fromkeys(r for lb in ("no_imatrix", "imatrix") for r in res.get(lb, {})):
        for label in ("no_imatrix", "imatrix"):
            r = res.get(label, {}).get(recipe)
            if r:
                out.append(f"| {recipe} | {'yes' if label == 'imatrix' else 'no'} | {r['llama_kl_mean']:.4f} | "
                           f"{r['kquant_kl_mean']:.4f} | {-100 * r['kl_reduction_mean']:+.1f}% "
                           f"({r['kl_lower_in_copies']}/{len(r['copies'])}) | {r['llama_ppl_mean']:.3f} | {r['kquant_ppl_mean']:.3f} |")
    return out


# ---------------------------------------------------------------- sensitivity fit
def fit(a) -> dict:
    """KL of each single-tensor quantization vs automix's relative error (see module docstring).

    The reference is the model with every quantizable tensor in Q8_0 (not BF16): llama.cpp's
    quantized matmuls also quantize the activations, and against an all-Q8_0 reference that part
    cancels, leaving the effect of the tensor's own weight error (Q3_K's minus Q8_0's, which is
    two orders of magnitude smaller)."""
    model = Path(a.model) if a.model else ensure_model(a.cache)
    cache = model.parent
    work = cache / "fit"
    work.mkdir(exist_ok=True)
    modes = [("no_imatrix", None)]
    if (cache / "imatrix.gguf").exists() and not a.no_imatrix:
        modes.append(("imatrix", load_imatrix(cache / "imatrix.gguf")))
    out = {"model": str(model), "tokens": 0, "types": [q.ggml_name for q in FIT_TYPES], "modes": {}}
    for label, im in modes:
        base = work / f"q8-{label}.gguf"
        cv.convert(model, base, "Q8_0", cv.Options(imatrix=im, force=True))
        ev = LlamaEval(base)
        chunks = chunks_of(ev.tokenize(read_text(cache / "calib.txt")), N_CTX, a.fit_tokens)
        ref_lp = [ev.chunk_logprobs(c) for c in chunks]
        ev.close()
        out["tokens"] = len(chunks) * N_CTX
        with cv.open_model(model) as ckpt:
            spec = cv.build_spec(ckpt, model, vocab=False)
            plan = cv.plan_from_spec(spec, parse_ftype("Q8_0"), None, im)
            curves = automix.measure(ckpt, spec, plan, None, im)
        rows = []
        layers = None if not a.fit_layers else {int(x) for x in a.fit_layers.split(",")}
        out["n_layer"] = spec.n_layer
        for c in curves:
            if c.fixed:
                continue
            m = re.match(r"blk\.(\d+)\.", c.name)
            if m and layers is not None and int(m.group(1)) not in layers:
                continue
            if a.fit_kinds and c.kind not in a.fit_kinds.split(","):
                continue
            for q in [q for q in FIT_TYPES if q in c.types][:1]:
                path = work / "one.gguf"
                cv.convert(model, path, "Q8_0", cv.Options(imatrix=im, type_map={c.name: q}, force=True))
                ev = LlamaEval(path)
                kl = 0.0
                n = 0
                for ch, lp0 in zip(chunks, ref_lp):
                    lp = ev.chunk_logprobs(ch)
                    kl += float((np.exp(lp0) * (lp0 - lp)).sum())
                    n += lp0.shape[0]
                ev.close()
                rel = c.rel[c.index(q)] - c.rel[c.index(QType.Q8_0)]
                # a tied token_embd's KL is its two roles' damage together: kept out of token_embd's constant
                kind = c.kind + "_tied" if c.input_rel is not None else c.kind
                rows.append({"name": c.name, "kind": kind, "type": q.ggml_name, "kl": kl / n, "rel": rel,
                             "sens": (kl / n) / rel if rel > 0 else None, "n": int(np.prod(c.shape))})
                log(f"[{label}] {c.name:28s} {q.ggml_name}: KL {kl / n:.3e} rel {rel:.3e} KL/rel {rows[-1]['sens']:.3g}")
        kinds = sorted({r["kind"] for r in rows})
        med = {k: float(np.median([r["sens"] for r in rows if r["kind"] == k])) for k in kinds}
        norm = float(np.median([med[k] for k in ("attn_output", "ffn_down") if k in med])) if med else 1.0
        out["modes"][label] = {"rows": rows, "median_kl_per_rel": med,
                               "relative": {k: v / norm for k, v in med.items()}}
        log(f"[{label}] sensitivity relative to attn_output/ffn_down: "
            + ", ".join(f"{k} {v / norm:.2f}" for k, v in med.items()))
    out["table"] = fit_table([out])
    return out


BLOCK_KINDS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def fit_table(fits: list[dict]) -> dict:
    """automix's constants from --fit runs (one or more models, both modes pooled): least squares
    log KL/rel = kind + first layer x kind + last layer - depth_slope x (layer / (n_layer - 1) - 1/2)
    + one offset per (model, mode) over the per-layer tensors, the layer-count scaling (REF_LAYERS / n_layer) taken out first; the output
    matrix and token embeddings as their mean log ratio to that model's middle-layer attn_output,
    pooled and per mode (automix.SENSITIVITY_WEIGHTED: the imatrix mode's output matrix).
    The first layer gets a factor per kind: in every model fitted so far its FFN matrices (ffn_down
    most) matter several times more than in the middle layers and its attention matrices less.
    depth_slope is reported, not used by automix: on SmolLM2 (30 layers) the sensitivity falls
    ~2.6x from the first block to the last, but constants refitted with it made the mix worse
    there (README, automatic mix)."""
    nk = len(BLOCK_KINDS)
    X, y, groups_of, extra = [], [], [], []
    groups: list[tuple] = []
    for fi, f in enumerate(fits):
        for mode, v in f["modes"].items():
            g = (fi, mode)
            groups.append(g)
            rows = [r for r in v["rows"] if not r["kind"].endswith("_tied")]
            n_layer = f.get("n_layer") or 1 + max(int(m.group(1)) for r in rows if (m := re.match(r"blk\.(\d+)\.", r["name"])))
            for r in rows:
                m = re.match(r"blk\.(\d+)\.", r["name"])
                if not m:  # sensitivity_of scales all but the output matrix by REF_LAYERS / n_layer
                    scale = 1.0 if r["kind"] == "output" else automix.REF_LAYERS / n_layer
                    extra.append((g, r["kind"], math.log(r["sens"] / scale)))
                    continue
                layer = int(m.group(1))
                X.append([float(r["kind"] == k) for k in BLOCK_KINDS] + [float(layer == 0 and r["kind"] == k) for k in BLOCK_KINDS]
                         + [float(layer == n_layer - 1), layer / max(n_layer - 1, 1) - 0.5])
                y.append(math.log(r["sens"]) - math.log(automix.REF_LAYERS / n_layer))
                groups_of.append(g)
    A = np.array([row + [float(g == h) for h in groups[1:]] for row, g in zip(X, groups_of)])
    coef, *_ = np.linalg.lstsq(A, np.array(y), rcond=None)
    resid = np.array(y) - A @ coef
    offset = {groups[0]: 0.0, **{h: coef[2 * nk + 2 + i] for i, h in enumerate(groups[1:])}}
    ref = coef[BLOCK_KINDS.index("attn_output")]
    table = {k: float(math.exp(coef[i] - ref)) for i, k in enumerate(BLOCK_KINDS)}
    for kind in sorted({k for _, k, _ in extra}):
        table[kind] = float(math.exp(np.mean([v - offset[g] - ref for g, k, v in extra if k == kind])))
    first = {k: float(math.exp(coef[nk + i])) for i, k in enumerate(BLOCK_KINDS)}
    by_mode = {mode: {kind: float(math.exp(np.mean(vals))) for kind in sorted({k for _, k, _ in extra})
                      if (vals := [v - offset[g] - ref for g, k, v in extra if k == kind and g[1] == mode])}
               for mode in sorted({g[1] for g in groups})}
    return {"sensitivity": table, "sensitivity_by_mode": by_mode, "first_layer_factors": first,
            "first_layer_factor_default": float(math.exp(np.mean(coef[nk:2 * nk]))),
            "last_layer_factor": float(math.exp(coef[2 * nk])), "depth_slope": float(-coef[2 * nk + 1]),
            "residual_sd": float(resid.std())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=CACHE, help="where the trained model lives (default /tmp/kquant-tinylm)")
    ap.add_argument("--model", help="use this HF model folder instead (its parent holds heldout.txt, calib.txt, imatrix.gguf)")
    ap.add_argument("--eval-tokens", type=int, default=1 << 20, help="held-out tokens evaluated, in chunks of 128 (default: all)")
    ap.add_argument("--only", choices=("no_imatrix", "imatrix"), help="run one of the two comparisons")
    ap.add_argument("--recipes", default="Q4_K_M", help="llama.cpp file types whose sizes are matched (default Q4_K_M)")
    ap.add_argument("--fit", action="store_true", help="measure per-kind sensitivities instead (see docstring)")
    ap.add_argument("--no-imatrix", action="store_true", help="--fit: skip the imatrix mode")
    ap.add_argument("--fit-layers", metavar="I,J,..", help="--fit: only these blocks' tensors (and those outside blocks)")
    ap.add_argument("--fit-kinds", metavar="K,..", help="--fit: only tensors of these kinds (attn_v, ffn_down, output, ...)")
    ap.add_argument("--fit-tokens", type=int, default=FIT_TOKENS, help=f"--fit: calibration tokens (default {FIT_TOKENS})")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--kquant", choices=("auto", "recipe"), default="auto",
                    help="kquant's file: its automatic mix at llama.cpp's file size (default), or the same recipe")
    ap.add_argument("--rounding", choices=("ggml", "best", "refine"), default="ggml", help="kquant's rounding (default ggml)")
    ap.add_argument("--work", type=Path, help="write every file here (default: beside the model)")
    ap.add_argument("--realizations", type=int, metavar="K",
                    help="also K function-identical permuted copies of the model: mean over K+1 rounding draws")
    ap.add_argument("--fit-table", nargs="+", type=Path, metavar="FIT_JSON",
                    help="print automix's constants fitted to saved --fit --json results (pooled) and exit")
    a = ap.parse_args(argv)
    if a.fit_table:
        print(json.dumps(fit_table([json.loads(p.read_text()) for p in a.fit_table]), indent=1))
        return 0
    what = f"{a.kquant} ({a.rounding} rounding)"
    if a.realizations:
        res = realizations(a)
        if a.json:
            a.json.write_text(json.dumps(res, indent=1) + "\n")
        print(f"\nBF16 perplexity {res['bf16_ppl']:.4f}; {res['copies']} copies, {res['scored_tokens']} tokens scored each")
        for label in ("no_imatrix", "imatrix"):
            for recipe, r in res.get(label, {}).items():
                for i, c in enumerate(r["copies"]):
                    print(f"{label:10s} {recipe} copy {i}: llama.cpp ppl {c['llama_ppl']:.4f} KL {c['llama_kl']:.3e} | "
                          f"kquant {what} ppl {c['kquant_ppl']:.4f} KL {c['kquant_kl']:.3e} | NLL diff {c['nll_diff']:+.2e} "
                          f"(paired s.e. {c['nll_diff_se']:.1e})")
                print(f"{label:10s} {recipe} MEAN: NLL/token kquant - llama.cpp {r['mean_nll_diff']:+.2e} (s.e. over copies "
                      f"{r['mean_nll_diff_se']:.1e}); NLL gap to BF16 llama.cpp {r['llama_nll_gap_mean']:.3e} "
                      f"(sd {r['llama_nll_gap_sd']:.1e}), kquant {r['kquant_nll_gap_mean']:.3e} (sd {r['kquant_nll_gap_sd']:.1e}); "
                      f"gap closed {100 * r['gap_closed_mean']:.1f}%, KL {100 * r['kl_reduction_mean']:.1f}% lower")
        print("\n| recipe | imatrix | KL llama.cpp | KL kquant | KL change (copies lower) | PPL llama.cpp | PPL kquant |")
        print("|---|---|---|---|---|---|---|")
        print("\n".join(markdown_rows(res)))
        return 0
    res = fit(a) if a.fit else bench(a)
    text = json.dumps(res, indent=1, default=str)
    if a.json:
        a.json.write_text(text + "\n")
    if not a.fit:
        b = res["bf16"]["ppl"]
        print(f"\nBF16 perplexity {b:.4f} ({res['scored_tokens']} held-out tokens scored, n_ctx {N_CTX})")
        for label in ("no_imatrix", "imatrix"):
            if label not in res:
                continue
            for recipe, r in res[label].items():
                if not isinstance(r, dict):
                    continue
                q, k = r["llama"], r["kquant_auto"]
                print(f"{label:10s} {recipe}: llama.cpp ppl {q['ppl']:.4f} KL {q['kl']:.3e} ({q['file_bytes']} B) | "
                      f"kquant {what} ppl {k['ppl']:.4f} KL {k['kl']:.3e} ({k['file_bytes']} B, within budget: "
                      f"{r['within_budget']}) | ppl gap closed {100 * r['gap_closed']:.1f}%, KL {100 * r['kl_reduction']:.1f}% "
                      f"lower | NLL/token kquant - llama.cpp {r['nll_diff']:+.2e} (paired s.e. {r['nll_diff_se']:.1e}) | "
                      f"kquant {recipe} byte-identical: {r['kquant_recipe_identical']}")
            print(f"{label:10s} measuring pass {res[label]['measure_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
