"""BitNet's weight_quant (kquant.models.bitnet) and torch's float32 sum order (kquant.models.torch_sum)
against torch itself, run in the reference venv (skipped without scripts/setup_refconv.sh).
Whole-file identity with convert_hf_to_gguf.py and llama_model_quantize (TQ1_0, TQ2_0) is
test_arch.py's "bitnet" / "bitnet-b" cases."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from kquant.models.bitnet import weight_quant
from kquant.models.torch_sum import torch_mean, torch_sum
from oracle import refpipeline

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from test_arch import heavy  # noqa: E402

SIZES = [(7,), (100,), (33, 1000), (256, 320), (40000,), (1200, 2560 + 3)]
THREADS = (1, 2, 3, 8)

# the torch side: for each tensor, per thread count: sum, mean, weight_quant in bf16 / f16 / f32
TORCH = r"""
import sys, numpy as np, torch
data = np.load(sys.argv[1])
out = {}
def wq(weight):  # conversion/bitnet.py BitnetModel.weight_quant
    dtype = weight.dtype
    weight = weight.float()
    scale = weight.abs().mean().clamp(min=1e-5)
    iscale = 1 / scale
    result = (weight * iscale).round().clamp(-1, 1) / iscale
    return result.type(dtype)
for k in data.files:
    x = torch.from_numpy(data[k])
    for t in %r:
        torch.set_num_threads(t)
        out[f"{k}-sum-{t}"] = x.abs().sum().numpy()
        out[f"{k}-mean-{t}"] = x.abs().mean().numpy()
        out[f"{k}-bf16-{t}"] = wq(x.to(torch.bfloat16)).float().numpy()
        out[f"{k}-f16-{t}"] = wq(x.to(torch.float16)).float().numpy()
        out[f"{k}-f32-{t}"] = wq(x).numpy()
np.savez(sys.argv[2], **out)
""" % (THREADS,)


@pytest.mark.skipif(not refpipeline.refconv_python(), reason="reference venv not set up (scripts/setup_refconv.sh)")
def test_weight_quant_equals_torch(tmp_path):
    rng = np.random.default_rng(7)
    data = {f"t{i}": heavy(rng, s, 0.02 if i % 2 else 3.0) for i, s in enumerate(SIZES)}
    data["tiny"] = np.full((64,), 1e-7, np.float32)  # below the 1e-5 clamp
    data["ties"] = np.array([0.5, -0.5, 1.5, -1.5, 2.5, 0.0, 1.0, -1.0], np.float32)  # w * iscale on a .5 tie
    np.savez(tmp_path / "in.npz", **data)
    subprocess.run([refpipeline.refconv_python(), "-c", TORCH, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                   check=True, timeout=900)
    ref = np.load(tmp_path / "out.npz")
    for k, x in data.items():
        bf = (x.view(np.uint32) + np.uint32(0x7FFF) + ((x.view(np.uint32) >> 16) & 1)) & np.uint32(0xFFFF0000)
        as_dtype = {"bf16": ("BF16", bf.view(np.float32)), "f16": ("F16", x.astype(np.float16).astype(np.float32)),
                    "f32": ("F32", x)}
        for t in THREADS:
            a = np.abs(x)
            assert torch_sum(a, t) == ref[f"{k}-sum-{t}"], (k, t)
            assert torch_mean(a, t) == ref[f"{k}-mean-{t}"], (k, t)
            for tag, (dt, xs) in as_dtype.items():
                got = weight_quant(xs, dt, threads=t)
                assert np.array_equal(got.view(np.uint32), ref[f"{k}-{tag}-{t}"].view(np.uint32)), (k, tag, t)
