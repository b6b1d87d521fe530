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
    grid, kmap, _ = _iqgrid.search_tables(GRIDS[t])
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


def _ggml_iq2_init(grid: np.ndarray, nwant: int) -> tuple[np.ndarray, np.ndarray]:
    """iq2xs_init_impl's kmap and kneighbors_q2xs, vectorized: for each off-grid u in ascending
    order, every grid point within the nwant smallest squared distances, ordered by (distance,
    index) as its qsort of (d2, j) pairs orders them."""
    n = grid.shape[0]
    shifts = 2 * np.arange(8)
    kmap = np.full(_iqgrid.KMAP_SIZE, -1, dtype=np.int64)
    kmap[(((grid.astype(np.int64) - 1) // 2) << shifts).sum(axis=1)] = np.arange(n)
    off = np.flatnonzero(kmap < 0)
    pieces, total = [], 0
    for c in range(0, off.size, 512):
        u = off[c:c + 512]
        pos = 2 * ((u[:, None] >> shifts) & 3) + 1  # (c, 8)
        d2 = np.zeros((u.size, n), dtype=np.int32)
        for i in range(8):
            d2 += (grid[None, :, i].astype(np.int32) - pos[:, i:i + 1].astype(np.int32)) ** 2
        thr = d2.min(axis=1)  # the nwant-th smallest distance present in each row
        for _ in range(nwant - 1):
            thr = np.where(d2 > thr[:, None], d2, np.iinfo(np.int32).max).min(axis=1)
        near = d2 <= thr[:, None]
        key = np.where(near, d2 * n + np.arange(n, dtype=np.int32), np.iinfo(np.int32).max)
        cnt = near.sum(axis=1)
        m = int(cnt.max())
        key = np.sort(np.partition(key, m - 1, axis=1)[:, :m], axis=1)
        rows = np.concatenate([cnt[:, None], key % n], axis=1)  # (c, 1 + m): n, then the list
        kmap[u] = -(total + np.concatenate(([0], np.cumsum(cnt + 1)[:-1])) + 1)
        pieces.append(rows[np.arange(m + 1) <= cnt[:, None]])
        total += int((cnt + 1).sum())
    return kmap.astype(np.int32), np.concatenate(pieces).astype(np.uint16)


@pytest.mark.parametrize("which", sorted(NWANT))
def test_neighbours_match_ggml(which):
    """kmap and the neighbour lists (as the kernels get them: from the table cache or built) equal
    a vectorized port of iq2xs_init_impl, every entry; the lane lists hold each list in ggml's
    order, padded with copies of its last candidate, and its candidates' coordinates."""
    grid, kmap, nb = _iqgrid.search_tables(which)
    want_kmap, want_nb = _ggml_iq2_init(grid, NWANT[which])
    np.testing.assert_array_equal(kmap, want_kmap)
    np.testing.assert_array_equal(nb, want_nb)
    kx, codes, nidx, levels = _iqgrid.search_lists(which)
    np.testing.assert_array_equal(levels, (grid.astype(np.int64) - 1) // 2)
    np.testing.assert_array_equal(kx[kmap >= 0], kmap[kmap >= 0])
    off = np.flatnonzero(kmap < 0)
    code = -kx[off] - 1
    start, npad = (code >> 8) * _iqgrid.PAD, (code & 255) * _iqgrid.PAD
    o = -kmap[off] - 1
    n = nb[o].astype(np.int64)
    assert np.all(npad % _iqgrid.PAD == 0) and np.all((npad >= n) & (npad - n < _iqgrid.PAD))
    assert start[0] == 0 and np.all(start[1:] == start[:-1] + npad[:-1]) and start[-1] + npad[-1] == nidx.size
    q = np.arange(nidx.size)  # every candidate slot: its list L and place c in it
    L = np.searchsorted(start, q, side="right") - 1
    c = q - start[L]
    np.testing.assert_array_equal(nidx, nb[o[L] + 1 + np.minimum(c, n[L] - 1)])
    for i in range(8):
        np.testing.assert_array_equal(codes[8 * start[L] + i * npad[L] + c], grid[nidx, i])


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
