"""kquant.inspect: listings of GGUF / safetensors / HF folders against gguf-py's reader and the files'
own contents, and `dequantize` against gguf-py's dequantizers (bit for bit) with GGUF and HF names."""

from __future__ import annotations

import io
import json
import os

import gguf
import numpy as np
import pytest
from test_validate import (
    add_kv,
    EMBD,
    N_HEAD,
    N_KV,
    bf16_bits,
    gguf_py_tensors,
    llama_quantize,
    make_hf_llama,
    permute,
    read_safetensors,
    write_bf16_gguf,
)

from kquant.errors import InputError, OutputError, UnsupportedError
from kquant.inspect import dequantize_file, detect_format, inspect_json, inspect_path, print_inspect
from kquant.types import FileType

N_TOKENS = 100  # a vocabulary-like array longer than the listing shows


def write_gguf(path, arch: str, tensors: dict, kv: dict | None = None):
    """A GGUF file of F32 tensors written by gguf-py (numpy-order shapes)."""
    w = gguf.GGUFWriter(str(path), arch)
    add_kv(w, kv)
    for name, x in tensors.items():
        w.add_tensor(name, np.asarray(x, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inspect")
    hf = make_hf_llama(d / "hf")
    VT = gguf.GGUFValueType
    kv = {"tokenizer.ggml.tokens": (VT.STRING, [f"tok{i}" for i in range(N_TOKENS)]),
          "tokenizer.ggml.scores": (VT.FLOAT32, [float(i) for i in range(N_TOKENS)]),
          "general.name": (VT.STRING, "Tiny Llama"), "kquant.test.flag": (VT.BOOL, True)}
    extra = {"rope_freqs.weight": np.linspace(1, 2, EMBD // N_HEAD // 2, dtype=np.float32)}
    bf16 = write_bf16_gguf(hf, d / "bf16.gguf", extra_tensors=extra, extra_kv=kv)
    q = llama_quantize(bf16, d / "q4km.gguf", FileType.MOSTLY_Q4_K_M)
    return {"dir": d, "hf": hf, "bf16": bf16, "q4km": q}


# ============================================================================= inspect
def test_inspect_gguf_against_gguf_py(files):
    info = inspect_path(files["q4km"])
    assert info["format"] == "gguf" and info["shape_order"] == "ggml"
    r = gguf.GGUFReader(str(files["q4km"]))
    assert [t["name"] for t in info["tensors"]] == [t.name for t in r.tensors]
    for t, rt in zip(info["tensors"], r.tensors):
        assert t["type"].upper() == rt.tensor_type.name
        assert t["shape"] == [int(x) for x in rt.shape]  # ne[0] first, as gguf-py and llama.cpp print it
        assert t["bytes"] == int(rt.n_bytes) and t["n_elements"] == int(rt.n_elements)
        assert t["offset"] == int(rt.data_offset)  # absolute in both
        assert t["bits_per_weight"] == pytest.approx(rt.n_bytes * 8 / rt.n_elements, abs=1e-4)
    for key, f in r.fields.items():
        if key.startswith("GGUF."):
            continue
        v = info["metadata"][key]
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            assert v["length"] == len(f.data) and v["element_type"] == f.types[1].name
            assert v["head"] == [f.contents(i) for i in range(8)]
        else:
            assert v == pytest.approx(f.contents()) if isinstance(v, float) else v == f.contents()
    assert info["architecture"] == "llama" and info["file_type"] == "Q4_K_M"
    s = info["summary"]
    assert s["n_tensors"] == len(r.tensors) and s["tensor_bytes"] == sum(int(t.n_bytes) for t in r.tensors)
    assert s["types"]["q4_K"]["count"] + s["types"]["q6_K"]["count"] + s["types"]["f32"]["count"] == len(r.tensors)
    assert info["metadata_types"]["tokenizer.ggml.tokens"] == "ARRAY[STRING]"
    full = inspect_path(files["q4km"], full=True)
    assert full["metadata"]["tokenizer.ggml.tokens"] == [f"tok{i}" for i in range(N_TOKENS)]
    json.loads(inspect_json(full))


def test_inspect_gguf_table(files):
    buf = io.StringIO()
    print_inspect(inspect_path(files["q4km"]), buf)
    text = buf.getvalue()
    assert "GGUF v3" in text and "file type Q4_K_M" in text and "architecture llama" in text
    assert "[100 elements] tok0, tok1" in text and "1e-05" in text  # float32 shown as stored
    for name in ("token_embd.weight", "blk.1.ffn_down.weight", "rope_freqs.weight"):
        assert name in text
    assert "bits per weight" in text.splitlines()[-1]


def test_inspect_safetensors_file_and_folder(files):
    src = read_safetensors(files["hf"] / "model.safetensors")
    for path in (files["hf"], files["hf"] / "model.safetensors"):
        info = inspect_path(path, config=files["hf"] / "config.json")
        assert info["format"] == "safetensors" and info["shape_order"] == "numpy"
        assert {t["name"]: tuple(t["shape"]) for t in info["tensors"]} == {k: v.shape for k, v in src.items()}
        assert all(t["dtype"] == "BF16" and t["bits_per_weight"] == 16 for t in info["tensors"])
        assert info["config"]["architectures"] == ["LlamaForCausalLM"]
        assert info["summary"]["n_elements"] == sum(v.size for v in src.values())
        buf = io.StringIO()
        print_inspect(info, buf)
        assert "safetensors, 1 file" in buf.getvalue() and "LlamaForCausalLM" in buf.getvalue()
    assert inspect_path(files["hf"] / "model.safetensors")["config"] is None  # no --config for a single file


def test_inspect_broken_config_still_lists(files, tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    os.link(files["hf"] / "model.safetensors", d / "model.safetensors")
    (d / "config.json").write_text("{not json")
    info = inspect_path(d)
    assert info["config"] is None and "config.json" in info["config_error"] and info["tensors"]


def test_detect_format(files, tmp_path):
    assert detect_format(files["q4km"]) == "gguf"
    assert detect_format(files["hf"]) == "folder"
    assert detect_format(files["hf"] / "model.safetensors") == "safetensors"
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUX" + bytes(60))
    with pytest.raises(InputError, match="magic"):
        inspect_path(bad)  # a .gguf name is read as GGUF even with a bad magic
    with pytest.raises(InputError, match="no such"):
        inspect_path(tmp_path / "missing")


# ============================================================================= dequantize
@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_dequantize_matches_gguf_py(files, tmp_path, dtype):
    out = tmp_path / f"out-{dtype}.safetensors"
    res = dequantize_file(files["q4km"], out, dtype=dtype)
    ref = gguf_py_tensors(files["q4km"])
    got = read_safetensors(out)
    assert list(got) == list(ref) and res["n_tensors"] == len(ref) and res["bytes"] == out.stat().st_size
    for name, (_, x) in ref.items():
        if dtype == "F32":
            want = x
        elif dtype == "F16":
            want = x.astype(np.float16).astype(np.float32)
        else:
            want = (bf16_bits(x).astype(np.uint32) << 16).view(np.float32)
        assert got[name].shape == x.shape and np.array_equal(got[name], want), name
    header = json.loads(out.read_bytes()[8 : 8 + int.from_bytes(out.read_bytes()[:8], "little")])
    assert header["__metadata__"] == {"format": "pt"}
    from kquant.io.safetensors import Checkpoint

    with Checkpoint.open(out) as ck:  # the strict reader accepts it
        assert set(ck.tensors) == set(ref)


def test_dequantize_hf_names_undo_the_permutation(files, tmp_path):
    out = tmp_path / "hf.safetensors"
    res = dequantize_file(files["q4km"], out, hf_names=True)
    assert res["skipped"] == ["rope_freqs.weight"]
    got = read_safetensors(out)
    src = read_safetensors(files["hf"] / "model.safetensors")
    assert set(got) == set(src)
    ref = gguf_py_tensors(files["q4km"])
    for i in range(2):
        q, k = got[f"model.layers.{i}.self_attn.q_proj.weight"], got[f"model.layers.{i}.self_attn.k_proj.weight"]
        assert np.array_equal(permute(q, N_HEAD, N_HEAD), ref[f"blk.{i}.attn_q.weight"][1])
        assert np.array_equal(permute(k, N_HEAD, N_KV), ref[f"blk.{i}.attn_k.weight"][1])
    for name, x in src.items():  # close to the source: quantization error only
        rel = np.sqrt(np.mean((got[name] - x) ** 2) / np.mean(x**2))
        assert got[name].shape == x.shape and rel < 0.1, (name, rel)


def test_dequantize_hf_names_biases_and_other_architectures(tmp_path):
    rng = np.random.default_rng(5)
    hd = 64
    q = rng.standard_normal((N_HEAD * hd, EMBD)).astype(np.float32)
    qb = rng.standard_normal(N_HEAD * hd).astype(np.float32)
    kb = rng.standard_normal(N_KV * hd).astype(np.float32)
    VT = gguf.GGUFValueType
    kv = {"llama.attention.head_count": (VT.UINT32, N_HEAD), "llama.attention.head_count_kv": (VT.UINT32, N_KV)}
    path = write_gguf(tmp_path / "b.gguf", "llama", {"blk.0.attn_q.weight": permute(q, N_HEAD, N_HEAD),
                                                     "blk.0.attn_q.bias": permute(qb, N_HEAD, N_HEAD),
                                                     "blk.0.attn_k.bias": permute(kb, N_HEAD, N_KV)}, kv)
    dequantize_file(path, tmp_path / "b.safetensors", hf_names=True)
    got = read_safetensors(tmp_path / "b.safetensors")
    assert np.array_equal(got["model.layers.0.self_attn.q_proj.weight"], q)
    assert np.array_equal(got["model.layers.0.self_attn.q_proj.bias"], qb)
    assert np.array_equal(got["model.layers.0.self_attn.k_proj.bias"], kb)

    # qwen3: q/k norms, no permutation
    t = {"token_embd.weight": q[:8], "blk.0.attn_q.weight": q, "blk.0.attn_q_norm.weight": qb[:hd],
         "output_norm.weight": qb[:EMBD]}
    path = write_gguf(tmp_path / "q3.gguf", "qwen3", t)
    dequantize_file(path, tmp_path / "q3.safetensors", hf_names=True)
    got = read_safetensors(tmp_path / "q3.safetensors")
    assert set(got) == {"model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                        "model.layers.0.self_attn.q_norm.weight", "model.norm.weight"}
    assert np.array_equal(got["model.layers.0.self_attn.q_proj.weight"], q)

    path = write_gguf(tmp_path / "q2.gguf", "qwen2", {"blk.1.attn_v.bias": kb})
    dequantize_file(path, tmp_path / "q2.safetensors", hf_names=True)
    assert list(read_safetensors(tmp_path / "q2.safetensors")) == ["model.layers.1.self_attn.v_proj.bias"]


def test_dequantize_hf_names_unsupported(tmp_path):
    path = write_gguf(tmp_path / "g.gguf", "gemma", {"token_embd.weight": np.zeros((2, 32))})
    with pytest.raises(UnsupportedError, match="--hf-names is not offered for 'gemma': the converter writes the norm"):
        dequantize_file(path, tmp_path / "g.safetensors", hf_names=True)
    path = write_gguf(tmp_path / "b.gguf", "bert", {"token_embd.weight": np.zeros((2, 32))})
    with pytest.raises(UnsupportedError, match="supports architectures .*this file is 'bert'"):
        dequantize_file(path, tmp_path / "b.safetensors", hf_names=True)
    path = write_gguf(tmp_path / "m.gguf", "llama", {"blk.0.attn_kv_b.weight": np.zeros((2, 32))},
                      {"llama.attention.head_count": (gguf.GGUFValueType.UINT32, 4)})
    with pytest.raises(UnsupportedError, match="attn_kv_b"):
        dequantize_file(path, tmp_path / "m.safetensors", hf_names=True)
    # a split HF tensor needs all its parts, fitting together (DeepSeek's kv_b_proj: attn_k_b and attn_v_b)
    path = write_gguf(tmp_path / "d.gguf", "deepseek2", {"blk.0.attn_k_b.weight": np.zeros((2, 32, 32))})
    with pytest.raises(InputError, match="kv_b_proj.weight needs 2 tensors"):
        dequantize_file(path, tmp_path / "d.safetensors", hf_names=True)
    path = write_gguf(tmp_path / "e.gguf", "deepseek2", {"blk.0.attn_k_b.weight": np.zeros((2, 32, 32)),
                                                         "blk.0.attn_v_b.weight": np.zeros((2, 32, 64))})
    with pytest.raises(InputError, match="do not fit together"):
        dequantize_file(path, tmp_path / "e.safetensors", hf_names=True)
    path = write_gguf(tmp_path / "n.gguf", "llama", {"blk.0.attn_q.weight": np.zeros((8, 32))})
    with pytest.raises(InputError, match="head_count"):  # permutation needs the head count
        dequantize_file(path, tmp_path / "n.safetensors", hf_names=True)
    assert not any(p.suffix == ".safetensors" for p in tmp_path.iterdir())
    dequantize_file(path, tmp_path / "n.safetensors")  # GGUF names need no head count


def test_dequantize_output_rules(files, tmp_path):
    out = tmp_path / "o.safetensors"
    dequantize_file(files["bf16"], out)
    with pytest.raises(OutputError, match="already exists"):
        dequantize_file(files["bf16"], out)
    dequantize_file(files["bf16"], out, force=True)
    with pytest.raises(OutputError, match="same file"):
        dequantize_file(files["bf16"], files["bf16"], force=True)
    with pytest.raises(InputError, match="--dtype"):
        dequantize_file(files["bf16"], tmp_path / "x.safetensors", dtype="Q8_0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.safetensors"]  # no temp files left


def test_dequantize_f16_overflow_is_refused(tmp_path):
    path = write_gguf(tmp_path / "big.gguf", "llama", {"a.weight": np.ones((2, 32)), "b.weight": np.full((2, 32), 1e6)})
    with pytest.raises(InputError, match="F16 range"):
        dequantize_file(path, tmp_path / "big.safetensors", dtype="F16")
    assert not (tmp_path / "big.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["big.gguf"]
    dequantize_file(path, tmp_path / "big.safetensors", dtype="BF16")


def test_dequantize_streams_in_slabs(files, tmp_path, monkeypatch):
    from kquant import inspect as ki

    whole = tmp_path / "whole.safetensors"
    dequantize_file(files["q4km"], whole, hf_names=True)
    monkeypatch.setattr(ki, "SLAB_BYTES", EMBD * 4 * 48)  # 48 rows at a time: slabs and gathers split tensors
    sliced = tmp_path / "sliced.safetensors"
    dequantize_file(files["q4km"], sliced, hf_names=True)
    assert whole.read_bytes() == sliced.read_bytes()


def test_malformed_gguf_is_refused(files, tmp_path):
    raw = files["q4km"].read_bytes()
    cases = {
        "truncated.gguf": raw[: len(raw) // 2],
        "trailing.gguf": raw + b"\0" * 64,
        "header.gguf": raw[:20],
        "counts.gguf": raw[:8] + (2**62).to_bytes(8, "little") + raw[16:],
    }
    for name, data in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(InputError):
            inspect_path(p)
        with pytest.raises(InputError):
            dequantize_file(p, tmp_path / "never.safetensors")
    assert not (tmp_path / "never.safetensors").exists()
