"""Quantized checkpoints read as float32: FP8, compressed-tensors, GPTQ and packed BitNet sources.

A port of llama.cpp's converter (conversion/base.py `ModelBase.dequant_model`, as vendored in
llama-cpp-python 0.3.36), run at the source level as the converter runs it before the family
mapping: `QuantizedSource` wraps a `Checkpoint` and shows the tensors dequant_model leaves in
`model_tensors` (weights dequantized to float32, scale/aux tensors consumed and hidden, GPTQ and
pack-quantized weights appended at the end as `new_tensors` are), with the same `read` /
`read_rows` interface. Values are those of the converter's torch arithmetic: every element is one
float32 multiply (`weight.float() * scale.float()`), so numpy gives the same bits. Rows are
decoded slab by slab; nothing is materialized whole.

Handled `quantization_config.quant_method`s (everything else is refused, as the converter refuses
it or because kquant lacks the family it belongs to):
  * `fp8`: `*_scale_inv` (block scales from `weight_block_size`, or per-tensor / per-channel when
    it is null), `*.qscale_weight` (Mistral); `*.activation_scale`, `*_activation_scale`,
    `*.qscale_act` dropped.
  * `compressed-tensors` with one config group: `float-quantized` / `int-quantized` /
    `naive-quantized` (`*.weight_scale`, strategy channel or block) and `pack-quantized` (int
    groups: `weight_packed`, `weight_scale`, `weight_shape`, optional `weight_zero_point`).
  * `gptq` 2/4/8 bits (`qweight`, `qzeros`, `scales`, `g_idx`); 3 bits refused as upstream does.
  * `bitnet`: `*.weight` packed ternary (uint8, 4 codes per byte) with `*.weight_scale` (inverted).
  * `mxfp4` (gpt-oss only): nothing is dequantized; the `*_blocks` / `*_scales` tensors are shown
    as they are and the family passes them through as MXFP4 tensors (models/gpt_oss.py).

Stricter than the converter (one-line InputError where it would crash or silently misread):
a scale whose shape is not exactly the one its weight needs (block scales: ceil(dim / block)
per blocked dim, so a partial last block is served as upstream's unpadding does), a missing
weight / scale / aux tensor, an FP8 tensor without a scale, a g_idx or packed size out of range.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import InputError, UnsupportedError
from .safetensors import DTYPE_BITS, FLOAT_DTYPES, TensorInfo

FP8_DTYPES = ("F8_E4M3", "F8_E5M2")
INT_NUMPY = {"I8": "<i1", "U8": "<u1", "I16": "<i2", "I32": "<i4", "I64": "<i8"}
SCALE_DTYPES = FLOAT_DTYPES  # torch's .float() of these is exact
GPTQ_PARTS = (".g_idx", ".qzeros", ".qweight", ".scales")  # dequant_model's removal order
MXFP4_ARCHS = ("GptOssForCausalLM",)  # families whose modules repack MXFP4 sources (the others' dequant_model refuses them)


def _fp8_table(exp_bits: int, man_bits: int, fn: bool) -> np.ndarray:
    """float32 value of each of the 256 codes (torch float8_e4m3fn when fn, float8_e5m2 else)."""
    bias = (1 << (exp_bits - 1)) - 1
    out = np.empty(256, np.float32)
    for code in range(256):
        s = -1.0 if code & 0x80 else 1.0
        e = (code >> man_bits) & ((1 << exp_bits) - 1)
        m = code & ((1 << man_bits) - 1)
        emax = (1 << exp_bits) - 1
        if fn and e == emax and m == (1 << man_bits) - 1:
            v = float("nan")  # e4m3fn: S.1111.111 is NaN, there is no infinity
        elif not fn and e == emax:
            v = s * float("inf") if m == 0 else float("nan")
        elif e == 0:
            v = s * m * 2.0 ** (1 - bias - man_bits)
        else:
            v = s * (1 + m / (1 << man_bits)) * 2.0 ** (e - bias)
        out[code] = v
    return out


# torch .float() of float8_e4m3fn / float8_e5m2 (exact: every FP8 value is a float32)
FP8_TO_F32 = {"F8_E4M3": _fp8_table(4, 3, True), "F8_E5M2": _fp8_table(5, 2, False)}


STORAGE = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "F8_E4M3": "<u1", "F8_E5M2": "<u1", **INT_NUMPY}
CHUNK_ELEMS = 1 << 20  # elements dequantized at once: bounds every temporary to a few MB
BAND_BYTES = 16 << 20  # GPTQ qweight columns (output rows) read at once, one pread per qweight row


def to_f32(a: np.ndarray, dtype: str) -> np.ndarray:
    """Stored values (numpy storage type of `dtype`, any shape) -> float32 (a new array)."""
    if dtype == "BF16":
        return (a.astype(np.uint32) << np.uint32(16)).view(np.float32)
    if dtype in FP8_TO_F32:
        return FP8_TO_F32[dtype].take(a)
    if dtype in STORAGE:
        return a.astype(np.float32)
    raise UnsupportedError(f"dtype {dtype} cannot be read as numbers")


def decode(raw: np.ndarray, dtype: str) -> np.ndarray:
    """1-D uint8 bytes of `dtype` -> float32 values (floats, FP8 via the tables, ints exactly)."""
    if dtype not in STORAGE:
        raise UnsupportedError(f"dtype {dtype} cannot be read as numbers")
    return to_f32(raw.view(STORAGE[dtype]), dtype)


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


@dataclass
class _Ctx:
    """What every dequantizer needs: the checkpoint, where to say a problem is, and the whole
    aux tensors (scales, packed GPTQ words) of the tensor being read, kept until it is done."""

    ckpt: object  # io.safetensors.Checkpoint
    where: str
    cache: dict = field(default_factory=dict)

    def info(self, name: str, what: str) -> TensorInfo:
        ti = self.ckpt.tensors.get(name)
        if ti is None:
            raise InputError(f"{self.where}: {what} {name!r} is missing")
        return ti

    def rows(self, ti: TensorInfo, a: int, b: int) -> np.ndarray:
        """Rows [a, b) of the first axis as float32, reading only those bytes."""
        row = int(np.prod(ti.shape[1:], dtype=np.int64)) * (DTYPE_BITS[ti.dtype] // 8)
        raw = self.ckpt.read_raw_range(ti.name, a * row, (b - a) * row)
        return decode(raw, ti.dtype).reshape((b - a, *ti.shape[1:]))

    def int_rows(self, ti: TensorInfo, a: int, b: int) -> np.ndarray:
        """Rows [a, b) of an integer tensor, reading only those bytes."""
        row = int(np.prod(ti.shape[1:], dtype=np.int64)) * (DTYPE_BITS[ti.dtype] // 8)
        raw = self.ckpt.read_raw_range(ti.name, a * row, (b - a) * row)
        return raw.view(INT_NUMPY[ti.dtype]).reshape((b - a, *ti.shape[1:]))

    def view(self, ti: TensorInfo, keep: bool = True) -> np.ndarray:
        """The whole tensor's stored values (numpy storage type), shaped; with `keep`, read once
        and kept until `done` (the aux tensors of the tensor being read)."""
        a = self.cache.get(ti.name)
        if a is None:
            a = self.ckpt.read_raw(ti.name).view(STORAGE[ti.dtype]).reshape(ti.shape)
            if keep:
                self.cache[ti.name] = a
        return a

    def ints(self, ti: TensorInfo, dtypes=("I32",), keep: bool = True) -> np.ndarray:
        """A whole integer tensor as its numpy integer type (see view)."""
        if ti.dtype not in dtypes:
            raise InputError(f"{self.where}: tensor {ti.name!r} has dtype {ti.dtype}, expected {' or '.join(dtypes)}")
        return self.view(ti, keep)

    def whole(self, ti: TensorInfo) -> np.ndarray:
        """A whole (small) tensor as float32 (see view)."""
        return to_f32(self.view(ti), ti.dtype)

    def done(self, names) -> None:
        for n in names:
            self.cache.pop(n, None)


@dataclass
class Dequantized:
    """One float32 tensor the converter builds from quantized parts."""

    name: str
    shape: tuple[int, ...]
    source_type: str  # e.g. "fp8 F8_E4M3 block 128x128", for inspect / --dry-run --json
    parts: tuple[str, ...]  # the checkpoint tensors it consumes (weight first)
    read_rows: Callable[[int, int], np.ndarray]
    fp8: bool = False  # counts as "dequantized from FP8" for --fp8-as-q8

    def info(self, path: str) -> TensorInfo:
        n = int(np.prod(self.shape, dtype=np.int64))
        return TensorInfo(self.name, "F32", tuple(self.shape), 0, 4 * n, path)


# conversion/base.py ModelBase.dequant_model.dequant_simple
def simple(ctx: _Ctx, wname: str, sname: str, block_size, method: str, fp8_flag: bool | None = None) -> Dequantized:
    """weight.float() * scale.float(), the scale repeated over blocks (block_size) or broadcast
    (per tensor / per row: trailing dims of size 1 appended, as upstream's unsqueeze(-1))."""
    w = ctx.info(wname, f"weight of scale {sname!r}")
    s = ctx.info(sname, "scale")
    if w.dtype not in FLOAT_DTYPES + FP8_DTYPES + ("I8",):
        raise UnsupportedError(f"{ctx.where}: quantized weight {wname!r} has dtype {w.dtype}; "
                               f"supported: {', '.join(FLOAT_DTYPES + FP8_DTYPES + ('I8',))}")
    if s.dtype not in SCALE_DTYPES:
        raise UnsupportedError(f"{ctx.where}: scale {sname!r} has dtype {s.dtype}; supported: {', '.join(SCALE_DTYPES)}")
    wsh, ssh = tuple(w.shape), tuple(s.shape)
    if not wsh:
        raise InputError(f"{ctx.where}: quantized weight {wname!r} is a scalar")
    bad = f"{ctx.where}: scale {sname!r} has shape {list(ssh)}, which does not fit weight {wname!r} of shape {list(wsh)}"
    if block_size is not None:
        if (not isinstance(block_size, (list, tuple)) or not block_size
                or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block_size)):
            raise InputError(f"{ctx.where}: block size {block_size!r} is not a list of positive integers")
        bs = tuple(block_size)
        if len(ssh) != len(wsh) or len(bs) > len(wsh):
            raise InputError(bad + f" with blocks {list(bs)}")
        off = len(ssh) - len(bs)
        blocks = (1,) * off + bs
        need = tuple(_ceil(d, b) if i >= off else d for i, (d, b) in enumerate(zip(wsh, blocks)))
        if ssh != need:
            raise InputError(bad + f" with blocks {list(bs)} (expected {list(need)})")
        desc = "block " + "x".join(map(str, bs))
    else:
        if len(ssh) > len(wsh):
            raise InputError(bad)
        padded = ssh + (1,) * (len(wsh) - len(ssh))
        if any(p not in (1, d) for p, d in zip(padded, wsh)):
            raise InputError(bad)
        blocks = None
        desc = "per-tensor" if all(p == 1 for p in padded) else "per-channel" if padded[1:] == (1,) * (len(wsh) - 1) else "scaled"

    def read_rows(a: int, b: int) -> np.ndarray:
        x = ctx.rows(w, a, b)  # weight.float()
        if blocks is None:
            sc = ctx.whole(s).reshape(padded)
            if padded[0] != 1:
                sc = sc[a:b]
        else:  # repeat_interleave then unpad, restricted to rows [a, b)
            r0, r1 = a // blocks[0], _ceil(b, blocks[0])
            sc = ctx.rows(s, r0, r1)[np.arange(a, b) // blocks[0] - r0]  # (b - a, *scale dims)
            if len(wsh) == 2 and wsh[1] % blocks[1] == 0:  # whole column blocks: broadcast, no repeat
                xv = x.reshape(b - a, wsh[1] // blocks[1], blocks[1])
                np.multiply(xv, sc[:, :, None], out=xv)
                return x
            idx = [np.arange(b - a)] + [np.arange(d) // k for d, k in zip(wsh[1:], blocks[1:])]
            sc = sc[np.ix_(*idx)]
        np.multiply(x, sc, out=x)  # one float32 multiply per element, as torch's
        return x

    is_fp8 = w.dtype in FP8_DTYPES if fp8_flag is None else fp8_flag
    return Dequantized(wname, wsh, f"{method} {w.dtype} {desc}", (wname, sname), read_rows, is_fp8)


# conversion/base.py ModelBase.dequant_model.dequant_gptq
def gptq(ctx: _Ctx, base: str, bits, checkpoint_format) -> Dequantized:
    """(scales[g_idx].float() * (weight - zeros[g_idx]).float()).T, read by output rows
    (columns of qweight)."""
    if bits == 3:
        raise UnsupportedError(f"{ctx.where}: 3-bit gptq dequantization is not yet implemented (as in llama.cpp's converter)")
    if bits not in (2, 4, 8):
        raise InputError(f"{ctx.where}: gptq 'bits' is {bits!r}, expected 2, 3, 4 or 8")
    qw = ctx.info(base + ".qweight", "GPTQ tensor")
    qz = ctx.info(base + ".qzeros", "GPTQ tensor")
    sc = ctx.info(base + ".scales", "GPTQ tensor")
    gi = ctx.info(base + ".g_idx", "GPTQ tensor")
    int_types = ("I8", "I16", "I32", "I64")
    if qw.dtype not in int_types or qz.dtype != qw.dtype:
        raise InputError(f"{ctx.where}: {qw.name!r} / {qz.name!r} have dtypes {qw.dtype} / {qz.dtype}, expected one integer dtype")
    if sc.dtype not in SCALE_DTYPES:
        raise UnsupportedError(f"{ctx.where}: scales {sc.name!r} have dtype {sc.dtype}; supported: {', '.join(SCALE_DTYPES)}")
    pack_bits = DTYPE_BITS[qw.dtype]
    pack = pack_bits // bits
    if len(qw.shape) != 2 or len(qz.shape) != 2 or len(sc.shape) != 2 or len(gi.shape) != 1:
        raise InputError(f"{ctx.where}: GPTQ tensors of {base!r} must be 2-D (g_idx 1-D)")
    n_in, n_out = qw.shape[0] * pack, qw.shape[1]
    n_groups = sc.shape[0]
    if sc.shape[1] != n_out or qz.shape != (n_groups, n_out // pack) or n_out % pack or gi.shape[0] != n_in:
        raise InputError(f"{ctx.where}: GPTQ shapes of {base!r} do not fit: qweight {list(qw.shape)}, qzeros {list(qz.shape)}, "
                         f"scales {list(sc.shape)}, g_idx {list(gi.shape)} at {bits} bits")
    g_idx = ctx.ints(gi, ("I32", "I64"), keep=False).astype(np.int64)
    if g_idx.size and (g_idx.min() < 0 or g_idx.max() >= n_groups):
        raise InputError(f"{ctx.where}: {gi.name!r} has group indices outside [0, {n_groups})")
    maxq = (1 << bits) - 1
    shifts = np.arange(0, pack_bits, bits)
    zero_off = 1 if checkpoint_format == "gptq" else 0  # gptq_v2 does not offset the zeros

    wide = np.int64 if pack_bits == 64 else np.int32
    sh = shifts.astype(wide)

    item = DTYPE_BITS[qw.dtype] // 8
    band_cols = max(1, BAND_BYTES // max(qw.shape[0] * item, 1))
    band = {"lo": 0, "hi": 0, "q": None}  # qweight columns [lo, hi), read row segment by row segment

    def qcols(a: int, b: int) -> np.ndarray:
        if not (band["lo"] <= a and b <= band["hi"]):
            lo, hi = a, min(n_out, max(b, a + band_cols))
            row = n_out * item
            q = np.empty((qw.shape[0], hi - lo), INT_NUMPY[qw.dtype])
            for r in range(qw.shape[0]):
                q[r] = ctx.ckpt.read_raw_range(qw.name, r * row + lo * item, (hi - lo) * item).view(INT_NUMPY[qw.dtype])
            band.update(lo=lo, hi=hi, q=q)
        out = band["q"][:, a - band["lo"]: b - band["lo"]]
        if b == n_out:  # the tensor is done
            band.update(lo=0, hi=0, q=None)
        return out

    def read_rows(a: int, b: int) -> np.ndarray:
        q = qcols(a, b).astype(wide)  # (n_in / pack, b - a)
        w = ((q[:, None, :] >> sh[None, :, None]) & maxq).reshape(n_in, b - a)
        z = ctx.ints(qz, int_types)[:, a // pack: _ceil(b, pack)].astype(wide)
        z = ((z[:, :, None] >> sh[None, None, :]) & maxq).reshape(n_groups, -1)
        z = z[:, a - (a // pack) * pack:][:, : b - a] + zero_off
        s = to_f32(ctx.view(sc)[:, a:b], sc.dtype)
        w -= z[g_idx]
        out = s[g_idx]
        out *= w.astype(np.float32)  # scales[g_idx].float() * (weight - zeros[g_idx]).float()
        return np.ascontiguousarray(out.T)

    return Dequantized(base + ".weight", (n_out, n_in), f"gptq int{bits} {n_groups} groups",
                       (qw.name, qz.name, sc.name, gi.name), read_rows)


# conversion/base.py ModelBase.dequant_model.dequant_packed
def packed(ctx: _Ctx, base: str, num_bits: int, group_size: int) -> Dequantized:
    """compressed-tensors pack-quantized: int32 words holding 32 // num_bits values along dim 1,
    (q - offset) * scale per group; the zero point, if any, packed along dim 0."""
    wp = ctx.info(base + "_packed", "packed weight")
    sc = ctx.info(base + "_scale", "scale of packed weight")
    sh = ctx.info(base + "_shape", "shape of packed weight")
    zp = ctx.ckpt.tensors.get(base + "_zero_point")
    if wp.dtype != "I32":
        raise InputError(f"{ctx.where}: {wp.name!r} has dtype {wp.dtype}, expected I32")
    if sc.dtype not in SCALE_DTYPES:
        raise UnsupportedError(f"{ctx.where}: scale {sc.name!r} has dtype {sc.dtype}; supported: {', '.join(SCALE_DTYPES)}")
    shape = tuple(int(v) for v in ctx.ints(sh, ("I32", "I64"), keep=False).reshape(-1))
    if len(shape) != 2 or min(shape) <= 0:
        raise InputError(f"{ctx.where}: {sh.name!r} holds {list(shape)}, expected two positive sizes")
    rows, cols = shape
    shifts = np.arange(0, 32 - (num_bits - 1), num_bits)
    per_word = len(shifts)
    mask = (1 << num_bits) - 1
    n_groups = _ceil(cols, group_size)
    if cols % group_size:
        raise InputError(f"{ctx.where}: group size {group_size} does not divide the {cols} columns of {base!r}")
    if len(wp.shape) != 2 or wp.shape[0] != rows or wp.shape[1] * per_word < cols:
        raise InputError(f"{ctx.where}: {wp.name!r} has shape {list(wp.shape)}, which does not hold {list(shape)} at {num_bits} bits")
    if tuple(sc.shape) != (rows, n_groups):
        raise InputError(f"{ctx.where}: scale {sc.name!r} has shape {list(sc.shape)}, expected {[rows, n_groups]}")
    if zp is not None:
        if zp.dtype != "I32" or len(zp.shape) != 2 or zp.shape[1] != n_groups or zp.shape[0] * per_word < rows:
            raise InputError(f"{ctx.where}: zero point {zp.name!r} has shape {list(zp.shape)} / {zp.dtype}, "
                             f"which does not fit {[rows, n_groups]} at {num_bits} bits")

    def read_rows(a: int, b: int) -> np.ndarray:
        w = ctx.int_rows(wp, a, b)
        q = ((w[:, :, None] >> shifts[None, None, :].astype(np.int32)) & mask).reshape(b - a, -1)[:, :cols]
        q = q.reshape(b - a, n_groups, group_size)
        if zp is None:
            q = q - (1 << (num_bits - 1))
        else:
            z = ctx.int_rows(zp, a // per_word, _ceil(b, per_word))
            z = ((z[:, None, :] >> shifts[None, :, None].astype(np.int32)) & mask).reshape(-1, n_groups)
            z = z[a - (a // per_word) * per_word:][: b - a]
            q = q - z[:, :, None]
        s = ctx.rows(sc, a, b)
        return (q.astype(np.float32) * s[:, :, None]).reshape(b - a, cols)

    kind = f"compressed-tensors pack-quantized int{num_bits} group {group_size}" + (" asymmetric" if zp is not None else "")
    parts = (wp.name, sh.name, sc.name) + ((zp.name,) if zp is not None else ())
    return Dequantized(base, shape, kind, parts, read_rows)


# conversion/base.py ModelBase.dequant_model.dequant_bitnet
def bitnet(ctx: _Ctx, wname: str, sname: str) -> Dequantized:
    """Packed ternary weights: uint8 [rows / 4, cols], code (byte >> 2k) & 3 of plane k, value
    (code - 1) / scale (the scale is stored inverted); planes stacked along rows (output row
    r = plane r // (rows / 4), packed row r % (rows / 4)); one float32 division per element."""
    w = ctx.info(wname, f"weight of scale {sname!r}")
    s = ctx.info(sname, "scale")
    if w.dtype != "U8":
        raise InputError(f"{ctx.where}: packed BitNet weight {wname!r} has dtype {w.dtype}, expected U8")
    if s.dtype not in SCALE_DTYPES:
        raise UnsupportedError(f"{ctx.where}: scale {sname!r} has dtype {s.dtype}; supported: {', '.join(SCALE_DTYPES)}")
    if len(w.shape) != 2 or min(w.shape) <= 0:
        raise InputError(f"{ctx.where}: packed BitNet weight {wname!r} has shape {list(w.shape)}, expected 2-D")
    if int(np.prod(s.shape, dtype=np.int64)) != 1:
        raise InputError(f"{ctx.where}: BitNet scale {sname!r} has shape {list(s.shape)}, expected one value")
    r4, cols = w.shape

    def read_rows(a: int, b: int) -> np.ndarray:
        inv = ctx.whole(s).reshape(())
        out = np.empty((b - a, cols), np.float32)
        r = a
        while r < b:  # runs of rows within one plane
            plane, pr = divmod(r, r4)
            e = min(b, (plane + 1) * r4)
            codes = (ctx.int_rows(w, pr, pr + e - r) >> np.uint8(2 * plane)) & np.uint8(3)
            np.subtract(codes, np.float32(1), out=out[r - a: e - a], dtype=np.float32)
            r = e
        out /= inv
        return out

    return Dequantized(wname, (4 * r4, cols), "bitnet ternary U8 (4 per byte)", (wname, sname), read_rows)


# conversion/base.py ModelBase.repack_mxfp4_blocks (= conversion/gpt_oss.py GptOssModel.transform_nibble_layout
# + repack_mxfp4: both give ggml's block_mxfp4)
def repack_mxfp4(packed: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """OCP MX FP4 rows -> ggml block_mxfp4 rows, lossless (only bits move).

    packed (rows, cols / 2) uint8: element 2i in the low nibble, 2i + 1 in the high one;
    scales (rows, cols / 32) uint8 E8M0. Each output block is the scale byte, then 16 bytes where
    byte j holds element j in the low nibble and element j + 16 in the high one (the 4-bit codes
    index the same E2M1 table on both sides)."""
    rows, nb = scales.shape
    src = packed.reshape(rows, nb, 16)
    vals = np.stack((src & 0x0F, src >> 4), axis=-1).reshape(rows, nb, 32)
    out = np.empty((rows, nb, 17), dtype=np.uint8)
    out[:, :, 0] = scales
    out[:, :, 1:] = vals[:, :, :16] | (vals[:, :, 16:] << 4)
    return out.reshape(rows, nb * 17)


def qconfig(folder: Path, cfg: dict | None, where: str) -> dict | None:
    qc = cfg.get("quantization_config") if isinstance(cfg, dict) else None
    if (folder / "hf_quant_config.json").is_file():
        raise UnsupportedError(f"{folder}: hf_quant_config.json (NVIDIA ModelOpt: NVFP4 / FP8) checkpoints are not supported")
    if qc is None:
        return None
    if not isinstance(qc, dict):
        raise InputError(f"{where}: 'quantization_config' is {type(qc).__name__}, expected an object")
    return qc


@dataclass
class Plan:
    """What dequant_model does to a checkpoint: the dequantized tensors, in place or appended."""

    method: str | None
    replaced: dict[str, Dequantized] = field(default_factory=dict)  # weight name -> its dequantizer (in place)
    appended: dict[str, Dequantized] = field(default_factory=dict)  # new name -> dequantizer (at the end)
    removed: set[str] = field(default_factory=set)
    ctx: _Ctx | None = None  # shared by the dequantizers (their cache of aux tensors)
    raw: dict[str, str] = field(default_factory=dict)  # tensors kept quantized for the family -> their scheme


# conversion/base.py ModelBase.dequant_model (and prepare_tensors' NVFP4 / MXFP4 detection)
def plan(ckpt, qc: dict | None, where: str) -> Plan:
    """Which tensors dequant_model replaces, adds and removes, with their dequantizers."""
    if not qc:
        return Plan(None)
    method = qc.get("quant_method")
    ctx = _Ctx(ckpt, where)
    p = Plan(method, ctx=ctx)
    names = list(ckpt.tensors)
    if method is None:
        return p
    if method == "fp8":
        bs = qc.get("weight_block_size")
        for n in names:
            if n.endswith("_scale_inv"):
                wn = n.removesuffix("_scale_inv")
                p.replaced[wn] = simple(ctx, wn, n, bs, "fp8")
                p.removed.add(n)
            if n.endswith(".activation_scale") or n.endswith("_activation_scale"):  # unused
                p.removed.add(n)
            if n.endswith(".qscale_weight"):  # Mistral naming
                wn = n.removesuffix("qscale_weight") + "weight"
                p.replaced[wn] = simple(ctx, wn, n, bs, "fp8")
                p.removed.add(n)
            if n.endswith(".qscale_act"):
                p.removed.add(n)
    elif method == "gptq":
        bits = qc.get("bits")
        fmt = qc.get("checkpoint_format", "gptq")
        for n in names:
            if n.endswith(".qweight"):
                base = n.removesuffix(".qweight")
                p.appended[base + ".weight"] = gptq(ctx, base, bits, fmt)
                p.removed.update(base + s for s in GPTQ_PARTS)
    elif method == "compressed-tensors":
        fmt = qc.get("format")
        groups = qc.get("config_groups")
        if not isinstance(fmt, str) or not isinstance(groups, dict) or not groups:
            raise InputError(f"{where}: compressed-tensors 'quantization_config' needs 'format' and 'config_groups'")
        if fmt == "nvfp4-pack-quantized" or fmt == "mixed-precision":
            raise UnsupportedError(f"{where}: compressed-tensors format {fmt!r} (NVFP4) is not supported")
        if len(groups) > 1:
            raise UnsupportedError(f"{where}: compressed-tensors with several config groups is not supported "
                                   "(llama.cpp's converter: \"Can't handle multiple config groups for compressed-tensors yet\")")
        g = next(iter(groups.values()))
        wc = g.get("weights") if isinstance(g, dict) else None
        if not isinstance(wc, dict):
            raise InputError(f"{where}: compressed-tensors config group has no 'weights' object")
        if fmt in ("float-quantized", "int-quantized", "naive-quantized"):
            strategy = wc.get("strategy")
            if strategy not in ("channel", "block"):
                raise UnsupportedError(f"{where}: compressed-tensors {fmt} strategy {strategy!r} is not supported "
                                       "(llama.cpp's converter takes 'channel' or 'block')")
            if wc.get("group_size") is not None:
                raise UnsupportedError(f"{where}: compressed-tensors {fmt} with a group_size is not supported (as in llama.cpp's converter)")
            block = wc.get("block_structure")
            is_fp8 = fmt == "float-quantized" and wc.get("type") == "float" and wc.get("num_bits") == 8
            for n in names:
                if n.endswith(".weight_scale"):
                    wn = n.removesuffix("_scale")
                    p.replaced[wn] = simple(ctx, wn, n, block, f"compressed-tensors {fmt}", is_fp8)
                    p.removed.add(n)
        elif fmt == "pack-quantized":
            nb, gs = wc.get("num_bits"), wc.get("group_size")
            if wc.get("strategy") != "group" or wc.get("type", "int") != "int":
                raise UnsupportedError(f"{where}: compressed-tensors pack-quantized takes strategy 'group' of type 'int' "
                                       f"(got {wc.get('strategy')!r}, {wc.get('type', 'int')!r})")
            if not (isinstance(nb, int) and 1 <= nb <= 16 and isinstance(gs, int) and gs > 0) or isinstance(nb, bool) or isinstance(gs, bool):
                raise InputError(f"{where}: compressed-tensors pack-quantized num_bits {nb!r} / group_size {gs!r} are not positive integers")
            for n in names:
                if n.endswith(".weight_packed"):
                    base = n.removesuffix("_packed")
                    d = packed(ctx, base, nb, gs)
                    p.appended[base] = d
                    p.removed.update(d.parts)
        else:
            raise UnsupportedError(f"{where}: quant format {fmt!r} for method 'compressed-tensors' is not supported")
    elif method == "mxfp4":
        # GptOssModel.dequant_model skips dequantization: its `*_blocks` / `*_scales` pairs are
        # repacked into MXFP4 tensors by the family (models/gpt_oss.py), nothing is dequantized here
        for n in names:
            if n.endswith(("_blocks", "_scales")):
                p.raw[n] = "mxfp4"
    elif method == "bitnet":
        for n in names:
            if n.endswith(".weight_scale"):
                wn = n.removesuffix("_scale")
                p.replaced[wn] = bitnet(ctx, wn, n)
                p.removed.add(n)
    elif method == "modelopt":
        raise UnsupportedError(f"{where}: quant method {method!r} is not supported by kquant")
    else:
        raise UnsupportedError(f"{where}: quant method {method!r} is not supported (llama.cpp's converter: "
                               "\"Quant method is not yet supported\")")
    return p


class QuantizedSource:
    """A Checkpoint as the converter sees it after dequant_model (see the module docstring)."""

    def __init__(self, ckpt, qplan: Plan, where: str):
        self.ckpt = ckpt
        self.folder = ckpt.folder
        self.files = ckpt.files
        self.config = ckpt.config
        self.method = qplan.method
        self._ctx = qplan.ctx
        self._deq: dict[str, Dequantized] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self.source_types: dict[str, str] = {}
        dropped = qplan.removed - set(qplan.replaced) - set(qplan.appended)
        for n, ti in ckpt.tensors.items():
            if n in dropped:
                continue
            d = qplan.replaced.get(n)
            if d is not None:
                self._deq[n] = d
                self.tensors[n] = d.info(ti.path)
                self.source_types[n] = d.source_type
            else:
                if ti.dtype in FP8_DTYPES:
                    raise InputError(f"{where}: tensor {n!r} is {ti.dtype} but has no scale tensor")
                self.tensors[n] = ti
                self.source_types[n] = qplan.raw.get(n, ti.dtype)
        for n, d in qplan.appended.items():
            # a dict assignment: an existing key keeps its place, a new one goes last (new_tensors)
            self._deq[n] = d
            self.tensors[n] = d.info(ckpt.tensors[d.parts[0]].path)
            self.source_types[n] = d.source_type
        self.fp8_dequantized = {n for n, d in self._deq.items() if d.fp8}
        self.consumed = {n: d.parts for n, d in self._deq.items()}
        self.dropped = sorted(dropped - {p for d in self._deq.values() for p in d.parts})

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows start:stop of the first axis as float32, dequantized CHUNK_ELEMS at a time."""
        d = self._deq.get(name)
        if d is None:
            return self.ckpt.read_rows(name, start, stop)
        n = d.shape[0]
        if not (0 <= start <= stop <= n):
            raise ValueError(f"tensor {name!r} rows [{start}, {stop}) outside [0, {n}]")
        row = int(np.prod(d.shape[1:], dtype=np.int64))
        out = np.empty((stop - start, *d.shape[1:]), np.float32)
        step = max(1, CHUNK_ELEMS // max(row, 1))
        for r in range(start, stop, step):
            e = min(stop, r + step)
            out[r - start: e - start] = d.read_rows(r, e)
        if stop == n:  # the tensor is done: its cached aux tensors go
            self._ctx.done(d.parts)
        return out

    def read(self, name: str) -> np.ndarray:
        d = self._deq.get(name)
        if d is None:
            return self.ckpt.read(name)
        return self.read_rows(name, 0, d.shape[0])

    def read_raw(self, name: str) -> np.ndarray:
        return self.ckpt.read_raw(name)

    def read_raw_range(self, name: str, offset: int, nbytes: int) -> np.ndarray:
        if name in self._deq:
            raise ValueError(f"tensor {name!r} is dequantized: it has no raw bytes")
        return self.ckpt.read_raw_range(name, offset, nbytes)

    def close(self) -> None:
        self.ckpt.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def check_mxfp4_arch(qc: dict, cfg: dict | None, where: str) -> None:
    """UnsupportedError for an MXFP4 checkpoint of a family that does not repack MXFP4 sources."""
    archs = cfg.get("architectures") if isinstance(cfg, dict) else None
    arch = archs[0] if isinstance(archs, list) and archs else None
    if qc.get("quant_method") == "mxfp4" and arch not in MXFP4_ARCHS:
        raise UnsupportedError(f"{where}: MXFP4 checkpoints are supported for {', '.join(MXFP4_ARCHS)} only, not {arch!r} "
                               "(llama.cpp's converter: \"Quant method is not yet supported\")")


def wrap(ckpt, cfg: dict | None, where: str):
    """`ckpt` itself when config.json has no quantization_config, else its QuantizedSource."""
    qc = qconfig(Path(ckpt.folder), cfg, where)
    if not qc or qc.get("quant_method") is None:
        return ckpt
    check_mxfp4_arch(qc, cfg, where)
    return QuantizedSource(ckpt, plan(ckpt, qc, where), where)
