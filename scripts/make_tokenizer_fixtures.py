#!/usr/bin/env python3
"""Rebuild Hugging Face tokenizer folders from llama.cpp's ggml-vocab-*.gguf test vocabularies.

Real tokenizers cannot be downloaded here, but llama.cpp ships the vocabularies of a few
(models/ggml-vocab-<name>.gguf) together with test vectors (.inp texts, .out token ids that
transformers' AutoTokenizer produced for the original tokenizer). This script turns four of them
back into HF files under fixtures/tokenizers/<name>/ (large files gzip-compressed):

  gpt-2      GPT-2 BPE:   tokenizer.json (byte-level, 50257 tokens) + tokenizer_config.json
  llama-bpe  Llama 3 BPE: tokenizer.json (merges as "a b" strings) + tokenizer_config.json
  qwen2      Qwen2 BPE:   tokenizer.json (merges as [a, b] pairs)  + tokenizer_config.json
  llama-spm  Llama 2 SentencePiece: tokenizer.model (+ tokenizer.json converted by transformers)
  phi-3      Phi-3 SentencePiece with added tokens: tokenizer.model + tokenizer.json + config

and proves them faithful: the BPE ones hash (convert_hf_to_gguf.py get_vocab_base_pre's chkhsh)
to the value llama.cpp lists for "llama-bpe" / "qwen2", and every tokenizer encodes each .inp
text to the .out ids. Run it with the reference venv (transformers + sentencepiece), e.g.
  /tmp/refconv/bin/python scripts/make_tokenizer_fixtures.py
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import sys
import tempfile
from hashlib import sha256
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LLAMA_CPP = Path(os.environ.get("KQUANT_LLAMA_CPP", "/tmp/sdist/llama_cpp_python-0.3.36/vendor/llama.cpp"))
VOCABS = LLAMA_CPP / "models"
OUT = ROOT / "fixtures" / "tokenizers"
GZIP_ABOVE = 200_000  # bytes: files larger than this are committed as .gz
EXPECTED_PRE = {"gpt-2": "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454",
                "llama-bpe": "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5",
                "qwen2": "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea"}

sys.path.insert(0, str(LLAMA_CPP / "gguf-py"))
from gguf import GGUFReader  # noqa: E402

LLAMA3_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
                "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
QWEN2_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
               "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CONTROL, USER_DEFINED = 3, 4


def gguf_vocab(name: str) -> dict:
    """tokens, types, scores, merges and the other tokenizer keys of ggml-vocab-<name>.gguf."""
    r = GGUFReader(VOCABS / f"ggml-vocab-{name}.gguf")
    f = {k: v.contents() for k, v in r.fields.items() if k.startswith("tokenizer.")}
    return {
        "tokens": f["tokenizer.ggml.tokens"], "types": f["tokenizer.ggml.token_type"],
        "scores": f.get("tokenizer.ggml.scores"), "merges": f.get("tokenizer.ggml.merges"),
        "chat_template": f.get("tokenizer.chat_template"),
    }


def added_token(i: int, content: str, special: bool) -> dict:
    return {"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": special}


def decoder_entry(t: dict) -> dict:
    return {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}


def llama_bpe() -> dict[str, object]:
    v = gguf_vocab("llama-bpe")
    toks, types = v["tokens"], v["types"]
    n_base = next(i for i, t in enumerate(types) if t == CONTROL)  # 128000
    added = [added_token(i, toks[i], True) for i in range(n_base, len(toks))]
    bos, eos = toks[n_base], toks[n_base + 1]
    tj = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {bos: {"id": bos, "ids": [n_base], "tokens": [bos]}}}]},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": {toks[i]: i for i in range(n_base)}, "merges": list(v["merges"])},
    }
    tc = {
        "added_tokens_decoder": {str(t["id"]): decoder_entry(t) for t in added},
        "bos_token": bos, "chat_template": LLAMA3_CHAT_TEMPLATE, "clean_up_tokenization_spaces": True,
        "eos_token": eos, "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 1000000000000000019884624838656, "tokenizer_class": "PreTrainedTokenizerFast",
    }
    return {"tokenizer.json": tj, "tokenizer_config.json": tc}


def gpt2() -> dict[str, object]:
    """openai-community/gpt2: byte-level BPE, <|endoftext|> the last vocabulary entry and its one added token."""
    v = gguf_vocab("gpt-2")
    toks = v["tokens"]
    eot = len(toks) - 1  # 50256
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    tj = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [added_token(eot, toks[eot], True)],
        "normalizer": None, "pre_tokenizer": dict(byte_level), "post_processor": dict(byte_level),
        "decoder": dict(byte_level),
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(toks)}, "merges": list(v["merges"])},
    }
    tc = {"add_prefix_space": False, "bos_token": toks[eot], "eos_token": toks[eot], "unk_token": toks[eot],
          "model_max_length": 1024, "tokenizer_class": "GPT2Tokenizer"}
    return {"tokenizer.json": tj, "tokenizer_config.json": tc}


def qwen2() -> dict[str, object]:
    v = gguf_vocab("qwen2")
    toks, types = v["tokens"], v["types"]
    n_base = next(i for i, t in enumerate(types) if t == CONTROL)  # 151643
    n_added = sum(1 for t in types if t == CONTROL)
    added = [added_token(i, toks[i], True) for i in range(n_base, n_base + n_added)]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    tj = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": False},
            byte_level]},
        "post_processor": dict(byte_level),
        "decoder": dict(byte_level),
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {toks[i]: i for i in range(n_base)},
                  "merges": [m.split(" ") for m in v["merges"]]},
    }
    tc = {
        "add_prefix_space": False,
        "added_tokens_decoder": {str(t["id"]): decoder_entry(t) for t in added},
        "additional_special_tokens": [t["content"] for t in added[1:]],
        "bos_token": None, "chat_template": v["chat_template"], "clean_up_tokenization_spaces": False,
        "eos_token": toks[n_base], "errors": "replace", "model_max_length": 32768, "pad_token": toks[n_base],
        "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    }
    return {"tokenizer.json": tj, "tokenizer_config.json": tc}


# ---- SentencePiece ModelProto writer (sentencepiece_model.proto field numbers)

def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int32 fields are encoded as 10-byte two's complement
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, wt: int, payload: bytes) -> bytes:
    return _varint(num << 3 | wt) + payload


def _msg(num: int, body: bytes) -> bytes:
    return _field(num, 2, _varint(len(body)) + body)


def _int(num: int, v: int) -> bytes:
    return _field(num, 0, _varint(v))


def _str(num: int, s: str) -> bytes:
    return _msg(num, s.encode("utf-8"))


def spm_model(pieces: list[tuple[str, float, int]]) -> bytes:
    """A Llama-2-style BPE ModelProto with these pieces."""
    body = b"".join(
        _msg(1, _str(1, p) + _field(2, 5, struct.pack("<f", s)) + (_int(3, t) if t != 1 else b"")) for p, s, t in pieces)
    trainer = (_int(3, 2) + _int(4, len(pieces)) + _int(35, 1) + _int(25, 1) + _int(26, 1) + _int(20, 16)
               + _int(40, 0) + _int(41, 1) + _int(42, 2) + _int(43, -1))
    normalizer = _str(1, "identity") + _int(3, 1) + _int(4, 0) + _int(5, 1)
    return body + _msg(2, trainer) + _msg(3, normalizer)


def spm_pieces(v: dict, n: int, fix_first3: bool) -> list[tuple[str, float, int]]:
    """The first n GGUF tokens as SentencePiece pieces; phi-3's GGUF overwrote ids 0-2 with added-token values."""
    pieces = [(v["tokens"][i], float(v["scores"][i]), int(v["types"][i])) for i in range(n)]
    if fix_first3:
        pieces[:3] = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)]
    return pieces


def fast_tokenizer_json(folder: Path, added: list[dict]) -> dict:
    """tokenizer.json as transformers' LlamaConverter writes it for tokenizer.model (+ added tokens)."""
    import transformers.convert_slow_tokenizer as cst
    from transformers import LlamaTokenizerFast
    from transformers.utils import sentencepiece_model_pb2_new

    # sentencepiece 0.2's own pb2 needs protobuf 5, llama.cpp pins protobuf < 5: use transformers' copy
    cst.import_protobuf = lambda *a, **k: sentencepiece_model_pb2_new
    tok = LlamaTokenizerFast.from_pretrained(str(folder), from_slow=True, legacy=True)
    with tempfile.TemporaryDirectory() as d:
        tok.backend_tokenizer.save(str(Path(d) / "tokenizer.json"))
        tj = json.loads((Path(d) / "tokenizer.json").read_text(encoding="utf-8"))
    have = {t["id"] for t in tj["added_tokens"]}
    tj["added_tokens"] += [t for t in added if t["id"] not in have]
    for t in tj["added_tokens"]:
        for a in added:
            if a["id"] == t["id"]:
                t.update(a)
    tj["added_tokens"].sort(key=lambda t: t["id"])
    return tj


def spm_folder(name: str) -> dict[str, object]:
    v = gguf_vocab(name)
    n_spm = 32000
    pieces = spm_pieces(v, n_spm, fix_first3=(name == "phi-3"))
    files: dict[str, object] = {"tokenizer.model": spm_model(pieces)}
    specials = [added_token(0, "<unk>", True), added_token(1, "<s>", True),
                added_token(2, "</s>", name != "phi-3")]  # Phi-3 ships </s> as a non-special added token
    extra = []
    if name == "phi-3":
        for i in range(n_spm, len(v["tokens"])):
            if v["types"][i] in (CONTROL, USER_DEFINED):
                t = added_token(i, v["tokens"][i], v["types"][i] == CONTROL)
                t["rstrip"] = i != n_spm  # Phi-3's chat markers strip the following space
                extra.append(t)
    added = specials + extra
    tc = {
        "add_bos_token": True, "add_eos_token": False,
        "added_tokens_decoder": {str(t["id"]): decoder_entry(t) for t in added},
        "bos_token": "<s>", "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>" if name == "phi-3" else "</s>",
        "legacy": name != "phi-3", "model_max_length": 4096 if name == "phi-3" else 1000000000000000019884624838656,
        "pad_token": "<|endoftext|>" if name == "phi-3" else None, "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer", "unk_token": "<unk>", "use_default_system_prompt": False,
    }
    if v["chat_template"]:
        tc["chat_template"] = v["chat_template"]
    with tempfile.TemporaryDirectory() as d:
        Path(d, "tokenizer.model").write_bytes(files["tokenizer.model"])
        files["tokenizer.json"] = fast_tokenizer_json(Path(d), added)
    files["tokenizer_config.json"] = tc
    return files


def write_folder(name: str, files: dict[str, object]) -> Path:
    out = OUT / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for fname, content in files.items():
        data = content if isinstance(content, bytes) else (json.dumps(content, ensure_ascii=False, indent=2) + "\n").encode("utf-8")
        if len(data) > GZIP_ABOVE:
            with open(out / (fname + ".gz"), "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0, filename="") as gz:
                gz.write(data)
        else:
            (out / fname).write_bytes(data)
    return out


def unpack(src: Path, dst: Path) -> Path:
    """Copy a fixture folder, decompressing *.gz (what the tests do too)."""
    dst.mkdir(parents=True, exist_ok=True)
    for p in src.iterdir():
        if p.suffix == ".gz":
            (dst / p.stem).write_bytes(gzip.decompress(p.read_bytes()))
        else:
            shutil.copy(p, dst / p.name)
    return dst


def vectors(name: str) -> list[tuple[str, list[int]]]:
    inp = (VOCABS / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")[:-1]
    out = (VOCABS / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").split("\n")[:-1]
    assert len(inp) == len(out), (name, len(inp), len(out))
    return [(t, [int(x) for x in o.split()]) for t, o in zip(inp, out)]


def chktxt() -> str:
    """get_vocab_base_pre's chktxt, read from the reference converter itself."""
    import ast
    import re

    src = (LLAMA_CPP / "conversion" / "base.py").read_text(encoding="utf-8")
    return ast.literal_eval(re.search(r"\n\s+chktxt = ('.*')\n", src).group(1))


def verify(name: str, folder: Path) -> None:
    """chkhsh (BPE) and .inp -> .out through transformers' AutoTokenizer (and sentencepiece for SPM)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    bad = [(t, ids, tok.encode(t, add_special_tokens=False)) for t, ids in vectors(name)
           if tok.encode(t, add_special_tokens=False) != ids]
    if name in EXPECTED_PRE:
        h = sha256(str(tok.encode(chktxt())).encode()).hexdigest()
        assert h == EXPECTED_PRE[name], f"{name}: chkhsh {h} != {EXPECTED_PRE[name]}"
    if (folder / "tokenizer.model").is_file():
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
        bad += [(t, ids, sp.encode(t)) for t, ids in vectors(name) if ids and max(ids) < 32000 and sp.encode(t) != ids]
    for t, want, got in bad[:5]:
        print(f"  {name}: {t!r}: want {want} got {got}")
    print(f"{name}: {len(vectors(name)) * (2 if (folder / 'tokenizer.model').is_file() else 1) - len(bad)} vector checks ok, {len(bad)} mismatches")
    assert not bad, name


def main() -> None:
    builders = {"gpt-2": gpt2, "llama-bpe": llama_bpe, "qwen2": qwen2, "llama-spm": lambda: spm_folder("llama-spm"),
                "phi-3": lambda: spm_folder("phi-3")}
    for name in sys.argv[1:] or builders:
        out = write_folder(name, builders[name]())
        with tempfile.TemporaryDirectory() as d:
            verify(name, unpack(out, Path(d) / name))
        print(f"wrote {out.relative_to(ROOT)}: {', '.join(sorted(p.name for p in out.iterdir()))}")


if __name__ == "__main__":
    main()
