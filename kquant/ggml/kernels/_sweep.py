"""The exact weighted scale search for y = s*l, l an integer in [lo, hi], used by rounding="best".

Not a port (the idea is compilade's cumulative search, llama.cpp PR #12557). For a group of n
values x with weights w and a real step s, the nearest levels l_i(s) = clamp(round(x_i / s), lo,
hi) change only at finitely many inverse steps t = 1/s: x_i's level goes from k-1 to k (|k| >= 1)
at t = (|k| - 1/2) / |x_i|. Between two such breakpoints the levels are fixed, and for fixed
levels the best step is the weighted least-squares one, s = Sxl / Sll (Sxl = sum w x l, Sll = sum
w l^2), with error sum w x^2 - Sxl^2 / Sll. Sweeping the breakpoints in increasing t changes one
level by one per step, so Sxl and Sll are updated in O(1) and every level vector that nearest
rounding can produce is scored; for s < 0 the same sweep runs on -x. The best score is the exact
minimum of the weighted error over all real steps (nearest levels at a step are optimal for that
step, so the optimum's levels are among those scored). Callers store s rounded to fp16 and round
the levels again against the stored value, trying the fp16 neighbours of the K best steps.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._common import fp16_to_fp32, fp32_to_fp16

JIT = dict(cache=True, no_cfunc_wrapper=True, error_model="numpy")


@njit(**JIT)
def sym_sweep(x, xo, w, wo, n, lo, hi, K, ts, idx, L, cs, cv):
    """Top-K real steps s (both signs) of y = s*l for x[xo:xo+n], weights w[wo:wo+n], l in [lo, hi].

    cs[:k] gets the steps, cv[:k] their scores Sxl^2/Sll (best first; error = sum w x^2 - score);
    returns k <= K. ts/idx (float64/int64, >= n*max(hi, -lo)) and L (float64, >= n) are scratch."""
    k = 0
    for side in range(2):
        sgn = 1.0 if side == 0 else -1.0
        m = 0
        for i in range(n):
            v = sgn * np.float64(x[xo + i])
            if v > 0:
                for q in range(1, hi + 1):
                    ts[m] = (q - 0.5) / v
                    idx[m] = i
                    m += 1
            elif v < 0:
                for q in range(1, -lo + 1):
                    ts[m] = (q - 0.5) / -v
                    idx[m] = i
                    m += 1
            L[i] = 0.0
        if m == 0:
            continue
        order = np.argsort(ts[:m], kind="mergesort")  # stable: deterministic order of equal breakpoints
        sxl = 0.0
        sll = 0.0
        for e in range(m):
            i = idx[order[e]]
            v = sgn * np.float64(x[xo + i])
            a = 1.0 if v > 0 else -1.0
            l0 = L[i]
            l1 = l0 + a
            L[i] = l1
            wi = np.float64(w[wo + i])
            sxl += wi * v * a
            sll += wi * (l1 * l1 - l0 * l0)
            if e + 1 < m and ts[order[e + 1]] == ts[order[e]]:
                continue  # levels of a single breakpoint change together
            if not sll > 0:
                continue
            sc = sxl * sxl / sll
            s = sgn * sxl / sll
            # insert into the top-K list (kept sorted, best first)
            if k < K:
                pos = k
                k += 1
            elif sc > cv[K - 1]:
                pos = K - 1
            else:
                continue
            while pos > 0 and cv[pos - 1] < sc:
                cv[pos] = cv[pos - 1]
                cs[pos] = cs[pos - 1]
                pos -= 1
            cv[pos] = sc
            cs[pos] = s
    return k


@njit(**JIT)
def fp16_near(s, j):
    """j = 0: fp16(s) (nearest); 1, 2: its fp16 neighbours of larger / smaller magnitude; as
    float32, or 0 when there is none (zero, overflow)."""
    h = np.int32(fp32_to_fp16(np.float32(s)))
    mag = h & 0x7FFF
    if j == 1:
        mag += 1
    elif j == 2:
        mag -= 1
    if mag <= 0 or mag >= 0x7C00:
        return np.float32(0.0)
    return fp16_to_fp32(np.uint16((h & 0x8000) | mag))


_U = np.uint64


@njit(inline="always", **JIT)
def _wsq(x, xo, w, y, j):
    """w[j] (y[j] - x[xo])^2 in float64."""
    r = np.float64(y[j]) - np.float64(x[xo])
    return w[j] * r * r


@njit(**JIT)
def werr(x, o, w, y, n):
    """sum_j w[j] (y[j] - x[o + j])^2 over j < n, in float64: a block's weighted squared error.
    Four running sums (j mod 4, then the values past the last multiple of 4), added in a fixed
    order: the same value on every machine, and four chains of float64 additions instead of one
    (a single running sum waits on the previous addition at every value). Unsigned indices: signed
    ones keep numba's negative-index test on every load."""
    e0 = e1 = e2 = e3 = 0.0
    n = _U(n)
    o = _U(o)
    m = n - n % _U(4)
    for j in range(_U(0), m, _U(4)):
        e0 += _wsq(x, o + j, w, y, j)
        e1 += _wsq(x, o + j + _U(1), w, y, j + _U(1))
        e2 += _wsq(x, o + j + _U(2), w, y, j + _U(2))
        e3 += _wsq(x, o + j + _U(3), w, y, j + _U(3))
    e = (e0 + e2) + (e1 + e3)
    for j in range(m, n):
        e += _wsq(x, o + j, w, y, j)
    return e


@njit(**JIT)
def werr2(x, o, w, u, y, n):
    """(werr(x, o, w, y, n), werr(x, o, u, y, n)) in one loop: the same sums, in the same order (a
    block's error in ggml's weights and in the output error's; eight chains of additions in flight
    instead of four, one pass)."""
    e0 = e1 = e2 = e3 = f0 = f1 = f2 = f3 = 0.0
    n = _U(n)
    o = _U(o)
    m = n - n % _U(4)
    for j in range(_U(0), m, _U(4)):
        e0 += _wsq(x, o + j, w, y, j)
        f0 += _wsq(x, o + j, u, y, j)
        e1 += _wsq(x, o + j + _U(1), w, y, j + _U(1))
        f1 += _wsq(x, o + j + _U(1), u, y, j + _U(1))
        e2 += _wsq(x, o + j + _U(2), w, y, j + _U(2))
        f2 += _wsq(x, o + j + _U(2), u, y, j + _U(2))
        e3 += _wsq(x, o + j + _U(3), w, y, j + _U(3))
        f3 += _wsq(x, o + j + _U(3), u, y, j + _U(3))
    e = (e0 + e2) + (e1 + e3)
    f = (f0 + f2) + (f1 + f3)
    for j in range(m, n):
        e += _wsq(x, o + j, w, y, j)
        f += _wsq(x, o + j, u, y, j)
    return e, f
