"""kquant.models: HF folder -> ModelSpec, checked against llama.cpp's convert_hf_to_gguf.py itself.

The fast tests build tiny checkpoints (random heavy-tailed weights) and check names, shapes,
order, transforms and the strict input validation. `test_matches_convert_hf_to_gguf`
(tests/test_arch_reference.py, a module of its own so pytest-xdist runs it beside this one) runs the
vendored convert_hf_to_gguf.py --outtype bf16 (in the venv named by KQUANT_REFCONV_PYTHON, made
by scripts/setup_refconv.sh) on the same checkpoints and requires equal metadata (keys, order,
types, values), equal tensor names/shapes/order/types and byte-equal tensor data.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import struct
import sys
from collections.abc import Sequence
from pathlib import Path

import numba
import numpy as np

from oracle import refpipeline
import pytest

from kquant import vocab as V
from kquant.models import load_spec, supported_architectures
from kquant.models.llama import qk_permutation
from kquant.errors import InputError, UnsupportedError
from kquant.io.gguf_kv import StringArray
from kquant.types import QType

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures" / "tokenizers"
# Test vocabularies standing in for real ones that cannot be had here, by get_vocab_base_pre hash: the
# name is registered with kquant and with the reference converter (refconv_server.py), as
# convert_hf_to_gguf_update.py would register the real vocabulary's hash. Each side computes the
# fixture's hash itself (the converter through tiktoken and the fixture's remote code).
# kimi-k2: fixtures/tokenizers/kimi-k2 (Llama 3's first 3840 tiktoken ranks, Kimi K2's special
# tokens and TikTokenTokenizer); Kimi K2's own tiktoken.model hashes to 81212dc7...
EXTRA_PRE_HASHES = refpipeline.PRE_HASHES  # every reference conversion of this process recognises them
EXTRA_PRE_HASHES["9b73982de481c38c01361939695a11999da14d069555dff5d0d5cb93fdc449f5"] = "kimi-k2"
V.PRE_TOKENIZER_HASHES.update(EXTRA_PRE_HASHES)
LLAMA_CPP = refpipeline.llama_cpp_dir() or refpipeline.REFCONV_DIR / "llama.cpp"  # scripts/setup_refconv.sh
REFCONV_PYTHON = refpipeline.refconv_python()


# ---------------------------------------------------------------------------------------------
# tiny checkpoints


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bf16 bits (gguf-py quants.py __quantize_bf16_array)."""
    n = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    out = np.empty(n.shape, dtype=np.uint16)
    _f32_to_bf16_bits(n.reshape(-1), out.reshape(-1))
    return out


@numba.njit(cache=True)
def _f32_to_bf16_bits(n, out):
    """One pass (the numpy form's six passes over 100 MB tensors took seconds a comparison)."""
    for i in range(n.size):
        v = n[i]
        if (v & 0x7FFFFFFF) > 0x7F800000:  # NaN: quieted, truncated
            out[i] = ((v & 0xFFFF0000) | (64 << 16)) >> 16
        else:
            out[i] = (np.uint64(v) + 0x7FFF + ((v >> 16) & 1)) >> 16


def bf16_bits_to_f32(b: np.ndarray) -> np.ndarray:
    x = b.astype(np.uint32)
    x <<= np.uint32(16)  # in place: one 4-byte copy of a 100 MB expert stack, not two
    return x.view(np.float32)


def write_safetensors(path: Path, tensors: dict[str, tuple[np.ndarray, str]]) -> None:
    """Write {name: (float32 values, "BF16"|"F16"|"F32"), or (uint8 values, "U8")} as a safetensors file."""
    header, blobs, off = {}, [], 0
    for name, (x, dt) in tensors.items():
        if dt == "U8":
            raw = np.ascontiguousarray(x, dtype=np.uint8).tobytes()
        elif dt == "BF16":
            raw = f32_to_bf16_bits(x).tobytes()
        elif dt == "F16":
            raw = x.astype(np.float16).tobytes()
        else:
            raw = x.astype(np.float32).tobytes()
        header[name] = {"dtype": dt, "shape": list(x.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """float32 values of every tensor (as torch upcasts them)."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    hdr = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, m in hdr.items():
        if name == "__metadata__":
            continue
        a, b = m["data_offsets"]
        raw = data[base + a: base + b]
        if m["dtype"] == "U8":
            x = np.frombuffer(raw, dtype=np.uint8).copy()
        elif m["dtype"] == "BF16":
            x = bf16_bits_to_f32(np.frombuffer(raw, dtype=np.uint16))
        elif m["dtype"] == "F16":
            x = np.frombuffer(raw, dtype=np.float16).astype(np.float32)
        else:
            x = np.frombuffer(raw, dtype=np.float32).copy()
        out[name] = x.reshape(m["shape"])
    return out


def install_tokenizer(name: str, dst: Path) -> None:
    for p in (FIXTURES / name).iterdir():
        if p.suffix == ".gz":
            (dst / p.stem).write_bytes(gzip.decompress(p.read_bytes()))
        else:
            shutil.copy(p, dst / p.name)


# Trimmed vocabularies. The cases using the tokenizers in TRIM_PRE carry them cut to their first TRIM_KEEP
# tokens plus their added tokens (renumbered to follow; `trim_vocabulary`), but for the cases in TRIM_FULL: the
# same BPE path, pre-tokenizer, added and special tokens at a fraction of the work (a 50k-150k-row embedding
# was 90-99% of a tiny checkpoint's bytes and most of each reference conversion, compare, llama_quantize and
# llama.cpp run). A trimmed tokenizer's get_vocab_base_pre hash is registered under its full tokenizer's name
# on both sides (EXTRA_PRE_HASHES; kquant computes it here, the converter recomputes it through transformers);
# the TRIM_FULL cases keep the real tokenizers and their real hashes (as test_vocab does).
TRIM_KEEP = 1024
TRIM_PRE = {"gpt-2": "gpt-2", "glm4": "qwen2", "llama-bpe": "llama-bpe"}  # tokenizer -> the pre-tokenizer name of its real hash
TRIM_FULL = {"gpt2", "olmo2", "glm4", "llama3"}
_TRIMMED: dict[str, tuple[str, str, dict[int, int], int, int]] = {}


def trim_vocabulary(tj: dict, tc: dict, keep: int) -> tuple[dict, dict, dict[int, int], int, int]:
    """tokenizer.json `tj` and tokenizer_config.json `tc` cut to the BPE vocabulary's first `keep` tokens
    (byte-level: the 256 byte tokens among them) and the merges among those, the added tokens at or past
    `keep` (and tokenizer_config's added_tokens_decoder ids) renumbered in order from `keep`. Returns
    (tokenizer.json, tokenizer_config.json, {old id: new id}, old length, new length), the lengths
    counting the added tokens (ids past the old length map to the same distance past the new one)."""
    tj, tc = json.loads(json.dumps(tj)), json.loads(json.dumps(tc))
    vocab = tj["model"]["vocab"]
    high = sorted({a["id"] for a in tj["added_tokens"] if a["id"] >= keep}
                  | {int(i) for i in tc.get("added_tokens_decoder", {}) if int(i) >= keep})
    idmap = {old: keep + k for k, old in enumerate(high)}
    old_len = max([*vocab.values(), *high]) + 1
    kept = {t: i for t, i in vocab.items() if i < keep}
    assert len(kept) == keep
    pairs = [m.split(" ", 1) if isinstance(m, str) else m for m in tj["model"]["merges"]]
    tj["model"]["merges"] = [m for m, (a, b) in zip(tj["model"]["merges"], pairs) if a in kept and b in kept and a + b in kept]
    tj["model"]["vocab"] = kept
    for a in tj["added_tokens"]:
        a["id"] = idmap.get(a["id"], a["id"])

    def remap_ids(o):
        if isinstance(o, dict):
            return {k: ([idmap.get(i, i) for i in v] if k == "ids" else remap_ids(v)) for k, v in o.items()}
        return [remap_ids(v) for v in o] if isinstance(o, list) else o

    tj["post_processor"] = remap_ids(tj.get("post_processor"))
    if "added_tokens_decoder" in tc:
        tc["added_tokens_decoder"] = {str(idmap.get(int(i), int(i))): d for i, d in tc["added_tokens_decoder"].items()}
    return tj, tc, idmap, old_len, keep + len(high)


def trimmed_tokenizer(tok: str) -> tuple[str, str, dict[int, int], int, int]:
    """The trimmed tokenizer.json and tokenizer_config.json text of fixture `tok` (its tokenizer.json; GLM's
    cases write theirs, glm_tokenizer_json), the id map and the old and new lengths; its hash registered
    (EXTRA_PRE_HASHES, kquant's table) on first use."""
    if tok not in _TRIMMED:
        import tempfile

        src = (glm_tokenizer_json() if tok == "glm4"
               else gzip.decompress((FIXTURES / tok / "tokenizer.json.gz").read_bytes()).decode())
        tj, tc, idmap, old_len, new_len = trim_vocabulary(
            json.loads(src), json.loads((FIXTURES / tok / "tokenizer_config.json").read_text()), TRIM_KEEP)
        texts = (json.dumps(tj, ensure_ascii=False), json.dumps(tc, ensure_ascii=False, indent=2))
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "tokenizer.json").write_text(texts[0])
            (Path(d) / "tokenizer_config.json").write_text(texts[1])
            name, chkhsh = V.bpe.vocab_base_pre(V.HFTokenizer(Path(d), "gpt2"))
        assert name is None or name == TRIM_PRE[tok], (tok, name)
        EXTRA_PRE_HASHES[chkhsh] = TRIM_PRE[tok]
        V.PRE_TOKENIZER_HASHES[chkhsh] = TRIM_PRE[tok]
        _TRIMMED[tok] = (*texts, idmap, old_len, new_len)
    return _TRIMMED[tok]


def register_trimmed_tokenizers() -> None:
    """Every trimmed tokenizer's hash, registered in this process (a worker converting checkpoints another built)."""
    for tok in TRIM_PRE:
        trimmed_tokenizer(tok)


def trim_checkpoint(cfg: dict, tensors: dict, idmap: dict[int, int], old_len: int, new_len: int) -> tuple[dict, dict]:
    """A case's config (any nesting) and tensors for its trimmed tokenizer: vocabulary-sized rows and
    `*vocab_size` keys past the old length keep their distance past the new one, token ids (keys ending in
    token_id(s) / token_index) follow the id map (a regular token cut away: one kept, id mod the tokens kept)."""
    keep = new_len - len(idmap)

    def rows(n):
        assert n >= old_len, f"{n} rows: inside the trimmed vocabulary"
        return new_len + n - old_len

    def tid(i):
        if isinstance(i, list):
            return [tid(j) for j in i]
        if not isinstance(i, int) or isinstance(i, bool) or i < keep:
            return i
        if i in idmap:
            return idmap[i]
        return rows(i) if i >= old_len else i % keep  # a regular token cut away: one kept

    def walk(o):
        if isinstance(o, list):
            return [walk(v) for v in o]
        if not isinstance(o, dict):
            return o
        out = {}
        for k, v in o.items():
            if k.endswith("vocab_size") and isinstance(v, int) and v >= old_len:
                out[k] = rows(v)
            elif k.endswith(("token_id", "token_ids", "token_index")):
                out[k] = tid(v)
            else:
                out[k] = walk(v)
        return out

    t2 = {}
    for name, (x, dt) in tensors.items():
        assert all(n < old_len for n in x.shape[1:]), (name, x.shape)
        t2[name] = (x[:rows(x.shape[0])], dt) if x.shape and x.shape[0] >= old_len else (x, dt)
    return walk(cfg), t2


_POOL_SIZE = 1 << 20
_POOL: list[np.ndarray] = []


def heavy(rng, shape, scale=0.02) -> np.ndarray:
    """Heavy-tailed weights (log-normal scale mixture of normals) so bf16 rounding and outliers are exercised.

    Large tensors tile a random rotation of a 1M-value pool (fast; rows still differ)."""
    n = int(np.prod(shape))
    if n <= _POOL_SIZE // 4:
        z = rng.standard_normal(n, dtype=np.float32)
        z *= np.exp(rng.standard_normal(n, dtype=np.float32) * np.float32(0.8))
    else:
        if not _POOL:
            g = np.random.default_rng(1234)
            _POOL.append(g.standard_normal(_POOL_SIZE, dtype=np.float32)
                         * np.exp(g.standard_normal(_POOL_SIZE, dtype=np.float32) * np.float32(0.8)))
        z = np.resize(np.roll(_POOL[0], -int(rng.integers(_POOL_SIZE))), n)
    return (z * np.float32(scale)).reshape(shape)


def dense_tensors(rng, c: dict, *, qk_norm=False, qkv_bias=False, o_bias=False, mlp_bias=False, gemma2_norms=False,
                  lm_head=True, dt="BF16", norm_dt=None, layer_range=None) -> dict[str, tuple[np.ndarray, str]]:
    """Tensors of a llama-like decoder with config `c`."""
    e, ff, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    nh, nkv = c["num_attention_heads"], c.get("num_key_value_heads") or c["num_attention_heads"]
    hd = c.get("head_dim") or e // nh
    nd = norm_dt or dt
    t = {"model.embed_tokens.weight": (heavy(rng, (v, e)), dt), "model.norm.weight": (1 + heavy(rng, (e,), 0.1), nd)}
    if lm_head:
        t["lm_head.weight"] = (heavy(rng, (v, e)), dt)
    for i in layer_range if layer_range is not None else range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = (1 + heavy(rng, (e,), 0.1), nd)
        t[p + "post_attention_layernorm.weight"] = (1 + heavy(rng, (e,), 0.1), nd)
        if gemma2_norms:
            t[p + "pre_feedforward_layernorm.weight"] = (heavy(rng, (e,), 0.1), nd)
            t[p + "post_feedforward_layernorm.weight"] = (heavy(rng, (e,), 0.1), nd)
        t[p + "self_attn.q_proj.weight"] = (heavy(rng, (nh * hd, e)), dt)
        t[p + "self_attn.k_proj.weight"] = (heavy(rng, (nkv * hd, e)), dt)
        t[p + "self_attn.v_proj.weight"] = (heavy(rng, (nkv * hd, e)), dt)
        t[p + "self_attn.o_proj.weight"] = (heavy(rng, (e, nh * hd)), dt)
        if qkv_bias:
            t[p + "self_attn.q_proj.bias"] = (heavy(rng, (nh * hd,)), dt)
            t[p + "self_attn.k_proj.bias"] = (heavy(rng, (nkv * hd,)), dt)
            t[p + "self_attn.v_proj.bias"] = (heavy(rng, (nkv * hd,)), dt)
        if o_bias:
            t[p + "self_attn.o_proj.bias"] = (heavy(rng, (e,)), dt)
        if qk_norm:
            t[p + "self_attn.q_norm.weight"] = (1 + heavy(rng, (hd,), 0.1), nd)
            t[p + "self_attn.k_norm.weight"] = (1 + heavy(rng, (hd,), 0.1), nd)
        if "moe" not in c:
            t[p + "mlp.gate_proj.weight"] = (heavy(rng, (ff, e)), dt)
            t[p + "mlp.up_proj.weight"] = (heavy(rng, (ff, e)), dt)
            t[p + "mlp.down_proj.weight"] = (heavy(rng, (e, ff)), dt)
            if mlp_bias:
                t[p + "mlp.gate_proj.bias"] = (heavy(rng, (ff,)), dt)
                t[p + "mlp.up_proj.bias"] = (heavy(rng, (ff,)), dt)
                t[p + "mlp.down_proj.bias"] = (heavy(rng, (e,)), dt)
        t[p + "self_attn.rotary_emb.inv_freq"] = (np.arange(hd // 2, dtype=np.float32), "F32")  # dropped upstream
    return t


def base_config(arch: str, model_type: str, vocab: int, **kw) -> dict:
    c = {"architectures": [arch], "model_type": model_type, "hidden_size": 128, "intermediate_size": 160,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": vocab,
         "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "torch_dtype": "bfloat16"}
    c.update(kw)
    return {k: v for k, v in c.items() if v is not None}


# transformers 5.x save_pretrained, as far as the converter can see it (transformers 5.25
# configuration_utils.py / modeling_rope_utils.py RotaryEmbeddingConfigMixin, and the config classes'
# __post_init__ / convert_rope_params_to_dict / attribute_map)
_T5_DEFAULT_THETA = {"mixtral": 1e6, "gemma3_text": 1e6, "minimax_m2": 5e6}
_T5_RENAMED = {"mixtral": {"num_experts": "num_local_experts"}, "qwen3_moe": {"num_experts": "num_local_experts"}}
# (bos, eos, pad) token id defaults, written out by save_pretrained; gguf-py's SpecialVocab reads them
# from config.json itself (the same defaults as transformers 4.57.6's classes)
_T5_TOKEN_IDS = {"llama": (1, 2, None), "mistral": (1, 2, None), "mixtral": (1, 2, None), "gemma": (2, 1, 0),
                 "gemma2": (2, 1, 0), "gemma3_text": (2, 1, 0), "phi3": (1, 32000, 32000),
                 "smollm3": (128000, 128001, 128004), "olmo2": (None, 50279, 1), "olmo3": (None, 50279, 1),
                 "granite": (1, 2, None), "seed_oss": (0, 2, 1), "exaone4": (0, 2, None), "starcoder2": (50256, 50256, None),
                 "stablelm": (0, 0, None), "cohere": (5, 255001, 0), "cohere2": (5, 255001, 0),
                 "apertus": (1, 2, 3), "olmo": (None, 50279, 1), "gpt2": (50256, 50256, None),
                 "gpt_bigcode": (50256, 50256, None), "gpt_neox": (0, 2, None), "falcon": (11, 11, None),
                 "granitemoe": (1, 2, None), "granitemoeshared": (1, 2, None),
                 "olmoe": (None, 50279, 1), "phimoe": (1, 2, None), "hunyuan_v1_dense": (1, 2, 0), "dots1": (None, None, None)}


def as_transformers5(cfg: dict) -> dict:
    """The config.json transformers 5 writes for a model whose transformers 4 config.json is `cfg`
    (a multimodal config: its text_config rewritten as the text class writes it)."""
    if "text_config" in cfg:
        c = json.loads(json.dumps(cfg))
        if "torch_dtype" in c:
            c.setdefault("dtype", c.pop("torch_dtype"))
        c["text_config"] = as_transformers5(c["text_config"])
        del c["text_config"]["transformers_version"]
        c["transformers_version"] = "5.25.0"
        return c
    c = json.loads(json.dumps(cfg))
    mt = c["model_type"]
    if "torch_dtype" in c:
        c.setdefault("dtype", c.pop("torch_dtype"))
    if mt == "gemma4_text":  # no 4.x class: Google's keys; transformers 5's Gemma4TextConfig moves the full layers'
        # head size (and their KV heads when keys double as values and the count differs) into per_layer_config
        g_hd, g_kv = c.pop("global_head_dim", 512), c.pop("num_global_key_value_heads", None)
        over = {"head_dim": g_hd}
        if c.get("attention_k_eq_v") and g_kv is not None and g_kv != c.get("num_key_value_heads"):
            over["num_key_value_heads"] = g_kv
        c["per_layer_config"] = {str(i): over for i, t in enumerate(c["layer_types"]) if t == "full_attention"}
        c["transformers_version"] = "5.25.0"
        return c
    if mt == "step3p5":  # transformers 5's Step3p5Config renames StepFun's keys (num_attention_groups, moe_num_experts,
        # ...), which the converter cannot read: a release keeps its own; only dtype and the version change
        c["transformers_version"] = "5.25.0"
        return c
    for old, new in _T5_RENAMED.get(mt, {}).items():
        if old in c:
            c[new] = c.pop(old)
    theta = c.pop("rope_theta", _T5_DEFAULT_THETA.get(mt, 10000.0))
    rp = c.pop("rope_scaling", None) or c.pop("rope_parameters", None) or {}
    if mt == "gemma3_text":  # Gemma3TextConfig.convert_rope_params_to_dict: one dict per layer type
        full = {"rope_type": "default", **rp}
        full.setdefault("rope_theta", theta)
        rp = {"full_attention": full,
              "sliding_attention": {"rope_type": "default", "rope_theta": c.pop("rope_local_base_freq", 10000.0)}}
        layers = list(rp.values())
    else:
        rp.setdefault("rope_theta", theta)
        if mt == "phi3":  # Phi3Config.convert_rope_params_to_dict
            rp.setdefault("partial_rotary_factor", c.get("partial_rotary_factor", 1.0))
            if rp.get("rope_type", rp.get("type")) in ("su", "yarn"):
                rp["rope_type"] = "longrope"
        elif "partial_rotary_factor" in c:
            rp.setdefault("partial_rotary_factor", c.pop("partial_rotary_factor"))
        layers = [rp]
    for d in layers:  # standardize_rope_params
        d.setdefault("rope_type", d.get("type", "default"))
        if d["rope_type"] in ("llama3", "yarn", "longrope"):
            if "original_max_position_embeddings" in c or mt == "phi3":
                d["original_max_position_embeddings"] = c.get("original_max_position_embeddings", 4096)
            else:
                d.setdefault("original_max_position_embeddings", c["max_position_embeddings"])
    c["rope_parameters"] = rp
    # __post_init__ rewrites written back by save_pretrained
    if mt in ("llama", "mistral") and c.get("head_dim") is None:
        c["head_dim"] = c["hidden_size"] // c["num_attention_heads"]
    if mt == "mixtral":
        c.setdefault("head_dim", None)
    if mt in ("deepseek_v2", "deepseek_v3", "deepseek_v32"):  # DeepseekV2Config / DeepseekV3Config.__post_init__
        c["qk_head_dim"] = c["qk_nope_head_dim"] + c["qk_rope_head_dim"]
        c["head_dim"] = c["qk_rope_head_dim"]
    if mt in ("qwen2", "qwen3", "qwen3_moe", "qwen2_moe") and not c.get("use_sliding_window", False):
        c["sliding_window"] = 0 if mt == "qwen2_moe" else None
    if mt in ("gemma", "gemma2"):
        c.setdefault("use_bidirectional_attention", None)
    if mt == "gemma3_text":
        c["_sliding_window_pattern"] = c.get("sliding_window_pattern", 6)
    for k, v in zip(("bos_token_id", "eos_token_id", "pad_token_id"), _T5_TOKEN_IDS.get(mt, (None, None, None))):
        c.setdefault(k, v)
    if mt == "nemotron_h":  # NemotronHConfig.__post_init__: the pattern as a list (dense and MoE alike)
        kinds = {"M": "linear_attention", "E": "moe", "*": "full_attention", "-": "mlp"}
        c["layers_block_type"] = [kinds[k] for k in c.pop("hybrid_override_pattern")]
        c.pop("num_hidden_layers")  # a property (len(layers_block_type)), not saved
        if "num_experts_per_tok" in c:
            c["mtp_layers_block_type"] = [kinds[k] for k in c.pop("mtp_hybrid_override_pattern", "*E")]
    c["transformers_version"] = "5.25.0"
    return c


WRITERS = {"t4": lambda c: c, "t5": as_transformers5}  # config.json as transformers 4.x / 5.x writes it

# (case, writer) -> {metadata key: check(converter's value, kquant's value)}: where kquant writes a file llama.cpp
# loads and convert_hf_to_gguf.py does not. A dense Nemotron-H saved by transformers 5 (a layers_block_type list
# with "mlp" entries): NemotronHModel counts only "moe" entries as MLP layers (_MLP_LAYER_TYPES), so it writes
# feed_forward_length 0 for every layer; llama.cpp then takes the MLP layers for recurrent ones and refuses the
# file (test_arch_reference checks that). kquant writes the MLP layers' length, as for the pattern string.
DIVERGES = {("nemotron-h", "t5"): {"nemotron_h.feed_forward_length": lambda ref, ours: not any(ref) and any(ours)}}


def case_llama3(rng):
    c = base_config("LlamaForCausalLM", "llama", 128256, hidden_size=128, num_attention_heads=2, num_key_value_heads=1,
                    rope_theta=500000.0, max_position_embeddings=131072, tie_word_embeddings=True,
                    rope_scaling={"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 8192, "rope_type": "llama3"},
                    bos_token_id=128000, eos_token_id=[128001, 128008, 128009])
    files = {"README.md": "---\nlicense: llama3.2\nbase_model: meta-llama/Llama-3.2-1B\ntags:\n- facebook\n- meta\n"
                          "language:\n- en\n- de\n---\n# Tiny\n",
             "generation_config.json": json.dumps({"bos_token_id": 128000, "do_sample": True, "temperature": 0.6,
                                                   "top_p": 0.9, "eos_token_id": [128001, 128009]})}
    return c, dense_tensors(rng, c, lm_head=False), "llama-bpe", files


def case_llama2(rng):
    c = base_config("LlamaForCausalLM", "llama", 32000, attention_bias=True, mlp_bias=True, rope_scaling={"type": "linear", "factor": 2.0},
                    bos_token_id=1, eos_token_id=2, max_position_embeddings=4096, num_key_value_heads=None)
    c["num_key_value_heads"] = 4
    return c, dense_tensors(rng, c, qkv_bias=True, o_bias=True, mlp_bias=True), "llama-spm", {}


def case_mistral(rng):
    # no head_dim / num_key_value_heads: MistralConfig defaults apply (head_dim None, 8 kv heads)
    c = base_config("MistralForCausalLM", "mistral", 32000, num_attention_heads=8, num_key_value_heads=None,
                    sliding_window=None, bos_token_id=1, eos_token_id=2)
    t = dense_tensors(rng, {**c, "num_key_value_heads": 8}, dt="F16", norm_dt="F32")
    return c, t, "llama-spm", {}


def case_mixtral(rng):
    c = base_config("MixtralForCausalLM", "mixtral", 32000, num_local_experts=3, num_experts_per_tok=2,
                    rope_theta=1e6, bos_token_id=1, eos_token_id=2)
    c2 = {**c, "moe": True}
    t = dense_tensors(rng, c2)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}.block_sparse_moe."
        t[p + "gate.weight"] = (heavy(rng, (3, 128)), "BF16")
        for x in range(3):
            t[p + f"experts.{x}.w1.weight"] = (heavy(rng, (160, 128)), "BF16")
            t[p + f"experts.{x}.w2.weight"] = (heavy(rng, (128, 160)), "BF16")
            t[p + f"experts.{x}.w3.weight"] = (heavy(rng, (160, 128)), "BF16")
    return c, t, "llama-spm", {}


def case_qwen2(rng):
    c = base_config("Qwen2ForCausalLM", "qwen2", 151936, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                    max_position_embeddings=32768, use_sliding_window=False, sliding_window=32768, max_window_layers=2,
                    bos_token_id=151643, eos_token_id=151645)
    return c, dense_tensors(rng, c, qkv_bias=True, lm_head=False), "qwen2", {}


def case_qwen3(rng):
    c = base_config("Qwen3ForCausalLM", "qwen3", 50257, head_dim=48, rope_theta=1000000.0, rms_norm_eps=1e-6,
                    tie_word_embeddings=False, max_position_embeddings=40960, bos_token_id=50256, eos_token_id=50256,
                    rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768})
    files = {"README.md": "---\nlicense: apache-2.0\nlicense_link: https://huggingface.co/Qwen/Qwen3-0.6B/blob/main/LICENSE\n"
                          "pipeline_tag: text-generation\nbase_model:\n- Qwen/Qwen3-0.6B-Base\n---\n"}
    return c, dense_tensors(rng, c, qk_norm=True, dt="F32"), "gpt-2", files


def case_qwen2moe(rng):
    c = base_config("Qwen2MoeForCausalLM", "qwen2_moe", 50257, num_experts=4, num_experts_per_tok=2,
                    moe_intermediate_size=48, shared_expert_intermediate_size=96, rope_theta=1000000.0, max_position_embeddings=8192,
                    rope_scaling={"type": "dynamic", "factor": 2.0})
    t = dense_tensors(rng, {**c, "moe": True}, qkv_bias=True)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}.mlp."
        t[p + "gate.weight"] = (heavy(rng, (4, 128)), "BF16")
        t[p + "shared_expert_gate.weight"] = (heavy(rng, (1, 128)), "BF16")
        for w, shp in (("gate_proj", (96, 128)), ("up_proj", (96, 128)), ("down_proj", (128, 96))):
            t[p + f"shared_expert.{w}.weight"] = (heavy(rng, shp), "BF16")
        for x in range(4):
            for w, shp in (("gate_proj", (48, 128)), ("up_proj", (48, 128)), ("down_proj", (128, 48))):
                t[p + f"experts.{x}.{w}.weight"] = (heavy(rng, shp), "BF16")
    return c, t, "gpt-2", {}


def case_qwen3moe(rng):
    c = base_config("Qwen3MoeForCausalLM", "qwen3_moe", 50257, head_dim=32, num_experts=4, num_experts_per_tok=2,
                    moe_intermediate_size=48, rope_theta=1000000.0, max_position_embeddings=8192, norm_topk_prob=True,
                    rope_scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 4096,
                                  "beta_fast": 16.0, "beta_slow": 2.0, "attention_factor": 1.25})
    t = dense_tensors(rng, {**c, "moe": True}, qk_norm=True)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}.mlp."
        t[p + "gate.weight"] = (heavy(rng, (4, 128)), "BF16")
        for x in range(4):
            for w, shp in (("gate_proj", (48, 128)), ("up_proj", (48, 128)), ("down_proj", (128, 48))):
                t[p + f"experts.{x}.{w}.weight"] = (heavy(rng, shp), "BF16")
    return c, t, "gpt-2", {}


def headless(t: dict) -> dict:
    """A decoder's tensors as its headless base class (LlamaModel, Qwen2Model, ...) saves them: no "model." prefix,
    no lm_head."""
    return {n.removeprefix("model."): v for n, v in t.items() if not n.startswith("lm_head.")}


def case_llama_headless(rng):
    # LlamaModel: the base model without lm_head (tie_word_embeddings left false, as LlamaModel configs say)
    c = base_config("LlamaModel", "llama", 32000, bos_token_id=1, eos_token_id=2, num_key_value_heads=2)
    return c, headless(dense_tensors(rng, c)), "llama-spm", {}


def case_qwen2_headless(rng):
    c = base_config("Qwen2Model", "qwen2", 50257, rope_theta=1000000.0, rms_norm_eps=1e-6, max_position_embeddings=32768,
                    use_sliding_window=False, sliding_window=32768, max_window_layers=2, bos_token_id=50256,
                    eos_token_id=50256)
    return c, headless(dense_tensors(rng, c, qkv_bias=True)), "gpt-2", {}


def case_qwen3_headless(rng):
    c = base_config("Qwen3Model", "qwen3", 50257, head_dim=64, rope_theta=1000000.0, rms_norm_eps=1e-6,
                    max_position_embeddings=40960, bos_token_id=50256, eos_token_id=50256)
    return c, headless(dense_tensors(rng, c, qk_norm=True)), "gpt-2", {}


def case_gemma(rng):
    c = base_config("GemmaForCausalLM", "gemma", 32000, head_dim=32, num_key_value_heads=1, hidden_act="gelu",
                    bos_token_id=1, eos_token_id=2, pad_token_id=0, max_position_embeddings=8192)
    return c, dense_tensors(rng, c, lm_head=True, norm_dt="F16"), "llama-spm", {}


def case_gemma2(rng):
    c = base_config("Gemma2ForCausalLM", "gemma2", 32000, head_dim=32, attn_logit_softcapping=50.0,
                    final_logit_softcapping=30.0, sliding_window=4096, query_pre_attn_scalar=32, max_position_embeddings=8192)
    return c, dense_tensors(rng, c, gemma2_norms=True, lm_head=False), "llama-spm", {}


def case_gemma3(rng):
    c = base_config("Gemma3ForCausalLM", "gemma3_text", 32000, head_dim=32, num_hidden_layers=3, sliding_window=512,
                    rope_scaling={"rope_type": "linear", "factor": 8.0}, rope_local_base_freq=10000.0,
                    rope_theta=1000000.0, max_position_embeddings=32768, query_pre_attn_scalar=32,
                    final_logit_softcapping=None, attn_logit_softcapping=None)
    return c, dense_tensors(rng, c, gemma2_norms=True, qk_norm=True, lm_head=False), "llama-spm", {}


def case_gemma3_bpe(rng):
    # tokenizer.json only: gpt2 vocabulary, token_embd trimmed to the real vocabulary (151646 of 151936 rows)
    c = base_config("Gemma3ForCausalLM", "gemma3_text", 151936, head_dim=32, sliding_window=512,
                    max_position_embeddings=32768, query_pre_attn_scalar=32, sliding_window_pattern=2)
    return c, dense_tensors(rng, c, gemma2_norms=True, qk_norm=True, lm_head=False), "qwen2", {}


def case_phi3(rng):
    hd = 128 // 4
    c = base_config("Phi3ForCausalLM", "phi3", 32064, num_key_value_heads=4, max_position_embeddings=131072,
                    original_max_position_embeddings=4096, sliding_window=262144, bos_token_id=1, eos_token_id=32000,
                    rope_scaling={"type": "longrope", "long_factor": [1.0 + 0.37 * i for i in range(hd // 2)],
                                  "short_factor": [1.0 + 0.01 * i for i in range(hd // 2)]})
    e, ff = 128, 160
    t = {"model.embed_tokens.weight": (heavy(rng, (32064, e)), "BF16"), "model.norm.weight": (heavy(rng, (e,)), "BF16"),
         "lm_head.weight": (heavy(rng, (32064, e)), "BF16")}
    for i in range(2):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = (heavy(rng, (e,)), "BF16")
        t[p + "post_attention_layernorm.weight"] = (heavy(rng, (e,)), "BF16")
        t[p + "self_attn.qkv_proj.weight"] = (heavy(rng, (3 * e, e)), "BF16")
        t[p + "self_attn.o_proj.weight"] = (heavy(rng, (e, e)), "BF16")
        t[p + "mlp.gate_up_proj.weight"] = (heavy(rng, (2 * ff, e)), "BF16")
        t[p + "mlp.down_proj.weight"] = (heavy(rng, (e, ff)), "BF16")
    return c, t, "phi-3", {}


def case_smollm3(rng):
    # SmolLM3-3B's config.json: explicit no_rope_layers (4 layers so the NoPE layer exists), Llama 3 tokenizer
    c = base_config("SmolLM3ForCausalLM", "smollm3", 128256, num_hidden_layers=4, rope_theta=5000000.0,
                    max_position_embeddings=65536, rms_norm_eps=1e-6, tie_word_embeddings=True,
                    no_rope_layers=[1, 1, 1, 0], no_rope_layer_interval=4, use_sliding_window=False,
                    bos_token_id=128000, eos_token_id=128012, pad_token_id=128004)
    return c, dense_tensors(rng, c, lm_head=False), "llama-bpe", {}


def olmo2_tensors(rng, c: dict, dt="BF16") -> dict[str, tuple[np.ndarray, str]]:
    """OLMo 2/3 layers: no input norms, post-attention and post-MLP norms, q/k norms over all heads."""
    t = dense_tensors(rng, c, lm_head=not c.get("tie_word_embeddings"), dt=dt)
    hd = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        del t[p + "input_layernorm.weight"]
        t[p + "post_feedforward_layernorm.weight"] = (1 + heavy(rng, (c["hidden_size"],), 0.1), dt)
        t[p + "self_attn.q_norm.weight"] = (1 + heavy(rng, (c["num_attention_heads"] * hd,), 0.1), dt)
        t[p + "self_attn.k_norm.weight"] = (1 + heavy(rng, (c["num_key_value_heads"] * hd,), 0.1), dt)
    return t


def case_olmo2(rng):
    # no real OLMo 2 tokenizer among the fixtures: GPT-2's (the same BPE path; 50304 rows: padded)
    c = base_config("Olmo2ForCausalLM", "olmo2", 50304, num_key_value_heads=4, rope_theta=500000.0, rms_norm_eps=1e-6,
                    max_position_embeddings=4096, bos_token_id=None, eos_token_id=50256, pad_token_id=1)
    return c, olmo2_tensors(rng, c, dt="F32"), "gpt-2", {}


def case_olmo3(rng):
    # Olmo-3's config.json: explicit layer_types and sliding_window, yarn rope (GPT-2's tokenizer as a stand-in)
    c = base_config("Olmo3ForCausalLM", "olmo3", 50257, num_key_value_heads=4, rope_theta=500000.0, rms_norm_eps=1e-6,
                    max_position_embeddings=65536, sliding_window=4096, layer_types=["sliding_attention", "full_attention"],
                    rope_scaling={"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 8192,
                                  "attention_factor": 1.2079441541679836, "beta_fast": 32, "beta_slow": 1},
                    bos_token_id=None, eos_token_id=50256, pad_token_id=50256)
    return c, olmo2_tensors(rng, c), "gpt-2", {}


def case_seed_oss(rng):
    # no real Seed-OSS tokenizer among the fixtures: GPT-2's
    c = base_config("SeedOssForCausalLM", "seed_oss", 50257, head_dim=48, attention_bias=True, attention_out_bias=False,
                    rope_theta=10000000.0, max_position_embeddings=524288, rms_norm_eps=1e-6, bos_token_id=0,
                    eos_token_id=2, pad_token_id=1)
    return c, dense_tensors(rng, c, qkv_bias=True), "gpt-2", {}


def case_granite(rng):
    # dimensions multiples of 256 (K-quant blocks, no fallback); the multipliers granite-3.x configs carry
    c = base_config("GraniteForCausalLM", "granite", 32000, hidden_size=256, intermediate_size=512,
                    rope_theta=10000000.0, max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=True,
                    attention_multiplier=0.015625, embedding_multiplier=12.0, residual_multiplier=0.22,
                    logits_scaling=8.0, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return c, dense_tensors(rng, c, lm_head=False), "llama-spm", {}


def case_exaone4(rng):
    # the 320-wide case (K-quant rows fall back to other types); EXAONE 4.0's llama3 rope, LLLG window pattern;
    # no real EXAONE tokenizer among the fixtures: GPT-2's
    c = base_config("Exaone4ForCausalLM", "exaone4", 50257, hidden_size=320, intermediate_size=512, head_dim=80,
                    num_attention_heads=4, num_key_value_heads=2, rope_theta=1000000.0, max_position_embeddings=131072,
                    rope_scaling={"rope_type": "llama3", "factor": 16.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 8192},
                    sliding_window=4096, sliding_window_pattern="LLLG", layer_types=["sliding_attention", "full_attention"],
                    tie_word_embeddings=True, bos_token_id=1, eos_token_id=361, pad_token_id=0)
    return c, olmo2_tensors(rng, c) | {
        f"model.layers.{i}.self_attn.{n}_norm.weight": (1 + heavy(rng, (80,), 0.1), "BF16") for i in range(2) for n in "qk"
    }, "gpt-2", {}


def case_starcoder2(rng):
    # biases everywhere (use_bias), LayerNorms, GELU c_fc/c_proj MLP, tied embeddings; GPT-2's tokenizer stands in
    c = base_config("Starcoder2ForCausalLM", "starcoder2", 50257, rms_norm_eps=None, norm_epsilon=1e-5, use_bias=True,
                    rope_theta=999999.4420358813, max_position_embeddings=16384, sliding_window=4096,
                    hidden_act="gelu_pytorch_tanh", tie_word_embeddings=True, bos_token_id=0, eos_token_id=0)
    e = c["hidden_size"]
    t = dense_tensors(rng, c, qkv_bias=True, o_bias=True, mlp_bias=True, lm_head=False)
    t["model.norm.bias"] = (heavy(rng, (e,), 0.1), "BF16")
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for n in ("input_layernorm", "post_attention_layernorm"):
            t[p + n + ".bias"] = (heavy(rng, (e,), 0.1), "BF16")
        del t[p + "mlp.gate_proj.weight"], t[p + "mlp.gate_proj.bias"]
        t[p + "mlp.c_fc.weight"], t[p + "mlp.c_fc.bias"] = t.pop(p + "mlp.up_proj.weight"), t.pop(p + "mlp.up_proj.bias")
        t[p + "mlp.c_proj.weight"], t[p + "mlp.c_proj.bias"] = t.pop(p + "mlp.down_proj.weight"), t.pop(p + "mlp.down_proj.bias")
    return c, t, "gpt-2", {}


def case_stablelm(rng):
    # stablelm-2-1_6b's layout: LayerNorms with biases, q/k/v biases, partial rotary; GPT-2's tokenizer stands in
    c = base_config("StableLmForCausalLM", "stablelm", 50257, rms_norm_eps=None, layer_norm_eps=1e-5,
                    num_key_value_heads=4, use_qkv_bias=True, qk_layernorm=False, use_parallel_residual=False,
                    partial_rotary_factor=0.25, max_position_embeddings=4096, tie_word_embeddings=False,
                    bos_token_id=50256, eos_token_id=50256)
    e = c["hidden_size"]
    t = dense_tensors(rng, c, qkv_bias=True)
    t["model.norm.bias"] = (heavy(rng, (e,), 0.1), "BF16")
    for i in range(c["num_hidden_layers"]):
        for n in ("input_layernorm", "post_attention_layernorm"):
            t[f"model.layers.{i}.{n}.bias"] = (heavy(rng, (e,), 0.1), "BF16")
    return c, t, "gpt-2", {}


def case_stablelm_epoch(rng):
    # stablelm-3b-4e1t / stablelm-zephyr-3b (StableLMEpochForCausalLM, remote code: config.json read as it is): rope_pct,
    # norm_eps, LayerNorms with biases, no q/k/v biases; 320 wide (K-quant rows fall back)
    c = base_config("StableLMEpochForCausalLM", "stablelm_epoch", 50257, hidden_size=320, intermediate_size=512,
                    num_attention_heads=5, num_key_value_heads=5, rms_norm_eps=None, norm_eps=1e-5, rope_pct=0.25,
                    use_qkv_bias=False, rope_theta=10000, max_position_embeddings=4096, hidden_act="silu",
                    tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
    t = dense_tensors(rng, c)
    t["model.norm.bias"] = (heavy(rng, (320,), 0.1), "BF16")
    for i in range(c["num_hidden_layers"]):
        for n in ("input_layernorm", "post_attention_layernorm"):
            t[f"model.layers.{i}.{n}.bias"] = (heavy(rng, (320,), 0.1), "BF16")
    return c, t, "gpt-2", {}


def case_command_r(rng):
    # c4ai-command-r-v01's layout: parallel block (one LayerNorm, weights only), tied embeddings, the trained
    # context in model_max_length; no real Cohere tokenizer among the fixtures: GPT-2's (same BPE code path)
    c = base_config("CohereForCausalLM", "cohere", 50257, hidden_size=256, intermediate_size=512, rms_norm_eps=None,
                    layer_norm_eps=1e-5, use_qk_norm=False, logit_scale=0.0625, rope_theta=8000000.0,
                    max_position_embeddings=8192, model_max_length=131072, bos_token_id=5, eos_token_id=255001)
    t = dense_tensors(rng, c, lm_head=False)
    for i in range(c["num_hidden_layers"]):
        del t[f"model.layers.{i}.post_attention_layernorm.weight"]
    return c, t, "gpt-2", {}


def case_cohere2(rng):
    # Command R7B's layout: 4 layers (3 sliding, 1 global), F16 source; GPT-2's tokenizer stands in
    c = base_config("Cohere2ForCausalLM", "cohere2", 50257, num_hidden_layers=4, rms_norm_eps=None,
                    layer_norm_eps=1e-5, logit_scale=0.25, rope_theta=50000.0, rotary_pct=1.0, sliding_window=4096,
                    sliding_window_pattern=4, max_position_embeddings=8192, bos_token_id=5, eos_token_id=255001,
                    torch_dtype="float16")
    t = dense_tensors(rng, c, lm_head=False, dt="F16")
    for i in range(c["num_hidden_layers"]):
        del t[f"model.layers.{i}.post_attention_layernorm.weight"]
    return c, t, "gpt-2", {}


def case_apertus(rng):
    # Apertus-8B's layout at 320 wide (K-quant fallbacks): q/k RMS norms, up/down xIELU MLP whose per-layer scalars
    # become metadata, the llama3 rope default of ApertusConfig (no rope_scaling in config.json); GPT-2's tokenizer
    c = base_config("ApertusForCausalLM", "apertus", 50257, hidden_size=320, intermediate_size=512,
                    rope_theta=12000000.0, max_position_embeddings=65536, bos_token_id=1, eos_token_id=68, pad_token_id=3)
    t = dense_tensors(rng, c, qk_norm=True)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "attention_layernorm.weight"] = t.pop(p + "input_layernorm.weight")
        t[p + "feedforward_layernorm.weight"] = t.pop(p + "post_attention_layernorm.weight")
        del t[p + "mlp.gate_proj.weight"]
        t[p + "mlp.act_fn.alpha_p"] = (np.array([0.55 + 0.1 * i], np.float32), "BF16")
        t[p + "mlp.act_fn.alpha_n"] = (np.array([0.31 - 0.07 * i], np.float32), "BF16")
        t[p + "mlp.act_fn.beta"] = (np.array(0.5, np.float32), "F32")
        t[p + "mlp.act_fn.eps"] = (np.array(-1e-6, np.float32), "F32")
    return c, t, "gpt-2", {}


def case_olmo(rng):
    # OLMo-1.7-7B-hf's layout: no norm tensors (parameter-free LayerNorms), clip_qkv, untied output; GPT-2's tokenizer
    c = base_config("OlmoForCausalLM", "olmo", 50304, hidden_size=256, intermediate_size=512, num_key_value_heads=None,
                    rms_norm_eps=None, clip_qkv=8.0, max_position_embeddings=4096, bos_token_id=None,
                    eos_token_id=50256, pad_token_id=1)
    t = dense_tensors(rng, {**c, "num_key_value_heads": 4})
    for n in [n for n in t if "layernorm" in n or n == "model.norm.weight"]:
        del t[n]
    return c, t, "gpt-2", {}


def gpt2_style_tensors(rng, e: int, n_layer: int, qkv_rows: int, n_pos: int, vocab: int, *, conv1d: bool, dt="BF16",
                       prefix="transformer.") -> dict[str, tuple[np.ndarray, str]]:
    """GPT-2 / GPTBigCode layers: learned positions, LayerNorms and linears with biases; Conv1D weights are (in, out)."""
    def w(rows, cols):
        return heavy(rng, (cols, rows) if conv1d else (rows, cols))

    t = {prefix + "wte.weight": (heavy(rng, (vocab, e)), dt), prefix + "wpe.weight": (heavy(rng, (n_pos, e)), dt),
         prefix + "ln_f.weight": (1 + heavy(rng, (e,), 0.1), dt), prefix + "ln_f.bias": (heavy(rng, (e,), 0.1), dt)}
    for i in range(n_layer):
        p = f"{prefix}h.{i}."
        for n in ("ln_1", "ln_2"):
            t[p + n + ".weight"] = (1 + heavy(rng, (e,), 0.1), dt)
            t[p + n + ".bias"] = (heavy(rng, (e,), 0.1), dt)
        for n, rows, cols in (("attn.c_attn", qkv_rows, e), ("attn.c_proj", e, e), ("mlp.c_fc", 4 * e, e),
                              ("mlp.c_proj", e, 4 * e)):
            t[p + n + ".weight"] = (w(rows, cols), dt)
            t[p + n + ".bias"] = (heavy(rng, (rows,)), dt)
    return t


def case_gpt2(rng):
    # openai-community/gpt2's layout: GPT-2 key names, n_ctx, tensors without the "transformer." prefix, F32 source
    c = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 256, "n_layer": 2, "n_head": 4,
         "n_positions": 1024, "n_ctx": 1024, "vocab_size": 50257, "layer_norm_epsilon": 1e-5,
         "activation_function": "gelu_new", "bos_token_id": 50256, "eos_token_id": 50256, "torch_dtype": "float32"}
    return c, gpt2_style_tensors(rng, 256, 2, 3 * 256, 1024, 50257, conv1d=True, dt="F32", prefix=""), "gpt-2", {}


def case_gpt_bigcode(rng):
    # santacoder / starcoder's layout: multi-query fused QKV (n_embd + 2 head_dim rows), nn.Linear weights, tied output
    c = {"architectures": ["GPTBigCodeForCausalLM"], "model_type": "gpt_bigcode", "n_embd": 256, "n_layer": 2,
         "n_head": 4, "n_positions": 2048, "vocab_size": 50257, "layer_norm_epsilon": 1e-5, "multi_query": True,
         "activation_function": "gelu_pytorch_tanh", "bos_token_id": 50256, "eos_token_id": 50256,
         "torch_dtype": "bfloat16"}
    return c, gpt2_style_tensors(rng, 256, 2, 256 + 2 * 64, 2048, 50257, conv1d=False), "gpt-2", {}


def case_gptneox(rng):
    # Pythia's layout: fused per-head QKV, biases everywhere, partial rotary, untied embed_out, an embedding padded
    # past the tokenizer (50304 rows for 50257 tokens)
    e, f, v = 256, 1024, 50304
    c = {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "hidden_size": e, "intermediate_size": f,
         "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": v, "max_position_embeddings": 2048,
         "rotary_pct": 0.25, "rotary_emb_base": 10000, "layer_norm_eps": 1e-5, "use_parallel_residual": True,
         "tie_word_embeddings": False, "hidden_act": "gelu", "bos_token_id": 0, "eos_token_id": 0,
         "torch_dtype": "float16"}
    t = {"gpt_neox.embed_in.weight": (heavy(rng, (v, e)), "F16"), "embed_out.weight": (heavy(rng, (v, e)), "F16"),
         "gpt_neox.final_layer_norm.weight": (1 + heavy(rng, (e,), 0.1), "F16"),
         "gpt_neox.final_layer_norm.bias": (heavy(rng, (e,), 0.1), "F16")}
    for i in range(2):
        p = f"gpt_neox.layers.{i}."
        for n in ("input_layernorm", "post_attention_layernorm"):
            t[p + n + ".weight"] = (1 + heavy(rng, (e,), 0.1), "F16")
            t[p + n + ".bias"] = (heavy(rng, (e,), 0.1), "F16")
        for n, rows, cols in (("attention.query_key_value", 3 * e, e), ("attention.dense", e, e),
                              ("mlp.dense_h_to_4h", f, e), ("mlp.dense_4h_to_h", e, f)):
            t[p + n + ".weight"] = (heavy(rng, (rows, cols)), "F16")
            t[p + n + ".bias"] = (heavy(rng, (rows,)), "F16")
        t[p + "attention.rotary_emb.inv_freq"] = (np.arange(8, dtype=np.float32), "F32")  # dropped upstream
    return c, t, "gpt-2", {}


def case_falcon(rng):
    # falcon-40b's layout: new decoder architecture (ln_attn + ln_mlp), grouped KV heads in the fused QKV, untied lm_head
    e, nh, nkv, hd = 256, 4, 2, 64
    c = {"architectures": ["FalconForCausalLM"], "model_type": "falcon", "hidden_size": e, "num_hidden_layers": 2,
         "num_attention_heads": nh, "num_kv_heads": nkv, "new_decoder_architecture": True, "parallel_attn": True,
         "bias": False, "alibi": False, "multi_query": True, "vocab_size": 50257, "layer_norm_epsilon": 1e-5,
         "tie_word_embeddings": False, "bos_token_id": 11, "eos_token_id": 11, "torch_dtype": "bfloat16"}
    t = {"transformer.word_embeddings.weight": (heavy(rng, (50257, e)), "BF16"),
         "lm_head.weight": (heavy(rng, (50257, e)), "BF16"),
         "transformer.ln_f.weight": (1 + heavy(rng, (e,), 0.1), "BF16"), "transformer.ln_f.bias": (heavy(rng, (e,), 0.1), "BF16")}
    for i in range(2):
        p = f"transformer.h.{i}."
        for n in ("ln_attn", "ln_mlp"):
            t[p + n + ".weight"] = (1 + heavy(rng, (e,), 0.1), "BF16")
            t[p + n + ".bias"] = (heavy(rng, (e,), 0.1), "BF16")
        for n, rows, cols in (("self_attention.query_key_value", (nh + 2 * nkv) * hd, e), ("self_attention.dense", e, e),
                              ("mlp.dense_h_to_4h", 4 * e, e), ("mlp.dense_4h_to_h", e, 4 * e)):
            t[p + n + ".weight"] = (heavy(rng, (rows, cols)), "BF16")
    return c, t, "gpt-2", {}


def case_exaone(rng):
    # EXAONE-3.5's config.json as it is (no transformers class: num_layers, layer_norm_epsilon, auto_map; plus the
    # rms_norm_eps llama.cpp's runtime needs) and its GPT-2 style module names; llama3 rope factors, untied lm_head; GPT-2's tokenizer stands in
    c = {"architectures": ["ExaoneForCausalLM"], "model_type": "exaone", "activation_function": "silu",
         "auto_map": {"AutoConfig": "configuration_exaone.ExaoneConfig",
                      "AutoModelForCausalLM": "modeling_exaone.ExaoneForCausalLM"},
         "hidden_size": 256, "intermediate_size": 512, "num_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "head_dim": 64, "vocab_size": 50257, "layer_norm_epsilon": 1e-5, "rms_norm_eps": 1e-5, "max_position_embeddings": 32768,
         "rope_theta": 1000000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
         "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 50256, "pad_token_id": 0,
         "torch_dtype": "bfloat16"}
    d = {**c, "num_hidden_layers": 2}
    t = dense_tensors(rng, d)
    names = {"model.embed_tokens": "transformer.wte", "model.norm": "transformer.ln_f", "lm_head": "lm_head"}
    mods = {"input_layernorm": "ln_1", "post_attention_layernorm": "ln_2", "self_attn.q_proj": "attn.attention.q_proj",
            "self_attn.k_proj": "attn.attention.k_proj", "self_attn.v_proj": "attn.attention.v_proj",
            "self_attn.o_proj": "attn.attention.out_proj", "mlp.gate_proj": "mlp.c_fc_0", "mlp.up_proj": "mlp.c_fc_1",
            "mlp.down_proj": "mlp.c_proj"}
    out = {}
    for n, v in t.items():
        if n.endswith("rotary_emb.inv_freq"):
            continue
        base, suffix = n.rsplit(".", 1)
        if base in names:
            out[names[base] + "." + suffix] = v
        else:
            _, _, i, mod = base.split(".", 3)
            out[f"transformer.h.{i}.{mods[mod]}.{suffix}"] = v
    return c, out, "gpt-2", {}


def case_internlm3(rng):
    # internlm3-8b-instruct's config.json as it is (no transformers class: auto_map, qkv_bias, dynamic rope, head_dim);
    # the Llama 2 SentencePiece tokenizer stands in (the same tokenizer.model code path)
    c = base_config("InternLM3ForCausalLM", "internlm3", 32000, hidden_size=256, intermediate_size=512, head_dim=64,
                    rms_norm_eps=1e-5, rope_theta=50000000, rope_scaling={"factor": 6.0, "rope_type": "dynamic"},
                    max_position_embeddings=32768, bias=False, qkv_bias=True, tie_word_embeddings=False,
                    bos_token_id=1, eos_token_id=2, pad_token_id=2,
                    auto_map={"AutoConfig": "configuration_internlm3.InternLM3Config",
                              "AutoModelForCausalLM": "modeling_internlm3.InternLM3ForCausalLM"})
    return c, dense_tensors(rng, c, qkv_bias=True), "llama-spm", {}


def moe_tensors(rng, p: str, e: int, n_exp: int, ff: int, *, shared: int = 0, gate_name="gate") -> dict:
    """Qwen-style routed experts (and a shared expert with its gate) under module prefix `p` ("...mlp.")."""
    t = {p + f"{gate_name}.weight": (heavy(rng, (n_exp, e)), "BF16")}
    if shared:
        t[p + "shared_expert_gate.weight"] = (heavy(rng, (1, e)), "BF16")
        for w, shp in (("gate_proj", (shared, e)), ("up_proj", (shared, e)), ("down_proj", (e, shared))):
            t[p + f"shared_expert.{w}.weight"] = (heavy(rng, shp), "BF16")
    for x in range(n_exp):
        for w, shp in (("gate_proj", (ff, e)), ("up_proj", (ff, e)), ("down_proj", (e, ff))):
            t[p + f"experts.{x}.{w}.weight"] = (heavy(rng, shp), "BF16")
    return t


def case_qwen3next(rng):
    # Qwen3-Next-80B-A3B's layout scaled down: layer 0 gated delta-net, layer 1 full attention (interval 2),
    # routed + shared experts everywhere, one MTP layer under mtp.* (the converter needs it), zero-centred norms
    c = base_config("Qwen3NextForCausalLM", "qwen3_next", 50257, hidden_size=256, intermediate_size=512,
                    num_attention_heads=2, num_key_value_heads=1, head_dim=128, partial_rotary_factor=0.25,
                    rope_theta=10000000.0, max_position_embeddings=262144, rms_norm_eps=1e-6, full_attention_interval=2,
                    linear_conv_kernel_dim=4, linear_key_head_dim=64, linear_value_head_dim=64, linear_num_key_heads=2,
                    linear_num_value_heads=4, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=256,
                    shared_expert_intermediate_size=256, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
                    tie_word_embeddings=False, bos_token_id=50256, eos_token_id=50256)
    e, v, hd = 256, 50257, 128
    nk, nv, hk, hv = 2, 4, 64, 64
    zc = lambda shape: (heavy(rng, shape, 0.1), "BF16")  # Qwen3NextRMSNorm weights: 1 + w at run time
    t = {"model.embed_tokens.weight": (heavy(rng, (v, e)), "BF16"), "model.norm.weight": zc((e,)),
         "lm_head.weight": (heavy(rng, (v, e)), "BF16")}

    def attention(p):
        return {p + "self_attn.q_proj.weight": (heavy(rng, (2 * 2 * hd, e)), "BF16"),  # query and its gate
                p + "self_attn.k_proj.weight": (heavy(rng, (hd, e)), "BF16"),
                p + "self_attn.v_proj.weight": (heavy(rng, (hd, e)), "BF16"),
                p + "self_attn.o_proj.weight": (heavy(rng, (e, 2 * hd)), "BF16"),
                p + "self_attn.q_norm.weight": zc((hd,)), p + "self_attn.k_norm.weight": zc((hd,))}

    for i, kind in enumerate(("linear", "full")):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = zc((e,))
        t[p + "post_attention_layernorm.weight"] = zc((e,))
        if kind == "full":
            t.update(attention(p))
        else:
            a = p + "linear_attn."
            t[a + "in_proj_qkvz.weight"] = (heavy(rng, (2 * nk * hk + 2 * nv * hv, e)), "BF16")
            t[a + "in_proj_ba.weight"] = (heavy(rng, (2 * nv, e)), "BF16")
            t[a + "conv1d.weight"] = (heavy(rng, (2 * nk * hk + nv * hv, 1, 4), 0.3), "BF16")
            t[a + "dt_bias"] = (1 + heavy(rng, (nv,), 0.1), "BF16")
            t[a + "A_log"] = (heavy(rng, (nv,), 0.5), "F32")
            t[a + "norm.weight"] = (1 + heavy(rng, (hv,), 0.1), "F32")
            t[a + "out_proj.weight"] = (heavy(rng, (e, nv * hv)), "BF16")
        t.update(moe_tensors(rng, p + "mlp.", e, 4, 256, shared=256))
    t.update({"mtp.fc.weight": (heavy(rng, (e, 2 * e)), "BF16"), "mtp.norm.weight": zc((e,)),
              "mtp.pre_fc_norm_embedding.weight": zc((e,)), "mtp.pre_fc_norm_hidden.weight": zc((e,)),
              "mtp.layers.0.input_layernorm.weight": zc((e,)), "mtp.layers.0.post_attention_layernorm.weight": zc((e,))})
    t.update(attention("mtp.layers.0."))
    t.update(moe_tensors(rng, "mtp.layers.0.mlp.", e, 4, 256, shared=256))
    return c, t, "gpt-2", {}


def lfm2_tensors(rng, c: dict, ff: int, *, n_dense: int | None = None) -> dict:
    """LFM2 layers (short conv or attention per layer_types; dense, or routed experts after n_dense)."""
    e, v, nh, nkv = c["hidden_size"], c["vocab_size"], c["num_attention_heads"], c["num_key_value_heads"]
    hd = e // nh
    norm = lambda shape: (1 + heavy(rng, shape, 0.1), "BF16")
    t = {"model.embed_tokens.weight": (heavy(rng, (v, e)), "BF16"), "model.embedding_norm.weight": norm((e,))}
    for i, kind in enumerate(c["layer_types"]):
        p = f"model.layers.{i}."
        t[p + "operator_norm.weight"] = norm((e,))
        t[p + "ffn_norm.weight"] = norm((e,))
        if kind == "conv":
            t[p + "conv.conv.weight"] = (heavy(rng, (e, 1, c["conv_L_cache"]), 0.3), "BF16")
            t[p + "conv.in_proj.weight"] = (heavy(rng, (3 * e, e)), "BF16")
            t[p + "conv.out_proj.weight"] = (heavy(rng, (e, e)), "BF16")
        else:
            t[p + "self_attn.q_proj.weight"] = (heavy(rng, (nh * hd, e)), "BF16")
            t[p + "self_attn.k_proj.weight"] = (heavy(rng, (nkv * hd, e)), "BF16")
            t[p + "self_attn.v_proj.weight"] = (heavy(rng, (nkv * hd, e)), "BF16")
            t[p + "self_attn.out_proj.weight"] = (heavy(rng, (e, nh * hd)), "BF16")
            t[p + "self_attn.q_layernorm.weight"] = norm((hd,))
            t[p + "self_attn.k_layernorm.weight"] = norm((hd,))
        if n_dense is None or i < n_dense:
            for w, shp in (("w1", (ff, e)), ("w3", (ff, e)), ("w2", (e, ff))):
                t[p + f"feed_forward.{w}.weight"] = (heavy(rng, shp), "BF16")
        else:
            n, fe = c["num_experts"], c["moe_intermediate_size"]
            t[p + "feed_forward.gate.weight"] = (heavy(rng, (n, e)), "BF16")
            t[p + "feed_forward.expert_bias"] = (heavy(rng, (n,), 0.1), "F32")
            for x in range(n):
                for w, shp in (("w1", (fe, e)), ("w3", (fe, e)), ("w2", (e, fe))):
                    t[p + f"feed_forward.experts.{x}.{w}.weight"] = (heavy(rng, shp), "BF16")
    return t


def case_lfm2(rng):
    # LFM2-1.2B's config.json keys (block_ff_dim auto-adjusted: 2/3 * 768 -> 512; full_attn_idxs, tied embedding),
    # layer 0 short conv, layer 1 attention; no LFM2 tokenizer among the fixtures: GPT-2's (same BPE path)
    c = base_config("Lfm2ForCausalLM", "lfm2", 50257, hidden_size=256, intermediate_size=None, block_ff_dim=768,
                    block_auto_adjust_ff_dim=True, block_ffn_dim_multiplier=1.0, block_multiple_of=256,
                    num_attention_heads=4, num_key_value_heads=2, conv_L_cache=3, conv_bias=False,
                    full_attn_idxs=[1], max_position_embeddings=50256, rms_norm_eps=None, norm_eps=1e-5,
                    rope_theta=None, theta=1000000.0, tie_embedding=True, bos_token_id=50256, eos_token_id=50256)
    c["intermediate_size"] = 768  # required by kquant's config reader; Lfm2Config takes block_ff_dim first
    tensors = lfm2_tensors(rng, {**c, "layer_types": ["conv", "full_attention"]}, 512)
    return c, tensors, "gpt-2", {}


def case_lfm2moe(rng):
    # LFM2-8B-A1B's layout (no transformers 4.57.6 config class: read raw): one dense conv layer, then an
    # attention layer with 4 routed experts and expert_bias; GPT-2's tokenizer stands in
    c = base_config("Lfm2MoeForCausalLM", "lfm2_moe", 50257, hidden_size=256, intermediate_size=512,
                    moe_intermediate_size=256, num_experts=4, num_experts_per_tok=2, num_dense_layers=1,
                    num_attention_heads=4, num_key_value_heads=2, conv_L_cache=3, conv_bias=False,
                    layer_types=["conv", "full_attention"], max_position_embeddings=50256, rms_norm_eps=None,
                    norm_eps=1e-5, rope_theta=1000000.0, tie_embedding=True, norm_topk_prob=True,
                    use_expert_bias=True, routed_scaling_factor=1.0, bos_token_id=50256, eos_token_id=50256)
    return c, lfm2_tensors(rng, c, 512, n_dense=1), "gpt-2", {}


def mamba2_tensors(rng, p: str, e: int, d_inner: int, n_heads: int, n_group: int, d_state: int, d_conv: int) -> dict:
    """One Mamba-2 mixer under `p` ("model.layers.0.mamba."): fused in_proj, conv1d with bias, dt_bias, A_log, D, norm."""
    conv = d_inner + 2 * n_group * d_state
    return {p + "in_proj.weight": (heavy(rng, (2 * d_inner + 2 * n_group * d_state + n_heads, e)), "BF16"),
            p + "conv1d.weight": (heavy(rng, (conv, 1, d_conv), 0.3), "BF16"),
            p + "conv1d.bias": (heavy(rng, (conv,), 0.1), "BF16"),
            p + "dt_bias": (heavy(rng, (n_heads,), 1.0), "BF16"),
            p + "A_log": (np.log(np.arange(1, n_heads + 1, dtype=np.float32)) + heavy(rng, (n_heads,), 0.1), "BF16"),
            p + "D": (1 + heavy(rng, (n_heads,), 0.1), "BF16"),
            p + "norm.weight": (1 + heavy(rng, (d_inner,), 0.1), "BF16"),
            p + "out_proj.weight": (heavy(rng, (e, d_inner)), "BF16")}


def case_granitehybrid(rng):
    # granite-4.0-h-tiny's config.json keys (raw: no config class): layer 0 Mamba-2, layer 1 attention (GQA 4,
    # so llama.cpp's n_gqa of layer 0 is 0), 4 experts + shared MLP, NoPE; GPT-2's tokenizer stands in
    e, nh, nkv = 256, 8, 2
    c = base_config("GraniteMoeHybridForCausalLM", "granitemoehybrid", 50264, hidden_size=e, intermediate_size=256,
                    shared_intermediate_size=256, num_local_experts=4, num_experts_per_tok=2, num_attention_heads=nh,
                    num_key_value_heads=nkv, layer_types=["mamba", "attention"], mamba_chunk_size=256,
                    mamba_conv_bias=True, mamba_d_conv=4, mamba_d_head=64, mamba_d_state=64, mamba_expand=2,
                    mamba_n_groups=1, mamba_n_heads=8, mamba_proj_bias=False, attention_multiplier=0.0078125,
                    embedding_multiplier=12, residual_multiplier=0.22, logits_scaling=6, hidden_act="silu",
                    position_embedding_type="nope", max_position_embeddings=131072, rope_scaling=None,
                    tie_word_embeddings=True, normalization_function="rmsnorm", bos_token_id=50256, eos_token_id=50256)
    hd = e // nh
    t = {"model.embed_tokens.weight": (heavy(rng, (50264, e)), "BF16"), "model.norm.weight": (1 + heavy(rng, (e,), 0.1), "BF16")}
    for i, kind in enumerate(c["layer_types"]):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = (1 + heavy(rng, (e,), 0.1), "BF16")
        t[p + "post_attention_layernorm.weight"] = (1 + heavy(rng, (e,), 0.1), "BF16")
        if kind == "mamba":
            t.update(mamba2_tensors(rng, p + "mamba.", e, 512, 8, 1, 64, 4))
        else:
            t[p + "self_attn.q_proj.weight"] = (heavy(rng, (nh * hd, e)), "BF16")
            t[p + "self_attn.k_proj.weight"] = (heavy(rng, (nkv * hd, e)), "BF16")
            t[p + "self_attn.v_proj.weight"] = (heavy(rng, (nkv * hd, e)), "BF16")
            t[p + "self_attn.o_proj.weight"] = (heavy(rng, (e, nh * hd)), "BF16")
        t[p + "block_sparse_moe.router.layer.weight"] = (heavy(rng, (4, e)), "BF16")
        t[p + "block_sparse_moe.input_linear.weight"] = (heavy(rng, (4, 2 * 256, e)), "BF16")
        t[p + "block_sparse_moe.output_linear.weight"] = (heavy(rng, (4, e, 256)), "BF16")
        t[p + "shared_mlp.input_linear.weight"] = (heavy(rng, (2 * 256, e)), "BF16")
        t[p + "shared_mlp.output_linear.weight"] = (heavy(rng, (e, 256)), "BF16")
    return c, t, "gpt-2", {}


def case_bamba(rng):
    # Bamba-9B's layout: attn_layer_indices, rope on a part of the head (attn_rotary_emb), dense feed_forward
    # with pre_ff_layernorm, untied head; GPT-2's tokenizer stands in for Bamba's Llama 3 one
    e, nh, nkv = 256, 4, 2
    c = base_config("BambaForCausalLM", "bamba", 50264, hidden_size=e, intermediate_size=512, num_attention_heads=nh,
                    num_key_value_heads=nkv, attn_layer_indices=[1], attn_rotary_emb=32, mamba_chunk_size=256,
                    mamba_conv_bias=True, mamba_d_conv=4, mamba_d_head=64, mamba_d_state=64, mamba_expand=2,
                    mamba_n_groups=1, mamba_n_heads=8, mamba_proj_bias=False, hidden_act="silu",
                    max_position_embeddings=262144, rope_theta=10000.0, tie_word_embeddings=False,
                    bos_token_id=50256, eos_token_id=50256, pad_token_id=0)
    hd = e // nh
    t = {"model.embed_tokens.weight": (heavy(rng, (50264, e)), "BF16"), "lm_head.weight": (heavy(rng, (50264, e)), "BF16"),
         "model.final_layernorm.weight": (1 + heavy(rng, (e,), 0.1), "BF16")}
    for i in range(2):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = (1 + heavy(rng, (e,), 0.1), "BF16")
        t[p + "pre_ff_layernorm.weight"] = (1 + heavy(rng, (e,), 0.1), "BF16")
        if i == 0:
            t.update(mamba2_tensors(rng, p + "mamba.", e, 512, 8, 1, 64, 4))
        else:
            t[p + "self_attn.q_proj.weight"] = (heavy(rng, (nh * hd, e)), "BF16")
            t[p + "self_attn.k_proj.weight"] = (heavy(rng, (nkv * hd, e)), "BF16")
            t[p + "self_attn.v_proj.weight"] = (heavy(rng, (nkv * hd, e)), "BF16")
            t[p + "self_attn.o_proj.weight"] = (heavy(rng, (e, nh * hd)), "BF16")
        for w, shp in (("gate_proj", (512, e)), ("up_proj", (512, e)), ("down_proj", (e, 512))):
            t[p + f"feed_forward.{w}.weight"] = (heavy(rng, shp), "BF16")
    return c, t, "gpt-2", {}


def case_falconh1(rng):
    # Falcon-H1-0.5B's config.json (raw: no config class) with its multipliers, but the gated SSM norm on and
    # two groups (its reshape); attention and Mamba-2 in every layer; GPT-2's tokenizer stands in
    e, nh, nkv, hd = 256, 4, 2, 64
    c = base_config("FalconH1ForCausalLM", "falcon_h1", 50264, hidden_size=e, intermediate_size=512, head_dim=hd,
                    num_attention_heads=nh, num_key_value_heads=nkv, attention_in_multiplier=1.0,
                    attention_out_multiplier=0.9375, embedding_multiplier=5.656854249492381, key_multiplier=0.390625,
                    lm_head_multiplier=0.0390625, mlp_multipliers=[0.8838834764831844, 0.5859375],
                    ssm_in_multiplier=1.25, ssm_out_multiplier=0.23570226039551587,
                    ssm_multipliers=[0.3535533905932738, 0.25, 0.3535533905932738, 0.5, 0.3535533905932738],
                    mamba_chunk_size=128, mamba_conv_bias=True, mamba_d_conv=4, mamba_d_head=64, mamba_d_ssm=512,
                    mamba_d_state=64, mamba_expand=2, mamba_n_groups=2, mamba_n_heads=8, mamba_norm_before_gate=False,
                    mamba_proj_bias=False, mamba_rms_norm=True, mamba_use_mlp=True, attn_layer_indices=None,
                    hidden_act="silu", max_position_embeddings=16384, rope_theta=100000000000.0, rope_scaling=None,
                    tie_word_embeddings=False, bos_token_id=50256, eos_token_id=50256)
    t = {"model.embed_tokens.weight": (heavy(rng, (50264, e)), "BF16"), "lm_head.weight": (heavy(rng, (50264, e)), "BF16"),
         "model.final_layernorm.weight": (1 + heavy(rng, (e,), 0.1), "BF16")}
    for i in range(2):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = (1 + heavy(rng, (e,), 0.1), "BF16")
        t[p + "pre_ff_layernorm.weight"] = (1 + heavy(rng, (e,), 0.1), "BF16")
        t[p + "self_attn.q_proj.weight"] = (heavy(rng, (nh * hd, e)), "BF16")
        t[p + "self_attn.k_proj.weight"] = (heavy(rng, (nkv * hd, e)), "BF16")
        t[p + "self_attn.v_proj.weight"] = (heavy(rng, (nkv * hd, e)), "BF16")
        t[p + "self_attn.o_proj.weight"] = (heavy(rng, (e, nh * hd)), "BF16")
        t.update(mamba2_tensors(rng, p + "mamba.", e, 512, 8, 2, 64, 4))
        for w, shp in (("gate_proj", (512, e)), ("up_proj", (512, e)), ("down_proj", (e, 512))):
            t[p + f"feed_forward.{w}.weight"] = (heavy(rng, shp), "BF16")
    return c, t, "gpt-2", {}


def mamba_tensors(rng, p: str, e: int, d_inner: int, d_state: int, dt_rank: int, d_conv: int) -> dict:
    """One Mamba (v1) mixer under `p` ("backbone.layers.0.mixer."): in_proj, conv1d with bias, x_proj, dt_proj
    with bias, A_log [d_inner, d_state] (S4D-real init plus noise), D, out_proj."""
    a_log = np.log(np.arange(1, d_state + 1, dtype=np.float32))[None, :] + heavy(rng, (d_inner, d_state), 0.1)
    return {p + "in_proj.weight": (heavy(rng, (2 * d_inner, e)), "BF16"),
            p + "conv1d.weight": (heavy(rng, (d_inner, 1, d_conv), 0.3), "BF16"),
            p + "conv1d.bias": (heavy(rng, (d_inner,), 0.1), "BF16"),
            p + "x_proj.weight": (heavy(rng, (dt_rank + 2 * d_state, d_inner)), "BF16"),
            p + "dt_proj.weight": (heavy(rng, (d_inner, dt_rank), 0.1), "BF16"),
            p + "dt_proj.bias": (heavy(rng, (d_inner,), 1.0), "BF16"),
            p + "A_log": (a_log, "BF16"),
            p + "D": (1 + heavy(rng, (d_inner,), 0.1), "BF16"),
            p + "out_proj.weight": (heavy(rng, (e, d_inner)), "BF16")}


def case_mamba(rng, falcon: bool = False):
    # state-spaces/mamba-130m-hf's config.json keys (raw: no config class), GPT-NeoX-sized vocabulary padded to a
    # multiple of 8 over the GPT-2 tokenizer. Mamba: lm_head stored and equal to the embedding (the converter
    # compares the data and omits it); Falcon-Mamba (B/C/dt RMS norms in llama.cpp): its own lm_head, 3 layers
    e, v, n = 256, 50280, 3 if falcon else 2
    c = {"architectures": ["FalconMambaForCausalLM" if falcon else "MambaForCausalLM"],
         "model_type": "falcon_mamba" if falcon else "mamba", "hidden_size": e, "intermediate_size": 2 * e,
         "num_hidden_layers": n, "n_layer": n, "state_size": 16, "conv_kernel": 4, "expand": 2,
         "time_step_rank": 16, "layer_norm_epsilon": 1e-5, "vocab_size": v, "pad_vocab_size_multiple": 8,
         "use_bias": False, "use_conv_bias": True, "rms_norm": True, "residual_in_fp32": True,
         "tie_word_embeddings": not falcon, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0,
         "hidden_act": "silu", "torch_dtype": "bfloat16"}
    emb = heavy(rng, (v, e))
    t = {"backbone.embeddings.weight": (emb, "BF16"), "backbone.norm_f.weight": (1 + heavy(rng, (e,), 0.1), "BF16"),
         "lm_head.weight": (heavy(rng, (v, e)) if falcon else emb, "BF16")}
    for i in range(n):
        p = f"backbone.layers.{i}."
        t[p + "norm.weight"] = (1 + heavy(rng, (e,), 0.1), "BF16")
        t.update(mamba_tensors(rng, p + "mixer.", e, 2 * e, 16, 16, 4))
    return c, t, "gpt-2", {}


def case_mamba2(rng):
    # mistralai/Mamba-Codestral-7B-v0.1's config.json keys (raw), 2 groups, the gated norm, untied lm_head, the
    # Llama 2 SentencePiece tokenizer (Codestral's is SentencePiece too: tokenizer.model first)
    e = 256
    c = {"architectures": ["Mamba2ForCausalLM"], "model_type": "mamba2", "hidden_size": e, "num_hidden_layers": 2,
         "state_size": 64, "conv_kernel": 4, "expand": 2, "head_dim": 64, "num_heads": 8, "n_groups": 2,
         "chunk_size": 256, "layer_norm_epsilon": 1e-5, "vocab_size": 32000, "pad_vocab_size_multiple": 16,
         "use_bias": False, "use_conv_bias": True, "rms_norm": True, "residual_in_fp32": True,
         "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
         "hidden_act": "silu", "torch_dtype": "bfloat16"}
    t = {"backbone.embeddings.weight": (heavy(rng, (32000, e)), "BF16"), "lm_head.weight": (heavy(rng, (32000, e)), "BF16"),
         "backbone.norm_f.weight": (1 + heavy(rng, (e,), 0.1), "BF16")}
    for i in range(2):
        p = f"backbone.layers.{i}."
        t[p + "norm.weight"] = (1 + heavy(rng, (e,), 0.1), "BF16")
        t.update(mamba2_tensors(rng, p + "mixer.", e, 512, 8, 2, 64, 4))
    return c, t, "llama-spm", {}


def case_nemotron(rng):
    # nvidia/Minitron-4B-Base's layout: LayerNorm1P norms with biases (stored as weight - 1), relu^2 MLP without a
    # gate, partial rotary, GQA, untied lm_head, F16 weights (the +1 in float16); Llama 2's SentencePiece tokenizer
    e, f, nh, nkv, hd, v = 256, 512, 4, 2, 64, 32000
    c = {"architectures": ["NemotronForCausalLM"], "model_type": "nemotron", "hidden_size": e, "intermediate_size": f,
         "num_hidden_layers": 2, "num_attention_heads": nh, "num_key_value_heads": nkv, "head_dim": hd,
         "vocab_size": v, "max_position_embeddings": 4096, "norm_eps": 1e-5, "partial_rotary_factor": 0.5,
         "rope_theta": 10000, "hidden_act": "relu2", "tie_word_embeddings": False, "bos_token_id": 2,
         "eos_token_id": 3, "torch_dtype": "float16"}
    t = {"model.embed_tokens.weight": (heavy(rng, (v, e)), "F16"), "lm_head.weight": (heavy(rng, (v, e)), "F16"),
         "model.norm.weight": (heavy(rng, (e,), 0.1), "F16"), "model.norm.bias": (heavy(rng, (e,), 0.1), "F16")}
    for i in range(2):
        p = f"model.layers.{i}."
        for n in ("input_layernorm", "post_attention_layernorm"):
            t[p + n + ".weight"] = (heavy(rng, (e,), 0.1), "F16")
            t[p + n + ".bias"] = (heavy(rng, (e,), 0.1), "F16")
        for n, shp in (("self_attn.q_proj", (nh * hd, e)), ("self_attn.k_proj", (nkv * hd, e)),
                       ("self_attn.v_proj", (nkv * hd, e)), ("self_attn.o_proj", (e, nh * hd)),
                       ("mlp.up_proj", (f, e)), ("mlp.down_proj", (e, f))):
            t[p + n + ".weight"] = (heavy(rng, shp), "F16")
    return c, t, "llama-spm", {}


def case_nemotron_h(rng):
    # nvidia/Nemotron-H-8B-Base-8K's config.json keys (raw: transformers 4.57.6 has no class), one layer of each
    # kind (pattern "M*-"): Mamba-2 with 2 groups, attention (GQA, no rope), relu^2 MLP; GPT-2's tokenizer stands in
    e, nh, nkv, hd, f = 256, 4, 2, 64, 512
    c = {"architectures": ["NemotronHForCausalLM"], "model_type": "nemotron_h", "hidden_size": e,
         "intermediate_size": f, "num_hidden_layers": 3, "hybrid_override_pattern": "M*-", "num_attention_heads": nh,
         "num_key_value_heads": nkv, "head_dim": hd, "attention_head_dim": hd, "mamba_num_heads": 8,
         "mamba_head_dim": 64, "n_groups": 2, "ssm_state_size": 64, "conv_kernel": 4, "expand": 2, "chunk_size": 128,
         "mamba_hidden_act": "silu", "mlp_hidden_act": "relu2", "layer_norm_epsilon": 1e-5, "vocab_size": 50264,
         "max_position_embeddings": 8192, "tie_word_embeddings": False, "use_bias": False, "use_conv_bias": True,
         "residual_in_fp32": False, "bos_token_id": 50256, "eos_token_id": 50256, "torch_dtype": "bfloat16"}
    t = {"backbone.embeddings.weight": (heavy(rng, (50264, e)), "BF16"), "lm_head.weight": (heavy(rng, (50264, e)), "BF16"),
         "backbone.norm_f.weight": (1 + heavy(rng, (e,), 0.1), "BF16")}
    for i, kind in enumerate(c["hybrid_override_pattern"]):
        p = f"backbone.layers.{i}."
        t[p + "norm.weight"] = (1 + heavy(rng, (e,), 0.1), "BF16")
        if kind == "M":
            t.update(mamba2_tensors(rng, p + "mixer.", e, 512, 8, 2, 64, 4))
        elif kind == "*":
            for n, shp in (("q_proj", (nh * hd, e)), ("k_proj", (nkv * hd, e)), ("v_proj", (nkv * hd, e)), ("o_proj", (e, nh * hd))):
                t[p + f"mixer.{n}.weight"] = (heavy(rng, shp), "BF16")
        else:
            t[p + "mixer.up_proj.weight"] = (heavy(rng, (f, e)), "BF16")
            t[p + "mixer.down_proj.weight"] = (heavy(rng, (e, f)), "BF16")
    return c, t, "gpt-2", {}


def f32_a_log(rng, n: int) -> np.ndarray:
    """An F32 A_log (log(1..n) plus noise, not BF16 values) half of whose values are inputs where torch's float32
    exp is not the correctly rounded one (found with kquant's port of the kernel this machine runs, models/vml_exp.py):
    the converter's -torch.exp(A_log) then checks the port end to end."""
    from kquant.models.vml_exp import torch_exp

    x = (np.log(np.arange(1, 2001, dtype=np.float64) % n + 1) + rng.uniform(-0.5, 0.5, 2000)).astype(np.float32)
    hard = torch_exp(x) != np.exp(x.astype(np.float64)).astype(np.float32)
    out = np.concatenate([x[hard][: n // 2], x[~hard][: n - n // 2]])
    assert len(out) == n
    return out


def case_nemotron_h_moe(rng, mtp: bool = False):
    # Nemotron 3 Nano's config.json keys (raw: transformers 4.57.6 has no class) at width 256, pattern "ME*E": Mamba-2,
    # 4 sigmoid-routed relu^2 experts (up/down) with e_score_correction_bias and a shared expert, attention (GQA);
    # `mtp`: Nemotron 3 Super's latent experts (moe_latent_size, fc1/fc2_latent_proj) and its MTP head
    # (mtp.layers.0: fusion + attention, mtp.layers.1: MoE + final norm). GPT-2's tokenizer stands in.
    e, nh, nkv, hd, f, f_sh, n_x = 256, 4, 2, 64, 256, 512, 4
    m = 128 if mtp else e  # the experts' width
    c = {"architectures": ["NemotronHForCausalLM"], "model_type": "nemotron_h", "hidden_size": e,
         "intermediate_size": f, "num_hidden_layers": 4, "hybrid_override_pattern": "ME*E", "num_attention_heads": nh,
         "num_key_value_heads": nkv, "head_dim": hd, "mamba_num_heads": 8, "mamba_head_dim": 64, "n_groups": 2,
         "ssm_state_size": 64, "conv_kernel": 4, "expand": 2, "chunk_size": 128, "mamba_hidden_act": "silu",
         "mlp_hidden_act": "relu2", "layer_norm_epsilon": 1e-5, "vocab_size": 50264, "max_position_embeddings": 8192,
         "tie_word_embeddings": False, "use_bias": False, "use_conv_bias": True, "residual_in_fp32": False,
         "n_routed_experts": n_x, "num_experts_per_tok": 2, "moe_intermediate_size": f,
         "moe_shared_expert_intermediate_size": f_sh, "n_shared_experts": 1, "n_group": 1, "topk_group": 1,
         "norm_topk_prob": True, "routed_scaling_factor": 2.5, "partial_rotary_factor": 1.0, "rope_theta": 10000,
         "bos_token_id": 50256, "eos_token_id": 50256, "torch_dtype": "bfloat16"}
    if mtp:
        c |= {"moe_latent_size": m, "num_nextn_predict_layers": 1, "mtp_hybrid_override_pattern": "*E"}
    t = {"backbone.embeddings.weight": (heavy(rng, (50264, e)), "BF16"), "lm_head.weight": (heavy(rng, (50264, e)), "BF16"),
         "backbone.norm_f.weight": (1 + heavy(rng, (e,), 0.1), "BF16")}

    def attention(p):
        for n, shp in (("q_proj", (nh * hd, e)), ("k_proj", (nkv * hd, e)), ("v_proj", (nkv * hd, e)), ("o_proj", (e, nh * hd))):
            t[p + f"mixer.{n}.weight"] = (heavy(rng, shp), "BF16")

    def moe(p):
        t[p + "mixer.gate.weight"] = (heavy(rng, (n_x, e)), "BF16")
        t[p + "mixer.gate.e_score_correction_bias"] = (heavy(rng, (n_x,), 1.0), "F32")
        for x in range(n_x):
            t[p + f"mixer.experts.{x}.up_proj.weight"] = (heavy(rng, (f, m)), "BF16")
            t[p + f"mixer.experts.{x}.down_proj.weight"] = (heavy(rng, (m, f)), "BF16")
        t[p + "mixer.shared_experts.up_proj.weight"] = (heavy(rng, (f_sh, e)), "BF16")
        t[p + "mixer.shared_experts.down_proj.weight"] = (heavy(rng, (e, f_sh)), "BF16")
        if mtp:
            t[p + "mixer.fc1_latent_proj.weight"] = (heavy(rng, (m, e)), "BF16")
            t[p + "mixer.fc2_latent_proj.weight"] = (heavy(rng, (e, m)), "BF16")

    for i, kind in enumerate(c["hybrid_override_pattern"]):
        p = f"backbone.layers.{i}."
        t[p + "norm.weight"] = (1 + heavy(rng, (e,), 0.1), "BF16")
        if kind == "M":
            t.update(mamba2_tensors(rng, p + "mixer.", e, 512, 8, 2, 64, 4))
            t[p + "mixer.A_log"] = (f32_a_log(rng, 8), "F32")
        elif kind == "*":
            attention(p)
        else:
            moe(p)
    if mtp:
        for n in ("mtp.layers.0.enorm", "mtp.layers.0.hnorm", "mtp.layers.0.norm", "mtp.layers.1.norm",
                  "mtp.layers.1.final_layernorm"):
            t[n + ".weight"] = (1 + heavy(rng, (e,), 0.1), "BF16")
        t["mtp.layers.0.eh_proj.weight"] = (heavy(rng, (e, 2 * e)), "BF16")
        attention("mtp.layers.0.")
        moe("mtp.layers.1.")
    return c, t, "gpt-2", {}


def case_jamba(rng):
    # ai21labs/Jamba-v0.1's layout scaled down: layer 0 Mamba + dense MLP, layer 1 attention + 4 experts (periods 2,
    # offsets 1), the Mamba mixer with dt/B/C RMS norms, untied lm_head; Llama 2's SentencePiece tokenizer
    e, f, nh, nkv, v, di, ds, r = 256, 512, 4, 2, 32000, 512, 16, 16
    c = base_config("JambaForCausalLM", "jamba", v, hidden_size=e, intermediate_size=f, num_attention_heads=nh,
                    num_key_value_heads=nkv, num_experts=4, num_experts_per_tok=2, expert_layer_period=2,
                    expert_layer_offset=1, attn_layer_period=2, attn_layer_offset=1, mamba_d_state=ds, mamba_d_conv=4,
                    mamba_expand=2, mamba_dt_rank="auto", mamba_conv_bias=True, mamba_proj_bias=False,
                    rms_norm_eps=1e-6, max_position_embeddings=262144, tie_word_embeddings=False,
                    bos_token_id=1, eos_token_id=2, pad_token_id=0, rope_theta=None)
    t = {"model.embed_tokens.weight": (heavy(rng, (v, e)), "BF16"), "lm_head.weight": (heavy(rng, (v, e)), "BF16"),
         "model.final_layernorm.weight": (1 + heavy(rng, (e,), 0.1), "BF16")}
    for i in range(2):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = (1 + heavy(rng, (e,), 0.1), "BF16")
        t[p + "pre_ff_layernorm.weight"] = (1 + heavy(rng, (e,), 0.1), "BF16")
        if i == 0:
            t.update(mamba_tensors(rng, p + "mamba.", e, di, ds, r, 4))
            for n, dim in (("dt_layernorm", r), ("b_layernorm", ds), ("c_layernorm", ds)):
                t[p + f"mamba.{n}.weight"] = (1 + heavy(rng, (dim,), 0.1), "BF16")
            for w, shp in (("gate_proj", (f, e)), ("up_proj", (f, e)), ("down_proj", (e, f))):
                t[p + f"feed_forward.{w}.weight"] = (heavy(rng, shp), "BF16")
        else:
            for n, shp in (("q_proj", (nh * 64, e)), ("k_proj", (nkv * 64, e)), ("v_proj", (nkv * 64, e)), ("o_proj", (e, nh * 64))):
                t[p + f"self_attn.{n}.weight"] = (heavy(rng, shp), "BF16")
            t[p + "feed_forward.router.weight"] = (heavy(rng, (4, e)), "BF16")
            for x in range(4):
                for w, shp in (("gate_proj", (f, e)), ("up_proj", (f, e)), ("down_proj", (e, f))):
                    t[p + f"feed_forward.experts.{x}.{w}.weight"] = (heavy(rng, shp), "BF16")
    return c, t, "llama-spm", {}


def case_phi2(rng):
    # microsoft/phi-2's layout (transformers names): one LayerNorm per layer (parallel attention and MLP), biases on
    # every projection and on lm_head, partial rotary, a vocabulary padded past the tokenizer (GPT-2's stands in)
    e, f, nh, v = 256, 1024, 4, 51200
    c = base_config("PhiForCausalLM", "phi", v, hidden_size=e, intermediate_size=f, num_attention_heads=nh,
                    num_key_value_heads=nh, partial_rotary_factor=0.5, layer_norm_eps=1e-5, rms_norm_eps=None,
                    hidden_act="gelu_new", max_position_embeddings=2048, tie_word_embeddings=False, qk_layernorm=False,
                    bos_token_id=50256, eos_token_id=50256, torch_dtype="float16")
    t = {"model.embed_tokens.weight": (heavy(rng, (v, e)), "F16"), "lm_head.weight": (heavy(rng, (v, e)), "F16"),
         "lm_head.bias": (heavy(rng, (v,)), "F16"), "model.final_layernorm.weight": (1 + heavy(rng, (e,), 0.1), "F16"),
         "model.final_layernorm.bias": (heavy(rng, (e,), 0.1), "F16")}
    for i in range(2):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = (1 + heavy(rng, (e,), 0.1), "F16")
        t[p + "input_layernorm.bias"] = (heavy(rng, (e,), 0.1), "F16")
        for n, shp in (("self_attn.q_proj", (e, e)), ("self_attn.k_proj", (e, e)), ("self_attn.v_proj", (e, e)),
                       ("self_attn.dense", (e, e)), ("mlp.fc1", (f, e)), ("mlp.fc2", (e, f))):
            t[p + n + ".weight"] = (heavy(rng, shp), "F16")
            t[p + n + ".bias"] = (heavy(rng, shp[:1]), "F16")
    return c, t, "gpt-2", {}


def case_qwen35(rng, moe: bool = False):
    # Qwen3.5's text config (flat, as transformers 5 writes Qwen3_5ForCausalLM; no 4.57.6 config class): layer 0
    # gated delta-net with 2 key / 4 value heads (the converter's V-head reorder), layer 1 full attention, dense MLP,
    # one MTP layer, interleaved mrope; GPT-2's tokenizer stands in for Qwen3.5's own
    c = base_config("Qwen3_5ForCausalLM", "qwen3_5_text", 50257, hidden_size=256, intermediate_size=512,
                    num_attention_heads=2, num_key_value_heads=1, head_dim=128, rope_theta=None, rms_norm_eps=1e-6,
                    max_position_embeddings=262144, layer_types=["linear_attention", "full_attention"],
                    full_attention_interval=2, linear_conv_kernel_dim=4, linear_key_head_dim=64, linear_value_head_dim=64,
                    linear_num_key_heads=2, linear_num_value_heads=4, mtp_num_hidden_layers=1, attn_output_gate=True,
                    rope_parameters={"mrope_interleaved": True, "mrope_section": [11, 11, 10], "rope_type": "default",
                                     "rope_theta": 10000000.0, "partial_rotary_factor": 0.25},
                    tie_word_embeddings=False, bos_token_id=50256, eos_token_id=50256)
    if moe:  # Qwen3.5-35B-A3B's MoE keys; experts fused as transformers 5 stores them (no .weight suffix)
        c.update(architectures=["Qwen3_5MoeForCausalLM"], model_type="qwen3_5_moe_text", num_experts=4,
                 num_experts_per_tok=2, moe_intermediate_size=256, shared_expert_intermediate_size=256)
    e, v, hd, ff = 256, 50257, 128, 512
    nk, nv, hk, hv = 2, 4, 64, 64
    zc = lambda shape: (heavy(rng, shape, 0.1), "BF16")
    t = {"model.embed_tokens.weight": (heavy(rng, (v, e)), "BF16"), "model.norm.weight": zc((e,)),
         "lm_head.weight": (heavy(rng, (v, e)), "BF16")}

    def block(p, kind):
        t[p + "input_layernorm.weight"] = zc((e,))
        t[p + "post_attention_layernorm.weight"] = zc((e,))
        if moe:
            t.update({k: x for k, x in moe_tensors(rng, p + "mlp.", e, 4, 256, shared=256).items() if ".experts." not in k})
            t[p + "mlp.experts.gate_up_proj"] = (heavy(rng, (4, 2 * 256, e)), "BF16")
            t[p + "mlp.experts.down_proj"] = (heavy(rng, (4, e, 256)), "BF16")
        else:
            for w, shp in (("gate_proj", (ff, e)), ("up_proj", (ff, e)), ("down_proj", (e, ff))):
                t[p + f"mlp.{w}.weight"] = (heavy(rng, shp), "BF16")
        if kind == "full":
            t.update({p + "self_attn.q_proj.weight": (heavy(rng, (2 * 2 * hd, e)), "BF16"),
                      p + "self_attn.k_proj.weight": (heavy(rng, (hd, e)), "BF16"),
                      p + "self_attn.v_proj.weight": (heavy(rng, (hd, e)), "BF16"),
                      p + "self_attn.o_proj.weight": (heavy(rng, (e, 2 * hd)), "BF16"),
                      p + "self_attn.q_norm.weight": zc((hd,)), p + "self_attn.k_norm.weight": zc((hd,))})
            return
        a = p + "linear_attn."
        t.update({a + "in_proj_qkv.weight": (heavy(rng, (2 * nk * hk + nv * hv, e)), "BF16"),
                  a + "in_proj_z.weight": (heavy(rng, (nv * hv, e)), "BF16"),
                  a + "in_proj_b.weight": (heavy(rng, (nv, e)), "BF16"),
                  a + "in_proj_a.weight": (heavy(rng, (nv, e)), "BF16"),
                  a + "conv1d.weight": (heavy(rng, (2 * nk * hk + nv * hv, 1, 4), 0.3), "BF16"),
                  a + "dt_bias": (1 + heavy(rng, (nv,), 0.1), "BF16"), a + "A_log": (heavy(rng, (nv,), 0.5), "BF16"),
                  a + "norm.weight": (1 + heavy(rng, (hv,), 0.1), "F32"),
                  a + "out_proj.weight": (heavy(rng, (e, nv * hv)), "BF16")})

    block("model.layers.0.", "linear")
    block("model.layers.1.", "full")
    t.update({"mtp.fc.weight": (heavy(rng, (e, 2 * e)), "BF16"), "mtp.norm.weight": zc((e,)),
              "mtp.pre_fc_norm_embedding.weight": zc((e,)), "mtp.pre_fc_norm_hidden.weight": zc((e,))})
    block("mtp.layers.0.", "full")
    return c, t, "gpt-2", {}



_GLM_TOKENIZER: list[str] = []


def glm_tokenizer_json() -> str:
    """A GLM-style tokenizer.json: the qwen2 fixture's BPE plus GLM-4's special tokens as added tokens
    (no registry ships a real GLM tokenizer.json; the converter's GLM vocabulary code needs those
    tokens, and the qwen2 pre-tokenizer hash keeps it on the same get_vocab_base path)."""
    if not _GLM_TOKENIZER:
        tj = json.loads(gzip.decompress((FIXTURES / "qwen2" / "tokenizer.json.gz").read_bytes()))
        tc = json.loads((FIXTURES / "glm4" / "tokenizer_config.json").read_text())
        have = {a["content"] for a in tj["added_tokens"]}
        for i, d in sorted(tc["added_tokens_decoder"].items(), key=lambda kv: int(kv[0])):
            if d["content"] not in have:
                tj["added_tokens"].append({"id": int(i), "content": d["content"], "single_word": False, "lstrip": False,
                                           "rstrip": False, "normalized": False, "special": True})
        _GLM_TOKENIZER.append(json.dumps(tj, ensure_ascii=False))
    return _GLM_TOKENIZER[0]


def glm4_layer_tensors(rng, c: dict, i: int, dt="BF16") -> dict[str, tuple[np.ndarray, str]]:
    """GLM-4 (0414) MLP and extra norms of layer i: fused gate_up_proj, post-attention and post-MLP norms."""
    e, ff, p = c["hidden_size"], c["intermediate_size"], f"model.layers.{i}."
    return {p + "mlp.gate_up_proj.weight": (heavy(rng, (2 * ff, e)), dt), p + "mlp.down_proj.weight": (heavy(rng, (e, ff)), dt),
            p + "post_self_attn_layernorm.weight": (1 + heavy(rng, (e,), 0.1), dt),
            p + "post_mlp_layernorm.weight": (1 + heavy(rng, (e,), 0.1), dt)}


def case_glm4(rng):
    # GLM-4-0414's layout (q/k/v biases, fused gate/up, four norms a layer, half rotary); widths 256
    c = base_config("Glm4ForCausalLM", "glm4", 151936, hidden_size=256, intermediate_size=512, head_dim=64,
                    num_attention_heads=4, num_key_value_heads=2, partial_rotary_factor=0.5, attention_bias=True,
                    max_position_embeddings=32768, rms_norm_eps=1e-5, tie_word_embeddings=True,
                    pad_token_id=151643, eos_token_id=[151643, 151652, 151654])
    t = dense_tensors(rng, {**c, "moe": True}, qkv_bias=True, lm_head=False)
    for i in range(c["num_hidden_layers"]):
        t |= glm4_layer_tensors(rng, c, i)
    return c, t, "glm4", {"tokenizer.json": glm_tokenizer_json()}


def case_glm(rng):
    # GlmForCausalLM (glm-4-9b-chat-hf / GLM-Edge: transformers' GlmConfig, defaults for the unset keys): q/k/v biases,
    # gate_up_proj fused and kept fused (ffn_up), half rotary; no seq_length, so the converter writes hidden_size as
    # the context length
    c = base_config("GlmForCausalLM", "glm", 151936, hidden_size=256, intermediate_size=512, head_dim=64,
                    num_attention_heads=4, num_key_value_heads=2, rope_theta=None, rms_norm_eps=None,
                    max_position_embeddings=8192, tie_word_embeddings=False, pad_token_id=151643,
                    eos_token_id=[151643, 151652, 151654])
    t = dense_tensors(rng, {**c, "moe": True}, qkv_bias=True)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "mlp.gate_up_proj.weight"] = (heavy(rng, (1024, 256)), "BF16")
        t[p + "mlp.down_proj.weight"] = (heavy(rng, (256, 512)), "BF16")
    return c, t, "glm4", {"tokenizer.json": glm_tokenizer_json()}


def case_jais2(rng):
    # Jais2ForCausalLM (no transformers 4.57.6 config class: config.json read as it is, as transformers 5 writes it):
    # LayerNorms with biases, biased q/k/v/o and up/down MLP (no gate)
    c = base_config("Jais2ForCausalLM", "jais2", 50257, hidden_size=256, intermediate_size=512, num_attention_heads=4,
                    num_key_value_heads=4, head_dim=64, rms_norm_eps=None, layer_norm_eps=1e-5, hidden_act="relu2",
                    attention_bias=True, mlp_bias=True, rope_theta=None, rope_parameters={"rope_type": "default",
                    "rope_theta": 500000.0}, max_position_embeddings=8192, bos_token_id=0, eos_token_id=50256,
                    torch_dtype=None, dtype="bfloat16")
    t = dense_tensors(rng, {**c, "moe": True}, qkv_bias=True, o_bias=True)
    t["model.norm.bias"] = (heavy(rng, (256,), 0.1), "BF16")
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for n in ("input_layernorm", "post_attention_layernorm"):
            t[p + n + ".bias"] = (heavy(rng, (256,), 0.1), "BF16")
        t[p + "mlp.up_proj.weight"] = (heavy(rng, (512, 256)), "BF16")
        t[p + "mlp.up_proj.bias"] = (heavy(rng, (512,)), "BF16")
        t[p + "mlp.down_proj.weight"] = (heavy(rng, (256, 512)), "BF16")
        t[p + "mlp.down_proj.bias"] = (heavy(rng, (256,)), "BF16")
    return c, t, "gpt-2", {}


def case_glm4v(rng, moe: bool = False):
    # GLM-4.1V / GLM-4.5V as transformers 4.57 saves them (Glm4v(Moe)ForConditionalGeneration: text_config with
    # M-RoPE sections summing to rotary dim / 2 = 16, model.language_model.*, lm_head, model.visual.*): the
    # GLM-4 layers (dense: Q/K rows permuted to NeoX order by the converter; no head_dim key, as released) or
    # GLM-4.5's (MoE: one dense layer, one with 4 routed experts + 1 shared, no NextN, no q/k norms), untied
    text = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                vocab_size=151936, max_position_embeddings=32768, rms_norm_eps=1e-5, partial_rotary_factor=0.5,
                rope_theta=10000.0, tie_word_embeddings=False, pad_token_id=151643, eos_token_id=[151643, 151652, 151654],
                rope_scaling={"type": "default", "rope_type": "default", "mrope_section": [4, 6, 6]},
                model_type="glm4v_moe_text" if moe else "glm4v_text")
    if moe:
        text |= dict(attention_bias=True, moe_intermediate_size=256, n_routed_experts=4, num_experts_per_tok=2,
                     n_shared_experts=1, first_k_dense_replace=1, n_group=1, topk_group=1, routed_scaling_factor=1.0,
                     norm_topk_prob=True)
        t = glm4moe_tensors(rng, text, nextn_full=False)
    else:
        t = dense_tensors(rng, {**text, "moe": True}, qkv_bias=True, lm_head=True)
        for i in range(text["num_hidden_layers"]):
            t |= glm4_layer_tensors(rng, text, i)
    vision = {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "patch_size": 14,
              "spatial_merge_size": 2, "out_hidden_size": 256, "model_type": "glm4v_moe" if moe else "glm4v"}
    c = {"architectures": ["Glm4vMoeForConditionalGeneration" if moe else "Glm4vForConditionalGeneration"],
         "model_type": "glm4v_moe" if moe else "glm4v", "text_config": text, "vision_config": vision,
         "image_token_id": 151343, "video_token_id": 151344, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
    t = language_model(t, "model.language_model.")
    t |= vision_parts(rng, {"model.visual.patch_embed.proj.weight": (32, 3, 2, 14, 14),
                            "model.visual.blocks.0.attn.qkv.weight": (96, 32), "model.visual.post_layernorm.weight": (32,),
                            "model.visual.merger.proj.weight": (256, 128)})
    return c, t, "glm4", {"tokenizer.json": glm_tokenizer_json()}


def glm4moe_tensors(rng, c: dict, *, nextn_full: bool, dt="BF16") -> dict[str, tuple[np.ndarray, str]]:
    """GLM-4.5 layers: first_k_dense_replace dense MLPs, then router + e_score_correction_bias + routed and
    shared experts; then num_nextn_predict_layers NextN layers (MoE layers plus eh_proj, enorm, hnorm,
    shared_head.norm and, with `nextn_full`, their own embed_tokens and shared_head.head)."""
    e, v, n_exp, f_exp = c["hidden_size"], c["vocab_size"], c["n_routed_experts"], c["moe_intermediate_size"]
    n_main, n_all = c["num_hidden_layers"], c["num_hidden_layers"] + c.get("num_nextn_predict_layers", 0)
    t = dense_tensors(rng, {**c, "moe": True, "num_hidden_layers": n_all}, qkv_bias=True, qk_norm=c.get("use_qk_norm", False),
                      lm_head=not c.get("tie_word_embeddings"), dt=dt)
    f_sh = f_exp * c["n_shared_experts"]
    for i in range(n_all):
        p = f"model.layers.{i}."
        if i < c["first_k_dense_replace"]:
            for w, shp in (("gate_proj", (c["intermediate_size"], e)), ("up_proj", (c["intermediate_size"], e)),
                           ("down_proj", (e, c["intermediate_size"]))):
                t[p + f"mlp.{w}.weight"] = (heavy(rng, shp), dt)
        else:
            t[p + "mlp.gate.weight"] = (heavy(rng, (n_exp, e)), "F32")
            t[p + "mlp.gate.e_score_correction_bias"] = (heavy(rng, (n_exp,), 0.5), "F32")
            for w, shp in (("gate_proj", (f_sh, e)), ("up_proj", (f_sh, e)), ("down_proj", (e, f_sh))):
                t[p + f"mlp.shared_experts.{w}.weight"] = (heavy(rng, shp), dt)
            for x in range(n_exp):
                for w, shp in (("gate_proj", (f_exp, e)), ("up_proj", (f_exp, e)), ("down_proj", (e, f_exp))):
                    t[p + f"mlp.experts.{x}.{w}.weight"] = (heavy(rng, shp), dt)
        if i >= n_main:
            t[p + "eh_proj.weight"] = (heavy(rng, (e, 2 * e)), dt)
            for n in ("enorm", "hnorm", "shared_head.norm"):
                t[p + n + ".weight"] = (1 + heavy(rng, (e,), 0.1), dt)
            if nextn_full:
                t[p + "embed_tokens.weight"] = (heavy(rng, (v, e)), dt)
                t[p + "shared_head.head.weight"] = (heavy(rng, (v, e)), dt)
    return t


def case_glm4moe(rng):
    # GLM-4.5's layout, widths 256: one dense layer, one MoE layer (4 routed experts + 1 shared, sigmoid
    # routing with correction bias, n_group/topk_group), q/k norms, and the NextN layer the converter
    # keeps as block 2 (without its optional embed_tokens / shared_head.head, to keep the fixture small)
    c = base_config("Glm4MoeForCausalLM", "glm4_moe", 151936, hidden_size=256, intermediate_size=512, head_dim=64,
                    num_attention_heads=4, num_key_value_heads=2, partial_rotary_factor=0.5, attention_bias=True,
                    moe_intermediate_size=256, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1,
                    first_k_dense_replace=1, n_group=1, topk_group=1, routed_scaling_factor=2.5, norm_topk_prob=True,
                    use_qk_norm=True, num_nextn_predict_layers=1, max_position_embeddings=131072, rms_norm_eps=1e-5,
                    tie_word_embeddings=True, pad_token_id=151643, eos_token_id=[151643, 151652, 151654])
    return c, glm4moe_tensors(rng, c, nextn_full=False), "glm4", {"tokenizer.json": glm_tokenizer_json()}


def solar_tokenizer_json() -> str:
    """GPT-2's tokenizer.json plus the added tokens SolarOpenModel.set_vocab looks up (<unk>, <|startoftext|>; no
    registry ships Solar Open's), with no special token named in tokenizer_config.json (fixtures/tokenizers/solar-open)
    or config.json, so the converter's own assignments decide them."""
    tj = json.loads(gzip.decompress((FIXTURES / "gpt-2" / "tokenizer.json.gz").read_bytes()))
    for i, content in ((50257, "<unk>"), (50258, "<|startoftext|>")):
        tj["added_tokens"].append({"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
                                   "normalized": False, "special": True})
    return json.dumps(tj, ensure_ascii=False)


def case_solar_open(rng):
    # Upstage Solar Open's layout (GLM-4.5's MoE, config.json read as it is) at width 256: every layer MoE (4 routed +
    # 1 shared experts, sigmoid router with correction bias), no q/k norms, no MTP layer
    c = base_config("SolarOpenForCausalLM", "solar_open", 50304, hidden_size=256, intermediate_size=512, head_dim=64,
                    num_attention_heads=4, num_key_value_heads=2, partial_rotary_factor=1.0, attention_bias=False,
                    moe_intermediate_size=256, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1,
                    first_k_dense_replace=0, n_group=1, topk_group=1, routed_scaling_factor=1.0, norm_topk_prob=True,
                    use_qk_norm=False, num_nextn_predict_layers=0, max_position_embeddings=131072, rms_norm_eps=1e-5,
                    rope_theta=1000000.0, tie_word_embeddings=False)
    t = glm4moe_tensors(rng, c, nextn_full=False)
    t = {n: v for n, v in t.items() if not n.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias"))}
    return c, t, "solar-open", {"tokenizer.json": solar_tokenizer_json()}


def case_glm4moe_mtp(rng):
    # narrow (32: four vocabulary-sized tensors): the NextN layer's own embed_tokens and shared_head.head, an
    # untied lm_head, no q/k norms, config defaults for n_group / topk_group / routed_scaling_factor / norm_topk_prob
    c = base_config("Glm4MoeForCausalLM", "glm4_moe", 151936, hidden_size=32, intermediate_size=64, head_dim=16,
                    num_attention_heads=2, num_key_value_heads=1, attention_bias=True, moe_intermediate_size=32,
                    n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1,
                    num_nextn_predict_layers=1, tie_word_embeddings=False, rope_theta=1000000.0)
    return c, glm4moe_tensors(rng, c, nextn_full=True, dt="F16"), "glm4", {"tokenizer.json": glm_tokenizer_json()}


def case_ernie4_5(rng):
    # ERNIE-4.5-0.3B's layout (tied embeddings, head_dim set); layer 1 as the remote-code checkpoints write it
    # ("ernie." prefix, fused qkv_proj and up_gate_proj). No real ERNIE tokenizer.model in the registries:
    # the Llama SentencePiece one, with ERNIE's add_prefix_space in tokenizer_config.json
    c = base_config("Ernie4_5_ForCausalLM", "ernie4_5", 32000, hidden_size=256, intermediate_size=512, head_dim=64,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=131072, rope_theta=500000.0,
                    rms_norm_eps=1e-5, tie_word_embeddings=True, use_bias=False, bos_token_id=1, eos_token_id=2,
                    pad_token_id=0)
    t = dense_tensors(rng, c, lm_head=False)
    p, q = "model.layers.1.", "ernie.layers.1."
    qkv = [t.pop(p + f"self_attn.{n}_proj.weight")[0] for n in "qkv"]
    t[q + "self_attn.qkv_proj.weight"] = (np.concatenate(qkv), "BF16")
    gate, up = t.pop(p + "mlp.gate_proj.weight")[0], t.pop(p + "mlp.up_proj.weight")[0]
    t[q + "mlp.up_gate_proj.weight"] = (np.concatenate([gate, up]), "BF16")
    for n in [n for n in t if n.startswith(p)]:
        t[q + n[len(p):]] = t.pop(n)
    return c, t, "ernie-spm", {}


def case_ernie4_5moe(rng):
    # ERNIE-4.5-21B-A3B's layout, widths 256: layer 0 dense (moe_layer_start_index 1), layers 1-2 MoE with
    # 4 experts, one shared expert (intermediate_size // num_key_value_heads = 256 as llama.cpp reads it),
    # moe_statics correction bias, and the MTP tensors the converter drops
    c = base_config("Ernie4_5_MoeForCausalLM", "ernie4_5_moe", 32000, hidden_size=256, intermediate_size=512,
                    head_dim=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=3,
                    moe_intermediate_size=256, moe_k=2, moe_num_experts=4, moe_num_shared_experts=1,
                    moe_layer_start_index=1, moe_layer_end_index=2, moe_layer_interval=1, max_position_embeddings=131072,
                    rope_theta=500000.0, tie_word_embeddings=True, use_bias=False, bos_token_id=1, eos_token_id=2)
    e = c["hidden_size"]
    t = dense_tensors(rng, {**c, "moe": True}, lm_head=False)
    for i in range(3):
        p = f"model.layers.{i}.mlp."
        if i == 0:
            for w, shp in (("gate_proj", (512, e)), ("up_proj", (512, e)), ("down_proj", (e, 512))):
                t[p + f"{w}.weight"] = (heavy(rng, shp), "BF16")
            continue
        t[p + "gate.weight"] = (heavy(rng, (4, e)), "F32")
        t[p + "moe_statics.e_score_correction_bias"] = (heavy(rng, (1, 4), 0.5), "F32")
        for w, shp in (("gate_proj", (256, e)), ("up_proj", (256, e)), ("down_proj", (e, 256))):
            t[p + f"shared_experts.{w}.weight"] = (heavy(rng, shp), "BF16")
            for x in range(4):
                t[p + f"experts.{x}.{w}.weight"] = (heavy(rng, shp), "BF16")
    t["model.mtp_block.0.input_layernorm.weight"] = (1 + heavy(rng, (e,), 0.1), "BF16")
    t["model.mtp_block.0.self_attn.q_proj.weight"] = (heavy(rng, (e, e)), "BF16")
    t["model.mtp_emb_norm.0.weight"] = (1 + heavy(rng, (e,), 0.1), "BF16")
    t["model.mtp_hidden_norm.0.weight"] = (1 + heavy(rng, (e,), 0.1), "BF16")
    t["model.mtp_linear_proj.0.weight"] = (heavy(rng, (e, 2 * e)), "BF16")
    return c, t, "ernie-spm", {}
def case_granitemoe(rng):
    # granite-3.1-3b-a800m's layout: stacked experts, input_linear = gate and up fused (4 experts, widths 256)
    c = base_config("GraniteMoeForCausalLM", "granitemoe", 32000, hidden_size=256, intermediate_size=256,
                    num_local_experts=4, num_experts_per_tok=2, rope_theta=10000.0, max_position_embeddings=4096,
                    rms_norm_eps=1e-6, tie_word_embeddings=True, attention_multiplier=0.015625, embedding_multiplier=12.0,
                    residual_multiplier=0.22, logits_scaling=6.0, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return c, granite_moe_tensors(rng, c), "llama-spm", {}


def case_granitemoeshared(rng):
    # a shared MLP 320 wide (K-quant rows fall back) beside the routed experts; config defaults for the multipliers
    c = base_config("GraniteMoeSharedForCausalLM", "granitemoeshared", 32000, hidden_size=256, intermediate_size=256,
                    shared_intermediate_size=320, num_local_experts=4, num_experts_per_tok=2,
                    rope_scaling={"rope_type": "linear", "factor": 2.0}, bos_token_id=1, eos_token_id=2)
    return c, granite_moe_tensors(rng, c), "llama-spm", {}


def granite_moe_tensors(rng, c: dict) -> dict[str, tuple[np.ndarray, str]]:
    """GraniteMoe(Shared) layers: router, stacked input_linear (n_expert, 2 * n_ff, n_embd) / output_linear."""
    t = dense_tensors(rng, {**c, "moe": True}, lm_head=not c.get("tie_word_embeddings"))
    e, f, n, sf = c["hidden_size"], c["intermediate_size"], c["num_local_experts"], c.get("shared_intermediate_size")
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "block_sparse_moe.router.layer.weight"] = (heavy(rng, (n, e)), "BF16")
        t[p + "block_sparse_moe.input_linear.weight"] = (heavy(rng, (n, 2 * f, e)), "BF16")
        t[p + "block_sparse_moe.output_linear.weight"] = (heavy(rng, (n, e, f)), "BF16")
        if sf:
            t[p + "shared_mlp.input_linear.weight"] = (heavy(rng, (2 * sf, e)), "BF16")
            t[p + "shared_mlp.output_linear.weight"] = (heavy(rng, (e, sf)), "BF16")
    return t


def granite_swa_config(arch: str, model_type: str, **kw) -> dict:
    """A Granite SWA config as transformers 5 writes it (no 4.57.6 class: the converter reads it as it is)."""
    c = base_config(arch, model_type, 50257, hidden_size=256, intermediate_size=512, num_hidden_layers=3,
                    rope_theta=None, rope_parameters={"rope_type": "default", "rope_theta": 10000000.0},
                    max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=True, sliding_window=128,
                    attention_multiplier=0.015625, embedding_multiplier=12.0, residual_multiplier=0.22,
                    logits_scaling=8.0, bos_token_id=50256, eos_token_id=50256, pad_token_id=None, torch_dtype=None,
                    dtype="bfloat16", layer_rope_theta=[10000000.0] * 3)
    c.update(kw)
    return {k: v for k, v in c.items() if v is not None}


def sinks(rng, c: dict, t: dict) -> dict:
    """Per-head attention sinks (self_attn.sinks, a bare parameter) in every layer."""
    for i in range(c["num_hidden_layers"]):
        t[f"model.layers.{i}.self_attn.sinks"] = (heavy(rng, (c["num_attention_heads"],), 1.0), "BF16")
    return t


def case_granite_swa(rng):
    # GraniteSWAForCausalLM: interleaved sliding-window layers from layer_types, NoPE layers (no_rope_layers), sinks
    c = granite_swa_config("GraniteSWAForCausalLM", "granite_swa",
                           layer_types=["full_attention", "sliding_attention", "sliding_attention"],
                           no_rope_layers=[0, 1, 1])
    return c, sinks(rng, c, dense_tensors(rng, c, lm_head=False)), "gpt-2", {}


def case_granitemoe_swa(rng):
    # GraniteMoeSWAForCausalLM as transformers 5 saves it: router.weight, stacked experts.gate_up_proj / down_proj
    # (bare parameters, kept fused), a 320-wide shared MLP; no layer_types (the converter's i % 4 pattern)
    c = granite_swa_config("GraniteMoeSWAForCausalLM", "granitemoe_swa", intermediate_size=256, num_local_experts=4,
                           num_experts_per_tok=2, shared_intermediate_size=320, tie_word_embeddings=False,
                           max_position_embeddings=4096, sliding_window=64)
    t = sinks(rng, c, dense_tensors(rng, {**c, "moe": True}))
    e, f, n, sf = 256, 256, 4, 320
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "block_sparse_moe.router.weight"] = (heavy(rng, (n, e)), "BF16")
        t[p + "block_sparse_moe.experts.gate_up_proj"] = (heavy(rng, (n, 2 * f, e)), "BF16")
        t[p + "block_sparse_moe.experts.down_proj"] = (heavy(rng, (n, e, f)), "BF16")
        t[p + "shared_mlp.input_linear.weight"] = (heavy(rng, (2 * sf, e)), "BF16")
        t[p + "shared_mlp.output_linear.weight"] = (heavy(rng, (e, sf)), "BF16")
    return c, t, "gpt-2", {}


def case_olmoe(rng):
    # OLMoE-1B-7B's layout (q/k norms over all heads, 4 experts here); GPT-2's tokenizer stands in
    c = base_config("OlmoeForCausalLM", "olmoe", 50257, hidden_size=256, intermediate_size=256, num_key_value_heads=4,
                    num_experts=4, num_experts_per_tok=2, rms_norm_eps=1e-6, max_position_embeddings=4096,
                    clip_qkv=None, norm_topk_prob=False, bos_token_id=None, eos_token_id=50256, pad_token_id=1)
    t = dense_tensors(rng, {**c, "moe": True})
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "self_attn.q_norm.weight"] = (1 + heavy(rng, (256,), 0.1), "BF16")
        t[p + "self_attn.k_norm.weight"] = (1 + heavy(rng, (256,), 0.1), "BF16")
        t.update(expert_tensors(rng, p + "mlp.", 4, 256, 256))
    return c, t, "gpt-2", {}


def expert_tensors(rng, prefix: str, n: int, e: int, f: int, names=("gate_proj", "up_proj", "down_proj"),
                   gate="gate") -> dict[str, tuple[np.ndarray, str]]:
    """A router `{prefix}{gate}.weight` and n experts `{prefix}experts.{x}.{w}.weight` (gate, up: (f, e); down: (e, f))."""
    t = {f"{prefix}{gate}.weight": (heavy(rng, (n, e)), "BF16")}
    for x in range(n):
        for w, shp in zip(names, ((f, e), (f, e), (e, f))):
            t[f"{prefix}experts.{x}.{w}.weight"] = (heavy(rng, shp), "BF16")
    return t


def case_minimax_m2(rng):
    # MiniMax-M2's layout at width 256 (no transformers 4.57.6 config class: config.json read as it is): head_dim 128
    # with rotary_dim 64, Q/K norms over the whole projection, 4 sigmoid-routed experts with e_score_correction_bias.
    # GPT-2's tokenizer stands in for MiniMax's (no package ships it; the family code does not depend on it).
    c = base_config("MiniMaxM2ForCausalLM", "minimax_m2", 50257, hidden_size=256, intermediate_size=256,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=128, rotary_dim=64, num_local_experts=4,
                    num_experts_per_tok=2, scoring_func="sigmoid", use_routing_bias=True, use_qk_norm=True,
                    qk_norm_type="per_layer", shared_intermediate_size=0, attn_type_list=[1, 1], use_mtp=True,
                    num_mtp_modules=3, mtp_transformer_layers=1, rope_theta=5000000, max_position_embeddings=196608,
                    rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=50256, eos_token_id=50256)
    t = dense_tensors(rng, {**c, "moe": True})
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "self_attn.q_norm.weight"] = (1 + heavy(rng, (4 * 128,), 0.1), "BF16")
        t[p + "self_attn.k_norm.weight"] = (1 + heavy(rng, (2 * 128,), 0.1), "BF16")
        t.update(expert_tensors(rng, p + "block_sparse_moe.", 4, 256, 256, names=("w1", "w3", "w2")))
        t[p + "block_sparse_moe.e_score_correction_bias"] = (heavy(rng, (4,), 1.0), "F32")
    return c, t, "gpt-2", {}


def bailing_tensors(rng, c: dict, *, v2: bool) -> dict[str, tuple[np.ndarray, str]]:
    """Ling (Bailing MoE) layers: fused query_key_value, attention.dense, (v2) Q/K norms, dense first layers,
    then a router (+ expert_bias), routed and shared experts; (v2) whole NextN layers past num_hidden_layers."""
    e, v, nh, nkv = c["hidden_size"], c["vocab_size"], c["num_attention_heads"], c["num_key_value_heads"]
    hd = c.get("head_dim") or e // nh
    ff_x, n_x = c["moe_intermediate_size"], c["num_experts"]
    ff_sh = c.get("moe_shared_expert_intermediate_size") or ff_x * c["num_shared_experts"]
    t = {"model.word_embeddings.weight": (heavy(rng, (v, e)), "BF16"), "model.norm.weight": (1 + heavy(rng, (e,), 0.1), "BF16"),
         "lm_head.weight": (heavy(rng, (v, e)), "BF16")}
    n_main = c["num_hidden_layers"]
    for i in range(n_main + c.get("num_nextn_predict_layers", 0)):
        p = f"model.layers.{i}."
        for n in ("input_layernorm", "post_attention_layernorm"):
            t[p + n + ".weight"] = (1 + heavy(rng, (e,), 0.1), "BF16")
        t[p + "attention.query_key_value.weight"] = (heavy(rng, ((nh + 2 * nkv) * hd, e)), "BF16")
        t[p + "attention.dense.weight"] = (heavy(rng, (e, nh * hd)), "BF16")
        if v2:
            t[p + "attention.query_layernorm.weight"] = (1 + heavy(rng, (hd,), 0.1), "BF16")
            t[p + "attention.key_layernorm.weight"] = (1 + heavy(rng, (hd,), 0.1), "BF16")
        if i < c["first_k_dense_replace"]:
            t.update({p + f"mlp.{w}.weight": (heavy(rng, shp), "BF16") for w, shp in (
                ("gate_proj", (c["intermediate_size"], e)), ("up_proj", (c["intermediate_size"], e)),
                ("down_proj", (e, c["intermediate_size"])))})
        else:
            t.update(expert_tensors(rng, p + "mlp.", n_x, e, ff_x))
            if c.get("moe_router_enable_expert_bias"):
                t[p + "mlp.gate.expert_bias"] = (heavy(rng, (n_x,), 1.0), "F32")
            t.update({p + f"mlp.shared_experts.{w}.weight": (heavy(rng, shp), "BF16") for w, shp in (
                ("gate_proj", (ff_sh, e)), ("up_proj", (ff_sh, e)), ("down_proj", (e, ff_sh)))})
        if i >= n_main:  # NextN layer
            for n in ("enorm", "hnorm", "final_layernorm"):
                t[p + n + ".weight"] = (1 + heavy(rng, (e,), 0.1), "BF16")
            t[p + "eh_proj.weight"] = (heavy(rng, (e, 2 * e)), "BF16")
    return t


def case_bailingmoe2(rng):
    # Ling-mini-2.0's layout at width 256 (model_type bailing_moe, no transformers 4.57.6 class: config.json read as it is):
    # one dense layer, then sigmoid group routing with expert_bias and a shared expert; an MTP layer the converter keeps.
    # GPT-2's tokenizer stands in for Ling's (no package ships it; the family code does not depend on it).
    c = base_config("BailingMoeV2ForCausalLM", "bailing_moe", 50257, hidden_size=256, intermediate_size=512,
                    num_attention_heads=2, num_key_value_heads=1, head_dim=128, partial_rotary_factor=0.5, rotary_dim=64,
                    first_k_dense_replace=1, num_experts=4, num_experts_per_tok=2, num_shared_experts=1,
                    moe_intermediate_size=256, moe_shared_expert_intermediate_size=256, n_group=2, topk_group=1,
                    routed_scaling_factor=2.5, score_function="sigmoid", norm_topk_prob=True, router_dtype="fp32",
                    moe_router_enable_expert_bias=True, num_nextn_predict_layers=1, use_qk_norm=True, use_qkv_bias=False,
                    use_bias=False, rope_theta=600000, max_position_embeddings=32768, rms_norm_eps=1e-6,
                    tie_word_embeddings=False, bos_token_id=50256, eos_token_id=50256, pad_token_id=50256)
    return c, bailing_tensors(rng, c, v2=True), "gpt-2", {}


def case_bailingmoe(rng):
    # Ling-lite-1.5's layout at width 256: every layer MoE, 2 shared experts, fused QKV split and Q/K permuted
    c = base_config("BailingMoeForCausalLM", "bailing_moe", 50257, hidden_size=256, intermediate_size=128,
                    num_attention_heads=4, num_key_value_heads=2, first_k_dense_replace=0, num_experts=4,
                    num_experts_per_tok=2, num_shared_experts=2, moe_intermediate_size=128, norm_topk_prob=True,
                    norm_head=False, norm_softmax=False, use_bias=False, use_qkv_bias=False, rope_theta=600000,
                    max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=False, eos_token_id=50256,
                    pad_token_id=50256)
    return c, bailing_tensors(rng, c, v2=False), "gpt-2", {}


def case_afmoe(rng):
    # Arcee Trinity's layout at width 256 (model_type afmoe, no transformers 4.57.6 class: config.json read as it is):
    # gated attention with Q/K norms, four norms per layer, one dense layer, then sigmoid-routed experts with
    # expert_bias and a shared expert. GPT-2's tokenizer stands in for Trinity's (no package ships it).
    c = base_config("AfmoeForCausalLM", "afmoe", 50257, hidden_size=256, intermediate_size=512, num_attention_heads=2,
                    num_key_value_heads=1, head_dim=128, moe_intermediate_size=256, num_dense_layers=1, num_experts=4,
                    num_experts_per_tok=2, num_shared_experts=1, score_func="sigmoid", route_norm=True, route_scale=2.826,
                    n_group=1, topk_group=1, sliding_window=128, global_attn_every_n_layers=4, mup_enabled=True,
                    layer_types=["sliding_attention", "full_attention"], rope_theta=10000.0, max_position_embeddings=8192,
                    rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=50256, eos_token_id=50256)
    e, hd = 256, 128
    t = dense_tensors(rng, {**c, "moe": True}, qk_norm=True)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for n in ("pre_mlp_layernorm", "post_mlp_layernorm"):
            t[p + n + ".weight"] = (1 + heavy(rng, (e,), 0.1), "BF16")
        t[p + "self_attn.gate_proj.weight"] = (heavy(rng, (2 * hd, e)), "BF16")
        if i < c["num_dense_layers"]:
            for w, shp in (("gate_proj", (512, e)), ("up_proj", (512, e)), ("down_proj", (e, 512))):
                t[p + f"mlp.{w}.weight"] = (heavy(rng, shp), "BF16")
            continue
        t.update(expert_tensors(rng, p + "mlp.", 4, e, 256, gate="router.gate"))
        t[p + "mlp.expert_bias"] = (heavy(rng, (4,), 1.0), "F32")
        for w, shp in (("gate_proj", (256, e)), ("up_proj", (256, e)), ("down_proj", (e, 256))):
            t[p + f"mlp.shared_experts.{w}.weight"] = (heavy(rng, shp), "BF16")
    return c, t, "gpt-2", {}


def case_arcee(rng):
    # AFM-4.5B's layout (ArceeForCausalLM): Llama attention, an up/down ReLU^2 MLP without gate, YaRN
    c = base_config("ArceeForCausalLM", "arcee", 32000, hidden_size=256, intermediate_size=512, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=65536, hidden_act="relu2", bos_token_id=1, eos_token_id=2,
                    rope_scaling={"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 4096})
    t = dense_tensors(rng, c)
    for i in range(c["num_hidden_layers"]):
        del t[f"model.layers.{i}.mlp.gate_proj.weight"]
    return c, t, "llama-spm", {}


def case_phimoe(rng):
    # Phi-3.5-MoE's layout: LayerNorms and projections with biases, lm_head bias, longrope with mscales
    hd = 64
    c = base_config("PhiMoEForCausalLM", "phimoe", 32064, hidden_size=256, intermediate_size=256, num_key_value_heads=2,
                    num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=131072,
                    original_max_position_embeddings=4096, attention_bias=True, lm_head_bias=True, rope_theta=10000.0,
                    sliding_window=131072, bos_token_id=1, eos_token_id=32000,
                    rope_scaling={"type": "longrope", "short_mscale": 1.243, "long_mscale": 1.243,
                                  "long_factor": [1.0 + 0.3 * i for i in range(hd // 2)],
                                  "short_factor": [1.0 + 0.02 * i for i in range(hd // 2)],
                                  "original_max_position_embeddings": 4096})
    t = dense_tensors(rng, {**c, "moe": True}, qkv_bias=True, o_bias=True)
    e = c["hidden_size"]
    t["model.norm.bias"] = (heavy(rng, (e,), 0.1), "BF16")
    t["lm_head.bias"] = (heavy(rng, (32064,), 0.1), "BF16")
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for n in ("input_layernorm", "post_attention_layernorm"):
            t[p + n + ".bias"] = (heavy(rng, (e,), 0.1), "BF16")
        t.update(expert_tensors(rng, p + "block_sparse_moe.", 4, e, 256, names=("w1", "w3", "w2")))
    return c, t, "phi-3", {}


def case_hunyuan_dense(rng):
    # Hunyuan-4B's config: q/k layernorms, NTK-alpha ("dynamic") rope, eod_token_id as eos, tied embeddings;
    # no real Hunyuan tokenizer.json in a package registry: GPT-2's takes the same path (get_vocab_base)
    c = base_config("HunYuanDenseV1ForCausalLM", "hunyuan_v1_dense", 50257, hidden_size=256, intermediate_size=256,
                    head_dim=64, max_position_embeddings=32768, tie_word_embeddings=True, use_qk_norm=True,
                    rope_scaling={"alpha": 1000.0, "beta_fast": 32, "beta_slow": 1, "factor": 1.0, "mscale": 1.0,
                                  "mscale_all_dim": 1.0, "type": "dynamic"},
                    bos_token_id=50256, eos_token_id=50256, eod_token_id=50255, pad_token_id=50256)
    t = dense_tensors(rng, c, lm_head=False)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}.self_attn."
        t[p + "query_layernorm.weight"] = (1 + heavy(rng, (64,), 0.1), "BF16")
        t[p + "key_layernorm.weight"] = (1 + heavy(rng, (64,), 0.1), "BF16")
    files = {"generation_config.json": json.dumps({"do_sample": True, "eos_token_id": [50255, 50256], "top_k": 20})}
    return c, t, "gpt-2", files


def case_dots1(rng):
    # dots.llm1's layout: one dense layer first, then routed + shared experts, router score-correction bias,
    # q/k norms; GPT-2's tokenizer stands in (dots.llm1 extends Qwen2's)
    c = base_config("Dots1ForCausalLM", "dots1", 50257, hidden_size=256, intermediate_size=256, moe_intermediate_size=256,
                    num_key_value_heads=4, n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2,
                    first_k_dense_replace=1, norm_topk_prob=True, routed_scaling_factor=2.5, n_group=1, topk_group=1,
                    scoring_func="sigmoid",
                    rope_theta=10000000.0, max_position_embeddings=32768, sliding_window=None, rms_norm_eps=1e-5,
                    bos_token_id=None, eos_token_id=50256)
    t = dense_tensors(rng, c, qk_norm=True, layer_range=range(1))
    t |= dense_tensors(rng, {**c, "moe": True}, qk_norm=True, layer_range=range(1, 2))
    p = "model.layers.1.mlp."
    t.update(expert_tensors(rng, p, 4, 256, 256))
    t[p + "gate.e_score_correction_bias"] = (heavy(rng, (4,), 0.1), "F32")
    for w, shp in (("gate_proj", (256, 256)), ("up_proj", (256, 256)), ("down_proj", (256, 256))):
        t[p + f"shared_experts.{w}.weight"] = (heavy(rng, shp), "BF16")
    return c, t, "gpt-2", {}
def case_dbrx(rng):
    # DBRX's layout at width 256: fused Wqkv with 2 KV heads, bias-free LayerNorms, 4 experts fused along the rows
    # in w1 / v1 / w2 (no .weight suffix), router BF16; GPT-2's tokenizer stands in for DBRX's (cl100k)
    c = {"architectures": ["DbrxForCausalLM"], "model_type": "dbrx", "d_model": 256, "n_heads": 4, "n_layers": 2,
         "max_seq_len": 32768, "vocab_size": 50257, "resid_pdrop": 0.0, "emb_pdrop": 0.0, "initializer_range": 0.02,
         "attn_config": {"clip_qkv": 8, "kv_n_heads": 2, "rope_theta": 500000, "model_type": ""},
         "ffn_config": {"ffn_hidden_size": 256, "moe_num_experts": 4, "moe_top_k": 2, "moe_jitter_eps": 0.0,
                        "moe_loss_weight": 0.05, "ffn_act_fn": {"name": "silu"}, "model_type": ""},
         "output_router_logits": False, "tie_word_embeddings": False, "bos_token_id": 50256, "eos_token_id": 50256,
         "torch_dtype": "bfloat16"}
    e, v = 256, 50257
    t = {"transformer.wte.weight": (heavy(rng, (v, e)), "BF16"), "transformer.norm_f.weight": (1 + heavy(rng, (e,), 0.1), "BF16"),
         "lm_head.weight": (heavy(rng, (v, e)), "BF16")}
    for i in range(2):
        p = f"transformer.blocks.{i}."
        t[p + "norm_attn_norm.norm_1.weight"] = (1 + heavy(rng, (e,), 0.1), "BF16")
        t[p + "norm_attn_norm.norm_2.weight"] = (1 + heavy(rng, (e,), 0.1), "BF16")
        t[p + "norm_attn_norm.attn.Wqkv.weight"] = (heavy(rng, (e + 2 * 2 * 64, e)), "BF16")
        t[p + "norm_attn_norm.attn.out_proj.weight"] = (heavy(rng, (e, e)), "BF16")
        t[p + "ffn.router.layer.weight"] = (heavy(rng, (4, e)), "BF16")
        for w in ("w1", "v1", "w2"):
            t[p + f"ffn.experts.mlp.{w}"] = (heavy(rng, (4 * 256, e)), "BF16")
    return c, t, "gpt-2", {}


def case_arctic(rng):
    # Snowflake Arctic's layout at width 256 (remote code: config.json read as it is): a dense residual MLP beside
    # 4 routed experts in every layer; Llama 2's tokenizer.model with Arctic's redefined ids (fixtures/tokenizers/arctic)
    c = base_config("ArcticForCausalLM", "arctic", 32000, hidden_size=256, intermediate_size=256, num_attention_heads=4,
                    num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, moe_layer_frequency=1,
                    parallel_attn_mlp_res=True, moe_train_capacity_factor=1, moe_eval_capacity_factor=1,
                    enable_expert_tensor_parallelism=False, moe_min_capacity=0, moe_token_dropping=True,
                    quantization=None, sliding_window=None, attention_dropout=0.0, hidden_act="silu",
                    initializer_range=0.02, rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=4096,
                    tie_word_embeddings=False, bos_token_id=1, eos_token_id=31999, auto_map={
                        "AutoConfig": "configuration_arctic.ArcticConfig",
                        "AutoModelForCausalLM": "modeling_arctic.ArcticForCausalLM"})
    t = dense_tensors(rng, {**c, "moe": True})
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "residual_layernorm.weight"] = (1 + heavy(rng, (256,), 0.1), "BF16")
        for w, shp in (("w1", (256, 256)), ("w3", (256, 256)), ("w2", (256, 256))):
            t[p + f"residual_mlp.{w}.weight"] = (heavy(rng, shp), "BF16")
        t.update(expert_tensors(rng, p + "block_sparse_moe.", 4, 256, 256, names=("w1", "w3", "w2")))
    return c, t, "arctic", {}


def case_openelm(rng):
    # OpenELM's layer-wise scaling at width 256 (remote code: config.json read as it is): per-layer query / KV head
    # counts and feed-forward widths (256, 512), fused qkv_proj with Q/K norms, fused gate/up proj_1, tied output;
    # Llama 2's tokenizer.model (OpenELM's own)
    e, hd, v, q, kv, ff = 256, 64, 32000, [4, 4], [1, 2], [256, 512]
    c = {"architectures": ["OpenELMForCausalLM"], "model_type": "openelm", "activation_fn_name": "swish",
         "auto_map": {"AutoConfig": "configuration_openelm.OpenELMConfig",
                      "AutoModelForCausalLM": "modeling_openelm.OpenELMForCausalLM"},
         "bos_token_id": 1, "eos_token_id": 2, "ffn_dim_divisor": 256, "ffn_multipliers": [0.5, 2.0], "ffn_with_glu": True,
         "head_dim": hd, "initializer_range": 0.02, "max_context_length": 2048, "model_dim": e,
         "normalization_layer_name": "rms_norm", "normalize_qk_projections": True, "num_gqa_groups": 2,
         "num_kv_heads": kv, "num_query_heads": q, "num_transformer_layers": 2, "qkv_multipliers": [0.5, 1.0],
         "rope_freq_constant": 10000, "rope_max_length": 4096, "share_input_output_layers": True,
         "torch_dtype": "float32", "vocab_size": v}
    t = {"transformer.token_embeddings.weight": (heavy(rng, (v, e)), "F32"),
         "transformer.norm.weight": (1 + heavy(rng, (e,), 0.1), "F32")}
    for i in range(2):
        p = f"transformer.layers.{i}."
        t[p + "attn_norm.weight"] = (1 + heavy(rng, (e,), 0.1), "F32")
        t[p + "ffn_norm.weight"] = (1 + heavy(rng, (e,), 0.1), "F32")
        t[p + "attn.qkv_proj.weight"] = (heavy(rng, ((q[i] + 2 * kv[i]) * hd, e)), "F32")
        t[p + "attn.out_proj.weight"] = (heavy(rng, (e, q[i] * hd)), "F32")
        t[p + "attn.q_norm.weight"] = (1 + heavy(rng, (hd,), 0.1), "F32")
        t[p + "attn.k_norm.weight"] = (1 + heavy(rng, (hd,), 0.1), "F32")
        t[p + "ffn.proj_1.weight"] = (heavy(rng, (2 * ff[i], e)), "F32")
        t[p + "ffn.proj_2.weight"] = (heavy(rng, (e, ff[i])), "F32")
    return c, t, "llama-spm", {}


def case_grok(rng):
    # Grok-1's layout at width 256 (remote code: config.json read as it is): transformer.decoder_layer.* with four
    # RMSNorms per layer, a router and 4 experts moe.{x}.linear / linear_1 / linear_v, the output tied to the
    # embedding; Llama 2's tokenizer.model stands in for Grok-1's (SentencePiece, 131072 pieces)
    e, v, nh, nkv, hd = 256, 32000, 4, 2, 64
    c = {"architectures": ["Grok1ForCausalLM"], "model_type": "grok-1", "vocab_size": v, "hidden_size": e,
         "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": nh, "num_key_value_heads": nkv,
         "attn_output_multiplier": 0.08838834764831845, "embedding_multiplier_scale": 78.38367176906169,
         "output_multiplier_scale": 0.5773502691896257, "max_attn_value": 30.0, "max_position_embeddings": 8192,
         "rms_norm_eps": 1e-5, "use_cache": True, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
         "tie_word_embeddings": True, "num_experts_per_tok": 2, "num_local_experts": 4, "output_router_logits": False,
         "router_aux_loss_coef": 0.001, "torch_dtype": "bfloat16"}
    t = {"transformer.in_out_embed.weight": (heavy(rng, (v, e)), "BF16"),
         "transformer.rms_norm.weight": (1 + heavy(rng, (e,), 0.1), "BF16")}
    for i in range(2):
        p = f"transformer.decoder_layer.{i}."
        for n in ("rms_norm", "rms_norm_1", "rms_norm_2", "rms_norm_3"):
            t[p + n + ".weight"] = (1 + heavy(rng, (e,), 0.1), "BF16")
        for n, rows_ in (("query", nh * hd), ("key", nkv * hd), ("value", nkv * hd)):
            t[p + f"multi_head_attention.{n}.weight"] = (heavy(rng, (rows_, e)), "BF16")
        t[p + "multi_head_attention.linear.weight"] = (heavy(rng, (e, nh * hd)), "BF16")
        t[p + "router.weight"] = (heavy(rng, (4, e)), "BF16")
        for x in range(4):
            for w, shp in (("linear", (256, e)), ("linear_v", (256, e)), ("linear_1", (e, 256))):
                t[p + f"moe.{x}.{w}.weight"] = (heavy(rng, shp), "BF16")
    return c, t, "llama-spm", {}


def case_grok2(rng):
    # Grok-2's layout (model.layers.*): pre/post attention and MoE norms, a dense MLP beside 4 experts
    # (moe_intermediate_size), Grok's own YaRN keys (rope_type "original"), attention temperature, final soft-capping;
    # tokenizer.json with chat_template.jinja (the converter requires both); GPT-2's tokenizer stands in
    e, v, nh, nkv, hd = 256, 50257, 4, 2, 64
    c = base_config("GrokForCausalLM", "grok", v, hidden_size=e, intermediate_size=512, moe_intermediate_size=256,
                    num_attention_heads=nh, num_key_value_heads=nkv, head_dim=hd, num_local_experts=4,
                    num_experts_per_tok=2, attn_output_multiplier=0.0625, embedding_multiplier_scale=90.50966799187809,
                    output_multiplier_scale=0.5, final_logit_softcapping=50.0, attn_logit_softcapping=30.0,
                    router_logit_softcapping=30.0, attn_temperature_len=1024, rope_theta=208533496.0,
                    rope_type="original", scaling_factor=16.0, original_max_position_embeddings=8192,
                    extrapolation_factor=1.0, attn_factor=1.0, beta_fast=8, beta_slow=1, max_position_embeddings=131072,
                    tie_word_embeddings=False, bos_token_id=50256, eos_token_id=50256)
    t = {"model.embed_tokens.weight": (heavy(rng, (v, e)), "BF16"), "model.norm.weight": (1 + heavy(rng, (e,), 0.1), "BF16"),
         "lm_head.weight": (heavy(rng, (v, e)), "BF16")}
    for i in range(2):
        p = f"model.layers.{i}."
        for n in ("pre_attn_norm", "post_attn_norm", "pre_moe_norm", "post_moe_norm"):
            t[p + n + ".weight"] = (1 + heavy(rng, (e,), 0.1), "BF16")
        for n, rows_ in (("q_proj", nh * hd), ("k_proj", nkv * hd), ("v_proj", nkv * hd)):
            t[p + f"self_attn.{n}.weight"] = (heavy(rng, (rows_, e)), "BF16")
        t[p + "self_attn.o_proj.weight"] = (heavy(rng, (e, nh * hd)), "BF16")
        for w, shp in (("gate_proj", (512, e)), ("up_proj", (512, e)), ("down_proj", (e, 512))):
            t[p + f"mlp.{w}.weight"] = (heavy(rng, shp), "BF16")
        t.update(expert_tensors(rng, p + "block_sparse_moe.", 4, e, 256, names=("w1", "w3", "w2")))
    files = {"chat_template.jinja": "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}<|separator|>\n"
                                    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"}
    return c, t, "gpt-2", files


def language_model(t: dict, prefix: str) -> dict:
    """A text model's tensors as a multimodal checkpoint names them: `model.` -> prefix (e.g.
    `language_model.model.`, or `model.language_model.` as transformers >= 4.52 saves some), lm_head under it."""
    out = {}
    for n, v in t.items():
        if n.startswith("model."):
            out[prefix + n[len("model."):]] = v
        elif n == "lm_head.weight" and prefix.startswith("language_model."):
            out["language_model.lm_head.weight"] = v
        else:
            out[n] = v
    return out


def vision_parts(rng, names: dict[str, tuple[int, ...]]) -> dict[str, tuple[np.ndarray, str]]:
    """A few vision tower / projector tensors (the converter drops them without --mmproj)."""
    return {n: (heavy(rng, shp), "BF16") for n, shp in names.items()}


def case_gemma3_mm(rng):
    # Gemma3ForConditionalGeneration as google/gemma-3-4b-it lays it out (legacy language_model.model.* names,
    # tied output, SigLIP tower + projector); the text_config leaves most keys to Gemma3TextConfig's defaults
    text = dict(model_type="gemma3_text", hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=64, vocab_size=32000, sliding_window=512,
                rope_scaling={"rope_type": "linear", "factor": 8.0}, query_pre_attn_scalar=64)
    c = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "text_config": text,
         "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                           "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 16, "patch_size": 8},
         "mm_tokens_per_image": 4, "boi_token_index": 255999, "eoi_token_index": 256000, "image_token_index": 262144,
         "eos_token_id": [1, 106], "torch_dtype": "bfloat16"}
    t = language_model(dense_tensors(rng, {**text, "num_hidden_layers": 2}, gemma2_norms=True, qk_norm=True, lm_head=False),
                       "language_model.model.")
    t |= vision_parts(rng, {
        "vision_tower.vision_model.embeddings.patch_embedding.weight": (32, 3, 8, 8),
        "vision_tower.vision_model.embeddings.position_embedding.weight": (4, 32),
        "vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight": (32, 32),
        "vision_tower.vision_model.post_layernorm.weight": (32,),
        "multi_modal_projector.mm_input_projection_weight": (32, 256),
        "multi_modal_projector.mm_soft_emb_norm.weight": (32,),
    })
    return c, t, "llama-spm", {}


def case_mistral3(rng):
    # Mistral3ForConditionalGeneration (Mistral Small 3.1's layout, as transformers >= 4.52 saves it:
    # model.language_model.*, lm_head, model.vision_tower.*, model.multi_modal_projector.*); Pixtral tower
    text = dict(model_type="mistral", hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=64, vocab_size=50257, rope_theta=1e9,
                max_position_embeddings=131072, rms_norm_eps=1e-5, sliding_window=None,
                tie_word_embeddings=True)
    c = {"architectures": ["Mistral3ForConditionalGeneration"], "model_type": "mistral3", "text_config": text,
         "vision_config": {"model_type": "pixtral", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                           "num_attention_heads": 2, "head_dim": 16, "image_size": 32, "patch_size": 8},
         "image_token_index": 10, "spatial_merge_size": 2, "multimodal_projector_bias": False,
         "vision_feature_layer": -1, "projector_hidden_act": "gelu", "torch_dtype": "bfloat16"}
    t = language_model(dense_tensors(rng, text, lm_head=False), "model.language_model.")
    t |= vision_parts(rng, {
        "model.vision_tower.patch_conv.weight": (32, 3, 8, 8),
        "model.vision_tower.ln_pre.weight": (32,),
        "model.vision_tower.transformer.layers.0.attention.q_proj.weight": (32, 32),
        "model.multi_modal_projector.norm.weight": (32,),
        "model.multi_modal_projector.patch_merger.merging_layer.weight": (32, 128),
        "model.multi_modal_projector.linear_1.weight": (256, 32),
        "model.multi_modal_projector.linear_2.weight": (256, 256),
    })
    return c, t, "gpt-2", {}


def ministral3_text(**kw) -> dict:
    """A Ministral 3 text config as mistralai/Ministral-3-*-2512 ships it (transformers 5's Ministral3Config:
    rope_parameters with YaRN, mscale_all_dim and llama_4_scaling_beta), tiny."""
    c = dict(model_type="ministral3", hidden_size=256, intermediate_size=512, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=64, vocab_size=50257, hidden_act="silu",
             max_position_embeddings=262144, rms_norm_eps=1e-5, sliding_window=None, tie_word_embeddings=True,
             bos_token_id=1, eos_token_id=2, pad_token_id=11,
             rope_parameters={"type": "yarn", "rope_type": "yarn", "rope_theta": 1000000.0, "factor": 16.0,
                              "original_max_position_embeddings": 16384, "max_position_embeddings": 262144,
                              "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0,
                              "llama_4_scaling_beta": 0.1})
    c.update(kw)
    return c


def case_ministral3(rng):
    # Ministral3ForCausalLM: no transformers 4.57.6 config class, so the converter reads config.json as it is
    c = {"architectures": ["Ministral3ForCausalLM"], **ministral3_text(tie_word_embeddings=False), "dtype": "bfloat16"}
    return c, dense_tensors(rng, c), "gpt-2", {}


def case_ministral3_mm(rng):
    # Mistral3ForConditionalGeneration with a ministral3 text_config (Ministral 3 as released): Mistral3Config
    # cannot build the text class under transformers 4.57.6, so config.json is read as it is, text_config merged
    text = ministral3_text()
    text["rope_parameters"] |= {"mscale_all_dim": 0.75, "llama_4_scaling_beta": 0.25}
    c = {"architectures": ["Mistral3ForConditionalGeneration"], "model_type": "mistral3", "text_config": text,
         "vision_config": {"model_type": "pixtral", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                           "num_attention_heads": 2, "head_dim": 16, "image_size": 32, "patch_size": 8},
         "image_token_index": 10, "spatial_merge_size": 2, "multimodal_projector_bias": False,
         "vision_feature_layer": -1, "projector_hidden_act": "gelu", "dtype": "bfloat16"}
    t = language_model(dense_tensors(rng, text, lm_head=False), "model.language_model.")
    t |= vision_parts(rng, {"model.vision_tower.patch_conv.weight": (32, 3, 8, 8),
                            "model.multi_modal_projector.linear_1.weight": (256, 32)})
    return c, t, "gpt-2", {}


def case_qwen2vl(rng, flat: bool = False):
    # Qwen2VLForConditionalGeneration as transformers 4.57 saves it (text_config; model.language_model.*, lm_head,
    # model.visual.*), tied output; flat: Qwen2.5-VL as released (every text key at the top level, rope_scaling
    # type "mrope", model.layers.* and visual.*), untied. M-RoPE sections summing to head_dim / 2 = 32;
    # GPT-2's tokenizer stands in for Qwen2's (the qwen2 case carries it)
    arch = "Qwen2_5_VLForConditionalGeneration" if flat else "Qwen2VLForConditionalGeneration"
    mt = "qwen2_5_vl" if flat else "qwen2_vl"
    text = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                vocab_size=50257, max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0,
                use_sliding_window=False, sliding_window=32768, max_window_layers=2, tie_word_embeddings=not flat,
                bos_token_id=50256, eos_token_id=50256)
    vision = {"depth": 1, "embed_dim": 32, "hidden_size": 256, "num_heads": 2, "patch_size": 14,
              "spatial_merge_size": 2, "in_chans": 3}
    if flat:
        c = {"architectures": [arch], "model_type": mt, **text, "rope_scaling": {"type": "mrope", "mrope_section": [8, 12, 12]},
             "vision_config": vision, "vision_start_token_id": 151652, "torch_dtype": "bfloat16"}
    else:
        text |= {"model_type": "qwen2_vl_text",
                 "rope_scaling": {"type": "default", "rope_type": "default", "mrope_section": [8, 12, 12]}}
        c = {"architectures": [arch], "model_type": mt, "text_config": text, "vision_config": vision,
             "image_token_id": 151655, "video_token_id": 151656, "torch_dtype": "bfloat16"}
    t = dense_tensors(rng, {**text, "model_type": "qwen2"}, qkv_bias=True, lm_head=flat)
    vis = "visual." if flat else "model.visual."
    if not flat:
        t = language_model(t, "model.language_model.")
    t |= vision_parts(rng, {vis + "patch_embed.proj.weight": (32, 3, 2, 14, 14), vis + "blocks.0.norm1.weight": (32,),
                            vis + "blocks.0.attn.qkv.weight": (96, 32), vis + "merger.ln_q.weight": (32,),
                            vis + "merger.mlp.0.weight": (128, 128), vis + "merger.mlp.2.weight": (256, 128)})
    return c, t, "gpt-2", {}


def case_qwen3vl(rng, moe: bool = False):
    # Qwen3VLForConditionalGeneration / Qwen3VLMoeForConditionalGeneration as saved (text_config with interleaved
    # M-RoPE sections, model.language_model.*, model.visual.*, deepstack mergers); dense: tied, the vision config
    # without deepstack_visual_indexes (its class default [8, 16, 24] counts); MoE: 4 experts stacked and
    # transposed (gate_up_proj [n_expert, n_embd, 2 * n_ff], down_proj [n_expert, n_ff, n_embd]), untied;
    # GPT-2's tokenizer stands in
    e, nh, nkv, hd, f, n_x, v = 256, 4, 2, 64, 512, 4, 50257
    text = dict(model_type="qwen3_vl_moe_text" if moe else "qwen3_vl_text", hidden_size=e, intermediate_size=f,
                num_hidden_layers=2, num_attention_heads=nh, num_key_value_heads=nkv, head_dim=hd, vocab_size=v,
                max_position_embeddings=262144, rms_norm_eps=1e-6, rope_theta=5000000.0, tie_word_embeddings=not moe,
                rope_scaling={"rope_type": "default", "mrope_section": [12, 10, 10], "mrope_interleaved": True},
                bos_token_id=50256, eos_token_id=50256)
    if moe:
        text |= dict(moe_intermediate_size=256, num_experts=n_x, num_experts_per_tok=2, decoder_sparse_step=1,
                     norm_topk_prob=True, mlp_only_layers=[])
    vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "patch_size": 16,
              "spatial_merge_size": 2, "out_hidden_size": e, "model_type": "qwen3_vl_moe" if moe else "qwen3_vl"}
    if moe:
        vision["deepstack_visual_indexes"] = [0, 1]
    c = {"architectures": ["Qwen3VLMoeForConditionalGeneration" if moe else "Qwen3VLForConditionalGeneration"],
         "model_type": "qwen3_vl_moe" if moe else "qwen3_vl", "text_config": text, "vision_config": vision,
         "image_token_id": 151655, "video_token_id": 151656, "tie_word_embeddings": not moe, "torch_dtype": "bfloat16"}
    t = dense_tensors(rng, {**text, **({"moe": True} if moe else {})}, qk_norm=True, lm_head=moe)
    if moe:
        for i in range(2):
            p = f"model.layers.{i}.mlp."
            t[p + "gate.weight"] = (heavy(rng, (n_x, e)), "BF16")
            t[p + "experts.gate_up_proj"] = (heavy(rng, (n_x, e, 2 * 256)), "BF16")
            t[p + "experts.down_proj"] = (heavy(rng, (n_x, 256, e)), "BF16")
    t = language_model(t, "model.language_model.")
    t |= vision_parts(rng, {"model.visual.patch_embed.proj.weight": (32, 3, 2, 16, 16),
                            "model.visual.blocks.0.attn.qkv.weight": (96, 32), "model.visual.merger.norm.weight": (32,),
                            "model.visual.deepstack_merger_list.0.linear_fc1.weight": (128, 128),
                            "model.visual.merger.linear_fc2.weight": (e, 128)})
    return c, t, "gpt-2", {}
def case_qwen35_mm(rng, moe: bool = False):
    # Qwen3.5's multimodal release as Qwen/Qwen3.5-9B (-35B-A3B) ships it: Qwen3_5(Moe)ForConditionalGeneration,
    # the text config nested under text_config, the language model under model.language_model., lm_head and the
    # MTP tensors at the top level, a vision tower (model.visual.*: not converted without --mmproj)
    text, t, tok, files = case_qwen35(rng, moe)
    del text["architectures"]
    mt = "qwen3_5_moe" if moe else "qwen3_5"
    c = {"architectures": ["Qwen3_5MoeForConditionalGeneration" if moe else "Qwen3_5ForConditionalGeneration"],
         "model_type": mt, "text_config": text, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
         "vision_config": {"model_type": mt, "depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                           "out_hidden_size": 256, "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2},
         "image_token_id": 248056, "video_token_id": 248057, "vision_start_token_id": 248053, "vision_end_token_id": 248054}
    t = language_model(t, "model.language_model.")
    t |= vision_parts(rng, {
        "model.visual.patch_embed.proj.weight": (32, 3, 2, 16, 16),
        "model.visual.pos_embed.weight": (64, 32),
        "model.visual.blocks.0.norm1.weight": (32,),
        "model.visual.blocks.0.attn.qkv.weight": (96, 32),
        "model.visual.merger.linear_fc1.weight": (128, 128),
        "model.visual.merger.linear_fc2.weight": (256, 128),
    })
    return c, t, tok, files


def case_llama4(rng):
    # Llama4ForConditionalGeneration (Scout's layout: language_model.model.*, vision_model.*, multi_modal_projector.*),
    # 4 layers with MoE every 2nd (128E Maverick's interleaving), stacked experts, Scout's llama3 rope with equal
    # low/high frequency factors, NoPE on the 4th layer; no real Llama 4 tokenizer in the fixtures: GPT-2's
    # (the same _set_vocab_gpt2 path and pre-tokenizer hash table)
    n_x, e, f_moe, f_mlp = 4, 256, 256, 512
    text = dict(model_type="llama4_text", hidden_size=e, intermediate_size=f_moe, intermediate_size_mlp=f_mlp,
                num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=64, vocab_size=50257,
                num_local_experts=n_x, num_experts_per_tok=1, interleave_moe_layer_step=2, rope_theta=500000.0,
                max_position_embeddings=262144, rms_norm_eps=1e-5, tie_word_embeddings=True, attention_chunk_size=8192,
                rope_scaling={"factor": 16.0, "high_freq_factor": 1.0, "low_freq_factor": 1.0,
                              "original_max_position_embeddings": 8192, "rope_type": "llama3"},
                bos_token_id=50256, eos_token_id=[50256, 50255], pad_token_id=50254)
    c = {"architectures": ["Llama4ForConditionalGeneration"], "model_type": "llama4", "text_config": text,
         "vision_config": {"model_type": "llama4_vision_model", "hidden_size": 32, "intermediate_size": 64,
                           "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 32, "patch_size": 8,
                           "vision_output_dim": 64, "projector_input_dim": 64, "projector_output_dim": 64},
         "boi_token_index": 200080, "eoi_token_index": 200081, "image_token_index": 200092,
         "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
    t = dense_tensors(rng, {**text, "intermediate_size": f_mlp, "moe": True}, lm_head=False)
    for i in range(4):
        p = f"model.layers.{i}.feed_forward."
        if i % 2 == 0:
            t[p + "gate_proj.weight"] = (heavy(rng, (f_mlp, e)), "BF16")
            t[p + "up_proj.weight"] = (heavy(rng, (f_mlp, e)), "BF16")
            t[p + "down_proj.weight"] = (heavy(rng, (e, f_mlp)), "BF16")
            continue
        t[p + "router.weight"] = (heavy(rng, (n_x, e)), "BF16")
        t[p + "experts.gate_up_proj"] = (heavy(rng, (n_x, e, 2 * f_moe)), "BF16")
        t[p + "experts.down_proj"] = (heavy(rng, (n_x, f_moe, e)), "BF16")
        for w, shp in (("gate_proj", (f_moe, e)), ("up_proj", (f_moe, e)), ("down_proj", (e, f_moe))):
            t[p + f"shared_expert.{w}.weight"] = (heavy(rng, shp), "BF16")
    t = language_model(t, "language_model.model.")
    t |= vision_parts(rng, {
        "vision_model.patch_embedding.linear.weight": (32, 192),
        "vision_model.class_embedding": (32,),
        "vision_model.model.layers.0.self_attn.q_proj.weight": (32, 32),
        "vision_model.model.layers.0.self_attn.q_proj.bias": (32,),
        "multi_modal_projector.linear_1.weight": (256, 64),
    })
    return c, t, "gpt-2", {}


def mla_tensors(rng, c: dict, *, lm_head=True, mtp_layers=0, dsa=False) -> dict[str, tuple[np.ndarray, str]]:
    """Tensors of a DeepSeek V2/V3 decoder with config `c`: MLA attention (q_a/q_b or q_proj), dense
    first layers, then a router (+ e_score_correction_bias with topk_method noaux_tc), routed and
    shared experts; `mtp_layers` NextN layers past num_hidden_layers (the converter drops them).
    `dsa` (DeepSeek V3.2): every layer has the DSA indexer, and the NextN layers are whole layers (kept)."""
    e, v, nh = c["hidden_size"], c["vocab_size"], c["num_attention_heads"]
    nope, rope, vd = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
    kv_lora, q_lora = c["kv_lora_rank"], c.get("q_lora_rank")
    ff, ff_x, n_x, n_sh = c["intermediate_size"], c["moe_intermediate_size"], c["n_routed_experts"], c["n_shared_experts"]
    t = {"model.embed_tokens.weight": (heavy(rng, (v, e)), "BF16"), "model.norm.weight": (1 + heavy(rng, (e,), 0.1), "BF16")}
    if lm_head:
        t["lm_head.weight"] = (heavy(rng, (v, e)), "BF16")

    def mlp(p, f):
        return {p + "gate_proj.weight": (heavy(rng, (f, e)), "BF16"), p + "up_proj.weight": (heavy(rng, (f, e)), "BF16"),
                p + "down_proj.weight": (heavy(rng, (e, f)), "BF16")}

    for i in range(c["num_hidden_layers"] + (mtp_layers if dsa else 0)):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = (1 + heavy(rng, (e,), 0.1), "BF16")
        t[p + "post_attention_layernorm.weight"] = (1 + heavy(rng, (e,), 0.1), "BF16")
        if dsa:  # the lightning indexer: wq_b from q_a's output, wk, a LayerNorm on k, per-head weights
            n_ix, d_ix = c["index_n_heads"], c["index_head_dim"]
            t[p + "self_attn.indexer.wq_b.weight"] = (heavy(rng, (n_ix * d_ix, q_lora)), "BF16")
            t[p + "self_attn.indexer.wk.weight"] = (heavy(rng, (d_ix, e)), "BF16")
            t[p + "self_attn.indexer.k_norm.weight"] = (1 + heavy(rng, (d_ix,), 0.1), "BF16")
            t[p + "self_attn.indexer.k_norm.bias"] = (heavy(rng, (d_ix,), 0.1), "BF16")
            t[p + "self_attn.indexer.weights_proj.weight"] = (heavy(rng, (n_ix, e)), "BF16")
        if i >= c["num_hidden_layers"]:  # DeepSeek V3.2's NextN layer (its own embed_tokens / shared_head.head left out)
            for n in ("enorm", "hnorm", "shared_head.norm"):
                t[p + n + ".weight"] = (1 + heavy(rng, (e,), 0.1), "BF16")
            t[p + "eh_proj.weight"] = (heavy(rng, (e, 2 * e)), "BF16")
        if q_lora is None:
            t[p + "self_attn.q_proj.weight"] = (heavy(rng, (nh * (nope + rope), e)), "BF16")
        else:
            t[p + "self_attn.q_a_proj.weight"] = (heavy(rng, (q_lora, e)), "BF16")
            t[p + "self_attn.q_a_layernorm.weight"] = (1 + heavy(rng, (q_lora,), 0.1), "BF16")
            t[p + "self_attn.q_b_proj.weight"] = (heavy(rng, (nh * (nope + rope), q_lora)), "BF16")
        t[p + "self_attn.kv_a_proj_with_mqa.weight"] = (heavy(rng, (kv_lora + rope, e)), "BF16")
        t[p + "self_attn.kv_a_layernorm.weight"] = (1 + heavy(rng, (kv_lora,), 0.1), "BF16")
        t[p + "self_attn.kv_b_proj.weight"] = (heavy(rng, (c["num_key_value_heads"] * (nope + vd), kv_lora)), "BF16")
        t[p + "self_attn.o_proj.weight"] = (heavy(rng, (e, nh * vd)), "BF16")
        if i < c["first_k_dense_replace"]:
            t.update(mlp(p + "mlp.", ff))
            continue
        t[p + "mlp.gate.weight"] = (heavy(rng, (n_x, e)), "BF16")
        if c.get("topk_method") == "noaux_tc":
            t[p + "mlp.gate.e_score_correction_bias"] = (heavy(rng, (n_x,), 1.0), "F32")
        t.update(mlp(p + "mlp.shared_experts.", ff_x * n_sh))
        for x in range(n_x):
            t.update(mlp(p + f"mlp.experts.{x}.", ff_x))
    for i in range(c["num_hidden_layers"], c["num_hidden_layers"] + (0 if dsa else mtp_layers)):  # DeepSeek-V3's NextN layer
        p = f"model.layers.{i}."
        for n in ("enorm", "hnorm", "shared_head.norm", "input_layernorm"):
            t[p + n + ".weight"] = (1 + heavy(rng, (e,), 0.1), "BF16")
        t[p + "eh_proj.weight"] = (heavy(rng, (e, 2 * e)), "BF16")
    return t


_DEEPSEEK = dict(rope_theta=10000.0, rms_norm_eps=1e-6, bos_token_id=0, eos_token_id=1, max_position_embeddings=163840,
                 rope_scaling={"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096, "beta_fast": 32,
                               "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0})


# DeepSeek-V3's layout at width 256 (deepseek3, deepseek32): q_lora, MLA, one dense layer then MoE with a sigmoid
# noaux_tc router and groups, a shared expert, one MTP layer
_DEEPSEEK_V3 = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=256,
                    kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64, first_k_dense_replace=1,
                    n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2, moe_intermediate_size=256,
                    n_group=2, topk_group=1, topk_method="noaux_tc", scoring_func="sigmoid", routed_scaling_factor=2.5,
                    norm_topk_prob=True, num_nextn_predict_layers=1, tie_word_embeddings=True)


def case_glm4moe_lite(rng):
    # GLM-4.7-Flash's layout at width 256 (config.json read as it is): DeepSeek-V3's MLA and MoE, then a whole MTP
    # layer with its NextN tensors, kept as block 2 (its optional embed_tokens / shared_head.head left out); GLM's vocabulary
    c = base_config("Glm4MoeLiteForCausalLM", "glm4_moe_lite", 151936, **{**_DEEPSEEK_V3, "n_group": 1},
                    rope_theta=1000000.0, rms_norm_eps=1e-5, max_position_embeddings=202752, attention_bias=False,
                    partial_rotary_factor=1.0, pad_token_id=151329, eos_token_id=[151329, 151336, 151338])
    t = mla_tensors(rng, {**c, "num_hidden_layers": 3}, lm_head=False)
    p = "model.layers.2."
    for n in ("enorm", "hnorm", "shared_head.norm"):
        t[p + n + ".weight"] = (1 + heavy(rng, (256,), 0.1), "BF16")
    t[p + "eh_proj.weight"] = (heavy(rng, (256, 512)), "BF16")
    return c, t, "glm4", {"tokenizer.json": glm_tokenizer_json()}


def case_deepseek2_lite(rng):
    # DeepSeek-V2-Lite's layout: no q_lora (plain q_proj), softmax router, 2 shared experts; 26 layers because llama.cpp reads
    # deepseek2 files without q_lora_rank only at the "lite" layer counts (26, 27). Narrow (128): fallback types.
    # GPT-2's tokenizer (deepseek3 carries DeepSeek-V3's real one).
    c = base_config("DeepseekV2ForCausalLM", "deepseek_v2", 50257, hidden_size=128, intermediate_size=256,
                    num_hidden_layers=26, num_attention_heads=2, num_key_value_heads=2, q_lora_rank=None,
                    kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=32, v_head_dim=32, first_k_dense_replace=1,
                    n_routed_experts=4, n_shared_experts=2, num_experts_per_tok=2, moe_intermediate_size=64,
                    n_group=1, topk_group=1, topk_method="greedy", scoring_func="softmax", routed_scaling_factor=1.0,
                    norm_topk_prob=False, tie_word_embeddings=False, aux_loss_alpha=0.001, moe_layer_freq=1,
                    **{**_DEEPSEEK, "rope_scaling": {**_DEEPSEEK["rope_scaling"], "mscale": 0.707, "mscale_all_dim": 0.707}})
    c["q_lora_rank"] = None
    return c, mla_tensors(rng, c, lm_head=True), "gpt-2", {}


def case_deepseek3(rng):
    # DeepSeek-V3's layout at width 256: q_lora, one dense layer then MoE with a sigmoid noaux_tc router
    # (e_score_correction_bias, groups), a shared expert, YaRN with mscale, and an MTP layer the converter drops;
    # tied embeddings (unlike the release, to halve the test's work) with the lm_head left in, which the converter drops
    c = base_config("DeepseekV3ForCausalLM", "deepseek_v3", 129280, num_hidden_layers=3, **_DEEPSEEK_V3, **_DEEPSEEK)
    return c, mla_tensors(rng, c, mtp_layers=1), "deepseek-v3", {}


def case_deepseek32(rng):
    # DeepSeek-V3.2-Exp's layout at width 256 (DeepseekV32ForCausalLM, no transformers 4.57.6 config class: config.json
    # read as it is): V3's MLA + MoE, the DSA indexer in every layer, and an MTP layer the converter keeps
    c = base_config("DeepseekV32ForCausalLM", "deepseek_v32", 129280, num_hidden_layers=2, **_DEEPSEEK_V3, moe_layer_freq=1,
                    index_n_heads=4, index_head_dim=64, index_topk=16, ep_size=1, **_DEEPSEEK)
    return c, mla_tensors(rng, c, mtp_layers=1, dsa=True), "deepseek-v3", {}


def case_hy_v4(rng):
    # Tencent Hy4's layout at width 256 (HYV4ForCausalLM, no transformers 4.57.6 config class: config.json read as it
    # is): V3-style MLA + sigmoid-routed MoE after one dense layer, experts stacked (gate_up_proj fused), a gated
    # attention output and learnable sinks, hyper-connections (F32, kept F32), the DSA indexer on the "full" layers,
    # an fp32 lm_head; an MTP layer under model.mtp_layers (dropped)
    c = base_config("HYV4ForCausalLM", "hy_v4", 50257, num_hidden_layers=3, **{**_DEEPSEEK_V3, "tie_word_embeddings": False},
                    head_dim=32, index_n_heads=4, index_head_dim=64, index_topk=16, hc_mult=2, hc_eps=1e-6,
                    hc_magnitude=2.0, swiglu_limit=10.0, enable_lm_head_fp32=True, learnable_sink_init=0.0,
                    mlp_layer_types=["dense", "sparse", "sparse"], layer_types=["indexed_attention"] * 3,
                    indexer_types=["full", "shared", "full"], rope_theta=None, rms_norm_eps=1e-5,
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, max_position_embeddings=262144,
                    bos_token_id=50256, eos_token_id=50256, torch_dtype=None, dtype="bfloat16")
    for k in ("first_k_dense_replace", "topk_method", "scoring_func", "num_nextn_predict_layers"):
        del c[k]
    c |= {"n_group": 1, "topk_group": 1, "num_nextn_predict_layers": 1}
    t = mla_tensors(rng, {**c, "first_k_dense_replace": 1, "topk_method": "noaux_tc"})
    e, nh, hc, n_x, f = 256, 4, 2, 4, 256
    for i in range(3):
        p = f"model.layers.{i}."
        for x in range(n_x):
            for w in ("gate_proj", "up_proj", "down_proj"):
                t.pop(p + f"mlp.experts.{x}.{w}.weight", None)
        if i >= 1:
            t[p + "mlp.gate.weight"] = (heavy(rng, (n_x, e)), "F32")
            t[p + "mlp.experts.gate_up_proj"] = (heavy(rng, (n_x, 2 * f, e)), "BF16")
            t[p + "mlp.experts.down_proj"] = (heavy(rng, (n_x, e, f)), "BF16")
        t[p + "self_attn.linear_gate.weight"] = (heavy(rng, (nh * c["v_head_dim"], e)), "BF16")
        t[p + "self_attn.learnable_sink_param"] = (heavy(rng, (nh,), 1.0), "F32")
        for hcl in ("hc_attn_layer", "hc_mlp_layer"):
            t[p + hcl + ".hc_pre.hc_fn"] = (heavy(rng, (2 * hc, hc * e)), "F32")
            t[p + hcl + ".hc_pre.hc_base"] = (heavy(rng, (2 * hc,), 0.5), "F32")
            t[p + hcl + ".hc_pre.hc_scale"] = (1 + heavy(rng, (2,), 0.1), "F32")
        if c["indexer_types"][i] == "full":
            t[p + "self_attn.indexer.wq_b.weight"] = (heavy(rng, (4 * 64, c["q_lora_rank"])), "BF16")
            t[p + "self_attn.indexer.wk.weight"] = (heavy(rng, (64, e)), "BF16")
            t[p + "self_attn.indexer.k_norm.weight"] = (1 + heavy(rng, (64,), 0.1), "F32")
            t[p + "self_attn.indexer.k_norm.bias"] = (heavy(rng, (64,), 0.1), "F32")
            t[p + "self_attn.indexer.weights_proj.weight"] = (heavy(rng, (4, e)), "F32")
    t["model.hc_head.hc_head_fn"] = (heavy(rng, (hc, hc * e)), "F32")
    t["model.hc_head.hc_head_base"] = (heavy(rng, (hc,), 0.5), "F32")
    t["model.hc_head.hc_head_scale"] = (1 + heavy(rng, (1,), 0.1), "F32")
    t["model.mtp_layers.0.enorm.weight"] = (1 + heavy(rng, (e,), 0.1), "BF16")  # dropped, as the converter drops it
    return c, t, "gpt-2", {}


def step35_text(**kw) -> dict:
    """A Step 3.5 Flash text config in StepFun's own keys (the ones the converter reads), tiny: full and sliding
    layers with their own head counts and rope bases, one dense layer then MoE layers, an MTP layer."""
    c = dict(model_type="step3p5", hidden_size=256, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
             num_attention_groups=2, head_dim=64, vocab_size=50257, rms_norm_eps=1e-5, max_position_embeddings=65536,
             rope_theta=[5000000.0, 10000.0, 5000000.0, 5000000.0], rope_scaling=None,
             layer_types=["full_attention", "sliding_attention", "full_attention", "full_attention"],
             partial_rotary_factors=[0.5, 1.0, 0.5, 0.5],
             attention_other_setting={"attention_type": "sliding_attention", "num_attention_heads": 8,
                                      "num_attention_groups": 2, "head_dim": 64},
             swiglu_limits=[0.0, 0.0, 7.0, 0.0], swiglu_limits_shared=[0.0, 0.0, 16.0, 0.0], moe_layers_enum="1,2",
             moe_num_experts=4, moe_top_k=2, moe_intermediate_size=256, share_expert_dim=320, share_expert_dims=320,
             moe_router_scaling_factor=3.0, moe_router_activation="sigmoid", norm_expert_weight=True,
             use_moe_router_bias=True, use_head_wise_attn_gate=True, sliding_window=64, num_nextn_predict_layers=1,
             yarn_only_types=["full_attention"], tie_word_embeddings=False, need_fp32_gate=True, use_qk_norm=True,
             zero_centered=True, bos_token_id=50256, eos_token_id=50256)
    c.update(kw)
    return c


def step35_tensors(rng, c: dict, prefix: str = "model.") -> dict[str, tuple[np.ndarray, str]]:
    """Step 3.5's checkpoint layout: zero-centred norms, g_proj gates, stacked moe.* experts with a router bias,
    share_expert.*; the MTP layer (past num_hidden_layers) a dense block plus eh_proj / enorm / hnorm and
    transformer.shared_head.{norm,output}."""
    e, hd, v, n_main = c["hidden_size"], c["head_dim"], c["vocab_size"], c["num_hidden_layers"]
    n_x, ff_x, ff_sh, ff = c["moe_num_experts"], c["moe_intermediate_size"], c["share_expert_dim"], c["intermediate_size"]
    moe = {int(i) for i in c["moe_layers_enum"].split(",")}
    t = {prefix + "embed_tokens.weight": (heavy(rng, (v, e)), "BF16"), prefix + "norm.weight": (heavy(rng, (e,), 0.1), "BF16"),
         "lm_head.weight": (heavy(rng, (v, e)), "BF16")}
    for i in range(n_main + c["num_nextn_predict_layers"]):
        p = f"{prefix}layers.{i}."
        swa = c["layer_types"][i] == "sliding_attention"
        nq = c["attention_other_setting"]["num_attention_heads"] if swa else c["num_attention_heads"]
        nkv = c["num_attention_groups"]
        for n in ("input_layernorm", "post_attention_layernorm"):
            t[p + n + ".weight"] = (heavy(rng, (e,), 0.1), "BF16")
        for n in ("self_attn.q_norm", "self_attn.k_norm"):
            t[p + n + ".weight"] = (heavy(rng, (hd,), 0.1), "BF16")
        t[p + "self_attn.q_proj.weight"] = (heavy(rng, (nq * hd, e)), "BF16")
        t[p + "self_attn.k_proj.weight"] = (heavy(rng, (nkv * hd, e)), "BF16")
        t[p + "self_attn.v_proj.weight"] = (heavy(rng, (nkv * hd, e)), "BF16")
        t[p + "self_attn.o_proj.weight"] = (heavy(rng, (e, nq * hd)), "BF16")
        t[p + "self_attn.g_proj.weight"] = (heavy(rng, (nq, e)), "BF16")
        if i in moe:
            t[p + "moe.gate.weight"] = (heavy(rng, (n_x, e)), "F32")
            t[p + "moe.router_bias"] = (heavy(rng, (n_x,), 1.0), "F32")
            t[p + "moe.gate_proj.weight"] = (heavy(rng, (n_x, ff_x, e)), "BF16")
            t[p + "moe.up_proj.weight"] = (heavy(rng, (n_x, ff_x, e)), "BF16")
            t[p + "moe.down_proj.weight"] = (heavy(rng, (n_x, e, ff_x)), "BF16")
            t[p + "share_expert.gate_proj.weight"] = (heavy(rng, (ff_sh, e)), "BF16")
            t[p + "share_expert.up_proj.weight"] = (heavy(rng, (ff_sh, e)), "BF16")
            t[p + "share_expert.down_proj.weight"] = (heavy(rng, (e, ff_sh)), "BF16")
        else:
            t[p + "mlp.gate_proj.weight"] = (heavy(rng, (ff, e)), "BF16")
            t[p + "mlp.up_proj.weight"] = (heavy(rng, (ff, e)), "BF16")
            t[p + "mlp.down_proj.weight"] = (heavy(rng, (e, ff)), "BF16")
        if i >= n_main:
            t[p + "eh_proj.weight"] = (heavy(rng, (e, 2 * e)), "BF16")
            t[p + "enorm.weight"] = (heavy(rng, (e,), 0.1), "BF16")
            t[p + "hnorm.weight"] = (heavy(rng, (e,), 0.1), "BF16")
            t[p + "transformer.shared_head.norm.weight"] = (heavy(rng, (e,), 0.1), "BF16")
            t[p + "transformer.shared_head.output.weight"] = (heavy(rng, (v, e)), "BF16")
    return t


def case_step35(rng):
    # Step3p5ForCausalLM (no transformers 4.57.6 config class: config.json read as it is), with a llama3 rope
    c = {"architectures": ["Step3p5ForCausalLM"],
         **step35_text(rope_scaling={"rope_type": "llama3", "factor": 2.0, "original_max_position_embeddings": 4096,
                                     "low_freq_factor": 1.0, "high_freq_factor": 32.0}), "torch_dtype": "bfloat16"}
    return c, step35_tensors(rng, c), "gpt-2", {}


def case_step37_mm(rng):
    # Step3p7ForConditionalGeneration (Step 3.7 Flash): the Step 3.5 text model under text_config, the vision tower
    # (vision_model.*) and projector (vit_large_projector) dropped as the converter drops them without --mmproj
    text = step35_text(moe_layers_enum="2", swiglu_limits=None, moe_router_scaling_factor=2.5)
    c = {"architectures": ["Step3p7ForConditionalGeneration"], "model_type": "step3p7", "text_config": text,
         "vision_config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 32,
                           "patch_size": 8}, "torch_dtype": "bfloat16"}
    t = step35_tensors(rng, text)
    t |= vision_parts(rng, {"vision_model.conv1.weight": (32, 3, 8, 8), "vision_model.ln_pre.weight": (32,),
                            "vit_large_projector.weight": (256, 32)})
    return c, t, "gpt-2", {}


def case_laguna(rng):
    # Poolside Laguna-XS.2's layout (no transformers 4.57.6 class: config.json read as it is): heads per layer, a
    # head-wise output gate, full / sliding layers with their own rope, one dense layer then MoE with per-expert
    # tensors, a router score-correction bias and a shared expert; eos [2, 24]-style list (the second becomes eot),
    # chat_template.jinja embedded
    c = base_config("LagunaForCausalLM", "laguna", 50257, hidden_size=256, intermediate_size=512, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=64, num_attention_heads_per_layer=[4, 8, 4],
                    layer_types=["full_attention", "sliding_attention", "full_attention"], sliding_window=128,
                    mlp_layer_types=["dense", "sparse", "sparse"], num_experts=4, num_experts_per_tok=2,
                    moe_intermediate_size=256, shared_expert_intermediate_size=320, moe_routed_scaling_factor=2.5,
                    gating=True, rope_theta=None, rms_norm_eps=1e-6, max_position_embeddings=131072,
                    rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 500000.0,
                                                        "partial_rotary_factor": 0.5},
                                     "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0,
                                                           "partial_rotary_factor": 1.0}},
                    bos_token_id=50256, eos_token_id=[50256, 198], torch_dtype=None, dtype="bfloat16")
    t = dense_tensors(rng, c, qk_norm=True, layer_range=range(1))
    t |= dense_tensors(rng, {**c, "moe": True}, qk_norm=True, layer_range=range(1, 3))
    for i, nh in enumerate(c["num_attention_heads_per_layer"]):
        p = f"model.layers.{i}."
        t[p + "self_attn.q_proj.weight"] = (heavy(rng, (nh * 64, 256)), "BF16")
        t[p + "self_attn.o_proj.weight"] = (heavy(rng, (256, nh * 64)), "BF16")
        t[p + "self_attn.g_proj.weight"] = (heavy(rng, (nh, 256)), "BF16")
        if i >= 1:
            p += "mlp."
            t.update(expert_tensors(rng, p, 4, 256, 256))
            t[p + "experts.e_score_correction_bias"] = (heavy(rng, (4,), 0.1), "F32")
            for w, shp in (("gate_proj", (320, 256)), ("up_proj", (320, 256)), ("down_proj", (256, 320))):
                t[p + f"shared_expert.{w}.weight"] = (heavy(rng, shp), "BF16")
    files = {"chat_template.jinja": "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>\n"
                                    "{% endfor %}"}
    return c, t, "gpt-2", files


def case_maple(rng):
    # deepgrove maple-preview's layout (config.json read as it is): 3 sliding + 1 NoPE global layers, partial rotary,
    # q/k norms, a softmax-routed MoE in every layer (per-expert tensors), no shared expert; GPT-2's tokenizer (small)
    c = base_config("MapleForCausalLM", "maple", 50257, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=64, moe_intermediate_size=256, num_experts=4,
                    num_experts_per_tok=2, num_shared_experts=0, norm_topk_prob=True, nope_on_global_attention=True,
                    partial_rotary_factor=0.5, sliding_window=512, hidden_act="silu", rms_norm_eps=1e-6,
                    layer_types=["sliding_attention"] * 3 + ["full_attention"], max_position_embeddings=131072,
                    tie_word_embeddings=False, bos_token_id=50256, eos_token_id=50256)
    t = dense_tensors(rng, {**c, "moe": True}, qk_norm=True)
    for i in range(4):
        t.update(expert_tensors(rng, f"model.layers.{i}.mlp.", 4, 256, 256))
    return c, t, "gpt-2", {}


def case_mpt(rng):
    # mpt-7b's layout (transformer.blocks.*, fused Wqkv, bias-free LayerNorms, ALiBi, tied output), 320 wide with
    # clip_qkv and a kv_n_heads key MptAttentionConfig drops
    e, v = 320, 50257
    c = {"architectures": ["MPTForCausalLM"], "model_type": "mpt", "d_model": e, "n_heads": 5, "n_layers": 2,
         "expansion_ratio": 4, "max_seq_len": 2048, "vocab_size": v, "no_bias": True, "learned_pos_emb": True,
         "attn_config": {"alibi": True, "alibi_bias_max": 8, "attn_impl": "torch", "attn_pdrop": 0,
                         "attn_type": "multihead_attention", "clip_qkv": 6.0, "kv_n_heads": 5, "prefix_lm": False,
                         "qk_ln": False, "softmax_scale": None},
         "norm_type": "low_precision_layernorm", "torch_dtype": "bfloat16", "bos_token_id": 0, "eos_token_id": 0}
    t = {"transformer.wte.weight": (heavy(rng, (v, e)), "BF16"), "transformer.norm_f.weight": (1 + heavy(rng, (e,), 0.1), "BF16")}
    for i in range(2):
        p = f"transformer.blocks.{i}."
        t[p + "norm_1.weight"] = (1 + heavy(rng, (e,), 0.1), "BF16")
        t[p + "norm_2.weight"] = (1 + heavy(rng, (e,), 0.1), "BF16")
        t[p + "attn.Wqkv.weight"] = (heavy(rng, (3 * e, e)), "BF16")
        t[p + "attn.out_proj.weight"] = (heavy(rng, (e, e)), "BF16")
        t[p + "ffn.up_proj.weight"] = (heavy(rng, (4 * e, e)), "BF16")
        t[p + "ffn.down_proj.weight"] = (heavy(rng, (e, 4 * e)), "BF16")
    return c, t, "gpt-2", {}


def case_bloom(rng):
    # bloom-560m's layout (BloomForCausalLM saved without the transformer. prefix, n_embed instead of hidden_size, tied
    # output): per-head fused query_key_value regrouped by the converter, biases everywhere, an embedding LayerNorm
    e, nh, v = 256, 4, 50257
    c = {"architectures": ["BloomForCausalLM"], "model_type": "bloom", "n_embed": e, "n_layer": 2, "num_attention_heads": nh,
         "vocab_size": v, "layer_norm_epsilon": 1e-5, "apply_residual_connection_post_layernorm": False,
         "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3, "seq_length": 2048, "torch_dtype": "bfloat16"}
    t = {"word_embeddings.weight": (heavy(rng, (v, e)), "BF16")}
    for n in ("word_embeddings_layernorm", "ln_f"):
        t[n + ".weight"] = (1 + heavy(rng, (e,), 0.1), "BF16")
        t[n + ".bias"] = (heavy(rng, (e,), 0.1), "BF16")
    for i in range(2):
        p = f"h.{i}."
        for n in ("input_layernorm", "post_attention_layernorm"):
            t[p + n + ".weight"] = (1 + heavy(rng, (e,), 0.1), "BF16")
            t[p + n + ".bias"] = (heavy(rng, (e,), 0.1), "BF16")
        for n, shp in (("self_attention.query_key_value", (3 * e, e)), ("self_attention.dense", (e, e)),
                       ("mlp.dense_h_to_4h", (4 * e, e)), ("mlp.dense_4h_to_h", (e, 4 * e))):
            t[p + n + ".weight"] = (heavy(rng, shp), "BF16")
            t[p + n + ".bias"] = (heavy(rng, (shp[0],)), "BF16")
    return c, t, "gpt-2", {}


def case_orion(rng):
    # Orion-14B's layout (OrionForCausalLM, remote code: config.json read as it is): Llama's modules with LayerNorms
    # (weights and biases), max_sequence_length; SentencePiece vocabulary
    c = base_config("OrionForCausalLM", "orion", 32000, hidden_size=256, intermediate_size=512, num_key_value_heads=4,
                    max_sequence_length=4096, max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
                    tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    t = dense_tensors(rng, c)
    t["model.norm.bias"] = (heavy(rng, (256,), 0.1), "BF16")
    for i in range(c["num_hidden_layers"]):
        for n in ("input_layernorm", "post_attention_layernorm"):
            t[f"model.layers.{i}.{n}.bias"] = (heavy(rng, (256,), 0.1), "BF16")
    return c, t, "llama-spm", {}


def case_xverse(rng):
    # XVERSE's layout (XverseForCausalLM, remote code: config.json read as it is): Llama's modules, grouped KV heads
    # (the converter's K permutation groups by n_head // n_head_kv), a tokenizer.json read id by id as a llama vocabulary
    c = base_config("XverseForCausalLM", "xverse", 32000, hidden_size=256, intermediate_size=512, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=8192, rms_norm_eps=1e-6, rope_theta=500000.0,
                    tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return c, dense_tensors(rng, c), "llama-spm", {}


def case_kimi_k2(rng):
    # Kimi K2's layout at width 256 (DeepseekV3ForCausalLM: one dense layer, sigmoid router with one group, no MTP) and
    # its tokenizer: tiktoken.model + Moonshot's TikTokenTokenizer remote code, no tokenizer.json (the converter's
    # AutoTokenizer(trust_remote_code) branch); fixtures/tokenizers/kimi-k2 (see EXTRA_PRE_HASHES). model_type kimi_k2 as
    # released (its DeepseekV3Config is remote code: the converter reads config.json as it is)
    c = base_config("DeepseekV3ForCausalLM", "kimi_k2", 4096, num_hidden_layers=2,
                    **{**_DEEPSEEK_V3, "n_group": 1, "topk_group": 1, "num_nextn_predict_layers": 0,
                       "tie_word_embeddings": False}, **{**_DEEPSEEK, "bos_token_id": 3840, "eos_token_id": 3841})
    return c, mla_tensors(rng, c), "kimi-k2", {}


def case_kimi_k25(rng):
    # Kimi K2.5's language model (KimiK25ForConditionalGeneration, model_type kimi_k25: remote code, read as it is with
    # text_config merged): Kimi K2's layout under language_model., a few vision tower / projector tensors left out
    c, t, tok, files = case_kimi_k2(rng)
    text = {k: v for k, v in c.items() if k not in ("architectures", "torch_dtype")}
    top = {"architectures": ["KimiK25ForConditionalGeneration"], "model_type": "kimi_k25", "text_config": text,
           "vision_config": {"model_type": "moonvit", "hidden_size": 64}, "media_placeholder_token_id": 4000,
           "bos_token_id": 3840, "eos_token_id": 3841, "torch_dtype": "bfloat16"}
    t = language_model(t, "language_model.model.") | vision_parts(rng, {
        "vision_tower.encoder.blocks.0.wqkv.weight": (192, 64), "vision_tower.patch_embed.proj.weight": (64, 3, 14, 14),
        "mm_projector.proj.0.weight": (256, 256)})
    return top, t, tok, files


def case_kimi_linear(rng):
    # Kimi-Linear-48B-A3B's layout at width 256 (KimiLinearForCausalLM, no transformers 4.57.6 config class: config.json read
    # as it is): KDA layers 0 and 2, an MLA layer 1 (full_attn_layers is 1-based) with a plain q_proj, one dense layer then
    # block_sparse_moe experts (w1/w2/w3) + a shared expert, sigmoid router with e_score_correction_bias; Kimi's tiktoken
    # vocabulary, whose eos (3841) the converter writes over config.json's (3842)
    c = base_config("KimiLinearForCausalLM", "kimi_linear", 4096, hidden_size=256, intermediate_size=512,
                    num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=None, kv_lora_rank=128,
                    qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64, mla_use_nope=True, first_k_dense_replace=1,
                    num_experts=4, num_experts_per_token=2, num_shared_experts=1, moe_intermediate_size=128,
                    moe_layer_freq=1, moe_renormalize=True, moe_router_activation_func="sigmoid", num_expert_group=1,
                    topk_group=1, use_grouped_topk=True, routed_scaling_factor=2.446, tie_word_embeddings=False,
                    linear_attn_config={"full_attn_layers": [2], "kda_layers": [1, 3], "head_dim": 64, "num_heads": 4,
                                        "short_conv_kernel_size": 4},
                    bos_token_id=3840, eos_token_id=3842, pad_token_id=3839 + 256)
    e, v, nh, hd, f, fx = 256, 4096, 4, 64, 512, 128
    d = nh * hd
    t = {"model.embed_tokens.weight": (heavy(rng, (v, e)), "BF16"), "model.norm.weight": (1 + heavy(rng, (e,), 0.1), "BF16"),
         "lm_head.weight": (heavy(rng, (v, e)), "BF16")}
    for i in range(3):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = (1 + heavy(rng, (e,), 0.1), "BF16")
        t[p + "post_attention_layernorm.weight"] = (1 + heavy(rng, (e,), 0.1), "BF16")
        a = p + "self_attn."
        if i == 1:  # MLA
            t[a + "q_proj.weight"] = (heavy(rng, (nh * (64 + 32), e)), "BF16")
            t[a + "kv_a_proj_with_mqa.weight"] = (heavy(rng, (128 + 32, e)), "BF16")
            t[a + "kv_a_layernorm.weight"] = (1 + heavy(rng, (128,), 0.1), "BF16")
            t[a + "kv_b_proj.weight"] = (heavy(rng, (nh * (64 + 64), 128)), "BF16")
            t[a + "o_proj.weight"] = (heavy(rng, (e, nh * 64)), "BF16")
        else:  # KDA
            for n in ("q_proj", "k_proj", "v_proj"):
                t[a + n + ".weight"] = (heavy(rng, (d, e)), "BF16")
            for n in ("q_conv1d", "k_conv1d", "v_conv1d"):
                t[a + n + ".weight"] = (heavy(rng, (d, 1, 4), 0.3), "BF16")
            t[a + "A_log"] = (f32_a_log(rng, nh).reshape(1, 1, nh, 1), "F32")
            t[a + "dt_bias"] = (heavy(rng, (d,), 1.0), "F32")
            t[a + "f_a_proj.weight"] = (heavy(rng, (hd, e)), "BF16")
            t[a + "f_b_proj.weight"] = (heavy(rng, (d, hd)), "BF16")
            t[a + "b_proj.weight"] = (heavy(rng, (nh, e)), "BF16")
            t[a + "g_a_proj.weight"] = (heavy(rng, (hd, e)), "BF16")
            t[a + "g_b_proj.weight"] = (heavy(rng, (d, hd)), "BF16")
            t[a + "o_norm.weight"] = (1 + heavy(rng, (hd,), 0.1), "BF16")
            t[a + "o_proj.weight"] = (heavy(rng, (e, d)), "BF16")
        if i == 0:
            t.update({p + "mlp.gate_proj.weight": (heavy(rng, (f, e)), "BF16"), p + "mlp.up_proj.weight": (heavy(rng, (f, e)), "BF16"),
                      p + "mlp.down_proj.weight": (heavy(rng, (e, f)), "BF16")})
            continue
        m = p + "block_sparse_moe."
        t.update(expert_tensors(rng, m, 4, e, fx, names=("w1", "w3", "w2")))
        t[m + "gate.e_score_correction_bias"] = (heavy(rng, (4,), 1.0), "F32")
        for n, shp in (("gate_proj", (fx, e)), ("up_proj", (fx, e)), ("down_proj", (e, fx))):
            t[m + f"shared_experts.{n}.weight"] = (heavy(rng, shp), "BF16")
    return c, t, "kimi-k2", {}


def case_deepseek(rng):
    # DeepSeek-MoE 16B's layout (DeepseekForCausalLM, no transformers config class: the converter reads
    # config.json as it is): Llama attention, one dense layer, then 4 routed + 2 shared experts
    c = base_config("DeepseekForCausalLM", "deepseek", 50257, num_attention_heads=4, num_key_value_heads=4,
                    intermediate_size=256, first_k_dense_replace=1, moe_layer_freq=1, n_routed_experts=4,
                    n_shared_experts=2, num_experts_per_tok=2, moe_intermediate_size=64, norm_topk_prob=False,
                    scoring_func="softmax", bos_token_id=0, eos_token_id=1, tie_word_embeddings=False)
    e = c["hidden_size"]
    t = dense_tensors(rng, {**c, "moe": True}, layer_range=range(1, 2))
    t.update(dense_tensors(rng, c, layer_range=range(1)))
    p = "model.layers.1.mlp."
    t[p + "gate.weight"] = (heavy(rng, (4, e)), "BF16")
    for w, shp in (("gate_proj", (128, e)), ("up_proj", (128, e)), ("down_proj", (e, 128))):
        t[p + f"shared_experts.{w}.weight"] = (heavy(rng, shp), "BF16")
    for x in range(4):
        for w, shp in (("gate_proj", (64, e)), ("up_proj", (64, e)), ("down_proj", (e, 64))):
            t[p + f"experts.{x}.{w}.weight"] = (heavy(rng, shp), "BF16")
    return c, t, "gpt-2", {}


def gpt_oss_tensors(rng, c: dict, mxfp4: bool) -> dict[str, tuple[np.ndarray, str]]:
    """gpt-oss layers: attention with biases and sinks, a router with a bias, experts stacked per
    projection (gate and up interleaved in gate_up_proj); the BF16 release stores them [expert, in, out],
    the original release as MXFP4 `_blocks` [expert, out, in / 32, 16] and E8M0 `_scales` [expert, out, in / 32]."""
    e, ff, n_x = c["hidden_size"], c["intermediate_size"], c["num_local_experts"]
    t = dense_tensors(rng, {**c, "moe": True}, qkv_bias=True, o_bias=True)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        del t[p + "self_attn.rotary_emb.inv_freq"]
        t[p + "self_attn.sinks"] = (heavy(rng, (c["num_attention_heads"],), 1.0), "BF16")
        t[p + "mlp.router.weight"] = (heavy(rng, (n_x, e)), "BF16")
        t[p + "mlp.router.bias"] = (heavy(rng, (n_x,)), "BF16")
        t[p + "mlp.experts.gate_up_proj_bias"] = (heavy(rng, (n_x, 2 * ff)), "BF16")
        t[p + "mlp.experts.down_proj_bias"] = (heavy(rng, (n_x, e)), "BF16")
        for w, rows, cols in (("gate_up_proj", 2 * ff, e), ("down_proj", e, ff)):
            if mxfp4:  # random codes; exponents around 2^-7 (E8M0 bias 127), a few extreme ones
                t[p + f"mlp.experts.{w}_blocks"] = (rng.integers(0, 256, (n_x, rows, cols // 32, 16)), "U8")
                sc = rng.integers(118, 124, (n_x, rows, cols // 32))
                sc.reshape(-1)[:3] = (0, 1, 135)
                t[p + f"mlp.experts.{w}_scales"] = (sc, "U8")
            else:
                t[p + f"mlp.experts.{w}"] = (heavy(rng, (n_x, cols, rows)), "BF16")
    return t


def gpt_oss_config(**kw) -> dict:
    # gpt-oss-20b's config.json, narrowed: gate/up rows 128 wide (K-quant fallback), down rows 256
    return base_config("GptOssForCausalLM", "gpt_oss", 201088, **{**dict(
        hidden_size=128, intermediate_size=256, head_dim=64, num_attention_heads=4, num_key_value_heads=2,
        num_local_experts=4, num_experts_per_tok=2, experts_per_token=2, sliding_window=128, rope_theta=150000,
        max_position_embeddings=131072, initial_context_length=4096, layer_types=["sliding_attention", "full_attention"],
        rope_scaling={"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0, "original_max_position_embeddings": 4096,
                      "rope_type": "yarn", "truncate": False},
        attention_bias=True, hidden_act="silu", swiglu_limit=7.0, tie_word_embeddings=False, eos_token_id=200002,
        pad_token_id=199999), **kw})


def case_gpt_oss(rng):
    # the BF16 release (unsloth/gpt-oss-20b-BF16's layout)
    c = gpt_oss_config()
    return c, gpt_oss_tensors(rng, c, mxfp4=False), "gpt-oss", {}


def case_gpt_oss_mxfp4(rng):
    # the original release: experts in MXFP4, everything else BF16
    # (GPT-2's tokenizer: the BF16 case carries the real o200k harmony one)
    c = gpt_oss_config(quantization_config={"modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                                                      "model.embed_tokens", "lm_head"],
                                            "quant_method": "mxfp4"},
                       vocab_size=50257, eos_token_id=50256, pad_token_id=50255)
    return c, gpt_oss_tensors(rng, c, mxfp4=True), "gpt-2", {}


def case_bitnet(rng):
    # 1bitLLM/bitnet_b1_58-large's layout (model_type llama, inner_attn_ln / ffn_layernorm sub-norms);
    # widths over 32768 elements so torch's mean runs its two-pass (threaded) reduction
    c = base_config("BitnetForCausalLM", "llama", 32000, hidden_size=256, intermediate_size=320, num_attention_heads=4,
                    num_key_value_heads=4, bos_token_id=1, eos_token_id=2)
    t = dense_tensors(rng, c, lm_head=False)  # BITNET has no output tensor: the converter cannot map lm_head
    for i in range(c["num_hidden_layers"]):
        t[f"model.layers.{i}.self_attn.inner_attn_ln.weight"] = (1 + heavy(rng, (256,), 0.1), "BF16")
        t[f"model.layers.{i}.mlp.ffn_layernorm.weight"] = (1 + heavy(rng, (320,), 0.1), "BF16")
    t["model.layers.1.mlp.down_proj.weight"] = (heavy(rng, (256, 320)), "F16")  # weight_quant casts back to F16
    return c, t, "llama-spm", {}


def case_bitnet_b(rng):
    # the BitNetForCausalLM name with transformers' bitnet config class (its defaults) and F32 weights
    c = base_config("BitNetForCausalLM", "bitnet", 32000, hidden_size=256, intermediate_size=320, num_attention_heads=4,
                    num_key_value_heads=2, rope_theta=500000.0, rms_norm_eps=None, bos_token_id=1, eos_token_id=2)
    t = dense_tensors(rng, c, dt="F32", lm_head=False)
    for i in range(c["num_hidden_layers"]):
        t[f"model.layers.{i}.self_attn.inner_attn_ln.weight"] = (1 + heavy(rng, (256,), 0.1), "F32")
        t[f"model.layers.{i}.mlp.ffn_layernorm.weight"] = (1 + heavy(rng, (320,), 0.1), "F32")
    return c, t, "llama-spm", {}


def gemma4_text_config(**kw) -> dict:
    """A Gemma 4 text config with every key Google's release states (no transformers 4.x class: the converter
    reads config.json as it is, so nothing may be left to defaults); `kw` overrides."""
    c = dict(model_type="gemma4_text", hidden_size=256, intermediate_size=512, num_hidden_layers=3,
             num_attention_heads=2, num_key_value_heads=2, head_dim=128, global_head_dim=256,
             num_global_key_value_heads=1, attention_k_eq_v=True, vocab_size=4096, max_position_embeddings=262144,
             layer_types=["sliding_attention", "sliding_attention", "full_attention"], sliding_window=512,
             rope_parameters={"full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1000000.0,
                                                 "rope_type": "proportional"},
                              "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}},
             final_logit_softcapping=30.0, rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh",
             hidden_size_per_layer_input=0, vocab_size_per_layer_input=4096, num_kv_shared_layers=0,
             use_double_wide_mlp=False, enable_moe_block=False, num_experts=None, top_k_experts=None,
             moe_intermediate_size=None, attention_bias=False, attention_dropout=0.0, use_bidirectional_attention=None,
             tie_word_embeddings=True, bos_token_id=2, eos_token_id=1, pad_token_id=0, initializer_range=0.02,
             use_cache=True)
    c.update(kw)
    return c


def gemma4_tensors(rng, c: dict) -> dict[str, tuple[np.ndarray, str]]:
    """Gemma 4 text tensors (transformers' Gemma4TextModel: per-layer head sizes, KV-shared layers without
    their own keys and values, the MoE block beside the dense MLP, per-layer embeddings), as model.*."""
    e, ff, n_layer = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    nh, nkv, hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    n_shared, ple = c["num_kv_shared_layers"], c["hidden_size_per_layer_input"] or 0
    norm = lambda n: (1 + heavy(rng, (n,), 0.1), "BF16")  # noqa: E731
    t = {"model.embed_tokens.weight": (heavy(rng, (c["vocab_size"], e)), "BF16"), "model.norm.weight": norm(e)}
    if ple:
        t["model.embed_tokens_per_layer.weight"] = (heavy(rng, (c["vocab_size_per_layer_input"], n_layer * ple)), "BF16")
        t["model.per_layer_model_projection.weight"] = (heavy(rng, (n_layer * ple, e)), "BF16")
        t["model.per_layer_projection_norm.weight"] = norm(ple)
    for i, kind in enumerate(c["layer_types"]):
        p, full = f"model.layers.{i}.", kind == "full_attention"
        d = c["global_head_dim"] if full else hd
        kv = (c["num_global_key_value_heads"] if full and c["attention_k_eq_v"] else nkv) * d
        shared = i >= n_layer - n_shared
        f = ff * 2 if shared and c["use_double_wide_mlp"] else ff
        t |= {p + "input_layernorm.weight": norm(e), p + "post_attention_layernorm.weight": norm(e),
              p + "pre_feedforward_layernorm.weight": norm(e), p + "post_feedforward_layernorm.weight": norm(e),
              p + "self_attn.q_proj.weight": (heavy(rng, (nh * d, e)), "BF16"), p + "self_attn.q_norm.weight": norm(d),
              p + "self_attn.o_proj.weight": (heavy(rng, (e, nh * d)), "BF16"),
              p + "mlp.gate_proj.weight": (heavy(rng, (f, e)), "BF16"), p + "mlp.up_proj.weight": (heavy(rng, (f, e)), "BF16"),
              p + "mlp.down_proj.weight": (heavy(rng, (e, f)), "BF16"),
              p + "layer_scalar": (np.array([0.5 + 0.25 * i], dtype=np.float32), "BF16")}
        if not shared:
            t[p + "self_attn.k_proj.weight"] = (heavy(rng, (kv, e)), "BF16")
            t[p + "self_attn.k_norm.weight"] = norm(d)
            if not (full and c["attention_k_eq_v"]):
                t[p + "self_attn.v_proj.weight"] = (heavy(rng, (kv, e)), "BF16")
        if c["enable_moe_block"]:
            n_x, fx = c["num_experts"], c["moe_intermediate_size"]
            t |= {p + "router.proj.weight": (heavy(rng, (n_x, e)), "BF16"), p + "router.scale": norm(e),
                  p + "router.per_expert_scale": norm(n_x),
                  p + "experts.gate_up_proj": (heavy(rng, (n_x, 2 * fx, e)), "BF16"),
                  p + "experts.down_proj": (heavy(rng, (n_x, e, fx)), "BF16"),
                  p + "pre_feedforward_layernorm_2.weight": norm(e), p + "post_feedforward_layernorm_1.weight": norm(e),
                  p + "post_feedforward_layernorm_2.weight": norm(e)}
        if ple:
            t |= {p + "per_layer_input_gate.weight": (heavy(rng, (ple, e)), "BF16"),
                  p + "per_layer_projection.weight": (heavy(rng, (e, ple)), "BF16"), p + "post_per_layer_input_norm.weight": norm(e)}
    return t


def case_gemma4(rng):
    # Gemma4ForConditionalGeneration as google/gemma-4-31B-it lays it out: model.language_model.*, sliding layers
    # (head_dim) and full layers (global_head_dim, keys doubling as values), tied output, a vision tower
    text = gemma4_text_config(use_bidirectional_attention="vision")
    c = {"architectures": ["Gemma4ForConditionalGeneration"], "model_type": "gemma4", "text_config": text,
         "vision_config": {"model_type": "gemma4_vision", "hidden_size": 32, "intermediate_size": 64,
                           "num_hidden_layers": 1, "num_attention_heads": 2, "patch_size": 16},
         "audio_config": None, "boi_token_id": 255999, "eoi_token_id": 258882, "image_token_id": 258880,
         "video_token_id": 258884, "boa_token_id": 256000, "eoa_token_index": 258883, "audio_token_id": 258881,
         "initializer_range": 0.02, "tie_word_embeddings": True, "torch_dtype": "bfloat16"}
    t = language_model(gemma4_tensors(rng, text), "model.language_model.")
    t |= vision_parts(rng, {
        "model.vision_tower.encoder.layers.0.self_attn.q_proj.linear.weight": (32, 32),
        "model.vision_tower.patch_embedder.input_proj.weight": (32, 768),
        "model.embed_vision.embedding_projection.weight": (256, 32),
    })
    return c, t, "gemma4", {}


def case_gemma4_moe(rng):
    # the 26B-A4B layout as Gemma4ForCausalLM: a dense MLP and stacked experts (gate/up fused) in every layer
    c = gemma4_text_config(architectures=["Gemma4ForCausalLM"], enable_moe_block=True, num_experts=4, top_k_experts=2,
                           moe_intermediate_size=256, num_key_value_heads=1, num_global_key_value_heads=None,
                           attention_k_eq_v=False, torch_dtype="bfloat16")
    return c, gemma4_tensors(rng, c), "gemma4", {}


def case_gemma4_ple(rng):
    # the E2B / E4B layout: per-layer embeddings, the last two layers reusing earlier layers' keys and values
    # (no k/v projections of their own) with double-wide MLPs, keys not doubling as values
    c = gemma4_text_config(architectures=["Gemma4ForCausalLM"], num_hidden_layers=4, hidden_size_per_layer_input=256,
                           layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
                           num_kv_shared_layers=2, use_double_wide_mlp=True, attention_k_eq_v=False,
                           num_global_key_value_heads=None, num_key_value_heads=1, final_logit_softcapping=None,
                           torch_dtype="bfloat16")
    return c, gemma4_tensors(rng, c), "gemma4", {}


CASES = {
    "llama3": case_llama3, "llama2": case_llama2, "mistral": case_mistral, "mixtral": case_mixtral,
    "qwen2": case_qwen2, "qwen3": case_qwen3, "qwen2moe": case_qwen2moe, "qwen3moe": case_qwen3moe,
    "llama-headless": case_llama_headless, "qwen2-headless": case_qwen2_headless, "qwen3-headless": case_qwen3_headless,
    "gemma": case_gemma, "gemma2": case_gemma2, "gemma3": case_gemma3, "gemma3-bpe": case_gemma3_bpe,
    "phi3": case_phi3, "smollm3": case_smollm3, "olmo2": case_olmo2, "olmo3": case_olmo3, "seed-oss": case_seed_oss,
    "granite": case_granite, "exaone4": case_exaone4,
    "starcoder2": case_starcoder2, "stablelm": case_stablelm,
    "command-r": case_command_r, "cohere2": case_cohere2, "apertus": case_apertus,
    "olmo": case_olmo, "gpt2": case_gpt2, "gpt-bigcode": case_gpt_bigcode, "gptneox": case_gptneox,
    "falcon": case_falcon, "exaone": case_exaone, "internlm3": case_internlm3,
    "granitemoe": case_granitemoe, "granitemoeshared": case_granitemoeshared, "olmoe": case_olmoe,
    "phimoe": case_phimoe, "hunyuan-dense": case_hunyuan_dense, "dots1": case_dots1, "dbrx": case_dbrx, "arctic": case_arctic, "openelm": case_openelm, "grok": case_grok, "grok2": case_grok2, "glm4moe-lite": case_glm4moe_lite, "solar-open": case_solar_open, "kimi-k25": case_kimi_k25, "minimax-m2": case_minimax_m2,
    "bailingmoe2": case_bailingmoe2, "bailingmoe": case_bailingmoe, "afmoe": case_afmoe, "arcee": case_arcee,
    "gemma3-mm": case_gemma3_mm, "mistral3": case_mistral3, "llama4": case_llama4,
    "ministral3": case_ministral3, "ministral3-mm": case_ministral3_mm,
    "granite-swa": case_granite_swa, "granitemoe-swa": case_granitemoe_swa, "hy-v4": case_hy_v4,
    "step35": case_step35, "step37-mm": case_step37_mm, "glm": case_glm, "jais2": case_jais2,
    "stablelm-epoch": case_stablelm_epoch, "laguna": case_laguna,
    "maple": case_maple, "mpt": case_mpt, "bloom": case_bloom, "orion": case_orion,
    "xverse": case_xverse,
    "glm4": case_glm4, "glm4moe": case_glm4moe, "glm4moe-mtp": case_glm4moe_mtp,
    "glm4v": case_glm4v, "glm4vmoe": lambda rng: case_glm4v(rng, moe=True),
    "ernie4_5": case_ernie4_5, "ernie4_5moe": case_ernie4_5moe,
    "deepseek": case_deepseek, "deepseek2-lite": case_deepseek2_lite, "deepseek3": case_deepseek3,
    "deepseek32": case_deepseek32, "kimi-k2": case_kimi_k2, "kimi-linear": case_kimi_linear,
    "qwen3next": case_qwen3next, "lfm2": case_lfm2, "lfm2moe": case_lfm2moe,
    "granitehybrid": case_granitehybrid, "bamba": case_bamba, "falconh1": case_falconh1,
    "qwen35": case_qwen35, "qwen35moe": lambda rng: case_qwen35(rng, moe=True),
    "qwen35-mm": case_qwen35_mm, "qwen35moe-mm": lambda rng: case_qwen35_mm(rng, moe=True),
    "gpt-oss": case_gpt_oss, "gpt-oss-mxfp4": case_gpt_oss_mxfp4,
    "mamba": case_mamba, "falcon-mamba": lambda rng: case_mamba(rng, falcon=True), "mamba2": case_mamba2,
    "nemotron": case_nemotron, "nemotron-h": case_nemotron_h, "jamba": case_jamba,
    "nemotron-h-moe": case_nemotron_h_moe, "nemotron-h-moe-mtp": lambda rng: case_nemotron_h_moe(rng, mtp=True),
    "phi2": case_phi2, "qwen2vl": case_qwen2vl, "qwen2.5vl": lambda rng: case_qwen2vl(rng, flat=True),
    "qwen3vl": case_qwen3vl, "qwen3vlmoe": lambda rng: case_qwen3vl(rng, moe=True),
    "bitnet": case_bitnet, "bitnet-b": case_bitnet_b,
    "gemma4": case_gemma4, "gemma4-moe": case_gemma4_moe, "gemma4-ple": case_gemma4_ple,
}
# cases also compared after llama_model_quantize (Q4_K_M, Q8_0, Q5_K_S) and run by llama.cpp
QUANT_CASES = ("smollm3", "olmo2", "olmo3", "seed-oss", "granite", "exaone4", "starcoder2", "stablelm",
               "granitemoe", "granitemoeshared", "olmoe", "phimoe", "dots1", "dbrx", "arctic", "openelm", "grok2", "llama4", "glm4moe", "ernie4_5moe",
               "deepseek2-lite", "deepseek3", "deepseek32", "kimi-k2", "kimi-linear", "minimax-m2", "bailingmoe2", "bailingmoe", "afmoe",
               "qwen3next", "lfm2", "lfm2moe", "granitehybrid", "bamba", "falconh1", "qwen35", "qwen35moe",
               "gpt2", "gptneox", "falcon",
               "gpt-oss", "gpt-oss-mxfp4", "bitnet", "mamba", "mamba2", "nemotron-h", "jamba", "qwen3vlmoe",
               "nemotron-h-moe", "nemotron-h-moe-mtp", "granitemoe-swa", "hy-v4", "step35", "laguna", "maple",
               "gemma4", "gemma4-moe", "gemma4-ple")
# validate and dequantize --hf-names (or its refusal) end to end, on one case of each kind: stacked experts
# (llama4), MXFP4 experts (gpt-oss-mxfp4), MLA (deepseek2-lite), SSM hybrids (granitehybrid, nemotron-h-moe,
# mamba), Conv1D (gpt2), fused QKV (falcon, phi2), a multimodal checkpoint's language model (qwen2vl), ternary
# (bitnet), GLM-4 norms (glm4). Every QUANT_CASE's --dry-run plan is checked in test_quantized_like_llama_cpp,
# every HF_NAMES_CASE's exact round trip in test_arch_tools.test_hf_names_round_trip_exact.
TOOLS_CASES = ("llama4", "gpt-oss-mxfp4", "deepseek2-lite", "granitehybrid", "nemotron-h-moe", "mamba", "gpt2",
               "falcon", "phi2", "qwen2vl", "bitnet", "glm4")
QUANT_FTYPES = ("Q4_K_M", "Q8_0", "Q5_K_S")
QUANT_EXTRA_FTYPES = {"gpt-oss": ("MXFP4_MOE",), "gpt-oss-mxfp4": ("MXFP4_MOE",), "bitnet": ("TQ1_0", "TQ2_0")}  # a family's own file types
# cases whose bf16 intermediate holds quantized tensors (MXFP4 experts): llama-quantize needs
# --allow-requantize to give them another type, and kquant requantizes them as it then does
REQUANTIZED_CASES = {"gpt-oss-mxfp4"}
SHARDED = {"qwen3", "mixtral", "deepseek3"}  # written as two shards + model.safetensors.index.json


_BUILT: dict[tuple[str, bool, str], Path] = {}


def _shared_root(tmp_path_factory) -> Path:
    """A folder every pytest-xdist worker of this run sees (the run's base temp; each worker's own
    base temp is a child of it), or this process's base temp without xdist."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _built_once(cache: Path, case: str, tokenizer: bool, writer: str) -> Path:
    """The checkpoint folder of (case, tokenizer, writer) in `cache`, built by the first worker that
    asks for it (under an exclusive lock; a `.done` marker says it is complete) and reused by the
    others, so test_arch.py and test_arch_reference.py, on different workers, build each fixture once."""
    import fcntl

    root = cache / f"{case}-{int(tokenizer)}-{writer}"
    done = cache / f"{case}-{int(tokenizer)}-{writer}.done"
    with open(cache / f"{case}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            if root.exists():
                shutil.rmtree(root)  # left half-built by a worker that died
            other = next((cache / f"{case}-{int(tokenizer)}-{w}" for w in WRITERS
                          if (cache / f"{case}-{int(tokenizer)}-{w}.done").exists()), None)
            make_model(root, case, tokenizer=tokenizer, writer=writer, config_file=cache / f"{case}.source-config.json",
                       like=None if other is None else other / f"Tiny-{case}-v0.1")
            done.touch()
    return root / f"Tiny-{case}-v0.1"


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """models(case, tokenizer=True, writer="t4") -> a fresh copy of the (cached) tiny checkpoint folder."""
    register_trimmed_tokenizers()
    cache = _shared_root(tmp_path_factory) / "arch-models"
    cache.mkdir(exist_ok=True)
    work = tmp_path_factory.mktemp("work")
    counter = iter(range(10**6))

    def get(case: str, tokenizer: bool = True, copy: bool = True, writer: str = "t4") -> Path:
        key = (case, tokenizer, writer)
        if key not in _BUILT:
            _BUILT[key] = _built_once(cache, case, tokenizer, writer)
        if not copy:
            return _BUILT[key]
        dst = work / str(next(counter)) / _BUILT[key].name
        shutil.copytree(_BUILT[key], dst)
        return dst

    return get


def make_model(root: Path, case: str, *, tokenizer: bool = True, writer: str = "t4", like: Path | None = None,
               config_file: Path | None = None) -> Path:
    """A tiny checkpoint folder for `case` (named Tiny-<case>-v0.1 to exercise the name heuristics),
    its config.json as transformers `writer` ("t4" / "t5") saves it. `like`: a folder make_model built
    for the same case (another writer): its other files are hard-linked, only config.json is written.
    config_file: where the builder's config (before WRITERS) is kept for such copies (required with `like`)."""
    d = root / f"Tiny-{case}-v0.1"
    d.mkdir(parents=True)
    if like is not None:
        for p in like.iterdir():
            if p.name != "config.json":
                os.link(p, d / p.name)
        src = json.loads(config_file.read_text())
        cfg = WRITERS[writer](src["config"])
        if src["tokenizer"] is not None:
            cfg, _ = trim_checkpoint(cfg, {}, *_trim_info(case, src["tokenizer"])[2:])
        (d / "config.json").write_text(json.dumps(cfg, indent=2))
        return d
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    cfg, tensors, tok, files = CASES[case](rng)
    trim = _trim_info(case, tok)
    if config_file is not None:
        config_file.write_text(json.dumps({"config": cfg, "tokenizer": tok if trim else None}))
    cfg = WRITERS[writer](cfg)
    if trim:
        cfg, tensors = trim_checkpoint(cfg, tensors, *trim[2:])
    (d / "config.json").write_text(json.dumps(cfg, indent=2))
    for name, text in files.items():
        if trim and name == "tokenizer.json":
            text = trim[0]
        elif trim and name == "generation_config.json":  # its token ids too
            text = json.dumps(trim_checkpoint(json.loads(text), {}, *trim[2:])[0])
        (d / name).write_text(text)
    if case in SHARDED:
        names = list(tensors)
        halves = [names[: len(names) // 2], names[len(names) // 2:]]
        wm = {}
        for k, part in enumerate(halves):
            fn = f"model-{k + 1:05d}-of-00002.safetensors"
            write_safetensors(d / fn, {n: tensors[n] for n in part})
            wm.update({n: fn for n in part})
        (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    else:
        write_safetensors(d / "model.safetensors", tensors)
    if tokenizer:
        install_tokenizer(tok, d)
        if trim:
            (d / "tokenizer.json").write_text(trim[0])
            (d / "tokenizer_config.json").write_text(trim[1])
    return d


def _trim_info(case: str, tok: str):
    """trimmed_tokenizer's result where `case` gets a trimmed tokenizer, else None."""
    if tok not in TRIM_PRE or case in TRIM_FULL:
        return None
    return trimmed_tokenizer(tok)


def build_tensor(t, src: dict[str, np.ndarray]) -> np.ndarray:
    """What a converter makes of one TensorSpec: float32 data, before storage rounding
    (a raw MXFP4 tensor: its ggml bytes, uint8 [n_expert, rows, blocks * 17])."""
    assert t.row_perm is None or t.transform is None
    if t.raw_type is not None:
        return mxfp4_expected(t, src)
    return t.materialize(src.__getitem__)


def mxfp4_expected(t, src: dict[str, np.ndarray]) -> np.ndarray:
    """The block_mxfp4 bytes of a raw spec from the checkpoint's `_blocks` / `_scales`, as
    conversion/gpt_oss.py GptOssModel.repack_mxfp4 builds them (its nibble shuffle, in numpy)."""
    blocks, scales = (src[n].astype(np.uint8) for n in t.sources)
    n_x, rows = blocks.shape[:2]
    if t.row_perm is not None:  # gate (even rows) / up (odd rows) of gate_up_proj
        e, r = np.divmod(t.row_perm, rows)
        blocks, scales = blocks[e, r].reshape(n_x, -1, *blocks.shape[2:]), scales[e, r].reshape(n_x, -1, scales.shape[-1])
    x = ((blocks & 0x0F) << 4) | ((blocks & 0xF0) >> 4)  # transform_nibble_layout: swap nibbles
    a, b = x[..., :8], x[..., 8:]
    a = np.stack((a & 0xF0, (a << 4) & 0xFF), axis=-1).reshape(x.shape)
    b = np.stack((b >> 4, b & 0x0F), axis=-1).reshape(x.shape)
    out = a | b
    out = ((out & 0xF0) >> 4) | ((out & 0x0F) << 4)
    return np.concatenate((scales[..., None], out), axis=-1).reshape(*scales.shape[:2], -1).astype(np.uint8)


def stored_bytes(t, x: np.ndarray) -> bytes:
    if t.raw_type is not None:
        return x.tobytes()
    if t.ref_type == QType.BF16:
        return f32_to_bf16_bits(x).tobytes()
    assert t.ref_type == QType.F32
    return np.ascontiguousarray(x, dtype=np.float32).tobytes()


def all_sources(folder: Path) -> dict[str, np.ndarray]:
    src = {}
    for p in sorted(folder.glob("*.safetensors")):
        src.update(read_safetensors(p))
    return src


# ---------------------------------------------------------------------------------------------
# fast tests (no reference converter)


def test_f32_to_bf16_bits_like_gguf_py():
    """The test's bf16 rounding equals gguf-py's (every high half with the rounding-edge low halves)."""
    import gguf

    hi = np.arange(1 << 16, dtype=np.uint32) << np.uint32(16)
    x = np.concatenate([hi | np.uint32(lo) for lo in (0, 1, 0x7FFF, 0x8000, 0x8001, 0xC000, 0xFFFF)]).view(np.float32)
    want = gguf.quants.quantize(x, gguf.GGMLQuantizationType.BF16).view(np.uint16)
    assert np.array_equal(f32_to_bf16_bits(x), want)


def test_supported_architectures():
    archs = supported_architectures()
    for a in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "GemmaForCausalLM",
              "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM", "MixtralForCausalLM"):
        assert a in archs


def test_refused_family_says_why(models):
    d = models("llama2")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2"}))
    with pytest.raises(UnsupportedError, match="InternLM2ForCausalLM is not supported: .*protobuf"):
        load_spec(d)


def test_every_family_has_a_case(models):
    """Each registered family is exercised by a CASES checkpoint (add one with a new family module)."""
    from kquant.models import family
    from kquant.models.base import FAMILIES

    cfgs = [json.loads((models(c, copy=False) / "config.json").read_text()) for c in CASES]
    covered = {family(cfg["architectures"][0]) for cfg in cfgs}
    assert set(FAMILIES.values()) <= covered, sorted(c.__name__ for c in set(FAMILIES.values()) - covered)


def llama_permute(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """conversion/llama.py LlamaModel.permute, in numpy."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.mark.parametrize("rows,heads", [(64, 4), (128, 2), (96, 3), (32, 16)])
def test_qk_permutation_matches_llama_permute(rows, heads):
    w = np.arange(rows * 5, dtype=np.float32).reshape(rows, 5)
    assert np.array_equal(w[qk_permutation(rows, heads)], llama_permute(w, heads, heads))
    b = np.arange(rows, dtype=np.float32)
    assert np.array_equal(b[qk_permutation(rows, heads)], llama_permute(b, heads, heads))


def test_llama3_spec(models):
    d = models("llama3", copy=False)
    spec = load_spec(d)
    assert spec.arch == "llama" and spec.tied_embeddings and spec.n_layer == 2 and spec.n_head == 2 and spec.n_head_kv == 1
    names = [t.name for t in spec.tensors]
    assert names[0] == "rope_freqs.weight" and "output.weight" not in names
    assert names[1:4] == ["token_embd.weight", "blk.0.attn_norm.weight", "blk.0.ffn_down.weight"]  # name-sorted file order
    by = {t.name: t for t in spec.tensors}
    assert by["blk.0.attn_q.weight"].ref_type == QType.BF16 and by["blk.0.attn_norm.weight"].ref_type == QType.F32
    assert by["blk.0.attn_q.weight"].row_perm is not None and by["blk.0.attn_v.weight"].row_perm is None
    assert by["token_embd.weight"].shape == (128256, 128)
    rf = by["rope_freqs.weight"].generated
    assert rf.dtype == np.float32 and rf.shape == (32,) and rf[0] == 1.0 and rf[-1] == 32.0
    kv = {k: v for k, _, v in spec.kv}
    assert [k for k, _, _ in spec.kv][:2] == ["general.architecture", "general.type"]
    assert kv["llama.rope.dimension_count"] == 64 and kv["llama.attention.key_length"] == 64
    assert kv["tokenizer.ggml.pre"] == "llama-bpe" and kv["tokenizer.ggml.bos_token_id"] == 128000
    assert kv["general.name"] == "Tiny Llama3 v0.1" and kv["general.version"] == "v0.1" and kv["general.license"] == "llama3.2"
    assert kv["general.sampling.temp"] == 0.6
    assert "general.file_type" not in kv and spec.file_type_index > 0 and spec.quantization_version_index == spec.file_type_index + 3  # vocab_size, rope dims follow
    dry = load_spec(d, vocab=False)
    assert not any(k.startswith("tokenizer.") for k, _, _ in dry.kv)


def test_dry_run_reads_no_tokenizer(models):
    d = models("qwen2", tokenizer=False)
    spec = load_spec(d, vocab=False)
    assert not any(k.startswith("tokenizer.") for k, _, _ in spec.kv)
    with pytest.raises(UnsupportedError, match="tokenizer.json"):
        load_spec(d)


def test_tensor_shapes_argument(models):
    d = models("qwen2", tokenizer=False)
    from kquant.models.base import header_entries

    shapes = {n: (s, dt) for n, s, dt in header_entries(d / "model.safetensors")}
    a = load_spec(d, shapes, vocab=False)
    assert [t.name for t in a.tensors] == [t.name for t in load_spec(d, vocab=False).tensors]
    shapes.pop("model.norm.weight")
    with pytest.raises(InputError, match="disagrees"):
        load_spec(d, shapes, vocab=False)


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_case_builds(models, case, writer):
    d = models(case, copy=False, writer=writer)
    spec = load_spec(d, vocab=False)  # vocabularies: test_vocab.py and the reference comparison
    src = all_sources(d)
    for t in spec.tensors:
        x = build_tensor(t, src)
        if t.raw_type is not None:
            assert t.ref_type == t.raw_type and x.shape == t.shape[:-1] + (t.raw_type.row_size(t.shape[-1]),)
            continue
        assert tuple(x.shape) == t.shape, t.name
        assert t.ref_type in (QType.BF16, QType.F32)
        if len(t.shape) == 1 or t.name.endswith("_norm.weight"):
            assert t.ref_type == QType.F32, t.name
    assert len({t.name for t in spec.tensors}) == len(spec.tensors)


def test_gemma_norm_plus_one_in_f16(models):
    d = models("gemma", copy=False)
    spec = load_spec(d)
    src = all_sources(d)
    t = next(t for t in spec.tensors if t.name == "blk.0.attn_norm.weight")
    x = src["model.layers.0.input_layernorm.weight"]
    assert np.array_equal(build_tensor(t, src), (x.astype(np.float16) + np.float16(1)).astype(np.float32))
    assert not any(t.name == "output.weight" for t in spec.tensors)  # Gemma drops lm_head


def _edit_config(d: Path, **kw) -> None:
    c = json.loads((d / "config.json").read_text())
    for k, v in kw.items():
        if v is ...:
            c.pop(k, None)
        else:
            c[k] = v
    (d / "config.json").write_text(json.dumps(c))


@pytest.mark.parametrize("edit,err,match", [
    (dict(architectures=["NoSuchModelForCausalLM"]), UnsupportedError, "supported: .*LlamaForCausalLM"),
    (dict(hidden_size=...), InputError, "missing key 'hidden_size'"),
    (dict(hidden_size="128"), InputError, "'hidden_size' must be a positive integer"),
    (dict(num_attention_heads=3, num_key_value_heads=3), InputError, "hidden_size 128 is not divisible"),
    (dict(num_key_value_heads=3), InputError, "not a multiple of num_key_value_heads"),
    (dict(num_hidden_layers=1), InputError, "layer 1 but num_hidden_layers is 1"),
    (dict(num_hidden_layers=3), InputError, "'num_hidden_layers' is 3 but the checkpoint has tensors for 2 layers"),
    (dict(num_hidden_layers=10**9), InputError, "'num_hidden_layers' is 1000000000 but"),
    (dict(vocab_size=10**12), InputError, "'vocab_size' is 1000000000000, larger than any tensor dimension"),
    (dict(head_dim=10**9), InputError, "'head_dim' is 1000000000, larger than any tensor dimension"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 2.0, "high_freq_factor": 2.0,
                        "original_max_position_embeddings": 8192}), InputError,
     "'rope_scaling.high_freq_factor' \\(2.0\\) must be greater than 'rope_scaling.low_freq_factor'"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 0}), InputError,
     "'rope_scaling.low_freq_factor' must be a positive number, got 0"),
    (dict(rope_scaling={"rope_type": "linear", "factor": "hot"}), InputError,
     "'rope_scaling.factor' must be a (finite )?number.*got 'hot'"),
    (dict(rope_scaling={"rope_type": 3}), InputError, "'rope_scaling.rope_type' must be a string"),
    (dict(vocab_size=31999), InputError, "expected \\[31999, 128\\]"),
    (dict(rms_norm_eps=True), InputError, "'rms_norm_eps' must be a number"),
    (dict(rope_theta=[10000.0, 500.0]), InputError, "rope_theta' must be a (finite )?number"),  # only Step 3.5 takes a list
    (dict(rope_scaling={"rope_type": "dynamic-ntk-foo", "factor": 2.0}), UnsupportedError, "rope_scaling type"),
])
def test_config_errors(models, edit, err, match):
    d = models("llama2", tokenizer=False)
    _edit_config(d, **edit)
    with pytest.raises(err, match=match) as e:
        load_spec(d, vocab=False)
    assert "\n" not in str(e.value) and "config.json" in str(e.value) or "Tiny-llama2" in str(e.value)


@pytest.mark.parametrize("rope,match", [
    ("linear", "'rope_parameters' must be an object or null"),
    ({"rope_type": "linear", "rope_theta": 10000.0}, "'rope_parameters.factor' is missing \\(rope_type 'linear'"),
    ({"type": "yarn", "original_max_position_embeddings": 4096}, "'rope_parameters.factor' is missing"),
    ({"rope_type": "yarn", "factor": "4"}, "'rope_parameters.factor' must be a number"),
    ({"rope_type": 3}, "'rope_parameters.rope_type' must be a string"),
    ({"rope_theta": [10000.0]}, "'rope_parameters.rope_theta' must be a number"),
    ({"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192.5},
     "'rope_parameters.original_max_position_embeddings' must be a positive integer"),
    ({"rope_type": "longrope", "long_factor": [1.0, "x"], "short_factor": [1.0]}, "'rope_parameters.long_factor' must be a list"),
    ({"full_attention": [1.0], "sliding_attention": {"rope_theta": 1e4}}, "'rope_parameters.full_attention' must be an object"),
    ({"full_attention": {"rope_type": "linear"}}, "'rope_parameters.full_attention.factor' is missing"),
    ({"full_attention": {"rope_theta": 1e6}, "sliding_attention": {"rope_theta": True}},
     "'rope_parameters.sliding_attention.rope_theta' must be a number"),
    ({"rope_type": "yarn", "factor": 4.0}, "yarn needs 'original_max_position_embeddings'"),
    ({"rope_type": "proportional", "factor": 4.0}, "type 'proportional' is not supported"),
])
def test_rope_parameters_errors(models, rope, match):
    """Malformed transformers-5 rope_parameters: one line naming config.json and the key, no traceback."""
    d = models("llama2", tokenizer=False, writer="t5")
    _edit_config(d, rope_parameters=rope)
    with pytest.raises((InputError, UnsupportedError), match=match) as e:
        load_spec(d, vocab=False)
    assert "\n" not in str(e.value) and "config.json" in str(e.value)


def test_rope_parameters_take_precedence(models):
    """rope_parameters (even null) hides rope_scaling / rope_theta, as TextModel.__init__ reads it first."""
    d = models("llama2", tokenizer=False, writer="t5")
    _edit_config(d, rope_scaling={"rope_type": "linear", "factor": 4.0}, rope_theta=5.0,
                  rope_parameters={"rope_type": "yarn", "factor": 3.0, "original_max_position_embeddings": 1024, "rope_theta": 7.0})
    kv = {k: v for k, _, v in load_spec(d, vocab=False).kv}
    assert (kv["llama.rope.scaling.type"], kv["llama.rope.scaling.factor"], kv["llama.rope.freq_base"]) == ("yarn", 3.0, 7.0)
    _edit_config(d, rope_parameters=None)
    kv = {k: v for k, _, v in load_spec(d, vocab=False).kv}
    assert "llama.rope.scaling.type" not in kv and kv["llama.rope.freq_base"] == 5.0  # mirrored from rope_theta


@pytest.mark.parametrize("case,key,n", [("mixtral", "num_local_experts", 3), ("qwen2moe", "num_experts", 4)])
def test_expert_count_bomb(models, case, key, n):
    d = models(case, tokenizer=False)
    _edit_config(d, **{key: 10**9})
    with pytest.raises(InputError, match=f"'{key}' is 1000000000 but the checkpoint has tensors for {n} experts"):
        load_spec(d, vocab=False)



def _spec_view(spec):
    return [(t.name, t.shape, t.sources) for t in spec.tensors], [(k, v) for k, _, v in spec.kv]


def test_ernie_moe_config_aliases(models):
    """Ernie4_5_MoeConfig: num_experts / num_experts_per_tok are attribute_map aliases (they win over
    moe_num_experts / moe_k), moe_layer_end_index -1 is the last layer; the sparse layers follow
    transformers' pattern, so a config that makes layer 1 dense refuses its experts."""
    d = models("ernie4_5moe", tokenizer=False)
    want = _spec_view(load_spec(d, vocab=False))
    _edit_config(d, moe_num_experts=64, moe_k=6, num_experts=4, num_experts_per_tok=2, moe_layer_end_index=-1)
    assert _spec_view(load_spec(d, vocab=False)) == want
    _edit_config(d, moe_layer_start_index=2)
    with pytest.raises(InputError, match="unexpected tensor 'model.layers.1.mlp.experts"):
        load_spec(d, vocab=False)
    _edit_config(d, moe_layer_start_index=1, moe_layer_interval=2)  # (i + 1) % 2 == 0: layer 1 sparse, layer 2 dense
    with pytest.raises(InputError, match="unexpected tensor 'model.layers.2.mlp.experts"):
        load_spec(d, vocab=False)


def test_glm4moe_nextn_blocks(models):
    """The NextN layer is block num_hidden_layers (block_count counts it); without
    num_nextn_predict_layers its tensors belong to no block."""
    d = models("glm4moe", tokenizer=False)
    spec = load_spec(d, vocab=False)
    kv = {k: v for k, _, v in spec.kv}
    assert spec.n_layer == 3 and kv["glm4moe.block_count"] == 3 and kv["glm4moe.nextn_predict_layers"] == 1
    assert {"blk.2.nextn.eh_proj.weight", "blk.2.ffn_gate_exps.weight", "blk.2.exp_probs_b.bias"} <= {t.name for t in spec.tensors}
    assert "blk.0.ffn_gate_inp.weight" not in {t.name for t in spec.tensors}  # first_k_dense_replace = 1
    _edit_config(d, num_nextn_predict_layers=...)
    with pytest.raises(InputError, match="is for layer 2 but num_hidden_layers is 2"):
        load_spec(d, vocab=False)


def test_glm_vocab_needs_glm_special_tokens(models):
    d = models("glm4moe")  # its trimmed vocabulary: qwen2's, trimmed alike, has none of GLM's added tokens
    tj, tc, *_ = trim_vocabulary(json.loads(gzip.decompress((FIXTURES / "qwen2" / "tokenizer.json.gz").read_bytes())),
                                 json.loads((FIXTURES / "qwen2" / "tokenizer_config.json").read_text()), TRIM_KEEP)
    (d / "tokenizer.json").write_text(json.dumps(tj))
    (d / "tokenizer_config.json").write_text(json.dumps(tc))
    with pytest.raises(UnsupportedError, match="GLM vocabulary without the added token '\\[gMASK\\]'"):
        load_spec(d)

def test_config_json_syntax(models):
    d = models("llama2", tokenizer=False)
    (d / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "rope_theta": NaN}')
    with pytest.raises(InputError, match="config.json: invalid JSON \\(non-standard JSON literal NaN"):
        load_spec(d, vocab=False)
    (d / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], ')
    with pytest.raises(InputError, match="config.json: invalid JSON"):
        load_spec(d, vocab=False)
    (d / "config.json").write_text('[1, 2]')
    with pytest.raises(InputError, match="expected a JSON object"):
        load_spec(d, vocab=False)


def test_unexpected_and_missing_tensors(models):
    d = models("llama2", tokenizer=False)
    t = read_safetensors(d / "model.safetensors")
    t2 = {k: (v, "F32") for k, v in t.items()}
    t2["model.layers.0.self_attn.foo.weight"] = (np.zeros((4, 4), np.float32), "F32")
    write_safetensors(d / "model.safetensors", t2)
    with pytest.raises(InputError, match="unexpected tensor 'model.layers.0.self_attn.foo.weight'"):
        load_spec(d, vocab=False)
    del t2["model.layers.0.self_attn.foo.weight"]
    del t2["model.layers.1.mlp.up_proj.weight"]
    write_safetensors(d / "model.safetensors", t2)
    with pytest.raises(InputError, match="missing tensor\\(s\\) model.layers.1.mlp.up_proj.weight"):
        load_spec(d, vocab=False)
    del t2["lm_head.weight"]  # untied model without lm_head
    t2["model.layers.1.mlp.up_proj.weight"] = (np.zeros((160, 128), np.float32), "F32")
    write_safetensors(d / "model.safetensors", t2)
    with pytest.raises(InputError, match="missing tensor\\(s\\) lm_head.weight"):
        load_spec(d, vocab=False)


@pytest.mark.parametrize("slab_bytes", [3000, 1 << 16, 32 << 20])
def test_stacked_experts_stream_in_slabs(models, slab_bytes):
    """Merged experts are read a slab at a time (slabs may start and end inside an expert) and
    give the rows TensorSpec.materialize stacks whole."""
    from kquant.io.safetensors import Checkpoint
    from kquant.pipeline import iter_source_slabs

    d = models("deepseek3", tokenizer=False, copy=False)
    spec = load_spec(d, vocab=False)
    exps = [t for t in spec.tensors if "_exps." in t.name]
    assert exps
    with Checkpoint.open(d) as ck:
        for t in exps:
            slabs = list(iter_source_slabs(ck, t, slab_bytes))
            assert [a for a, _ in slabs] == list(np.cumsum([0] + [len(x) for _, x in slabs[:-1]]))
            if slab_bytes < 32 << 20:
                assert len(slabs) > t.shape[0] // 2
            got = np.concatenate([x for _, x in slabs])
            assert np.array_equal(got, t.materialize(ck.read).reshape(got.shape))


def test_sharded_order_follows_index(models):
    d = models("mixtral", tokenizer=False)
    spec = load_spec(d, vocab=False)
    names = [t.name for t in spec.tensors]
    assert "blk.0.ffn_gate_exps.weight" in names and spec.n_expert == 3
    t = next(t for t in spec.tensors if t.name == "blk.1.ffn_down_exps.weight")
    assert t.shape == (3, 128, 160) and len(t.sources) == 3
    wm = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]
    wm.pop("model.norm.weight")
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    with pytest.raises(InputError, match="weight_map does not match"):
        load_spec(d, vocab=False)


# torch's own output of conversion/llama.py generate_extra_tensors for the official Llama 3.x settings
LLAMA32_1B_ROPE = [1.0] * 15 + [1.6513292789459229, 3.2922627925872803, 9.666730880737305] + [32.0] * 14
LLAMA31_8B_ROPE = [1.0] * 29 + [1.2074838876724243, 1.5534145832061768, 2.026313066482544, 2.6945300102233887,
                                3.684253215789795, 5.257327079772949] + [8.0] * 29


@pytest.mark.parametrize("head_dim,factor,expected", [(64, 32.0, LLAMA32_1B_ROPE), (128, 8.0, LLAMA31_8B_ROPE)])
def test_llama3_rope_freqs_known_values(head_dim, factor, expected):
    from kquant.models.llama import LlamaModel

    hp = {"hidden_size": 32 * head_dim, "num_attention_heads": 32, "head_dim": head_dim, "rope_theta": 500000.0,
          "rope_scaling": {"factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 8192, "rope_type": "llama3"}}
    hp["num_hidden_layers"] = 1
    [(name, rf)] = LlamaModel(hp).generate_extra_tensors()
    assert name == "rope_freqs.weight" and rf.dtype == np.float32
    assert rf.tolist() == expected


# ---------------------------------------------------------------------------------------------
# against convert_hf_to_gguf.py


_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


class RawStrings(Sequence):
    """A GGUF array of strings as read_gguf found it: its bytes (each a u64 length and UTF-8 bytes),
    compared with kquant's StringArray payload as they are; decoded on first use otherwise."""

    def __init__(self, payload: bytes, n: int):
        self.payload, self._n, self._items = payload, n, None

    def _list(self) -> list[str]:
        if self._items is None:
            out, p, buf, unpack = [], 0, self.payload, struct.Struct("<Q").unpack_from
            for _ in range(self._n):
                (k,) = unpack(buf, p)
                out.append(buf[p + 8:p + 8 + k].decode("utf-8"))
                p += 8 + k
            self._items = out
        return self._items

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        return self._list()[i]

    def __eq__(self, other) -> bool:
        return list(self) == list(other) if isinstance(other, Sequence) and not isinstance(other, str) else NotImplemented


def read_gguf(path: Path):
    """(kv [(key, type, subtype, value)], tensors [(name, numpy shape, ggml type, raw bytes)]) of a GGUF file.

    A plain struct reader (gguf-py's GGUFReader takes minutes on 100k-token vocabularies); arrays of
    strings are RawStrings, their bytes kept as the file has them."""
    buf = Path(path).read_bytes()
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from(fmt, buf, pos)[0]
        pos += struct.calcsize(fmt)
        return v

    def string():
        nonlocal pos
        n = take("<Q")
        s = buf[pos:pos + n].decode("utf-8")
        pos += n
        return s

    def strings(n):
        nonlocal pos
        p, unpack = pos, struct.Struct("<Q").unpack_from
        for _ in range(n):
            p += 8 + unpack(buf, p)[0]
        out, pos = RawStrings(buf[pos:p], n), p
        return out

    def value(t):
        nonlocal pos
        if t == 8:
            return string()
        if t == 9:
            sub, n = take("<I"), take("<Q")
            if sub == 8:
                return sub, strings(n)
            if sub == 9:
                return sub, [value(sub) for _ in range(n)]
            a = np.frombuffer(buf, np.dtype(_SCALAR[sub]), count=n, offset=pos)
            pos += a.nbytes
            return sub, a.tolist()
        return take(_SCALAR[t])

    assert buf[:4] == b"GGUF"
    pos = 4
    take("<I")
    n_tensors, n_kv = take("<Q"), take("<Q")
    kv = []
    for _ in range(n_kv):
        key, t = string(), take("<I")
        v = value(t)
        sub = None
        if t == 9:
            sub, v = v
        kv.append((key, t, sub, v))
    infos = []
    for _ in range(n_tensors):
        name, nd = string(), take("<I")
        ne = [take("<Q") for _ in range(nd)]
        infos.append((name, tuple(reversed(ne)), take("<I"), take("<Q")))
    align = next((v for k, _, _, v in kv if k == "general.alignment"), 32)
    base = pos + (-pos % align)
    tensors = [(n, shp, t, buf[base + off: base + off + QType(t).nbytes(shp)]) for n, shp, t, off in infos]
    return kv, tensors


def kv_equal(t, ref_value, ours) -> bool:
    """Compare one metadata value as stored (FLOAT32 values compared after float32 rounding)."""
    from gguf import GGUFValueType

    if t == GGUFValueType.FLOAT32:
        return float(np.float32(ours)) == ref_value
    if isinstance(ours, list) and ours and isinstance(ours[0], float):
        return np.array_equal(np.array(ours, dtype=np.float32), np.array(ref_value, dtype=np.float32))
    if isinstance(ref_value, RawStrings):  # the encoded forms: one bytes comparison
        return (ours if isinstance(ours, StringArray) else StringArray(ours)).payload == ref_value.payload
    return ours == ref_value


def _reference_convert(pairs: list[tuple[Path, Path]]) -> list:
    """convert_hf_to_gguf.py --outtype bf16 of each (folder, out), in two long-lived reference processes."""
    register_trimmed_tokenizers()
    return refpipeline.convert_many([[folder, "--outtype", "bf16", "--outfile", out] for folder, out in pairs])


def compare_with_reference(folder: Path, gguf_path: Path, diverges: dict | None = None) -> None:
    """kquant's spec of `folder` equals the converter's GGUF, but for the `diverges` keys (DIVERGES), checked with their own check."""
    from gguf import GGUFValueType

    spec = load_spec(folder)
    ref_kv, ref_tensors = read_gguf(gguf_path)
    ref_keys = [k for k, _, _, _ in ref_kv]
    # GPTNeoXModel.set_gguf_parameters writes no file type
    assert (ref_keys.index("general.file_type") if "general.file_type" in ref_keys else -1) == spec.file_type_index
    assert ref_keys.index("general.quantization_version") == spec.quantization_version_index
    ref_kv = [e for e in ref_kv if e[0] not in ("general.file_type", "general.quantization_version")]
    assert [e[0] for e in ref_kv] == [k for k, _, _ in spec.kv]
    sub = {str: GGUFValueType.STRING, bool: GGUFValueType.BOOL, int: GGUFValueType.INT32, float: GGUFValueType.FLOAT32}
    for (k, t_ref, sub_ref, v_ref), (_, t, v) in zip(ref_kv, spec.kv):
        assert t_ref == t, (k, t_ref, t)
        if t == GGUFValueType.ARRAY:  # a StringArray holds only strings
            assert (isinstance(v, StringArray) or len(set(map(type, v))) == 1) and sub_ref == sub[type(v[0])], (k, sub_ref)
        if diverges and k in diverges:
            assert diverges[k](v_ref, v), (k, v_ref, v)
        else:
            assert kv_equal(t, v_ref, v), k
    assert not diverges or set(diverges) <= set(ref_keys), set(diverges) - set(ref_keys)

    assert [n for n, _, _, _ in ref_tensors] == [t.name for t in spec.tensors]
    src = all_sources(folder)
    for (name, shape, ttype, raw), t in zip(ref_tensors, spec.tensors):
        assert shape == t.shape, name
        assert ttype == int(t.ref_type), (name, ttype, t.ref_type)
        assert raw == stored_bytes(t, build_tensor(t, src)), f"{name}: data differs"


if __name__ == "__main__":  # convert one case by hand: python tests/test_arch.py CASE OUTDIR
    make_model(Path(sys.argv[2]), sys.argv[1])


def test_separate_config_and_tokenizer_folders(models, tmp_path):
    d = models("qwen2")
    tok = tmp_path / "tok"
    tok.mkdir()
    for n in ("tokenizer.json", "tokenizer_config.json"):
        shutil.move(str(d / n), tok / n)
    cfg = tmp_path / "cfg.json"
    shutil.move(str(d / "config.json"), cfg)
    spec = load_spec(d, config_path=cfg, tokenizer_folder=tok)
    kv = {k: v for k, _, v in spec.kv}
    assert kv["tokenizer.ggml.pre"] == "qwen2" and spec.arch == "qwen2" and spec.tied_embeddings


@pytest.mark.parametrize("card", [
    {"base_model": "meta-llama/Llama-3.1-8B"}, {"base_models": None}, {"dataset": "a/b-7B"}, {"dataset_sources": {"a": 1}},
    {"base_model": ["https://huggingface.co/Qwen/Qwen2.5-7B-v1.5", "ssh://x/y", "http://example.com/a", 5, {"name": "z"}]},
    {"datasets": ["HuggingFaceFW/fineweb-edu", "https://huggingface.co/datasets/x", "https://huggingface.co/org/ds-v2"]},
])
def test_model_card_sources_like_gguf_py(card):
    """base_model / datasets entries of a model card as gguf-py's own Metadata.apply_metadata_heuristic makes them."""
    from gguf.metadata import Metadata as Reference
    from kquant.models.metadata import Metadata

    got = Metadata.apply_metadata_heuristic(Metadata(), dict(card), None, None, 7_000_000_000)
    want = Reference.apply_metadata_heuristic(Reference(), dict(card), None, None, 7_000_000_000)
    assert (got.base_models, got.datasets) == (want.base_models, want.datasets)


def test_bad_model_card(models):
    d = models("qwen2", tokenizer=False)
    (d / "README.md").write_text("---\nlicense: [unclosed\n---\n")
    with pytest.raises(InputError, match="README.md: malformed YAML front matter"):
        load_spec(d, vocab=False)


# --target-bpw on one case of each structural kind: dense with rope factors, fused QKV/gate-up,
# biases and tied output, Gemma norms, MoE with a shared expert, MLA with dense-first layers,
# MXFP4 experts passed through, SSM hybrid, grouped fused QKV. Measuring every family would cost
# minutes per family; llama.cpp runs every other case in test_runs_in_llama_cpp.
AUTOMIX_CASES = ("llama3", "phi3", "qwen2", "gemma3", "qwen2moe", "deepseek3", "gpt-oss-mxfp4", "granitehybrid", "falcon")
RUN_CASES = sorted(set(CASES) - set(QUANT_CASES) - set(AUTOMIX_CASES) - {"gemma3-bpe"})


def test_automix_cases_cover_the_kinds():
    assert set(AUTOMIX_CASES) <= set(CASES) and set(RUN_CASES) | set(QUANT_CASES) | set(AUTOMIX_CASES) >= set(CASES) - {"gemma3-bpe"}




def test_moe_tail_specs(models):
    """Stacked/fused experts split as GraniteMoeModel does; dots1's dense lead layer and exp_probs_b; the expert
    count llama-quantize sees is {arch}.expert_count."""
    spec = load_spec(models("granitemoeshared", copy=False), vocab=False)
    by = {t.name: t for t in spec.tensors}
    assert spec.n_expert == 4 and by["blk.0.ffn_gate_exps.weight"].shape == (4, 256, 256)
    assert by["blk.1.ffn_up_shexp.weight"].shape == (320, 256) and by["blk.1.ffn_down_shexp.weight"].shape == (256, 320)
    src = all_sources(models("granitemoeshared", copy=False))
    fused = src["model.layers.0.block_sparse_moe.input_linear.weight"]
    assert np.array_equal(build_tensor(by["blk.0.ffn_up_exps.weight"], src), fused[:, 256:, :])
    spec = load_spec(models("dots1", copy=False), vocab=False)
    names = {t.name for t in spec.tensors}
    assert "blk.0.ffn_gate.weight" in names and "blk.0.ffn_gate_exps.weight" not in names
    assert {"blk.1.exp_probs_b.bias", "blk.1.ffn_gate_exps.weight", "blk.1.ffn_down_shexp.weight"} <= names
    kv = {k: v for k, _, v in spec.kv}
    assert (kv["dots1.expert_count"], kv["dots1.leading_dense_block_count"], kv["dots1.expert_group_count"]) == (4, 1, 1)


@pytest.mark.parametrize("case,edit,match", [
    ("granitemoe", dict(rope_scaling={"type": "linear", "factor": 2.0}), "rope_scaling without 'rope_type'"),
    ("phimoe", dict(rope_scaling={"type": "longrope", "long_factor": [1.0] * 32, "short_factor": [1.0] * 32}),
     "rope_scaling.short_mscale must be a number"),
    ("dots1", dict(n_shared_experts=None), "'n_shared_experts' must be a positive integer"),
    ("dots1", dict(scoring_func="noaux_tc"), "expert score gating function 'noaux_tc' is not supported"),
    ("dots1", dict(scoring_func=...), "dots1 runtime needs an expert gating function"),
    ("hunyuan-dense", dict(max_position_embeddings=4096), "dynamic \\(alpha\\) rope needs"),
    ("bailingmoe", dict(norm_head=True), "'norm_head' is not supported"),
    ("bailingmoe", dict(first_k_dense_replace=1), "first_k_dense_replace > 0\\) is not supported"),
    ("bailingmoe2", dict(routed_scaling_factor=...), "routed_scaling_factor must be a number"),
    ("minimax-m2", dict(rotary_dim=...), "'rotary_dim' must be a positive integer"),
    ("deepseek32", dict(index_topk=...), "'index_topk' must be a positive integer"),
    ("afmoe", dict(num_dense_layers=-1), "'num_dense_layers' must be a non-negative integer"),
    ("afmoe", dict(route_norm="yes"), "'route_norm' must be true or false"),
    ("dbrx", dict(ffn_config={"ffn_hidden_size": 256, "moe_num_experts": 4, "moe_top_k": 2, "ffn_act_fn": "silu"}),
     "'ffn_config.ffn_act_fn' must be an object"),
    ("grok", dict(head_dim=0), "'head_dim' must be a positive integer"),
])
def test_moe_tail_config_errors(models, case, edit, match):
    d = models(case, tokenizer=False)
    _edit_config(d, **edit)
    with pytest.raises((InputError, UnsupportedError), match=match) as e:
        load_spec(d, vocab=False)
    assert "\n" not in str(e.value) and "config.json" in str(e.value)


def test_hunyuan_needs_tokenizer_json(models):
    d = models("hunyuan-dense")
    (d / "tokenizer.json").unlink()
    with pytest.raises(UnsupportedError, match="tiktoken tokenizer needs its remote code"):
        load_spec(d)


def test_deepseek32_spec(models):
    """DeepSeek V3.2: the indexer in every layer (proj kept F32 as the converter keeps it), the MTP layer kept as
    block 2 with its nextn tensors; a tokenizer without add_bos_token is refused as the converter's assert refuses it."""
    d = models("deepseek32")
    spec = load_spec(d, vocab=False)
    by = {t.name: t for t in spec.tensors}
    assert spec.arch == "deepseek32" and spec.n_layer == 3
    assert by["blk.1.indexer.proj.weight"].ref_type == QType.F32 and by["blk.2.indexer.k_norm.bias"].shape == (64,)
    assert {"blk.2.nextn.eh_proj.weight", "blk.2.ffn_gate_exps.weight", "blk.2.attn_k_b.weight"} <= set(by)
    tc = json.loads((d / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps({**tc, "add_bos_token": False}))
    with pytest.raises(UnsupportedError, match="add_bos_token"):
        load_spec(d)
def test_kimi_linear_spec(models):
    """Kimi Linear: KDA and MLA layers told apart by full_attn_layers (1-based), convs 4-D and F32, A = -exp(A_log);
    a squeezed 2-D conv is read as the converter reads it; malformed configs and layers refused in one line."""
    d = models("kimi-linear")
    spec = load_spec(d, vocab=False)
    by = {t.name: t for t in spec.tensors}
    assert spec.arch == "kimi-linear" and "blk.1.attn_k_b.weight" in by and "blk.1.ssm_a" not in by
    assert by["blk.0.ssm_conv1d_q.weight"].shape == (1, 256, 1, 4) and by["blk.0.ssm_conv1d_q.weight"].ref_type == QType.F32
    assert by["blk.2.ssm_a"].shape == (1, 1, 4, 1) and by["blk.2.ssm_dt.bias"].ref_type == QType.F32
    src = all_sources(d)
    assert np.array_equal(build_tensor(by["blk.2.ssm_conv1d_v.weight"], src).reshape(256, 4),
                          src["model.layers.2.self_attn.v_conv1d.weight"].reshape(256, 4))
    t = read_safetensors(d / "model.safetensors")
    t2 = {n: (a.reshape(256, 4) if n.endswith("q_conv1d.weight") else a, "F32") for n, a in t.items()}
    write_safetensors(d / "model.safetensors", t2)
    assert {t.name: t.shape for t in load_spec(d, vocab=False).tensors}["blk.0.ssm_conv1d_q.weight"] == (1, 256, 1, 4)
    cfg = json.loads((d / "config.json").read_text())
    for edit, err, match in (({"linear_attn_config": None}, InputError, "'linear_attn_config' must be an object"),
                             ({"moe_layer_freq": 2}, UnsupportedError, "moe_layer_freq"),
                             ({"linear_attn_config": {**cfg["linear_attn_config"], "full_attn_layers": [1]}}, InputError,
                              "unexpected tensor 'model.layers.0.self_attn.A_log'")):  # layer 0 made MLA
        (d / "config.json").write_text(json.dumps({**cfg, **edit}))
        with pytest.raises(err, match=match) as e:
            load_spec(d, vocab=False)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("case,parts", [("gemma3-mm", {"vision_tower.*", "multi_modal_projector.*"}),
                                        ("mistral3", {"model.vision_tower.*", "model.multi_modal_projector.*"})])
def test_multimodal_parts_not_converted(models, case, parts, capsys):
    """The vision tower and projector of a multimodal checkpoint are left out, and the user is told so
    (ModelSpec.not_converted, the --dry-run --json plan, one line on stderr)."""
    from kquant import cli

    d = models(case, copy=False)
    spec = load_spec(d, vocab=False)
    src = all_sources(d)
    mm = sorted(n for n in src if "vision_tower" in n or "multi_modal_projector" in n)
    assert sorted(spec.not_converted) == mm and len(mm) > 3
    assert not any(s in mm for t in spec.tensors for s in t.sources)
    assert cli.main(["convert", str(d), "--type", "Q8_0", "--dry-run", "--json"]) == 0
    nc = json.loads(capsys.readouterr().out)["not_converted"]
    assert nc["n_tensors"] == len(mm) and sorted(nc["tensors"]) == mm
    assert cli.main(["convert", str(d), "--type", "Q8_0", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert f"{len(mm)} vision/audio tensors" in err and all(p in err for p in parts) and "--mmproj" in err
    text_only = load_spec(models("gemma3", copy=False), vocab=False)
    assert text_only.not_converted == ()


@pytest.mark.parametrize("case,edit,err,match", [
    ("step35", dict(partial_rotary_factors=[0.5, 0.5, 0.5, 0.5]), UnsupportedError, "'partial_rotary_factors' must be 1.0 on sliding"),
    ("step35", dict(rope_theta=[1e6]), InputError, "'rope_theta' as a list needs at least two numbers"),
    ("step35", dict(moe_layers_enum="1,x"), InputError, "'moe_layers_enum' must list layer numbers"),
    ("hy-v4", dict(indexer_types=["shared", "full", "full"]), InputError, "layer 0 must be indexer_types 'full'"),
    ("hy-v4", dict(first_k_dense_replace=2), InputError, "first_k_dense_replace \\(2\\) disagrees with mlp_layer_types"),
    ("hy-v4", dict(mlp_layer_types=["dense", "sparse", "dense"]), UnsupportedError, "dense layers after MoE layers"),
    ("ministral3-mm", None, UnsupportedError, "ministral3 rope_type 'default' is not supported"),
    ("dbrx", dict(attn_config={"clip_qkv": None, "kv_n_heads": 2}), UnsupportedError, "without 'attn_config.clip_qkv'"),
    ("dbrx", dict(attn_config={"clip_qkv": 8, "kv_n_heads": 2, "qk_ln": True}), InputError, "'attn_config' has keys DbrxConfig does not know: qk_ln"),
    ("dbrx", dict(tie_word_embeddings=True), InputError, "tie_word_embeddings is not supported for DBRX"),
    ("dbrx", dict(ffn_config={"ffn_hidden_size": 256, "moe_num_experts": 8}), InputError, "has shape \\[1024, 256\\], expected \\[2048, 256\\]"),
])
def test_new_family_config_errors(models, case, edit, err, match):
    """Configs the converter asserts on or misreads: one line naming config.json, nothing converted."""
    d = models(case, tokenizer=False)
    cfg = json.loads((d / "config.json").read_text())
    if edit is None:  # a ministral3 text_config without its YaRN rope
        cfg["text_config"]["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6}
    else:
        cfg.update(edit)
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(err, match=match) as e:
        load_spec(d, vocab=False)
    assert "\n" not in str(e.value) and "config.json" in str(e.value)


@pytest.mark.parametrize("case,text_edit,top_edit,err,match", [
    ("llama4", dict(moe_layers=[0, 2]), {}, UnsupportedError, "'moe_layers' \\[0, 2\\] differs from every 2th layer"),
    ("llama4", dict(no_rope_layers=[1, 1, 1, 1]), {}, UnsupportedError, "'no_rope_layers' / 'layer_types' differ"),
    ("llama4", dict(attention_chunk_size=4096), {}, UnsupportedError, "'attention_chunk_size' 4096 is not 8192"),
    ("llama4", dict(num_local_experts=10**9), {}, InputError, "experts.down_proj. has shape \\[4, 256, 256\\], expected \\[1000000000, 256, 256\\]"),
    ("llama4", dict(interleave_moe_layer_step="2"), {}, InputError, "'interleave_moe_layer_step' must be a positive integer"),
    ("gemma3-mm", dict(hidden_size="256"), {}, InputError, "'text_config.hidden_size' must be a positive integer"),
    ("gemma3-mm", dict(rope_scaling={"rope_type": "linear"}), {}, InputError, "'text_config.rope_scaling.factor' is missing"),
    ("gemma3-mm", {}, dict(text_config=...), InputError, "missing key 'text_config'"),
    ("gemma3-mm", {}, dict(text_config=[1]), InputError, "'text_config' must be an object"),
    ("mistral3", dict(model_type="qwen9"), {}, UnsupportedError, "'text_config.model_type' 'qwen9' is not supported"),
    ("mistral3", {}, dict(llm_config={}), UnsupportedError, "multimodal configs with 'llm_config' are not supported"),
])
def test_multimodal_config_errors(models, case, text_edit, top_edit, err, match):
    """Bad text_config values, and Llama 4 layouts llama.cpp's runtime would run wrongly: one line, no traceback."""
    d = models(case, tokenizer=False)
    c = json.loads((d / "config.json").read_text())
    c["text_config"].update(text_edit)
    (d / "config.json").write_text(json.dumps(c))
    _edit_config(d, **top_edit)
    with pytest.raises(err, match=match) as e:
        load_spec(d, vocab=False)
    assert "\n" not in str(e.value) and "config.json" in str(e.value) or "Tiny-" in str(e.value)


def test_llama4_all_full_attention(models):
    """layer_types all full_attention (MobileLLM-R1): sliding_window 0 tells llama.cpp to use no chunking
    and rope everywhere (Llama4Model.set_gguf_parameters); the NoPE pattern is then free."""
    d = models("llama4", tokenizer=False)
    c = json.loads((d / "config.json").read_text())
    c["text_config"].update(layer_types=["full_attention"] * 4, no_rope_layers=[1, 1, 1, 1], attention_chunk_size=None)
    (d / "config.json").write_text(json.dumps(c))
    spec = load_spec(d, vocab=False)
    kv = {k: v for k, _, v in spec.kv}
    assert kv["llama4.attention.sliding_window"] == 0 and kv["llama4.interleave_moe_layer_step"] == 2
    assert kv["llama4.expert_feed_forward_length"] == 256 and kv["llama4.feed_forward_length"] == 512
    assert spec.n_expert == 4 and [k for k, _, _ in spec.kv].index("llama4.attention.sliding_window") == len(spec.kv) - 1


def test_gemma4_hub_tokenizer_config_list(models):
    """The Hub's Gemma 4 tokenizer_config.json is transformers 5's: extra_special_tokens a list, the named
    special tokens (sot_token, think_token, ...) plain top-level keys. transformers 4.57.6's AutoTokenizer,
    which the pinned converter loads it with (LlamaHfVocab), fails on the list (AttributeError); kquant
    reads such a file as transformers 5 does, and its token types then equal those of llama.cpp's own
    ggml-vocab-gemma-4.gguf (converted from the real tokenizer) on every id of the cut vocabulary. A listed
    ordinary token is CONTROL; one missing from tokenizer.json is refused."""
    import subprocess

    from kquant.vocab.special import CONTROL

    vocab_gguf = LLAMA_CPP / "models" / "ggml-vocab-gemma-4.gguf"
    d = models("gemma4-moe")
    tc_file = d / "tokenizer_config.json"
    tc = json.loads(tc_file.read_text())
    kv = {k: v for k, _, v in load_spec(d).kv}
    tokens = list(kv["tokenizer.ggml.tokens"])
    # the Hub's file, but for the named tokens past the fixture's cut (<|image|>, <|audio>, ...; and the
    # Hub's list, ["<|video|>"], is past it too)
    hub = {k: v for k, v in tc.items() if not (k.endswith("_token") and isinstance(v, str) and v not in tokens)}
    hub["extra_special_tokens"] = []

    def types_of(extra):
        tc_file.write_text(json.dumps({**hub, "extra_special_tokens": extra}))
        return np.asarray({k: v for k, _, v in load_spec(d).kv}["tokenizer.ggml.token_type"])

    got = types_of([])
    if vocab_gguf.is_file():
        ref = np.asarray({k: v for k, _, _, v in read_gguf(vocab_gguf)[0]}["tokenizer.ggml.token_type"])[: len(tokens)]
        np.testing.assert_array_equal(got, ref)
    i = tokens.index("ment")  # an ordinary token, special once listed
    assert got[i] != CONTROL and types_of(["ment"])[i] == CONTROL
    if REFCONV_PYTHON:
        code = "import sys; from transformers import AutoTokenizer; AutoTokenizer.from_pretrained(sys.argv[1])"
        r = subprocess.run([REFCONV_PYTHON, "-c", code, str(d)], capture_output=True, text=True, timeout=300)
        assert r.returncode != 0 and "AttributeError: 'list' object has no attribute 'keys'" in r.stderr, r.stderr[-2000:]
    for extra in ({"image_token": "<|image|>"}, ["<|image|>"]):  # past the cut vocabulary
        tc_file.write_text(json.dumps({**hub, "extra_special_tokens": extra}))
        with pytest.raises(UnsupportedError, match="special token '<\\|image\\|>' is not in tokenizer.json") as e:
            load_spec(d)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("key", ["num_kv_shared_layers", "layer_types", "sliding_window", "head_dim", "moe_intermediate_size"])
def test_gemma4_config_keys_required(models, key):
    """config.json is read as it is (no transformers 4.57.6 class): a key the converter indexes is required."""
    d = models("gemma4")
    c = json.loads((d / "config.json").read_text())
    del c["text_config"][key]
    (d / "config.json").write_text(json.dumps(c))
    with pytest.raises(InputError, match=f"missing key '{key}'"):
        load_spec(d, vocab=False)


@pytest.mark.parametrize("case,key,value", [
    ("gemma4", "num_kv_shared_layers", "2"), ("gemma4", "global_head_dim", "256"), ("gemma4", "global_head_dim", 256.5),
    ("gemma4-ple", "hidden_size_per_layer_input", "256"), ("gemma4", "global_head_dim", -1),
])
def test_gemma4_config_sizes_checked(models, case, key, value):
    """A size of the wrong type or sign in Gemma 4's config.json (read as it is): one line naming it."""
    d = models(case)
    c = json.loads((d / "config.json").read_text())
    c.get("text_config", c)[key] = value  # gemma4-ple is a Gemma4ForCausalLM: no text_config
    (d / "config.json").write_text(json.dumps(c))
    with pytest.raises(InputError, match=f"'{key}' must be a non-negative integer") as e:
        load_spec(d, vocab=False)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("arch,model_type,why", [
    ("Gemma3nForConditionalGeneration", "gemma3n", "Gemma 3n's language model is not ported.*erfinv.*AltUp"),
    ("Gemma3nForCausalLM", "gemma3n_text", "Gemma 3n's language model"),
    ("BaichuanForCausalLM", "baichuan", "llama.cpp.s converter .*recurses without end"),
    ("ChatGLMModel", "chatglm", "ChatGLM.s remote-code layout is not ported: its tokenizer loads only through"),
    ("HunYuanMoEV1ForCausalLM", "hunyuan_v1_moe", "Hunyuan MoE.s vocabulary is not ported: .*trust_remote_code"),
    ("Gemma3TextModel", "gemma3_text", "EmbeddingGemma \\(Gemma3TextModel\\) is an embedding model"),
])
def test_refused_families_say_why(models, arch, model_type, why):
    """Families the converter handles and kquant does not: one line naming the family and the reason."""
    d = models("gemma3-mm", tokenizer=False)
    c = json.loads((d / "config.json").read_text())
    c["architectures"], c["model_type"] = [arch], model_type
    if arch.endswith("ForCausalLM"):
        c = {**c.pop("text_config"), "architectures": [arch], "model_type": model_type}
    (d / "config.json").write_text(json.dumps(c))
    with pytest.raises(UnsupportedError, match=f"{arch} is not supported: {why}") as e:
        load_spec(d, vocab=False)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# gpt-oss: stacked experts, MXFP4 sources

E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6])  # OCP MX FP4 codes


def test_mxfp4_experts_pass_through(models, tmp_path):
    """--type MXFP4_MOE on the MXFP4 release: every expert tensor holds the checkpoint's bytes
    repacked (GptOssModel.repack_mxfp4), and they decode to the OCP MX values of its codes."""
    from kquant import dequantize, pipeline
    from kquant.io.gguf import GGUFFile

    d = models("gpt-oss-mxfp4", copy=False)
    out = tmp_path / "m.gguf"
    pipeline.convert(d, out, "MXFP4_MOE")
    spec = {t.name: t for t in load_spec(d, vocab=False).tensors}
    src = all_sources(d)
    n = 0
    with GGUFFile(out) as g:
        assert g.value("general.file_type") == 38
        for ti in g.tensors:
            if not ti.name.endswith("_exps.weight"):
                assert ti.qtype != QType.MXFP4
                continue
            n += 1
            t = spec[ti.name]
            assert ti.qtype == QType.MXFP4 and t.raw_type == QType.MXFP4 and tuple(ti.shape) == t.shape
            raw = np.asarray(g.data(ti.name))
            assert raw.tobytes() == mxfp4_expected(t, src).tobytes(), ti.name
            blocks, scales = (src[s].astype(np.int64) for s in t.sources)
            codes = np.stack((blocks & 15, blocks >> 4), axis=-1).reshape(*blocks.shape[:3], 32)
            vals = (E2M1[codes] * np.exp2(scales - 127.0)[..., None]).reshape(*blocks.shape[:2], -1)
            if ".ffn_gate_exps." in ti.name or ".ffn_up_exps." in ti.name:
                vals = vals[:, (".ffn_up_exps." in ti.name)::2]
            assert np.array_equal(dequantize(raw, "MXFP4", t.shape), vals.astype(np.float32)), ti.name
    assert n == 6


def _rewrite(d: Path, edit) -> None:
    t = read_safetensors(d / "model.safetensors")
    dt = {n: ("U8" if x.dtype == np.uint8 else "F32") for n, x in t.items()}
    t = {n: (x, dt[n]) for n, x in t.items()}
    edit(t)
    write_safetensors(d / "model.safetensors", t)


@pytest.mark.parametrize("edit,match", [
    (lambda t: t.pop("model.layers.1.mlp.experts.down_proj_scales"),
     "MXFP4 tensor 'model.layers.1.mlp.experts.down_proj_blocks' has no scales tensor"),
    (lambda t: t.pop("model.layers.0.mlp.experts.gate_up_proj_blocks"),
     "MXFP4 tensor 'model.layers.0.mlp.experts.gate_up_proj_scales' has no blocks tensor"),
    (lambda t: t.update({"model.layers.0.mlp.experts.down_proj_scales": (np.zeros((4, 128, 4), np.uint8), "U8")}),
     r"MXFP4 scales 'model.layers.0.mlp.experts.down_proj_scales' have shape \[4, 128, 4\], expected \[4, 128, 8\]"),
    (lambda t: t.update({"model.layers.0.mlp.experts.down_proj_scales": (np.zeros((4, 128, 8)), "F32")}),
     "have dtypes U8 / F32, expected U8"),
    (lambda t: t.update({"model.layers.1.mlp.experts.gate_up_proj_blocks": (np.zeros((4, 512, 2, 32), np.uint8), "U8"),
                         "model.layers.1.mlp.experts.gate_up_proj_scales": (np.zeros((4, 512, 2), np.uint8), "U8")}),
     r"has shape \[4, 512, 2, 32\], expected \[4, 512, 4, 16\] from config.json"),
])
def test_mxfp4_source_errors(models, tmp_path, capsys, edit, match):
    """Broken MXFP4 sources: one-line error, non-zero exit, nothing written."""
    from kquant import cli

    d = models("gpt-oss-mxfp4", tokenizer=False)
    _rewrite(d, edit)
    out = tmp_path / "x.gguf"
    assert cli.main(["convert", str(d), "-o", str(out), "--type", "MXFP4_MOE", "-q"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(match, err), err
    assert not out.exists() and not list(tmp_path.glob(".x.gguf*"))


@pytest.mark.parametrize("case,slab_bytes,n_slabs", [("gpt-oss", 16 << 10, 32), ("gpt-oss", 64 << 10, 4),
                                                     ("llama4", 16 << 10, 64), ("llama4", 256 << 10, 4)])
def test_stacked_transposed_experts_stream(models, case, slab_bytes, n_slabs):
    """Experts stored stacked and [in, out] (gpt-oss's interleaved gate_up, Llama 4's gate_up halves and
    down_proj) are split and transposed in slabs (smaller than an expert, or one expert each) equal to the
    whole-tensor gather: the pipeline never holds a whole stacked tensor."""
    from kquant import pipeline
    from kquant.io.safetensors import Checkpoint

    d = models(case, copy=False)
    spec = load_spec(d, vocab=False)
    src = all_sources(d)
    with Checkpoint.open(d) as ck:
        for t in spec.tensors:
            if "_exps.weight" not in t.name:
                continue
            assert t.transpose and t.transform is None and t.shape[0] == 4
            whole = build_tensor(t, src).reshape(-1, t.shape[-1])
            slabs = list(pipeline.iter_source_slabs(ck, t, slab_bytes=slab_bytes))  # a few source rows per read
            assert len(slabs) == n_slabs
            assert np.array_equal(np.concatenate([s for _, s in slabs]), whole), t.name
    if case == "llama4":
        gu = src["language_model.model.layers.1.feed_forward.experts.gate_up_proj"]  # (E, n_embd, 2 n_ff)
        up = next(t for t in spec.tensors if t.name == "blk.1.ffn_up_exps.weight")
        assert np.array_equal(build_tensor(up, src), np.swapaxes(gu, 1, 2)[:, gu.shape[2] // 2:])
        return
    gate = next(t for t in spec.tensors if t.name == "blk.0.ffn_gate_exps.weight")
    gu = src["model.layers.0.mlp.experts.gate_up_proj"]
    assert np.array_equal(build_tensor(gate, src), np.swapaxes(gu, 1, 2)[:, 0::2])


def test_dbrx_fused_experts_stream(models):
    """DBRX's experts, fused along the rows of 2-D parameters: w1 / v1 are [n_expert, ffn, d_model] views, w2 is
    each expert transposed (conversion/dbrx.py); streamed in slabs smaller than an expert, equal to numpy's view."""
    from kquant import pipeline
    from kquant.io.safetensors import Checkpoint

    d = models("dbrx", copy=False)
    spec = load_spec(d, vocab=False)
    src = all_sources(d)
    want = {"ffn_gate_exps": lambda x: x.reshape(4, 256, 256), "ffn_up_exps": lambda x: x.reshape(4, 256, 256),
            "ffn_down_exps": lambda x: x.reshape(4, 256, 256).transpose(0, 2, 1)}
    n = 0
    with Checkpoint.open(d) as ck:
        for t in spec.tensors:
            kind = t.name.split(".")[-2]
            if kind not in want:
                continue
            expected = want[kind](src[t.sources[0]])
            assert t.shape == expected.shape and np.array_equal(build_tensor(t, src), expected), t.name
            slabs = list(pipeline.iter_source_slabs(ck, t, slab_bytes=16 << 10))
            assert len(slabs) == 64
            assert np.array_equal(np.concatenate([s for _, s in slabs]), expected.reshape(-1, 256)), t.name
            n += 1
    assert n == 6


def test_arctic_vocab_errors(models):
    """Arctic's own SentencePiece reading: where the converter crashes (KeyError: a special added token without
    tokenizer_config.json's unk_token), one line naming the file."""
    d = models("arctic")
    tc = json.loads((d / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps({k: v for k, v in tc.items() if k != "unk_token"}))
    with pytest.raises(InputError, match="tokenizer_config.json: special added tokens need 'unk_token'"):
        load_spec(d)


def test_grok_experts_last_refused(models):
    """GrokModel.modify_tensors merges a layer's experts when the next tensor arrives: a checkpoint whose last
    part ends with experts would lose them in the converter's file, so kquant refuses it in one line."""
    d = models("grok", tokenizer=False)
    src = all_sources(d)
    (d / "model.safetensors").unlink()
    last = {n for n in src if n.startswith("transformer.decoder_layer.1.moe.")}
    parts = {"model-00001-of-00002.safetensors": sorted(set(src) - last), "model-00002-of-00002.safetensors": sorted(last)}
    for fn, names in parts.items():
        write_safetensors(d / fn, {n: (src[n], "BF16") for n in names})
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {n: fn for fn, names in parts.items() for n in names}}))
    with pytest.raises(UnsupportedError, match=r"ends with experts \(layer 1\)") as e:
        load_spec(d, vocab=False)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# Mamba, Nemotron, Jamba, Phi-2


def test_mamba_lm_head_dropped_only_when_equal(models):
    """MambaModel.modify_tensors: lm_head equal to the embedding (torch.equal on the data) is omitted;
    one differing value keeps it (and the spec reads it)."""
    d = models("mamba")
    assert load_spec(d, vocab=False).tied_embeddings
    src = {n: (x, "BF16") for n, x in read_safetensors(d / "model.safetensors").items()}
    x = src["lm_head.weight"][0].copy()
    x[-1, -1] += 1.0
    src["lm_head.weight"] = (x, "BF16")
    write_safetensors(d / "model.safetensors", src)
    spec = load_spec(d, vocab=False)
    assert not spec.tied_embeddings and spec.tensors[-1].sources == ("lm_head.weight",)
    assert not load_spec(models("falcon-mamba", copy=False), vocab=False).tied_embeddings


@pytest.mark.parametrize("case,edit,err,match", [
    ("nemotron-h", dict(num_experts_per_tok=2), UnsupportedError, "each layer M, \\* or E"),  # the MoE variant
    ("nemotron-h-moe", dict(moe_shared_expert_intermediate_size=0), InputError,
     "'moe_shared_expert_intermediate_size' must be a positive integer"),
    ("nemotron-h-moe-mtp", dict(num_nextn_predict_layers=2), UnsupportedError, "num_nextn_predict_layers 2"),
    ("nemotron-h-moe", dict(norm_topk_prob=1), InputError, "'norm_topk_prob' must be true or false"),
    ("nemotron-h", dict(hybrid_override_pattern="M*"), InputError, "layer pattern has 2 entries for 3 layers"),
    ("nemotron-h", dict(hybrid_override_pattern="**-"), UnsupportedError, "needs Mamba layers"),
    ("mamba", dict(intermediate_size=768), UnsupportedError, "block expansion factor of 2 only"),
    ("phi2", dict(partial_rotary_factor=0.4), UnsupportedError, "odd rotary dimension count \\(25\\)"),
    ("jamba", dict(attn_layer_offset=2), InputError, "'attn_layer_offset' must be an integer in \\[0, 2\\)"),
])
def test_ssm_and_phi2_config_errors(models, case, edit, err, match):
    d = models(case, tokenizer=False)
    _edit_config(d, **edit)
    with pytest.raises(err, match=match) as e:
        load_spec(d, vocab=False)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("case", ["mamba", "mamba2"])
def test_mamba_builtin_vocab_refused(models, case):
    """A folder without tokenizer files: the converter's built-in GPT-NeoX vocabulary is not ported."""
    with pytest.raises(UnsupportedError, match="built-in GPT-NeoX vocabulary is not supported"):
        load_spec(models(case, tokenizer=False))


@pytest.mark.parametrize("case,root", [("qwen2vl", "model.visual.*"), ("qwen2.5vl", "visual.*")])
def test_qwen2vl_vision_not_converted(models, case, root):
    """Qwen2-VL's vision tower is left out and reported (ModelSpec.not_converted, the one-line note); the flat
    release config and the text_config one give the same language model keys."""
    from kquant.models import not_converted_note

    d = models(case, copy=False)
    spec = load_spec(d, vocab=False)
    vis = sorted(n for n in all_sources(d) if "visual." in n)
    assert sorted(spec.not_converted) == vis and len(vis) == 6
    assert root in not_converted_note(spec.not_converted)
    kv = {k: v for k, _, v in spec.kv}
    assert spec.arch == "qwen2vl" and kv["qwen2vl.rope.dimension_sections"] == [8, 12, 12, 0]
    assert kv["qwen2vl.rope.freq_base"] == 1000000.0 and spec.tied_embeddings == (case == "qwen2vl")
