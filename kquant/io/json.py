"""The strict JSON reader every config, index and tokenizer file goes through."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import InputError


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def read_json(path: Path, what: str = "JSON") -> Any:
    """Parse a JSON file strictly (no NaN/Infinity); InputError naming the file on failure."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError as e:
        msg = str(e).splitlines()[0]
        raise InputError(f"{path}: not valid {what} ({msg})") from None
