#!/usr/bin/env python3
"""Build fixtures/tiny-llama: a tiny Llama checkpoint as Hugging Face would ship it.

config.json (LlamaForCausalLM, GQA), model.safetensors (BF16, heavy-tailed random weights with
a fixed seed), tokenizer.model (the Llama SentencePiece vocabulary from
fixtures/tokenizers/llama-spm, truncated to its first VOCAB pieces: byte fallback keeps it
complete) and tokenizer_config.json. Used by `kquant demo` and the tests.

    .venv/bin/python scripts/make_tiny_model.py [--out fixtures/tiny-llama] [--layers 2] [--hidden 256]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from kquant.io.safetensors import write_safetensors  # noqa: E402
from kquant.vocab import read_spm_model  # noqa: E402
from make_tokenizer_fixtures import spm_model  # noqa: E402

SPM = ROOT / "fixtures" / "tokenizers" / "llama-spm"


def heavy(rng, shape, scale):
    """Student-t (df 4) weights: heavy tails like trained checkpoints."""
    return (rng.standard_t(4, size=shape) * scale).astype(np.float32)


def make(out: Path, *, layers: int, hidden: int, heads: int, kv_heads: int, ffn: int, vocab: int,
         seed: int, tied: bool = False, tokenizer_config: bool = True) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "tokenizer.model"
        p.write_bytes(gzip.decompress((SPM / "tokenizer.model.gz").read_bytes()))
        pieces = read_spm_model(p).pieces[:vocab]
    (out / "tokenizer.model").write_bytes(spm_model(pieces))
    if tokenizer_config:
        tc = json.loads((SPM / "tokenizer_config.json").read_text())
        (out / "tokenizer_config.json").write_text(json.dumps(tc, indent=2) + "\n")
    head_dim = hidden // heads
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "vocab_size": vocab,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": tied,
        "torch_dtype": "bfloat16",
        "hidden_act": "silu",
    }
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    rng = np.random.default_rng(seed)
    t = {"model.embed_tokens.weight": heavy(rng, (vocab, hidden), 0.02),
         "model.norm.weight": (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32)}
    if not tied:
        t["lm_head.weight"] = heavy(rng, (vocab, hidden), 0.02)
    for i in range(layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32)
        t[p + "post_attention_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32)
        t[p + "self_attn.q_proj.weight"] = heavy(rng, (heads * head_dim, hidden), 0.03)
        t[p + "self_attn.k_proj.weight"] = heavy(rng, (kv_heads * head_dim, hidden), 0.03)
        t[p + "self_attn.v_proj.weight"] = heavy(rng, (kv_heads * head_dim, hidden), 0.03)
        t[p + "self_attn.o_proj.weight"] = heavy(rng, (hidden, heads * head_dim), 0.03)
        t[p + "mlp.gate_proj.weight"] = heavy(rng, (ffn, hidden), 0.03)
        t[p + "mlp.up_proj.weight"] = heavy(rng, (ffn, hidden), 0.03)
        t[p + "mlp.down_proj.weight"] = heavy(rng, (hidden, ffn), 0.03)
    write_safetensors(out / "model.safetensors", t, dtype="BF16")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "fixtures" / "tiny-llama")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--ffn", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--tied", action="store_true")
    a = ap.parse_args(argv)
    make(a.out, layers=a.layers, hidden=a.hidden, heads=a.heads, kv_heads=a.kv_heads, ffn=a.ffn, vocab=a.vocab,
         seed=a.seed, tied=a.tied)
    size = sum(f.stat().st_size for f in a.out.iterdir())
    print(f"{a.out}: {size / 1e6:.2f} MB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
