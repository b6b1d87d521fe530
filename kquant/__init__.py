"""kquant: Hugging Face checkpoints to quantized GGUF, byte-identical to llama.cpp.

Public API: quantize, dequantize (kernels), convert, convert_many (pipeline), QType, FileType.
The kernels (numba) are imported on first use, so that `python -m kquant.cli` can install its
signal handlers before any heavy import.
"""

__version__ = "0.1.0"

_LAZY = {"quantize": "ggml.quants", "dequantize": "ggml.quants", "FileType": "types", "QType": "types"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _with_rounding(options, rounding):
    from dataclasses import replace

    from .pipeline import Options

    return options if rounding is None else replace(options or Options(), rounding=rounding)


def convert(model, out, ftype="Q4_K_M", options=None, *, rounding=None):
    """Convert a HF folder / .safetensors file to a GGUF file of llama.cpp file type `ftype`.
    `rounding`: "ggml" (default, llama-quantize's bytes), "best" or "refine" (see kquant.ggml.quants.quantize)."""
    from .pipeline import convert as _convert

    return _convert(model, out, ftype, _with_rounding(options, rounding))


def convert_many(model, targets, options=None, *, rounding=None):
    """Convert one checkpoint to several (output, file type) targets in one read."""
    from .pipeline import convert_many as _convert_many

    return _convert_many(model, targets, _with_rounding(options, rounding))


__all__ = ["quantize", "dequantize", "convert", "convert_many", "QType", "FileType", "__version__"]
