"""The registry of foreign SAE file layouts: ``Format``, ``FORMATS``, ``register``, ``detect``.

Why a module of its own, below every format and below the SAE class: ``SAE.load`` /
``SAE.save`` look formats up here, and each format module (saelens.py, sparsify.py, ...)
builds SAEs, so the format modules import the SAE class and register themselves here, and
nothing here imports them. The built-in formats are registered by the package
(formats/__init__.py), which Python runs before this module whenever it is imported.

Detection asks each format in registration order; the first that claims the path wins.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from ..sae import SAE

__all__ = ["Format", "FORMATS", "register", "detect", "get_format", "REMOTE", "remote"]


@dataclass(frozen=True)
class Format:
    """One file layout.

    detect(path) -> bool   does this directory (or file) hold this layout?
    load(path, *, device=None, dtype=None) -> SAE   (errors name the file, field, tensor)
    save(sae, path) or None (read-only)   writes the directory path (it exists already)
    """
    name: str
    detect: Callable[[Path], bool]
    load: Callable[..., "SAE"]
    save: Callable[["SAE", Path], None] | None = None


FORMATS: dict[str, Format] = {}

# Where SAEs that are not local paths come from: decompose/pretrained registers the Hugging
# Face Hub here ("is_remote", "load", "from_pretrained", "load_many") when formats/ is
# imported, so SAE.load / from_pretrained / load_many reach it without sae.py importing
# the loader that builds SAEs (which would be an import cycle).
REMOTE: dict[str, Callable] = {}


def remote(name: str) -> Callable:
    """The registered remote-source function name (RuntimeError when none is)."""
    if name not in REMOTE:
        raise RuntimeError(f"no remote SAE source provides {name!r} (decompose/pretrained "
                           "registers the Hugging Face Hub when actspace.decompose.formats "
                           "is imported)")
    return REMOTE[name]


def register(fmt: Format) -> Format:
    """Add fmt to FORMATS (ValueError when its name is taken); returns fmt."""
    if not isinstance(fmt, Format):
        raise TypeError(f"register expects a Format, got {type(fmt).__name__}")
    if fmt.name in FORMATS:
        raise ValueError(f"format {fmt.name!r} is already registered")
    FORMATS[fmt.name] = fmt
    return fmt


def get_format(name: str, *, writing: bool = False) -> Format:
    """The Format called name; ValueError naming the known ones (the writable ones when
    writing) otherwise."""
    fmt = FORMATS.get(name) if isinstance(name, str) else None
    if writing:
        names = tuple(n for n, f in FORMATS.items() if f.save is not None)
        if fmt is None or fmt.save is None:
            raise ValueError(f"format must be one of {names}, got {name!r}")
    elif fmt is None:
        raise ValueError(f"format must be one of {tuple(FORMATS)}, got {name!r}")
    return fmt


def _seen(p: Path) -> str:
    if p.is_dir():
        names = sorted(q.name + ("/" if q.is_dir() else "") for q in p.iterdir())
        shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20
                                         else "")
        return f"it holds: {shown}" if names else "it is empty"
    return f"it is a file of {p.stat().st_size} bytes"


def detect(path) -> Format:
    """The format of path (a directory, or a file some formats accept). FileNotFoundError
    when path does not exist; ValueError naming the files seen when no layout matches."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{str(p)!r}: no such SAE file or directory")
    for fmt in FORMATS.values():
        if fmt.detect(p):
            return fmt
    raise ValueError(f"{str(p)!r} holds no SAE layout actspace reads ({', '.join(FORMATS)}); "
                     f"{_seen(p)}")
