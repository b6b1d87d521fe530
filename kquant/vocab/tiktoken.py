"""tiktoken vocabularies: Kimi K2's `tiktoken.model` (with Moonshot's TikTokenTokenizer remote code),
written as convert_hf_to_gguf.py writes them, without tiktoken or transformers.

Ports, from llama.cpp as vendored in llama-cpp-python 0.3.36: conversion/deepseek.py
DeepseekV2Model.set_vocab (its "kimi-k2" branch), conversion/qwen.py QwenModel.bpe and
QwenModel.token_bytes_to_string; from tiktoken 0.14.0: load.py load_tiktoken_bpe, and the
encoding the converter hashes (core.py Encoding.encode with allowed_special="all", src/lib.rs
_encode_native / byte_pair_encode). What the converter gets from the checkpoint's
tokenization_kimi.py (Moonshot's TikTokenTokenizer.__init__) is reproduced from its public
behaviour: the special tokens follow the base ranks (num_reserved_special_tokens + 2 ids), named
from tokenizer_config.json's added_tokens_decoder or `<|reserved_token_{i}|>`, and text is split by
KIMI_PAT_STR before the byte-pair merges. The regex runs in the `tokenizers` library (Oniguruma)
instead of tiktoken's fancy-regex; tests check both give the same ids.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from functools import lru_cache
from hashlib import sha256
from pathlib import Path

from ..errors import InputError, UnsupportedError
from ..io import jsonio
from ..io.gguf_kv import TOK_LIST, TOK_MERGES, TOK_MODEL, TOK_PRE, TOK_TYPE, KVRecorder, StringArray
from .special import CONTROL, NORMAL, TOKENIZER_MAX_BYTES, UNUSED, SpecialVocab, added_tokens_decoder, read_object

TIKTOKEN_FILE = "tiktoken.model"  # tokenization_kimi.py VOCAB_FILES_NAMES
KIMI_TOKENIZER_CLASS = "TikTokenTokenizer"
KIMI_NUM_RESERVED_SPECIAL_TOKENS = 256  # TikTokenTokenizer.num_reserved_special_tokens
# TikTokenTokenizer.pat_str (Kimi K2 / Kimi Linear): Han runs, cased words with English contractions,
# 1-3 digits, punctuation runs, newlines, other whitespace
KIMI_PAT_STR = "|".join([
    r"""[\p{Han}]+""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])
RANK_MAX = (1 << 32) - 1  # tiktoken's Rank is a u32


@lru_cache(maxsize=1)
def byte_encoder() -> tuple[str, ...]:
    """GPT-2's bytes_to_unicode (transformers convert_slow_tokenizer.bytes_to_unicode): byte -> char."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return tuple(chr(table[b]) for b in range(256))


# conversion/qwen.py QwenModel.token_bytes_to_string
def token_bytes_to_string(b: bytes) -> str:
    enc = byte_encoder()
    return "".join(enc[c] for c in b)


# tiktoken load.py load_tiktoken_bpe (a local file: read as it is)
def read_tiktoken_bpe(path: Path, max_bytes: int = TOKENIZER_MAX_BYTES) -> dict[bytes, int]:
    """{token bytes: rank} in file order, from lines `base64(token) rank`. Refuses what tiktoken
    refuses (a malformed line, a rank outside u32, two tokens of one rank)."""
    contents = jsonio.read_bytes(path, max_bytes, "tiktoken vocabulary")
    ret: dict[bytes, int] = {}
    for line in contents.splitlines():
        if not line:
            continue
        fields = line.split()
        try:
            token, rank_text = fields
            ret[base64.b64decode(token)] = rank = int(rank_text)
        except (ValueError, binascii.Error):
            raise InputError(f"{path}: error parsing line {line[:80]!r}") from None
        if not 0 <= rank <= RANK_MAX:
            raise InputError(f"{path}: rank {rank} of {token[:40]!r} is outside 0..{RANK_MAX}")
    if len(set(ret.values())) != len(ret):  # tiktoken CoreBPE::new: encoder and decoder of equal length
        raise InputError(f"{path}: duplicate ranks (two tokens share a rank)")
    return ret


# conversion/qwen.py QwenModel.bpe
def bpe(ranks: dict[bytes, int], token: bytes, max_rank: int | None = None) -> list[bytes]:
    """Merge the adjacent pair of lowest rank (leftmost on ties) until none is below max_rank."""
    parts = [token[i:i + 1] for i in range(len(token))]
    get = ranks.get
    while len(parts) > 1:
        min_idx = -1
        min_rank = None
        for i in range(len(parts) - 1):
            r = get(parts[i] + parts[i + 1])
            if r is not None and (min_rank is None or r < min_rank):
                min_idx, min_rank = i, r
        if min_rank is None or (max_rank is not None and min_rank >= max_rank):
            break
        parts[min_idx:min_idx + 2] = [parts[min_idx] + parts[min_idx + 1]]
    return parts


# conversion/deepseek.py DeepseekV2Model.set_vocab (kimi-k2): merges rebuilt from the ranks
def rebuild_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[str]]:
    """({token string: rank}, merges) as the converter builds them, in the file's order."""
    vocab: dict[str, int] = {}
    merges: list[str] = []
    for token, rank in ranks.items():
        vocab[token_bytes_to_string(token)] = rank
        if len(token) == 1:
            continue
        merged = bpe(ranks, token, max_rank=rank)
        if len(merged) == 2:
            merges.append(token_bytes_to_string(merged[0]) + " " + token_bytes_to_string(merged[1]))
    return vocab, merges


def _content(v) -> str:
    """str() of a tokenizer_config special token entry (a string or an AddedToken object)."""
    if isinstance(v, dict) and isinstance(v.get("content"), str):
        return v["content"]
    return str(v)


def is_kimi_tokenizer(folder: Path) -> bool:
    """A tiktoken.model with tokenizer_config.json naming Moonshot's TikTokenTokenizer."""
    tc_path = folder / "tokenizer_config.json"
    if not (folder / TIKTOKEN_FILE).is_file() or not tc_path.is_file():
        return False
    return read_object(tc_path).get("tokenizer_class") == KIMI_TOKENIZER_CLASS


class KimiTokenizer:
    """What the converter reads from AutoTokenizer.from_pretrained(trust_remote_code=True) on a Kimi
    checkpoint: the mergeable ranks, the special tokens, and encode() for the pre-tokenizer hash."""

    def __init__(self, folder: Path, max_bytes: int = TOKENIZER_MAX_BYTES):
        tc_path = folder / "tokenizer_config.json"
        tc = read_object(tc_path)
        if tc.get("tokenizer_class") != KIMI_TOKENIZER_CLASS:
            raise UnsupportedError(f"{tc_path}: tokenizer_class {tc.get('tokenizer_class')!r} with {TIKTOKEN_FILE} "
                                   f"(only Moonshot's {KIMI_TOKENIZER_CLASS} is supported)")
        self.ranks = read_tiktoken_bpe(folder / TIKTOKEN_FILE, max_bytes)
        # TikTokenTokenizer.__init__: the special tokens follow the base vocabulary
        names = {i: v["content"] for i, v in added_tokens_decoder(tc_path, tc).items()}
        n_base = len(self.ranks)
        self.special_tokens: dict[str, int] = {
            names.get(i, f"<|reserved_token_{i}|>"): i for i in range(n_base, n_base + KIMI_NUM_RESERVED_SPECIAL_TOKENS + 2)}
        # __init__ looks each up (a KeyError upstream); its defaults: [BOS], [EOS], None, None
        for typ, default in (("bos", "[BOS]"), ("eos", "[EOS]"), ("pad", None), ("unk", None)):
            name = _content(tc.get(f"{typ}_token", default))
            if name not in self.special_tokens:
                raise InputError(f"{tc_path}: {typ}_token {name!r} is not one of the tokenizer's special tokens")
        self.eos_id = self.special_tokens[_content(tc.get("eos_token", "[EOS]"))]

    # tiktoken core.py Encoding.encode(text, allowed_special="all") -> src/lib.rs CoreBPE::_encode_native
    def encode(self, text: str) -> list[int]:
        """Token ids of `text` as TikTokenTokenizer.encode gives them (texts under 25,000 characters,
        which it does not split further). Special tokens in the text are matched leftmost, the longest
        first (tiktoken's alternation order is a hash map's)."""
        out: list[int] = []
        specials = sorted(self.special_tokens, key=len, reverse=True)
        start = 0
        while True:
            hit = None
            for s in specials:
                if s and (j := text.find(s, start)) >= 0 and (hit is None or j < hit[0]):
                    hit = (j, s)
            end = len(text) if hit is None else hit[0]
            for piece in split_pieces(text[start:end]):
                out.extend(self._encode_piece(piece.encode("utf-8")))
            if hit is None:
                return out
            out.append(self.special_tokens[hit[1]])
            start = hit[0] + len(hit[1])

    # src/lib.rs byte_pair_encode (_byte_pair_merge: the lowest-ranked adjacent pair, leftmost first)
    def _encode_piece(self, piece: bytes) -> list[int]:
        if (r := self.ranks.get(piece)) is not None:
            return [r]
        try:
            return [self.ranks[p] for p in bpe(self.ranks, piece)]
        except KeyError as e:
            raise InputError(f"{TIKTOKEN_FILE}: byte {e.args[0]!r} has no rank (tiktoken panics on it)") from None


@lru_cache(maxsize=1)
def _splitter():
    from tokenizers import Regex, pre_tokenizers

    # the matches of KIMI_PAT_STR, what falls between them dropped (regex find_iter)
    return pre_tokenizers.Split(Regex(KIMI_PAT_STR), behavior="removed", invert=True)


def split_pieces(text: str) -> list[str]:
    """KIMI_PAT_STR's matches in `text`, in order."""
    return [p for p, _ in _splitter().pre_tokenize_str(text)] if text else []


def kimi_chkhsh(tok: KimiTokenizer) -> str:
    from .bpe import CHKTXT

    return sha256(str(tok.encode(CHKTXT)).encode()).hexdigest()


# conversion/deepseek.py DeepseekV2Model.set_vocab, the AutoTokenizer(trust_remote_code) branch
# (and conversion/kimi_linear.py KimiLinearModel.set_vocab: `eos_from_tokenizer`, the eos id overridden
# with the tokenizer's after the special vocabulary)
def set_vocab_kimi(rec: KVRecorder, folder: Path, hp: dict, tokenizer_pre: str | None,
                   max_bytes: int = TOKENIZER_MAX_BYTES, eos_from_tokenizer: bool = False) -> int:
    from .bpe import PRE_TOKENIZER_HASHES

    tok = KimiTokenizer(folder, max_bytes)
    if tokenizer_pre is None:
        chkhsh = kimi_chkhsh(tok)
        tokenizer_pre = PRE_TOKENIZER_HASHES.get(chkhsh)
        if tokenizer_pre is None:
            raise UnsupportedError(f"{folder / TIKTOKEN_FILE}: BPE pre-tokenizer not recognized (chkhsh {chkhsh}); "
                                   "pass --tokenizer-pre kimi-k2 if this is Kimi K2's tokenizer")
    if tokenizer_pre != "kimi-k2":
        raise UnsupportedError(f"{folder / TIKTOKEN_FILE}: pre-tokenizer {tokenizer_pre!r} with a tiktoken vocabulary "
                               "(the converter supports only 'kimi-k2' there)")
    vocab, merges = rebuild_merges(tok.ranks)
    vocab_size = hp["vocab_size"]
    reverse_vocab = {id_: t for t, id_ in {**vocab, **tok.special_tokens}.items()}
    special_ids = set(tok.special_tokens.values())
    tokens: list[str] = []
    toktypes: list[int] = []
    for i in range(vocab_size):
        t = reverse_vocab.get(i)
        if t is None:
            tokens.append(f"[PAD{i}]")
            toktypes.append(UNUSED)
        else:
            tokens.append(t)
            toktypes.append(CONTROL if i in special_ids else NORMAL)
    rec.add_string(TOK_MODEL, "gpt2")
    rec.add_string(TOK_PRE, tokenizer_pre)
    rec.add_array(TOK_LIST, _strings(tokens, folder))
    rec.add_array(TOK_TYPE, toktypes)
    rec.add_array(TOK_MERGES, _strings(merges, folder))
    SpecialVocab(folder, load_merges=False).add_to_gguf(rec)
    if eos_from_tokenizer:
        rec.add_special_token_id("eos", tok.eos_id)
    return len(tokens)


def _strings(items: Iterable[str], folder: Path) -> StringArray:
    try:
        return StringArray(items)
    except ValueError as e:  # a special token name that is not valid UTF-8 text
        raise InputError(f"{folder}: {e}") from None
