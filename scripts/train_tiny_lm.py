#!/usr/bin/env python3
"""Train a tiny Llama language model on local text, for benchmarks that need a real (trained) LM.

No model can be downloaded here, so `scripts/bench_mix.py` makes one: a Llama (Hugging Face
LlamaForCausalLM layout: config.json + model.safetensors in BF16 + the Llama-2 SentencePiece
tokenizer truncated to its first VOCAB pieces) trained for a fixed number of steps on text that
ships with the machine: the Python standard library's .py files and llama.cpp's markdown docs.
Files are split by a CRC of their path into train / calibration (importance matrix) / held-out
(perplexity) sets, so the held-out text is never trained on.

It also computes an importance matrix the way llama-imatrix does (per weight matrix: the sum over
tokens of each input column's squared activation, and the token count), from the calibration
text, and writes it in llama-imatrix's GGUF format (`<name>.in_sum2`, `<name>.counts`,
imatrix.datasets / chunk_count / chunk_size), usable by llama.cpp and kquant alike.

Runs with a Python that has torch, sentencepiece and gguf (the reference venv of
scripts/setup_refconv.sh):
    /tmp/refconv/bin/python scripts/train_tiny_lm.py --out /tmp/kquant-tinylm
The model is a plain re-implementation of the HF Llama forward pass (RMSNorm, rotate-half RoPE,
GQA attention, SiLU-gated MLP) so that no transformers code runs in the training loop.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import zlib
from pathlib import Path

import numpy as np

LLAMA_CPP = Path(os.environ.get("KQUANT_LLAMA_CPP", "/tmp/sdist/llama_cpp_python-0.3.36/vendor/llama.cpp"))
ROOT = Path(__file__).resolve().parent.parent
SPM = ROOT / "fixtures" / "tokenizers" / "llama-spm"
PY_STDLIB = Path(f"/usr/lib/python{sys.version_info.major}.{sys.version_info.minor}")
SPLIT_MOD = 20  # crc32(path) % 20: 0 -> held-out, 1 -> calibration, else train
HELDOUT, CALIB = 0, 1
MAX_FILE_BYTES = 200_000  # skip huge generated files
HELDOUT_CHARS = 400_000  # text kept for perplexity
CALIB_CHARS = 200_000  # text for the importance matrix
TRAIN_CHARS = 12_000_000
IMATRIX_CHUNK = 256  # tokens per imatrix chunk (llama-imatrix: n_ctx)


def corpus_files() -> list[Path]:
    """Every text file used, in a fixed order: stdlib .py (no tests) and llama.cpp .md."""
    files = []
    for p in sorted(PY_STDLIB.rglob("*.py")):
        rel = p.relative_to(PY_STDLIB).as_posix()
        if "test" in rel or "site-packages" in rel or "dist-packages" in rel or "idle_test" in rel:
            continue
        files.append(p)
    files += sorted(LLAMA_CPP.rglob("*.md"))
    return [p for p in files if p.is_file() and 200 < p.stat().st_size <= MAX_FILE_BYTES]


def split_text() -> dict[str, str]:
    """train / calib / heldout text, each a concatenation of whole files (capped)."""
    parts = {"train": [], "calib": [], "heldout": []}
    sizes = {k: 0 for k in parts}
    caps = {"train": TRAIN_CHARS, "calib": CALIB_CHARS, "heldout": HELDOUT_CHARS}
    for p in corpus_files():
        h = zlib.crc32(str(p).encode()) % SPLIT_MOD
        key = "heldout" if h == HELDOUT else "calib" if h == CALIB else "train"
        if sizes[key] >= caps[key]:
            continue
        try:
            t = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        parts[key].append(t)
        sizes[key] += len(t)
    return {k: "\n\n".join(v) for k, v in parts.items()}


def truncated_spm(vocab: int) -> bytes:
    """The Llama-2 tokenizer.model with only its first `vocab` pieces (byte fallback keeps it complete)."""
    import gzip

    from transformers.utils import sentencepiece_model_pb2_new as pb

    m = pb.ModelProto()
    m.ParseFromString(gzip.decompress((SPM / "tokenizer.model.gz").read_bytes()))
    del m.pieces[vocab:]
    m.trainer_spec.vocab_size = vocab
    return m.SerializeToString()


# ---------------------------------------------------------------- model (HF Llama semantics)
def build_model(cfg: dict):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    H, L, V, FF = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"], cfg["intermediate_size"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = H // nh
    eps = cfg["rms_norm_eps"]

    class RMSNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(H))

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * self.weight

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.input_layernorm = RMSNorm()
            self.post_attention_layernorm = RMSNorm()
            self.q_proj = nn.Linear(H, nh * hd, bias=False)
            self.k_proj = nn.Linear(H, nkv * hd, bias=False)
            self.v_proj = nn.Linear(H, nkv * hd, bias=False)
            self.o_proj = nn.Linear(nh * hd, H, bias=False)
            self.gate_proj = nn.Linear(H, FF, bias=False)
            self.up_proj = nn.Linear(H, FF, bias=False)
            self.down_proj = nn.Linear(FF, H, bias=False)

        def forward(self, x, cos, sin):
            B, T, _ = x.shape
            h = self.input_layernorm(x)
            q = self.q_proj(h).view(B, T, nh, hd).transpose(1, 2)
            k = self.k_proj(h).view(B, T, nkv, hd).transpose(1, 2)
            v = self.v_proj(h).view(B, T, nkv, hd).transpose(1, 2)
            q = q * cos + rot(q) * sin  # HF apply_rotary_pos_emb (rotate_half)
            k = k * cos + rot(k) * sin
            k = k.repeat_interleave(nh // nkv, dim=1)
            v = v.repeat_interleave(nh // nkv, dim=1)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.o_proj(a.transpose(1, 2).reshape(B, T, nh * hd))
            h = self.post_attention_layernorm(x)
            return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))

    def rot(x):
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        return torch.cat((-x2, x1), dim=-1)

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = nn.Embedding(V, H)
            self.layers = nn.ModuleList([Block() for _ in range(L)])
            self.norm = RMSNorm()
            self.lm_head = nn.Linear(H, V, bias=False)
            inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
            self.register_buffer("inv_freq", inv, persistent=False)
            for n, p in self.named_parameters():
                if p.dim() == 2:
                    std0 = cfg.get("_init_std", 0.02)
                    std = std0 / math.sqrt(2 * L) if n.endswith(("o_proj.weight", "down_proj.weight")) else std0
                    nn.init.normal_(p, 0.0, std)
            if cfg["tie_word_embeddings"]:  # one matrix for both (HF: no lm_head.weight in the checkpoint)
                self.lm_head.weight = self.embed_tokens.weight

        def forward(self, ids):
            T = ids.shape[1]
            f = torch.outer(torch.arange(T, dtype=torch.float32), self.inv_freq)
            emb = torch.cat((f, f), dim=-1)
            cos, sin = emb.cos()[None, None], emb.sin()[None, None]
            x = self.embed_tokens(ids)
            for blk in self.layers:
                x = blk(x, cos, sin)
            return self.lm_head(self.norm(x))

    return LM()


def hf_state(model, L: int, tied: bool = False) -> dict:
    """Parameters under Hugging Face LlamaForCausalLM names."""
    sd = model.state_dict()
    out = {"model.embed_tokens.weight": sd["embed_tokens.weight"], "model.norm.weight": sd["norm.weight"]}
    if not tied:
        out["lm_head.weight"] = sd["lm_head.weight"]
    for i in range(L):
        p = f"layers.{i}."
        h = f"model.layers.{i}."
        out[h + "input_layernorm.weight"] = sd[p + "input_layernorm.weight"]
        out[h + "post_attention_layernorm.weight"] = sd[p + "post_attention_layernorm.weight"]
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out[h + f"self_attn.{n}.weight"] = sd[p + f"{n}.weight"]
        for n in ("gate_proj", "up_proj", "down_proj"):
            out[h + f"mlp.{n}.weight"] = sd[p + f"{n}.weight"]
    return out


# GGUF names of the matrices llama-imatrix sees (mul_mat src0), by module path
def gguf_name(path: str, tied: bool = False) -> str | None:
    if path == "lm_head":  # a tied model's output matrix is token_embd in llama.cpp
        return "token_embd.weight" if tied else "output.weight"
    parts = path.split(".")
    if parts[0] != "layers":
        return None
    i, n = parts[1], parts[2]
    m = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
         "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
    return f"blk.{i}.{m[n]}.weight"


def compute_imatrix(model, ids: np.ndarray, chunk: int, bos: int, out: Path, dataset: str, tied: bool = False) -> None:
    """llama-imatrix: per matrix, sum over tokens of x_j^2 (in_sum2) and the token count, over chunks."""
    import torch

    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []
    for path, mod in model.named_modules():
        name = gguf_name(path, tied) if isinstance(mod, torch.nn.Linear) else None
        if name is None:
            continue

        def hook(m, inp, _out, name=name):
            x = inp[0].detach().reshape(-1, inp[0].shape[-1]).double()
            sums[name] = sums.get(name, 0) + (x * x).sum(0)
            counts[name] = counts.get(name, 0) + x.shape[0]

        hooks.append(mod.register_forward_hook(hook))
    n_chunks = len(ids) // chunk
    with torch.no_grad():
        for c in range(n_chunks):
            seq = ids[c * chunk : (c + 1) * chunk].copy()
            seq[0] = bos  # llama-imatrix puts BOS first in every chunk
            model(torch.from_numpy(seq.astype(np.int64))[None])
    for h in hooks:
        h.remove()
    sys.path.insert(0, str(LLAMA_CPP / "gguf-py"))
    import gguf

    w = gguf.GGUFWriter(str(out), arch="imatrix")
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", [dataset])
    w.add_uint32("imatrix.chunk_count", n_chunks)
    w.add_uint32("imatrix.chunk_size", chunk)
    for name in sorted(sums):
        w.add_tensor(name + ".in_sum2", sums[name].float().numpy().reshape(1, -1))
        w.add_tensor(name + ".counts", np.array([[float(counts[name])]], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/kquant-tinylm"))
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--ffn", type=int, default=768)
    ap.add_argument("--steps", type=int, default=900)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init-std", type=float, default=0.02, help="std of the initial weight matrices")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tie", action="store_true", help="tie the output matrix to the token embeddings (as Qwen2.5-0.5B, Gemma)")
    ap.add_argument("--max-minutes", type=float, default=0,
                    help="stop early after this long (default 0: no limit, so a command line always gives the same number of steps)")
    a = ap.parse_args(argv)

    import sentencepiece as spmlib
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    model_dir = a.out / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    texts = split_text()
    for k, v in texts.items():
        (a.out / f"{k}.txt").write_text(v, encoding="utf-8")
    (model_dir / "tokenizer.model").write_bytes(truncated_spm(a.vocab))
    (model_dir / "tokenizer_config.json").write_text((SPM / "tokenizer_config.json").read_text())
    sp = spmlib.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
    bos = sp.bos_id()
    ids = {k: np.array(sp.encode(v), dtype=np.int32) for k, v in texts.items()}
    print("tokens: " + ", ".join(f"{k} {len(v)}" for k, v in ids.items()) + f" ({time.time() - t0:.0f}s)", flush=True)

    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": a.hidden,
        "intermediate_size": a.ffn, "num_hidden_layers": a.layers, "num_attention_heads": a.heads,
        "num_key_value_heads": a.kv_heads, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "vocab_size": a.vocab, "bos_token_id": 1, "eos_token_id": 2,
        "tie_word_embeddings": a.tie, "torch_dtype": "bfloat16", "hidden_act": "silu",
    }
    model = build_model(dict(cfg, _init_std=a.init_std))
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95), weight_decay=0.1)
    warm = max(1, a.steps // 20)
    rng = np.random.default_rng(a.seed)
    train = ids["train"]
    hist = []
    t1 = time.time()
    for step in range(a.steps):
        lr = a.lr * (step + 1) / warm if step < warm else a.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * (step - warm) / max(1, a.steps - warm))))
        for g in opt.param_groups:
            g["lr"] = lr
        off = rng.integers(0, len(train) - a.seq - 1, size=a.batch)
        batch = torch.from_numpy(np.stack([train[o : o + a.seq + 1] for o in off]).astype(np.int64))
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, a.vocab), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        hist.append(loss.item())
        if step % 50 == 0 or step == a.steps - 1:
            el = time.time() - t1
            print(f"step {step:5d} loss {np.mean(hist[-50:]):.3f} lr {lr:.2e} {el:.0f}s "
                  f"{(step + 1) * a.batch * a.seq / el:.0f} tok/s", flush=True)
        if a.max_minutes and time.time() - t1 > a.max_minutes * 60:
            print(f"time limit: stopped after {step + 1} steps", flush=True)
            break
    model.eval()
    with torch.no_grad():  # held-out loss in torch, 256-token chunks (a cross-check for llama.cpp's numbers)
        h = ids["heldout"][: (len(ids["heldout"]) // 256) * 256].reshape(-1, 256)[:32]
        lg = model(torch.from_numpy(h.astype(np.int64)))
        nll = torch.nn.functional.cross_entropy(lg[:, 128:-1].reshape(-1, a.vocab), torch.from_numpy(h[:, 129:].astype(np.int64)).reshape(-1))
    print(f"held-out ppl (torch, fp32, 2nd half of 256-token chunks): {math.exp(nll.item()):.3f}", flush=True)
    sd = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in hf_state(model, a.layers, a.tie).items()}
    save_file(sd, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    (model_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    # the imatrix from the BF16 weights the GGUF will hold
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(p.to(torch.bfloat16).float())
    compute_imatrix(model, ids["calib"], IMATRIX_CHUNK, bos, a.out / "imatrix.gguf", "calib.txt", a.tie)
    info = {"steps": len(hist), "final_loss": float(np.mean(hist[-50:])), "seconds": time.time() - t0,
            "heldout_ppl_torch": math.exp(nll.item()), "config": cfg, "args": {k: str(v) for k, v in vars(a).items()}}
    (a.out / "train_info.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"saved {model_dir} and {a.out / 'imatrix.gguf'} in {time.time() - t0:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
