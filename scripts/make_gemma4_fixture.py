#!/usr/bin/env python3
"""Build fixtures/tokenizers/gemma4/: Gemma 4's tokenizer, cut to test size.

Gemma 4's tokenizer.json cannot be fetched here (no npm package holds it), but llama.cpp ships its
vocabulary (models/ggml-vocab-gemma-4.gguf: the 262144 tokens, scores, types and 514906 merges the
converter wrote from the real tokenizer) with test vectors (.inp texts, .out ids transformers gave).
This script rebuilds the full tokenizer.json from it (SentencePiece-style BPE as Gemma ships it:
" " -> "▁" normalizer, byte fallback, no pre-tokenizer) and checks that it encodes every .inp text
to its .out ids, then writes the fixture: the first N_KEEP ids (the control, tool and turn tokens,
the 256 byte tokens and the most frequent pieces) with the merges among them, and Gemma 4's
tokenizer_config.json as the Hub ships it (transformers 5: named special tokens as plain keys), but
for one key: the Hub's `extra_special_tokens` is a list, `["<|video|>"]`, on which transformers 4.57.6
(llama.cpp's converter's pinned version) fails; here it is an object of the named tokens in the cut
vocabulary, which 4.57.6 reads (tests/test_arch.py writes the list form to check kquant refuses it).
The multimodal markers (ids 255999-258884) fall outside the cut; their names stay, as plain keys.
Run with the project's Python (tokenizers, gguf): python scripts/make_gemma4_fixture.py
"""

from __future__ import annotations

import gzip
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LLAMA_CPP = Path(os.environ.get("KQUANT_LLAMA_CPP", "/work/ref/llama.cpp"))
VOCAB = LLAMA_CPP / "models" / "ggml-vocab-gemma-4.gguf"
OUT = ROOT / "fixtures" / "tokenizers" / "gemma4"
N_KEEP = 4096
CONTROL, USER_DEFINED, BYTE = 3, 4, 6
# Gemma 4's tokenizer_config.json (transformers 5 save_pretrained), chat template aside
TOKENIZER_CONFIG = {
    "audio_token": "<|audio|>", "backend": "tokenizers", "boa_token": "<|audio>", "boi_token": "<|image>",
    "bos_token": "<bos>", "eoa_token": "<audio|>", "eoc_token": "<channel|>", "eoi_token": "<image|>",
    "eos_token": "<eos>", "eot_token": "<turn|>", "escape_token": "<|\"|>", "etc_token": "<tool_call|>",
    "etd_token": "<tool|>", "etr_token": "<tool_response|>",
    "image_token": "<|image|>", "mask_token": "<mask>", "model_max_length": 1000000000000000019884624838656,
    "pad_token": "<pad>", "padding_side": "left", "processor_class": "Gemma4Processor", "soc_token": "<|channel>",
    "sot_token": "<|turn>", "stc_token": "<|tool_call>", "std_token": "<|tool>", "str_token": "<|tool_response>",
    "think_token": "<|think|>", "tokenizer_class": "GemmaTokenizer", "unk_token": "<unk>",
}
NAMED_IN_CUT = ("sot_token", "eot_token", "soc_token", "eoc_token", "think_token", "escape_token", "str_token",
                "etr_token", "stc_token", "etc_token", "std_token", "etd_token")
TOKENIZER_CONFIG["extra_special_tokens"] = {k: TOKENIZER_CONFIG[k] for k in NAMED_IN_CUT}
TOKENIZER_CONFIG = dict(sorted(TOKENIZER_CONFIG.items()))
CHAT_TEMPLATE = ("{{ bos_token }}{%- for message in messages -%}<|turn>{{ 'model' if message['role'] == 'assistant' "
                 "else message['role'] }}\n{{ message['content'] | trim }}<turn|>\n{%- endfor -%}"
                 "{%- if add_generation_prompt -%}<|turn>model\n{%- endif -%}")


def read_vocab() -> dict:
    sys.path.insert(0, str(LLAMA_CPP / "gguf-py"))
    from gguf import GGUFReader

    r = GGUFReader(VOCAB)
    f = {k: v.contents() for k, v in r.fields.items() if k.startswith("tokenizer.")}
    return {"tokens": f["tokenizer.ggml.tokens"], "types": f["tokenizer.ggml.token_type"],
            "merges": f["tokenizer.ggml.merges"]}


def tokenizer_json(tokens: list[str], types: list[int], merges: list[str]) -> dict:
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": types[i] == CONTROL}
             for i, t in enumerate(tokens) if types[i] in (CONTROL, USER_DEFINED)]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
        "pre_tokenizer": None, "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": [m.split(" ", 1) for m in merges]},
    }


def check(tj: dict) -> None:
    """The rebuilt full tokenizer encodes llama.cpp's test texts to transformers' ids."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(json.dumps(tj))
    base = VOCAB.with_name(VOCAB.name)
    inp = Path(str(base) + ".inp").read_text(encoding="utf-8").removesuffix("\n__ggml_vocab_test__\n").split("\n__ggml_vocab_test__\n")
    out = Path(str(base) + ".out").read_text(encoding="utf-8").removesuffix("\n").split("\n")
    assert len(inp) == len(out)
    bad = [(t, o, tok.encode(t, add_special_tokens=False).ids) for t, o in zip(inp, out)
           if tok.encode(t, add_special_tokens=False).ids != [int(x) for x in o.split()]]
    assert not bad, bad[:3]
    print(f"full vocabulary: {len(inp)} test texts encode as transformers did")


def main() -> None:
    v = read_vocab()
    tokens, types, merges = v["tokens"], [int(t) for t in v["types"]], v["merges"]
    assert types[238] == BYTE and types[493] == BYTE and N_KEEP > 493
    check(tokenizer_json(tokens, types, merges))
    keep = set(tokens[:N_KEEP])
    cut = [m for m in merges if (p := m.split(" ", 1))[0] in keep and p[1] in keep and p[0] + p[1] in keep]
    tj = tokenizer_json(tokens[:N_KEEP], types[:N_KEEP], cut)
    OUT.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(tj, ensure_ascii=False, indent=2) + "\n").encode("utf-8")
    with open(OUT / "tokenizer.json.gz", "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0, filename="") as gz:
        gz.write(data)
    (OUT / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    (OUT / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
    print(f"{OUT}: {N_KEEP} tokens, {len(cut)} merges")


if __name__ == "__main__":
    main()
