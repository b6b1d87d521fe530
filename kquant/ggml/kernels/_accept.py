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
"""

from __future__ import annotations

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


@njit(**JIT)
def better(e_w, e_u, ggml_w, best_u):
    """A candidate of errors (e_w, e_u) replaces the kept block: its E_w below ggml's block's (ggml_w) and its
    E_u below the kept block's (best_u, ggml's to start with). The written block is then the candidate of
    lowest output error among those better than ggml's in ggml's objective."""
    return e_w < ggml_w * (1.0 - MARGIN) and e_u < best_u * (1.0 - MARGIN)
