"""Quantized checkpoints for tests: a float tiny-Llama folder re-written in each published source
format (FP8 with block / per-channel / per-tensor scales, compressed-tensors float / int / pack
quantized, GPTQ 2/4/8 bits), with numpy only. The quantizers need not match any tool's rounding:
both converters read the bytes written here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from kquant.io.quantized import FP8_TO_F32
from kquant.io.safetensors import Checkpoint, write_safetensors

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "fixtures" / "tiny-llama"
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

_E4M3 = FP8_TO_F32["F8_E4M3"]
_POS = np.nonzero(np.isfinite(_E4M3[:128]))[0]  # codes 0..126, increasing values
_POS_VALS = _E4M3[_POS]


def to_e4m3(x: np.ndarray) -> np.ndarray:
    """float32 -> F8_E4M3 codes (nearest, saturating at 448)."""
    a = np.minimum(np.abs(x), 448.0).astype(np.float32)
    i = np.clip(np.searchsorted(_POS_VALS, a), 1, len(_POS_VALS) - 1)
    lo, hi = _POS_VALS[i - 1], _POS_VALS[i]
    code = np.where(a - lo <= hi - a, _POS[i - 1], _POS[i]).astype(np.uint8)
    return code | np.where(x < 0, np.uint8(0x80), np.uint8(0))


def _blocks_amax(w: np.ndarray, bs: tuple[int, int]) -> np.ndarray:
    r, c = w.shape
    nr, nc = -(-r // bs[0]), -(-c // bs[1])
    pad = np.zeros((nr * bs[0], nc * bs[1]), np.float32)
    pad[:r, :c] = np.abs(w)
    return pad.reshape(nr, bs[0], nc, bs[1]).max(axis=(1, 3))


def _is_linear(name: str) -> bool:
    return name.endswith(".weight") and any(f".{m}." in name for m in LINEAR)


def fp8(w: np.ndarray, scheme: str, block=(128, 128)):
    """(codes, scale) of one weight: scheme 'block' (scale per block), 'channel' ((rows, 1)),
    'channel1d' ((rows,)), 'tensor' (shape []), 'tensor1' (shape [1])."""
    if scheme == "block":
        s = np.maximum(_blocks_amax(w, block), 1e-8) / 448.0
        full = np.repeat(np.repeat(s, block[0], 0), block[1], 1)[: w.shape[0], : w.shape[1]]
        return to_e4m3(w / full), s.astype(np.float32)
    if scheme.startswith("channel"):
        s = np.maximum(np.abs(w).max(axis=1), 1e-8) / 448.0
        codes = to_e4m3(w / s[:, None])
        return codes, (s[:, None] if scheme == "channel" else s).astype(np.float32)
    s = np.float32(max(np.abs(w).max(), 1e-8) / 448.0)
    return to_e4m3(w / s), (np.array(s) if scheme == "tensor" else np.array([s])).astype(np.float32)


def _int_quant(w: np.ndarray, bits: int, group: int, asym: bool = False):
    """Per (row, group) integer quantization: (q in [0, 2^bits), scale, zero) with w ~ (q - zero) * scale."""
    r, c = w.shape
    g = w.reshape(r, c // group, group)
    if asym:
        lo, hi = g.min(axis=2), g.max(axis=2)
        scale = np.maximum(hi - lo, 1e-8) / ((1 << bits) - 1)
        zero = np.clip(np.round(-lo / scale), 0, (1 << bits) - 1).astype(np.int64)
    else:
        scale = np.maximum(np.abs(g).max(axis=2), 1e-8) / ((1 << (bits - 1)) - 1)
        zero = np.full(scale.shape, 1 << (bits - 1), np.int64)
    q = np.clip(np.round(g / scale[:, :, None]) + zero[:, :, None], 0, (1 << bits) - 1).astype(np.int64)
    return q.reshape(r, c), scale.astype(np.float32), zero


def _pack(q: np.ndarray, bits: int, axis: int, word_bits: int = 32) -> np.ndarray:
    """Pack unsigned `bits`-bit values along `axis` into int32 words (value j at bit j*bits), padding with 0."""
    per = len(range(0, word_bits - (bits - 1), bits))
    q = np.moveaxis(q, axis, -1)
    n = q.shape[-1]
    pad = -(-n // per) * per - n
    q = np.concatenate([q, np.zeros(q.shape[:-1] + (pad,), q.dtype)], axis=-1)
    q = q.reshape(q.shape[:-1] + (-1, per)).astype(np.uint64)
    words = np.zeros(q.shape[:-1], np.uint64)
    for j in range(per):
        words |= q[..., j] << np.uint64(j * bits)
    return np.moveaxis(words.astype(np.uint32).view(np.int32), -1, axis)


def _write(dst: Path, tensors: dict, dtypes: dict, qc: dict | None, src: Path = TINY) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    cfg = json.loads((src / "config.json").read_text())
    if qc is not None:
        cfg["quantization_config"] = qc
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    write_safetensors(dst / "model.safetensors", tensors, dtype=dtypes)
    return dst


def float_tensors(src: Path = TINY) -> dict[str, np.ndarray]:
    with Checkpoint.open(src) as ck:
        return {n: np.array(ck.read(n), dtype=np.float32) for n in ck.tensors}


def build(kind: str, dst: Path, src: Path = TINY) -> Path:
    """Write `src` re-quantized as `kind` (see KINDS) into the folder `dst`."""
    base = float_tensors(src)
    out: dict[str, np.ndarray] = {}
    dt: dict[str, str] = {}
    qc: dict | None
    for n, w in base.items():
        out[n], dt[n] = w, "BF16"
    lin = [n for n in base if _is_linear(n)]
    if kind.startswith("fp8-") and kind not in ("fp8-qscale", "fp8-e5m2"):
        scheme, block = {"fp8-block": ("block", [128, 128]), "fp8-block-partial": ("block", [96, 80]),
                         "fp8-channel": ("channel", None), "fp8-channel1d": ("channel1d", None),
                         "fp8-tensor": ("tensor", None), "fp8-tensor1": ("tensor1", None)}[kind]
        for n in lin:
            codes, s = fp8(base[n], scheme, tuple(block) if block else None)
            out[n], dt[n] = codes, "F8_E4M3"
            out[n + "_scale_inv"], dt[n + "_scale_inv"] = s, "F32"
        qc = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": block}
    elif kind == "fp8-e5m2":  # F8_E5M2 codes (any byte but inf/NaN), F32 scales per 128x128 block
        rng = np.random.default_rng(5)
        for n in lin:
            codes = rng.integers(0, 256, base[n].shape, dtype=np.uint8)
            codes[(codes & 0x7C) == 0x7C] &= 0x83  # exponent 31 (inf / NaN) -> exponent 0
            s = rng.random((-(-base[n].shape[0] // 128), -(-base[n].shape[1] // 128)), dtype=np.float32) * 1e-4
            out[n], dt[n] = codes, "F8_E5M2"
            out[n + "_scale_inv"], dt[n + "_scale_inv"] = s, "F32"
        qc = {"activation_scheme": "dynamic", "quant_method": "fp8", "weight_block_size": [128, 128]}
    elif kind == "fp8-qscale":  # Mistral's names: per-tensor qscale_weight, unused qscale_act / activation scales
        for n in lin:
            codes, s = fp8(base[n], "tensor1")
            b = n[: -len("weight")]
            out[n], dt[n] = codes, "F8_E4M3"
            out[b + "qscale_weight"], dt[b + "qscale_weight"] = s, "BF16"
            out[b + "qscale_act"], dt[b + "qscale_act"] = np.ones(1, np.float32), "BF16"
            out[b + "activation_scale"], dt[b + "activation_scale"] = np.ones(1, np.float32), "F32"
        qc = {"activation_scheme": "static", "quant_method": "fp8", "weight_block_size": None}
    elif kind in ("ct-fp8-channel", "ct-fp8-block", "ct-int8-channel"):
        is_int = kind == "ct-int8-channel"
        strategy = "block" if kind.endswith("block") else "channel"
        for n in lin:
            w = base[n]
            if is_int:
                s = np.maximum(np.abs(w).max(axis=1, keepdims=True), 1e-8) / 127.0
                codes = np.clip(np.round(w / s), -127, 127).astype(np.int8)
                out[n], dt[n] = codes, "I8"
            else:
                codes, s = fp8(w, "block" if strategy == "block" else "channel", (128, 128))
                out[n], dt[n] = codes, "F8_E4M3"
            sn = n[: -len(".weight")] + ".weight_scale"
            out[sn], dt[sn] = s.astype(np.float32), "BF16"
        wc = {"num_bits": 8, "type": "int" if is_int else "float", "strategy": strategy, "symmetric": True,
              "dynamic": False, "group_size": None, "block_structure": [128, 128] if strategy == "block" else None}
        qc = {"quant_method": "compressed-tensors", "format": "int-quantized" if is_int else "float-quantized",
              "config_groups": {"group_0": {"targets": ["Linear"], "weights": wc, "input_activations": None}},
              "ignore": ["lm_head"]}
    elif kind.startswith("ct-pack"):
        bits, group, asym = {"ct-pack4": (4, 32, False), "ct-pack4-asym": (4, 64, True), "ct-pack8": (8, 128, False)}[kind]
        for n in lin:
            q, s, z = _int_quant(base[n], bits, group, asym)
            b = n[: -len(".weight")] + ".weight"
            del out[n], dt[n]
            out[b + "_packed"], dt[b + "_packed"] = _pack(q, bits, axis=1), "I32"
            out[b + "_scale"], dt[b + "_scale"] = s, "BF16"
            out[b + "_shape"], dt[b + "_shape"] = np.array(base[n].shape, np.int64), "I64"
            if asym:
                out[b + "_zero_point"], dt[b + "_zero_point"] = _pack(z, bits, axis=0), "I32"
        wc = {"num_bits": bits, "type": "int", "strategy": "group", "group_size": group, "symmetric": not asym}
        qc = {"quant_method": "compressed-tensors", "format": "pack-quantized",
              "config_groups": {"group_0": {"targets": ["Linear"], "weights": wc}}}
    elif kind.startswith("gptq"):
        bits = int(kind[4])
        group = 64
        fmt = "gptq_v2" if kind.endswith("v2") else "gptq"
        for n in lin:
            w = base[n].T.copy()  # GPTQ stores (in, out)
            n_in = w.shape[0]
            g_idx = np.arange(n_in) // group
            if kind.endswith("act"):  # desc_act: rows belong to groups in a permuted order
                g_idx = np.random.default_rng(0).permutation(g_idx)
            n_groups = n_in // group
            amax = np.stack([np.abs(w[g_idx == g]).max(axis=0) for g in range(n_groups)])  # (groups, out)
            s = (np.maximum(amax, 1e-8) / ((1 << (bits - 1)) - 1)).astype(np.float32)
            zt = np.full(s.shape, 1 << (bits - 1), np.int64)  # symmetric
            q = np.clip(np.round(w / s[g_idx]) + zt[g_idx], 0, (1 << bits) - 1).astype(np.int64)  # (in, out)
            z = zt - 1 if fmt == "gptq" else zt  # gptq (v1) stores zero - 1
            b = n[: -len(".weight")]
            del out[n], dt[n]
            out[b + ".qweight"], dt[b + ".qweight"] = _pack(q, bits, axis=0), "I32"
            out[b + ".qzeros"], dt[b + ".qzeros"] = _pack(z & ((1 << bits) - 1), bits, axis=1), "I32"
            out[b + ".scales"], dt[b + ".scales"] = s.astype(np.float16), "F16"
            out[b + ".g_idx"], dt[b + ".g_idx"] = g_idx.astype(np.int32), "I32"
        qc = {"quant_method": "gptq", "bits": bits, "group_size": group, "desc_act": kind.endswith("act"),
              "sym": True, "checkpoint_format": fmt}
    elif kind == "bitnet-packed":  # microsoft BitNet's offline layout: 4 ternary codes per byte, inverted scale
        rng = np.random.default_rng(6)
        for n in lin:
            w = base[n]
            scale = np.float32(max(np.abs(w).mean(), 1e-5))
            codes = (np.clip(np.round(w / scale), -1, 1) + 1).astype(np.uint8)
            codes[rng.random(w.shape) < 0.01] = 3  # the 4th code: value 2 for the converter
            planes = codes.reshape(4, w.shape[0] // 4, w.shape[1])
            out[n], dt[n] = planes[0] | (planes[1] << 2) | (planes[2] << 4) | (planes[3] << 6), "U8"
            sn = n + "_scale"
            out[sn], dt[sn] = np.array([1 / scale], np.float32), "BF16"
        qc = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"}
    else:
        raise ValueError(kind)
    return _write(dst, out, dt, qc, src)


KINDS = ("fp8-block", "fp8-block-partial", "fp8-channel", "fp8-channel1d", "fp8-tensor", "fp8-tensor1", "fp8-qscale", "fp8-e5m2",
         "ct-fp8-channel", "ct-fp8-block", "ct-int8-channel", "ct-pack4", "ct-pack4-asym", "ct-pack8",
         "gptq4", "gptq8", "gptq2", "gptq4v2", "gptq4act", "bitnet-packed")
