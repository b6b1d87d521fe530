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
