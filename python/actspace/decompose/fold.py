"""Exact rewrites of an SAE's weights for the maths pretrained releases ship with, so one
encode/decode path (the topk_encode / sparse_decode ops) computes all of them.

- Constant input/output scaling (SAELens ``normalize_activations="expected_average_only_in"``
  with a known factor, Llama Scope's ``norm_activation="dataset-wise"``): the SAE was
  trained on x·s_in and reconstructs y·s_out. Since pre = (s_in·x - b_dec)·W_encᵀ + b_enc and
  x_hat = (code·W_dec + b_dec) / s_out, multiplying W_enc by s_in and dividing W_dec, b_dec
  by s_out gives the same code (thresholds unchanged) and the reconstruction in the model's
  own units. With b_dec subtracted from the input this needs s_in == s_out.
(Decoder-norm folding, SAELens ``rescale_acts_by_decoder_norm``, is the SAELens format's:
formats/saelens.py.)
"""
from __future__ import annotations

import math

import torch

__all__ = ["fold_input_scaling"]


_CHUNK = 4096   # rows rescaled at a time: float64 working copies stay small for wide SAEs


@torch.no_grad()
def _scale_rows_(p: torch.Tensor, factor) -> None:
    """p[i] *= factor (a number, or [rows] per row), computed in float64 and rounded once
    into p's dtype, a chunk of rows at a time (in place)."""
    vec = isinstance(factor, torch.Tensor)
    if p.dim() == 1 and not vec:
        p.copy_((p.double() * factor).to(p.dtype))
        return
    for a in range(0, p.shape[0], _CHUNK):
        f = factor[a:a + _CHUNK].to(p.device, torch.float64) if vec else factor
        if vec and p.dim() == 2:
            f = f[:, None]
        p[a:a + _CHUNK] = (p[a:a + _CHUNK].double() * f).to(p.dtype)


@torch.no_grad()
def fold_input_scaling(sae, scale_in: float, scale_out: float | None = None):
    """Rewrite sae (in place; returned) that expects inputs multiplied by scale_in and
    produces outputs multiplied by scale_out (default scale_in) into one on raw units."""
    scale_out = scale_in if scale_out is None else scale_out
    for name, s in (("scale_in", scale_in), ("scale_out", scale_out)):
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) \
                or s <= 0:
            raise ValueError(f"{name} must be a positive finite number, got {s!r}")
    if sae.apply_b_dec_to_input and scale_in != scale_out:
        raise ValueError("an SAE that subtracts b_dec from its input needs scale_in == "
                         f"scale_out to fold exactly, got {scale_in} and {scale_out}")
    _scale_rows_(sae.W_enc, float(scale_in))
    _scale_rows_(sae.W_dec, 1.0 / scale_out)
    _scale_rows_(sae.b_dec, 1.0 / scale_out)
    if getattr(sae, "W_skip", None) is not None:   # skip term: x·s_in·W_skipᵀ / s_out
        _scale_rows_(sae.W_skip, scale_in / scale_out)
    return sae
