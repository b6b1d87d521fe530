"""rounding="best" and "refine": valid blocks that ggml decodes as kquant does, never a worse block
than ggml's.

For every mode and every type with a search of its own in it (kquant.ggml.quants.mode_types), on
fuzzed data of many distributions, with and without importance weights:
- libggml's to_float (tests/oracle/reference.py, ctypes) decodes every block exactly as kquant.dequantize;
- every block's weighted squared error (tests/objective.py: ggml's objective, written
  independently in numpy) is <= that of the block libggml's own quantizer writes, and on plain
  data the total is strictly lower; so is its output error (weights: the imatrix, or 1);
- the exact scale sweep (kernels/_sweep.py) finds the optimum a dense grid of steps finds;
- the bytes do not depend on the thread count;
and llama.cpp loads and evaluates best- and refine-rounded files of fixtures/tiny-llama.
The default (rounding="ggml") is ggml's bytes: the identity suites cover it untouched.
"""

from __future__ import annotations

import numpy as np
import pytest

import kquant
from kquant import pipeline
from oracle import reference
from kquant.errors import InputError
from kquant.ggml import quants
from kquant.types import QType
from objective import block_errors, weights

from kernel_data import fresh_rng, make_w, make_x

pytestmark = pytest.mark.skipif(not reference.available(), reason="llama-cpp-python (libggml) not installed")

BETTER = quants.better_types()
MODES = [m for m in quants.ROUNDINGS if m != "ggml"]
MODE_TYPES = [(m, t) for m in MODES for t in quants.mode_types(m)]
KINDS = ["normal", "student_t", "laplace", "outlier_cols", "zero_rows", "constant_rows", "tiny", "huge",
         "single_nonzero", "pm_max", "positive", "negative", "subblock_scales", "mixed_scale",
         "ties", "few_levels"]  # (the last two: values on a grid, where refine's closed forms meet rounding ties)
WKINDS = [None, "uniform", "zeros", "heavy"]
ROWS, COLS = 4, 512
# modes and types whose blocks also shrink x no more than ggml's (kernels/_accept.refit_better)
SHRINK_GUARDED = {("refine", QType.Q2_K)}
# ggml's Q1_0 scale, mean |x|, is already the optimum of the unweighted error (up to fp16 rounding)
TIE_UNWEIGHTED = {QType.Q1_0}


def test_registry():
    want = ("Q2_K Q3_K Q4_K Q5_K Q6_K Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 IQ4_NL IQ4_XS IQ3_S IQ3_XXS IQ2_XXS IQ2_XS IQ2_S "
            "IQ1_S IQ1_M TQ1_0 TQ2_0 MXFP4 Q1_0 Q2_0").split()
    assert {QType[n] for n in want} <= set(BETTER)
    refine = "Q2_K Q3_K Q4_K Q5_K Q6_K Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 IQ4_NL IQ3_S IQ3_XXS IQ2_XXS IQ2_XS IQ2_S IQ1_S IQ1_M"
    assert {QType[n] for n in refine.split()} <= set(quants.mode_types("refine"))
    with pytest.raises(InputError, match="unknown rounding"):
        quants.parse_rounding("nearest")


@pytest.mark.parametrize("mode,t", MODE_TYPES, ids=lambda v: getattr(v, "name", v))
@pytest.mark.parametrize("wkind", WKINDS, ids=lambda w: w or "unweighted")
def test_valid_and_never_worse(mode, t, wkind):
    if wkind is None and t.requires_imatrix:
        pytest.skip(f"{t.name} needs an imatrix")
    seed, rng = fresh_rng()
    total_g = total_b = 0.0
    for kind in KINDS:
        x = make_x(kind, ROWS, COLS, rng)
        qw = None if wkind is None else make_w(wkind, COLS, rng)
        what = f"{mode} {t.name} {kind} w={wkind} seed={seed}"
        g = reference.quantize(x, t, qw)  # ggml's own blocks (libggml)
        b = kquant.quantize(x, t, qw, rounding=mode)
        yb = kquant.dequantize(b, t, x.shape)
        # (1) ggml decodes the best blocks exactly as kquant does
        assert np.array_equal(reference.dequantize(b, t, x.shape).view(np.uint32), yb.view(np.uint32)), what
        # (2) no block is worse than ggml's under ggml's objective, (3) nor in the output error
        # (weights: the imatrix, or 1), which ggml's objective differs from for most types
        yg = kquant.dequantize(g, t, x.shape)
        u = np.ones(x.shape) if qw is None else np.broadcast_to(np.asarray(qw, np.float64), x.shape)
        for name, w in (("output error", u), ("ggml's objective", weights(t, x, qw))):
            eg = block_errors(t, x, yg, w)
            eb = block_errors(t, x, yb, w)
            worse = np.argwhere(eb > eg)
            assert worse.size == 0, (f"{what}: {len(worse)} blocks worse in {name}, first {worse[0].tolist()}: "
                                     f"{eb[tuple(worse[0])]} > {eg[tuple(worse[0])]}")
        if (mode, t) in SHRINK_GUARDED:  # (4) nor does it shrink x more: |sum u x (y - x)| per block
            xd = np.asarray(x, np.float64)
            sg, sb = (np.abs((u * xd * (y - xd)).reshape(x.shape[0], -1, t.block_size).sum(-1)) for y in (yg, yb))
            # blocks ggml's kernel kept are equal; tolerance for the two summation orders elsewhere
            assert np.all(sb <= sg + 1e-12 * np.abs(u * xd * xd).reshape(sg.shape + (-1,)).sum(-1)), what
        if kind in ("normal", "laplace", "student_t"):
            total_g += eg.sum()  # ggml's objective (the loop's last)
            total_b += eb.sum()
    if wkind is None and t in TIE_UNWEIGHTED:
        assert total_b <= total_g
    else:
        assert total_b < total_g, f"{mode} {t.name} w={wkind} seed={seed}: no gain on plain data"


@pytest.mark.parametrize("n,lo,hi", [(16, -4, 3), (32, -8, 7), (32, -16, 15), (16, -32, 31)])
def test_exact_sweep_is_the_optimum(n, lo, hi):
    """sym_sweep's best step reaches min over s of sum w (s*clamp(round(x/s)) - x)^2 (weights
    with zeros, ties and both signs included), checked against a dense grid of steps."""
    from kquant.ggml.kernels._sweep import sym_sweep

    seed, rng = fresh_rng()
    m = n * max(hi, -lo)
    ts, idx, L = np.empty(m), np.empty(m, np.int64), np.empty(n)
    cs, cv = np.empty(3), np.empty(3)
    for trial in range(20):
        x = rng.standard_t(3, n) if trial % 2 else rng.normal(size=n)
        if trial % 5 == 0:
            x[: n // 4] = x[n // 4 : n // 2]  # repeated values: breakpoints that coincide
        w = rng.chisquare(2, n) * (rng.random(n) > 0.1)
        k = sym_sweep(x, 0, w, 0, n, lo, hi, 3, ts, idx, L, cs, cv)
        assert k >= 1 and np.all(np.diff(cv[:k]) <= 0)

        def err(s):
            q = np.clip(np.rint(x[:, None] / s), lo, hi)
            return (w[:, None] * (s * q - x[:, None]) ** 2).sum(0)

        e0 = (w * x * x).sum()
        amax = np.abs(x).max()
        grid = np.concatenate([g * amax * np.geomspace(1 / (4 * max(hi, -lo)), 4, 40000) for g in (1, -1)])
        assert abs(err(np.array([cs[0]]))[0] - (e0 - cv[0])) <= 1e-9 * e0, f"seed={seed}"
        assert e0 - cv[0] <= err(grid).min() * (1 + 1e-9) + 1e-12, f"seed={seed} trial={trial}"


@pytest.mark.parametrize("n", [1, 7, 16, 31, 32, 37, 256])
def test_block_error_sums(n):
    """werr and out_errors (running sums in a fixed order) equal the sums taken in order, to float64's
    rounding, for lengths with and without a remainder past the unrolled sums; werr2's two sums are
    werr's, bit for bit (refine's accept tests compare against them)."""
    from kquant.ggml.kernels._accept import out_errors
    from kquant.ggml.kernels._sweep import werr, werr2

    seed, rng = fresh_rng()
    x = rng.standard_t(3, n + 5).astype(np.float32)
    y = (x[5:] + rng.normal(size=n) * 0.1).astype(np.float32)
    w = rng.chisquare(2, n)
    r = y.astype(np.float64) - x[5:].astype(np.float64)
    e = float(np.sum(w * r * r))
    g = abs(float(np.sum(w * x[5:].astype(np.float64) * r)))
    assert abs(werr(x, 5, w, y, n) - e) <= 1e-14 * e, f"seed={seed}"
    u = rng.random(n)
    assert werr2(x, 5, w, u, y, n) == (werr(x, 5, w, y, n), werr(x, 5, u, y, n)), f"seed={seed}"
    eu, gu = out_errors(x, 5, w, y, n)
    assert abs(eu - e) <= 1e-14 * e and abs(gu - g) <= 1e-12 * np.sum(np.abs(w * x[5:] * r)), f"seed={seed}"


@pytest.mark.parametrize("t", ["Q3_K", "Q6_K", "Q2_K"])
def test_refine_packers_decode_to_their_levels(t):
    """refine_k packs a kept refit from its own codes and levels, without ggml's tail: the packed
    super-block decodes (kquant's dequantizer, checked against ggml's elsewhere) to D*sc*l, or
    D*sc*q - M*m, the float32 values its errors were summed from, for random codes and levels over
    their whole ranges."""
    from kquant.ggml.kernels import refine_k

    seed, rng = fresh_rng()
    qt = QType[t]
    for _ in range(20):
        D = np.float32(np.float16(rng.uniform(1e-3, 1.0) * rng.choice([-1.0, 1.0] if t == "Q6_K" else [1.0])))
        blk = np.zeros((1, qt.type_size), dtype=np.uint8)
        if t == "Q2_K":
            M = np.float32(np.float16(rng.uniform(0, 1.0)))
            sc = rng.integers(0, 16, 16).astype(np.int32)
            mn = rng.integers(0, 16, 16).astype(np.int32)
            q = rng.integers(0, 4, 256).astype(np.int32)
            refine_k._pack_q2_k(blk[0], 0, D, M, sc, mn, q)
            sub = np.repeat(np.arange(16), 16)
            want = (np.float32(D) * sc[sub].astype(np.float32)) * q.astype(np.float32) - \
                np.float32(M) * mn[sub].astype(np.float32)
        else:
            lo, hi, slo, shi = (-32, 31, -128, 127) if t == "Q6_K" else (-4, 3, -32, 31)
            sc = rng.integers(slo, shi + 1, 16).astype(np.int32)
            lev = rng.integers(lo, hi + 1, 256).astype(np.int32)  # natural order: value 16 s + i
            LT = lev.reshape(16, 16).T.reshape(-1).copy()  # the refit's layout: LT[16 i + s]
            refine_k._pack_sym(blk[0], 0, D, sc, LT, np.empty(256, dtype=np.int32), t == "Q6_K")
            sub = np.repeat(np.arange(16), 16)
            want = (np.float32(D) * sc[sub].astype(np.float32)) * lev.astype(np.float32)
        got = quants.dequantize(blk, qt, (1, 256))[0]
        assert np.array_equal(got, want.astype(np.float32)), f"seed={seed}"



@pytest.mark.parametrize("t", [QType.Q4_1, QType.Q5_1], ids=lambda v: v.name)
def test_affine_certificate_implies_the_exact_test(t):
    """refine_legacy._certified lets Q4_1 / Q5_1 refits skip their exact test: whenever it holds for
    a (d16, m16), the block written with the nearest levels at (d16, m16) has, summed exactly from
    its float32 values (levels and values computed here in numpy), a lower error than ggml's block
    with _accept's margin. The certificate gets what the kernel gives it: _ggml_e_bound_affine's
    bound on ggml's error (checked to hold), not the error. Candidates: the least-squares refit, fp16
    neighbours (near ties), small and large steps, and scales far too small for the block (level()'s
    rounding range); the certificate must also hold for most candidates that pass (else it saves
    nothing)."""
    from kquant.ggml.kernels._accept import MARGIN
    from kquant.ggml.kernels.refine_legacy import _certified, _ggml_e_bound_affine

    seed, rng = fresh_rng()
    hi = 15 if t == QType.Q4_1 else 31
    fhi = np.float32(hi)
    passed = certified = 0
    for kind in KINDS:
        x = make_x(kind, 2, 256, rng).reshape(-1, 32)
        g = kquant.quantize(x, t).reshape(-1, t.type_size)
        y = quants.dequantize(g, t, x.shape)
        for xb, gb, yb in zip(x, g, y):
            xv, yv = xb.astype(np.float64), yb.astype(np.float64)
            e = float(np.sum((yv - xv) ** 2))
            dg, mg = gb[0:4].view(np.float16).astype(np.float32)
            mn = xb.min()
            d = np.float32((xb.max() - mn) / fhi)
            if not (dg > 0 and np.all(np.isfinite(xb))):
                continue
            eb = _ggml_e_bound_affine(d, dg, mn, mg, fhi)
            assert e <= eb, f"seed={seed} kind={kind}: ggml's error {e} above its bound {eb}"
            qg = np.rint((yb - mg) / dg)
            A = np.vstack([qg, np.ones(32)]).T
            ls = np.linalg.lstsq(A, xv, rcond=None)[0]
            cands = [(ls[0], ls[1])] + [(dg * f, mg + dg * s) for f, s in
                                        zip(rng.choice([1.0, 1 - 1e-3, 1 + 1e-3, 0.97, 1.03, 0.8, 1.25, 1e-7], 6),
                                            rng.choice([0.0, 1e-3, -1e-3, 0.05, -0.05, 0.5], 6))]
            for dc, mc in cands:
                d16, m16 = np.float32(np.float16(dc)), np.float32(np.float16(mc))
                for k in range(-1, 2):  # fp16 neighbours of the scale: refits a rounding apart
                    d16k = np.float32(np.nextafter(np.float16(d16), np.float16(np.inf if k > 0 else 0)) if k else d16)
                    if not (0 < d16k < 65504 and np.isfinite(m16)):
                        continue
                    tq = (xb - m16) * (np.float32(1) / d16k)  # float32, as _levels
                    lev = np.clip(np.rint(tq), 0, hi).astype(np.float32)
                    yr = (lev * d16k + m16).astype(np.float64)  # the dequantizer's float32 values
                    er = float(np.sum((yr - xv) ** 2))
                    ok = er < e * (1.0 - MARGIN)
                    c = _certified(eb, float(xv @ yv), float(yv @ yv), float(xv.sum()), float(yv.sum()), dg, mg,
                                   mn, d, d16k, m16, fhi)
                    assert ok or not c, f"seed={seed} kind={kind} d16={d16k!r} m16={m16!r}: {er} vs {e}"
                    if np.abs(tq).max() >= 2.0**21:
                        assert not c, f"seed={seed} kind={kind}: certified outside level()'s range"
                    passed += ok
                    certified += c
    assert certified >= 0.5 * passed > 0, (seed, certified, passed)


@pytest.mark.parametrize("t", [QType.Q4_0, QType.Q5_0, QType.Q8_0], ids=lambda v: v.name)
def test_ggml_error_bound_holds(t):
    """refine_legacy._ggml_e_bound, which bounds each value's squared error of ggml's block so that it
    times the weights' sum stands in for ggml's error in refine's margin test (Q4_0 / Q5_0 / Q8_0;
    Q8_0 with an imatrix too), is at least every value's squared error, and the sum not far above
    ggml's error (else the margin would reject real gains), on every fuzzed kind with finite values;
    weighted by random importances as well."""
    from kquant.ggml.kernels.better_legacy import K_Q4_0, K_Q5_0, K_Q8_0
    from kquant.ggml.kernels.refine_legacy import _ggml_e_bound

    kind_id = {QType.Q4_0: K_Q4_0, QType.Q5_0: K_Q5_0, QType.Q8_0: K_Q8_0}[t]
    seed, rng = fresh_rng()
    ratios = []
    for kind in KINDS:
        x = make_x(kind, 2, 256, rng).reshape(-1, 32)
        g = kquant.quantize(x, t).reshape(-1, t.type_size)
        y = quants.dequantize(g, t, x.shape)
        for xb, gb, yb in zip(x, g, y):
            if not np.all(np.isfinite(xb)):
                continue
            G = float(gb[0:2].view(np.float16)[0])
            if not np.isfinite(G):
                continue
            amax_first = xb[np.argmax(np.abs(xb))]
            d = float(np.float32(amax_first) / np.float32(-8 if t == QType.Q4_0 else -16 if t == QType.Q5_0 else 127))
            if t == QType.Q8_0:
                d = abs(d)
            r2 = (yb.astype(np.float64) - xb.astype(np.float64)) ** 2
            b2 = _ggml_e_bound(kind_id, G, d)
            assert r2.max() <= b2, f"seed={seed} kind={kind}: a squared error {r2.max()} above the bound {b2}"
            w = rng.chisquare(2, 32)
            assert float(w @ r2) <= b2 * w.sum()
            if r2.sum() > 0:
                ratios.append(32 * b2 / r2.sum())
    assert np.median(ratios) < 20, (seed, np.median(ratios))


def test_branch_free_iq4_index_is_best_index():
    """better_iq4's branch-free nearest index equals ggml's binary search (iq4.best_index) on every
    float32 within 4096 ulps of each table value and each midpoint between two, on random values over
    the table's range and beyond, and on +-0, +-inf and NaN. (Run once over every float32 with
    |v| < 256, both signs: no difference.)"""
    from numba import njit

    from kquant.ggml.kernels.better_iq4 import _nearest
    from kquant.ggml.kernels.iq4 import KVALUES, best_index

    @njit
    def mismatches(v):
        bad = 0
        for i in range(v.shape[0]):
            bad += _nearest(v[i]) != best_index(v[i])
        return bad

    seed, rng = fresh_rng()
    kv = KVALUES.astype(np.float32)
    anchors = np.concatenate([kv, (kv[:-1] + kv[1:]) / np.float32(2)]).astype(np.float32)
    bits = anchors.view(np.int32)[:, None] + np.arange(-4096, 4097, dtype=np.int32)[None, :]
    near = np.concatenate([bits.view(np.float32).ravel(), -bits.view(np.float32).ravel()])
    rand = (rng.uniform(-300, 300, 1_000_000)).astype(np.float32)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e30, -1e30], dtype=np.float32)
    for v in (near, rand, special):
        assert mismatches(v) == 0, f"seed={seed}"


@pytest.mark.parametrize("mode,t", MODE_TYPES, ids=lambda v: getattr(v, "name", v))
def test_thread_count_independent(mode, t, monkeypatch):
    if quants.MAX_THREADS < 2:
        pytest.skip("one core")
    _, rng = fresh_rng()
    x = make_x("normal", 16, 1024, rng)
    qw = make_w("uniform", 1024, rng)
    ws = (qw,) if t.requires_imatrix else (None, qw)
    monkeypatch.setattr(quants, "MIN_VALUES_PER_THREAD", 256)
    try:
        quants.set_threads(1)
        one = [kquant.quantize(x, t, w, rounding=mode) for w in ws]
        quants.set_threads(quants.MAX_THREADS)
        many = [kquant.quantize(x, t, w, rounding=mode) for w in ws]
    finally:
        quants.set_threads(quants.MAX_THREADS)
    assert all(np.array_equal(a, b) for a, b in zip(one, many))



@pytest.mark.parametrize("mode,t", [(m, t) for m, t in MODE_TYPES if not t.requires_imatrix],
                         ids=lambda v: getattr(v, "name", v))
def test_nonfinite_block_keeps_ggml_bytes(mode, t):
    """With non-finite values allowed, a block holding a NaN is ggml's block byte for byte (refine's
    Q4_1 / Q5_1 compute ggml's blocks themselves and must hand such a block to ggml's own code);
    where ggml's block is refused, so is the mode's."""
    _, rng = fresh_rng()
    x = make_x("normal", 2, 512, rng)
    x[0, t.block_size + 3] = np.nan
    try:
        g = kquant.quantize(x, t, check_finite=False)
    except ValueError as e:
        with pytest.raises(ValueError, match=str(e).split(":")[0]):
            kquant.quantize(x, t, check_finite=False, rounding=mode)
        return
    b = kquant.quantize(x, t, check_finite=False, rounding=mode)
    gb = g.reshape(2, -1, t.type_size)
    assert np.array_equal(gb[0, 1], b.reshape(2, -1, t.type_size)[0, 1])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("t", [QType.Q4_1, QType.Q5_1], ids=lambda v: v.name)
def test_exact_block_keeps_ggml_bytes(mode, t):
    """A block on ggml's own grid (error 0: nothing can beat it) stays ggml's block byte for byte,
    including the sign of a zero min, which ggml takes from the first zero (+0 here, then -0: an
    order-free min would take -0)."""
    nmax = 15 if t == QType.Q4_1 else 31
    block = np.arange(32, dtype=np.float32) % (nmax + 1) * np.float32(0.125)
    block[0], block[1] = 0.0, -0.0
    x = np.stack([np.tile(block, 4), make_x("normal", 1, 128, fresh_rng()[1])[0]]).astype(np.float32)
    g = kquant.quantize(x, t)
    assert g[0, 2:4].tobytes() == b"\x00\x00"  # m = +0 (fp16)
    b = kquant.quantize(x, t, rounding=mode)
    assert np.array_equal(g[0], b[0])


def test_refine_q8_0_keeps_ggml_blocks_for_negative_weights():
    """Q8_0's refine closed form needs weights >= 0: with a negative one in the importance row it
    leaves ggml's blocks as they are, every byte written (an output filled by ggml's kernel first)."""
    seed, rng = fresh_rng()
    x = make_x("normal", 8, 512, rng)
    qw = rng.random(512).astype(np.float32)
    qw[rng.integers(0, 512)] = -1.0
    for _ in range(3):  # fresh (uninitialised) output arrays each time
        assert np.array_equal(kquant.quantize(x, QType.Q8_0, imatrix=qw, rounding="refine"),
                              kquant.quantize(x, QType.Q8_0, imatrix=qw)), f"seed={seed}"


def test_metadata_only_when_not_ggml():
    from gguf import GGUFValueType

    plan = pipeline.Plan(pipeline.parse_ftype("Q4_K_M"), "llama", [], [], [])
    assert not any(k == pipeline.ROUNDING_KEY for k, _, _ in pipeline.output_kv(plan))
    assert pipeline.output_kv(plan, "best")[-1] == (pipeline.ROUNDING_KEY, GGUFValueType.STRING, "best")


TINY = pipeline.Path(__file__).resolve().parent.parent / "fixtures" / "tiny-llama"


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    pytest.importorskip("llama_cpp")
    d = tmp_path_factory.mktemp("rounding")
    files = {("ggml", "F32"): d / "F32.gguf"}
    pipeline.convert_many(TINY, [(files["ggml", "F32"], "F32")])
    for mode in MODES:
        targets = [(d / f"{mode}-{ft}.gguf", ft) for ft, m in TINY_FILES if m == mode]
        kquant.convert_many(TINY, targets, rounding=mode)  # the public API
        files.update({(mode, ft): p for p, ft in targets})
    return files


TINY_FILES = [("Q4_K_M", "best"), ("Q4_0", "best"), ("Q5_1", "best"), ("IQ3_S", "best"),
              ("Q4_K_M", "refine"), ("Q3_K_M", "refine"), ("Q5_0", "refine")]


@pytest.mark.parametrize("ftype,mode", TINY_FILES)
def test_llama_cpp_runs_rounded_files(tiny_files, ftype, mode):
    from oracle import refpipeline
    from kquant.io.gguf import GGUFFile

    path = tiny_files[mode, ftype]
    assert GGUFFile(path).value(pipeline.ROUNDING_KEY) == mode
    assert GGUFFile(tiny_files["ggml", "F32"]).value(pipeline.ROUNDING_KEY) is None
    toks, q = refpipeline.eval_logits(path)
    _, full = refpipeline.eval_logits(tiny_files["ggml", "F32"])
    assert len(toks) > 5 and np.isfinite(q).all()
    # (2-3 bits on this tiny model: ggml's own IQ3_S file correlates 0.84)
    assert np.corrcoef(q.ravel(), full.ravel())[0, 1] > (0.8 if ftype in ("IQ3_S", "Q3_K_M") else 0.9)


LOW_BIT = "IQ2_XXS IQ2_XS IQ2_S IQ3_XXS IQ1_S IQ1_M TQ1_0 TQ2_0 MXFP4 Q1_0 Q2_0".split()


def test_llama_cpp_runs_best_low_bit_file(tmp_path):
    """One best-rounded file holding each low-bit type on one matrix of tiny-llama (with an imatrix,
    which the i-quants need): written as mapped, and llama.cpp runs it."""
    pytest.importorskip("llama_cpp")
    from oracle import refpipeline
    from kquant.io.gguf import GGUFFile
    from kquant.plan.imatrix import ImatrixData

    kinds = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
    names = [f"blk.{i}.{k}.weight" for i in (0, 1) for k in kinds]
    type_map = {n: QType[t] for n, t in zip(names, LOW_BIT)}
    rng = np.random.default_rng(3)
    im = ImatrixData(weights={n: (rng.gamma(0.5, size=768 if "ffn_down" in n else 256) + 1e-3).astype(np.float32)
                              for n in names}, datasets=["x"], chunk_count=1, path="im.gguf")
    out = tmp_path / "low.gguf"
    pipeline.convert(TINY, out, "Q4_K_M", pipeline.Options(imatrix=im, type_map=type_map, rounding="best"))
    with GGUFFile(out) as g:
        got = {t.name: t.qtype for t in g.tensors}
    assert all(got[n] == t for n, t in type_map.items())
    _, logits = refpipeline.eval_logits(out)
    assert np.isfinite(logits).all()


def test_cli_rejects_unknown_rounding(capsys):
    from kquant.cli import main

    assert main(["convert", str(TINY), "-o", "/nonexistent/x.gguf", "--rounding", "nearest"]) != 0
    err = capsys.readouterr().err
    assert "unknown rounding 'nearest'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("mode", MODES)
def test_automix_measures_with_the_rounding(mode):
    """The automix's per-type errors come from the chosen rounding: lower than ggml's in total (its
    error weights are not ggml's objective, so single tensors may differ either way)."""
    from kquant.automix import measure_model

    errs = {}
    for r in ("ggml", mode):
        m = measure_model(TINY, "Q4_0", pipeline.Options(rounding=r), header=False)
        errs[r] = {c.name: dict(zip(c.types, c.rel)) for c in m.curves if not c.fixed}
    some = [(n, t) for n, d in errs["ggml"].items() for t in d if t in quants.mode_types(mode) and d[t] > 0]
    assert some
    assert sum(errs[mode][n][t] for n, t in some) < sum(errs["ggml"][n][t] for n, t in some)



def test_target_size_counts_the_rounding_key(tmp_path):
    """The automix's file-size model includes the quantize.rounding key a best-mode file carries:
    header + padded tensor bytes is exactly the size of the file written (so --target-size holds)."""
    from kquant.automix import measure_model

    m = measure_model(TINY, "Q4_K_M", pipeline.Options(rounding="best"))
    pad = lambda n: -(-n // m.alignment) * m.alignment  # noqa: E731
    out = tmp_path / "o.gguf"
    pipeline.convert(TINY, out, "Q4_K_M", pipeline.Options(rounding="best"))
    assert out.stat().st_size == m.header_bytes + sum(pad(c.nbytes[c.index(c.recipe)]) for c in m.curves)
