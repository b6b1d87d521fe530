"""torch's float32 `Tensor.sum()` / `mean()` of a whole contiguous CPU tensor, in torch's order.

The converter's BitNet weight_quant takes `weight.abs().mean()` in float32; a float32 sum depends
on its order, and torch's order (2.13, CPU) is:
  * aten/src/ATen/native/cpu/SumKernel.cpp `cascade_sum`: per contiguous run, `vectorized_inner_sum`
    over Vectorized<float> of 8 lanes (measured: the same bits under AVX512, AVX2 and DEFAULT
    capabilities), `row_sum` with 4 vectors in flight and `multi_row_sum`'s 4-level cascade; the
    tail elements summed first, then the 8 lanes in order;
  * aten/src/ATen/TensorIteratorReduce.cpp `two_pass_reduction` for more than GRAIN_SIZE elements
    and more than one thread: `at::parallel_for` cuts the flat tensor into one contiguous chunk
    per thread (OpenMP `invoke_parallel`), each summed as above into its slot of a zeroed buffer
    of `get_num_threads()` floats, then the buffer summed the same way;
  * ReduceOps.cpp `mean_out`: sum, then divided by float32(numel).
So the result depends on torch's intra-op thread count (`torch.get_num_threads()`: OMP_NUM_THREADS
or MKL_NUM_THREADS when set, else the number of physical cores). `torch_threads` guesses it the
same way; KQUANT_TORCH_THREADS overrides it. Checked bit for bit against torch on heavy-tailed
tensors of 7 to 17.7M elements at 1, 2, 3, 4 and 8 threads (tests/test_bitnet.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from numba import njit

GRAIN_SIZE = 32768  # at::internal::GRAIN_SIZE
LANES = 8  # Vectorized<float>::size() as the sum kernel runs
LEVELS = 4  # multi_row_sum num_levels
ILP = 4  # row_sum ilp_factor


def torch_threads() -> int:
    """torch's default intra-op thread count (at::intraop_default_num_threads), KQUANT_TORCH_THREADS first."""
    for var in ("KQUANT_TORCH_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        v = os.environ.get(var, "")
        if v.strip().isdigit() and int(v) > 0:
            return int(v)
    cores = set()  # TaskThreadPoolBase::defaultNumThreads: physical cores (cpuinfo), else processors
    for d in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/topology"):
        try:
            cores.add(((d / "physical_package_id").read_text().strip(), (d / "core_id").read_text().strip()))
        except OSError:
            pass
    return len(cores) or os.cpu_count() or 1


@njit(cache=True)
def _ceil_log2(x):
    # c10 utils::CeilLog2
    if x <= 2:
        return 1
    v = x - 1
    n = 0
    while v:
        v >>= 1
        n += 1
    return n


# SumKernel.cpp multi_row_sum: `nrows` independent float32 accumulators (lanes) over `size` steps,
# lane k of step i at x[base + i * step_stride + k]
@njit(cache=True)
def _multi_row_sum(x, base, step_stride, nrows, size):
    lp = max(4, _ceil_log2(size) // LEVELS)
    step = 1 << lp
    mask = step - 1
    acc = np.zeros((LEVELS, nrows), np.float32)
    i = 0
    while i + step <= size:
        for _ in range(step):
            b = base + i * step_stride
            for k in range(nrows):
                acc[0, k] += x[b + k]
            i += 1
        for j in range(1, LEVELS):
            for k in range(nrows):
                acc[j, k] += acc[j - 1, k]
                acc[j - 1, k] = np.float32(0)
            if (i & (mask << (j * lp))) != 0:
                break
    while i < size:
        b = base + i * step_stride
        for k in range(nrows):
            acc[0, k] += x[b + k]
        i += 1
    for j in range(1, LEVELS):
        for k in range(nrows):
            acc[0, k] += acc[j, k]
    return acc[0]


# SumKernel.cpp row_sum over `n_items` items of `width` lanes each (a vector: width LANES; a scalar: 1)
@njit(cache=True)
def _row_sum(x, base, n_items, width):
    size_ilp = n_items // ILP
    p = _multi_row_sum(x, base, ILP * width, ILP * width, size_ilp).reshape(ILP, width).copy()
    for i in range(size_ilp * ILP, n_items):
        for lane in range(width):
            p[0, lane] += x[base + i * width + lane]
    for k in range(1, ILP):
        for lane in range(width):
            p[0, lane] += p[k, lane]
    return p[0]


# SumKernel.cpp cascade_sum's loop on one contiguous run: vectorized_inner_sum, or scalar_inner_sum
# when shorter than a vector
@njit(cache=True)
def _run_sum(x, base, n):
    if n < LANES:
        return _row_sum(x, base, n, 1)[0]
    n_vec = n // LANES
    v = _row_sum(x, base, n_vec, LANES)
    f = np.float32(0)
    for k in range(n_vec * LANES, n):
        f += x[base + k]
    for lane in range(LANES):
        f += v[lane]
    return f


@njit(cache=True)
def _torch_sum(x, threads):
    n = x.size
    if n < GRAIN_SIZE or threads == 1:  # TensorIteratorBase::parallel_reduce: serial
        return np.float32(0) + _run_sum(x, 0, n)
    nt = min(threads, (n + GRAIN_SIZE - 1) // GRAIN_SIZE)  # invoke_parallel
    chunk = (n + nt - 1) // nt
    buf = np.zeros(threads, np.float32)
    for t in range(nt):
        b = t * chunk
        if b < n:
            buf[t] += _run_sum(x, b, min(n, b + chunk) - b)
    return np.float32(0) + _run_sum(buf, 0, threads)


def torch_sum(x: np.ndarray, threads: int | None = None) -> np.float32:
    """`torch.from_numpy(x).sum()` of float32 `x` (any shape, read flat) with `threads` intra-op threads."""
    a = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    return np.float32(_torch_sum(a, torch_threads() if threads is None else int(threads)))


def torch_mean(x: np.ndarray, threads: int | None = None) -> np.float32:
    """`torch.from_numpy(x).mean()` of float32 `x`: the sum divided by float32(numel)."""
    return np.float32(torch_sum(x, threads) / np.float32(x.size))
