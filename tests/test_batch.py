"""`kquant batch` (kquant/batch/): discovery, same bytes as `kquant convert`, failures, skipping,
resuming after SIGINT/SIGTERM, --jobs worker processes, --imatrix-dir, and the Ray executor on a
local 2-CPU Ray instance. Models are tiny Llamas from scripts/make_tiny_model.py (hidden 256,
1 layer, vocab 512)."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kquant import batch, pipeline
from kquant.cli import main
from kquant.errors import InputError, OutputError
from kquant.io.gguf import GGUFFile
from proc import default_sigint

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from make_tiny_model import make  # noqa: E402

TYPES = ["Q4_K_M", "Q8_0"]
GOOD = ["alpha", "beta", "gamma-link"]
TINY = dict(layers=1, hidden=256, heads=4, kv_heads=2, ffn=768, vocab=512)
SUBPROCESS_TIMEOUT = 120


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """ROOT with two models, a symlinked model, a broken model and two folders that are not models."""
    base = tmp_path_factory.mktemp("batch")
    root = base / "root"
    make(root / "alpha", seed=1, **TINY)
    make(root / "beta", seed=2, **TINY)
    make(base / "gamma", seed=3, **TINY)
    (root / "gamma-link").symlink_to(base / "gamma", target_is_directory=True)
    make(root / "broken", seed=4, **TINY)
    w = root / "broken" / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])  # truncated: data past the end of the file
    (root / "notes").mkdir()
    (root / "notes" / "README.md").write_text("not a model\n")
    (root / "notes" / "loop").symlink_to(root, target_is_directory=True)  # a cycle must not hang discovery
    (root / "halfway").mkdir()
    (root / "halfway" / "config.json").write_text("{}\n")
    return root


@pytest.fixture(scope="module")
def reference(tree, tmp_path_factory):
    """What `kquant convert` writes for each good model and type: name -> bytes."""
    d = tmp_path_factory.mktemp("reference")
    out = {}
    for m in GOOD:
        for t in TYPES:
            p = d / f"{m}-{t}.gguf"
            pipeline.convert(tree / m, p, t)
            out[p.name] = p.read_bytes()
    return out


def _gguf_names(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".gguf"))


def _hidden_temp(d: Path) -> list[str]:
    return [p.name for p in d.iterdir() if ".kquant-tmp-" in p.name]


def _run_cli(capsys, *args) -> tuple[int, dict]:
    rc = main(["batch", *map(str, args), "--json", "-q"])
    return rc, json.loads(capsys.readouterr().out)


def _statuses(rep: dict) -> dict:
    return {(o["model"], o["type"]): o["status"] for o in rep["outputs"]}


# ---------------------------------------------------------------- discovery and pure helpers
def test_discover(tree, tmp_path):
    found = batch.discover(tree, exclude=[tree / "alpha"])
    assert [m.name for m in found.models] == ["beta", "broken", "gamma-link"]  # excluded, symlink followed, sorted
    reasons = {s.path.name: s.reason for s in found.skipped}
    assert reasons == {"halfway": "config.json but no .safetensors weights", "notes": "no config.json or .safetensors weights"}
    # ROOT itself may be a model folder; a Hugging Face cache snapshot is named ORG--NAME
    assert [m.name for m in batch.discover(tree / "alpha").models] == ["alpha"]
    snap = tmp_path / "hub" / "models--org--tiny" / "snapshots" / "0123abc"
    snap.mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
        (snap / f).symlink_to(tree / "alpha" / f)
    assert [m.name for m in batch.discover(tmp_path / "hub").models] == ["org--tiny"]
    # two folders with the same name would write the same outputs
    (tmp_path / "x" / "alpha").mkdir(parents=True)
    (tmp_path / "y").mkdir()
    for f in ("config.json", "model.safetensors"):
        (tmp_path / "x" / "alpha" / f).symlink_to(tree / "alpha" / f)
    (tmp_path / "y" / "alpha").symlink_to(tree / "beta", target_is_directory=True)
    with pytest.raises(InputError, match="two model folders are named 'alpha'"):
        batch.discover(tmp_path)
    with pytest.raises(InputError, match="no such folder"):
        batch.discover(tmp_path / "nope")


def test_find_imatrix(tmp_path):
    assert batch.find_imatrix(None, "m") is None
    assert batch.find_imatrix(tmp_path, "m") is None
    (tmp_path / "m.dat").write_bytes(b"x")
    assert batch.find_imatrix(tmp_path, "m") == tmp_path / "m.dat"
    (tmp_path / "m.gguf").write_bytes(b"x")
    assert batch.find_imatrix(tmp_path, "m") == tmp_path / "m.gguf"  # GGUF first, like the file llama-imatrix writes now
    assert batch.find_imatrix(tmp_path, "other") is None


def test_plan_parallelism():
    gib = 1 << 30
    assert batch.plan_parallelism(1, 5, 8, 64 * gib, gib) == (1, 8, [])
    n, t, notes = batch.plan_parallelism(16, 20, 8, 64 * gib, gib)
    assert (n, t) == (8, 1) and "capped to 8" in notes[0]  # cores
    n, t, notes = batch.plan_parallelism(4, 20, 8, 3 * gib, gib)
    assert (n, t) == (3, 2) and "GiB available" in notes[0]  # memory
    assert batch.plan_parallelism(4, 2, 8, None, gib)[:2] == (2, 4)  # no more workers than models
    assert batch.plan_parallelism(4, 20, 8, None, gib, threads=1)[:2] == (4, 1)
    with pytest.raises(InputError):
        batch.plan_parallelism(0, 1, 8, None, gib)


def test_arguments(tree, tmp_path, capsys):
    assert main(["batch", str(tree), "-o", str(tmp_path / "o"), "-t", "Q8_0", "--jobs", "0"]) == 2
    err = capsys.readouterr().err
    assert "--jobs must be at least 1" in err and len(err.splitlines()) == 1
    assert main(["batch", str(tree), "-o", str(tmp_path / "o"), "-t", "Q8_0", "--address", "x:1"]) == 2
    assert "--address is for --executor ray" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["batch", str(tree), "-o", str(tmp_path / "file"), "-t", "Q8_0"]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert main(["batch", str(tree / "halfway"), "-o", str(tmp_path / "o"), "-t", "Q8_0"]) == 2
    assert "no model folder" in capsys.readouterr().err
    # one batch per output folder at a time
    out = batch.prepare_outdir(tmp_path / "locked")
    with batch.OutdirLock(out):
        with pytest.raises(OutputError, match="another kquant batch"):
            batch.run_batch(tree, out, ["Q8_0"])


# ---------------------------------------------------------------- local executor
def test_batch_local(tree, reference, tmp_path, capsys):
    out = tmp_path / "out"
    rc, rep = _run_cli(capsys, tree, "-o", out, "-t", "Q4_K_M", "-t", "Q8_0", "-t", "q4_k_m")  # a repeated type counts once
    assert rc == 1  # broken failed, the others were written
    assert rep["types"] == TYPES
    assert [(o["model"], o["type"]) for o in rep["outputs"]] == [(m, t) for m in sorted(GOOD + ["broken"]) for t in TYPES]
    st = _statuses(rep)
    assert all(st[(m, t)] == "done" for m in GOOD for t in TYPES)
    assert st[("broken", "Q8_0")] == "failed"
    assert [f["model"] for f in rep["failed_models"]] == ["broken"]
    assert "past the" in rep["failed_models"][0]["error"]
    assert sorted(s["path"].rsplit("/", 1)[1] for s in rep["skipped_folders"]) == ["halfway", "notes"]
    assert _gguf_names(out) == sorted(reference)
    for name, data in reference.items():
        assert (out / name).read_bytes() == data, name  # same bytes as `kquant convert`
    row = next(o for o in rep["outputs"] if o["output"].endswith("alpha-Q4_K_M.gguf"))
    assert row["file_bytes"] == len(reference["alpha-Q4_K_M.gguf"]) and 4.5 < row["bits_per_weight"] < 6
    assert not _hidden_temp(out)

    # a re-run skips every complete output and writes nothing
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix == ".gguf"}
    rc, rep = _run_cli(capsys, tree, "-o", out, "-t", "Q4_K_M", "-t", "Q8_0")
    assert rc == 1 and rep["counts"] == {"done": 0, "skipped": 6, "failed": 2, "interrupted": 0}
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix == ".gguf"} == mtimes

    # redone: a changed source, a deleted output, a file changed behind our back; a stale temp file goes
    cfg = tree / "alpha" / "config.json"
    os.utime(cfg, ns=(cfg.stat().st_atime_ns, cfg.stat().st_mtime_ns + 10**9))
    (out / "beta-Q8_0.gguf").unlink()
    with open(out / "gamma-link-Q8_0.gguf", "ab") as f:
        f.write(b"\0" * 32)
    (out / ".beta-Q4_K_M.gguf.kquant-tmp-999999-deadbeef").write_bytes(b"partial")
    rc, rep = _run_cli(capsys, tree, "-o", out, "-t", "Q4_K_M", "-t", "Q8_0")
    st = _statuses(rep)
    redone = {k for k, v in st.items() if v == "done"}
    assert redone == {("alpha", "Q4_K_M"), ("alpha", "Q8_0"), ("beta", "Q8_0"), ("gamma-link", "Q8_0")}
    why = {(o["model"], o["type"]): o["redone_because"] for o in rep["outputs"]}
    assert why[("alpha", "Q8_0")] == "source, imatrix or options changed"
    assert why[("gamma-link", "Q8_0")] == "file changed since it was written"
    assert why[("beta", "Q8_0")] is None  # simply missing
    assert not _hidden_temp(out)
    for name, data in reference.items():
        assert (out / name).read_bytes() == data, name

    # an output not in the manifest (e.g. written by hand) is verified by redoing it; the table output
    (out / batch.MANIFEST_NAME).write_text("{not json")
    rc = main(["batch", str(tree / "beta"), "-o", str(out), "-t", "Q8_0", "-q"])
    captured = capsys.readouterr()
    assert rc == 0
    assert "beta" in captured.out and "done" in captured.out and "1 written" in captured.out
    rc = main(["batch", str(tree / "beta"), "-o", str(out), "-t", "Q8_0", "-q"])
    assert rc == 0 and "skipped (complete)" in capsys.readouterr().out

    # --force redoes complete outputs
    rep3 = batch.run_batch(tree / "alpha", out, ["Q8_0"], force=True)
    assert [r.status for r in rep3.rows] == ["done"]
    assert (out / "alpha-Q8_0.gguf").read_bytes() == reference["alpha-Q8_0.gguf"]


def _legacy_imatrix(path: Path, names_cols, seed: int) -> Path:
    """A .dat as llama-imatrix's save_imatrix_legacy writes it."""
    rng = np.random.default_rng(seed)
    b = bytearray(struct.pack("<i", len(names_cols)))
    for name, cols in names_cols:
        v = rng.uniform(0.5, 4.0, cols).astype("<f4")
        b += struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", 10, cols) + v.tobytes()
    b += struct.pack("<i", 10) + struct.pack("<i", 8) + b"calib.tx"
    path.write_bytes(bytes(b))
    return path


def test_imatrix_dir(tree, tmp_path, monkeypatch):
    from kquant.plan.imatrix import load_imatrix

    monkeypatch.chdir(tmp_path)  # a relative --imatrix-dir is written as given, like `convert --imatrix`
    root = tmp_path / "root"
    root.mkdir()
    (root / "alpha").symlink_to(tree / "alpha", target_is_directory=True)
    (root / "beta").symlink_to(tree / "beta", target_is_directory=True)
    imdir = tmp_path / "imatrix"
    imdir.mkdir()
    h, f = TINY["hidden"], TINY["ffn"]
    names = [(f"blk.0.{n}.weight", h) for n in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up")]
    names += [("blk.0.ffn_down.weight", f), ("output.weight", h)]
    im = _legacy_imatrix(imdir / "alpha.dat", names, seed=5)  # beta has none: converted without one
    out = tmp_path / "out"
    rep = batch.run_batch(root, out, ["Q4_K_M"], imatrix_dir="imatrix")
    assert [r.status for r in rep.rows] == ["done", "done"]
    ref = tmp_path / "ref.gguf"
    pipeline.convert(root / "alpha", ref, "Q4_K_M", pipeline.Options(imatrix=load_imatrix("imatrix/alpha.dat")))
    assert (out / "alpha-Q4_K_M.gguf").read_bytes() == ref.read_bytes()
    with GGUFFile(out / "alpha-Q4_K_M.gguf") as g:
        assert g.value("quantize.imatrix.file") == "imatrix/alpha.dat"
    with GGUFFile(out / "beta-Q4_K_M.gguf") as g:
        assert g.value("quantize.imatrix.file") is None
    # a new imatrix is a changed input: redone; an unchanged one is skipped
    _legacy_imatrix(im, names, seed=6)
    rep = batch.run_batch(root, out, ["Q4_K_M"], imatrix_dir="imatrix")
    assert [(r.model, r.status) for r in rep.rows] == [("alpha", "done"), ("beta", "skipped")]


# ---------------------------------------------------------------- interrupting and resuming
SLOW_SCRIPT = """
import sys, time
import kquant.pipeline as pl

_encode = pl._encode


def slow_encode(*a, **k):  # top level: spawned --jobs workers run it too
    time.sleep({delay})
    return _encode(*a, **k)


pl._encode = slow_encode

if __name__ == "__main__":
    from kquant.cli import main
    sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("sig,jobs", [(signal.SIGINT, 1), (signal.SIGTERM, 2)], ids=["sigint-jobs1", "sigterm-jobs2"])
def test_interrupt_and_resume(tree, reference, tmp_path, sig, jobs):
    script = tmp_path / "slow_batch.py"
    script.write_text(SLOW_SCRIPT.format(delay=0.05))
    out = tmp_path / "out"
    err_path = tmp_path / "stderr"
    cmd = [sys.executable, str(script), "batch", str(tree), "-o", str(out), "-t", "Q4_K_M", "-t", "Q8_0", "--jobs", str(jobs)]
    with open(err_path, "w") as err:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, cwd=ROOT, preexec_fn=default_sigint)
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT
        while ": wrote " not in err_path.read_text() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert p.poll() is None, err_path.read_text()
        p.send_signal(sig)
        stdout, _ = p.communicate(timeout=SUBPROCESS_TIMEOUT)
    log = err_path.read_text()
    assert p.returncode == 130, log
    assert "interrupted" in stdout.decode()
    assert "Traceback" not in log
    assert not _hidden_temp(out)
    done = _gguf_names(out)
    assert 0 < len(done) < len(reference)
    for name in done:  # only complete files under final names
        assert (out / name).read_bytes() == reference[name], name
    # the next run finishes the job and skips what was done
    rep = batch.run_batch(tree, out, TYPES)
    assert rep.exit_code == 1 and list(rep.failed) == ["broken"]
    skipped = {Path(r.output).name for r in rep.rows if r.status == "skipped"}
    # the manifest records what the driver saw finish: an output a worker renamed into place just
    # as the signal arrived is not in it and is converted again (same bytes), never trusted unseen
    assert skipped and skipped <= set(done), (skipped, done)
    for name, data in reference.items():
        assert (out / name).read_bytes() == data, name


KILL_SCRIPT = """
import os, signal, sys
import kquant.pipeline as pl

_open, _encode, victim = pl.open_model, pl._encode, []


def open_model(path, config=None):
    victim[:] = [os.path.basename(str(path)) == "beta"]
    return _open(path, config)


def encode(slab, pt, *a, **k):  # a worker killed mid-write (the OOM killer): its temp files stay behind
    if victim and victim[0] and pt.name == "blk.0.attn_q.weight":
        os.kill(os.getpid(), signal.SIGKILL)
    return _encode(slab, pt, *a, **k)


pl.open_model, pl._encode = open_model, encode

if __name__ == "__main__":
    from kquant.cli import main
    sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(batch.cpu_count() < 2, reason="--jobs 2 runs in-process on one core (the kill would hit the driver)")
def test_worker_killed(tree, reference, tmp_path):
    """--jobs 2: worker processes write the same bytes, in a deterministic summary; a killed worker fails only its model."""
    script = tmp_path / "kill_batch.py"
    script.write_text(KILL_SCRIPT)
    out = tmp_path / "out"
    cmd = [sys.executable, str(script), "batch", str(tree), "-o", str(out), "-t", "Q4_K_M", "-t", "Q8_0", "--jobs", "2",
           "--json", "-q"]
    p = subprocess.run(cmd, capture_output=True, cwd=ROOT, timeout=SUBPROCESS_TIMEOUT)
    assert p.returncode == 1, p.stderr.decode()
    rep = json.loads(p.stdout)
    assert rep["jobs"] == 2 and rep["threads_per_job"] == 1
    assert [(o["model"], o["type"]) for o in rep["outputs"]] == [(m, t) for m in sorted(GOOD + ["broken"]) for t in TYPES]
    assert sorted(f["model"] for f in rep["failed_models"]) == ["beta", "broken"]
    assert "worker process died (signal 9" in {f["model"]: f["error"] for f in rep["failed_models"]}["beta"]
    assert not _hidden_temp(out)
    assert _gguf_names(out) == sorted(n for n in reference if not n.startswith("beta"))
    for name in _gguf_names(out):
        assert (out / name).read_bytes() == reference[name], name


# ---------------------------------------------------------------- Ray
def test_probe_worker(tmp_path):
    (tmp_path / "tok").write_bytes(b"")
    assert batch.probe_worker(str(tmp_path), "tok", [str(tmp_path)])["problems"] == []
    p = batch.probe_worker(str(tmp_path), "other-token", [str(tmp_path / "nope")])["problems"]
    assert "shared filesystem" in p[0] and "not visible" in p[1]
    assert "does not exist" in batch.probe_worker(str(tmp_path / "gone"), "tok", [])["problems"][0]


def test_batch_ray(tree, reference, tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "out"
    rep = batch.run_batch(tree, out, TYPES, executor="ray", ray_num_cpus=2)
    assert rep.executor == "ray" and rep.exit_code == 1 and list(rep.failed) == ["broken"]
    assert "past the" in rep.failed["broken"]
    assert {(r.model, r.status) for r in rep.rows} == {(m, "done") for m in GOOD} | {("broken", "failed")}
    assert _gguf_names(out) == sorted(reference)
    for name, data in reference.items():
        assert (out / name).read_bytes() == data, name
    assert not _hidden_temp(out) and not [p for p in out.iterdir() if p.name.startswith(batch.PROBE_PREFIX)]
    # a re-run with nothing left to do skips without starting Ray; the local executor reads the same manifest
    t = time.perf_counter()
    rep = batch.run_batch(tree / "alpha", out, TYPES, executor="ray", ray_num_cpus=2)
    assert [r.status for r in rep.rows] == ["skipped", "skipped"]
    assert time.perf_counter() - t < 5
    rep = batch.run_batch(tree, out, TYPES, executor="local")
    assert rep.count("skipped") == 6 and rep.count("done") == 0
