"""ggml's 2-bit i-quants IQ2_XXS, IQ2_XS and IQ2_S, ported to Numba.

Ports, from ggml/src/ggml-quants.c (llama.cpp as vendored in llama-cpp-python 0.3.36):
  quantize_row_iq2_xxs_impl, quantize_row_iq2_xs_impl, quantize_row_iq2_s_impl,
  iq2_find_best_neighbour, make_qp_quants,
  dequantize_row_iq2_xxs, dequantize_row_iq2_xs, dequantize_row_iq2_s
byte for byte. Every float expression is evaluated in float32, op by op, in C's order. The
search tables (grid, kmap, neighbours) are iq2xs_init_impl's (kquant.ggml.kernels._iqgrid).

Groups of 8 values are coded as a point of an E8-like grid (levels 2l+1, l = 0..2, magnitudes
after the signs are taken out) plus sign bits; 32 (XXS) or 16 (XS, S) values share a 4-bit
scale, a super-block of 256 shares an fp16 scale. Block layouts (ggml-common.h):

    block_iq2_xxs  d (fp16), qs uint16[32]: per 32 values two uint32: grid indices (8 bits
                   each, 4 groups), then 4 x 7 sign bits and the 4-bit scale in bits 28..31
    block_iq2_xs   d (fp16), qs uint16[32]: per group of 8: grid index (9 bits) | 7 sign bits
                   << 9; scales uint8[8]: per 16 values a 4-bit scale
    block_iq2_s    d (fp16), qs uint8[64]: 32 low bytes of the grid indices, then 32 sign
                   bytes; qh uint8[8]: 2 high index bits per group; scales uint8[8]

IQ2_XXS and IQ2_XS have a weighted path only: ggml_quantize_chunk aborts without importance
weights (ggml_quantize_requires_imatrix), and so does kquant.quantize. IQ2_S has both.

ggml also aborts (GGML_ASSERT) when a search finds no candidate or a scale is NaN, which NaN
input can cause (kquant.quantize refuses non-finite input before that); the kernels count such
blocks and return the count (kquant.quantize raises), leaving the block as far as ggml got.
Elsewhere they follow ggml through NaN and overflow, bytes included.

Speed (same bytes): the hot loops are LLVM vector IR written out (numba leaves LLVM's SLP
vectorizer off and fully unrolls short lane loops into scalar code before its loop vectorizer
sees them), with C's float operations in C's order and no fast-math flags. A sub-block's trial
scales are lanes for the roundings (_round_group) and the two weighted sums (_lane_sums, ggml's
element order per lane); make_qp_quants' 8 trial scales likewise (_qp_trials); the weights and
their square roots 8 at a time (_weights). Each neighbour search (_search) runs over its
candidate list (stored in one piece, _iqgrid.lists) 8 candidates at a time, picking each
coordinate's term by its grid byte (vpermps where the CPU has AVX2, selects elsewhere), and takes
ggml's first smallest d2 as an integer minimum. Helpers that allocate nothing are compiled
without reference counting (KJIT).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir as llvm_ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..types import QK_K, QType, field_offsets
from . import Kernel
from ._common import GROUP_MAX_EPS, get_f16, nearest_int, put_f16
from ._iq_grids import KGRID_2BIT_256, KGRID_2BIT_512, KGRID_2BIT_1024
from ._iqgrid import GRID_S, GRID_XS, GRID_XXS, KMAP_SIZE, PAD, lists, prepare
from ._search import qp_final

JIT = dict(cache=True, no_cfunc_wrapper=True, error_model="numpy")  # float x/0 gives inf/nan, as in C
# helpers that allocate nothing: no reference counting of the arrays they are handed (atomic
# increments and decrements on every call were a sixth of the time)
KJIT = dict(JIT, _nrt=False)
_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_F05 = np.float32(0.5)
_F01 = np.float32(0.1)
_FM1 = np.float32(-1.0)
KMAXQ = 3
GROUP_MAX_EPS_IQ2_S = np.float32(1e-8)
NT = 24  # trial lanes: 19 trials (IQ2_XS, IQ2_S) or 13 (IQ2_XXS), padded to whole vectors

# block layouts: offsets from the declarations (kquant.ggml.types)
XXS_BYTES = QType.IQ2_XXS.type_size
XXS_D, XXS_QS = field_offsets(QType.IQ2_XXS, "d", "qs")
XS_BYTES = QType.IQ2_XS.type_size
XS_D, XS_QS, XS_SCALES = field_offsets(QType.IQ2_XS, "d", "qs", "scales")
S_BYTES = QType.IQ2_S.type_size
S_D, S_QS, S_QH, S_SCALES = field_offsets(QType.IQ2_S, "d", "qs", "qh", "scales")

# the dequantization grids (ggml-common.h iq2xxs_grid, iq2xs_grid, iq2s_grid): levels 0, 1, 2 -> 8, 25, 43
DEQ_LEVELS = np.array([8.0, 25.0, 43.0, 0.0], dtype=np.float32)
DEQ_XXS = KGRID_2BIT_256.astype(np.int64)  # the grids as packed levels
DEQ_XS = KGRID_2BIT_512.astype(np.int64)
DEQ_S = KGRID_2BIT_1024.astype(np.int64)


LANES = 8  # candidates per step of a neighbour search: one AVX2 vector of float32
_V8 = llvm_ir.VectorType(llvm_ir.FloatType(), LANES)
_I8 = llvm_ir.IntType(8)
_I32 = llvm_ir.IntType(32)
_I64 = llvm_ir.IntType(64)
_V8I8 = llvm_ir.VectorType(_I8, LANES)
_V8I32 = llvm_ir.VectorType(_I32, LANES)


def _bcast(f, v, lane):
    """lane `lane` of the vector v in every lane (a constant shuffle)."""
    return f.shuffle_vector(v, llvm_ir.Constant(v.type, llvm_ir.Undefined),
                            llvm_ir.Constant(_V8I32, [lane] * LANES))


def _umin8(f, v):
    """the smallest lane of a <8 x i32> as unsigned (a reduction of integers: order-free)."""
    fn = cgutils.get_or_insert_function(f.module, llvm_ir.FunctionType(_I32, [_V8I32]), "llvm.vector.reduce.umin.v8i32")
    return f.call(fn, [v])


@intrinsic
def _search(typingctx, codes, nidx, desc, xval, waux, xo, scale):
    """iq2_find_best_neighbour for the off-grid point whose list descriptor is desc (-1 - kx[u],
    _iqgrid.lists), over the group xval[xo:xo+8] with weights waux[xo:xo+8]: the grid index of
    the first candidate with the smallest d2 < FLT_MAX, or -1 where ggml asserts.

    LLVM vector IR: the 3 possible terms t_i = (waux_i diff_i) diff_i of each coordinate
    (diff_i = scale q - xval_i, q = 1, 3, 5), computed once, then 8 candidates per step as lanes,
    each picking its terms by its grid bytes (with AVX2 one vpermps per coordinate from a vector
    holding the terms in lanes 1, 3, 5; else two selects) and summing d2 = ((0 + t0) + t1) + ...
    + t7 in ggml's order (C's float operations, no fast-math flags).
    d2 is never -0 (0 + t0 is +0 for t0 = +-0), so its bits as unsigned integers order it as
    ggml's `<` does, NaN above FLT_MAX: each lane keeps its smallest bits and the first candidate
    with them (a strict `<`, candidates in order), and the first lane position with the smallest
    bits is ggml's choice. Padding copies of the last candidate come later in their list."""
    sig = types.int64(codes, nidx, types.int64, xval, waux, types.int64, types.float32)

    def codegen(context, f, signature, args):
        a_codes, a_nidx, a_desc, a_x, a_w, a_xo, a_scale = args
        cdata = context.make_array(signature.args[0])(context, f, a_codes).data
        ndata = context.make_array(signature.args[1])(context, f, a_nidx).data
        xdata = context.make_array(signature.args[3])(context, f, a_x).data
        wdata = context.make_array(signature.args[4])(context, f, a_w).data
        vs = _splat8(f, a_scale, _V8)
        permps = "+avx2" in context.codegen()._tm_features.split(",")
        if permps:  # coordinate i's terms in lanes 1, 3, 5 (the grid bytes), picked by vpermps
            sq = f.fmul(vs, llvm_ir.Constant(_V8, [float(q) for q in range(LANES)]))
            fnty = llvm_ir.FunctionType(_V8, [_V8, _V8I32])
            perm = cgutils.get_or_insert_function(f.module, fnty, "llvm.x86.avx2.permps")
            tabs = []
            for i in range(8):
                o = f.add(a_xo, _I64(i))
                e = f.fsub(sq, _splat8(f, f.load(f.gep(xdata, [o])), _V8))  # C: scale*grid[i] - xval[i]
                tabs.append(f.fmul(f.fmul(_splat8(f, f.load(f.gep(wdata, [o])), _V8), e), e))  # w*diff*diff
        else:  # the terms as three vectors over the coordinates, picked by selects
            vx = f.load(f.bitcast(f.gep(xdata, [a_xo]), _V8.as_pointer()), align=4)
            vw = f.load(f.bitcast(f.gep(wdata, [a_xo]), _V8.as_pointer()), align=4)
            terms = []
            for q in (1.0, 3.0, 5.0):
                e = f.fsub(f.fmul(vs, llvm_ir.Constant(_V8, [q] * LANES)), vx)
                terms.append(f.fmul(f.fmul(vw, e), e))
            b1 = [_bcast(f, terms[0], i) for i in range(8)]
            b3 = [_bcast(f, terms[1], i) for i in range(8)]
            b5 = [_bcast(f, terms[2], i) for i in range(8)]
        p0 = f.mul(f.ashr(a_desc, _I64(8)), _I64(PAD))
        n = f.mul(f.and_(a_desc, _I64(255)), _I64(PAD))
        r0 = f.mul(p0, _I64(8))
        best = cgutils.alloca_once_value(f, llvm_ir.Constant(_V8I32, [0xFFFFFFFF] * LANES))
        bestc = cgutils.alloca_once_value(f, llvm_ir.Constant(_V8I32, [0] * LANES))
        one = llvm_ir.Constant(_V8I8, [1] * LANES)
        three = llvm_ir.Constant(_V8I8, [3] * LANES)
        zero = llvm_ir.Constant(_V8, [0.0] * LANES)
        lane = llvm_ir.Constant(_V8I32, list(range(LANES)))
        with cgutils.for_range_slice(f, _I64(0), n, _I64(LANES), intp=_I64) as (c0, _):
            d2 = zero
            for i in range(8):
                at = f.add(f.add(r0, f.mul(n, _I64(i))), c0)
                cv = f.load(f.bitcast(f.gep(cdata, [at]), _V8I8.as_pointer()), align=1)
                if permps:
                    t = f.call(perm, [tabs[i], f.zext(cv, _V8I32)])
                else:
                    t = f.select(f.icmp_signed("==", cv, three), b3[i], b5[i])
                    t = f.select(f.icmp_signed("==", cv, one), b1[i], t)
                d2 = f.fadd(d2, t)
            bits = f.bitcast(d2, _V8I32)
            old = f.load(best)
            lt = f.icmp_unsigned("<", bits, old)
            f.store(f.select(lt, bits, old), best)
            cv32 = f.add(_splat8(f, f.trunc(c0, _I32), _V8I32), lane)
            f.store(f.select(lt, cv32, f.load(bestc)), bestc)
        bv = f.load(best)
        m = _umin8(f, bv)
        eq = f.icmp_unsigned("==", bv, _splat8(f, m, _V8I32))
        cmin = _umin8(f, f.select(eq, f.load(bestc), llvm_ir.Constant(_V8I32, [0xFFFFFFFF] * LANES)))
        found = f.icmp_unsigned("<", m, _I32(0x7F7FFFFF))
        cmin = f.select(found, cmin, _I32(0))  # (a list is never empty)
        gi = f.load(f.gep(ndata, [f.add(p0, f.zext(cmin, _I64))]))
        return f.select(found, f.zext(gi, _I64), _I64(-1))

    return sig, codegen


def _splat8(f, v, vty):
    """the scalar v in all 8 lanes of a vector of type vty."""
    u = f.insert_element(llvm_ir.Constant(vty, llvm_ir.Undefined), v, _I32(0))
    return f.shuffle_vector(u, llvm_ir.Constant(vty, llvm_ir.Undefined), llvm_ir.Constant(_V8I32, [0] * LANES))


def _vec(f, data, idx, vty):
    """data[idx:idx+8] as a vector pointer (unaligned)."""
    return f.bitcast(f.gep(data, [idx]), vty.as_pointer())


@intrinsic
def _round_group(typingctx, ids, xval, xo, laux, uk, nch):
    """The 8 values xval[xo:xo+8] rounded with every trial's id (lanes t < 8 nch of ids), as
    ggml's loop: l = MAX(0, MIN(kMaxQ-1, nearest_int(0.5f*(id*xval-1)))) (C's float operations
    and nearest_int's bit trick), into laux[xo+i, t], and u = sum l_i << 2i into uk[t]."""
    sig = types.void(ids, xval, types.int64, laux, uk, types.int64)

    def codegen(context, f, signature, args):
        a_ids, a_x, a_xo, a_laux, a_uk, a_nch = args
        idd = context.make_array(signature.args[0])(context, f, a_ids).data
        xd = context.make_array(signature.args[1])(context, f, a_x).data
        ld = context.make_array(signature.args[3])(context, f, a_laux).data
        ud = context.make_array(signature.args[4])(context, f, a_uk).data
        xs = [_splat8(f, f.load(f.gep(xd, [f.add(a_xo, _I64(i))])), _V8) for i in range(8)]
        half = llvm_ir.Constant(_V8, [0.5] * LANES)
        one = llvm_ir.Constant(_V8, [1.0] * LANES)
        magic = llvm_ir.Constant(_V8, [12582912.0] * LANES)
        mask = llvm_ir.Constant(_V8I32, [0x007FFFFF] * LANES)
        off = llvm_ir.Constant(_V8I32, [0x00400000] * LANES)
        lo = llvm_ir.Constant(_V8I32, [0] * LANES)
        hi = llvm_ir.Constant(_V8I32, [KMAXQ - 1] * LANES)
        with cgutils.for_range(f, a_nch) as loop:
            t0 = f.mul(loop.index, _I64(LANES))
            vid = f.load(_vec(f, idd, t0, _V8), align=4)
            u = lo
            for i in range(8):
                v = f.fadd(f.fmul(half, f.fsub(f.fmul(vid, xs[i]), one)), magic)
                q = f.sub(f.and_(f.bitcast(v, _V8I32), mask), off)
                q = f.select(f.icmp_signed("<", q, hi), q, hi)
                q = f.select(f.icmp_signed(">", q, lo), q, lo)
                row = f.add(f.mul(f.add(a_xo, _I64(i)), _I64(NT)), t0)
                f.store(q, _vec(f, ld, row, _V8I32), align=4)
                u = f.or_(u, f.shl(q, llvm_ir.Constant(_V8I32, [2 * i] * LANES)))
            f.store(u, _vec(f, ud, t0, _V8I32), align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _lane_sums(typingctx, laux, weight, wx, nv, nch, sqx, sq2):
    """Every trial's (lanes t < 8 nch) sumqx += w*xval[i]*q and sumq2 += w*q*q over i < nv with
    q = 2 laux[i, t] + 1, in ggml's order (w*xval[i] is wx[i])."""
    sig = types.void(laux, weight, wx, types.int64, types.int64, sqx, sq2)

    def codegen(context, f, signature, args):
        a_laux, a_w, a_wx, a_nv, a_nch, a_sqx, a_sq2 = args
        ld = context.make_array(signature.args[0])(context, f, a_laux).data
        wd = context.make_array(signature.args[1])(context, f, a_w).data
        wxd = context.make_array(signature.args[2])(context, f, a_wx).data
        sxd = context.make_array(signature.args[5])(context, f, a_sqx).data
        s2d = context.make_array(signature.args[6])(context, f, a_sq2).data
        zero = llvm_ir.Constant(_V8, [0.0] * LANES)
        accx = cgutils.alloca_once(f, _V8)
        acc2 = cgutils.alloca_once(f, _V8)
        with cgutils.for_range(f, a_nch) as loop:
            t0 = f.mul(loop.index, _I64(LANES))
            f.store(zero, accx)
            f.store(zero, acc2)
            with cgutils.for_range(f, a_nv) as li:
                i = li.index
                lv = f.load(_vec(f, ld, f.add(f.mul(i, _I64(NT)), t0), _V8I32), align=4)
                q = f.sitofp(f.add(f.shl(lv, llvm_ir.Constant(_V8I32, [1] * LANES)),
                                   llvm_ir.Constant(_V8I32, [1] * LANES)), _V8)
                a = _splat8(f, f.load(f.gep(wxd, [i])), _V8)
                w = _splat8(f, f.load(f.gep(wd, [i])), _V8)
                f.store(f.fadd(f.load(accx), f.fmul(a, q)), accx)
                f.store(f.fadd(f.load(acc2), f.fmul(f.fmul(w, q), q)), acc2)
            f.store(f.load(accx), _vec(f, sxd, t0, _V8), align=4)
            f.store(f.load(acc2), _vec(f, s2d, t0, _V8), align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _qp_trials(typingctx, x, w, n, nmax, fmax, isc, mse):
    """make_qp_quants' 8 trial scales (is = -4..-1, 1..4) as lanes: isc[lane] = iscale_is =
    (0.1f*is + nmax)/max and mse[lane] = sum over i < n, in order, of w*diff*diff with
    diff = x[i] - scale_is*MIN(nmax, nearest_int(iscale_is*x[i])), scale_is = 1/iscale_is."""
    sig = types.void(x, w, types.int64, types.int64, types.float32, isc, mse)

    def codegen(context, f, signature, args):
        a_x, a_w, a_n, a_nmax, a_fmax, a_isc, a_mse = args
        xd = context.make_array(signature.args[0])(context, f, a_x).data
        wd = context.make_array(signature.args[1])(context, f, a_w).data
        id_ = context.make_array(signature.args[5])(context, f, a_isc).data
        md = context.make_array(signature.args[6])(context, f, a_mse).data
        nmax = _splat8(f, f.trunc(a_nmax, _I32), _V8I32)
        vis = llvm_ir.Constant(_V8, [-4.0, -3.0, -2.0, -1.0, 1.0, 2.0, 3.0, 4.0])
        isc = f.fdiv(f.fadd(f.fmul(llvm_ir.Constant(_V8, [float(np.float32(0.1))] * LANES), vis),
                            f.sitofp(nmax, _V8)), _splat8(f, a_fmax, _V8))
        scl = f.fdiv(llvm_ir.Constant(_V8, [1.0] * LANES), isc)
        magic = llvm_ir.Constant(_V8, [12582912.0] * LANES)
        acc = cgutils.alloca_once_value(f, llvm_ir.Constant(_V8, [0.0] * LANES))
        with cgutils.for_range(f, a_n) as loop:
            xv = _splat8(f, f.load(f.gep(xd, [loop.index])), _V8)
            wv = _splat8(f, f.load(f.gep(wd, [loop.index])), _V8)
            v = f.fadd(f.fmul(isc, xv), magic)
            q = f.sub(f.and_(f.bitcast(v, _V8I32), llvm_ir.Constant(_V8I32, [0x007FFFFF] * LANES)),
                      llvm_ir.Constant(_V8I32, [0x00400000] * LANES))
            q = f.select(f.icmp_signed("<", q, nmax), q, nmax)
            diff = f.fsub(xv, f.fmul(scl, f.sitofp(q, _V8)))
            f.store(f.fadd(f.load(acc), f.fmul(f.fmul(wv, diff), diff)), acc)
        f.store(isc, _vec(f, id_, _I64(0), _V8), align=4)
        f.store(f.load(acc), _vec(f, md, _I64(0), _V8), align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(**KJIT)
def qp_quants(n, nmax, x, L, quant_weights, isc, mse):
    """ggml-quants.c make_qp_quants (as kquant.ggml.kernels._search.make_qp_quants), its 8 trial
    scales as lanes (_qp_trials), each trial's sum in ggml's order; isc, mse: (8,) scratch."""
    fmax = _F0
    for i in range(n):
        fmax = fmax if fmax > x[i] else x[i]  # C's MAX(max, x[i]), NaN included
    if fmax < GROUP_MAX_EPS:  # all zero
        for i in range(n):
            L[i] = 0
        return _F0
    iscale = np.float32(nmax) / fmax
    for i in range(n):
        L[i] = nearest_int(iscale * x[i])  # stored as uint8, as C
    scale = _F1 / iscale
    best_mse = _F0
    for i in range(n):
        diff = x[i] - scale * np.float32(L[i])
        w = quant_weights[i]
        best_mse += w * diff * diff
    _qp_trials(x, quant_weights, n, nmax, fmax, isc, mse)
    for j in range(8):
        if mse[j] < best_mse:
            best_mse = mse[j]
            iscale = isc[j]
    return qp_final(n, nmax, x, L, quant_weights, iscale)


@intrinsic
def _weights(typingctx, x, bo, qw, sigma2, weighted, weight, waux, n):
    """weight[i] = qw[bo+i]*sqrtf(sigma2 + x[bo+i]*x[bo+i]) (weighted) or 0.25f*sigma2 +
    x[bo+i]*x[bo+i], and waux[i] = sqrtf(weight[i]), for i < n (a multiple of 8), 8 at a time
    (llvm.sqrt is IEEE's correctly rounded square root, as sqrtf)."""
    sig = types.void(x, types.int64, qw, types.float32, types.boolean, weight, waux, types.int64)

    def codegen(context, f, signature, args):
        a_x, a_bo, a_qw, a_s2, a_wtd, a_w, a_wa, a_n = args
        xd = context.make_array(signature.args[0])(context, f, a_x).data
        qd = context.make_array(signature.args[2])(context, f, a_qw).data
        wd = context.make_array(signature.args[5])(context, f, a_w).data
        ad = context.make_array(signature.args[6])(context, f, a_wa).data
        sqrt = cgutils.get_or_insert_function(f.module, llvm_ir.FunctionType(_V8, [_V8]), "llvm.sqrt.v8f32")
        s2 = _splat8(f, a_s2, _V8)
        s2q = f.fmul(llvm_ir.Constant(_V8, [0.25] * LANES), s2)
        with cgutils.for_range_slice(f, _I64(0), a_n, _I64(LANES), intp=_I64) as (i0, _):
            xv = f.load(_vec(f, xd, f.add(a_bo, i0), _V8), align=4)
            xx = f.fmul(xv, xv)
            out = cgutils.alloca_once(f, _V8)
            with f.if_else(a_wtd) as (then, otherwise):
                with then:
                    qv = f.load(_vec(f, qd, f.add(a_bo, i0), _V8), align=4)
                    f.store(f.fmul(qv, f.call(sqrt, [f.fadd(s2, xx)])), out)
                with otherwise:
                    f.store(f.fadd(s2q, xx), out)
            wv = f.load(out)
            f.store(wv, _vec(f, wd, i0, _V8), align=4)
            f.store(f.call(sqrt, [wv]), _vec(f, ad, i0, _V8), align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(**KJIT)
def best_neighbour(desc, codes, nidx, xval, xo, waux, scale):
    """iq2_find_best_neighbour (_search): the grid index, or -1 where ggml asserts."""
    return _search(codes, nidx, desc, xval, waux, xo, scale)


@njit(**KJIT)
def group_u(xval, xo, idv):
    """u = sum MAX(0, MIN(2, nearest_int(0.5f*(id*xval-1)))) << 2i over the group at xo."""
    u = 0
    for i in range(8):
        l = nearest_int(_F05 * (idv * xval[xo + i] - _F1))
        u |= max(0, min(KMAXQ - 1, l)) << (2 * i)
    return u


@njit(**KJIT)
def packed(L, lo):
    """uint16 u |= (L[i] << 2i) over int8 L (C's int promotion, then truncation)."""
    u = 0
    for i in range(8):
        u |= np.int64(L[lo + i]) << (2 * i)
    return u & 0xFFFF


@njit(**KJIT)
def signs_parity(xb, xo, weight, xval, k):
    """Signs of group k with an even count (IQ2_XXS, IQ2_XS): the smallest w x^2 keeps its sign
    flipped if needed. Fills xval[8k:8k+8], returns the 7 stored sign bits."""
    nflip = 0
    s = 0
    for i in range(8):
        v = xb[xo + 8 * k + i]
        if v >= _F0:
            xval[8 * k + i] = v
        else:
            xval[8 * k + i] = -v
            nflip += 1
            s |= 1 << i
    if nflip % 2:
        imin = 0
        v0 = xb[xo + 8 * k]
        mn = weight[8 * k] * v0 * v0
        for i in range(1, 8):
            v = xb[xo + 8 * k + i]
            ax = weight[8 * k + i] * v * v
            if ax < mn:
                mn = ax
                imin = i
        xval[8 * k + imin] = -xval[8 * k + imin]
        s ^= 1 << imin
    return s & 127


@njit(**KJIT)
def trials(nv, nt, scl, xval, weight, waux, wx, kx, codes, nidx, lv, ids, tsc, laux, uk, onaux, sqx, sq2):
    """Every trial of ggml's loop `for is: id = (2*kMaxQ-1 + is*0.1f)/scl` (is = -(nt/2)..nt/2)
    over the nv values xval, the trials as lanes: laux (nv, NT) gets each trial's levels (after
    the neighbour searches), onaux (NT, 4) its groups' on-grid flags, sqx/sq2 its two sums, each
    in ggml's element order. Returns True where a search asserts (ggml reaches every search of
    the loop, so one is enough)."""
    half = nt // 2
    nch = (nt + LANES - 1) // LANES  # lanes: whole vectors (nt is a compile-time constant)
    ntl = nch * LANES
    for t in range(nt):
        ids[t] = (np.float32(2 * KMAXQ - 1) + np.float32(t - half) * _F01) / scl
        tsc[t] = _F1 / ids[t]  # this_scale
    for t in range(nt, ntl):  # padding lanes, never used
        ids[t] = ids[nt - 1]
    abort = False
    for k in range(nv // 8):
        _round_group(ids, xval, 8 * k, laux, uk, nch)
        for t in range(nt):
            g = kx[uk[t]]
            onaux[t, k] = g >= 0
            if g < 0:
                g = _search(codes, nidx, -1 - g, xval, waux, 8 * k, tsc[t])
                if g < 0:
                    abort = True
                    continue
                for i in range(8):
                    laux[8 * k + i, t] = lv[g, i]
    _lane_sums(laux, weight, wx, nv, nch, sqx, sq2)
    return abort


@njit(**KJIT)
def choose(nt, sqx, sq2, scale):
    """ggml's `if (sumq2 > 0 && sumqx*sumqx > best*sumq2) {scale = sumqx/sumq2; best = scale*sumqx; ...}`
    over the trials in order: (the last trial taken or -1, scale)."""
    best = _F0
    chosen = -1
    for t in range(nt):
        if sq2[t] > _F0 and sqx[t] * sqx[t] > best * sq2[t]:
            scale = sqx[t] / sq2[t]
            best = scale * sqx[t]
            chosen = t
    return chosen, scale


@njit(**KJIT)
def refit(k, scale, xval, waux, kx, codes, nidx, lv, L):
    """Group k re-rounded with id = 1/scale, moved to its best neighbour if off the grid: L's
    levels (False where the search asserts)."""
    g = kx[group_u(xval, 8 * k, _F1 / scale)]
    if g < 0:
        g = best_neighbour(-1 - g, codes, nidx, xval, 8 * k, waux, scale)
        if g < 0:
            return False
    for i in range(8):
        L[8 * k + i] = lv[g, i]
    return True


@njit(**KJIT)
def sums(nv, weight, wx, L):
    sumqx = _F0
    sumq2 = _F0
    for i in range(nv):
        q = np.float32(2 * L[i] + 1)
        sumqx += wx[i] * q
        sumq2 += weight[i] * q * q
    return sumqx, sumq2


@njit(**JIT)
def _scratch(nv):
    """weight, waux, xval, wx (nv,), L (nv,) int8, laux (nv, NT), uk (NT,), onaux (NT, 4), ongrid (4,),
    ids, sqx, sq2 (NT,), signs (4,), this_scale (NT,)"""
    return (np.zeros(nv, np.float32), np.zeros(nv, np.float32), np.zeros(nv, np.float32), np.zeros(nv, np.float32),
            np.zeros(nv, np.int8), np.zeros((nv, NT), np.int32), np.zeros(NT, np.int32), np.zeros((NT, 4), np.bool_),
            np.zeros(4, np.bool_),
            np.zeros(NT, np.float32), np.zeros(NT, np.float32), np.zeros(NT, np.float32), np.zeros(4, np.int64),
            np.zeros(NT, np.float32))


@njit(**KJIT)
def xxs_block(x, xo, qw, out, off, kx, codes, nidx, lv, scales, q2, Lqp, qpi, qpm, sc):
    """quantize_row_iq2_xxs_impl for the super-block x[xo:xo+256] -> out[off:off+66]; returns 1
    where ggml aborts, else 0."""
    weight, waux, xval, wx, L, laux, uk, onaux, ong, ids, sqx, sq2, signs, tsc = sc
    for j in range(16):
        q2[j] = 0
    max_scale = _F0
    sumx2 = _F0
    for i in range(QK_K):
        sumx2 += x[xo + i] * x[xo + i]
    sigma2 = sumx2 / np.float32(QK_K)
    for ib in range(QK_K // 32):
        bo = xo + 32 * ib
        _weights(x, bo, qw, sigma2, True, weight, waux, 32)
        for k in range(4):
            signs[k] = signs_parity(x, bo, weight, xval, k)
        mx = xval[0]
        for i in range(1, 32):
            mx = mx if mx > xval[i] else xval[i]
        if mx < GROUP_MAX_EPS:
            scales[ib] = _F0
            continue
        scale = qp_quants(32, KMAXQ + 1, xval, Lqp, weight, qpi, qpm)
        for i in range(32):
            L[i] = np.int8(Lqp[i])
        eff_max = scale * np.float32(KMAXQ)
        if eff_max <= _F0:
            scales[ib] = _F0
            continue
        for i in range(32):
            wx[i] = weight[i] * xval[i]
        if trials(32, 13, eff_max, xval, weight, waux, wx, kx, codes, nidx, lv, ids, tsc, laux, uk, onaux, sqx, sq2):
            return 1
        chosen, scale = choose(13, sqx, sq2, scale)
        if chosen >= 0:
            for i in range(32):
                L[i] = laux[i, chosen]
        if scale > _F0:
            for k in range(4):
                if not refit(k, scale, xval, waux, kx, codes, nidx, lv, L):
                    return 1
            sumqx, sumq2 = sums(32, weight, wx, L)
            if sumq2 > _F0:
                scale = sumqx / sumq2
        if scale < _F0:
            scale = -scale
            for k in range(4):
                signs[k] = (~signs[k]) & 127
        for k in range(4):
            u = packed(L, 8 * k)
            if u >= KMAP_SIZE or kx[u] < 0:
                return 1
            q2[2 * ib] |= np.uint32(kx[u]) << np.uint32(8 * k)
            q2[2 * ib + 1] |= np.uint32(signs[k]) << np.uint32(7 * k)
        if not scale >= _F0:
            return 1
        scales[ib] = scale
        max_scale = max_scale if max_scale > scale else scale
    if max_scale == _F0:
        put_f16(out, off + XXS_D, _F0)
        for j in range(QK_K // 4):
            out[off + XXS_QS + j] = 0
        return 0
    d = max_scale / np.float32(31.0)
    put_f16(out, off + XXS_D, d)
    idv = _F1 / d
    for ib in range(QK_K // 32):
        l = nearest_int(_F05 * (idv * scales[ib] - _F1))
        l = max(0, min(15, l))
        q2[2 * ib + 1] |= np.uint32(l) << np.uint32(28)
    for j in range(16):
        v = q2[j]
        for b in range(4):
            out[off + XXS_QS + 4 * j + b] = np.uint8((v >> np.uint32(8 * b)) & np.uint32(0xFF))
    return 0


@njit(**KJIT)
def xs_s_block(x, xo, qw, weighted, is_s, out, off, kx, codes, nidx, lv, scales, q2, sc):
    """quantize_row_iq2_xs_impl (is_s False) or quantize_row_iq2_s_impl (is_s True) for the
    super-block x[xo:xo+256] -> out[off:]; returns 1 where ggml aborts, else 0."""
    weight, waux, xval, wx, L, laux, uk, onaux, ong, ids, sqx, sq2, signs, tsc = sc
    max_scale = _F0
    sumx2 = _F0
    for i in range(QK_K):
        sumx2 += x[xo + i] * x[xo + i]
    if is_s:
        sigma2 = np.float32(2.0) * sumx2 / np.float32(QK_K)
        eps = GROUP_MAX_EPS_IQ2_S
        nbytes = S_BYTES
    else:
        sigma2 = sumx2 / np.float32(QK_K)
        eps = GROUP_MAX_EPS
        nbytes = XS_BYTES
    for j in range(nbytes):
        out[off + j] = 0
    for j in range(QK_K // 8):
        q2[j] = 0
    for ib in range(QK_K // 16):
        bo = xo + 16 * ib
        _weights(x, bo, qw, sigma2, weighted, weight, waux, 16)
        for k in range(2):
            if is_s:
                s = 0
                for i in range(8):
                    v = x[bo + 8 * k + i]
                    if v >= _F0:
                        xval[8 * k + i] = v
                    else:
                        xval[8 * k + i] = -v
                        s |= 1 << i
                signs[k] = s
            else:
                signs[k] = signs_parity(x, bo, weight, xval, k)
        mx = xval[0]
        for i in range(1, 16):
            mx = mx if mx > xval[i] else xval[i]
        for i in range(16):
            L[i] = 0
        if mx < eps:
            scales[ib] = _F0
            continue
        for i in range(16):
            wx[i] = weight[i] * xval[i]
        if trials(16, 19, mx, xval, weight, waux, wx, kx, codes, nidx, lv, ids, tsc, laux, uk, onaux, sqx, sq2):
            return 1
        chosen, scale = choose(19, sqx, sq2, mx / np.float32(2 * KMAXQ - 1))
        ong[0] = True
        ong[1] = True
        if chosen >= 0:
            for i in range(16):
                L[i] = laux[i, chosen]
            ong[0] = onaux[chosen, 0]
            ong[1] = onaux[chosen, 1]
        if (not ong[0] or not ong[1]) and scale > _F0:
            for k in range(2):
                if not ong[k] and not refit(k, scale, xval, waux, kx, codes, nidx, lv, L):
                    return 1
            sumqx, sumq2 = sums(16, weight, wx, L)
            if sumq2 > _F0:
                scale = sumqx / sumq2
        if scale < _F0:
            scale = -scale
            for k in range(2):
                signs[k] = (~signs[k]) & (255 if is_s else 127)
        for k in range(2):
            u = packed(L, 8 * k)
            if u >= KMAP_SIZE or kx[u] < 0:
                return 1
            gi = kx[u]
            if is_s:
                i8 = 2 * ib + k
                out[off + S_QS + i8] = np.uint8(gi & 255)
                out[off + S_QH + i8 // 4] |= np.uint8(((gi >> 8) << (2 * (i8 % 4))) & 0xFF)
                out[off + S_QS + QK_K // 8 + i8] = np.uint8(signs[k])
            else:
                q2[2 * ib + k] = np.uint16(gi | (signs[k] << 9))
        if not scale >= _F0:
            return 1
        scales[ib] = scale
        max_scale = max_scale if max_scale > scale else scale
    if max_scale == _F0:
        return 0  # all zero (and d = fp16 0) already
    d = max_scale / np.float32(31.0)
    if is_s:
        put_f16(out, off + S_D, d * np.float32(0.9875))
        sco = S_SCALES
    else:
        put_f16(out, off + XS_D, d)
        sco = XS_SCALES
    idv = _F1 / d
    for ib in range(QK_K // 16):
        l = nearest_int(_F05 * (idv * scales[ib] - _F1))
        l = max(0, min(15, l))
        if ib % 2 == 0:
            out[off + sco + ib // 2] = np.uint8(l)
        else:
            out[off + sco + ib // 2] |= np.uint8(l << 4)
    if not is_s:
        for j in range(QK_K // 8):
            out[off + XS_QS + 2 * j] = np.uint8(q2[j] & np.uint16(0xFF))
            out[off + XS_QS + 2 * j + 1] = np.uint8(q2[j] >> np.uint16(8))
    return 0


@njit(nogil=True, **JIT)
def quantize_iq2_xxs(x, qw, out):
    """Rows of x -> IQ2_XXS. Needs weights (qw empty: nothing written, every block counted as
    failed). Returns the number of blocks where ggml aborts."""
    nblk = x.shape[1] // QK_K
    if qw.shape[0] != x.shape[1]:
        return x.shape[0] * nblk
    kx, codes, nidx, lv = lists(GRID_XXS)
    sc = _scratch(32)
    scales = np.zeros(QK_K // 32, dtype=np.float32)
    Lqp = np.zeros(32, dtype=np.uint8)
    qpi = np.zeros(8, dtype=np.float32)
    qpm = np.zeros(8, dtype=np.float32)
    q2 = np.zeros(16, dtype=np.uint32)
    failed = 0
    for r in range(x.shape[0]):
        for b in range(nblk):
            failed += xxs_block(x[r], b * QK_K, qw, out[r], b * XXS_BYTES, kx, codes, nidx, lv, scales, q2, Lqp,
                                qpi, qpm, sc)
    return failed


# IQ2_XS and IQ2_S drivers: the same loop written out in each (a shared driver is one more
# compiled call level, which costs a re-optimization of all it calls)
@njit(nogil=True, **JIT)
def quantize_iq2_xs(x, qw, out):
    """Rows of x -> IQ2_XS. Needs weights (as quantize_iq2_xxs). Returns the failed block count."""
    if qw.shape[0] != x.shape[1]:
        return x.shape[0] * (x.shape[1] // QK_K)
    nblk = x.shape[1] // QK_K
    weighted = qw.shape[0] == x.shape[1]
    kx, codes, nidx, lv = lists(GRID_XS)
    sc = _scratch(16)
    scales = np.zeros(QK_K // 16, dtype=np.float32)
    q2 = np.zeros(QK_K // 8, dtype=np.uint16)
    failed = 0
    for r in range(x.shape[0]):
        for b in range(nblk):
            failed += xs_s_block(x[r], b * QK_K, qw, weighted, False, out[r], b * XS_BYTES, kx, codes, nidx, lv,
                                 scales, q2, sc)
    return failed


@njit(nogil=True, **JIT)
def quantize_iq2_s(x, qw, out):
    """Rows of x -> IQ2_S, weighted or not. Returns the failed block count."""
    nblk = x.shape[1] // QK_K
    weighted = qw.shape[0] == x.shape[1]
    kx, codes, nidx, lv = lists(GRID_S)
    sc = _scratch(16)
    scales = np.zeros(QK_K // 16, dtype=np.float32)
    q2 = np.zeros(QK_K // 8, dtype=np.uint16)
    failed = 0
    for r in range(x.shape[0]):
        for b in range(nblk):
            failed += xs_s_block(x[r], b * QK_K, qw, weighted, True, out[r], b * S_BYTES, kx, codes, nidx, lv,
                                 scales, q2, sc)
    return failed


@njit(**JIT)
def _put8(yr, yo, dl, g, signs):
    """8 values dl * DEQ_LEVELS[level] * (sign bit j of `signs` ? -1 : 1) of grid point g."""
    for j in range(8):
        v = dl * DEQ_LEVELS[(g >> (2 * j)) & 3]
        yr[yo + j] = v * (_FM1 if (signs >> j) & 1 else _F1)  # a multiplication, as C (NaN keeps its sign)


@njit(**JIT)
def _ksigns(v):
    """ggml-common.h ksigns_iq2xs[v]: the 7 bits plus an 8th that makes the count even."""
    p = v ^ (v >> 4)
    p ^= p >> 2
    p ^= p >> 1
    return v | ((p & 1) << 7)


@njit(nogil=True, **JIT)
def dequantize_iq2_xxs(q, out):
    grid = DEQ_XXS
    for r in range(out.shape[0]):
        qr = q[r]
        yr = out[r]
        for b in range(out.shape[1] // QK_K):
            off = b * XXS_BYTES
            d = get_f16(qr, off + XXS_D)
            for ib in range(QK_K // 32):
                o = off + XXS_QS + 8 * ib
                a1 = (np.int64(qr[o + 4]) | (np.int64(qr[o + 5]) << 8) | (np.int64(qr[o + 6]) << 16)
                      | (np.int64(qr[o + 7]) << 24))
                db = d * (_F05 + np.float32(a1 >> 28)) * np.float32(0.25)
                for l in range(4):
                    _put8(yr, b * QK_K + 32 * ib + 8 * l, db, grid[qr[o + l]], _ksigns((a1 >> (7 * l)) & 127))


@njit(nogil=True, **JIT)
def dequantize_iq2_xs(q, out):
    grid = DEQ_XS
    for r in range(out.shape[0]):
        qr = q[r]
        yr = out[r]
        for b in range(out.shape[1] // QK_K):
            off = b * XS_BYTES
            d = get_f16(qr, off + XS_D)
            for ib in range(QK_K // 32):
                sc = np.int64(qr[off + XS_SCALES + ib])
                db0 = d * (_F05 + np.float32(sc & 0xF)) * np.float32(0.25)
                db1 = d * (_F05 + np.float32(sc >> 4)) * np.float32(0.25)
                for l in range(4):
                    o = off + XS_QS + 2 * (4 * ib + l)
                    v = np.int64(qr[o]) | (np.int64(qr[o + 1]) << 8)
                    _put8(yr, b * QK_K + 32 * ib + 8 * l, db0 if l < 2 else db1, grid[v & 511], _ksigns(v >> 9))


@njit(nogil=True, **JIT)
def dequantize_iq2_s(q, out):
    grid = DEQ_S
    for r in range(out.shape[0]):
        qr = q[r]
        yr = out[r]
        for b in range(out.shape[1] // QK_K):
            off = b * S_BYTES
            d = get_f16(qr, off + S_D)
            for ib in range(QK_K // 32):
                sc = np.int64(qr[off + S_SCALES + ib])
                db0 = d * (_F05 + np.float32(sc & 0xF)) * np.float32(0.25)
                db1 = d * (_F05 + np.float32(sc >> 4)) * np.float32(0.25)
                qh = np.int64(qr[off + S_QH + ib])
                for l in range(4):
                    gi = np.int64(qr[off + S_QS + 4 * ib + l]) | ((qh << (8 - 2 * l)) & 0x300)
                    sg = np.int64(qr[off + S_QS + QK_K // 8 + 4 * ib + l])
                    _put8(yr, b * QK_K + 32 * ib + 8 * l, db0 if l < 2 else db1, grid[gi], sg)


KERNELS = {
    QType.IQ2_XXS: Kernel(quantize_iq2_xxs, dequantize_iq2_xxs, prepare(GRID_XXS)),
    QType.IQ2_XS: Kernel(quantize_iq2_xs, dequantize_iq2_xs, prepare(GRID_XS)),
    QType.IQ2_S: Kernel(quantize_iq2_s, dequantize_iq2_s, prepare(GRID_S)),
}
