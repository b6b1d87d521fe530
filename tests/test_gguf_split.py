"""Split GGUF output and input (kquant/io/gguf_split.py) against llama.cpp's llama-gguf-split.

Output: `convert --split-max-size / --split-max-tensors` must give, shard for shard and byte for
byte, what `llama-gguf-split --split` makes of kquant's single-file output (which
test_convert_reference.py proves identical to llama.cpp's), and llama.cpp must load the first
shard. The reference binary is built by scripts/build_gguf_split.sh (run by setup_refconv.sh);
tests needing it skip without it. Input: a split set read by its first shard gives the results of
the single file; malformed sets are refused in one line. Interrupted or failed writes leave no
shard under a final name.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFValueType

from kquant import pipeline
from kquant.errors import InputError, OutputError
from kquant.io import fsutil
from kquant.io.gguf import GGUFFile, GGUFStreamWriter
from kquant.io.gguf_split import (SplitOptions, open_gguf, parse_split_size, plan_shards, shard_path, split_kv)
from kquant.types import QType
from proc import signal_mid_convert

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "fixtures" / "tiny-llama"
REFCONV_DIR = Path(os.environ.get("KQUANT_REFCONV_DIR", Path.home() / ".cache" / "kquant" / "refconv"))
SHARD = re.compile(r"-\d{5}-of-\d{5}\.gguf$")


def gguf_split_bin() -> str | None:
    p = os.environ.get("KQUANT_GGUF_SPLIT") or str(REFCONV_DIR / "bin" / "llama-gguf-split")
    return p if os.access(p, os.X_OK) else None


needs_ref = pytest.mark.skipif(gguf_split_bin() is None,
                               reason="llama-gguf-split not built (scripts/build_gguf_split.sh, run by setup_refconv.sh)")


def kq(*args, **kw):
    e = dict(os.environ)
    e.pop("KQUANT_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "kquant.cli", *map(str, args)], capture_output=True, text=True, env=e,
                          timeout=300, **kw)


def one_line_error(r, *needles):
    assert r.returncode != 0, r.stdout
    lines = [ln for ln in r.stderr.splitlines()  # the cold-cache compile notice aside (as test_cli_hardening)
             if ln.strip() and not ln.startswith("compiling the ")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def shards_in(d: Path, prefix: str) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.name.startswith(prefix + "-") and SHARD.search(p.name))


def no_temp_files(d: Path) -> bool:
    return not [p for p in d.iterdir() if fsutil.TMP_MARK in p.name]


# ---------------------------------------------------------------- units
@pytest.mark.parametrize("text, n", [("500M", 500_000_000), ("2G", 2_000_000_000), ("1M", 1_000_000)])
def test_parse_split_size(text, n):
    assert parse_split_size(text) == n


@pytest.mark.parametrize("text", ["500", "1.5G", "0M", "-1M", "2K", "G", "2g", ""])
def test_parse_split_size_refused(text):
    with pytest.raises(InputError):
        parse_split_size(text)


def test_plan_shards_table():
    # sizes padded to 32 and summed; a shard closes before the tensor that would pass the limit
    t = [("a", 100), ("b", 100), ("c", 30), ("d", 300), ("e", 1)]  # padded: 128 128 32 320 32
    assert plan_shards(t, SplitOptions(max_bytes=288)) == [3, 1, 1]
    assert plan_shards(t, SplitOptions(max_bytes=256)) == [2, 1, 1, 1]
    assert plan_shards(t, SplitOptions(max_tensors=2)) == [2, 2, 1]
    assert plan_shards(t, SplitOptions(max_tensors=5)) == [5]
    assert plan_shards(t, SplitOptions(max_tensors=1)) == [1] * 5
    assert plan_shards([], SplitOptions(max_tensors=1)) == [0]
    with pytest.raises(OutputError, match="alone"):  # gguf-split: "one of splits have 0 tensors"
        plan_shards(t, SplitOptions(max_bytes=100))
    with pytest.raises(InputError, match="not both"):
        SplitOptions(1, 1)


def test_split_writer_refuses_another_alignment(tmp_path):
    from kquant.errors import UnsupportedError
    from kquant.io.gguf_split import SplitWriter

    w = SplitWriter(tmp_path / "o.gguf", SplitOptions(max_tensors=1), lambda paths: fsutil.AtomicFileSet(paths))
    w.add_kv("general.alignment", GGUFValueType.UINT32, 64)
    w.add_tensor("a", (2, 32), QType.F32)
    with pytest.raises(UnsupportedError, match="general.alignment is 64"):
        w.write_header()
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- output against llama-gguf-split
@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """kquant's single-file Q4_K_M and BF16 outputs of the tiny model."""
    d = tmp_path_factory.mktemp("single")
    pipeline.convert_many(TINY, [(d / "Q4_K_M.gguf", "Q4_K_M"), (d / "BF16.gguf", "BF16")])
    return d


def ref_split(src: Path, out_prefix: Path, args) -> subprocess.CompletedProcess:
    return subprocess.run([gguf_split_bin(), "--split", *args, str(src), str(out_prefix)], capture_output=True,
                          text=True, timeout=120)


# 1M: the first shard holds all it can, then one shard; 300M: one shard (-00001-of-00001);
# tensors 5 / 1 / 21 (= all) / 100.
SPLITS = [("--split-max-size", "1M"), ("--split-max-size", "300M"), ("--split-max-tensors", "5"),
          ("--split-max-tensors", "1"), ("--split-max-tensors", "21"), ("--split-max-tensors", "100")]


@needs_ref
@pytest.mark.parametrize("flag, value", SPLITS)
def test_shards_identical_to_llama_gguf_split(single, flag, value, tmp_path):
    ref = ref_split(single / "Q4_K_M.gguf", tmp_path / "ref", [flag, value])
    assert ref.returncode == 0, ref.stderr
    r = kq("convert", TINY, "-o", tmp_path / "ours.gguf", "-t", "Q4_K_M", flag, value, "-q")
    assert r.returncode == 0, r.stderr
    theirs, ours = shards_in(tmp_path, "ref"), shards_in(tmp_path, "ours")
    assert [p.name[3:] for p in theirs] == [p.name[4:] for p in ours] and ours
    for a, b in zip(theirs, ours):
        assert a.read_bytes() == b.read_bytes(), b.name
    assert not (tmp_path / "ours.gguf").exists() and no_temp_files(tmp_path)
    # --dry-run announces the same cut
    import json

    r = kq("convert", TINY, "-t", "Q4_K_M", flag, value, "--dry-run", "--json")
    counts = []
    for p in theirs:
        with GGUFFile(p) as g:
            counts.append(len(g.tensors))
    assert json.loads(r.stdout)["split_tensors_per_shard"] == counts


@needs_ref
def test_first_tensor_above_the_limit_refused_like_gguf_split(tmp_path):
    """A first tensor larger than --split-max-size: gguf-split stops ("one of splits have 0
    tensors"), so does kquant, before writing anything."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from make_tiny_model import make

    m = make(tmp_path / "m", layers=1, hidden=512, heads=8, kv_heads=2, ffn=512, vocab=2048, seed=4)
    pipeline.convert(m, tmp_path / "one.gguf", "BF16")
    with GGUFFile(tmp_path / "one.gguf") as g:
        assert g.tensors[0].nbytes > 1_000_000
    assert ref_split(tmp_path / "one.gguf", tmp_path / "ref", ["--split-max-size", "1M"]).returncode != 0
    r = kq("convert", m, "-o", tmp_path / "o.gguf", "-t", "BF16", "--split-max-size", "1M")
    one_line_error(r, "alone", g.tensors[0].name)
    assert not shards_in(tmp_path, "o") and no_temp_files(tmp_path)


@needs_ref
def test_batch_and_several_types_split_like_gguf_split(single, tmp_path):
    """convert_many: each target is cut from its own single file (BF16 here: other sizes, other cuts)."""
    opts = pipeline.Options(split=SplitOptions(max_bytes=2_000_000))
    pipeline.convert_many(TINY, [(tmp_path / "q.gguf", "Q4_K_M"), (tmp_path / "b.gguf", "BF16")], opts)
    for name, ft in (("q", "Q4_K_M"), ("b", "BF16")):
        assert ref_split(single / f"{ft}.gguf", tmp_path / f"ref{name}", ["--split-max-size", "2M"]).returncode == 0
        theirs, ours = shards_in(tmp_path, f"ref{name}"), shards_in(tmp_path, name)
        assert len(theirs) == len(ours) >= 1
        assert all(a.read_bytes() == b.read_bytes() for a, b in zip(theirs, ours))


def test_llama_cpp_loads_the_first_shard(single, tmp_path):
    from oracle import refpipeline

    pipeline.convert(TINY, tmp_path / "s.gguf", "Q4_K_M", pipeline.Options(split=SplitOptions(max_tensors=4)))
    shards = shards_in(tmp_path, "s")
    assert len(shards) == 6
    toks, split_logits = refpipeline.eval_logits(shards[0])
    toks1, one_logits = refpipeline.eval_logits(single / "Q4_K_M.gguf")
    assert toks == toks1 and len(toks) > 5 and np.isfinite(split_logits).all()
    assert np.array_equal(split_logits, one_logits)


# ---------------------------------------------------------------- atomicity
def test_existing_and_partial_sets_refused(single, tmp_path):
    out = tmp_path / "o.gguf"
    split = ["--split-max-tensors", "8"]
    r = kq("convert", TINY, "-o", out, "-t", "Q4_K_M", *split, "-q")
    assert r.returncode == 0, r.stderr
    shards = shards_in(tmp_path, "o")
    assert len(shards) == 3
    before = [p.read_bytes() for p in shards]
    one_line_error(kq("convert", TINY, "-o", out, "-t", "Q4_K_M", *split, "-q"), "already exists", "--force")
    assert [p.read_bytes() for p in shards] == before
    # what a crash between the final renames can leave: every shard but the first (renamed last)
    shards[0].unlink()
    one_line_error(kq("convert", TINY, "-o", out, "-t", "Q4_K_M", *split, "-q"), "incomplete split set", "--force")
    one_line_error(kq("inspect", shards[1]), "shard 2 of 3", "first shard")
    # --force replaces it, and a different cut removes the other count's shards
    r = kq("convert", TINY, "-o", out, "-t", "Q4_K_M", "--split-max-tensors", "11", "-q", "--force")
    assert r.returncode == 0, r.stderr
    assert [p.name for p in shards_in(tmp_path, "o")] == ["o-00001-of-00002.gguf", "o-00002-of-00002.gguf"]
    one_line_error(kq("convert", TINY, "-o", tmp_path / "o-00001-of-00002.gguf", "-t", "Q4_K_M", *split, "-q"),
                   "without a shard suffix")
    one_line_error(kq("convert", TINY, "-o", out, "--split-max-size", "1M", "--split-max-tensors", "3"), "not both")
    assert no_temp_files(tmp_path)


def test_failure_during_commit_removes_every_shard(tmp_path, monkeypatch):
    """A rename failing half-way through the commit: the shards already renamed are removed too."""
    calls = []
    real = os.replace

    def flaky(a, b):
        if not SHARD.search(os.fspath(b)):  # numba's cache uses os.replace too
            return real(a, b)
        calls.append(Path(b))
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(a, b)

    monkeypatch.setattr(fsutil.os, "replace", flaky)
    with pytest.raises(OutputError, match="disk full"):
        pipeline.convert(TINY, tmp_path / "o.gguf", "Q8_0", pipeline.Options(split=SplitOptions(max_tensors=7)))
    assert calls[0].name == "o-00003-of-00003.gguf"  # last shard first, the first shard last
    assert list(tmp_path.iterdir()) == []


def test_error_mid_stream_removes_every_shard(tmp_path, monkeypatch):
    n = {"i": 0}
    real = pipeline._encode

    def boom(slab, pt, row0, *rest):
        n["i"] += 1
        if n["i"] == 12:  # several shards already written and closed
            raise KeyboardInterrupt
        return real(slab, pt, row0, *rest)

    monkeypatch.setattr(pipeline, "_encode", boom)
    with pytest.raises(KeyboardInterrupt):
        pipeline.convert(TINY, tmp_path / "o.gguf", "Q8_0", pipeline.Options(split=SplitOptions(max_tensors=2)))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_split_write_leaves_no_shard(tmp_path, sig):
    # wait until a later shard is being written: earlier ones are complete, still under temp names
    signal_mid_convert(tmp_path, sig, lambda d: any("-00003-of-" in x.name and fsutil.TMP_MARK in x.name
                                                    for x in d.iterdir()), "--split-max-tensors", "3")
    assert not shards_in(tmp_path, "o") and no_temp_files(tmp_path)


# ---------------------------------------------------------------- input
@pytest.fixture(scope="module")
def split_bf16(single, tmp_path_factory):
    d = tmp_path_factory.mktemp("splitin")
    pipeline.convert(TINY, d / "bf16.gguf", "BF16", pipeline.Options(split=SplitOptions(max_tensors=6)))
    return shards_in(d, "bf16")


def test_convert_from_split_input_equals_single(single, split_bf16, tmp_path):
    pipeline.convert(single / "BF16.gguf", tmp_path / "a.gguf", "Q4_K_M")
    pipeline.convert(split_bf16[0], tmp_path / "b.gguf", "Q4_K_M")
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()
    with GGUFFile(tmp_path / "b.gguf") as g:
        assert not [k for k in g.metadata if k.startswith("split.")]  # llama-quantize drops them too


def test_validate_inspect_dequantize_split_equal_single(single, tmp_path):
    import json

    pipeline.convert(TINY, tmp_path / "s.gguf", "Q4_K_M", pipeline.Options(split=SplitOptions(max_tensors=5)))
    first = shards_in(tmp_path, "s")[0]
    one = single / "Q4_K_M.gguf"
    va, vb = (kq("validate", f, "--source", TINY, "--json", "-q") for f in (first, one))
    assert va.returncode == 0 and vb.returncode == 0, va.stderr + vb.stderr
    a, b = json.loads(va.stdout), json.loads(vb.stdout)
    assert a["tensors"] == b["tensors"] and a["summary"] == b["summary"]
    ia, ib = (json.loads(kq("inspect", f, "--json").stdout) for f in (first, one))
    assert [{k: v for k, v in t.items() if k not in ("offset", "shard")} for t in ia["tensors"]] == \
           [{k: v for k, v in t.items() if k != "offset"} for t in ib["tensors"]]
    assert ia["summary"] == ib["summary"] and len(ia["shards"]) == 5
    assert {k: v for k, v in ia["metadata"].items() if not k.startswith("split.")} == ib["metadata"]
    for f, o in ((first, "a.safetensors"), (one, "b.safetensors")):
        r = kq("dequantize", f, "-o", tmp_path / o, "-q")
        assert r.returncode == 0, r.stderr
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


@needs_ref
def test_validate_split_equals_llama_merge(tmp_path):
    import json

    pipeline.convert(TINY, tmp_path / "s.gguf", "Q6_K", pipeline.Options(split=SplitOptions(max_bytes=1_000_000)))
    first = shards_in(tmp_path, "s")[0]
    r = subprocess.run([gguf_split_bin(), "--merge", str(first), str(tmp_path / "merged.gguf")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    a, b = (json.loads(kq("validate", f, "--source", TINY, "--json", "-q").stdout)
            for f in (first, tmp_path / "merged.gguf"))
    assert a["tensors"] == b["tensors"] and a["summary"] == b["summary"]
    # a merged file (split.count 0) is one file again
    with open_gguf(tmp_path / "merged.gguf") as g:
        assert isinstance(g, GGUFFile)


# ---------------------------------------------------------------- malformed sets
def write_set(d: Path, prefix: str, shards, n_total=None, count=None, names=None):
    """Shards of F32 tensors with split.* keys; `shards` = tensor names per shard. Per-shard
    overrides: count[i] (split.count), names[i] (file name)."""
    n = len(shards)
    total = sum(len(s) for s in shards) if n_total is None else n_total
    paths = []
    for i, tensors in enumerate(shards):
        p = d / (names[i] if names else shard_path(d / prefix, i, n).name)
        with GGUFStreamWriter(p) as w:
            if i == 0:
                w.add_kv("general.architecture", GGUFValueType.STRING, "llama")
            for key, vt, v in split_kv(i, n, total):
                w.add_kv(key, vt, count[i] if (count and key == "split.count") else v)
            for t in tensors:
                w.add_tensor(t, (2, 32), QType.F32)
            w.write_header()
            for t in tensors:
                w.write_data(t, np.zeros((2, 32), np.float32))
            w.finish()
        paths.append(p)
    return paths


def test_well_formed_set_reads(tmp_path):
    p = write_set(tmp_path, "m", [["a", "b"], ["c"], ["d"]])
    with open_gguf(p[0]) as g:
        assert [t.name for t in g.tensors] == ["a", "b", "c", "d"]
        assert g.data("d").nbytes == 256 and g.file_size == sum(x.stat().st_size for x in p)


@pytest.mark.parametrize("case, needle", [
    ("missing", "shard 2 of 3"),
    ("count", "split.count is 4"),
    ("tensors_count", "split.tensors.count says 5"),
    ("duplicate", "tensor b is also in shard 1"),
    ("order", "split.no is 2, expected 1"),
    ("name", "does not end in -00001-of-00003.gguf"),
])
def test_malformed_set_one_line_error(tmp_path, case, needle):
    shards = [["a", "b"], ["c"], ["d"]]
    if case == "missing":
        write_set(tmp_path, "m", shards)[1].unlink()
    elif case == "count":
        write_set(tmp_path, "m", shards, count=[3, 3, 4])
    elif case == "tensors_count":
        write_set(tmp_path, "m", shards, n_total=5)
    elif case == "duplicate":
        write_set(tmp_path, "m", [["a", "b"], ["b"], ["d"]], n_total=4)
    elif case == "order":
        p = write_set(tmp_path, "m", shards)
        tmp = p[1].with_name("x")
        p[1].rename(tmp)
        p[2].rename(p[1])
        tmp.rename(p[2])
    elif case == "name":
        write_set(tmp_path, "m", shards, names=["m.gguf", "m-00002-of-00003.gguf", "m-00003-of-00003.gguf"])
    first = tmp_path / ("m.gguf" if case == "name" else "m-00001-of-00003.gguf")
    with pytest.raises(InputError, match=re.escape(needle)):
        open_gguf(first).close()
    cmds = [["inspect", first]]
    if case == "missing":  # every reader goes through the same check (one case is enough for the others)
        cmds += [["validate", first, "--source", TINY], ["dequantize", first, "-o", tmp_path / "x.safetensors"],
                 ["convert", first, "-o", tmp_path / "y.gguf"]]
    for cmd in cmds:
        one_line_error(kq(*cmd), needle)
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "y.gguf").exists()


# ---------------------------------------------------------------- batch
def test_batch_resumes_a_split_output_as_one_unit(tmp_path):
    from kquant.batch import run_batch

    root = tmp_path / "root"
    shutil.copytree(TINY, root / "tiny")
    out = tmp_path / "out"
    split = SplitOptions(max_tensors=8)
    rep = run_batch(root, out, ["Q8_0"], split=split)
    assert rep.exit_code == 0 and rep.count("done") == 1
    shards = shards_in(out, "tiny-Q8_0")
    assert [p.name for p in shards] == [f"tiny-Q8_0-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    assert rep.rows[0].output == str(shards[0])
    single = tmp_path / "single.gguf"
    pipeline.convert(TINY, single, "Q8_0")
    with open_gguf(shards[0]) as g, GGUFFile(single) as s:
        assert [(t.name, bytes(g.data(t.name))) for t in g.tensors] == [(t.name, bytes(s.data(t.name))) for t in s.tensors]
    # complete: skipped as a whole
    rep = run_batch(root, out, ["Q8_0"], split=split)
    assert rep.count("skipped") == 1 and rep.count("done") == 0
    # one shard gone (or a partial set from a crash): the whole output is redone
    shards[1].unlink()
    rep = run_batch(root, out, ["Q8_0"], split=split)
    assert rep.count("done") == 1 and rep.rows[0].note
    assert [p.name for p in shards_in(out, "tiny-Q8_0")] == [p.name for p in shards]
    # another cut: redone, the old shards removed
    rep = run_batch(root, out, ["Q8_0"], split=SplitOptions(max_tensors=11))
    assert rep.count("done") == 1
    assert [p.name for p in shards_in(out, "tiny-Q8_0")] == ["tiny-Q8_0-00001-of-00002.gguf", "tiny-Q8_0-00002-of-00002.gguf"]
    assert no_temp_files(out)


def test_target_size_with_split_is_refused(tmp_path):
    """--target-size budgets one file; shards add headers: refused in one line before measuring."""
    r = kq("convert", TINY, "-o", tmp_path / "o.gguf", "--target-size", "10MB", "--split-max-tensors", "5")
    one_line_error(r, "--target-size", "--split-max")
    assert not list(tmp_path.iterdir())
