"""torch's CPU `exp` of a float32 tensor, bit for bit: MKL VML's single-precision HA exp, as MKL picks it for the CPU.

torch 2.13 (the reference converter's venv) computes `torch.exp` of a float32 tensor with ATen's
`vml::vexp`, which is MKL's `vmsExp(n, x, y, VML_HA | VML_FTZDAZ_OFF | VML_ERRMODE_IGNORE)` in builds
with MKL (ATen/cpu/vml.h IMPLEMENT_VML_MKL(exp, Exp)); not Sleef. MKL dispatches on the CPU, and its
kernels round differently (each is 1 ulp off the correctly rounded exp for 0.1-0.4% of inputs, not the
same ones), so the converter's `-torch.exp(A_log)` depends on the machine it ran on. Ported here, from
their disassembly in torch 2.13.0+cpu's libtorch_cpu.so (MKL 2024.2):

  `vml_exp`, "z0": `mkl_vml_kernel_sExp_Z0HAynn`, what Intel CPUs with AVX-512 run;
  `vml_exp_ex`, "ex": `mkl_vml_kernel_sExp_EXHAynn`, MKL's generic kernel, what AMD (and other non-Intel)
  CPUs run, AVX-512 or not (seen with gdb on an AMD EPYC with AVX-512).

`torch_exp` picks one once per process like MKL does: "z0" on a GenuineIntel CPU with AVX-512 (F, CD,
BW, DQ, VL in /proc/cpuinfo's flags) unless MKL_ENABLE_INSTRUCTIONS names a lower level, "ex" on any
other x86 vendor; KQUANT_TORCH_EXP=z0|ex overrides it, to reproduce a converter run on the other kind
of machine. Intel CPUs without AVX-512 run a third kernel, `..._L9HAynn` (AVX2 + FMA), not ported: they
get "ex", the closer one (calling the three kernels directly, on 4M random inputs with |x| < 87.34:
L9 differs from EX on 18069, from Z0 on 29578; on every BF16 input: 155 and 319). Without an x86
vendor string (no /proc/cpuinfo, or not x86, where torch does not use MKL) the choice is "z0".

Neither depends on the tensor's length or on the element's offset (scripts/probe_torch_exp.py): Z0 has no
vector body / scalar tail split; EX computes 16 elements per main-loop iteration and the rest 4 at a
time, rounding the same way (torch.exp of lengths 1..40 at offsets 0..16: the same bits). Checked with
scripts/check_vml_exp.py: Z0 against torch on an Intel AVX-512 machine (171M inputs: every BF16 one,
random ones, every one in +-[0.25, 128)) and against the Z0 kernel called directly on an AMD EPYC
(--direct: all 2^32 float32 inputs, no difference); EX against torch on an AMD EPYC on all 2^32 float32 inputs, through the main loop and
through the remainder path (--tail); both in tests/test_hybrid.py.

Z0, per element (all float32, each operation rounded once as the instruction says):
  t = fma(x, log2(e), 1.5 * 2^18)  rounded toward zero    # n = t - shifter: x / ln 2 in 1/32 steps
  n = t - 1.5 * 2^18;  j = low 5 bits of t
  r = fma(n, -ln2_hi, x);  r = fma(n, -ln2_lo, r);  r &= ~(1 << 30)
  y = fma(fma(r, C1, C0), r * r, TA[j] + r)               # exp(r) * (1 + TA[j]) - 1, 2^(j/32) = TB[j] (1 + TA[j])
  S = scalef(TB[j], n) = TB[j] * 2^floor(n);  result = fma(y, S, S)
Lanes with |x| >= 87.33654 (overflow, underflow to subnormals and zero, infinities) go to the scalar
`vsexp_cout_rare`, which computes in double precision and rounds once to float32: here the correctly
rounded exp (float64, rounded). A single-precision FMA is exact in float64 arithmetic (the product of
two floats is exact in a double) except for the final rounding of the sum, done here from the sum and its
rounding error (TwoSum), so no double rounding.

EX, per element (SSE: separate multiplies and adds, each rounded to nearest; MXCSR 0x1f80, no FTZ/DAZ):
  t = x * (128 / ln 2) + 1.5 * 2^23;  n = t - 1.5 * 2^23;  j = low 7 bits of t
  r = n * ln2_lo' + (x - n * ln2_hi)                      # ln 2 / 128 = hi - lo', n * hi exact
  p = ((r * r) * 0.5 + r) * HI[j] + LO[j] + HI[j]         # 2^(j/128) = HI[j] + LO[j]
  result = p * 2^(t >> 7 as the exponent field: ((t << 16) + 1.0) & 0x7f800000)
Lanes with |x| > 87.33654 (by bits: NaN and infinities too) go to EX's `vsexp_cout_rare` (0xb47e410), a
double-precision exp with a 64-entry table (`_vmldExpHATab`), ported operation for operation
(`_ex_rare`): +inf and NaN give x * x, -inf 0, x > 88.72283 inf, x < -103.97208 0.
"""

from __future__ import annotations

import os

import numpy as np

try:
    from ..errors import InputError
except ImportError:  # loaded as a file of its own (scripts/check_vml_exp.py, in the reference venv)
    InputError = ValueError

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
    """MKL's vsExp HA for AVX-512 (mkl_vml_kernel_sExp_Z0HAynn), i.e. torch.exp of a float32 tensor on Intel CPUs
    with AVX-512."""
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


# mkl_vml_kernel_sExp_EXHAynn (MKL's generic x86 kernel, what non-Intel CPUs run): `vsexp_data` + 0x300,
# 128 (hi, lo) float32 pairs, 2^(j/128) = hi + lo, as bit patterns
_EX_HI = np.array([
    0x3f800000, 0x3f80b1ed, 0x3f8164d2, 0x3f8218af, 0x3f82cd87, 0x3f838359, 0x3f843a29, 0x3f84f1f6, 0x3f85aac3,
    0x3f866491, 0x3f871f62, 0x3f87db35, 0x3f88980f, 0x3f8955ee, 0x3f8a14d5, 0x3f8ad4c6, 0x3f8b95c2, 0x3f8c57ca,
    0x3f8d1adf, 0x3f8ddf04, 0x3f8ea43a, 0x3f8f6a81, 0x3f9031dc, 0x3f90fa4d, 0x3f91c3d3, 0x3f928e72, 0x3f935a2b,
    0x3f9426ff, 0x3f94f4f0, 0x3f95c3ff, 0x3f96942d, 0x3f97657d, 0x3f9837f0, 0x3f990b88, 0x3f99e046, 0x3f9ab62b,
    0x3f9b8d3a, 0x3f9c6573, 0x3f9d3eda, 0x3f9e196e, 0x3f9ef532, 0x3f9fd228, 0x3fa0b051, 0x3fa18faf, 0x3fa27043,
    0x3fa3520f, 0x3fa43516, 0x3fa51958, 0x3fa5fed7, 0x3fa6e595, 0x3fa7cd94, 0x3fa8b6d5, 0x3fa9a15b, 0x3faa8d26,
    0x3fab7a3a, 0x3fac6897, 0x3fad583f, 0x3fae4934, 0x3faf3b79, 0x3fb02f0e, 0x3fb123f6, 0x3fb21a32, 0x3fb311c4,
    0x3fb40aaf, 0x3fb504f3, 0x3fb60094, 0x3fb6fd92, 0x3fb7fbf0, 0x3fb8fbaf, 0x3fb9fcd2, 0x3fbaff5b, 0x3fbc034a,
    0x3fbd08a4, 0x3fbe0f68, 0x3fbf179a, 0x3fc0213b, 0x3fc12c4d, 0x3fc238d2, 0x3fc346cd, 0x3fc4563f, 0x3fc5672a,
    0x3fc67991, 0x3fc78d75, 0x3fc8a2d8, 0x3fc9b9be, 0x3fcad226, 0x3fcbec15, 0x3fcd078c, 0x3fce248c, 0x3fcf4319,
    0x3fd06334, 0x3fd184df, 0x3fd2a81e, 0x3fd3ccf1, 0x3fd4f35b, 0x3fd61b5e, 0x3fd744fd, 0x3fd87039, 0x3fd99d16,
    0x3fdacb94, 0x3fdbfbb8, 0x3fdd2d82, 0x3fde60f5, 0x3fdf9613, 0x3fe0ccdf, 0x3fe2055b, 0x3fe33f89, 0x3fe47b6d,
    0x3fe5b907, 0x3fe6f85b, 0x3fe8396a, 0x3fe97c38, 0x3feac0c7, 0x3fec0719, 0x3fed4f30, 0x3fee9910, 0x3fefe4ba,
    0x3ff13231, 0x3ff28177, 0x3ff3d290, 0x3ff5257d, 0x3ff67a41, 0x3ff7d0df, 0x3ff9295a, 0x3ffa83b3, 0x3ffbdfed,
    0x3ffd3e0c, 0x3ffe9e11], dtype=np.uint32).view(np.float32)
_EX_LO = np.array([
    0x0, 0x331fb333, 0xb1c43fd0, 0x3306e7f8, 0xb34ea7a9, 0x331ddf6e, 0xb2f14c87, 0x332c6f38, 0x334f9891, 0x3337247f,
    0xb352c2e6, 0x337fed32, 0xb37eda4b, 0x30d86398, 0x336a92de, 0x330a58e5, 0xb260aba1, 0xb2ee6e43, 0x3336fcb7,
    0x32808b9a, 0xb3697465, 0x323f3647, 0x330628cd, 0xb3682237, 0x33675624, 0x337b2a64, 0x32bc4f9c, 0x31fab1c0,
    0xb32e0212, 0xb3725267, 0x32dc8061, 0x3313e2f5, 0x33231b71, 0xb26cc9f4, 0xb359be90, 0xb0dac01e, 0xb30c5563,
    0x33505d86, 0xb331a601, 0x3244ea39, 0x33412342, 0x32959003, 0x31fb9715, 0xb2d5eaed, 0x30c3125a, 0x3351d005,
    0xb323ec33, 0xb37282c2, 0xb32c9d5e, 0xb2c0445e, 0xb3162d36, 0x3233d990, 0xb3162b08, 0x3325d921, 0xb314ad82,
    0xb3368380, 0xb22deaf6, 0x3325946b, 0xb3252deb, 0xb2d1247f, 0xb37c5aa8, 0xb33333ce, 0x32154889, 0xb33b3569,
    0x32cfe77a, 0xb32f4254, 0xb266b974, 0xb2d5cd70, 0x330ec5f7, 0x330a5817, 0xb31bd983, 0x337de5d4, 0xb3414fe8,
    0x31986099, 0xb3130b1a, 0xb33c1e5f, 0xb2d6663e, 0x32c478f6, 0xb2976da2, 0xb2ceb32d, 0x320aa837, 0xb314abb7,
    0xb2dd5119, 0x33391ffc, 0xb37323a2, 0x333c8521, 0xb006c6c2, 0xb3735f84, 0x3228fc24, 0xb2c39b9c, 0xb2944353,
    0x3344a2d3, 0xb35c1daa, 0xb34cf4ca, 0xb3286024, 0xb0303219, 0xb2d4a58a, 0x3318db66, 0xb2f61d41, 0x335e5594,
    0xb3504a1c, 0xb375ef9b, 0xb37b43e3, 0xb2851c3f, 0xb21eab59, 0xac3e164c, 0x33657d15, 0xb33f9185, 0xb2441be6,
    0xb32a23c0, 0x33207898, 0x3300d89f, 0xb24116de, 0xb31367c7, 0x3276cca1, 0xb34fe4ba, 0xb348464a, 0xb330a5ed,
    0x32f167ff, 0xb2871670, 0x32292436, 0x3358e67f, 0x336615a2, 0xb3094457, 0xb2923758, 0x3359cbe1, 0x31cf486c,
    0x3338f71f], dtype=np.uint32).view(np.float32)
# vsexp_cout_rare's double-precision exp: `_vmldExpHATab`, 64 (hi, lo) doubles, 2^(j/64) = hi + lo
_RARE_HI = np.array([
    0x3ff0000000000000, 0x3ff02c9a3e778061, 0x3ff059b0d3158574, 0x3ff0874518759bc8, 0x3ff0b5586cf9890f,
    0x3ff0e3ec32d3d1a2, 0x3ff11301d0125b51, 0x3ff1429aaea92de0, 0x3ff172b83c7d517b, 0x3ff1a35beb6fcb75,
    0x3ff1d4873168b9aa, 0x3ff2063b88628cd6, 0x3ff2387a6e756238, 0x3ff26b4565e27cdd, 0x3ff29e9df51fdee1,
    0x3ff2d285a6e4030b, 0x3ff306fe0a31b715, 0x3ff33c08b26416ff, 0x3ff371a7373aa9cb, 0x3ff3a7db34e59ff7,
    0x3ff3dea64c123422, 0x3ff4160a21f72e2a, 0x3ff44e086061892d, 0x3ff486a2b5c13cd0, 0x3ff4bfdad5362a27,
    0x3ff4f9b2769d2ca7, 0x3ff5342b569d4f82, 0x3ff56f4736b527da, 0x3ff5ab07dd485429, 0x3ff5e76f15ad2148,
    0x3ff6247eb03a5585, 0x3ff6623882552225, 0x3ff6a09e667f3bcd, 0x3ff6dfb23c651a2f, 0x3ff71f75e8ec5f74,
    0x3ff75feb564267c9, 0x3ff7a11473eb0187, 0x3ff7e2f336cf4e62, 0x3ff82589994cce13, 0x3ff868d99b4492ed,
    0x3ff8ace5422aa0db, 0x3ff8f1ae99157736, 0x3ff93737b0cdc5e5, 0x3ff97d829fde4e50, 0x3ff9c49182a3f090,
    0x3ffa0c667b5de565, 0x3ffa5503b23e255d, 0x3ffa9e6b5579fdbf, 0x3ffae89f995ad3ad, 0x3ffb33a2b84f15fb,
    0x3ffb7f76f2fb5e47, 0x3ffbcc1e904bc1d2, 0x3ffc199bdd85529c, 0x3ffc67f12e57d14b, 0x3ffcb720dcef9069,
    0x3ffd072d4a07897c, 0x3ffd5818dcfba487, 0x3ffda9e603db3285, 0x3ffdfc97337b9b5f, 0x3ffe502ee78b3ff6,
    0x3ffea4afa2a490da, 0x3ffefa1bee615a27, 0x3fff50765b6e4540, 0x3fffa7c1819e90d8], dtype=np.uint64).view(np.float64)
_RARE_LO = np.array([
    0x0, 0xbc7160139cd8dc5d, 0x3c8cd2523567f613, 0x3c60f74e61e6c861, 0x3c979aa65d837b6d, 0x3c3ebe3d702f9cd1,
    0xbc9556522a2fbd0e, 0xbc91c923b9d5f416, 0xbc801b15eaa59348, 0x3c8b898c3f1353bf, 0x3c9aecf73e3a2f60,
    0x3c8a6f4144a6c38d, 0x3c968efde3a8a894, 0x3c80472b981fe7f2, 0x3c82f7e16d09ab31, 0x3c8b3782720c0ab4,
    0x3c834d754db0abb6, 0x3c8fdd395dd3f84a, 0xbc924aedcc4b5068, 0xbc71d1e83e9436d2, 0x3c859f48a72a4c6d,
    0xbc58a78f4817895b, 0x3c4363ed60c2ac11, 0x3c6ecce1daa10379, 0x3c7690cebb7aafb0, 0xbc8f94340071a38e,
    0xbc78dec6bd0f385f, 0x3c93350518fdd78e, 0x3c9063e1e21c5409, 0x3c9432e62b64c035, 0xbc8c33c53bef4da8,
    0xbc93cedd78565858, 0xbc93b3efbf5e2228, 0xbc6367efb86da9ee, 0xbc781f647e5a3ecf, 0xbc8619321e55e68a,
    0xbc7b32dcb94da51d, 0x3c65ebe1abd66c55, 0xbc9369b6f13b3734, 0xbc94d450d872576e, 0x3c8db72fc1f0eab4,
    0x3c7bf68359f35f44, 0xbc5da9b88b6c1e29, 0xbc92434322f4f9aa, 0x3c71affc2b91ce27, 0xbc87c50422622263,
    0xbc91bbd1d3bcbb15, 0x3c8469846e735ab3, 0x3c8c1a7792cb3387, 0xbc55c3d956dcaeba, 0xbc68d6f438ad9334,
    0x3c74ffd70a5fddcd, 0x3c736eae30af0cb3, 0x3c84e08fd10959ac, 0x3c676b2c6c921968, 0xbc8fad5d3ffffa6f,
    0x3c74a385a63d07a7, 0x3c8e5a50d5c192ac, 0xbc82d52107b43e1f, 0x3c74b604603a88d3, 0xbc8ff7128fd391f0,
    0x3c8ec3bc41aa2008, 0x3c8a64a931d185ee, 0x3c77893b4d91cd9d], dtype=np.uint64).view(np.float64)


def _f64(bits: int) -> np.float64:
    return np.array([bits], dtype=np.uint64).view(np.float64)[0]


EX_L2E = _f32(0x4338AA3B)  # 128 / ln 2
EX_SHIFTER = _f32(0x4B400000)  # 1.5 * 2^23: t's last bit is 1/128
EX_LN2_HI = _f32(0x3BB18000)  # ln 2 / 128 = hi - lo, hi times |n| <= 2^14 exact
EX_NEG_LN2_LO = _f32(0x35DE8083)
EX_RARE_BITS = np.uint32(0x42AEAC4F)  # |x| bits above this (87.33654) go to vsexp_cout_rare
RARE_OVER, RARE_UNDER, RARE_LOW = _f32(0x42B17217), _f32(0xC2CFF1B4), _f32(0xC2AEAC4F)  # 88.72283, -103.97208, -87.33654
D_L2E, D_SHIFTER = _f64(0x40571547652B82FE), _f64(0x4338000000000000)  # 64 / ln 2, 1.5 * 2^52
D_NEG_LN2_HI, D_NEG_LN2_LO = _f64(0xBF862E42FEFA0000), _f64(0xBD1CF79ABC9E3B3A)  # -ln 2 / 64 = hi + lo
D_P = [_f64(b) for b in (0x3F56C16A1C2A3FFD, 0x3F8111123AAF20D3, 0x3FA5555555558FCC, 0x3FC55555555548F8,
                         0x3FE0000000000000)]  # ~1/720, 1/120, 1/24, 1/6, 1/2
D_SPLIT = _f64(0x41F8000000000000)  # 1.5 * 2^32


def _pow2(e: np.ndarray) -> np.ndarray:
    """The double with biased exponent field e (0..2047) and zero mantissa."""
    return (e.astype(np.uint64) << np.uint64(52)).view(np.float64)


def _ex_rare(x: np.ndarray) -> np.ndarray:
    """vsexp_cout_rare (libtorch_cpu.so 0xb47e410), the scalar path of mkl_vml_kernel_sExp_EXHAynn, elementwise."""
    b = x.view(np.uint32)
    out = np.zeros_like(x)
    e = b & np.uint32(0x7F800000)
    special = e == np.uint32(0x7F800000)
    out[special] = x[special] * x[special]  # +inf -> inf, NaN -> quiet NaN (payload kept)
    out[b == np.uint32(0xFF800000)] = 0  # -inf
    tiny = ~special & (e < np.uint32(0x25000001))
    out[tiny] = x[tiny] + np.float32(1)
    rest = ~special & ~tiny
    over = rest & ~(x <= RARE_OVER)
    out[over] = np.inf
    calc = rest & ~over & ~(x < RARE_UNDER)  # below: 0
    xd = x[calc].astype(np.float64)
    t = xd * D_L2E + D_SHIFTER
    tn = t - D_SHIFTER
    r = (tn * D_NEG_LN2_HI + xd) + tn * D_NEG_LN2_LO
    p = D_P[0] * r
    for c in D_P[1:]:
        p = (p + c) * r
    p = p * r + r
    low = t.view(np.uint64) & np.uint64(0xFFFFFFFF)
    j = (low & np.uint64(63)).astype(np.intp)
    k = low >> np.uint64(6)
    th = _RARE_HI[j]
    p = (p + _RARE_LO[j]) * th
    res = np.empty_like(xd)
    up = x[calc] >= RARE_LOW
    eu = (k[up] + np.uint64(0x3FF)) & np.uint64(0x7FF)
    s = th[up] + p[up]
    top = eu == 0x7FF
    res_up = np.where(top, 0.0, s * _pow2(np.where(top, 0, eu)))
    res_up[top] = (s[top] * _f64(0x7FE0000000000000)) * 2
    res[up] = res_up
    dn = ~up
    ed = (k[dn] + np.uint64(0x43B)) & np.uint64(0x7FF)  # scaled by 2^60, undone below
    sc = _pow2(ed)
    ps, ts = p[dn] * sc, th[dn] * sc
    s = ts + ps
    err = ps + (ts - s)
    m = s * D_SPLIT
    hi = (s + m) - m
    lo = err + (s - hi)
    two60 = _f64(0x3C30000000000000)
    res[dn] = np.where(ed <= 0x32, s * two60, hi * two60 + lo * two60)
    out[calc] = res.astype(np.float32)
    return out


def vml_exp_ex(x: np.ndarray) -> np.ndarray:
    """MKL's vsExp HA generic x86 kernel (mkl_vml_kernel_sExp_EXHAynn), i.e. torch.exp of a float32 tensor on
    non-Intel CPUs: SSE, each multiply and add rounded to nearest on its own (no FMA)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    shape = x.shape
    x = x.reshape(-1)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        rare = (x.view(np.uint32) & np.uint32(0x7FFFFFFF)) > EX_RARE_BITS  # NaN, infinities included
        xm = np.where(rare, np.float32(0), x)
        t = xm * EX_L2E + EX_SHIFTER
        n = t - EX_SHIFTER
        tb = t.view(np.uint32)
        j = (tb & np.uint32(127)).astype(np.intp)
        hi = _EX_HI[j]
        r = n * EX_NEG_LN2_LO + (xm - n * EX_LN2_HI)
        p = ((r * r) * np.float32(0.5) + r) * hi + _EX_LO[j] + hi
        scale = (((tb << np.uint32(16)) + np.uint32(0x3F800000)) & np.uint32(0x7F800000)).view(np.float32)
        out = p * scale
        if rare.any():
            out[rare] = _ex_rare(x[rare])
    return out.reshape(shape)


KERNELS = {"z0": vml_exp, "ex": vml_exp_ex}
_AVX512 = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}  # MKL's AVX-512 (Skylake-SP) level
_KERNEL: str | None = None


def _cpu() -> tuple[str, set[str]]:
    """(x86 vendor string, CPU flags) from /proc/cpuinfo; ("", set()) where there is none."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return "", set()
    vendor, flags = "", set()
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key = key.strip()
        if key == "vendor_id" and not vendor:
            vendor = val.strip()
        elif key == "flags" and not flags:
            flags = set(val.split())
        if vendor and flags:
            break
    return vendor, flags


def mkl_kernel(vendor: str | None = None, flags: set[str] | None = None, mkl_isa: str | None = None) -> str:
    """The MKL sExp kernel torch runs on this CPU (or on the one described): "Z0" (Intel, AVX-512), "L9" (Intel,
    AVX2, not ported), "EX" (any other x86 vendor), "" (no x86 vendor string, or an Intel CPU older than AVX2).
    mkl_isa: MKL_ENABLE_INSTRUCTIONS, which caps Intel CPUs (MKL ignores it on others, which run EX anyway)."""
    if vendor is None:
        vendor, flags = _cpu()
    flags = flags or set()
    if mkl_isa is None:
        mkl_isa = os.environ.get("MKL_ENABLE_INSTRUCTIONS", "")
    mkl_isa = mkl_isa.strip().upper()
    if not vendor:
        return ""
    if vendor != "GenuineIntel":
        return "EX"
    if _AVX512 <= flags and (not mkl_isa or mkl_isa.startswith("AVX512")):
        return "Z0"
    if {"avx2", "fma"} <= flags and (not mkl_isa or mkl_isa.startswith(("AVX512", "AVX2"))):
        return "L9"
    return ""


def torch_exp_kernel() -> str:
    """The port for the MKL kernel torch.exp runs on this machine, "z0" or "ex", chosen once per process (see the
    module docstring); KQUANT_TORCH_EXP=z0|ex overrides it, to reproduce a converter run on another machine."""
    global _KERNEL
    if _KERNEL is None:
        env = os.environ.get("KQUANT_TORCH_EXP", "").strip().lower()
        if env:
            if env not in KERNELS:
                raise InputError(f"KQUANT_TORCH_EXP={env!r}: expected one of {', '.join(KERNELS)}")
            _KERNEL = env
        else:
            vendor, flags = _cpu()
            # L9 (Intel without AVX-512) is closer to EX than to Z0; no x86 vendor: kquant's earlier choice
            _KERNEL = {"Z0": "z0", "EX": "ex", "L9": "ex"}.get(mkl_kernel(vendor, flags), "ex" if vendor else "z0")
    return _KERNEL


def torch_exp(x: np.ndarray) -> np.ndarray:
    """torch.exp of a float32 tensor as torch computes it on this machine (or KQUANT_TORCH_EXP's)."""
    return KERNELS[torch_exp_kernel()](x)
