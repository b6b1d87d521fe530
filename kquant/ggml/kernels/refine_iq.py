"""`rounding="refine"` for the grid i-quants IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S:
best's scale search (better_iq: ggml's grid points and signs kept, the super-block d and the
nearest sub-block scales for it, in closed form) over fewer d: every STRIDE-th fp16 code of best's
range, then every code within STRIDE of the best of those (about 1/6 of best's candidates; the
sub-block scales are still the exact optimum for each d tried). The result replaces ggml's block
under the same rule as best's (_accept.better).
"""

from __future__ import annotations

from numba import njit

from ..types import QType
from .better_iq import JIT, K_IQ1_M, K_IQ1_S, K_IQ2_S, K_IQ2_XS, K_IQ2_XXS, K_IQ3_S, K_IQ3_XXS, improve
from .iq1 import quantize_iq1_m, quantize_iq1_s
from .iq2 import quantize_iq2_s, quantize_iq2_xs, quantize_iq2_xxs
from .iq3 import quantize_iq3_s, quantize_iq3_xxs

STRIDE = 8  # fp16 codes between the coarse pass's candidates


@njit(nogil=True, **JIT)
def quantize_iq1_s_refine(x, qw, out):
    n = quantize_iq1_s(x, qw, out)
    improve(K_IQ1_S, x, qw, out, STRIDE)
    return n


@njit(nogil=True, **JIT)
def quantize_iq1_m_refine(x, qw, out):
    n = quantize_iq1_m(x, qw, out)
    improve(K_IQ1_M, x, qw, out, STRIDE)
    return n


@njit(nogil=True, **JIT)
def quantize_iq2_xxs_refine(x, qw, out):
    n = quantize_iq2_xxs(x, qw, out)
    improve(K_IQ2_XXS, x, qw, out, STRIDE)
    return n


@njit(nogil=True, **JIT)
def quantize_iq2_xs_refine(x, qw, out):
    n = quantize_iq2_xs(x, qw, out)
    improve(K_IQ2_XS, x, qw, out, STRIDE)
    return n


@njit(nogil=True, **JIT)
def quantize_iq2_s_refine(x, qw, out):
    n = quantize_iq2_s(x, qw, out)
    improve(K_IQ2_S, x, qw, out, STRIDE)
    return n


@njit(nogil=True, **JIT)
def quantize_iq3_xxs_refine(x, qw, out):
    quantize_iq3_xxs(x, qw, out)
    improve(K_IQ3_XXS, x, qw, out, STRIDE)


@njit(nogil=True, **JIT)
def quantize_iq3_s_refine(x, qw, out):
    quantize_iq3_s(x, qw, out)
    improve(K_IQ3_S, x, qw, out, STRIDE)


REFINE = {
    QType.IQ1_S: quantize_iq1_s_refine,
    QType.IQ1_M: quantize_iq1_m_refine,
    QType.IQ2_XXS: quantize_iq2_xxs_refine,
    QType.IQ2_XS: quantize_iq2_xs_refine,
    QType.IQ2_S: quantize_iq2_s_refine,
    QType.IQ3_XXS: quantize_iq3_xxs_refine,
    QType.IQ3_S: quantize_iq3_s_refine,
}
