"""Foreign SAE file layouts, one module each, in one registry (registry.py):

    FORMATS: dict[str, Format]       name -> Format(name, detect, load, save)
    register(fmt) -> fmt             add a format (a module of this package, or your own)
    detect(path) -> Format           the first format that claims path (error lists its files)

Built in, in detection order: saelens (cfg.json + sae_weights.safetensors, read from 5.x
and 6.x files, written for both), sparsify (cfg.json + sae.safetensors), gemmascope
(params.npz). ``SAE.load(path)`` detects; ``SAE.save(path, format=name)`` writes. Shared
checks (fields, shapes, dtypes, building the SAE) are in common.py, so every format's errors
name the file, the field or tensor, and the dtype.

Adding a format: a module here that builds its SAE with common.build_sae and ends with
``FORMAT = register(Format(...))``, imported below.
"""
from __future__ import annotations

# each registers itself; the order of these lines is the detection order
from . import saelens  # noqa: F401,I001
from . import sparsify  # noqa: F401
from . import gemmascope  # noqa: F401
from . import gemmascope2  # noqa: F401  (params.safetensors, affine skip transcoders)
from . import llamascope  # noqa: F401  (hyperparams.json + checkpoints/final.safetensors)
from . import dictlearning  # noqa: F401  (ae.pt, torch.load(weights_only=True) + config.json)
from .. import pretrained  # noqa: F401,E402  (registers the Hub source in registry.REMOTE)
from .registry import FORMATS, Format, detect, get_format, register

__all__ = ["Format", "FORMATS", "register", "detect", "get_format"]
