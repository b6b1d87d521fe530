"""State-space pieces shared by the hybrid families: conversion/mamba.py (llama.cpp as vendored in
llama-cpp-python 0.3.36) Mamba2Model's tensor transforms, and torch's `exp` as the converters apply it
to `A_log`.

`-torch.exp(A_log)`: torch's float32 exp on CPU (MKL VML, HA mode, on x86) is not correctly rounded.
kquant computes exp in float64, rounds it to float32 and patches the inputs where torch differs
(`torch_exp.py`, every BF16 input, made by scripts/make_torch_exp.py from the reference venv): exact
for BF16 and F16 sources. For F32 sources the values outside that table are correctly rounded, which
differs from torch by one ulp in about 1% of values (measured on random inputs).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import InputError
from . import torch_exp

_F32_IN = np.array(sorted(torch_exp.F32), dtype=np.uint32)
_F32_OUT = np.array([torch_exp.F32[k] for k in sorted(torch_exp.F32)], dtype=np.uint32)
_F16_IN = np.array(sorted(torch_exp.F16), dtype=np.uint16)
_F16_OUT = np.array([torch_exp.F16[k] for k in sorted(torch_exp.F16)], dtype=np.uint16)


def _patch(x_bits: np.ndarray, y_bits: np.ndarray, keys: np.ndarray, vals: np.ndarray) -> None:
    if len(keys):
        i = np.clip(np.searchsorted(keys, x_bits), 0, len(keys) - 1)
        hit = keys[i] == x_bits
        y_bits[hit] = vals[i[hit]]


def torch_exp_f32(x: np.ndarray) -> np.ndarray:
    """torch.exp of a float32 tensor, as the reference venv computes it (see the module docstring)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        y = np.exp(x.astype(np.float64)).astype(np.float32)
    _patch(x.view(np.uint32), y.view(np.uint32), _F32_IN, _F32_OUT)
    return y


def torch_exp_f16(x: np.ndarray) -> np.ndarray:
    """torch.exp of a float16 tensor (computed in float32, rounded to float16)."""
    x = np.ascontiguousarray(x, dtype=np.float16)
    with np.errstate(over="ignore", invalid="ignore"):
        y = np.exp(x.astype(np.float64)).astype(np.float32).astype(np.float16)
    _patch(x.view(np.uint16), y.view(np.uint16), _F16_IN, _F16_OUT)
    return y


def neg_exp(src_dtype: str) -> Callable[[list[np.ndarray]], np.ndarray]:
    """`-torch.exp(A_log)` on the tensor as prepare_tensors hands it over (F16 kept, else float32)."""
    if src_dtype == "F16":
        return lambda arrs: -torch_exp_f16(arrs[0]).astype(np.float32)
    return lambda arrs: -torch_exp_f32(arrs[0])


def reshaped(shape: tuple[int, ...], then: Callable[[list[np.ndarray]], np.ndarray] | None = None):
    """A transform reshaping its one source (squeeze / unsqueeze / reshape), after `then` if given."""
    def f(arrs: list[np.ndarray]) -> np.ndarray:
        x = then(arrs) if then is not None else arrs[0]
        return x.reshape(shape)
    return f


MAMBA2_LAYER = {
    "mamba.in_proj": "ssm_in",
    "mamba.conv1d": "ssm_conv1d",
    "mamba.dt_proj": "ssm_dt",  # dt_bias, renamed (Mamba2Model.filter_tensors)
    "mamba.A_log": "ssm_a",
    "mamba.D": "ssm_d",
    "mamba.norm": "ssm_norm",
    "mamba.out_proj": "ssm_out",
}
MAMBA2_BIAS_OK = ("mamba.in_proj", "mamba.conv1d", "mamba.out_proj", "mamba.dt_proj")
MAMBA2_BARE = ("mamba.A_log", "mamba.D")


# Mamba2Model.filter_tensors
def mamba2_name(name: str) -> str:
    """An HF tensor name as Mamba2Model indexes it: `model.backbone.*` / `model.lm_head.*` without
    `model.`, `*.dt_bias` as `*.dt_proj.bias`."""
    if name.startswith(("model.backbone", "model.lm_head")):
        name = name.removeprefix("model.")
    if name.endswith(".dt_bias"):
        name = name.rpartition(".dt_bias")[0] + ".dt_proj.bias"
    return name


def find_prefixed(hp: dict, keys, prefixes, optional: bool = False):
    """GraniteHybridModel / FalconH1Model.find_hparam: the keys, then each with a `prefix_` in front."""
    from .hparams import find_hparam

    keys = list(keys)
    return find_hparam(hp, keys + [f"{p}_{k}" for p in prefixes for k in keys], optional)


def mamba2_spec(model, t, name: str, gname: str, n_group: int, d_inner: int, then=None):
    """Mamba2Model.modify_tensors for one SSM-layer tensor: conv1d squeezed, A and D as (n, 1), the
    norm as (n_group, d_inner / n_group), A_log -> -exp(A_log); `then` applies a further transform."""
    shape, fns = tuple(t[1]), []
    if gname.endswith("ssm_conv1d.weight"):
        shape = tuple(d for d in shape if d != 1)
    elif gname.endswith(("ssm_a", "ssm_d")):
        shape = shape + (1,)
    elif gname.endswith("ssm_norm.weight"):
        if n_group <= 0 or d_inner % n_group or t[1] != (d_inner,):
            raise InputError(f"{model.folder}: tensor {t[0]!r} has shape {list(t[1])}, expected [{d_inner}] in {n_group} groups")
        shape = (n_group, d_inner // n_group)
    if name.endswith(".A_log"):
        fns.append(neg_exp(t[2]))
    if then is not None:
        fns.append(then)
    if not fns and shape == tuple(t[1]):
        return model.spec(gname, t)

    def f(arrs):
        x = arrs[0]
        for fn in fns:
            x = fn([x])
        return x.reshape(shape)
    return model.spec(gname, t, shape=shape, transform=f)
