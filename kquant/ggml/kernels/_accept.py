"""When a block searched by rounding="best" replaces ggml's: lower in two errors, not one.

A block's error can be weighed two ways:

- ggml's objective E_w = sum w (y - x)^2, the weights ggml's own search uses for the type and path
  (x^2 for Q3_K/Q6_K/IQ* without an imatrix, av_x + |x| for Q4_K/Q5_K, qw * sqrt(sigma2 + x^2) on
  most imatrix paths, ...; each better_*.py names its own);
- the output error E_u = sum u (y - x)^2, u the imatrix's mean squared activation of each column
  (1 without one): what the block adds to the layer's output, E[(sum_j (y_j - x_j) a_j)^2], when
  the activations are uncorrelated.

Where w is not proportional to u, lowering E_w alone can raise E_u: on a trained Llama, searching
Q3_K harder for ggml's x^2-weighted objective lowered it by 17% and raised the plain error by 3%,
and the KL divergence of Q3_K_M files went up. So a searched block replaces ggml's only when it
lowers both (by more than MARGIN, relative), and of those the one of lowest output error is
written: no block gets worse in either. The search runs once per weight vector of BLENDS: ggml's
weights, then an even blend of ggml's and u (each normalised to sum 1); once when w is
proportional to u. (Searching with u alone as well lowered the plain error of Q2_K by 20% but
raised the KL of Q2_K files by 5%: the output error is not all that matters either. On that
model, these two passes gave the lowest KL of the variants tried, scripts/bench_mix.py.) Rows are
independent, so nothing depends on the thread count.
"""

from __future__ import annotations

import numpy as np
from numba import njit

JIT = dict(cache=True, no_cfunc_wrapper=True, error_model="numpy")

MARGIN = 1e-9  # a candidate must lower both errors by this fraction
# share of ggml's weights in each search pass's weights (the rest u's): ggml's, an even blend
BLENDS = (1.0, 0.5)
N_BLENDS = len(BLENDS)


@njit(**JIT)
def out_weights(qw, o, u, n):
    """u[:n] = the output error's weights of the block at column o: qw[o:o+n], or 1 without an imatrix."""
    if qw.shape[0] == 0:
        for j in range(n):
            u[j] = 1.0
    else:
        for j in range(n):
            u[j] = qw[o + j]


@njit(**JIT)
def n_passes(w, u, n):
    """Search passes for the block: 1 when w[:n] is proportional to u[:n], else N_BLENDS."""
    sw = 0.0
    su = 0.0
    for j in range(n):
        sw += w[j]
        su += u[j]
    for j in range(n):
        a = w[j] * su
        b = u[j] * sw
        if abs(a - b) > 1e-12 * (a + b):
            return N_BLENDS
    return 1


@njit(**JIT)
def pass_weights(w, u, p, v, n):
    """The search weights of pass p: w, u, or the blend BLENDS[p] of both (normalised) in v."""
    a = BLENDS[p]
    if a == 1.0:
        return w
    if a == 0.0:
        return u
    sw = 0.0
    su = 0.0
    for j in range(n):
        sw += w[j]
        su += u[j]
    for j in range(n):
        v[j] = (a * w[j] / sw if sw > 0 else 0.0) + ((1.0 - a) * u[j] / su if su > 0 else 0.0)
    return v


@njit(**JIT)
def better(e_w, e_u, ggml_w, best_u):
    """A candidate of errors (e_w, e_u) replaces the kept block: its E_w below ggml's block's (ggml_w) and its
    E_u below the kept block's (best_u, ggml's to start with). The written block is then the candidate of
    lowest output error among those better than ggml's in ggml's objective."""
    return e_w < ggml_w * (1.0 - MARGIN) and e_u < best_u * (1.0 - MARGIN)
