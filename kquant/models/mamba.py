"""Mamba and Mamba-2: conversion/mamba.py MambaModel (MambaForCausalLM, MambaLMHeadModel,
FalconMambaForCausalLM) and Mamba2Model (Mamba2ForCausalLM), llama.cpp as vendored in
llama-cpp-python 0.3.36; and the state-space pieces the hybrid families share: Mamba2Model's tensor
transforms, and torch's `exp` as the converters apply it to `A_log`.

Both classes read config.json as it is (no transformers config class) and pad the vocabulary to a
multiple of `pad_vocab_size_multiple` (8 / 16). MambaModel drops `lm_head` when its values equal the
embedding's (`torch.equal`, read from the checkpoint). The converter's built-in GPT-NeoX vocabulary (a
folder without tokenizer files) is refused.

`-torch.exp(A_log)`: torch's float32 exp on CPU is MKL VML's vsExp in HA mode, not correctly rounded
(0.1-0.4% of inputs 1 ulp off), and its bits depend on the kernel MKL picks for the CPU: BF16 and F32
sources (upcast to float32) go through `vml_exp.torch_exp`, bit-exact ports of MKL's AVX-512 kernel
(Intel CPUs with AVX-512) and of its generic kernel (AMD and other non-Intel x86 CPUs), picked like MKL
picks them, once per process; KQUANT_TORCH_EXP=z0|ex reproduces a converter run on the other kind of
machine (see vml_exp.py; Intel CPUs without AVX-512 run a third kernel, not ported). F16 sources: torch
rounds exp to float16; kquant computes exp in float64, rounds it and patches the inputs where torch
differs (`torch_exp.py`, every F16 input, made by scripts/make_torch_exp.py from the reference venv:
none on an AVX-512 Intel machine, and none on an AMD EPYC either).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from gguf import MODEL_ARCH

from ..errors import InputError, UnsupportedError
from .. import vocab as V
from . import torch_exp
# torch.exp of a float32 tensor, as the reference venv computes it on this machine's kind of CPU, or on
# KQUANT_TORCH_EXP's (see the module docstring)
from .vml_exp import torch_exp as torch_exp_f32
from .base import TextModel, register
from .hparams import HFConfig

_F16_IN = np.array(sorted(torch_exp.F16), dtype=np.uint16)
_F16_OUT = np.array([torch_exp.F16[k] for k in sorted(torch_exp.F16)], dtype=np.uint16)


def _patch(x_bits: np.ndarray, y_bits: np.ndarray, keys: np.ndarray, vals: np.ndarray) -> None:
    if len(keys):
        i = np.clip(np.searchsorted(keys, x_bits), 0, len(keys) - 1)
        hit = keys[i] == x_bits
        y_bits[hit] = vals[i[hit]]


def torch_exp_f16(x: np.ndarray) -> np.ndarray:
    """torch.exp of a float16 tensor (computed in float32, rounded to float16)."""
    x = np.ascontiguousarray(x, dtype=np.float16)
    with np.errstate(over="ignore", invalid="ignore"):
        y = np.exp(x.astype(np.float64)).astype(np.float32).astype(np.float16)
    _patch(x.view(np.uint16), y.view(np.uint16), _F16_IN, _F16_OUT)
    return y


def neg_exp(src_dtype: str) -> Callable[[list[np.ndarray]], np.ndarray]:
    """`-torch.exp(A_log)` on the tensor as prepare_tensors hands it over (F16 kept, else float32)."""
    if src_dtype == "F16":
        return lambda arrs: -torch_exp_f16(arrs[0]).astype(np.float32)
    return lambda arrs: -torch_exp_f32(arrs[0])


def reshaped(shape: tuple[int, ...], then: Callable[[list[np.ndarray]], np.ndarray] | None = None):
    """A transform reshaping its one source (squeeze / unsqueeze / reshape), after `then` if given."""
    def f(arrs: list[np.ndarray]) -> np.ndarray:
        x = then(arrs) if then is not None else arrs[0]
        return x.reshape(shape)
    return f


MAMBA2_LAYER = {
    "mamba.in_proj": "ssm_in",
    "mamba.conv1d": "ssm_conv1d",
    "mamba.dt_proj": "ssm_dt",  # dt_bias, renamed (Mamba2Model.filter_tensors)
    "mamba.A_log": "ssm_a",
    "mamba.D": "ssm_d",
    "mamba.norm": "ssm_norm",
    "mamba.out_proj": "ssm_out",
}
MAMBA2_BIAS_OK = ("mamba.in_proj", "mamba.conv1d", "mamba.out_proj", "mamba.dt_proj")
MAMBA2_BARE = ("mamba.A_log", "mamba.D")


# Mamba2Model.filter_tensors
def mamba2_name(name: str) -> str:
    """An HF tensor name as Mamba2Model indexes it: `model.backbone.*` / `model.lm_head.*` without
    `model.`, `*.dt_bias` as `*.dt_proj.bias`."""
    if name.startswith(("model.backbone", "model.lm_head")):
        name = name.removeprefix("model.")
    if name.endswith(".dt_bias"):
        name = name.rpartition(".dt_bias")[0] + ".dt_proj.bias"
    return name


def find_prefixed(hp: dict, keys, prefixes, optional: bool = False):
    """GraniteHybridModel / FalconH1Model.find_hparam: the keys, then each with a `prefix_` in front."""
    from .hparams import find_hparam

    keys = list(keys)
    return find_hparam(hp, keys + [f"{p}_{k}" for p in prefixes for k in keys], optional)


def mamba2_spec(model, t, name: str, gname: str, n_group: int, d_inner: int, then=None):
    """Mamba2Model.modify_tensors for one SSM-layer tensor: conv1d squeezed, A and D as (n, 1), the
    norm as (n_group, d_inner / n_group), A_log -> -exp(A_log); `then` applies a further transform."""
    shape, fns = tuple(t[1]), []
    if gname.endswith("ssm_conv1d.weight"):
        shape = tuple(d for d in shape if d != 1)
    elif gname.endswith(("ssm_a", "ssm_d")):
        shape = shape + (1,)
    elif gname.endswith("ssm_norm.weight"):
        if n_group <= 0 or d_inner % n_group or t[1] != (d_inner,):
            raise InputError(f"{model.folder}: tensor {t[0]!r} has shape {list(t[1])}, expected [{d_inner}] in {n_group} groups")
        shape = (n_group, d_inner // n_group)
    if name.endswith(".A_log"):
        fns.append(neg_exp(t[2]))
    if then is not None:
        fns.append(then)
    if not fns and shape == tuple(t[1]):
        return model.spec(gname, t)

    def f(arrs):
        x = arrs[0]
        for fn in fns:
            x = fn([x])
        return x.reshape(shape)
    return model.spec(gname, t, shape=shape, transform=f)


# MambaModel / Mamba2Model.__init__: config.json read as it is ("Avoid using AutoConfig for hparams")
_LAYER_KEYS = ("n_layers", "num_hidden_layers", "n_layer", "num_layers")  # TextModel.__init__ block_count
_REQUIRED = {"hidden_size": ("hidden_size", "d_model"), "intermediate_size": (), "num_hidden_layers": _LAYER_KEYS,
             "num_attention_heads": ()}
MAMBA_CONFIGS = (HFConfig("mamba", {}, raw=True, required_as=_REQUIRED),
                 HFConfig("falcon_mamba", {}, raw=True, required_as=_REQUIRED))
MAMBA2_CONFIG = HFConfig("mamba2", {}, raw=True, required_as={**_REQUIRED, "hidden_size": ("hidden_size", "d_model", "dim")})

MAMBA_LAYER = {
    "norm": "attn_norm",
    "mixer.in_proj": "ssm_in",
    "mixer.conv1d": "ssm_conv1d",
    "mixer.x_proj": "ssm_x",
    "mixer.dt_proj": "ssm_dt",
    "mixer.A_log": "ssm_a",
    "mixer.D": "ssm_d",
    "mixer.out_proj": "ssm_out",
}
MAMBA2_BACKBONE_LAYER = {"norm": "attn_norm"} | {k.replace("mamba.", "mixer."): v for k, v in MAMBA2_LAYER.items()}
BACKBONE_GLOBALS = {"backbone.embeddings": "token_embd", "backbone.embedding": "token_embd",
                    "backbone.norm_f": "output_norm", "lm_head": "output"}


def mamba2_parameters(model, d_conv: int, d_state: int, head_dim: int, rms_eps: float, keys: tuple[str, ...]) -> None:
    """The metadata Mamba2Model.set_gguf_parameters writes (Mamba-2, and Falcon-H1 before its own keys);
    `keys`: the config keys named when conv, inner, state, head, group and eps values are refused."""
    k_conv, k_inner, k_state, k_head, k_group, k_eps = keys
    model.kv.add_uint32(model.key("context_length"), 2**20)
    model.u32("embedding_length", model.d_model, "hidden_size")
    model.kv.add_uint32(model.key("feed_forward_length"), 0)
    model.kv.add_uint32(model.key("attention.head_count"), 0)
    model.kv.add_uint32(model.key("block_count"), model.block_count)
    model.u32("ssm.conv_kernel", d_conv, k_conv)
    model.u32("ssm.inner_size", model.d_inner, k_inner)
    model.u32("ssm.state_size", d_state, k_state)
    model.u32("ssm.time_step_rank", model.d_inner // head_dim, k_head)
    model.u32("ssm.group_count", model.n_group, k_group)
    model.f32("attention.layer_norm_rms_epsilon", rms_eps, k_eps)
    model.file_type_placeholder()


def _positive(model: TextModel, v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise InputError(f"{model.config_path}: {what} must be a positive integer, got {v!r}")
    return v


def _padded_vocab(model: TextModel, default_multiple: int) -> None:
    """MambaModel / Mamba2Model.set_vocab: vocab_size rounded up to a multiple of pad_vocab_size_multiple."""
    hp = model.hp
    pad = _positive(model, hp.get("pad_vocab_size_multiple", default_multiple), "'pad_vocab_size_multiple'")
    hp["vocab_size"] = -(hp["vocab_size"] // -pad) * pad


class _Backbone(TextModel):
    """What MambaModel and Mamba2Model share: `backbone.*` names, no attention, raw config.json."""

    attention_free = True
    layer_prefix = "backbone.layers."
    globals_ = BACKBONE_GLOBALS
    aliases = {"hidden_size": ("d_model", "dim")}

    def dim(self, key: str):
        if key in ("num_attention_heads", "num_key_value_heads"):
            return 0  # head_count 0 (set_gguf_parameters), as llama.cpp loads it
        return super().dim(key)

    def check_complete(self, out) -> None:
        globals_ = self.globals_
        emb = next((h for h in ("backbone.embeddings", "backbone.embedding") if any(t.name == "token_embd.weight" and
                                                                                 t.sources[0] == h + ".weight" for t in out)),
                   "backbone.embeddings")
        # one of the two embedding names; lm_head optional (llama.cpp falls back to token_embd)
        self.globals_ = {emb: "token_embd", "backbone.norm_f": "output_norm"}
        try:
            super().check_complete(out)
        finally:
            self.globals_ = globals_

    def set_vocab_files(self, default_multiple: int, spm_first: bool) -> None:
        _padded_vocab(self, default_multiple)
        hp, folder = self.hp, self.tok_folder
        order = ("tokenizer.model", "tokenizer.json") if spm_first else ("tokenizer.json", "tokenizer.model")
        for f in order:
            if (folder / f).is_file():
                if f == "tokenizer.model":
                    V.set_vocab_sentencepiece(self.kv, folder, hp)
                else:
                    V.set_vocab_gpt2(self.kv, folder, hp, hp["model_type"], self._tokenizer_pre)
                return
        raise UnsupportedError(f"{folder}: no tokenizer.json or tokenizer.model (the converter's built-in GPT-NeoX "
                               "vocabulary is not supported)")

    def set_vocab(self, tokenizer_pre: str | None = None) -> None:
        self._tokenizer_pre = tokenizer_pre
        self.vocab_files()


def _arrays_equal(model: TextModel, a: str, b: str, rows: int) -> bool:
    """torch.equal of two HF tensors of equal shape, read in slabs of rows (NaN differs from itself)."""
    from ..io.safetensors import Checkpoint

    if model.folder is None:
        raise InputError(f"{model.hf_names[0]}: tensors {a!r} and {b!r} must be compared, but no model folder was given")
    step = max(1, (8 << 20) // max(1, model.dim("hidden_size") or 1))
    with Checkpoint.open(model.folder) as ck:
        for i in range(0, rows, step):
            if not np.array_equal(ck.read_rows(a, i, min(rows, i + step)), ck.read_rows(b, i, min(rows, i + step))):
                return False
    return True


@register("MambaForCausalLM", "MambaLMHeadModel", "FalconMambaForCausalLM")
class MambaModel(_Backbone):
    model_arch = MODEL_ARCH.MAMBA
    inverse_refused = 'the converter writes the Mamba A as -exp(A_log): not undone exactly'
    configs = MAMBA_CONFIGS
    layer = MAMBA_LAYER
    bias_ok = ("mixer.in_proj", "mixer.conv1d", "mixer.dt_proj", "mixer.out_proj")
    bias_required = ("mixer.conv1d", "mixer.dt_proj")  # llama.cpp's Mamba graph reads both
    bare_params = ("mixer.A_log", "mixer.D")

    def prepare(self) -> None:
        try:
            d_model = self.find_hparam(["hidden_size", "d_model"])
        except KeyError as e:
            raise InputError(f"{self.config_path}: {e.args[0]}") from None
        self.d_model = _positive(self, d_model, "hidden_size")
        self.d_conv = self.find_hparam(["conv_kernel", "d_conv"], True) or 4
        self.d_inner = self.find_hparam(["intermediate_size", "d_inner"], True) or 2 * self.d_model
        self.d_state = self.find_hparam(["state_size", "d_state"], True) or 16
        self.dt_rank = self.find_hparam(["time_step_rank", "dt_rank"], True) or -(self.d_model // -16)
        for k in ("d_conv", "d_inner", "d_state", "dt_rank"):
            _positive(self, getattr(self, k), k)
        if self.d_inner != 2 * self.d_model:  # MambaModel.set_gguf_parameters: "Fail early"
            raise UnsupportedError(f"{self.config_path}: intermediate_size {self.d_inner} is not 2 * hidden_size "
                                   f"{self.d_model} (the converter supports a block expansion factor of 2 only)")
        self._tok_embd = None

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        e, di, ds, r = self.d_model, self.d_inner, self.d_state, self.dt_rank
        v = self.hp["vocab_size"]
        return {"token_embd": (v, e), "output": (v, e), "output_norm": (e,), "attn_norm": (e,),
                "ssm_in": (2 * di, e), "ssm_conv1d": (di, 1, self.d_conv), "ssm_x": (r + 2 * ds, di),
                "ssm_dt": (di, r), "ssm_a": (di, ds), "ssm_d": (di,), "ssm_out": (e, di)}

    def expected_shape(self, base: str, bias: bool):
        if base == "ssm_in" and bias:
            return (2 * self.d_inner,)
        return super().expected_shape(base, bias)

    # MambaModel.modify_tensors
    def modify_tensors(self, t, name, gname, base, bid):
        if gname == "output.weight" and self._tok_embd is not None:
            if self._tok_embd[1] == t[1] and _arrays_equal(self, self._tok_embd[0], t[0], t[1][0]):
                return []  # "output.weight is equivalent to token_embd.weight, omitting"
        elif gname == "token_embd.weight":
            self._tok_embd = t
        if name.endswith(".A_log"):
            return [self.spec(gname, t, transform=neg_exp(t[2]))]
        if base == "ssm_conv1d" and gname.endswith(".weight"):  # squeeze: [d_inner, 1, d_conv] -> [d_inner, d_conv]
            shape = tuple(d for d in t[1] if d != 1)
            return [self.spec(gname, t, shape=shape, transform=reshaped(shape))]
        return [self.spec(gname, t)]

    # MambaModel.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        rms_eps = self.find_hparam(["layer_norm_epsilon", "rms_norm_eps"], True) or 1e-5
        self.kv.add_uint32(self.key("context_length"), 2**20)
        self.u32("embedding_length", self.d_model, "hidden_size")
        self.kv.add_uint32(self.key("feed_forward_length"), 0)
        self.kv.add_uint32(self.key("attention.head_count"), 0)
        self.kv.add_uint32(self.key("block_count"), self.block_count)
        self.u32("ssm.conv_kernel", self.d_conv, "conv_kernel")
        self.u32("ssm.inner_size", self.d_inner, "intermediate_size")
        self.u32("ssm.state_size", self.d_state, "state_size")
        self.u32("ssm.time_step_rank", self.dt_rank, "time_step_rank")
        self.f32("attention.layer_norm_rms_epsilon", rms_eps, "layer_norm_epsilon")
        self.kv.add_bool(self.key("ssm.dt_b_c_rms"), self.find_hparam(["model_type"], True) in ("falcon_mamba",))
        self.file_type_placeholder()

    def vocab_files(self) -> None:  # MambaModel.set_vocab: tokenizer.json first
        self.set_vocab_files(8, spm_first=False)


@register("Mamba2ForCausalLM")
class Mamba2Model(_Backbone):
    model_arch = MODEL_ARCH.MAMBA2
    inverse_refused = 'the converter writes the Mamba A as -exp(A_log): not undone exactly'
    configs = (MAMBA2_CONFIG,)
    layer = MAMBA2_BACKBONE_LAYER
    bias_ok = tuple(k.replace("mamba.", "mixer.") for k in MAMBA2_BIAS_OK)
    bias_only = ("mixer.dt_proj",)
    bare_params = tuple(k.replace("mamba.", "mixer.") for k in MAMBA2_BARE)

    def prepare(self) -> None:  # Mamba2Model.__init__
        try:
            d_model = self.find_hparam(["hidden_size", "d_model", "dim"])
        except KeyError as e:
            raise InputError(f"{self.config_path}: {e.args[0]}") from None
        self.d_model = _positive(self, d_model, "hidden_size")
        self.expand = self.find_hparam(["mamba_expand", "expand"], True) or 2
        self.d_inner = self.find_hparam(["mamba_d_ssm", "intermediate_size", "d_inner"], True) or self.expand * self.d_model
        self.n_group = self.find_hparam(["n_groups"], True) or 1
        for k in ("expand", "d_inner", "n_group"):
            _positive(self, getattr(self, k), k)

    # Mamba2Model.filter_tensors
    def filter_name(self, name: str) -> str | None:
        return super().filter_name(mamba2_name(name))

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        e, v = self.d_model, self.hp["vocab_size"]
        return {"token_embd": (v, e), "output": (v, e), "output_norm": (e,), "attn_norm": (e,),
                "ssm_out": (e, self.d_inner)}

    def modify_tensors(self, t, name, gname, base, bid):
        return [mamba2_spec(self, t, name, gname, self.n_group, self.d_inner)]

    # Mamba2Model.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        d_conv = self.find_hparam(["conv_kernel", "d_conv"], True) or 4
        d_state = self.find_hparam(["state_size", "d_state"], True) or 128
        head_dim = _positive(self, self.find_hparam(["mamba_d_head", "head_dim"], True) or 64, "head_dim")
        rms_eps = self.find_hparam(["layer_norm_epsilon", "rms_norm_eps"], True) or 1e-5
        if self.d_inner != self.expand * self.d_model or self.d_inner % head_dim:
            raise UnsupportedError(f"{self.config_path}: SSM inner size {self.d_inner} must be expand ({self.expand}) * "
                                   f"hidden_size ({self.d_model}) and a multiple of head_dim {head_dim}")
        mamba2_parameters(self, d_conv, d_state, head_dim, rms_eps,
                          ("conv_kernel", "intermediate_size", "state_size", "head_dim", "n_groups", "layer_norm_epsilon"))

    def vocab_files(self) -> None:  # Mamba2Model.set_vocab: tokenizer.model first
        self.set_vocab_files(16, spm_first=True)
