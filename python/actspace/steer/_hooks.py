"""The one hook machine every steering intervention runs on.

An intervention is an edit function applied to the activation at one or more hookpoints.
This module installs it (forward hooks for output hookpoints, forward pre-hooks for input
hookpoints) together with the hooks `_calls` needs to tell the edit which tokens it may
touch: pre/post hooks on the model's entry modules (padding mask, KV-cache length of the
calls now running) and a wrapper around `model.generate` (the prompt length),
so the edit is exact in batched, padded, KV-cached, chunked or cache-free generation.

Hooks are removed on ``__exit__`` (also after an exception) or by ``remove()``, and
reinstalled when a removed intervention is entered again; several interventions nest and
compose (hooks run in the order they were installed).
"""
from __future__ import annotations

from typing import Callable

import torch

from ..capture.hookpoints import first_tensor, replace_first_tensor, resolve
from ._calls import EntryCalls, GenerateTracker, StepInfo, check_positions, step_info

__all__ = ["StepInfo", "EditFn", "Intervention", "masked_update", "work_dtype", "add_direction"]

# edit(x [B,T,d] or [..., d], info, hookpoint_name) -> new x (same shape) or None (unchanged)
EditFn = Callable[[torch.Tensor, StepInfo, str], "torch.Tensor | None"]


class Intervention:
    """Hooks installed at construction; a context manager that removes them on exit.

        with Intervention(model, ["model.layers.3"], edit, positions="all"):
            model.generate(...)

    Entering it again after it was removed reinstalls the hooks (same edit, same model).
    """

    def __init__(self, model: torch.nn.Module, hookpoints, edit: EditFn, positions="all"):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_positions(positions)
        self.model = model
        self.hookpoints = resolve(model, hookpoints)
        self.positions = positions
        self._edit = edit
        self._handles: list = []
        self._calls = EntryCalls(model)
        self._generate: GenerateTracker | None = None
        self._install()

    def _install(self) -> None:
        try:
            self._calls.stack.clear()   # calls left over from a forward that hooks were removed in
            self._handles += self._calls.install()
            for hp in self.hookpoints:
                if hp.side == "output":
                    h = hp.module.register_forward_hook(self._make_out_hook(hp.name))
                else:
                    h = hp.module.register_forward_pre_hook(self._make_in_hook(hp.name),
                                                            with_kwargs=True)
                self._handles.append(h)
            self._generate = GenerateTracker.attach(self.model)
        except BaseException:
            self.remove()
            raise

    def _apply(self, x: torch.Tensor, name: str) -> torch.Tensor | None:
        prompt = self._generate.current() if self._generate is not None else None
        info = step_info(x, self._calls.current(), prompt, self.positions)
        # no `mask.any()` test: it would synchronise a GPU at every hooked layer
        return None if info.skip else self._edit(x, info, name)

    def _make_out_hook(self, name):
        def hook(module, args, output):
            x = first_tensor(output)
            new = self._apply(x, name)
            return None if new is None else replace_first_tensor(output, new)
        return hook

    def _make_in_hook(self, name):
        def hook(module, args, kwargs):
            if any(isinstance(a, torch.Tensor) for a in args):
                new = self._apply(first_tensor(args), name)
                return None if new is None else (replace_first_tensor(args, new), kwargs)
            if isinstance(kwargs.get("hidden_states"), torch.Tensor):
                new = self._apply(kwargs["hidden_states"], name)
                return None if new is None else (args, {**kwargs, "hidden_states": new})
            raise TypeError(f"hookpoint {name!r}: the module was called with no tensor input")
        return hook

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()
        if self._generate is not None:
            self._generate.release()
            self._generate = None

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def __enter__(self):
        if not self.active:   # a used context entered again: install the hooks anew
            self._install()
        return self

    def __exit__(self, *exc):
        self.remove()
        return False


def masked_update(x: torch.Tensor, new: torch.Tensor, info: StepInfo) -> torch.Tensor:
    """new where the token is editable, x elsewhere (x, new [..., d]; mask [...])."""
    if info.mask is None:
        return new
    return torch.where(info.mask.unsqueeze(-1), new, x)


def work_dtype(x: torch.Tensor) -> torch.dtype:
    """Edits compute in float32 for half types and in float64 for float64 models."""
    return torch.promote_types(x.dtype, torch.float32)


def add_direction(x: torch.Tensor, delta: torch.Tensor, info: StepInfo,
                  preserve_norm: bool = False) -> torch.Tensor:
    """x + delta on editable tokens; delta [d] or [..., d]. With preserve_norm each edited
    token is rescaled to its original norm (in float32 or wider, then cast back)."""
    xf = x.to(work_dtype(x))
    new = xf + delta.to(device=x.device, dtype=xf.dtype)
    if preserve_norm:
        scale = xf.norm(dim=-1, keepdim=True) / new.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        new = new * scale
    return masked_update(x, new.to(x.dtype), info)
