"""Scale searches of the k-quants and the weighted legacy paths, as scalar reference ports.

Ports of the static helpers of ggml/src/ggml-quants.c (llama.cpp as vendored in
llama-cpp-python 0.3.36): make_qx_quants, make_q3_quants, make_qkx2_quants, make_qkx3_quants,
make_qp_quants. Every C `float` expression is reproduced in float32, operation by operation and
in the same order (the reference is SSE2 scalar code: no FMA, no reassociation), so results are
bit-identical. Integers that C converts implicitly are converted here with np.float32().

Arrays are views: `x` float32, `L`/`Laux` int8 (qx, q3) or uint8 (qkx, qp), weights float32;
an empty weights array stands for C's NULL. error_model="numpy": a division by zero gives inf/nan
as in C, not an exception.

The kernels run lane-vectorized specialisations of these (many blocks searched at once, each in
ggml's exact order): legacy._qx_search_lanes, q4_k.search_qkx / qp_quants and those of q2_k,
q3_k, q6_k. These ports stay the readable reference; tests/test_search.py checks them against
the weighted legacy kernels.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._common import GROUP_MAX_EPS, nearest_int

F0 = np.float32(0.0)
F1 = np.float32(1.0)
F01 = np.float32(0.1)
F05 = np.float32(0.5)

@njit(cache=True, no_cfunc_wrapper=True, inline="always", error_model="numpy")
def _qx_weight(x, qw, i, rmse_type):
    # float w = qw ? qw[i] : rmse_type == 1 ? x[i]*x[i] : rmse_type == 2 ? 1 : rmse_type == 3 ? fabsf(x[i]) : sqrtf(fabsf(x[i]));
    if qw.shape[0] > 0:
        return qw[i]
    if rmse_type == 1:
        return x[i] * x[i]
    if rmse_type == 2:
        return F1
    if rmse_type == 3:
        return np.float32(abs(x[i]))
    return np.float32(np.sqrt(np.float32(abs(x[i]))))


# ggml-quants.c: make_qx_quants
@njit(cache=True, no_cfunc_wrapper=True, error_model="numpy")
def make_qx_quants(n, nmax, x, L, rmse_type, qw):
    fmax = F0
    amax = F0
    for i in range(n):
        ax = np.float32(abs(x[i]))
        if ax > amax:
            amax = ax
            fmax = x[i]
    if amax < GROUP_MAX_EPS:  # all zero
        for i in range(n):
            L[i] = 0
        return F0
    iscale = np.float32(np.float32(-nmax) / fmax)
    if rmse_type == 0:
        for i in range(n):
            l = nearest_int(iscale * x[i])
            L[i] = nmax + max(-nmax, min(nmax - 1, l))
        return np.float32(F1 / iscale)
    return_early = False
    if rmse_type < 0:
        rmse_type = -rmse_type
        return_early = True
    sumlx = F0
    suml2 = F0
    for i in range(n):
        l = nearest_int(iscale * x[i])
        l = max(-nmax, min(nmax - 1, l))
        L[i] = l + nmax
        w = _qx_weight(x, qw, i, rmse_type)
        fl = np.float32(l)
        sumlx += w * x[i] * fl
        suml2 += w * fl * fl
    scale = np.float32(sumlx / suml2) if suml2 != F0 else F0
    if return_early:
        return np.float32(F05 * (scale + F1 / iscale)) if suml2 > F0 else np.float32(F1 / iscale)
    best = np.float32(scale * sumlx)
    for is_ in range(-9, 10):
        if is_ == 0:
            continue
        iscale = np.float32(-(np.float32(nmax) + F01 * np.float32(is_)) / fmax)
        sumlx = F0
        suml2 = F0
        for i in range(n):
            l = nearest_int(iscale * x[i])
            l = max(-nmax, min(nmax - 1, l))
            w = _qx_weight(x, qw, i, rmse_type)
            fl = np.float32(l)
            sumlx += w * x[i] * fl
            suml2 += w * fl * fl
        if suml2 > F0 and sumlx * sumlx > best * suml2:
            for i in range(n):
                l = nearest_int(iscale * x[i])
                L[i] = nmax + max(-nmax, min(nmax - 1, l))
            scale = np.float32(sumlx / suml2)
            best = np.float32(scale * sumlx)
    return scale


# ggml-quants.c: make_q3_quants
@njit(cache=True, no_cfunc_wrapper=True, error_model="numpy")
def make_q3_quants(n, nmax, x, L, do_rmse):
    fmax = F0
    amax = F0
    for i in range(n):
        ax = np.float32(abs(x[i]))
        if ax > amax:
            amax = ax
            fmax = x[i]
    if amax < GROUP_MAX_EPS:  # all zero
        for i in range(n):
            L[i] = 0
        return F0
    iscale = np.float32(np.float32(-nmax) / fmax)
    if do_rmse:
        sumlx = F0
        suml2 = F0
        for i in range(n):
            l = nearest_int(iscale * x[i])
            l = max(-nmax, min(nmax - 1, l))
            L[i] = l
            w = x[i] * x[i]
            fl = np.float32(l)
            sumlx += w * x[i] * fl
            suml2 += w * fl * fl
        for itry in range(5):
            n_changed = 0
            for i in range(n):
                w = x[i] * x[i]
                fLi = np.float32(L[i])
                slx = np.float32(sumlx - w * x[i] * fLi)
                if slx > F0:
                    sl2 = np.float32(suml2 - w * fLi * fLi)
                    new_l = nearest_int(x[i] * sl2 / slx)
                    new_l = max(-nmax, min(nmax - 1, new_l))
                    if new_l != L[i]:
                        fnl = np.float32(new_l)
                        slx += w * x[i] * fnl
                        sl2 += w * fnl * fnl
                        if sl2 > F0 and slx * slx * suml2 > sumlx * sumlx * sl2:
                            L[i] = new_l
                            sumlx = slx
                            suml2 = sl2
                            n_changed += 1
            if n_changed == 0:
                break
        for i in range(n):
            L[i] += nmax
        return np.float32(sumlx / suml2) if suml2 > F0 else F0
    for i in range(n):
        l = nearest_int(iscale * x[i])
        l = max(-nmax, min(nmax - 1, l))
        L[i] = l + nmax
    return np.float32(F1 / iscale)


@njit(cache=True, no_cfunc_wrapper=True, inline="always", error_model="numpy")
def _qkx_weight(x, weights, i):
    # make_qkx3_quants: float w = weights ? weights[i] : x[i]*x[i];
    if weights.shape[0] > 0:
        return weights[i]
    return x[i] * x[i]


@njit(cache=True, no_cfunc_wrapper=True, inline="always", error_model="numpy")
def _qkx_search(n, nmax, x, weights, L, Laux, rmin, rdelta, nstep, use_mad, strict_max):
    # Body shared by make_qkx2_quants (strict_max=False: `max == min` and weights required)
    # and make_qkx3_quants (strict_max=True: `max <= min`, NULL weights = x*x).
    rmin = np.float32(rmin)
    rdelta = np.float32(rdelta)
    fmin = x[0]
    fmax = x[0]
    sum_w = _qkx_weight(x, weights, 0)
    sum_x = np.float32(sum_w * x[0])
    for i in range(1, n):
        if x[i] < fmin:
            fmin = x[i]
        if x[i] > fmax:
            fmax = x[i]
        w = _qkx_weight(x, weights, i)
        sum_w += w
        sum_x += w * x[i]
    if fmin > F0:
        fmin = F0
    if (fmax <= fmin) if strict_max else (fmax == fmin):
        for i in range(n):
            L[i] = 0
        return F0, np.float32(-fmin)
    iscale = np.float32(np.float32(nmax) / (fmax - fmin))
    scale = np.float32(F1 / iscale)
    best_error = F0
    for i in range(n):
        l = nearest_int(iscale * (x[i] - fmin))
        L[i] = max(0, min(nmax, l))
        diff = np.float32(scale * np.float32(L[i]) + fmin - x[i])
        diff = np.float32(abs(diff)) if use_mad else np.float32(diff * diff)
        w = _qkx_weight(x, weights, i)
        best_error += w * diff
    if nstep < 1:
        return scale, np.float32(-fmin)
    for is_ in range(nstep + 1):
        iscale = np.float32((rmin + rdelta * np.float32(is_) + np.float32(nmax)) / (fmax - fmin))
        sum_l = F0
        sum_l2 = F0
        sum_xl = F0
        for i in range(n):
            l = nearest_int(iscale * (x[i] - fmin))
            l = max(0, min(nmax, l))
            Laux[i] = l
            w = _qkx_weight(x, weights, i)
            fl = np.float32(l)
            sum_l += w * fl
            sum_l2 += w * fl * fl
            sum_xl += w * fl * x[i]
        D = np.float32(sum_w * sum_l2 - sum_l * sum_l)
        if D > F0:
            this_scale = np.float32((sum_w * sum_xl - sum_x * sum_l) / D)
            this_min = np.float32((sum_l2 * sum_x - sum_l * sum_xl) / D)
            if this_min > F0:
                this_min = F0
                this_scale = np.float32(sum_xl / sum_l2)
            cur_error = F0
            for i in range(n):
                diff = np.float32(this_scale * np.float32(Laux[i]) + this_min - x[i])
                diff = np.float32(abs(diff)) if use_mad else np.float32(diff * diff)
                w = _qkx_weight(x, weights, i)
                cur_error += w * diff
            if cur_error < best_error:
                for i in range(n):
                    L[i] = Laux[i]
                best_error = cur_error
                scale = this_scale
                fmin = this_min
    return scale, np.float32(-fmin)


# ggml-quants.c: make_qkx2_quants -> (scale, the_min)
@njit(cache=True, no_cfunc_wrapper=True, error_model="numpy")
def make_qkx2_quants(n, nmax, x, weights, L, Laux, rmin, rdelta, nstep, use_mad):
    return _qkx_search(n, nmax, x, weights, L, Laux, rmin, rdelta, nstep, use_mad, False)


# ggml-quants.c: make_qkx3_quants -> (scale, the_min)
@njit(cache=True, no_cfunc_wrapper=True, error_model="numpy")
def make_qkx3_quants(n, nmax, x, weights, L, Laux, rmin, rdelta, nstep, use_mad):
    return _qkx_search(n, nmax, x, weights, L, Laux, rmin, rdelta, nstep, use_mad, True)


# ggml-quants.c: make_qp_quants
@njit(cache=True, no_cfunc_wrapper=True, error_model="numpy")
def make_qp_quants(n, nmax, x, L, quant_weights):
    fmax = F0
    for i in range(n):
        fmax = fmax if fmax > x[i] else x[i]  # C's MAX(max, x[i]), NaN included
    if fmax < GROUP_MAX_EPS:  # all zero
        for i in range(n):
            L[i] = 0
        return F0
    iscale = np.float32(np.float32(nmax) / fmax)
    for i in range(n):
        L[i] = nearest_int(iscale * x[i])
    scale = np.float32(F1 / iscale)
    best_mse = F0
    for i in range(n):
        diff = np.float32(x[i] - scale * np.float32(L[i]))
        w = quant_weights[i]
        best_mse += w * diff * diff
    for is_ in range(-4, 5):
        if is_ == 0:
            continue
        iscale_is = np.float32((F01 * np.float32(is_) + np.float32(nmax)) / fmax)
        scale_is = np.float32(F1 / iscale_is)
        mse = F0
        for i in range(n):
            l = nearest_int(iscale_is * x[i])
            l = min(nmax, l)
            diff = np.float32(x[i] - scale_is * np.float32(l))
            w = quant_weights[i]
            mse += w * diff * diff
        if mse < best_mse:
            best_mse = mse
            iscale = iscale_is
    return qp_final(n, nmax, x, L, quant_weights, iscale)


# ggml-quants.c make_qp_quants, after its scale trials (also iq2.qp_quants')
@njit(cache=True, no_cfunc_wrapper=True, error_model="numpy")
def qp_final(n, nmax, x, L, quant_weights, iscale):
    """The levels at the chosen iscale, then up to 5 passes that move single levels while that
    raises sumlx^2 / suml2; the scale sumlx / suml2."""
    sumlx = F0
    suml2 = F0
    for i in range(n):
        l = nearest_int(iscale * x[i])
        l = min(nmax, l)
        L[i] = l
        w = quant_weights[i]
        fl = np.float32(l)
        sumlx += w * x[i] * fl
        suml2 += w * fl * fl
    for itry in range(5):
        n_changed = 0
        for i in range(n):
            w = quant_weights[i]
            fLi = np.float32(L[i])
            slx = np.float32(sumlx - w * x[i] * fLi)
            sl2 = np.float32(suml2 - w * fLi * fLi)
            if slx > F0 and sl2 > F0:
                new_l = nearest_int(x[i] * sl2 / slx)
                new_l = min(nmax, new_l)
                if new_l != L[i]:
                    fnl = np.float32(new_l)
                    slx += w * x[i] * fnl
                    sl2 += w * fnl * fnl
                    if slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    return np.float32(sumlx / suml2) if suml2 > F0 else F0
