"""The pipeline: read -> plan -> quantize -> write, in one streaming pass.

What it reproduces: llama.cpp's `convert_hf_to_gguf.py --outtype bf16` followed by
`llama-quantize` (tensor order, per-tensor types, bytes, metadata), without the intermediate
file. Every tensor is read once, in row slabs, rounded through the type the intermediate BF16
file would have held it in, and quantized to each requested target (`convert_many`: several
file types from one read, for `kquant batch`). Peak memory is a few slabs, not the model.
"""

from __future__ import annotations

import ctypes
import gc
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import InputError, OutputError, UnsupportedError
from .ggml import quants, warm
from .types import FileType, QType, parse_ftype
from .models.base import stack

GGML_QNT_VERSION = 2
SLAB_BYTES = 16 << 20  # float32 bytes of source rows handled at once (a slab, its raw read and its gather: < 60 MB)
QUANT_VERSION_KEY = "general.quantization_version"
ROUNDING_KEY = "quantize.rounding"  # written only for a rounding other than ggml's
FILE_TYPE_KEY = "general.file_type"


@dataclass
class PlannedTensor:
    spec: object  # models.TensorSpec
    qtype: QType
    imatrix: np.ndarray | None = None  # (n_expert, n_per_row) importance rows, as llama-quantize looks them up
    source_type: str | None = None  # what it is built from (annotate_sources): dtype or quantization scheme

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.spec.shape)

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.qtype.nbytes(self.shape)


@dataclass
class Plan:
    ftype: FileType
    arch: str
    kv: list
    tensors: list[PlannedTensor]
    imatrix_kv: list = field(default_factory=list)  # quantize.imatrix.* keys, written after general.file_type
    needs_imatrix: tuple | None = None  # dry run without one: (tensor, type) llama-quantize would refuse
    not_converted: tuple = ()  # HF vision/audio tensors of a multimodal checkpoint, left out (ModelSpec)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def n_elements(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def bpw(self) -> float:
        return self.total_bytes * 8.0 / max(self.n_elements, 1)

    def as_json(self) -> dict:
        counts: dict[str, int] = {}
        for t in self.tensors:
            counts[t.qtype.ggml_name] = counts.get(t.qtype.ggml_name, 0) + 1
        return {
            "architecture": self.arch,
            "file_type": self.ftype.short_name,
            "tensors": [
                {"name": t.name, "shape": list(reversed(t.shape)), "type": t.qtype.ggml_name, "bytes": t.nbytes,
                 **({"source_type": t.source_type} if t.source_type is not None else {})}
                for t in self.tensors
            ],
            "type_counts": counts,
            "n_tensors": len(self.tensors),
            "n_elements": self.n_elements,
            "total_bytes": self.total_bytes,
            "bits_per_weight": round(self.bpw, 4),
            **({"not_converted": {"n_tensors": len(self.not_converted), "tensors": list(self.not_converted),
                                  "note": models_note(self.not_converted)}} if self.not_converted else {}),
        }


@dataclass
class Options:
    """Everything `kquant convert` takes besides the model and the output."""

    overrides: object = None  # kquant.plan.overrides.Overrides
    imatrix: object = None  # kquant.plan.imatrix.ImatrixData
    threads: int | None = None
    config: str | None = None
    tokenizer_pre: str | None = None
    allow_nonfinite: bool = False
    force: bool = False
    progress: Callable | None = None
    extra: dict = field(default_factory=dict)
    type_map: dict | None = None  # tensor name -> QType replacing the recipe's type (kquant.automix)
    on_compile: Callable | None = None  # called with the types whose kernels are compiled first (cold cache)
    rounding: str = "ggml"  # kquant.ggml.quants.ROUNDINGS: "ggml" (ggml's bytes), "best" or "refine"
    split: object = None  # io.gguf_split.SplitOptions: write llama-gguf-split's shards instead of one file
    fp8_as_q8: bool = False  # convert_hf_to_gguf.py --fp8-as-q8: FP8-dequantized tensors are Q8_0 in the intermediate


def open_model(path: str | Path, config: str | None = None):
    """A source checkpoint: HF folder, single .safetensors, or an F32/F16/BF16 GGUF file."""
    from .io.safetensors import Checkpoint

    from .io import quantized
    from .io.jsonio import read_json

    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    if p.is_file() and p.suffix.lower() == ".gguf":
        return GGUFSource(p)  # a split set by its first shard too
    ck = Checkpoint.open(p, config=config)
    try:  # a quantized checkpoint (quantization_config) is read through its dequantizers
        cfg_path = Path(config) if config is not None else (p if p.is_dir() else p.parent) / "config.json"
        cfg = read_json(cfg_path) if cfg_path.is_file() else None
        return quantized.wrap(ck, cfg if isinstance(cfg, dict) else None, str(cfg_path))
    except BaseException:
        ck.close()
        raise


@dataclass
class _GGUFTensor:
    name: str
    shape: tuple
    dtype: str
    path: str


class GGUFSource:
    """An F32/F16/BF16 GGUF file (or split set, by its first shard) read like a checkpoint
    (`kquant convert model-bf16.gguf`, as llama-quantize does): same reading interface as
    io.safetensors.Checkpoint. MXFP4 tensors (gpt-oss's experts in an MXFP4_MOE file) are raw
    tensors (TensorSpec.raw_type): copied to MXFP4 unchanged, dequantized and quantized again to
    any other type, as `llama-quantize --allow-requantize` does; other quantized types are refused."""

    FLOAT_TYPES = (QType.F32, QType.F16, QType.BF16)
    RAW_TYPES = (QType.MXFP4,)

    def __init__(self, path: Path):
        from .io.gguf_split import open_gguf

        self.path = path
        self.gguf = open_gguf(path)
        self._info = {t.name: t for t in self.gguf.tensors}
        for t in self.gguf.tensors:
            if t.require_qtype() not in self.FLOAT_TYPES + self.RAW_TYPES:
                self.gguf.close()
                raise InputError(f"{path}: tensor {t.name} is {t.qtype.name}; only GGUF files of F32, F16, BF16 "
                                 "(and MXFP4) tensors are re-quantized")
        shard = getattr(self.gguf, "shard_index", None)
        paths = getattr(self.gguf, "shard_paths", [str(path)])
        self.tensors = {t.name: _GGUFTensor(t.name, tuple(t.shape), t.qtype.name, paths[shard(t.name) if shard else 0])
                        for t in self.gguf.tensors}

    def read(self, name: str) -> np.ndarray:
        t = self._info[name]
        return quants.dequantize(self.gguf.data(name), t.qtype, t.shape)

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        t = self._info[name]
        row = t.qtype.row_size(int(t.shape[-1])) * int(np.prod(t.shape[1:-1], dtype=np.int64))
        raw = self.gguf.read_bytes(name, start * row, stop * row)
        return quants.dequantize(raw, t.qtype, (stop - start, *t.shape[1:]))

    def close(self) -> None:
        self.gguf.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def source_kernel_types(ckpt) -> set[QType]:
    """Types whose dequantize kernels reading `ckpt` calls: a GGUF input's tensor types (none for
    safetensors, which are decoded without kernels)."""
    return {t.qtype for t in ckpt._info.values()} if isinstance(ckpt, GGUFSource) else set()


def _gguf_spec(src: GGUFSource):
    """A ModelSpec for a float GGUF: its metadata and tensors as they are (llama-quantize's view)."""
    from .models.spec import ModelSpec, TensorSpec

    g = src.gguf
    arch = g.value("general.architecture")
    if not isinstance(arch, str):
        raise InputError(f"{src.path}: no general.architecture key")

    def first(key, default=0):
        v = g.value(f"{arch}.{key}", default)
        return int(v[0] if isinstance(v, list) and v else v or default)

    n_head = first("attention.head_count")

    def head_count_kv():  # llama.cpp: head_count when absent, layer 0's entry of a per-layer array (may be 0)
        v = g.value(f"{arch}.attention.head_count_kv", None)
        return n_head if v is None else int(v[0] if isinstance(v, list) and v else v)
    from .io.gguf_split import SPLIT_KEYS

    # llama-quantize drops the split.* keys of a split (or merged) input (llama_model_quantize_impl)
    kv = [(k, vt, v) for k, (vt, v) in g.metadata.items() if k not in SPLIT_KEYS]
    tensors = [TensorSpec(t.name, tuple(t.shape), (t.name,), t.qtype,
                          raw_type=t.qtype if t.qtype in GGUFSource.RAW_TYPES else None) for t in g.tensors]
    return ModelSpec(arch=arch, kv=kv, tensors=tensors, n_layer=first("block_count"), n_head=n_head,
                     n_head_kv=head_count_kv(), n_expert=first("expert_count"),
                     n_embd=first("embedding_length"), tied_embeddings="output.weight" not in src.tensors)


def build_spec(ckpt, model_path, *, config=None, vocab=True, tokenizer_pre=None, fp8_as_q8=False):
    from . import models
    from .io.quantized import QuantizedSource

    if isinstance(ckpt, GGUFSource):
        if fp8_as_q8:
            raise InputError(f"{ckpt.path}: --fp8-as-q8 applies to FP8 safetensors checkpoints, not to a GGUF input")
        return _gguf_spec(ckpt)
    folder = Path(model_path) if Path(model_path).is_dir() else Path(model_path).parent
    if isinstance(ckpt, QuantizedSource):  # the tensors dequant_model leaves, in its order
        hf = [(name, tuple(ti.shape), ti.dtype) for name, ti in ckpt.tensors.items()]
        spec = models.load_spec(folder, config_path=config, vocab=vocab, tokenizer_pre=tokenizer_pre, hf_tensors=hf)
    else:
        shapes = {name: (tuple(ti.shape), ti.dtype) for name, ti in ckpt.tensors.items()}
        headers = {f.path: [(t.name, t.shape, t.dtype) for t in f.tensors.values()] for f in ckpt.files}
        spec = models.load_spec(folder, shapes, config_path=config, vocab=vocab, tokenizer_pre=tokenizer_pre,
                                headers=headers)
    if fp8_as_q8:
        force_fp8_q8(spec, getattr(ckpt, "fp8_dequantized", set()))
    return spec


# conversion/base.py ModelBase.tensor_force_quant (--fp8-as-q8) and prepare_tensors' F32 rule after it
def force_fp8_q8(spec, fp8_names: set[str]) -> None:
    """--fp8-as-q8: tensors dequantized from FP8 are stored as Q8_0 (of their float32 values, no BF16
    rounding) in the intermediate, unless 1-D or a norm (F32); a row that is not a whole number
    of Q8_0 blocks makes gguf-py raise QuantError, and prepare_tensors falls back to F16."""
    for t in spec.tensors:
        hit = [s in fp8_names for s in t.sources]
        if not any(hit):
            continue
        if not all(hit):
            raise UnsupportedError(f"tensor {t.name} merges FP8 and non-FP8 sources; --fp8-as-q8 cannot type it")
        if len(t.shape) >= 2 and not t.name.endswith("_norm.weight"):
            t.ref_type = QType.Q8_0 if t.shape[-1] % QType.Q8_0.block_size == 0 else QType.F16


def source_type(ckpt, spec_t) -> str:
    """What a GGUF tensor is built from: the source dtype or quantization scheme ("generated" if none)."""
    if not spec_t.sources:
        return "generated"
    types = getattr(ckpt, "source_types", None)
    kinds = [types[s] if types is not None else ckpt.tensors[s].dtype for s in spec_t.sources]
    return kinds[0] if len(set(kinds)) == 1 else ", ".join(dict.fromkeys(kinds))


def annotate_sources(plan: "Plan", ckpt) -> "Plan":
    """Fill each planned tensor's source_type (for --dry-run --json)."""
    for t in plan.tensors:
        t.source_type = source_type(ckpt, t.spec)
    return plan


def plan_from_spec(spec, ftype: FileType, overrides=None, imatrix=None, type_map=None, dry_run: bool = False) -> Plan:
    """Per-tensor types (and importance rows) exactly as llama-quantize would choose them."""
    from .plan import recipe
    from .plan.imatrix import weights_for
    from .plan.overrides import Overrides

    # llama-quantize processes and writes tensors in llama_model_loader's order
    specs = [spec.tensors[i] for i in recipe.llama_order([t.name for t in spec.tensors])]
    facts = recipe.ModelFacts(
        arch=spec.arch,
        n_layer=spec.n_layer,
        n_head=spec.n_head,
        n_head_kv=spec.n_head_kv,  # layer 0's (0 for a recurrent layer); head_count when the key is absent
        n_expert=spec.n_expert,
    )
    weights = imatrix.weights if imatrix is not None else {}
    # a raw_type tensor is requantized as llama-quantize --allow-requantize does it (its source holds
    # that type; llama.cpp's converter passes it through, so that is the only way to another type)
    tin = [recipe.TensorIn(t.name, tuple(t.shape), t.ref_type, t.raw_type is not None) for t in specs]
    types = recipe.plan_types(tin, ftype, facts, overrides or Overrides(), has_imatrix=bool(weights), dry_run=dry_run)
    need = recipe.needs_imatrix(tin, types, ftype) if dry_run and not weights else None
    if type_map:  # kquant.automix's choice (block sizes already checked there)
        types = [type_map.get(t.name, q) for t, q in zip(tin, types)]
        recipe.check_storable(tin, types)  # e.g. --fp8-as-q8's Q8_0 tensors are not requantized
        # the types llama-quantize refuses without an imatrix (weights_for below checks them when there is one)
        miss = None if weights else recipe.needs_imatrix(tin, types, ftype)
        if miss is not None:
            raise InputError(f"Missing importance matrix for tensor {miss[0]} in a very low-bit quantization "
                             f"({miss[1].name}): give --imatrix")
    tensors = []
    for s_, q in zip(specs, types):
        w = weights_for(weights, s_.name, tuple(s_.shape), s_.ref_type, q, ftype) if weights else None
        if type_map and s_.name in type_map and w is None and q.requires_imatrix:  # ggml_quantize_chunk aborts
            raise InputError(f"tensor {s_.name}: type {q.name} needs importance rows for it (ggml_quantize_chunk "
                             f"aborts without them)")
        tensors.append(PlannedTensor(s_, q, w))
    kv = list(spec.kv)
    return Plan(ftype, spec.arch, kv, tensors, imatrix.kv() if weights else [], need, spec.not_converted)


def require_kernels(plans: Sequence[Plan]) -> None:
    """UnsupportedError (one line, before any output is opened) when a planned type has no kernels yet."""
    have = quants.registry()
    for p in plans:
        for t in p.tensors:
            if t.qtype not in have:
                raise UnsupportedError(
                    f"{p.ftype.short_name}: tensor {t.name} would be {t.qtype.name}, which kquant has no kernels "
                    f"for yet (--dry-run shows the plan)"
                )


def output_kv(plan: Plan, rounding: str = "ggml") -> list:
    """Metadata as llama-quantize writes it: the input's keys, quantization_version, file_type, imatrix keys;
    then `quantize.rounding` when the rounding is not ggml's (ggml mode stays byte-identical)."""
    from gguf import GGUFValueType

    kv = []
    for key, vtype, value in plan.kv:
        if key in (QUANT_VERSION_KEY, FILE_TYPE_KEY):
            continue
        if vtype == GGUFValueType.ARRAY and getattr(value, "sub_type", None) is None:
            # element type as gguf-py's GGUFWriter.add_array infers it (str, float32, int32, bool)
            sub = GGUFValueType.get_type(value[0]) if len(value) else GGUFValueType.UINT8
            kv.append((key, sub, value))
        else:
            kv.append((key, vtype, value))
    kv.append((QUANT_VERSION_KEY, GGUFValueType.UINT32, GGML_QNT_VERSION))
    kv.append((FILE_TYPE_KEY, GGUFValueType.UINT32, int(plan.ftype)))
    if plan.imatrix_kv:  # llama-quantize's kv_overrides: set (moved to the end) after file_type
        keys = {k for k, _, _ in plan.imatrix_kv}
        kv = [e for e in kv if e[0] not in keys] + list(plan.imatrix_kv)
    if rounding != "ggml":
        kv = [e for e in kv if e[0] != ROUNDING_KEY] + [(ROUNDING_KEY, GGUFValueType.STRING, rounding)]
    return kv


def round_through(x: np.ndarray, t: QType, inplace: bool = False) -> np.ndarray:
    """Values as the intermediate GGUF stores them (BF16 / F16 rounding; F32 unchanged; a quantized
    intermediate unchanged: its slabs are read dequantized from it, see iter_source_slabs).
    `inplace`: x is the caller's own array (a fresh slab) and BF16 rounding may overwrite it."""
    if t == QType.F32 or t.is_quantized:
        return x
    if t == QType.BF16:
        if not (inplace and x.dtype == np.float32 and x.flags.c_contiguous and x.flags.writeable):
            x = np.array(x, dtype=np.float32, order="C")  # one copy, rounded in place below
        return quants.round_bf16_inplace(x)
    if t == QType.F16:
        return x.astype(np.float16).astype(np.float32)
    raise ValueError(f"unexpected intermediate type {t.name}")


def read_flat_rows(ckpt, name: str, a: int, b: int) -> np.ndarray:
    """Rows [a, b) of a source seen as 2-D (all axes but the last flattened: a pre-stacked expert
    tensor [n_expert, rows, cols] has n_expert * rows rows), as float32, reading only those bytes."""
    from .io.quantized import STORAGE, decode

    ti = ckpt.tensors[name]
    shape = tuple(ti.shape)
    cols = shape[-1]
    if len(shape) <= 2:
        return ckpt.read_rows(name, a, b).reshape(b - a, cols)
    if ti.dtype in ("F32", "F16", "BF16") and ti.dtype in STORAGE and hasattr(ckpt, "read_raw_range"):
        item = np.dtype(STORAGE[ti.dtype]).itemsize
        raw = ckpt.read_raw_range(name, a * cols * item, (b - a) * cols * item)
        return decode(raw, ti.dtype).reshape(b - a, cols)
    inner = int(np.prod(shape[1:-1], dtype=np.int64))  # a dequantized source: whole leading rows
    r0, r1 = a // inner, -(-b // inner)
    return ckpt.read_rows(name, r0, r1).reshape(-1, cols)[a - r0 * inner: b - r0 * inner]


def _transposed_rows(ckpt, spec, idx: np.ndarray, slab_bytes: int) -> np.ndarray:
    """Output rows `idx` (flattened [expert, out] rows) of a source stored [n_expert, in, out]: each
    is a column of its expert's matrix, read a quarter of `slab_bytes` of source rows at a time."""
    src = spec.sources[0]
    # [.., in, out]: `in` is the output's columns; a 2-D source [n_expert * in, out] (DBRX) reads the same
    n_in, n_out = spec.shape[-1], ckpt.tensors[src].shape[-1]
    out = np.empty((len(idx), n_in), dtype=np.float32)
    step = max(1, slab_bytes // 4 // max(n_out * 4, 1))
    experts = idx // n_out
    cuts = np.flatnonzero(np.diff(experts)) + 1
    for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(idx)]):
        e, cs = int(experts[lo]), idx[lo:hi] % n_out
        for h0 in range(0, n_in, step):
            h1 = min(n_in, h0 + step)
            out[lo:hi, h0:h1] = read_flat_rows(ckpt, src, e * n_in + h0, e * n_in + h1)[:, cs].T
    return out


def iter_raw_slabs(ckpt, spec, slab_bytes: int = SLAB_BYTES):
    """Yield (row_start, uint8 2-D slab) of a raw_type tensor: its rows' bytes in that ggml type.

    MXFP4 sources (`sources` = (codes, scales)) are [..., rows, cols / 32, 16] uint8 codes, two per
    byte (element 2i in the low nibble), and [..., rows, cols / 32] E8M0 exponents: repacked into
    block_mxfp4 rows (io.quantized.repack_mxfp4), which only moves bits."""
    from .io.quantized import repack_mxfp4

    if isinstance(ckpt, GGUFSource):  # already ggml blocks: the rows' bytes as stored
        t = ckpt._info[spec.sources[0]]
        row = t.qtype.row_size(int(t.shape[-1]))
        rows = int(np.prod(t.shape[:-1], dtype=np.int64))
        step = max(1, slab_bytes // max(int(t.shape[-1]) * 4, 1))
        for a in range(0, rows, step):
            b = min(rows, a + step)
            yield a, ckpt.gguf.read_bytes(t.name, a * row, b * row).reshape(b - a, row)
        return
    if spec.raw_type != QType.MXFP4:
        raise UnsupportedError(f"{spec.name}: pre-quantized {spec.raw_type.name} sources are not supported")
    packed, scales = spec.sources
    cols = spec.shape[-1]
    nb = cols // QType.MXFP4.block_size
    pb, sb = nb * QType.MXFP4.block_size // 2, nb  # source bytes per row: codes, scales
    rows = int(np.prod(spec.shape[:-1], dtype=np.int64))
    step = max(1, slab_bytes // max(cols * 4, 1))
    perm = None if spec.row_perm is None else np.asarray(spec.row_perm, dtype=np.int64)
    for a in range(0, rows, step):
        b = min(rows, a + step)
        idx = np.arange(a, b, dtype=np.int64) if perm is None else perm[a:b]
        lo, hi = int(idx.min()), int(idx.max()) + 1
        p = ckpt.read_raw_range(packed, lo * pb, (hi - lo) * pb).reshape(hi - lo, pb)[idx - lo]
        s_ = ckpt.read_raw_range(scales, lo * sb, (hi - lo) * sb).reshape(hi - lo, sb)[idx - lo]
        yield a, repack_mxfp4(p, s_)


def iter_source_slabs(ckpt, spec, slab_bytes: int = SLAB_BYTES):
    """Yield (row_start, float32 2-D slab) of a tensor in output row order.

    A tensor that is a plain copy or a row gather of one source (2-D, or pre-stacked experts,
    transposed or not) and a stack of 2-D sources (merged experts) are streamed in slabs of about
    `slab_bytes`; a raw_type tensor yields its bytes dequantized; anything else (generated,
    transformed, 1-D) is built whole by TensorSpec.materialize."""
    shape = tuple(spec.shape)
    cols = shape[-1] if shape else 1
    rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    if spec.raw_type is not None:
        for a, raw in iter_raw_slabs(ckpt, spec, slab_bytes):
            yield a, quants.dequantize(raw, spec.raw_type, (raw.shape[0], cols))
        return
    # one source holding whole experts: [n_expert, rows, cols], or 2-D [n_expert * rows, cols] (DBRX's fused experts)
    stacked = len(spec.sources) == 1 and len(shape) >= 3 and len(ckpt.tensors[spec.sources[0]].shape) in (2, len(shape))
    streamable = (spec.generated is None and spec.transform is None and len(spec.sources) == 1
                  and ((len(shape) == 2 and len(ckpt.tensors[spec.sources[0]].shape) == 2) or stacked))
    if spec.transform is stack and spec.row_perm is None and len(shape) == 3 and len(spec.sources) == shape[0] \
            and all(tuple(ckpt.tensors[s].shape) == shape[1:] for s in spec.sources):
        yield from _stacked_slabs(ckpt, spec.sources, shape[1], cols, slab_bytes)
        return
    if not streamable:
        yield 0, np.ascontiguousarray(spec.materialize(ckpt.read), dtype=np.float32).reshape(rows, cols)
        return
    src = spec.sources[0]
    step = max(1, slab_bytes // max(cols * 4, 1))
    per = shape[-2] if len(shape) >= 3 else rows
    if spec.transpose and per * cols * 4 <= 4 * slab_bytes:
        # whole experts per slab: every slab reads its experts' source matrices once (a slab that
        # cut an expert would read all of that expert's rows for a part of its columns)
        step = per * max(1, slab_bytes // (per * cols * 4))
    perm = None if spec.row_perm is None else np.asarray(spec.row_perm, dtype=np.int64)
    for a in range(0, rows, step):
        b = min(rows, a + step)
        if spec.transpose:
            chunk = _transposed_rows(ckpt, spec, np.arange(a, b, dtype=np.int64) if perm is None else perm[a:b], slab_bytes)
        elif perm is None:
            chunk = read_flat_rows(ckpt, src, a, b)
        else:  # Q/K permutation (within heads), a trim, a split: read the covering row range, gather
            idx = perm[a:b]
            lo, hi = int(idx.min()), int(idx.max()) + 1
            chunk = read_flat_rows(ckpt, src, lo, hi)[idx - lo]
        yield a, np.ascontiguousarray(chunk, dtype=np.float32).reshape(b - a, cols)


M_MMAP_THRESHOLD = -3  # glibc malloc.h mallopt parameter
MMAP_THRESHOLD = 1 << 20


def _libc():
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def map_large_blocks() -> None:
    """Have glibc serve every block of 1 MB or more (slabs, reads, quantized rows) from its own
    mapping, returned to the OS when freed. By default glibc raises this threshold to the size of
    the largest block freed so far, and from then on keeps slab-sized blocks in a heap that only
    grows: measured on a 0.59B MoE, 60-80 MB more peak RSS."""
    mallopt = getattr(_libc(), "mallopt", None)  # glibc; elsewhere there is no such symbol
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def release_free_memory() -> None:
    """Return heap pages freed since start-up (the tokenizer.json parses: ~70 MB for a 129k-token BPE
    vocabulary) to the OS; glibc keeps them otherwise, and they add to the peak RSS of the tensor loop."""
    gc.collect()
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


def _stacked_slabs(ckpt, sources, rows_per: int, cols: int, slab_bytes: int):
    """Slabs of a stack of 2-D sources (merged experts): output row r is row r % rows_per of
    source r // rows_per, read a slab at a time, never the whole stack."""
    rows = len(sources) * rows_per
    step = max(1, slab_bytes // max(cols * 4, 1))
    for a in range(0, rows, step):
        b = min(rows, a + step)
        slab = np.empty((b - a, cols), dtype=np.float32)
        r = a
        while r < b:  # filled part by part: one expert's rows at a time besides the slab
            e, lo = divmod(r, rows_per)
            hi = min(rows_per, lo + (b - r))
            slab[r - a : r - a + hi - lo] = ckpt.read_rows(sources[e], lo, hi).reshape(hi - lo, cols)
            r += hi - lo
        yield a, slab
        del slab


@dataclass
class TensorResult:
    name: str
    qtype: QType
    shape: tuple
    nbytes: int
    seconds: float


@dataclass
class Result:
    path: str
    ftype: FileType
    n_tensors: int
    total_bytes: int
    n_elements: int
    seconds: float
    file_bytes: int = 0  # all shards of a split output
    shards: list = field(default_factory=list)  # a split output's files, first shard first (else empty)

    @property
    def bpw(self) -> float:
        return self.total_bytes * 8.0 / max(self.n_elements, 1)

    def as_json(self) -> dict:
        return {
            "output": self.path,
            "file_type": self.ftype.short_name,
            "n_tensors": self.n_tensors,
            "tensor_bytes": self.total_bytes,
            "file_bytes": self.file_bytes,
            "n_elements": self.n_elements,
            "bits_per_weight": round(self.bpw, 4),
            "seconds": round(self.seconds, 3),
            **({"shards": self.shards} if self.shards else {}),
        }


def convert_many(model, targets: Sequence[tuple[str | Path, FileType]], options: Options | None = None) -> list[Result]:
    """Convert one checkpoint to several file types in one read of the source.

    `model` is a path (HF folder / .safetensors). Each target gets its own atomic output file.
    """
    from .io.fsutil import track_inputs

    with track_inputs():
        return _convert_many(model, targets, options)


def _convert_many(model, targets, options: Options | None) -> list[Result]:
    from .io.fsutil import (AtomicFileSet, atomic_output, check_not_input, check_output, handle_termination,
                            inputs_read, note_input)
    from .io.gguf import GGUFStreamWriter
    from .io.gguf_split import SplitWriter, describe_existing, existing_shards, split_prefix

    opts = options or Options()
    if opts.threads is not None:
        quants.set_threads(opts.threads)
    rounding = quants.parse_rounding(opts.rounding)
    map_large_blocks()
    t0 = time.perf_counter()
    note_input(model)
    if opts.config is not None:
        note_input(opts.config)
    with open_model(model, opts.config) as ckpt:
        spec = build_spec(ckpt, model, config=opts.config, vocab=True, tokenizer_pre=opts.tokenizer_pre,
                          fp8_as_q8=opts.fp8_as_q8)
        release_free_memory()
        inputs = inputs_read()  # config, tokenizer files, index, shards, imatrix: all read by now
        if spec.not_converted and opts.progress:
            print(f"kquant: note: {models_note(spec.not_converted)}", file=sys.stderr, flush=True)
        plans = [plan_from_spec(spec, parse_ftype(ft), opts.overrides, opts.imatrix, opts.type_map) for _, ft in targets]
        outs = [Path(o) for o, _ in targets]
        if len(set(map(str, outs))) != len(outs):
            raise OutputError("the same output path is given twice")
        for o in outs:
            check_not_input(o, inputs)
            if opts.split is not None:  # OUT.gguf names the shards OUT-00001-of-0000N.gguf
                split_prefix(o)  # refuses an output already named like a shard
                check_output(o, True)  # the folder: exists, writable
                problem = None if opts.force else describe_existing(o)
                if problem:
                    raise OutputError(f"{problem} (use --force to overwrite)")
            else:
                check_output(o, opts.force)  # exists, unwritable folder: before a kernel compiles
        names = [t.name for t in plans[0].tensors]
        for p in plans[1:]:
            assert [t.name for t in p.tensors] == names
        require_kernels(plans)
        # a cold numba cache: compile every kernel needed at once, in parallel processes
        # (dequantizers: only those reading the sources)
        warm.warm({t.qtype for p in plans for t in p.tensors if t.qtype != QType.F32},
                  dequant=source_kernel_types(ckpt) | {t.raw_type for t in spec.tensors if t.raw_type is not None},
                  on_start=opts.on_compile, rounding=rounding)
        results: list[Result] = []
        with handle_termination(), _ExitStack() as stack:
            writers = []
            for out, plan in zip(outs, plans):
                if opts.split is not None:  # llama-gguf-split's shards of the same single file

                    def files(paths, out=out):
                        for sp in paths:
                            check_not_input(sp, inputs)
                        return stack.enter(AtomicFileSet(paths, opts.force, stale=existing_shards(out)))

                    w = SplitWriter(out, opts.split, files)
                else:
                    f = stack.enter(atomic_output(out, force=opts.force))
                    w = GGUFStreamWriter(f, ggml_n_dims=True, name=str(out))  # llama-quantize's n_dims
                for key, vtype, value in output_kv(plan, rounding):
                    w.add_kv(key, vtype, value)
                for t in plan.tensors:
                    w.add_tensor(t.name, t.shape, t.qtype)
                w.write_header()
                writers.append(w)
            n = len(names)
            for i in range(n):
                spec_t = plans[0].tensors[i].spec
                ts = time.perf_counter()
                fresh = spec_t.generated is None and spec_t.transform in (None, stack)  # slabs the loop may overwrite

                def checked(slab, spec_t=spec_t):
                    if not opts.allow_nonfinite:
                        bad = int(quants.count_nonfinite(slab))
                        if bad:
                            raise InputError(
                                f"{model}: tensor {', '.join(spec_t.sources) or spec_t.name} has {bad} non-finite value(s) (NaN/Inf)"
                            )
                    return slab

                def encode(slab, pt, row0, spec_t=spec_t):
                    try:
                        return _encode(slab, pt, row0, rounding)
                    except ValueError as e:  # e.g. values beyond the fp16 range of the type's scales
                        raise InputError(f"{model}: tensor {pt.name} ({', '.join(spec_t.sources)}): {e}") from None

                if spec_t.raw_type is not None:  # already quantized: copied, or dequantized and requantized
                    for row0, raw in iter_raw_slabs(ckpt, spec_t):
                        floats = None
                        for w, plan in zip(writers, plans):
                            pt = plan.tensors[i]
                            if pt.qtype == spec_t.raw_type:
                                w.write_data(pt.name, raw)
                                continue
                            if floats is None:
                                floats = checked(quants.dequantize(raw, spec_t.raw_type, (raw.shape[0], spec_t.shape[-1])))
                            w.write_data(pt.name, encode(floats, pt, row0))
                    slabs = ()
                else:
                    slabs = iter_source_slabs(ckpt, spec_t)
                for row0, slab in slabs:
                    checked(slab)
                    if not spec_t.ref_type.is_quantized:  # a quantized intermediate (Q8_0) is copied: encode the floats
                        slab = round_through(slab, spec_t.ref_type, inplace=fresh)
                    for w, plan in zip(writers, plans):
                        pt = plan.tensors[i]
                        w.write_data(pt.name, encode(slab, pt, row0))
                dt = time.perf_counter() - ts
                if opts.progress:
                    opts.progress(i + 1, n, [p.tensors[i] for p in plans], dt)
            for w in writers:
                w.finish()
            stack.commit()
        elapsed = time.perf_counter() - t0
        for out, plan, w in zip(outs, plans, writers):
            shards = [str(p) for p in getattr(w, "paths", ())]
            first = Path(shards[0]) if shards else out
            size = sum(Path(p).stat().st_size for p in shards) if shards else out.stat().st_size
            results.append(Result(str(first), plan.ftype, len(plan.tensors), plan.total_bytes, plan.n_elements,
                                  elapsed, size, shards))
    return results


def _encode(slab: np.ndarray, pt: PlannedTensor, row0: int, rounding: str = "ggml") -> np.ndarray:
    """Bytes of rows [row0, row0 + len(slab)) of a tensor in its planned type."""
    t = pt.qtype
    if t == QType.F32:
        return slab.reshape(-1).view(np.uint8)
    w = pt.imatrix
    if w is None or w.shape[0] == 1:
        return quants.quantize(slab, t, None if w is None else w[0], check_finite=False, rounding=rounding)
    # 3-D expert tensor: each expert's rows use that expert's weights (llama_tensor_quantize_impl)
    from .plan.imatrix import expert_runs

    out = np.empty((slab.shape[0], t.row_size(slab.shape[1])), dtype=np.uint8)
    for e, a, b in expert_runs(row0, slab.shape[0], pt.shape[-2]):
        quants.quantize(slab[a:b], t, w[e], out=out[a:b], check_finite=False, rounding=rounding)
    return out


class _ExitStack:
    """Enter several atomic outputs; on success commit them all, else abort them all."""

    def __init__(self):
        self._cms = []
        self._ok = False

    def enter(self, cm):
        v = cm.__enter__()
        self._cms.append(cm)
        return v

    def commit(self):
        self._ok = True

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        exc = (et, ev, tb) if not self._ok or et is not None else (None, None, None)
        if exc[0] is None and not self._ok:
            exc = (RuntimeError, RuntimeError("aborted"), None)
        pending = None
        for cm in reversed(self._cms):
            try:
                cm.__exit__(*exc)
            except BaseException as e:  # keep aborting the others
                pending = pending or e
        # an exit that raised something new (an OSError rewritten as "cannot write (file too
        # large)") replaces the exception it was given, as in a nested `with`
        if pending is not None and pending is not ev:
            raise pending
        return False


def convert(model, out, ftype="Q4_K_M", options: Options | None = None) -> Result:
    """Convert one checkpoint to one GGUF file."""
    return convert_many(model, [(out, ftype)], options)[0]


def dry_run(model, ftype="Q4_K_M", options: Options | None = None) -> Plan:
    """The plan from config.json and the safetensors headers only: no tensor data, no tokenizer."""
    opts = options or Options()
    with open_model(model, opts.config) as ckpt:
        spec = build_spec(ckpt, model, config=opts.config, vocab=False, tokenizer_pre=opts.tokenizer_pre,
                          fp8_as_q8=opts.fp8_as_q8)
        plan = plan_from_spec(spec, parse_ftype(ftype), opts.overrides, opts.imatrix, opts.type_map, dry_run=True)
        return annotate_sources(plan, ckpt)


def models_note(names) -> str:
    from .models import not_converted_note

    return not_converted_note(names)


def print_compile_notice(types, stream=sys.stderr) -> None:
    print(f"compiling the {', '.join(t.ggml_name for t in types)} kernels (first run only: numba caches them) ...",
          file=stream, flush=True)


def print_progress(i: int, n: int, tensors, seconds: float, stream=sys.stderr) -> None:
    t = tensors[0]
    mb = t.n_elements * 4 / 1e6
    rate = mb / seconds if seconds > 0 else float("inf")
    types = ",".join(x.qtype.ggml_name for x in tensors)
    shape = "x".join(str(d) for d in reversed(t.shape))
    print(f"[{i:4d}/{n}] {t.name:40s} {shape:>16s} -> {types:8s} {rate:8.0f} MB/s", file=stream, flush=True)


def plan_summary_json(plan: Plan) -> str:
    return json.dumps(plan.as_json(), indent=1)
