"""Gemma 4's language model (Gemma4ForCausalLM, and Gemma4ForConditionalGeneration without its vision
and audio towers): conversion/gemma.py Gemma4Model (llama.cpp as vendored in llama-cpp-python 0.3.36),
built on Gemma3Model.

Variants as Google ships them, each as the converter writes it: dense (31B: sliding and full attention
layers with their own head sizes, full layers' keys doubling as values), MoE (26B-A4B: a dense MLP and
128 stacked experts per layer, gate/up kept fused, the router's scale and per-expert scale written as
`ffn_gate_inp.scale` / `ffn_down_exps.scale`), per-layer embeddings and KV-shared layers (E2B / E4B,
`use_double_wide_mlp`). transformers 4.57.6 has no Gemma 4 config class: AutoConfig fails and the
converter reads config.json as it is (text_config merged over the top level), so only the keys written
there count, with no class defaults. Norm weights are written as they are (Gemma4RMSNorm has no + 1).
The vocabulary is LlamaHfVocab's (tokenizer.json through transformers 4.57.6's AutoTokenizer), with the
chat parser's tokens made USER_DEFINED.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gguf import MODEL_ARCH, Keys

from ..errors import InputError, UnsupportedError
from ..io.gguf_kv import TOK_LIST, TOK_MODEL, TOK_SCORES, TOK_TYPE, StringArray
from .. import vocab as V
from .base import QK_NORM_LAYER, TextModel, register
from .gemma import GEMMA2_LAYER, Gemma3Model
from .hparams import HFConfig

# no transformers 4.57.6 class: the converter reads config.json as it is (text_config merged over it)
GEMMA4_TEXT_CONFIG = HFConfig("gemma4_text", {}, raw=True)
GEMMA4_CONFIG = HFConfig("gemma4", {}, raw=True, text_config="gemma4_text")

# Gemma4Model.set_vocab: always rendered, so that the chat parser can read them
VISIBLE_TOKENS = frozenset({"<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", "<|tool_response>",
                            "<tool_response|>", "<|\"|>"})

GEMMA4_LAYER = GEMMA2_LAYER | QK_NORM_LAYER | {  # Gemma 3's layer plus the scalar
    "layer_scalar": "layer_output_scale",  # a buffer; filter_tensors names it .weight
}
MOE_LAYER = {
    "router.proj": "ffn_gate_inp",
    "router.scale": "ffn_gate_inp.scale",  # bare parameters: modify_tensors gives them these names
    "router.per_expert_scale": "ffn_down_exps.scale",
    "experts.gate_up_proj": "ffn_gate_up_exps",  # stacked [expert, 2 * ff, embd], kept fused
    "experts.down_proj": "ffn_down_exps",  # stacked [expert, embd, ff]
    "pre_feedforward_layernorm_2": "pre_ffw_norm_2",
    "post_feedforward_layernorm_1": "post_ffw_norm_1",
    "post_feedforward_layernorm_2": "post_ffw_norm_2",
}
PLE_LAYER = {
    "per_layer_input_gate": "inp_gate",
    "per_layer_projection": "proj",
    "post_per_layer_input_norm": "post_norm",
}
PLE_GLOBALS = {
    "model.embed_tokens_per_layer": "per_layer_token_embd",
    "model.per_layer_model_projection": "per_layer_model_proj",
    "model.per_layer_projection_norm": "per_layer_proj_norm",
}
STACKED = ("ffn_gate_up_exps", "ffn_down_exps")


def _check_size(cfg, key: str, v) -> None:
    """A config value used as a size: absent (None) or a non-negative integer, else a one-line InputError."""
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
        raise InputError(f"{cfg}: {key!r} must be a non-negative integer, got {v!r}"[:200])


@register("Gemma4ForConditionalGeneration", "Gemma4ForCausalLM")
class Gemma4Model(Gemma3Model):
    model_arch = MODEL_ARCH.GEMMA4
    inverse_names = True  # no value changes (norms as they are), stacked experts kept as HF stacks them
    inverse_refused = ""
    inverse_bare = ("ffn_gate_inp.scale", "ffn_down_exps.scale")
    configs = (GEMMA4_TEXT_CONFIG, GEMMA4_CONFIG)
    layer = GEMMA4_LAYER
    bare_params = ("router.scale", "router.per_expert_scale")
    unknown_rope_types = ("proportional",)  # TextModel.set_gguf_parameters: "Unknown RoPE type" warning only
    # automix: the experts read pre_feedforward_layernorm_2's output; the router an unscaled norm (none here)
    norm_of = {"attn_q": "attn_norm", "attn_k": "attn_norm", "attn_v": "attn_norm", "ffn_gate": "ffn_norm",
               "ffn_up": "ffn_norm", "ffn_gate_up_exps": "pre_ffw_norm_2"}

    def __init__(self, hp: dict[str, Any], **kw):
        super().__init__(hp, **kw)
        self._required_only = False
        for key in ("num_kv_shared_layers", "hidden_size_per_layer_input", "global_head_dim"):  # used as sizes early on
            _check_size(self.config_path, key, hp.get(key))
        if self._ple():
            self.globals_ = {**TextModel.globals_, **PLE_GLOBALS}

    # ------------------------------------------------------------------ config
    def need(self, key: str):
        """hparams[key] as upstream indexes it (a KeyError there): InputError when config.json lacks it."""
        if key not in self.hp:
            raise InputError(f"{self.config_path}: missing key {key!r} (Gemma 4's config.json is read as it is)")
        return self.hp[key]

    def _ple(self) -> int:
        return self.hp.get("hidden_size_per_layer_input") or 0

    def layer_types(self) -> list[str]:
        lt = self.need("layer_types")
        if not isinstance(lt, list) or not all(isinstance(t, str) for t in lt) or len(lt) < self.block_count:
            raise InputError(f"{self.config_path}: 'layer_types' must be a list of {self.block_count} strings, got {lt!r}"[:300])
        return lt

    def _per_layer(self, key: str, top: str):
        """Gemma4Model: the full-attention layers' `key` from `top`, else per_layer_config's first full layer giving it."""
        v = self.hp.get(top)
        plc = self.hp.get("per_layer_config")
        if v is None and plc is not None:
            if not isinstance(plc, dict):
                raise InputError(f"{self.config_path}: 'per_layer_config' must be an object, got {plc!r}"[:200])
            types = self.hp.get("layer_types", [])
            for idx, lc in plc.items():
                try:
                    i = int(idx)
                except ValueError:
                    raise InputError(f"{self.config_path}: per_layer_config key {idx!r} is not a layer index") from None
                if i < len(types) and types[i] == "full_attention" and isinstance(lc, dict) and key in lc:
                    v = lc[key]
                    break
        return v

    def head_dim_full(self) -> int:
        v = self._per_layer("head_dim", "global_head_dim")
        if v is None:
            raise InputError(f"{self.config_path}: no head size for the full-attention layers "
                             "(global_head_dim, or head_dim in per_layer_config)")
        _check_size(self.config_path, "head_dim of the full-attention layers", v)
        return v

    # Gemma4Model.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        hp = self.hp
        self.need("head_dim")  # read below without a default
        if hp.get("sliding_window_pattern") != 1:  # Gemma3Model.set_gguf_parameters reads it then
            self.need("sliding_window")
        super().set_gguf_parameters()
        n_shared = self.need("num_kv_shared_layers")
        self.u32("attention.shared_kv_layers", n_shared, "num_kv_shared_layers")
        self.u32("embedding_length_per_layer_input", self._ple(), "hidden_size_per_layer_input")
        swa = [t == "sliding_attention" for t in self.layer_types()]
        self.kv.add_array(self.key("attention.sliding_window_pattern"), swa)
        hd_full, hd_swa = self.head_dim_full(), hp["head_dim"]
        self.u32("attention.key_length", hd_full, "global_head_dim")
        self.u32("attention.value_length", hd_full, "global_head_dim")
        self.u32("attention.key_length_swa", hd_swa, "head_dim")
        self.u32("attention.value_length_swa", hd_swa, "head_dim")
        try:
            n_ff_exp = self.find_hparam(["expert_intermediate_size", "moe_intermediate_size"])
        except KeyError:
            raise InputError(f"{self.config_path}: missing key 'moe_intermediate_size' (null for a dense model)") from None
        if n_ff_exp is not None:
            self.u32("expert_feed_forward_length", n_ff_exp, "moe_intermediate_size")
        if hp.get("use_double_wide_mlp", False):
            n_ff = self.need("intermediate_size")
            first_shared = self.block_count - n_shared
            arr = [n_ff if il < first_shared else n_ff * 2 for il in range(self.block_count)]
            self.u32_array("feed_forward_length", arr, "intermediate_size")
        n_kv_full = self._per_layer("num_key_value_heads", "num_global_key_value_heads")
        n_kv_swa = hp.get("num_key_value_heads")
        if n_kv_full is not None and n_kv_swa is not None:
            arr = [n_kv_swa if s else n_kv_full for s in swa]
            self.u32_array("attention.head_count_kv", arr, "num_key_value_heads / num_global_key_value_heads")
        # rope_parameters is one dict per layer type here: its own partial_rotary_factor is absent
        prf_swa = self.rp.get("partial_rotary_factor", 1.0)
        if isinstance(hd_full, bool) or not isinstance(hd_full, (int, float)) or isinstance(prf_swa, bool) \
                or not isinstance(prf_swa, (int, float)) or not isinstance(hd_swa, (int, float)):
            raise InputError(f"{self.config_path}: head sizes and partial_rotary_factor must be numbers")
        self.u32("rope.dimension_count", int(hd_full), "global_head_dim")
        self.u32("rope.dimension_count_swa", int(hd_swa * prf_swa), "head_dim")

    # Gemma4Model.generate_extra_tensors: "proportional" rope of the full layers as freq factors
    def generate_extra_tensors(self) -> list[tuple[str, np.ndarray]]:
        rp = self.hp.get("rope_parameters")
        full = rp.get("full_attention") if isinstance(rp, dict) else None
        if not isinstance(full, dict):
            raise InputError(f"{self.config_path}: missing key 'rope_parameters.full_attention'")
        if full.get("rope_type") != "proportional":
            raise UnsupportedError(f"{self.config_path}: rope_parameters.full_attention.rope_type must be 'proportional' "
                                   f"(the converter asserts it), got {full.get('rope_type')!r}"[:300])
        if "partial_rotary_factor" not in full:
            raise InputError(f"{self.config_path}: missing key 'rope_parameters.full_attention.partial_rotary_factor'")
        hd, prf = self.head_dim_full(), full["partial_rotary_factor"]
        if isinstance(prf, bool) or not isinstance(prf, (int, float)):
            raise InputError(f"{self.config_path}: rope_parameters.full_attention.partial_rotary_factor must be a number, "
                             f"got {prf!r}"[:200])
        n_rot = int(hd * prf / 2)
        n_unrot = int(hd / 2) - n_rot
        if n_rot < 0 or n_unrot < 0:
            raise InputError(f"{self.config_path}: partial_rotary_factor {prf!r} does not fit head size {hd}")
        values = np.array([1.0] * n_rot + [1e30] * n_unrot, dtype=np.float32)
        return [("rope_freqs.weight", values)]

    # Gemma4Model.set_vocab
    def set_vocab(self, tokenizer_pre: str | None = None) -> None:
        tokens, scores, toktypes = V.llama_hf_vocab(self.tok_folder)
        toktypes = [V.USER_DEFINED if t in VISIBLE_TOKENS else y for t, y in zip(tokens, toktypes)]
        self.kv.add_string(TOK_MODEL, "gemma4")
        self.kv.add_array(TOK_LIST, StringArray(tokens))
        self.kv.add_array(TOK_SCORES, scores)
        self.kv.add_array(TOK_TYPE, toktypes)
        V.SpecialVocab(self.tok_folder, load_merges=True).add_to_gguf(self.kv)
        self.kv.add_bool(Keys.Tokenizer.ADD_PREFIX, False)
        self.kv.add_bool(Keys.Tokenizer.ADD_BOS, True)

    # ------------------------------------------------------------------ GGUF -> HF (dequantize --hf-names)
    @classmethod
    def hf_layer(cls, kinds: frozenset[str]) -> dict[str, str]:
        return GEMMA4_LAYER | MOE_LAYER | PLE_LAYER

    @classmethod
    def hf_tensor_name(cls, bid: int | None, base: str, is_bias: bool, kinds: frozenset[str] = frozenset()) -> str | None:
        """The text model's names; buffers and stacked parameters without a .weight suffix, as HF has them."""
        if is_bias:
            return None
        if bid is None:
            hf = {g: h for h, g in (TextModel.globals_ | PLE_GLOBALS).items()}.get(base)
            return None if hf is None else hf + ".weight"
        mod = {g: h for h, g in cls.hf_layer(kinds).items()}.get(base)
        if mod is None:
            return None
        bare = mod == "layer_scalar" or mod in cls.bare_params or mod.startswith("experts.")
        return f"{cls.layer_prefix}{bid}.{mod}" + ("" if bare else ".weight")

    # ------------------------------------------------------------------ tensors
    # Gemma4Model.filter_tensors: the layer scalar buffer (and stacked experts) named .weight
    def filter_name(self, name: str) -> str | None:
        if name.endswith("layer_scalar"):
            name += ".weight"
        if ".experts." in name and not name.endswith(".weight"):
            name += ".weight"
        return super().filter_name(name)

    def layer_modules(self, bid: int) -> dict[str, str]:
        """Every module layer `bid` may have; during check_complete, the ones it must have."""
        hp = self.hp
        out = dict(self.layer)
        if hp.get("enable_moe_block"):
            out |= MOE_LAYER
        if self._ple():
            out |= PLE_LAYER
        if self._required_only:
            del out["layer_scalar"]
            n_shared = hp.get("num_kv_shared_layers") or 0
            full = self.layer_types()[bid] == "full_attention"
            if bid >= self.block_count - n_shared:  # KV-shared layers reuse another layer's keys and values
                for m in ("self_attn.k_proj", "self_attn.v_proj", "self_attn.k_norm"):
                    del out[m]
            elif full and hp.get("attention_k_eq_v"):  # keys double as values
                del out["self_attn.v_proj"]
        return out

    def check_complete(self, out) -> None:
        self._required_only = True
        try:
            super().check_complete(out)
        finally:
            self._required_only = False

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes fixed by the config (attention and MLP sizes vary by layer: llama.cpp checks those at load)."""
        hp = self.hp
        e, n_vocab = hp["hidden_size"], hp["vocab_size"]
        s: dict[str, tuple[int, ...]] = {
            "output": (n_vocab, e), "output_norm": (e,), "attn_norm": (e,), "post_attention_norm": (e,),
            "ffn_norm": (e,), "post_ffw_norm": (e,), "layer_output_scale": (1,),
        }
        if hp.get("enable_moe_block"):
            n_x, ff = hp.get("num_experts"), hp.get("moe_intermediate_size")
            if isinstance(n_x, int) and isinstance(ff, int):
                s |= {"ffn_gate_inp": (n_x, e), "ffn_gate_inp.scale": (e,), "ffn_down_exps.scale": (n_x,),
                      "ffn_gate_up_exps": (n_x, 2 * ff, e), "ffn_down_exps": (n_x, e, ff),
                      "pre_ffw_norm_2": (e,), "post_ffw_norm_1": (e,), "post_ffw_norm_2": (e,)}
        if (p := self._ple()):
            n = self.block_count * p
            s |= {"per_layer_model_proj": (n, e), "per_layer_proj_norm": (p,), "inp_gate": (p, e), "proj": (e, p),
                  "post_norm": (e,)}
        return s

    def modify_tensors(self, t, name, gname, base, bid):
        if base == "token_embd":  # Gemma3Model.modify_tensors: rows past the tokenizer's vocabulary dropped
            return super().modify_tensors(t, name, gname, base, bid)
        if base in STACKED:
            return self.stacked_experts(t, [(gname, None)])
        return TextModel.modify_tensors(self, t, name, gname, base, bid)  # norm_shift 0: no + 1
