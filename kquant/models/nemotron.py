"""NVIDIA Nemotron (Minitron) and Nemotron-H: conversion/nemotron.py NemotronModel and NemotronHModel
(llama.cpp as vendored in llama-cpp-python 0.3.36).

Nemotron: LayerNorm1P norms (the converter adds 1 to their weights), a relu^2 MLP without a gate,
partial rotary, a SentencePiece vocabulary with pad 0 / unk 1.

Nemotron-H: the GraniteHybridModel pipeline (Mamba-2 layers from conversion/mamba.py Mamba2Model,
attention layers, relu^2 MLP layers, one kind per layer as `hybrid_override_pattern` says: M, *, -),
config.json read as it is (transformers 4.57.6 has no Nemotron-H config class).

Nemotron-H MoE (Nemotron 3 Nano / Super: `num_experts_per_tok` in the config, GGUF architecture
nemotron_h_moe, chosen as NemotronHModel.__init__ switches model_arch): the MLP layers (E in the pattern)
are sigmoid-routed experts (up/down only, relu^2, stacked down then up) with the router's
e_score_correction_bias and a shared expert, optionally in a latent space (`moe_latent_size`:
fc1/fc2_latent_proj); the MTP head (`mtp.layers.0`: NextN fusion + attention, `mtp.layers.1`: MoE +
final norm) folded into one extra block, as the converter keeps it without `--no-mtp`."""

from __future__ import annotations

from dataclasses import replace

from gguf import MODEL_ARCH

from ..errors import InputError, UnsupportedError
from ..ggml.types import QType
from .. import vocab as V
from .base import ATTN_BIASES, Experts, TextModel, register, variant
from .gemma import need_spm, norm_plus_one
from .granite import GraniteHybridModel
from .hparams import HFConfig
from .mamba import MAMBA2_BARE, MAMBA2_BIAS_OK, MAMBA2_LAYER, mamba2_name, mamba2_spec


def _head_dim(hp: dict) -> None:
    # transformers configuration_nemotron.py NemotronConfig.__init__
    if hp.get("head_dim") is None:
        hp["head_dim"] = hp["hidden_size"] // hp["num_attention_heads"]


# transformers 4.57.6 configuration_nemotron.py __init__ defaults, for the keys llama.cpp reads
NEMOTRON_CONFIG = HFConfig("nemotron", dict(
    vocab_size=256000, hidden_size=6144, intermediate_size=24576, num_hidden_layers=32, num_attention_heads=48,
    head_dim=None, num_key_value_heads=None, hidden_act="relu2", max_position_embeddings=4096, norm_eps=1e-5,
    bos_token_id=2, eos_token_id=3, tie_word_embeddings=False, rope_theta=10000.0, partial_rotary_factor=0.5,
    attention_bias=False, mlp_bias=False, rope_scaling=None,
), post_init=_head_dim)

NEMOTRON_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


@register("NemotronForCausalLM")
class NemotronModel(TextModel):
    model_arch = MODEL_ARCH.NEMOTRON
    inverse_refused = "the converter writes the LayerNorm weights plus one (layernorm1p), rounded to the source's float type: not undone exactly"
    configs = (NEMOTRON_CONFIG,)
    layer = NEMOTRON_LAYER
    globals_bias_ok = ("model.norm",)
    bias_ok = ("input_layernorm", "post_attention_layernorm") + ATTN_BIASES + ("mlp.up_proj", "mlp.down_proj")
    bias_required = ("input_layernorm", "post_attention_layernorm")  # LayerNorm1P: llama.cpp reads both
    aliases = {"num_key_value_heads": ("num_attention_heads",)}
    inverse_names = False  # the norms hold weight + 1

    def tensor_shapes(self):
        s = super().tensor_shapes()
        s.pop("ffn_gate")
        return s

    # NemotronModel.modify_tensors: LayerNorm1P weights + 1
    def modify_tensors(self, t, name, gname, base, bid):
        if name.endswith("norm.weight"):
            return [self.spec(gname, t, transform=norm_plus_one(t[2]))]
        return super().modify_tensors(t, name, gname, base, bid)

    # NemotronModel.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        hp = self.hp
        self.u32("vocab_size", hp["vocab_size"], "vocab_size")
        try:
            eps = self.find_hparam(["layer_norm_eps", "layer_norm_epsilon", "norm_epsilon", "norm_eps"])
        except KeyError as e:
            raise InputError(f"{self.config_path}: {e.args[0]}") from None
        self.f32("attention.layer_norm_epsilon", eps, "norm_eps")
        rot = self.rp.get("partial_rotary_factor")
        if isinstance(rot, bool) or not isinstance(rot, (int, float)) or not 0 <= rot <= 1:
            raise InputError(f"{self.config_path}: 'partial_rotary_factor' must be a number in [0, 1], got {rot!r}")
        n_embd = self.find_hparam(["hidden_size", "n_embd"])
        n_head = self.find_hparam(["num_attention_heads", "n_head"])
        self.u32("rope.dimension_count", int(rot * n_embd) // n_head, "partial_rotary_factor")
        factor = hp.get("factor") or self.rp.get("factor")
        if factor is None:
            self.kv.add_string(self.key("rope.scaling.type"), "none")  # RopeScalingType.NONE
        else:
            self.kv.add_string(self.key("rope.scaling.type"), "linear")  # RopeScalingType.LINEAR
            self.f32("rope.scaling.factor", factor, "rope_scaling.factor")

    # NemotronModel.set_vocab
    def set_vocab(self, tokenizer_pre: str | None = None) -> None:
        need_spm(self.tok_folder)
        V.set_vocab_sentencepiece(self.kv, self.tok_folder, self.hp)
        self.kv.add_special_token_id("pad", 0)
        self.kv.add_special_token_id("unk", 1)


def _nemotron_h_layers(hp: dict) -> None:
    # NemotronHModel.__init__: a layers_block_type list sets the layer count (transformers 5 saves no num_hidden_layers)
    if isinstance(hp.get("layers_block_type"), list):
        hp["num_hidden_layers"] = len(hp["layers_block_type"])
    n = hp.get("num_hidden_layers")
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise UnsupportedError(f"'num_hidden_layers' (or a 'layers_block_type' list) must give a positive layer count, got {n!r}")


# no Nemotron-H config class in transformers 4.57.6: AutoConfig fails, the converter reads config.json as it is
NEMOTRON_H_CONFIG = HFConfig("nemotron_h", {}, raw=True, post_init=_nemotron_h_layers,
                             required_as={"num_hidden_layers": ()})  # checked in post_init
_SSM_TYPES, _ATTN_TYPES, _MLP_TYPES = ("mamba", "linear_attention"), ("attention", "full_attention"), ("mlp",)
NEMOTRON_H_ATTN = {"mixer.q_proj": "attn_q", "mixer.k_proj": "attn_k", "mixer.v_proj": "attn_v", "mixer.o_proj": "attn_output"}
NEMOTRON_H_MLP = {"mixer.up_proj": "ffn_up", "mixer.down_proj": "ffn_down"}
NEMOTRON_H_SSM = {k.replace("mamba.", "mixer."): v for k, v in MAMBA2_LAYER.items()}


@register("NemotronHForCausalLM")
class NemotronHModel(GraniteHybridModel):
    model_arch = MODEL_ARCH.NEMOTRON_H
    configs = (NEMOTRON_H_CONFIG,)
    globals_ = {"backbone.embeddings": "token_embd", "backbone.norm_f": "output_norm", "lm_head": "output"}
    layer = {"norm": "attn_norm"} | NEMOTRON_H_SSM | NEMOTRON_H_ATTN | NEMOTRON_H_MLP
    layer_prefix = "backbone.layers."
    bias_ok = tuple(k.replace("mamba.", "mixer.") for k in MAMBA2_BIAS_OK) + tuple(NEMOTRON_H_ATTN) + tuple(NEMOTRON_H_MLP)
    bias_only = ("mixer.dt_proj",)
    bare_params = tuple(k.replace("mamba.", "mixer.") for k in MAMBA2_BARE)

    def _pattern(self):
        hp = self.hp
        return hp.get("hybrid_override_pattern") or hp.get("layers_block_type")

    # NemotronHModel.get_attn_layers
    def attn_layers(self) -> list[int]:
        p = self._pattern()
        if p is None:
            return []
        if len(p) != self.block_count:
            raise InputError(f"{self.config_path}: the layer pattern has {len(p)} entries for {self.block_count} layers")
        if isinstance(p, str):
            return [i for i, c in enumerate(p) if c == "*"]
        return [i for i, c in enumerate(p) if c in _ATTN_TYPES]

    # NemotronHModel.__init__: MoE parameters switch the architecture to NEMOTRON_H_MOE
    @classmethod
    def for_config(cls, hp):
        return NemotronHMoeModel if "num_experts_per_tok" in {**hp, **(hp.get("llm_config") or {})} else cls

    mlp_char, mlp_types = "-", _MLP_TYPES  # the MLP layers in a pattern string / a layers_block_type list

    # NemotronHModel.__init__ (GraniteHybridModel.__init__ before it)
    def prepare(self) -> None:
        hp = self.hp
        p = self._pattern()
        if p is not None and not (isinstance(p, str) or isinstance(p, list) and all(isinstance(c, str) for c in p)):
            raise InputError(f"{self.config_path}: 'hybrid_override_pattern' must be a string (M, *, -), got {p!r}"[:200])
        self._attn = set(self.attn_layers())
        if p is None:
            self._ssm, self._mlp = [], []
        elif isinstance(p, str):
            self._ssm = [i for i, c in enumerate(p) if c == "M"]
            self._mlp = [i for i, c in enumerate(p) if c == self.mlp_char]
        else:
            self._ssm = [i for i, c in enumerate(p) if c in _SSM_TYPES]
            self._mlp = [i for i, c in enumerate(p) if c in self.mlp_types]
        other = [i for i in range(self.block_count) if i not in self._attn and i not in self._ssm and i not in self._mlp]
        if not self._ssm or other:
            raise UnsupportedError(f"{self.config_path}: layer pattern {p!r} (needs Mamba layers, and each layer M, * "
                                   f"or {self.mlp_char}) is not supported")
        self.head_dim = hp.get("head_dim", hp.get("attention_head_dim"))
        if self.head_dim is None:
            raise InputError(f"{self.config_path}: missing key 'head_dim' (or 'attention_head_dim')")
        try:
            self.d_model = self.find(["mamba_head_dim", "hidden_size", "d_model"])
            self.n_group = self.find(["n_groups", "num_groups"])
            self.d_inner = self.find(["num_heads"]) * self.d_model  # "Don't use expand to calculate d_inner"
        except KeyError as e:
            raise InputError(f"{self.config_path}: {e.args[0]}") from None
        self.has_experts = False
        self._bamba_ffn = False

    def layer_modules(self, bid: int) -> dict[str, str]:
        m = {"norm": "attn_norm"}
        if bid in self._ssm:
            return m | NEMOTRON_H_SSM
        if bid in self._attn:
            return m | NEMOTRON_H_ATTN
        return m | NEMOTRON_H_MLP

    def prepare_tensors(self, hf, extra, where):
        return TextModel.prepare_tensors(self, hf, extra, where)

    # NemotronHModel.filter_tensors -> Mamba2Model.filter_tensors
    def filter_name(self, name: str) -> str | None:
        if name.startswith("mtp."):
            return None  # the MTP head of the MoE model (refused in prepare)
        if name.startswith("model.layers.") and ".mixer." in name:
            name = name.replace("model.layers.", "backbone.layers.", 1)
        return TextModel.filter_name(self, mamba2_name(name))

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        hp = self.hp
        e, f = hp["hidden_size"], hp["intermediate_size"]
        return super().tensor_shapes() | {"ffn_up": (f, e), "ffn_down": (e, f)}

    # GraniteHybridModel.modify_tensors: Mamba-2 layers as Mamba2Model, attention layers as LlamaModel
    # (Q/K permuted), MLP layers as they are
    def modify_tensors(self, t, name, gname, base, bid):
        if bid in self._ssm:
            return [mamba2_spec(self, t, name, gname, self.n_group, self.d_inner)]
        if bid in self._attn:
            return super(GraniteHybridModel, self).modify_tensors(t, name, gname, base, bid)
        return [self.spec(gname, t)]

    # NemotronHModel.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        self.u32("attention.key_length", self.head_dim, "head_dim")
        self.u32("attention.value_length", self.head_dim, "head_dim")
        try:
            n_ff = self.find(["intermediate_size", "n_inner", "hidden_dim"])
        except KeyError as e:
            raise InputError(f"{self.config_path}: {e.args[0]}") from None
        self.kv.add_array(self.key("feed_forward_length"), [n_ff if i in self._mlp else 0 for i in range(self.block_count)])

    # NemotronHModel.set_vocab: AutoTokenizer's vocabulary padded to a multiple of 8 (as TextModel.get_vocab_base)
    def set_vocab(self, tokenizer_pre: str | None = None) -> None:
        hp = self.hp
        hp["vocab_size"] = -(hp["vocab_size"] // -8) * 8
        V.set_vocab_gpt2(self.kv, self.tok_folder, hp, hp["model_type"], tokenizer_pre)


# conversion/nemotron.py NemotronHModel with is_moe (model_arch NEMOTRON_H_MOE)
NEMOTRON_H_MOE = {"mixer.gate": "ffn_gate_inp", "mixer.gate.e_score_correction": "exp_probs_b",
                  "mixer.shared_experts.up_proj": "ffn_up_shexp", "mixer.shared_experts.down_proj": "ffn_down_shexp"}
NEMOTRON_H_LATENT = {"mixer.fc1_latent_proj": "ffn_latent_down", "mixer.fc2_latent_proj": "ffn_latent_up"}
# NemotronHModel._MTP_SPECIAL_RENAMES (under the MTP block's own prefix here); the rest of mtp.layers.0 / .1
# goes under the block as it is
_MTP_RENAMES = {"0.enorm.weight": "enorm.weight", "0.hnorm.weight": "hnorm.weight", "0.eh_proj.weight": "eh_proj.weight",
                "1.norm.weight": "post_attention_layernorm.weight", "1.final_layernorm.weight": "shared_head.norm.weight"}
NEMOTRON_H_MTP = {"enorm": "nextn.enorm", "hnorm": "nextn.hnorm", "eh_proj": "nextn.eh_proj",
                  "post_attention_layernorm": "post_attention_norm", "shared_head.norm": "nextn.shared_head_norm"}


@variant
class NemotronHMoeModel(NemotronHModel):
    model_arch = MODEL_ARCH.NEMOTRON_H_MOE
    layer = NemotronHModel.layer | NEMOTRON_H_MOE | NEMOTRON_H_LATENT | NEMOTRON_H_MTP
    bias_ok = NemotronHModel.bias_ok + ("mixer.gate.e_score_correction",)
    bias_only = NemotronHModel.bias_only + ("mixer.gate.e_score_correction",)
    # NemotronHModel.modify_tensors: experts merged per layer, down_proj then up_proj (no gate)
    experts = Experts(source="backbone.layers.{bid}.mixer.experts.{xid}.{w}.weight",
                      order=(("down_proj", "ffn_down_exps"), ("up_proj", "ffn_up_exps")), count_keys=("n_routed_experts",))
    mlp_char, mlp_types = "E", ("moe",)  # NemotronHModel._MLP_LAYER_TYPES
    norm_of = TextModel.norm_of | {"ffn_gate_inp": "attn_norm", "ffn_up_exps": "attn_norm", "ffn_up_shexp": "attn_norm",
                                   "ffn_latent_down": "attn_norm"}

    def prepare(self) -> None:
        super().prepare()
        hp = self.hp
        for k in ("moe_intermediate_size", "moe_shared_expert_intermediate_size", "n_shared_experts", "n_group",
                  "num_experts_per_tok"):
            v = hp.get(k)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise InputError(f"{self.config_path}: {k!r} must be a positive integer, got {v!r}")
        if not isinstance(hp.get("norm_topk_prob"), bool):
            raise InputError(f"{self.config_path}: 'norm_topk_prob' must be true or false, got {hp.get('norm_topk_prob')!r}")
        v = hp.get("moe_latent_size")
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise InputError(f"{self.config_path}: 'moe_latent_size' must be a positive integer, got {v!r}")
        # the MTP head: one block past the pattern's layers (attention and MoE sub-layers)
        self.mtp_bid = None
        n_nextn = hp.get("num_nextn_predict_layers", 0) or 0
        if n_nextn:
            if n_nextn != 1:  # NemotronHModel.__init__ asserts it
                raise UnsupportedError(f"{self.config_path}: num_nextn_predict_layers {n_nextn!r}: the converter supports 1")
            self.mtp_bid = self.block_count
            self.block_count += 1
            self._attn.add(self.mtp_bid)
            self._mlp.append(self.mtp_bid)

    def layer_modules(self, bid: int) -> dict[str, str]:
        if bid == self.mtp_bid:
            return {"norm": "attn_norm"} | NEMOTRON_H_ATTN | self._moe_modules() | NEMOTRON_H_MTP
        if bid in self._mlp:
            return {"norm": "attn_norm"} | self._moe_modules()
        return super().layer_modules(bid)

    def _moe_modules(self) -> dict[str, str]:
        return NEMOTRON_H_MOE | (NEMOTRON_H_LATENT if self.hp.get("moe_latent_size") is not None else {})

    def layer_experts(self, bid: int) -> Experts | None:
        return self.experts if bid in self._mlp else None

    # NemotronHModel.modify_tensors: mtp.layers.0 / .1 renamed into the MTP block
    def filter_name(self, name: str) -> str | None:
        if name.startswith(("mtp.layers.0.", "mtp.layers.1.")) and self.mtp_bid is not None:
            rest = name[len("mtp.layers."):]
            name = f"{self.layer_prefix}{self.mtp_bid}." + _MTP_RENAMES.get(rest, rest[2:])
        elif name.startswith("mtp."):
            raise InputError(f"{self.folder}: unexpected tensor {name!r} for {self.hf_names[0]} "
                             "(num_nextn_predict_layers is not 1)")
        return super().filter_name(name)

    # ModelBase.prepare_tensors forces FFN_GATE_INP to F32 matching the block id of the name as stored: 1 for
    # mtp.layers.1.mixer.gate, so the MTP block's router (blk.{mtp_bid}) is stored as any matrix (BF16)
    def modify_tensors(self, t, name, gname, base, bid):
        out = super().modify_tensors(t, name, gname, base, bid)
        if bid is not None and bid == self.mtp_bid and base == "ffn_gate_inp" and bid != 1:
            out = [replace(s, ref_type=QType.BF16) for s in out]
        return out

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        hp = self.hp
        e, f, f_sh = hp["hidden_size"], hp["moe_intermediate_size"], hp["moe_shared_expert_intermediate_size"]
        m = hp.get("moe_latent_size") or e  # the experts' width
        return super().tensor_shapes() | {
            "ffn_up_exps": (f, m), "ffn_down_exps": (m, f), "ffn_up_shexp": (f_sh, e), "ffn_down_shexp": (e, f_sh),
            "exp_probs_b": (self._n_expert,), "ffn_latent_down": (m, e), "ffn_latent_up": (e, m),
            "nextn.enorm": (e,), "nextn.hnorm": (e,), "nextn.eh_proj": (e, 2 * e), "post_attention_norm": (e,),
            "nextn.shared_head_norm": (e,)}

    # NemotronHModel.set_gguf_parameters (is_moe)
    def set_gguf_parameters(self) -> None:
        hp = self.hp
        GraniteHybridModel.set_gguf_parameters(self)
        self.u32("attention.key_length", self.head_dim, "head_dim")
        self.u32("attention.value_length", self.head_dim, "head_dim")
        f = hp["moe_intermediate_size"]
        self.kv.add_array(self.key("feed_forward_length"), [f if i in self._mlp else 0 for i in range(self.block_count)])
        self.u32("expert_used_count", hp["num_experts_per_tok"], "num_experts_per_tok")
        self.u32("expert_feed_forward_length", f, "moe_intermediate_size")
        self.u32("expert_shared_feed_forward_length", hp["moe_shared_expert_intermediate_size"],
                 "moe_shared_expert_intermediate_size")
        self.u32("expert_count", hp["n_routed_experts"], "n_routed_experts")
        self.u32("expert_shared_count", hp["n_shared_experts"], "n_shared_experts")
        self.kv.add_bool(self.key("expert_weights_norm"), hp["norm_topk_prob"])
        self.f32("expert_weights_scale", hp.get("routed_scaling_factor"), "routed_scaling_factor")
        self.u32("expert_group_count", hp["n_group"], "n_group")
        if (v := hp.get("moe_latent_size")) is not None:
            self.u32("moe_latent_size", v, "moe_latent_size")
        if self.mtp_bid is not None:
            self.u32("nextn_predict_layers", hp["num_nextn_predict_layers"], "num_nextn_predict_layers")
