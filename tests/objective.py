"""The weighted squared error ggml's quantizers target, per type, in plain numpy (float64).

Written from ggml-quants.c independently of the kernels (tests/test_rounding.py checks the
"best" rounding against it; scripts/bench_rounding.py reports it). Per element weights:

  Q4_K, Q5_K  ref: av_x + |x| (av_x = rms of the 32-value sub-block)  impl: qw*sqrt(2*sum(x^2)/256 + x^2)
  Q3_K        ref: x^2                                                   impl: qw*sqrt(2*sum(x^2)/256 + x^2)
  Q2_K        ref: |x| (ggml ranks by weighted |error|; squared here)   impl: qw*sqrt(sum(x^2)/256 + x^2)
  Q6_K        ref: x^2                                                   impl: qw
  Q4_0 Q4_1 Q5_0 Q5_1  ref: 1 (no search)                                impl: qw*sqrt(sum_row(x^2)/n + x^2)
  Q8_0        1 (ggml ignores the imatrix; with one, qw)
  IQ3_S IQ3_XXS IQ1_M  ref: x^2    impl: qw*sqrt(2*sum(x^2)/256 + x^2)
  IQ1_S               impl only: qw*sqrt(2*sum(x^2)/256 + x^2)
  IQ2_XXS IQ2_XS      impl only: qw*sqrt(sum(x^2)/256 + x^2)
  IQ2_S               ref: 0.5*sum(x^2)/256 + x^2    impl: qw*sqrt(2*sum(x^2)/256 + x^2)
  TQ1_0 TQ2_0 MXFP4 Q1_0 Q2_0  1 (no search; ggml ignores the imatrix; with one, qw)
  IQ4_NL, IQ4_XS  ref: x^2    impl: qw*sqrt(2*sum(x^2)/n + x^2) over the block (n = 32 for IQ4_NL, 256 for IQ4_XS)
"""

from __future__ import annotations

import numpy as np

from kquant.types import QType


def weights(t: QType, x: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
    """(rows, cols) float64 weights of ggml's objective for type t."""
    x = np.asarray(x, dtype=np.float64)
    rows, cols = x.shape
    x2 = x * x
    if t in (QType.Q4_K, QType.Q5_K, QType.Q3_K, QType.Q2_K, QType.Q6_K):
        sb = x2.reshape(rows, cols // 256, 256).sum(-1, keepdims=True)
        if qw is not None:
            q = np.broadcast_to(np.asarray(qw, dtype=np.float64), x.shape)
            if t == QType.Q6_K:
                return np.array(q)
            k = 1.0 if t == QType.Q2_K else 2.0
            sigma2 = np.repeat(k * sb / 256, 256, axis=-1).reshape(rows, cols)
            return q * np.sqrt(sigma2 + x2)
        if t in (QType.Q4_K, QType.Q5_K):
            av = np.sqrt(x2.reshape(rows, cols // 32, 32).mean(-1, keepdims=True))
            return (av + np.abs(x).reshape(rows, cols // 32, 32)).reshape(rows, cols)
        if t == QType.Q2_K:
            return np.abs(x)
        return x2
    if t in (QType.Q4_0, QType.Q4_1, QType.Q5_0, QType.Q5_1):
        if qw is None:
            return np.ones_like(x)
        sigma2 = x2.sum(-1, keepdims=True) / cols
        return np.asarray(qw, dtype=np.float64) * np.sqrt(sigma2 + x2)
    if t in (QType.Q8_0, QType.TQ1_0, QType.TQ2_0, QType.MXFP4, QType.Q1_0, QType.Q2_0):
        return np.ones_like(x) if qw is None else np.array(np.broadcast_to(np.asarray(qw, np.float64), x.shape))
    if t in (QType.IQ3_S, QType.IQ3_XXS, QType.IQ1_S, QType.IQ1_M, QType.IQ2_XXS, QType.IQ2_XS, QType.IQ2_S):
        # quantize_row_iq*_impl: sigma2 over the 256-value super-block
        k = 1.0 if t in (QType.IQ2_XXS, QType.IQ2_XS) else 2.0
        sigma2 = np.repeat(k * x2.reshape(rows, cols // 256, 256).sum(-1, keepdims=True) / 256, 256, axis=-1).reshape(rows, cols)
        if qw is None:
            return 0.25 * sigma2 + x2 if t == QType.IQ2_S else x2
        return np.asarray(qw, dtype=np.float64) * np.sqrt(sigma2 + x2)
    if t in (QType.IQ4_NL, QType.IQ4_XS):
        if qw is None:
            return x2
        n = 32 if t == QType.IQ4_NL else 256
        sigma2 = np.repeat(2 * x2.reshape(rows, cols // n, n).sum(-1, keepdims=True) / n, n, axis=-1).reshape(rows, cols)
        return np.asarray(qw, dtype=np.float64) * np.sqrt(sigma2 + x2)
    raise NotImplementedError(f"no objective for {t.name}")


def block_errors(t: QType, x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per-block sum w (y - x)^2, shape (rows, cols // block_size)."""
    e = w * (np.asarray(y, np.float64) - np.asarray(x, np.float64)) ** 2
    return e.reshape(e.shape[0], -1, t.block_size).sum(-1)
