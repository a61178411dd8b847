"""The Gemma Scope layout: ``params.npz`` with W_enc [d_in, d_sae], W_dec [d_sae, d_out],
b_enc [d_sae], b_dec [d_out], threshold [d_sae] (JumpReLU without b_dec subtraction).

Read with ``allow_pickle=False`` (never unpickled); a truncated, empty or non-zip file, an
array of another dtype or shape is an error naming the file and the array. d_out is read from
b_dec (a vector), so a W_dec of the wrong shape is blamed as W_dec. Which kinds are storable
here is each kind's ``gemmascope`` field (kinds/).
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from ..._io import atomic_write
from ..kinds import KINDS
from .common import build_sae, check_weight_dtypes, expect_tensor
from .registry import Format, register

__all__ = ["load_gemmascope", "save_gemmascope", "FORMAT", "PARAMS"]

PARAMS = "params.npz"
_NAMES = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


def detect_gemmascope(p: Path) -> bool:
    return (p.is_file() and p.suffix == ".npz") or (p.is_dir() and (p / PARAMS).is_file())


def _read_npz(f: Path) -> dict:
    """name -> tensor of every array in f; errors name f."""
    try:
        with np.load(f, allow_pickle=False) as z:
            return {n: torch.from_numpy(np.array(z[n])) for n in z.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        size = f.stat().st_size if f.exists() else 0
        raise ValueError(f"Gemma Scope {str(f)!r}: not a readable .npz file ({size} bytes; "
                         f"{type(e).__name__}: {e}); it may be truncated or of another format") \
            from None
    except TypeError as e:       # numpy's dtypes torch has no counterpart for
        raise ValueError(f"Gemma Scope {str(f)!r}: an array of a dtype torch cannot hold "
                         f"({e})") from None


def load_gemmascope(p: Path, *, device=None, dtype=None):
    """params.npz (or a directory holding it) as a JumpReLU SAE."""
    p = Path(p)
    f = p / PARAMS if p.is_dir() else p
    src = f"Gemma Scope {str(f)!r}"
    arrays = _read_npz(f)
    extra = sorted(set(arrays) - set(_NAMES))
    if extra:
        raise ValueError(f"{src}: unexpected array(s) {extra} (expected {list(_NAMES)})")
    check_weight_dtypes(arrays, src)
    if "W_enc" not in arrays or arrays["W_enc"].dim() != 2:
        raise ValueError(f"{src}: missing 2-d array 'W_enc' [d_in, d_sae]")
    if "b_dec" not in arrays or arrays["b_dec"].dim() != 1:
        raise ValueError(f"{src}: missing 1-d array 'b_dec' [d_out]")
    d_in, d_sae = arrays["W_enc"].shape
    d_out = arrays["b_dec"].shape[0]
    spec = next(s for s in KINDS.values() if s.gemmascope)
    return build_sae(d_in=d_in, d_sae=d_sae, kind=spec.name, k=None, d_out=d_out,
                     hookpoint=None, hookpoint_out=None, apply_b_dec_to_input=False,
                     W_enc=expect_tensor(arrays, "W_enc", (d_in, d_sae), src).T,
                     b_enc=expect_tensor(arrays, "b_enc", (d_sae,), src),
                     W_dec=expect_tensor(arrays, "W_dec", (d_sae, d_out), src),
                     b_dec=arrays["b_dec"],
                     threshold=expect_tensor(arrays, "threshold", (d_sae,), src),
                     dtype=dtype, device=device)


def save_gemmascope(sae, p: Path) -> None:
    """Write sae as p/params.npz (JumpReLU without b_dec subtraction only)."""
    if not KINDS[sae.kind].gemmascope or sae.apply_b_dec_to_input or sae.W_skip is not None:
        raise ValueError("format='gemmascope' stores JumpReLU SAEs without b_dec subtraction "
                         "or skip connection")
    if sae.dtype == torch.bfloat16:
        raise ValueError("format='gemmascope' (npz) cannot hold bfloat16; convert the SAE first")
    arrays = {"W_enc": sae.W_enc.T, "W_dec": sae.W_dec, "b_enc": sae.b_enc,
              "b_dec": sae.b_dec, "threshold": sae.threshold}
    arrays = {n: t.detach().cpu().contiguous().numpy() for n, t in arrays.items()}

    def w(tmp):
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    atomic_write(Path(p) / PARAMS, w)


FORMAT = register(Format("gemmascope", detect_gemmascope, load_gemmascope, save_gemmascope))
