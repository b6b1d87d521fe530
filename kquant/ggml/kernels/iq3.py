"""ggml's 3-bit lattice i-quants IQ3_XXS and IQ3_S, ported to Numba.

Ports, from ggml/src/ggml-quants.c (llama.cpp as vendored in llama-cpp-python 0.3.36):
  iq3xs_init_impl            the grids, kmap and neighbour lists (grid sizes 256 and 512)
  iq3_find_best_neighbour
  quantize_row_iq3_xxs_impl  (grid 256; what quantize_iq3_xxs, ggml_quantize_chunk's path, calls)
  quantize_row_iq3_s_impl    (block_size 32; quantize_iq3_s)
  dequantize_row_iq3_xxs, dequantize_row_iq3_s
byte for byte. Every float expression is evaluated in float32, op by op, in C's order (libggml is
built without -march, so without FMA contraction; no fastmath here either).

Both quantize groups of 4 magnitudes onto a grid of 4-vectors with odd coordinates 1..15 (level
l = 0..7 is 2l+1): 256 points for IQ3_XXS, 512 for IQ3_S, out of the 8^4 = 4096 possible. A
vector off the grid is moved to the best of its neighbours (kmap/neighbour lists). Signs are
stored separately; a sub-block of 32 gets its own scale. Both take importance weights or none:
ggml_quantize_requires_imatrix is false for both (llama-quantize's own IQ3_XXS imatrix rule is
a file-type rule, not the kernel's).

Block layouts (ggml-common.h), 256 values each:

    block_iq3_xxs (98 bytes)  d (fp16), qs[96]:
        qs[0:64]    grid index of group g = 8 ib + k (values 32 ib + 4 k .. + 3)
        qs[64:96]   scales_and_signs[8], little-endian uint32 per sub-block ib:
                    bits 27..0 = four 7-bit sign masks (8 values each; the 8th sign is the parity,
                    ksigns_iq2xs), bits 31..28 = 4-bit scale s, sub-block scale d (0.5 + s) / 2
    block_iq3_s (110 bytes)  d (fp16), qs[64], qh[8], signs[32], scales[4]:
        qs[g], qh[ib] bit k  low 8 bits and bit 8 of group g = 8 ib + k's grid index
        signs[4 ib + k]      one bit per value, bit j = value 32 ib + 8 k + j
        scales[ib / 2]       4-bit s per sub-block (low nibble: even ib), scale d (1 + 2 s)

(ggml's IQ3_S writer advances its qs/signs pointers only for sub-blocks that are not all zero,
so after an all-zero sub-block the later ones shift down; mirrored here.)

Where ggml aborts (GGML_ASSERT / GGML_ABORT: iq3_find_best_neighbour with no finite candidate,
a NaN scale; reachable only when float32 intermediates overflow or turn NaN: NaN/Inf input,
|x| far past the fp16 range of the scales, weights near FLT_MAX), the kernel stores a NaN fp16
scale in that block, so kquant.ggml.quants' scale check refuses the tensor with a one-line error.

Speed (same bytes): the 31 (IQ3_XXS) or 19 (IQ3_S) trial scales of a sub-block are lanes (padded
to 32), group by group: their roundings, kmap lookups and their terms of the two weighted sums
(each in ggml's element order). The trials that round a group to the same off-grid vector form
runs (the levels grow with 1/scale: ~3 runs per group instead of ~23 searches); a run's
neighbour searches share the candidate list and run as 8 trial lanes over its candidates
(`_run_search`, an LLVM vector intrinsic keeping ggml's `d2 < best_d2` per lane). The final
re-search at the chosen scale has the candidates as lanes (`best_neighbour`).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from llvmlite import ir as llvm_ir
from numba import njit, types
from numba.core import cgutils
from numba.cpython.unsafe.numbers import trailing_zeros
from numba.extending import intrinsic

from ..types import QK_K, QType, field_offsets
from . import Kernel
from ._common import get_f16, nearest_int, put_f16, sel
from ._tablecache import stored

JIT = dict(cache=True, no_cfunc_wrapper=True, error_model="numpy")  # float x/0 gives inf/nan, as in C
KJIT = dict(JIT, _nrt=False)  # helpers that allocate nothing: no reference counting
KMAXQ = 8
KMAP_SIZE = 4096
GROUP_MAX_EPS_IQ3_XXS = np.float32(1e-8)
NAN_F16 = 0x7E00  # the stored scale of a block where ggml aborts

# block layouts: offsets from the declared fields (kquant.ggml.types)
XXS_BYTES, S_BYTES = QType.IQ3_XXS.type_size, QType.IQ3_S.type_size
XXS_D, XXS_QS = field_offsets(QType.IQ3_XXS, "d", "qs")
XXS_SAS = XXS_QS + QK_K // 4  # scales_and_signs = qs + QK_K/4
S_D, S_QS, S_QH, S_SIGNS, S_SCALES = field_offsets(QType.IQ3_S, "d", "qs", "qh", "signs", "scales")

# ----------------------------------------------------------------------------------------- tables
# ggml-quants.c iq3xs_init_impl: kgrid_256 / kgrid_512, each point 4 x 3 bits (level of coordinate
# i in bits 3i+2..3i)
KGRID_256 = np.array([
    0, 2, 4, 9, 11, 15, 16, 18, 25, 34, 59, 61, 65, 67, 72, 74,
    81, 85, 88, 90, 97, 108, 120, 128, 130, 132, 137, 144, 146, 153, 155, 159,
    169, 175, 189, 193, 199, 200, 202, 213, 248, 267, 287, 292, 303, 315, 317, 321,
    327, 346, 362, 413, 436, 456, 460, 462, 483, 497, 513, 515, 520, 522, 529, 531,
    536, 538, 540, 551, 552, 576, 578, 585, 592, 594, 641, 643, 648, 650, 657, 664,
    698, 704, 706, 720, 729, 742, 758, 769, 773, 808, 848, 852, 870, 889, 901, 978,
    992, 1024, 1026, 1033, 1035, 1040, 1042, 1046, 1049, 1058, 1089, 1091, 1093, 1096, 1098, 1105,
    1112, 1139, 1143, 1144, 1152, 1154, 1161, 1167, 1168, 1170, 1183, 1184, 1197, 1217, 1224, 1228,
    1272, 1276, 1309, 1323, 1347, 1367, 1377, 1404, 1473, 1475, 1486, 1509, 1537, 1544, 1546, 1553,
    1555, 1576, 1589, 1594, 1600, 1602, 1616, 1625, 1636, 1638, 1665, 1667, 1672, 1685, 1706, 1722,
    1737, 1755, 1816, 1831, 1850, 1856, 1862, 1874, 1901, 1932, 1950, 1971, 2011, 2032, 2052, 2063,
    2077, 2079, 2091, 2095, 2172, 2192, 2207, 2208, 2224, 2230, 2247, 2277, 2308, 2345, 2356, 2389,
    2403, 2424, 2501, 2504, 2506, 2520, 2570, 2593, 2616, 2624, 2630, 2646, 2669, 2700, 2714, 2746,
    2754, 2795, 2824, 2835, 2839, 2874, 2882, 2905, 2984, 3028, 3042, 3092, 3108, 3110, 3124, 3153,
    3185, 3215, 3252, 3288, 3294, 3364, 3397, 3434, 3483, 3523, 3537, 3587, 3589, 3591, 3592, 3610,
    3626, 3670, 3680, 3722, 3749, 3754, 3776, 3789, 3803, 3824, 3857, 3873, 3904, 3906, 3924, 3992,
], dtype=np.uint16)
KGRID_512 = np.array([
    0, 1, 2, 5, 7, 8, 9, 10, 12, 14, 16, 17, 21, 27, 32, 34,
    37, 39, 41, 43, 48, 50, 57, 60, 63, 64, 65, 66, 68, 72, 73, 77,
    80, 83, 87, 89, 93, 100, 113, 117, 122, 128, 129, 133, 135, 136, 139, 142,
    145, 149, 152, 156, 162, 165, 167, 169, 171, 184, 187, 195, 201, 205, 208, 210,
    217, 219, 222, 228, 232, 234, 247, 249, 253, 256, 267, 271, 273, 276, 282, 288,
    291, 297, 312, 322, 324, 336, 338, 342, 347, 353, 357, 359, 374, 379, 390, 393,
    395, 409, 426, 441, 448, 450, 452, 464, 466, 470, 475, 488, 492, 512, 513, 514,
    516, 520, 521, 523, 525, 527, 528, 530, 537, 540, 542, 556, 558, 561, 570, 576,
    577, 579, 582, 584, 588, 593, 600, 603, 609, 616, 618, 632, 638, 640, 650, 653,
    655, 656, 660, 666, 672, 675, 685, 688, 698, 705, 708, 711, 712, 715, 721, 727,
    728, 732, 737, 754, 760, 771, 773, 778, 780, 793, 795, 802, 806, 808, 812, 833,
    840, 843, 849, 856, 858, 873, 912, 916, 919, 932, 934, 961, 963, 968, 970, 977,
    989, 993, 1010, 1016, 1024, 1025, 1027, 1029, 1031, 1032, 1034, 1036, 1038, 1041, 1043, 1047,
    1048, 1050, 1057, 1059, 1061, 1064, 1066, 1079, 1080, 1083, 1085, 1088, 1090, 1096, 1099, 1103,
    1106, 1109, 1113, 1116, 1122, 1129, 1153, 1156, 1159, 1169, 1171, 1176, 1183, 1185, 1195, 1199,
    1209, 1212, 1216, 1218, 1221, 1225, 1234, 1236, 1241, 1243, 1250, 1256, 1270, 1281, 1287, 1296,
    1299, 1306, 1309, 1313, 1338, 1341, 1348, 1353, 1362, 1375, 1376, 1387, 1400, 1408, 1410, 1415,
    1425, 1453, 1457, 1477, 1481, 1494, 1496, 1507, 1512, 1538, 1545, 1547, 1549, 1551, 1554, 1561,
    1563, 1565, 1570, 1572, 1575, 1577, 1587, 1593, 1601, 1603, 1605, 1612, 1617, 1619, 1632, 1648,
    1658, 1662, 1664, 1674, 1680, 1690, 1692, 1704, 1729, 1736, 1740, 1745, 1747, 1751, 1752, 1761,
    1763, 1767, 1773, 1787, 1795, 1801, 1806, 1810, 1817, 1834, 1840, 1844, 1857, 1864, 1866, 1877,
    1882, 1892, 1902, 1915, 1934, 1953, 1985, 1987, 2000, 2002, 2013, 2048, 2052, 2058, 2064, 2068,
    2071, 2074, 2081, 2088, 2104, 2114, 2119, 2121, 2123, 2130, 2136, 2141, 2147, 2153, 2157, 2177,
    2179, 2184, 2189, 2193, 2203, 2208, 2223, 2226, 2232, 2244, 2249, 2251, 2256, 2258, 2265, 2269,
    2304, 2306, 2324, 2335, 2336, 2361, 2373, 2375, 2385, 2418, 2443, 2460, 2480, 2504, 2509, 2520,
    2531, 2537, 2562, 2568, 2572, 2578, 2592, 2596, 2599, 2602, 2614, 2620, 2625, 2627, 2629, 2634,
    2641, 2650, 2682, 2688, 2697, 2707, 2712, 2718, 2731, 2754, 2759, 2760, 2775, 2788, 2793, 2805,
    2811, 2817, 2820, 2832, 2842, 2854, 2890, 2902, 2921, 2923, 2978, 3010, 3012, 3026, 3081, 3083,
    3085, 3097, 3099, 3120, 3136, 3152, 3159, 3188, 3210, 3228, 3234, 3245, 3250, 3256, 3264, 3276,
    3281, 3296, 3349, 3363, 3378, 3392, 3395, 3420, 3440, 3461, 3488, 3529, 3531, 3584, 3588, 3591,
    3600, 3602, 3614, 3616, 3628, 3634, 3650, 3657, 3668, 3683, 3685, 3713, 3716, 3720, 3726, 3729,
    3736, 3753, 3778, 3802, 3805, 3819, 3841, 3845, 3851, 3856, 3880, 3922, 3938, 3970, 3993, 4032,
], dtype=np.uint16)

# iq3xxs_grid's bytes per level (ggml-common.h): 4 (2l + 1), except level 7 -> 62; iq3s_grid's
# are the quantizer's own 2l + 1
XXS_DQ_VALUES = np.array([4, 12, 20, 28, 36, 44, 52, 62], dtype=np.uint8)


NEAREST = 48  # longer than any neighbour list (38 at most), checked


@lru_cache(maxsize=None)
@stored("iq3xs_init_impl")
def grid_tables(grid_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """iq3xs_init_impl(grid_size), once per size: (levels, kmap, neighbours).

    levels      uint8 (grid_size, 4): level l of each coordinate (the_grid byte = 2 l + 1)
    kmap        int32 (4096,): grid index of a level vector u = l0 | l1 << 3 | l2 << 6 | l3 << 9,
                or -(offset + 1) for a vector off the grid, as ggml's kmap_q3xs
    neighbours  uint16: ggml's kneighbors_q3xs; at each offset the count n, then n grid indices:
                every grid point among the `nwant` smallest squared distances (2 for 256, 3 for
                512), by (distance, index) as ggml's qsort orders them
    """
    kgrid = {256: KGRID_256, 512: KGRID_512}[grid_size]
    nwant = 2 if grid_size == 256 else 3
    shifts = 3 * np.arange(4)
    levels = ((kgrid[:, None].astype(np.int32) >> shifts) & 7).astype(np.uint8)
    kmap = np.full(KMAP_SIZE, -1, dtype=np.int32)
    kmap[(levels.astype(np.int32) << shifts).sum(axis=1)] = np.arange(grid_size, dtype=np.int32)
    off = np.flatnonzero(kmap < 0)  # ascending, as ggml assigns offsets
    pos = 2 * ((off[:, None] >> shifts) & 7) + 1  # (n_off, 4)
    gpos = 2 * levels.astype(np.int32) + 1  # (grid_size, 4)
    d2 = np.zeros((off.size, grid_size), dtype=np.int32)
    for i in range(4):
        d2 += (gpos[None, :, i] - pos[:, None, i].astype(np.int32)) ** 2
    # ggml's qsort by (d2, j): the keys d2 * grid_size + j are distinct and sort in that order
    # (only the NEAREST smallest are needed: partition, then sort those)
    key = d2 * grid_size + np.arange(grid_size, dtype=np.int32)
    key = np.sort(np.partition(key, NEAREST - 1, axis=1)[:, :NEAREST], axis=1)
    sd2, order = key // grid_size, key % grid_size
    rank = 1 + np.cumsum(sd2[:, 1:] != sd2[:, :-1], axis=1)  # distinct distances so far
    n = 1 + (rank <= nwant).sum(axis=1)
    assert n.max() < NEAREST, "a neighbour list longer than NEAREST"
    offsets = np.concatenate(([0], np.cumsum(n + 1)[:-1]))
    kmap[off] = -(offsets + 1)
    neighbours = np.zeros(int((n + 1).sum()), dtype=np.uint16)
    neighbours[offsets] = n
    take = np.arange(NEAREST)[None, :] < n[:, None]
    neighbours[(offsets[:, None] + 1 + np.arange(NEAREST)[None, :])[take]] = order[take]
    for a in (levels, kmap, neighbours):
        a.setflags(write=False)
    return levels, kmap, neighbours


PAD = 8  # candidate lists padded to a multiple of this (one vector of float32 lanes)


@lru_cache(maxsize=None)
@stored("iq3_search")
def search_tables(grid_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The neighbour lists of grid_tables(grid_size) laid out for the search, once per size:
    (start, npad, nq, nidx).

    start, npad   uint32 (4096,): where vector u's candidates begin in nq/nidx and how many there
                  are, padded (0 for a vector on the grid)
    nq            float32 (4, P): coordinate i of each candidate, its grid byte 2 l + 1 (columns:
                  candidates, in ggml's order; each list padded to a multiple of PAD with copies
                  of its last candidate, which can never be chosen over the first)
    nidx          uint16 (P,): each candidate's grid index
    """
    levels, kmap, nb = grid_tables(grid_size)
    off = np.flatnonzero(kmap < 0)
    o = -kmap[off] - 1  # offsets of the lists in nb
    n = nb[o].astype(np.int64)
    padded = (n + PAD - 1) // PAD * PAD
    start = np.zeros(KMAP_SIZE, dtype=np.uint32)
    npad = np.zeros(KMAP_SIZE, dtype=np.uint32)
    start[off] = np.concatenate(([0], np.cumsum(padded)[:-1]))
    npad[off] = padded
    j = np.arange(int(padded.max()))[None, :]
    nidx = nb[o[:, None] + 1 + np.minimum(j, n[:, None] - 1)][j < padded[:, None]]
    nq = np.ascontiguousarray((2 * levels[nidx] + 1).T.astype(np.float32))
    for a in (start, npad, nq, nidx):
        a.setflags(write=False)
    return start, npad, nq, nidx


def dequant_grid(grid_size: int) -> np.ndarray:
    """The dequantizer's grid (ggml-common.h iq3xxs_grid for 256, iq3s_grid for 512) as uint32,
    built from kgrid."""
    levels = grid_tables(grid_size)[0]
    b = XXS_DQ_VALUES[levels] if grid_size == 256 else (2 * levels + 1).astype(np.uint8)
    return np.ascontiguousarray(b).view("<u4").reshape(-1)


def ksigns() -> np.ndarray:
    """ggml-common.h ksigns_iq2xs: 7 sign bits plus their parity as bit 7."""
    i = np.arange(128)
    par = np.array([bin(v).count("1") & 1 for v in i])
    return (i | (par << 7)).astype(np.uint8)


G256, KMAP256, _ = grid_tables(256)
G512, KMAP512, _ = grid_tables(512)
ST256, NP256, NQ256, NI256 = search_tables(256)
ST512, NP512, NQ512, NI512 = search_tables(512)
NN256, NN512 = (np.where(k < 0, nb[np.maximum(-k - 1, 0)], 0).astype(np.uint32)
                for _, k, nb in (grid_tables(256), grid_tables(512)))  # list lengths (unpadded)
XXS_DQ = XXS_DQ_VALUES[G256]  # (256, 4) dequantizer bytes
S_DQ = (2 * G512 + 1).astype(np.uint8)  # (512, 4)
KSIGNS = ksigns()
QF256 = np.ascontiguousarray((2 * G256 + 1).T.astype(np.float32))  # (4, 256): grid bytes as floats
QF512 = np.ascontiguousarray((2 * G512 + 1).T.astype(np.float32))  # (4, 512)

# -------------------------------------------------------------------------------------- quantize
_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_HALF_F = np.float32(0.5)
NT_XXS, NT_S = 31, 19  # trial scales: is = -15..15 / -9..9
NT_MAX = 32  # trial lanes (IQ3_XXS; IQ3_S uses the first NT_S_LANES)
NT_S_LANES = 24
FLT_MAX_BITS = np.uint64(0x7F7FFFFF)  # float32 FLT_MAX as bits


@njit(inline="always", **JIT)
def best_neighbour(st, npad, nq, nidx, u, x0, x1, x2, x3, w0, w1, w2, w3, scale):
    """iq3_find_best_neighbour for the off-grid vector u, values x0..x3, weights w0..w3 (waux):
    the grid index of the first candidate with the smallest d2 < FLT_MAX, or -1 where ggml aborts.

    d2 = (((0 + t0) + t1) + t2) + t3, t_i = (w_i diff) diff, diff = scale q_i - x_i, as ggml sums
    it, with the candidates as lanes. d2 is never -0 (0 + t0 is +0 for t0 = +-0), so its bits
    as an unsigned integer order it as ggml's `<` does, with every NaN above FLT_MAX; the key
    bits << 8 | candidate then has its minimum at ggml's choice (the first smallest d2), and that
    minimum is an integer reduction, which vectorizes without reordering any float sum. The
    padding copies of the last candidate have the same d2 and a larger position: never chosen."""
    p0 = np.uint64(st[u])  # unsigned indices: no wraparound code, so contiguous vector loads
    kmin = np.uint64(0xFFFFFFFFFFFFFFFF)
    for c in range(npad[u]):
        e = p0 + np.uint64(c)
        f0 = scale * nq[0, e] - x0
        f1 = scale * nq[1, e] - x1
        f2 = scale * nq[2, e] - x2
        f3 = scale * nq[3, e] - x3
        d2 = (((_F0 + w0 * f0 * f0) + w1 * f1 * f1) + w2 * f2 * f2) + w3 * f3 * f3
        key = (np.uint64(np.float32(d2).view(np.uint32)) << np.uint64(8)) | np.uint64(c)
        kmin = min(kmin, key)
    if (kmin >> np.uint64(8)) >= FLT_MAX_BITS:
        return -1
    return np.int64(nidx[p0 + (kmin & np.uint64(0xFF))])


# The trials of a sub-block that round a group to the same off-grid vector u form one run (the
# levels grow with the trial's 1/scale); a run's searches share u's candidate list, x and weights,
# and differ only in the scale. `_run_search` does LANES trials of a run at once, the candidates
# one by one: each lane keeps its smallest d2 and the first candidate that reached it, with
# ggml's own test `d2 < best_d2` (best_d2 = FLT_MAX at first), so no reduction across lanes.
# Written as Python loops, 8-lane loops run scalar (numba fully unrolls them before its loop
# vectorizer and leaves LLVM's SLP vectorizer off), hence an intrinsic: straight-line vector code
# with C's float operations in C's order (no fast-math flags: no contraction, no reassociation).
LANES = 8
_V8 = llvm_ir.VectorType(llvm_ir.FloatType(), LANES)
_I32 = llvm_ir.IntType(32)
_I64 = llvm_ir.IntType(64)
_VI8 = llvm_ir.VectorType(_I32, LANES)


def _splat(builder, v, vty):
    u = builder.insert_element(llvm_ir.Constant(vty, llvm_ir.Undefined), v, _I32(0))
    return builder.shuffle_vector(u, llvm_ir.Constant(vty, llvm_ir.Undefined), llvm_ir.Constant(_VI8, [0] * LANES))


@intrinsic
def _run_search(typingctx, nq, nidx, p0, n, xw, scs, t0, res):
    """res[t0:t0+LANES] = for each lane (trial t0 + lane, scale scs[t0 + lane]) the grid index
    (nidx) of the first candidate of u's list (nq columns p0 .. p0+n-1) with the smallest
    d2 < FLT_MAX, -1 if none: iq3_find_best_neighbour's loop. xw = (x0..x3, w0..w3) of the group
    (waux weights)."""
    sig = types.void(nq, nidx, types.uint64, types.int64, xw, scs, types.int64, res)

    def codegen(context, builder, signature, args):
        f = builder
        nqa = context.make_array(signature.args[0])(context, f, args[0])
        rows = [f.bitcast(f.gep(f.bitcast(nqa.data, llvm_ir.IntType(8).as_pointer()),
                                [f.mul(f.extract_value(nqa.strides, 0), _I64(i))]), llvm_ir.FloatType().as_pointer())
                for i in range(4)]
        nid = context.make_array(signature.args[1])(context, f, args[1]).data
        args = [args[0]] + list(args[2:])
        signature = types.void(signature.args[0], *signature.args[2:])
        xwd = context.make_array(signature.args[3])(context, f, args[3]).data
        xs = [_splat(f, f.load(f.gep(xwd, [_I64(i)])), _V8) for i in range(4)]
        ws = [_splat(f, f.load(f.gep(xwd, [_I64(4 + i)])), _V8) for i in range(4)]
        scd = context.make_array(signature.args[4])(context, f, args[4]).data
        sc = f.load(f.bitcast(f.gep(scd, [args[5]]), _V8.as_pointer()), align=4)
        bestd = cgutils.alloca_once_value(f, llvm_ir.Constant(_V8, [float(np.finfo(np.float32).max)] * LANES))
        besti = cgutils.alloca_once_value(f, llvm_ir.Constant(_VI8, [-1] * LANES))
        zero = llvm_ir.Constant(_V8, [0.0] * LANES)
        with cgutils.for_range(f, args[2]) as loop:
            c = loop.index
            e = f.add(args[1], c)
            d2 = zero
            for i in range(4):
                q = _splat(f, f.load(f.gep(rows[i], [e])), _V8)
                diff = f.fsub(f.fmul(sc, q), xs[i])
                d2 = f.fadd(d2, f.fmul(f.fmul(ws[i], diff), diff))
            bd = f.load(bestd)
            lt = f.fcmp_ordered("<", d2, bd)
            f.store(f.select(lt, d2, bd), bestd)
            g = f.zext(f.load(f.gep(nid, [e])), _I32)
            f.store(f.select(lt, _splat(f, g, _VI8), f.load(besti)), besti)
        rd = context.make_array(signature.args[6])(context, f, args[6]).data
        f.store(f.load(besti), f.bitcast(f.gep(rd, [args[5]]), _VI8.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(inline="always", **JIT)
def _level(idv, xv):
    """MAX(0, MIN(kMaxQ-1, nearest_int(0.5f*(id*x - 1)))) as int32 (one block: vectorizes)."""
    q = nearest_int(_HALF_F * (idv * xv - _F1))
    q = sel(q > np.int32(KMAXQ - 1), np.int32(KMAXQ - 1), q)
    return sel(q < np.int32(0), np.int32(0), q)


@njit(**KJIT)
def search32(x, xo, qw, weighted, sigma2, xxs, kmap, st, npad, nn, nq, nidx, lv, qf, w, waux, xval, wx, bsigns, L,
             ong, ids, scs, sqx, sq2, gk, uk, xw, res):
    """The per-sub-block part of quantize_row_iq3_xxs_impl (xxs=True, grid 256) or of
    quantize_row_iq3_s_impl (xxs=False, grid 512, block_size 32) for x[xo:xo+32].

    Returns (scale, status): status 0 = L (levels, (32,)) and bsigns (4 sign masks) hold the
    result; 1 = the sub-block is skipped (max below ggml's threshold: scale 0, nothing written);
    2 = ggml aborts here. The other arrays are scratch: ong (8,) on-grid flags, ids/scs/sqx/sq2
    (NT_MAX,) per trial, gk/uk (8, NT_MAX) each group's grid index and level vector per trial.

    Group by group (k = 0..7), the trials are lanes: their levels and kmap lookups, then the
    neighbour searches of the trials off the grid, then the group's terms of the trials' two sums
    (ggml adds them in element order 0..31, which group-major order keeps)."""
    xo = np.uint64(xo)  # unsigned indices: no wraparound code, so contiguous vector loads
    if weighted:
        for i in range(32):
            xv = x[xo + np.uint64(i)]
            w[i] = qw[xo + np.uint64(i)] * np.sqrt(sigma2 + xv * xv)
    else:
        for i in range(32):
            xv = x[xo + np.uint64(i)]
            w[i] = xv * xv
    for i in range(32):
        waux[i] = np.sqrt(w[i])
    for i in range(32):
        xv = x[xo + np.uint64(i)]
        xval[i] = sel(xv >= _F0, xv, -xv)
    for k in range(4):
        nflip = 0
        s = 0
        for i in range(8):
            neg = not x[xo + np.uint64(8 * k + i)] >= _F0
            nflip += neg
            s |= np.int64(neg) << i
        if xxs:
            if nflip % 2:
                imin = 0
                xv = x[xo + np.uint64(8 * k)]
                mn = w[8 * k] * xv * xv
                for i in range(1, 8):
                    xv = x[xo + np.uint64(8 * k + i)]
                    ax = w[8 * k + i] * xv * xv
                    if ax < mn:
                        mn = ax
                        imin = i
                xval[8 * k + imin] = -xval[8 * k + imin]
                s ^= 1 << imin
            bsigns[k] = s & 127
        else:
            bsigns[k] = s
    mx = xval[0]
    for i in range(1, 32):
        mx = mx if mx > xval[i] else xval[i]
    for i in range(32):
        L[i] = 0
    if xxs:
        if mx < GROUP_MAX_EPS_IQ3_XXS:
            return _F0, 1
    elif mx == _F0:
        return _F0, 1
    for i in range(32):
        wx[i] = w[i] * xval[i]
    nt = NT_XXS if xxs else NT_S
    half = nt // 2
    for t in range(nt):
        idv = (np.float32(2 * KMAXQ - 1) + np.float32(t - half) * np.float32(0.2)) / mx
        ids[t] = idv
        scs[t] = _F1 / idv
    ntl = NT_MAX if xxs else NT_S_LANES  # lanes: nt rounded up to whole vectors
    for t in range(nt, ntl):  # padding lanes, never used: whole vectors in the lane loops
        ids[t] = ids[nt - 1]
    for t in range(nt, NT_MAX + LANES):
        scs[t] = scs[nt - 1]
    for t in range(ntl):
        sqx[t] = _F0
        sq2[t] = _F0
    abort = False
    for k in range(8):
        x0, x1, x2, x3 = xval[4 * k], xval[4 * k + 1], xval[4 * k + 2], xval[4 * k + 3]
        for t in range(ntl):
            idv = ids[t]
            uk[k, t] = _level(idv, x0) | (_level(idv, x1) << 3) | (_level(idv, x2) << 6) | (_level(idv, x3) << 9)
        for t in range(ntl):
            gk[k, t] = kmap[np.uint32(uk[k, t])]
        for i in range(4):
            xw[i] = xval[4 * k + i]
            xw[4 + i] = waux[4 * k + i]
        # runs of trials with the same off-grid u: bit t of `start` marks a run's first trial,
        # bit t of `cont` a trial that continues the run of trial t - 1
        start = np.uint32(0)
        cont = np.uint32(0)
        for t in range(nt):
            off = gk[k, t] < 0
            same = off and t > 0 and uk[k, t] == uk[k, t - 1]
            start |= np.uint32(off and not same) << np.uint32(t)
            cont |= np.uint32(same) << np.uint32(t)
        while start:
            t0 = trailing_zeros(start)
            start &= start - np.uint32(1)
            t1 = t0 + 1 + trailing_zeros(~(cont >> np.uint32(t0 + 1)))  # the run is t0 .. t1-1
            u = uk[k, t0]
            p0 = np.uint64(st[u])
            n = np.int64(nn[u])
            for tw in range(t0, t1, LANES):  # lanes past the run are rewritten by the next run
                _run_search(nq, nidx, p0, n, xw, scs, tw, res)
        for t in range(nt):
            g = gk[k, t]
            r = res[t]
            abort |= (g < 0) & (r < 0)
            gk[k, t] = sel(g < np.int32(0), r, g)
        a0, a1, a2, a3 = wx[4 * k], wx[4 * k + 1], wx[4 * k + 2], wx[4 * k + 3]
        b0, b1, b2, b3 = w[4 * k], w[4 * k + 1], w[4 * k + 2], w[4 * k + 3]
        for t in range(ntl):
            g = gk[k, t]
            g = np.uint32(sel(g < np.int32(0), np.int32(0), g))
            q0, q1, q2, q3 = qf[0, g], qf[1, g], qf[2, g], qf[3, g]
            sqx[t] = (((sqx[t] + a0 * q0) + a1 * q1) + a2 * q2) + a3 * q3
            sq2[t] = (((sq2[t] + b0 * q0 * q0) + b1 * q1 * q1) + b2 * q2 * q2) + b3 * q3 * q3
    best = _F0
    scale = mx / np.float32(2 * KMAXQ - 1)
    chosen = -1
    for t in range(nt):
        if sq2[t] > _F0 and sqx[t] * sqx[t] > best * sq2[t]:
            scale = sqx[t] / sq2[t]
            best = scale * sqx[t]
            chosen = t
    if chosen >= 0:
        for k in range(8):
            g = max(gk[k, chosen], 0)
            for i in range(4):
                L[4 * k + i] = lv[g, i]
            ong[k] = kmap[uk[k, chosen]] >= 0
    else:
        for k in range(8):
            ong[k] = xxs  # ggml starts IQ3_XXS's is_on_grid all true, IQ3_S's all false
    n_not_ongrid = 0
    for k in range(8):
        if not ong[k]:
            n_not_ongrid += 1
    if n_not_ongrid > 0 and scale > _F0:
        idv = _F1 / scale
        for k in range(8):
            if xxs and ong[k]:
                continue
            u = _level(idv, xval[4 * k]) | (_level(idv, xval[4 * k + 1]) << 3) | (_level(idv, xval[4 * k + 2]) << 6) \
                | (_level(idv, xval[4 * k + 3]) << 9)
            g = kmap[u]
            if g < 0:
                g = best_neighbour(st, npad, nq, nidx, np.int64(u), xval[4 * k], xval[4 * k + 1], xval[4 * k + 2],
                                   xval[4 * k + 3], waux[4 * k], waux[4 * k + 1], waux[4 * k + 2], waux[4 * k + 3],
                                   scale)
            if g < 0:
                abort = True
            else:
                for i in range(4):
                    L[4 * k + i] = lv[g, i]
        sumqx = _F0
        sumq2 = _F0
        for i in range(32):
            q = np.float32(2 * L[i] + 1)
            sumqx += wx[i] * q
            sumq2 += w[i] * q * q
        if sumq2 > _F0:
            scale = sumqx / sumq2
    if scale < _F0:
        # ggml: "should never happen": flip the scale positive and the signs with it
        scale = -scale
        for k in range(4):
            bsigns[k] = (~bsigns[k]) & (127 if xxs else 255)
    if not scale >= _F0:  # GGML_ASSERT(scale >= 0) fails on NaN
        abort = True
    return scale, 2 if abort else 0


@njit(**JIT)
def _group_index(kmap, L, k):
    """kmap of group k's levels (-1 where ggml aborts: a point not on the grid)."""
    u = L[4 * k] | (L[4 * k + 1] << 3) | (L[4 * k + 2] << 6) | (L[4 * k + 3] << 9)
    return kmap[u]


@njit(**JIT)
def _scratch():
    return (np.zeros(32, np.float32), np.zeros(32, np.float32), np.zeros(32, np.float32), np.zeros(32, np.float32),
            np.zeros(4, np.int64), np.zeros(32, np.int64), np.zeros(8, np.bool_), np.zeros(NT_MAX, np.float32),
            np.zeros(NT_MAX + LANES, np.float32), np.zeros(NT_MAX, np.float32), np.zeros(NT_MAX, np.float32),
            np.zeros((8, NT_MAX), np.int32), np.zeros((8, NT_MAX), np.int32), np.zeros(QK_K // 32, np.float32),
            np.zeros(8, np.float32), np.zeros(NT_MAX + LANES, np.int32))


@njit(**JIT)
def _sigma2(x, xo):
    sumx2 = _F0
    for i in range(QK_K):
        sumx2 += x[xo + i] * x[xo + i]
    return np.float32(2.0) * sumx2 / np.float32(QK_K)


@njit(nogil=True, **JIT)
def quantize_iq3_xxs(x, qw, out):
    """quantize_iq3_xxs (quantize_row_iq3_xxs_impl(256, ...) per row)."""
    weighted = qw.shape[0] == x.shape[1]
    w, waux, xval, wx, bsigns, L, ong, ids, scs, sqx, sq2, gk, uk, scales, xw, res = _scratch()
    q3 = np.zeros(3 * QK_K // 8, np.uint8)
    sas = np.zeros(QK_K // 32, np.uint32)
    nbl = x.shape[1] // QK_K
    for r in range(x.shape[0]):
        xr = x[r]
        orow = out[r]
        for ibl in range(nbl):
            xo = ibl * QK_K
            off = ibl * XXS_BYTES
            q3[:] = 0
            sas[:] = 0
            sigma2 = _sigma2(xr, xo)
            max_scale = _F0
            abort = False
            for ib in range(QK_K // 32):
                scale, st = search32(xr, xo + 32 * ib, qw, weighted, sigma2, True, KMAP256, ST256, NP256, NN256,
                                     NQ256, NI256, G256, QF256, w, waux, xval, wx, bsigns, L, ong, ids, scs, sqx,
                                     sq2, gk, uk, xw, res)
                if st == 1:
                    scales[ib] = _F0
                    continue
                abort |= st == 2
                for k in range(8):
                    g = _group_index(KMAP256, L, k)
                    abort |= g < 0
                    q3[8 * ib + k] = np.uint8(g & 255)
                sas[ib] = np.uint32(bsigns[0] | (bsigns[1] << 7) | (bsigns[2] << 14) | (bsigns[3] << 21))
                scales[ib] = scale
                max_scale = max_scale if max_scale > scale else scale
            if max_scale == _F0:
                orow[off : off + XXS_BYTES] = 0
            else:
                d = max_scale / np.float32(31)
                put_f16(orow, off + XXS_D, d * np.float32(1.0125))
                idv = _F1 / d
                for ib in range(QK_K // 32):
                    lv = max(0, min(15, nearest_int(_HALF_F * (idv * scales[ib] - _F1))))
                    sas[ib] |= np.uint32(lv) << np.uint32(28)
                for j in range(QK_K // 4):
                    orow[off + XXS_QS + j] = q3[j]
                for ib in range(QK_K // 32):
                    v = sas[ib]
                    for b in range(4):
                        orow[off + XXS_SAS + 4 * ib + b] = np.uint8((v >> np.uint32(8 * b)) & np.uint32(255))
            if abort:
                orow[off + XXS_D] = np.uint8(NAN_F16 & 255)
                orow[off + XXS_D + 1] = np.uint8(NAN_F16 >> 8)


@njit(nogil=True, **JIT)
def quantize_iq3_s(x, qw, out):
    """quantize_iq3_s (quantize_row_iq3_s_impl(32, ...) per row)."""
    weighted = qw.shape[0] == x.shape[1]
    w, waux, xval, wx, bsigns, L, ong, ids, scs, sqx, sq2, gk, uk, scales, xw, res = _scratch()
    nbl = x.shape[1] // QK_K
    for r in range(x.shape[0]):
        xr = x[r]
        orow = out[r]
        for ibl in range(nbl):
            xo = ibl * QK_K
            off = ibl * S_BYTES
            orow[off : off + S_BYTES] = 0
            qs = off + S_QS  # ggml's running qs / signs pointers
            sg = off + S_SIGNS
            sigma2 = _sigma2(xr, xo)
            max_scale = _F0
            abort = False
            for ib in range(QK_K // 32):
                scale, st = search32(xr, xo + 32 * ib, qw, weighted, sigma2, False, KMAP512, ST512, NP512, NN512,
                                     NQ512, NI512, G512, QF512, w, waux, xval, wx, bsigns, L, ong, ids, scs, sqx,
                                     sq2, gk, uk, xw, res)
                if st == 1:
                    scales[ib] = _F0
                    continue
                abort |= st == 2
                for k in range(8):
                    g = _group_index(KMAP512, L, k)
                    abort |= g < 0
                    orow[qs + k] = np.uint8(g & 255)
                    orow[off + S_QH + ib] |= np.uint8(((g >> 8) & 1) << k)
                qs += 8
                for k in range(4):
                    orow[sg + k] = np.uint8(bsigns[k])
                sg += 4
                scales[ib] = scale
                max_scale = max_scale if max_scale > scale else scale
            if max_scale != _F0:
                d = max_scale / np.float32(31)
                put_f16(orow, off + S_D, d * np.float32(1.033))
                idv = _F1 / d
                for ib in range(0, QK_K // 32, 2):
                    l1 = max(0, min(15, nearest_int(_HALF_F * (idv * scales[ib] - _F1))))
                    l2 = max(0, min(15, nearest_int(_HALF_F * (idv * scales[ib + 1] - _F1))))
                    orow[off + S_SCALES + ib // 2] = np.uint8(l1 | (l2 << 4))
            if abort:
                orow[off + S_D] = np.uint8(NAN_F16 & 255)
                orow[off + S_D + 1] = np.uint8(NAN_F16 >> 8)


# ------------------------------------------------------------------------------------ dequantize
@njit(nogil=True, **JIT)
def dequantize_iq3_xxs(q, out):
    """dequantize_row_iq3_xxs."""
    grid = XXS_DQ
    ks = KSIGNS
    for r in range(out.shape[0]):
        qr = q[r]
        yr = out[r]
        for i in range(out.shape[1] // QK_K):
            off = i * XXS_BYTES
            d = get_f16(qr, off + XXS_D)
            for ib in range(QK_K // 32):
                so = off + XXS_SAS + 4 * ib
                aux = (np.uint32(qr[so]) | (np.uint32(qr[so + 1]) << np.uint32(8))
                       | (np.uint32(qr[so + 2]) << np.uint32(16)) | (np.uint32(qr[so + 3]) << np.uint32(24)))
                db = d * (np.float32(0.5) + np.float32(aux >> np.uint32(28))) * np.float32(0.5)
                for l in range(4):
                    signs = ks[(aux >> np.uint32(7 * l)) & np.uint32(127)]
                    g1 = qr[off + XXS_QS + 8 * ib + 2 * l]
                    g2 = qr[off + XXS_QS + 8 * ib + 2 * l + 1]
                    yo = i * QK_K + 32 * ib + 8 * l
                    for j in range(4):
                        v1 = db * np.float32(grid[g1, j])
                        v2 = db * np.float32(grid[g2, j])
                        yr[yo + j] = -v1 if signs & (1 << j) else v1
                        yr[yo + 4 + j] = -v2 if signs & (1 << (j + 4)) else v2


@njit(nogil=True, **JIT)
def dequantize_iq3_s(q, out):
    """dequantize_row_iq3_s."""
    grid = S_DQ
    for r in range(out.shape[0]):
        qr = q[r]
        yr = out[r]
        for i in range(out.shape[1] // QK_K):
            off = i * S_BYTES
            d = get_f16(qr, off + S_D)
            for ib in range(QK_K // 32):
                sc = np.int64(qr[off + S_SCALES + ib // 2])
                sc = (sc >> 4) if ib % 2 else (sc & 15)
                db = d * np.float32(1 + 2 * sc)
                qh = np.int64(qr[off + S_QH + ib])
                for l in range(4):
                    signs = qr[off + S_SIGNS + 4 * ib + l]
                    g1 = np.int64(qr[off + S_QS + 8 * ib + 2 * l]) | (((qh >> (2 * l)) & 1) << 8)
                    g2 = np.int64(qr[off + S_QS + 8 * ib + 2 * l + 1]) | (((qh >> (2 * l + 1)) & 1) << 8)
                    yo = i * QK_K + 32 * ib + 8 * l
                    for j in range(4):
                        v1 = db * np.float32(grid[g1, j])
                        v2 = db * np.float32(grid[g2, j])
                        yr[yo + j] = -v1 if signs & (1 << j) else v1
                        yr[yo + 4 + j] = -v2 if signs & (1 << (j + 4)) else v2


KERNELS = {
    QType.IQ3_XXS: Kernel(quantize_iq3_xxs, dequantize_iq3_xxs),
    QType.IQ3_S: Kernel(quantize_iq3_s, dequantize_iq3_s),
}
