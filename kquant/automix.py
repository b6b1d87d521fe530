"""Automatic per-tensor type mix for a size budget (`kquant convert --target-bpw B / --target-size S`).

Not a port: llama.cpp's mixes (Q4_K_M, ...) are fixed rules (src/llama-quant.cpp
llama_tensor_get_type_impl); this module chooses each tensor's type from measurements instead.

1. Measuring pass (`measure`): every tensor llama-quantize would quantize is read once (in row
   slabs, rounded through its intermediate BF16/F16 type exactly as the converter does) and
   quantized in memory to each candidate type, with the importance rows the writer would use
   (imatrix.weights_for), then dequantized. Per candidate it records the relative output error

       rel(t, q) = sum_i sum_j w_j (deq_ij - x_ij)^2 / sum_i sum_j w_j x_ij^2

   with w_j = the importance (mean squared input activation of column j) when an imatrix is
   given; else g_j^2 for a matrix that reads a norm's output (g: that norm's gain, see the family's norm_of),
   else 1. Under a diagonal input covariance this is |dy|^2 / |y|^2 for y = W x: the
   relative error of the tensor's OUTPUT, which is what the rest of the network sees.
   Candidates: Q2_K, Q3_K, IQ4_XS, Q4_K, Q5_K, Q6_K and Q8_0 where the row is a multiple of 256;
   Q4_0, IQ4_NL, Q4_1, Q5_0, Q5_1 and Q8_0 where it is only a multiple of 32; F16 otherwise
   (IQ4_XS: 4.25 bits per weight at ~1.15x Q4_K's error, so the mix can pay for more Q5_K and
   Q6_K elsewhere); plus the intermediate type itself (exact) and always the type the -t recipe
   gives the tensor. 1-D tensors, norms and everything else
   llama-quantize keeps as is (recipe.should_quantize), and tensors named by --tensor-type,
   --output-tensor-type or --token-embedding-type, keep their recipe type.
   Models above FULL_MEASURE_ELEMENTS quantizable weights are measured on a fixed,
   deterministic sample of rows (SAMPLE_CHUNK_ROWS rows out of every SAMPLE_STRIDE_CHUNKS *
   SAMPLE_CHUNK_ROWS, i.e. 1/8; at least one chunk per tensor); the ratio above needs no rescaling.

2. Damage model: damage(t, q) = sensitivity(t) * rel(t, q). A second-order expansion of the loss
   around the unquantized weights gives dL ~ 1/2 h_t |dy_t|^2 for an output-side curvature h_t;
   written as 1/2 h_t |y_t|^2 * rel(t, q) it separates what the weights tell (rel, measured) from
   how much the loss cares about a relative perturbation of that tensor's output (the
   sensitivity), which depends on where the output goes (the residual stream, through a gate,
   through softmax, straight into the logits) and on the layer's position, not on the tensor's
   size. sensitivity(t) = SENSITIVITY[kind] x (FIRST_LAYER_FACTORS[kind] for blk.0,
   LAST_LAYER_FACTOR for the last block) x REF_LAYERS / n_layer (except for the output matrix).
   The constants were measured once on a model that is not the benchmark model (see SENSITIVITY) and are the same
   for every model: no per-model tuning.

3. Allocation (`solve`): choose one candidate per tensor minimizing total damage subject to
   total bytes <= budget: a multiple-choice knapsack, solved exactly by dynamic programming over
   the bytes above the cheapest mix in units of the gcd of all byte differences (or, when that
   grid would exceed MAX_UNITS cells, a coarser unit with every cost rounded UP, so the budget
   still holds). The optimum is monotone: a larger budget never gives a larger predicted damage.

The budget counts every tensor's bytes (F32 norms included) as Plan.total_bytes does:
--target-bpw B means total_bytes * 8 / n_elements <= B (llama.cpp's "BPW"); --target-size S
means the whole GGUF file (header, metadata and alignment padding included) is at most S bytes.
`--dry-run` with a target runs the measuring pass (it reads every tensor) but writes nothing.
"""

from __future__ import annotations

import io
import math
import re
import time
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
from numba import njit

from . import models
from .ggml import quants, warm
from .ggml.types import automix_candidates
from .errors import InputError
from .types import FileType, QType, parse_ftype

Q = QType

# the types declared eligible (kquant.ggml.types TypeDecl.automix) per row class, fewest bits first
K_CANDIDATES: tuple[QType, ...] = automix_candidates(256)  # row % 256 == 0: Q2_K Q3_K IQ4_XS Q4_K Q5_K Q6_K Q8_0
LEGACY_CANDIDATES: tuple[QType, ...] = automix_candidates(32)  # row % 32 == 0 only: Q4_0 IQ4_NL Q4_1 Q5_0 Q5_1 Q8_0
ODD_CANDIDATES: tuple[QType, ...] = automix_candidates(1)  # any row length (llama.cpp's last fallback): F16

FULL_MEASURE_ELEMENTS = 500_000_000  # quantizable weights up to which every row is measured
SAMPLE_CHUNK_ROWS = 32  # rows per sampled chunk above that
SAMPLE_STRIDE_CHUNKS = 8  # one chunk measured out of every 8 (a 1/8 sample, deterministic)

MAX_UNITS = 1 << 18  # knapsack grid cells above the cheapest mix
MAX_CELLS = 1 << 26  # tensors x grid cells of the choice table (64 MiB of uint8)

# Sensitivity of the loss (nats of KL per unit of relative output error) of each kind of tensor,
# relative to attn_output in a middle layer of a REF_LAYERS-layer model. Measured once with
# `scripts/bench_mix.py --fit` (constants: `--fit-table`) on a separately trained 6-layer Llama
# (model E there: 4000 steps, not a benchmark model): each tensor alone quantized to Q3_K, the
# rest Q8_0, KL of llama.cpp's next-token distribution on calibration text divided by `rel`; a
# log-additive fit kind + first layer x kind + last layer (residual sd 0.42), with and without
# an imatrix, rounded. The FFN matrices weigh more than attention (ffn_down most, as llama.cpp's
# mixes also say; attn_q/attn_k least); the last layer ~2.7x the middle ones; the output matrix
# (logits directly) ~65x (155x, see SENSITIVITY_WEIGHTED) and the token embeddings ~10x a
# middle tensor. The first layer is its own case: its FFN matrices matter 3x (gate, up) to 12x
# (ffn_down) more than in the middle layers, its attention matrices slightly less (one factor
# for the whole first layer left residual sd 0.57 instead of 0.42). Model D's fit shows the same
# pattern (first ffn_down 8x, attention 0.7-1.1x); llama.cpp's mixes also single out the first
# ffn_down layers.
# These depend on how well trained a model is: an under-trained model (600 steps, model B) gave
# FFN ~ attention, every first-layer matrix 3-20x, token embeddings 70x, and mixes chosen with its constants
# barely beat llama.cpp's on a well-trained model (D) while E's come close to what D's own
# measured sensitivities would give (an offline comparison; D's perplexities are in the README).
# We take the well-trained model's, released checkpoints being trained far longer than either.
REF_LAYERS = 6
SENSITIVITY: dict[str, float] = {
    "attn_q": 0.75,
    "attn_k": 0.8,
    "attn_v": 1.0,
    "attn_qkv": 0.85,  # fused q, k, v: their mean
    "attn_kv_b": 1.0,
    "attn_output": 1.0,
    "ffn_gate": 1.2,
    "ffn_up": 1.0,
    "ffn_down": 1.55,
    "token_embd": 9.5,
    "output": 65.0,
}
# With an imatrix, the error sums weigh each column by its measured mean squared input, which
# for the output matrix (the final norm's output, a few channels of which dominate) gives a
# different measure of the same damage: per unit of that `rel` the output matrix costs ~2.4x more
# (model E, both modes fitted together: 154 vs 65; each mode alone: E 158 vs 63.5, and the
# benchmark model D 198 vs 82). The other kinds' constants differ between the two measures by
# less than the fit's residuals, and are pooled.
SENSITIVITY_WEIGHTED: dict[str, float] = {"output": 155.0}  # overrides when the error is imatrix-weighted
DEFAULT_SENSITIVITY = 1.0  # kinds and categories not listed (other architectures' tensors)
FIRST_LAYER_FACTORS: dict[str, float] = {  # blk.0.*, by kind (else category)
    "attn_q": 0.7,
    "attn_k": 0.65,
    "attn_v": 0.75,
    "attn_qkv": 0.7,
    "attn_kv_b": 0.75,
    "attn_output": 0.9,
    "ffn_gate": 3.0,
    "ffn_up": 3.2,
    "ffn_down": 12.0,
}
FIRST_LAYER_FACTOR = 1.7  # blk.0.* of kinds not listed (the geometric mean of those that are)
LAST_LAYER_FACTOR = 2.7  # blk.<n_layer - 1>.*
# Everything but the output matrix adds to the residual stream; with n layers each addition is
# ~1/sqrt(n) of the stream, so its relative error reaches the logits scaled by ~1/n: the measured
# per-tensor sensitivities (REF_LAYERS deep) are scaled by REF_LAYERS / n_layer.

SIZE_UNITS: dict[str, int] = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")
_BLK_RE = re.compile(r"^blk\.\d+\.(.+?)(?:\.weight)?$")


# ====================================================================== parsing
def parse_size(s: str) -> int:
    """'350MB', '1.2GiB', '123456789' (bytes) -> bytes (rounded down). Units: B, KB/MB/GB/TB (10^3..),
    KiB/MiB/GiB/TiB (2^10..), case-insensitive."""
    m = _SIZE_RE.match(str(s))
    unit = m.group(2).lower() if m else None
    if m is None or unit not in SIZE_UNITS:
        raise InputError(f"--target-size {s!r}: expected a size such as 350MB, 1.2GiB or 123456789 (bytes); "
                         f"units: B, KB, MB, GB, TB (powers of 1000), KiB, MiB, GiB, TiB (powers of 1024)")
    n = int(Fraction(m.group(1)) * SIZE_UNITS[unit])
    if n <= 0:
        raise InputError(f"--target-size {s!r}: must be more than 0 bytes")
    return n


def kind_of(name: str) -> str:
    """'blk.3.attn_v.weight' -> 'attn_v'; 'output.weight' -> 'output'."""
    m = _BLK_RE.match(name)
    if m:
        return m.group(1)
    return name[: -len(".weight")] if name.endswith(".weight") else name


def candidates_for(cols: int, ref_type: QType) -> list[QType]:
    """Candidate types for a row length, cheapest first, ending with the exact intermediate type."""
    if cols % 256 == 0:
        c = list(K_CANDIDATES)
    elif cols % 32 == 0:
        c = list(LEGACY_CANDIDATES)
    else:
        c = list(ODD_CANDIDATES)
    if ref_type not in c:
        c.append(ref_type)
    return c


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

    @property
    def damage(self) -> list[float]:
        return [self.sensitivity * r for r in self.rel]

    def index(self, t: QType) -> int:
        return self.types.index(t)


def _sample_chunks(row0: int, n: int, sample: bool):
    """(start, stop) row ranges of a slab [row0, row0 + n) to measure (global rows), deterministic."""
    if not sample:
        yield 0, n
        return
    period = SAMPLE_CHUNK_ROWS * SAMPLE_STRIDE_CHUNKS
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
    """{matrix name: g^2 of the norm feeding it} for the matrices that read a norm's output
    (`norm_of`: matrix kind -> norm kind, the model family's `norm_of`)."""
    from .pipeline import iter_source_slabs

    by_name = {t.name: t for t in plan.tensors}
    # the output matrix reads the final norm; a tied model's is token_embd, measured in that role
    # (its sensitivity is the output matrix's, sensitivity_of)
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


def _measure_tensor(ckpt, spec, w: np.ndarray | None, types: list[QType], sample: bool,
                    rows_per_expert: int, err_w: np.ndarray | None = None) -> tuple[list[float], int]:
    """Relative output error of one tensor per type; `w`: its (n_expert, cols) importance rows or
    None; `err_w`: column weights for the error sums where `w` is None (else unweighted)."""
    from .pipeline import round_through, iter_source_slabs

    se = {t: 0.0 for t in types}
    ss = 0.0
    measured = 0
    probes = [t for t in types if t != spec.ref_type]
    for row0, slab in iter_source_slabs(ckpt, spec):
        inter = round_through(slab, spec.ref_type)
        # the rows measured, grouped by expert (each expert's rows use that expert's importance row);
        # rows are quantized independently, so a gathered block quantizes exactly as in the file
        idx = np.concatenate([np.arange(a, b) for a, b in _sample_chunks(row0, slab.shape[0], sample)])
        expert = (row0 + idx) // rows_per_expert
        for e in np.unique(expert):
            x = np.ascontiguousarray(inter[idx[expert == e]])
            wv = None if w is None else w[min(int(e), w.shape[0] - 1)]
            ew = wv if wv is not None else err_w
            wk = _NO_W if ew is None else np.ascontiguousarray(ew, dtype=np.float32)
            ss += _wsums(x, x, wk)[1]
            for t in probes:
                deq = quants.dequantize(quants.quantize(x, t, wv, check_finite=False), t, x.shape)
                se[t] += _wsums(x, deq, wk)[0]
            measured += x.shape[0]
    rel = [0.0 if t == spec.ref_type else (se[t] / ss if ss > 0 else (0.0 if se[t] == 0 else math.inf)) for t in types]
    return rel, measured


def sensitivity_of(name: str, n_layer: int, table: dict[str, float] | None = None, tied: bool = False,
                   weighted: bool = False) -> float:
    """A tensor's sensitivity: by its kind, else by llama.cpp's category of it (ffn_down_exps -> ffn_down);
    times the first-layer factor of its kind or the last-layer factor; residual-stream tensors times
    REF_LAYERS / n_layer. `weighted`: its error is imatrix-weighted (SENSITIVITY_WEIGHTED). A tied
    token_embd is also the output matrix and takes the larger of the two."""
    from .recipe import category_of

    t = SENSITIVITY if table is None else table
    if weighted and table is None:
        t = {**t, **SENSITIVITY_WEIGHTED}
    kind = kind_of(name)
    cat = category_of(name).value
    s = float(t.get(kind, t.get(cat, DEFAULT_SENSITIVITY)))
    m = re.match(r"^blk\.(\d+)\.", name)
    if m:
        layer = int(m.group(1))
        if layer == 0:
            s *= FIRST_LAYER_FACTORS.get(kind, FIRST_LAYER_FACTORS.get(cat, FIRST_LAYER_FACTOR))
        elif layer == n_layer - 1:
            s *= LAST_LAYER_FACTOR
    if cat != "output":
        s *= REF_LAYERS / max(n_layer, 1)
    if tied and cat == "token_embd":
        s = max(s, float(t.get("output", DEFAULT_SENSITIVITY)))
    return s


def _pinned_names(plan, overrides) -> set[str]:
    """Tensors an explicit override names: they keep the recipe's type."""
    from .recipe import C, category_of, match_names

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
    from . import recipe

    return recipe.ModelFacts(arch=spec.arch, n_layer=spec.n_layer, n_head=spec.n_head,
                             n_head_kv=spec.n_head_kv or spec.n_head, n_expert=spec.n_expert)


def measure(ckpt, spec, plan, overrides=None, imatrix=None, *, sample: bool | None = None,
            sensitivity: dict[str, float] | None = None, progress=None, on_compile=None) -> list[Curve]:
    """One Curve per tensor of `plan` (the -t recipe plan), measuring every quantizable tensor."""
    from .imatrix import weights_for
    from .recipe import should_quantize

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
    # a cold numba cache: compile every probed type's kernels at once, in parallel processes (the
    # intermediate type itself is never quantized: its error is 0)
    from .pipeline import source_kernel_types

    probed = {q for t in todo for q in candidates_for(t.shape[-1], t.spec.ref_type) if q != t.spec.ref_type}
    warm.warm(probed | {t.qtype for t in todo} | source_kernel_types(ckpt), on_start=on_compile)
    curves = []
    n_todo = len(todo)
    done = 0
    for pt in plan.tensors:
        kind = kind_of(pt.name)
        if pt.name not in todo_names:
            curves.append(Curve(pt.name, pt.shape, kind, pt.qtype, True, [pt.qtype], [pt.nbytes], [0.0],
                                sensitivity_of(pt.name, spec.n_layer, sensitivity, tied)))
            continue
        ts = time.perf_counter()
        ref = pt.spec.ref_type
        types = candidates_for(pt.shape[-1], ref)
        if pt.qtype not in types:
            types.append(pt.qtype)
            types.sort(key=lambda q: q.nbytes(pt.shape))
        # the importance rows the writer would use for a quantized type (None when absent)
        w = weights_for(weights, pt.name, pt.shape, ref, Q.Q8_0, plan.ftype) if weights else None
        rows_per_expert = pt.shape[-2] if len(pt.shape) >= 3 else int(np.prod(pt.shape[:-1], dtype=np.int64))
        rel, measured = _measure_tensor(ckpt, pt.spec, w, types, sample, max(rows_per_expert, 1), gains.get(pt.name))
        rows = int(np.prod(pt.shape[:-1], dtype=np.int64)) if len(pt.shape) > 1 else 1
        c = Curve(pt.name, pt.shape, kind, pt.qtype, False, types, [q.nbytes(pt.shape) for q in types], rel,
                  sensitivity_of(pt.name, spec.n_layer, sensitivity, tied, w is not None), w is not None, measured, rows)
        curves.append(c)
        done += 1
        if progress:
            progress(done, n_todo, c, time.perf_counter() - ts)
    return curves


# ====================================================================== knapsack
def _pad(n: int, align: int) -> int:
    return -(-n // align) * align


def unit_for(costs: list[list[int]]) -> int:
    """The knapsack's byte unit: the gcd of every option's extra cost over its tensor's cheapest
    option, coarsened so the grid has at most MAX_UNITS cells (independent of the budget)."""
    g = 0
    span = 0
    for cs in costs:
        lo = min(cs)
        span += max(cs) - lo
        for c in cs:
            g = math.gcd(g, c - lo)
    if g == 0:
        return 1
    cap_units = min(MAX_UNITS, max(1, MAX_CELLS // max(len(costs), 1)))
    return max(g, -(-span // cap_units))


def solve(costs: list[list[int]], damages: list[list[float]], budget: int) -> list[int] | None:
    """Index of the chosen option per item minimizing total damage with sum(cost) <= budget (exact
    when the unit is the gcd; with a coarser unit costs are rounded up). None when even the
    cheapest choice does not fit."""
    n = len(costs)
    lows = [min(cs) for cs in costs]
    base = sum(lows)
    if base > budget:
        return None
    u = unit_for(costs)
    span = sum(max(cs) - lo for cs, lo in zip(costs, lows))
    G = min(budget - base, span) // u
    best = np.zeros(G + 1, dtype=np.float64)  # best[b]: least damage of the items so far within b units
    choice = np.zeros((n, G + 1), dtype=np.uint8)
    for i in range(n):
        ex = [-(-(c - lows[i]) // u) for c in costs[i]]
        new = np.full(G + 1, np.inf)
        ch = choice[i]
        # the cheapest option first (defined everywhere), ties keep the earlier (cheaper) option
        order = sorted(range(len(ex)), key=lambda k: (ex[k], damages[i][k]))
        for k in order:
            c = ex[k]
            if c > G:
                continue
            cand = best[: G + 1 - c] + damages[i][k]
            view = new[c:]
            m = cand < view
            view[m] = cand[m]
            ch[c:][m] = k
        best = new
    out = [0] * n
    b = G
    for i in range(n - 1, -1, -1):
        k = int(choice[i, b])
        out[i] = k
        b -= -(-(costs[i][k] - lows[i]) // u)
    return out


# ====================================================================== the mix
@dataclass
class Mix:
    """The chosen types and everything needed to report why."""

    type_map: dict[str, QType]
    curves: list[Curve]
    choice: list[int]
    ftype: FileType
    budget: int  # bytes the costs must stay within
    budget_kind: str  # "bpw" (tensor bytes) or "size" (whole file)
    target: float  # the --target-bpw value or the --target-size bytes
    header_bytes: int  # GGUF header + metadata + tensor infos, padded
    alignment: int
    n_elements: int
    sampled: bool
    measure_seconds: float
    imatrix: bool
    recipe_damage: float = 0.0
    recipe_bytes: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def tensor_bytes(self) -> int:
        return sum(c.nbytes[k] for c, k in zip(self.curves, self.choice))

    @property
    def file_bytes(self) -> int:
        return self.header_bytes + sum(_pad(c.nbytes[k], self.alignment) for c, k in zip(self.curves, self.choice))

    @property
    def bpw(self) -> float:
        return self.tensor_bytes * 8.0 / max(self.n_elements, 1)

    @property
    def damage(self) -> float:
        tot = 0.0
        for c, k in zip(self.curves, self.choice):  # the knapsack's summation order
            tot += c.damage[k]
        return tot

    def changes(self) -> tuple[list[tuple[Curve, int]], list[tuple[Curve, int]]]:
        """(tensors given more bytes than the recipe, tensors given fewer), largest change first."""
        up, down = [], []
        for c, k in zip(self.curves, self.choice):
            if c.fixed:
                continue
            r = c.index(c.recipe)
            if c.nbytes[k] > c.nbytes[r]:
                up.append((c, k))
            elif c.nbytes[k] < c.nbytes[r]:
                down.append((c, k))
        key = lambda ck: -abs(ck[0].nbytes[ck[1]] - ck[0].nbytes[ck[0].index(ck[0].recipe)])  # noqa: E731
        return sorted(up, key=key), sorted(down, key=key)

    def as_json(self) -> dict:
        up, down = self.changes()
        counts: dict[str, int] = {}
        for c, k in zip(self.curves, self.choice):
            counts[c.types[k].ggml_name] = counts.get(c.types[k].ggml_name, 0) + 1

        def row(c: Curve, k: int) -> dict:
            r = c.index(c.recipe)
            return {"name": c.name, "type": c.types[k].ggml_name, "recipe_type": c.recipe.ggml_name,
                    "bytes": c.nbytes[k], "recipe_bytes": c.nbytes[r], "sensitivity": c.sensitivity,
                    "rel_error": c.rel[k], "recipe_rel_error": c.rel[r], "damage": c.damage[k],
                    "recipe_damage": c.damage[r]}

        return {
            "budget_kind": self.budget_kind,
            "target": self.target,
            "budget_bytes": self.budget,
            "predicted_tensor_bytes": self.tensor_bytes,
            "predicted_file_bytes": self.file_bytes,
            "bits_per_weight": round(self.bpw, 4),
            "predicted_damage": self.damage,
            "recipe": self.ftype.short_name,
            "recipe_tensor_bytes": self.recipe_bytes,
            "recipe_damage": self.recipe_damage,
            "imatrix": self.imatrix,
            "sampled_rows": self.sampled,
            "measure_seconds": round(self.measure_seconds, 3),
            "type_counts": counts,
            "more_bits": [row(c, k) for c, k in up],
            "fewer_bits": [row(c, k) for c, k in down],
            "tensors": [{"name": c.name, "kind": c.kind, "fixed": c.fixed, "sensitivity": c.sensitivity,
                         "chosen": c.types[k].ggml_name,
                         "options": {t.ggml_name: {"bytes": b, "rel_error": e} for t, b, e in zip(c.types, c.nbytes, c.rel)}}
                        for c, k in zip(self.curves, self.choice)],
            "notes": self.notes,
        }

    def summary(self, top: int = 8) -> str:
        """Human-readable report: budget, result, type counts, which tensors got more / fewer bits and why."""
        lines = []
        tgt = f"{self.target:g} bits per weight" if self.budget_kind == "bpw" else f"{int(self.target)} bytes file"
        lines.append(f"automix: target {tgt}; chosen {self.tensor_bytes} tensor bytes, file {self.file_bytes} bytes, "
                     f"{self.bpw:.4f} bits per weight")
        rel = (self.damage / self.recipe_damage - 1) * 100 if self.recipe_damage > 0 else 0.0
        lines.append(f"predicted damage {self.damage:.4g} (sum over tensors of sensitivity x relative output error); "
                     f"the {self.ftype.short_name} recipe: {self.recipe_damage:.4g} at {self.recipe_bytes} tensor bytes "
                     f"({rel:+.1f}%)")
        counts: dict[str, int] = {}
        for c, k in zip(self.curves, self.choice):
            if not c.fixed:
                counts[c.types[k].ggml_name] = counts.get(c.types[k].ggml_name, 0) + 1
        lines.append("types of the quantized tensors: " + ", ".join(f"{n} {v}" for n, v in sorted(counts.items())))
        up, down = self.changes()

        def fmt(c: Curve, k: int) -> str:
            r = c.index(c.recipe)
            db = c.nbytes[k] - c.nbytes[r]
            dd = abs(c.damage[r] - c.damage[k])
            per = (f", {dd / db * 1024:.3g} less damage per KiB spent" if db > 0
                   else f", {dd / -db * 1024:.3g} more damage per KiB saved" if db < 0 else "")
            return (f"  {c.name} {c.recipe.ggml_name}->{c.types[k].ggml_name}: sensitivity {c.sensitivity:g} x "
                    f"rel.err {c.rel[r]:.3g} -> {c.rel[k]:.3g} ({db:+d} bytes{per})")

        if up:
            lines.append(f"more bits than the recipe ({len(up)} tensors; their error cost the most damage per byte):")
            lines += [fmt(c, k) for c, k in up[:top]] + ([f"  ... {len(up) - top} more"] if len(up) > top else [])
        if down:
            lines.append(f"fewer bits than the recipe ({len(down)} tensors; bits there saved the least damage per byte):")
            lines += [fmt(c, k) for c, k in down[:top]] + ([f"  ... {len(down) - top} more"] if len(down) > top else [])
        how = "importance-weighted" if self.imatrix else "without an imatrix (norm-gain weighted where a norm feeds the matrix)"
        samp = "a 1/8 row sample" if self.sampled else "every row"
        lines.append(f"measured {how} on {samp} in {self.measure_seconds:.1f} s")
        lines += self.notes
        return "\n".join(lines)


def header_bytes(plan) -> tuple[int, int]:
    """(bytes before the tensor data, alignment) of the GGUF kquant writes for `plan`; independent of types."""
    from .io.gguf import GGUFStreamWriter
    from .pipeline import output_kv

    w = GGUFStreamWriter(io.BytesIO(), ggml_n_dims=True, name="<size>")
    for key, vtype, value in output_kv(plan):
        w.add_kv(key, vtype, value)
    for t in plan.tensors:
        w.add_tensor(t.name, t.shape, t.qtype)
    return w.write_header(), w.alignment


def choose(curves: list[Curve], budget: int, *, file_mode: bool, alignment: int) -> list[int] | None:
    costs = [[_pad(b, alignment) if file_mode else b for b in c.nbytes] for c in curves]
    return solve(costs, [c.damage for c in curves], budget)


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
    from .pipeline import Options, build_spec, open_model, plan_from_spec

    opts = options or Options()
    ft = parse_ftype(ftype)
    if opts.threads is not None:
        quants.set_threads(opts.threads)
    t0 = time.perf_counter()
    with open_model(model, opts.config) as ckpt:
        spec = build_spec(ckpt, model, config=opts.config, vocab=header, tokenizer_pre=opts.tokenizer_pre)
        plan = plan_from_spec(spec, ft, opts.overrides, opts.imatrix)
        hdr, align = header_bytes(plan) if header else (0, 1)
        curves = measure(ckpt, spec, plan, opts.overrides, opts.imatrix, sample=sample, sensitivity=sensitivity,
                         progress=progress, on_compile=opts.on_compile)
    return Measured(curves, ft, hdr, align, plan.n_elements, time.perf_counter() - t0,
                    bool(opts.imatrix is not None and opts.imatrix.weights))


def mix_for_budget(m: Measured, *, target_bpw: float | None = None, target_size: int | None = None) -> Mix:
    """The least-damage mix of a measured model within --target-bpw or --target-size."""
    if (target_bpw is None) == (target_size is None):
        raise InputError("give exactly one of --target-bpw and --target-size")
    if target_bpw is not None and not (target_bpw > 0 and math.isfinite(target_bpw)):
        raise InputError(f"--target-bpw {target_bpw}: must be a positive number")
    curves, n_el = m.curves, m.n_elements
    file_mode = target_size is not None
    if file_mode:
        if m.header_bytes <= 0:
            raise ValueError("--target-size needs the header size: measure_model(..., header=True)")
        budget = int(target_size) - m.header_bytes
        kind, tgt = "size", float(target_size)
    else:
        budget = int(Fraction(repr(float(target_bpw))) * n_el / 8)
        kind, tgt = "bpw", float(target_bpw)
    choice = choose(curves, budget, file_mode=file_mode, alignment=m.alignment)
    if choice is None:
        low = [min(range(len(c.types)), key=lambda k: c.nbytes[k]) for c in curves]
        tb = sum(c.nbytes[k] for c, k in zip(curves, low))
        if file_mode:
            fb = m.header_bytes + sum(_pad(c.nbytes[k], m.alignment) for c, k in zip(curves, low))
            raise InputError(f"--target-size {int(target_size)}: too small; the smallest mix makes a {fb}-byte file "
                             f"({tb * 8 / n_el:.4f} bits per weight)")
        raise InputError(f"--target-bpw {target_bpw:g}: too small; the smallest mix is {tb * 8 / n_el:.4f} bits per weight")
    type_map = {c.name: c.types[k] for c, k in zip(curves, choice) if not c.fixed}
    recipe = [c.index(c.recipe) for c in curves]
    mix = Mix(type_map, curves, choice, m.ftype, budget, kind, tgt, m.header_bytes, m.alignment, n_el, m.sampled,
              m.seconds, m.imatrix)
    mix.recipe_bytes = sum(c.nbytes[k] for c, k in zip(curves, recipe))
    mix.recipe_damage = sum(c.damage[k] for c, k in zip(curves, recipe))
    if file_mode:
        assert mix.file_bytes <= int(target_size), (mix.file_bytes, target_size)
    else:
        assert mix.tensor_bytes <= budget, (mix.tensor_bytes, budget)
    return mix


def choose_mix(model, ftype="Q4_K_M", options=None, *, target_bpw: float | None = None, target_size: int | None = None,
               sample: bool | None = None, sensitivity: dict[str, float] | None = None, progress=None) -> Mix:
    """measure_model + mix_for_budget: the per-tensor types for one budget."""
    if (target_bpw is None) == (target_size is None):
        raise InputError("give exactly one of --target-bpw and --target-size")
    m = measure_model(model, ftype, options, sample=sample, sensitivity=sensitivity, progress=progress,
                      header=target_size is not None)
    return mix_for_budget(m, target_bpw=target_bpw, target_size=target_size)


def print_measure_progress(i: int, n: int, c: Curve, seconds: float, stream=None) -> None:
    import sys

    stream = stream or sys.stderr
    cells = " ".join(f"{t.ggml_name} {r:.2e}" for t, r in zip(c.types, c.rel) if t.is_quantized)
    print(f"[{i:4d}/{n}] measure {c.name:36s} {cells} ({seconds:.1f} s)", file=stream, flush=True)
