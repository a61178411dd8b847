"""Hookpoint names: `module.path[:input|:output]`, globs, and per-family layer helpers.

A hookpoint names a module from `model.named_modules()` and which side of it to read or
change: its output (default; the first tensor of a tuple output) or its input (the first
positional tensor argument). Every layer of actspace that touches a model (capture,
steering, SAE splicing in evaluation) resolves names here, so they mean the same thing.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Hookpoint:
    name: str            # canonical: "path" for outputs, "path:input" for inputs
    module_path: str
    side: str            # "output" or "input"
    module: torch.nn.Module


def _split(spec: str) -> tuple[str, str]:
    if not isinstance(spec, str) or not spec:
        raise TypeError(f"hookpoint must be a non-empty string, got {spec!r}")
    path, sep, side = spec.rpartition(":")
    if not sep:
        return spec, "output"
    if side not in ("input", "output"):
        raise ValueError(f"hookpoint {spec!r}: the part after ':' must be 'input' or 'output'")
    return path, side


def _glob_regex(pattern: str) -> re.Pattern:
    """'*' and '?' stay inside one path component ('model.layers.*' is the layers, not their
    children); '**' crosses components."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        c = pattern[i]
        out.append("[^.]*" if c == "*" else "[^.]" if c == "?" else re.escape(c))
        i += 1
    return re.compile("".join(out))


def resolve(model: torch.nn.Module, hookpoints) -> list[Hookpoint]:
    """Expand globs and check every name; a missing one raises ValueError with the
    closest real module names."""
    if isinstance(hookpoints, str):
        hookpoints = [hookpoints]
    modules = dict(model.named_modules())
    names = [n for n in modules if n]
    out: list[Hookpoint] = []
    for spec in hookpoints:
        path, side = _split(spec)
        if any(c in path for c in "*?"):
            pattern = _glob_regex(path)
            matches = [n for n in names if pattern.fullmatch(n)]
            if not matches:
                raise ValueError(f"hookpoint pattern {spec!r} matches no module; "
                                 f"module names look like {names[:8]}")
        elif path in modules and path:
            matches = [path]
        else:
            close = difflib.get_close_matches(path, names, n=5, cutoff=0.5)
            raise ValueError(f"hookpoint {spec!r}: no module named {path!r} in "
                             f"{type(model).__name__}; closest: {close or names[:5]}")
        for m in matches:
            name = m if side == "output" else f"{m}:input"
            if all(h.name != name for h in out):
                out.append(Hookpoint(name, m, side, modules[m]))
    return out


def resolve_one(model: torch.nn.Module, spec: str, what: str = "hookpoint") -> Hookpoint:
    """resolve() for a spec that must name exactly one module (a splice or an SAE's
    input); what names the argument in the error."""
    hps = resolve(model, spec)
    if len(hps) != 1:
        raise ValueError(f"{what} must name one hookpoint, {spec!r} matches "
                         f"{[h.name for h in hps]}")
    return hps[0]


def first_tensor(value):
    """The tensor a hookpoint reads: value itself, or the first tensor of a tuple/list/
    ModelOutput (e.g. a decoder layer returning (hidden_states, attn_weights))."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for v in value:
            if isinstance(v, torch.Tensor):
                return v
    if hasattr(value, "to_tuple"):
        return first_tensor(value.to_tuple())
    raise TypeError(f"hookpoint value has no tensor (got {type(value).__name__})")


def replace_first_tensor(value, new: torch.Tensor):
    """value with its first tensor replaced by new (same container type)."""
    if isinstance(value, torch.Tensor):
        return new
    if isinstance(value, (tuple, list)):
        items = list(value)
        for i, v in enumerate(items):
            if isinstance(v, torch.Tensor):
                items[i] = new
                return type(value)(items) if isinstance(value, list) else tuple(items)
    raise TypeError(f"cannot replace the tensor in a {type(value).__name__}")


# ------------------------------------------------------------------ per-family layer names
# (layer-list path, attention site, mlp site) by the model's config.model_type; the sites
# are the modules whose outputs are added to the residual stream, so that for the pre-norm
# families resid == resid_pre + attn + mlp
_POST_NORMS = ("post_attention_layernorm", "post_feedforward_layernorm")
_FAMILIES = {
    # BERT adds the residual inside attention.output / output (dense -> LayerNorm(x + .)):
    # its attention and MLP outputs before the residual are those .dense modules
    "bert": ("encoder.layer", "attention.output.dense", "output.dense"),
    "gpt2": ("transformer.h", "attn", "mlp"),
    "gpt_neox": ("gpt_neox.layers", "attention", "mlp"),
    "llama": ("model.layers", "self_attn", "mlp"),
    "mistral": ("model.layers", "self_attn", "mlp"),
    "qwen2": ("model.layers", "self_attn", "mlp"),
    "qwen3": ("model.layers", "self_attn", "mlp"),
    "gemma": ("model.layers", "self_attn", "mlp"),
    # Gemma 2/3 normalise each sublayer's output (post_attention_layernorm,
    # post_feedforward_layernorm) before the residual add: those norms' outputs are the
    # sites (in Llama, post_attention_layernorm is the MLP's input norm instead)
    "gemma2": ("model.layers",) + _POST_NORMS,
    "gemma3_text": ("model.layers",) + _POST_NORMS,
    "gemma3": ("model.language_model.layers",) + _POST_NORMS,   # multimodal: text tower
}


def _layer_list(model: torch.nn.Module) -> str:
    mtype = getattr(getattr(model, "config", None), "model_type", None)
    if mtype not in _FAMILIES:
        raise ValueError(f"no layer naming known for model_type {mtype!r}; known: "
                         f"{sorted(_FAMILIES)} (pass module paths instead)")
    path = _FAMILIES[mtype][0]
    modules = dict(model.named_modules())
    # a bare base model (BertModel, GPT2Model ...) lacks the task-head prefix
    for cand in (path, path.split(".", 1)[-1]):
        if cand in modules:
            return cand
    raise ValueError(f"layer list {path!r} not found in {type(model).__name__}")


def num_layers(model: torch.nn.Module) -> int:
    return len(dict(model.named_modules())[_layer_list(model)])


def layer_hookpoint(model: torch.nn.Module, layer: int, site: str = "resid") -> str:
    """Hookpoint of a layer's residual stream output ('resid'), its input ('resid_pre'),
    attention output ('attn') or MLP output ('mlp') for the common HF families. 'attn' and
    'mlp' are the sublayer outputs exactly as they are added to the residual stream
    (after Gemma 2/3's post-sublayer norms), so resid == resid_pre + attn + mlp in the
    pre-norm families."""
    mtype = model.config.model_type
    layers = _layer_list(model)
    n = num_layers(model)
    if not -n <= layer < n:
        raise ValueError(f"layer must be in [-{n}, {n}), got {layer}")
    layer %= n
    base = f"{layers}.{layer}"
    if site == "resid":
        return base
    if site == "resid_pre":
        return f"{base}:input"
    if site == "attn":
        return f"{base}.{_FAMILIES[mtype][1]}"
    if site == "mlp":
        return f"{base}.{_FAMILIES[mtype][2]}"
    raise ValueError(f"site must be 'resid', 'resid_pre', 'attn' or 'mlp', got {site!r}")
