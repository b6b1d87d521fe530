"""Hybrid (SSM / linear-attention + attention) families: the pieces the whole-file comparisons in
test_arch.py do not isolate. torch's exp is checked against torch itself in the reference venv."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from oracle import refpipeline

from kquant.models.mamba import torch_exp_f16, torch_exp_f32
from kquant.models.qwen import qkvz_rows

REFCONV_PYTHON = refpipeline.refconv_python()

_TORCH_EXP = """
import sys, numpy as np, torch
x = np.frombuffer(sys.stdin.buffer.read(), dtype=np.float32)
n = len(x) // 2
sys.stdout.buffer.write(torch.exp(torch.from_numpy(x[:n].copy())).numpy().tobytes())
sys.stdout.buffer.write(torch.exp(torch.from_numpy(x[n:].copy()).half()).numpy().tobytes())
"""


def test_torch_exp_matches_torch_on_every_16_bit_input():
    """-torch.exp(A_log): every BF16 input (as float32) and every F16 input, against torch in the reference venv."""
    if not REFCONV_PYTHON:
        pytest.skip("set KQUANT_REFCONV_PYTHON to the reference venv's python (scripts/setup_refconv.sh)")
    bf = (np.arange(1 << 16, dtype=np.uint32) << 16).view(np.float32)
    h = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    x = np.concatenate([bf, h.astype(np.float32)])
    out = subprocess.run([REFCONV_PYTHON, "-c", _TORCH_EXP], input=x.tobytes(), capture_output=True, timeout=300, check=True).stdout
    want32 = np.frombuffer(out[: 4 << 16], dtype=np.uint32)
    want16 = np.frombuffer(out[4 << 16:], dtype=np.uint16)
    assert np.array_equal(torch_exp_f32(bf).view(np.uint32), want32)
    assert np.array_equal(torch_exp_f16(h).view(np.uint16), want16)


def test_qkvz_rows_match_the_converters_reshapes():
    """conversion/qwen.py Qwen3NextModel.modify_tensors: permute, view (n_embd, nk, q+k+v+z), split, cat."""
    hp = dict(linear_key_head_dim=3, linear_value_head_dim=2, linear_num_key_heads=2, linear_num_value_heads=4)
    hk, hv, nk, nv = 3, 2, 2, 4
    per = 2 * hk + 2 * (nv // nk) * hv
    e = 5
    w = np.arange(nk * per * e, dtype=np.float32).reshape(nk * per, e)
    t = w.T.reshape(e, nk, per)
    q, k, v, z = np.split(t, np.cumsum([hk, hk, nv // nk * hv]), axis=-1)
    qkv = np.concatenate([q.reshape(e, -1), k.reshape(e, -1), v.reshape(e, -1)], axis=-1).T
    rows_qkv, rows_z = qkvz_rows(hp)
    assert np.array_equal(w[rows_qkv], qkv) and np.array_equal(w[rows_z], z.reshape(e, -1).T)


def _f32_round(q, toward_zero: bool) -> np.float32:
    """An exact rational rounded to float32 (nearest even, or toward zero), by comparing with its float32 neighbours."""
    from fractions import Fraction

    f = np.float32(float(q))  # within one float32 step of q
    lo = f if Fraction(float(f)) <= q else np.nextafter(f, np.float32(-np.inf))
    hi = np.nextafter(lo, np.float32(np.inf)) if Fraction(float(lo)) != q else lo
    if lo == hi:
        return lo
    if toward_zero:
        return lo if q > 0 else hi
    dl, dh = q - Fraction(float(lo)), Fraction(float(hi)) - q
    if dl != dh:
        return lo if dl < dh else hi
    return lo if int(np.float32(lo).view(np.uint32)) % 2 == 0 else hi


def test_vml_exp_fma_emulation_is_exact():
    """fma_rn / fma_rz (float64 sum + TwoSum error, rounded once) equal the exact a * b + c rounded, on random
    operands and on sums built to land on float32 midpoints (where rounding the double first would be wrong)."""
    from fractions import Fraction

    from kquant.models.vml_exp import fma_rn, fma_rz

    rng = np.random.default_rng(7)
    n = 3000
    a = (rng.standard_normal(n) * 2.0 ** rng.integers(-20, 20, n)).astype(np.float32)
    b = (rng.standard_normal(n) * 2.0 ** rng.integers(-20, 20, n)).astype(np.float32)
    c = (rng.standard_normal(n) * 2.0 ** rng.integers(-30, 30, n)).astype(np.float32)
    # midpoints: c = -(a*b rounded to float32) + half an ulp of a value near it, plus a tiny nudge from the product's tail
    m = 1000
    a[:m] = np.float32(1) + np.float32(2.0 ** -23) * rng.integers(1, 1000, m)
    b[:m] = a[:m]
    c[:m] = (rng.choice([1, -1], m) * np.float32(2.0 ** -24)).astype(np.float32)
    for fn, tz in ((fma_rn, False), (fma_rz, True)):
        got = fn(a, b, c)
        want = [_f32_round(Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z)), tz) for x, y, z in zip(a, b, c)]
        assert np.array_equal(got.view(np.uint32), np.array(want, dtype=np.float32).view(np.uint32)), fn.__name__


def test_vml_exp_reproduces_torchs_table_on_every_bf16_input():
    """The MKL port gives torch's exp (the table made from torch by scripts/make_torch_exp.py: correctly rounded but
    for the listed inputs) on every BF16 input; no torch needed."""
    from kquant.models import torch_exp
    from kquant.models.vml_exp import vml_exp

    bits = np.arange(1 << 16, dtype=np.uint32) << 16
    x = bits.view(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        want = np.exp(x.astype(np.float64)).astype(np.float32)  # NaN payloads kept, quieted
    wb = want.view(np.uint32)
    for i, k in enumerate(x.view(np.uint32)):
        if int(k) in torch_exp.F32:
            wb[i] = torch_exp.F32[int(k)]
    assert len(torch_exp.F32) > 200
    assert np.array_equal(vml_exp(x).view(np.uint32), wb)


_TORCH_EXP_RANDOM = """
import sys, numpy as np, torch
x = np.frombuffer(sys.stdin.buffer.read(), dtype=np.float32)
cut = [0, 1, 17, 33, 1000, 4099, len(x)]  # tensors of several lengths: no vector body / tail difference
sys.stdout.buffer.write(b"".join(torch.exp(torch.from_numpy(x[a:b].copy())).numpy().tobytes() for a, b in zip(cut, cut[1:])))
"""


def test_vml_exp_matches_torch_on_random_float32():
    """-torch.exp(A_log) of F32 sources: random bit patterns (every exponent, NaN and infinities included) and
    random values of the vector path's range, against torch in the reference venv (on an AVX-512 machine:
    MKL's AVX2 kernel rounds differently, skipped elsewhere)."""
    if not REFCONV_PYTHON:
        pytest.skip("set KQUANT_REFCONV_PYTHON to the reference venv's python (scripts/setup_refconv.sh)")
    cap = subprocess.run([REFCONV_PYTHON, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                         capture_output=True, text=True, timeout=120, check=True).stdout.strip()
    if cap != "AVX512":
        pytest.skip(f"torch runs MKL's {cap} exp kernel here; kquant ports the AVX-512 one")
    from kquant.models.vml_exp import vml_exp

    rng = np.random.default_rng(3)
    bits = np.concatenate([rng.integers(0, 2**32, 200_000, dtype=np.uint64),
                           rng.integers(0, 0x42AEAC4F, 200_000, dtype=np.uint64) | (rng.integers(0, 2, 200_000, dtype=np.uint64) << 31)])
    x = bits.astype(np.uint32).view(np.float32)
    out = subprocess.run([REFCONV_PYTHON, "-c", _TORCH_EXP_RANDOM], input=x.tobytes(), capture_output=True, timeout=300,
                         check=True).stdout
    want = np.frombuffer(out, dtype=np.float32)
    got = vml_exp(x)
    same = got.view(np.uint32) == want.view(np.uint32)  # NaN payloads included
    assert same.all(), [hex(v) for v in x.view(np.uint32)[~same][:5]]
