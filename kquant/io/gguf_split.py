"""Split GGUF files: llama.cpp's `-00001-of-00004.gguf` shards with `split.*` keys.

Writing ports llama-gguf-split's `--split` (tools/gguf-split/gguf-split.cpp, `split_strategy`):
the tensors of the single file, in its order, cut into shards by `--split-max-size` (the running
sum of tensor sizes padded to 32 bytes may not exceed it) or `--split-max-tensors` (a new shard
every N tensors). The first shard holds every KV pair of the single file, then, in every shard,
`split.no` (u16), `split.tensors.count` (i32) and `split.count` (u16, last: gguf-split sets it
again once the count is known, and ggml's `gguf_set_val_*` moves a key to the end). Shards are
named as `llama_split_path` (src/llama.cpp) names them. `SplitWriter` streams them with
`gguf.GGUFStreamWriter`, each shard under a temporary name (`fsutil.AtomicFileSet`), renamed into
place only when every shard is complete.

Reading (`open_gguf`): a file whose `split.count` is above 0 is the first shard of a set; every
shard is opened with the strict `gguf.GGUFFile` and the set is checked (file names, every shard
present, the same split.count and split.tensors.count in each, split.no in order, the tensor counts
adding up, no tensor name twice) before it is used like one file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from gguf import GGUFValueType

from ..errors import InputError, OutputError, UnsupportedError
from .gguf import ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUFFile, GGUFStreamWriter, display_path, pad_to

SPLIT_NO = "split.no"  # common.h LLM_KV_SPLIT_NO
SPLIT_COUNT = "split.count"  # LLM_KV_SPLIT_COUNT
SPLIT_TENSORS_COUNT = "split.tensors.count"  # LLM_KV_SPLIT_TENSORS_COUNT
SPLIT_KEYS = (SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS_COUNT)
MAX_SHARDS = 0xFFFF  # split.count is a u16
MAX_SPLIT_TENSORS = 0x7FFFFFFF  # split.tensors.count is an i32
SIZE_UNITS = {"M": 1000**2, "G": 1000**3}  # split_str_to_n_bytes: decimal megabytes, gigabytes
SHARD_RE = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
GGUF_SUFFIX = ".gguf"


def parse_split_size(text: str) -> int:
    """`--split-max-size` as llama-gguf-split reads it (split_str_to_n_bytes): N followed by M or G."""
    s = str(text).strip()
    m = re.fullmatch(r"(\d+)([MG])", s)
    if not m:
        raise InputError(f"--split-max-size {text!r}: expected a whole number followed by M or G (e.g. 500M, 2G)")
    n = int(m.group(1))
    if n <= 0:
        raise InputError(f"--split-max-size {text!r}: must be positive")
    return n * SIZE_UNITS[m.group(2)]


@dataclass(frozen=True)
class SplitOptions:
    """How to cut: at most `max_bytes` of tensor data or `max_tensors` tensors per shard (one of them)."""

    max_bytes: int | None = None
    max_tensors: int | None = None

    def __post_init__(self):
        if self.max_bytes is not None and self.max_tensors is not None:
            raise InputError("give either --split-max-size or --split-max-tensors, not both")
        if self.max_bytes is None and self.max_tensors is None:
            raise ValueError("SplitOptions needs max_bytes or max_tensors")
        if self.max_bytes is not None and self.max_bytes <= 0:
            raise InputError(f"--split-max-size {self.max_bytes}: must be positive")
        if self.max_tensors is not None and not 1 <= self.max_tensors <= MAX_SPLIT_TENSORS:
            raise InputError(f"--split-max-tensors {self.max_tensors}: must be at least 1")

    @classmethod
    def from_args(cls, max_size=None, max_tensors=None) -> "SplitOptions | None":
        """None when neither is given; max_size may be a string ('2G') or a byte count."""
        if max_size is None and max_tensors is None:
            return None
        if isinstance(max_size, str):
            max_size = parse_split_size(max_size)
        return cls(max_size, max_tensors)

    def as_json(self) -> dict:
        return {"max_bytes": self.max_bytes, "max_tensors": self.max_tensors}


def plan_shards(tensors, opts: SplitOptions) -> list[int]:
    """Tensors per shard for `tensors` = [(name, nbytes), ...] in file order (split_strategy)."""
    counts = [0]
    cur = 0
    n_tensors = len(tensors)
    for i, (name, nbytes) in enumerate(tensors):
        n = pad_to(nbytes, DEFAULT_ALIGNMENT)  # GGML_PAD(ggml_nbytes(t), GGUF_DEFAULT_ALIGNMENT)
        nxt = cur + n
        if opts.max_bytes is not None:
            cut = nxt > opts.max_bytes
        else:
            cut = 0 < i < n_tensors and i % opts.max_tensors == 0
        if cut:
            if counts[-1] == 0:  # gguf-split: "one of splits have 0 tensors"
                raise OutputError(f"--split-max-size {opts.max_bytes}: tensor {name} alone is {n} bytes, "
                                  "more than a shard may hold (llama-gguf-split refuses this too)")
            counts.append(0)
            cur = n
        else:
            cur = nxt
        counts[-1] += 1
    if len(counts) > MAX_SHARDS:
        raise OutputError(f"{len(counts)} shards: split.count holds at most {MAX_SHARDS}")
    return counts


def split_prefix(out) -> Path:
    """The shard prefix of an output path: `model.gguf` -> `model` (shards `model-00001-of-00004.gguf`)."""
    p = Path(os.path.abspath(os.fspath(out)))
    name = p.name
    if name.lower().endswith(GGUF_SUFFIX) and len(name) > len(GGUF_SUFFIX):
        name = name[: -len(GGUF_SUFFIX)]
    if SHARD_RE.match(name + GGUF_SUFFIX):
        raise OutputError(f"{display_path(out)}: give the output without a shard suffix (e.g. model.gguf); "
                          "the shards are named model-00001-of-00004.gguf, ...")
    return p.with_name(name)


def shard_path(prefix, i: int, n: int) -> Path:
    """llama_split_path: PREFIX-%05d-of-%05d.gguf, i counted from 0."""
    p = Path(os.fspath(prefix))
    return p.with_name(f"{p.name}-{i + 1:05d}-of-{n:05d}{GGUF_SUFFIX}")


def shard_paths(out, n: int) -> list[Path]:
    prefix = split_prefix(out)
    return [shard_path(prefix, i, n) for i in range(n)]


def existing_shards(out) -> list[Path]:
    """Files named like a shard of `out` (any count) that exist, sorted."""
    prefix = split_prefix(out)
    found = []
    try:
        with os.scandir(prefix.parent) as it:
            for e in it:
                m = SHARD_RE.match(e.name)
                if m and m.group("prefix") == prefix.name:
                    found.append(prefix.parent / e.name)
    except OSError:
        pass
    return sorted(found)


def describe_existing(out) -> str | None:
    """Why the shards of `out` already present are in the way (None when there are none)."""
    found = existing_shards(out)
    if not found:
        return None
    sets: dict[int, list[int]] = {}
    for f in found:
        m = SHARD_RE.match(f.name)
        sets.setdefault(int(m.group("count")), []).append(int(m.group("no")))
    for count, nos in sorted(sets.items()):
        if sorted(nos) != list(range(1, count + 1)):
            missing = sorted(set(range(1, count + 1)) - set(nos))
            return (f"{display_path(found[0])}: an incomplete split set ({len(nos)} of {count} shards, "
                    f"{'shard ' + str(missing[0]) if missing else 'extra shards'} missing: an interrupted run?)")
    return f"{display_path(found[0])}: already exists ({len(found)} shard file(s) of this output)"


def split_kv(i: int, n: int, n_tensors: int) -> list:
    """The split.* keys of shard i of n, in gguf-split's order."""
    return [(SPLIT_NO, GGUFValueType.UINT16, i), (SPLIT_TENSORS_COUNT, GGUFValueType.INT32, n_tensors),
            (SPLIT_COUNT, GGUFValueType.UINT16, n)]


# ====================================================================== writer
class SplitWriter:
    """GGUFStreamWriter's interface over a set of shards: add_kv, add_tensor, write_header,
    write_data (tensors in declared order), finish. Shards are opened one at a time from an
    `fsutil.AtomicFileSet`, which renames them into place on commit.
    """

    def __init__(self, out, opts: SplitOptions, files_factory):
        """`files_factory(paths)` returns the AtomicFileSet the shards are written into."""
        self.out = out
        self.opts = opts
        self._factory = files_factory
        self._kv: list = []
        self._tensors: list[tuple[str, tuple, int, int]] = []
        self._probe = GGUFStreamWriter(_NullFile(), ggml_n_dims=True, name=str(out))  # validates and sizes
        self.paths: list[Path] = []
        self.files = None
        self._cur = -1
        self._w: GGUFStreamWriter | None = None
        self._shard_of: dict[str, int] = {}
        self._bounds: list[tuple[int, int]] = []
        self._sizes: list[int] = []

    def add_kv(self, key, vtype, value, sub_type=None) -> None:
        if key in SPLIT_KEYS:
            raise ValueError(f"{key} is set by the split writer")
        self._probe.add_kv(key, vtype, value, sub_type)
        self._kv.append((key, vtype, value, sub_type))

    def add_tensor(self, name, shape, qtype) -> int:
        nbytes = self._probe.add_tensor(name, shape, qtype)
        self._tensors.append((name, tuple(shape), int(qtype), nbytes))
        return nbytes

    def write_header(self) -> None:
        al = self._probe.metadata.get(ALIGNMENT_KEY)
        if al is not None and al[1] != DEFAULT_ALIGNMENT:  # gguf-split pads tensor data to 32 whatever the key says
            raise UnsupportedError(f"{display_path(self.out)}: {ALIGNMENT_KEY} is {al[1]}; split output needs the default "
                                   f"{DEFAULT_ALIGNMENT} (llama-gguf-split pads tensor data to {DEFAULT_ALIGNMENT} bytes)")
        counts = plan_shards([(t[0], t[3]) for t in self._tensors], self.opts)
        n = len(counts)
        self.paths = shard_paths(self.out, n)
        a = 0
        for i, c in enumerate(counts):
            self._bounds.append((a, a + c))
            for t in self._tensors[a : a + c]:
                self._shard_of[t[0]] = i
            a += c
        self.files = self._factory(self.paths)
        self._open(0)

    def _open(self, i: int) -> None:
        if self._w is not None:
            self._sizes.append(self._w.finish())
            self.files.close(self._cur)
        self._cur = i
        w = GGUFStreamWriter(self.files.open(i), ggml_n_dims=True, name=str(self.paths[i]))
        if i == 0:
            for key, vtype, value, sub in self._kv:
                w.add_kv(key, vtype, value, sub)
        for key, vtype, value in split_kv(i, len(self.paths), len(self._tensors)):
            w.add_kv(key, vtype, value)
        a, b = self._bounds[i]
        for name, shape, qtype, _ in self._tensors[a:b]:
            w.add_tensor(name, shape, qtype)
        w.write_header()
        self._w = w

    def write_data(self, name: str, buf) -> None:
        i = self._shard_of.get(name)
        if i is None:
            raise ValueError(f"write_data({name!r}): no such tensor was declared")
        while self._cur < i:
            self._open(self._cur + 1)
        self._w.write_data(name, buf)

    def finish(self) -> int:
        """Write every remaining shard; returns the total size (the shards are committed by the file set)."""
        while self._cur < len(self.paths) - 1:
            self._open(self._cur + 1)
        self._sizes.append(self._w.finish())
        self.files.close(self._cur)
        self._w = None
        return sum(self._sizes)


class _NullFile:
    """A write-only sink: lets a GGUFStreamWriter validate and size declarations without output."""

    name = None

    def write(self, b):
        return memoryview(b).nbytes


# ====================================================================== reader
def _key(g: GGUFFile, key: str, vtype: GGUFValueType, where: str):
    v = g.metadata.get(key)
    if v is None:
        raise InputError(f"{where}: no {key} key (not a shard of a split GGUF)")
    t, val = v
    if t != vtype:
        raise InputError(f"{where}: key {key} has type {t.name}, expected {vtype.name}")
    return val


def is_split(g: GGUFFile) -> bool:
    """True when `g` is a shard (split.count present and above 0; a merged file has 0)."""
    v = g.metadata.get(SPLIT_COUNT)
    return v is not None and v[1] != 0


class GGUFSplit:
    """A split GGUF opened by its first shard and checked as a set; reads like one GGUFFile.

    `metadata` is the first shard's (split.* keys included), `tensors` the union in shard order,
    `file_size` the sum; `shards` the GGUFFiles.
    """

    def __init__(self, path, first: GGUFFile | None = None):
        self.path = os.fspath(path)
        where = display_path(self.path)
        self.shards: list[GGUFFile] = []
        try:
            g = first if first is not None else GGUFFile(path)
            self.shards.append(g)
            count = _key(g, SPLIT_COUNT, GGUFValueType.UINT16, where)
            no = _key(g, SPLIT_NO, GGUFValueType.UINT16, where)
            total = _key(g, SPLIT_TENSORS_COUNT, GGUFValueType.INT32, where)
            if count < 1:
                raise InputError(f"{where}: split.count is {count}, not a split set")
            name = os.path.basename(self.path)
            m = SHARD_RE.match(name)
            if no != 0:
                hint = f" {m.group('prefix')}-00001-of-{count:05d}.gguf" if m else ""
                raise InputError(f"{where}: shard {no + 1} of {count}; open the set by its first shard{hint}")
            if not m or int(m.group("no")) != 1 or int(m.group("count")) != count:
                raise InputError(f"{where}: split.count is {count}, but the name does not end in -00001-of-{count:05d}.gguf")
            prefix = Path(self.path).with_name(m.group("prefix"))
            names: dict[str, int] = {}
            for t in g.tensors:
                names[t.name] = 0
            for i in range(1, count):
                sp = shard_path(prefix, i, count)
                if not sp.exists():
                    raise InputError(f"{where}: shard {i + 1} of {count} ({display_path(sp)}) is missing")
                s = GGUFFile(sp)
                self.shards.append(s)
                sw = display_path(sp)
                c = _key(s, SPLIT_COUNT, GGUFValueType.UINT16, sw)
                if c != count:
                    raise InputError(f"{sw}: split.count is {c}, the first shard says {count}")
                k = _key(s, SPLIT_NO, GGUFValueType.UINT16, sw)
                if k != i:
                    raise InputError(f"{sw}: split.no is {k}, expected {i} (shard {i + 1} of {count})")
                tc = _key(s, SPLIT_TENSORS_COUNT, GGUFValueType.INT32, sw)
                if tc != total:
                    raise InputError(f"{sw}: split.tensors.count is {tc}, the first shard says {total}")
                for t in s.tensors:
                    if t.name in names:
                        raise InputError(f"{sw}: tensor {t.name} is also in shard {names[t.name] + 1}")
                    names[t.name] = i
            if len(names) != total:
                raise InputError(f"{where}: the {count} shards hold {len(names)} tensors, split.tensors.count says {total}")
        except BaseException:
            self.close()
            raise
        self._shard_of = names
        self.metadata = g.metadata
        self.version = g.version
        self.alignment = g.alignment
        self.data_offset = g.data_offset
        self.file_size = sum(s.file_size for s in self.shards)
        self.tensors = [t for s in self.shards for t in s.tensors]
        self.shard_paths = [s.path for s in self.shards]

    def shard_index(self, name: str) -> int:
        try:
            return self._shard_of[name]
        except KeyError:
            raise InputError(f"{display_path(self.path)}: no tensor named {name!r}") from None

    def tensor(self, name: str):
        return self.shards[self.shard_index(name)].tensor(name)

    def data(self, name: str):
        return self.shards[self.shard_index(name)].data(name)

    def value(self, key: str, default=None):
        v = self.metadata.get(key)
        return default if v is None else v[1]

    def read_bytes(self, name: str, start: int, stop: int):
        return self.shards[self.shard_index(name)].read_bytes(name, start, stop)

    def close(self) -> None:
        for s in self.shards:
            s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"GGUFSplit({self.path!r}, {len(self.shards)} shards, {len(self.tensors)} tensors)"


def open_gguf(path):
    """A GGUFFile, or a GGUFSplit when `path` is the first shard of a split set."""
    g = GGUFFile(path)
    if not is_split(g):
        return g
    return GGUFSplit(path, g)
