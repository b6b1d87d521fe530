"""SentencePiece vocabularies: a tokenizer.model (ModelProto) reader and the GGUF vocabulary built from it.

Ports, from llama.cpp as vendored in llama-cpp-python 0.3.36: conversion/base.py
TextModel._create_vocab_sentencepiece and _set_vocab_sentencepiece. Where upstream uses the
sentencepiece library, we read the tokenizer.model protobuf ourselves (`read_spm_model`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..io.gguf_kv import TOK_LIST, TOK_MODEL, TOK_PRE, TOK_SCORES, TOK_TYPE, KVRecorder
from .special import (
    BYTE, CONTROL, NORMAL, SPIECE_UNDERLINE, UNKNOWN, UNUSED, USER_DEFINED, SpecialVocab, added_tokens_decoder,
    TOKENIZER_MAX_BYTES, check_token_id, does_token_look_special, read_object,
)

SPM_PAD_SCORE = -10000.0  # _create_vocab_sentencepiece: score of [PADn] filler
SPM_ADDED_SCORE = -1000.0  # score given to added / user-defined tokens


# ---------------------------------------------------------------------------------------------
# SentencePiece tokenizer.model (ModelProto) reader


@dataclass
class SpmModel:
    """The parts of a SentencePiece ModelProto the converter reads."""

    pieces: list[tuple[str, float, int]]  # (piece, score, type) by id
    model_type: int  # TrainerSpec.model_type: 1 UNIGRAM, 2 BPE, 3 WORD, 4 CHAR


def _varint(buf: bytes, pos: int, path: Path) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise InputError(f"{path}: truncated protobuf (varint at byte {pos})")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise InputError(f"{path}: malformed protobuf varint at byte {pos}")


def _fields(buf: bytes, path: Path):
    """Yield (field number, wire type, value) of one protobuf message; value is int or bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos, path)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, pos = _varint(buf, pos, path)
        elif wt == 1:
            val, pos = buf[pos:pos + 8], pos + 8
        elif wt == 2:
            n, pos = _varint(buf, pos, path)
            val, pos = buf[pos:pos + n], pos + n
        elif wt == 5:
            val, pos = buf[pos:pos + 4], pos + 4
        else:
            raise InputError(f"{path}: not a SentencePiece model (protobuf wire type {wt} at byte {pos})")
        if pos > len(buf):
            raise InputError(f"{path}: truncated protobuf (field {num})")
        yield num, wt, val


def read_spm_model(path: Path) -> SpmModel:
    """Parse tokenizer.model: ModelProto.pieces (1) {piece 1, score 2, type 3} and trainer_spec (2).model_type (3)."""
    import struct

    try:
        if (size := path.stat().st_size) > TOKENIZER_MAX_BYTES:
            raise InputError(f"{path}: {size} bytes, more than any SentencePiece model ({TOKENIZER_MAX_BYTES})")
        buf = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    pieces: list[tuple[str, float, int]] = []
    model_type = 1
    for num, wt, val in _fields(buf, path):
        if num == 1 and wt == 2:
            piece, score, typ = None, 0.0, NORMAL
            for n2, w2, v2 in _fields(val, path):
                if n2 == 1 and w2 == 2:
                    try:
                        piece = v2.decode("utf-8")
                    except UnicodeDecodeError:
                        raise InputError(f"{path}: piece {len(pieces)} is not UTF-8") from None
                elif n2 == 2 and w2 == 5:
                    score = struct.unpack("<f", v2)[0]
                elif n2 == 3 and w2 == 0:
                    typ = v2
            if not piece:
                raise InputError(f"{path}: piece {len(pieces)} is empty")
            if typ not in (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE):
                raise InputError(f"{path}: piece {len(pieces)} has unknown type {typ}")
            pieces.append((piece, score, typ))
        elif num == 2 and wt == 2:
            for n2, w2, v2 in _fields(val, path):
                if n2 == 3 and w2 == 0:
                    model_type = v2
        elif wt not in (0, 1, 2, 5):
            raise InputError(f"{path}: not a SentencePiece model")
    if not pieces:
        raise InputError(f"{path}: not a SentencePiece model (no pieces)")
    seen: dict[str, int] = {}
    for i, (p, _, _) in enumerate(pieces):
        if p in seen:
            raise InputError(f"{path}: piece {p!r} is defined twice (ids {seen[p]} and {i})")
        seen[p] = i
    n_unk = sum(1 for _, _, t in pieces if t == UNKNOWN)
    if n_unk != 1:
        raise InputError(f"{path}: a SentencePiece model needs exactly one unknown piece, found {n_unk}")
    return SpmModel(pieces, model_type)

# conversion/base.py TextModel._create_vocab_sentencepiece
def create_vocab_sentencepiece(folder: Path, hp: dict) -> tuple[list[str], list[float], list[int]]:
    """tokens, scores, token types from tokenizer.model (+ added_tokens.json, tokenizer_config.json)."""
    tokenizer_path = folder / "tokenizer.model"
    if not tokenizer_path.is_file():
        raise FileNotFoundError(f"File not found: {tokenizer_path}")
    spm = read_spm_model(tokenizer_path)
    vocab_size = next((hp[k] for k in ("vocab_size_per_layer_input", "vocab_size") if k in hp), None) or len(spm.pieces)
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    scores = [SPM_PAD_SCORE] * vocab_size
    toktypes = [UNUSED] * vocab_size
    for token_id, (piece, score, typ) in enumerate(spm.pieces):
        if token_id >= vocab_size:
            break  # upstream: "ignore tokens from {token_id}: id is out of range"
        toktype = NORMAL
        if typ == UNKNOWN:
            toktype = UNKNOWN
        elif typ == CONTROL:
            toktype = CONTROL
        elif typ == UNUSED:
            toktype = UNUSED
        elif typ == BYTE:
            toktype = BYTE
        tokens[token_id] = piece
        scores[token_id] = score
        toktypes[token_id] = toktype

    added_tokens_file = folder / "added_tokens.json"
    if added_tokens_file.is_file():
        for key, token_id in read_object(added_tokens_file).items():
            token_id = check_token_id(added_tokens_file, key, token_id)
            if token_id >= vocab_size:
                continue
            tokens[token_id] = key
            scores[token_id] = SPM_ADDED_SCORE
            toktypes[token_id] = USER_DEFINED

    tokenizer_config_file = folder / "tokenizer_config.json"
    if tokenizer_config_file.is_file():
        tc = read_object(tokenizer_config_file)
        for token_id, token_data in added_tokens_decoder(tokenizer_config_file, tc).items():
            token: str = token_data["content"]
            if token_id >= vocab_size:
                continue
            if token_data.get("special") or does_token_look_special(token):
                toktypes[token_id] = CONTROL
            else:
                token = token.replace(SPIECE_UNDERLINE, " ")  # pre-normalize user-defined spaces
                toktypes[token_id] = USER_DEFINED
            scores[token_id] = SPM_ADDED_SCORE
            tokens[token_id] = token
    return tokens, scores, toktypes

# conversion/base.py TextModel._set_vocab_sentencepiece
def set_vocab_sentencepiece(rec: KVRecorder, folder: Path, hp: dict) -> int:
    """SentencePiece vocabulary keys; returns the token count."""
    tokens, scores, toktypes = create_vocab_sentencepiece(folder, hp)
    return write_spm_vocab(rec, folder, tokens, scores, toktypes)


def write_spm_vocab(rec: KVRecorder, folder: Path, tokens: list[str], scores: list[float], toktypes: list[int]) -> int:
    """The keys _set_vocab_sentencepiece writes for a built SentencePiece vocabulary; the token count."""
    rec.add_string(TOK_MODEL, "llama")
    rec.add_string(TOK_PRE, "default")
    rec.add_array(TOK_LIST, tokens)
    rec.add_array(TOK_SCORES, scores)
    rec.add_array(TOK_TYPE, toktypes)
    SpecialVocab(folder, n_vocab=len(tokens)).add_to_gguf(rec)
    return len(tokens)
