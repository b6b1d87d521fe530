"""Damage model of the automatic mix: how much the loss cares about each tensor's output error.

damage(t, q) = sensitivity(t) * rel(t, q). A second-order expansion of the loss
   around the unquantized weights gives dL ~ 1/2 h_t |dy_t|^2 for an output-side curvature h_t;
   written as 1/2 h_t |y_t|^2 * rel(t, q) it separates what the weights tell (rel, measured) from
   how much the loss cares about a relative perturbation of that tensor's output (the
   sensitivity), which depends on where the output goes (the residual stream, through a gate,
   through softmax, straight into the logits) and on the layer's position, not on the tensor's
   size. sensitivity(t) = SENSITIVITY[kind] x (FIRST_LAYER_FACTORS[kind] for blk.0,
   LAST_LAYER_FACTOR for the last block) x REF_LAYERS / n_layer (except for the output matrix).
   The constants were measured once on a model that is not the benchmark model (see SENSITIVITY) and are the same
   for every model: no per-model tuning.
   A tied token_embd is used twice, as llama.cpp uses it: damage = SENSITIVITY["output"] x rel
   (the output matrix, its error weighted as the output matrix's) + the untied token_embd's
   sensitivity x its unweighted rel (the input embedding).

"""

from __future__ import annotations

import re

from ..plan.recipe import category_of


# Sensitivity of the loss (nats of KL per unit of relative output error) of each kind of tensor,
# relative to attn_output in a middle layer of a REF_LAYERS-layer model. Measured once with
# `scripts/bench_mix.py --fit` (constants: `--fit-table`) on a separately trained 6-layer Llama
# (model E there: 4000 steps, not a benchmark model): each tensor alone quantized to Q3_K, the
# rest Q8_0, KL of llama.cpp's next-token distribution on calibration text divided by `rel`; a
# log-additive fit kind + first layer x kind + last layer (residual sd 0.42), with and without
# an imatrix, rounded. The FFN matrices weigh more than attention (ffn_down most, as llama.cpp's
# mixes also say; attn_q/attn_k least); the last layer ~2.7x the middle ones; the output matrix
# (logits directly) ~65x (155x, see SENSITIVITY_WEIGHTED) and the token embeddings ~10x a
# middle tensor. The first layer is its own case: its FFN matrices matter 3x (gate, up) to 12x
# (ffn_down) more than in the middle layers, its attention matrices slightly less (one factor
# for the whole first layer left residual sd 0.57 instead of 0.42). Model D's fit shows the same
# pattern (first ffn_down 8x, attention 0.7-1.1x); llama.cpp's mixes also single out the first
# ffn_down layers.
# These depend on how well trained a model is: an under-trained model (600 steps, model B) gave
# FFN ~ attention, every first-layer matrix 3-20x, token embeddings 70x, and mixes chosen with its constants
# barely beat llama.cpp's on a well-trained model (D) while E's come close to what D's own
# measured sensitivities would give (an offline comparison; D's perplexities are in the README).
# We take the well-trained model's, released checkpoints being trained far longer than either.
REF_LAYERS = 6
SENSITIVITY: dict[str, float] = {
    "attn_q": 0.75,
    "attn_k": 0.8,
    "attn_v": 1.0,
    "attn_qkv": 0.85,  # fused q, k, v: their mean
    "attn_kv_b": 1.0,
    "attn_output": 1.0,
    "ffn_gate": 1.2,
    "ffn_up": 1.0,
    "ffn_down": 1.55,
    "token_embd": 9.5,
    "output": 65.0,
}
# With an imatrix, the error sums weigh each column by its measured mean squared input, which
# for the output matrix (the final norm's output, a few channels of which dominate) gives a
# different measure of the same damage: per unit of that `rel` the output matrix costs ~2.4x more
# (model E, both modes fitted together: 154 vs 65; each mode alone: E 158 vs 63.5, and the
# benchmark model D 198 vs 82). The other kinds' constants differ between the two measures by
# less than the fit's residuals, and are pooled.
SENSITIVITY_WEIGHTED: dict[str, float] = {"output": 155.0}  # overrides when the error is imatrix-weighted
DEFAULT_SENSITIVITY = 1.0  # kinds and categories not listed (other architectures' tensors)
FIRST_LAYER_FACTORS: dict[str, float] = {  # blk.0.*, by kind (else category)
    "attn_q": 0.7,
    "attn_k": 0.65,
    "attn_v": 0.75,
    "attn_qkv": 0.7,
    "attn_kv_b": 0.75,
    "attn_output": 0.9,
    "ffn_gate": 3.0,
    "ffn_up": 3.2,
    "ffn_down": 12.0,
}
FIRST_LAYER_FACTOR = 1.7  # blk.0.* of kinds not listed (the geometric mean of those that are)
LAST_LAYER_FACTOR = 2.7  # blk.<n_layer - 1>.*
# Everything but the output matrix adds to the residual stream; with n layers each addition is
# ~1/sqrt(n) of the stream, so its relative error reaches the logits scaled by ~1/n: the measured
# per-tensor sensitivities (REF_LAYERS deep) are scaled by REF_LAYERS / n_layer.
_BLK_RE = re.compile(r"^blk\.\d+\.(.+?)(?:\.weight)?$")


def kind_of(name: str) -> str:
    """'blk.3.attn_v.weight' -> 'attn_v'; 'output.weight' -> 'output'."""
    m = _BLK_RE.match(name)
    if m:
        return m.group(1)
    return name[: -len(".weight")] if name.endswith(".weight") else name



def sensitivity_of(name: str, n_layer: int, table: dict[str, float] | None = None, tied: bool = False,
                   weighted: bool = False) -> float:
    """A tensor's sensitivity: by its kind, else by llama.cpp's category of it (ffn_down_exps -> ffn_down);
    times the first-layer factor of its kind or the last-layer factor; residual-stream tensors times
    REF_LAYERS / n_layer. `weighted`: its error is imatrix-weighted (SENSITIVITY_WEIGHTED). `tied`: a
    token_embd that is also the output matrix, in that role (the output matrix's sensitivity; its
    input role, measured separately, has the untied token_embd's: Curve.input_sensitivity)."""
    t = SENSITIVITY if table is None else table
    if weighted and table is None:
        t = {**t, **SENSITIVITY_WEIGHTED}
    kind = kind_of(name)
    cat = category_of(name).value
    if tied and cat == "token_embd":
        return float(t.get("output", DEFAULT_SENSITIVITY))
    s = float(t.get(kind, t.get(cat, DEFAULT_SENSITIVITY)))
    m = re.match(r"^blk\.(\d+)\.", name)
    if m:
        layer = int(m.group(1))
        if layer == 0:
            s *= FIRST_LAYER_FACTORS.get(kind, FIRST_LAYER_FACTORS.get(cat, FIRST_LAYER_FACTOR))
        elif layer == n_layer - 1:
            s *= LAST_LAYER_FACTOR
    if cat != "output":
        s *= REF_LAYERS / max(n_layer, 1)
    return s

