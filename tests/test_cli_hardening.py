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

from kquant.io.safetensors import Checkpoint, write_safetensors
from proc import default_sigint, signal_mid_convert

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
    out = signal_mid_convert(tmp_path, sig, lambda d: any(".kquant-tmp-" in x.name for x in d.iterdir()))
    assert not out.exists()
    no_leftovers(tmp_path)


# ============================================================================ signals and faults
# (issue 14 parts 2-3, issue 20 "Signals and faults"): every case checks the exit code, a single
# stderr line and no traceback, no temporary or partial file, and inputs byte-identical.
def kq_start(*args, env=None, **kw):
    """The CLI in a child process with SIGINT at its default (see proc.default_sigint); stderr piped."""
    e = dict(os.environ)
    e.pop("KQUANT_DEBUG", None)
    e.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "kquant.cli", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=e, preexec_fn=default_sigint, **kw)


def pause_after_create(seconds: float, name_part: str) -> dict:
    """Env for fsutil's test hook: pause, signals held, right after creating a file named *name_part*."""
    from kquant.io.fsutil import TEST_PAUSE_ENV

    return {TEST_PAUSE_ENV: f"{seconds}:{name_part}"}


def wait_created(p) -> str:
    """Read the child's stderr up to the hook's "kquant-test: created PATH" line; returns PATH."""
    while True:
        line = p.stderr.readline()
        if not line:
            raise AssertionError(f"no file was created (exit {p.wait()})")
        if line.startswith("kquant-test: created "):
            return line.split(" ", 2)[2].strip()


def finish(p, timeout=120) -> subprocess.CompletedProcess:
    _, err = p.communicate(timeout=timeout)
    err = "\n".join(ln for ln in err.splitlines() if not ln.startswith("kquant-test: "))
    return subprocess.CompletedProcess(p.args, p.returncode, "", err)


def hashes(*paths) -> dict:
    """sha256 of every file under these paths (files or folders)."""
    import hashlib

    out = {}
    for root in map(Path, paths):
        for f in ([root] if root.is_file() else sorted(x for x in root.rglob("*") if x.is_file())):
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def no_kquant_files(*dirs):
    """No temporary output and no batch probe file anywhere under these folders."""
    left = [str(p) for d in dirs for p in Path(d).rglob("*") if ".kquant-tmp-" in p.name or "-probe-" in p.name]
    assert not left, left


@pytest.fixture(scope="module")
def q8(tmp_path_factory):
    """The tiny model and its Q8_0 GGUF (converted in this process; warms the q8_0 kernels)."""
    from kquant.pipeline import Options, convert

    d = tmp_path_factory.mktemp("q8")
    m = d / "tiny"
    shutil.copytree(TINY, m)
    convert(m, d / "tiny-Q8_0.gguf", "Q8_0", Options())
    return m, d / "tiny-Q8_0.gguf"


WINDOW_CASES = {  # command -> (argv, name of the file whose creation window is hit)
    "convert": (lambda m, g, o: ["convert", m, "-o", o / "o.gguf", "--type", "Q8_0", "-q"], "o.gguf"),
    "validate-csv": (lambda m, g, o: ["validate", g, "--source", m, "--csv", o / "r.csv", "-q"], "r.csv"),
    "dequantize": (lambda m, g, o: ["dequantize", g, "-o", o / "d.safetensors", "-q"], "d.safetensors"),
    "batch-probe": (lambda m, g, o: ["batch", m.parent, "-o", o, "-t", "Q8_0", "-q"], "-probe-"),
    "batch-output": (lambda m, g, o: ["batch", m.parent, "-o", o, "-t", "Q8_0", "-q"], "tiny-Q8_0.gguf"),
    "batch-manifest": (lambda m, g, o: ["batch", m.parent, "-o", o, "-t", "Q8_0", "-q"], ".kquant-batch.json"),
}


@pytest.mark.parametrize("case", list(WINDOW_CASES))
def test_interrupt_in_the_create_window(q8, tmp_path, case):
    """SIGINT exactly between creating a file and registering its removal (issue 14): the hook
    holds the child right there, so the window is hit every time."""
    m, g = q8
    argv, part = WINDOW_CASES[case]
    out = tmp_path / "out"
    out.mkdir()
    before = hashes(m.parent)
    p = kq_start(*argv(m, g, out), env=pause_after_create(0.5, part))
    assert part in os.path.basename(wait_created(p))
    p.send_signal(signal.SIGINT)
    r = finish(p)
    assert "interrupted" in one_line_error(r, code=130)
    no_kquant_files(out, m.parent)
    if not case.startswith("batch"):
        assert os.listdir(out) == []
    assert hashes(m.parent) == before


def started(p) -> float:
    """Wait for the child's "kquant-test: started" (its first line: the handlers are in); the time."""
    line = p.stderr.readline()
    assert line.strip() == "kquant-test: started", (line, p.poll())
    return time.monotonic()


ANNOUNCE = {"KQUANT_TEST_ANNOUNCE": "1"}


def signal_at(runs, sig=signal.SIGINT):
    """runs: [(delay, Popen)], all started together; signal each `delay` s after its start line
    (the interpreter's own start-up before kquant's first line is Python's, not kquant's)."""
    t = {id(p): started(p) for _, p in runs}
    for delay, p in sorted(runs, key=lambda r: r[0]):
        time.sleep(max(0.0, t[id(p)] + delay - time.monotonic()))
        p.send_signal(sig)


def test_random_interrupts_over_a_whole_conversion(tmp_path):
    """SIGINT at random moments of whole conversions (start-up included), all at once: exit 130
    (or 0 when it came too late), one line, no traceback, no temporary file, nothing partial."""
    import random

    from kquant.io.gguf import GGUFFile

    seed = random.randrange(2**32)
    rng = random.Random(seed)
    runs = []
    for i in range(6):
        d = tmp_path / f"r{i}"
        d.mkdir()
        runs.append((rng.uniform(0.0, 2.5), kq_start("convert", TINY, "-o", d / "o.gguf", "--type", "Q4_K_M",
                                                      "--threads", "1", "-q", env=ANNOUNCE)))
    signal_at(runs)
    for i, (delay, p) in enumerate(runs):
        d = tmp_path / f"r{i}"
        r = finish(p)
        what = f"seed {seed}, delay {delay:.3f} s: {r.stderr}"
        assert r.returncode in (0, 130), what
        assert "Traceback" not in r.stderr, what
        if r.returncode == 130:
            assert "interrupted" in one_line_error(r), what
        no_kquant_files(d)
        if (d / "o.gguf").exists():  # complete, never partial
            with GGUFFile(d / "o.gguf") as gf:
                assert len(gf.tensors) == 21, what
        else:
            assert r.returncode == 130, what


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_during_start_up(tmp_path, sig):
    """Signals while Python imports argparse, numpy, numba and loads the cached kernels (issue 14
    part 3), from kquant's first line on."""
    runs = [(delay, kq_start("convert", TINY, "-o", tmp_path / f"o{i}.gguf", "--type", "Q8_0", "-q", env=ANNOUNCE))
            for i, delay in enumerate((0.0, 0.05, 0.4))]
    signal_at(runs, sig)
    for delay, p in runs:
        r = finish(p)
        assert r.returncode == 128 + sig, (delay, r.stderr)
        assert "interrupted" in one_line_error(r), delay
    assert os.listdir(tmp_path) == []


def test_cli_entry_installs_handlers_before_numba():
    code = ("import sys, signal; import kquant.cli; from kquant.io import fsutil; "
            "assert 'numba' not in sys.modules and 'numpy' not in sys.modules, 'heavy import'; "
            "fsutil.install_interrupt_handlers(); assert signal.getsignal(signal.SIGINT) is fsutil.interrupt_once")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, preexec_fn=default_sigint)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("where", ["held", "writing"])
def test_repeated_interrupts_are_one_line(q8, tmp_path, where):
    """Ten signals 2 ms apart, SIGINT and SIGTERM mixed (so later ones land in the clean-up of the
    first): one line, the first signal's exit code, no 'Exception ignored' traceback."""
    m, _ = q8
    p = kq_start("convert", m, "-o", tmp_path / "o.gguf", "--type", "Q8_0", "--threads", "1", "-q",
                 env=pause_after_create(0.5 if where == "held" else 0, "o.gguf"))
    wait_created(p)
    for i in range(10):
        p.send_signal(signal.SIGINT if i % 2 == 0 else signal.SIGTERM)
        time.sleep(0.002)
    r = finish(p)
    if where == "writing" and r.returncode == 0:
        pytest.skip("the tiny conversion finished first")
    assert "interrupted" in one_line_error(r, code=130)
    assert "Exception ignored" not in r.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("what", ["shard", "gguf"])
def test_input_truncated_while_reading(q8, tmp_path, what):
    """Another process truncates the input once the output exists (its data is read after): one
    line naming the file, not SIGBUS (the readers use pread, not a mapping); no temporary file."""
    m = tmp_path / "model"
    shutil.copytree(q8[0], m)
    shutil.copy(q8[1], tmp_path / "in.gguf")
    out = tmp_path / "out"
    out.mkdir()
    if what == "shard":
        victim, argv, name = m / "model.safetensors", ["convert", m, "-o", out / "o.gguf", "--type", "Q8_0"], "o.gguf"
    else:
        victim, argv, name = tmp_path / "in.gguf", ["dequantize", tmp_path / "in.gguf", "-o", out / "d.safetensors"], "d."
    p = kq_start(*argv, "-q", env=pause_after_create(0.5, name))
    wait_created(p)
    os.truncate(victim, victim.stat().st_size // 2)
    r = finish(p)
    assert f"{victim} changed while reading" in one_line_error(r, code=2)
    assert os.listdir(out) == []


def _limit(res, n):
    def pre():
        import resource

        default_sigint()
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(res, (n, n))

    return pre


def test_file_size_limit_is_one_line(q8, tmp_path):
    import resource

    m, _ = q8
    before = hashes(m)
    r = subprocess.run([sys.executable, "-m", "kquant.cli", "convert", m, "-o", tmp_path / "o.gguf", "--type", "Q8_0",
                        "-q"], capture_output=True, text=True, timeout=300,
                       preexec_fn=_limit(resource.RLIMIT_FSIZE, 500_000))
    assert "cannot write (file too large)" in one_line_error(r, str(tmp_path / "o.gguf"), code=2)
    assert os.listdir(tmp_path) == [] and hashes(m) == before


def test_too_many_open_files_is_one_line(q8, tmp_path):
    """21 shards (with an index) under a 12-descriptor limit; one shard converts under it."""
    import resource

    m = tmp_path / "sharded"
    m.mkdir()
    for f in q8[0].iterdir():
        if f.name != "model.safetensors":
            shutil.copy(f, m)
    with Checkpoint.open(q8[0]) as ck:
        names = list(ck.tensors)
        weight_map = {}
        for i, n in enumerate(names):
            shard = f"model-{i + 1:05d}-of-{len(names):05d}.safetensors"
            write_safetensors(m / shard, {n: np.array(ck.read(n))}, dtype="BF16")
            weight_map[n] = shard
    (m / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    before = hashes(m)
    ok = subprocess.run([sys.executable, "-m", "kquant.cli", "convert", q8[0], "--dry-run", "-q"], capture_output=True,
                        text=True, timeout=300, preexec_fn=_limit(resource.RLIMIT_NOFILE, 12))
    assert ok.returncode == 0, ok.stderr
    r = subprocess.run([sys.executable, "-m", "kquant.cli", "convert", m, "-o", tmp_path / "o.gguf", "--type", "Q8_0",
                        "-q"], capture_output=True, text=True, timeout=300,
                       preexec_fn=_limit(resource.RLIMIT_NOFILE, 12))
    assert "Too many open files" in one_line_error(r)
    assert not (tmp_path / "o.gguf").exists() and hashes(m) == before
    no_kquant_files(tmp_path)


# ============================================================================ command line
@pytest.mark.parametrize("argv", [
    ["convert", "M", "-o", "O", "--threads", "0"],
    ["convert", "M", "-o", "O", "--threads", "-1"],
    ["convert", "M", "--dry-run", "--target-bpw", "0"],
    ["convert", "M", "--dry-run", "--target-bpw", "nan"],
    ["convert", "M", "-o", "O", "--no-such-option"],
    ["convert"],
    [],
    ["frobnicate"],
    ["convert", "M", "-o", "O", "--type", "Q8_0", "--type", "Q4_0"],
    ["convert", "M", "-o", "O", "--threads", "1", "--threads", "2"],
    ["convert", "M", "-o", "O", "-o", "P"],
    ["validate", "--source", "M", "--types", "Q4_K", "--worst", "0"],
    ["dequantize", "G", "-o", "O", "--dtype", "F8"],
    ["batch", "M", "-o", "O", "-t", "Q8_0", "--jobs", "0"],
])
def test_argument_errors_are_one_line(tmp_path, capsys, argv):
    from kquant.cli import main

    before = hashes(TINY)
    argv = [str({"M": TINY, "O": tmp_path / "o.gguf", "P": tmp_path / "p.gguf", "G": tmp_path / "g.gguf"}.get(a, a))
            for a in argv]
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kquant: error: "), err
    if argv.count("--type") == 2:
        assert "given twice" in lines[0] and "Q8_0" in lines[0] and "Q4_0" in lines[0]
    assert os.listdir(tmp_path) == [] and hashes(TINY) == before


def test_argument_error_in_a_process():
    r = kq("convert", TINY, "-o", "x.gguf", "--threads", "0")
    assert "--threads must be at least 1" in one_line_error(r, code=2) and "usage:" not in r.stderr


def test_repeats_that_agree_or_append_are_accepted(tmp_path):
    from kquant.cli import main

    assert main(["convert", str(TINY), "--dry-run", "--json", "--type", "Q8_0", "--type", "q8_0"]) == 0
    # batch's --type is a list: repeats are the point
    assert main(["batch", str(tmp_path / "none"), "-o", str(tmp_path / "o"), "-t", "Q8_0", "-t", "Q4_0", "-q"]) == 2


# ============================================================================ inputs never overwritten
def _imatrix(path: Path) -> Path:
    from test_imatrix import legacy_imatrix

    return legacy_imatrix(path, [("blk.0.attn_q.weight", 1, np.ones(256, np.float32))])


OVERWRITE_CASES = {  # name -> argv(model, gguf, tmp); every one is refused, with or without --force
    "convert-config": lambda m, g, t: ["convert", m, "-o", m / "config.json", "--type", "Q8_0"],
    "convert-tokenizer": lambda m, g, t: ["convert", m, "-o", m / "tokenizer.model", "--type", "Q8_0"],
    "convert-tokenizer-config": lambda m, g, t: ["convert", m, "-o", m / "tokenizer_config.json", "--type", "Q8_0"],
    "convert-generation-config": lambda m, g, t: ["convert", m, "-o", m / "generation_config.json", "--type", "Q8_0"],
    "convert-shard": lambda m, g, t: ["convert", m, "-o", m / "model.safetensors", "--type", "Q8_0"],
    "convert-imatrix": lambda m, g, t: ["convert", m, "--imatrix", t / "im.dat", "-o", t / "im.dat", "--type", "Q4_K_M"],
    "convert-config-flag": lambda m, g, t: ["convert", m / "model.safetensors", "--config", t / "cfg.json", "-o",
                                            t / "cfg.json", "--type", "Q8_0"],
    "convert-symlink": lambda m, g, t: ["convert", m, "-o", t / "sym.gguf", "--type", "Q8_0"],
    "convert-hardlink": lambda m, g, t: ["convert", m, "-o", t / "hard.gguf", "--type", "Q8_0"],
    "validate-csv-config": lambda m, g, t: ["validate", g, "--source", m, "--csv", m / "config.json", "-q"],
    "validate-csv-gguf": lambda m, g, t: ["validate", g, "--source", m, "--csv", g, "-q"],
    "validate-csv-hardlink": lambda m, g, t: ["validate", g, "--source", m, "--csv", t / "hard.gguf", "-q"],
    "dequantize-gguf": lambda m, g, t: ["dequantize", g, "-o", g, "-q"],
    "dequantize-symlink": lambda m, g, t: ["dequantize", g, "-o", t / "sym-gguf", "-q"],
    "batch-symlink": lambda m, g, t: ["batch", m.parent, "-o", t / "out", "-t", "Q8_0", "-q"],
}


@pytest.mark.parametrize("force", [True, False], ids=["force", "no-force"])
@pytest.mark.parametrize("case", list(OVERWRITE_CASES))
def test_output_is_never_an_input(q8, tmp_path, capsys, case, force):
    from kquant.cli import main

    root = tmp_path / "root"
    m = root / "tiny"
    shutil.copytree(q8[0], m)
    (m / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    g = tmp_path / "tiny-Q8_0.gguf"
    shutil.copy(q8[1], g)
    _imatrix(tmp_path / "im.dat")
    shutil.copy(m / "config.json", tmp_path / "cfg.json")
    (tmp_path / "sym.gguf").symlink_to(m / "config.json")
    os.link(m / "tokenizer.model" if case.startswith("convert") else g, tmp_path / "hard.gguf")
    (tmp_path / "sym-gguf").symlink_to(g)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "tiny-Q8_0.gguf").symlink_to(m / "model.safetensors")
    before = hashes(tmp_path)
    rc = main(list(map(str, OVERWRITE_CASES[case](m, g, tmp_path))) + (["--force"] if force else []))
    err = capsys.readouterr().err
    assert rc == (1 if case.startswith("batch") else 2), err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    if force:
        assert "same file as input" in lines[0], lines[0]
    after = {k: v for k, v in hashes(tmp_path).items() if ".kquant-batch." not in k}  # batch's own state
    assert after == before
    no_kquant_files(tmp_path)
