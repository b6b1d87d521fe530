"""kquant.vocab.tiktoken: Kimi K2's tiktoken vocabulary (tiktoken.model + Moonshot's TikTokenTokenizer).

The whole-file comparison with convert_hf_to_gguf.py is test_arch's "kimi-k2" case; here: the
encoding behind the pre-tokenizer hash equals tiktoken's (through the fixture's remote code, in the
reference venv), and malformed or unsupported tokenizer folders are refused clearly.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from kquant.errors import InputError, UnsupportedError
from kquant.io.gguf_kv import KVRecorder
from kquant.models import family
from kquant.vocab import CHKTXT, PRE_TOKENIZER_HASHES
from kquant.vocab.tiktoken import KimiTokenizer, kimi_chkhsh, read_tiktoken_bpe, rebuild_merges
from test_arch import EXTRA_PRE_HASHES
from test_vocab import REFCONV_PYTHON, VOCABS, hp_for, tokdir  # noqa: F401  (tokdir: the fixture folders)

KIMI_K2_HASH = "81212dc7cdb7e0c1074ca62c5aeab0d43c9f52b8a737be7b12a777c953027890"  # Kimi K2's own tiktoken.model
FIXTURE_HASH = next(h for h, name in EXTRA_PRE_HASHES.items() if name == "kimi-k2")
EDGE_TEXTS = [
    "Hello World's 'RE ÀÉÎ ǅungla Straße ДОМдом 我想在apple工作 ｈｅｌｌｏ  \u0301x \u00a0\u2003 y\r\n\r\n z  \t\n",
    "ab\u0300c ÅB'S 日本語テキスト한국어 ٣٤٥٦ ①②③ 𝟙𝟚 \u200b\u200d A\u0308 I'LL you'D",
    "<|im_end|>x[BOS][EOS]y<|reserved_token_3900|>[PAD]<|im_end",  # special tokens are allowed in the text
    "   \n\n  a  \r\r\n\t", "x" * 3000 + " " * 50 + "1234567", "",
]


def kimi_vocab(folder: Path, tokenizer_pre=None, vocab_size=4096) -> dict:
    rec = KVRecorder("deepseek2")
    family("DeepseekV3ForCausalLM")(hp_for("deepseek_v3", vocab_size), kv=rec, tok_folder=folder).write_vocab(tokenizer_pre)
    return {k: v for k, _, v in rec.entries()}


def test_fixture_hash_and_vocabulary(tokdir):
    d = tokdir("kimi-k2", copy=False)
    assert PRE_TOKENIZER_HASHES[KIMI_K2_HASH] == "kimi-k2"
    tok = KimiTokenizer(d)
    assert kimi_chkhsh(tok) == FIXTURE_HASH
    kv = kimi_vocab(d)
    assert kv["tokenizer.ggml.model"] == "gpt2" and kv["tokenizer.ggml.pre"] == "kimi-k2"
    tokens, types = list(kv["tokenizer.ggml.tokens"]), list(kv["tokenizer.ggml.token_type"])
    # 3840 ranks, then the 256 special ids that fit in vocab_size (Kimi K2's layout: 163584 + 256)
    assert len(tokens) == 4096 and types == [1] * 3840 + [3] * 256
    assert tokens[3840:3843] == ["[BOS]", "[EOS]", "<|im_end|>"] and tokens[3845] == "<|reserved_token_3845|>"
    assert tokens[-2:] == ["[UNK]", "[PAD]"]
    # special ids come from config.json only (none here: no tokenizer.json to look names up in)
    assert "tokenizer.chat_template" in kv and "tokenizer.ggml.bos_token_id" not in kv
    # every multi-byte rank is one merge of two lower ones (a real BPE vocabulary)
    assert len(kv["tokenizer.ggml.merges"]) == sum(len(t) > 1 for t in read_tiktoken_bpe(d / "tiktoken.model"))
    # a vocabulary larger than the ranks + specials: [PAD{i}] (unused) fills the rest
    kv = kimi_vocab(d, vocab_size=4200)
    assert list(kv["tokenizer.ggml.tokens"])[4098:4100] == ["[PAD4098]", "[PAD4099]"]
    assert list(kv["tokenizer.ggml.token_type"])[4096:] == [3, 3] + [5] * 102


def test_rebuilt_merges_follow_the_ranks():
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"ab": 3, b"bc": 4, b"abc": 5, b"cab": 6, b"ca": 7, b"acb": 8}
    vocab, merges = rebuild_merges(ranks)
    # abc: a+b (3) first, then ab+c; cab: only merges below its rank 6 apply, so ca (7) waits: c + ab;
    # acb: no pair of it is a token, three parts: no merge
    assert merges == ["a b", "b c", "ab c", "c ab", "c a"]
    assert vocab == {"a": 0, "b": 1, "c": 2, "ab": 3, "bc": 4, "abc": 5, "cab": 6, "ca": 7, "acb": 8}


@pytest.mark.skipif(not REFCONV_PYTHON, reason="set KQUANT_REFCONV_PYTHON to the reference venv's python (scripts/setup_refconv.sh)")
def test_encoding_matches_tiktoken(tokdir, tmp_path):
    """kquant's encode (Oniguruma split + byte-pair merges) == the fixture's TikTokenTokenizer.encode
    (tiktoken), on the hash text, llama.cpp's tokenizer test texts and edge cases."""
    d = tokdir("kimi-k2")
    texts = [CHKTXT, *EDGE_TEXTS]
    for p in sorted(VOCABS.glob("ggml-vocab-*.gguf.inp")):
        texts += p.read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")[:-1]
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    script = ("import json, sys\nfrom transformers import AutoTokenizer\n"
              "tok = AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
              "print(json.dumps([tok.encode(t) for t in json.load(open(sys.argv[2]))]))\n")
    r = subprocess.run([REFCONV_PYTHON, "-c", script, str(d), str(tmp_path / "texts.json")], capture_output=True,
                       text=True, stdin=subprocess.DEVNULL, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    ref = json.loads(r.stdout.strip().splitlines()[-1])
    tok = KimiTokenizer(d)
    assert len(texts) > 50
    for t, ids in zip(texts, ref):
        assert tok.encode(t) == ids, t


@pytest.mark.parametrize("content,match", [
    (b"IQ==\n", "error parsing line"),
    (b"IQ== 0 1\n", "error parsing line"),
    (b"IQ== x\n", "error parsing line"),
    (b"IQ= 0\n", "error parsing line"),  # bad padding
    (b"IQ== -1\n", "outside"),
    (b"IQ== 0\nIg== 0\n", "duplicate ranks"),
])
def test_malformed_tiktoken_model(tokdir, content, match):
    d = tokdir("kimi-k2")
    (d / "tiktoken.model").write_bytes(content)
    with pytest.raises(InputError, match=match):
        kimi_vocab(d)


def test_refusals_and_override(tokdir):
    d = tokdir("kimi-k2")
    tc = json.loads((d / "tokenizer_config.json").read_text())
    # the override skips the hash; only kimi-k2 is a tiktoken pre-tokenizer the converter writes
    used = max(KimiTokenizer(d).encode(CHKTXT))  # a rank the hash text uses, left out: another hash
    lines = (d / "tiktoken.model").read_bytes().splitlines(keepends=True)
    (d / "tiktoken.model").write_bytes(b"".join(line for line in lines if not line.endswith(b" %d\n" % used)))
    with pytest.raises(UnsupportedError, match="chkhsh .*--tokenizer-pre kimi-k2") as e:
        kimi_vocab(d)
    assert "\n" not in str(e.value)
    assert kimi_vocab(d, tokenizer_pre="kimi-k2")["tokenizer.ggml.pre"] == "kimi-k2"
    with pytest.raises(UnsupportedError, match="only 'kimi-k2'"):
        kimi_vocab(d, tokenizer_pre="llama-bpe")
    # TikTokenTokenizer.__init__ looks up bos/eos/pad/unk among the special tokens
    (d / "tokenizer_config.json").write_text(json.dumps({**tc, "unk_token": "<unk>"}))
    with pytest.raises(InputError, match="unk_token '<unk>' is not one of"):
        kimi_vocab(d)
    (d / "tokenizer_config.json").write_text(json.dumps({k: v for k, v in tc.items() if k != "pad_token"}))
    with pytest.raises(InputError, match="pad_token 'None'"):
        kimi_vocab(d)
    # another tokenizer class with a tiktoken.model, or no tokenizer at all
    (d / "tokenizer_config.json").write_text(json.dumps({**tc, "tokenizer_class": "TikTokenV3"}))
    with pytest.raises(UnsupportedError, match="no tokenizer.json, nor a Kimi tiktoken.model"):
        kimi_vocab(d)
    (d / "tokenizer_config.json").write_text(json.dumps(tc))
    (d / "tiktoken.model").unlink()
    with pytest.raises(UnsupportedError, match="no tokenizer.json, nor a Kimi tiktoken.model"):
        kimi_vocab(d)
