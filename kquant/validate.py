"""Round-trip error of a GGUF file against its source checkpoint, what-if tables, and the error plot.

`validate_file` dequantizes every tensor of a GGUF file (written by kquant or by llama.cpp's
convert_hf_to_gguf.py + llama-quantize) and compares it, slab by slab, with the source tensor
brought into GGUF layout by the same transforms the converter applies (kquant.models: name map,
Q/K row permutation, expert stacking, norm shift, ...): the error metrics do not depend on which
side's layout they are computed in. `what_if` quantizes each source tensor to several types in
memory, without writing anything. The GGUF file is read with kquant.io.gguf.GGUFFile (every
field validated before use), never with gguf-py's reader; tensors of ggml types kquant has no
kernels for are dequantized with gguf-py's numpy dequantizers (gguf.quants) from those bytes.

Metrics per tensor are kquant.metrics' (float64 sums). The summary over tensors is
parameter-weighted: rmse and max_abs pool every weight; rel_rmse is the root of the
parameter-weighted mean of the per-tensor rel_rmse^2 (each tensor normalised by its own RMS, then
pooled), snr_db = -20 log10(that rel_rmse), cosine is the parameter-weighted mean cosine.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from .ggml import quants, warm
from .errors import InputError, UnsupportedError
from .metrics import ErrorStats, Metrics
from .types import QType, parse_qtype

WORST_N = 5  # worst tensors listed in the summary
SLAB_BYTES = 32 << 20  # float32 bytes of dequantized rows handled at once
METRIC_KEYS = ("rmse", "max_abs", "rel_rmse", "snr_db", "cosine")
CSV_COLUMNS = ("name", "type", "shape", "n", "bits_per_weight") + METRIC_KEYS
BLOCK_RE = re.compile(r"^blk\.(\d+)\.(.+?)(\.weight|\.bias)?$")
GGUF_ARCH_KEY = "general.architecture"
PLOT_INSTALL_HINT = "pip install 'kquant[plot]' (or pip install matplotlib)"
PLOT_CMAP = "YlOrRd"  # light = small error, dark red = large
PLOT_MISSING = "#d9d9d9"  # cells without a tensor
PLOT_ANNOTATE_LAYERS = 24  # cells carry their label up to this many layers
PLOT_MAX_WIDTH = 24.0  # inches
PLOT_DPI = 110


# ====================================================================== helpers
def _num(v):
    """A float for JSON: non-finite values as the strings 'inf', '-inf', 'nan' (float() reads them)."""
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def _safe(name: str) -> str:
    """A name from a file, printable on one line (repr when it holds control characters)."""
    return name if name.isprintable() else repr(name)


def _rows_cols(shape) -> tuple[int, int]:
    """(rows, columns) of a numpy-order shape: the last axis is the row."""
    cols = int(shape[-1]) if len(shape) else 1
    rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    return rows, cols


def _ggml_dims(shape) -> tuple[int, ...]:
    """A numpy-order shape without leading axes of size 1 (what ggml_n_dims keeps)."""
    s = tuple(int(d) for d in shape)
    while len(s) > 1 and s[0] == 1:
        s = s[1:]
    return s


def layer_and_kind(name: str) -> tuple[int | None, str]:
    """(block index or None, tensor kind) of a GGUF name: 'blk.3.attn_q.weight' -> (3, 'attn_q')."""
    m = BLOCK_RE.match(name)
    if m:
        kind = m.group(2) + (".bias" if m.group(3) == ".bias" else "")
        return int(m.group(1)), kind
    base = name[: -len(".weight")] if name.endswith(".weight") else name
    return None, base


def type_name(qtype) -> str:
    """ggml's printed name of a type (QType or gguf-py GGMLQuantizationType)."""
    if isinstance(qtype, QType):
        return qtype.ggml_name
    n = qtype.name.lower()
    return n[:-2] + "_K" if n.endswith("_k") else n


def _has_kernels(qtype) -> bool:
    if not isinstance(qtype, QType):
        return False
    try:
        quants.kernel(qtype)
    except NotImplementedError:
        return False
    return True


class TensorRows:
    """Dequantized rows of one GGUF tensor, read from the validated file (kquant kernels first)."""

    def __init__(self, gf, ti):
        self.gf = gf
        self.ti = ti
        self.rows, self.cols = _rows_cols(ti.shape) if ti.shape else (1, 1)
        self.row_bytes = ti.nbytes // max(self.rows, 1)
        self.kernels = _has_kernels(ti.qtype)
        if not self.kernels:  # gguf-py's numpy dequantizer, on bytes GGUFFile has bounds-checked
            from gguf import GGMLQuantizationType
            from gguf.quants import dequantize as _gq

            self._gq = _gq
            self._gt = GGMLQuantizationType(int(ti.qtype))
            try:  # probe one row: NotImplementedError for a type gguf-py cannot decode either
                if self.rows and self.cols:
                    self._gq(np.array(gf.read_bytes(ti.name, 0, self.row_bytes)).reshape(1, -1), self._gt)
            except NotImplementedError:
                raise UnsupportedError(
                    f"tensor {ti.name}: no dequantizer for ggml type {type_name(ti.qtype)} (id {int(ti.qtype)})"
                ) from None

    @property
    def dequantizer(self) -> str:
        return "kquant" if self.kernels else "gguf-py"

    def _decode(self, q: np.ndarray, n: int) -> np.ndarray:
        # q: uint8 (n, row_bytes) -> float32 (n, cols)
        if self.kernels:
            return quants.dequantize(q, self.ti.qtype, (n, self.cols))
        out = self._gq(np.ascontiguousarray(q).reshape(n, self.row_bytes), self._gt)
        return np.ascontiguousarray(out, dtype=np.float32).reshape(n, self.cols)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as float32 (stop - start, cols)."""
        return self._decode(self.gf.read_bytes(self.ti.name, start * self.row_bytes, stop * self.row_bytes), stop - start)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The given rows (any order) as float32 (len(rows), cols)."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return self._decode(np.zeros((0, self.row_bytes), np.uint8), 0)
        lo, hi = int(rows.min()), int(rows.max()) + 1  # the covering row range, then the gather
        q = self.gf.read_bytes(self.ti.name, lo * self.row_bytes, hi * self.row_bytes).reshape(hi - lo, self.row_bytes)
        return self._decode(q[rows - lo], len(rows))

    def slabs(self, slab_bytes: int = SLAB_BYTES):
        """Yield (row_start, float32 rows) over the whole tensor."""
        step = max(1, slab_bytes // max(self.cols * 4, 1))
        for a in range(0, self.rows, step):
            b = min(self.rows, a + step)
            yield a, self.read(a, b)


# ====================================================================== results
@dataclass
class TensorError:
    """The error of one tensor (shape in numpy order; JSON shows it in ggml order)."""

    name: str
    type: str
    shape: tuple
    bits_per_weight: float
    metrics: Metrics
    dequantizer: str = "kquant"

    def as_dict(self) -> dict:
        layer, kind = layer_and_kind(self.name)
        d = {"name": self.name, "type": self.type, "shape": list(reversed(self.shape)), "layer": layer, "kind": kind,
             "bits_per_weight": round(self.bits_per_weight, 4)}
        d.update({k: _num(v) for k, v in self.metrics.as_dict().items()})
        if self.dequantizer != "kquant":
            d["dequantizer"] = self.dequantizer
        return d


def summarize(items: list[tuple[Metrics, float]], stats: ErrorStats | None = None) -> dict:
    """Parameter-weighted summary of (metrics, bits_per_weight) pairs (module docstring)."""
    n = sum(m.n for m, _ in items)
    if not items or n == 0:
        return {"n": 0, "rmse": 0.0, "max_abs": 0.0, "rel_rmse": 0.0, "snr_db": math.inf, "cosine": 1.0,
                "bits_per_weight": 0.0}
    if stats is not None:
        rmse, max_abs = math.sqrt(stats.se / max(stats.n, 1)), stats.mx
    else:
        rmse = math.sqrt(sum(m.rmse**2 * m.n for m, _ in items) / n)
        max_abs = max(m.max_abs for m, _ in items)
    rel2 = sum(m.rel_rmse**2 * m.n for m, _ in items) / n
    rel = math.sqrt(rel2)
    snr = math.inf if rel2 == 0 else (-10.0 * math.log10(rel2) if math.isfinite(rel2) else -math.inf)
    cos = sum(m.cosine * m.n for m, _ in items) / n
    bpw = sum(b * m.n for m, b in items) / n
    return {"n": n, "rmse": rmse, "max_abs": max_abs, "rel_rmse": rel, "snr_db": snr, "cosine": cos,
            "bits_per_weight": bpw}


@dataclass
class Report:
    """`kquant validate FILE --source MODEL`: per-tensor errors in file order, and the summary."""

    file: str
    source: str
    tensors: list[TensorError]
    summary: dict
    unmatched: list[str] = field(default_factory=list)  # in the file, not derivable from the source
    missing: list[str] = field(default_factory=list)  # expected from the source, not in the file
    seconds: float = 0.0

    def worst(self, n: int = WORST_N) -> list[TensorError]:
        return sorted(self.tensors, key=lambda t: -t.metrics.rel_rmse)[:n]

    def over(self, threshold: float) -> list[TensorError]:
        """Tensors whose rel_rmse exceeds `threshold` (NaN counts as exceeding)."""
        return [t for t in self.tensors if not t.metrics.rel_rmse <= threshold]

    def as_json(self) -> dict:
        s = {k: _num(v) for k, v in self.summary.items()}
        s["bits_per_weight"] = round(self.summary["bits_per_weight"], 4)
        s["n_tensors"] = len(self.tensors)
        s["worst"] = [{"name": t.name, "type": t.type, "rel_rmse": _num(t.metrics.rel_rmse)} for t in self.worst()]
        return {"file": self.file, "source": self.source, "tensors": [t.as_dict() for t in self.tensors],
                "summary": s, "unmatched": self.unmatched, "missing": self.missing, "seconds": round(self.seconds, 3)}


# ====================================================================== validate
def _source_rows(ckpt, ts):
    from .pipeline import iter_source_slabs

    return iter_source_slabs(ckpt, ts)


def validate_file(gguf_path, source, *, config=None, progress=None) -> Report:
    """Dequantize every tensor of `gguf_path` and compare it with `source` (HF folder / safetensors).

    `progress(i, n, TensorError)` is called after each tensor. Memory: one source slab and its
    dequantized copy at a time (plus whole tensors the converter itself builds whole).
    """
    from .io.gguf import GGUFFile
    from .pipeline import build_spec, open_model
    from .plan.recipe import llama_order

    t0 = time.perf_counter()
    with GGUFFile(gguf_path) as gf, open_model(source, config) as ckpt:
        spec = build_spec(ckpt, source, config=config, vocab=False)
        arch = gf.value(GGUF_ARCH_KEY)
        if isinstance(arch, str) and arch != spec.arch:
            raise InputError(f"{gguf_path}: architecture is {arch!r}, but {source} converts to {spec.arch!r}: not its source")
        by_name = {t.name: t for t in spec.tensors}
        results: list[TensorError] = []
        total = ErrorStats()
        unmatched: list[str] = []
        infos = list(gf.tensors)
        warm.warm({ti.qtype for ti in infos if _has_kernels(ti.qtype)})  # a cold cache: compile in parallel
        for i, ti in enumerate(infos):
            ts = by_name.get(ti.name)
            if ts is None:
                unmatched.append(ti.name)
                continue
            if _ggml_dims(ti.shape) != _ggml_dims(ts.shape):
                raise InputError(
                    f"{gguf_path}: tensor {ti.name} has shape {list(reversed(ti.shape))}, "
                    f"the source gives {list(reversed(ts.shape))}: not its source"
                )
            reader = TensorRows(gf, ti)
            st = ErrorStats()
            for row0, slab in _source_rows(ckpt, ts):
                st.update(slab, reader.read(row0, row0 + slab.shape[0]))
            total.merge(st)
            n_el = int(np.prod(ts.shape, dtype=np.int64))
            results.append(TensorError(ti.name, type_name(ti.qtype), tuple(ts.shape), ti.nbytes * 8.0 / max(n_el, 1),
                                       st.result(), reader.dequantizer))
            if progress:
                progress(i + 1, len(infos), results[-1])
        present = {t.name for t in infos}
        order = [spec.tensors[j].name for j in llama_order([t.name for t in spec.tensors])]
        missing = [n for n in order if n not in present]
    summary = summarize([(t.metrics, t.bits_per_weight) for t in results], total)
    return Report(str(gguf_path), str(source), results, summary, unmatched, missing, time.perf_counter() - t0)


# ====================================================================== what-if
@dataclass
class WhatIf:
    """`kquant validate --source MODEL --types ...`: each tensor quantized to each type in memory."""

    source: str
    types: list[QType]
    rows: list[dict]  # {"name", "shape", "n", "errors": {type name: Metrics | None}} (None: row not a block multiple)
    seconds: float = 0.0

    def summary(self) -> dict:
        """Per type: the parameter-weighted summary over the tensors the type applies to."""
        out = {}
        for t in self.types:
            items = [(r["errors"][t.ggml_name], t.type_size * 8.0 / t.block_size) for r in self.rows
                     if r["errors"][t.ggml_name] is not None]
            s = summarize(items)
            s["n_tensors"] = len(items)
            s["n_not_applicable"] = len(self.rows) - len(items)
            out[t.ggml_name] = s
        return out

    def as_json(self) -> dict:
        tensors = []
        for r in self.rows:
            layer, kind = layer_and_kind(r["name"])
            errs = {k: (None if m is None else {kk: _num(vv) for kk, vv in m.as_dict().items()})
                    for k, m in r["errors"].items()}
            tensors.append({"name": r["name"], "shape": list(reversed(r["shape"])), "layer": layer, "kind": kind,
                            "n": r["n"], "errors": errs})
        summ = {k: {kk: (round(vv, 4) if kk == "bits_per_weight" else _num(vv)) for kk, vv in s.items()}
                for k, s in self.summary().items()}
        return {"source": self.source, "types": [t.ggml_name for t in self.types], "tensors": tensors,
                "summary": summ, "seconds": round(self.seconds, 3)}


def what_if(source, types, *, config=None, progress=None) -> WhatIf:
    """Quantize every 2-D+ source tensor to each of `types` in memory and measure the error.

    Each slab is first rounded through the type the intermediate BF16 GGUF would hold it in, as
    the converter does, and the error is measured against the source values. No importance matrix.
    """
    from .pipeline import build_spec, open_model, round_through
    from .plan.recipe import llama_order

    tlist = []
    for t in types:
        q = parse_qtype(t)
        if q not in tlist:
            tlist.append(q)
    if not tlist:
        raise InputError("--types: no type given")
    for q in tlist:
        try:
            quants.kernel(q)
        except NotImplementedError:
            raise UnsupportedError(f"--types: no kernels for {q.name} yet") from None
    warm.warm(tlist)  # a cold cache: compile in parallel
    t0 = time.perf_counter()
    rows = []
    with open_model(source, config) as ckpt:
        spec = build_spec(ckpt, source, config=config, vocab=False)
        order = [spec.tensors[i] for i in llama_order([t.name for t in spec.tensors])]
        specs = [t for t in order if len(_ggml_dims(t.shape)) >= 2]
        for i, ts in enumerate(specs):
            _, cols = _rows_cols(ts.shape)
            stats = {t: (ErrorStats() if cols % t.block_size == 0 else None) for t in tlist}
            for _, slab in _source_rows(ckpt, ts):
                inter = round_through(slab, ts.ref_type)
                for t, st in stats.items():
                    if st is None:
                        continue
                    deq = quants.dequantize(quants.quantize(inter, t, check_finite=False), t, inter.shape)
                    st.update(slab, deq)
            row = {"name": ts.name, "shape": tuple(ts.shape), "n": int(np.prod(ts.shape, dtype=np.int64)),
                   "errors": {t.ggml_name: (None if st is None else st.result()) for t, st in stats.items()}}
            rows.append(row)
            if progress:
                progress(i + 1, len(specs), row)
    return WhatIf(str(source), tlist, rows, time.perf_counter() - t0)


# ====================================================================== output
def _fmt(v: float, spec: str) -> str:
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return format(v, spec)


def print_report(rep: Report, out=None, worst: int = WORST_N) -> None:
    """The validate table, the summary and the worst tensors."""
    out = out or sys.stdout
    w = max([len(t.name) for t in rep.tensors] + [6])
    print(f"{'tensor':{w}s} {'type':6s} {'bpw':>6s} {'rmse':>10s} {'max_abs':>10s} {'rel_rmse':>9s} {'snr_db':>7s} "
          f"{'cosine':>9s}", file=out)
    for t in rep.tensors:
        m = t.metrics
        print(f"{t.name:{w}s} {t.type:6s} {t.bits_per_weight:6.2f} {_fmt(m.rmse, '10.3e')} {_fmt(m.max_abs, '10.3e')} "
              f"{_fmt(m.rel_rmse, '9.5f')} {_fmt(m.snr_db, '7.2f'):>7s} {_fmt(m.cosine, '9.6f')}", file=out)
    s = rep.summary
    print(f"\n{len(rep.tensors)} tensors, {s['n']} weights, {s['bits_per_weight']:.3f} bits per weight", file=out)
    print(f"summary (parameter-weighted): rel_rmse {_fmt(s['rel_rmse'], '.5f')}  snr {_fmt(s['snr_db'], '.2f')} dB  "
          f"cosine {_fmt(s['cosine'], '.6f')}  rmse {_fmt(s['rmse'], '.3e')}  max_abs {_fmt(s['max_abs'], '.3e')}",
          file=out)
    ws = rep.worst(worst)
    if ws:
        print("worst: " + ", ".join(f"{t.name} {t.type} ({_fmt(t.metrics.rel_rmse, '.4f')})" for t in ws), file=out)
    fallback = [t.name for t in rep.tensors if t.dequantizer != "kquant"]
    if fallback:
        print(f"dequantized with gguf-py (no kquant kernels for their type): {', '.join(fallback)}", file=out)
    if rep.unmatched:
        print(f"not compared (no source tensor): {', '.join(map(_safe, rep.unmatched))}", file=out)
    if rep.missing:
        print(f"missing from the file: {', '.join(rep.missing)}", file=out)


def print_what_if(w: WhatIf, out=None) -> None:
    """Tensors x types table of rel_rmse, then the per-type summary."""
    out = out or sys.stdout
    names = [t.ggml_name for t in w.types]
    width = max([len(r["name"]) for r in w.rows] + [len("weighted rel_rmse")])
    cw = max(10, max(len(n) for n in names) + 1)
    print(f"{'rel_rmse':{width}s} " + " ".join(f"{n:>{cw}s}" for n in names), file=out)
    for r in w.rows:
        cells = []
        for n in names:
            m = r["errors"][n]
            cells.append(f"{'n/a':>{cw}s}" if m is None else f"{_fmt(m.rel_rmse, f'{cw}.5f'):>{cw}s}")
        print(f"{r['name']:{width}s} " + " ".join(cells), file=out)
    summ = w.summary()
    print("", file=out)
    for label, key, spec in (("weighted rel_rmse", "rel_rmse", ".5f"), ("snr_db", "snr_db", ".2f"),
                             ("bits per weight", "bits_per_weight", ".3f")):
        print(f"{label:{width}s} " + " ".join(f"{_fmt(summ[n][key], spec):>{cw}s}" for n in names), file=out)
    na = {n: summ[n]["n_not_applicable"] for n in names if summ[n]["n_not_applicable"]}
    if na:
        print("n/a: row length not a multiple of the block size (llama.cpp would fall back to another type): "
              + ", ".join(f"{n} {c} tensor(s)" for n, c in na.items()), file=out)


def report_csv(rep: Report) -> str:
    """One row per tensor: CSV_COLUMNS (shape as ggml dims joined by 'x')."""
    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(CSV_COLUMNS)
    for t in rep.tensors:
        d = t.as_dict()
        d["shape"] = "x".join(str(x) for x in d["shape"])
        wr.writerow([d[c] for c in CSV_COLUMNS])
    return buf.getvalue()


def what_if_csv(w: WhatIf) -> str:
    """One row per (tensor, type); metrics empty where the type does not apply."""
    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(CSV_COLUMNS)
    for r in w.rows:
        shape = "x".join(str(x) for x in reversed(r["shape"]))
        for t in w.types:
            m = r["errors"][t.ggml_name]
            vals = ["" for _ in METRIC_KEYS] if m is None else [_num(getattr(m, k)) for k in METRIC_KEYS]
            wr.writerow([r["name"], t.ggml_name, shape, r["n"], round(t.type_size * 8.0 / t.block_size, 4)] + vals)
    return buf.getvalue()


def report_json(rep) -> str:
    """Strict JSON (no NaN/Infinity literals) of a Report or WhatIf."""
    return json.dumps(rep.as_json(), allow_nan=False)


# ====================================================================== plot
def load_matplotlib():
    """pyplot with the Agg backend, or a one-line UnsupportedError when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        raise UnsupportedError(f"--plot needs matplotlib, which is not installed: {PLOT_INSTALL_HINT}") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return matplotlib, plt


def plot_series(series: dict[str, list[tuple[str, float, str]]], fileobj, title: str) -> None:
    """Render rel_rmse by layer (x) and tensor kind (y) as one heatmap per series, to PNG.

    `series`: label -> [(GGUF tensor name, rel_rmse, cell label)]. Tensors outside blocks
    (token_embd, output, ...) go to a bar chart below. Exact tensors (rel_rmse 0, e.g. F32 norms)
    are not drawn; the title says how many. One log colour scale for every panel.
    """
    matplotlib, plt = load_matplotlib()
    from matplotlib.colors import LogNorm

    kinds: list[str] = []
    layers: set[int] = set()
    globals_: list[str] = []
    positive = []
    names_nonzero: set[str] = set()
    names_zero: set[str] = set()
    for items in series.values():
        for name, rel, _ in items:
            if rel == 0:
                names_zero.add(name)
                continue
            names_nonzero.add(name)
            if not (rel > 0 and math.isfinite(rel)):
                continue
            positive.append(rel)
            layer, kind = layer_and_kind(name)
            if layer is None:
                if name not in globals_:
                    globals_.append(name)
            else:
                layers.add(layer)
                if kind not in kinds:
                    kinds.append(kind)
    exact = names_zero - names_nonzero
    lo, hi = (min(positive), max(positive)) if positive else (1e-3, 1.0)
    if hi <= lo * 1.05:
        lo, hi = lo / 1.5, hi * 1.5
    norm = LogNorm(vmin=lo, vmax=hi)
    cmap = matplotlib.colormaps[PLOT_CMAP].with_extremes(bad=PLOT_MISSING)
    n_layers = (max(layers) + 1) if layers else 0
    labels = list(series)
    n_maps = len(labels) if kinds else 0
    nlab = len(labels)
    annotate = n_layers <= PLOT_ANNOTATE_LAYERS
    fig_w = min(PLOT_MAX_WIDTH, max(8.0, 2.8 + (0.55 if annotate else 0.22) * n_layers))
    heights = [0.9 + 0.3 * len(kinds)] * n_maps
    if globals_:
        heights.append(0.9 + 0.28 * len(globals_) * max(1, nlab))
    if not heights:
        heights = [1.5]
    fig, axes = plt.subplots(len(heights), 1, figsize=(fig_w, sum(heights) + 1.2), squeeze=False,
                             gridspec_kw={"height_ratios": heights}, layout="constrained")
    axes = axes[:, 0]
    mappable = None
    for k, (ax, label) in enumerate(zip(axes[:n_maps], labels)):
        grid = np.full((len(kinds), n_layers), np.nan)
        text = [["" for _ in range(n_layers)] for _ in kinds]
        for name, rel, cell in series[label]:
            layer, kind = layer_and_kind(name)
            if layer is None or kind not in kinds or not (rel > 0 and math.isfinite(rel)):
                continue
            grid[kinds.index(kind), layer] = rel
            text[kinds.index(kind)][layer] = cell
        mappable = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
        ax.set_yticks(range(len(kinds)), kinds, fontsize=8)
        step = 1 if n_layers <= 40 else max(1, n_layers // 20)
        ax.set_xticks(range(0, n_layers, step), [str(x) for x in range(0, n_layers, step)], fontsize=8)
        if k == n_maps - 1:
            ax.set_xlabel("layer", fontsize=9)
        ax.set_title(label if nlab > 1 else "relative RMSE by layer and tensor kind", fontsize=10, loc="left")
        if annotate:
            for yi in range(len(kinds)):
                for xi in range(n_layers):
                    if text[yi][xi] and not math.isnan(grid[yi, xi]):
                        dark = norm(grid[yi, xi]) > 0.6
                        ax.text(xi, yi, text[yi][xi], ha="center", va="center", fontsize=6.5,
                                color="white" if dark else "black")
    if mappable is not None:
        cb = fig.colorbar(mappable, ax=list(axes[:n_maps]), fraction=0.04, pad=0.01, shrink=min(1.0, 0.9 if n_maps == 1 else 0.6))
        cb.set_label("relative RMSE (log scale)", fontsize=9)
    if globals_:
        ax = axes[-1]
        h = 0.8 / nlab
        for k, label in enumerate(labels):
            vals = {n: (r, c) for n, r, c in series[label]}
            ys = [i + (k - (nlab - 1) / 2) * h for i in range(len(globals_))]
            xs = [vals.get(g, (np.nan, ""))[0] for g in globals_]
            colors = [cmap(norm(x)) if x > 0 and math.isfinite(x) else PLOT_MISSING for x in xs]
            bars = ax.barh(ys, xs, height=h * 0.92, color=colors, edgecolor="#555555", linewidth=0.5)
            for b, g in zip(bars, globals_):
                r, c = vals.get(g, (np.nan, ""))
                if r > 0 and math.isfinite(r):
                    tag = f" {c}  {r:.4f}" if nlab == 1 else f" {label.split()[0]}  {r:.4f}"
                    ax.text(b.get_width(), b.get_y() + b.get_height() / 2, tag, va="center", fontsize=7)
        ax.set_yticks(range(len(globals_)), globals_, fontsize=8)
        top = max([r for n, r, _ in (x for v in series.values() for x in v) if n in globals_ and math.isfinite(r)] + [lo])
        ax.set_xlim(0, top * 1.35)
        ax.tick_params(axis="x", labelsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("relative RMSE", fontsize=9)
        ax.set_title("tensors outside the layers", fontsize=10, loc="left")
    if not n_maps and not globals_:
        axes[0].axis("off")
        axes[0].text(0.5, 0.5, "every tensor is exact (rel_rmse 0)", ha="center", va="center")
    sub = title
    if exact:
        sub += f"\nnot drawn: {len(exact)} exact tensor(s) (rel_rmse 0, e.g. F32 norms); grey: no such tensor"
    fig.suptitle(sub, fontsize=10)
    fig.savefig(fileobj, format="png", dpi=PLOT_DPI)
    plt.close(fig)


def plot_report(rep: Report, fileobj) -> None:
    s = rep.summary
    title = (f"{rep.file}  vs  {rep.source}\n{s['bits_per_weight']:.3f} bits per weight, weighted rel_rmse "
             f"{_fmt(s['rel_rmse'], '.5f')}, snr {_fmt(s['snr_db'], '.2f')} dB")
    plot_series({"file": [(t.name, t.metrics.rel_rmse, t.type) for t in rep.tensors]}, fileobj, title)


def plot_what_if(w: WhatIf, fileobj) -> None:
    summ = w.summary()
    series = {}
    for t in w.types:
        n = t.ggml_name
        series[f"{n}  ({t.type_size * 8.0 / t.block_size:.2f} bpw, weighted rel_rmse {_fmt(summ[n]['rel_rmse'], '.5f')})"] = [
            (r["name"], r["errors"][n].rel_rmse, f"{r['errors'][n].rel_rmse:.3g}") for r in w.rows if r["errors"][n] is not None]
    plot_series(series, fileobj, f"what-if: {w.source}")
