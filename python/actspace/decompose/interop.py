"""Read and write SAEs in the layouts of SAELens, sparsify and Gemma Scope.

- SAELens: ``cfg.json`` + ``sae_weights.safetensors`` with W_enc [d_in, d_sae],
  W_dec [d_sae, d_in(out)], b_enc [d_sae], b_dec [d_in(out)], threshold [d_sae] (jumprelu);
  architecture "standard" | "topk" | "jumprelu", k in activation_fn_kwargs (or top-level).
- sparsify: ``cfg.json`` (k, num_latents / expansion_factor, d_in) + ``sae.safetensors``
  with encoder.weight [d_sae, d_in], encoder.bias [d_sae], W_dec [d_sae, d_in], b_dec [d_in].
- Gemma Scope: ``params.npz`` with W_enc [d_in, d_sae], W_dec, b_enc, b_dec, threshold
  (JumpReLU without b_dec subtraction).

Weights are read from safetensors / npz (allow_pickle=False) only, never unpickled. Every
file is written to a temporary name, fsynced and renamed, so a crash never leaves a torn
file. Tensors are stored bit-exactly in their dtype, so save → load round trips exactly.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

__all__ = ["load_sae", "save_sae", "atomic_write", "FORMATS"]

FORMATS = ("saelens", "sparsify", "gemmascope")
_DTYPE_NAMES = {"float32": torch.float32, "float16": torch.float16,
                "bfloat16": torch.bfloat16, "float64": torch.float64}


# ------------------------------------------------------------------ atomic files
def atomic_write(path, write) -> None:
    """write(tmp_path) fills a temp file next to path; fsync it, then rename over path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _write_json(path, obj):
    def w(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
    atomic_write(path, w)


def _write_safetensors(path, tensors, metadata=None):
    from safetensors.torch import save_file
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def _read_safetensors(path):
    from safetensors.torch import load_file
    return load_file(str(path))


# ------------------------------------------------------------------ helpers
def _field(cfg, name, source):
    if name not in cfg:
        raise ValueError(f"{source}: missing field {name!r}")
    return cfg[name]


def _int_field(cfg, name, source):
    v = _field(cfg, name, source)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{source}: field {name!r} must be an int, got {v!r}")
    return v


def _expect(tensors, name, shape, source):
    if name not in tensors:
        raise ValueError(f"{source}: missing tensor {name!r}")
    t = tensors[name]
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{source}: tensor {name!r} has shape {list(t.shape)}, but the "
                         f"config implies {list(shape)}")
    return t


def _build(d_in, d_sae, kind, k, d_out, hook, hook_out, apply_b_dec, W_enc, b_enc, W_dec,
           b_dec, threshold, dtype, device):
    from .sae import SAE
    dtype = dtype or W_enc.dtype
    sae = SAE(d_in, d_sae, kind, k, d_out=d_out, hookpoint=hook, hookpoint_out=hook_out,
              apply_b_dec_to_input=apply_b_dec, dtype=dtype, device="meta", init=False)
    state = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    if threshold is not None:
        state["threshold"] = threshold
    sae.load_state_dict({n: t.to(dtype) for n, t in state.items()}, strict=True, assign=True)
    return sae.to(device or "cpu")


# ------------------------------------------------------------------ load
def load_sae(path, *, device=None, dtype=None):
    """-> SAE from an SAELens dir, a sparsify dir, or a Gemma Scope params.npz (or its dir)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    p = Path(path)
    if p.is_file() and p.suffix == ".npz":
        return _load_gemmascope(p, device, dtype)
    if not p.is_dir():
        raise FileNotFoundError(f"path {str(p)!r} is neither an SAE directory nor a .npz file")
    if (p / "sae_weights.safetensors").exists():
        return _load_saelens(p, device, dtype)
    if (p / "sae.safetensors").exists():
        return _load_sparsify(p, device, dtype)
    if (p / "params.npz").exists():
        return _load_gemmascope(p / "params.npz", device, dtype)
    raise ValueError(f"path {str(p)!r}: no sae_weights.safetensors (SAELens), sae.safetensors "
                     "(sparsify) or params.npz (Gemma Scope) found")


def _read_cfg(p):
    f = p / "cfg.json"
    if not f.exists():
        raise ValueError(f"{str(p)!r}: missing cfg.json")
    with open(f) as fh:
        cfg = json.load(fh)
    if not isinstance(cfg, dict):
        raise ValueError(f"{str(f)!r}: expected a JSON object")
    return cfg


def _load_saelens(p, device, dtype):
    cfg, src = _read_cfg(p), f"SAELens {str(p)!r}"
    t = _read_safetensors(p / "sae_weights.safetensors")
    d_in, d_sae = _int_field(cfg, "d_in", src), _int_field(cfg, "d_sae", src)
    d_out = cfg.get("d_out") or d_in
    arch = cfg.get("architecture", "standard")
    act = cfg.get("activation_fn_str", cfg.get("activation_fn", "relu"))
    kw = cfg.get("activation_fn_kwargs") or {}
    k = kw.get("k", cfg.get("k"))
    kind = cfg.get("actspace_kind")
    if kind is None:
        if arch == "topk" or act == "topk":
            kind = "topk"
        elif arch == "jumprelu":
            kind = "jumprelu"
        elif arch == "standard" and act == "relu":
            kind = "relu"
        else:
            raise ValueError(f"{src}: unsupported architecture {arch!r} / activation {act!r}")
    if kind in ("topk", "batchtopk") and (isinstance(k, bool) or not isinstance(k, int)):
        raise ValueError(f"{src}: field 'activation_fn_kwargs.k' must be an int for {kind}")
    W_enc = _expect(t, "W_enc", (d_in, d_sae), src).T
    b_enc = _expect(t, "b_enc", (d_sae,), src)
    W_dec = _expect(t, "W_dec", (d_sae, d_out), src)
    b_dec = _expect(t, "b_dec", (d_out,), src)
    thr = None
    if kind in ("jumprelu", "batchtopk"):
        thr = _expect(t, "threshold", (d_sae,), src)
        if kind == "batchtopk":  # saved as a JumpReLU with one threshold for every latent
            if not bool((thr == thr[0]).all()):
                raise ValueError(f"{src}: batchtopk 'threshold' must be one value for all latents")
            thr = thr[0].clone()
    apply = cfg.get("apply_b_dec_to_input", d_out == d_in)
    sae = _build(d_in, d_sae, kind, k if kind in ("topk", "batchtopk") else None, d_out,
                 cfg.get("hook_name"), cfg.get("hook_name_out"), bool(apply), W_enc, b_enc,
                 W_dec, b_dec, thr, dtype, device)
    sae.extra_cfg = cfg
    return sae


def _load_sparsify(p, device, dtype):
    cfg, src = _read_cfg(p), f"sparsify {str(p)!r}"
    t = _read_safetensors(p / "sae.safetensors")
    d_in = _int_field(cfg, "d_in", src)
    k = _int_field(cfg, "k", src)
    if cfg.get("num_latents"):
        d_sae = _int_field(cfg, "num_latents", src)
    else:
        d_sae = d_in * _int_field(cfg, "expansion_factor", src)
    d_out = cfg.get("d_out") or d_in
    W_enc = _expect(t, "encoder.weight", (d_sae, d_in), src)
    b_enc = _expect(t, "encoder.bias", (d_sae,), src)
    W_dec = _expect(t, "W_dec", (d_sae, d_out), src)
    b_dec = _expect(t, "b_dec", (d_out,), src)
    if "W_skip" in t:
        raise ValueError(f"{src}: skip connections (tensor 'W_skip') are not supported")
    transcode = bool(cfg.get("transcode", False))
    sae = _build(d_in, d_sae, "topk", k, d_out, cfg.get("hookpoint"), cfg.get("hookpoint_out"),
                 not transcode, W_enc, b_enc, W_dec, b_dec, None, dtype, device)
    sae.extra_cfg = cfg
    return sae


def _load_gemmascope(f, device, dtype):
    src = f"Gemma Scope {str(f)!r}"
    with np.load(f, allow_pickle=False) as z:
        arrays = {n: torch.from_numpy(np.array(z[n])) for n in z.files}
    if "W_enc" not in arrays or arrays["W_enc"].dim() != 2:
        raise ValueError(f"{src}: missing 2-d tensor 'W_enc' [d_in, d_sae]")
    d_in, d_sae = arrays["W_enc"].shape
    d_out = arrays["W_dec"].shape[1] if "W_dec" in arrays and arrays["W_dec"].dim() == 2 else d_in
    W_enc = _expect(arrays, "W_enc", (d_in, d_sae), src).T
    sae = _build(d_in, d_sae, "jumprelu", None, d_out, None, None, False, W_enc,
                 _expect(arrays, "b_enc", (d_sae,), src),
                 _expect(arrays, "W_dec", (d_sae, d_out), src),
                 _expect(arrays, "b_dec", (d_out,), src),
                 _expect(arrays, "threshold", (d_sae,), src), dtype, device)
    return sae


# ------------------------------------------------------------------ save
def save_sae(sae, path, *, format="saelens"):
    """Write sae to the directory path in format 'saelens', 'sparsify' or 'gemmascope'."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    {"saelens": _save_saelens, "sparsify": _save_sparsify,
     "gemmascope": _save_gemmascope}[format](sae, p)


def _foreign_fields(sae, marker):
    """Fields of a cfg.json read in the same format (marker field present), hooks dropped:
    they are kept on save so metadata such as model_name survives a round trip."""
    if marker not in sae.extra_cfg:
        return {}
    return {k: v for k, v in sae.extra_cfg.items() if "hook" not in k}


def _dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


def _save_saelens(sae, p):
    arch = {"topk": "topk", "relu": "standard", "jumprelu": "jumprelu",
            "batchtopk": "jumprelu"}[sae.kind]
    cfg = _foreign_fields(sae, "architecture")
    cfg.update({
        "architecture": arch, "d_in": sae.d_in, "d_sae": sae.d_sae,
        "dtype": _dtype_name(sae.dtype), "device": "cpu",
        "hook_name": sae.hookpoint, "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "activation_fn_str": "topk" if sae.kind == "topk" else "relu",
        "activation_fn_kwargs": {"k": sae.k} if sae.kind == "topk" else {},
        "normalize_activations": "none", "finetuning_scaling_factor": False,
        "actspace_kind": sae.kind,
    })
    if sae.k is not None:
        cfg["k"] = sae.k
    if sae.is_transcoder:
        cfg.update({"d_out": sae.d_out, "hook_name_out": sae.hookpoint_out})
    t = {"W_enc": sae.W_enc.T, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    if sae.kind == "jumprelu":
        t["threshold"] = sae.threshold
    elif sae.kind == "batchtopk":  # SAELens serves BatchTopK as JumpReLU at one threshold
        t["threshold"] = sae.threshold.expand(sae.d_sae)
    _write_safetensors(p / "sae_weights.safetensors", t)
    _write_json(p / "cfg.json", cfg)


def _save_sparsify(sae, p):
    if sae.kind != "topk":
        raise ValueError(f"format='sparsify' stores TopK SAEs only, this SAE has kind={sae.kind!r}")
    if sae.is_transcoder == sae.apply_b_dec_to_input:
        raise ValueError("format='sparsify': a transcoder must not subtract b_dec from its "
                         "input and an SAE must (apply_b_dec_to_input)")
    cfg = _foreign_fields(sae, "num_latents")
    cfg.update({"d_in": sae.d_in, "num_latents": sae.d_sae, "k": sae.k,
                "expansion_factor": max(sae.d_sae // sae.d_in, 1), "normalize_decoder": True,
                "multi_topk": False, "skip_connection": False,
                "transcode": sae.is_transcoder, "hookpoint": sae.hookpoint})
    if sae.d_out != sae.d_in:
        cfg["d_out"] = sae.d_out
    if sae.hookpoint_out is not None:
        cfg["hookpoint_out"] = sae.hookpoint_out
    _write_safetensors(p / "sae.safetensors", {"encoder.weight": sae.W_enc,
                                               "encoder.bias": sae.b_enc,
                                               "W_dec": sae.W_dec, "b_dec": sae.b_dec})
    _write_json(p / "cfg.json", cfg)


def _save_gemmascope(sae, p):
    if sae.kind != "jumprelu" or sae.apply_b_dec_to_input:
        raise ValueError("format='gemmascope' stores JumpReLU SAEs without b_dec subtraction")
    if sae.dtype == torch.bfloat16:
        raise ValueError("format='gemmascope' (npz) cannot hold bfloat16; convert the SAE first")
    arrays = {"W_enc": sae.W_enc.T, "W_dec": sae.W_dec, "b_enc": sae.b_enc,
              "b_dec": sae.b_dec, "threshold": sae.threshold}
    arrays = {n: t.detach().cpu().contiguous().numpy() for n, t in arrays.items()}

    def w(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    atomic_write(p / "params.npz", w)
