"""Which ggml type llama-quantize gives each tensor: recipes as data plus one pure function.

Port of llama.cpp `src/llama-quant.cpp` as vendored in llama-cpp-python 0.3.36, for every file
type llama-quantize offers (`FileType`):
  tensor_get_category (L119-161), tensor_allows_quantization (L287-383), tensor_type_fallback
  (L390-443), llama_tensor_get_type_impl (L446-714), llama_tensor_get_type (L717-773),
  tensor_requires_imatrix (L856-875), llama_ftype_get_default_type (L881-924),
  init_quantize_state_counters (L927-941), the preliminary loop of llama_model_quantize_impl
  (L1104-1145: imatrix check) and llama_quant_compute_types (L1482-1520);
  the tensor order of `llama_model_loader::weights_map` (src/llama-model-loader.h L54-65,
  `weight_name_comparer`); LLM_TYPE_70B from src/models/{llama,qwen2,deci,olmo,jais2}.cpp.
The overrides (--tensor-type and friends) are in kquant.plan.overrides.

llama-quantize walks the tensors sorted by (layer of `blk.N.`, name), not in file order; the
per-tensor counters (attn_v, ffn_down, ...) follow that order, so `plan_types` sorts internally
and answers in the caller's order. llama-quantize also WRITES the tensors in that sorted order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from ..errors import InputError, UnsupportedError
from ..ggml.types import FALLBACK  # llama-quant.cpp tensor_type_fallback, from the type declarations
from ..types import DEFAULT_TYPE as FTYPE_DEFAULT_TYPE
from ..types import FileType, QType
from .overrides import Overrides, first_match, match_names, normalized

__all__ = [
    "DEFAULT_TYPE",
    "FALLBACK",
    "ModelFacts",
    "TensorIn",
    "Category",
    "category_of",
    "compute_types",
    "ggml_n_dims",
    "llama_order",
    "plan_types",
    "needs_imatrix",
    "requires_imatrix",
    "should_quantize",
]

F = FileType
Q = QType

# llama-quant.cpp llama_ftype_get_default_type: declared with the file types (kquant.types FILE_TYPES)
DEFAULT_TYPE: dict[FileType, QType] = FTYPE_DEFAULT_TYPE

# (arch, n_layer) -> LLM_TYPE_70B, from each arch's load_arch_hparams (src/models/*.cpp);
# "llama"/"llama-embed" also need n_head != n_head_kv and n_expert != 8 (src/models/llama.cpp).
_TYPE_70B_LAYERS: dict[str, int] = {
    "llama": 80,
    "llama-embed": 80,
    "qwen2": 80,
    "deci": 80,
    "olmo": 80,
    "jais2": 68,
}

ARCH_FALCON = "falcon"
ARCH_GLM5_NEXT = "glm5-next"
ARCH_BAILINGMOE3 = "bailingmoe3"
N_EXPERT_8 = 8  # the Mixtral-8x rules: `hparams.n_expert == 8`
GQA_MORE_BITS = 4  # attn_v gets more bits from n_gqa() >= 4 (the IQ1/IQ2 mixes also from n_expert >= 4)
_IQ4_FTYPES = (F.MOSTLY_IQ4_NL, F.MOSTLY_IQ4_XS)
# the IQ1/IQ2 mixes (their own branch of llama_tensor_get_type_impl), and those of them whose
# small tensors get IQ3_S rather than Q2_K
_IQ12_FTYPES = frozenset({F.MOSTLY_IQ2_XXS, F.MOSTLY_IQ2_XS, F.MOSTLY_IQ1_S, F.MOSTLY_IQ2_S, F.MOSTLY_IQ2_M, F.MOSTLY_IQ1_M})
_IQ2_SM_FTYPES = (F.MOSTLY_IQ2_S, F.MOSTLY_IQ2_M)
# output (and tied token_embd): Q5_K instead of Q6_K
_OUTPUT_Q5K_FTYPES = _IQ12_FTYPES | {F.MOSTLY_IQ3_XXS}
# token_embd (untied)
_TOKEN_EMBD_Q2K_FTYPES = (F.MOSTLY_IQ2_XXS, F.MOSTLY_IQ2_XS, F.MOSTLY_IQ1_S, F.MOSTLY_IQ1_M)
_TOKEN_EMBD_IQ3S_FTYPES = (F.MOSTLY_IQ2_S, F.MOSTLY_IQ2_M, F.MOSTLY_IQ3_XXS)
_TOKEN_EMBD_Q4K_FTYPES = (F.MOSTLY_TQ1_0, F.MOSTLY_TQ2_0, F.MOSTLY_Q2_0)
# attn_output of an 8-expert model: Q5_K
_ATTN_OUT_Q5K_8X_FTYPES = (F.MOSTLY_Q2_K, F.MOSTLY_IQ3_XS, F.MOSTLY_IQ3_XXS, F.MOSTLY_Q3_K_S, F.MOSTLY_Q3_K_M,
                           F.MOSTLY_IQ4_NL, F.MOSTLY_Q4_K_S, F.MOSTLY_Q4_K_M, F.MOSTLY_IQ3_S, F.MOSTLY_IQ3_M,
                           F.MOSTLY_IQ4_XS)
# tensor_requires_imatrix: target types llama-quantize refuses without an importance matrix
_NEEDS_IMATRIX = frozenset({Q.IQ3_XXS, Q.IQ2_XXS, Q.IQ2_XS, Q.IQ2_S, Q.IQ1_M, Q.IQ1_S})

# tensor_allows_quantization: substrings that keep a tensor in its source type.
_KEEP_SUBSTRINGS: tuple[str, ...] = (
    "_norm.weight",
    "ffn_gate_inp.weight",
    "ffn_gate_tid2eid.weight",
    "altup",
    "laurel",
    "per_layer_model_proj",
    "ssm_conv1d",
    "shortconv.conv.weight",
    "indexer.k_proj.weight",
    "indexer.q_proj.weight",
    "time_mix_first.weight",
    "time_mix_w0.weight",
    "time_mix_w1.weight",
    "time_mix_w2.weight",
    "time_mix_v0.weight",
    "time_mix_v1.weight",
    "time_mix_v2.weight",
    "time_mix_a0.weight",
    "time_mix_a1.weight",
    "time_mix_a2.weight",
    "time_mix_g1.weight",
    "time_mix_g2.weight",
    "time_mix_decay_w1.weight",
    "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight",
    "attn_rel_b.weight",
    ".position_embd",
    "sam.pos_embd",
    "sam.neck.",
    "sam.net_",
    ".rel_pos",
    ".patch_embd",
    ".patch_merger",
    "a.rvq.codebook",
    "mm.a.code_embd",
)
_KEEP_RE = re.compile("|".join(map(re.escape, _KEEP_SUBSTRINGS)))  # one C-level scan instead of 35 `in`s
# exact names kept as they are: LLM_TN(arch)(LLM_TENSOR_POS_EMBD / LLM_TENSOR_TOKEN_TYPES, "weight")
_KEEP_NAMES: frozenset[str] = frozenset({"position_embd.weight", "token_types.weight"})
# extra substrings kept for arch glm5-next
_KEEP_SUBSTRINGS_GLM5_NEXT: tuple[str, ...] = (
    "hc_",
    "indexer.attn_q_b",
    "indexer.attn_k",
    "indexer.proj",
    "indexer_compressor_gate",
    "indexer_compressor_ape",
    "ssm_f_a.weight",
    "ssm_f_b.weight",
    "ssm_g_a.weight",
    "ssm_g_b.weight",
    "ssm_beta.weight",
    "attn_kv_a_mqa.weight",
    "attn_k_b.weight",
    "attn_v_b.weight",
)
# glm5-next: these are not quantized below Q8_0
_Q8_MIN_GLM5_NEXT: tuple[str, ...] = ("attn_q_a", "attn_q_b", "nextn.eh_proj")

OUTPUT_NAME = "output.weight"
TOKEN_EMBD_NAMES: frozenset[str] = frozenset({"token_embd.weight", "per_layer_token_embd.weight"})
PER_LAYER_TOKEN_EMBD = "per_layer_token_embd.weight"


@dataclass(frozen=True)
class ModelFacts:
    """What llama-quant.cpp reads from the model (hparams of layer 0, GGUF keys)."""

    arch: str  # general.architecture, e.g. "llama", "qwen2", "gemma3", "falcon"
    n_layer: int  # {arch}.block_count (n_layer_all, MTP/nextn layers included)
    n_head: int = 0  # {arch}.attention.head_count (layer 0)
    n_head_kv: int = 0  # {arch}.attention.head_count_kv (layer 0); llama.cpp uses n_head when the key is absent
    n_expert: int = 0  # {arch}.expert_count
    is_70b: bool | None = None  # model.type == LLM_TYPE_70B; None: derive like load_arch_hparams

    @property
    def n_gqa(self) -> int:
        """llama_hparams::n_gqa(0)."""
        return self.n_head // self.n_head_kv if self.n_head_kv else 0

    @property
    def type_70b(self) -> bool:
        """LLM_TYPE_70B as the arch's load_arch_hparams sets it (llama, qwen2, deci, olmo, jais2)."""
        if self.is_70b is not None:
            return self.is_70b
        if _TYPE_70B_LAYERS.get(self.arch) != self.n_layer:
            return False
        if self.arch in ("llama", "llama-embed"):
            return self.n_expert != N_EXPERT_8 and self.n_head != self.n_head_kv
        return True


@dataclass(frozen=True)
class TensorIn:
    """One tensor of the input GGUF."""

    name: str  # GGUF name, e.g. "blk.3.attn_v.weight"
    shape: tuple[int, ...]  # numpy order: last axis is the row (ggml ne[0])
    src_type: QType  # type in the input GGUF


class Category(Enum):
    """llama-quant.cpp `enum class tensor_category`."""

    TOKEN_EMBD = "token_embd"
    ATTENTION_Q = "attn_q"
    ATTENTION_V = "attn_v"
    ATTENTION_K = "attn_k"
    ATTENTION_QKV = "attn_qkv"
    ATTENTION_KV_B = "attn_kv_b"
    ATTENTION_OUTPUT = "attn_output"
    FFN_UP = "ffn_up"
    FFN_GATE = "ffn_gate"
    FFN_DOWN = "ffn_down"
    OUTPUT = "output"
    OTHER = "other"


C = Category
_ATTN_V_LIKE = frozenset({C.ATTENTION_V, C.ATTENTION_QKV, C.ATTENTION_KV_B})  # category_is_attn_v
_MOE_EXPERT_CATEGORIES = frozenset({C.FFN_UP, C.FFN_GATE, C.FFN_DOWN})

# tensor_get_category: first substring found wins, in this order
_CATEGORY_SUBSTRINGS: tuple[tuple[str, Category], ...] = (
    ("attn_qkv.weight", C.ATTENTION_QKV),
    ("attn_kv_b.weight", C.ATTENTION_KV_B),
    ("attn_v.weight", C.ATTENTION_V),
    ("attn_k.weight", C.ATTENTION_K),
    ("attn_q.weight", C.ATTENTION_Q),
    ("attn_output.weight", C.ATTENTION_OUTPUT),
    ("ffn_up", C.FFN_UP),
    ("ffn_gate", C.FFN_GATE),
    ("ffn_down", C.FFN_DOWN),
)


# llama-quant.cpp tensor_get_category
def category_of(name: str) -> Category:
    """The broad category llama-quant.cpp gives a tensor name."""
    if name == OUTPUT_NAME:
        return C.OUTPUT
    if name in TOKEN_EMBD_NAMES:
        return C.TOKEN_EMBD
    for sub, cat in _CATEGORY_SUBSTRINGS:
        if sub in name:
            return cat
    return C.OTHER


# ggml.c ggml_n_dims
def ggml_n_dims(shape: Sequence[int]) -> int:
    """Dimensions up to the last one > 1 (at least 1), as ggml counts them."""
    for i, d in enumerate(shape):  # shape[i] is ggml ne[len(shape) - 1 - i]
        if d > 1 and i < len(shape) - 1:
            return len(shape) - i
    return 1


# llama-quant.cpp tensor_allows_quantization
def should_quantize(name: str, shape: Sequence[int], facts: ModelFacts, *, leave_output_tensor: bool = False) -> bool:
    """Whether llama-quantize may change this tensor's type (else it keeps its source type)."""
    if ggml_n_dims(shape) < 2:  # only 2-D and 3-D (experts) tensors
        return False
    # C++: name.rfind("weight") == name.size() - 6; a 5-character name wraps to npos == npos
    if not (name.endswith("weight") or len(name) == 5):
        return False
    if leave_output_tensor and name == OUTPUT_NAME:
        return False
    if name in _KEEP_NAMES:
        return False
    if _KEEP_RE.search(name):
        return False
    if facts.arch == ARCH_GLM5_NEXT and any(sub in name for sub in _KEEP_SUBSTRINGS_GLM5_NEXT):
        return False
    return True


# llama-quant.cpp tensor_requires_imatrix
def requires_imatrix(name: str, qtype: QType, ftype: FileType) -> bool:
    """Whether llama-quantize refuses this target type without an importance matrix."""
    if name in TOKEN_EMBD_NAMES or name == OUTPUT_NAME:
        return False
    if qtype in _NEEDS_IMATRIX:
        return True
    # as a general rule the k-quants do not; Q2_K does inside a Q2_K_S file
    return qtype is Q.Q2_K and ftype is F.MOSTLY_Q2_K_S


_BLK_RE = re.compile(r"blk\.\s*([+-]?\d+)")


def _blk_layer(name: str) -> int | None:
    """sscanf(name, "blk.%d.", &i) == 1 ? i : None."""
    m = _BLK_RE.match(name)
    return int(m.group(1)) if m else None


# llama-model-loader.h weight_name_comparer (the order of ml.weights_map)
def llama_order(names: Sequence[str]) -> list[int]:
    """Indices of `names` in the order llama-quantize processes and writes them."""

    def key(i: int) -> tuple[int, bytes]:
        layer = _blk_layer(names[i])
        return (-1 if layer is None else layer, names[i].encode())

    return sorted(range(len(names)), key=key)


def _c_mod(a: int, b: int) -> int:
    """C's `%` on ints (truncates toward zero)."""
    r = abs(a) % abs(b)
    return -r if a < 0 else r


def _c_div(a: int, b: int) -> int:
    """C's `/` on ints (truncates toward zero)."""
    q = abs(a) // abs(b)
    return -q if (a < 0) != (b < 0) else q


# llama_tensor_get_type_impl: use_more_bits lambda
def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    return (
        i_layer < _c_div(n_layers, 8)
        or i_layer >= _c_div(7 * n_layers, 8)
        or _c_mod(i_layer - _c_div(n_layers, 8), 3) == 2
    )


class _State:
    """quantize_state_impl counters for one call."""

    def __init__(self, n_attention_wv: int, n_layer: int, has_tied_embeddings: bool, has_imatrix: bool):
        self.n_attention_wv = n_attention_wv
        self.n_ffn_down = self.n_ffn_gate = self.n_ffn_up = n_layer
        self.i_attention_wv = self.i_ffn_down = self.i_ffn_gate = self.i_ffn_up = 0
        self.has_tied_embeddings = has_tied_embeddings
        self.has_imatrix = has_imatrix


# llama_tensor_get_type_impl: layer_info lambda
def _layer_info(i_layer: int, n_layer: int, name: str, facts: ModelFacts) -> tuple[int, int]:
    if max(1, facts.n_expert) > 1:
        # MoE: experts are not consecutive, so the layer comes from the name
        layer = _blk_layer(name)
        if layer is None:
            raise InputError(f"Failed to determine layer for tensor {name}")
        if layer < 0 or layer >= n_layer:
            raise InputError(f"Bad layer {layer} for tensor {name}. Must be in [0, {n_layer})")
        i_layer = layer
    return i_layer, n_layer


# llama-quant.cpp llama_tensor_get_type_impl
def _impl(
    qs: _State, new_type: QType, t: TensorIn, ftype: FileType, cat: Category, facts: ModelFacts, ov: Overrides
) -> QType:
    name, arch = t.name, facts.arch
    falcon = arch == ARCH_FALCON
    n_gqa = facts.n_gqa
    n_expert = facts.n_expert

    if arch == ARCH_GLM5_NEXT and any(s in name for s in _Q8_MIN_GLM5_NEXT):
        if new_type not in (Q.F32, Q.BF16, Q.F16):
            return Q.Q8_0

    if cat is C.OUTPUT or (qs.has_tied_embeddings and cat is C.TOKEN_EMBD):
        # tied embeddings: token_embd is quantized like the output tensor
        if ov.output_tensor_type is not None:
            new_type = ov.output_tensor_type
        elif ftype is F.MOSTLY_MXFP4_MOE:
            new_type = Q.Q8_0
        elif falcon or t.shape[-1] % new_type.block_size != 0:
            new_type = Q.Q8_0
        elif ftype in _OUTPUT_Q5K_FTYPES:
            new_type = Q.Q5_K
        elif new_type is not Q.Q8_0:
            new_type = Q.Q6_K
    elif ftype is F.MOSTLY_MXFP4_MOE:
        # expert tensors (ne[2] > 1) -> MXFP4, everything else -> Q8_0; bailingmoe3's MLA
        # projections are 3-D too, so there only the FFN roles count
        n_mat = t.shape[-3] if len(t.shape) >= 3 else 1
        if n_mat > 1 and (arch != ARCH_BAILINGMOE3 or cat in _MOE_EXPERT_CATEGORIES):
            new_type = Q.MXFP4
        else:
            new_type = Q.Q8_0
    elif cat is C.TOKEN_EMBD:
        if ov.token_embedding_type is not None:
            new_type = ov.token_embedding_type  # (the caller already returned it unless a pattern named the tensor)
        elif ftype in _TOKEN_EMBD_Q2K_FTYPES:
            new_type = Q.Q2_K
        elif ftype in _TOKEN_EMBD_IQ3S_FTYPES:
            new_type = Q.IQ3_S
        elif ftype in _TOKEN_EMBD_Q4K_FTYPES:
            new_type = Q.Q4_K
    elif ftype in _IQ12_FTYPES:
        small = Q.IQ3_S if ftype in _IQ2_SM_FTYPES else Q.Q2_K
        if cat in _ATTN_V_LIKE:
            new_type = Q.Q4_K if n_gqa >= GQA_MORE_BITS or n_expert >= GQA_MORE_BITS else small
            qs.i_attention_wv += 1
        elif n_expert == N_EXPERT_8 and cat is C.ATTENTION_K:
            new_type = Q.Q4_K
        elif cat is C.FFN_DOWN:
            if qs.i_ffn_down < _c_div(qs.n_ffn_down, 8):  # the counter, not the layer from the name
                new_type = small
            qs.i_ffn_down += 1
        elif cat is C.ATTENTION_OUTPUT:
            if n_expert == N_EXPERT_8:
                new_type = Q.Q5_K
            elif ftype in (F.MOSTLY_IQ1_S, F.MOSTLY_IQ1_M):
                new_type = Q.IQ2_XXS
            elif ftype in _IQ2_SM_FTYPES:
                new_type = Q.IQ3_S
    elif cat in _ATTN_V_LIKE:
        if ftype is F.MOSTLY_Q2_K:
            new_type = Q.Q4_K if n_gqa >= GQA_MORE_BITS else Q.Q3_K
        elif ftype is F.MOSTLY_Q2_K_S and n_gqa >= GQA_MORE_BITS:
            new_type = Q.Q4_K
        elif ftype is F.MOSTLY_IQ3_XXS:
            new_type = Q.Q4_K if n_gqa >= GQA_MORE_BITS else Q.IQ3_S if not qs.has_imatrix else Q.IQ3_XXS
        elif ftype in (F.MOSTLY_IQ3_XS, F.MOSTLY_IQ3_S) and n_gqa >= GQA_MORE_BITS:
            new_type = Q.Q4_K
        elif ftype is F.MOSTLY_IQ3_M:
            new_type = Q.Q4_K
        elif ftype is F.MOSTLY_Q3_K_M:
            new_type = Q.Q5_K if qs.i_attention_wv < 2 else Q.Q4_K
        elif ftype is F.MOSTLY_Q3_K_L:
            new_type = Q.Q5_K
        elif ftype in _IQ4_FTYPES and n_gqa >= GQA_MORE_BITS:
            new_type = Q.Q5_K
        elif ftype in (F.MOSTLY_Q4_K_M, F.MOSTLY_Q5_K_M) and _use_more_bits(qs.i_attention_wv, qs.n_attention_wv):
            new_type = Q.Q6_K
        elif ftype is F.MOSTLY_Q4_K_S and qs.i_attention_wv < 4:
            new_type = Q.Q5_K
        if facts.type_70b and new_type in (Q.Q3_K, Q.Q4_K):
            new_type = Q.Q5_K  # 8 heads share attn_v in the 70B: it is 8x smaller than attn_q
        if n_expert == N_EXPERT_8:
            new_type = Q.Q8_0
        qs.i_attention_wv += 1
    elif cat is C.ATTENTION_K:
        if n_expert == N_EXPERT_8:
            new_type = Q.Q8_0
        elif ftype is F.MOSTLY_IQ3_XS:
            new_type = Q.IQ3_XXS
        elif ftype is F.MOSTLY_IQ3_XXS:
            new_type = Q.IQ2_S
    elif cat is C.ATTENTION_Q:
        if ftype is F.MOSTLY_IQ3_XS:
            new_type = Q.IQ3_XXS
        elif ftype is F.MOSTLY_IQ3_XXS:
            new_type = Q.IQ2_S
    elif cat is C.FFN_DOWN:
        i_layer, n_layer = _layer_info(qs.i_ffn_down, qs.n_ffn_down, name, facts)
        n8, n16 = _c_div(n_layer, 8), _c_div(n_layer, 16)
        if ftype is F.MOSTLY_Q2_K:
            new_type = Q.Q3_K
        elif ftype is F.MOSTLY_Q2_K_S:
            if i_layer < n8:
                new_type = Q.Q4_K
        elif ftype is F.MOSTLY_IQ3_XXS and not qs.has_imatrix:
            new_type = Q.Q4_K if i_layer < n8 else Q.Q3_K
        elif ftype is F.MOSTLY_Q3_K_M:
            if i_layer < n16:
                new_type = Q.Q5_K
            elif not falcon or _use_more_bits(i_layer, n_layer):
                new_type = Q.Q4_K
            else:
                new_type = Q.Q3_K
        elif ftype is F.MOSTLY_IQ3_M and (i_layer < n8 or (n_expert == N_EXPERT_8 and _use_more_bits(i_layer, n_layer))):
            new_type = Q.Q4_K
        elif ftype is F.MOSTLY_Q3_K_L:
            new_type = Q.Q4_K if falcon else Q.Q5_K
        elif ftype is F.MOSTLY_Q4_K_M:
            if falcon:
                if i_layer < n16:
                    new_type = Q.Q6_K
                else:
                    new_type = Q.Q5_K if _use_more_bits(i_layer, n_layer) else Q.Q4_K
            elif _use_more_bits(i_layer, n_layer):
                new_type = Q.Q6_K
        elif i_layer < n8 and ftype in _IQ4_FTYPES and not qs.has_imatrix:
            new_type = Q.Q5_K
        elif ftype is F.MOSTLY_Q5_K_M and _use_more_bits(i_layer, n_layer):
            new_type = Q.Q6_K
        elif ftype is F.MOSTLY_Q4_K_S and not falcon and i_layer < n8:
            new_type = Q.Q5_K
        elif ftype in (F.MOSTLY_Q4_0, F.MOSTLY_Q5_0) and qs.has_imatrix and i_layer < n8:
            new_type = Q.Q4_1 if ftype is F.MOSTLY_Q4_0 else Q.Q5_1
        qs.i_ffn_down += 1
    elif cat is C.ATTENTION_OUTPUT:
        if not falcon:
            if n_expert == N_EXPERT_8:
                if ftype in _ATTN_OUT_Q5K_8X_FTYPES:
                    new_type = Q.Q5_K
            elif ftype is F.MOSTLY_Q2_K:
                new_type = Q.Q3_K
            elif ftype is F.MOSTLY_IQ3_XXS:
                new_type = Q.IQ3_S
            elif ftype is F.MOSTLY_Q3_K_M:
                new_type = Q.Q4_K
            elif ftype is F.MOSTLY_Q3_K_L:
                new_type = Q.Q5_K
            elif ftype is F.MOSTLY_IQ3_M:
                new_type = Q.Q4_K
        elif ftype is F.MOSTLY_Q3_K_L:
            new_type = Q.Q4_K
    # (the C++ `else if (category == ATTENTION_QKV)` branch is unreachable: attn_qkv is attn_v-like)
    elif cat in (C.FFN_GATE, C.FFN_UP):
        gate = cat is C.FFN_GATE
        i_layer, n_layer = _layer_info(qs.i_ffn_gate if gate else qs.i_ffn_up, qs.n_ffn_gate if gate else qs.n_ffn_up,
                                       name, facts)
        if ftype is F.MOSTLY_IQ3_XS and _c_div(n_layer, 8) <= i_layer < _c_div(7 * n_layer, 8):
            new_type = Q.IQ3_XXS
        if gate:
            qs.i_ffn_gate += 1
        else:
            qs.i_ffn_up += 1
    return new_type


# llama-quant.cpp tensor_type_fallback
def _fallback(t: TensorIn, target: QType) -> QType:
    ncols = t.shape[-1]
    if ncols % target.block_size == 0:
        return target
    new_type = FALLBACK.get(target)
    if new_type is None:
        if target.block_size > 32:  # Q1_0 (128): llama-quantize throws
            raise InputError(f"tensor {t.name}: no tensor type fallback is defined for type {target.ggml_name} "
                             f"(row length {ncols} is not a multiple of {target.block_size})")
        new_type = target  # 32-block types stay, then the check below makes them F16
    if ncols % new_type.block_size != 0:
        new_type = Q.F16  # "must use F16 due to unusual shape"
    return new_type


# llama-quant.cpp llama_tensor_get_type (outer wrapper)
def _get_type(
    qs: _State,
    t: TensorIn,
    default_type: QType,
    ftype: FileType,
    cat: Category,
    facts: ModelFacts,
    ov: Overrides,
    patterns: list[tuple[re.Pattern, QType]],
) -> QType:
    if not should_quantize(t.name, t.shape, facts, leave_output_tensor=ov.leave_output_tensor):
        return t.src_type
    if ov.token_embedding_type is not None and cat is C.TOKEN_EMBD:
        # per_layer_token_embd follows --token-embedding-type unless a --tensor-type pattern names it
        named = t.name == PER_LAYER_TOKEN_EMBD and first_match(patterns, t.name) is not None
        if not named:
            return ov.token_embedding_type
    if ov.output_tensor_type is not None and cat is C.OUTPUT:
        return ov.output_tensor_type

    new_type = default_type
    if default_type.is_quantized:
        manual = first_match(patterns, t.name)
        if manual is not None:
            new_type = manual
        elif not ov.pure:
            new_type = _impl(qs, new_type, t, ftype, cat, facts, ov)
        new_type = _fallback(t, new_type)
    return new_type


def compute_types(
    tensors: Sequence[TensorIn],
    ftype: FileType,
    facts: ModelFacts,
    overrides: Overrides = Overrides(),
    has_imatrix: bool = False,
) -> list[QType]:
    """Target type per tensor, in the caller's order, without llama-quantize's run-time checks.

    Same as llama.cpp's `llama_quant_compute_types` (which the tests/snapshots come from), except that
    `has_imatrix` is honoured and tensors may be given in any order (llama's order is used inside).
    """
    ftype = FileType(ftype)
    default_type = DEFAULT_TYPE[ftype]
    overrides = normalized(overrides)
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise InputError(f"invalid model: tensor '{dup}' is duplicated")
    cats = [category_of(n) for n in names]
    # init_quantize_state_counters: counts over every tensor of the file
    qs = _State(
        n_attention_wv=sum(c in _ATTN_V_LIKE for c in cats),
        n_layer=facts.n_layer,
        has_tied_embeddings=not any(c is C.OUTPUT for c in cats),
        has_imatrix=has_imatrix,
    )
    patterns = match_names(overrides.tensor_types, names)
    out: list[QType | None] = [None] * len(tensors)
    for i in llama_order(names):
        out[i] = _get_type(qs, tensors[i], default_type, ftype, cats[i], facts, overrides, patterns)
    return out  # type: ignore[return-value]


# llama-quant.cpp llama_model_quantize_impl, the preliminary loop's imatrix check
def needs_imatrix(tensors: Sequence[TensorIn], types: Sequence[QType], ftype: FileType) -> tuple[str, QType] | None:
    """(name, type) of the first tensor, in llama's order, that llama-quantize refuses to quantize without
    an importance matrix; None when there is none."""
    for i in llama_order([t.name for t in tensors]):
        t, new = tensors[i], types[i]
        if new is not t.src_type and requires_imatrix(t.name, new, FileType(ftype)):
            return t.name, new
    return None


def plan_types(
    tensors: Sequence[TensorIn],
    ftype: FileType,
    facts: ModelFacts,
    overrides: Overrides = Overrides(),
    has_imatrix: bool = False,
    dry_run: bool = False,
) -> list[QType]:
    """The ggml type llama-quantize gives each tensor (caller's order); raises where llama-quantize fails.
    `dry_run`: as llama-quantize --dry-run, a missing importance matrix is not an error (see needs_imatrix)."""
    ftype = FileType(ftype)
    types = compute_types(tensors, ftype, facts, overrides, has_imatrix)
    need = None if has_imatrix or dry_run else needs_imatrix(tensors, types, ftype)
    if need is not None:
        raise InputError(
            f"{ftype.short_name} requires an importance matrix (llama-quantize: 'this quantization requires "
            f"an imatrix!'): tensor {need[0]} would be {need[1].ggml_name}"
        )
    check_storable(tensors, types)
    return types


def check_storable(tensors: Sequence[TensorIn], types: Sequence[QType]) -> None:
    """Raise where llama-quantize would refuse to store a tensor as its chosen type: requantizing a
    quantized input, or a row that is not a whole number of blocks. Also run on automix's types."""
    for t, new in zip(tensors, types):
        if new is t.src_type:
            continue  # copied as is
        if t.src_type.is_quantized:
            raise UnsupportedError(
                f"tensor {t.name}: requantizing from type {t.src_type.ggml_name} is disabled (llama-quantize "
                f"without --allow-requantize); the input must hold F32, F16 or BF16 tensors"
            )
        if t.shape[-1] % new.block_size != 0:
            # only --output-tensor-type / --token-embedding-type skip the fallback; ggml_row_size asserts
            raise InputError(
                f"tensor {t.name}: row length {t.shape[-1]} is not a multiple of {new.block_size}, "
                f"required for type {new.ggml_name} (llama-quantize aborts here)"
            )
