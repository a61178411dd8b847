"""Hookpoint names: `module.path[:input|:output]`, globs, and per-family layer helpers.

A hookpoint names a module from `model.named_modules()` and which side of it to read or
change: its output (default) or its input (suffix ":input"); which tensor of that side is
"the" value is decided once, in `actspace.model.hooks`. Every layer of actspace that
touches a model (capture, steering, SAE splicing, on-the-fly training, attribution)
resolves names here, so they mean the same thing.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

import torch

from .families import family_of


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


# ------------------------------------------------------------------ per-family layer names
def layer_list(model: torch.nn.Module) -> str:
    """Module path of the model's list of layers ("model.layers", or "layers" on a bare
    base model)."""
    path = family_of(model).layers
    modules = dict(model.named_modules())
    # a bare base model (BertModel, GPT2Model ...) lacks the task-head prefix
    for cand in (path, path.split(".", 1)[-1]):
        if cand in modules:
            return cand
    raise ValueError(f"layer list {path!r} not found in {type(model).__name__}")


def num_layers(model: torch.nn.Module) -> int:
    return len(dict(model.named_modules())[layer_list(model)])


def layer_hookpoint(model: torch.nn.Module, layer: int, site: str = "resid") -> str:
    """Hookpoint of a layer's residual stream output ('resid'), its input ('resid_pre'),
    attention output ('attn') or MLP output ('mlp') for the common HF families. 'attn' and
    'mlp' are the sublayer outputs exactly as they are added to the residual stream
    (after Gemma 2/3's post-sublayer norms), so resid == resid_pre + attn + mlp in the
    pre-norm families."""
    fam = family_of(model)
    layers = layer_list(model)
    n = num_layers(model)
    if isinstance(layer, bool) or not isinstance(layer, int) or not -n <= layer < n:
        raise ValueError(f"layer must be an int in [-{n}, {n}), got {layer!r}")
    layer %= n
    base = f"{layers}.{layer}"
    if site == "resid":
        return base
    if site == "resid_pre":
        return f"{base}:input"
    if site == "attn":
        return f"{base}.{fam.attn}"
    if site == "mlp":
        return f"{base}.{fam.mlp}"
    raise ValueError(f"site must be 'resid', 'resid_pre', 'attn' or 'mlp', got {site!r}")
