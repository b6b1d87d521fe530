"""What torch's CPU float32 `exp` (the converters' `-torch.exp(A_log)`) is, measured: run with the reference
converter's python (scripts/setup_refconv.sh), e.g. `MKL_ENABLE_INSTRUCTIONS=AVX2 python scripts/probe_torch_exp.py`.

Prints, for 4M random float32 inputs, how many results are not the correctly rounded exp, whether a result
depends on the tensor's length, the element's offset or a strided (non-contiguous) input (a vector body /
scalar tail split would show there), and writes the results to OUT.npy when given, to compare runs under
different MKL_ENABLE_INSTRUCTIONS. ATen's exp kernel calls at::vml::vexp, which is MKL VML's vsExp (VML_HA)
when torch is built with MKL (ATen/cpu/vml.h IMPLEMENT_VML_MKL(exp, Exp)): the bits then depend on MKL's
CPU dispatch, which this shows.
"""

from __future__ import annotations

import sys

import numpy as np
import torch


def main(out: str | None = None) -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-10, 10, 2_000_000), rng.normal(0, 1, 1_000_000),
                        rng.uniform(-87, 88, 1_000_000)]).astype(np.float32)
    y = torch.exp(torch.from_numpy(x)).numpy()
    cr = np.exp(x.astype(np.float64)).astype(np.float32)
    d = np.abs(y.view(np.int32).astype(np.int64) - cr.view(np.int32))
    print(f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}: {np.count_nonzero(d)} of {x.size} "
          f"not correctly rounded, at most {d.max()} ulp")
    bad = 0
    for n in (1, 3, 7, 8, 15, 16, 17, 31, 33, 63, 65, 100, 1000, 4097):
        for off in (0, 1, 5, 13):
            s = torch.exp(torch.from_numpy(x[off:off + n].copy())).numpy()
            bad += np.count_nonzero(s.view(np.int32) != y[off:off + n].view(np.int32))
    pick = rng.choice(x.size, 20000, replace=False)
    one = np.array([torch.exp(torch.tensor([x[i]])).item() for i in pick], dtype=np.float32)
    strided = torch.exp(torch.from_numpy(x)[::3]).numpy()
    print(f"differ from the whole-tensor result: {bad} in slices of 14 lengths x 4 offsets, "
          f"{np.count_nonzero(one.view(np.int32) != y[pick].view(np.int32))} of 20000 one-element tensors, "
          f"{np.count_nonzero(strided.view(np.int32) != y[::3].view(np.int32))} of {strided.size} strided")
    if out:
        np.save(out, y)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
