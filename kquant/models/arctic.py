"""Snowflake Arctic: conversion/arctic.py ArcticModel (llama.cpp as vendored in llama-cpp-python 0.3.36).

A Llama-style attention (Q/K rows permuted) beside a dense-MoE hybrid FFN in every layer: a dense residual
MLP (`residual_layernorm`, `residual_mlp.w1/w2/w3`: ffn_norm, ffn_gate/down/up) and routed experts
(`post_attention_layernorm` as ffn_norm_exps, `block_sparse_moe.gate`, experts w1/w2/w3 merged per layer).
transformers 4.57.6 has no Arctic class (remote code): the converter reads config.json as it is. The
vocabulary is the converter's own SentencePiece reading: tokenizer.model padded to vocab_size, then
tokenizer_config.json's added_tokens_decoder redefining tokens in place (Arctic reuses ids 31998 / 31999)."""

from __future__ import annotations

from gguf import MODEL_ARCH

from ..errors import InputError, UnsupportedError
from .. import vocab as V
from ..io.gguf_kv import TOK_LIST, TOK_MODEL, TOK_PRE, TOK_SCORES, TOK_TYPE
from .base import LLAMA_LAYER, Experts, TextModel, register
from .hparams import HFConfig
from .llama import LlamaModel, permute_qk

ARCTIC_CONFIG = HFConfig("arctic", {}, raw=True)

ARCTIC_LAYER = {k: v for k, v in LLAMA_LAYER.items() if not k.startswith(("mlp.", "post_attention"))} | {
    # gguf-py tensor_mapping.py arch_block_mappings_cfg[ARCTIC] and the residual_mlp entries
    "residual_layernorm": "ffn_norm",
    "residual_mlp.w1": "ffn_gate",
    "residual_mlp.w2": "ffn_down",
    "residual_mlp.w3": "ffn_up",
    "post_attention_layernorm": "ffn_norm_exps",
    "block_sparse_moe.gate": "ffn_gate_inp",
}
ARCTIC_PAD_SCORE = -10000.0  # ArcticModel.set_vocab: [PADn] fillers and added tokens that are not special


@register("ArcticForCausalLM")
class ArcticModel(TextModel):
    model_arch = MODEL_ARCH.ARCTIC
    configs = (ARCTIC_CONFIG,)
    layer = ARCTIC_LAYER
    # ArcticModel.modify_tensors: experts merged in the order w1, w2, w3
    experts = Experts(
        source="model.layers.{bid}.block_sparse_moe.experts.{xid}.{w}.weight",
        order=(("w1", "ffn_gate_exps"), ("w2", "ffn_down_exps"), ("w3", "ffn_up_exps")),
        count_keys=("num_local_experts",),
    )
    norm_of = {"attn_q": "attn_norm", "attn_k": "attn_norm", "attn_v": "attn_norm", "ffn_gate": "ffn_norm",
               "ffn_up": "ffn_norm", "ffn_gate_inp": "ffn_norm_exps", "ffn_gate_exps": "ffn_norm_exps",
               "ffn_up_exps": "ffn_norm_exps"}
    inverse_names = True
    # ArcticModel.modify_tensors permutes k with hparams.get("num_key_value_heads"): None is num_attention_heads
    kv_heads_default = True
    undo_permute = True  # --hf-names: Q/K rows put back with the file's head counts (hf_row_order)

    def __init__(self, hp, **kw):
        super().__init__(hp, **kw)
        for k in ("num_attention_heads", "hidden_size", "vocab_size"):  # read unchecked by the hooks below
            v = hp.get(k)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise InputError(f"{self.config_path}: {k!r} must be a positive integer, got {v!r}")

    def tensor_shapes(self):
        s = super().tensor_shapes()
        return s | {"ffn_norm_exps": (self.hp["hidden_size"],)}

    # ArcticModel.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        hp = self.hp
        self.u32("vocab_size", hp["vocab_size"], "vocab_size")
        self.u32("rope.dimension_count", hp["hidden_size"] // hp["num_attention_heads"], "hidden_size")

    # ArcticModel.modify_tensors: Q/K weights permuted (q with num_attention_heads, k with num_key_value_heads)
    def modify_tensors(self, t, name, gname, base, bid):
        return permute_qk(self, t, name, gname, biases=False) or super().modify_tensors(t, name, gname, base, bid)

    @classmethod
    def hf_row_order(cls, base, n_rows, n_head, n_head_kv):
        return LlamaModel.hf_row_order(base, n_rows, n_head, n_head_kv)

    # ArcticModel.set_vocab
    def set_vocab(self, tokenizer_pre: str | None = None) -> None:
        folder, rec = self.tok_folder, self.kv
        path = folder / "tokenizer.model"
        if not path.is_file():
            raise InputError(f"{path}: missing (Arctic's vocabulary is read from tokenizer.model)")
        spm = V.read_spm_model(path)
        vocab_size = self.hp.get("vocab_size", len(spm.pieces))
        if len(spm.pieces) > vocab_size:  # upstream indexes past its padded list (IndexError)
            raise InputError(f"{path}: {len(spm.pieces)} pieces, more than vocab_size {vocab_size} in config.json")
        tokens = [f"[PAD{i}]" for i in range(vocab_size)]
        scores = [ARCTIC_PAD_SCORE] * vocab_size
        toktypes = [V.UNUSED] * vocab_size
        for token_id, (piece, score, typ) in enumerate(spm.pieces):
            tokens[token_id] = piece
            scores[token_id] = score
            toktypes[token_id] = typ if typ in (V.UNKNOWN, V.CONTROL, V.UNUSED, V.BYTE) else V.NORMAL
        tc_file = folder / "tokenizer_config.json"
        if tc_file.is_file():
            tc = V.read_object(tc_file)
            for token_id, token_json in V.added_tokens_decoder(tc_file, tc).items():
                if token_id >= vocab_size:
                    continue  # "ignore token {token_id}: id is out of range"
                content = token_json["content"]
                token_type, token_score = V.USER_DEFINED, ARCTIC_PAD_SCORE
                if token_json.get("special"):
                    if "unk_token" not in tc:  # upstream reads tokenizer_config_json["unk_token"] (KeyError)
                        raise InputError(f"{tc_file}: special added tokens need 'unk_token' (llama.cpp's converter reads it)")
                    token_type = V.UNKNOWN if content == tc["unk_token"] else V.CONTROL
                    token_score = 0.0
                tokens[token_id] = content
                toktypes[token_id] = token_type
                scores[token_id] = token_score
        rec.add_string(TOK_MODEL, "llama")
        rec.add_string(TOK_PRE, "default")
        rec.add_array(TOK_LIST, tokens)
        rec.add_array(TOK_SCORES, scores)
        rec.add_array(TOK_TYPE, toktypes)
        V.SpecialVocab(folder, n_vocab=len(tokens)).add_to_gguf(rec)
