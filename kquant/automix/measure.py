"""Measuring pass of the automatic mix: each tensor's relative output error at each candidate type.

`measure`: every tensor llama-quantize would quantize is read once (in row
   slabs, rounded through its intermediate BF16/F16 type exactly as the converter does) and
   quantized in memory to each candidate type, with the importance rows the writer would use
   (imatrix.weights_for), then dequantized. Per candidate it records the relative output error

       rel(t, q) = sum_i sum_j w_j (deq_ij - x_ij)^2 / sum_i sum_j w_j x_ij^2

   with w_j = the importance (mean squared input activation of column j) when an imatrix is
   given; else g_j^2 for a matrix that reads a norm's output (g: that norm's gain, see the model family's norm_of),
   else 1; either capped at ERROR_WEIGHT_CAP x its median (error_weights). Under a diagonal input
   covariance this is |dy|^2 / |y|^2 for y = W x: the relative error of the tensor's OUTPUT, which
   is what the rest of the network sees. The cap only enters these sums; the quantization itself
   uses the importance rows uncapped, as llama-quantize does.
   A tied token_embd plays two roles, as llama.cpp uses it: the input embedding (get_rows: each row
   enters the residual stream as it is, so its error is unweighted, `input_rel`) and the output
   matrix (a matmul on the final norm's output, weighted as above, `rel`); both are recorded and
   its damage is the sum over the two roles.
   Candidates: where the row is a multiple of 256, every k-quant and i-quant from 1.125 bits per
   weight up (Q1_0, IQ1_S, TQ1_0, IQ1_M, IQ2_XXS, TQ2_0, Q2_0, IQ2_XS, IQ2_S, Q2_K, IQ3_XXS, Q3_K,
   IQ3_S, IQ4_XS, Q4_K, Q5_K, Q6_K) and Q8_0; where it is only a multiple of 32, Q1_0 and Q2_0
   (where their 128 and 64 blocks divide it), MXFP4, Q4_0, IQ4_NL, Q4_1, Q5_0, Q5_1 and Q8_0; F16
   otherwise; plus the intermediate type itself (exact) and always the type the -t recipe gives the
   tensor. The types llama-quantize refuses without an imatrix (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS,
   IQ2_S, IQ3_XXS; Q2_K in a Q2_K_S file) are candidates only for tensors with importance rows,
   except token_embd and output, which llama-quantize exempts, and there not IQ2_XXS, IQ2_XS and
   IQ1_S either, which ggml cannot quantize without weights (allowed_without_weights). A type
   both larger and less accurate than another (the ternary TQ1_0 / TQ2_0 on a model not trained
   ternary) is cheap to measure and left out by the knapsack where it is dominated. The grid-search i-quants (SEARCH_KERNELS) are measured on a quarter of the
   rows the others are (SEARCH_STRIDE_CHUNKS), each ratio over its own rows.
   1-D tensors, norms and everything else
   llama-quantize keeps as is (recipe.should_quantize), and tensors named by --tensor-type,
   --output-tensor-type or --token-embedding-type, keep their recipe type.
   Models above FULL_MEASURE_ELEMENTS quantizable weights are measured on a fixed,
   deterministic sample of rows (SAMPLE_CHUNK_ROWS rows out of every SAMPLE_STRIDE_CHUNKS *
   SAMPLE_CHUNK_ROWS, i.e. 1/8; at least one chunk per tensor); the ratio above needs no rescaling.

"""

from __future__ import annotations

import io
import math
import re
import sys
import time
from dataclasses import dataclass

import numpy as np
from numba import njit

from .. import models
from ..ggml import quants, warm
from ..ggml.types import DECLS, automix_candidates
from ..io.gguf import GGUFStreamWriter
from ..pipeline import (
    Options,
    build_spec,
    iter_source_slabs,
    open_model,
    output_kv,
    plan_from_spec,
    round_through,
    source_kernel_types,
)
from ..plan.imatrix import expert_runs, weights_for
from ..plan.overrides import match_names
from ..plan.recipe import C, ModelFacts, category_of, requires_imatrix, should_quantize
from ..types import FileType, QType, parse_ftype
from .damage import kind_of, sensitivity_of

Q = QType

# the types declared eligible (kquant.ggml.types TypeDecl.automix) per row class, fewest bits first;
# a type of a larger block than the class (Q1_0: 128, Q2_0: 64 in the 32 class) only where it divides the row
K_CANDIDATES: tuple[QType, ...] = automix_candidates(256)  # row % 256 == 0: Q1_0 .. Q8_0, i-quants included
LEGACY_CANDIDATES: tuple[QType, ...] = automix_candidates(32)  # row % 32 == 0 only: Q1_0 Q2_0 MXFP4 Q4_0 IQ4_NL Q4_1 Q5_0 Q5_1 Q8_0
ODD_CANDIDATES: tuple[QType, ...] = automix_candidates(1)  # any row length (llama.cpp's last fallback): F16

FULL_MEASURE_ELEMENTS = 500_000_000  # quantizable weights up to which every row is measured
SAMPLE_CHUNK_ROWS = 32  # rows per sampled chunk above that
SAMPLE_STRIDE_CHUNKS = 8  # one chunk measured out of every 8 (a 1/8 sample, deterministic)
# ggml's quantizers of these kernels search grids (IQ1_S .. IQ3_S): one to two orders of magnitude
# slower than the others, so they are measured on one of every SEARCH_STRIDE_CHUNKS chunks of the
# rows the others are measured on (at least the first chunk of each tensor)
SEARCH_KERNELS = frozenset({"iq1", "iq2", "iq3"})
SEARCH_STRIDE_CHUNKS = 4


# A few columns can hold nearly all of an importance vector's mass: in real models, the massive
# activations of a handful of tokens (attention sinks) make 4 of ffn_down's 1536 columns carry
# 96-99.9% of the mean squared input in some layers (SmolLM2-135M), and a few channels of the final
# norm's output dominate the output matrix's. Weighted by them, the error sums see only those
# columns, which the importance-weighted quantizer keeps exact even at 2 bits, and a tensor whose
# other columns are ruined looks nearly lossless. Those mean squares come from a few tokens, whose
# residual stream is as large (the next norm divides the error by it), while the loss is made on the
# typical tokens. So the error sums weigh a column at most ERROR_WEIGHT_CAP times the median column:
# within that range the weights are kept (ordinary variation between channels: the 99th percentile
# is 5-25x the median in most of SmolLM2's matrices); beyond it the cap holds any few columns to a
# modest share of the sum.
ERROR_WEIGHT_CAP = 16.0


def error_weights(w) -> np.ndarray | None:
    """Column weights of the error sums from importance (or gain^2) column weights: capped at
    ERROR_WEIGHT_CAP x their median over the positive ones; None stays None (unweighted)."""
    if w is None:
        return None
    w = np.asarray(w, dtype=np.float64).reshape(-1)
    pos = w[w > 0]
    if pos.size == 0 or not np.isfinite(w).all():
        return w.astype(np.float32)
    return np.minimum(w, ERROR_WEIGHT_CAP * float(np.median(pos))).astype(np.float32)


def is_search_type(t: QType) -> bool:
    """Measured on the smaller row sample (SEARCH_STRIDE_CHUNKS)."""
    return DECLS[t].kernels in SEARCH_KERNELS


def candidates_for(cols: int, ref_type: QType) -> list[QType]:
    """Candidate types for a row length, cheapest first, ending with the exact intermediate type."""
    if cols % 256 == 0:
        c = list(K_CANDIDATES)
    elif cols % 32 == 0:
        c = list(LEGACY_CANDIDATES)
    else:
        c = list(ODD_CANDIDATES)
    c = [t for t in c if cols % t.block_size == 0]
    if ref_type not in c:
        c.append(ref_type)
    return c


# src/llama-quant.cpp tensor_requires_imatrix (via recipe.requires_imatrix: llama-quantize refuses
# IQ1_S .. IQ2_S and IQ3_XXS, and Q2_K in a Q2_K_S file, without importance rows, except for
# token_embd and output) and ggml.c ggml_quantize_requires_imatrix (ggml_quantize_chunk aborts on
# IQ2_XXS, IQ2_XS and IQ1_S without them, whatever the tensor)
def allowed_without_weights(name: str, t: QType, ftype: FileType) -> bool:
    """Whether `t` may be chosen for tensor `name` when it has no importance rows."""
    return not (t.requires_imatrix or requires_imatrix(name, t, ftype))


# ====================================================================== error sums
@njit(nogil=True, cache=True)
def _wsums(x, d, w):
    # x, d: float32 (rows, cols); w: float32 (cols,) or empty -> (sum w e^2, sum w x^2) in float64
    # (serial: cheap next to the quantization it follows; parallel=True would add seconds of compile)
    rows, cols = x.shape
    out = np.zeros((rows, 2), dtype=np.float64)
    weighted = w.shape[0] == cols
    for r in range(rows):
        se = 0.0
        ss = 0.0
        for c in range(cols):
            xv = np.float64(x[r, c])
            e = np.float64(d[r, c]) - xv
            if weighted:
                wc = np.float64(w[c])
                se += wc * e * e
                ss += wc * xv * xv
            else:
                se += e * e
                ss += xv * xv
        out[r, 0] = se
        out[r, 1] = ss
    return out[:, 0].sum(), out[:, 1].sum()


_NO_W = np.empty(0, dtype=np.float32)


@dataclass
class Curve:
    """One tensor's options: type, cost in bytes, relative output error, damage."""

    name: str
    shape: tuple
    kind: str
    recipe: QType  # the type the -t recipe gives it
    fixed: bool  # kept at the recipe type (not quantizable, or pinned by an override)
    types: list[QType]
    nbytes: list[int]  # tensor bytes per option
    rel: list[float]  # relative (importance-weighted) output error per option
    sensitivity: float = 1.0  # sensitivity_of(name)
    weighted: bool = False  # the importance matrix weighted this tensor's error
    sampled_rows: int = 0
    rows: int = 0
    # a tied token_embd's second role, the input embedding: its unweighted relative error per
    # option and that role's sensitivity (rel and sensitivity are then its output-matrix role)
    input_rel: list[float] | None = None
    input_sensitivity: float = 0.0

    @property
    def damage(self) -> list[float]:
        if self.input_rel is None:
            return [self.sensitivity * r for r in self.rel]
        return [self.sensitivity * r + self.input_sensitivity * ri for r, ri in zip(self.rel, self.input_rel)]

    def index(self, t: QType) -> int:
        return self.types.index(t)


def sample_chunks(row0: int, n: int, sample: bool, every: int = 1):
    """(start, stop) row ranges of a slab [row0, row0 + n) to measure (global rows), deterministic:
    one chunk of SAMPLE_CHUNK_ROWS rows out of every SAMPLE_STRIDE_CHUNKS (`sample`) times `every`
    (every row when neither). The ranges of a larger `every` are a subset of those of a smaller one."""
    stride = (SAMPLE_STRIDE_CHUNKS if sample else 1) * every
    if stride == 1:
        yield 0, n
        return
    period = SAMPLE_CHUNK_ROWS * stride
    g = row0
    end = row0 + n
    while g < end:
        base = g - g % period
        a, b = max(g, base), min(end, base + SAMPLE_CHUNK_ROWS)
        if a < b:
            yield a - row0, b - row0
        g = base + period


# Without an imatrix, a matrix that reads a normalised hidden state sees inputs n_j * g_j (the
# norm's gain g times a normalised value): its columns' mean squared input is ~ g_j^2, which the
# error sums then use as column weights (the quantization itself stays unweighted, as ggml's).
# In trained models g^2 correlates with llama-imatrix's column means (r 0.5-0.9 on a 4000-step one).
def _norm_gains(ckpt, plan, tied: bool, norm_of: dict[str, str]) -> dict[str, np.ndarray]:
    """{matrix name: g^2 of the norm feeding it} for the matrices that read a norm's output."""
    by_name = {t.name: t for t in plan.tensors}
    # the output matrix reads the final norm; a tied model's is token_embd, measured in that role
    # too (Curve.rel; its input role is Curve.input_rel)
    output = "token_embd.weight" if tied else "output.weight"
    out: dict[str, np.ndarray] = {}
    cache: dict[str, np.ndarray | None] = {}
    for t in plan.tensors:
        m = re.match(r"^(blk\.\d+\.)(.+?)\.weight$", t.name)
        norm = (m.group(1) + norm_of[m.group(2)] + ".weight") if m and m.group(2) in norm_of else \
            ("output_norm.weight" if t.name == output else None)
        if norm is None or norm not in by_name:
            continue
        if norm not in cache:
            ns = by_name[norm]
            g = np.concatenate([slab.reshape(-1) for _, slab in iter_source_slabs(ckpt, ns.spec)]).astype(np.float64)
            cache[norm] = (g * g).astype(np.float32) if np.isfinite(g).all() and (g * g).sum() > 0 else None
        g2 = cache[norm]
        if g2 is not None and g2.shape[0] == t.shape[-1]:
            out[t.name] = g2
    return out


# a view of _measure_tensor: the error sums' column weights are each expert's importance row
# through error_weights
IMPORTANCE = "importance"


def _measure_tensor(ckpt, spec, w: np.ndarray | None, types: list[QType], sample: bool,
                    rows_per_expert: int, views=(IMPORTANCE,),
                    rounding: str = "ggml") -> tuple[list[list[float]], int]:
    """Relative output error of one tensor per type, for each of `views` (the error sums' column
    weights: IMPORTANCE, an array for every row, None for unweighted, or a function of each expert's
    importance row); `w`: its (n_expert, cols) importance rows (the quantizer's) or None. The search
    types (is_search_type) on the smaller sample, each ratio over its own rows."""
    nv = len(views)
    se = [{t: 0.0 for t in types} for _ in range(nv)]
    ss = [[0.0, 0.0] for _ in range(nv)]  # sum w x^2 over the rows of the full sample and of the search types' sample
    measured = 0
    probes = [t for t in types if t != spec.ref_type]

    def view_weights(view, wv):
        if view is IMPORTANCE:
            ew = error_weights(wv)
        elif callable(view):
            ew = view(wv)
        else:
            ew = view
        return _NO_W if ew is None else np.ascontiguousarray(ew, dtype=np.float32)

    for row0, slab in iter_source_slabs(ckpt, spec):
        inter = round_through(slab, spec.ref_type)
        # the rows measured, grouped by expert (each expert's rows use that expert's importance row);
        # rows are quantized independently, so a gathered block quantizes exactly as in the file
        idx = [np.concatenate([np.arange(a, b) for a, b in sample_chunks(row0, slab.shape[0], sample, every)]
                              or [np.empty(0, np.int64)]) for every in (1, SEARCH_STRIDE_CHUNKS)]
        for e, a, b in expert_runs(row0, slab.shape[0], rows_per_expert):
            wv = None if w is None else w[min(e, w.shape[0] - 1)]
            wks = [view_weights(v, wv) for v in views]
            for level, ix in enumerate(idx):
                rows = ix[(ix >= a) & (ix < b)]
                if not rows.size:
                    continue
                x = np.ascontiguousarray(inter[rows])
                for v, wk in enumerate(wks):
                    ss[v][level] += _wsums(x, x, wk)[1]
                for t in probes:
                    if is_search_type(t) == bool(level):
                        deq = quants.dequantize(quants.quantize(x, t, wv, check_finite=False, rounding=rounding), t, x.shape)
                        for v, wk in enumerate(wks):
                            se[v][t] += _wsums(x, deq, wk)[0]
                if level == 0:
                    measured += x.shape[0]

    def ratio(v, t):
        if t == spec.ref_type:
            return 0.0
        d = ss[v][is_search_type(t)]
        return se[v][t] / d if d > 0 else (0.0 if se[v][t] == 0 else math.inf)

    return [[ratio(v, t) for t in types] for v in range(nv)], measured


def _pinned_names(plan, overrides) -> set[str]:
    """Tensors an explicit override names: they keep the recipe's type."""
    if overrides is None:
        return set()
    pats = [p for p, _ in match_names(overrides.tensor_types, [t.name for t in plan.tensors])]
    out = set()
    for t in plan.tensors:
        cat = category_of(t.name)
        if any(p.search(t.name) for p in pats):
            out.add(t.name)
        elif overrides.output_tensor_type is not None and cat is C.OUTPUT:
            out.add(t.name)
        elif overrides.token_embedding_type is not None and cat is C.TOKEN_EMBD:
            out.add(t.name)
    return out


def _facts(spec):
    return ModelFacts(arch=spec.arch, n_layer=spec.n_layer, n_head=spec.n_head,
                             n_head_kv=spec.n_head_kv, n_expert=spec.n_expert)


def measure(ckpt, spec, plan, overrides=None, imatrix=None, *, sample: bool | None = None,
            sensitivity: dict[str, float] | None = None, progress=None, on_compile=None,
            rounding: str = "ggml") -> list[Curve]:
    """One Curve per tensor of `plan` (the -t recipe plan), measuring every quantizable tensor."""
    facts = _facts(spec)
    leave_out = bool(overrides is not None and overrides.leave_output_tensor)
    pinned = _pinned_names(plan, overrides)
    weights = imatrix.weights if imatrix is not None else {}
    tied = not any(t.name == "output.weight" for t in plan.tensors)
    gains = {} if weights else _norm_gains(ckpt, plan, tied, models.norm_inputs(spec.arch))
    todo = [t for t in plan.tensors
            if t.name not in pinned and should_quantize(t.name, t.shape, facts, leave_output_tensor=leave_out)]
    if sample is None:
        sample = sum(t.n_elements for t in todo) > FULL_MEASURE_ELEMENTS
    todo_names = {t.name for t in todo}
    # each tensor's candidates and the importance rows the writer would use for a quantized type
    # (None when absent): the types llama-quantize or ggml refuse without them are left out there
    options: dict[str, tuple[list[QType], np.ndarray | None]] = {}
    for pt in todo:
        ref = pt.spec.ref_type
        w = weights_for(weights, pt.name, pt.shape, ref, Q.Q8_0, plan.ftype) if weights else None
        types = [q for q in candidates_for(pt.shape[-1], ref)
                 if w is not None or q == ref or allowed_without_weights(pt.name, q, plan.ftype)]
        if pt.qtype not in types:
            types.append(pt.qtype)
            types.sort(key=lambda q: q.nbytes(pt.shape))
        options[pt.name] = types, w
    # a cold numba cache: compile every probed type's kernels at once, in parallel processes (the
    # intermediate type itself is never quantized: its error is 0)
    probed = {q for t in todo for q in options[t.name][0] if q != t.spec.ref_type}
    warm.warm(probed | {t.qtype for t in todo} | source_kernel_types(ckpt), on_start=on_compile, rounding=rounding)
    curves = []
    n_todo = len(todo)
    done = 0
    for pt in plan.tensors:
        kind = kind_of(pt.name)
        both_roles = tied and category_of(pt.name) is C.TOKEN_EMBD
        if pt.name not in todo_names:
            curves.append(Curve(pt.name, pt.shape, kind, pt.qtype, True, [pt.qtype], [pt.nbytes], [0.0],
                                sensitivity_of(pt.name, spec.n_layer, sensitivity, tied)))
            continue
        ts = time.perf_counter()
        types, w = options[pt.name]
        rows_per_expert = pt.shape[-2] if len(pt.shape) >= 3 else int(np.prod(pt.shape[:-1], dtype=np.int64))
        # the error sums' weights: the importance rows, else the feeding norm's gain squared, capped
        # (error_weights); a tied token_embd also unweighted, its input-embedding role
        views = [IMPORTANCE if w is not None else error_weights(gains.get(pt.name))] + ([None] if both_roles else [])
        rels, measured = _measure_tensor(ckpt, pt.spec, w, types, sample, max(rows_per_expert, 1), views, rounding)
        rows = int(np.prod(pt.shape[:-1], dtype=np.int64)) if len(pt.shape) > 1 else 1
        c = Curve(pt.name, pt.shape, kind, pt.qtype, False, types, [q.nbytes(pt.shape) for q in types], rels[0],
                  sensitivity_of(pt.name, spec.n_layer, sensitivity, tied, w is not None), w is not None, measured, rows)
        if both_roles:
            c.input_rel = rels[1]
            c.input_sensitivity = sensitivity_of(pt.name, spec.n_layer, sensitivity)
        curves.append(c)
        done += 1
        if progress:
            progress(done, n_todo, c, time.perf_counter() - ts)
    return curves


def header_bytes(plan, rounding: str = "ggml") -> tuple[int, int]:
    """(bytes before the tensor data, alignment) of the GGUF kquant writes for `plan` with `rounding`
    (a non-ggml rounding adds its key); independent of types."""
    w = GGUFStreamWriter(io.BytesIO(), ggml_n_dims=True, name="<size>")
    for key, vtype, value in output_kv(plan, rounding):
        w.add_kv(key, vtype, value)
    for t in plan.tensors:
        w.add_tensor(t.name, t.shape, t.qtype)
    return w.write_header(), w.alignment



@dataclass
class Measured:
    """The measuring pass over a model: what any budget's mix is chosen from."""

    curves: list[Curve]
    ftype: FileType
    header_bytes: int  # bytes before the tensor data (0 when not computed: vocab not read)
    alignment: int
    n_elements: int
    seconds: float
    imatrix: bool

    @property
    def sampled(self) -> bool:
        return any(c.sampled_rows < c.rows for c in self.curves if not c.fixed)


def measure_model(model, ftype="Q4_K_M", options=None, *, sample: bool | None = None,
                  sensitivity: dict[str, float] | None = None, progress=None, header: bool = True) -> Measured:
    """Read `model` once and measure every quantizable tensor at every candidate type. The recipe
    `ftype` gives the metadata, the tensors kept as they are and the comparison; `options` the
    pipeline's overrides, imatrix, config. `header`: also size the GGUF header (reads the vocabulary)."""
    opts = options or Options()
    ft = parse_ftype(ftype)
    if opts.threads is not None:
        quants.set_threads(opts.threads)
    t0 = time.perf_counter()
    with open_model(model, opts.config) as ckpt:
        spec = build_spec(ckpt, model, config=opts.config, vocab=header, tokenizer_pre=opts.tokenizer_pre)
        plan = plan_from_spec(spec, ft, opts.overrides, opts.imatrix)
        hdr, align = header_bytes(plan, opts.rounding) if header else (0, 1)
        curves = measure(ckpt, spec, plan, opts.overrides, opts.imatrix, sample=sample, sensitivity=sensitivity,
                         progress=progress, on_compile=opts.on_compile, rounding=opts.rounding)
    return Measured(curves, ft, hdr, align, plan.n_elements, time.perf_counter() - t0,
                    bool(opts.imatrix is not None and opts.imatrix.weights))



def print_measure_progress(i: int, n: int, c: Curve, seconds: float, stream=None) -> None:
    stream = stream or sys.stderr
    cells = " ".join(f"{t.ggml_name} {r:.2e}" for t, r in zip(c.types, c.rel) if t.is_quantized)
    print(f"[{i:4d}/{n}] measure {c.name:36s} {cells} ({seconds:.1f} s)", file=stream, flush=True)
