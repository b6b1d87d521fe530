"""IBM Granite (dense): conversion/granite.py GraniteModel (llama.cpp as vendored in llama-cpp-python 0.3.36).

A LlamaModel whose config's *_multiplier / logits_scaling keys become the GGUF scale keys; GraniteMoeModel
(GraniteMoe, GraniteMoeShared) adds stacked experts whose fused gate/up tensor is split in two; the hybrid
GraniteHybridModel (Granite 4.0-H, Bamba: Mamba-2 layers from conversion/mamba.py Mamba2Model, attention
layers as GraniteMoeModel); GraniteSWAModel / GraniteMoeSWAModel (interleaved sliding-window attention with
per-head sinks; the MoE one keeps its fused gate/up experts and shared MLP fused). The switch and vision
variants are not ported."""

from __future__ import annotations

from gguf import MODEL_ARCH

from ..errors import InputError, UnsupportedError
from .. import vocab as V
from .base import ATTN_BIASES, HFJoin, LLAMA_LAYER, register, rows
from .hparams import HFConfig
from .llama import LlamaModel
from .mamba import MAMBA2_BARE, MAMBA2_BIAS_OK, MAMBA2_LAYER, find_prefixed, mamba2_name, mamba2_spec


def _kv_heads(hp: dict) -> None:
    # configuration_granite*.py Granite*Config.__init__: "for backward compatibility"
    if hp.get("num_key_value_heads") is None:
        hp["num_key_value_heads"] = hp["num_attention_heads"]
    # rope_config_validation (no `type` -> `rope_type` alias in these classes) rejects a rope_scaling without
    # rope_type; AutoConfig then fails and the converter reads config.json raw, without the class defaults
    rs = hp.get("rope_scaling")
    if isinstance(rs, dict) and "rope_type" not in rs:
        raise UnsupportedError("rope_scaling without 'rope_type' (transformers 4.57.6 rejects it and llama.cpp's "
                               "converter then reads config.json without the config class defaults; not emulated)")


# transformers 4.57.6 configuration_granite.py __init__ defaults, for the keys llama.cpp reads
GRANITE_CONFIG = HFConfig("granite", dict(
    vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=None, max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False,
    rope_theta=10000.0, rope_scaling=None, attention_bias=False, mlp_bias=False, embedding_multiplier=1.0,
    logits_scaling=1.0, residual_multiplier=1.0, attention_multiplier=1.0,
), post_init=_kv_heads)


@register("GraniteForCausalLM")
class GraniteModel(LlamaModel):
    model_arch = MODEL_ARCH.GRANITE
    configs = (GRANITE_CONFIG,)
    inverse_names = True

    # GraniteModel.set_gguf_parameters: head_dim ignored, the multipliers written as scales
    def set_gguf_parameters(self) -> None:
        hp = self.hp
        if hp.get("spatial_target_layers") or hp.get("deepstack_layer_map"):
            raise UnsupportedError(f"{self.config_path}: Granite 4 Vision language models are not supported")
        if hp.get("head_dim"):
            hp.pop("head_dim")
        super().set_gguf_parameters()
        for key, name in (("attention_multiplier", "attention.scale"), ("embedding_multiplier", "embedding_scale"),
                          ("residual_multiplier", "residual_scale"), ("logits_scaling", "logit_scale")):
            if v := hp.get(key):
                self.f32(name, v, key)

    # GraniteModel.filter_tensors: multimodal tensors skipped
    def filter_name(self, name: str) -> str | None:
        if (name.startswith("encoder.") or "image_" in name or "layerwise_projectors" in name
                or "spatial_projectors" in name):
            return None
        return super().filter_name(name)


# transformers 4.57.6 configuration_granitemoe.py / configuration_granitemoeshared.py __init__ defaults
_GRANITE_MOE = dict(
    vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=None, max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False,
    rope_theta=10000.0, rope_scaling=None, attention_bias=False, embedding_multiplier=1.0, logits_scaling=1.0,
    residual_multiplier=1.0, attention_multiplier=1.0, num_local_experts=8, num_experts_per_tok=2,
)
GRANITE_MOE_CONFIG = HFConfig("granitemoe", _GRANITE_MOE, post_init=_kv_heads)
GRANITE_MOE_SHARED_CONFIG = HFConfig("granitemoeshared", _GRANITE_MOE | dict(shared_intermediate_size=0), post_init=_kv_heads)

_ATTN = {k: v for k, v in LLAMA_LAYER.items() if not k.startswith("mlp.")}
# experts stored stacked: input_linear (n_expert, 2 * n_ff, n_embd) is gate and up fused, split by modify_tensors
GRANITE_MOE_LAYER = _ATTN | {
    "block_sparse_moe.router.layer": "ffn_gate_inp",
    "block_sparse_moe.input_linear": "ffn_gate_up_exps",
    "block_sparse_moe.output_linear": "ffn_down_exps",
}
GRANITE_SHARED_MLP = {"shared_mlp.input_linear": "ffn_gate_up_shexp", "shared_mlp.output_linear": "ffn_down_shexp"}


@register("GraniteMoeForCausalLM", "GraniteMoeSharedForCausalLM")
class GraniteMoeModel(GraniteModel):
    model_arch = MODEL_ARCH.GRANITE_MOE
    configs = (GRANITE_MOE_CONFIG, GRANITE_MOE_SHARED_CONFIG)
    bias_ok = ATTN_BIASES
    inverse_names = True
    # --hf-names: input_linear is each expert's gate rows over its up rows; the shared MLP's likewise
    hf_joins = {"ffn_gate_exps": HFJoin("block_sparse_moe.input_linear.weight", 0, 2),
                "ffn_up_exps": HFJoin("block_sparse_moe.input_linear.weight", 1, 2),
                "ffn_down_exps": HFJoin("block_sparse_moe.output_linear.weight"),
                "ffn_gate_shexp": HFJoin("shared_mlp.input_linear.weight", 0, 2, flat=True),
                "ffn_up_shexp": HFJoin("shared_mlp.input_linear.weight", 1, 2, flat=True)}

    @classmethod
    def hf_layer(cls, kinds):
        return GRANITE_MOE_LAYER | GRANITE_SHARED_MLP
    split_modules = {"ffn_gate_up_exps": ("ffn_gate_exps", "ffn_up_exps"),
                     "ffn_gate_up_shexp": ("ffn_gate_shexp", "ffn_up_shexp")}

    def layer_modules(self, bid: int) -> dict[str, str]:
        # GraniteMoeShared: a shared MLP in every layer when shared_intermediate_size > 0
        return GRANITE_MOE_LAYER | (GRANITE_SHARED_MLP if self.hp.get("shared_intermediate_size") else {})

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        hp = self.hp
        n = hp.get("num_local_experts")
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            # the converter would write the shared MLP as a dense FFN; neither transformers nor llama.cpp run that
            raise UnsupportedError(f"{self.config_path}: 'num_local_experts' must be a positive integer for {self.hf_names[0]}, got {n!r}")
        e, f = hp["hidden_size"], hp["intermediate_size"]
        sf = hp.get("shared_intermediate_size") or 0
        return super().tensor_shapes() | {
            "ffn_gate_inp": (n, e), "ffn_gate_up_exps": (n, 2 * f, e), "ffn_down_exps": (n, e, f),
            "ffn_gate_up_shexp": (2 * sf, e), "ffn_down_shexp": (e, sf),
        }

    # GraniteMoeModel.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        if v := self.hp.get("shared_intermediate_size"):
            self.u32("expert_shared_feed_forward_length", v, "shared_intermediate_size")

    # GraniteMoeModel.modify_tensors: input_linear (gate and up fused) split in two
    def modify_tensors(self, t, name, gname, base, bid):
        if base == "ffn_gate_up_exps":
            f = t[1][1] // 2  # streamed in row slabs (TextModel.stacked_experts), never read whole
            return self.stacked_experts(t, [(f"blk.{bid}.ffn_gate_exps.weight", rows(0, f)),
                                            (f"blk.{bid}.ffn_up_exps.weight", rows(f, 2 * f))])
        if base == "ffn_gate_up_shexp":
            f = t[1][0] // 2
            return [self.spec(f"blk.{bid}.{g}.weight", t, shape=(f, t[1][1]), row_perm=rows(a, a + f))
                    for g, a in (("ffn_gate_shexp", 0), ("ffn_up_shexp", f))]
        return super().modify_tensors(t, name, gname, base, bid)


# conversion/granite.py GraniteHybridModel (Mamba2Model + GraniteMoeModel): Granite 4.0-H and Bamba.
# Mamba2Model reads config.json as it is (no transformers config class, no defaults).
GRANITE_HYBRID_CONFIG = HFConfig("granitemoehybrid", {})
BAMBA_CONFIG = HFConfig("bamba", {})
ATTN = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output"}


@register("GraniteMoeHybridForCausalLM", "BambaForCausalLM")
class GraniteHybridModel(GraniteModel):
    model_arch = MODEL_ARCH.GRANITE_HYBRID
    inverse_refused = "the converter writes the Mamba-2 A as -exp(A_log): not undone exactly"
    configs = (GRANITE_HYBRID_CONFIG, BAMBA_CONFIG)
    bias_ok = MAMBA2_BIAS_OK + tuple(ATTN)
    bias_only = ("mamba.dt_proj",)
    bare_params = MAMBA2_BARE
    inverse_names = False
    prefixes = ("mamba",)

    def find(self, keys, optional: bool = False):
        return find_prefixed(self.hp, keys, self.prefixes, optional)

    def find_hparam(self, keys, optional: bool = False):  # the one TextModel.set_gguf_parameters calls
        return self.find(keys, optional)

    # GraniteHybridModel.get_attn_layers
    def attn_layers(self) -> list[int]:
        hp = self.hp
        if layer_types := hp.get("layer_types"):
            return [i for i, typ in enumerate(layer_types) if typ == "attention"]
        attn = hp.get("attn_layer_indices", [])
        if not attn:
            period, offset = hp.get("attn_layer_period"), hp.get("attn_layer_offset")
            if not period or offset is None:
                raise InputError(f"{self.config_path}: needs layer_types, attn_layer_indices or attn_layer_period/offset")
            attn = [i for i in range(self.block_count) if i % period == offset]
        return attn

    def prepare(self) -> None:
        self._attn = set(self.attn_layers())
        self._ssm = [i for i in range(self.block_count) if i not in self._attn]
        if not self._ssm:
            raise UnsupportedError(f"{self.config_path}: a {self.hf_names[0]} without Mamba layers (converted as "
                                   "granite / granitemoe by llama.cpp) is not supported")
        hp = self.hp
        self.d_model = self.find(["mamba_head_dim", "hidden_size", "d_model"])
        self.n_group = self.find(["n_groups", "num_groups"])
        self.d_inner = self.find(["expand", "num_heads"]) * self.d_model
        self.has_experts = bool(hp.get("num_local_experts"))

    def layer_modules(self, bid: int) -> dict[str, str]:
        m = {"input_layernorm": "attn_norm"}
        m |= ATTN if bid in self._attn else MAMBA2_LAYER
        if self._bamba_ffn:
            m |= {"pre_ff_layernorm": "ffn_norm", "feed_forward.gate_proj": "ffn_gate",
                  "feed_forward.up_proj": "ffn_up", "feed_forward.down_proj": "ffn_down"}
        elif self.has_experts:
            m |= {"post_attention_layernorm": "ffn_norm", "block_sparse_moe.router.layer": "ffn_gate_inp",
                  "block_sparse_moe.input_linear": "ffn_gate_exps", "block_sparse_moe.output_linear": "ffn_down_exps",
                  "shared_mlp.input_linear": "ffn_gate_shexp", "shared_mlp.output_linear": "ffn_down_shexp"}
        else:
            m |= {"post_attention_layernorm": "ffn_norm", "shared_mlp.input_linear": "ffn_gate",
                  "shared_mlp.output_linear": "ffn_down"}
        return m

    def prepare_tensors(self, hf, extra, where):
        # which FFN layout the checkpoint has (Bamba: feed_forward.*, Granite 4.0-H: shared_mlp / block_sparse_moe)
        self._bamba_ffn = any(".feed_forward." in n for n, _, _ in hf)
        if any(n == "model.final_layernorm.weight" for n, _, _ in hf):  # Bamba's output norm
            self.globals_ = {"model.embed_tokens": "token_embd", "model.final_layernorm": "output_norm", "lm_head": "output"}
        return super().prepare_tensors(hf, extra, where)

    # Mamba2Model.filter_tensors
    def filter_name(self, name: str) -> str | None:
        return super().filter_name(mamba2_name(name))

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        s = super().tensor_shapes()
        for k in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps", "ffn_gate_shexp", "ffn_up_shexp",
                  "ffn_down_shexp", "ffn_gate", "ffn_up", "ffn_down", "ffn_gate_inp"):
            s.pop(k, None)  # split from fused tensors, checked in modify_tensors
        return s

    def expected_shape(self, base: str, bias: bool):
        return None if base.startswith("ssm_") else super().expected_shape(base, bias)

    # GraniteHybridModel.modify_tensors -> GraniteMoeModel / Mamba2Model / LlamaModel.modify_tensors
    def modify_tensors(self, t, name, gname, base, bid):
        if name.endswith("block_sparse_moe.input_linear.weight") or "shared_mlp" in name:
            return self.granite_moe_tensors(t, name, gname, bid)
        if bid in self._ssm:
            return [mamba2_spec(self, t, name, gname, self.n_group, self.d_inner)]
        return super().modify_tensors(t, name, gname, base, bid)  # attention layers: Q/K permuted

    # GraniteMoeModel.modify_tensors: fused gate/up split
    def granite_moe_tensors(self, t, name, gname, bid):
        hp = self.hp
        if name.endswith("block_sparse_moe.input_linear.weight"):
            ff = hp["intermediate_size"]
            if len(t[1]) != 3 or t[1][-2] != 2 * ff:
                raise InputError(f"{self.folder}: tensor {t[0]!r} has shape {list(t[1])}, expected [n_expert, {2 * ff}, n_embd]")
            shape = (t[1][0], ff, t[1][2])
            return [self.spec(f"blk.{bid}.ffn_gate_exps.weight", t, shape=shape, transform=lambda a: a[0][:, :ff]),
                    self.spec(f"blk.{bid}.ffn_up_exps.weight", t, shape=shape, transform=lambda a: a[0][:, ff:])]
        if name.endswith("shared_mlp.input_linear.weight"):
            ff = hp["shared_intermediate_size"]
            if len(t[1]) != 2 or t[1][0] != 2 * ff:
                raise InputError(f"{self.folder}: tensor {t[0]!r} has shape {list(t[1])}, expected [{2 * ff}, n_embd]")
            g, u = ("ffn_gate_shexp", "ffn_up_shexp") if self.has_experts else ("ffn_gate", "ffn_up")
            return [self.spec(f"blk.{bid}.{g}.weight", t, shape=(ff, t[1][1]), row_perm=rows(0, ff)),
                    self.spec(f"blk.{bid}.{u}.weight", t, shape=(ff, t[1][1]), row_perm=rows(ff, 2 * ff))]
        return [self.spec(gname, t)]  # shared_mlp.output_linear

    def set_gguf_parameters(self) -> None:
        hp = self.hp
        super().set_gguf_parameters()  # GraniteMoeModel -> GraniteModel -> LlamaModel -> TextModel
        if (v := hp.get("shared_intermediate_size")):
            self.u32("expert_shared_feed_forward_length", v, "shared_intermediate_size")
        self.u32("ssm.conv_kernel", self.find(["conv_kernel", "d_conv"]), "mamba_d_conv")
        self.u32("ssm.state_size", self.find(["state_size", "d_state", "state_dim", "ssm_state_size"]), "mamba_d_state")
        self.u32("ssm.group_count", self.n_group, "mamba_n_groups")
        self.u32("ssm.inner_size", self.d_inner, "mamba_expand")
        self.u32("ssm.time_step_rank", self.find(["n_heads", "num_heads"]), "mamba_n_heads")
        n_kv = self.find(["num_key_value_heads", "n_head_kv"])
        if (rope_dim := hp.get("attn_rotary_emb")):
            self.u32("rope.dimension_count", rope_dim, "attn_rotary_emb")
        self.kv.add_array(self.key("attention.head_count_kv"),
                          [n_kv if i in self._attn else 0 for i in range(self.block_count)])
        use_rope = "BambaForCausalLM" in hp["architectures"]
        self.kv.add_bool(self.key("rope.scaling.finetuned"), use_rope)
        if not use_rope:
            self.kv.add_uint32(self.key("context_length"), 2**20)
        d_head = self.find(["d_head"], True) or 64
        if hp.get("hidden_act") not in (None, "silu"):
            raise UnsupportedError(f"{self.config_path}: hidden_act {hp.get('hidden_act')!r}: only silu is supported")
        if self.d_inner % d_head:
            raise InputError(f"{self.config_path}: SSM inner size {self.d_inner} is not a multiple of head dim {d_head}")

    # GraniteHybridModel.set_vocab -> Mamba2Model.set_vocab: vocabulary padded to a multiple of 8
    def set_vocab(self, tokenizer_pre: str | None = None) -> None:
        hp = self.hp
        pad = 8
        hp["vocab_size"] = -(hp["vocab_size"] // -pad) * pad
        if (self.tok_folder / "tokenizer.model").is_file():
            V.set_vocab_sentencepiece(self.kv, self.tok_folder, hp)
        elif (self.tok_folder / "tokenizer.json").is_file():
            V.set_vocab_gpt2(self.kv, self.tok_folder, hp, hp["model_type"], tokenizer_pre)
        else:
            raise UnsupportedError(f"{self.tok_folder}: no tokenizer.model or tokenizer.json (the converter's built-in "
                                   "GPT-NeoX vocabulary is not supported)")


# conversion/granite.py GraniteSWAModel / GraniteMoeSWAModel. transformers 4.57.6 has neither config class:
# AutoConfig fails and the converter reads config.json as it is (no defaults, no __init__ rewrites)
GRANITE_SWA_CONFIG = HFConfig("granite_swa", {}, raw=True)
GRANITE_MOE_SWA_CONFIG = HFConfig("granitemoe_swa", {}, raw=True)
_SINKS = {"self_attn.sinks": "attn_sinks"}


@register("GraniteSWAForCausalLM")
class GraniteSWAModel(GraniteModel):
    configs = (GRANITE_SWA_CONFIG,)
    layer = LLAMA_LAYER | _SINKS
    inverse_names = True

    @classmethod
    def arch_name(cls) -> str:
        return "granite_swa"  # gguf-py MODEL_ARCH_NAMES[GRANITE_SWA] (newer than the gguf package kquant uses)

    # GraniteSWAModel.filter_tensors: "sinks" -> "sinks.weight"
    def filter_name(self, name: str) -> str | None:
        if name.endswith("sinks"):
            name += ".weight"
        return super().filter_name(name)

    @classmethod
    def hf_tensor_name(cls, bid, base, is_bias, kinds=frozenset()):
        name = super().hf_tensor_name(bid, base, is_bias, kinds)
        return name[: -len(".weight")] if base in cls.bare_hf and name else name  # filter_name's ".weight", undone

    bare_hf = ("attn_sinks",)  # GGUF kinds whose HF tensor is a bare parameter (no ".weight")

    @classmethod
    def inverse_for_file(cls, value):
        """A granite_swa file with experts came from GraniteMoeSWAForCausalLM."""
        return GraniteMoeSWAModel if value(f"{cls.arch_name()}.expert_count") else cls

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        return super().tensor_shapes() | {"attn_sinks": (self.hp["num_attention_heads"],)}

    # GraniteSWAModel.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        hp = self.hp
        self.u32("attention.sliding_window", hp.get("sliding_window", 128), "sliding_window")
        if layer_types := hp.get("layer_types"):
            if not isinstance(layer_types, list):
                raise InputError(f"{self.config_path}: 'layer_types' must be a list, got {layer_types!r}"[:200])
            is_swa = [t == "sliding_attention" for t in layer_types]
        else:  # the transformers default pattern
            is_swa = [i % 4 != 0 for i in range(self.block_count)]
        self.kv.add_array(self.key("attention.sliding_window_pattern"), is_swa)
        if no_rope_layers := hp.get("no_rope_layers"):
            if not isinstance(no_rope_layers, list):
                raise InputError(f"{self.config_path}: 'no_rope_layers' must be a list, got {no_rope_layers!r}"[:200])
            self.kv.add_array(self.key("attention.rope_pattern"), [bool(x) for x in no_rope_layers])


# GraniteMoeSWAModel: the routed experts stacked in the checkpoint (experts.gate_up_proj / down_proj, or
# granitemoe's input_linear / output_linear), gate and up kept fused as ffn_gate_up_exps; the shared MLP's
# input_linear kept fused as ffn_up_shexp (llama.cpp's LLM_FFN_SWIGLU splits it)
GRANITE_MOE_SWA_LAYER = _ATTN | _SINKS | {
    "block_sparse_moe.router": "ffn_gate_inp",
    "block_sparse_moe.router.layer": "ffn_gate_inp",
    "block_sparse_moe.experts.gate_up_proj": "ffn_gate_up_exps",
    "block_sparse_moe.experts.down_proj": "ffn_down_exps",
    "block_sparse_moe.input_linear": "ffn_gate_up_exps",
    "block_sparse_moe.output_linear": "ffn_down_exps",
}
GRANITE_MOE_SWA_SHARED = {"shared_mlp.input_linear": "ffn_up_shexp", "shared_mlp.output_linear": "ffn_down_shexp"}
_SWASH = ("block_sparse_moe.experts.gate_up_proj", "block_sparse_moe.experts.down_proj")  # stored without ".weight"


@register("GraniteMoeSWAForCausalLM")
class GraniteMoeSWAModel(GraniteSWAModel):
    configs = (GRANITE_MOE_SWA_CONFIG,)
    layer = GRANITE_MOE_SWA_LAYER | GRANITE_MOE_SWA_SHARED
    bias_ok = ATTN_BIASES
    # checkpoints hold either layout of the router and experts (checked whole in check_complete)
    optional = ("block_sparse_moe.router", "block_sparse_moe.router.layer", "block_sparse_moe.experts.gate_up_proj",
                "block_sparse_moe.experts.down_proj", "block_sparse_moe.input_linear", "block_sparse_moe.output_linear")
    inverse_names = False  # GraniteSWAModel.inverse_for_file picks this class for a file with experts
    # --hf-names: transformers 5's layout (router.weight, bare experts.gate_up_proj / down_proj)
    bare_hf = ("attn_sinks", "ffn_gate_up_exps", "ffn_down_exps")

    @classmethod
    def hf_layer(cls, kinds):
        return {k: v for k, v in cls.layer.items()
                if k not in ("block_sparse_moe.router.layer", "block_sparse_moe.input_linear", "block_sparse_moe.output_linear")}

    def layer_modules(self, bid: int) -> dict[str, str]:
        return GRANITE_MOE_SWA_LAYER | (GRANITE_MOE_SWA_SHARED if self.hp.get("shared_intermediate_size") else {})

    def filter_name(self, name: str) -> str | None:
        if name.endswith(_SWASH):
            name += ".weight"  # kquant: a bare parameter under its module's name (the GGUF name is the same)
        return super().filter_name(name)

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        hp = self.hp
        n = hp.get("num_local_experts")
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise InputError(f"{self.config_path}: 'num_local_experts' must be a positive integer, got {n!r}")
        e, f = hp["hidden_size"], hp["intermediate_size"]
        sf = hp.get("shared_intermediate_size") or 0
        return super().tensor_shapes() | {
            "ffn_gate_inp": (n, e), "ffn_gate_up_exps": (n, 2 * f, e), "ffn_down_exps": (n, e, f),
            "ffn_up_shexp": (2 * sf, e), "ffn_down_shexp": (e, sf),
        }

    def check_complete(self, out) -> None:
        super().check_complete(out)
        names = {t.name for t in out}
        for bid in range(self.block_count):
            for g in ("ffn_gate_inp", "ffn_gate_up_exps", "ffn_down_exps"):
                if f"blk.{bid}.{g}.weight" not in names:
                    raise InputError(f"{self.folder}: missing tensor for blk.{bid}.{g}.weight "
                                     f"(model.layers.{bid}.block_sparse_moe.*)")

    # GraniteMoeSWAModel.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        if v := self.hp.get("shared_intermediate_size"):
            self.u32("expert_shared_feed_forward_length", v, "shared_intermediate_size")
