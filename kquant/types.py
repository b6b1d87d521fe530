"""Type names the rest of kquant uses: llama.cpp's file types here, ggml's tensor types re-exported.

`FileType` carries llama.cpp's ids (llama.h `enum llama_ftype`, `general.file_type`). The ggml
tensor types (`QType`, block layouts, sizes) are declared in kquant.ggml.types and re-exported
here, so modules outside kquant.ggml import every type name from one place.
"""

from __future__ import annotations

from enum import IntEnum

from .ggml.types import BLOCK_DTYPES, K_SCALE_SIZE, QK, QK_K, QType, parse_qtype

__all__ = ["BLOCK_DTYPES", "K_SCALE_SIZE", "QK", "QK_K", "QType", "parse_qtype", "FileType", "parse_ftype"]


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
