"""`acts.capture`: record activations at hookpoints while a model runs.

Why a context manager: hooks must exist only while capturing. Leaving a forward hook
behind silently slows a model and leaks memory, so every hook is removed on exit, also
when the body raises. Early stop raises an internal exception once every hookpoint of a
forward call has fired, so later layers are not computed; the exception is swallowed by
the context manager (and by `Capture.forward`).

    with acts.capture(model, ["encoder.layer.3", "encoder.layer.5:input"]) as cap:
        model(**batch)
    cap["encoder.layer.3"]          # [B, T, d] of the LAST forward call
    cap.all("encoder.layer.3")      # list of [B, T_i, d], one per forward call
    cap.cat("encoder.layer.3")      # concatenated along the sequence dim (generate)
"""
from __future__ import annotations

import torch

from ..model.hookpoints import Hookpoint, resolve
from ..model.hooks import read_hook


class _EarlyStop(Exception):
    """Raised inside forward after the last hookpoint fired; never escapes a Capture."""


class Capture:
    """Records, per hookpoint, one tensor per forward call of the model.

    model: any torch.nn.Module. hookpoints: names, globs or a list of them (see
    actspace.model.hookpoints). early_stop: stop the forward once all hookpoints fired.
    detach: detach from autograd (default). to: device to move records to ("cpu" default;
    None keeps them where they are, cloned so later in-place ops cannot change them).
    dtype: optional dtype of the records.
    """

    def __init__(self, model: torch.nn.Module, hookpoints, *, early_stop: bool = False,
                 detach: bool = True, to="cpu", dtype: torch.dtype | None = None):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtype must be a torch.dtype or None, got {dtype!r}")
        self.model = model
        self.hookpoints: list[Hookpoint] = resolve(model, hookpoints)
        self.early_stop = bool(early_stop)
        self.detach = bool(detach)
        self.to = None if to is None else torch.device(to)
        self.dtype = dtype
        self.records: dict[str, list[torch.Tensor]] = {h.name: [] for h in self.hookpoints}
        self._handles: list = []
        self._fired: set[str] = set()
        self.stopped_early = 0   # number of forward calls cut short by early stop

    # ------------------------------------------------------------------ hooks
    def _record(self, name: str, t: torch.Tensor) -> None:
        if self.detach:
            t = t.detach()
        if self.to is not None and self.to != t.device:
            t = t.to(self.to, dtype=self.dtype)
        else:   # same device: copy, the model may change its tensor in place later
            t = t.to(dtype=self.dtype, copy=True)
        self.records[name].append(t)
        self._fired.add(name)
        if self.early_stop and len(self._fired) == len(self.records):
            raise _EarlyStop()

    def _reset_fired(self, module, args):
        self._fired = set()

    def __enter__(self) -> "Capture":
        try:
            self._handles.append(self.model.register_forward_pre_hook(self._reset_fired))
            for hp in self.hookpoints:
                self._handles.append(read_hook(hp, lambda x, name=hp.name: self._record(name, x)))
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        """Remove every hook (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.remove()
        if exc_type is not None and issubclass(exc_type, _EarlyStop):
            self.stopped_early += 1
            return True
        return False

    def forward(self, *args, **kwargs):
        """Call the model; with early stop returns None instead of the (uncomputed) output."""
        try:
            return self.model(*args, **kwargs)
        except _EarlyStop:
            self.stopped_early += 1
            return None

    # ------------------------------------------------------------------ results
    def _check(self, name: str) -> list[torch.Tensor]:
        if name not in self.records:
            # accept the spec as given, e.g. "x:output" for "x"
            alias = name[:-len(":output")] if name.endswith(":output") else None
            if alias in self.records:
                return self.records[alias]
            raise KeyError(f"{name!r} is not a captured hookpoint; captured: {list(self.records)}")
        return self.records[name]

    def __getitem__(self, name: str) -> torch.Tensor:
        """The record of the last forward call at hookpoint name."""
        recs = self._check(name)
        if not recs:
            raise KeyError(f"hookpoint {name!r} has not fired (no forward call reached it)")
        return recs[-1]

    def all(self, name: str) -> list[torch.Tensor]:
        """Every record at name, one per forward call, in call order."""
        return list(self._check(name))

    def cat(self, name: str, dim: int = -2) -> torch.Tensor:
        """Records concatenated along dim (default the sequence dim of [B, T, d]: during
        generate with a KV cache this gives [B, T_prompt + T_new - 1, d])."""
        recs = self._check(name)
        if not recs:
            raise KeyError(f"hookpoint {name!r} has not fired")
        return torch.cat(recs, dim=dim)

    def keys(self):
        return self.records.keys()

    def clear(self) -> None:
        for v in self.records.values():
            v.clear()


def capture(model: torch.nn.Module, hookpoints, *, early_stop: bool = False,
            detach: bool = True, to="cpu", dtype: torch.dtype | None = None) -> Capture:
    """Context manager recording activations at hookpoints; see `Capture`."""
    return Capture(model, hookpoints, early_stop=early_stop, detach=detach, to=to, dtype=dtype)
