"""The one hook machine every steering intervention runs on.

An intervention is an edit function applied to the activation at one or more hookpoints.
This module installs it (through actspace.model.hooks.replace_hook, the hook primitive
all of actspace shares) together with the hooks `calls` needs to tell the edit which tokens it may
touch: pre/post hooks on the model's entry modules (padding mask, KV-cache length of the
calls now running) and a wrapper around `model.generate` (the prompt length),
so the edit is exact in batched, padded, KV-cached, chunked or cache-free generation.

Hooks exist only inside ``with``: they are installed on ``__enter__`` (building an
intervention changes nothing in the model, so one made and never entered leaves no hook
behind), removed on ``__exit__`` (also after an exception) or by ``remove()``, and
installed again when the intervention is entered again; several interventions nest and
compose (hooks run in the order they were entered).
"""
from __future__ import annotations

from typing import Callable

import torch

from ..model.hookpoints import resolve
from ..model.hooks import replace_hook
from .calls import EntryCalls, GenerateTracker, StepInfo, check_positions, step_info

__all__ = ["StepInfo", "EditFn", "Intervention", "masked_update", "work_dtype", "add_direction"]

# edit(x [B,T,d] or [..., d], info, hookpoint_name) -> new x (same shape) or None (unchanged)
EditFn = Callable[[torch.Tensor, StepInfo, str], "torch.Tensor | None"]


class Intervention:
    """A context manager whose hooks exist while it is entered.

        with Intervention(model, ["model.layers.3"], edit, positions="all"):
            model.generate(...)

    Construction checks the arguments and resolves the hookpoints but installs nothing;
    entering it again after exit reinstalls the hooks (same edit, same model).
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
        self.calls = EntryCalls(model)
        self._generate: GenerateTracker | None = None

    def _install(self) -> None:
        try:
            self.calls.stack.clear()   # calls left over from a forward that hooks were removed in
            self._handles += self.calls.install()
            for hp in self.hookpoints:
                self._handles.append(replace_hook(hp, lambda x, name=hp.name: self._apply(x, name)))
            self._generate = GenerateTracker.attach(self.model)
        except BaseException:
            self.remove()
            raise

    def _apply(self, x: torch.Tensor, name: str) -> torch.Tensor | None:
        prompt = self._generate.current() if self._generate is not None else None
        info = step_info(x, self.calls.current(), prompt, self.positions)
        # no `mask.any()` test: it would synchronise a GPU at every hooked layer
        return None if info.skip else self._edit(x, info, name)

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
        if not self.active:   # nested re-entry of an active context installs nothing more
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
