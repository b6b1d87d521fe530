"""IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M kernels against libggml, byte for byte.

Quantize: kquant.ggml.kernels.iq2 / iq1 vs ggml_quantize_chunk (tests/oracle/reference.py), with importance
weights (every type) and without (IQ2_S, IQ1_M: ggml aborts without them for the other three,
and kquant.quantize refuses), over many value distributions. The search tables (iq2xs_init_impl's
grid, kmap and neighbour lists) are checked against gguf-py's dequantization grids and against
their definition; byte identity covers the rest. Dequantize: vs ggml's to_float (bitwise) and
gguf-py. ggml builds its tables on first use (IQ1_S's takes ~30 s of the reference's time).
Seeds are fresh on every run (set KQUANT_TEST_SEED to replay one; failures print it).
"""

from __future__ import annotations

import numpy as np
import pytest

from oracle import reference
from kquant.ggml import quants
from kquant.ggml.kernels import _iqgrid
from kquant.types import QK_K, QType

from kernel_data import check_dequantize, FINITE_KINDS, KERNELS, WKINDS, check, check_grid, fresh_rng, make_w, make_x, ours, qtype_id

pytestmark = pytest.mark.skipif(not reference.available(), reason="llama-cpp-python (libggml) not installed")

TYPES = [QType.IQ2_XXS, QType.IQ2_XS, QType.IQ2_S, QType.IQ1_S, QType.IQ1_M]
UNWEIGHTED = [t for t in TYPES if not t.requires_imatrix]
GRIDS = {QType.IQ2_XXS: _iqgrid.GRID_XXS, QType.IQ2_XS: _iqgrid.GRID_XS, QType.IQ2_S: _iqgrid.GRID_S,
         QType.IQ1_S: _iqgrid.GRID_1S}
NWANT = {_iqgrid.GRID_XXS: 2, _iqgrid.GRID_XS: 2, _iqgrid.GRID_S: 1, _iqgrid.GRID_1S: 3}

KINDS = FINITE_KINDS  # ggml asserts (aborts the process) on NaN input in these searches
SHAPES = [(1, QK_K), (2, 2 * QK_K)]


@pytest.mark.parametrize("t", TYPES, ids=qtype_id)
def test_quantize_weighted(t):
    s, rng = fresh_rng()
    for kind in KINDS:
        for wkind in WKINDS:
            rows, cols = SHAPES[rng.integers(len(SHAPES))]
            x = make_x(kind, rows, cols, rng)
            check(t, x, make_w(wkind, cols, rng), f"{kind} {rows}x{cols} weights={wkind} seed={s}")


@pytest.mark.parametrize("t", UNWEIGHTED, ids=qtype_id)
def test_quantize_unweighted(t):
    check_grid(t, KINDS, SHAPES)


@pytest.mark.parametrize("t", TYPES, ids=qtype_id)
def test_public_api(t):
    """kquant.quantize (row ranges on threads) equals ggml; refuses where ggml aborts."""
    s, rng = fresh_rng()
    x = (rng.standard_normal((64, 1024)) * rng.uniform(1e-3, 10, (64, 1))).astype(np.float32)
    w = make_w("uniform", 1024, rng)
    np.testing.assert_array_equal(quants.quantize(x, t, w), reference.quantize(x, t, w), err_msg=f"seed={s}")
    if t.requires_imatrix:
        with pytest.raises(ValueError, match="needs an importance matrix"):
            quants.quantize(x, t)
    else:
        np.testing.assert_array_equal(quants.quantize(x, t), reference.quantize(x, t), err_msg=f"seed={s}")


# NaN inputs (past kquant.quantize's finite check) on which ggml_quantize_chunk asserts, as seen
# by running it: iq2_find_best_neighbour's `grid_index >= 0` and the impls' `scale >= 0`
GGML_ABORTS = {(QType.IQ2_XS, "all_nan"), (QType.IQ2_S, "one_nan"), (QType.IQ2_S, "all_nan")}


@pytest.mark.parametrize("t", TYPES, ids=qtype_id)
@pytest.mark.parametrize("case", ["one_nan", "all_nan", "nan_weight"])
def test_nan_blocks(t, case):
    """Where ggml asserts, the kernel counts the block and kquant.quantize refuses the input;
    elsewhere the bytes equal ggml's, NaN and all."""
    x = np.ones((1, QK_K), dtype=np.float32)
    w = np.ones(QK_K, dtype=np.float32)
    if case == "one_nan":
        x[0, 3] = np.nan
    elif case == "all_nan":
        x[:] = np.nan
    else:
        w[3] = np.nan
    out = np.zeros((1, t.row_size(QK_K)), dtype=np.uint8)
    failed = KERNELS[t].quantize(x, w, out)
    if (t, case) in GGML_ABORTS:
        assert failed == 1
        with pytest.raises(ValueError, match="aborts on 1 block"):
            quants.quantize(x, t, w, check_finite=False)
    else:
        assert failed == 0
        np.testing.assert_array_equal(out, reference.quantize(x, t, w))


@pytest.mark.parametrize("t", [QType.IQ2_XXS, QType.IQ2_XS, QType.IQ2_S, QType.IQ1_S], ids=qtype_id)
def test_grid_matches_gguf(t):
    """iq2xs_init_impl's grid (ggml-quants.c kgrid_*) decodes to the grid ggml dequantizes with
    (ggml-common.h iq2xxs_grid ..., as gguf-py carries them)."""
    import gguf

    g = getattr(gguf.quants, t.name)
    g.init_grid()
    want = np.asarray(g.grid, dtype=np.float32).reshape(g.grid_shape)
    grid, kmap, _, _ = _iqgrid.search_tables(GRIDS[t])
    levels = (grid.astype(np.int64) - 1) // 2
    got = np.asarray(g.grid_map, dtype=np.float32)[levels]
    np.testing.assert_array_equal(got, want)
    # kmap inverts the grid
    u = (levels << (2 * np.arange(8))).sum(axis=1)
    np.testing.assert_array_equal(kmap[u], np.arange(grid.shape[0]))


def test_ksigns_match_gguf():
    import gguf

    from kquant.ggml.kernels.iq2 import _ksigns

    want = np.frombuffer(gguf.quants.IQ2_XXS.ksigns, dtype=np.uint8)
    assert [_ksigns(v) for v in range(128)] == want.tolist()


@pytest.mark.parametrize("which", sorted(NWANT))
def test_neighbours_by_definition(which):
    """For sampled off-grid points u: the neighbour list is every grid point within the nwant
    smallest squared distances, ordered by (distance, index), as iq2xs_init_impl's qsort gives."""
    grid, kmap, nb, coords = _iqgrid.search_tables(which)
    s, rng = fresh_rng()
    off = np.flatnonzero(kmap < 0)
    assert len(off) == _iqgrid.KMAP_SIZE - grid.shape[0]
    starts = -kmap[off] - 1
    assert starts[0] == 0 and np.all(np.diff(starts) == nb[starts[:-1]].astype(np.int64) + 1)
    assert starts[-1] + nb[starts[-1]] + 1 == len(nb)
    for u in rng.choice(off, 200, replace=False):
        pos = 2 * ((u >> (2 * np.arange(8))) & 3) + 1
        d2 = ((grid.astype(np.int64) - pos) ** 2).sum(axis=1)
        levels = np.unique(d2)[: NWANT[which]]
        want = sorted((d, j) for j, d in enumerate(d2) if d in levels)
        st = -kmap[u] - 1
        assert nb[st + 1:st + 1 + nb[st]].tolist() == [j for _, j in want], f"u={u} seed={s}"


@pytest.mark.parametrize("t", TYPES, ids=qtype_id)
def test_dequantize(t):
    import gguf

    s, rng = fresh_rng()
    rows, cols = 5, 512
    x = make_x("normal", rows, cols, rng)
    q1 = ours(t, x, make_w("uniform", cols, rng))
    q2 = rng.integers(0, 256, q1.shape, dtype=np.uint8)  # any codes, any scale bits (NaN/inf included)
    for q in (q1, q2):
        got = check_dequantize(t, q, rows, cols, f"seed={s}", gguf_py=False)
        np.testing.assert_array_equal(quants.dequantize(q, t, (rows, cols)).view(np.uint32), got.view(np.uint32))
    got = np.empty((rows, cols), dtype=np.float32)
    KERNELS[t].dequantize(q1, got)
    want = gguf.quants.dequantize(q1, gguf.GGMLQuantizationType(int(t)))
    np.testing.assert_array_equal(got, want, err_msg=f"seed={s}")


@pytest.mark.parametrize("t", TYPES, ids=qtype_id)
def test_signed_zero_ties(t):
    """Blocks of few distinct values with -0.0 and +0.0 mixed in: IQ1's sort (ggml's qsort order:
    ties, -0 == +0, keep their positions) and every search's tie-breaking."""
    s, rng = fresh_rng()
    x = rng.choice(np.array([-0.0, 0.0, 0.0, -1.0, 1.0, 0.5, -0.5, 2.0], dtype=np.float32), (4, 2 * QK_K))
    x[:, rng.integers(0, 2 * QK_K, 8)] = rng.choice([-3.0, 3.0], 8).astype(np.float32)
    for w in (make_w("uniform", 2 * QK_K, rng), np.ones(2 * QK_K, dtype=np.float32)):
        check(t, x, w, f"signed zeros seed={s}")
        if not t.requires_imatrix:
            check(t, x, None, f"signed zeros, no weights seed={s}")
