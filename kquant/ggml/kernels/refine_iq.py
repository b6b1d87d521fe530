"""`rounding="refine"` for the grid i-quants IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S:
best's own kernels (better_iq: ggml's grid points and signs kept, every fp16 d near ggml's tried
with the nearest sub-block scales, in closed form). ggml's grid searches cost so much more than
that scale search that best already stays within about twice ggml's time for these types
(scripts/bench_rounding.py), so refine has nothing cheaper to offer.
"""

from __future__ import annotations

from ..types import QType
from .better_iq import BEST

REFINE = {t: BEST[t] for t in (QType.IQ1_S, QType.IQ1_M, QType.IQ2_XXS, QType.IQ2_XS, QType.IQ2_S, QType.IQ3_XXS, QType.IQ3_S)}
