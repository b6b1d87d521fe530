"""Tokenizer files -> GGUF vocabulary metadata, as convert_hf_to_gguf.py writes it.

special.py        SpecialVocab (special token ids, add_*_token flags, merges, chat template), token types
sentencepiece.py  tokenizer.model reader, _create_vocab_sentencepiece / _set_vocab_sentencepiece
bpe.py            tokenizer.json through `tokenizers`, the pre-tokenizer hash table, _set_vocab_gpt2
tiktoken.py       tiktoken.model (Kimi K2's TikTokenTokenizer): ranks, rebuilt merges, the kimi-k2 hash
Which of these a model uses is its family's `set_vocab` (kquant.models).
"""

from .bpe import (
    CHKTXT, PRE_TOKENIZER_HASHES, HFTokenizer, get_vocab_base, known_pre_tokenizers, llama_hf_kind, llama_hf_vocab, set_vocab_gpt2,
    vocab_base_pre,
)
from .sentencepiece import (
    SPM_ADDED_SCORE, SPM_PAD_SCORE, SpmModel, create_vocab_sentencepiece, read_spm_model, set_vocab_sentencepiece,
    write_spm_vocab,
)
from .special import (
    BYTE, CONTROL, NORMAL, SPIECE_UNDERLINE, UNKNOWN, UNUSED, USER_DEFINED, SpecialVocab, added_tokens_decoder,
    check_token_id, check_tokenizer_files, clear_tokenizer_cache, does_token_look_special, read_object, read_tokenizer_json,
)
from .tiktoken import KimiTokenizer, is_kimi_tokenizer, read_tiktoken_bpe, set_vocab_kimi

__all__ = [
    "BYTE", "CHKTXT", "KimiTokenizer", "is_kimi_tokenizer", "read_tiktoken_bpe", "set_vocab_kimi", "CONTROL", "NORMAL", "PRE_TOKENIZER_HASHES", "SPIECE_UNDERLINE", "SPM_ADDED_SCORE",
    "SPM_PAD_SCORE", "UNKNOWN", "UNUSED", "USER_DEFINED", "HFTokenizer", "SpecialVocab", "SpmModel",
    "added_tokens_decoder", "check_token_id", "check_tokenizer_files", "clear_tokenizer_cache", "create_vocab_sentencepiece", "does_token_look_special",
    "get_vocab_base", "known_pre_tokenizers", "llama_hf_kind", "llama_hf_vocab", "read_object", "read_spm_model",
    "read_tokenizer_json", "set_vocab_gpt2", "set_vocab_sentencepiece", "vocab_base_pre", "write_spm_vocab",
]
