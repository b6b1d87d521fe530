"""Round-trip error between a source tensor and its dequantized copy, accumulated in float64.

Streaming: `ErrorStats.update(src, deq)` takes row chunks, so a tensor never has to be whole in
memory. Definitions (n values, e = deq - src):
    rmse     = sqrt(sum(e^2) / n)
    max_abs  = max |e|
    rel_rmse = rmse / sqrt(sum(src^2) / n)          (0 when both are 0, inf when only src is 0)
    snr_db   = 10 log10(sum(src^2) / sum(e^2))     (inf when e == 0)
    cosine   = <src, deq> / (|src| |deq|)           (1 when both are 0, 0 when only one is)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def _sums(src, deq):
    # src, deq: float32 (rows, cols) -> per-row float64 sums, reduced in row order by the caller
    rows, cols = src.shape
    out = np.zeros((rows, 5), dtype=np.float64)
    for r in range(rows):
        se = 0.0
        ss = 0.0
        sd = 0.0
        dot = 0.0
        mx = 0.0
        for c in range(cols):
            s = np.float64(src[r, c])
            d = np.float64(deq[r, c])
            e = d - s
            se += e * e
            ss += s * s
            sd += d * d
            dot += s * d
            a = abs(e)
            if a > mx:
                mx = a
        out[r, 0] = se
        out[r, 1] = ss
        out[r, 2] = sd
        out[r, 3] = dot
        out[r, 4] = mx
    return out


@dataclass
class Metrics:
    n: int
    rmse: float
    max_abs: float
    rel_rmse: float
    snr_db: float
    cosine: float

    def as_dict(self) -> dict:
        return asdict(self)


class ErrorStats:
    """Accumulates the sums behind Metrics over row chunks of one tensor."""

    __slots__ = ("n", "se", "ss", "sd", "dot", "mx")

    def __init__(self) -> None:
        self.n = 0
        self.se = self.ss = self.sd = self.dot = self.mx = 0.0

    def update(self, src: np.ndarray, deq: np.ndarray) -> None:
        if src.shape != deq.shape:
            raise ValueError(f"shape mismatch: source {src.shape}, dequantized {deq.shape}")
        if src.size == 0:
            return
        cols = src.shape[-1] if src.ndim else 1
        s2 = np.ascontiguousarray(src, dtype=np.float32).reshape(-1, cols)
        d2 = np.ascontiguousarray(deq, dtype=np.float32).reshape(-1, cols)
        sums = _sums(s2, d2)
        self.n += src.size
        self.se += float(sums[:, 0].sum())
        self.ss += float(sums[:, 1].sum())
        self.sd += float(sums[:, 2].sum())
        self.dot += float(sums[:, 3].sum())
        self.mx = max(self.mx, float(sums[:, 4].max()))

    def merge(self, other: "ErrorStats") -> None:
        self.n += other.n
        self.se += other.se
        self.ss += other.ss
        self.sd += other.sd
        self.dot += other.dot
        self.mx = max(self.mx, other.mx)

    def result(self) -> Metrics:
        n = max(self.n, 1)
        rmse = math.sqrt(self.se / n)
        rms_src = math.sqrt(self.ss / n)
        if rms_src > 0:
            rel = rmse / rms_src
        else:
            rel = 0.0 if rmse == 0 else math.inf
        if self.se > 0:
            snr = 10.0 * math.log10(self.ss / self.se) if self.ss > 0 else -math.inf
        else:
            snr = math.inf
        den = math.sqrt(self.ss) * math.sqrt(self.sd)
        if den > 0:
            cos = self.dot / den
        else:
            cos = 1.0 if self.ss == 0 and self.sd == 0 else 0.0
        return Metrics(self.n, rmse, self.mx, rel, snr, cos)


def compare(src: np.ndarray, deq: np.ndarray) -> Metrics:
    """Metrics of one whole tensor."""
    st = ErrorStats()
    st.update(src, deq)
    return st.result()
