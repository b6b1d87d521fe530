"""`kquant batch`: model folders under ROOT, their output names and imatrix files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import InputError
from ..types import FileType

CONFIG_NAME = "config.json"
WEIGHTS_SUFFIX = ".safetensors"
INDEX_NAME = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
IMATRIX_SUFFIXES = (".gguf", ".dat")  # looked up in this order: DIR/<folder name><suffix>
HF_CACHE_PREFIX = "models--"  # Hugging Face cache: models--ORG--NAME/snapshots/<rev>/
MAX_DEPTH = 8  # folder levels searched below ROOT


# ------------------------------------------------------------------ discovery
@dataclass
class ModelDir:
    name: str  # output prefix: the folder name (HF cache snapshot: ORG--NAME)
    path: Path  # as found under ROOT (a symlink stays a symlink)


@dataclass
class SkippedDir:
    path: Path
    reason: str


@dataclass
class Discovery:
    models: list[ModelDir]
    skipped: list[SkippedDir]


def entries(d: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(d) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError:
        return []


def classify(d: Path) -> str | None:
    """None if `d` is a model folder (config.json + safetensors weights), else why it is not."""
    files = {e.name for e in entries(d) if is_file(e)}
    has_config = CONFIG_NAME in files
    has_weights = INDEX_NAME in files or any(n.endswith(WEIGHTS_SUFFIX) for n in files)
    if has_config and has_weights:
        return None
    if has_config:
        if any(n.lower().endswith(PICKLE_SUFFIXES) for n in files):
            return "config.json but only PyTorch pickle weights (convert them to safetensors)"
        return "config.json but no .safetensors weights"
    if has_weights:
        return "safetensors weights but no config.json"
    return "no config.json or .safetensors weights"


def is_file(e: os.DirEntry) -> bool:
    try:
        return e.is_file()  # follows symlinks
    except OSError:
        return False


def is_dir(e: os.DirEntry) -> bool:
    try:
        return e.is_dir()  # follows symlinks: symlinked model folders count
    except OSError:
        return False


def model_name(d: Path) -> str:
    """The output prefix of a model folder: its name, or ORG--NAME for a Hugging Face cache snapshot."""
    if d.parent.name == "snapshots" and d.parent.parent.name.startswith(HF_CACHE_PREFIX):
        return d.parent.parent.name[len(HF_CACHE_PREFIX):]
    return d.name


def discover(root, exclude: Sequence = ()) -> Discovery:
    """Model folders under `root` (or `root` itself), and the top-most folders holding none.

    Hidden folders (.git, .cache, ...) and the `exclude` folders (OUTDIR) are not searched.
    """
    root = Path(os.fspath(root))
    if not root.is_dir():
        raise InputError(f"{root}: not a folder" if root.exists() else f"{root}: no such folder")
    excluded = {os.path.realpath(p) for p in exclude}
    seen: set[str] = set()
    models: list[ModelDir] = []

    def visit(d: Path, depth: int) -> tuple[int, list[SkippedDir]]:
        real = os.path.realpath(d)
        if real in seen or real in excluded:  # a symlink loop, or a folder reached twice
            return -1, []
        seen.add(real)
        reason = classify(d)
        if reason is None:
            models.append(ModelDir(model_name(d), d))
            return 1, []
        found, skipped = 0, []
        if depth < MAX_DEPTH:
            for e in entries(d):
                if e.name.startswith(".") or not is_dir(e):
                    continue
                sub = d / e.name
                n, s = visit(sub, depth + 1)
                if n == 0:
                    skipped.append(SkippedDir(sub, classify(sub) or "no model folder inside"))
                elif n > 0:
                    found += n
                    skipped += s
        return found, skipped

    _, skipped = visit(root, 0)
    models.sort(key=lambda m: (m.name, str(m.path)))
    by_name: dict[str, ModelDir] = {}
    for m in models:
        if m.name in by_name:
            raise InputError(
                f"two model folders are named {m.name!r} ({by_name[m.name].path} and {m.path}): "
                "their outputs would collide; rename one or run them as separate batches"
            )
        by_name[m.name] = m
    return Discovery(models, skipped)


def output_name(model: str, ftype: FileType) -> str:
    """`<folder name>-<TYPE>.gguf`."""
    return f"{model}-{ftype.short_name}.gguf"


def find_imatrix(imatrix_dir, model: str) -> Path | None:
    """DIR/<model>.gguf, else DIR/<model>.dat, else None."""
    if imatrix_dir is None:
        return None
    for suffix in IMATRIX_SUFFIXES:
        p = Path(os.fspath(imatrix_dir)) / f"{model}{suffix}"
        if p.is_file():
            return p
    return None
