"""What convert_hf_to_gguf.py --outtype bf16 would write for a Hugging Face model folder, minus the bytes.

`load_spec` reads config.json (strictly), the safetensors headers and the tokenizer files and
returns a `ModelSpec`: the GGUF metadata in write order and, per GGUF tensor, its name, shape,
HF sources, the row gather / transform that builds it and the type the reference converter stores
it as (BF16, or F32 for 1-D tensors, norms and router gates). It mirrors
conversion/base.py ModelBase.write(): prepare_tensors (tensor order and content), then
prepare_metadata (general.*, set_gguf_parameters, set_vocab), from llama.cpp as vendored in
llama-cpp-python 0.3.36. Each family is one module here (llama.py, qwen.py, gemma.py, phi.py:
a `TextModel` subclass registered under its HF `architectures` names, see base.py); tokenizers
are read by kquant.vocab.
"""

from __future__ import annotations

import re
from math import prod
from pathlib import Path

from gguf import Keys

from ..errors import InputError, UnsupportedError
from ..io.gguf_kv import KVRecorder
from . import (  # noqa: F401  (each registers its families; one per line)
    afmoe,
    arctic,
    bailingmoe,
    bitnet,
    bloom,
    chatglm,
    command_r,
    dbrx,
    deepseek,
    dots1,
    ernie,
    exaone,
    falcon,
    falcon_h1,
    gemma,
    gemma4,
    glm,
    gpt2,
    gpt_oss,
    gptneox,
    granite,
    grok,
    hunyuan,
    hy_v4,
    internlm,
    jais,
    jamba,
    kimi_linear,
    laguna,
    lfm2,
    llama,
    llama4,
    mamba,
    maple,
    minimax,
    mistral3,
    mpt,
    nemotron,
    olmo,
    openelm,
    orion,
    phi,
    qwen,
    qwenvl,
    stablelm,
    starcoder,
    step3,
    xverse,
)
from .base import FAMILIES, VARIANTS, HFJoin, HFTensor, NORM_OF, TextModel, safetensors_order
from .hparams import hf_architecture, read_config, to_hparams
from .metadata import meta_kv
from .spec import ModelSpec, TensorSpec

__all__ = ["ModelSpec", "TensorSpec", "TextModel", "family", "load_spec", "not_converted_note", "supported_architectures"]

GGML_QUANT_VERSION = 2  # gguf-py constants.py GGML_QUANT_VERSION


# families llama.cpp's converter handles that kquant refuses, and why (issue 16: a refusal names the family)
_GEMMA3N = ("Gemma 3n's language model is not ported to kquant: the converter writes its activation sparsity "
            "through torch's float32 erfinv, which kquant cannot reproduce bit for bit without torch (it is not "
            "correctly rounded), besides AltUp, LAuReL and per-layer embeddings")
_BAICHUAN = ("llama.cpp's converter (as vendored in llama-cpp-python 0.3.36) cannot convert it: "
             "BaichuanModel.modify_tensors recurses without end on every tensor but W_pack, so there is no reference to match")
_CHATGLM = ("ChatGLM's remote-code layout is not ported: its tokenizer loads only through the checkpoint's own code "
            "(the converter's AutoTokenizer with trust_remote_code); GlmForCausalLM (transformers' layout) is supported")
_HUNYUAN_MOE = ("Hunyuan MoE's vocabulary is not ported: llama.cpp's converter reads it only through the checkpoint's "
                "own tokenizer code (AutoTokenizer with trust_remote_code: tiktoken mergeable_ranks and special tokens "
                "defined in that code); HunYuanDenseV1ForCausalLM with a tokenizer.json is supported")
_EMBEDDING_GEMMA = ("EmbeddingGemma (Gemma3TextModel) is an embedding model: the converter writes it as GGUF "
                    "gemma-embedding with its sentence-transformers pooling and dense layers, which kquant does not convert")
NOT_PORTED = {
    "Gemma3TextModel": _EMBEDDING_GEMMA,
    "BaichuanForCausalLM": _BAICHUAN, "BaiChuanForCausalLM": _BAICHUAN,
    "ChatGLMModel": _CHATGLM, "ChatGLMForConditionalGeneration": _CHATGLM,
    "Gemma3nForConditionalGeneration": _GEMMA3N, "Gemma3nForCausalLM": _GEMMA3N,
    "HunYuanMoEV1ForCausalLM": _HUNYUAN_MOE,
    "InternLM2ForCausalLM": internlm.INTERNLM2_REFUSED,
}


def not_converted_note(names) -> str:
    """The one line telling a user that a checkpoint's vision/audio tensors are not in the output."""
    roots = ", ".join(dict.fromkeys(".".join(n.split(".")[: 2 if n.startswith("model.") else 1]) + ".*" for n in names))
    return (f"{len(names)} vision/audio tensors ({roots}) not converted: the file holds the language model only, "
            "as convert_hf_to_gguf.py writes it without --mmproj (kquant has no --mmproj)")


def supported_architectures() -> list[str]:
    """HF `architectures` names kquant converts."""
    return sorted(FAMILIES)


def family(hf_arch: str) -> type[TextModel] | None:
    """The family class serving an HF `architectures` name, or None."""
    return FAMILIES.get(hf_arch)


def _classes() -> list[type[TextModel]]:
    """Every family class, the registered ones and their variants (TextModel.for_config)."""
    return list(dict.fromkeys([*FAMILIES.values(), *VARIANTS]))


def inverse_family(gguf_arch: str) -> type[TextModel] | None:
    """The family whose HF names `dequantize --hf-names` restores for a GGUF architecture, or None."""
    return next((c for c in _classes() if c.inverse_names and c.arch_name() == gguf_arch), None)


def inverse_refusal(gguf_arch: str) -> str | None:
    """Why `dequantize --hf-names` is not offered for a GGUF architecture kquant writes (one line), or None."""
    return next((c.inverse_refused for c in _classes() if c.arch_name() == gguf_arch and c.inverse_refused), None)


def inverse_architectures() -> list[str]:
    """GGUF architectures `dequantize --hf-names` supports."""
    return sorted({c.arch_name() for c in _classes() if c.inverse_names})


def norm_inputs(gguf_arch: str) -> dict[str, str]:
    """Matrix kind -> the norm whose output it reads, for a GGUF architecture (automix)."""
    return next((c.norm_of for c in _classes() if c.arch_name() == gguf_arch), NORM_OF)


def load_spec(
    folder: str | Path,
    tensor_shapes: dict[str, tuple[tuple[int, ...], str]] | None = None,
    *,
    config_path: str | Path | None = None,
    tokenizer_folder: str | Path | None = None,
    vocab: bool = True,
    tokenizer_pre: str | None = None,
    headers: dict[str, list[HFTensor]] | None = None,
    hf_tensors: list[HFTensor] | None = None,
) -> ModelSpec:
    """Build the ModelSpec of the HF model in `folder` (see module docstring).

    `headers` ({file path: [(name, shape, dtype)]}, from an open checkpoint) spares parsing the
    safetensors headers of those files a second time. `hf_tensors` gives the HF tensors outright, in
    the converter's order (a quantized checkpoint after dequant_model: kquant.io.quantized)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a directory")
    cfg_path = Path(config_path) if config_path is not None else folder / "config.json"
    tok_folder = Path(tokenizer_folder) if tokenizer_folder is not None else folder
    cfg = read_config(cfg_path)
    hf_arch = hf_architecture(cfg)
    cls = FAMILIES.get(hf_arch)
    if cls is None and hf_arch in NOT_PORTED:
        raise UnsupportedError(f"{cfg_path}: {hf_arch} is not supported: {NOT_PORTED[hf_arch]}")
    if cls is None:
        raise UnsupportedError(
            f"{cfg_path}: architecture {hf_arch!r} is not supported (supported: {', '.join(supported_architectures())})")
    hp = to_hparams(cfg, cfg_path)
    cls = cls.for_config(hp)
    arch = cls.arch_name()
    model = cls(hp, kv=KVRecorder(arch), config_path=cfg_path, folder=folder, tok_folder=tok_folder)
    _check_hparams({**cfg, **cfg.get("text_config", {})}, model, cfg_path)
    _check_rope(model.rp, cfg_path)

    hf = _hf_tensors(folder, tensor_shapes, headers) if hf_tensors is None else list(hf_tensors)
    _check_counts(model, hf, cfg_path)  # before anything proportional to a count is built
    rec = KVRecorder(arch)
    rec.add_string(Keys.General.ARCHITECTURE, arch)  # GGUFWriter.__init__ add_architecture

    # prepare_tensors: generate_extra_tensors may record keys (phi3 attn_factor) before the metadata
    extra = model.generate_extra_tensors()
    pre_kv = model.kv
    model.prepare()
    tensors = model.prepare_tensors(hf, extra, str(folder))

    # prepare_metadata: general.type + Metadata, set_gguf_parameters, quantization version, set_vocab
    for k, t, v in pre_kv.entries():
        rec.add_key_value(k, v, t)
    meta_kv(rec, folder, *_param_counts(tensors))
    model.kv = rec
    model.set_gguf_parameters()
    rec.add_uint32(Keys.General.QUANTIZATION_VERSION, GGML_QUANT_VERSION)
    if vocab:
        model.write_vocab(tokenizer_pre)

    keys = rec.keys()
    ft, qv = Keys.General.FILE_TYPE, Keys.General.QUANTIZATION_VERSION
    ft_idx = keys.index(ft) if ft in keys else -1
    qv_idx = keys.index(qv)
    kv = [e for e in rec.entries() if e[0] not in (ft, qv)]
    # llama-quant.cpp reads the expert count from {arch}.expert_count (absent: 0)
    n_expert = next((v for k, _, v in kv if k == f"{arch}.expert_count"), 0)
    return ModelSpec(
        arch=arch,
        kv=kv,
        tensors=tensors,
        n_layer=model.block_count,  # after prepare_tensors (Qwen3-Next adds its MTP layers)
        n_head=model.dim("num_attention_heads"),
        n_head_kv=_head_count_kv(rec, arch, model.dim("num_attention_heads")),
        n_expert=n_expert,
        n_embd=model.dim("hidden_size"),
        tied_embeddings=not any(t.name == "output.weight" for t in tensors),
        file_type_index=ft_idx,
        quantization_version_index=qv_idx,
        hf_arch=hf_arch,
        hparams=hp,
        not_converted=tuple(model.not_converted),
    )


def _head_count_kv(rec: KVRecorder, arch: str, n_head: int) -> int:
    """llama_hparams n_head_kv(0) as llama.cpp loads it: head_count when the key is absent, layer 0's
    entry of a per-layer array (0 for a recurrent first layer)."""
    v = rec.get(f"{arch}.attention.head_count_kv")
    if v is None:
        return n_head
    return v[0] if isinstance(v, list) else v


def _check_hparams(cfg: dict, model: TextModel, path: Path) -> None:
    """Consistency checks the converter does not do but the runtime depends on."""
    hp = model.hp
    if model.attention_free:
        return
    n_head, n_embd = model.dim("num_attention_heads"), model.dim("hidden_size")
    n_kv = model.dim("num_key_value_heads")
    if n_kv is None and model.kv_heads_default:
        n_kv = n_head
    if not isinstance(n_kv, int) or isinstance(n_kv, bool) or n_kv <= 0:
        raise InputError(f"{path}: 'num_key_value_heads' must be a positive integer, got {n_kv!r}")
    if n_head % n_kv:
        raise InputError(f"{path}: num_attention_heads {n_head} is not a multiple of num_key_value_heads {n_kv}")
    if cfg.get("head_dim") is None and n_embd % n_head:
        raise InputError(f"{path}: hidden_size {n_embd} is not divisible by num_attention_heads {n_head}")
    if hp.get("mlp_only_layers") or hp.get("decoder_sparse_step", 1) != 1:
        raise UnsupportedError(f"{path}: MoE models with dense layers (mlp_only_layers / decoder_sparse_step) are not supported")


# rope_scaling (transformers 4) / rope_parameters (5) values set_gguf_parameters and the rope
# tensors compute with; the names the message gives are the config keys
_ROPE_NUMBERS = ("factor", "low_freq_factor", "high_freq_factor", "attention_factor", "attn_factor", "beta_fast",
                 "beta_slow", "extrapolation_factor", "rope_theta", "partial_rotary_factor", "mscale", "mscale_all_dim")
_ROPE_INTS = ("original_max_position_embeddings",)
_F32_MAX = 3.4028234663852886e38


def _check_rope(rp, path: Path, where: str = "rope_scaling") -> None:
    """rope parameters have the types the converter computes with (one-line InputError naming the key)."""
    if not isinstance(rp, dict):
        raise InputError(f"{path}: {where!r} must be an object, got {rp!r}"[:200])
    for k, v in rp.items():
        if v is None:
            continue
        key = f"{where}.{k}"
        if k in ("full_attention", "sliding_attention"):
            _check_rope(v, path, key)
        elif k in ("type", "rope_type") and not isinstance(v, str):
            raise InputError(f"{path}: {key!r} must be a string, got {v!r}"[:200])
        elif k in _ROPE_NUMBERS and (isinstance(v, bool) or not isinstance(v, (int, float)) or not abs(v) <= _F32_MAX):
            raise InputError(f"{path}: {key!r} must be a finite number (float32 range), got {v!r}"[:200])
        elif k in ("rope_theta", "factor") and v <= 0:
            raise InputError(f"{path}: {key!r} must be positive, got {v!r}")
        elif k in _ROPE_INTS and (isinstance(v, bool) or not isinstance(v, int) or not 0 < v < 2**32):
            raise InputError(f"{path}: {key!r} must be a positive 32-bit integer, got {v!r}"[:200])
        elif k in ("long_factor", "short_factor") and not (isinstance(v, list) and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and abs(x) <= _F32_MAX for x in v)):
            raise InputError(f"{path}: {key!r} must be a list of numbers"[:200])


# config counts that size what load_spec builds (per-layer and per-expert name lists, rope tables,
# the vocabulary): each is bounded by what the checkpoint's headers hold before it is used
_DIM_KEYS = ("hidden_size", "intermediate_size", "vocab_size", "vocab_size_per_layer_input", "num_attention_heads",
             "num_key_value_heads", "head_dim", "moe_intermediate_size", "shared_expert_intermediate_size")
_LAYER_ID = re.compile(r"(?:^|\.)(?:layers|h|blocks|decoder_layer)\.(\d+)\.")
_EXPERT_ID = re.compile(r"\.experts\.(\d+)\.")


def _check_counts(model: TextModel, hf: list[HFTensor], path: Path) -> None:
    """Refuse config counts larger than the checkpoint can hold (a layer-count bomb, a 10^9 vocab)."""
    family, hp = type(model), model.hp
    layers = {m.group(1) for n, _, _ in hf if (m := _LAYER_ID.search(n))}
    n_layer = model.block_count
    if isinstance(n_layer, bool) or not isinstance(n_layer, int) or n_layer <= 0:
        raise InputError(f"{path}: the layer count (num_hidden_layers) must be a positive integer, got {n_layer!r}")
    if n_layer > len(layers):
        raise InputError(f"{path}: 'num_hidden_layers' is {n_layer} but the checkpoint has tensors for {len(layers)} layers")
    if family.experts is not None:
        if family.experts.stacked:  # one [n_expert, ...] tensor per projection
            n_x = max((shape[0] for n, shape, _ in hf if ".experts." in n and shape), default=0)
        else:
            n_x = len({m.group(1) for n, _, _ in hf if (m := _EXPERT_ID.search(n))})
        k = next((k for k in family.experts.count_keys if hp.get(k) is not None), None)  # as build_tensors picks it
        v = hp.get(k)
        if isinstance(v, int) and not isinstance(v, bool) and v > n_x:
            raise InputError(f"{path}: {k!r} is {v} but the checkpoint has tensors for {n_x} experts")
    max_dim = max((d for _, shape, _ in hf for d in shape), default=0)
    for k in _DIM_KEYS:
        v = model.dim(k)
        if isinstance(v, int) and not isinstance(v, bool) and v > max_dim:
            raise InputError(f"{path}: {k!r} is {v}, larger than any tensor dimension in the checkpoint ({max_dim})")


def _hf_tensors(folder: Path, tensor_shapes, headers) -> list[HFTensor]:
    """(name, shape, dtype) of every HF tensor in the order index_tensors yields them."""
    parts = safetensors_order(folder, headers)
    if parts is None:
        if tensor_shapes is None:
            if any(p.name.startswith("pytorch_model") for p in folder.iterdir()):
                raise UnsupportedError(f"{folder}: only safetensors checkpoints are supported (found pytorch_model*.bin)")
            raise InputError(f"{folder}: no model*.safetensors files")
        return [(n, tuple(s), d) for n, (s, d) in sorted(tensor_shapes.items())]
    order = [t for _, ts in parts for t in ts]
    if tensor_shapes is not None:
        have = {n: (tuple(s), d) for n, s, d in order}
        given = {n: (tuple(s), d) for n, (s, d) in tensor_shapes.items()}
        if have != given:
            diff = sorted(set(have.items()) ^ set(given.items()))[:2]
            raise InputError(f"{folder}: tensor_shapes disagrees with the safetensors headers ({diff})")
    return order


# gguf-py gguf_writer.py GGUFWriter.get_total_parameter_count
def _param_counts(tensors: list[TensorSpec]) -> tuple[int, int, int, int]:
    total = shared = expert = 0
    expert_sum = n_expert_tensors = 0
    for t in tensors:
        size = prod(t.shape)
        if "_exps." in t.name and len(t.shape) >= 3:
            count = t.shape[-2 if ".bias" in t.name else -3]
            expert += size // count
            expert_sum += count
            n_expert_tensors += 1
        else:
            shared += size
        total += size
    return total, shared, expert, (expert_sum // n_expert_tensors) if n_expert_tensors else 0
