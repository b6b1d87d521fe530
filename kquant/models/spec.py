"""The converter-facing description of a model: `TensorSpec` per GGUF tensor, `ModelSpec` per model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..ggml.types import QType


@dataclass
class TensorSpec:
    """One GGUF tensor and how to build it from the HF tensors."""

    name: str  # GGUF name, e.g. "blk.0.attn_q.weight"
    shape: tuple[int, ...]  # output shape in numpy order (last axis = row = ggml ne[0])
    sources: tuple[str, ...]  # HF tensor names read to build it (several for merged experts)
    ref_type: QType  # what convert_hf_to_gguf.py --outtype bf16 stores: QType.BF16 or QType.F32
    row_perm: np.ndarray | None = None  # output row i = source row row_perm[i] (axis 0; Q/K permute, trims)
    transform: Callable[[list[np.ndarray]], np.ndarray] | None = None  # on float32 sources; None = identity
    generated: np.ndarray | None = None  # float32 data of tensors without a source (rope_freqs)

    def materialize(self, read: Callable[[str], np.ndarray]) -> np.ndarray:
        """float32 data before storage rounding; `read(hf_name)` returns a source as float32.

        row_perm and transform are never both set; row_perm gathers rows of the single source."""
        if self.generated is not None:
            return self.generated
        if self.row_perm is not None:
            return read(self.sources[0])[self.row_perm]
        arrs = [read(s) for s in self.sources]
        return self.transform(arrs) if self.transform is not None else arrs[0]


@dataclass
class ModelSpec:
    """Everything convert_hf_to_gguf.py would write except the tensor bytes."""

    arch: str  # GGUF arch name ("llama", "qwen2", ...)
    kv: list[tuple[str, Any, Any]]  # (key, gguf.GGUFValueType, value) in write order, without file_type/quantization_version
    tensors: list[TensorSpec]  # in write order
    n_layer: int
    n_head: int
    n_head_kv: int
    n_expert: int
    n_embd: int
    tied_embeddings: bool  # no output.weight: llama.cpp uses token_embd as the output matrix
    # where convert_hf_to_gguf.py puts the two keys the converter adds (indices into the full key list;
    # llama-quantize moves both to the end, so only a BF16 writer needs these)
    file_type_index: int = -1
    quantization_version_index: int = -1
    hf_arch: str = ""  # config.json architectures[0]
    hparams: dict[str, Any] = field(default_factory=dict, repr=False)  # the emulated AutoConfig dict
    not_converted: tuple[str, ...] = ()  # HF tensors of a multimodal checkpoint's vision/audio parts (dropped)
