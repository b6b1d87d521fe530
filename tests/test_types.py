"""The ggml type declarations (kquant.ggml.types) against libggml's own type traits, and the
registry derived from them, parametrized over every declared type."""

from __future__ import annotations

import numpy as np
import pytest

from oracle import reference
from kquant.ggml import quants
from kquant.ggml.types import BLOCK_DTYPES, DECLS, FALLBACK, TYPES, QType, automix_candidates, field_offsets

needs_ref = pytest.mark.skipif(not reference.available(), reason="llama-cpp-python (libggml) not installed")


@needs_ref
@pytest.mark.parametrize("t", list(QType), ids=lambda t: t.name)
def test_declaration_matches_libggml(t):
    """id, ggml name, block size and bytes per block as ggml_get_type_traits states them."""
    tr = reference._lib().ggml_get_type_traits(int(t)).contents
    assert tr.type_name.decode() == t.ggml_name
    assert (tr.blck_size, tr.type_size) == (t.block_size, t.type_size)
    assert bool(tr.is_quantized) == t.is_quantized


@pytest.mark.parametrize("t", list(QType), ids=lambda t: t.name)
def test_block_fields_add_up(t):
    dt = BLOCK_DTYPES[t]
    assert dt.itemsize == t.type_size
    # fields are contiguous, in declaration order, with no padding (ggml-common.h static_asserts)
    pos = 0
    for name in dt.names:
        sub, off = dt.fields[name][:2]
        assert off == pos, (name, off, pos)
        pos += sub.itemsize
    assert pos == t.type_size
    assert field_offsets(t, *dt.names) == tuple(dt.fields[n][1] for n in dt.names)


def test_gguf_py_agrees_where_it_knows_the_type():
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    for t in QType:
        if t.name in GGMLQuantizationType.__members__:
            g = GGMLQuantizationType[t.name]
            assert int(g) == int(t)
            assert GGML_QUANT_SIZES[g] == (t.block_size, t.type_size)


@pytest.mark.parametrize("t", list(QType), ids=lambda t: t.name)
def test_registry_follows_declarations(t):
    """A type has kernels exactly when its declared module registers it; a gap raises
    NotImplementedError naming the type, from quantize and dequantize alike."""
    reg = quants.registry()
    d = DECLS[t]
    if t in reg:
        assert reg[t].quantize.py_func.__module__.startswith("kquant.ggml.kernels.")
        assert d.kernels is not None
        return
    x = np.zeros((1, 256 * t.block_size), np.float32)
    with pytest.raises(NotImplementedError, match=rf"\b{t.name}\b"):
        quants.quantize(x, t)
    with pytest.raises(NotImplementedError, match=rf"\b{t.name}\b"):
        quants.dequantize(np.zeros(t.row_size(x.shape[1]), np.uint8), t, x.shape)


def test_fallbacks_are_smaller_blocks():
    """tensor_type_fallback always moves to a block of at most 32 values."""
    for t, f in FALLBACK.items():
        assert f.block_size <= 32 < t.block_size


def test_automix_candidates_have_kernels_and_fit_their_row_class():
    """A 256 or 1 class type fits every row of its class; a 32 class type (rows that are a multiple
    of 32 but not of 256) is a smaller block, used where it divides the row (Q1_0: 128, Q2_0: 64)."""
    reg = quants.registry()
    for cls in (256, 32, 1):
        for t in automix_candidates(cls):
            assert t in reg
            assert cls % t.block_size == 0 if cls != 32 else (t.block_size % 32 == 0 and 256 % t.block_size == 0
                                                               and t.block_size < 256)


def test_names_and_ids_are_unique():
    assert len({d.name for d in TYPES}) == len({d.id for d in TYPES}) == len(TYPES) == len(QType)


def test_file_types_match_gguf_py():
    """FileType ids (llama.h enum llama_ftype) as gguf-py's LlamaFileType states them, where it knows the name."""
    from gguf import LlamaFileType

    from kquant.types import FileType

    for ft in FileType:
        if ft.name in LlamaFileType.__members__:
            assert int(LlamaFileType[ft.name]) == int(ft), ft.name


def test_public_api_survives_importing_every_module():
    """No subpackage shadows the public functions (importing `kquant.x` sets attribute `x` on kquant)."""
    import importlib
    import pkgutil

    import kquant

    for m in pkgutil.walk_packages(kquant.__path__, "kquant."):
        importlib.import_module(m.name)
    assert callable(kquant.quantize) and callable(kquant.dequantize) and callable(kquant.convert)
    assert kquant.quantize.__module__ == "kquant.ggml.quants"
