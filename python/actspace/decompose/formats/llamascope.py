"""Llama Scope (OpenMOSS lm-saes; ``fnlp/Llama3_1-8B-Base-LX{R,A,M}-{8,32}x`` on the Hub):
``<sae>/hyperparams.json`` + ``<sae>/checkpoints/final.safetensors``.

hyperparams.json: d_model, d_sae, hook_point_in / hook_point_out (TransformerLens names),
act_fn ("jumprelu" with one scalar ``jump_relu_threshold`` for every latent, "relu",
"topk" with top_k), apply_decoder_bias_to_pre_encoder, norm_activation and
dataset_average_activation_norm {"in", "out"}. Tensors (torch.nn.Linear layout):
encoder.weight [d_sae, d_model], encoder.bias [d_sae], decoder.weight [d_model, d_sae],
decoder.bias [d_model].

The maths, implemented exactly: with norm_activation "dataset-wise" the SAE was trained on
x·sqrt(d_model)/norm_in and reconstructs y·sqrt(d_model)/norm_out; both constants are
folded into the weights (fold.fold_input_scaling), so codes equal lm-saes' and the
reconstruction is in the model's units. The scalar threshold becomes a [d_sae] vector of
that value. "token-wise" normalization (per row) cannot be folded and is refused, as is
sparsity_include_decoder_norm with decoder columns that are not unit norm.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from .registry import Format, register
from .common import build_sae, expect_tensor, field, int_field

__all__ = ["LLAMASCOPE", "load_llamascope"]

HYPERPARAMS, WEIGHTS = "hyperparams.json", "checkpoints/final.safetensors"
_UNIT_TOL = 1e-3   # relative: decoder columns count as unit norm within this


def _detect(p) -> bool:
    p = Path(p)
    return p.is_dir() and (p / HYPERPARAMS).is_file() and (p / WEIGHTS).is_file()


def _number(cfg, name, src):
    v = field(cfg, name, src)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{src}: field {name!r} must be a finite number, got {v!r}")
    return float(v)


def load_llamascope(path, *, device=None, dtype=None, overrides=None):
    from ..._io import read_json, read_safetensors
    from ..fold import fold_input_scaling

    p = Path(path)
    src = f"Llama Scope {str(p)!r}"
    cfg = {**read_json(p / HYPERPARAMS, "Llama Scope hyperparams.json"), **(overrides or {})}
    d_model, d_sae = int_field(cfg, "d_model", src), int_field(cfg, "d_sae", src)
    t, _ = read_safetensors(p / WEIGHTS, "Llama Scope weights")
    W_enc = expect_tensor(t, "encoder.weight", (d_sae, d_model), src)
    b_enc = expect_tensor(t, "encoder.bias", (d_sae,), src)
    W_dec = expect_tensor(t, "decoder.weight", (d_model, d_sae), src).T          # [d_sae, d_model]
    b_dec = t["decoder.bias"] if "decoder.bias" in t else torch.zeros(d_model,
                                                                      dtype=W_enc.dtype)
    expect_tensor({"decoder.bias": b_dec}, "decoder.bias", (d_model,), src)

    act = cfg.get("act_fn", "relu")
    k = threshold = None
    if act == "jumprelu":
        kind = "jumprelu"
        threshold = torch.full((d_sae,), _number(cfg, "jump_relu_threshold", src),
                               dtype=torch.float64)
    elif act == "topk":
        kind, k = "topk", int_field(cfg, "top_k", src)
    elif act == "relu":
        kind = "relu"
    else:
        raise ValueError(f"{src}: act_fn={act!r} is not supported (jumprelu, topk, relu)")
    if cfg.get("sparsity_include_decoder_norm"):
        n = W_dec.double().norm(dim=1)
        if not bool(((n - 1).abs() <= _UNIT_TOL).all()):
            raise ValueError(f"{src}: sparsity_include_decoder_norm=True with decoder columns "
                             f"of norm {float(n.min()):.4g}..{float(n.max()):.4g} (not unit) "
                             "is not supported")
    hook_in = cfg.get("hook_point_in")
    hook_out = cfg.get("hook_point_out")
    sae = build_sae(d_in=d_model, d_sae=d_sae, d_out=d_model, kind=kind, k=k, W_enc=W_enc,
                    b_enc=b_enc, W_dec=W_dec, b_dec=b_dec, threshold=threshold,
                    hookpoint=hook_in,
                    hookpoint_out=hook_out if hook_out and hook_out != hook_in else None,
                    apply_b_dec_to_input=bool(cfg.get("apply_decoder_bias_to_pre_encoder")),
                    dtype=dtype, device=device)
    sae.extra_cfg = cfg
    norm = cfg.get("norm_activation", "none")
    if norm == "dataset-wise":
        avg = field(cfg, "dataset_average_activation_norm", src)
        if not isinstance(avg, dict):
            raise ValueError(f"{src}: dataset_average_activation_norm must be an object "
                             "{'in': ..., 'out': ...}")
        n_in, n_out = _number(avg, "in", src), _number(avg, "out", src)
        fold_input_scaling(sae, math.sqrt(d_model) / n_in, math.sqrt(d_model) / n_out)
    elif norm not in ("none", None):
        raise ValueError(f"{src}: norm_activation={norm!r} is not supported ('dataset-wise' "
                         "or 'none'): per-row normalization cannot be folded into the weights")
    return sae


LLAMASCOPE = register(Format("llamascope", _detect, load_llamascope, None))
