"""llama-quantize's type overrides: the options, and --tensor-type's ECMAScript regexes.

`Overrides` holds the llama_model_quantize_params fields that change tensor types. --tensor-type
patterns are ECMAScript regexes (libstdc++ std::regex) matched with regex_search, first match
wins; `ecma_to_python` translates them for Python `re` and rejects what std::regex rejects.
Ports: `parse_tensor_type` from tools/quantize/quantize.cpp L317-347 (llama.cpp as vendored in
llama-cpp-python 0.3.36); the regex grammar from libstdc++'s <regex> (ECMAScript flavour).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import InputError
from ..types import QType, parse_qtype

__all__ = ["Overrides", "compile_patterns", "ecma_to_python", "first_match", "match_names", "normalized", "parse_tensor_type"]


@dataclass(frozen=True)
class Overrides:
    """llama-quantize options that change tensor types (llama_model_quantize_params)."""

    tensor_types: tuple[tuple[str, QType], ...] = ()  # --tensor-type (regex, type), in the order given
    output_tensor_type: QType | None = None  # --output-tensor-type
    token_embedding_type: QType | None = None  # --token-embedding-type
    pure: bool = False  # --pure
    leave_output_tensor: bool = False  # --leave-output-tensor (quantize_output_tensor = false)


# libstdc++ regex_traits::lookup_classname (C locale) as Python class contents
_POSIX_CLASSES: dict[str, str] = {
    "alnum": "0-9A-Za-z",
    "alpha": "A-Za-z",
    "blank": " \\t",
    "cntrl": "\\x00-\\x1f\\x7f",
    "d": "0-9",
    "digit": "0-9",
    "graph": "!-~",
    "lower": "a-z",
    "print": " -~",
    "punct": "!-/:-@\\[-`{-~",
    "s": " \\t\\n\\r\\f\\v",
    "space": " \\t\\n\\r\\f\\v",
    "upper": "A-Z",
    "w": "0-9A-Za-z_",
    "xdigit": "0-9A-Fa-f",
}
_BRACE_RE = re.compile(r"\{\d+(?:,\d*)?\}")
_HEX2_RE = re.compile(r"[0-9A-Fa-f]{2}")
_HEX4_RE = re.compile(r"[0-9A-Fa-f]{4}")


class _EcmaError(ValueError):
    pass


def _ecma_escape(p: str, i: int) -> tuple[int, str]:
    """One `\\x` escape at p[i] -> (next index, Python text)."""
    if i + 1 >= len(p):
        raise _EcmaError("trailing backslash")
    ch = p[i + 1]
    if ch in "dDsSwWbBfnrtv":
        return i + 2, "\\" + ch
    if ch == "0":
        return i + 2, "\\x00"  # Python would read octal digits after it
    if ch.isdigit():  # back-reference
        j = i + 1
        while j < len(p) and p[j].isdigit():
            j += 1
        return j, "\\" + p[i + 1 : j]
    if ch in "xu":
        m = (_HEX2_RE if ch == "x" else _HEX4_RE).match(p, i + 2)
        if not m:
            raise _EcmaError(f"bad \\{ch} escape")
        return m.end(), "\\" + ch + m.group()
    if ch == "c":
        if i + 2 >= len(p) or not p[i + 2].isascii() or not p[i + 2].isalpha():
            raise _EcmaError("bad \\c escape")
        return i + 3, "\\x%02x" % (ord(p[i + 2]) % 32)
    if ch.isascii() and ch.isalpha():
        return i + 2, ch  # an unknown letter escape is the letter itself
    return i + 2, re.escape(ch)


def _ecma_bracket(p: str, i: int) -> tuple[int, str]:
    """A bracket expression starting at p[i] == '[' -> (next index, Python text)."""
    j = i + 1
    negate = p.startswith("^", j)
    j += negate
    if p.startswith("]", j):  # ECMAScript: `[]` matches nothing, `[^]` any character
        return j + 1, "[\\s\\S]" if negate else "(?!)"
    out = ["[^" if negate else "["]
    while True:
        if j >= len(p):
            raise _EcmaError("unterminated [")
        ch = p[j]
        if ch == "]":
            return j + 1, "".join(out) + "]"
        if ch == "[" and p[j + 1 : j + 2] in (":", ".", "="):
            kind = p[j + 1]
            end = p.find(kind + "]", j + 2)
            if kind != ":" or end < 0 or p[j + 2 : end] not in _POSIX_CLASSES:
                raise _EcmaError(f"unsupported bracket item {p[j:j + 10]!r}")
            out.append(_POSIX_CLASSES[p[j + 2 : end]])
            j = end + 2
        elif ch == "\\":
            j, piece = _ecma_escape(p, j)
            out.append(piece)
        else:
            out.append("\\" + ch if ch in "[^&~|" else ch)
            j += 1


# std::regex(pattern) (ECMAScript grammar, libstdc++) rendered as a Python pattern
def ecma_to_python(p: str) -> str:
    """Translate a std::regex ECMAScript pattern into an equivalent Python `re` one; ValueError where C++ throws.

    libstdc++ also takes stacked quantifiers (`a**`, `a++` = (a+)+): they become `(?:a+)+` here.
    """
    return _translate(p)[0]


def _translate(p: str) -> tuple[str, bool]:
    """(Python pattern, may backtrack exponentially): the flag is set for a repeated group holding a
    quantifier or an alternation, a stacked quantifier, or a back-reference (see `match_names`)."""
    out: list[str] = []
    groups: list[int] = []  # out index of each open group
    inner: list[bool] = []  # per open group: it holds a quantifier or an alternation
    atom = -1  # out index where the last atom starts (-1: nothing to repeat)
    atom_inner = False  # the last atom is a group holding a quantifier or an alternation
    quantified = False  # the last token was a quantifier (or its lazy `?`)
    risky = False
    i = 0
    while i < len(p):
        ch = p[i]
        quant = None
        if ch == "\\":
            i, piece = _ecma_escape(p, i)
            risky = risky or piece[1:2].isdigit()  # a back-reference
        elif ch == "[":
            i, piece = _ecma_bracket(p, i)
        elif ch == "(":
            if p.startswith("(?", i):
                if p[i + 2 : i + 3] not in (":", "=", "!"):
                    raise _EcmaError(f"group syntax {p[i:i + 4]!r} is not ECMAScript")
                i, piece = i + 3, p[i : i + 3]
            else:
                i, piece = i + 1, ch
            groups.append(len(out))
            inner.append(False)
            out.append(piece)
            atom, quantified = -1, False
            continue
        elif ch == ")":
            if not groups:
                raise _EcmaError("unbalanced )")
            out.append(ch)
            i += 1
            atom, quantified, atom_inner = groups.pop(), False, inner.pop()
            if inner and atom_inner:
                inner[-1] = True
            continue
        elif ch == "|":
            i, piece = i + 1, ch
            out.append(piece)
            if inner:
                inner[-1] = True
            atom, quantified = -1, False
            continue
        elif ch in "*+?":
            i, quant = i + 1, ch
        elif ch == "{":
            m = _BRACE_RE.match(p, i)
            if not m:
                raise _EcmaError("bad {} quantifier")
            i, quant = m.end(), m.group()
        else:
            i, piece = i + 1, ch
        if quant is None:
            atom, quantified, atom_inner = len(out), False, False
            out.append(piece)
            continue
        if atom < 0:
            raise _EcmaError("nothing to repeat")
        if inner:
            inner[-1] = True
        if quant != "?" and (atom_inner or quantified):
            risky = True
        if quantified:
            if quant == "?" and out[-1] != "?":
                out.append("?")  # the lazy modifier of the quantifier before
                continue
            out[atom:] = ["(?:", *out[atom:], ")"]  # a quantifier of a quantified atom
        out.append(quant)
        quantified = True
    if groups:
        raise _EcmaError("unbalanced (")
    return "".join(out), risky


def compile_patterns(tensor_types: Sequence[tuple[str, QType]]) -> list[tuple[re.Pattern, QType]]:
    out = []
    for pattern, qtype in tensor_types:
        try:
            out.append((re.compile(ecma_to_python(pattern), re.ASCII), qtype))
        except (re.error, _EcmaError) as e:
            raise InputError(
                f"--tensor-type: invalid regular expression {pattern!r} for llama.cpp's std::regex: {e}"
            ) from None
    return out


MATCH_SECONDS = 5.0  # bound on matching the --tensor-type patterns that may backtrack exponentially
_MATCH_CHILD = (
    "import json, re, sys\n"
    "d = json.load(sys.stdin)\n"
    "json.dump([[i for i, n in enumerate(d['names']) if re.compile(p, re.ASCII).search(n)] for p in d['patterns']],"
    " sys.stdout)\n"
)


class _Hits:
    """A pattern's precomputed regex_search results over the tensor names (re.Pattern.search's role)."""

    def __init__(self, rx: re.Pattern, hits: set[str], names: set[str]):
        self.rx, self.hits, self.names = rx, hits, names

    def search(self, name: str):
        return (name in self.hits) if name in self.names else self.rx.search(name)


def match_names(tensor_types: Sequence[tuple[str, QType]], names: Sequence[str]) -> list[tuple[object, QType]]:
    """`compile_patterns`, with patterns that may backtrack exponentially (nested quantifiers such as
    `((.+)+)+`) matched against `names` in a child process killed after MATCH_SECONDS: the same
    Python `re` results, or a one-line InputError instead of a hang."""
    patterns = compile_patterns(tensor_types)
    risky = [i for i, (p, _) in enumerate(tensor_types) if _translate(p)[1]]
    if not risky:
        return patterns
    import json
    import subprocess
    import sys

    doc = {"names": list(names), "patterns": [patterns[i][0].pattern for i in risky]}
    try:
        r = subprocess.run([sys.executable, "-I", "-S", "-c", _MATCH_CHILD], input=json.dumps(doc), text=True,
                           capture_output=True, timeout=MATCH_SECONDS)
    except subprocess.TimeoutExpired:
        pats = ", ".join(repr(tensor_types[i][0]) for i in risky)
        raise InputError(
            f"--tensor-type: regular expression {pats} did not finish matching the tensor names in "
            f"{MATCH_SECONDS:g} s (nested quantifiers backtrack exponentially); simplify it") from None
    if r.returncode != 0:
        raise RuntimeError(f"regex matcher failed: {r.stderr.strip().splitlines()[-1:]}")
    all_names = set(names)
    out = list(patterns)
    for i, hits in zip(risky, json.loads(r.stdout)):
        out[i] = (_Hits(patterns[i][0], {names[j] for j in hits}, all_names), patterns[i][1])
    return out


def normalized(ov: Overrides) -> Overrides:
    """Accept type names ('q8_0') as well as QType members in the overrides."""
    return Overrides(
        tensor_types=tuple((p, parse_qtype(q)) for p, q in ov.tensor_types),
        output_tensor_type=None if ov.output_tensor_type is None else parse_qtype(ov.output_tensor_type),
        token_embedding_type=None if ov.token_embedding_type is None else parse_qtype(ov.token_embedding_type),
        pure=ov.pure,
        leave_output_tensor=ov.leave_output_tensor,
    )


def first_match(patterns: list[tuple[re.Pattern, QType]], name: str) -> QType | None:
    """std::regex_search over the patterns in order; the first hit wins."""
    for rx, qtype in patterns:
        if rx.search(name):
            return qtype
    return None


# tools/quantize/quantize.cpp parse_tensor_type
def parse_tensor_type(arg: str) -> tuple[str, QType]:
    """Parse one `--tensor-type NAME=TYPE` as llama-quantize does: the NAME regex is lower-cased."""
    name, sep, qtype = arg.partition("=")
    if not sep:
        raise InputError(f"--tensor-type: malformed tensor type {arg!r} (expected NAME=TYPE)")
    if not name:
        raise InputError(f"--tensor-type {arg!r}: missing tensor name")
    if not qtype:
        raise InputError(f"--tensor-type {arg!r}: missing quantization type")
    name = "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in name)  # C tolower, ASCII only
    try:
        return name, parse_qtype(qtype)
    except ValueError as e:
        raise InputError(f"--tensor-type {arg!r}: {e}") from None

