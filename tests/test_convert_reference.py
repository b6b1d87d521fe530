"""kquant convert against llama.cpp's own pipeline (convert_hf_to_gguf.py --outtype bf16 + llama-quantize).

Whole files are compared byte for byte (metadata, tensor order, types and data), for every file
type, from one read of the checkpoint (convert_many); llama.cpp then loads and evaluates them.
Needs the reference converter (scripts/setup_refconv.sh, run by scripts/test).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kquant import pipeline
from oracle import refpipeline

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "fixtures" / "tiny-llama"

pytestmark = pytest.mark.skipif(not refpipeline.available(), reason="reference converter not set up (scripts/setup_refconv.sh)")

FTYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L",
          "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "Q1_0", "Q2_0",
          "IQ3_S", "IQ3_M", "MXFP4_MOE"]  # MXFP4_MOE of a dense model: every matrix Q8_0


def make_model(out: Path, **kw) -> Path:
    sys.path.insert(0, str(ROOT / "scripts"))
    from make_tiny_model import make

    return make(out, **kw)


@pytest.fixture(scope="module")
def ref_bf16(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    return refpipeline.convert_hf_bf16(TINY, d / "bf16.gguf")


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    d = tmp_path_factory.mktemp("ours")
    targets = [(d / f"{ft}.gguf", ft) for ft in FTYPES]
    pipeline.convert_many(TINY, targets)
    return {ft: p for p, ft in targets}


@pytest.mark.parametrize("ftype", FTYPES)
def test_file_identical_to_llama_cpp(ftype, ref_bf16, ours, tmp_path):
    ref = refpipeline.llama_quantize(ref_bf16, tmp_path / "ref.gguf", ftype)
    refpipeline.assert_identical(ours[ftype], ref, ftype)


def test_llama_cpp_runs_the_output(ours, ref_bf16):
    toks, q = refpipeline.eval_logits(ours["Q4_K_M"])
    _, full = refpipeline.eval_logits(ref_bf16)
    assert len(toks) > 5 and np.isfinite(q).all()
    # quantized logits follow the unquantized model's
    c = np.corrcoef(q.ravel(), full.ravel())[0, 1]
    assert c > 0.9, c


SHAPES = {
    "fallbacks-gqa": dict(layers=3, hidden=320, heads=5, kv_heads=1, ffn=640, vocab=600, seed=5),  # rows not multiples of 256
    "tied-mha": dict(layers=2, hidden=256, heads=4, kv_heads=4, ffn=512, vocab=512, seed=6, tied=True),
}
SHAPE_FTYPES = ["Q4_K_M", "Q3_K_M", "Q5_K_S", "Q2_K", "Q6_K", "IQ4_XS", "TQ1_0", "Q2_0"]


@pytest.fixture(scope="module", params=list(SHAPES))
def shaped(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    model = make_model(d / "m", **SHAPES[request.param])
    bf16 = refpipeline.convert_hf_bf16(model, d / "bf16.gguf")
    outs = [(d / f"{ft}.gguf", ft) for ft in SHAPE_FTYPES]
    pipeline.convert_many(model, outs)
    return bf16, {ft: p for p, ft in outs}


@pytest.mark.parametrize("ftype", SHAPE_FTYPES)
def test_other_shapes(shaped, ftype, tmp_path):
    bf16, ours_ = shaped
    ref = refpipeline.llama_quantize(bf16, tmp_path / "ref.gguf", ftype)
    assert refpipeline.compare_gguf(ours_[ftype], ref, ignore_keys=()) == []


def test_cli_dry_run_matches_written_file(tmp_path):
    import json

    r = subprocess.run([sys.executable, "-m", "kquant.cli", "convert", str(TINY), "--type", "Q4_K_M", "--dry-run", "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    out = tmp_path / "o.gguf"
    pipeline.convert(TINY, out, "Q4_K_M")
    from kquant.io.gguf import GGUFFile

    with GGUFFile(out) as g:
        assert [(t["name"], t["type"]) for t in plan["tensors"]] == [(t.name, t.qtype.ggml_name) for t in g.tensors]
        assert plan["total_bytes"] == sum(t.nbytes for t in g.tensors)
    assert not list(tmp_path.glob(".*kquant-tmp*"))


@pytest.mark.parametrize("ftype", ["Q4_K_M", "Q8_0", "Q3_K_S", "F16"])
def test_requantize_bf16_gguf_like_llama_quantize(ftype, ref_bf16, tmp_path):
    """A BF16 GGUF as input: the same file llama-quantize writes from it."""
    ref = refpipeline.llama_quantize(ref_bf16, tmp_path / "ref.gguf", ftype)
    out = tmp_path / "ours.gguf"
    pipeline.convert(ref_bf16, out, ftype)
    assert refpipeline.compare_gguf(out, ref, ignore_keys=()) == []


def test_quantized_gguf_input_refused(ours, tmp_path):
    r = subprocess.run([sys.executable, "-m", "kquant.cli", "convert", str(ours["Q4_K_M"]), "-o", str(tmp_path / "x.gguf")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "only GGUF files of F32, F16, BF16" in r.stderr
    assert not (tmp_path / "x.gguf").exists()
