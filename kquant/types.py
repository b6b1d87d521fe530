"""Type names the rest of kquant uses: llama.cpp's file types here, ggml's tensor types re-exported.

`FileType` carries llama.cpp's ids (llama.h `enum llama_ftype`, `general.file_type`). The ggml
tensor types (`QType`, block layouts, sizes) are declared in kquant.ggml.types and re-exported
here, so modules outside kquant.ggml import every type name from one place.
"""

from __future__ import annotations

from enum import IntEnum

from .ggml.types import BLOCK_DTYPES, K_SCALE_SIZE, QK, QK_K, QType, parse_qtype

__all__ = ["BLOCK_DTYPES", "K_SCALE_SIZE", "QK", "QK_K", "QType", "parse_qtype", "DEFAULT_TYPE", "FILE_TYPES", "FileType",
           "parse_ftype"]


# llama.h `enum llama_ftype`: (name, id, llama-quant.cpp llama_ftype_get_default_type), in id order.
# The file types llama-quantize offers (tools/quantize/quantize.cpp QUANT_OPTIONS), aliases aside.
# fmt: off
FILE_TYPES: tuple[tuple[str, int, str], ...] = (
    ("ALL_F32",           0, "F32"),
    ("MOSTLY_F16",        1, "F16"),
    ("MOSTLY_Q4_0",       2, "Q4_0"),
    ("MOSTLY_Q4_1",       3, "Q4_1"),
    ("MOSTLY_Q8_0",       7, "Q8_0"),
    ("MOSTLY_Q5_0",       8, "Q5_0"),
    ("MOSTLY_Q5_1",       9, "Q5_1"),
    ("MOSTLY_Q2_K",      10, "Q2_K"),
    ("MOSTLY_Q3_K_S",    11, "Q3_K"),
    ("MOSTLY_Q3_K_M",    12, "Q3_K"),
    ("MOSTLY_Q3_K_L",    13, "Q3_K"),
    ("MOSTLY_Q4_K_S",    14, "Q4_K"),
    ("MOSTLY_Q4_K_M",    15, "Q4_K"),
    ("MOSTLY_Q5_K_S",    16, "Q5_K"),
    ("MOSTLY_Q5_K_M",    17, "Q5_K"),
    ("MOSTLY_Q6_K",      18, "Q6_K"),
    ("MOSTLY_IQ2_XXS",   19, "IQ2_XXS"),
    ("MOSTLY_IQ2_XS",    20, "IQ2_XS"),
    ("MOSTLY_Q2_K_S",    21, "Q2_K"),
    ("MOSTLY_IQ3_XS",    22, "IQ3_S"),
    ("MOSTLY_IQ3_XXS",   23, "IQ3_XXS"),
    ("MOSTLY_IQ1_S",     24, "IQ1_S"),
    ("MOSTLY_IQ4_NL",    25, "IQ4_NL"),
    ("MOSTLY_IQ3_S",     26, "IQ3_S"),
    ("MOSTLY_IQ3_M",     27, "IQ3_S"),
    ("MOSTLY_IQ2_S",     28, "IQ2_XS"),
    ("MOSTLY_IQ2_M",     29, "IQ2_S"),
    ("MOSTLY_IQ4_XS",    30, "IQ4_XS"),
    ("MOSTLY_IQ1_M",     31, "IQ1_M"),
    ("MOSTLY_BF16",      32, "BF16"),
    ("MOSTLY_TQ1_0",     36, "TQ1_0"),
    ("MOSTLY_TQ2_0",     37, "TQ2_0"),
    ("MOSTLY_MXFP4_MOE", 38, "MXFP4"),
    ("MOSTLY_Q1_0",      40, "Q1_0"),
    ("MOSTLY_Q2_0",      41, "Q2_0"),
)
# fmt: on


class _FileTypeBase(IntEnum):
    """Methods of FileType (its members come from FILE_TYPES)."""

    @property
    def short_name(self) -> str:
        return "F32" if self.name == "ALL_F32" else self.name[len("MOSTLY_") :]

    @property
    def default_type(self) -> QType:
        """llama-quant.cpp llama_ftype_get_default_type."""
        return DEFAULT_TYPE[self]


# llama.cpp file types (llama.h `enum llama_ftype`, `general.file_type`)
FileType = _FileTypeBase("FileType", [(n, i) for n, i, _ in FILE_TYPES], module=__name__, qualname="FileType")
DEFAULT_TYPE: dict[FileType, QType] = {FileType[n]: QType[q] for n, _, q in FILE_TYPES}


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
