"""The ggml tensor types: one declaration each, everything else derived from it.

`TYPES` below is the one table of truth. Each `TypeDecl` states, for one ggml type:

- `name`, `id`: ggml.h `enum ggml_type` (the QType enum is built from these);
- `block_size`, `type_size`: values and bytes per block, as ggml's `type_traits` state them;
- `fields`: the block layout, field by field in ggml-common.h order, as (name, dtype[, count]).
  The numpy structured dtype built from it (`BLOCK_DTYPES[t]`) must add up to `type_size`:
  checked at import, as ggml-common.h's `static_assert`s do. Kernels read field offsets from it
  (`field_offsets`), never from magic numbers;
- `kernels`: the module under kquant.ggml.kernels that implements it (its `KERNELS` dict must
  register this type; a declared module that does not exist yet = no kernels, and
  quantize/dequantize raise NotImplementedError naming the type);
- `fallback`: llama-quant.cpp `tensor_type_fallback`'s target when a row is not a multiple of
  the block size (None: a block of <= 32 stays and then becomes F16; a larger block has no
  fallback and llama-quantize aborts);
- `compile_s`: CPU seconds to compile its quantizer alone from an empty numba cache in a fresh
  process, beyond the checks' kernels every process compiles (scripts/bench_compile.py --types
  NAME, measured on a loaded machine: a guide); kquant.ggml.warm balances the cold-cache
  warm-up processes by it (types sharing one compiled quantizer, Q4_K and Q5_K, count it once);
- `automix`: the row classes (256: rows that are a multiple of 256, 32: a multiple of 32 only,
  1: any other length) in which `--target-bpw` may choose it (where the row is also a multiple of
  its block).

Adding a type is one `TypeDecl` line here plus its kernel module (README "Adding a quant type").
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

QK = 32  # legacy block size (QK4_0 .. QK8_0, QK4_NL, QK_MXFP4)
QK_K = 256  # k-quant / i-quant super-block size
K_SCALE_SIZE = 12
QK1_0 = 128
QK2_0 = 64

HALF = "<u2"  # ggml_half, stored as raw IEEE bits (kernels convert by hand: numba has no float16)
U8, I8, U16 = "u1", "i1", "<u2"


@dataclass(frozen=True)
class TypeDecl:
    name: str
    id: int
    block_size: int
    type_size: int
    fields: tuple
    kernels: str | None = None
    fallback: str | None = None
    compile_s: float = 2.0
    automix: tuple[int, ...] = ()

    @property
    def dtype(self) -> np.dtype:
        return np.dtype([(f[0], f[1]) if len(f) == 2 else (f[0], f[1], f[2]) for f in self.fields])


D = TypeDecl
# fmt: off
TYPES: tuple[TypeDecl, ...] = (
    # name      id  block  bytes  fields (ggml-common.h block_*)                                          kernels   fallback  compile_s  automix
    D("F32",     0,     1,    4, (("v", "<f4"),),                                                        "floats",  None, 0.3),
    D("F16",     1,     1,    2, (("v", HALF),),                                                         "floats",  None, 1.1, (1,)),
    D("Q4_0",    2,    QK,   18, (("d", HALF), ("qs", U8, QK // 2)),                                     "legacy",  None, 6.9, (32,)),
    D("Q4_1",    3,    QK,   20, (("d", HALF), ("m", HALF), ("qs", U8, QK // 2)),                        "legacy",  None, 5.3, (32,)),
    D("Q5_0",    6,    QK,   22, (("d", HALF), ("qh", U8, 4), ("qs", U8, QK // 2)),                      "legacy",  None, 7.3, (32,)),
    D("Q5_1",    7,    QK,   24, (("d", HALF), ("m", HALF), ("qh", U8, 4), ("qs", U8, QK // 2)),         "legacy",  None, 6.3, (32,)),
    D("Q8_0",    8,    QK,   34, (("d", HALF), ("qs", I8, QK)),                                          "legacy",  None, 2.4, (256, 32)),
    D("Q2_K",   10,  QK_K,   84, (("scales", U8, QK_K // 16), ("qs", U8, QK_K // 4), ("d", HALF), ("dmin", HALF)),
                                                                                                           "q2_k",  "Q4_0", 8.5, (256,)),
    D("Q3_K",   11,  QK_K,  110, (("hmask", U8, QK_K // 8), ("qs", U8, QK_K // 4), ("scales", U8, 12), ("d", HALF)),
                                                                                                           "q3_k",  "Q4_0", 13.5, (256,)),
    D("Q4_K",   12,  QK_K,  144, (("d", HALF), ("dmin", HALF), ("scales", U8, K_SCALE_SIZE), ("qs", U8, QK_K // 2)),
                                                                                                           "q4_k",  "Q5_0", 9.5, (256,)),
    D("Q5_K",   13,  QK_K,  176, (("d", HALF), ("dmin", HALF), ("scales", U8, K_SCALE_SIZE), ("qh", U8, QK_K // 8),
                                  ("qs", U8, QK_K // 2)),                                                  "q5_k",  "Q5_1", 9.5, (256,)),
    D("Q6_K",   14,  QK_K,  210, (("ql", U8, QK_K // 2), ("qh", U8, QK_K // 4), ("scales", I8, QK_K // 16), ("d", HALF)),
                                                                                                           "q6_k",  "Q8_0", 4.5, (256,)),
    D("IQ2_XXS", 16, QK_K,   66, (("d", HALF), ("qs", U16, QK_K // 8)),                                  "iq2", "IQ4_NL", 7.2, (256,)),
    D("IQ2_XS", 17,  QK_K,   74, (("d", HALF), ("qs", U16, QK_K // 8), ("scales", U8, QK_K // 32)),      "iq2", "IQ4_NL", 7.1, (256,)),
    D("IQ3_XXS", 18, QK_K,   98, (("d", HALF), ("qs", U8, 3 * QK_K // 8)),                               "iq3", "IQ4_NL", 6.3, (256,)),
    D("IQ1_S",  19,  QK_K,   50, (("d", HALF), ("qs", U8, QK_K // 8), ("qh", U16, QK_K // 32)),          "iq1", "IQ4_NL", 9.5, (256,)),
    D("IQ4_NL", 20,    QK,   18, (("d", HALF), ("qs", U8, QK // 2)),                                     "iq4",    None, 2.9, (32,)),
    D("IQ3_S",  21,  QK_K,  110, (("d", HALF), ("qs", U8, QK_K // 4), ("qh", U8, QK_K // 32), ("signs", U8, QK_K // 8),
                                  ("scales", U8, QK_K // 64)),                                            "iq3", "IQ4_NL", 6.2, (256,)),
    D("IQ2_S",  22,  QK_K,   82, (("d", HALF), ("qs", U8, QK_K // 4), ("qh", U8, QK_K // 32), ("scales", U8, QK_K // 32)),
                                                                                                           "iq2", "IQ4_NL", 5.8, (256,)),
    D("IQ4_XS", 23,  QK_K,  136, (("d", HALF), ("scales_h", U16), ("scales_l", U8, QK_K // 64), ("qs", U8, QK_K // 2)),
                                                                                                           "iq4", "IQ4_NL", 2.9, (256,)),
    D("IQ1_M",  29,  QK_K,   56, (("qs", U8, QK_K // 8), ("qh", U8, QK_K // 16), ("scales", U8, QK_K // 32)), "iq1", "IQ4_NL", 9.5, (256,)),
    D("BF16",   30,     1,    2, (("v", U16),),                                                          "floats",  None, 0.3),
    D("TQ1_0",  34,  QK_K,   54, (("qs", U8, (QK_K - 4 * QK_K // 64) // 5), ("qh", U8, QK_K // 64), ("d", HALF)),
                                                                                                           "tq",    "Q4_0", 1.7, automix=(256,)),
    D("TQ2_0",  35,  QK_K,   66, (("qs", U8, QK_K // 4), ("d", HALF)),                                   "tq",    "Q4_0", 1.0, automix=(256,)),
    D("MXFP4",  39,    QK,   17, (("e", U8), ("qs", U8, QK // 2)),                                       "mxfp4",   None, 1.0, automix=(32,)),
    D("Q1_0",   41, QK1_0,   18, (("d", HALF), ("qs", U8, QK1_0 // 8)),                                  "q1q2",    None, 1.0, automix=(256, 32)),
    D("Q2_0",   42, QK2_0,   18, (("d", HALF), ("qs", U8, QK2_0 // 4)),                                  "q1q2",  "Q4_0", 1.0, automix=(256, 32)),
)
# fmt: on
del D

# ggml.c ggml_quantize_requires_imatrix: ggml_quantize_chunk asserts imatrix != NULL for these
REQUIRES_IMATRIX = frozenset({"IQ2_XXS", "IQ2_XS", "IQ1_S"})


class _QTypeBase(IntEnum):
    """Methods of QType (its members come from TYPES)."""

    @property
    def decl(self) -> TypeDecl:
        return DECLS[self]

    @property
    def block_size(self) -> int:
        return DECLS[self].block_size

    @property
    def type_size(self) -> int:
        return DECLS[self].type_size

    @property
    def is_quantized(self) -> bool:
        return DECLS[self].block_size > 1

    @property
    def requires_imatrix(self) -> bool:
        """ggml.c ggml_quantize_requires_imatrix: ggml_quantize_chunk aborts without importance weights."""
        return self.name in REQUIRES_IMATRIX

    @property
    def ggml_name(self) -> str:
        """The name ggml prints (`q4_K`, `f16`, `iq2_xxs`, ...)."""
        n = self.name.lower()
        return n[:-2] + "_K" if n.endswith("_k") else n

    def row_size(self, n_per_row: int) -> int:
        """Bytes of one row of `n_per_row` values (ggml_row_size)."""
        d = DECLS[self]
        if n_per_row % d.block_size:
            raise ValueError(f"{self.name}: row length {n_per_row} is not a multiple of block size {d.block_size}")
        return n_per_row // d.block_size * d.type_size

    def nbytes(self, shape) -> int:
        """Bytes of a tensor of `shape` (numpy order, last axis = row)."""
        n_rows = 1
        for d in shape[:-1]:
            n_rows *= int(d)
        return n_rows * self.row_size(int(shape[-1])) if len(shape) else self.type_size


# ggml tensor types kquant reads, writes or quantizes (ggml.h `enum ggml_type`), from TYPES
QType = _QTypeBase("QType", [(d.name, d.id) for d in TYPES], module=__name__, qualname="QType")

DECLS: dict[QType, TypeDecl] = {QType[d.name]: d for d in TYPES}
BLOCK_DTYPES: dict[QType, np.dtype] = {t: d.dtype for t, d in DECLS.items()}  # ggml-common.h block layouts

for _t, _d in DECLS.items():  # ggml-common.h static_assert(sizeof(block_x) == ...)
    assert BLOCK_DTYPES[_t].itemsize == _d.type_size, f"{_t.name}: block fields add up to {BLOCK_DTYPES[_t].itemsize} bytes, ggml says {_d.type_size}"
    assert _d.fallback is None or _d.fallback in QType.__members__, f"{_t.name}: unknown fallback {_d.fallback}"
    assert _d.fallback is not None or _d.block_size <= QK or _d.name == "Q1_0", f"{_t.name}: needs a fallback"
del _t, _d

# llama-quant.cpp tensor_type_fallback: type -> type to use when a row is not a multiple of its block
FALLBACK: dict[QType, QType] = {t: QType[d.fallback] for t, d in DECLS.items() if d.fallback}
AUTOMIX_ROW_CLASSES = (256, 32, 1)  # see TypeDecl.automix


def field_offsets(t: QType, *names: str) -> tuple[int, ...]:
    """Byte offsets of block fields `names` of type `t` (from its structured dtype), for kernels:
    `Q4K_D, Q4K_QS = field_offsets(QType.Q4_K, "d", "qs")` gives module-level ints numba sees
    as compile-time constants."""
    dt = BLOCK_DTYPES[t]
    return tuple(int(dt.fields[n][1]) for n in names)


def automix_candidates(row_class: int) -> tuple[QType, ...]:
    """Types `--target-bpw` may choose for rows of `row_class` (256, 32, 1), fewest bits first."""
    ts = [t for t, d in DECLS.items() if row_class in d.automix]
    return tuple(sorted(ts, key=lambda t: (t.type_size / t.block_size, int(t))))


def parse_qtype(name) -> QType:
    """Map a QType, its numeric id, or a case-insensitive name ('q4_k', 'Q8_0') onto QType."""
    if isinstance(name, QType):
        return name
    if isinstance(name, (int, np.integer)) and not isinstance(name, bool):
        try:
            return QType(int(name))
        except ValueError:
            raise ValueError(f"unknown ggml type id {int(name)}") from None
    if isinstance(name, str):
        key = name.strip().upper()
        if key in QType.__members__:
            return QType[key]
    known = ", ".join(t.name for t in QType)
    raise ValueError(f"unknown tensor type {name!r} (known: {known})")
