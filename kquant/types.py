"""One table of truth for tensor types and file types.

`QType` carries ggml's numeric ids (ggml.h `enum ggml_type`); `FileType` carries llama.cpp's
(llama.h `enum llama_ftype`). Each block type's size is written as a numpy structured dtype,
field by field as in ggml-common.h, and its itemsize is checked against ggml's
`(block_size, type_size)` at import.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

QK = 32  # legacy block size (QK4_0 .. QK8_0)
QK_K = 256  # k-quant super-block size
K_SCALE_SIZE = 12


class QType(IntEnum):
    """ggml tensor types kquant reads, writes or quantizes (ggml.h `enum ggml_type`)."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ1_S = 19
    IQ4_NL = 20
    IQ2_S = 22
    IQ4_XS = 23
    IQ1_M = 29
    BF16 = 30

    @property
    def block_size(self) -> int:
        return _SIZES[self][0]

    @property
    def type_size(self) -> int:
        return _SIZES[self][1]

    @property
    def is_quantized(self) -> bool:
        return self not in (QType.F32, QType.F16, QType.BF16)

    @property
    def requires_imatrix(self) -> bool:
        """ggml_quantize_requires_imatrix: ggml_quantize_chunk aborts without importance weights."""
        return self in (QType.IQ2_XXS, QType.IQ2_XS, QType.IQ1_S)

    @property
    def ggml_name(self) -> str:
        """The name ggml prints (`q4_K`, `f16`, ...)."""
        n = self.name.lower()
        return n[:-2] + "_K" if n.endswith("_k") else n

    def row_size(self, n_per_row: int) -> int:
        """Bytes of one row of `n_per_row` values (ggml_row_size)."""
        bs, ts = _SIZES[self]
        if n_per_row % bs:
            raise ValueError(f"{self.name}: row length {n_per_row} is not a multiple of block size {bs}")
        return n_per_row // bs * ts

    def nbytes(self, shape) -> int:
        """Bytes of a tensor of `shape` (numpy order, last axis = row)."""
        n_rows = 1
        for d in shape[:-1]:
            n_rows *= int(d)
        return n_rows * self.row_size(int(shape[-1])) if len(shape) else self.type_size


_f16 = np.dtype("<u2")  # ggml_half stored as raw bits

# ggml-common.h block layouts, field by field.
BLOCK_DTYPES: dict[QType, np.dtype] = {
    QType.F32: np.dtype([("v", "<f4")]),
    QType.F16: np.dtype([("v", _f16)]),
    QType.BF16: np.dtype([("v", "<u2")]),
    QType.Q4_0: np.dtype([("d", _f16), ("qs", "u1", QK // 2)]),
    QType.Q4_1: np.dtype([("d", _f16), ("m", _f16), ("qs", "u1", QK // 2)]),
    QType.Q5_0: np.dtype([("d", _f16), ("qh", "u1", 4), ("qs", "u1", QK // 2)]),
    QType.Q5_1: np.dtype([("d", _f16), ("m", _f16), ("qh", "u1", 4), ("qs", "u1", QK // 2)]),
    QType.Q8_0: np.dtype([("d", _f16), ("qs", "i1", QK)]),
    QType.Q2_K: np.dtype([("scales", "u1", QK_K // 16), ("qs", "u1", QK_K // 4), ("d", _f16), ("dmin", _f16)]),
    QType.Q3_K: np.dtype([("hmask", "u1", QK_K // 8), ("qs", "u1", QK_K // 4), ("scales", "u1", 12), ("d", _f16)]),
    QType.Q4_K: np.dtype([("d", _f16), ("dmin", _f16), ("scales", "u1", K_SCALE_SIZE), ("qs", "u1", QK_K // 2)]),
    QType.Q5_K: np.dtype(
        [("d", _f16), ("dmin", _f16), ("scales", "u1", K_SCALE_SIZE), ("qh", "u1", QK_K // 8), ("qs", "u1", QK_K // 2)]
    ),
    QType.Q6_K: np.dtype([("ql", "u1", QK_K // 2), ("qh", "u1", QK_K // 4), ("scales", "i1", QK_K // 16), ("d", _f16)]),
    QType.IQ4_NL: np.dtype([("d", _f16), ("qs", "u1", QK // 2)]),
    QType.IQ2_XXS: np.dtype([("d", _f16), ("qs", "<u2", QK_K // 8)]),
    QType.IQ2_XS: np.dtype([("d", _f16), ("qs", "<u2", QK_K // 8), ("scales", "u1", QK_K // 32)]),
    QType.IQ2_S: np.dtype([("d", _f16), ("qs", "u1", QK_K // 4), ("qh", "u1", QK_K // 32), ("scales", "u1", QK_K // 32)]),
    QType.IQ1_S: np.dtype([("d", _f16), ("qs", "u1", QK_K // 8), ("qh", "<u2", QK_K // 32)]),
    QType.IQ1_M: np.dtype([("qs", "u1", QK_K // 8), ("qh", "u1", QK_K // 16), ("scales", "u1", QK_K // 32)]),
    QType.IQ4_XS: np.dtype([("d", _f16), ("scales_h", "<u2"), ("scales_l", "u1", QK_K // 64), ("qs", "u1", QK_K // 2)]),
}

# (block_size, type_size) as ggml's type_traits state them.
_SIZES: dict[QType, tuple[int, int]] = {
    QType.F32: (1, 4),
    QType.F16: (1, 2),
    QType.BF16: (1, 2),
    QType.Q4_0: (32, 18),
    QType.Q4_1: (32, 20),
    QType.Q5_0: (32, 22),
    QType.Q5_1: (32, 24),
    QType.Q8_0: (32, 34),
    QType.Q2_K: (256, 84),
    QType.Q3_K: (256, 110),
    QType.Q4_K: (256, 144),
    QType.Q5_K: (256, 176),
    QType.Q6_K: (256, 210),
    QType.IQ4_NL: (32, 18),
    QType.IQ2_XXS: (256, 66),
    QType.IQ2_XS: (256, 74),
    QType.IQ2_S: (256, 82),
    QType.IQ1_S: (256, 50),
    QType.IQ1_M: (256, 56),
    QType.IQ4_XS: (256, 136),
}

for _t, (_bs, _ts) in _SIZES.items():
    assert BLOCK_DTYPES[_t].itemsize == _ts, f"{_t.name}: block dtype is {BLOCK_DTYPES[_t].itemsize} bytes, ggml says {_ts}"
del _t, _bs, _ts


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


class FileType(IntEnum):
    """llama.cpp file types (llama.h `enum llama_ftype`, `general.file_type`)."""

    ALL_F32 = 0
    MOSTLY_F16 = 1
    MOSTLY_Q4_0 = 2
    MOSTLY_Q4_1 = 3
    MOSTLY_Q8_0 = 7
    MOSTLY_Q5_0 = 8
    MOSTLY_Q5_1 = 9
    MOSTLY_Q2_K = 10
    MOSTLY_Q3_K_S = 11
    MOSTLY_Q3_K_M = 12
    MOSTLY_Q3_K_L = 13
    MOSTLY_Q4_K_S = 14
    MOSTLY_Q4_K_M = 15
    MOSTLY_Q5_K_S = 16
    MOSTLY_Q5_K_M = 17
    MOSTLY_Q6_K = 18
    MOSTLY_Q2_K_S = 21
    MOSTLY_IQ4_NL = 25
    MOSTLY_IQ4_XS = 30
    MOSTLY_BF16 = 32

    @property
    def short_name(self) -> str:
        return "F32" if self is FileType.ALL_F32 else self.name[len("MOSTLY_") :]


def parse_ftype(name) -> FileType:
    """Map 'Q4_K_M', 'q8_0', 'f16', ... (case-insensitive) onto FileType."""
    if isinstance(name, FileType):
        return name
    key = str(name).strip().upper()
    for ft in FileType:
        if ft.short_name == key:
            return ft
    known = ", ".join(ft.short_name for ft in FileType)
    raise ValueError(f"unknown file type {name!r} (known: {known})")
