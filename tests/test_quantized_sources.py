"""Quantized source checkpoints (kquant.io.quantized): FP8, compressed-tensors and GPTQ, read as
llama.cpp's converter reads them (conversion/base.py ModelBase.dequant_model).

Fast tests: the FP8 tables, row slabs equal to whole reads at every boundary, the tensors each
format hides and shows, inspect / --dry-run --json reporting, and every malformed case refused
in one line with nothing written. Reference tests (skipped without scripts/setup_refconv.sh):
each format through convert_hf_to_gguf.py --outtype bf16 (+ --fp8-as-q8) and llama_model_quantize,
byte-identical to kquant's file; what the converter refuses, kquant refuses.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from kquant import cli, pipeline
from kquant.errors import InputError, UnsupportedError
from kquant.io import quantized
from kquant.io.safetensors import Checkpoint, SafetensorsFile, write_safetensors
from oracle import refpipeline
from quant_sources import KINDS, build

_CACHE: dict[str, Path] = {}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("qsrc")

    def get(kind: str) -> Path:
        """`kind` of quant_sources.KINDS made from the tiny Llama, or "moe-<kind>" from test_arch's
        Qwen3-MoE fixture (experts merged into 3-D tensors, 48-wide FFN rows)."""
        if kind not in _CACHE or not _CACHE[kind].exists():
            src = None
            if kind.startswith("moe-"):
                from test_arch import make_model

                src = make_model(root / "moe-src", "qwen3moe") if not (root / "moe-src").exists() \
                    else next((root / "moe-src").iterdir())
            _CACHE[kind] = build(kind.removeprefix("moe-"), root / kind, **({"src": src} if src else {}))
        return _CACHE[kind]

    return get


def _rewrite(folder: Path, edit_tensors=None, edit_qc=None) -> Path:
    """Apply edits to a built folder's tensors ({name: (array, dtype)}) and/or quantization_config."""
    if edit_tensors is not None:
        with SafetensorsFile(folder / "model.safetensors") as f:
            t = {n: (np.array(f.read_raw(n)).view(quantized.STORAGE[i.dtype]).reshape(i.shape), i.dtype)
                 for n, i in f.tensors.items()}
        edit_tensors(t)
        write_safetensors(folder / "model.safetensors", {n: a for n, (a, _) in t.items()},
                          dtype={n: d for n, (_, d) in t.items()})
    if edit_qc is not None:
        cfg = json.loads((folder / "config.json").read_text())
        edit_qc(cfg)
        (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def _copy(built, kind: str, tmp_path: Path) -> Path:
    import shutil

    dst = tmp_path / kind
    shutil.copytree(built(kind), dst)
    return dst


# ---------------------------------------------------------------------------------------------- tables


def test_fp8_tables_known_values():
    e4 = quantized.FP8_TO_F32["F8_E4M3"]
    assert e4[0x7E] == 448 and e4[0xFE] == -448 and e4[0x01] == 2.0**-9 and e4[0x08] == 2.0**-6
    assert e4[0x38] == 1.0 and np.isnan(e4[0x7F]) and np.isnan(e4[0xFF]) and np.isfinite(e4[:0x7F]).all()
    assert np.signbit(e4[0x80]) and e4[0x80] == 0
    e5 = quantized.FP8_TO_F32["F8_E5M2"]
    assert e5[0x3C] == 1.0 and e5[0x7B] == 57344 and e5[0x7C] == np.inf and e5[0xFC] == -np.inf
    assert np.isnan(e5[0x7D]) and e5[0x01] == 2.0**-16


@pytest.mark.skipif(not refpipeline.refconv_python(), reason="reference venv not set up (scripts/setup_refconv.sh)")
def test_fp8_tables_equal_torch():
    """All 256 codes of each format against torch's .float() (the converter's own decoding)."""
    code = ("import torch,sys; a=torch.arange(256,dtype=torch.uint8); "
            "sys.stdout.buffer.write(a.view(torch.float8_e4m3fn).float().numpy().tobytes()"
            "+a.view(torch.float8_e5m2).float().numpy().tobytes())")
    raw = subprocess.run([refpipeline.refconv_python(), "-c", code], capture_output=True, check=True, timeout=300).stdout
    ref = np.frombuffer(raw, np.float32).reshape(2, 256)
    for r, name in zip(ref, ("F8_E4M3", "F8_E5M2")):
        ours = quantized.FP8_TO_F32[name]
        assert np.array_equal(np.isnan(r), np.isnan(ours))
        fin = ~np.isnan(r)
        assert np.array_equal(r[fin].view(np.uint32), ours[fin].view(np.uint32)), name


# ---------------------------------------------------------------------------------------------- reading


@pytest.mark.parametrize("kind", KINDS)
def test_row_slabs_equal_whole_reads(built, kind, monkeypatch):
    """read_rows over any range (inside and across blocks, groups and packed words, in chunks
    smaller than a block) equals the matching rows of one whole read."""
    folder = built(kind)
    monkeypatch.setattr(quantized, "BAND_BYTES", 64 * 4 * 3)  # GPTQ: bands of a few columns, refreshed often
    with pipeline.open_model(folder) as src:
        assert isinstance(src, quantized.QuantizedSource)
        deq = sorted(src.consumed)
        assert deq and all(src.tensors[n].dtype == "F32" for n in deq)
        whole = {n: src.read(n) for n in deq}
        monkeypatch.setattr(quantized, "CHUNK_ELEMS", 7 * 256)  # chunks of a few rows, not block-aligned
        rng = np.random.default_rng(1)
        for n in deq:
            rows = whole[n].shape[0]
            assert np.isfinite(whole[n]).all() and np.abs(whole[n]).max() > 0
            for a, b in [(0, rows), (0, 1), (rows - 1, rows), *[tuple(sorted(rng.integers(0, rows + 1, 2))) for _ in range(3)]]:
                assert np.array_equal(src.read_rows(n, int(a), int(b)), whole[n][a:b]), (n, a, b)


@pytest.mark.parametrize("kind", ["fp8-block", "ct-pack4-asym", "gptq4act"])
def test_values_close_to_the_float_model(built, kind):
    """Dequantized weights approximate the float model they were quantized from (sanity; the
    exact values are checked against the converter below)."""
    from quant_sources import float_tensors

    base = float_tensors()
    with pipeline.open_model(built(kind)) as src:
        for n in src.consumed:
            w = base[n]
            err = np.abs(src.read(n) - w).max() / np.abs(w).max()
            assert err < (0.2 if "2" in kind else 0.1), (n, err)


@pytest.mark.parametrize("kind", ["fp8", "gptq"])
def test_slabs_bound_memory(tmp_path, kind):
    """A 2048x7168 quantized tensor read in row slabs: no temporary near the whole tensor's float32
    size (58.7 MB); what a slab read allocates is its output plus chunk-sized temporaries."""
    import tracemalloc

    rows, cols = 2048, 7168
    rng = np.random.default_rng(0)
    if kind == "fp8":
        t = {"w.weight": rng.integers(0, 0x7E, (rows, cols), dtype=np.uint8),
             "w.weight_scale_inv": rng.random((rows // 128, cols // 128), dtype=np.float32)}
        dt = {"w.weight": "F8_E4M3", "w.weight_scale_inv": "F32"}
        qc = {"quant_method": "fp8", "weight_block_size": [128, 128]}
    else:
        t = {"w.qweight": rng.integers(-2**31, 2**31, (cols // 8, rows), dtype=np.int64).astype(np.int32),
             "w.qzeros": rng.integers(-2**31, 2**31, (cols // 128, rows // 8), dtype=np.int64).astype(np.int32),
             "w.scales": rng.random((cols // 128, rows), dtype=np.float32).astype(np.float16),
             "w.g_idx": (np.arange(cols) // 128).astype(np.int32)}
        dt = {"w.qweight": "I32", "w.qzeros": "I32", "w.scales": "F16", "w.g_idx": "I32"}
        qc = {"quant_method": "gptq", "bits": 4}
    write_safetensors(tmp_path / "model.safetensors", t, dtype=dt)
    with quantized.wrap(Checkpoint.open(tmp_path / "model.safetensors"), {"quantization_config": qc}, "x") as src:
        assert src.tensors["w.weight"].shape == (rows, cols)
        step = 256
        slab = step * cols * 4
        tracemalloc.start()
        try:
            for a in range(0, rows, step):
                tracemalloc.reset_peak()
                x = src.read_rows("w.weight", a, a + step)
                _, peak = tracemalloc.get_traced_memory()
                assert x.shape == (step, cols) and peak < slab + 6 * 4 * quantized.CHUNK_ELEMS, peak
                del x
        finally:
            tracemalloc.stop()


def test_hidden_and_shown_tensors(built):
    with pipeline.open_model(built("fp8-block")) as src:
        names = list(src.tensors)
        assert not any(n.endswith("_scale_inv") for n in names)
        assert names == [n for n in src.ckpt.tensors if not n.endswith("_scale_inv")]  # replaced in place
        assert src.fp8_dequantized == set(src.consumed)
    with pipeline.open_model(built("fp8-qscale")) as src:
        assert not any("scale" in n for n in src.tensors)
        assert len(src.dropped) == 28 and all(n.endswith(("qscale_act", ".activation_scale")) for n in src.dropped)
    with pipeline.open_model(built("gptq4")) as src:
        names = list(src.tensors)
        assert not any(n.endswith((".qweight", ".qzeros", ".scales", ".g_idx")) for n in names)
        k = len(src.consumed)
        assert sorted(names[-k:]) == sorted(src.consumed)  # appended at the end, as new_tensors
        assert not src.fp8_dequantized
    with pipeline.open_model(built("ct-int8-channel")) as src:
        assert not src.fp8_dequantized  # int8 is not FP8 for --fp8-as-q8
    with pipeline.open_model(built("ct-fp8-channel")) as src:
        assert src.fp8_dequantized == set(src.consumed)


def test_unquantized_checkpoint_is_not_wrapped():
    from quant_sources import TINY

    with pipeline.open_model(TINY) as src:
        assert isinstance(src, Checkpoint)


# ---------------------------------------------------------------------------------------------- reporting


def test_dry_run_json_source_type(built, capsys):
    assert cli.main(["convert", str(built("fp8-block-partial")), "--dry-run", "--json", "--type", "Q8_0"]) == 0
    d = json.loads(capsys.readouterr().out)
    st = {t["name"]: t["source_type"] for t in d["tensors"]}
    assert st["blk.0.attn_q.weight"] == "fp8 F8_E4M3 block 96x80"
    assert st["token_embd.weight"] == "BF16" and st["blk.0.attn_norm.weight"] == "BF16"
    assert all({"name", "shape", "type", "bytes"} <= set(t) for t in d["tensors"])
    assert cli.main(["convert", str(built("gptq8")), "--dry-run", "--json", "--fp8-as-q8"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert {t["source_type"] for t in d["tensors"]} == {"BF16", "gptq int8 4 groups", "gptq int8 12 groups"}


def test_inspect_reports_source_format(built, capsys):
    assert cli.main(["inspect", str(built("ct-pack4-asym")), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    sf = d["source_format"]
    assert sf["status"] == "dequantized" and sf["name"] == "compressed-tensors pack-quantized" and sf["n_dequantized"] == 14
    act = {t["name"]: t["action"] for t in d["tensors"]}
    assert act["model.layers.0.self_attn.q_proj.weight_packed"].startswith("dequantized -> model.layers.0.self_attn.q_proj.weight")
    assert act["model.layers.0.self_attn.q_proj.weight_zero_point"] == "consumed by model.layers.0.self_attn.q_proj.weight"
    assert act["model.embed_tokens.weight"] == "passed through"
    assert cli.main(["inspect", str(built("fp8-block"))]) == 0
    out = capsys.readouterr().out
    assert "source format: fp8: 14 tensors dequantized" in out and "consumed by model.layers.1.mlp.up_proj.weight" in out


def test_inspect_reports_refusal(built, tmp_path, capsys):
    d = _rewrite(_copy(built, "gptq4", tmp_path), edit_qc=lambda c: c["quantization_config"].update(bits=3))
    assert cli.main(["inspect", str(d), "--json"]) == 0
    sf = json.loads(capsys.readouterr().out)["source_format"]
    assert sf["status"] == "refused" and "3-bit gptq" in sf["error"]


def test_inspect_fp8_without_quantization_config(built, tmp_path, capsys):
    d = _rewrite(_copy(built, "fp8-block", tmp_path), edit_qc=lambda c: c.pop("quantization_config"))
    assert cli.main(["inspect", str(d), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["source_format"]["status"] == "refused"
    act = {t["name"]: t["action"] for t in out["tensors"]}
    assert act["model.layers.0.mlp.up_proj.weight"].startswith("refused (F8_E4M3")
    assert act["model.layers.0.mlp.up_proj.weight_scale_inv"] == "passed through"
    rc = cli.main(["convert", str(d), "-o", str(tmp_path / "x.gguf"), "-q"])
    assert rc != 0 and "F8_E4M3" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- malformed


def _drop(name):
    return lambda t: t.pop(name)


def _reshape(name, shape):
    def f(t):
        a, d = t[name]
        t[name] = (np.resize(a, shape), d)
    return f


L0 = "model.layers.0."
MALFORMED = {
    "fp8 scale missing": ("fp8-block", _drop(L0 + "self_attn.q_proj.weight_scale_inv"), None,
                          InputError, "is F8_E4M3 but has no scale tensor"),
    "fp8 weight missing": ("fp8-block", _drop(L0 + "self_attn.q_proj.weight"), None,
                           InputError, "weight of scale .* is missing"),
    "fp8 block scale shape": ("fp8-block", _reshape(L0 + "mlp.up_proj.weight_scale_inv", (6, 3)), None,
                              InputError, r"has shape \[6, 3\], which does not fit .* \(expected \[6, 2\]\)"),
    "fp8 partial block counted wrong": ("fp8-block-partial", _reshape(L0 + "mlp.up_proj.weight_scale_inv", (8, 3)), None,
                                        InputError, r"expected \[8, 4\]"),
    "fp8 channel scale length": ("fp8-channel1d", _reshape(L0 + "self_attn.k_proj.weight_scale_inv", (256,)), None,
                                 InputError, "does not fit weight"),
    "fp8 block size not a list": ("fp8-block", None, lambda c: c["quantization_config"].update(weight_block_size=128),
                                  InputError, "block size 128 is not a list"),
    "fp8 scale dtype": ("fp8-block", lambda t: t.update({L0 + "mlp.up_proj.weight_scale_inv": (np.zeros((6, 2), np.int32), "I32")}),
                        None, UnsupportedError, "has dtype I32"),
    "unknown quant_method": ("fp8-block", None, lambda c: c["quantization_config"].update(quant_method="awq"),
                             UnsupportedError, "quant method 'awq' is not supported"),
    "quantization_config not an object": ("fp8-block", None, lambda c: c.update(quantization_config=[1]),
                                          InputError, "'quantization_config' is list"),
    "mxfp4 not gpt-oss": ("fp8-block", None, lambda c: c["quantization_config"].update(quant_method="mxfp4"),
                          UnsupportedError, "MXFP4 checkpoints are supported for GptOssForCausalLM only, not 'LlamaForCausalLM'"),
    "gptq 3-bit": ("gptq4", None, lambda c: c["quantization_config"].update(bits=3),
                   UnsupportedError, "3-bit gptq dequantization is not yet implemented"),
    "gptq 5-bit": ("gptq4", None, lambda c: c["quantization_config"].update(bits=5), InputError, "'bits' is 5"),
    "gptq g_idx range": ("gptq4", lambda t: t.update({L0 + "mlp.up_proj.g_idx": (np.full(256, 9, np.int32), "I32")}), None,
                         InputError, r"group indices outside \[0, 4\)"),
    "gptq qzeros missing": ("gptq4", _drop(L0 + "mlp.up_proj.qzeros"), None, InputError, "qzeros' is missing"),
    "gptq scales shape": ("gptq4", _reshape(L0 + "mlp.up_proj.scales", (4, 700)), None, InputError, "GPTQ shapes"),
    "ct several groups": ("ct-fp8-channel", None,
                          lambda c: c["quantization_config"]["config_groups"].update(group_1=c["quantization_config"]["config_groups"]["group_0"]),
                          UnsupportedError, "several config groups"),
    "ct tensor strategy": ("ct-fp8-channel", None,
                           lambda c: c["quantization_config"]["config_groups"]["group_0"]["weights"].update(strategy="tensor"),
                           UnsupportedError, "strategy 'tensor' is not supported"),
    "ct nvfp4": ("ct-fp8-channel", None, lambda c: c["quantization_config"].update(format="nvfp4-pack-quantized"),
                 UnsupportedError, "NVFP4"),
    "ct unknown format": ("ct-fp8-channel", None, lambda c: c["quantization_config"].update(format="marlin-24"),
                          UnsupportedError, "quant format 'marlin-24'"),
    "ct pack group does not divide": ("ct-pack4", None,
                                      lambda c: c["quantization_config"]["config_groups"]["group_0"]["weights"].update(group_size=512),
                                      InputError, "group size 512 does not divide the 768 columns"),
    "ct pack scale shape": ("ct-pack4", _reshape(L0 + "mlp.down_proj.weight_scale", (256, 23)), None,
                            InputError, r"expected \[256, 24\]"),
    "ct pack shape tensor": ("ct-pack4", lambda t: t.update({L0 + "mlp.down_proj.weight_shape": (np.array([256, 9984]), "I64")}),
                             None, InputError, "does not hold"),
    "ct pack scale missing": ("ct-pack4", _drop(L0 + "mlp.down_proj.weight_scale"), None, InputError, "weight_scale' is missing"),
    "bitnet scale not one value": ("bitnet-packed", _reshape(L0 + "mlp.up_proj.weight_scale", (2,)), None,
                                   InputError, r"BitNet scale .* has shape \[2\], expected one value"),
    "bitnet weight not U8": ("bitnet-packed", lambda t: t.update({L0 + "mlp.up_proj.weight": (np.zeros((192, 256), np.int8), "I8")}),
                             None, InputError, "has dtype I8, expected U8"),
    "bitnet weight missing": ("bitnet-packed", _drop(L0 + "mlp.up_proj.weight"), None, InputError, "weight of scale .* is missing"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_refused(built, tmp_path, case, capsys):
    kind, et, eq, err, match = MALFORMED[case]
    d = _rewrite(_copy(built, kind, tmp_path), et, eq)
    with pytest.raises(err, match=match):
        with pipeline.open_model(d):
            pass
    out = tmp_path / "out.gguf"
    rc = cli.main(["convert", str(d), "-o", str(out), "--type", "Q8_0", "-q"])
    msg = capsys.readouterr().err.strip()
    assert rc != 0 and len(msg.splitlines()) == 1 and "Traceback" not in msg, msg
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == [kind]


def test_fp8_as_q8_needs_q8_0(built, tmp_path, capsys):
    """With --fp8-as-q8 the FP8 tensors are Q8_0 in the intermediate: llama-quantize copies them for
    Q8_0 and refuses to requantize them for anything else without --allow-requantize; so does kquant."""
    out = tmp_path / "x.gguf"
    rc = cli.main(["convert", str(built("fp8-block")), "-o", str(out), "--type", "Q4_K_M", "--fp8-as-q8", "-q"])
    assert rc != 0 and "requantizing from type q8_0 is disabled" in capsys.readouterr().err and not out.exists()
    rc = cli.main(["convert", str(built("fp8-block")), "-o", str(out), "--target-bpw", "5", "--fp8-as-q8", "-q"])
    assert rc != 0 and "cannot be combined with --target-bpw" in capsys.readouterr().err and not out.exists()
    # the library's own type_map (what automix passes) cannot requantize them either
    from kquant import pipeline
    from kquant.ggml.types import QType

    folder = built("fp8-block")
    spec = pipeline.build_spec(pipeline.open_model(folder), folder, vocab=False, fp8_as_q8=True)
    q8 = next(t.name for t in spec.tensors if t.ref_type == QType.Q8_0)
    opts = pipeline.Options(fp8_as_q8=True, type_map={q8: QType.Q4_K})
    with pytest.raises(UnsupportedError, match=f"tensor {q8}: requantizing from type q8_0 is disabled"):
        pipeline.convert(folder, out, "Q8_0", opts)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- reference

REF_KINDS = ("fp8-block", "fp8-block-partial", "fp8-channel1d", "fp8-tensor", "fp8-qscale", "fp8-e5m2", "moe-fp8-block-partial", "ct-fp8-block", "ct-int8-channel",
             "ct-pack4-asym", "ct-pack8", "gptq4act", "gptq2", "gptq8", "gptq4v2", "bitnet-packed")
# the converter's default lazy mode fails on packed BitNet (dequant_bitnet shifts meta tensors by an
# eager CPU tensor: "Tensor on device cpu is not on the expected device meta"); --no-lazy converts it
REF_EXTRA = {"bitnet-packed": ("--no-lazy",)}
Q8_KINDS = ("fp8-block", "ct-fp8-channel", "moe-fp8-channel")  # --fp8-as-q8 (MoE: 48-wide rows fall back to F16)
REFUSED = {  # what convert_hf_to_gguf.py refuses, and kquant's message for it
    "gptq 3-bit": ("gptq4", lambda c: c["quantization_config"].update(bits=3), "3-bit gptq"),
    "ct several groups": ("ct-fp8-channel",
                          lambda c: c["quantization_config"]["config_groups"].update(group_1=c["quantization_config"]["config_groups"]["group_0"]),
                          "several config groups"),
    "unknown quant_method": ("fp8-block", lambda c: c["quantization_config"].update(quant_method="awq"), "quant method 'awq'"),
}
needs_ref = pytest.mark.skipif(not refpipeline.available(), reason="reference converter not set up (scripts/setup_refconv.sh)")


@pytest.fixture(scope="module")
def ref_runs(built, tmp_path_factory):
    """Every reference conversion this module needs, two at a time."""
    if not refpipeline.available():
        pytest.skip("reference converter not set up")
    root = tmp_path_factory.mktemp("qref")
    jobs = [(("bf16", k), built(k), REF_EXTRA.get(k, ())) for k in REF_KINDS] + [(("q8", k), built(k), ("--fp8-as-q8",)) for k in Q8_KINDS]
    for case, (kind, eq, _) in REFUSED.items():
        d = root / ("refused-" + case.replace(" ", "_"))
        import shutil

        shutil.copytree(built(kind), d)
        jobs.append((("refused", case), _rewrite(d, None, eq), ()))
    outs = [root / f"{'-'.join(key)}.gguf".replace(" ", "_") for key, _, _ in jobs]
    procs = refpipeline.convert_many([[folder, "--outtype", "bf16", "--outfile", out, *extra]
                                      for (_, folder, extra), out in zip(jobs, outs)])
    return {key: (folder, out, None if p.returncode == 0 else f"convert_hf_to_gguf.py failed:\n{p.stderr[-4000:]}")
            for (key, folder, _), out, p in zip(jobs, outs, procs)}


@needs_ref
@pytest.mark.parametrize("ftype", ["Q8_0", "Q4_K_M"])
@pytest.mark.parametrize("kind", REF_KINDS)
def test_identical_to_llama_cpp(ref_runs, kind, ftype, tmp_path):
    folder, bf16, err = ref_runs["bf16", kind]
    assert err is None, err
    ref = refpipeline.llama_quantize(bf16, tmp_path / "ref.gguf", ftype)
    ours = tmp_path / "ours.gguf"
    pipeline.convert(folder, ours, ftype)
    assert refpipeline.compare_gguf(ours, ref, ignore_keys=()) == []


@needs_ref
@pytest.mark.parametrize("kind", Q8_KINDS)
def test_fp8_as_q8_identical_to_llama_cpp(ref_runs, kind, tmp_path):
    folder, bf16, err = ref_runs["q8", kind]
    assert err is None, err
    ref = refpipeline.llama_quantize(bf16, tmp_path / "ref.gguf", "Q8_0")
    ours = tmp_path / "ours.gguf"
    assert cli.main(["convert", str(folder), "-o", str(ours), "--type", "Q8_0", "--fp8-as-q8", "-q"]) == 0
    assert refpipeline.compare_gguf(ours, ref, ignore_keys=()) == []
    plain = tmp_path / "plain.gguf"
    pipeline.convert(folder, plain, "Q8_0")
    assert refpipeline.compare_gguf(plain, ref, ignore_keys=()) != []  # the option changes the FP8 tensors
    assert refpipeline.llama_quantize_rc(bf16, tmp_path / "ref4.gguf", "Q4_K_M") != 0  # requantizing refused


@needs_ref
@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_as_llama_cpp_refuses(ref_runs, case):
    folder, _, err = ref_runs["refused", case]
    assert err is not None  # the converter fails on it
    with pytest.raises((InputError, UnsupportedError), match=REFUSED[case][2]):
        pipeline.dry_run(folder, "Q8_0")
