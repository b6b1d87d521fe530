"""NVIDIA Nemotron (Minitron) and Nemotron-H: conversion/nemotron.py NemotronModel and NemotronHModel
(llama.cpp as vendored in llama-cpp-python 0.3.36).

Nemotron: LayerNorm1P norms (the converter adds 1 to their weights), a relu^2 MLP without a gate,
partial rotary, a SentencePiece vocabulary with pad 0 / unk 1.

Nemotron-H: the GraniteHybridModel pipeline (Mamba-2 layers from conversion/mamba.py Mamba2Model,
attention layers, relu^2 MLP layers, one kind per layer as `hybrid_override_pattern` says: M, *, -),
config.json read as it is (transformers 4.57.6 has no Nemotron-H config class). The MoE variant
(Nemotron 3: latent experts, MTP head) is refused."""

from __future__ import annotations

from gguf import MODEL_ARCH

from ..errors import InputError, UnsupportedError
from .. import vocab as V
from .base import ATTN_BIASES, TextModel, register
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
    # NemotronHModel.__init__: a layers_block_type list sets the layer count
    if isinstance(hp.get("layers_block_type"), list):
        hp["num_hidden_layers"] = len(hp["layers_block_type"])


# no Nemotron-H config class in transformers 4.57.6: AutoConfig fails, the converter reads config.json as it is
NEMOTRON_H_CONFIG = HFConfig("nemotron_h", {}, raw=True, post_init=_nemotron_h_layers)
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

    # NemotronHModel.__init__ (the dense model; GraniteHybridModel.__init__ before it)
    def prepare(self) -> None:
        hp = self.hp
        if "num_experts_per_tok" in {**hp, **(hp.get("llm_config") or {})}:
            raise UnsupportedError(f"{self.config_path}: Nemotron-H MoE (Nemotron 3: latent experts, MTP head, "
                                   "NEMOTRON_H_MOE) is not ported to kquant; the dense Nemotron-H is")
        p = self._pattern()
        if p is not None and not (isinstance(p, str) or isinstance(p, list) and all(isinstance(c, str) for c in p)):
            raise InputError(f"{self.config_path}: 'hybrid_override_pattern' must be a string (M, *, -), got {p!r}"[:200])
        self._attn = set(self.attn_layers())
        if p is None:
            self._ssm, self._mlp = [], []
        elif isinstance(p, str):
            self._ssm = [i for i, c in enumerate(p) if c == "M"]
            self._mlp = [i for i, c in enumerate(p) if c == "-"]
        else:
            self._ssm = [i for i, c in enumerate(p) if c in _SSM_TYPES]
            self._mlp = [i for i, c in enumerate(p) if c in _MLP_TYPES]
        other = [i for i in range(self.block_count) if i not in self._attn and i not in self._ssm and i not in self._mlp]
        if not self._ssm or other:
            raise UnsupportedError(f"{self.config_path}: layer pattern {p!r} (needs Mamba layers, and each layer M, * "
                                   "or -) is not supported")
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
