"""Hybrid (SSM / linear-attention + attention) families: the pieces the whole-file comparisons in
test_arch.py do not isolate. torch's exp: the port of the MKL kernel this machine runs is checked against
torch itself in the reference venv; each port on its own against a table recorded from torch on a machine
running its kernel."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from oracle import refpipeline

from kquant.errors import InputError
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


def _this_machines_port():
    """The port of the MKL kernel torch runs here (whatever KQUANT_TORCH_EXP says); skips where none is ported."""
    from kquant.models.vml_exp import KERNELS, mkl_kernel

    k = mkl_kernel()
    if k not in ("Z0", "EX"):
        pytest.skip(f"torch runs MKL's {k or 'no'} exp kernel here; kquant ports Z0 (Intel AVX-512) and EX (other x86)")
    return KERNELS[k.lower()]


def test_torch_exp_matches_torch_on_every_16_bit_input():
    """-torch.exp(A_log): every BF16 input (as float32) and every F16 input, against torch in the reference venv."""
    if not REFCONV_PYTHON:
        pytest.skip("set KQUANT_REFCONV_PYTHON to the reference venv's python (scripts/setup_refconv.sh)")
    port = _this_machines_port()
    bf = (np.arange(1 << 16, dtype=np.uint32) << 16).view(np.float32)
    h = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    x = np.concatenate([bf, h.astype(np.float32)])
    out = subprocess.run([REFCONV_PYTHON, "-c", _TORCH_EXP], input=x.tobytes(), capture_output=True, timeout=300, check=True).stdout
    want32 = np.frombuffer(out[: 4 << 16], dtype=np.uint32)
    want16 = np.frombuffer(out[4 << 16:], dtype=np.uint16)
    assert np.array_equal(port(bf).view(np.uint32), want32)
    assert np.array_equal(torch_exp_f16(h).view(np.uint16), want16)


def test_torch_exp_f32_follows_the_cpu_and_kquant_torch_exp(monkeypatch):
    """torch_exp_f32 runs the port vml_exp.torch_exp_kernel picks: from the CPU like MKL (Intel with AVX-512: Z0;
    other x86 vendors: EX; Intel with AVX2 only: EX, the closer to its L9), or KQUANT_TORCH_EXP."""
    from kquant.models import vml_exp as V

    avx512 = {"avx2", "fma", "avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}
    assert V.mkl_kernel("GenuineIntel", avx512, "") == "Z0"
    assert V.mkl_kernel("GenuineIntel", avx512, "AVX2") == "L9"
    assert V.mkl_kernel("GenuineIntel", {"avx2", "fma"}, "") == "L9"
    assert V.mkl_kernel("AuthenticAMD", avx512, "") == "EX"
    assert V.mkl_kernel("AuthenticAMD", {"avx2", "fma"}, "AVX512") == "EX"
    assert V.mkl_kernel("", set(), "") == ""
    x = (np.arange(1 << 16, dtype=np.uint32) << 16).view(np.float32)
    z0, ex = V.vml_exp(x), V.vml_exp_ex(x)
    assert not np.array_equal(z0.view(np.uint32), ex.view(np.uint32))
    for env, want in (("z0", z0), ("EX", ex)):
        monkeypatch.setenv("KQUANT_TORCH_EXP", env)
        monkeypatch.setattr(V, "_KERNEL", None)
        assert V.torch_exp_kernel() == env.lower()
        assert np.array_equal(torch_exp_f32(x).view(np.uint32), want.view(np.uint32))
    monkeypatch.setenv("KQUANT_TORCH_EXP", "l9")
    monkeypatch.setattr(V, "_KERNEL", None)
    with pytest.raises(InputError, match="KQUANT_TORCH_EXP"):
        V.torch_exp_kernel()
    monkeypatch.delenv("KQUANT_TORCH_EXP")
    monkeypatch.setattr(V, "_KERNEL", None)
    want = {"Z0": "z0", "EX": "ex", "L9": "ex"}.get(V.mkl_kernel(), "ex" if V._cpu()[0] else "z0")
    assert V.torch_exp_kernel() == want


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


def _bf16_exp_with(table: dict[int, int]) -> np.ndarray:
    """exp of every BF16 input (as float32): correctly rounded, but the table's inputs -> the table's outputs."""
    x = (np.arange(1 << 16, dtype=np.uint32) << 16).view(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        want = np.exp(x.astype(np.float64)).astype(np.float32)  # NaN payloads kept, quieted
    wb = want.view(np.uint32)
    for i, k in enumerate(x.view(np.uint32)):
        if int(k) in table:
            wb[i] = table[int(k)]
    return wb


def test_vml_exp_reproduces_torchs_table_on_every_bf16_input():
    """The Z0 port (MKL's AVX-512 kernel) gives torch's exp on an Intel AVX-512 machine (the table made from torch
    there by scripts/make_torch_exp.py: correctly rounded but for the listed inputs) on every BF16 input; no torch
    needed."""
    from kquant.models import torch_exp
    from kquant.models.vml_exp import vml_exp

    x = (np.arange(1 << 16, dtype=np.uint32) << 16).view(np.float32)
    assert len(torch_exp.F32) > 200
    assert np.array_equal(vml_exp(x).view(np.uint32), _bf16_exp_with(torch_exp.F32))


# torch.exp (torch 2.13.0+cpu, MKL's EX kernel) on an AMD EPYC: the BF16 inputs whose result is not the correctly
# rounded exp (input bits: output bits), as scripts/make_torch_exp.py's F32 table is made
EX_BF16 = {
    0x33800000: 0x3f800000, 0x3ad90000: 0x3f80364b, 0x3b490000: 0x3f8064a8, 0x3b4e0000: 0x3f80672a,
    0x3b610000: 0x3f8070b2, 0x3df00000: 0x3f8fea0e, 0x3e430000: 0x3f9ad9b8, 0x3ec10000: 0x3fba9a5f,
    0x3ed70000: 0x3fc2cbbe, 0x3f7a0000: 0x4029f0a5, 0x3fb60000: 0x4084a2e6, 0x404c0000: 0x41c1d280,
    0x40700000: 0x422a1596, 0x40790000: 0x4243c40f, 0x407f0000: 0x425701ba, 0x40ac0000: 0x4357f09c,
    0x40e10000: 0x448d6e35, 0x40e50000: 0x44a04303, 0x42260000: 0x5d6a3d77, 0x425d0000: 0x67513937,
    0x42790000: 0x6c60105a, 0x428f0000: 0x730e4a5e, 0xbae90000: 0x3f7f8b9b, 0xbafa0000: 0x3f7f831f,
    0xbafe0000: 0x3f7f8120, 0xbb030000: 0x3f7f7d22, 0xbb170000: 0x3f7f692d, 0xbb1c0000: 0x3f7f6430,
    0xbb240000: 0x3f7f5c35, 0xbb330000: 0x3f7f4d3e, 0xbb3a0000: 0x3f7f4643, 0xbb550000: 0x3f7f2b58,
    0xbc0d0000: 0x3f7dce6b, 0xbc420000: 0x3f7cfc94, 0xbc690000: 0x3f7c6298, 0xbc9d0000: 0x3f7b23f5,
    0xbc9e0000: 0x3f7b1c1c, 0xbcc50000: 0x3f79eacd, 0xbd0e0000: 0x3f7746ef, 0xbd110000: 0x3f771895,
    0xbd950000: 0x3f6e0951, 0xbdc20000: 0x3f68dcf7, 0xbe0d0000: 0x3f5f11b9, 0xbf520000: 0x3ee16e39,
    0xbf670000: 0x3ecfad25,
}


def test_vml_exp_ex_reproduces_torchs_table_on_every_bf16_input():
    """The EX port (MKL's generic kernel, non-Intel CPUs) gives torch's exp on an AMD machine on every BF16 input
    (EX_BF16, recorded there); no torch needed."""
    from kquant.models.vml_exp import vml_exp_ex

    x = (np.arange(1 << 16, dtype=np.uint32) << 16).view(np.float32)
    assert np.array_equal(vml_exp_ex(x).view(np.uint32), _bf16_exp_with(EX_BF16))


_TORCH_EXP_RANDOM = """
import sys, numpy as np, torch
x = np.frombuffer(sys.stdin.buffer.read(), dtype=np.float32)
cut = [0, 1, 17, 33, 1000, 4099, len(x)]  # tensors of several lengths: no vector body / tail difference
sys.stdout.buffer.write(b"".join(torch.exp(torch.from_numpy(x[a:b].copy())).numpy().tobytes() for a, b in zip(cut, cut[1:])))
buf = np.zeros((len(x) // 8, 9), dtype=np.float32)  # rows of 8 of a non-contiguous view: one vmsExp call of 8 each
buf[:, :8] = x.reshape(-1, 8)
sys.stdout.buffer.write(torch.exp(torch.from_numpy(buf)[:, :8]).numpy().tobytes())
"""


def test_vml_exp_matches_torch_on_random_float32():
    """-torch.exp(A_log) of F32 sources: random bit patterns (every exponent, NaN and infinities included) and
    random values of the vector path's range, in tensors of several lengths and in vmsExp calls of 8 (EX's
    remainder path), against torch in the reference venv, with the port of the kernel this machine runs."""
    if not REFCONV_PYTHON:
        pytest.skip("set KQUANT_REFCONV_PYTHON to the reference venv's python (scripts/setup_refconv.sh)")
    port = _this_machines_port()

    rng = np.random.default_rng(3)
    bits = np.concatenate([rng.integers(0, 2**32, 200_000, dtype=np.uint64),
                           rng.integers(0, 0x42AEAC4F, 200_000, dtype=np.uint64) | (rng.integers(0, 2, 200_000, dtype=np.uint64) << 31)])
    x = bits.astype(np.uint32).view(np.float32)
    out = subprocess.run([REFCONV_PYTHON, "-c", _TORCH_EXP_RANDOM], input=x.tobytes(), capture_output=True, timeout=300,
                         check=True).stdout
    want = np.frombuffer(out, dtype=np.float32).reshape(2, -1)
    got = port(x)
    same = got.view(np.uint32) == want.view(np.uint32)  # NaN payloads included
    assert same.all(), [hex(v) for v in np.tile(x.view(np.uint32), 2)[~same.reshape(-1)][:5]]
