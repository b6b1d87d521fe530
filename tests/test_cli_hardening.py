"""`kquant convert` on bad input and bad command lines: one line on stderr, non-zero exit,
nothing at the output path, no temporary file, inputs untouched. Runs the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kquant.safetensors_io import Checkpoint, write_safetensors
from proc import default_sigint

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "fixtures" / "tiny-llama"


def kq(*args, env=None, **kw):
    e = dict(os.environ)
    e.pop("KQUANT_DEBUG", None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "kquant.cli", *map(str, args)], capture_output=True, text=True, env=e,
                          timeout=300, **kw)


def one_line_error(r, *needles, code=None):
    assert r.returncode != 0, r.stdout
    if code is not None:
        assert r.returncode == code, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.splitlines()  # progress and the cold-cache compile notice aside
             if ln.strip() and not ln.startswith(("[", "compiling the "))]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def no_leftovers(d: Path):
    assert not [p.name for p in d.iterdir() if ".kquant-tmp-" in p.name]


@pytest.fixture
def model(tmp_path):
    m = tmp_path / "model"
    shutil.copytree(TINY, m)
    return m


def rewrite(model: Path, fn):
    """Rewrite model.safetensors with fn(dict of float32 arrays) applied."""
    with Checkpoint.open(model) as ck:
        t = {n: np.array(ck.read(n)) for n in ck.tensors}
    fn(t)
    (model / "model.safetensors").unlink()
    write_safetensors(model / "model.safetensors", t, dtype="BF16")


def test_unknown_type(model, tmp_path):
    r = kq("convert", model, "-o", tmp_path / "o.gguf", "--type", "Q7_K")
    assert r.returncode == 2 and "Q7_K" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o.gguf").exists()


@pytest.mark.parametrize("n", ["0", "-1", "abc", "100000"])
def test_bad_threads(model, tmp_path, n):
    r = kq("convert", model, "-o", tmp_path / "o.gguf", "--threads", n)
    assert r.returncode != 0 and "threads" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o.gguf").exists()


def test_existing_output_left_untouched(model, tmp_path):
    out = tmp_path / "o.gguf"
    out.write_bytes(b"precious")
    one_line_error(kq("convert", model, "-o", out), "exists")
    assert out.read_bytes() == b"precious"
    no_leftovers(tmp_path)
    r = kq("convert", model, "-o", out, "--force", "-q")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:4] == b"GGUF"


@pytest.mark.parametrize("how", ["same", "symlink", "hardlink"])
def test_output_equal_to_input(model, how):
    src = model / "model.safetensors"
    before = src.read_bytes()
    if how == "same":
        out = src
    elif how == "symlink":
        out = model / "link.gguf"
        out.symlink_to(src)
    else:
        out = model / "hard.gguf"
        os.link(src, out)
    one_line_error(kq("convert", model, "-o", out, "--force"), "input")
    assert src.read_bytes() == before
    no_leftovers(model)


def test_missing_output_dir(model, tmp_path):
    one_line_error(kq("convert", model, "-o", tmp_path / "nope" / "o.gguf"), "nope")


def test_nan_weights_named(model, tmp_path):
    def poison(t):
        t["model.layers.1.mlp.up_proj.weight"][3, :5] = np.nan
        t["model.layers.1.mlp.up_proj.weight"][4, 0] = np.inf

    rewrite(model, poison)
    line = one_line_error(kq("convert", model, "-o", tmp_path / "o.gguf"), "model.layers.1.mlp.up_proj.weight", "6")
    assert "non-finite" in line
    assert not (tmp_path / "o.gguf").exists()
    no_leftovers(tmp_path)


def test_values_beyond_fp16_scales(model, tmp_path):
    def huge(t):
        t["model.layers.0.mlp.gate_proj.weight"][0, :] = 3e38  # BF16 holds it, Q8_0's fp16 scale cannot

    rewrite(model, huge)
    line = one_line_error(kq("convert", model, "-o", tmp_path / "o.gguf", "--type", "Q8_0"), "ffn_gate", "fp16")
    assert "too large" in line
    assert not (tmp_path / "o.gguf").exists()
    no_leftovers(tmp_path)


@pytest.mark.parametrize("case", ["not-json", "nan-literal", "no-layers", "bad-heads", "layer-count", "vocab-size"])
def test_bad_config(model, tmp_path, case):
    p = model / "config.json"
    cfg = json.loads(p.read_text())
    if case == "not-json":
        p.write_text("{not json")
    elif case == "nan-literal":
        p.write_text(p.read_text().replace('"rms_norm_eps": 1e-05', '"rms_norm_eps": NaN'))
    else:
        if case == "no-layers":
            del cfg["num_hidden_layers"]
        elif case == "bad-heads":
            cfg["num_attention_heads"] = 3
        elif case == "layer-count":
            cfg["num_hidden_layers"] = 5
        elif case == "vocab-size":
            cfg["vocab_size"] = 1000
        p.write_text(json.dumps(cfg))
    line = one_line_error(kq("convert", model, "-o", tmp_path / "o.gguf"))
    # the message names the config file, or (layer count) the tensors the config asks for that are missing
    assert "config.json" in line or (case == "layer-count" and "model.layers.2." in line), line
    assert not (tmp_path / "o.gguf").exists()


def test_pickle_only_folder(tmp_path):
    m = tmp_path / "m"
    m.mkdir()
    shutil.copy(TINY / "config.json", m)
    (m / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    one_line_error(kq("convert", m, "-o", tmp_path / "o.gguf"), "pytorch_model.bin")


def test_truncated_weights(model, tmp_path):
    w = model / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) - 1000])
    one_line_error(kq("convert", model, "-o", tmp_path / "o.gguf"), "model.safetensors")


def test_debug_shows_traceback(model, tmp_path):
    r = kq("convert", model, "-o", tmp_path / "o.gguf", "--type", "Q4_K_M", "--threads", "1",
           env={"KQUANT_DEBUG": "1"}, input=None)
    assert r.returncode == 0
    (model / "config.json").write_text("{")
    r = kq("convert", model, "-o", tmp_path / "p.gguf", env={"KQUANT_DEBUG": "1"})
    assert r.returncode != 0 and "Traceback" in r.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_write_leaves_nothing(tmp_path, sig):
    sys.path.insert(0, str(ROOT / "scripts"))
    from make_tiny_model import make

    m = make(tmp_path / "big", layers=4, hidden=512, heads=8, kv_heads=2, ffn=2048, vocab=4096, seed=3)
    out = tmp_path / "o.gguf"
    e = dict(os.environ, NUMBA_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "-m", "kquant.cli", "convert", str(m), "-o", str(out), "--type", "Q3_K_M",
                          "--threads", "1", "-q"], stderr=subprocess.PIPE, text=True, env=e,
                         preexec_fn=default_sigint)
    deadline = time.time() + 120
    while time.time() < deadline and not any(".kquant-tmp-" in x.name for x in tmp_path.iterdir()):
        if p.poll() is not None:
            break
        time.sleep(0.005)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    if p.returncode == 0:
        pytest.skip("conversion finished before the signal arrived")
    assert p.returncode == 128 + sig, err
    assert "Traceback" not in err
    assert not out.exists()
    no_leftovers(tmp_path)
