"""Which ggml type llama-quantize gives each tensor: recipes as data plus one pure function.

Port of llama.cpp `src/llama-quant.cpp` as vendored in llama-cpp-python 0.3.36, restricted to the
file types of `FileType` (branches only other IQ*, TQ*, MXFP4, Q1_0/Q2_0 file types reach are left out):
  tensor_get_category (L119-161), tensor_allows_quantization (L287-383), tensor_type_fallback
  (L390-443), llama_tensor_get_type_impl (L446-714), llama_tensor_get_type (L717-773),
  tensor_requires_imatrix (L856-875), llama_ftype_get_default_type (L881-924),
  init_quantize_state_counters (L927-941), the preliminary loop of llama_model_quantize_impl
  (L1104-1145: imatrix check) and llama_quant_compute_types (L1482-1520);
  the tensor order of `llama_model_loader::weights_map` (src/llama-model-loader.h L54-65,
  `weight_name_comparer`); LLM_TYPE_70B from src/models/{llama,qwen2,deci,olmo,jais2}.cpp;
  `parse_tensor_type` from tools/quantize/quantize.cpp L317-347.

llama-quantize walks the tensors sorted by (layer of `blk.N.`, name), not in file order; the
per-tensor counters (attn_v, ffn_down, ...) follow that order, so `plan_types` sorts internally
and answers in the caller's order. llama-quantize also WRITES the tensors in that sorted order.
--tensor-type patterns are ECMAScript regexes (libstdc++ std::regex) matched with regex_search, first
match wins; `ecma_to_python` translates them for Python `re` and rejects what std::regex rejects.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from .errors import InputError, UnsupportedError
from .ggml.types import FALLBACK  # llama-quant.cpp tensor_type_fallback, from the type declarations
from .types import FileType, QType, parse_qtype

__all__ = [
    "DEFAULT_TYPE",
    "FALLBACK",
    "ModelFacts",
    "Overrides",
    "TensorIn",
    "Category",
    "category_of",
    "compute_types",
    "ecma_to_python",
    "ggml_n_dims",
    "llama_order",
    "parse_tensor_type",
    "plan_types",
    "requires_imatrix",
    "should_quantize",
]

F = FileType
Q = QType

# llama-quant.cpp llama_ftype_get_default_type
DEFAULT_TYPE: dict[FileType, QType] = {
    F.ALL_F32: Q.F32,
    F.MOSTLY_F16: Q.F16,
    F.MOSTLY_BF16: Q.BF16,
    F.MOSTLY_Q4_0: Q.Q4_0,
    F.MOSTLY_Q4_1: Q.Q4_1,
    F.MOSTLY_Q5_0: Q.Q5_0,
    F.MOSTLY_Q5_1: Q.Q5_1,
    F.MOSTLY_Q8_0: Q.Q8_0,
    F.MOSTLY_Q2_K: Q.Q2_K,
    F.MOSTLY_Q2_K_S: Q.Q2_K,
    F.MOSTLY_Q3_K_S: Q.Q3_K,
    F.MOSTLY_Q3_K_M: Q.Q3_K,
    F.MOSTLY_Q3_K_L: Q.Q3_K,
    F.MOSTLY_Q4_K_S: Q.Q4_K,
    F.MOSTLY_Q4_K_M: Q.Q4_K,
    F.MOSTLY_Q5_K_S: Q.Q5_K,
    F.MOSTLY_Q5_K_M: Q.Q5_K,
    F.MOSTLY_Q6_K: Q.Q6_K,
    F.MOSTLY_IQ4_NL: Q.IQ4_NL,
    F.MOSTLY_IQ4_XS: Q.IQ4_XS,
}

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
N_EXPERT_8 = 8  # the Mixtral-8x rules: `hparams.n_expert == 8`
GQA_MORE_BITS = 4  # attn_v gets more bits from n_gqa() >= 4
_IQ4_FTYPES = (F.MOSTLY_IQ4_NL, F.MOSTLY_IQ4_XS)

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
class Overrides:
    """llama-quantize options that change tensor types (llama_model_quantize_params)."""

    tensor_types: tuple[tuple[str, QType], ...] = ()  # --tensor-type (regex, type), in the order given
    output_tensor_type: QType | None = None  # --output-tensor-type
    token_embedding_type: QType | None = None  # --token-embedding-type
    pure: bool = False  # --pure
    leave_output_tensor: bool = False  # --leave-output-tensor (quantize_output_tensor = false)


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
    # of the QType members only Q2_K, and only inside a Q2_K_S file (the IQ1/IQ2/IQ3_XXS types always do)
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


# llama-quant.cpp llama_tensor_get_type_impl (branches reachable from the FileType members)
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
        elif falcon or t.shape[-1] % new_type.block_size != 0:
            new_type = Q.Q8_0
        elif new_type is not Q.Q8_0:
            new_type = Q.Q6_K
    elif cat is C.TOKEN_EMBD:
        pass  # only IQ*/TQ*/Q2_0 ftypes and token_embedding_type (handled by the caller) act here
    elif cat in _ATTN_V_LIKE:
        if ftype is F.MOSTLY_Q2_K:
            new_type = Q.Q4_K if n_gqa >= GQA_MORE_BITS else Q.Q3_K
        elif ftype is F.MOSTLY_Q2_K_S and n_gqa >= GQA_MORE_BITS:
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
    elif cat is C.ATTENTION_Q:
        pass  # IQ3_XS / IQ3_XXS only
    elif cat is C.FFN_DOWN:
        i_layer, n_layer = _layer_info(qs.i_ffn_down, qs.n_ffn_down, name, facts)
        n8, n16 = _c_div(n_layer, 8), _c_div(n_layer, 16)
        if ftype is F.MOSTLY_Q2_K:
            new_type = Q.Q3_K
        elif ftype is F.MOSTLY_Q2_K_S:
            if i_layer < n8:
                new_type = Q.Q4_K
        elif ftype is F.MOSTLY_Q3_K_M:
            if i_layer < n16:
                new_type = Q.Q5_K
            elif not falcon or _use_more_bits(i_layer, n_layer):
                new_type = Q.Q4_K
            else:
                new_type = Q.Q3_K
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
                if ftype in (F.MOSTLY_Q2_K, F.MOSTLY_Q3_K_S, F.MOSTLY_Q3_K_M, F.MOSTLY_Q4_K_S, F.MOSTLY_Q4_K_M,
                             F.MOSTLY_IQ4_NL, F.MOSTLY_IQ4_XS):
                    new_type = Q.Q5_K
            elif ftype is F.MOSTLY_Q2_K:
                new_type = Q.Q3_K
            elif ftype is F.MOSTLY_Q3_K_M:
                new_type = Q.Q4_K
            elif ftype is F.MOSTLY_Q3_K_L:
                new_type = Q.Q5_K
        elif ftype is F.MOSTLY_Q3_K_L:
            new_type = Q.Q4_K
    # (the C++ `else if (category == ATTENTION_QKV)` branch is unreachable: attn_qkv is attn_v-like)
    elif cat is C.FFN_GATE:
        _layer_info(qs.i_ffn_gate, qs.n_ffn_gate, name, facts)  # IQ3_XS only; may still raise for MoE
        qs.i_ffn_gate += 1
    elif cat is C.FFN_UP:
        _layer_info(qs.i_ffn_up, qs.n_ffn_up, name, facts)  # IQ3_XS only; may still raise for MoE
        qs.i_ffn_up += 1
    return new_type


# llama-quant.cpp tensor_type_fallback
def _fallback(t: TensorIn, target: QType) -> QType:
    ncols = t.shape[-1]
    if ncols % target.block_size == 0:
        return target
    new_type = FALLBACK.get(target, target)  # 32-block types stay, then the check below makes them F16
    if ncols % new_type.block_size != 0:
        new_type = Q.F16  # "must use F16 due to unusual shape"
    return new_type


# libstdc++ regex_traits::lookup_classname (C locale) as Python class contents
_POSIX_CLASSES: dict[str, str] = {
    "alnum": "0-9A-Za-z",
    "alpha": "A-Za-z",
    "blank": " \\t",
    "cntrl": "\\x00-\\x1f\\x7f",
    "d": "0-9",
    "digit": "0-9",
    "graph": "!-~",
    "lower": "a-z",
    "print": " -~",
    "punct": "!-/:-@\\[-`{-~",
    "s": " \\t\\n\\r\\f\\v",
    "space": " \\t\\n\\r\\f\\v",
    "upper": "A-Z",
    "w": "0-9A-Za-z_",
    "xdigit": "0-9A-Fa-f",
}
_BRACE_RE = re.compile(r"\{\d+(?:,\d*)?\}")
_HEX2_RE = re.compile(r"[0-9A-Fa-f]{2}")
_HEX4_RE = re.compile(r"[0-9A-Fa-f]{4}")


class _EcmaError(ValueError):
    pass


def _ecma_escape(p: str, i: int) -> tuple[int, str]:
    """One `\\x` escape at p[i] -> (next index, Python text)."""
    if i + 1 >= len(p):
        raise _EcmaError("trailing backslash")
    ch = p[i + 1]
    if ch in "dDsSwWbBfnrtv":
        return i + 2, "\\" + ch
    if ch == "0":
        return i + 2, "\\x00"  # Python would read octal digits after it
    if ch.isdigit():  # back-reference
        j = i + 1
        while j < len(p) and p[j].isdigit():
            j += 1
        return j, "\\" + p[i + 1 : j]
    if ch in "xu":
        m = (_HEX2_RE if ch == "x" else _HEX4_RE).match(p, i + 2)
        if not m:
            raise _EcmaError(f"bad \\{ch} escape")
        return m.end(), "\\" + ch + m.group()
    if ch == "c":
        if i + 2 >= len(p) or not p[i + 2].isascii() or not p[i + 2].isalpha():
            raise _EcmaError("bad \\c escape")
        return i + 3, "\\x%02x" % (ord(p[i + 2]) % 32)
    if ch.isascii() and ch.isalpha():
        return i + 2, ch  # an unknown letter escape is the letter itself
    return i + 2, re.escape(ch)


def _ecma_bracket(p: str, i: int) -> tuple[int, str]:
    """A bracket expression starting at p[i] == '[' -> (next index, Python text)."""
    j = i + 1
    negate = p.startswith("^", j)
    j += negate
    if p.startswith("]", j):  # ECMAScript: `[]` matches nothing, `[^]` any character
        return j + 1, "[\\s\\S]" if negate else "(?!)"
    out = ["[^" if negate else "["]
    while True:
        if j >= len(p):
            raise _EcmaError("unterminated [")
        ch = p[j]
        if ch == "]":
            return j + 1, "".join(out) + "]"
        if ch == "[" and p[j + 1 : j + 2] in (":", ".", "="):
            kind = p[j + 1]
            end = p.find(kind + "]", j + 2)
            if kind != ":" or end < 0 or p[j + 2 : end] not in _POSIX_CLASSES:
                raise _EcmaError(f"unsupported bracket item {p[j:j + 10]!r}")
            out.append(_POSIX_CLASSES[p[j + 2 : end]])
            j = end + 2
        elif ch == "\\":
            j, piece = _ecma_escape(p, j)
            out.append(piece)
        else:
            out.append("\\" + ch if ch in "[^&~|" else ch)
            j += 1


# std::regex(pattern) (ECMAScript grammar, libstdc++) rendered as a Python pattern
def ecma_to_python(p: str) -> str:
    """Translate a std::regex ECMAScript pattern into an equivalent Python `re` one; ValueError where C++ throws.

    libstdc++ also takes stacked quantifiers (`a**`, `a++` = (a+)+): they become `(?:a+)+` here.
    """
    return _translate(p)[0]


def _translate(p: str) -> tuple[str, bool]:
    """(Python pattern, may backtrack exponentially): the flag is set for a repeated group holding a
    quantifier or an alternation, a stacked quantifier, or a back-reference (see `match_names`)."""
    out: list[str] = []
    groups: list[int] = []  # out index of each open group
    inner: list[bool] = []  # per open group: it holds a quantifier or an alternation
    atom = -1  # out index where the last atom starts (-1: nothing to repeat)
    atom_inner = False  # the last atom is a group holding a quantifier or an alternation
    quantified = False  # the last token was a quantifier (or its lazy `?`)
    risky = False
    i = 0
    while i < len(p):
        ch = p[i]
        quant = None
        if ch == "\\":
            i, piece = _ecma_escape(p, i)
            risky = risky or piece[1:2].isdigit()  # a back-reference
        elif ch == "[":
            i, piece = _ecma_bracket(p, i)
        elif ch == "(":
            if p.startswith("(?", i):
                if p[i + 2 : i + 3] not in (":", "=", "!"):
                    raise _EcmaError(f"group syntax {p[i:i + 4]!r} is not ECMAScript")
                i, piece = i + 3, p[i : i + 3]
            else:
                i, piece = i + 1, ch
            groups.append(len(out))
            inner.append(False)
            out.append(piece)
            atom, quantified = -1, False
            continue
        elif ch == ")":
            if not groups:
                raise _EcmaError("unbalanced )")
            out.append(ch)
            i += 1
            atom, quantified, atom_inner = groups.pop(), False, inner.pop()
            if inner and atom_inner:
                inner[-1] = True
            continue
        elif ch == "|":
            i, piece = i + 1, ch
            out.append(piece)
            if inner:
                inner[-1] = True
            atom, quantified = -1, False
            continue
        elif ch in "*+?":
            i, quant = i + 1, ch
        elif ch == "{":
            m = _BRACE_RE.match(p, i)
            if not m:
                raise _EcmaError("bad {} quantifier")
            i, quant = m.end(), m.group()
        else:
            i, piece = i + 1, ch
        if quant is None:
            atom, quantified, atom_inner = len(out), False, False
            out.append(piece)
            continue
        if atom < 0:
            raise _EcmaError("nothing to repeat")
        if inner:
            inner[-1] = True
        if quant != "?" and (atom_inner or quantified):
            risky = True
        if quantified:
            if quant == "?" and out[-1] != "?":
                out.append("?")  # the lazy modifier of the quantifier before
                continue
            out[atom:] = ["(?:", *out[atom:], ")"]  # a quantifier of a quantified atom
        out.append(quant)
        quantified = True
    if groups:
        raise _EcmaError("unbalanced (")
    return "".join(out), risky


def _compile(tensor_types: Sequence[tuple[str, QType]]) -> list[tuple[re.Pattern, QType]]:
    out = []
    for pattern, qtype in tensor_types:
        try:
            out.append((re.compile(ecma_to_python(pattern), re.ASCII), qtype))
        except (re.error, _EcmaError) as e:
            raise InputError(
                f"--tensor-type: invalid regular expression {pattern!r} for llama.cpp's std::regex: {e}"
            ) from None
    return out


MATCH_SECONDS = 5.0  # bound on matching the --tensor-type patterns that may backtrack exponentially
_MATCH_CHILD = (
    "import json, re, sys\n"
    "d = json.load(sys.stdin)\n"
    "json.dump([[i for i, n in enumerate(d['names']) if re.compile(p, re.ASCII).search(n)] for p in d['patterns']],"
    " sys.stdout)\n"
)


class _Hits:
    """A pattern's precomputed regex_search results over the tensor names (re.Pattern.search's role)."""

    def __init__(self, rx: re.Pattern, hits: set[str], names: set[str]):
        self.rx, self.hits, self.names = rx, hits, names

    def search(self, name: str):
        return (name in self.hits) if name in self.names else self.rx.search(name)


def match_names(tensor_types: Sequence[tuple[str, QType]], names: Sequence[str]) -> list[tuple[object, QType]]:
    """`_compile`, with patterns that may backtrack exponentially (nested quantifiers such as
    `((.+)+)+`) matched against `names` in a child process killed after MATCH_SECONDS: the same
    Python `re` results, or a one-line InputError instead of a hang."""
    patterns = _compile(tensor_types)
    risky = [i for i, (p, _) in enumerate(tensor_types) if _translate(p)[1]]
    if not risky:
        return patterns
    import json
    import subprocess
    import sys

    doc = {"names": list(names), "patterns": [patterns[i][0].pattern for i in risky]}
    try:
        r = subprocess.run([sys.executable, "-I", "-S", "-c", _MATCH_CHILD], input=json.dumps(doc), text=True,
                           capture_output=True, timeout=MATCH_SECONDS)
    except subprocess.TimeoutExpired:
        pats = ", ".join(repr(tensor_types[i][0]) for i in risky)
        raise InputError(
            f"--tensor-type: regular expression {pats} did not finish matching the tensor names in "
            f"{MATCH_SECONDS:g} s (nested quantifiers backtrack exponentially); simplify it") from None
    if r.returncode != 0:
        raise RuntimeError(f"regex matcher failed: {r.stderr.strip().splitlines()[-1:]}")
    all_names = set(names)
    out = list(patterns)
    for i, hits in zip(risky, json.loads(r.stdout)):
        out[i] = (_Hits(patterns[i][0], {names[j] for j in hits}, all_names), patterns[i][1])
    return out


def _normalized(ov: Overrides) -> Overrides:
    """Accept type names ('q8_0') as well as QType members in the overrides."""
    return Overrides(
        tensor_types=tuple((p, parse_qtype(q)) for p, q in ov.tensor_types),
        output_tensor_type=None if ov.output_tensor_type is None else parse_qtype(ov.output_tensor_type),
        token_embedding_type=None if ov.token_embedding_type is None else parse_qtype(ov.token_embedding_type),
        pure=ov.pure,
        leave_output_tensor=ov.leave_output_tensor,
    )


def _first_match(patterns: list[tuple[re.Pattern, QType]], name: str) -> QType | None:
    """std::regex_search over the patterns in order; the first hit wins."""
    for rx, qtype in patterns:
        if rx.search(name):
            return qtype
    return None


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
        named = t.name == PER_LAYER_TOKEN_EMBD and _first_match(patterns, t.name) is not None
        if not named:
            return ov.token_embedding_type
    if ov.output_tensor_type is not None and cat is C.OUTPUT:
        return ov.output_tensor_type

    new_type = default_type
    if default_type.is_quantized:
        manual = _first_match(patterns, t.name)
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
    overrides = _normalized(overrides)
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


def plan_types(
    tensors: Sequence[TensorIn],
    ftype: FileType,
    facts: ModelFacts,
    overrides: Overrides = Overrides(),
    has_imatrix: bool = False,
) -> list[QType]:
    """The ggml type llama-quantize gives each tensor (caller's order); raises where llama-quantize fails."""
    ftype = FileType(ftype)
    types = compute_types(tensors, ftype, facts, overrides, has_imatrix)
    for t, new in zip(tensors, types):
        if not has_imatrix and new is not t.src_type and requires_imatrix(t.name, new, ftype):
            raise InputError(
                f"{ftype.short_name} requires an importance matrix (llama-quantize: 'this quantization requires "
                f"an imatrix!'): tensor {t.name} would be {new.ggml_name}"
            )
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
    return types


# tools/quantize/quantize.cpp parse_tensor_type
def parse_tensor_type(arg: str) -> tuple[str, QType]:
    """Parse one `--tensor-type NAME=TYPE` as llama-quantize does: the NAME regex is lower-cased."""
    name, sep, qtype = arg.partition("=")
    if not sep:
        raise InputError(f"--tensor-type: malformed tensor type {arg!r} (expected NAME=TYPE)")
    if not name:
        raise InputError(f"--tensor-type {arg!r}: missing tensor name")
    if not qtype:
        raise InputError(f"--tensor-type {arg!r}: missing quantization type")
    name = "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in name)  # C tolower, ASCII only
    try:
        return name, parse_qtype(qtype)
    except ValueError as e:
        raise InputError(f"--tensor-type {arg!r}: {e}") from None

