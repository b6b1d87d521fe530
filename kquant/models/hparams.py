"""config.json -> the `hparams` dict convert_hf_to_gguf.py works from, validated strictly.

convert_hf_to_gguf.py (conversion/base.py `ModelBase.load_hparams`) does not read config.json
directly: it takes `AutoConfig.from_pretrained(dir).to_dict()`, so every key a transformers config
class defaults (rope_theta, rms_norm_eps, head_dim, ...) is present even when config.json omits
it, and a few are rewritten by the class's __init__. This module reproduces that for the config
classes kquant supports (transformers 4.57.6, the version llama.cpp's requirements pin): a table
of the defaults of every key the converter may read, plus the __init__ rewrites. It also
mirrors `TextModel.__init__`'s `rope_parameters` derivation.

Configs saved by transformers 5 hold `rope_parameters` (rope_theta, rope_type and the scaling
fields in one dict, or one dict per layer type under `full_attention` / `sliding_attention`)
instead of `rope_theta` / `rope_scaling`, and `dtype` instead of `torch_dtype`. transformers
4.57.6's config classes know none of these keys: `PretrainedConfig.__init__` stores them as
plain attributes, so `to_dict()` returns them verbatim next to the class defaults of the old keys
(rope_theta, rope_scaling=None), and TextModel reads `rope_parameters` first. Nothing needs
rewriting: `to_hparams` keeps them as they are, as AutoConfig does; `read_config` checks their
shape and types so a malformed one is a one-line error.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import InputError, UnsupportedError
from ..io.jsonio import read_json

# PretrainedConfig defaults that conversion code can reach through find_hparam fallbacks.
_GENERIC = {"max_length": 20}


@dataclass(frozen=True)
class HFConfig:
    """A transformers config class (configuration_<model>.py, 4.57.6): the __init__ defaults of every
    key llama.cpp reads, and the __init__ rewrites. Families declare theirs (`TextModel.configs`)."""

    model_type: str
    defaults: dict[str, Any]
    rope_type_alias: bool = False  # copies rope_scaling["type"] into rope_scaling["rope_type"]
    kv_heads_fallback: bool = False  # replaces num_key_value_heads=None by num_attention_heads
    post_init: Callable[[dict[str, Any]], None] | None = None  # any other __init__ rewrite, in place
    # PretrainedConfig.attribute_map: a config.json key stored under another name (GPT-2: hidden_size -> n_embd)
    attribute_map: dict[str, str] | None = None
    # REQUIRED_INT_KEYS this class names otherwise (canonical key -> its own keys) or lacks (empty tuple)
    required_as: dict[str, tuple[str, ...]] | None = None
    # no transformers 4.57.6 class (remote code only): AutoConfig fails, ModelBase.load_hparams falls back to
    # config.json as it is (no defaults, not even PretrainedConfig's)
    raw: bool = False


CONFIG_CLASSES: dict[str, HFConfig] = {}  # model_type -> HFConfig, filled by kquant.models.base.register


# keys every supported config.json must state, with their JSON type
REQUIRED_INT_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
OPTIONAL_INT_KEYS = (
    "num_key_value_heads", "head_dim", "max_position_embeddings", "original_max_position_embeddings",
    "sliding_window", "num_local_experts", "num_experts", "num_experts_per_tok", "moe_intermediate_size",
    "shared_expert_intermediate_size",
)
OPTIONAL_NUMBER_KEYS = (
    "rms_norm_eps", "rope_theta", "rope_local_base_freq", "partial_rotary_factor", "final_logit_softcapping",
    "attn_logit_softcapping",
)
OPTIONAL_BOOL_KEYS = ("tie_word_embeddings", "attention_bias", "mlp_bias")
# booleans transformers 5 may write as null (GemmaConfig / Gemma2Config: use_bidirectional_attention=None)
OPTIONAL_BOOL_OR_NULL_KEYS = ("use_bidirectional_attention",)

# fields of a rope_scaling / rope_parameters dict (transformers 5 modeling_rope_utils.RopeParameters,
# plus the keys conversion/base.py reads) and their JSON types
ROPE_STR_KEYS = ("rope_type", "type")
ROPE_NUMBER_KEYS = (
    "rope_theta", "factor", "partial_rotary_factor", "attention_factor", "attn_factor", "extrapolation_factor",
    "beta_fast", "beta_slow", "low_freq_factor", "high_freq_factor", "mscale", "mscale_all_dim",
)
ROPE_INT_KEYS = ("original_max_position_embeddings",)
ROPE_LIST_KEYS = ("long_factor", "short_factor")
# rope types whose scaling conversion/base.py TextModel.set_gguf_parameters writes only when `factor`
# is present (without it the converter drops the scaling with a warning; kquant refuses)
ROPE_NEEDS_FACTOR = ("linear", "yarn")
ROPE_LAYER_TYPES = ("full_attention", "sliding_attention")



def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def read_config(path: Path) -> dict[str, Any]:
    """Read config.json and check the keys kquant relies on (one-line InputError per problem)."""
    cfg = read_json(path)
    if not isinstance(cfg, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
    if "text_config" in cfg or "llm_config" in cfg:
        raise UnsupportedError(f"{path}: multimodal configs (text_config) are not supported; use a text-only checkpoint")
    archs = cfg.get("architectures")
    if archs is None:
        raise InputError(f"{path}: missing key 'architectures'")
    if not isinstance(archs, list) or not archs or not all(isinstance(a, str) for a in archs):
        raise InputError(f"{path}: 'architectures' must be a non-empty list of strings, got {archs!r}")
    mt = cfg.get("model_type")
    if not isinstance(mt, str):
        raise InputError(f"{path}: missing or non-string key 'model_type' (got {mt!r})")
    cc = CONFIG_CLASSES.get(mt)
    required_as = (cc.required_as or {}) if cc is not None else {}
    amap = (cc.attribute_map or {}) if cc is not None else {}
    for req in REQUIRED_INT_KEYS:
        names = required_as.get(req, (req,))
        if not names:
            continue
        k = next((n for n in names if n in cfg), None)
        if k is None:
            k = next((a for a, n in amap.items() if n in names and a in cfg), None)
        if k is None:
            raise InputError(f"{path}: missing key {names[0]!r}")
        if not _is_int(cfg[k]) or cfg[k] <= 0:
            raise InputError(f"{path}: {k!r} must be a positive integer, got {cfg[k]!r}")
    for k in OPTIONAL_INT_KEYS:
        if k in cfg and cfg[k] is not None and (not _is_int(cfg[k]) or cfg[k] < 0):
            raise InputError(f"{path}: {k!r} must be a non-negative integer or null, got {cfg[k]!r}")
    for k in OPTIONAL_NUMBER_KEYS:
        if k in cfg and cfg[k] is not None and not _is_number(cfg[k]):
            raise InputError(f"{path}: {k!r} must be a number, got {cfg[k]!r}")
    for k in OPTIONAL_BOOL_KEYS:
        if k in cfg and not isinstance(cfg[k], bool):
            raise InputError(f"{path}: {k!r} must be true or false, got {cfg[k]!r}")
    for k in OPTIONAL_BOOL_OR_NULL_KEYS:
        if k in cfg and cfg[k] is not None and not isinstance(cfg[k], bool):
            raise InputError(f"{path}: {k!r} must be true, false or null, got {cfg[k]!r}")
    for key in ("rope_scaling", "rope_parameters"):
        rd = cfg.get(key)
        if rd is not None and not isinstance(rd, dict):
            raise InputError(f"{path}: {key!r} must be an object or null, got {rd!r}")
    # the dict TextModel takes: rope_parameters when the key is present (even null), else rope_scaling
    key = "rope_parameters" if "rope_parameters" in cfg else "rope_scaling"
    rd = cfg.get(key) or {}
    nested = [k for k in ROPE_LAYER_TYPES if k in rd]
    if nested:
        for k in nested:
            if not isinstance(rd[k], dict):
                raise InputError(f"{path}: '{key}.{k}' must be an object, got {rd[k]!r}")
            _check_rope_dict(path, f"{key}.{k}", rd[k])
    else:
        _check_rope_dict(path, key, rd)
    return cfg


def _check_rope_dict(path: Path, name: str, rd: dict[str, Any]) -> None:
    """Types of one rope_scaling / rope_parameters dict, and the factor its rope type needs."""
    for k in ROPE_STR_KEYS:
        if rd.get(k) is not None and not isinstance(rd[k], str):
            raise InputError(f"{path}: '{name}.{k}' must be a string, got {rd[k]!r}")
    for k in ROPE_NUMBER_KEYS:
        if rd.get(k) is not None and not _is_number(rd[k]):
            raise InputError(f"{path}: '{name}.{k}' must be a number, got {rd[k]!r}")
    for k in ROPE_INT_KEYS:
        if rd.get(k) is not None and (not _is_int(rd[k]) or rd[k] <= 0):
            raise InputError(f"{path}: '{name}.{k}' must be a positive integer, got {rd[k]!r}")
    for k in ROPE_LIST_KEYS:
        v = rd.get(k)
        if v is not None and (not isinstance(v, list) or not all(_is_number(x) for x in v)):
            raise InputError(f"{path}: '{name}.{k}' must be a list of numbers, got {v!r}")
    rope_type = rd.get("rope_type", rd.get("type"))
    if rope_type in ROPE_NEEDS_FACTOR and rd.get("factor") is None:
        raise InputError(f"{path}: '{name}.factor' is missing (rope_type {rope_type!r} needs it)")


def to_hparams(cfg: dict[str, Any], path: Path) -> dict[str, Any]:
    """Emulate `AutoConfig.from_pretrained(dir).to_dict()` for the keys the converter reads."""
    mt = cfg["model_type"]
    cc = CONFIG_CLASSES.get(mt)
    if cc is None:
        known = ", ".join(sorted(CONFIG_CLASSES))
        raise UnsupportedError(f"{path}: model_type {mt!r} is not supported (supported: {known})")
    hp: dict[str, Any] = {} if cc.raw else json.loads(json.dumps({**_GENERIC, **cc.defaults}))  # defaults may hold dicts
    cfg = json.loads(json.dumps(cfg))  # deep copy: rope_scaling is mutated below, as upstream does
    for alias, real in (cc.attribute_map or {}).items():  # PretrainedConfig.__setattr__ / __init__ kwargs
        if alias in cfg:
            cfg[real] = cfg.pop(alias)
    hp.update(cfg)
    if cc.kv_heads_fallback and hp.get("num_key_value_heads") is None:
        hp["num_key_value_heads"] = hp["num_attention_heads"]
    rs = hp.get("rope_scaling")
    if cc.rope_type_alias and isinstance(rs, dict) and "type" in rs:
        rs["rope_type"] = rs["type"]
    if cc.post_init is not None:
        cc.post_init(hp)
    return hp


# conversion/base.py ModelBase.find_hparam
def find_hparam(hp: dict[str, Any], keys, optional: bool = False) -> Any:
    """First of `keys` present in `hp` (present-but-None counts, as upstream)."""
    key = next((k for k in keys if k in hp), None)
    if key is not None:
        return hp[key]
    if optional:
        return None
    raise KeyError(f"could not find any of: {keys}")


# conversion/base.py TextModel.__init__ (rope_parameters mirroring)
def rope_parameters(hp: dict[str, Any]) -> dict[str, Any]:
    """The `self.rope_parameters` dict TextModel builds (aliases hp['rope_scaling'] like upstream)."""
    rp = hp.get("rope_parameters", hp.get("rope_scaling")) or {}
    rope_theta = find_hparam(hp, ["global_rope_theta", "rope_global_theta", "rope_theta_global", "rope_theta", "rotary_emb_base"], True)
    local_rope_theta = find_hparam(hp, ["local_rope_theta", "rope_local_theta", "rope_theta_local", "swa_rope_theta", "rope_local_base_freq"], True)
    partial_rotary_factor = find_hparam(hp, ["partial_rotary_factor", "rope_pct", "rope_percent"], True)
    original_max_position_embeddings = find_hparam(hp, ["original_max_position_embeddings"], True)
    if "full_attention" not in rp and "sliding_attention" not in rp:
        if local_rope_theta is not None:
            rp["sliding_attention"] = {"rope_theta": local_rope_theta}
        if "rope_theta" not in rp and rope_theta is not None:
            rp["rope_theta"] = rope_theta
        if "rope_type" not in rp and (rope_type := rp.get("type")) is not None:
            rp["rope_type"] = rope_type
        if "partial_rotary_factor" not in rp and partial_rotary_factor is not None:
            rp["partial_rotary_factor"] = partial_rotary_factor
        if "original_max_position_embeddings" not in rp and original_max_position_embeddings is not None:
            rp["original_max_position_embeddings"] = original_max_position_embeddings
    return rp
