"""XVERSE: conversion/xverse.py XverseModel (llama.cpp as vendored in llama-cpp-python 0.3.36).

Llama's module layout and TextModel's parameters plus the "Meta AI original pth" data layout and the rotary
dimension; Q/K rows permuted back as XverseModel._reverse_hf_permute does (for K with fewer KV heads it
groups by n_head // n_head_kv, as upstream). The vocabulary is the tokenizer's own id -> token table written
as a "llama" (SentencePiece-type) vocabulary: byte tokens, added tokens CONTROL or USER_DEFINED, no scores.
transformers 4.57.6 has no config class for it: config.json is read as it is."""

from __future__ import annotations

import re

from gguf import MODEL_ARCH

from ..errors import InputError, UnsupportedError
from ..io.gguf_kv import TOK_LIST, TOK_MODEL, TOK_PRE, TOK_TYPE, StringArray
from .. import vocab as V
from .base import LLAMA_LAYER, TextModel, register
from .hparams import HFConfig
from .llama import qk_permutation

XVERSE_CONFIG = HFConfig("xverse", {}, raw=True)
_BYTE_TOKEN = re.compile(br"<0x[0-9A-Fa-f]{2}>")


@register("XverseForCausalLM")
class XverseModel(TextModel):
    model_arch = MODEL_ARCH.XVERSE
    configs = (XVERSE_CONFIG,)
    layer = LLAMA_LAYER
    inverse_names = True

    def _kv_group(self) -> tuple[int, int]:
        hp = self.hp
        n_head = hp["num_attention_heads"]
        n_kv = hp.get("num_key_value_heads", n_head)
        return n_head, (n_head // n_kv if n_kv is not None and n_kv != n_head else n_head)

    # XverseModel.modify_tensors: _reverse_hf_permute on q_proj / k_proj
    def modify_tensors(self, t, name, gname, base, bid):
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            n_q, n_k = self._kv_group()
            n = n_q if name.endswith("q_proj.weight") else n_k
            return [self.spec(gname, t, row_perm=qk_permutation(t[1][0], n))]
        return super().modify_tensors(t, name, gname, base, bid)

    @classmethod
    def hf_row_order(cls, base, n_rows, n_head, n_head_kv):
        import numpy as np

        if base == "attn_q":
            return np.argsort(qk_permutation(n_rows, n_head))
        if base == "attn_k":
            return np.argsort(qk_permutation(n_rows, n_head // n_head_kv if n_head_kv != n_head else n_head))
        return None

    undo_permute = True  # inspect: head counts for hf_row_order

    # XverseModel.set_vocab
    def set_vocab(self, tokenizer_pre: str | None = None) -> None:
        folder, hp, rec = self.tok_folder, self.hp, self.kv
        if not (folder / "tokenizer.json").is_file():  # upstream asserts it
            raise UnsupportedError(f"{folder}: XVERSE needs tokenizer.json")
        tok = V.HFTokenizer(folder, hp["model_type"])
        vocab_size = hp.get("vocab_size", len(tok.vocab))
        if max(tok.vocab.values()) >= vocab_size:
            raise InputError(f"{folder / 'tokenizer.json'}: vocabulary size exceeds the config's vocab_size {vocab_size}")
        reverse = {i: t for t, i in tok.vocab.items()}
        added = {content for content, _, _ in tok.added.values()}
        tokens: list[str] = []
        toktypes: list[int] = []
        for token_id in range(vocab_size):
            if token_id not in reverse:  # upstream: KeyError
                raise InputError(f"{folder / 'tokenizer.json'}: no token with id {token_id} (vocab_size {vocab_size})")
            text = reverse[token_id].encode("utf-8")
            if text == b"\x00":
                toktype = V.BYTE
                text = f"<{text}>".encode("utf-8")
            elif _BYTE_TOKEN.fullmatch(text):
                toktype = V.BYTE
            elif reverse[token_id] in added:
                toktype = V.CONTROL if tok.added[token_id][1] else V.USER_DEFINED
            else:
                toktype = V.NORMAL
            tokens.append(text.decode("utf-8"))
            toktypes.append(toktype)
        rec.add_string(TOK_MODEL, "llama")
        rec.add_string(TOK_PRE, "default")
        rec.add_array(TOK_LIST, StringArray(tokens))
        rec.add_array(TOK_TYPE, toktypes)
        V.SpecialVocab(folder, n_vocab=len(tokens)).add_to_gguf(rec)

    # XverseModel.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        hp = self.hp
        self.kv.add_string(self.key("tensor_data_layout"), "Meta AI original pth")
        self.u32("rope.dimension_count", hp["hidden_size"] // hp["num_attention_heads"], "hidden_size")
