"""Q4_K and Q5_K kernels against libggml, byte for byte.

Quantize: kquant.ggml.kernels.q4_k / q5_k vs ggml_quantize_chunk (oracle.reference), without
importance weights (quantize_row_q*_K_ref) and with them (quantize_row_q*_K_impl), over many
value distributions and shapes, including rows whose super-block count is not a multiple of
the kernels' lane chunk. Dequantize: vs ggml's to_float (bitwise) and gguf-py's dequantizer.
Seeds are fresh on every run (set KQUANT_TEST_SEED to replay one; failures print it).
"""

from __future__ import annotations

import numpy as np
import pytest

from oracle import reference
from kquant.ggml.kernels.q4_k import SB_PER_CHUNK
from kquant.types import QK_K, QType

from kernel_data import check_dequantize, WKINDS, check, check_grid, fresh_rng, make_w, make_x, ours, qtype_id

pytestmark = pytest.mark.skipif(not reference.available(), reason="llama-cpp-python (libggml) not installed")

TYPES = [QType.Q4_K, QType.Q5_K]

KINDS = [
    "normal",
    "student_t",
    "laplace",
    "outlier_cols",
    "zero_rows",
    "constant_rows",
    "tiny",
    "huge",
    "single_nonzero",
    "pm_max",
    "positive",
    "negative",
    "few_levels",
    "subblock_scales",
    "zero_subblocks",
    "mixed_scale",
    "subnormal",
    "nan_inf",
]
WKINDS = [k for k in WKINDS if k != "zero_subblocks"]
# 1 super-block; 2; one full lane chunk + 1 (partial last chunk); 4096 + 256
SHAPES = [(1, QK_K), (7, 2 * QK_K), (5, (SB_PER_CHUNK + 1) * QK_K), (3, 4096 + QK_K)]


@pytest.mark.parametrize("t", TYPES, ids=qtype_id)
@pytest.mark.parametrize("kind", KINDS)
def test_quantize_unweighted(t, kind):
    check_grid(t, [kind], SHAPES)


@pytest.mark.parametrize("t", TYPES, ids=qtype_id)
@pytest.mark.parametrize("wkind", WKINDS)
def test_quantize_weighted(t, wkind):
    check_grid(t, KINDS, SHAPES, wkind)


@pytest.mark.parametrize("t", TYPES, ids=qtype_id)
def test_quantize_many_rows(t):
    """A larger matrix with several row scales: the parallel driver and many search outcomes."""
    s, rng = fresh_rng()
    x = (rng.standard_normal((256, 2048)) * rng.uniform(1e-3, 10, (256, 1))).astype(np.float32)
    check(t, x, None, f"256x2048 seed={s}")
    check(t, x, make_w("uniform", 2048, rng), f"256x2048 weighted seed={s}")


@pytest.mark.parametrize("t", TYPES, ids=qtype_id)
def test_dequantize(t):
    s, rng = fresh_rng()
    rows, cols = 17, 1024
    # quantized real data, plus raw random blocks (any code, any finite fp16 d / dmin)
    q1 = ours(t, make_x("normal", rows, cols, rng), None)
    q2 = rng.integers(0, 256, q1.shape, dtype=np.uint8)
    blocks = q2.reshape(rows, -1, t.type_size)
    blocks[:, :, 1] &= 0xBB  # fp16 exponent < 31: finite d
    blocks[:, :, 3] &= 0xBB  # and dmin
    for q in (q1, q2):
        check_dequantize(t, q, rows, cols, f"seed={s}")
