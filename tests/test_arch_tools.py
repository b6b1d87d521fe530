"""convert --dry-run / validate / dequantize --hf-names on tests/test_arch.py's tiny checkpoints. A module
of its own so that pytest-xdist (scripts/test: --dist loadscope) runs it beside the rest of test_arch.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kquant.models import load_spec
from kquant.types import QType
from test_arch import (  # noqa: F401  (models: the shared checkpoint fixture)
    TOOLS_CASES, all_sources, bf16_bits_to_f32, f32_to_bf16_bits, models, read_safetensors,
)


@pytest.mark.parametrize("case", TOOLS_CASES)
def test_tools_on_new_families(models, case, tmp_path, capsys):
    """convert --dry-run --json plans the file convert writes; validate reads it back against the
    checkpoint; dequantize --hf-names restores the checkpoint's own tensor names and rows."""
    from kquant import cli
    from kquant.io.gguf import GGUFFile

    d = models(case, copy=False)
    out = tmp_path / "q.gguf"
    assert cli.main(["convert", str(d), "--type", "Q8_0", "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert not out.exists()
    assert cli.main(["convert", str(d), "-o", str(out), "--type", "Q8_0", "-q"]) == 0
    capsys.readouterr()
    with GGUFFile(out) as g:
        assert [(t["name"], t["type"]) for t in plan["tensors"]] == [(t.name, t.qtype.ggml_name) for t in g.tensors]
        assert plan["total_bytes"] == sum(t.nbytes for t in g.tensors)

    assert cli.main(["validate", str(out), "--source", str(d), "--json", "-q", "--fail-above", "0.05"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["summary"]["n_tensors"] == len(plan["tensors"])

    hf = tmp_path / "hf.safetensors"
    from kquant.models import inverse_family

    if inverse_family(plan["architecture"]) is None:  # an inverse that cannot be exact: refused in one line, nothing written
        assert cli.main(["dequantize", str(out), "-o", str(hf), "--hf-names", "--json", "-q"]) == 2
        err = capsys.readouterr().err.strip()
        assert f"--hf-names is not offered for '{plan['architecture']}'" in err and "\n" not in err and not hf.exists()
        return
    assert cli.main(["dequantize", str(out), "-o", str(hf), "--hf-names", "--json", "-q"]) == 0
    capsys.readouterr()
    got = read_safetensors(hf)
    src, extra = hf_names_source(case, d, got)
    assert sorted(set(got) - extra) == sorted(src)
    for name, x in src.items():
        rel = np.sqrt(np.mean((got[name] - x) ** 2) / np.mean(x ** 2))
        assert got[name].shape == x.shape and rel < 0.05, (name, rel)


def hf_names_source(case: str, d: Path, got) -> tuple[dict[str, np.ndarray], set[str]]:
    """The checkpoint's tensors as `dequantize --hf-names` gives them back: {HF name: the values the converter
    stored (rounded to BF16 where it stores BF16)}, and the names in `got` with no source tensor (the MXFP4
    release's experts, under the BF16 release's names). Not the tensors the converter drops (MTP layers, a
    multimodal checkpoint's vision tower); a multimodal checkpoint's language model under the text model's
    names (language_model. dropped); GPT-2 saved without the "transformer." prefix under the prefixed names
    (save_pretrained's: the GGUF file does not record which)."""
    src = all_sources(d)
    spec = load_spec(d, vocab=False)
    stored = {s: t.ref_type for t in spec.tensors for s in t.sources}
    want = {n.replace("language_model.", ""): x if stored[n] == QType.F32 else bf16_bits_to_f32(f32_to_bf16_bits(x))
            for n, x in src.items() if n in stored and not n.endswith(("_blocks", "_scales"))}
    if case == "gpt2":
        want = {n if n.startswith(("transformer.", "lm_head")) else "transformer." + n: x for n, x in want.items()}
    extra = set()
    if any(n.endswith("_blocks") for n in src):
        extra = {n for n in got if n not in want and n.endswith(("experts.gate_up_proj", "experts.down_proj"))}
        assert len(extra) == 2 * spec.n_layer
    return want, extra


# one case per kind of inverse --hf-names undoes: stacked experts split and transposed (llama4), interleaved
# with biases (gpt-oss), fused and stacked (granitemoeshared), per-expert merges in MoE layers after dense
# ones (dots1, olmoe, phimoe, qwen2moe), MLA's kv_b_proj split (deepseek2-lite), Q/K permutation (deepseek),
# Conv1D transposed (gpt2), regrouped QKV rows and per-variant norm names (falcon), short convolutions
# reshaped (lfm2), a "llama" file with experts (mixtral), renamed expert biases (afmoe, bailingmoe2, minimax-m2),
# QKV split then Q/K permuted (bailingmoe), NextN blocks kept (bailingmoe2), fused gate_up transposed (qwen3vlmoe),
# Q/K rotary rows to NeoX order for M-RoPE (glm4v: told from the file's rope.dimension_sections), stacked experts
# kept fused with router scales and buffers without a .weight suffix, per-layer embeddings (gemma4*); experts fused
# along the rows, w2 transposed (dbrx)
HF_NAMES_CASES = ("llama4", "gpt-oss", "gpt-oss-mxfp4", "granitemoeshared", "dots1", "olmoe", "phimoe", "qwen2moe",
                  "mixtral", "phi3", "deepseek2-lite", "deepseek32", "deepseek", "gpt2", "falcon", "lfm2", "lfm2moe",
                  "afmoe", "bailingmoe", "bailingmoe2", "minimax-m2", "qwen3vlmoe", "glm4v", "granitemoe-swa", "bloom", "xverse",
                  "gemma4", "gemma4-moe", "gemma4-ple", "dbrx", "arctic")


@pytest.mark.parametrize("case", HF_NAMES_CASES)
def test_hf_names_round_trip_exact(models, case, tmp_path, capsys):
    """convert --type BF16, then dequantize --hf-names --dtype F32 gives back the checkpoint's tensors: the
    same names and shapes, and the values the converter stored exactly (BF16 sources and the tensors it keeps
    in F32 bit for bit; other sources as the BF16 intermediate rounds them). The MXFP4 release comes back
    under the BF16 release's names (gate_up_proj, down_proj: what transformers dequantizes it into)."""
    from kquant import cli

    d = models(case, copy=False)
    out, hf = tmp_path / "bf16.gguf", tmp_path / "hf.safetensors"
    assert cli.main(["convert", str(d), "-o", str(out), "--type", "BF16", "-q"]) == 0
    assert cli.main(["dequantize", str(out), "-o", str(hf), "--hf-names", "--dtype", "F32", "-q"]) == 0
    capsys.readouterr()
    got = read_safetensors(hf)
    want, extra = hf_names_source(case, d, got)
    assert sorted(set(got) - extra) == sorted(want)
    for name, x in want.items():
        assert got[name].shape == x.shape and np.array_equal(got[name], x), name


def test_hf_names_refusals_say_why():
    """Every family either maps back (inverse_names) or says in one line why --hf-names is not offered."""
    from kquant.models import FAMILIES, inverse_architectures

    archs = set(inverse_architectures())
    for c in set(FAMILIES.values()):
        if c.arch_name() not in archs:
            assert c.inverse_refused and "\n" not in c.inverse_refused, c.__name__
        else:
            assert not c.inverse_refused or not c.inverse_names, c.__name__
