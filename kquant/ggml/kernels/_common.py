"""Scalar helpers shared by every kernel: fp16/bf16 bit conversion and ggml's rounding.

numba cannot use float16 inside @njit, so half precision is handled as raw uint16 bits with
integer code. `fp32_to_fp16` rounds to nearest even exactly like ggml's scalar
`ggml_compute_fp32_to_fp16` (ggml-impl.h, the FP16 library) and F16C's `_cvtss_sh(x, 0)`;
`fp16_to_fp32` is exact. Both are checked on all 65,536 codes in tests/test_fp16.py.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir as llvm_ir
from numba import njit, types
from numba.extending import intrinsic

# ggml-quants.c `GROUP_MAX_EPS` and friends
GROUP_MAX_EPS = np.float32(1e-15)


@njit(cache=True, no_cfunc_wrapper=True, inline="always")
def f32_bits(f):
    return np.float32(f).view(np.uint32)


@njit(cache=True, no_cfunc_wrapper=True, inline="always")
def bits_f32(b):
    return np.uint32(b).view(np.float32)


@njit(cache=True, no_cfunc_wrapper=True, inline="always")
def _round13(b):
    """float32 bits b (uint32) with the 13 low mantissa bits rounded off to nearest even, as a
    float32 in fp16's normal range rounds to fp16 (a carry into the exponent is correct, up to inf)."""
    return np.uint32((b + np.uint32(0xFFF) + ((b >> np.uint32(13)) & np.uint32(1))) & np.uint32(0xFFFFE000))


@njit(cache=True, no_cfunc_wrapper=True)
def fp32_to_fp16(f):
    """float32 -> IEEE half bits (uint16), round to nearest even; NaN -> sign|0x7E00 as ggml's scalar path."""
    x = np.uint32(np.float32(f).view(np.uint32))
    sign = np.uint32((x >> np.uint32(16)) & np.uint32(0x8000))
    a = x & np.uint32(0x7FFFFFFF)
    if a > np.uint32(0x7F800000):
        return np.uint16(sign | np.uint32(0x7E00))
    if a >= np.uint32(0x47800000):  # >= 65536 (and inf): overflow to inf
        return np.uint16(sign | np.uint32(0x7C00))
    if a < np.uint32(0x38800000):  # below 2^-14: half subnormal or zero
        if a <= np.uint32(0x33000000):  # <= 2^-25 rounds to (even) zero
            return np.uint16(sign)
        e = np.int64(a >> np.uint32(23))
        m = np.int64((a & np.uint32(0x7FFFFF)) | np.uint32(0x800000))
        shift = 126 - e
        r = m >> shift
        rem = m & ((np.int64(1) << shift) - 1)
        half = np.int64(1) << (shift - 1)
        if rem > half or (rem == half and (r & 1) == 1):
            r += 1
        return np.uint16(sign | np.uint32(r))
    # normal: the exponent rebased, the mantissa's 13 low bits dropped (_round13: no data-dependent branch)
    return np.uint16(sign | ((_round13(a) >> np.uint32(13)) - np.uint32(0x1C000)))


@njit(cache=True, no_cfunc_wrapper=True)
def fp16_to_fp32(h):
    """IEEE half bits (any integer type) -> float32, exact."""
    h = np.uint32(h) & np.uint32(0xFFFF)
    sign = (h & np.uint32(0x8000)) << np.uint32(16)
    e = (h >> np.uint32(10)) & np.uint32(0x1F)
    m = h & np.uint32(0x3FF)
    if e == 0:
        v = np.float32(m) * np.float32(5.960464477539063e-08)  # m * 2^-24, exact
        return -v if sign else v
    if e == 31:
        return np.uint32(sign | np.uint32(0x7F800000) | (m << np.uint32(13))).view(np.float32)
    return np.uint32(sign | ((e + np.uint32(112)) << np.uint32(23)) | (m << np.uint32(13))).view(np.float32)


@njit(cache=True, no_cfunc_wrapper=True, inline="always")
def fp16_round(f):
    """float32 value after a round trip through fp16 (what a kernel reads back from a stored scale).
    fp16's normal range is rounded in place (to nearest even, 13 mantissa bits dropped) without the
    two conversions, which kernels calling this per block paid several ns for; the same value."""
    u = np.uint32(np.float32(f).view(np.uint32))
    a = u & np.uint32(0x7FFFFFFF)
    if a >= np.uint32(0x38800000) and a < np.uint32(0x477FF000):  # 2^-14 <= |f| < 65520
        return np.uint32(_round13(u)).view(np.float32)
    return fp16_to_fp32(fp32_to_fp16(f))


@njit(cache=True, no_cfunc_wrapper=True)
def fp32_to_bf16(f):
    """float32 -> bf16 bits, ggml's `ggml_compute_fp32_to_bf16` (round to nearest even, NaN quieted)."""
    u = np.uint32(np.float32(f).view(np.uint32))
    if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        return np.uint16((u >> np.uint32(16)) | np.uint32(64))
    return np.uint16((u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16))


@njit(cache=True, no_cfunc_wrapper=True, inline="always")
def bf16_to_fp32(h):
    return np.uint32(np.uint32(h) << np.uint32(16)).view(np.float32)


# Lane tools, as LLVM intrinsics. A Python conditional expression splits numba's IR into basic
# blocks (slow to compile, and it defeats refcount pruning of inlined array helpers), and an @njit
# helper left as a call blocks vectorization; these are single instructions or short straight-line
# code, so lane loops that use them stay one block that LLVM's loop vectorizer takes.
_I32 = llvm_ir.IntType(32)
_FLT = llvm_ir.FloatType()
_MAGIC = 12582912.0  # 1.5 * 2^23: ggml's nearest_int adds it and reads the low mantissa bits


def _nearest_int_ir(builder, f):
    v = builder.fadd(f, _FLT(_MAGIC))
    i = builder.and_(builder.bitcast(v, _I32), _I32(0x007FFFFF))
    return builder.sub(i, _I32(0x00400000))


@intrinsic
def nearest_int(typingctx, f):
    """ggml-quants.c `nearest_int` bit for bit, as int32, for a float32 argument: round half to even
    for |f| <= 4194303; outside that range (and for NaN/inf) the same wrapped value as the C trick."""
    if f != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return _nearest_int_ir(builder, args[0])

    return types.int32(types.float32), codegen


@intrinsic
def sel(typingctx, c, a, b):
    """`c ? a : b` as one LLVM select."""
    if not isinstance(c, types.Boolean) or a != b:
        return None

    def codegen(context, builder, signature, args):
        return builder.select(args[0], args[1], args[2])

    return a(c, a, b), codegen


@intrinsic
def level(typingctx, f, lo, hi):
    """(float)MAX(lo, MIN(hi, nearest_int(f))) for float32 f: ggml's clamped rounding, bit for bit."""
    if f != types.float32 or not isinstance(lo, types.Integer) or not isinstance(hi, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        q = _nearest_int_ir(builder, args[0])
        lo32 = context.cast(builder, args[1], signature.args[1], types.int32)
        hi32 = context.cast(builder, args[2], signature.args[2], types.int32)
        q = builder.select(builder.icmp_signed(">", q, hi32), hi32, q)
        q = builder.select(builder.icmp_signed("<", q, lo32), lo32, q)
        return builder.sitofp(q, _FLT)

    return types.float32(f, lo, hi), codegen


@njit(cache=True, no_cfunc_wrapper=True, inline="always")
def put_f16(out, pos, f):
    """Store float32 `f` as little-endian fp16 at out[pos:pos+2] (out is uint8)."""
    h = fp32_to_fp16(f)
    out[pos] = np.uint8(h & np.uint16(0xFF))
    out[pos + 1] = np.uint8(h >> np.uint16(8))


@njit(cache=True, no_cfunc_wrapper=True, inline="always")
def get_f16(buf, pos):
    """Read little-endian fp16 at buf[pos:pos+2] as float32."""
    return fp16_to_fp32(np.uint32(buf[pos]) | (np.uint32(buf[pos + 1]) << np.uint32(8)))
