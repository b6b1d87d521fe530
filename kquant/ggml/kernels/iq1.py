"""ggml's 1-bit i-quants IQ1_S and IQ1_M, ported to Numba.

Ports, from ggml/src/ggml-quants.c (llama.cpp as vendored in llama-cpp-python 0.3.36):
  quantize_row_iq1_s_impl, quantize_row_iq1_m_impl, iq1_find_best_neighbour2,
  dequantize_row_iq1_s, dequantize_row_iq1_m
byte for byte. Every float expression is evaluated in float32, op by op, in C's order. The
search tables are iq2xs_init_impl's 2048-point grid (kquant.ggml.kernels._iqgrid, GRID_1S).

Values are coded as -1, 0, 1 plus a shift of +-IQ1S_DELTA per group, 8 values per grid point.
The exhaustive split search sorts each block with C's qsort: glibc's (2.36) qsort is a stable
top-down merge sort for these sizes, which `merge_sort` reproduces step for step (equal values
keep their order; that order reaches the prefix sums, so it matters for ties).

    block_iq1_s  d (fp16), qs uint8[32]: low 8 bits of the grid indices, qh uint16[8]: per 32
                 values 4 x 3 high index bits, the 3-bit scale in bits 12..14, shift sign bit 15
    block_iq1_m  qs uint8[32], qh uint8[16]: per group of 8 the 3 high index bits and a shift
                 sign bit (0x08 / 0x80), scales uint8[8] as 4 uint16: per 16 values two 3-bit
                 scales, and the fp16 super-block scale in the top nibbles of the 4 uint16

Speed (same bytes): the split search computes every candidate of a block, LANES splits at once
with LLVM vector intrinsics (C's float operations), and stores it with its V = (sumqx/sumq2)*sumqx,
the best_score an update to it sets; the loop's outcome follows from the first largest V (_global),
the rest tested against it, replayed in C's order only where one passes (with a NaN V, or where
that cannot decide, the loop runs in order: _seq_s / _seq_m). Each neighbour search runs over its
candidate list (_iqgrid.lists) as 8 float lanes of first minima, reading each candidate's packed
levels (packed_lists, 2 bytes); a super-block runs its split searches first and prefetches the
lists of its off-grid groups, then searches them (the lists are larger than L2).

IQ1_S has a weighted path only (ggml_quantize_chunk aborts without importance weights, and so
does kquant.quantize); IQ1_M has both. Blocks where ggml would abort (no candidate or a NaN
scale, from NaN input; or its whole-grid fallback, which reads outside the block) are counted and
the count returned, as in kquant.ggml.kernels.iq2.
"""

from __future__ import annotations

import threading
from functools import lru_cache

import numpy as np
from llvmlite import ir as llvm_ir
from numba import carray, njit, objmode, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..types import QK_K, QType, field_offsets
from . import Kernel
from ._common import fp16_to_fp32, fp32_to_fp16, get_f16, nearest_int, put_f16, sel
from ._iq_grids import KGRID_1BIT_2048
from ._iqgrid import GRID_1S, KMAP_SIZE, PAD, lists, publish, search_lists, slot_len, slot_ptr

JIT = dict(cache=True, no_cfunc_wrapper=True, error_model="numpy")
KJIT = dict(JIT, _nrt=False)  # helpers that allocate nothing: no refcounting of their array arguments
_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_F05 = np.float32(0.5)
_FLT_MAX = np.float32(3.4028234663852886e38)
IQ1S_DELTA = np.float32(0.125)
IQ1M_DELTA = np.float32(0.125)
GROUP_MAX_EPS_IQ1_S = np.float32(1e-12)
GROUP_MAX_EPS_IQ1_M = np.float32(1e-7)
# x_p = {-1 + delta, delta, 1 + delta}, x_m = {-1 - delta, -delta, 1 - delta}; rows 0 (+) and 1 (-)
XPM_S = np.array([[-_F1 + IQ1S_DELTA, IQ1S_DELTA, _F1 + IQ1S_DELTA],
                  [-_F1 - IQ1S_DELTA, -IQ1S_DELTA, _F1 - IQ1S_DELTA]], dtype=np.float32)
XPM_M = np.array([[-_F1 + IQ1M_DELTA, IQ1M_DELTA, _F1 + IQ1M_DELTA],
                  [-_F1 - IQ1M_DELTA, -IQ1M_DELTA, _F1 - IQ1M_DELTA]], dtype=np.float32)
IQ1M_MASKS = np.array([0x00, 0x80, 0x08, 0x88], dtype=np.int64)

# block layouts: offsets from the declarations (kquant.ggml.types)
S_BYTES = QType.IQ1_S.type_size
S_D, S_QS, S_QH = field_offsets(QType.IQ1_S, "d", "qs", "qh")
M_BYTES = QType.IQ1_M.type_size
M_QS, M_QH, M_SC = field_offsets(QType.IQ1_M, "qs", "qh", "scales")
DEQ_GRID = KGRID_1BIT_2048.astype(np.int64)  # packed levels; value = level - 1
KG = KGRID_1BIT_2048.astype(np.int32)  # packed levels of the grid points (8 KB: stays in L1, unlike `levels`)


_lock = threading.Lock()


SLOT_PACKED = 16  # _iqgrid's slot of packed_lists()


@lru_cache(maxsize=None)
def _packed_lists():
    kg = np.ascontiguousarray(KGRID_1BIT_2048[search_lists(GRID_1S)[2]])
    publish(SLOT_PACKED, kg)
    return kg


def packed_lists():
    """uint16: the packed levels (sum l_i << 2i) of each candidate of _iqgrid.lists(GRID_1S), in
    its order (kg[p] = kgrid of nidx[p]): a 2-byte load per candidate in the neighbour search
    instead of 8 code bytes (the lists are larger than L2)."""
    with _lock:
        return _packed_lists()


def prepare():
    """Load the tables of the IQ1 kernels for compiled code (_iqgrid.publish)."""
    search_lists(GRID_1S)
    packed_lists()


@njit(cache=True, no_cfunc_wrapper=True)
def _packed():
    """packed_lists() from compiled code (as _iqgrid.lists)."""
    if slot_len(SLOT_PACKED) == 0:
        with objmode():
            packed_lists()
    return carray(slot_ptr(SLOT_PACKED), slot_len(SLOT_PACKED), np.uint16)


@njit(**KJIT)
def merge_sort(v, idx, tmpv, tmpi, n):
    """glibc 2.36 qsort (msort_with_tmp) of the pairs (v[j], idx[j]), j < n, by v with
    iq1_sort_helper's comparison, for n a power of two: bottom-up merges of the same runs in
    the same order as the top-down recursion, taking the left element unless left > right."""
    w = 1
    while w < n:
        for a in range(0, n, 2 * w):
            i = a
            j = a + w
            e1 = a + w
            e2 = a + 2 * w
            o = a
            while i < e1 and j < e2:
                if not v[i] > v[j]:
                    tmpv[o] = v[i]
                    tmpi[o] = idx[i]
                    i += 1
                else:
                    tmpv[o] = v[j]
                    tmpi[o] = idx[j]
                    j += 1
                o += 1
            while i < e1:
                tmpv[o] = v[i]
                tmpi[o] = idx[i]
                i += 1
                o += 1
            while j < e2:
                tmpv[o] = v[j]
                tmpi[o] = idx[j]
                j += 1
                o += 1
        for a in range(n):
            v[a] = tmpv[a]
            idx[a] = tmpi[a]
        w *= 2


@njit(inline="always", **JIT)
def _terms(scale, xx, xi, wi):
    """w*diff*diff with diff = scale*q - xval, for q = xx[0], xx[1], xx[2], as
    iq1_find_best_neighbour2 computes each term (C's operations and order)."""
    e0 = scale * xx[0] - xi
    e1 = scale * xx[1] - xi
    e2 = scale * xx[2] - xi
    return wi * e0 * e0, wi * e1 * e1, wi * e2 * e2


@intrinsic
def _prefetch(typingctx, ary, i):
    """Prefetch the cache line of ary[i] (llvm.prefetch: read, high locality; a hint only)."""
    sig = types.void(ary, types.uint64)

    def codegen(context, builder, signature, args):
        data = _data(context, builder, signature.args[0], args[0])
        ptr = builder.bitcast(builder.gep(data, [args[1]]), llvm_ir.IntType(8).as_pointer())
        fnty = llvm_ir.FunctionType(llvm_ir.VoidType(), [ptr.type, _I32, _I32, _I32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [ptr, _I32(0), _I32(3), _I32(1)])
        return context.get_dummy_value()

    return sig, codegen


@njit(**KJIT)
def prefetch_list(desc, kg, nidx):
    """Start loading the candidate list of desc (as best_neighbour reads it): the lists are larger
    than L2, so the searches of a block's groups otherwise wait for each other's misses."""
    p0 = np.uint64(PAD * (desc >> 8))
    n = np.uint64(PAD * (desc & 255))
    for o in range(0, n, 32):  # 32 uint16 per 64-byte line
        _prefetch(kg, p0 + np.uint64(o))
        _prefetch(nidx, p0 + np.uint64(o))


@njit(**KJIT)
def best_neighbour(desc, kg, nidx, xb, xo, weight, wo, scale, xx):
    """iq1_find_best_neighbour2 for the off-grid point whose list descriptor is desc (-1 - kx[u],
    _iqgrid.lists; kg: packed_lists): the grid index of the first candidate with the smallest d2 < FLT_MAX, or -1
    where ggml would fall back to its whole-grid loop (which reads outside the block) or assert.

    d2 = ((0 + t0) + t1) + ... + t7, t_i = (w_i diff_i) diff_i as ggml sums it; each t_i takes
    one of 3 values, computed once, and the candidates run as lanes (_scan). Padding copies of
    the last candidate come later, so are never taken over it."""
    t0 = _terms(scale, xx, xb[xo], weight[wo])
    t1 = _terms(scale, xx, xb[xo + 1], weight[wo + 1])
    t2 = _terms(scale, xx, xb[xo + 2], weight[wo + 2])
    t3 = _terms(scale, xx, xb[xo + 3], weight[wo + 3])
    t4 = _terms(scale, xx, xb[xo + 4], weight[wo + 4])
    t5 = _terms(scale, xx, xb[xo + 5], weight[wo + 5])
    t6 = _terms(scale, xx, xb[xo + 6], weight[wo + 6])
    t7 = _terms(scale, xx, xb[xo + 7], weight[wo + 7])
    p0 = np.uint64(PAD * (desc >> 8))  # unsigned indices: no wraparound code
    n = np.uint64(PAD * (desc & 255))
    t = (t0[0], t0[1], t0[2], t1[0], t1[1], t1[2], t2[0], t2[1], t2[2], t3[0], t3[1], t3[2],
         t4[0], t4[1], t4[2], t5[0], t5[1], t5[2], t6[0], t6[1], t6[2], t7[0], t7[1], t7[2])
    c = _scan(kg, p0, n, t)
    if c < 0:
        return -1
    return np.int64(nidx[p0 + np.uint64(c)])


@intrinsic
def _count_lt(typingctx, ti, k, n):
    """The number of ti[0:n] below k (n a literal: one <n x i64> compare, then a popcount; LLVM
    unrolls the Python loop before its vectorizer sees it, so written as a loop it runs scalar)."""
    if not isinstance(n, types.IntegerLiteral):
        return None
    nv = n.literal_value
    sig = types.int64(ti, types.int64, n)

    def codegen(context, builder, signature, args):
        f = builder
        i64 = llvm_ir.IntType(64)
        vt = llvm_ir.VectorType(i64, nv)
        data = _data(context, f, signature.args[0], args[0])
        v = f.load(f.bitcast(data, vt.as_pointer()), align=8)
        kv = f.insert_element(llvm_ir.Constant(vt, llvm_ir.Undefined), args[1], _I32(0))
        kv = f.shuffle_vector(kv, llvm_ir.Constant(vt, llvm_ir.Undefined),
                              llvm_ir.Constant(llvm_ir.VectorType(_I32, nv), [0] * nv))
        bits = f.bitcast(f.icmp_signed("<", v, kv), llvm_ir.IntType(nv))
        fnty = llvm_ir.FunctionType(bits.type, [bits.type])
        fn = cgutils.get_or_insert_function(f.module, fnty, f"llvm.ctpop.i{nv}")
        return f.zext(f.call(fn, [bits]), i64)

    return sig, codegen


@njit(**KJIT)
def _sorted_block(x, bo, n, pv, pidx, tv, ti):
    """pv, pidx = the pairs (x[bo + j], j) in glibc qsort's order. Without NaN that order is the
    stable sort by value (-0 == +0, as iq1_sort_helper compares), i.e. by the distinct integer
    keys order(value) << 32 | j: each pair goes straight to its rank (counted without branches).
    With a NaN (no strict order), merge_sort replays glibc's merges step by step."""
    for j in range(n):
        v = x[bo + j]
        if v != v:
            for i in range(n):
                pv[i] = x[bo + i]
                pidx[i] = i
            merge_sort(pv, pidx, tv, ti, n)
            return
        b = np.int64(np.float32(v + _F0).view(np.uint32))  # v + 0: -0 -> +0
        o = (b ^ 0xFFFFFFFF) if b & 0x80000000 else (b | 0x80000000)  # monotone in v
        ti[j] = ((o - 0x80000000) << 32) | j
    for j in range(n):
        r = _count_lt(ti, ti[j], n)
        pv[r] = x[bo + j]
        pidx[r] = j


@njit(**KJIT)
def _grid_u(L, lo):
    u = 0
    for j in range(8):
        u |= np.int64(L[lo + j]) << (2 * j)
    return u & 0xFFFF


LANES = 8  # splits tested at once: one AVX2 vector of float32
_V8 = llvm_ir.VectorType(llvm_ir.FloatType(), LANES)
_I32 = llvm_ir.IntType(32)
_NINF = np.float32(-np.inf)
M_ROW = 32  # floats per prefix-sum row of IQ1_M (bs + 1 + LANES = 25, rounded up)

# The split searches test LANES splits at once with LLVM intrinsics: numba leaves LLVM's SLP
# vectorizer off and fully unrolls 8-lane loops before its loop vectorizer sees them, so written
# as Python loops they run scalar. The intrinsics are straight-line vector code with C's float
# operations (fsub, fmul, fadd, fdiv, fcmp ogt in the same order; no fast-math flags, so no
# contraction or reassociation).


def _splat(builder, v):
    """v in every lane of a vector of LANES (of v's type)."""
    vt = llvm_ir.VectorType(v.type, LANES)
    u = builder.insert_element(llvm_ir.Constant(vt, llvm_ir.Undefined), v, _I32(0))
    return builder.shuffle_vector(u, llvm_ir.Constant(vt, llvm_ir.Undefined),
                                  llvm_ir.Constant(llvm_ir.VectorType(_I32, LANES), [0] * LANES))


def _data(context, builder, aryty, ary):
    return context.make_array(aryty)(context, builder, ary).data


def _load8(builder, data, idx):
    """data[idx:idx+8] as a vector (unaligned)."""
    return builder.load(builder.bitcast(builder.gep(data, [idx]), _V8.as_pointer()), align=4)


def _store8(builder, v, data, idx):
    builder.store(v, builder.bitcast(builder.gep(data, [idx]), _V8.as_pointer()), align=4)


def _valid(builder, n):
    """lanes 0..n-1 (n an int64)."""
    lane = llvm_ir.Constant(llvm_ir.VectorType(llvm_ir.IntType(64), LANES), list(range(LANES)))
    nv = builder.insert_element(llvm_ir.Constant(lane.type, llvm_ir.Undefined), n, _I32(0))
    nv = builder.shuffle_vector(nv, llvm_ir.Constant(lane.type, llvm_ir.Undefined),
                                llvm_ir.Constant(llvm_ir.VectorType(_I32, LANES), [0] * LANES))
    return builder.icmp_unsigned("<", lane, nv)


@intrinsic
def _scan(typingctx, kg, p0, n, t):
    """The position c < n (n a multiple of LANES) of the first candidate with the smallest
    d2 < FLT_MAX, or -1: d2 = ((0 + t[3*0 + l0]) + t[3*1 + l1]) + ... + t[3*7 + l7] with the
    levels l_i = (kg[p0 + c] >> 2i) & 3 of the candidate's grid point. LANES candidates at once,
    each lane keeping its first strict minimum (ggml's `d2 < best_score`); then the smallest over
    the lanes, the lowest position among equals."""
    sig = types.int64(kg, types.uint64, types.uint64, t)

    def codegen(context, builder, signature, args):
        f = builder
        data = _data(context, f, signature.args[0], args[0])
        p0, n = args[1], args[2]
        i64 = llvm_ir.IntType(64)
        v8i16 = llvm_ir.VectorType(llvm_ir.IntType(16), LANES)
        v8i32 = llvm_ir.VectorType(_I32, LANES)
        tv = [_splat(f, f.extract_value(args[3], j)) for j in range(24)]
        zero = llvm_ir.Constant(_V8, [0.0] * LANES)
        izero = llvm_ir.Constant(v8i32, [0] * LANES)
        fmax = llvm_ir.Constant(_V8, [float(_FLT_MAX)] * LANES)
        lanes = llvm_ir.Constant(v8i32, list(range(LANES)))
        entry = f.block
        loop = f.append_basic_block("scan.loop")
        done = f.append_basic_block("scan.done")
        f.branch(loop)
        f.position_at_end(loop)
        c = f.phi(i64)
        vmin = f.phi(_V8)
        vidx = f.phi(v8i32)
        ptr = f.bitcast(f.gep(data, [f.add(p0, c)]), v8i16.as_pointer())
        g = f.zext(f.load(ptr, align=2), v8i32)
        d2 = zero
        for i in range(8):
            li = f.and_(g, llvm_ir.Constant(v8i32, [3 << (2 * i)] * LANES))
            ti = f.select(f.icmp_unsigned("==", li, izero), tv[3 * i],
                          f.select(f.icmp_unsigned("==", li, llvm_ir.Constant(v8i32, [1 << (2 * i)] * LANES)),
                                   tv[3 * i + 1], tv[3 * i + 2]))
            d2 = f.fadd(d2, ti)
        lt = f.fcmp_ordered("<", d2, vmin)
        cv = f.add(_splat(f, f.trunc(c, _I32)), lanes)
        vmin2 = f.select(lt, d2, vmin)
        vidx2 = f.select(lt, cv, vidx)
        c2 = f.add(c, i64(LANES))
        c.add_incoming(i64(0), entry)
        c.add_incoming(c2, loop)
        vmin.add_incoming(fmax, entry)
        vmin.add_incoming(vmin2, loop)
        vidx.add_incoming(llvm_ir.Constant(v8i32, [-1] * LANES), entry)
        vidx.add_incoming(vidx2, loop)
        f.cbranch(f.icmp_unsigned("<", c2, n), loop, done)
        f.position_at_end(done)
        best = f.extract_element(vmin2, _I32(0))
        bidx = f.extract_element(vidx2, _I32(0))
        for lane in range(1, LANES):
            v = f.extract_element(vmin2, _I32(lane))
            j = f.extract_element(vidx2, _I32(lane))
            take = f.or_(f.fcmp_ordered("<", v, best),
                         f.and_(f.fcmp_ordered("==", v, best), f.icmp_signed("<", j, bidx)))
            best = f.select(take, v, best)
            bidx = f.select(take, j, bidx)
        return f.sext(bidx, i64)

    return sig, codegen


def _cands_s_ir(f, context, sig, args):
    """IQ1_S's candidates [(sumqx, sumq2) of x_p, of x_m] of the splits (i1, i0 + lane):
    (sumx, sumw, i0, n, h, q) as in _split_s; sumq2 = 0 in the lanes >= n."""
    sumx = _data(context, f, sig.args[0], args[0])
    sumw = _data(context, f, sig.args[1], args[1])
    vx = _load8(f, sumx, args[2])
    vw = _load8(f, sumw, args[2])
    sx1, sw1, sxn, swn, ap, awp, am, awm = [_splat(f, f.extract_value(args[4], k)) for k in range(8)]
    p1, p2, m1, m2 = [_splat(f, f.extract_value(args[5], k)) for k in range(4)]
    b = f.fsub(vx, sx1)
    c = f.fsub(sxn, vx)
    bw = f.fsub(vw, sw1)
    cw = f.fsub(swn, vw)
    ok = _valid(f, args[3])
    zero = llvm_ir.Constant(_V8, [0.0] * LANES)
    qxp = f.fadd(f.fadd(ap, f.fmul(b, p1)), f.fmul(c, p2))
    q2p = f.fadd(f.fadd(awp, f.fmul(f.fmul(bw, p1), p1)), f.fmul(f.fmul(cw, p2), p2))
    qxm = f.fadd(f.fadd(am, f.fmul(b, m1)), f.fmul(c, m2))
    q2m = f.fadd(f.fadd(awm, f.fmul(f.fmul(bw, m1), m1)), f.fmul(f.fmul(cw, m2), m2))
    return [(qxp, f.select(ok, q2p, zero)), (qxm, f.select(ok, q2m, zero))]


def _cands_m_ir(f, context, sig, args):
    """IQ1_M's candidates [(sumqx, sumq2) of kinds 0..3] of the splits (i1, i0 + lane):
    (pp, i0, n, h) as in _split_m; sumq2 = 0 in the lanes >= n."""
    pp = _data(context, f, sig.args[0], args[0])
    i0 = args[1]
    a0, a1, w0, w1 = [_load8(f, pp, f.add(i0, i0.type(r * M_ROW))) for r in range(4)]
    x0, x1, txp0, txm0, txp1, txm1, ap0, am0, ap1, am1, cp2, cm2 = [
        _splat(f, f.extract_value(args[3], k)) for k in range(12)]
    sx0 = f.fadd(x0, a0)
    sx1 = f.fadd(x1, a1)
    qxp0 = f.fsub(txp0, sx0)
    qxm0 = f.fsub(txm0, sx0)
    qxp1 = f.fsub(txp1, sx1)
    qxm1 = f.fsub(txm1, sx1)
    q2p0 = f.fadd(ap0, f.fmul(w0, cp2))
    q2m0 = f.fadd(am0, f.fmul(w0, cm2))
    q2p1 = f.fadd(ap1, f.fmul(w1, cp2))
    q2m1 = f.fadd(am1, f.fmul(w1, cm2))
    ok = _valid(f, args[2])
    zero = llvm_ir.Constant(_V8, [0.0] * LANES)
    return [(f.fadd(qxp0, qxp1), f.select(ok, f.fadd(q2p0, q2p1), zero)),
            (f.fadd(qxp0, qxm1), f.select(ok, f.fadd(q2p0, q2m1), zero)),
            (f.fadd(qxm0, qxp1), f.select(ok, f.fadd(q2m0, q2p1), zero)),
            (f.fadd(qxm0, qxm1), f.select(ok, f.fadd(q2m0, q2m1), zero))]


def _test_ir(f, cands, best):
    """The bit mask of the lanes where `sumq2 > 0 && sumqx*sumqx > best*sumq2` holds for a kind."""
    zero = llvm_ir.Constant(_V8, [0.0] * LANES)
    vb = _splat(f, best)
    m = None
    for qx, q2 in cands:
        t = f.and_(f.fcmp_ordered(">", q2, zero), f.fcmp_ordered(">", f.fmul(qx, qx), f.fmul(vb, q2)))
        m = t if m is None else f.or_(m, t)
    return f.zext(f.bitcast(m, llvm_ir.IntType(LANES)), llvm_ir.IntType(64))


def _store_ir(f, context, aryty, ary, cands, base=None):
    """cb[8k:8k+8] = sumqx of kind k, cb[8(nk+k):] = its sumq2, cb[8(2nk+k):] = V = (sumqx/sumq2)*sumqx
    (the best_score an update to it sets), or -inf where it cannot pass (sumq2 <= 0 or NaN sumqx);
    all at cb[base:] (an int64 value, default 0). Returns the stored V of each kind."""
    cb = _data(context, f, aryty, ary)
    nk = len(cands)
    zero = llvm_ir.Constant(_V8, [0.0] * LANES)
    ninf = llvm_ir.Constant(_V8, [float("-inf")] * LANES)
    i64 = llvm_ir.IntType(64)
    b = i64(0) if base is None else base
    vs = []
    for k, (qx, q2) in enumerate(cands):
        v = f.fmul(f.fdiv(qx, q2), qx)
        can = f.and_(f.fcmp_ordered(">", q2, zero), f.fcmp_ordered("==", qx, qx))
        v = f.select(can, v, ninf)
        _store8(f, qx, cb, f.add(b, i64(LANES * k)))
        _store8(f, q2, cb, f.add(b, i64(LANES * (nk + k))))
        _store8(f, v, cb, f.add(b, i64(LANES * (2 * nk + k))))
        vs.append(v)
    return vs


def _nan_ir(f, vs):
    """The mask of the lanes with a NaN V (any kind)."""
    nan = None
    for v in vs:
        u = f.fcmp_unordered("uno", v, v)
        nan = u if nan is None else f.or_(nan, u)
    return f.zext(f.bitcast(nan, llvm_ir.IntType(LANES)), llvm_ir.IntType(64))


@intrinsic
def _test_s(typingctx, sumx, sumw, i0, n, h, q, best):
    """IQ1_S: the mask of the lanes i0 + lane (< i0 + n) where a candidate passes against best."""
    sig = types.uint64(sumx, sumw, types.uint64, types.int64, h, q, types.float32)

    def codegen(context, builder, signature, args):
        return _test_ir(builder, _cands_s_ir(builder, context, signature, args), args[6])

    return sig, codegen


@intrinsic
def _store_s(typingctx, sumx, sumw, i0, n, h, q, cb):
    """IQ1_S: the candidates of the lanes into cb (_store_ir)."""
    sig = types.void(sumx, sumw, types.uint64, types.int64, h, q, cb)

    def codegen(context, builder, signature, args):
        _store_ir(builder, context, signature.args[6], args[6], _cands_s_ir(builder, context, signature, args))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _test_m(typingctx, pp, i0, n, h, best):
    """IQ1_M: the mask of the lanes i0 + lane (< i0 + n) where a candidate passes against best."""
    sig = types.uint64(pp, types.uint64, types.int64, h, types.float32)

    def codegen(context, builder, signature, args):
        return _test_ir(builder, _cands_m_ir(builder, context, signature, args), args[4])

    return sig, codegen


@intrinsic
def _store_m(typingctx, pp, i0, n, h, cb):
    """IQ1_M: the candidates of the lanes into cb (_store_ir)."""
    sig = types.void(pp, types.uint64, types.int64, h, cb)

    def codegen(context, builder, signature, args):
        _store_ir(builder, context, signature.args[4], args[4], _cands_m_ir(builder, context, signature, args))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _pass_s(typingctx, sumx, sumw, i0, n, h, q, cb, base):
    """IQ1_S: the candidates of the lanes into cb[base:] (_store_ir); the mask of the lanes with
    a NaN V."""
    sig = types.uint64(sumx, sumw, types.uint64, types.int64, h, q, cb, types.int64)

    def codegen(context, builder, signature, args):
        return _nan_ir(builder, _store_ir(builder, context, signature.args[6], args[6],
                                          _cands_s_ir(builder, context, signature, args), args[7]))

    return sig, codegen


@intrinsic
def _pass_m(typingctx, pp, i0, n, h, cb, base):
    """IQ1_M: as _pass_s."""
    sig = types.uint64(pp, types.uint64, types.int64, h, cb, types.int64)

    def codegen(context, builder, signature, args):
        return _nan_ir(builder, _store_ir(builder, context, signature.args[4], args[4],
                                          _cands_m_ir(builder, context, signature, args), args[5]))

    return sig, codegen


def _buf_intrinsics(nk):
    """(test, cmax) over a stored chunk of nk kinds at cb[base:] (_store_ir): the mask of the lanes
    where a candidate passes `sumq2 > 0 && sumqx*sumqx > best*sumq2`, and the largest stored V."""

    @intrinsic
    def test(typingctx, cb, base, best):
        sig = types.uint64(cb, types.int64, types.float32)

        def codegen(context, builder, signature, args):
            f = builder
            data = _data(context, f, signature.args[0], args[0])
            i64 = llvm_ir.IntType(64)
            cands = [(_load8(f, data, f.add(args[1], i64(LANES * k))),
                      _load8(f, data, f.add(args[1], i64(LANES * (nk + k))))) for k in range(nk)]
            return _test_ir(f, cands, args[2])

        return sig, codegen

    @intrinsic
    def cmax(typingctx, cb, base):
        sig = types.float32(cb, types.int64)

        def codegen(context, builder, signature, args):
            f = builder
            data = _data(context, f, signature.args[0], args[0])
            i64 = llvm_ir.IntType(64)
            m = None
            for k in range(nk):
                v = _load8(f, data, f.add(args[1], i64(LANES * (2 * nk + k))))
                m = v if m is None else f.select(f.fcmp_ordered(">", v, m), v, m)
            r = f.extract_element(m, _I32(0))
            for t in range(1, LANES):
                e = f.extract_element(m, _I32(t))
                r = f.select(f.fcmp_ordered(">", e, r), e, r)
            return r

        return sig, codegen

    @intrinsic
    def maxscan(typingctx, cb, nch):
        """(g, s): the order (chunk LANES + lane) nk + kind g of the first candidate of largest V over
        the nch stored chunks, or -1 if every V is -inf, and the largest V of the other candidates
        s: each (kind, lane) keeps its first maximum and the largest of its other values in
        registers; g is the lowest order among the largest first maxima, s the largest of the
        other first maxima and of every second value."""
        sig = types.Tuple((types.int64, types.float32))(cb, types.int64)

        def codegen(context, builder, signature, args):
            f = builder
            data = _data(context, f, signature.args[0], args[0])
            i64 = llvm_ir.IntType(64)
            v8i32 = llvm_ir.VectorType(_I32, LANES)
            ninf = llvm_ir.Constant(_V8, [float("-inf")] * LANES)
            entry = f.block
            loop = f.append_basic_block("maxscan.loop")
            done = f.append_basic_block("maxscan.done")
            f.branch(loop)
            f.position_at_end(loop)
            c = f.phi(i64)
            vm = [f.phi(_V8) for _ in range(nk)]
            vs = [f.phi(_V8) for _ in range(nk)]
            vi = [f.phi(v8i32) for _ in range(nk)]
            base = f.mul(c, i64(3 * nk * LANES))
            vc = _splat(f, f.trunc(c, _I32))
            c2 = f.add(c, i64(1))
            c.add_incoming(i64(0), entry)
            c.add_incoming(c2, loop)
            for k in range(nk):
                v = _load8(f, data, f.add(base, i64(LANES * (2 * nk + k))))
                gt = f.fcmp_ordered(">", v, vm[k])
                vs2 = f.select(gt, vm[k], f.select(f.fcmp_ordered(">", v, vs[k]), v, vs[k]))
                vm2 = f.select(gt, v, vm[k])
                vi2 = f.select(gt, vc, vi[k])
                vm[k].add_incoming(ninf, entry)
                vm[k].add_incoming(vm2, loop)
                vs[k].add_incoming(ninf, entry)
                vs[k].add_incoming(vs2, loop)
                vi[k].add_incoming(llvm_ir.Constant(v8i32, [0] * LANES), entry)
                vi[k].add_incoming(vi2, loop)
                vm[k], vs[k], vi[k] = vm2, vs2, vi2
            f.cbranch(f.icmp_signed("<", c2, args[1]), loop, done)
            f.position_at_end(done)
            m = vm[0]
            for k in range(1, nk):
                m = f.select(f.fcmp_ordered(">", vm[k], m), vm[k], m)
            mx = f.extract_element(m, _I32(0))
            for t in range(1, LANES):
                e = f.extract_element(m, _I32(t))
                mx = f.select(f.fcmp_ordered(">", e, mx), e, mx)
            vmx = _splat(f, mx)
            big = llvm_ir.Constant(v8i32, [0x7FFFFFFF] * LANES)
            lanes = llvm_ir.Constant(v8i32, list(range(LANES)))
            omin = big
            os = []
            for k in range(nk):
                eq = f.and_(f.fcmp_ordered("==", vm[k], vmx), f.fcmp_ordered(">", vm[k], ninf))
                o = f.add(f.mul(f.add(f.mul(vi[k], llvm_ir.Constant(v8i32, [LANES] * LANES)), lanes),
                                llvm_ir.Constant(v8i32, [nk] * LANES)), llvm_ir.Constant(v8i32, [k] * LANES))
                o = f.select(eq, o, big)
                os.append(o)
                omin = f.select(f.icmp_signed("<", o, omin), o, omin)
            r = f.extract_element(omin, _I32(0))
            for t in range(1, LANES):
                e = f.extract_element(omin, _I32(t))
                r = f.select(f.icmp_signed("<", e, r), e, r)
            vr = _splat(f, r)
            sm = None
            for k in range(nk):  # g's own slot gives its second value, every other its first maximum
                sk = f.select(f.icmp_signed("==", os[k], vr), vs[k], vm[k])
                sm = sk if sm is None else f.select(f.fcmp_ordered(">", sk, sm), sk, sm)
            smx = f.extract_element(sm, _I32(0))
            for t in range(1, LANES):
                e = f.extract_element(sm, _I32(t))
                smx = f.select(f.fcmp_ordered(">", e, smx), e, smx)
            r = f.select(f.icmp_signed("==", r, _I32(0x7FFFFFFF)), _I32(-1), r)
            return context.make_tuple(f, signature.return_type, [f.sext(r, i64), smx])

        return sig, codegen

    return test, cmax, maxscan


_test2, _cmax2, _maxscan2 = _buf_intrinsics(2)
_test4, _cmax4, _maxscan4 = _buf_intrinsics(4)


@njit(**KJIT)
def _replay(cb, o, nk, e0, best, scale, last):
    """(Callers pass o, e0 and last as np.int64: a literal 0 or -1 would compile a specialization
    of its own.) ggml's `if (sumq2 > 0 && sumqx*sumqx > best_score*sumq2) { scale = sumqx/sumq2;
    best_score = scale*sumqx; ... }` over the stored candidates e = nk lane + kind >= e0 of the
    chunk at cb[o:] (_store_ir), in C's order: (best, scale, last update's e or `last`)."""
    for e in range(e0, LANES * nk):
        t = e // nk
        k = e % nk
        a = cb[o + LANES * k + t]
        b = cb[o + LANES * (nk + k) + t]
        if b > _F0 and a * a > best * b:
            scale = a / b
            best = scale * a
            last = e
    return best, scale, last


@njit(**KJIT)
def _resolve(cb, nk, best, scale):
    """The split loop over a chunk with a passing candidate (_store_ir): (best, scale, e of the
    last update). An update to candidate g sets best_score = V(g) whatever came before, so with
    g = the first candidate of largest V: if g passes against the largest of best and the V before
    it (ggml's test is monotone in best_score, which before g is one of those), the loop's state
    after g is V(g), and only the candidates after g are replayed; otherwise (or with a NaN V,
    inf/inf) the whole chunk is."""
    vb = _NINF
    mb = _NINF
    g = -1
    nan = False
    for e in range(LANES * nk):
        v = cb[LANES * (2 * nk + e % nk) + e // nk]
        nan |= v != v
        take = v > vb
        mb = sel(take, vb, mb)
        g = sel(take, e, g)
        vb = sel(take, v, vb)
    if not nan and g >= 0:
        a = cb[LANES * (g % nk) + g // nk]
        b = cb[LANES * (nk + g % nk) + g // nk]
        m = best if best > mb else mb
        if a * a > m * b:
            sc = a / b
            return _replay(cb, np.int64(0), nk, g + 1, sc * a, sc, g)
    return _replay(cb, np.int64(0), nk, np.int64(0), best, scale, np.int64(-1))


# _global's shortcut: with `safe` blocks (iq1s_block, iq1m_block), a candidate e passing ggml's test against
# best_score = V(g) has V(e) >= V(g) (1 - 2^-22) - 2^-101 (see there), so none passes when every
# other V is below V(g) (1 - SEP_REL) - SEP_ABS (rounding included, with margin)
SEP_REL = np.float32(2.0 ** -20)
SEP_ABS = np.float32(2.0 ** -90)
SAFE_LO = np.float32(2.0 ** -40)
SAFE_HI = np.float32(2.0 ** 40)


@njit(**KJIT)
def _global(cb, gs, nk, nch, scale, safe):
    """The whole split loop from its candidates, stored chunk by chunk (chunk c at cb[3 nk LANES c:],
    _pass_s / _pass_m, no NaN V), gs = (g, s) from maxscan: g the first of largest V, s the largest
    V of the others: (done, chunk, e, scale) of its last update (chunk -1: none), or done = False
    where the sequential loop must decide.

    Shortcut, in a `safe` block where s < V(g) (1 - SEP_REL) - SEP_ABS: no candidate after g
    passes against V(g), and g passes if it does against s (or -FLT_MAX), which bounds every V
    before it; so g is the last update. In a safe block (weights >= 0, their sum W in
    [2^-40, 2^40], sum |w x| <= 2^40) every sumq2 > 0 of a split is >= W/64 - W 2^-20 >= 2^-47
    (C's expression is prefix sums of the weights, monotone, or their differences, times q^2
    >= 1/64, off by a few roundings of terms <= 1.27 W) and |sumqx| <= 2^43 (prefix sums of
    w x, or their differences, times |q| <= 1.125), so fl(sumqx^2) has no overflow and an
    absolute error <= 2^-150, and ggml's test a^2 > best b passing against V(g) gives a^2/b >
    V(g) (1 - 2u) - 2^-102, hence V(e) = fl(fl(a/b) a) >= V(g) (1 - 4u) - 2^-101 (u = 2^-24).

    As in _resolve, over the whole loop: an update sets best_score = V of its own candidate, so
    with g the first candidate of largest V, passing against the largest V before it (or against
    V(g) itself, which is no smaller), ggml's state after g is V(g) whatever came before; the
    candidates after g are tested LANES at once against best_score and replayed in C's order
    only in a chunk where one passes (rarely: none has a larger V)."""
    cs = 3 * nk * LANES
    g, smax = gs
    if g < 0:
        return True, -1, -1, scale
    cg = g // (LANES * nk)
    eg = g % (LANES * nk)
    o = cg * cs
    a = cb[o + LANES * (eg % nk) + eg // nk]
    b = cb[o + LANES * (nk + eg % nk) + eg // nk]
    vb = cb[o + LANES * (2 * nk + eg % nk) + eg // nk]
    if safe and smax < vb * (_F1 - SEP_REL) - SEP_ABS:
        m = smax if smax > -_FLT_MAX else -_FLT_MAX
        if a * a > m * b:
            return True, cg, eg, a / b
    if not a * a > vb * b:
        m = -_FLT_MAX
        for c in range(cg):
            v = _cmax2(cb, c * cs) if nk == 2 else _cmax4(cb, c * cs)
            m = v if v > m else m
        for e in range(eg):
            v = cb[o + LANES * (2 * nk + e % nk) + e // nk]
            m = v if v > m else m
        if not a * a > m * b:
            return False, -1, -1, scale
    sc = a / b
    best = sc * a
    # the rest of g's chunk replayed only if a candidate in g's lane or after passes (rarely)
    t = _test2(cb, o, best) if nk == 2 else _test4(cb, o, best)
    if t >> (eg // nk) == 0:
        scale = sc
        e = eg
    else:
        best, scale, e = _replay(cb, o, nk, eg + 1, best, sc, eg)
    lc = cg
    for c in range(cg + 1, nch):
        t = _test2(cb, c * cs, best) if nk == 2 else _test4(cb, c * cs, best)
        if t == 0:
            continue
        best, scale, ec = _replay(cb, c * cs, nk, np.int64(0), best, scale, np.int64(-1))
        if ec >= 0:
            lc = c
            e = ec
    return True, lc, e, scale


@njit(**KJIT)
def _seq_s(sumx, sumw, bs, p0, p1, p2, m0, m1, m2, scale, cb):
    """quantize_row_iq1_s_impl's exhaustive split loop over the prefix sums sumx, sumw (read up
    to bs + LANES): (besti1, besti2, best_shift, scale) as ggml leaves them.

    Every split (i1, i2) gives one candidate per shift (x_p, then x_m), C's expressions with
    the terms of i1 alone hoisted (the same operations). ggml updates `if (sumq2 > 0 &&
    sumqx*sumqx > best_score*sumq2)`, and best_score changes only there, so LANES consecutive
    i2 of a row are tested at once against the current best_score (_test_s, the same float
    operations), and only a chunk where one passes is resolved (_resolve)."""
    best = -_FLT_MAX
    besti1 = -1
    besti2 = -1
    best_shift = 0
    sx0 = sumx[0]
    sw0 = sumw[0]
    sxn = sumx[bs]
    swn = sumw[bs]
    q = (p1, p2, m1, m2)
    for i1 in range(bs + 1):
        a = sumx[i1] - sx0
        aw = sumw[i1] - sw0
        ap = a * p0
        am = a * m0
        awp = aw * p0 * p0
        awm = aw * m0 * m0
        h = (sumx[i1], sumw[i1], sxn, swn, ap, awp, am, awm)
        for i0 in range(i1, bs + 1, LANES):
            n = np.int64(bs + 1 - i0)
            if _test_s(sumx, sumw, np.uint64(i0), n, h, q, best) == 0:
                continue
            _store_s(sumx, sumw, np.uint64(i0), n, h, q, cb)
            best, scale, e = _resolve(cb, 2, best, scale)
            if e >= 0:
                besti1 = i1
                besti2 = i0 + e // 2
                best_shift = 1 if e % 2 == 0 else -1
    return besti1, besti2, best_shift, scale


@njit(**KJIT)
def _m_terms(pp, bs, xp, xm):
    """The terms of quantize_row_iq1_m_impl's split loop that no split changes (for _seq_m and
    _split_m; pp as there): (cp1, cm1, cp2, cm2, txp0, txm0, txp1, txm1, twp0, twm0, twp1, twm1)."""
    p2 = xp[2]
    m2 = xm[2]
    cp1 = xp[0] * xp[0] - xp[1] * xp[1]
    cp2 = xp[1] * xp[1] - xp[2] * xp[2]
    cm1 = xm[0] * xm[0] - xm[1] * xm[1]
    cm2 = xm[1] * xm[1] - xm[2] * xm[2]
    return (cp1, cm1, cp2, cm2, pp[bs] * p2, pp[bs] * m2, pp[M_ROW + bs] * p2, pp[M_ROW + bs] * m2,
            pp[2 * M_ROW + bs] * p2 * p2, pp[2 * M_ROW + bs] * m2 * m2,
            pp[3 * M_ROW + bs] * p2 * p2, pp[3 * M_ROW + bs] * m2 * m2)


@njit(**KJIT)
def _m_row(pp, i1, t):
    """The terms of the splits (i1, i2 >= i1) that depend on i1 alone, as _test_m / _pass_m take them."""
    cp1, cm1, cp2, cm2, txp0, txm0, txp1, txm1, twp0, twm0, twp1, twm1 = t
    ap0 = twp0 + pp[2 * M_ROW + i1] * cp1
    am0 = twm0 + pp[2 * M_ROW + i1] * cm1
    ap1 = twp1 + pp[3 * M_ROW + i1] * cp1
    am1 = twm1 + pp[3 * M_ROW + i1] * cm1
    return (pp[i1], pp[M_ROW + i1], txp0, txm0, txp1, txm1, ap0, am0, ap1, am1, cp2, cm2)


@njit(**KJIT)
def _seq_m(pp, bs, xp, xm, scale, cb):
    """quantize_row_iq1_m_impl's exhaustive split loop over the per-half prefix sums
    pp = px0 | px1 | pw0 | pw1 (M_ROW floats each, read up to bs + LANES): (besti1, besti2,
    best_k, scale) as ggml leaves them. Kinds k = 0..3: shifts (+,+), (+,-), (-,+), (-,-) of the
    two halves; C's expressions with the terms of i1 alone hoisted (the same operations), tested
    LANES splits at once as in _split_s (_test_m)."""
    t = _m_terms(pp, bs, xp, xm)
    best = -_FLT_MAX
    besti1 = -1
    besti2 = -1
    best_k = -1
    for i1 in range(bs + 1):
        h = _m_row(pp, i1, t)
        for i0 in range(i1, bs + 1, LANES):
            n = np.int64(bs + 1 - i0)
            if _test_m(pp, np.uint64(i0), n, h, best) == 0:
                continue
            _store_m(pp, np.uint64(i0), n, h, cb)
            best, scale, e = _resolve(cb, 4, best, scale)
            if e >= 0:
                besti1 = i1
                besti2 = i0 + e // 4
                best_k = e % 4
    return besti1, besti2, best_k, scale


def _nchunks(bs):
    """Chunks of LANES splits in the loop over (i1, i2 >= i1) of a block of bs values."""
    return sum((bs + 1 - i1 + LANES - 1) // LANES for i1 in range(bs + 1))


NCH_S = _nchunks(32)
NCH_M = _nchunks(16)
CB_SIZE = max(3 * 2 * LANES * NCH_S, 3 * 4 * LANES * NCH_M)  # stored candidates of a block (_store_ir)
CH_SIZE = 2 * max(NCH_S, NCH_M)  # (i1, i0) of each chunk


@njit(**KJIT)
def _split_s(sumx, sumw, bs, p0, p1, p2, m0, m1, m2, scale, cb, ch, safe):
    """quantize_row_iq1_s_impl's exhaustive split loop over the prefix sums sumx, sumw (read up
    to bs + LANES): (besti1, besti2, best_shift, scale) as ggml leaves them.

    Every split (i1, i2) gives one candidate per shift (x_p, then x_m), C's expressions with
    the terms of i1 alone hoisted (the same operations), LANES consecutive i2 of a row at once
    (_pass_s). All candidates are computed and stored first, then the loop's outcome is found
    from the first largest V (_global); with a NaN V, or where that cannot decide, the loop runs
    in order (_seq_s). safe: _global's shortcut applies (iq1s_block)."""
    nk = 2
    sx0 = sumx[0]
    sw0 = sumw[0]
    sxn = sumx[bs]
    swn = sumw[bs]
    q = (p1, p2, m1, m2)
    nan = np.uint64(0)
    c = np.int64(0)  # not a literal 0: one compiled _global, not one per type of c
    for i1 in range(bs + 1):
        a = sumx[i1] - sx0
        aw = sumw[i1] - sw0
        h = (sumx[i1], sumw[i1], sxn, swn, a * p0, aw * p0 * p0, a * m0, aw * m0 * m0)
        for i0 in range(i1, bs + 1, LANES):
            nan |= _pass_s(sumx, sumw, np.uint64(i0), np.int64(bs + 1 - i0), h, q, cb, c * (3 * nk * LANES))
            ch[2 * c] = i1
            ch[2 * c + 1] = i0
            c += 1
    if nan == 0:
        done, lc, e, sc = _global(cb, _maxscan2(cb, c), nk, c, scale, safe)
        if done:
            if lc < 0:
                return -1, -1, 0, scale
            return ch[2 * lc], ch[2 * lc + 1] + e // nk, 1 if e % nk == 0 else -1, sc
    return _seq_s(sumx, sumw, bs, p0, p1, p2, m0, m1, m2, scale, cb)


@njit(**KJIT)
def _split_m(pp, bs, xp, xm, scale, cb, ch, safe):
    """quantize_row_iq1_m_impl's exhaustive split loop (as _seq_m), decided as in _split_s (safe:
    _global's shortcut applies)."""
    nk = 4
    t = _m_terms(pp, bs, xp, xm)
    nan = np.uint64(0)
    c = np.int64(0)  # not a literal 0: one compiled _global, not one per type of c
    for i1 in range(bs + 1):
        h = _m_row(pp, i1, t)
        for i0 in range(i1, bs + 1, LANES):
            nan |= _pass_m(pp, np.uint64(i0), np.int64(bs + 1 - i0), h, cb, c * (3 * nk * LANES))
            ch[2 * c] = i1
            ch[2 * c + 1] = i0
            c += 1
    if nan == 0:
        done, lc, e, sc = _global(cb, _maxscan4(cb, c), nk, c, scale, safe)
        if done:
            if lc < 0:
                return -1, -1, -1, scale
            return ch[2 * lc], ch[2 * lc + 1] + e // nk, e % nk, sc
    return _seq_m(pp, bs, xp, xm, scale, cb)


@njit(**KJIT)
def iq1s_block(x, xo, qw, out, off, kx, kg, nidx, levels, scales, weight, L, index, shifts, sumx, sumw,
               pv, pidx, tv, ti, cb, ch, flag):
    """quantize_row_iq1_s_impl for x[xo:xo+256] -> out[off:off+50]; 1 where ggml aborts.

    In two passes over the 8 blocks (the same operations per block as ggml's one): the split
    searches first, prefetching the neighbour lists of the off-grid groups (flag 2; 1: all on the
    grid, 0: a zero block), then the neighbour searches, so the lists arrive while later blocks
    are searched. weight holds all 256 weights, index 4 grid indices per block."""
    for j in range(S_BYTES):
        out[off + j] = 0
    max_scale = _F0
    sumx2 = _F0
    for i in range(QK_K):
        sumx2 += x[xo + i] * x[xo + i]
    sigma2 = np.float32(2.0) * sumx2 / np.float32(QK_K)
    bs = 32
    p0, p1, p2 = XPM_S[0, 0], XPM_S[0, 1], XPM_S[0, 2]
    m0, m1, m2 = XPM_S[1, 0], XPM_S[1, 1], XPM_S[1, 2]
    for ib in range(QK_K // bs):
        bo = xo + bs * ib
        wb = bs * ib
        flag[ib] = 0
        for i in range(bs):
            weight[wb + i] = qw[bo + i] * np.sqrt(sigma2 + x[bo + i] * x[bo + i])
        mx = abs(x[bo])
        for i in range(1, bs):
            a = abs(x[bo + i])
            mx = mx if mx > a else a
        if mx < GROUP_MAX_EPS_IQ1_S:
            scales[ib] = _F0
            shifts[ib] = 1
            continue
        _sorted_block(x, bo, bs, pv, pidx, tv, ti)
        sumx[0] = _F0
        sumw[0] = _F0
        sx = _F0  # the running sums in registers (through the arrays they wait on each store)
        sw = _F0
        wmin = _F0
        sa = _F0
        for j in range(bs):
            i = pidx[j]
            wi = weight[wb + i]
            t = wi * x[bo + i]
            sx = sx + t
            sw = sw + wi
            wmin = min(wmin, wi)
            sa += abs(t)
            sumx[j + 1] = sx
            sumw[j + 1] = sw
        safe = wmin >= _F0 and sw >= SAFE_LO and sw <= SAFE_HI and sa <= SAFE_HI
        besti1, besti2, best_shift, scale = _split_s(sumx, sumw, bs, p0, p1, p2, m0, m1, m2, mx, cb, ch, safe)
        if besti1 < 0 or besti2 < 0 or best_shift == 0:
            scales[ib] = _F0
            shifts[ib] = 1
            continue
        for j in range(besti1):
            L[pidx[j]] = 0
        for j in range(besti1, besti2):
            L[pidx[j]] = 1
        for j in range(besti2, bs):
            L[pidx[j]] = 2
        if scale < _F0:
            for j in range(bs):
                L[j] = 2 - L[j]
            scale = -scale
            best_shift = -best_shift
        flag[ib] = 1
        for k in range(bs // 8):
            u = _grid_u(L, 8 * k)
            if u >= KMAP_SIZE:
                return 1
            g = np.int64(kx[u])
            index[(bs // 8) * ib + k] = g
            if g < 0:
                flag[ib] = 2
                prefetch_list(-1 - g, kg, nidx)
        scales[ib] = scale
        shifts[ib] = best_shift
    for ib in range(QK_K // bs):
        if flag[ib] == 0:
            continue
        bo = xo + bs * ib
        wb = bs * ib
        ix = (bs // 8) * ib
        scale = scales[ib]
        xx = XPM_S[0] if shifts[ib] == 1 else XPM_S[1]
        for k in range(bs // 8):
            if index[ix + k] < 0:
                gi = best_neighbour(-1 - index[ix + k], kg, nidx, x, bo + 8 * k, weight, wb + 8 * k, scale, xx)
                if gi < 0:
                    return 1
                index[ix + k] = gi
        if flag[ib] == 2:
            sumqx = _F0
            sumq2 = _F0
            for k in range(bs // 8):
                for j in range(8):
                    w = weight[wb + 8 * k + j]
                    q = xx[(KG[index[ix + k]] >> (2 * j)) & 3]
                    sumqx += w * q * x[bo + 8 * k + j]
                    sumq2 += w * q * q
            if sumqx > _F0 and sumq2 > _F0:
                scale = sumqx / sumq2
        h = 0
        for k in range(bs // 8):
            out[off + S_QS + (bs // 8) * ib + k] = np.uint8(index[ix + k] & 255)
            h |= (index[ix + k] >> 8) << (3 * k)
        out[off + S_QH + 2 * ib] = np.uint8(h & 0xFF)
        out[off + S_QH + 2 * ib + 1] = np.uint8((h >> 8) & 0xFF)
        if not scale >= _F0:
            return 1
        scales[ib] = scale
        max_scale = max_scale if max_scale > scale else scale
    if max_scale == _F0:
        return 0
    d = max_scale / np.float32(15.0)
    put_f16(out, off + S_D, d * np.float32(1.125))
    idv = _F1 / d
    for ib in range(QK_K // bs):
        l = nearest_int(_F05 * (idv * scales[ib] - _F1))
        l = max(0, min(7, l))
        if shifts[ib] == -1:
            l |= 8
        out[off + S_QH + 2 * ib + 1] |= np.uint8((l << 4) & 0xFF)
    return 0


@njit(**KJIT)
def _half_shift(best_k, k):
    """Row of XPM_M for group k of a 16-value block (k == 0: best_k < 2 ? x_p : x_m;
    k == 1: best_k % 2 == 0 ? x_p : x_m)."""
    if k == 0:
        return 0 if best_k < 2 else 1
    return best_k % 2


@njit(**KJIT)
def _iq1m_weights(x, bo, qw, weighted, sigma2, weight, wb):
    if weighted:
        for i in range(16):
            weight[wb + i] = qw[bo + i] * np.sqrt(sigma2 + x[bo + i] * x[bo + i])
    else:
        for i in range(16):
            weight[wb + i] = x[bo + i] * x[bo + i]


@njit(**KJIT)
def iq1m_block(x, xo, qw, weighted, out, off, kx, kg, nidx, levels, scales, weight, L, index, shifts, pp, pv,
               pidx, tv, ti, sc, cb, ch, flag):
    """quantize_row_iq1_m_impl for x[xo:xo+256] -> out[off:off+56]; 1 where ggml aborts. Two
    passes over the 16 blocks as in iq1s_block; ggml's second computation of the weights (for
    the super-block scale) gives the same values, kept from the first."""
    for j in range(M_BYTES):
        out[off + j] = 0
    max_scale = _F0
    sumx2 = _F0
    for i in range(QK_K):
        sumx2 += x[xo + i] * x[xo + i]
    sigma2 = np.float32(2.0) * sumx2 / np.float32(QK_K)
    bs = 16
    xp = XPM_M[0]
    xm = XPM_M[1]
    for ib in range(QK_K // bs):
        bo = xo + bs * ib
        wb = bs * ib
        flag[ib] = 0
        _iq1m_weights(x, bo, qw, weighted, sigma2, weight, wb)
        mx = abs(x[bo])
        for i in range(1, bs):
            a = abs(x[bo + i])
            mx = mx if mx > a else a
        if mx < GROUP_MAX_EPS_IQ1_M:
            scales[ib] = _F0
            shifts[ib] = 0
            continue
        _sorted_block(x, bo, bs, pv, pidx, tv, ti)
        # ggml's px[2][17], pw[2][17] as the rows px0 | px1 | pw0 | pw1 of pp (M_ROW floats each),
        # summed in registers: the other half's row adds +0.0, which keeps its value (a sum from +0
        # is never -0), so each row is one branchless chain
        pp[0] = _F0
        pp[M_ROW] = _F0
        pp[2 * M_ROW] = _F0
        pp[3 * M_ROW] = _F0
        a0 = _F0
        a1 = _F0
        c0 = _F0
        c1 = _F0
        wmin = _F0
        sa = _F0
        for j in range(bs):
            i = pidx[j]
            lo = i < bs // 2
            wi = weight[wb + i]
            t = wi * x[bo + i]
            wmin = min(wmin, wi)
            sa += abs(t)
            a0 = a0 + (t if lo else _F0)
            a1 = a1 + (_F0 if lo else t)
            c0 = c0 + (wi if lo else _F0)
            c1 = c1 + (_F0 if lo else wi)
            pp[j + 1] = a0
            pp[M_ROW + j + 1] = a1
            pp[2 * M_ROW + j + 1] = c0
            pp[3 * M_ROW + j + 1] = c1
        sw = c0 + c1
        safe = wmin >= _F0 and sw >= SAFE_LO and sw <= SAFE_HI and sa <= SAFE_HI
        besti1, besti2, best_k, scale = _split_m(pp, bs, xp, xm, mx, cb, ch, safe)
        if besti1 < 0 or besti2 < 0 or best_k < 0:
            scales[ib] = _F0
            shifts[ib] = 0
            continue
        for j in range(besti1):
            L[pidx[j]] = 0
        for j in range(besti1, besti2):
            L[pidx[j]] = 1
        for j in range(besti2, bs):
            L[pidx[j]] = 2
        if scale < _F0:
            for j in range(bs):
                L[j] = 2 - L[j]
            scale = -scale
            best_k = 3 - best_k
        flag[ib] = 1
        for k in range(bs // 8):
            u = _grid_u(L, 8 * k)
            if u >= KMAP_SIZE:
                return 1
            g = np.int64(kx[u])
            index[2 * ib + k] = g
            if g < 0:
                flag[ib] = 2
                prefetch_list(-1 - g, kg, nidx)
        scales[ib] = scale
        shifts[ib] = best_k
    for ib in range(QK_K // bs):
        if flag[ib] == 0:
            continue
        bo = xo + bs * ib
        wb = bs * ib
        scale = scales[ib]
        best_k = shifts[ib]
        for k in range(bs // 8):
            if index[2 * ib + k] < 0:
                xx = XPM_M[_half_shift(best_k, k)]
                gi = best_neighbour(-1 - index[2 * ib + k], kg, nidx, x, bo + 8 * k, weight, wb + 8 * k, scale, xx)
                if gi < 0:
                    return 1
                index[2 * ib + k] = gi
        if flag[ib] == 2:
            sqx = _F0
            sq2 = _F0
            for k in range(bs // 8):
                xx = XPM_M[_half_shift(best_k, k)]
                for j in range(8):
                    w = weight[wb + 8 * k + j]
                    q = xx[(KG[index[2 * ib + k]] >> (2 * j)) & 3]
                    sqx += w * q * x[bo + 8 * k + j]
                    sq2 += w * q * q
            if sqx > _F0 and sq2 > _F0:
                scale = sqx / sq2
        i0 = index[2 * ib]
        i1 = index[2 * ib + 1]
        out[off + M_QS + 2 * ib] = np.uint8(i0 & 255)
        out[off + M_QS + 2 * ib + 1] = np.uint8(i1 & 255)
        out[off + M_QH + ib] = np.uint8((i0 >> 8) | ((i1 >> 8) << 4))
        if not scale >= _F0:
            return 1
        scales[ib] = scale
        max_scale = max_scale if max_scale > scale else scale
    if max_scale == _F0:
        return 0
    for t in range(4):
        sc[t] = 0
    d = max_scale / np.float32(15.0)
    idv = _F1 / d
    sqx = _F0
    sq2 = _F0
    for ib in range(QK_K // bs):
        l = nearest_int(_F05 * (idv * scales[ib] - _F1))
        l = max(0, min(7, l))
        sc[ib // 4] |= l << (3 * (ib % 4))
        qh = np.int64(out[off + M_QH + ib]) | IQ1M_MASKS[shifts[ib]]
        out[off + M_QH + ib] = np.uint8(qh)
        bo = xo + bs * ib
        fl = np.float32(2 * l + 1)
        for k in range(bs // 8):
            xx = XPM_M[_half_shift(shifts[ib], k)]
            g = np.int64(out[off + M_QS + 2 * ib + k]) + ((qh << (8 - 4 * k)) & 0x700)
            for j in range(8):
                w = weight[bs * ib + 8 * k + j]
                q = xx[(KG[g] >> (2 * j)) & 3] * fl
                sqx += w * q * x[bo + 8 * k + j]
                sq2 += w * q * q
    if sq2 > _F0:
        d = sqx / sq2
    s = np.int64(fp32_to_fp16(d * np.float32(1.1125)))
    sc[0] |= (s & 0x000F) << 12
    sc[1] |= (s & 0x00F0) << 8
    sc[2] |= (s & 0x0F00) << 4
    sc[3] |= s & 0xF000
    for t in range(4):
        out[off + M_SC + 2 * t] = np.uint8(sc[t] & 0xFF)
        out[off + M_SC + 2 * t + 1] = np.uint8((sc[t] >> 8) & 0xFF)
    return 0


# The two drivers are separate functions (not one with an is_m flag): numba does not prune a
# branch on a literal argument, so a shared driver compiled IQ1_M's block search into IQ1_S's
# quantizer and back (about 8 s CPU of a cold first IQ1_S conversion), and each call level
# costs a whole re-optimization of everything below it.
@njit(nogil=True, **JIT)
def quantize_iq1_s(x, qw, out):
    """Rows of x -> IQ1_S. Needs weights (qw empty: nothing written, every block counted as
    failed). Returns the number of blocks where ggml aborts."""
    nblk = x.shape[1] // QK_K
    if qw.shape[0] != x.shape[1]:
        return x.shape[0] * nblk
    kx, _, nidx, levels = lists(GRID_1S)
    kg = _packed()
    bs = 32
    scales = np.zeros(QK_K // bs, dtype=np.float32)
    shifts = np.zeros(QK_K // bs, dtype=np.int64)
    weight = np.zeros(QK_K, dtype=np.float32)  # a super-block's weights
    L = np.zeros(bs, dtype=np.int8)
    index = np.zeros(QK_K // 8, dtype=np.int64)  # per block: its groups' kx entries, then grid indices
    flag = np.zeros(QK_K // bs, dtype=np.int64)
    sumx = np.zeros(bs + 1 + LANES, dtype=np.float32)  # prefix sums, read past bs by the padding slots
    sumw = np.zeros(bs + 1 + LANES, dtype=np.float32)
    pv = np.zeros(bs, dtype=np.float32)
    tv = np.zeros(bs, dtype=np.float32)
    pidx = np.zeros(bs, dtype=np.int64)
    ti = np.zeros(bs, dtype=np.int64)
    cb = np.zeros(CB_SIZE, dtype=np.float32)  # a block's split candidates (_store_ir)
    ch = np.zeros(CH_SIZE, dtype=np.int64)
    failed = 0
    for r in range(x.shape[0]):
        for b in range(nblk):
            failed += iq1s_block(x[r], b * QK_K, qw, out[r], b * S_BYTES, kx, kg, nidx, levels, scales,
                                 weight, L, index, shifts, sumx, sumw, pv, pidx, tv, ti, cb, ch, flag)
    return failed


@njit(nogil=True, **JIT)
def quantize_iq1_m(x, qw, out):
    """Rows of x -> IQ1_M, weighted or not. Returns the number of blocks where ggml aborts."""
    nblk = x.shape[1] // QK_K
    weighted = qw.shape[0] == x.shape[1]
    kx, _, nidx, levels = lists(GRID_1S)
    kg = _packed()
    bs = 16
    scales = np.zeros(QK_K // bs, dtype=np.float32)
    shifts = np.zeros(QK_K // bs, dtype=np.int64)
    weight = np.zeros(QK_K, dtype=np.float32)  # a super-block's weights
    L = np.zeros(bs, dtype=np.int8)
    index = np.zeros(QK_K // 8, dtype=np.int64)  # per block: its groups' kx entries, then grid indices
    flag = np.zeros(QK_K // bs, dtype=np.int64)
    pp = np.zeros(4 * M_ROW, dtype=np.float32)  # IQ1_M's prefix sums, read up to bs + LANES per row
    pv = np.zeros(bs, dtype=np.float32)
    tv = np.zeros(bs, dtype=np.float32)
    pidx = np.zeros(bs, dtype=np.int64)
    ti = np.zeros(bs, dtype=np.int64)
    sc = np.zeros(4, dtype=np.int64)
    cb = np.zeros(CB_SIZE, dtype=np.float32)  # a block's split candidates (_store_ir)
    ch = np.zeros(CH_SIZE, dtype=np.int64)
    failed = 0
    for r in range(x.shape[0]):
        for b in range(nblk):
            failed += iq1m_block(x[r], b * QK_K, qw, weighted, out[r], b * M_BYTES, kx, kg, nidx, levels,
                                 scales, weight, L, index, shifts, pp, pv, pidx, tv, ti, sc, cb, ch, flag)
    return failed


@njit(**JIT)
def _put8(yr, yo, dl, g, delta):
    for j in range(8):
        yr[yo + j] = dl * (np.float32(((g >> (2 * j)) & 3) - 1) + delta)


@njit(nogil=True, **JIT)
def dequantize_iq1_s(q, out):
    for r in range(out.shape[0]):
        qr = q[r]
        yr = out[r]
        for b in range(out.shape[1] // QK_K):
            off = b * S_BYTES
            d = get_f16(qr, off + S_D)
            for ib in range(QK_K // 32):
                qh = np.int64(qr[off + S_QH + 2 * ib]) | (np.int64(qr[off + S_QH + 2 * ib + 1]) << 8)
                dl = d * np.float32(2 * ((qh >> 12) & 7) + 1)
                delta = -IQ1S_DELTA if qh & 0x8000 else IQ1S_DELTA
                for l in range(4):
                    gi = np.int64(qr[off + S_QS + 4 * ib + l]) | (((qh >> (3 * l)) & 7) << 8)
                    _put8(yr, b * QK_K + 32 * ib + 8 * l, dl, DEQ_GRID[gi], delta)


@njit(nogil=True, **JIT)
def dequantize_iq1_m(q, out):
    sc = np.zeros(4, dtype=np.int64)
    for r in range(out.shape[0]):
        qr = q[r]
        yr = out[r]
        for b in range(out.shape[1] // QK_K):
            off = b * M_BYTES
            for t in range(4):
                sc[t] = np.int64(qr[off + M_SC + 2 * t]) | (np.int64(qr[off + M_SC + 2 * t + 1]) << 8)
            s = (sc[0] >> 12) | ((sc[1] >> 8) & 0x00F0) | ((sc[2] >> 4) & 0x0F00) | (sc[3] & 0xF000)
            d = fp16_to_fp32(s)
            for ib in range(QK_K // 32):
                dl1 = d * np.float32(2 * ((sc[ib // 2] >> (6 * (ib % 2))) & 7) + 1)
                dl2 = d * np.float32(2 * ((sc[ib // 2] >> (6 * (ib % 2) + 3)) & 7) + 1)
                qh0 = np.int64(qr[off + M_QH + 2 * ib])
                qh1 = np.int64(qr[off + M_QH + 2 * ib + 1])
                qs = off + M_QS + 4 * ib
                yo = b * QK_K + 32 * ib
                _put8(yr, yo, dl1, DEQ_GRID[np.int64(qr[qs]) | ((qh0 << 8) & 0x700)],
                      -IQ1M_DELTA if qh0 & 0x08 else IQ1M_DELTA)
                _put8(yr, yo + 8, dl1, DEQ_GRID[np.int64(qr[qs + 1]) | ((qh0 << 4) & 0x700)],
                      -IQ1M_DELTA if qh0 & 0x80 else IQ1M_DELTA)
                _put8(yr, yo + 16, dl2, DEQ_GRID[np.int64(qr[qs + 2]) | ((qh1 << 8) & 0x700)],
                      -IQ1M_DELTA if qh1 & 0x08 else IQ1M_DELTA)
                _put8(yr, yo + 24, dl2, DEQ_GRID[np.int64(qr[qs + 3]) | ((qh1 << 4) & 0x700)],
                      -IQ1M_DELTA if qh1 & 0x80 else IQ1M_DELTA)


KERNELS = {
    QType.IQ1_S: Kernel(quantize_iq1_s, dequantize_iq1_s, prepare),
    QType.IQ1_M: Kernel(quantize_iq1_m, dequantize_iq1_m, prepare),
}
