"""The one small interface every decomposition follows (SAE, SNMF, PCA), and the helpers
they share to read data and to save themselves.

A decomposition maps activations x [N, d_in] to a code [N, d_sae] and back. Callers
(evaluation, steering, the CLI) only rely on these members, so any decomposition can be
plugged in where another is expected. ``Decomposition`` is an abstract base for classes
that want the shared ``__call__``; ``is_decomposition`` checks an arbitrary object
structurally.

On disk every decomposition is a directory holding ``cfg.json`` and one safetensors file:
``sae_weights.safetensors`` for an SAE (the SAELens layout; SAE.save also writes the
sparsify layout), ``snmf.safetensors`` for SNMF, ``pca.safetensors`` for PCA. cfg.json
names the kind (SAELens's architecture fields for an SAE, ``"kind"`` for SNMF and PCA) and
the shapes, and ``load`` checks every tensor's shape against it.
"""
from __future__ import annotations

import abc
import json
import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["Decomposition", "is_decomposition", "iter_data", "save_dir", "load_dir", "check_shapes"]

_MEMBERS = ("fit", "encode", "decode", "save", "load")


class Decomposition(abc.ABC):
    """Abstract base: fit / encode / decode / save / load, and attributes d_in (width of x;
    None until known) and d_sae (width of the code).

    - ``fit(data, **options) -> self``: learn from a tensor [N, d_in], an iterable of such
      tensors, an activation store (anything with ``iter_batches``) or a store path.
    - ``encode(x [N, d_in]) -> code``: a dense tensor [N, d_sae] or a sparse code object.
    - ``decode(code) -> x_hat [N, d_out]``.
    - ``save(path, **options)`` writes a directory; ``load(path)`` (classmethod) reads it.
    ``__call__(x)`` returns ``(decode(encode(x)), code)``.
    """

    @abc.abstractmethod
    def fit(self, data: Any, **options) -> "Decomposition":
        ...

    @abc.abstractmethod
    def encode(self, x: torch.Tensor) -> Any:
        ...

    @abc.abstractmethod
    def decode(self, code: Any) -> torch.Tensor:
        ...

    @abc.abstractmethod
    def save(self, path: str | os.PathLike, **options) -> None:
        ...

    @classmethod
    @abc.abstractmethod
    def load(cls, path: str | os.PathLike) -> "Decomposition":
        ...

    def __call__(self, x: torch.Tensor):
        code = self.encode(x)
        return self.decode(code), code


def is_decomposition(obj: Any) -> bool:
    """True when obj has the five members (duck typing for classes not deriving the base)."""
    return all(callable(getattr(obj, m, None)) for m in _MEMBERS)


# ---------------------------------------------------------------------- data
def iter_data(data, batch_size: int, *, device=None, dtype: torch.dtype | None = None,
              reiterable: bool = False):
    """Yield [B, d] batches (B <= batch_size) of data — a tensor [N, d], a store path, an
    ActivationStore, or an iterable of [B, d] tensors / dicts with "acts" (see
    latents.iter_batches, which reads them) — moved to device and dtype (None: as they are).

    reiterable: the caller makes several passes, so a one-shot iterator (which would be
    empty on the second pass and silently fit on nothing) is refused up front."""
    from .latents import iter_batches

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    direct = isinstance(data, (torch.Tensor, str, os.PathLike)) or hasattr(data, "iter_batches")
    if not direct and not hasattr(data, "__iter__"):
        raise TypeError("data must be a tensor [N, d], a store or store path, or an iterable "
                        f"of [B, d] batches, got {type(data).__name__}")
    if reiterable and not direct and iter(data) is data:
        raise TypeError("data must be re-iterable (a tensor, a store or store path, a list of "
                        "batches) for several passes, not a one-shot iterator")
    for b in iter_batches(data, batch_size, device=device):
        yield b.to(device=device, dtype=dtype)


# ---------------------------------------------------------------------- save / load
def save_dir(path, kind: str, cfg: dict, tensors: dict) -> None:
    """Write directory path with cfg.json ({"kind": kind, **cfg}) and <kind>.safetensors
    (tensors, moved to CPU), each crash-safe (temp name, fsync, rename)."""
    from .._io import write_json_atomic, write_safetensors_atomic

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    write_safetensors_atomic(path / f"{kind}.safetensors", tensors)
    write_json_atomic(path / "cfg.json", {"kind": kind, **cfg})


def load_dir(path, kind: str, shapes) -> tuple[dict, dict]:
    """(cfg, tensors) of a directory written by save_dir for kind. shapes(cfg) gives the
    expected {name: shape}; a missing or misshapen tensor is a ValueError naming both."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "cfg.json").is_file():
        raise FileNotFoundError(f"{path}: no cfg.json (not a saved {kind} directory)")
    cfg = json.loads((path / "cfg.json").read_text())
    if cfg.get("kind") != kind:
        raise ValueError(f"{path}/cfg.json is not a {kind} (kind={cfg.get('kind')!r})")
    tensors = load_file(str(path / f"{kind}.safetensors"))
    check_shapes(path, tensors, shapes(cfg))
    return cfg, tensors


def check_shapes(where, tensors: dict, expected: dict) -> None:
    """ValueError unless tensors[name] exists with shape expected[name] for every name."""
    for name, shape in expected.items():
        if name not in tensors:
            raise ValueError(f"{where}: tensor {name!r} is missing")
        if list(tensors[name].shape) != list(shape):
            raise ValueError(f"{where}: {name} has shape {list(tensors[name].shape)}, the "
                             f"config says {list(shape)}")
