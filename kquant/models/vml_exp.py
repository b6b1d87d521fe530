"""torch's CPU `exp` of a float32 tensor, bit for bit: MKL VML's single-precision HA exp for AVX-512.

torch 2.13 (the reference converter's venv) computes `torch.exp` of a float32 tensor with ATen's
`vml::vexp`, which is MKL's `vmsExp(n, x, y, VML_HA | VML_FTZDAZ_OFF | VML_ERRMODE_IGNORE)` in builds
with MKL (ATen/cpu/vml.h IMPLEMENT_VML_MKL(exp, Exp)); not Sleef, and with no vector body / scalar tail
split (scripts/probe_torch_exp.py: a result depends neither on the tensor's length nor on the element's
offset nor on strides). MKL dispatches on the CPU: on AVX-512 machines it runs
`mkl_vml_kernel_sExp_Z0HAynn`, ported here from its disassembly in torch 2.13.0+cpu's libtorch_cpu.so
(MKL 2024.2, the constants from its `vsexp_data_avx512`); its AVX2 kernel (`..._L9HAynn`, used with
MKL_ENABLE_INSTRUCTIONS=AVX2 or on CPUs without AVX-512) gives other bits for about 4% of inputs, so
a converter run there differs from this too.

The kernel, per element (all float32, each operation rounded once as the instruction says):
  t = fma(x, log2(e), 1.5 * 2^18)  rounded toward zero    # n = t - shifter: x / ln 2 in 1/32 steps
  n = t - 1.5 * 2^18;  j = low 5 bits of t
  r = fma(n, -ln2_hi, x);  r = fma(n, -ln2_lo, r);  r &= ~(1 << 30)
  y = fma(fma(r, C1, C0), r * r, TA[j] + r)               # exp(r) * (1 + TA[j]) - 1, 2^(j/32) = TB[j] (1 + TA[j])
  S = scalef(TB[j], n) = TB[j] * 2^floor(n);  result = fma(y, S, S)
Lanes with |x| >= 87.33654 (overflow, underflow to subnormals and zero, infinities) go to the scalar
`vsexp_cout_rare`, which computes in double precision and rounds once to float32: here the correctly
rounded exp (float64, rounded). A single-precision FMA is exact in float64 arithmetic (the product of
two floats is exact in a double) except for the final rounding of the sum, done here from the sum and its
rounding error (TwoSum), so no double rounding. Checked against torch on every float32 input
(scripts/check_vml_exp.py) and in tests/test_hybrid.py on a sample.
"""

from __future__ import annotations

import numpy as np

# vsexp_data_avx512 (libtorch_cpu.so of torch 2.13.0+cpu), float32 bit patterns
_TA = np.array([  # 2^(j/32) = TB[j] * (1 + TA[j])
    0x0, 0xb34a3a0a, 0x3346cb6a, 0xb36ed17e, 0xb24e0611, 0xb3517dd9, 0x334b2482, 0xb31586de, 0x33092801,
    0xb2e6f467, 0x331b85f2, 0x3099b6f1, 0xb3051aa8, 0xb2e2a0da, 0xb2006c56, 0xb3365942, 0x329302ae, 0x32c595dc,
    0xb302e5a2, 0xb28e10a1, 0x31b3d0e5, 0xb31a472b, 0x31d1daf2, 0xb305bf64, 0xb27ce182, 0xb2f26443, 0xb1b4b0da,
    0xb1da8a8f, 0xb1d290be, 0xb2d5b899, 0x31b0a147, 0xb2156afc], dtype=np.uint32).view(np.float32)
_TB = np.array([
    0x3f800000, 0x3f82cd87, 0x3f85aac3, 0x3f88980f, 0x3f8b95c2, 0x3f8ea43a, 0x3f91c3d3, 0x3f94f4f0, 0x3f9837f0,
    0x3f9b8d3a, 0x3f9ef532, 0x3fa27043, 0x3fa5fed7, 0x3fa9a15b, 0x3fad583f, 0x3fb123f6, 0x3fb504f3, 0x3fb8fbaf,
    0x3fbd08a4, 0x3fc12c4d, 0x3fc5672a, 0x3fc9b9be, 0x3fce248c, 0x3fd2a81e, 0x3fd744fd, 0x3fdbfbb8, 0x3fe0ccdf,
    0x3fe5b907, 0x3feac0c7, 0x3fefe4ba, 0x3ff5257d, 0x3ffa83b3], dtype=np.uint32).view(np.float32)


def _f32(bits: int) -> np.float32:
    return np.array([bits], dtype=np.uint32).view(np.float32)[0]


L2E = _f32(0x3FB8AA3B)  # log2(e)
SHIFTER = _f32(0x48C00000)  # 1.5 * 2^18: t's last bit is 1/32
NEG_LN2_HI = -_f32(0x3F317218)
NEG_LN2_LO = -_f32(0xB102E308)  # ln 2 = hi + lo, lo < 0
R_MASK = np.uint32(0xBFFFFFFF)
C1, C0 = _f32(0x3E2AABF3), _f32(0x3F0000F6)  # ~1/6, ~1/2
RARE = _f32(0x42AEAC4F)  # 87.33654: |x| >= RARE goes to vsexp_cout_rare


def _sum_and_error(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 a * b + c as a double s plus its rounding error e (s + e exact): the product is exact in a double."""
    p = a.astype(np.float64) * b.astype(np.float64)
    cc = c.astype(np.float64)
    s = p + cc
    bb = s - p
    e = (p - (s - bb)) + (cc - bb)  # TwoSum (Knuth)
    return s, e


def _neighbours(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The float32 values lo <= s <= hi next to each double s (equal when s is a float32)."""
    f = s.astype(np.float32)
    fd = f.astype(np.float64)
    lo = np.where(fd > s, np.nextafter(f, np.float32(-np.inf)), f)
    hi = np.where(fd < s, np.nextafter(f, np.float32(np.inf)), f)
    return lo, hi


def fma_rn(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 fused multiply-add, rounded to nearest even (vfmadd*ps {rn-sae}), for finite results."""
    s, e = _sum_and_error(a, b, c)
    f = s.astype(np.float32)  # right unless s is a float32 midpoint and e says which side the exact sum is
    lo, hi = _neighbours(s)
    mid = (lo.astype(np.float64) + hi.astype(np.float64)) * 0.5  # exact in a double
    tie = (lo != hi) & (s == mid) & (e != 0)
    return np.where(tie, np.where(e > 0, hi, lo), f)


def fma_rz(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 fused multiply-add, rounded toward zero (vfmadd*ps {rz-sae}), for finite results."""
    s, e = _sum_and_error(a, b, c)
    lo, hi = _neighbours(s)
    exact = lo == hi  # s is a float32: the exact sum is s + e
    below = np.where(exact, e < 0, True)  # the exact sum lies below hi
    above = np.where(exact, e > 0, True)  # ... above lo
    pos = np.where(s > 0, lo, np.where(s < 0, hi, lo))
    out = np.where(s > 0, np.where(exact & below, np.nextafter(lo, np.float32(0)), lo),
                   np.where(s < 0, np.where(exact & above, np.nextafter(hi, np.float32(0)), hi), pos))
    return out.astype(np.float32)


def vml_exp(x: np.ndarray) -> np.ndarray:
    """MKL's vsExp HA on AVX-512 (mkl_vml_kernel_sExp_Z0HAynn), i.e. torch.exp of a float32 tensor there."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    shape = x.shape
    x = x.reshape(-1)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        rare = np.abs(x) >= RARE  # NaN: not rare (propagates through the main path)
        xm = np.where(rare, np.float32(0), x)
        t = fma_rz(xm, np.full_like(xm, L2E), np.full_like(xm, SHIFTER))
        n = t - SHIFTER
        j = (t.view(np.uint32) & 31).astype(np.intp)
        r = fma_rn(n, np.full_like(n, NEG_LN2_HI), xm)
        r = fma_rn(n, np.full_like(n, NEG_LN2_LO), r)
        r = (r.view(np.uint32) & R_MASK).view(np.float32)
        y = fma_rn(fma_rn(r, np.full_like(r, C1), np.full_like(r, C0)), r * r, _TA[j] + r)
        s = np.ldexp(_TB[j], np.floor(n).astype(np.int32)).astype(np.float32)
        out = fma_rn(y, s, s)
        if rare.any():  # vsexp_cout_rare: double precision, rounded once
            xr = x[rare]
            out[rare] = np.exp(xr.astype(np.float64)).astype(np.float32)
        nan = np.isnan(x)  # x86 propagates a NaN operand, quieted
        out.view(np.uint32)[nan] = x.view(np.uint32)[nan] | np.uint32(0x00400000)
    return out.reshape(shape)
