#!/usr/bin/env python3
"""Build fixtures/tokenizers/kimi-k2/: a Kimi K2-shaped tiktoken tokenizer folder at test size.

Kimi K2's own tiktoken.model cannot be fetched here, so the ranks come from a real tiktoken
vocabulary the tests already hold: Llama 3's (fixtures/tokenizers/llama-bpe, whose ids are
tiktoken ranks), its first N_BASE ranks. Written as Kimi K2 ships them:
  tiktoken.model          `base64(token bytes) rank` per line
  tokenizer_config.json   tokenizer_class TikTokenTokenizer + auto_map to tokenization_kimi.py,
                          the special tokens after the base ranks (Kimi K2's names, its layout:
                          N_BASE + 256 reserved ids, the last two past vocab_size), a chat template
The folder's tokenization_kimi.py (written by hand, not by this script) is the TikTokenTokenizer
remote code the converter loads with trust_remote_code (it needs tiktoken in the reference venv).
Deterministic; run with the project's Python: python scripts/make_kimi_fixture.py
"""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "fixtures" / "tokenizers" / "llama-bpe" / "tokenizer.json.gz"
OUT = ROOT / "fixtures" / "tokenizers" / "kimi-k2"
N_BASE = 3840  # base ranks; vocab_size 4096 = N_BASE + 256, as Kimi K2's 163584 + 256 = 163840
# Kimi K2's added_tokens_decoder, by offset from the first special id (163584)
SPECIALS = {0: "[BOS]", 1: "[EOS]", 2: "<|im_end|>", 3: "<|im_user|>", 4: "<|im_assistant|>", 6: "<|start_header_id|>",
            7: "<|end_header_id|>", 9: "[EOT]", 10: "<|im_system|>", 11: "<|tool_calls_section_begin|>",
            12: "<|tool_calls_section_end|>", 13: "<|tool_call_begin|>", 14: "<|tool_call_argument_begin|>",
            15: "<|tool_call_end|>", 17: "<|im_middle|>", 254: "[UNK]", 255: "[PAD]"}
CHAT_TEMPLATE = ("{%- for message in messages -%}{%- if message['role'] == 'system' -%}<|im_system|>system<|im_middle|>"
                 "{%- elif message['role'] == 'user' -%}<|im_user|>user<|im_middle|>{%- else -%}"
                 "<|im_assistant|>assistant<|im_middle|>{%- endif -%}{{ message['content'] }}<|im_end|>{%- endfor -%}"
                 "{%- if add_generation_prompt -%}<|im_assistant|>assistant<|im_middle|>{%- endif -%}")


def byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, char -> byte (kquant's tiktoken port has the other direction)."""
    from kquant.vocab.tiktoken import byte_encoder

    return {c: b for b, c in enumerate(byte_encoder())}


def main() -> None:
    vocab = json.loads(gzip.decompress(SRC.read_bytes()))["model"]["vocab"]
    dec = byte_decoder()
    ranks = sorted((i, bytes(dec[c] for c in t)) for t, i in vocab.items() if i < N_BASE)
    assert [i for i, _ in ranks] == list(range(N_BASE))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "tiktoken.model").write_bytes(b"".join(base64.b64encode(t) + b" %d\n" % i for i, t in ranks))
    added = {str(N_BASE + k): {"content": v, "lstrip": False, "normalized": False, "rstrip": False,
                               "single_word": False, "special": True} for k, v in SPECIALS.items()}
    config = {
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_end|>", "<|im_user|>", "<|im_assistant|>", "<|start_header_id|>",
                                      "<|end_header_id|>", "[EOT]", "<|im_system|>", "<|im_middle|>"],
        "auto_map": {"AutoTokenizer": ["tokenization_kimi.TikTokenTokenizer", None]},
        "bos_token": "[BOS]", "chat_template": CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
        "eos_token": "[EOS]", "extra_special_tokens": {}, "model_max_length": 131072, "pad_token": "[PAD]",
        "tokenizer_class": "TikTokenTokenizer", "unk_token": "[UNK]",
    }
    (OUT / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


if __name__ == "__main__":
    main()
