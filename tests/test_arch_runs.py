"""tests/test_arch.py's tiny checkpoints through llama.cpp: every family's Q4_K_M file runs, and
--target-bpw on one case of each structural kind keeps to its budget and runs. A module of its own
so that pytest-xdist (scripts/test: --dist loadscope) runs it beside the rest of test_arch.py."""

from __future__ import annotations

import numpy as np
import pytest

from oracle import refpipeline
from test_arch import AUTOMIX_CASES, DIVERGES, RUN_CASES, models  # noqa: F401  (models: the shared checkpoint fixture)


@pytest.mark.parametrize("case", RUN_CASES)
def test_runs_in_llama_cpp(models, case, tmp_path):
    """Every family's file loads and runs in llama.cpp (QUANT_CASES and AUTOMIX_CASES run theirs there)."""
    pytest.importorskip("llama_cpp")
    from kquant import cli

    out = tmp_path / "q.gguf"
    assert cli.main(["convert", str(models(case, copy=False)), "-o", str(out), "--type", "Q4_K_M", "-q"]) == 0
    toks, logits = refpipeline.eval_logits(out)
    assert len(toks) > 5 and np.isfinite(logits).all()


@pytest.mark.parametrize("case", AUTOMIX_CASES)
def test_automix_on_every_architecture(models, case, tmp_path):
    """--target-bpw on each kind of architecture (MoE experts, MLA, fused QKV/gate-up, biases, tied
    outputs, Gemma norms, SSM): the written file keeps to the budget, has the chosen types, and llama.cpp runs it."""
    pytest.importorskip("llama_cpp")
    from kquant import automix, cli
    from kquant.io.gguf import GGUFFile

    src = models(case, copy=False)
    m = automix.measure_model(src, "Q4_K_M")
    recipe_bpw = sum(c.nbytes[c.index(c.recipe)] for c in m.curves) * 8 / m.n_elements
    target = round(recipe_bpw - 0.3, 2)
    out = tmp_path / "auto.gguf"
    assert cli.main(["convert", str(src), "-o", str(out), "--json", "-q", "--target-bpw", str(target)]) == 0
    with GGUFFile(out) as g:
        types = {t.name: t.qtype for t in g.tensors}
        n_el = sum(int(np.prod(t.shape)) for t in g.tensors)
        tensor_bytes = sum(t.qtype.nbytes(t.shape) for t in g.tensors)
    assert tensor_bytes * 8 / n_el <= target
    mix = automix.mix_for_budget(m, target_bpw=target)
    assert types == {c.name: c.types[k] for c, k in zip(mix.curves, mix.choice)}
    assert len(set(types.values())) > 2  # a mix, not one type
    if case == "gemma3-bpe":  # its fixture's embedding has fewer rows than its vocabulary: llama.cpp refuses any file of it
        return
    _, logits = refpipeline.eval_logits(out)
    assert np.isfinite(logits).all()


@pytest.mark.parametrize("case,writer", sorted(DIVERGES))
def test_diverging_cases_run(models, case, writer, tmp_path):
    """Where kquant differs from the converter (test_arch.DIVERGES), llama.cpp runs kquant's file."""
    pytest.importorskip("llama_cpp")
    from kquant import cli

    out = tmp_path / "q.gguf"
    assert cli.main(["convert", str(models(case, copy=False, writer=writer)), "-o", str(out), "--type", "Q8_0", "-q"]) == 0
    toks, logits = refpipeline.eval_logits(out)
    assert len(toks) > 5 and np.isfinite(logits).all()
