"""`kquant validate`, `kquant inspect`, `kquant dequantize` through kquant.cli.main: output formats,
--fail-above exit codes, one-line errors for malformed GGUF files and bad arguments."""

from __future__ import annotations

import csv
import io
import json
import struct
import sys

import pytest
from test_validate import gguf_py_tensors, llama_quantize, make_hf_llama, read_safetensors, write_bf16_gguf

from kquant.cli import main
from kquant.types import FileType


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_validate")
    hf = make_hf_llama(d / "hf")
    bf16 = write_bf16_gguf(hf, d / "bf16.gguf")
    q = llama_quantize(bf16, d / "q4km.gguf", FileType.MOSTLY_Q4_K_M)
    return {"dir": d, "hf": hf, "q4km": q}


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("kquant: error: "), err
    assert "Traceback" not in err
    return lines[0]


# ============================================================================= validate
def test_validate_table_and_progress(files, capsys):
    rc, out, err = run(capsys, "validate", files["q4km"], "--source", files["hf"])
    assert rc == 0
    assert out.splitlines()[0].split()[:3] == ["tensor", "type", "bpw"]
    assert "blk.1.ffn_down.weight" in out and "parameter-weighted" in out and "worst:" in out
    assert "[  21/21]" in err  # progress on stderr
    rc, out2, err = run(capsys, "validate", files["q4km"], "--source", files["hf"], "-q", "--worst", "2")
    assert rc == 0 and err == ""
    assert len(out2.split("worst:")[1].split(",")) == 2


def test_validate_json_csv_plot(files, capsys, tmp_path):
    pytest.importorskip("matplotlib")
    c, png = tmp_path / "r.csv", tmp_path / "r.png"
    rc, out, err = run(capsys, "validate", files["q4km"], "--source", files["hf"], "--json", "-q", "--csv", c, "--plot", png)
    assert rc == 0 and err == ""
    js = json.loads(out)  # exactly one JSON document on stdout
    assert len(js["tensors"]) == 21 and js["summary"]["n_tensors"] == 21
    rows = list(csv.DictReader(io.StringIO(c.read_text())))
    assert [r["name"] for r in rows] == [t["name"] for t in js["tensors"]]
    for r, t in zip(rows, js["tensors"]):
        for k in ("rmse", "max_abs", "rel_rmse", "snr_db", "cosine"):
            assert float(r[k]) == float(t[k]), (t["name"], k)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", data[16:24])[0] > 400
    # existing outputs: refused before any work without --force, replaced with it
    rc, out, err = run(capsys, "validate", files["q4km"], "--source", files["hf"], "-q", "--csv", c)
    assert rc == 2 and "already exists" in one_line_error(err) and out == ""
    rc, _, _ = run(capsys, "validate", files["q4km"], "--source", files["hf"], "-q", "--csv", c, "--force")
    assert rc == 0
    # CSV on stdout replaces the table
    rc, out, _ = run(capsys, "validate", files["q4km"], "--source", files["hf"], "-q", "--csv", "-")
    assert rc == 0 and out.splitlines()[0].startswith("name,type,shape,n,bits_per_weight,rmse")
    assert len(out.splitlines()) == 22


def test_fail_above_drives_the_exit_code(files, capsys):
    rc, out, err = run(capsys, "validate", files["q4km"], "--source", files["hf"], "-q", "--json")
    ts = sorted(json.loads(out)["tensors"], key=lambda t: float(t["rel_rmse"]))
    worst = float(ts[-1]["rel_rmse"])
    rc, out, err = run(capsys, "validate", files["q4km"], "--source", files["hf"], "-q", "--fail-above", worst * 0.9999)
    assert rc == 1 and "1 tensor(s) above rel_rmse" in one_line_error(err) and ts[-1]["name"] in err
    assert "parameter-weighted" in out  # the report is still printed
    rc, out, err = run(capsys, "validate", files["q4km"], "--source", files["hf"], "-q", "--fail-above", worst)
    assert rc == 0 and err == ""
    rc, _, err = run(capsys, "validate", files["q4km"], "--source", files["hf"], "-q", "--fail-above", "0")
    assert rc == 1 and "16 tensor(s)" in err  # every quantized tensor; the 5 F32 norms are exact


def test_what_if_cli(files, capsys, tmp_path):
    rc, out, err = run(capsys, "validate", "--source", files["hf"], "--types", "q4_k,Q8_0", "-q")
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["rel_rmse", "q4_K", "q8_0"]
    assert any(x.startswith("weighted rel_rmse") for x in lines) and any(x.startswith("bits per weight") for x in lines)
    rc, out, err = run(capsys, "validate", "--source", files["hf"], "--types", "Q6_K", "--json", "-q", "--csv", tmp_path / "w.csv")
    js = json.loads(out)
    assert rc == 0 and js["types"] == ["q6_K"] and len(js["tensors"]) == 16
    assert set(js["summary"]["q6_K"]) >= {"rel_rmse", "snr_db", "cosine", "bits_per_weight"}
    assert len((tmp_path / "w.csv").read_text().splitlines()) == 17
    rc, out, err = run(capsys, "validate", "--source", files["hf"], "--types", "Q4_K")
    assert "[  16/16]" in err


@pytest.mark.parametrize(
    "argv, word",
    [
        (["--types", "Q4_K", "FILE"], "either"),
        ([], "--types"),
        (["--types", "Q4_K", "--fail-above", "0.1"], "--fail-above"),
        (["FILE", "--json", "--csv", "-"], "stdout"),
    ],
)
def test_validate_argument_errors(files, capsys, argv, word):
    argv = [files["q4km"] if a == "FILE" else a for a in argv]
    rc, out, err = run(capsys, "validate", "--source", files["hf"], *argv)
    assert rc == 2 and word in one_line_error(err) and out == ""


def test_validate_argparse_errors(files, capsys):
    for argv in (["--types", "Q9_K"], ["--fail-above", "abc", files["q4km"]], ["--fail-above", "-1", files["q4km"]]):
        assert main(["validate", "--source", str(files["hf"]), *map(str, argv)]) == 2
        one_line_error(capsys.readouterr().err)


def test_plot_without_matplotlib(files, capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    rc, out, err = run(capsys, "validate", files["q4km"], "--source", files["hf"], "-q", "--plot", tmp_path / "p.png",
                       "--csv", tmp_path / "c.csv")
    assert rc == 2 and "matplotlib" in one_line_error(err) and "kquant[plot]" in err
    assert not list(tmp_path.iterdir())  # refused before any output


def test_wrong_source(files, capsys, tmp_path):
    other = make_hf_llama(tmp_path / "other", intermediate_size=768)
    rc, out, err = run(capsys, "validate", files["q4km"], "--source", other, "-q")
    assert rc == 2 and "not its source" in one_line_error(err)
    rc, out, err = run(capsys, "validate", files["q4km"], "--source", tmp_path / "nothing", "-q")
    assert rc == 2 and "no such" in one_line_error(err)


# ============================================================================= malformed GGUF
def malformed(files, tmp_path) -> dict:
    raw = files["q4km"].read_bytes()
    bad = {
        "truncated": raw[: len(raw) - 1000],
        "magic": b"GGML" + raw[4:],
        "version": raw[:4] + struct.pack("<I", 7) + raw[8:],
        "n_tensors": raw[:8] + struct.pack("<Q", 2**40) + raw[16:],
        "trailing": raw + b"\0" * 32,
        "empty": b"",
    }
    out = {}
    for name, data in bad.items():
        p = tmp_path / f"{name}.gguf"
        p.write_bytes(data)
        out[name] = p
    return out


@pytest.mark.parametrize("cmd", ["validate", "inspect", "dequantize"])
def test_malformed_gguf_one_line_error(files, capsys, tmp_path, cmd):
    for name, p in malformed(files, tmp_path).items():
        extra = {"validate": ["--source", files["hf"], "-q"], "inspect": [], "dequantize": ["-o", tmp_path / "o.safetensors"]}
        rc, out, err = run(capsys, cmd, p, *extra[cmd])
        line = one_line_error(err)
        assert rc == 2 and str(p) in line, (name, line)
        assert out == ""
    assert not (tmp_path / "o.safetensors").exists()


# ============================================================================= inspect / dequantize
def test_inspect_cli(files, capsys):
    rc, out, err = run(capsys, "inspect", files["q4km"])
    assert rc == 0 and "GGUF v3" in out and "q6_K" in out
    rc, out, err = run(capsys, "inspect", files["q4km"], "--json")
    js = json.loads(out)
    assert js["format"] == "gguf" and js["summary"]["n_tensors"] == 21
    rc, out, err = run(capsys, "inspect", files["hf"], "--json")
    assert json.loads(out)["config"]["model_type"] == "llama"
    rc, out, err = run(capsys, "inspect", files["dir"] / "missing.gguf")
    assert rc == 2 and "no such" in one_line_error(err)


def test_dequantize_cli(files, capsys, tmp_path):
    o = tmp_path / "d.safetensors"
    rc, out, err = run(capsys, "dequantize", files["q4km"], "-o", o, "--dtype", "bf16", "--hf-names", "--json", "-q")
    assert rc == 0 and err == ""
    res = json.loads(out)
    assert res["dtype"] == "BF16" and res["hf_names"] and res["n_tensors"] == 21
    assert set(read_safetensors(o)) == set(read_safetensors(files["hf"] / "model.safetensors"))
    rc, out, err = run(capsys, "dequantize", files["q4km"], "-o", o)
    assert rc == 2 and "--force" in one_line_error(err)
    rc, out, err = run(capsys, "dequantize", files["q4km"], "-o", o, "--force")
    assert rc == 0 and out.startswith(f"wrote {o}") and "[  21/21]" in err
    got = read_safetensors(o)
    assert all((got[n] == x).all() for n, (_, x) in gguf_py_tensors(files["q4km"]).items())
    rc, out, err = run(capsys, "dequantize", files["q4km"], "-o", files["q4km"], "--force")
    assert rc == 2 and "same file" in one_line_error(err)
