"""The search tables of ggml's 2-bit and 1-bit i-quants: a port of ggml-quants.c `iq2xs_init_impl`.

For each grid (IQ2_XXS: 256 points, IQ2_XS: 512, IQ2_S: 1024, IQ1_S and IQ1_M: 2048) three arrays,
laid out exactly as ggml's `iq2_data[gindex]`:

    grid        int8 (n, 8)   grid point k: 2 l_i + 1 for the 8 two-bit levels of kgrid[k]
    kmap        int32 (43692) kmap[u] for a packed level vector u (u = sum l_i << 2i): the grid
                              index when u is on the grid, else -(offset + 1)
    neighbours  uint16        at `offset`: n, then the n grid indices nearest to u (squared
                              distance, then index, ascending) over the `nwant` smallest distances

and, for the kernels' searches, the neighbour lists laid out as SIMD lanes (`lists()`):

    kx          int32 (43692) kmap[u] for u on the grid, else -1 - (start / PAD << 8 | npad / PAD):
                              u's candidates, padded to npad (a multiple of PAD) with copies of
                              the last (never chosen over the first), are nidx[start:start+npad]
    codes       int8 (8 P)    their coordinates (grid bytes 2 l + 1), one list in one piece:
                              coordinate i of candidate c at codes[8 start + i npad + c]
    nidx        uint16 (P,)   each candidate's grid index, in ggml's order
    levels      int64 (n, 8)  l_i of grid point k

kmap and neighbours and the lane lists are built once (numpy, under a second on one core), then
stored in the table cache beside numba's cache (kquant.ggml.kernels._tablecache, keyed by a hash
of this module's source and the grid): a later process loads them (milliseconds) instead of
building them (seconds). They are kept per process (lru_cache) and handed to the compiled
kernels through `lists()`, which reads them from slots (address, length) in a process-wide array
that compiled code finds by a symbol name (`kquant_iqgrid_slots`, llvmlite's add_symbol): the
cached kernels refer to the name, not to an address, so they load from numba's cache as they
are. Python fills a grid's slots when it loads its tables (search_lists, or a kernel's `prepare`
before its first call); a kernel that finds them empty loads them through an object-mode
block, which numba compiles in each process that runs it (about 0.2 s: the warm start avoids it).
"""

from __future__ import annotations

import threading
from functools import lru_cache

import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir as llvm_ir
from numba import carray, njit, objmode, types
from numba.extending import intrinsic

from ._iq_grids import KGRID_1BIT_2048, KGRID_2BIT_256, KGRID_2BIT_512, KGRID_2BIT_1024
from ._tablecache import key_of, load_or_build, module_source

KMAP_SIZE = 43692  # iq2xs_init_impl `kmap_size`
# iq2_data_index: 0 IQ2_XXS, 1 IQ2_XS, 2 IQ1_S and IQ1_M, 3 IQ2_S; with the grid and `nwant`
GRID_XXS, GRID_XS, GRID_1S, GRID_S = 0, 1, 2, 3
_KGRIDS = {GRID_XXS: (KGRID_2BIT_256, 2), GRID_XS: (KGRID_2BIT_512, 2), GRID_1S: (KGRID_1BIT_2048, 3),
           GRID_S: (KGRID_2BIT_1024, 1)}


def grid_points(kgrid: np.ndarray) -> np.ndarray:
    """int8 (n, 8): 2 l_i + 1 with l_i = (kgrid[k] >> 2i) & 3 (iq2xs_init_impl's `the_grid`)."""
    shifts = 2 * np.arange(8, dtype=np.uint16)
    return (2 * ((kgrid[:, None] >> shifts) & 3) + 1).astype(np.int8)


_CHUNK = 1024  # off-grid points per step of _build ((_CHUNK, n) distance matrices)


def _build(grid, nwant):
    """kmap and neighbours as iq2xs_init_impl builds them, vectorized over chunks of off-grid
    points u (ascending, as ggml assigns the offsets). ggml qsorts the (d2, j) pairs of all grid
    points j and keeps those within the nwant smallest distinct distances: here the nwant-th
    smallest distance of each u is found by repeated minima and the kept pairs are sorted by
    (u, d2, j), the same lists in the same order. (numpy, not numba: this runs once per machine,
    and compiling it cost more than running it.)"""
    n = grid.shape[0]
    g = grid.astype(np.int16)
    lv = (g - 1) // 2
    kmap = np.full(KMAP_SIZE, -1, dtype=np.int32)
    kmap[(lv.astype(np.int32) << 2 * np.arange(8)).sum(axis=1)] = np.arange(n, dtype=np.int32)
    # d2 of u to every grid point = half[0][u & 255] + half[1][u >> 8]: coordinates 0-3 and 4-7
    pat = (2 * ((np.arange(256)[:, None] >> 2 * np.arange(4)) & 3) + 1).astype(np.int16)  # (256, 4)
    half = [((g[None, :, 4 * h:4 * h + 4] - pat[:, None, :]) ** 2).sum(axis=2, dtype=np.int16) for h in (0, 1)]
    off = np.flatnonzero(kmap < 0)
    pieces, total = [], 0
    for c in range(0, off.size, _CHUNK):
        u = off[c:c + _CHUNK]
        d2 = half[0][u & 255] + half[1][u >> 8]  # (c, n) int16, at most 8 * 36
        thr = d2.min(axis=1)  # then the 2nd, ... nwant-th smallest distance of each u
        for _ in range(nwant - 1):
            thr = np.where(d2 > thr[:, None], d2, np.int16(0x7FFF)).min(axis=1)
        r, j = np.nonzero(d2 <= thr[:, None])
        order = np.lexsort((j, d2[r, j], r))
        r, j = r[order], j[order]
        cnt = np.bincount(r, minlength=u.size)
        start = np.concatenate(([0], np.cumsum(cnt + 1)[:-1]))  # of each list in this piece
        kmap[u] = -(total + start + 1)
        piece = np.empty(len(r) + u.size, dtype=np.uint16)
        piece[start] = cnt
        first = np.concatenate(([0], np.cumsum(cnt)[:-1]))  # of each u's pairs in r, j
        piece[start[r] + 1 + np.arange(len(r)) - first[r]] = j
        pieces.append(piece)
        total += piece.size
    return kmap, np.concatenate(pieces)


_lock = threading.Lock()

# (address, length) of each table handed to compiled code: slot 4 which + j for lists(which)'s
# j-th array, others claimed by kernel modules (SLOT_*); an address is 0 until published
NSLOTS = 32
_SLOTS = np.zeros(2 * NSLOTS, dtype=np.int64)
_SLOT_SYMBOL = "kquant_iqgrid_slots"
llvm_binding.add_symbol(_SLOT_SYMBOL, _SLOTS.ctypes.data)
_published: dict[int, np.ndarray] = {}  # the arrays behind the slots, kept alive


def publish(slot: int, a: np.ndarray) -> None:
    """Hand the C-contiguous array a to compiled code as slot `slot`: its address, then its length, which
    compiled code reads (acquire) as the slot's published flag, so a nonzero length never meets address 0."""
    a = np.ascontiguousarray(a)
    _published[slot] = a
    _SLOTS[2 * slot] = a.ctypes.data
    _SLOTS[2 * slot + 1] = a.size


def _slot_word(f, i):
    i64 = llvm_ir.IntType(64)
    mod = f.module
    gv = mod.globals.get(_SLOT_SYMBOL)
    if gv is None:
        gv = llvm_ir.GlobalVariable(mod, llvm_ir.ArrayType(i64, 2 * NSLOTS), _SLOT_SYMBOL)
        gv.linkage = "external"
    return f.load_atomic(f.gep(gv, [llvm_ir.Constant(llvm_ir.IntType(32), 0), i]), "acquire", 8)


@intrinsic
def slot_len(typingctx, slot):
    """The length of the array published in `slot` (0: none yet)."""
    sig = types.int64(types.int64)

    def codegen(context, builder, signature, args):
        return _slot_word(builder, builder.add(builder.mul(args[0], args[0].type(2)), args[0].type(1)))

    return sig, codegen


@intrinsic
def slot_ptr(typingctx, slot):
    """The address of the array published in `slot`, as a void pointer (for numba.carray)."""
    sig = types.voidptr(types.int64)

    def codegen(context, builder, signature, args):
        w = _slot_word(builder, builder.mul(args[0], args[0].type(2)))
        return builder.inttoptr(w, llvm_ir.IntType(8).as_pointer())

    return sig, codegen


PAD = 8  # candidate lists padded to a multiple of this (whole vectors of search lanes)


def _lane_lists(grid, kmap, nb):
    """(kx, codes, nidx) of the neighbour lists (layout in the module docstring)."""
    off = np.flatnonzero(kmap < 0)
    o = -kmap[off] - 1  # offsets of the lists in nb
    n = nb[o].astype(np.int64)
    padded = (n + PAD - 1) // PAD * PAD
    start = np.concatenate(([0], np.cumsum(padded)[:-1]))
    assert padded.max() // PAD < 256 and start[-1] // PAD < 1 << 22
    kx = kmap.copy()
    kx[off] = -1 - ((start // PAD) << 8 | padded // PAD)
    first = np.repeat(start, padded)  # (P,): the start of each candidate's list
    cand = np.arange(first.size) - first  # position within its list
    nidx = nb[np.repeat(o + 1, padded) + np.minimum(cand, np.repeat(n - 1, padded))]  # padding: the last
    # codes: list by list, coordinate-major within a list: 8 rows of npad bytes
    base = 8 * first + cand
    codes = np.empty(8 * nidx.size, dtype=np.int8)
    pts = grid[nidx]  # (P, 8)
    rowlen = np.repeat(padded, padded)
    for i in range(8):
        codes[base + i * rowlen] = pts[:, i]
    return kx, codes, nidx


@lru_cache(maxsize=None)
def _tables(which: int) -> dict:
    """iq2_data[which]'s grid, kmap and neighbours and their lane lists: loaded from the table
    cache beside numba's (kquant.ggml.kernels._tablecache), or built and stored there."""
    kgrid, nwant = _KGRIDS[which]
    grid = grid_points(kgrid)

    def build():
        kmap, nb = _build(grid, nwant)
        kx, codes, nidx = _lane_lists(grid, kmap, nb)
        return {"kmap": kmap, "neighbours": nb, "kx": kx, "codes": codes, "nidx": nidx}

    t = load_or_build(f"iq2xs_init_impl-{len(grid)}", key_of(module_source(__name__), grid, nwant), build)
    t = dict(t, grid=grid, levels=(grid.astype(np.int64) - 1) // 2)
    for j, name in enumerate(("kx", "codes", "nidx", "levels")):  # levels' length, the flag, last
        publish(4 * which + j, t[name])
    return t


def search_tables(which: int):
    """(grid, kmap, neighbours) of iq2_data[which], loaded or built on first use."""
    with _lock:
        t = _tables(which)
    return t["grid"], t["kmap"], t["neighbours"]


def search_lists(which: int):
    """(kx, codes, nidx, levels) of iq2_data[which] for the lane searches."""
    with _lock:
        t = _tables(which)
    return t["kx"], t["codes"], t["nidx"], t["levels"]


def prepare(which: int):
    """A function loading grid `which`'s tables for compiled code (a kernel's `prepare`)."""
    return lambda: search_lists(which)


@njit(cache=True, no_cfunc_wrapper=True)
def lists(which):
    """search_lists(which) from compiled code: the published slots (loaded in object mode first
    where this process has not loaded them yet)."""
    s = 4 * which
    if slot_len(s + 3) == 0:
        with objmode():
            search_lists(which)
    n = slot_len(s + 3)
    return (carray(slot_ptr(s), slot_len(s), np.int32), carray(slot_ptr(s + 1), slot_len(s + 1), np.int8),
            carray(slot_ptr(s + 2), slot_len(s + 2), np.uint16), carray(slot_ptr(s + 3), (n // 8, 8), np.int64))
