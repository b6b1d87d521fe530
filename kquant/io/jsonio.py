"""The one strict JSON reader for every JSON kquant reads (config, tokenizer, index, safetensors
headers, generation config, batch manifest): no NaN/Infinity, no duplicate keys, bounded nesting
and file size. Every failure is one InputError line naming the file."""

from __future__ import annotations

import json
import os
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
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{_p(path)}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_json(path: Path, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """Read and parse a JSON file strictly (size bounded before reading)."""
    return loads(read_text(path, max_bytes, "JSON file"), path, max_depth)


def read_object(path: Path, max_bytes: int = MAX_BYTES) -> dict:
    """A JSON file whose top level must be an object."""
    doc = read_json(path, max_bytes)
    if not isinstance(doc, dict):
        raise InputError(f"{_p(path)}: expected a JSON object, got {type(doc).__name__}")
    return doc
