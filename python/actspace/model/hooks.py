"""The one pair of hook primitives every part of actspace that touches a model uses:
read a hookpoint's value, replace it.

Capture, steering, the evaluation splice, on-the-fly SAE training, the steering sweep and
attribution all install their hooks through `read_hook` / `replace_hook`, so "the value at
a hookpoint" has one meaning everywhere:

* output side ("path" or "path:output"): the module's output if it is a tensor, else the
  first tensor of a tuple/list output, of a `ModelOutput` / dataclass output (first tensor
  field in field order) or of a dict output. A decoder layer returning
  `(hidden_states, attn_weights)` is read as `hidden_states`.
* input side ("path:input"), one rule: the first tensor among the positional arguments;
  else the keyword argument `hidden_states` (HF calls its layers as
  `layer(hidden_states=x, ...)`); else the first tensor keyword argument in call order.

API (hp is a `Hookpoint` from `actspace.model.hookpoints.resolve` / `resolve_one`):

    handle = read_hook(hp, fn)      # fn(x) on every call; its return value is ignored
    handle = replace_hook(hp, fn)   # fn(x) -> new tensor (put back where x was) or None
    handle.remove()
    with replacing(model, "model.layers.3", fn) as hp: model(**batch)   # resolve + remove

x is the live tensor: read_hook does not detach or copy (a caller that keeps it detaches
or clones), and replace_hook puts fn's tensor into the forward as it is, so autograd
flows through the replacement (an SAE splice trained or attributed through, a gradient
with respect to x from a `fn` that keeps x in its graph). The value-level helpers
`output_tensor` / `replace_output` and `input_tensor` / `replace_input` apply the same
rules to values a caller already holds. Hooks run in the order they were installed.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable

import torch

from .hookpoints import Hookpoint, resolve_one

__all__ = ["read_hook", "replace_hook", "replacing", "output_tensor", "replace_output",
           "input_tensor", "replace_input", "first_tensor", "replace_first_tensor"]


# ------------------------------------------------------------------ output side
def _output_slot(value):
    """Where the tensor of an output sits: "self" (value is the tensor), ("seq", i),
    ("map", key) or ("field", name); None when there is no tensor at all."""
    if isinstance(value, torch.Tensor):
        return "self"
    if isinstance(value, (tuple, list)):
        return next((("seq", i) for i, v in enumerate(value) if isinstance(v, torch.Tensor)), None)
    if isinstance(value, dict):   # transformers' ModelOutput is an OrderedDict of its set fields
        return next((("map", k) for k, v in value.items() if isinstance(v, torch.Tensor)), None)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return next((("field", f.name) for f in dataclasses.fields(value)
                     if isinstance(getattr(value, f.name), torch.Tensor)), None)
    return None


def output_tensor(value) -> torch.Tensor:
    """The tensor a hookpoint on an output reads: value itself, or the first tensor of a
    tuple/list, ModelOutput/dataclass or dict (e.g. (hidden_states, attn_weights))."""
    slot = _output_slot(value)
    if slot is None:
        raise TypeError(f"hookpoint value has no tensor (got {type(value).__name__})")
    if slot == "self":
        return value
    kind, key = slot
    return getattr(value, key) if kind == "field" else value[key]


def replace_output(value, new: torch.Tensor):
    """value with its hookpoint tensor replaced by new, in a container of the same type
    (the module's own output object is never changed in place)."""
    slot = _output_slot(value)
    if slot is None:
        raise TypeError(f"cannot replace the tensor in a {type(value).__name__}")
    if slot == "self":
        return new
    kind, key = slot
    if kind == "seq":
        items = list(value)
        items[key] = new
        return items if isinstance(value, list) else (
            type(value)(*items) if hasattr(value, "_fields") else tuple(items))   # namedtuple
    if kind == "map":
        out = type(value)(**value) if hasattr(value, "to_tuple") else type(value)(value)
        out[key] = new    # ModelOutput's __setitem__ sets the attribute too
        return out
    return dataclasses.replace(value, **{key: new})


# the names capture, steer and the tests have always used for the output rule
first_tensor = output_tensor
replace_first_tensor = replace_output


# ------------------------------------------------------------------ input side
def _input_slot(args: tuple, kwargs: dict):
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            return "arg", i
    if isinstance(kwargs.get("hidden_states"), torch.Tensor):
        return "kw", "hidden_states"
    for k, a in kwargs.items():
        if isinstance(a, torch.Tensor):
            return "kw", k
    return None


def input_tensor(args: tuple, kwargs: dict, name: str = "hookpoint") -> torch.Tensor:
    """The tensor an input hookpoint reads from a module call (args, kwargs): the first
    positional tensor, else hidden_states=, else the first tensor keyword argument."""
    slot = _input_slot(args, kwargs)
    if slot is None:
        raise TypeError(f"{name}: the module was called with no tensor input "
                        f"(positional {[type(a).__name__ for a in args]}, keywords {list(kwargs)})")
    kind, key = slot
    return args[key] if kind == "arg" else kwargs[key]


def replace_input(args: tuple, kwargs: dict, new: torch.Tensor, name: str = "hookpoint"):
    """(args, kwargs) with the input hookpoint's tensor replaced by new."""
    slot = _input_slot(args, kwargs)
    if slot is None:
        raise TypeError(f"{name}: the module was called with no tensor input")
    kind, key = slot
    if kind == "arg":
        return args[:key] + (new,) + args[key + 1:], kwargs
    return args, {**kwargs, key: new}


# ------------------------------------------------------------------ the two primitives
def read_hook(hp: Hookpoint, fn: Callable[[torch.Tensor], object]):
    """Call fn(x) with the hookpoint's tensor x on every call of hp.module; fn's return
    value is ignored and the forward is unchanged (fn may raise to stop it). Returns the
    torch handle (handle.remove())."""
    if hp.side == "input":
        def pre_hook(module, args, kwargs):
            fn(input_tensor(args, kwargs, f"hookpoint {hp.name!r}"))
        return hp.module.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def hook(module, args, output):
        fn(output_tensor(output))
    return hp.module.register_forward_hook(hook)


def replace_hook(hp: Hookpoint, fn: Callable[[torch.Tensor], "torch.Tensor | None"]):
    """Replace the hookpoint's tensor x by fn(x) on every call of hp.module (None from fn:
    leave the call unchanged). The new tensor goes where x was: the same positional or
    keyword argument, or the same element/field of the output. Returns the torch handle."""
    if hp.side == "input":
        def pre_hook(module, args, kwargs):
            name = f"hookpoint {hp.name!r}"
            new = fn(input_tensor(args, kwargs, name))
            return None if new is None else replace_input(args, kwargs, new, name)
        return hp.module.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def hook(module, args, output):
        new = fn(output_tensor(output))
        return None if new is None else replace_output(output, new)
    return hp.module.register_forward_hook(hook)


@contextlib.contextmanager
def replacing(model: torch.nn.Module, hookpoint: str, fn, what: str = "hookpoint"):
    """replace_hook at the one hookpoint `hookpoint` names, for the duration of the block
    (removed also when the block raises). Yields the resolved Hookpoint."""
    hp = resolve_one(model, hookpoint, what)
    handle = replace_hook(hp, fn)
    try:
        yield hp
    finally:
        handle.remove()
