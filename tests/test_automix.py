"""kquant.automix: budgets are never exceeded, more budget never predicts more damage, the knapsack is
exact, block sizes and 1-D tensors are respected, and the written file is what the plan says."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from kquant import automix, cli, models
from kquant import pipeline as cv
from kquant.errors import InputError
from kquant.io.gguf import GGUFFile
from kquant.plan.imatrix import ImatrixData
from kquant.plan.overrides import Overrides
from kquant.types import QType

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "fixtures" / "tiny-llama"
N_BUDGETS = 60


@pytest.fixture(scope="module")
def measured():
    return automix.measure_model(TINY, "Q4_K_M")


def _span(m):
    lo = sum(min(c.nbytes) for c in m.curves)
    hi = sum(max(c.nbytes) for c in m.curves)
    return lo, hi


def test_budget_never_exceeded_and_monotone(measured):
    lo, hi = _span(measured)
    rng = np.random.default_rng(0)
    budgets = sorted(set(int(b) for b in rng.integers(lo, hi + 2, size=N_BUDGETS)) | {lo, hi})
    n_el = measured.n_elements
    prev = None
    for b in budgets:
        bpw = b * 8 / n_el
        if b == lo:
            bpw = (b + 0.5) * 8 / n_el  # float rounding must not lose the cheapest mix's last byte
        mix = automix.mix_for_budget(measured, target_bpw=bpw)
        assert mix.tensor_bytes <= mix.budget <= bpw * n_el / 8 and mix.bpw <= bpw
        if prev is not None:
            assert mix.damage <= prev, (b, mix.damage, prev)
        prev = mix.damage
    # everything exact at the top: zero predicted damage
    assert automix.mix_for_budget(measured, target_bpw=hi * 8 / n_el + 1).damage == 0.0


def test_recipe_is_never_beaten_by_the_recipe(measured):
    """At the recipe's own size the mix predicts at most the recipe's damage (the recipe is a candidate)."""
    recipe_bytes = sum(c.nbytes[c.index(c.recipe)] for c in measured.curves)
    mix = automix.mix_for_budget(measured, target_bpw=recipe_bytes * 8 / measured.n_elements)
    assert mix.tensor_bytes <= recipe_bytes
    assert mix.damage <= mix.recipe_damage


def test_too_small_budget(measured):
    with pytest.raises(InputError, match="too small"):
        automix.mix_for_budget(measured, target_bpw=1.0)


def test_knapsack_is_exact_on_small_instances():
    rng = np.random.default_rng(1)
    for _ in range(200):
        n = int(rng.integers(1, 5))
        costs, dmg = [], []
        for _ in range(n):
            k = int(rng.integers(1, 4))
            c = sorted(int(x) for x in rng.integers(1, 40, size=k))
            costs.append(c)
            dmg.append([float(x) for x in rng.random(k)])
        budget = int(rng.integers(0, sum(max(c) for c in costs) + 5))
        got = automix.solve(costs, dmg, budget)
        best = None
        for pick in itertools.product(*[range(len(c)) for c in costs]):
            if sum(costs[i][k] for i, k in enumerate(pick)) <= budget:
                d = sum(dmg[i][k] for i, k in enumerate(pick))
                best = d if best is None else min(best, d)
        if best is None:
            assert got is None
        else:
            assert sum(costs[i][k] for i, k in enumerate(got)) <= budget
            assert sum(dmg[i][k] for i, k in enumerate(got)) == pytest.approx(best, rel=1e-12, abs=1e-15)


def test_coarse_grid_rounds_costs_up(monkeypatch):
    """When the gcd grid is too fine, the coarser unit still never exceeds the budget."""
    monkeypatch.setattr(automix, "MAX_UNITS", 7)
    rng = np.random.default_rng(2)
    for _ in range(100):
        costs = [sorted(int(x) for x in rng.integers(1, 1000, size=3)) for _ in range(4)]
        dmg = [[3.0, 2.0, 1.0] for _ in range(4)]
        budget = int(rng.integers(sum(c[0] for c in costs), sum(c[-1] for c in costs) + 1))
        got = automix.solve(costs, dmg, budget)
        assert sum(costs[i][k] for i, k in enumerate(got)) <= budget


def test_candidates_respect_block_sizes():
    for cols, ref in ((4096, QType.BF16), (96, QType.BF16), (200, QType.F16), (768, QType.F32)):
        cands = automix.candidates_for(cols, ref)
        assert cands[-1] == ref
        assert all(cols % t.block_size == 0 for t in cands), (cols, cands)
    assert automix.candidates_for(96, QType.BF16)[:-1] == [t for t in automix.LEGACY_CANDIDATES if t.block_size <= 32]
    assert QType.Q2_0 in automix.candidates_for(192, QType.BF16) and QType.Q1_0 not in automix.candidates_for(192, QType.BF16)
    assert {QType.IQ1_S, QType.IQ2_XXS, QType.IQ3_S, QType.Q1_0, QType.TQ1_0} <= set(automix.candidates_for(768, QType.BF16))
    assert automix.candidates_for(200, QType.BF16)[:-1] == [QType.F16]


def _make(path, **kw):
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    from make_tiny_model import make

    return make(path, **kw)


@pytest.fixture(scope="module")
def odd_model(tmp_path_factory):
    """Rows of 96 (32-multiples only) and 200 (no 32-block type fits)."""
    return _make(tmp_path_factory.mktemp("odd") / "m", layers=1, hidden=96, heads=2, kv_heads=1, ffn=200, vocab=300, seed=3)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """One layer of 256-wide rows: cheap to measure, for the CLI and imatrix tests."""
    return _make(tmp_path_factory.mktemp("small") / "m", layers=1, hidden=256, heads=2, kv_heads=1, ffn=256, vocab=300,
                 seed=5)


@pytest.fixture(scope="module")
def small_measured(small_model):
    return automix.measure_model(small_model, "Q4_K_M")


def test_odd_rows_and_1d_tensors(odd_model, tmp_path):
    m = automix.measure_model(odd_model, "Q4_K_M")
    lo, hi = _span(m)
    mix = automix.mix_for_budget(m, target_size=m.header_bytes + (lo + hi) // 2 + 64 * len(m.curves))
    for c, k in zip(mix.curves, mix.choice):
        t = c.types[k]
        assert c.shape[-1] % t.block_size == 0
        if len(c.shape) == 1 or c.shape[0] == 1:
            assert c.fixed and t == QType.F32, c.name
    out = tmp_path / "odd.gguf"
    cv.convert(odd_model, out, "Q4_K_M", cv.Options(type_map=mix.type_map))
    assert out.stat().st_size == mix.file_bytes
    with GGUFFile(out) as g:
        got = {t.name: t.qtype for t in g.tensors}
    for c, k in zip(mix.curves, mix.choice):
        assert got[c.name] == c.types[k]


def test_parse_size():
    assert automix.parse_size("123456789") == 123456789
    assert automix.parse_size("350MB") == 350_000_000
    assert automix.parse_size("1.2GiB") == int(1.2 * 2**30)
    assert automix.parse_size("1.5 kib") == 1536
    assert automix.parse_size("2b") == 2
    for bad in ("", "MB", "12XB", "-3MB", "0", "1e6", "12 M B"):
        with pytest.raises(InputError):
            automix.parse_size(bad)


def test_cli_target_size_parse_error(capsys):
    assert cli.main(["convert", str(TINY), "--dry-run", "--target-size", "12XB"]) == 2
    err = capsys.readouterr().err
    assert "--target-size" in err and len(err.splitlines()) == 1
    assert cli.main(["convert", str(TINY), "--dry-run", "--target-bpw", "-1"]) == 2
    assert cli.main(["convert", str(TINY), "--dry-run", "--target-bpw", "5", "--target-size", "1MB"]) == 2


def test_cli_dry_run_and_written_file(tmp_path, capsys, small_model, small_measured):
    m = small_measured
    size = m.header_bytes + sum(c.nbytes[c.index(c.recipe)] for c in m.curves) + 4096
    # dry run: the plan carries the chosen types, the predicted size and the report; nothing is written
    assert cli.main(["convert", str(small_model), "--dry-run", "-q", "--target-size", str(size)]) == 0
    text = capsys.readouterr().out
    assert "automix: target" in text and "predicted damage" in text and "more bits than the recipe" in text
    assert not list(tmp_path.iterdir())
    # a written file: its size is the plan's prediction and within --target-size
    out = tmp_path / "auto.gguf"
    assert cli.main(["convert", str(small_model), "-o", str(out), "--json", "-q", "--target-size", str(size)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert out.stat().st_size == r["file_bytes"] == r["automix"]["predicted_file_bytes"] <= size
    assert r["tensor_bytes"] == r["automix"]["predicted_tensor_bytes"]
    with GGUFFile(out) as g:
        got = {t.name: t.qtype.ggml_name for t in g.tensors}
    assert got == {t["name"]: t["chosen"] for t in r["automix"]["tensors"]}
    mix = automix.mix_for_budget(m, target_size=size)
    assert got == {c.name: c.types[k].ggml_name for c, k in zip(mix.curves, mix.choice)}


def test_cli_dry_run_json(capsys, small_model):
    assert cli.main(["convert", str(small_model), "--dry-run", "--json", "-q", "--target-bpw", "5.25"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["bits_per_weight"] <= 5.25 and d["automix"]["predicted_tensor_bytes"] == d["total_bytes"]
    assert d["automix"]["budget_kind"] == "bpw"
    assert {t["name"]: t["type"] for t in d["tensors"]} == {t["name"]: t["chosen"] for t in d["automix"]["tensors"]}


def test_existing_output_refused_before_measuring(tmp_path):
    out = tmp_path / "x.gguf"
    out.write_bytes(b"keep")
    assert cli.main(["convert", str(TINY), "-o", str(out), "-q", "--target-bpw", "5"]) != 0
    assert out.read_bytes() == b"keep"


def test_imatrix_weights_and_pins(small_model, small_measured):
    rng = np.random.default_rng(4)
    weights = {c.name: rng.random(c.shape[-1]).astype(np.float32) + 0.01 for c in small_measured.curves
               if not c.fixed and c.name != "token_embd.weight"}
    im = ImatrixData(weights=weights, datasets=["x"], chunk_count=1, path="im.gguf")
    ov = Overrides(tensor_types=(("attn_v", QType.Q8_0),))
    m = automix.measure_model(small_model, "Q4_K_M", cv.Options(imatrix=im, overrides=ov))
    by = {c.name: c for c in m.curves}
    assert by["blk.0.attn_v.weight"].fixed and by["blk.0.attn_v.weight"].recipe == QType.Q8_0
    assert by["blk.0.ffn_up.weight"].weighted and not by["token_embd.weight"].weighted
    plain = {c.name: c for c in small_measured.curves}
    assert by["blk.0.ffn_up.weight"].rel != plain["blk.0.ffn_up.weight"].rel  # the weights change the errors
    mix = automix.mix_for_budget(m, target_bpw=5.0)
    assert "blk.0.attn_v.weight" not in mix.type_map
    plan = cv.dry_run(small_model, "Q4_K_M", cv.Options(imatrix=im, overrides=ov, type_map=mix.type_map))
    assert plan.total_bytes == mix.tensor_bytes and plan.bpw <= 5.0
    assert {t.name: t.qtype for t in plan.tensors}["blk.0.attn_v.weight"] == QType.Q8_0


LOW_BIT_RECIPES = ("IQ2_M", "IQ3_M", "Q2_K")  # the sizes the README's low-bit benchmark matches


@pytest.fixture(scope="module")
def tiny_imatrix(measured):
    """Importance rows (heavy-tailed, as llama-imatrix's) for every quantized matrix but token_embd (as llama-imatrix)."""
    rng = np.random.default_rng(7)
    weights = {c.name: (rng.gamma(0.5, size=c.shape[-1]) + 1e-3).astype(np.float32) for c in measured.curves
               if not c.fixed and c.name != "token_embd.weight"}
    return ImatrixData(weights=weights, datasets=["x"], chunk_count=1, path="im.gguf")


@pytest.fixture(scope="module")
def measured_im(tiny_imatrix):
    return automix.measure_model(TINY, "Q4_K_M", cv.Options(imatrix=tiny_imatrix))


def _low_bit_mix(recipe, with_imatrix, measured, measured_im, tiny_imatrix):
    """The mix at the bits per weight of llama.cpp's `recipe` file (made with the imatrix, which IQ2_M needs)."""
    plan = cv.dry_run(TINY, recipe, cv.Options(imatrix=tiny_imatrix))
    m = measured_im if with_imatrix else measured
    return plan, m, automix.mix_for_budget(m, target_bpw=plan.bpw)


@pytest.mark.parametrize("with_imatrix", [False, True], ids=["no_imatrix", "imatrix"])
@pytest.mark.parametrize("recipe", LOW_BIT_RECIPES)
def test_low_bit_sizes(recipe, with_imatrix, measured, measured_im, tiny_imatrix):
    """At the size of llama.cpp's IQ2_M, IQ3_M and Q2_K files a mix exists and keeps to the budget;
    without importance rows for a tensor it never gets a type llama-quantize or ggml refuses without
    them; with them the recipe's own types are candidates, so the mix predicts at most their damage."""
    plan, m, mix = _low_bit_mix(recipe, with_imatrix, measured, measured_im, tiny_imatrix)
    assert mix.bpw <= plan.bpw
    for c, k in zip(mix.curves, mix.choice):
        assert c.weighted == (with_imatrix and c.name in tiny_imatrix.weights and not c.fixed)
        if not c.weighted and not c.fixed:
            assert all(automix.allowed_without_weights(c.name, t, m.ftype) for t in c.types), c.name
    if with_imatrix:
        types = {t.name: t.qtype for t in plan.tensors}
        assert all(types[c.name] in c.types for c in m.curves)
        assert mix.damage <= sum(c.damage[c.index(types[c.name])] for c in m.curves)
        assert any(automix.is_search_type(t) for t in mix.type_map.values())  # the i-quants are chosen
    else:  # the imatrix-only types stay out of the blocks; llama-quantize allows some on token_embd / output
        assert not any(t.requires_imatrix or (n.startswith("blk.") and t in (QType.IQ2_S, QType.IQ3_XXS, QType.IQ1_M))
                       for n, t in mix.type_map.items())


@pytest.mark.parametrize("with_imatrix", [False, True], ids=["no_imatrix", "imatrix"])
def test_low_bit_file_runs_in_llama_cpp(with_imatrix, measured, measured_im, tiny_imatrix, tmp_path):
    """The IQ2_M-sized mix is written as planned (types, size) and llama.cpp runs it."""
    pytest.importorskip("llama_cpp")
    from oracle import refpipeline

    plan, m, mix = _low_bit_mix("IQ2_M", with_imatrix, measured, measured_im, tiny_imatrix)
    out = tmp_path / "low.gguf"
    cv.convert(TINY, out, "Q4_K_M", cv.Options(imatrix=tiny_imatrix if with_imatrix else None, type_map=mix.type_map))
    with GGUFFile(out) as g:
        got = {t.name: t.qtype for t in g.tensors}
    assert got == {c.name: c.types[k] for c, k in zip(mix.curves, mix.choice)}
    assert sum(t.nbytes(c.shape) for c, t in zip(mix.curves, got.values())) * 8 / m.n_elements <= plan.bpw
    _, logits = refpipeline.eval_logits(out)
    assert np.isfinite(logits).all()


@pytest.mark.parametrize(("name", "qtype", "ok"), [
    ("blk.0.ffn_up.weight", QType.IQ2_XXS, False),  # llama-quantize and ggml refuse it
    ("blk.0.ffn_up.weight", QType.IQ2_S, False),  # llama-quantize refuses it (ggml would quantize it)
    ("blk.0.ffn_up.weight", QType.IQ3_S, True),
    ("token_embd.weight", QType.IQ2_S, True),  # llama-quantize's exception for token_embd / output
    ("output.weight", QType.IQ1_M, True),
    ("token_embd.weight", QType.IQ2_XXS, False),  # ... but ggml_quantize_chunk aborts without weights
    ("output.weight", QType.IQ1_S, False),
])
def test_type_map_without_imatrix(name, qtype, ok):
    """A chosen type the writer cannot quantize without importance rows is refused before any output,
    naming the tensor; automix's candidate rule says the same."""
    from kquant.types import parse_ftype

    assert automix.allowed_without_weights(name, qtype, parse_ftype("Q4_K_M")) == ok
    opts = cv.Options(type_map={name: qtype})
    if ok:
        assert {t.name: t.qtype for t in cv.dry_run(TINY, "Q4_K_M", opts).tensors}[name] == qtype
    else:
        with pytest.raises(InputError, match=name.replace(".", r"\.")):
            cv.dry_run(TINY, "Q4_K_M", opts)


def test_sampling_is_deterministic_and_partial():
    rows = list(automix.sample_chunks(0, 1000, True))
    again = list(automix.sample_chunks(0, 1000, True))
    assert rows == again
    n = sum(b - a for a, b in rows)
    assert 0 < n <= 1000 // automix.SAMPLE_STRIDE_CHUNKS + automix.SAMPLE_CHUNK_ROWS
    # slab-independent: the same global rows whatever the slab boundaries
    split = [(a + 300, b + 300) for a, b in automix.sample_chunks(300, 700, True)]
    head = list(automix.sample_chunks(0, 300, True))
    assert head + split == rows
    # the search types' smaller sample: a subset of the chunks the others are measured on, first chunk included
    for sample in (False, True):
        fine = {r for a, b in automix.sample_chunks(0, 5000, sample) for r in range(a, b)}
        coarse = {r for a, b in automix.sample_chunks(0, 5000, sample, automix.SEARCH_STRIDE_CHUNKS) for r in range(a, b)}
        assert 0 in coarse and coarse < fine
        assert len(coarse) == pytest.approx(len(fine) / automix.SEARCH_STRIDE_CHUNKS, rel=0.1)


def test_sensitivity_rules():
    s = automix.sensitivity_of
    mid = s("blk.2.attn_output.weight", 6)
    assert mid == automix.SENSITIVITY["attn_output"]
    assert s("blk.0.attn_output.weight", 6) == mid * automix.FIRST_LAYER_FACTORS["attn_output"]
    down = s("blk.2.ffn_down.weight", 6)
    assert s("blk.0.ffn_down.weight", 6) == down * automix.FIRST_LAYER_FACTORS["ffn_down"] > 5 * down
    assert s("blk.0.ffn_down_exps.weight", 6) == s("blk.0.ffn_down.weight", 6)  # by llama.cpp's category
    assert s("blk.0.some_new_kind.weight", 6) == automix.DEFAULT_SENSITIVITY * automix.FIRST_LAYER_FACTOR
    assert s("blk.5.attn_output.weight", 6) == mid * automix.LAST_LAYER_FACTOR
    assert s("blk.2.attn_output.weight", 12) == mid * automix.REF_LAYERS / 12  # deeper: each block matters less
    assert s("output.weight", 12) == s("output.weight", 6) == automix.SENSITIVITY["output"]
    assert s("output.weight", 6, weighted=True) == automix.SENSITIVITY_WEIGHTED["output"] > s("output.weight", 6)
    assert s("blk.2.ffn_up.weight", 6, weighted=True) == s("blk.2.ffn_up.weight", 6)  # pooled over both measures
    assert s("blk.2.ffn_down_exps.weight", 6) == automix.SENSITIVITY["ffn_down"]  # by llama.cpp's category
    # a tied token_embd in its output-matrix role (its input role: the untied token_embd's)
    assert s("token_embd.weight", 12, tied=True) == s("output.weight", 12) == automix.SENSITIVITY["output"]
    assert s("token_embd.weight", 12, tied=True, weighted=True) == automix.SENSITIVITY_WEIGHTED["output"]
    assert s("token_embd.weight", 12) == automix.SENSITIVITY["token_embd"] * automix.REF_LAYERS / 12
    assert s("blk.2.some_new_kind.weight", 6) == automix.DEFAULT_SENSITIVITY


def _source(ckpt, spec) -> np.ndarray:
    """A tensor's source values (as the converter reads them), float64."""
    return np.concatenate([s for _, s in cv.iter_source_slabs(ckpt, spec)]).astype(np.float64)


def _gain_weighted_rel(x: np.ndarray, d: np.ndarray, g2: np.ndarray) -> float:
    """automix's relative output error of dequantized `d` against `x`, columns weighted by g2."""
    return float((g2 * (d - x) ** 2).sum() / (g2 * x * x).sum())


@pytest.mark.parametrize("pick", ["mix", "search"])
def test_measured_errors_match_the_written_file(pick, tmp_path, small_model, small_measured):
    """rel(t, chosen type) is the error `kquant validate` finds in the written file (BF16 source: no
    rounding); `search`: IQ3_S wherever it is a candidate, its error over the rows it was measured on."""
    from kquant.validate import validate_file

    from kquant.ggml import quants
    from kquant.io.gguf import GGUFFile

    mix = automix.mix_for_budget(small_measured, target_bpw=3.6)
    choice = mix.choice if pick == "mix" else [c.index(QType.IQ3_S) if QType.IQ3_S in c.types else k
                                                for c, k in zip(mix.curves, mix.choice)]
    type_map = {c.name: c.types[k] for c, k in zip(mix.curves, choice) if not c.fixed}
    out = tmp_path / "m.gguf"
    cv.convert(small_model, out, "Q4_K_M", cv.Options(type_map=type_map))
    rep = {t.name: t for t in validate_file(out, small_model).tensors}
    weighted = searched = 0
    with GGUFFile(out) as gf, cv.open_model(small_model) as ckpt:
        spec = cv.build_spec(ckpt, small_model, vocab=False)
        specs = {t.name: t for t in spec.tensors}
        norm_of = models.norm_inputs(spec.arch)
        for c, k in zip(mix.curves, choice):
            if c.fixed:
                continue
            t = c.types[k]
            assert rep[c.name].type == t.ggml_name
            norm = norm_of.get(c.kind)
            search = automix.is_search_type(t)  # measured on every SEARCH_STRIDE_CHUNKS-th chunk of rows
            if norm is None and c.name != "output.weight" and not search:  # unweighted: validate's relative error
                assert rep[c.name].metrics.rel_rmse ** 2 == pytest.approx(c.rel[k], rel=1e-9), c.name
                continue
            # weighted by the feeding norm's gain squared (else 1), recomputed here from the file
            g = (gf.data(c.name.replace(c.kind, norm) if norm else "output_norm.weight").view(np.float32).astype(np.float64)
                 if norm or c.name == "output.weight" else np.ones(c.shape[-1]))
            d = quants.dequantize(gf.data(c.name), gf.tensor(c.name).qtype, c.shape).astype(np.float64)
            x = _source(ckpt, specs[c.name])
            if search:
                rows = np.concatenate([np.arange(a, b) for a, b in automix.sample_chunks(0, x.shape[0], False,
                                                                                         automix.SEARCH_STRIDE_CHUNKS)])
                x, d = x[rows], d[rows]
                searched += 1
            want = _gain_weighted_rel(x, d, automix.error_weights(g * g).astype(np.float64))
            assert c.rel[k] == pytest.approx(want, rel=1e-9), c.name
            weighted += 1
    assert weighted > 0 and (pick == "mix" or searched > 0)


def test_tied_embedding_is_measured_in_both_roles(tmp_path):
    """A tied model's token_embd is its input embedding and its output matrix: `rel` weighted by the
    final norm's gain squared with the output matrix's sensitivity, `input_rel` unweighted with the
    untied token_embd's; its damage is the sum of the two roles."""
    from kquant.ggml import quants

    model = _make(tmp_path / "t", layers=1, hidden=256, heads=2, kv_heads=1, ffn=256, vocab=300, seed=6, tied=True)
    curves = automix.measure_model(model, "Q4_K_M").curves
    c = next(c for c in curves if c.name == "token_embd.weight")
    assert not any(c.name == "output.weight" for c in curves)
    assert c.sensitivity == automix.sensitivity_of("output.weight", 1)
    assert c.input_sensitivity == automix.sensitivity_of("token_embd.weight", 1) > 0
    with cv.open_model(model) as ckpt:
        specs = {t.name: t for t in cv.build_spec(ckpt, model, vocab=False).tensors}
        g2 = _source(ckpt, specs["output_norm.weight"]) ** 2
        x = _source(ckpt, specs[c.name])
    assert g2.std() > 0  # the weighting is not a no-op
    k = c.index(QType.Q4_K)
    d = quants.dequantize(quants.quantize(x.astype(np.float32), QType.Q4_K, None), QType.Q4_K, x.shape).astype(np.float64)
    ew = automix.error_weights(g2).astype(np.float64)
    assert c.rel[k] == pytest.approx(_gain_weighted_rel(x, d, ew), rel=1e-9)
    assert c.input_rel[k] == pytest.approx(_gain_weighted_rel(x, d, np.ones_like(g2)), rel=1e-9) != c.rel[k]
    assert c.damage[k] == pytest.approx(c.sensitivity * c.rel[k] + c.input_sensitivity * c.input_rel[k])
    # untied: token_embd has only its input role, unweighted
    untied = automix.measure_model(_make(tmp_path / "u", layers=1, hidden=256, heads=2, kv_heads=1, ffn=256, vocab=300,
                                         seed=6), "Q4_K_M").curves
    e = next(c for c in untied if c.name == "token_embd.weight")
    assert e.input_rel is None and e.sensitivity == automix.sensitivity_of("token_embd.weight", 1)


def test_error_weights_cap_a_few_dominant_columns():
    """The error sums' column weights: kept within ERROR_WEIGHT_CAP x the median, capped beyond; the
    quantizer's importance rows are not (a column holding 99.9% of the importance would otherwise make
    every other column's error invisible)."""
    w = np.ones(1536, dtype=np.float32)
    w[:4] = 4e5  # 4 columns with 99.9% of the mass, as SmolLM2-135M's ffn_down in some layers
    ew = automix.error_weights(w)
    assert ew[:4].tolist() == [automix.ERROR_WEIGHT_CAP] * 4 and (ew[4:] == 1).all()
    tame = np.linspace(0.5, 8.0, 300).astype(np.float32)  # within the cap of its median: unchanged
    assert (automix.error_weights(tame) == tame).all()
    assert automix.error_weights(None) is None
    assert (automix.error_weights(np.zeros(8, np.float32)) == 0).all()


def test_bench_permuted_copy_is_the_same_model(tmp_path):
    """scripts/bench_mix.py --realizations: the permuted copy computes the same function in
    llama.cpp (so its quantized files are other rounding draws of the same model), every 2-D weight
    moved, and the imatrix moved with its columns."""
    import sys

    pytest.importorskip("llama_cpp")
    from oracle import refpipeline
    from kquant.io.safetensors import Checkpoint

    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_mix

    src = ROOT / "fixtures" / "tiny-llama"
    with Checkpoint.open(src / "model.safetensors") as ck:
        orig = {n: np.array(ck.read(n)) for n in ck.tensors}
    names = {"output.weight": "lm_head.weight", "blk.1.ffn_down.weight": "model.layers.1.mlp.down_proj.weight",
             "blk.0.attn_output.weight": "model.layers.0.self_attn.o_proj.weight",
             "blk.0.attn_q.weight": "model.layers.0.self_attn.q_proj.weight"}
    rng = np.random.default_rng(0)
    im = ImatrixData(weights={g: rng.uniform(0.1, 2, orig[h].shape[1]).astype(np.float32) for g, h in names.items()},
                     datasets=[], chunk_count=1, path="x")
    out, pim = bench_mix.permuted_model(src, tmp_path / "perm", seed=3, im=im)
    with Checkpoint.open(out / "model.safetensors") as ck:
        perm = {n: np.array(ck.read(n)) for n in ck.tensors}
    assert perm.keys() == orig.keys()
    for n, a in orig.items():
        assert np.array_equal(np.sort(a, axis=None), np.sort(perm[n], axis=None)), n  # same values ...
        if a.ndim == 2:
            assert not np.array_equal(a, perm[n]), n  # ... elsewhere
    for g, h in names.items():  # each row's importance-weighted energy is kept: w moved with the columns
        e0 = np.sort((orig[h] ** 2 * im.weights[g]).sum(axis=1))
        e1 = np.sort((perm[h] ** 2 * pim.weights[g]).sum(axis=1))
        assert np.allclose(e0, e1, rtol=1e-5), g
    a = cv.convert(src, tmp_path / "a.gguf", "F32", cv.Options()).path
    b = cv.convert(out, tmp_path / "b.gguf", "F32", cv.Options()).path
    toks_a, la = refpipeline.eval_logits(a)
    toks_b, lb = refpipeline.eval_logits(b)
    assert toks_a == toks_b
    assert np.abs(la - lb).max() < 1e-3 * max(1.0, np.abs(la).max())


def test_bench_fit_table_recovers_known_sensitivities():
    """scripts/bench_mix.py --fit-table on rows made from known constants: the kind, first-layer and
    last-layer factors and the depth trend come back (the layer count from the fit's n_layer when its rows cover only some
    blocks), and a tied token_embd's row (both roles in one KL) stays out of token_embd's constant."""
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_mix

    kind = {"attn_q": 0.7, "attn_k": 0.8, "attn_v": 1.3, "attn_output": 1.0, "ffn_gate": 1.2, "ffn_up": 0.9,
            "ffn_down": 1.6}
    first = {k: 1.0 + i for i, k in enumerate(kind)}
    last = 2.5
    slope = 0.9  # log-sensitivity falls by this much from the first block to the last

    def rows(n_layer, layers, scale, tied_ratio):
        out = [{"name": "output.weight", "kind": "output", "sens": 60.0 * scale},
               {"name": "token_embd.weight", "kind": "token_embd_tied", "sens": tied_ratio}]
        for i in layers:
            for k, s in kind.items():
                f = first[k] if i == 0 else last if i == n_layer - 1 else 1.0
                f *= math.exp(-slope * (i / (n_layer - 1) - 0.5))
                out.append({"name": f"blk.{i}.{k}.weight", "kind": k,
                            "sens": scale * s * f * automix.REF_LAYERS / n_layer})
        return out

    fits = [{"n_layer": 6, "modes": {"no_imatrix": {"rows": rows(6, range(6), 1e-3, 5.0)}}},
            # a deeper model whose fit covers only some blocks (not its last, 29)
            {"n_layer": 30, "modes": {"no_imatrix": {"rows": rows(30, [0, 1, 2, 9, 20], 3e-2, 900.0)}}}]
    t = bench_mix.fit_table(fits)
    for k, s in kind.items():
        assert t["sensitivity"][k] == pytest.approx(s, rel=1e-6), k
        assert t["first_layer_factors"][k] == pytest.approx(first[k], rel=1e-6), k
    assert t["last_layer_factor"] == pytest.approx(last, rel=1e-6)
    assert t["depth_slope"] == pytest.approx(slope, rel=1e-6)
    assert t["sensitivity"]["output"] == pytest.approx(60.0, rel=1e-6)
    assert "token_embd" not in t["sensitivity"] and "token_embd_tied" not in t["sensitivity"]
    assert t["residual_sd"] < 1e-9
