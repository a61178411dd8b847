"""The one small interface every decomposition follows (SAE, SNMF, PCA).

A decomposition maps activations x [N, d_in] to a code and back. Callers (evaluation,
steering, the CLI) only rely on these five members, so any decomposition can be plugged in
where another is expected. ``Decomposition`` is an abstract base for classes that want the
shared ``__call__``; ``is_decomposition`` checks an arbitrary object structurally.
"""
from __future__ import annotations

import abc
import os
from typing import Any

import torch

__all__ = ["Decomposition", "is_decomposition"]

_MEMBERS = ("fit", "encode", "decode", "save", "load")


class Decomposition(abc.ABC):
    """Abstract base: fit / encode / decode / save / load.

    - ``fit(data, **options) -> self``: learn from a tensor [N, d_in], an iterable of such
      tensors, or an activation store (anything with ``iter_batches``).
    - ``encode(x [N, d_in]) -> code``: a tensor [N, n_components] or a sparse code object.
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
