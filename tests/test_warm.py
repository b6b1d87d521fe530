"""First-run compilation: warm.cold_types / warm.warm on an empty numba cache (fresh processes)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys
import numpy as np
from kquant.ggml import quants, warm
from kquant.types import QType

ts = [QType.Q8_0, QType.F16]
out = {"cold_before": [t.name for t in warm.cold_types(ts)]}
started = []
out["warmed"] = [t.name for t in warm.warm(ts, jobs=int(sys.argv[1]), on_start=started.extend)]
out["started"] = [t.name for t in started]
out["cold_after"] = [t.name for t in warm.cold_types(ts)]
here = [t for t in ts if quants.kernel(t).quantize.overloads]
out["compiled_here"] = [t.name for t in here]
x = np.linspace(-3, 3, 4 * 256, dtype=np.float32).reshape(4, 256)
misses = 0
for t in ts:
    k = quants.kernel(t)
    quants.dequantize(quants.quantize(x, t), t, x.shape)
    if t not in here:
        misses += sum(k.quantize.stats.cache_misses.values()) + sum(k.dequantize.stats.cache_misses.values())
out["misses"] = misses
out["again"] = [t.name for t in warm.warm(ts)]
print(json.dumps(out))
"""


def _run(cache: Path, jobs: int) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-c", CHILD, str(jobs)], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout)


def test_warm_compiles_in_other_processes_then_loads_from_cache(tmp_path):
    r = _run(tmp_path / "cache", jobs=2)
    assert r["cold_before"] == ["Q8_0", "F16"]
    assert r["warmed"] == r["started"] == ["Q8_0", "F16"]
    assert r["cold_after"] == []
    assert r["compiled_here"] == ["Q8_0"]  # the longer family here, the other in a second process ...
    assert r["misses"] == 0  # ... and the first calls here loaded that one from the cache
    assert r["again"] == []
    # a second process finds everything cached: nothing to warm
    r2 = _run(tmp_path / "cache", jobs=2)
    assert r2["cold_before"] == [] and r2["warmed"] == [] and r2["started"] == []


def test_warm_in_process(tmp_path):
    r = _run(tmp_path / "cache", jobs=1)
    assert r["warmed"] == ["Q8_0", "F16"] and r["cold_after"] == [] and r["compiled_here"] == ["Q8_0", "F16"]


def test_convert_on_a_cold_cache_says_it_compiles_once(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))

    def convert(out):
        return subprocess.run([sys.executable, "-m", "kquant.cli", "convert", str(ROOT / "fixtures" / "tiny-llama"),
                               "-o", str(out), "--type", "F16"], env=env, capture_output=True, text=True, timeout=600)

    first = convert(tmp_path / "a.gguf")
    assert first.returncode == 0, first.stderr[-2000:]
    assert re.search(r"^compiling the .*\bf16\b.* kernels \(first run only", first.stderr, re.M)
    second = convert(tmp_path / "b.gguf")
    assert second.returncode == 0 and "compiling" not in second.stderr
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()


def test_warm_quantizers_only(tmp_path):
    """A conversion needs the dequantizers of its sources only: warm(dequant=[]) compiles the
    quantizers, and the types then count as warm for that use, not for one that dequantizes."""
    code = r"""
import json
from kquant.ggml import quants, warm
from kquant.types import QType
t = QType.Q8_0
out = {"warmed": [x.name for x in warm.warm([t], jobs=1, dequant=[])]}
k = quants.kernel(t)
out["q"], out["d"] = warm._is_cached(k.quantize), warm._is_cached(k.dequantize)
out["cold_q"] = [x.name for x in warm.cold_types([t], dequant=[])]
out["cold_qd"] = [x.name for x in warm.cold_types([t])]
print(json.dumps(out))
"""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout)
    assert r == {"warmed": ["Q8_0"], "q": True, "d": False, "cold_q": [], "cold_qd": ["Q8_0"]}


def test_warm_groups_whole_families_balanced():
    """The warm-up's split (no compiling): whole kernel families per process, every type once,
    the longest to this process (which also compiles the checks), Q4_K and Q5_K's shared
    quantizer counted once, one group on one core."""
    from kquant.ggml import warm
    from kquant.types import QType as Q

    types = [Q.IQ1_S, Q.Q2_K, Q.IQ2_XXS, Q.Q5_K, Q.Q4_K, Q.Q6_K]
    g = warm._groups(types, 2)
    assert len(g) == 2 and sorted(t for grp in g for t in grp) == sorted(types)
    assert any({Q.Q4_K, Q.Q5_K} <= set(grp) for grp in g)
    cost = [sum(t.decl.compile_s for t in grp if t != Q.Q5_K) for grp in g]
    assert max(cost) - min(cost) <= max(t.decl.compile_s for t in (Q.IQ1_S, Q.Q2_K, Q.IQ2_XXS, Q.Q4_K, Q.Q6_K))
    assert warm._groups([Q.IQ1_S, Q.Q2_K], 1) == [[Q.IQ1_S, Q.Q2_K]]
    assert warm._groups([Q.Q4_K, Q.Q5_K], 2) == [[Q.Q4_K, Q.Q5_K]]  # one family: one process


def test_warm_compiles_a_rounding_modes_kernels_too(tmp_path):
    """--rounding best/refine: the mode's quantizers are warmed with the rest (in parallel, under the
    same lock as batch workers), not compiled on first use by every worker at once."""
    code = r"""
import json
import numpy as np
from kquant.ggml import quants, warm
from kquant.types import QType
ts = [QType.Q8_0, QType.IQ4_NL]  # two families: one compiled here, one in a second process
modal = quants.mode_registry("refine")
out = {"cold_ggml": [t.name for t in warm.cold_types(ts, dequant=[])]}
warm.warm(ts, jobs=1, dequant=[])  # ggml's kernels only
out["cold_refine"] = [t.name for t in warm.cold_types(ts, dequant=[], rounding="refine")]
out["warmed"] = [t.name for t in warm.warm(ts, jobs=2, dequant=[], rounding="refine")]
out["cold_after"] = [t.name for t in warm.cold_types(ts, dequant=[], rounding="refine")]
elsewhere = [t for t in ts if not modal[t].overloads]
x = np.linspace(-3, 3, 4 * 256, dtype=np.float32).reshape(4, 256)
for t in ts:
    quants.quantize(x, t, rounding="refine")
out["elsewhere"] = [t.name for t in elsewhere]
out["misses"] = sum(sum(modal[t].stats.cache_misses.values()) for t in elsewhere)
print(json.dumps(out))
"""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout)
    assert r["cold_ggml"] == ["Q8_0", "IQ4_NL"]
    assert r["cold_refine"] == ["Q8_0", "IQ4_NL"]  # ggml's kernels cached, the mode's not
    assert r["warmed"] == ["Q8_0", "IQ4_NL"] and r["cold_after"] == []
    assert len(r["elsewhere"]) == 1 and r["misses"] == 0  # compiled by the other process, loaded here


def test_cached_kernel_is_recompiled_when_a_module_it_calls_changes(tmp_path):
    """numba checks a cached function against its own file only; kquant.ggml.kernels stamps every
    kernel's cache with all kernel sources too. better_sym.ggml_block (unchanged) calls q6_k's
    dequantizer: after an edit to q6_k.py only, its cached code must not be loaded."""
    import shutil

    pkg = tmp_path / "src"
    shutil.copytree(ROOT / "kquant", pkg / "kquant", ignore=shutil.ignore_patterns("__pycache__"))
    code = r"""
import json, sys
import numpy as np
from kquant.ggml.kernels import better_sym
assert better_sym.__file__.startswith(sys.argv[1]), better_sym.__file__
better_sym.ggml_block(np.zeros(210, np.uint8), np.zeros(256, np.float32), np.zeros(16, np.int32), True)
s = better_sym.ggml_block.stats
print(json.dumps([sum(s.cache_hits.values()), sum(s.cache_misses.values())]))
"""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(pkg))

    def hits_misses():
        p = subprocess.run([sys.executable, "-c", code, str(pkg)], env=env, cwd=tmp_path, capture_output=True,
                           text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-2000:]
        return json.loads(p.stdout)

    assert hits_misses() == [0, 1]  # compiled, then cached
    assert hits_misses() == [1, 0]
    (pkg / "kquant" / "cli.py").write_text((pkg / "kquant" / "cli.py").read_text() + "\n# not a kernel\n")
    assert hits_misses() == [1, 0]  # other modules do not touch the kernels' caches
    q6 = pkg / "kquant" / "ggml" / "kernels" / "q6_k.py"
    q6.write_text(q6.read_text() + "\n# edited\n")
    assert hits_misses() == [0, 1]  # recompiled: its callee's module changed


def test_a_types_refine_kernel_compiles_only_its_own_path(tmp_path):
    """refine_legacy's per-type dispatcher is inlined with the kind a constant (kernels/__init__.py: kind
    dispatch): compiling Q8_0's refine kernel, with and without weights, compiles none of the other
    legacy types' paths or quantizers (each specialized per kind: numba typing them was most of the
    compile time). Checked with numba's compile events, in a process on an empty cache."""
    code = r"""
import json
import numpy as np
from numba.core import event
from kquant.ggml import quants
from kquant.types import QType
x = np.linspace(-3, 3, 2 * 64, dtype=np.float32).reshape(2, 64)
with event.install_recorder("numba:compile") as rec:
    for w in (None, np.ones(64, np.float32)):
        quants.quantize(x, QType.Q8_0, imatrix=w, rounding="refine")
print(json.dumps(sorted({e.data["dispatcher"].py_func.__name__ for _, e in rec.buffer if e.is_start})))
"""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    compiled = set(json.loads(p.stdout))
    assert {"quantize_q8_0_refine", "_refine_one", "quantize_q8_0"} <= compiled, compiled
    others = {"_refine_affine", "_refine_weighted", "quantize_q4_0", "quantize_q4_1", "quantize_q5_0", "quantize_q5_1"}
    assert not compiled & others, compiled & others
