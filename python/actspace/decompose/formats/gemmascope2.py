"""Gemma Scope 2 (``google/gemma-scope-2-{270m,1b,4b,12b,27b}-{pt,it}``):
``<sae>/params.safetensors`` (and, where the release has one, ``<sae>/config.json``).

Tensors: w_enc [d_in, d_sae], w_dec [d_sae, d_out], b_enc [d_sae], b_dec [d_out],
threshold [d_sae] (JumpReLU, no b_dec subtraction), and for the affine skip transcoders
affine_skip_connection [d_out, d_in]: output += x @ affine_skip_connectionᵀ (the reading
SAELens 6 gives it, W_skip). Hook names: from config.json when present, else from the
folder name as SAELens derives them (resid_post / attn_out / mlp_out -> blocks.L.hook_*;
transcoder -> blocks.L.ln2.hook_normalized => blocks.L.hook_mlp_out).
"""
from __future__ import annotations

import re
from pathlib import Path

from .registry import Format, register
from .common import build_sae, expect_tensor

__all__ = ["GEMMASCOPE2", "load_gemmascope2", "hook_names_from_folder"]

WEIGHTS, CONFIG = "params.safetensors", "config.json"
_KNOWN = {"w_enc", "w_dec", "b_enc", "b_dec", "threshold", "affine_skip_connection"}


def _detect(p) -> bool:
    p = Path(p)
    return (p.is_file() and p.name == WEIGHTS) or (p.is_dir() and (p / WEIGHTS).is_file())


def hook_names_from_folder(folder: str) -> tuple[str | None, str | None]:
    """(hook_name, hook_name_out) a Gemma Scope 2 folder name implies, or (None, None)."""
    m = re.search(r"layer_(\d+)", folder)
    if not m:
        return None, None
    L = m.group(1)
    if "transcoder" in folder:
        return f"blocks.{L}.ln2.hook_normalized", f"blocks.{L}.hook_mlp_out"
    for part, hook in (("resid_post", "hook_resid_post"), ("attn_out", "hook_attn_out"),
                       ("mlp_out", "hook_mlp_out")):
        if part in folder:
            return f"blocks.{L}.{hook}", None
    return None, None


def load_gemmascope2(path, *, device=None, dtype=None, overrides=None):
    from ..._io import read_json, read_safetensors

    p = Path(path)
    d = p.parent if p.is_file() else p
    src = f"Gemma Scope 2 {str(d / WEIGHTS)!r}"
    t, _ = read_safetensors(d / WEIGHTS, "Gemma Scope 2 params.safetensors")
    extra = sorted(set(t) - _KNOWN)
    if extra:
        raise ValueError(f"{src}: unexpected tensor(s) {extra} (expected {sorted(_KNOWN)})")
    if "w_enc" not in t or t["w_enc"].dim() != 2:
        raise ValueError(f"{src}: missing 2-d tensor 'w_enc' [d_in, d_sae]")
    d_in, d_sae = t["w_enc"].shape
    if "w_dec" not in t or t["w_dec"].dim() != 2:
        raise ValueError(f"{src}: missing 2-d tensor 'w_dec' [d_sae, d_out]")
    d_out = t["w_dec"].shape[1]
    cfg = read_json(d / CONFIG, "Gemma Scope 2 config.json") if (d / CONFIG).is_file() else {}
    cfg.update(overrides or {})
    hook_in, hook_out = hook_names_from_folder("/".join(d.parts[-2:]))  # transcoder_all/layer_..
    hook_in = cfg.get("hook_name", hook_in)
    hook_out = cfg.get("hook_name_out", hook_out)
    skip = t.get("affine_skip_connection")
    extra = {} if skip is None else {
        "W_skip": expect_tensor(t, "affine_skip_connection", (d_out, d_in), src)}
    sae = build_sae(d_in=d_in, d_sae=d_sae, d_out=d_out, kind="jumprelu", k=None,
                    W_enc=expect_tensor(t, "w_enc", (d_in, d_sae), src).T,
                    b_enc=expect_tensor(t, "b_enc", (d_sae,), src),
                    W_dec=expect_tensor(t, "w_dec", (d_sae, d_out), src),
                    b_dec=expect_tensor(t, "b_dec", (d_out,), src),
                    threshold=expect_tensor(t, "threshold", (d_sae,), src), extra=extra,
                    hookpoint=hook_in, hookpoint_out=hook_out, apply_b_dec_to_input=False,
                    dtype=dtype, device=device)
    sae.extra_cfg = cfg
    return sae


GEMMASCOPE2 = register(Format("gemmascope2", _detect, load_gemmascope2, None))
