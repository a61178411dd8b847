"""The one hook machine every steering intervention runs on.

An intervention is an edit function applied to the activation at one or more hookpoints.
This module installs it (forward hooks for output hookpoints, forward pre-hooks for input
hookpoints) and gives the edit function what it needs to be exact in batched, padded,
KV-cached generation:

* a pre-hook on the top-level model captures the call's ``attention_mask`` (and
  ``cache_position`` / ``past_key_values``) for each forward, so padding tokens are never
  edited and each token's absolute position is known;
* with a KV cache, a decode step's forward sees only the new token(s), so the past length
  is ``attention_mask.shape[1] - T``; tokens of a forward with no past are the "prompt",
  tokens of later forwards are "generated". Every token is thus edited exactly once.

Hooks are removed on ``__exit__`` (also after an exception) or by ``remove()``; several
interventions nest and compose (hooks run in the order they were installed).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch

from ..capture.hookpoints import first_tensor, replace_first_tensor, resolve


@dataclass
class StepInfo:
    """What an edit function knows about the tokens of the current forward."""
    past_len: int                  # tokens already in the KV cache before this forward
    mask: torch.Tensor | None      # [B, T] bool: tokens that may be edited (None: all)
    skip: bool = False             # nothing to edit in this forward (decided without a sync)


def _positions_ok(positions) -> None:
    if isinstance(positions, slice):
        if positions.step not in (None, 1):
            raise ValueError(f"positions slice must have step 1, got {positions}")
        for end in (positions.start, positions.stop):
            if end is not None and (not isinstance(end, int) or end < 0):
                raise ValueError(f"positions slice bounds must be non-negative ints, got {positions}")
        return
    if positions not in ("all", "prompt", "generated"):
        raise ValueError(f"positions must be 'all', 'prompt', 'generated' or a slice, "
                         f"got {positions!r}")


_CACHE_NAMES = ("cache", "past_key_values", "cache_params")


class _CallState:
    """attention mask / cache position of the top-level forward now running."""

    def __init__(self, model: torch.nn.Module):
        try:
            self._sig = inspect.signature(model.forward)
        except (TypeError, ValueError):
            self._sig = None
        self.stack: list[dict] = []   # nested top-level calls (rare) keep their own state

    def push(self, args, kwargs) -> None:
        bound = dict(kwargs)
        if self._sig is not None:
            try:
                bound.update(self._sig.bind_partial(*args, **kwargs).arguments)
            except TypeError:
                pass
        # the KV cache is `cache` in transformers >= 5.2x, `past_key_values` before (and
        # still accepted through **kwargs), `cache_params` for state-space models
        cache = next((bound[n] for n in _CACHE_NAMES if bound.get(n) is not None), None)
        st = {"attention_mask": bound.get("attention_mask"),
              "cache_position": bound.get("cache_position"),
              "past_key_values": cache}
        # read the cache length now: layers append to the cache during the forward
        st["past_len"] = _past_len(st)
        self.stack.append(st)

    def pop(self) -> None:
        if self.stack:
            self.stack.pop()

    def step(self, x: torch.Tensor, positions) -> StepInfo:
        """Editable-token mask for activation x [B, T, d] under `positions`."""
        st = self.stack[-1] if self.stack else {}
        if x.dim() != 3:   # not a [B, T, d] stream: no padding or position to respect
            return StepInfo(0, None, skip=positions not in ("all", "prompt"))
        B, T = x.shape[0], x.shape[1]
        am = st.get("attention_mask")
        if isinstance(am, torch.Tensor) and am.dim() == 2 and am.shape[0] == B and am.shape[1] >= T:
            am = am.to(x.device).bool()
            past = am.shape[1] - T
            mask = am[:, past:]
            # index of each token among the row's real tokens (left padding shifts it)
            real_index = (am.long().cumsum(1) - 1)[:, past:]
        else:
            past = st.get("past_len", 0)
            mask = torch.ones(B, T, dtype=torch.bool, device=x.device)
            real_index = torch.arange(past, past + T, device=x.device).expand(B, T)
        if positions == "prompt" and past > 0 or positions == "generated" and past == 0:
            return StepInfo(past, None, skip=True)
        if isinstance(positions, slice):
            lo = positions.start or 0
            hi = positions.stop if positions.stop is not None else 1 << 62
            mask = mask & (real_index >= lo) & (real_index < hi)
        return StepInfo(past, mask)


def _past_len(st: dict) -> int:
    cp = st.get("cache_position")
    if isinstance(cp, torch.Tensor) and cp.numel():
        return int(cp.reshape(-1)[0])
    pkv = st.get("past_key_values")
    if pkv is not None and hasattr(pkv, "get_seq_length"):
        return int(pkv.get_seq_length())
    return 0


# edit(x [B,T,d] or [..., d], info, hookpoint_name) -> new x (same shape) or None (unchanged)
EditFn = Callable[[torch.Tensor, StepInfo, str], "torch.Tensor | None"]


class Intervention:
    """Hooks installed at construction; a context manager that removes them on exit.

        with Intervention(model, ["model.layers.3"], edit, positions="all"):
            model.generate(...)
    """

    def __init__(self, model: torch.nn.Module, hookpoints, edit: EditFn, positions="all"):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        _positions_ok(positions)
        self.hookpoints = resolve(model, hookpoints)
        self.positions = positions
        self._edit = edit
        self._state = _CallState(model)
        self._handles: list = []
        try:
            self._handles.append(model.register_forward_pre_hook(self._top_pre, with_kwargs=True))
            self._handles.append(model.register_forward_hook(self._top_post, always_call=True))
            for hp in self.hookpoints:
                if hp.side == "output":
                    h = hp.module.register_forward_hook(self._make_out_hook(hp.name))
                else:
                    h = hp.module.register_forward_pre_hook(self._make_in_hook(hp.name),
                                                            with_kwargs=True)
                self._handles.append(h)
        except BaseException:
            self.remove()
            raise

    # top-level model: remember this call's mask, forget it after the call
    def _top_pre(self, module, args, kwargs):
        self._state.push(args, kwargs)

    def _top_post(self, module, args, output):
        self._state.pop()

    def _apply(self, x: torch.Tensor, name: str) -> torch.Tensor | None:
        info = self._state.step(x, self.positions)
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

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def __enter__(self):
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
