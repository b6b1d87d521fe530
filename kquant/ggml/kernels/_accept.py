"""When a block searched by rounding="best" replaces ggml's: lower in two errors, not one.

A block's error can be weighed two ways:

- ggml's objective E_w = sum w (y - x)^2, the weights ggml's own search uses for the type and path
  (x^2 for Q3_K/Q6_K/IQ* without an imatrix, av_x + |x| for Q4_K/Q5_K, qw * sqrt(sigma2 + x^2) on
  most imatrix paths, ...; each better_*.py names its own);
- the output error E_u = sum u (y - x)^2, u the imatrix's mean squared activation of each column
  (1 without one): what the block adds to the layer's output, E[(sum_j (y_j - x_j) a_j)^2], when
  the activations are uncorrelated.

Where w is not proportional to u, lowering E_w alone can raise E_u: on a trained Llama (model A
of scripts/bench_mix.py), searching Q3_K harder for ggml's x^2-weighted objective lowered it by
17% per tensor and raised the plain error by 3%, and Q3_K_M files had a 2-3% higher KL divergence
than llama.cpp's. So a searched block replaces ggml's only when it lowers both (by more than
MARGIN, relative); of several such candidates the one of lowest output error is written. No
block gets worse in either, and the search itself still minimises ggml's objective: searching
with u (or blends of u and w) as well lowered the output error further (Q2_K's by 20%) but raised
the KL of Q2_K files by 5-12% on two models; E_u is a diagonal model of the output error and
ignores how the activations are correlated, so it is a guard here, not a target. Measured over
3 permuted copies each of models A and T, Q4_K_M / Q3_K_M / Q2_K / Q4_0 with and without an
imatrix (README, "Rounding").

refine's Q2_K adds a third condition (refit_better): the block must not shrink (or stretch) x more
than ggml's does, in the output error's weights: |sum u x (y - x)| no larger than for ggml's block.
Least-squares fits shrink: their residual is orthogonal to y, so sum u x y = sum u y^2 < sum u x^2,
and a refit that lowers the error usually lowers the block's coherent gain sum u x y / sum u x^2 as
well. Over a whole matrix that is a systematic scale-down of the layer (not noise that averages
out), which E_u does not see: on model T's Q2_K file without an imatrix, refine's Q2_K blocks
lowered E and E_u by 5.5% and the matrices' gain from 0.983 (ggml) to 0.970, and the KL divergence
rose on all three copies (+2% to +6%); with this condition the same kernel lowers it on all three
(-0.5% to -3.3%).
Why Q2_K only: refine's candidates elsewhere are such fits too, and with the condition every one was
rejected on some inputs (Q5_0 with an imatrix kept no refit at all; best's IQ1_S neither): their
gains would go, while their files' KL was lower without it (README, "Rounding"). The condition is
where the measured loss was.
"""

from __future__ import annotations

import numpy as np
from numba import njit

JIT = dict(cache=True, no_cfunc_wrapper=True, error_model="numpy")

MARGIN = 1e-9  # a candidate must lower both errors by this fraction


@njit(**JIT)
def out_weights(qw, o, u, n):
    """u[:n] = the output error's weights of the block at column o: qw[o:o+n], or 1 without an imatrix."""
    if qw.shape[0] == 0:
        for j in range(n):
            u[j] = 1.0
    else:
        for j in range(n):
            u[j] = qw[o + j]


_U = np.uint64


@njit(inline="always", **JIT)
def _terms(x, xo, u, y, j):
    """(u[j] r^2, u[j] x r) for r = y[j] - x[xo], in float64: one value's share of out_errors."""
    xd = np.float64(x[xo])
    r = np.float64(y[j]) - xd
    return u[j] * r * r, u[j] * xd * r


@njit(**JIT)
def out_errors(x, o, u, y, n):
    """(E_u, G) of the block y of x[o:o+n]: its output error sum u (y - x)^2 and its coherent shrink
    G = |sum u x (y - x)| (0 when its gain sum u x y / sum u x^2 is 1), both in float64. Four running
    sums of each (j mod 4, then the values past the last multiple of 4) added in a fixed order, as
    _sweep.werr: the same values on every machine, without one long chain of dependent additions."""
    e0 = e1 = e2 = e3 = g0 = g1 = g2 = g3 = 0.0
    n = _U(n)
    o = _U(o)
    m = n - n % _U(4)
    for j in range(_U(0), m, _U(4)):
        a, b = _terms(x, o + j, u, y, j)
        e0 += a
        g0 += b
        a, b = _terms(x, o + j + _U(1), u, y, j + _U(1))
        e1 += a
        g1 += b
        a, b = _terms(x, o + j + _U(2), u, y, j + _U(2))
        e2 += a
        g2 += b
        a, b = _terms(x, o + j + _U(3), u, y, j + _U(3))
        e3 += a
        g3 += b
    e = (e0 + e2) + (e1 + e3)
    g = (g0 + g2) + (g1 + g3)
    for j in range(m, n):
        a, b = _terms(x, o + j, u, y, j)
        e += a
        g += b
    return e, abs(g)


@njit(**JIT)
def better(e_w, e_u, ggml_w, best_u):
    """A candidate of errors (e_w, e_u) replaces the kept block: its E_w below ggml's block's (ggml_w) and its
    E_u below the kept block's (best_u, ggml's to start with). The written block is then the candidate of
    lowest output error among those better than ggml's in ggml's objective."""
    return e_w < ggml_w * (1.0 - MARGIN) and e_u < best_u * (1.0 - MARGIN)


@njit(**JIT)
def refit_better(e_w, out, ggml_w, ref):
    """rounding="refine"'s rule: `better`, and the refit shrinks x no more than ggml's block does.
    out = (E_u, G) of the refit (out_errors), ref = those of ggml's block."""
    return better(e_w, out[0], ggml_w, ref[0]) and out[1] <= ref[1]
