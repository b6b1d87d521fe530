"""Allocation of the automatic mix: the least-damage choice of types within a byte budget.

`solve`: choose one candidate per tensor minimizing total damage subject to
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

import math
import re
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from ..errors import InputError
from ..types import FileType, QType
from .measure import Curve, Measured

MAX_UNITS = 1 << 18  # knapsack grid cells above the cheapest mix
MAX_CELLS = 1 << 26  # tensors x grid cells of the choice table (64 MiB of uint8)

SIZE_UNITS: dict[str, int] = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")


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



# ====================================================================== knapsack
def pad(n: int, align: int) -> int:
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
        return self.header_bytes + sum(pad(c.nbytes[k], self.alignment) for c, k in zip(self.curves, self.choice))

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
                    "recipe_damage": c.damage[r],
                    **({"input_sensitivity": c.input_sensitivity, "input_rel_error": c.input_rel[k],
                        "recipe_input_rel_error": c.input_rel[r]} if c.input_rel is not None else {})}

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
                         "options": {t.ggml_name: {"bytes": b, "rel_error": e,
                                                   **({"input_rel_error": c.input_rel[i]} if c.input_rel is not None else {})}
                                     for i, (t, b, e) in enumerate(zip(c.types, c.nbytes, c.rel))}}
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
            also = (f" + input role {c.input_sensitivity:g} x rel.err {c.input_rel[r]:.3g} -> {c.input_rel[k]:.3g}"
                    if c.input_rel is not None else "")
            return (f"  {c.name} {c.recipe.ggml_name}->{c.types[k].ggml_name}: sensitivity {c.sensitivity:g} x "
                    f"rel.err {c.rel[r]:.3g} -> {c.rel[k]:.3g}{also} ({db:+d} bytes{per})")

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



def choose(curves: list[Curve], budget: int, *, file_mode: bool, alignment: int) -> list[int] | None:
    costs = [[pad(b, alignment) if file_mode else b for b in c.nbytes] for c in curves]
    return solve(costs, [c.damage for c in curves], budget)



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
            fb = m.header_bytes + sum(pad(c.nbytes[k], m.alignment) for c, k in zip(curves, low))
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

