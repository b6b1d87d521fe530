"""Llama 4 (Scout, Maverick): the language model of Llama4ForConditionalGeneration, and
Llama4ForCausalLM. Ports conversion/llama.py Llama4Model (llama.cpp as vendored in
llama-cpp-python 0.3.36; its conversion/llama4.py holds only the vision part, Llama4VisionModel,
which `--mmproj` writes and kquant does not: `vision_model.*` and `multi_modal_projector.*` are
dropped as the converter drops them without --mmproj).

Dense and MoE layers interleave (`interleave_moe_layer_step`, `moe_layers`); a MoE layer has a
router, a shared expert and routed experts that arrive stacked: `experts.gate_up_proj`
(n_expert, n_embd, 2 * n_ff) is split and transposed into ffn_gate_exps / ffn_up_exps,
`experts.down_proj` (n_expert, n_ff, n_embd) transposed into ffn_down_exps. Q/K rows are not
permuted (undo_permute = False).
"""

from __future__ import annotations

from gguf import MODEL_ARCH

from ..errors import InputError, UnsupportedError
from .base import LLAMA_LAYER, HFJoin, TextModel, register, rows
from .hparams import HFConfig
from .llama import LlamaModel, llama3_rope_freqs

NO_ROPE_INTERVAL = 4  # llama.cpp llama_hparams.n_no_rope_layer_step default; llama4.cpp load_swa_pattern(ml, 4)
CHUNK = 8192  # llama4.cpp load_arch_hparams: n_swa for the chunked layers


def _llama4_text(hp: dict) -> None:
    # transformers configuration_llama4.py Llama4TextConfig.__init__
    hp["attention_bias"] = False
    if hp.get("head_dim") is None:
        hp["head_dim"] = hp["hidden_size"] // hp["num_attention_heads"]
    n = hp["num_hidden_layers"]
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        return  # read_config / to_hparams report it
    interval = hp["no_rope_layer_interval"]
    if not hp.get("no_rope_layers"):  # None or []
        hp["no_rope_layers"] = [int((i + 1) % interval != 0) for i in range(n)] if _is_pos_int(interval) else None
    step = hp["interleave_moe_layer_step"]
    if hp.get("moe_layers") is None and _is_pos_int(step):
        hp["moe_layers"] = list(range(step - 1, n, step))
    if hp.get("layer_types") is None and isinstance(hp["no_rope_layers"], list):
        hp["layer_types"] = ["chunked_attention" if r else "full_attention" for r in hp["no_rope_layers"]]


def _is_pos_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


LLAMA4_TEXT_CONFIG = HFConfig("llama4_text", dict(
    vocab_size=202048, hidden_size=5120, intermediate_size=8192, intermediate_size_mlp=16384, num_hidden_layers=48,
    num_attention_heads=40, num_key_value_heads=8, head_dim=128, max_position_embeddings=4096 * 32,
    rms_norm_eps=1e-5, pad_token_id=None, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    rope_theta=500000, num_experts_per_tok=1, num_local_experts=16, moe_layers=None, interleave_moe_layer_step=1,
    use_qk_norm=True, rope_scaling=None, no_rope_layers=None, no_rope_layer_interval=4, attention_chunk_size=8192,
    layer_types=None, attn_temperature_tuning=True, floor_scale=8192, attn_scale=0.1,
), kv_heads_fallback=True, post_init=_llama4_text)
# Llama4Config: builds a Llama4TextConfig from text_config
LLAMA4_CONFIG = HFConfig("llama4", dict(
    boi_token_index=200080, eoi_token_index=200081, image_token_index=200092, tie_word_embeddings=False,
), text_config="llama4_text")

ATTN = {k: v for k, v in LLAMA_LAYER.items() if not k.startswith("mlp.")}
DENSE_LAYER = ATTN | {
    "feed_forward.gate_proj": "ffn_gate",
    "feed_forward.up_proj": "ffn_up",
    "feed_forward.down_proj": "ffn_down",
}
MOE_LAYER = ATTN | {
    "feed_forward.router": "ffn_gate_inp",
    "feed_forward.shared_expert.gate_proj": "ffn_gate_shexp",
    "feed_forward.shared_expert.up_proj": "ffn_up_shexp",
    "feed_forward.shared_expert.down_proj": "ffn_down_shexp",
    "feed_forward.experts.gate_up_proj": "ffn_gate_exps",  # split into ffn_gate_exps and ffn_up_exps
    "feed_forward.experts.down_proj": "ffn_down_exps",
}
STACKED = ("feed_forward.experts.gate_up_proj", "feed_forward.experts.down_proj")  # parameters without ".weight"


# conversion/llama.py Llama4Model
@register("Llama4ForConditionalGeneration", "Llama4ForCausalLM")
class Llama4Model(LlamaModel):
    model_arch = MODEL_ARCH.LLAMA4
    configs = (LLAMA4_TEXT_CONFIG, LLAMA4_CONFIG)
    layer = MOE_LAYER
    bias_ok = ()
    undo_permute = False
    inverse_names = True  # --hf-names: Llama4ForCausalLM's names (model.layers.*)
    # gate_up_proj (E, n_embd, 2 n_ff) is ffn_gate_exps and ffn_up_exps transposed, side by side
    hf_joins = {"ffn_gate_exps": HFJoin("feed_forward.experts.gate_up_proj", 0, 2, transpose=True, axis=1),
                "ffn_up_exps": HFJoin("feed_forward.experts.gate_up_proj", 1, 2, transpose=True, axis=1),
                "ffn_down_exps": HFJoin("feed_forward.experts.down_proj", transpose=True)}

    def __init__(self, hp, **kw):
        super().__init__(hp, **kw)
        # Llama4Model.__init__: "intermediate_size" is the experts' width, "intermediate_size_mlp" the dense one
        self.hp["intermediate_size_moe"] = self.hp["intermediate_size"]
        self.hp["intermediate_size"] = self.hp["intermediate_size_mlp"]

    def set_vocab(self, tokenizer_pre: str | None = None) -> None:
        TextModel.set_vocab(self, tokenizer_pre)  # Llama4Model.set_vocab: _set_vocab_gpt2

    def prepare(self) -> None:
        self.check_runtime_layout()  # before the tensors are mapped by layer kind

    def set_gguf_parameters(self) -> None:
        super().set_gguf_parameters()
        hp = self.hp
        self.u32("interleave_moe_layer_step", hp["interleave_moe_layer_step"], "interleave_moe_layer_step")
        self.u32("expert_feed_forward_length", hp["intermediate_size_moe"], "intermediate_size")
        if "layer_types" in hp and all(lt == "full_attention" for lt in hp["layer_types"]):
            self.u32("attention.sliding_window", 0, "layer_types")  # all layers full attention (MobileLLM)

    def check_runtime_layout(self) -> None:
        """kquant: the layer layout the converter does not write must be the one llama.cpp's llama4
        runtime assumes (src/models/llama4.cpp), or the file would convert but run wrongly."""
        hp, n, where = self.hp, self.block_count, self.config_path
        step = hp["interleave_moe_layer_step"]
        if not _is_pos_int(step):
            raise InputError(f"{where}: 'interleave_moe_layer_step' must be a positive integer, got {step!r}")
        if hp["moe_layers"] != [i for i in range(n) if (i + 1) % step == 0]:
            raise UnsupportedError(f"{where}: 'moe_layers' {str(hp['moe_layers'])[:80]} differs from every "
                                   f"{step}th layer, the only pattern llama.cpp's llama4 runtime knows")
        lt = hp.get("layer_types")
        if isinstance(lt, list) and all(t == "full_attention" for t in lt):
            return  # no chunked attention, rope on every layer
        nope = [int((i + 1) % NO_ROPE_INTERVAL != 0) for i in range(n)]
        if hp["no_rope_layers"] != nope or lt != ["chunked_attention" if r else "full_attention" for r in nope]:
            raise UnsupportedError(f"{where}: 'no_rope_layers' / 'layer_types' differ from the pattern llama.cpp's llama4 "
                                   f"runtime assumes (chunked attention with rope on 3 layers of 4, then a full NoPE layer)")
        if hp.get("attention_chunk_size") != CHUNK:
            raise UnsupportedError(f"{where}: 'attention_chunk_size' {hp.get('attention_chunk_size')!r} is not "
                                   f"{CHUNK}, the chunk llama.cpp's llama4 runtime uses")

    def n_expert(self) -> int:
        n = self.hp.get("num_local_experts")
        if not _is_pos_int(n):
            raise InputError(f"{self.config_path}: 'num_local_experts' must be a positive integer, got {n!r}")
        return n

    def is_moe(self, bid: int) -> bool:
        moe = self.hp["moe_layers"]
        return isinstance(moe, list) and bid in moe

    def layer_modules(self, bid: int) -> dict[str, str]:
        return MOE_LAYER if self.is_moe(bid) else DENSE_LAYER

    def filter_name(self, name: str) -> str | None:
        name = super().filter_name(name)
        if name is not None and name.endswith(STACKED):
            name += ".weight"  # Llama4Model.modify_tensors names them so
        return name

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = super().tensor_shapes()
        e, f, n_x = self.hp["hidden_size"], self.hp["intermediate_size_moe"], self._n_expert
        # the HF shapes of the stacked experts; the shared expert is as wide as one routed expert
        return shapes | {"ffn_gate_exps": (n_x, e, 2 * f), "ffn_down_exps": (n_x, f, e),
                         "ffn_gate_shexp": (f, e), "ffn_up_shexp": (f, e), "ffn_down_shexp": (e, f)}

    # Llama4Model.modify_tensors (LlamaModel's with undo_permute off): gate_up_proj (E, n_embd, 2 n_ff)
    # transpose(-1, -2).split(n_ff, dim=-2) into gate and up, down_proj (E, n_ff, n_embd) transposed; streamed
    # in row slabs of whole experts by the pipeline (TextModel.stacked_experts), never read whole
    def modify_tensors(self, t, name, gname, base, bid):
        if name.endswith("experts.gate_up_proj.weight"):
            f = t[1][2] // 2
            up = gname.replace("ffn_gate_exps", "ffn_up_exps")
            return self.stacked_experts(t, [(gname, rows(0, f)), (up, rows(f, 2 * f))], transpose=True)
        if name.endswith("experts.down_proj.weight"):
            return self.stacked_experts(t, [(gname, None)], transpose=True)
        return TextModel.modify_tensors(self, t, name, gname, base, bid)

    @classmethod
    def hf_row_order(cls, base, n_rows, n_head, n_head_kv):
        return None

    @classmethod
    def hf_layer(cls, kinds):
        return DENSE_LAYER | MOE_LAYER

    def generate_extra_tensors(self):
        return llama3_rope_freqs(self, default_factor=8.0, equal_factors_ok=True)
