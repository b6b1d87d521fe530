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

Multimodal releases (Gemma3ForConditionalGeneration, Mistral3ForConditionalGeneration,
Llama4ForConditionalGeneration) nest the language model's config under `text_config`: the
composite config class builds a text config class from it, `to_dict()` returns both, and
conversion/base.py TextModel.__init__ merges them (`{**hparams, **hparams["text_config"]}`), so
every key of the text class (its defaults, PretrainedConfig's own such as tie_word_embeddings and
architectures=None) overrides the top level. `to_hparams` does the same with the two HFConfigs.
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
# conversion/base.py ModelBase.load_hparams: nested language-model configs it renames to text_config
# (InternVL, GlmASR, Qwen2.5-Omni, DeepSeekOCR, LFM2-Audio: none of them a kquant family)
OTHER_TEXT_CONFIGS = ("llm_config", "lm_config", "thinker_config", "language_config", "lfm")


@dataclass(frozen=True)
class HFConfig:
    """A transformers config class (configuration_<model>.py, 4.57.6): the __init__ defaults of every
    key llama.cpp reads, and the __init__ rewrites. Families declare theirs (`TextModel.configs`)."""

    model_type: str
    defaults: dict[str, Any]
    rope_type_alias: bool = False  # copies rope_scaling["type"] into rope_scaling["rope_type"]
    kv_heads_fallback: bool = False  # replaces num_key_value_heads=None by num_attention_heads
    post_init: Callable[[dict[str, Any]], None] | None = None  # any other __init__ rewrite, in place
    raw: bool = False  # no such class in transformers 4.57.6: AutoConfig fails and the converter reads config.json as is
    # a composite (multimodal) config: the model_type of the text config class it builds from
    # `text_config`; `text_fixed` when that class does not depend on text_config["model_type"]
    text_config: str | None = None
    text_fixed: bool = True
    # a composite class that builds its text config from all its other keys when config.json has no
    # `text_config` (Qwen2VLConfig: "For BC use all kwargs to init `TextConfig`"); the keys it takes itself
    flat_text_keys: tuple[str, ...] | None = None
    # PretrainedConfig.attribute_map: a config.json key stored under another name (GPT-2: hidden_size -> n_embd)
    attribute_map: dict[str, str] | None = None
    # REQUIRED_INT_KEYS this class names otherwise (canonical key -> its own keys) or lacks (empty tuple)
    required_as: dict[str, tuple[str, ...]] | None = None


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
# booleans transformers 5 may write as null (GemmaConfig / Gemma2Config: use_bidirectional_attention=None),
# or as a mode (Gemma4TextConfig: "all" / "vision")
OPTIONAL_BOOL_OR_NULL_KEYS = ("use_bidirectional_attention",)
BIDIRECTIONAL_MODES = ("all", "vision")

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
    """Read config.json and check the keys kquant relies on (one-line InputError per problem).

    A multimodal config's `text_config` is checked as the language model's keys; the keys its
    config class defaults may be missing there (to_hparams checks them after the defaults)."""
    cfg = read_json(path)
    if not isinstance(cfg, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
    if any(k in cfg for k in OTHER_TEXT_CONFIGS):
        key = next(k for k in OTHER_TEXT_CONFIGS if k in cfg)
        raise UnsupportedError(f"{path}: multimodal configs with {key!r} are not supported")
    tc = cfg.get("text_config")
    if "text_config" in cfg and not isinstance(tc, dict):
        raise InputError(f"{path}: 'text_config' must be an object, got {tc!r}"[:200])
    archs = cfg.get("architectures")
    if archs is None:
        raise InputError(f"{path}: missing key 'architectures'")
    if not isinstance(archs, list) or not archs or not all(isinstance(a, str) for a in archs):
        raise InputError(f"{path}: 'architectures' must be a non-empty list of strings, got {archs!r}")
    mt = cfg.get("model_type")
    if not isinstance(mt, str):
        raise InputError(f"{path}: missing or non-string key 'model_type' (got {mt!r})")
    if tc is None:
        cc = CONFIG_CLASSES.get(mt)
        if cc is not None and cc.text_config is not None and cc.flat_text_keys is None and not cc.raw:  # the composite class would build its default (full-size) text config
            raise InputError(f"{path}: missing key 'text_config' (the language model's config)")
        _check_keys(path, cfg, "", required=True, cc=cc)
        return cfg
    tarchs = tc.get("architectures")
    if tarchs is not None and (not isinstance(tarchs, list) or not tarchs or not all(isinstance(a, str) for a in tarchs)):
        raise InputError(f"{path}: 'text_config.architectures' must be a non-empty list of strings, got {tarchs!r}"[:200])
    if tc.get("model_type") is not None and not isinstance(tc["model_type"], str):
        raise InputError(f"{path}: 'text_config.model_type' must be a string, got {tc['model_type']!r}"[:200])
    _check_keys(path, tc, "text_config.", required=False)
    return cfg


def _check_keys(path: Path, cfg: dict[str, Any], where: str, *, required: bool, cc: HFConfig | None = None) -> None:
    """Types of the keys kquant reads from one (text) config dict; `required`: REQUIRED_INT_KEYS must be there
    (under the names the config class `cc` gives them, or its attribute_map aliases)."""
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
            if required:
                raise InputError(f"{path}: missing key {where + names[0]!r}")
            continue
        if not _is_int(cfg[k]) or cfg[k] <= 0:
            raise InputError(f"{path}: {where + k!r} must be a positive integer, got {cfg[k]!r}")
    for k in OPTIONAL_INT_KEYS:
        if k in cfg and cfg[k] is not None and (not _is_int(cfg[k]) or cfg[k] < 0):
            raise InputError(f"{path}: {where + k!r} must be a non-negative integer or null, got {cfg[k]!r}")
    for k in OPTIONAL_NUMBER_KEYS:
        v = cfg.get(k)
        if k == "rope_theta" and isinstance(v, list) and v and all(_is_number(x) for x in v):
            continue  # one per layer (Step 3.5); families that take a single number check it when they read it
        if k in cfg and v is not None and not _is_number(v):
            raise InputError(f"{path}: {where + k!r} must be a number, got {cfg[k]!r}")
    for k in OPTIONAL_BOOL_KEYS:
        if k in cfg and not isinstance(cfg[k], bool):
            raise InputError(f"{path}: {where + k!r} must be true or false, got {cfg[k]!r}")
    for k in OPTIONAL_BOOL_OR_NULL_KEYS:
        if k in cfg and cfg[k] is not None and not isinstance(cfg[k], bool) and cfg[k] not in BIDIRECTIONAL_MODES:
            raise InputError(f"{path}: {where + k!r} must be true, false, null, 'all' or 'vision', got {cfg[k]!r}")
    for key in ("rope_scaling", "rope_parameters"):
        rd = cfg.get(key)
        if rd is not None and not isinstance(rd, dict):
            raise InputError(f"{path}: {where + key!r} must be an object or null, got {rd!r}")
    # the dict TextModel takes: rope_parameters when the key is present (even null), else rope_scaling
    key = "rope_parameters" if "rope_parameters" in cfg else "rope_scaling"
    rd = cfg.get(key) or {}
    nested = [k for k in ROPE_LAYER_TYPES if k in rd]
    if nested:
        for k in nested:
            if not isinstance(rd[k], dict):
                raise InputError(f"{path}: '{where}{key}.{k}' must be an object, got {rd[k]!r}")
            _check_rope_dict(path, f"{where}{key}.{k}", rd[k])
    else:
        _check_rope_dict(path, where + key, rd)


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


def hf_architecture(cfg: dict[str, Any]) -> str:
    """conversion/base.py get_model_architecture (text models): text_config's architectures when it names one."""
    tc = cfg.get("text_config")
    if isinstance(tc, dict) and tc.get("architectures") is not None:
        return tc["architectures"][0]
    return cfg["architectures"][0]


def _apply(cc: HFConfig, cfg: dict[str, Any], path: Path) -> dict[str, Any]:
    """One config class: PretrainedConfig's and the class's defaults, config.json's keys, the __init__ rewrites."""
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
        try:
            cc.post_init(hp)
        except (UnsupportedError, InputError) as e:
            raise type(e)(f"{path}: {e}") from None
    return hp


def to_hparams(cfg: dict[str, Any], path: Path) -> dict[str, Any]:
    """Emulate `AutoConfig.from_pretrained(dir).to_dict()` for the keys the converter reads, with a
    multimodal config's text_config merged into the top level as TextModel.__init__ merges it."""
    mt = cfg["model_type"]
    cc = CONFIG_CLASSES.get(mt)
    if cc is None:
        known = ", ".join(sorted(CONFIG_CLASSES))
        raise UnsupportedError(f"{path}: model_type {mt!r} is not supported (supported: {known})")
    if cc.text_config is None:
        if "text_config" in cfg:
            raise UnsupportedError(f"{path}: model_type {mt!r} with a 'text_config' is not supported")
        return _apply(cc, cfg, path)
    if cc.raw:  # no config class: the converter reads config.json as it is and merges text_config over it
        hp = _apply(cc, cfg, path)
        hp = {**hp, **hp.get("text_config", {})}
        for k in REQUIRED_INT_KEYS:
            if not _is_int(hp.get(k)) or hp[k] <= 0:
                raise InputError(f"{path}: 'text_config.{k}' must be a positive integer, got {hp.get(k)!r}")
        return hp
    if "text_config" in cfg:
        tc = cfg["text_config"]
    else:  # read_config allows it only for these classes: the text class takes the other keys
        tc = {k: v for k, v in cfg.items() if k not in cc.flat_text_keys}
    tmt = cc.text_config if cc.text_fixed else tc.get("model_type", cc.text_config)
    tcc = CONFIG_CLASSES.get(tmt)
    if tcc is None or tcc.text_config is not None:
        raise UnsupportedError(f"{path}: 'text_config.model_type' {tmt!r} is not supported for model_type {mt!r}")
    if tcc.raw and "text_config" in cfg:
        # the composite class looks the text class up in CONFIG_MAPPING and fails (no such class in
        # transformers 4.57.6, e.g. Mistral3Config with a `ministral3` text_config): AutoConfig raises and
        # the converter reads config.json as it is, text_config merged over the top level
        hp = json.loads(json.dumps(cfg))
        hp = {**hp, **hp["text_config"]}
        for k in REQUIRED_INT_KEYS:
            if not _is_int(hp.get(k)) or hp[k] <= 0:
                raise InputError(f"{path}: 'text_config.{k}' must be a positive integer, got {hp.get(k)!r}")
        return hp
    text = _apply(tcc, tc, path)
    text["model_type"] = tcc.model_type  # the text class's own
    text.setdefault("architectures", None)  # PretrainedConfig's default
    top = _apply(cc, {k: v for k, v in cfg.items() if k != "text_config"}, path)
    top["text_config"] = text
    hp = {**top, **text}
    for k in REQUIRED_INT_KEYS:  # now with the text class's defaults
        if not _is_int(hp.get(k)) or hp[k] <= 0:
            raise InputError(f"{path}: 'text_config.{k}' must be a positive integer, got {hp.get(k)!r}")
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
