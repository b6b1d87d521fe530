"""Automatic per-tensor type mix for a size budget (`kquant convert --target-bpw B / --target-size S`).

Not a port: llama.cpp's mixes (Q4_K_M, ...) are fixed rules (src/llama-quant.cpp
llama_tensor_get_type_impl); this module chooses each tensor's type from measurements instead.

Three parts: `measure` (each tensor's relative output error at each candidate type), `damage`
(how much the loss cares about that error: sensitivities), `solve` (the least-damage choice
within the budget, an exact multiple-choice knapsack). Each module's docstring explains its part.
"""

from __future__ import annotations

from ..errors import InputError
from .damage import (
    DEFAULT_SENSITIVITY,
    FIRST_LAYER_FACTOR,
    FIRST_LAYER_FACTORS,
    LAST_LAYER_FACTOR,
    REF_LAYERS,
    SENSITIVITY,
    SENSITIVITY_WEIGHTED,
    kind_of,
    sensitivity_of,
)
from .measure import (
    ERROR_WEIGHT_CAP,
    FULL_MEASURE_ELEMENTS,
    K_CANDIDATES,
    LEGACY_CANDIDATES,
    ODD_CANDIDATES,
    SAMPLE_CHUNK_ROWS,
    SAMPLE_STRIDE_CHUNKS,
    SEARCH_KERNELS,
    SEARCH_STRIDE_CHUNKS,
    Curve,
    Measured,
    allowed_without_weights,
    candidates_for,
    error_weights,
    header_bytes,
    is_search_type,
    measure,
    measure_model,
    print_measure_progress,
    sample_chunks,
)
from .solve import MAX_CELLS, MAX_UNITS, SIZE_UNITS, Mix, choose, mix_for_budget, parse_size, solve, unit_for

__all__ = [
    "DEFAULT_SENSITIVITY", "FIRST_LAYER_FACTOR", "FIRST_LAYER_FACTORS", "LAST_LAYER_FACTOR", "REF_LAYERS",
    "SENSITIVITY", "SENSITIVITY_WEIGHTED", "kind_of", "sensitivity_of",
    "ERROR_WEIGHT_CAP", "FULL_MEASURE_ELEMENTS", "K_CANDIDATES", "LEGACY_CANDIDATES", "ODD_CANDIDATES", "SAMPLE_CHUNK_ROWS",
    "SAMPLE_STRIDE_CHUNKS", "SEARCH_KERNELS", "SEARCH_STRIDE_CHUNKS", "Curve", "Measured", "allowed_without_weights",
    "candidates_for", "error_weights", "header_bytes", "is_search_type", "measure", "measure_model",
    "print_measure_progress", "sample_chunks",
    "MAX_CELLS", "MAX_UNITS", "SIZE_UNITS", "Mix", "choose", "mix_for_budget", "parse_size", "solve", "unit_for",
    "choose_mix",
]

def choose_mix(model, ftype="Q4_K_M", options=None, *, target_bpw: float | None = None, target_size: int | None = None,
               sample: bool | None = None, sensitivity: dict[str, float] | None = None, progress=None) -> Mix:
    """measure_model + mix_for_budget: the per-tensor types for one budget."""
    if (target_bpw is None) == (target_size is None):
        raise InputError("give exactly one of --target-bpw and --target-size")
    m = measure_model(model, ftype, options, sample=sample, sensitivity=sensitivity, progress=progress,
                      header=target_size is not None)
    return mix_for_budget(m, target_bpw=target_bpw, target_size=target_size)

