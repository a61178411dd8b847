"""The one place attribution touches a model: replace a hookpoint's value during a forward.

Every attribution method is a forward in which some hookpoints are changed: a zero probe
added (x + p, bit-identical output, p.grad = the hookpoint gradient), the value moved along
a path to its baseline (integrated gradients), or one node patched (exact). All of them go
through `replace_at`, which is the model layer's replace primitive (`model.hooks.replacing`),
so attribution adds no hook mechanism of its own.

The SAE splice with its error term is implicit here: at a hookpoint x = x̂ + err exactly
(err = x - x̂ held), so the model's output is unchanged, and the gradient of the metric
w.r.t. the active latents' values is the hookpoint gradient projected on their decoder
rows, which `sites.py` gets from sparse_decode's backward (grad of values), never a dense
[tokens, d_sae] gradient.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch

from ..model.hookpoints import resolve_one
from ..model.hooks import replacing

__all__ = ["replace_at", "check_hookpoint", "forward_with"]


def replace_at(model: torch.nn.Module, hookpoint: str, fn: Callable):
    """Context: the tensor at hookpoint becomes fn(x [B, T, d]) during forwards."""
    return replacing(model, hookpoint, fn)


def check_hookpoint(model: torch.nn.Module, hookpoint: str, what: str) -> str:
    """The canonical name of one existing hookpoint (ValueError naming what, and the
    closest module names, otherwise)."""
    try:
        return resolve_one(model, hookpoint, what).name
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None


def forward_with(model, inputs: dict, edits: dict[str, Callable]):
    """model(**inputs) with edits {hookpoint: fn(x) -> new x} installed for the call."""
    with contextlib.ExitStack() as stack:
        for hp, fn in edits.items():
            stack.enter_context(replace_at(model, hp, fn))
        return model(**inputs)
