"""The tiny checkpoints of tests/test_arch.py against llama.cpp's own pipeline: kquant's metadata and
tensors equal convert_hf_to_gguf.py --outtype bf16 (config.json as transformers 4.x and 5.x write it),
and kquant convert equals it + llama_model_quantize byte for byte for QUANT_CASES. A module of its own
so that pytest-xdist (scripts/test: --dist loadscope) runs it beside the rest of test_arch.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from oracle import refpipeline
from kquant.types import QType
from test_arch import (  # noqa: F401  (models: the shared checkpoint fixture)
    CASES, DIVERGES, QUANT_CASES, QUANT_EXTRA_FTYPES, QUANT_FTYPES, REFCONV_PYTHON, REQUANTIZED_CASES, WRITERS,
    _reference_convert, all_sources, compare_with_reference, models, write_safetensors,
)


_REF: dict[tuple[str, str], tuple[Path, object, Path]] = {}  # (case, writer) -> (checkpoint, process, bf16 GGUF)


def reference_bf16(request, models, tmp_path_factory) -> dict:
    """convert_hf_to_gguf.py --outtype bf16 of every (case, writer) checkpoint this session's
    reference tests need (the `models` fixture's cached folders), each converted once, all in one
    batch: {(case, writer): (checkpoint, process, GGUF)}."""
    items = [i for i in request.session.items if hasattr(i, "callspec")]
    keys = {(i.callspec.params["case"], i.callspec.params["writer"]) for i in items
            if getattr(i, "originalname", "") == "test_matches_convert_hf_to_gguf"}
    keys |= {(i.callspec.params["case"], "t4") for i in items if getattr(i, "originalname", "") == "test_quantized_like_llama_cpp"}
    if any(getattr(i, "originalname", "") == "test_mxfp4_gguf_input_like_llama_quantize" for i in request.session.items):
        keys.add(("gpt-oss-mxfp4", "t4"))
    todo = sorted(k for k in keys if k not in _REF)
    if todo:
        root = tmp_path_factory.mktemp("refconv")
        folders = {k: models(k[0], copy=False, writer=k[1]) for k in todo}
        outs = {k: root / f"{k[0]}-{k[1]}.gguf" for k in todo}
        for k, proc in zip(todo, _reference_convert([(folders[k], outs[k]) for k in todo])):
            _REF[k] = (folders[k], proc, outs[k])
    return _REF


@pytest.fixture(scope="module")
def reference_outputs(request, models, tmp_path_factory):
    if not REFCONV_PYTHON:
        pytest.skip("set KQUANT_REFCONV_PYTHON to the reference venv's python (scripts/setup_refconv.sh)")
    ref = reference_bf16(request, models, tmp_path_factory)
    return {k: d for k, (d, _, _) in ref.items()}, {k: (p, o) for k, (_, p, o) in ref.items()}


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_convert_hf_to_gguf(reference_outputs, case, writer):
    """Each fixture with config.json as transformers 4.x and 5.x write it (rope_parameters, dtype, ...)."""
    folders, results = reference_outputs
    proc, out = results[case, writer]
    assert proc.returncode == 0, proc.stderr[-3000:]
    compare_with_reference(folders[case, writer], out, DIVERGES.get((case, writer)))


@pytest.mark.parametrize("key", sorted(DIVERGES))
def test_diverging_reference_files_do_not_load(reference_outputs, key):
    """Where kquant differs from the converter (DIVERGES), the converter's file is one llama.cpp refuses
    (checked in a child process), and kquant's runs (test_arch_runs.test_diverging_cases_run)."""
    import subprocess
    import sys

    pytest.importorskip("llama_cpp")
    folders, results = reference_outputs
    if key not in results:
        pytest.skip(f"{key} not converted in this session")
    proc, out = results[key]
    assert proc.returncode == 0, proc.stderr[-3000:]
    code = "import sys; from oracle import refpipeline; refpipeline.eval_logits(sys.argv[1])"
    r = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=300,
                       cwd=Path(__file__).parent)
    assert r.returncode != 0 and "Traceback" in r.stderr, r.stderr[-2000:]


@pytest.fixture(scope="module")
def quant_reference(request, models, tmp_path_factory):
    """{case: (checkpoint, reference bf16 GGUF)} for the QUANT_CASES this session runs."""
    if not REFCONV_PYTHON:
        pytest.skip("set KQUANT_REFCONV_PYTHON to the reference venv's python (scripts/setup_refconv.sh)")
    ref = reference_bf16(request, models, tmp_path_factory)
    return {case: ref[case, w] for case, w in ref if w == "t4"}


@pytest.mark.parametrize("case", QUANT_CASES)
def test_quantized_like_llama_cpp(quant_reference, case, tmp_path, capsys):
    """kquant convert == convert_hf_to_gguf.py --outtype bf16 + llama_model_quantize, byte for byte,
    for Q4_K_M, Q8_0, Q5_K_S and the case's QUANT_EXTRA_FTYPES; convert --dry-run --json plans each file
    as written (from config.json and the headers only); llama.cpp loads and runs the Q4_K_M file."""
    pytest.importorskip("llama_cpp")
    from kquant import cli, pipeline
    from kquant.io.gguf import GGUFFile

    d, proc, ref_bf16 = quant_reference[case]
    assert proc.returncode == 0, proc.stderr[-3000:]
    targets = [(tmp_path / f"{ft}.gguf", ft) for ft in QUANT_FTYPES + QUANT_EXTRA_FTYPES.get(case, ())]
    pipeline.convert_many(d, targets)
    params = {"allow_requantize": True} if case in REQUANTIZED_CASES else {}
    for out, ft in targets:
        ref = refpipeline.llama_quantize(ref_bf16, tmp_path / f"ref-{ft}.gguf", ft, **params)
        refpipeline.assert_identical(out, ref, ft)
        assert cli.main(["convert", str(d), "--type", ft, "--dry-run", "--json"]) == 0
        plan = json.loads(capsys.readouterr().out)
        with GGUFFile(out) as g:
            assert [(t["name"], t["type"]) for t in plan["tensors"]] == [(t.name, t.qtype.ggml_name) for t in g.tensors], ft
            assert plan["total_bytes"] == sum(t.nbytes for t in g.tensors), ft
    toks, logits = refpipeline.eval_logits(targets[0][0])
    assert len(toks) > 5 and np.isfinite(logits).all()


def test_mxfp4_gguf_input_like_llama_quantize(quant_reference, tmp_path, capsys):
    """The converter's MXFP4_MOE file (MXFP4 experts, the rest BF16 / F32) as kquant's input:
    == llama_model_quantize --allow-requantize on it, MXFP4 copied unchanged for MXFP4_MOE;
    inspect / --dry-run --json name the MXFP4 source tensors; validate and dequantize read it."""
    pytest.importorskip("llama_cpp")
    from kquant import cli
    from kquant.io.gguf import GGUFFile

    _, proc, src = quant_reference["gpt-oss-mxfp4"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    with GGUFFile(src) as g:
        raw = {t.name: bytes(g.data(t.name)) for t in g.tensors if t.qtype == QType.MXFP4}
    assert raw
    for ft in ("MXFP4_MOE", "Q4_K_M", "Q8_0"):
        ours, ref = tmp_path / f"{ft}.gguf", tmp_path / f"ref-{ft}.gguf"
        assert cli.main(["convert", str(src), "-o", str(ours), "--type", ft, "-q"]) == 0
        refpipeline.llama_quantize(src, ref, ft, allow_requantize=True)
        refpipeline.assert_identical(ours, ref, ft)
        if ft == "MXFP4_MOE":
            with GGUFFile(ours) as g:
                assert all(bytes(g.data(n)) == b for n, b in raw.items())
    capsys.readouterr()
    assert cli.main(["convert", str(src), "--type", "Q4_K_M", "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    st = {t["name"]: t["source_type"] for t in plan["tensors"]}
    assert {n for n, v in st.items() if v == "MXFP4"} == set(raw)
    assert cli.main(["validate", str(tmp_path / "Q4_K_M.gguf"), "--source", str(src), "--json", "-q"]) == 0
    capsys.readouterr()
    deq = tmp_path / "deq.safetensors"
    assert cli.main(["dequantize", str(src), "-o", str(deq), "-q"]) == 0
    assert deq.exists()


def test_grok_layers_experts_in_layer_order_untied_by_default(models, tmp_path):
    """GrokModel.modify_tensors stacks a layer's experts only when the next non-expert tensor arrives, and then
    every complete layer in layer order: with layer 1's experts in the first shard and layer 0's in the second,
    the file has layer 0's stacks first. And a Grok config.json (read as it is) without tie_word_embeddings and a
    checkpoint without lm_head converts, as the converter converts it (no output tensor)."""
    if not REFCONV_PYTHON:
        pytest.skip("set KQUANT_REFCONV_PYTHON to the reference venv's python (scripts/setup_refconv.sh)")
    d = models("grok")
    cfg = json.loads((d / "config.json").read_text())
    del cfg["tie_word_embeddings"]
    (d / "config.json").write_text(json.dumps(cfg))
    src = all_sources(d)
    (d / "model.safetensors").unlink()
    experts = [{n for n in src if n.startswith(f"transformer.decoder_layer.{b}.moe.")} for b in (0, 1)]
    parts = {"model-00001-of-00003.safetensors": sorted(experts[1]), "model-00002-of-00003.safetensors": sorted(experts[0]),
             "model-00003-of-00003.safetensors": sorted(set(src) - experts[0] - experts[1])}
    for fn, names in parts.items():
        write_safetensors(d / fn, {n: (src[n], "BF16") for n in names})
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {n: fn for fn, names in parts.items() for n in names}}))
    out = tmp_path / "ref.gguf"
    (proc,) = _reference_convert([(d, out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    compare_with_reference(d, out)


def test_qwen3_headless_with_model_prefix(models, tmp_path):
    """A Qwen3Model checkpoint whose names carry "model." (the converter maps them as they are; only Qwen2Model
    has its names prefixed) converts as the converter converts it."""
    if not REFCONV_PYTHON:
        pytest.skip("set KQUANT_REFCONV_PYTHON to the reference venv's python (scripts/setup_refconv.sh)")
    d = models("qwen3-headless")
    src = all_sources(d)
    assert not any(n.startswith("model.") for n in src)
    (d / "model.safetensors").unlink()
    write_safetensors(d / "model.safetensors", {"model." + n: (v, "BF16") for n, v in src.items()})
    out = tmp_path / "ref.gguf"
    (proc,) = _reference_convert([(d, out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    compare_with_reference(d, out)


def test_arctic_without_kv_heads(models, tmp_path):
    """Arctic's config is read as it is: without num_key_value_heads the converter permutes k with
    num_attention_heads and writes no head_count_kv (llama.cpp then uses head_count); kquant the same."""
    if not REFCONV_PYTHON:
        pytest.skip("set KQUANT_REFCONV_PYTHON to the reference venv's python (scripts/setup_refconv.sh)")
    d = models("arctic")
    cfg = json.loads((d / "config.json").read_text())
    n_head, n_kv = cfg["num_attention_heads"], cfg.pop("num_key_value_heads")
    assert n_head % n_kv == 0 and n_kv < n_head
    (d / "config.json").write_text(json.dumps(cfg))
    src = all_sources(d)
    # every layer's k_proj / v_proj widened to num_attention_heads heads (MHA), as such a checkpoint has them
    (d / "model.safetensors").unlink()
    write_safetensors(d / "model.safetensors", {n: (np.concatenate([v] * (n_head // n_kv)) if n.endswith("k_proj.weight")
                                                    or n.endswith("v_proj.weight") else v, "BF16") for n, v in src.items()})
    out = tmp_path / "ref.gguf"
    (proc,) = _reference_convert([(d, out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    compare_with_reference(d, out)
