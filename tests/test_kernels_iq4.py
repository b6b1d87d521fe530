"""IQ4_NL and IQ4_XS kernels against libggml, byte for byte.

Quantize: kquant.ggml.kernels.iq4 vs ggml_quantize_chunk (oracle.reference), without importance
weights and with them (both quantize_row_iq4_nl_impl with ntry = 7, as llama-quantize runs it),
over many value distributions and shapes. Dequantize: vs ggml's to_float (bitwise) and gguf-py.
Seeds are fresh on every run (set KQUANT_TEST_SEED to replay one; failures print it).
"""

from __future__ import annotations

import numpy as np
import pytest

from oracle import reference
from kquant.ggml import quants
from kquant.types import QK_K, QType

from kernel_data import check_dequantize, FINITE_KINDS, RAW_KINDS, WKINDS, check, check_grid, fresh_rng, make_w, make_x, ours, qtype_id

pytestmark = pytest.mark.skipif(not reference.available(), reason="llama-cpp-python (libggml) not installed")

TYPES = [QType.IQ4_NL, QType.IQ4_XS]

KINDS = [k for k in FINITE_KINDS if k != "zero_subblocks16"] + RAW_KINDS
SHAPES = [(1, QK_K), (7, 2 * QK_K), (3, 4096 + QK_K)]


@pytest.mark.parametrize("t", TYPES, ids=qtype_id)
@pytest.mark.parametrize("kind", KINDS)
def test_quantize_unweighted(t, kind):
    check_grid(t, [kind], SHAPES)


@pytest.mark.parametrize("t", TYPES, ids=qtype_id)
@pytest.mark.parametrize("wkind", WKINDS)
def test_quantize_weighted(t, wkind):
    check_grid(t, KINDS, SHAPES, wkind)


def test_iq4_nl_short_rows():
    """IQ4_NL needs only a multiple of 32 per row."""
    s, rng = fresh_rng()
    for cols in (32, 96, 32 * 37):
        x = make_x("student_t", 5, cols, rng)
        check(QType.IQ4_NL, x, None, f"5x{cols} seed={s}")
        check(QType.IQ4_NL, x, make_w("heavy", cols, rng), f"5x{cols} weighted seed={s}")


@pytest.mark.parametrize("t", TYPES, ids=qtype_id)
def test_quantize_many_rows_threads(t):
    """Through kquant.quantize (row ranges on threads), a larger matrix with several row scales."""
    s, rng = fresh_rng()
    x = (rng.standard_normal((256, 2048)) * rng.uniform(1e-3, 10, (256, 1))).astype(np.float32)
    for w in (None, make_w("uniform", 2048, rng)):
        got = quants.quantize(x, t, w)
        np.testing.assert_array_equal(got, reference.quantize(x, t, w), err_msg=f"seed={s}")


@pytest.mark.parametrize("t", TYPES, ids=qtype_id)
def test_dequantize(t):
    s, rng = fresh_rng()
    rows, cols = 17, 1024
    # quantized real data, plus raw random blocks (any code and sub-block scale, any finite fp16 d)
    q1 = ours(t, make_x("normal", rows, cols, rng), None)
    q2 = rng.integers(0, 256, q1.shape, dtype=np.uint8)
    q2.reshape(rows, -1, t.type_size)[:, :, 1] &= 0xBB  # fp16 exponent < 31: finite d
    for q in (q1, q2):
        got = check_dequantize(t, q, rows, cols, f"seed={s}")
        np.testing.assert_array_equal(quants.dequantize(q, t, (rows, cols)), got)
