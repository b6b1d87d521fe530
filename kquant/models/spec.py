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
    ref_type: QType  # what convert_hf_to_gguf.py --outtype bf16 stores: BF16 or F32 (or a raw_type)
    # output row i = source row row_perm[i]: rows of a 2-D source (Q/K permute, trims), or of a
    # pre-stacked N-D source flattened over all axes but its rows' (expert e, row r -> e * rows + r)
    row_perm: np.ndarray | None = None
    transform: Callable[[list[np.ndarray]], np.ndarray] | None = None  # on float32 sources; None = identity
    generated: np.ndarray | None = None  # float32 data of tensors without a source (rope_freqs)
    # the single source stores each matrix transposed ([..., in, out], HF's pre-stacked experts):
    # its last two axes are swapped before row_perm applies
    transpose: bool = False
    # the sources already hold this ggml quant type (`sources` = (packed codes, scales), see
    # pipeline.iter_raw_slabs); ref_type is the same type: the bytes pass through unchanged, and
    # any other target type is quantized from their dequantized values
    raw_type: QType | None = None

    def materialize(self, read: Callable[[str], np.ndarray]) -> np.ndarray:
        """float32 data before storage rounding; `read(hf_name)` returns a source as float32.

        row_perm and transform are never both set; row_perm gathers rows of the single source.
        A raw_type tensor has no float sources: the pipeline reads it (pipeline.iter_source_slabs)."""
        if self.raw_type is not None:
            raise ValueError(f"{self.name}: a {self.raw_type.name} tensor is read by pipeline.iter_source_slabs")
        if self.generated is not None:
            return self.generated
        if self.row_perm is not None or self.transpose:
            x = read(self.sources[0])
            if x.ndim == 2 and len(self.shape) == 3:  # experts fused along the rows (DBRX): [n_expert, rows, cols]
                x = x.reshape(self.shape[0], -1, x.shape[-1])
            if self.transpose:
                x = np.swapaxes(x, -1, -2)
            if self.row_perm is None:
                return np.ascontiguousarray(x)
            if x.ndim <= 2:  # rows of a matrix, elements of a vector
                return x[self.row_perm]
            return x.reshape(-1, x.shape[-1])[self.row_perm].reshape(self.shape)
        arrs = [read(s) for s in self.sources]
        if self.transform is not None:
            return self.transform(arrs)
        if arrs[0].ndim == 2 and len(self.shape) == 3:  # experts fused along the rows (DBRX)
            return arrs[0].reshape(self.shape)
        return arrs[0]


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
