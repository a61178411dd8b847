"""Where things sit in each Hugging Face model family actspace knows, keyed by
`config.model_type`: the layer list and, inside one layer, the modules that produce or
consume the residual stream's parts.

One table, read by `layer_hookpoint` (residual / attention / MLP names per layer) and by
`hook_names` (TransformerLens, sparsify and Gemma Scope names -> HF module paths), so a
new family is one entry here.

The `attn` and `mlp` sites are the modules whose outputs are added to the residual stream:
for the pre-norm families resid_post == resid_pre + attn + mlp. Gemma 2/3 normalise each
sublayer's output (post_attention_layernorm, post_feedforward_layernorm) before the add:
those norms are their sites (in Llama, post_attention_layernorm is the MLP's *input* norm
instead, its `ln2`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class Family:
    layers: str               # the layer list, from the task model (e.g. "model.layers")
    attn: str                 # attention output as added to the residual stream
    mlp: str                  # MLP output as added to the residual stream
    attn_out_proj: str        # attention's output projection: its input is the heads' z
    ln2: str | None           # the norm whose input is resid_mid and output the MLP's input
    mlp_down: str             # the MLP's last linear: its input is the hidden activation
    mlp_block: str = "mlp"    # the MLP module itself: its input is the MLP's input


_LLAMA_LIKE = Family("model.layers", "self_attn", "mlp", "self_attn.o_proj",
                     "post_attention_layernorm", "mlp.down_proj")
_GEMMA_POST_NORM = Family("model.layers", "post_attention_layernorm",
                          "post_feedforward_layernorm", "self_attn.o_proj",
                          "pre_feedforward_layernorm", "mlp.down_proj")

FAMILIES: dict[str, Family] = {
    # BERT adds the residual inside attention.output / output (dense -> LayerNorm(x + .)):
    # its attention and MLP outputs before the residual are those .dense modules
    "bert": Family("encoder.layer", "attention.output.dense", "output.dense",
                   "attention.output.dense", None, "output.dense", "intermediate"),
    "gpt2": Family("transformer.h", "attn", "mlp", "attn.c_proj", "ln_2", "mlp.c_proj"),
    # use_parallel_residual (Pythia): no resid_mid, the MLP reads resid_pre
    "gpt_neox": Family("gpt_neox.layers", "attention", "mlp", "attention.dense",
                       "post_attention_layernorm", "mlp.dense_4h_to_h"),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _GEMMA_POST_NORM,
    "gemma3_text": _GEMMA_POST_NORM,
    "gemma3": replace(_GEMMA_POST_NORM, layers="model.language_model.layers"),   # multimodal: text tower
}


def model_type(model: torch.nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def family_of(model: torch.nn.Module) -> Family:
    """The model's Family; ValueError naming the model_type and the known ones."""
    mtype = model_type(model)
    if mtype not in FAMILIES:
        raise ValueError(f"no layer naming known for model_type {mtype!r}; known: "
                         f"{sorted(FAMILIES)} (pass module paths instead)")
    return FAMILIES[mtype]


def layer_list_names() -> set[str]:
    """Every layer-list path of the known families, with and without the task-model
    prefix ("model.layers" and "layers")."""
    return {p for fam in FAMILIES.values() for p in (fam.layers, fam.layers.split(".", 1)[-1])}


def head_shape(model: torch.nn.Module) -> tuple[int, int]:
    """(n_heads, d_head) of the model's attention: the shape its output projection's
    input [..., n_heads * d_head] takes per head (head-major, as every family merges)."""
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg      # multimodal Gemma 3: the text tower
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None)
    if not heads:
        raise ValueError(f"{type(model).__name__}'s config names no number of attention heads")
    d_head = getattr(cfg, "head_dim", None)
    if not d_head:
        hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None)
        d_head = hidden // heads
    return int(heads), int(d_head)
