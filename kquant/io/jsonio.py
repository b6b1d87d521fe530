"""The one strict JSON reader for every JSON kquant reads (config, tokenizer, index, safetensors
headers, generation config, batch manifest): no NaN/Infinity, no duplicate keys, bounded nesting
and file size. Every failure is one InputError line naming the file."""

from __future__ import annotations

import json
import os
import re
from array import array
from itertools import compress
from pathlib import Path
from typing import Any

from ..errors import InputError

MAX_DEPTH = 64  # real configs and tokenizers nest < 10 deep; recursive readers stay far from Python's limit
MAX_BYTES = 64 << 20  # config.json, tokenizer_config.json, index, manifest, generation_config.json


def _p(path) -> str:
    s = os.fspath(path)
    s = s if isinstance(s, str) else os.fsdecode(s)
    return s if s.isprintable() else repr(s)


def _short(s: str, n: int = 60) -> str:
    r = repr(s)
    return r if len(r) <= n else r[: n - 3] + "..."


def _reject_constant(name: str):
    raise ValueError(f"non-standard JSON literal {name}")


def _no_duplicates(pairs):
    """json object_pairs_hook: a dict, refusing duplicate keys."""
    d = dict(pairs)
    if len(d) != len(pairs):
        seen = set()
        for k, _ in pairs:
            if k in seen:
                raise ValueError(f"duplicate key {_short(k)}")
            seen.add(k)
    return d


def depth(doc: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of a parsed document (breadth first, C-level scans), stopping past `limit`."""
    if type(doc) is not dict and type(doc) is not list:
        return 0
    level, d = [doc], 1
    while d <= limit:
        nxt: list = []
        for x in level:
            vals = x.values() if type(x) is dict else x
            nxt.extend(compress(vals, map(_CONTAINERS.__contains__, map(type, vals))))  # json makes exact types
        if not nxt:
            return d
        level, d = nxt, d + 1
    return d


_CONTAINERS = frozenset((dict, list))


def loads(text: str | bytes, where, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON text strictly; `where` names the source in the error."""
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except RecursionError:
        raise InputError(f"{_p(where)}: JSON nested too deeply (limit {max_depth} levels)") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{_p(where)}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except ValueError as e:  # JSONDecodeError, duplicates, literals, int digit limit
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"{_p(where)}: invalid JSON ({msg})") from None
    if isinstance(doc, (dict, list)) and depth(doc, max_depth) > max_depth:
        raise InputError(f"{_p(where)}: JSON nested too deeply (limit {max_depth} levels)")
    return doc


def read_text(path: Path, max_bytes: int = MAX_BYTES, what: str = "file") -> str:
    """A UTF-8 text file of at most `max_bytes` bytes (checked before reading)."""
    path = Path(path)
    return decode_utf8(read_bytes(path, max_bytes, what), path)


def decode_utf8(data: bytes, path) -> str:
    """The text of a file's bytes, which must be UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{_p(path)}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_bytes(path: Path, max_bytes: int = MAX_BYTES, what: str = "file") -> bytes:
    """A file of at most `max_bytes` bytes (checked before reading)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise InputError(f"{_p(path)}: {size} bytes, more than the {max_bytes} a {what} may have")
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise InputError(f"{_p(path)}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"{_p(path)}: is a directory") from None
    except OSError as e:
        raise InputError(f"{_p(path)}: cannot read ({e.strerror})") from None
    if len(data) > max_bytes:
        raise InputError(f"{_p(path)}: more than the {max_bytes} bytes a {what} may have")
    return data


def read_json(path: Path, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """Read and parse a JSON file strictly (size bounded before reading)."""
    return loads(read_text(path, max_bytes, "JSON file"), path, max_depth)


def read_object(path: Path, max_bytes: int = MAX_BYTES) -> dict:
    """A JSON file whose top level must be an object."""
    doc = read_json(path, max_bytes)
    if not isinstance(doc, dict):
        raise InputError(f"{_p(path)}: expected a JSON object, got {type(doc).__name__}")
    return doc


class LazyArray:
    """A JSON array member kept as its text and parsed again, a chunk at a time, on each pass
    (`read_object_lazy`): the 446k merges of an o200k tokenizer.json as Python lists take ~90 MB,
    their text ~20 MB. Its elements are all strings or all [string, string] pairs."""

    CHUNK = 4096  # elements parsed at a time

    def __init__(self, text: str, starts: array, ends: array, n: int):
        # chunk c is text[starts[c]:ends[c]]: CHUNK elements (the last chunk: the rest), comma-separated
        self._text, self._starts, self._ends, self._n = text, starts, ends, n

    def __len__(self) -> int:
        return self._n

    def chunks(self):
        """The elements, one parsed list of up to CHUNK of them at a time."""
        t = self._text
        for a, b in zip(self._starts, self._ends):
            yield json.loads("[" + t[a:b] + "]")

    def __iter__(self):
        for c in self.chunks():
            yield from c

    def __getitem__(self, i: int):
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        c, k = divmod(i % len(self), self.CHUNK)
        return json.loads("[" + self._text[self._starts[c]:self._ends[c]] + "]")[k]


_WS = json.decoder.WHITESPACE.match

# The array elements read_object_lazy keeps as text, as regular expressions matching exactly the JSON
# text of one element (RFC 8259 strings: no raw control characters, the escapes json accepts).
_W = r"[ \t\n\r]*"
_STR = r'"[^"\\\x00-\x1f]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*)*"'
_LAZY_ELEMENTS = {'"': _STR, "[": rf"\[{_W}{_STR}{_W},{_W}{_STR}{_W}\]"}  # by first character: string, pair
# one whole chunk (each element followed by a comma), and the last chunk (up to the closing bracket)
_FULL_CHUNK = {c: re.compile(rf"(?:{_W}{e}{_W},){{{LazyArray.CHUNK}}}") for c, e in _LAZY_ELEMENTS.items()}
_LAST_CHUNK = {c: re.compile(rf"(?:{_W}{e}{_W},){{0,{LazyArray.CHUNK - 1}}}{_W}{e}{_W}\]")
               for c, e in _LAZY_ELEMENTS.items()}


def read_object_lazy(path: Path, max_bytes: int, lazy: tuple[str, str]) -> dict:
    """read_object, with the array at `lazy` (a member of a member of the top-level object) kept as a
    LazyArray when its elements are all strings or all [string, string] pairs. Anything unusual
    (invalid JSON, a duplicate key, other elements) takes read_object's path, with its errors and its tree."""
    return loads_object_lazy(read_text(path, max_bytes, "JSON file"), path, lazy)


def loads_object_lazy(text: str, path: Path, lazy: tuple[str, str]) -> dict:
    """read_object_lazy of the text of `path`."""
    try:
        doc = _lazy_walk(text, lazy)
    except (ValueError, RecursionError, StopIteration, IndexError):
        doc = None
    if doc is None or depth(doc) > MAX_DEPTH:
        doc = loads(text, path)
        if not isinstance(doc, dict):
            raise InputError(f"{_p(path)}: expected a JSON object, got {type(doc).__name__}")
    return doc


def _lazy_array(s: str, i: int):
    """(LazyArray or [], end) of the array at s[i] == '[': whole chunks of elements matched by one
    regular expression each (C speed; the elements are parsed only when read)."""
    j = _WS(s, i + 1).end()
    if s.startswith("]", j):
        return [], j + 1
    kind = s[j:j + 1]
    if kind not in _LAZY_ELEMENTS:
        raise ValueError("element refused")
    full, last = _FULL_CHUNK[kind].match, _LAST_CHUNK[kind].match
    first = i + 1
    starts, ends = array("q"), array("q")
    pos = first
    while (m := full(s, pos)) is not None:
        starts.append(pos - first)
        ends.append(m.end() - 1 - first)  # before the comma
        pos = m.end()
    m = last(s, pos)
    if m is None:
        raise ValueError("element refused")
    starts.append(pos - first)
    ends.append(m.end() - 1 - first)  # before the bracket
    text = s[first:m.end() - 1]
    n_last = len(json.loads("[" + text[starts[-1]:ends[-1]] + "]"))
    return LazyArray(text, starts, ends, LazyArray.CHUNK * (len(starts) - 1) + n_last), m.end()


def _lazy_walk(s: str, lazy: tuple[str, str]) -> dict | None:
    dec = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)

    def member_value(i: int, level: int, key: str):
        if level == 0 and key == lazy[0] and s.startswith("{", i):
            return walk_object(i, 1)
        if level == 1 and key == lazy[1] and s.startswith("[", i):
            return _lazy_array(s, i)
        return dec.raw_decode(s, i)

    def walk_object(i: int, level: int):
        out: dict = {}
        i = _WS(s, i + 1).end()
        if s.startswith("}", i):
            return out, i + 1
        while True:
            if not s.startswith('"', i):
                raise ValueError("expecting a key")
            key, i = dec.raw_decode(s, i)
            i = _WS(s, i).end()
            if not s.startswith(":", i) or key in out:
                raise ValueError("expecting ':' or a new key")
            out[key], i = member_value(_WS(s, i + 1).end(), level, key)
            i = _WS(s, i).end()
            if s.startswith(",", i):
                i = _WS(s, i + 1).end()
            elif s.startswith("}", i):
                return out, i + 1
            else:
                raise ValueError("expecting ',' or '}'")

    try:
        i = _WS(s, 0).end()
        if not s.startswith("{", i):
            return None
        doc, i = walk_object(i, 0)
        return doc if _WS(s, i).end() == len(s) else None
    finally:  # the two closures refer to each other: break the cycle, or it keeps the text until a collection
        member_value = walk_object = None  # noqa: F841
