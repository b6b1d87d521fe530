"""InternLM 3: conversion/internlm.py InternLM3Model (llama.cpp as vendored in llama-cpp-python 0.3.36).

InternLM 3 has no transformers 4.57.6 config class (remote code only), so the converter reads its
config.json as it is. It is written as a Llama (GGUF arch "llama"): Llama layer names, Q/K rows
permuted (weights and biases), the SentencePiece vocabulary with `<|im_end|>` as end of sequence.

InternLM 2 (InternLM2ForCausalLM) is refused: its config and weights need no remote code, but
conversion/internlm.py InternLM2Model.set_vocab imports sentencepiece's sentencepiece_model_pb2,
which needs protobuf >= 5 while llama.cpp's requirements pin protobuf < 5: the converter fails in
its own environment, so there is no reference output to be identical to."""

from __future__ import annotations

from gguf import MODEL_ARCH, Keys

from ..errors import InputError
from .. import vocab as V
from .base import ATTN_BIASES, LLAMA_LAYER, MLP_BIASES, TextModel, register
from .hparams import HFConfig
from .llama import llama_vocab_and_rope_dim, permute_qk

INTERNLM2_REFUSED = (  # models.NOT_PORTED
    "InternLM 2's vocabulary cannot be converted by llama.cpp's converter in its own environment (InternLM2Model.set_vocab "
    "imports sentencepiece_model_pb2, which needs protobuf >= 5; llama.cpp pins protobuf < 5), so there is no reference "
    "file to be identical to")

# no transformers 4.57.6 class: config.json as it is (ModelBase.load_hparams' fallback)
INTERNLM3_CONFIG = HFConfig("internlm3", {}, raw=True)


@register("InternLM3ForCausalLM")
class InternLM3Model(TextModel):
    model_arch = MODEL_ARCH.LLAMA
    configs = (INTERNLM3_CONFIG,)
    layer = LLAMA_LAYER
    bias_ok = ATTN_BIASES + MLP_BIASES
    aliases = {"num_key_value_heads": ("num_attention_heads",)}

    # InternLM3Model.set_vocab
    def set_vocab(self, tokenizer_pre: str | None = None) -> None:
        folder, rec = self.tok_folder, self.kv
        tokens, scores, toktypes = V.create_vocab_sentencepiece(folder, self.hp)
        rec.add_string(Keys.Tokenizer.MODEL, "llama")
        rec.add_string(Keys.Tokenizer.PRE, "default")
        rec.add_array(Keys.Tokenizer.LIST, tokens)
        rec.add_array(Keys.Tokenizer.SCORES, scores)
        rec.add_array(Keys.Tokenizer.TOKEN_TYPE, toktypes)
        sv = V.SpecialVocab(folder, n_vocab=len(tokens))
        tc_file = folder / "tokenizer_config.json"
        if tc_file.is_file():
            tc = V.read_object(tc_file)
            if "add_prefix_space" in tc:
                if not isinstance(tc["add_prefix_space"], bool):
                    raise InputError(f"{tc_file}: 'add_prefix_space' must be true or false")
                rec.add_bool(Keys.Tokenizer.ADD_PREFIX, tc["add_prefix_space"])
            if "added_tokens_decoder" in tc:
                for token_id, data in V.added_tokens_decoder(tc_file, tc).items():
                    if data.get("special"):
                        token = data["content"]
                        sv.set_special_token(token, token_id, str(tc_file))  # keyed by content: no GGUF key
                        if token == "<|im_end|>" and "eos" in sv.special_token_ids:
                            sv.special_token_ids["eos"] = token_id
        sv.add_to_gguf(rec)

    # InternLM3Model.set_gguf_parameters
    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        llama_vocab_and_rope_dim(self)

    # InternLM3Model.filter_tensors: visual tensors skipped
    def filter_name(self, name: str) -> str | None:
        if name.startswith(("mlp", "vision_model")):
            return None
        return super().filter_name(name)

    # InternLM3Model.modify_tensors: LlamaModel's Q/K permutation (weights and biases)
    def modify_tensors(self, t, name, gname, base, bid):
        return permute_qk(self, t, name, gname) or super().modify_tensors(t, name, gname, base, bid)
