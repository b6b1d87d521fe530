"""An in-memory GGUF metadata recorder with GGUFWriter's semantics, and the key names we write.

Ports the metadata half of gguf-py's `GGUFWriter` (gguf-py/gguf/gguf_writer.py as vendored in
llama.cpp for llama-cpp-python 0.3.36): `add_key_value` keeps the first insertion position and
the last value of a key, `add_string` drops empty strings, `add_array` drops empty arrays,
`add_chat_template` removes the key for None and expands named templates. Each `add_*` method
stores its key with the value type GGUFWriter uses for it.

Entries are `(key, GGUFValueType, value)`. Scalars are plain Python int/float/bool/str; an ARRAY
value is a list of one plain Python type whose GGUF element type follows gguf-py's
`GGUFValueType.get_type` (str -> STRING, bool -> BOOL, int -> INT32, float -> FLOAT32).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from itertools import chain, islice
from operator import methodcaller
from string import ascii_letters, digits
from typing import Any

from gguf import GGUFValueType

KV = tuple[str, GGUFValueType, Any]

# gguf-py constants.py `Keys`, the ones kquant writes.
GENERAL_ARCHITECTURE = "general.architecture"
GENERAL_TYPE = "general.type"
GENERAL_FILE_TYPE = "general.file_type"
GENERAL_QUANTIZATION_VERSION = "general.quantization_version"

# constants.py RopeScalingType values (strings stored in `{arch}.rope.scaling.type`).
ROPE_SCALING_LINEAR = "linear"
ROPE_SCALING_YARN = "yarn"
ROPE_SCALING_LONGROPE = "longrope"

TOK_MODEL = "tokenizer.ggml.model"
TOK_PRE = "tokenizer.ggml.pre"
TOK_LIST = "tokenizer.ggml.tokens"
TOK_TYPE = "tokenizer.ggml.token_type"
TOK_SCORES = "tokenizer.ggml.scores"
TOK_MERGES = "tokenizer.ggml.merges"
TOK_ADD_PREFIX = "tokenizer.ggml.add_space_prefix"
TOK_CHAT_TEMPLATE = "tokenizer.chat_template"
TOK_CHAT_TEMPLATE_N = "tokenizer.chat_template.{name}"
TOK_CHAT_TEMPLATES = "tokenizer.chat_templates"
TOK_NORMALIZER_LOWERCASE = "tokenizer.ggml.normalizer.lowercase"
TOK_NORMALIZER_STRIP_ACCENTS = "tokenizer.ggml.normalizer.strip_accents"

# SpecialVocab looks these handlers up by name (`add_{typ}_token_id`, `add_add_{typ}_token`);
# types without a GGUFWriter handler (cls, prefix, suffix, middle, fsep) are skipped upstream.
SPECIAL_TOKEN_ID_KEYS = {
    "bos": "tokenizer.ggml.bos_token_id",
    "eos": "tokenizer.ggml.eos_token_id",
    "unk": "tokenizer.ggml.unknown_token_id",
    "sep": "tokenizer.ggml.seperator_token_id",
    "pad": "tokenizer.ggml.padding_token_id",
    "mask": "tokenizer.ggml.mask_token_id",
    "eot": "tokenizer.ggml.eot_token_id",
    "eom": "tokenizer.ggml.eom_token_id",
}
ADD_SPECIAL_TOKEN_KEYS = {
    "bos": "tokenizer.ggml.add_bos_token",
    "eos": "tokenizer.ggml.add_eos_token",
    "sep": "tokenizer.ggml.add_sep_token",
}


_encode = methodcaller("encode", "utf-8", "surrogateescape")


def _encodable(v: str) -> bool:
    try:
        _encode(v)
    except UnicodeEncodeError:
        return False
    return True


class StringArray(Sequence):
    """A GGUF array of strings held as its encoded payload (each a u64 length and UTF-8 bytes, as
    GGUFWriter writes it): o200k's 200k tokens and 446k merges in ~12 MB, not ~60 MB of Python
    strings. The writer copies the payload as it is; iterating decodes."""

    sub_type = GGUFValueType.STRING

    CHUNK = 65536  # strings encoded at a time (bounds the temporary copies)

    def __init__(self, items: Iterable[str]):
        parts, n, pack, it = [], 0, struct.Struct("<Q").pack, iter(items)
        while chunk := list(islice(it, self.CHUNK)):
            try:
                data = list(map(_encode, chunk))
            except UnicodeEncodeError:
                bad = next(v for v in chunk if not _encodable(v))
                raise ValueError(f"string {bad!r} is not encodable as UTF-8") from None
            parts.append(b"".join(chain.from_iterable(zip(map(pack, map(len, data)), data))))
            n += len(chunk)
        self.payload, self._n = b"".join(parts), n

    def __len__(self) -> int:
        return self._n

    def __iter__(self):
        p, mv, unpack = self.payload, memoryview(self.payload), struct.Struct("<Q").unpack_from
        pos = 0
        for _ in range(self._n):
            (k,) = unpack(p, pos)
            yield str(mv[pos + 8 : pos + 8 + k], "utf-8", "surrogateescape")
            pos += 8 + k

    def __getitem__(self, i):
        if isinstance(i, slice):
            return list(self)[i]
        if not -self._n <= i < self._n:
            raise IndexError(i)
        i %= self._n
        for k, v in enumerate(self):
            if k == i:
                return v

    def __eq__(self, other) -> bool:
        if isinstance(other, StringArray):
            return self.payload == other.payload and self._n == other._n
        return isinstance(other, Sequence) and not isinstance(other, str) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"StringArray({self._n} strings, {len(self.payload)} bytes)"


class KVRecorder:
    """Ordered GGUF metadata with GGUFWriter.add_key_value semantics (first position, last value)."""

    def __init__(self, arch: str):
        self.arch = arch
        self._kv: dict[str, tuple[GGUFValueType, Any]] = {}

    # gguf_writer.py GGUFWriter.add_key_value / remove_key
    def add_key_value(self, key: str, val: Any, vtype: GGUFValueType) -> None:
        self._kv[key] = (vtype, val)

    def remove_key(self, key: str) -> None:
        self._kv.pop(key, None)

    def __contains__(self, key: str) -> bool:
        return key in self._kv

    def get(self, key: str, default=None):
        e = self._kv.get(key)
        return default if e is None else e[1]

    def entries(self) -> list[KV]:
        return [(k, t, v) for k, (t, v) in self._kv.items()]

    def keys(self) -> list[str]:
        return list(self._kv)

    # typed adders (GGUFWriter.add_uint32, add_int32, add_float32, add_bool, add_string, add_array)
    def add_uint32(self, key: str, val: int) -> None:
        self.add_key_value(key, _as_int(key, val), GGUFValueType.UINT32)

    def add_int32(self, key: str, val: int) -> None:
        self.add_key_value(key, _as_int(key, val), GGUFValueType.INT32)

    def add_float32(self, key: str, val: float) -> None:
        self.add_key_value(key, float(val), GGUFValueType.FLOAT32)

    def add_bool(self, key: str, val: bool) -> None:
        self.add_key_value(key, bool(val), GGUFValueType.BOOL)

    def add_string(self, key: str, val: str) -> None:
        if not val:
            return
        self.add_key_value(key, val, GGUFValueType.STRING)

    def add_array(self, key: str, val: list) -> None:
        if len(val) == 0:
            return
        self.add_key_value(key, val if isinstance(val, StringArray) else list(val), GGUFValueType.ARRAY)

    def a(self, key: str) -> str:
        """`key` with `{arch}` filled in."""
        return key.format(arch=self.arch)

    # gguf_writer.py GGUFWriter.add_chat_template
    def add_chat_template(self, value) -> None:
        if value is None:
            self.remove_key(TOK_CHAT_TEMPLATE)
            return
        if not isinstance(value, str):
            template_default = None
            template_names = set()
            for choice in value:
                name = choice.get("name", "")
                template = choice.get("template")
                name = "".join((c if c in ascii_letters + digits else "_" for c in name))
                if name and template is not None:
                    if name == "default":
                        template_default = template
                    else:
                        template_names.add(name)
                        self.add_string(TOK_CHAT_TEMPLATE_N.format(name=name), template)
            if template_names:
                self.add_array(TOK_CHAT_TEMPLATES, list(template_names))
            if template_default is None:
                return
            value = template_default
        self.add_string(TOK_CHAT_TEMPLATE, value)

    def add_special_token_id(self, typ: str, tokid: int) -> bool:
        """GGUFWriter.add_{typ}_token_id; False when GGUFWriter has no such handler."""
        key = SPECIAL_TOKEN_ID_KEYS.get(typ)
        if key is None:
            return False
        self.add_uint32(key, tokid)
        return True

    def add_add_special_token(self, typ: str, value: bool) -> bool:
        """GGUFWriter.add_add_{typ}_token; False when GGUFWriter has no such handler."""
        key = ADD_SPECIAL_TOKEN_KEYS.get(typ)
        if key is None:
            return False
        self.add_bool(key, value)
        return True


def _as_int(key: str, val) -> int:
    if isinstance(val, bool) or not isinstance(val, int):
        raise TypeError(f"{key}: expected an integer, got {val!r}")
    return int(val)
