"""Read and write SAEs in the layouts of SAELens, sparsify and Gemma Scope.

- SAELens: ``cfg.json`` + ``sae_weights.safetensors`` (W_enc [d_in, d_sae], W_dec
  [d_sae, d_out], b_enc, b_dec, threshold): read from 5.x and 6.x files, written so both
  load it; see interop_saelens.py.
- sparsify (EleutherAI, ``sparsify/config.py`` SparseCoderConfig and
  ``sparse_coder.py`` load_from_disk): ``cfg.json`` (d_in, k, num_latents or d_in ·
  expansion_factor, activation "topk" | "groupmax", skip_connection, transcode) +
  ``sae.safetensors`` with encoder.weight [d_sae, d_in], encoder.bias [d_sae],
  W_dec [d_sae, d_in], b_dec [d_in] (+ W_skip [d_in, d_in] with a skip connection). A
  transcoder (transcode=true) reads one module's input and predicts its output at the same
  width and never subtracts b_dec from its input; there is no d_out. Loading drops
  unknown cfg fields and is strict about tensors.
- Gemma Scope: ``params.npz`` with W_enc [d_in, d_sae], W_dec, b_enc, b_dec, threshold
  (JumpReLU without b_dec subtraction).

Whatever actspace does not compute (groupmax, skip connections, activation normalization,
unknown tensors...) is refused on load with the field and value named, never run wrong.
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
        from .interop_saelens import load_saelens
        return load_saelens(p, device, dtype)
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


_SPARSIFY_TENSORS = ("encoder.weight", "encoder.bias", "W_dec", "b_dec")


def _load_sparsify(p, device, dtype):
    cfg, src = _read_cfg(p), f"sparsify {str(p)!r}"
    act = cfg.get("activation", "topk")
    if act != "topk":
        raise ValueError(f"{src}: activation={act!r} is not supported (only 'topk')")
    for flag in ("skip_connection", "embed_skip", "gram_lookup"):  # terms actspace lacks
        if cfg.get(flag):
            raise ValueError(f"{src}: {flag}={cfg[flag]!r} is not supported (only false)")
    d_in = _int_field(cfg, "d_in", src)
    k = _int_field(cfg, "k", src)
    if cfg.get("num_latents"):
        d_sae = _int_field(cfg, "num_latents", src)
    else:
        d_sae = d_in * _int_field(cfg, "expansion_factor", src)
    d_out = cfg.get("d_out") or d_in   # not sparsify's: written by older actspace versions
    transcode = cfg.get("transcode", False)
    if not isinstance(transcode, bool):
        raise ValueError(f"{src}: field 'transcode' must be a bool, got {transcode!r}")
    t = _read_safetensors(p / "sae.safetensors")
    if "W_skip" in t:
        raise ValueError(f"{src}: skip connections (tensor 'W_skip') are not supported")
    extra = sorted(set(t) - set(_SPARSIFY_TENSORS))
    if extra:
        raise ValueError(f"{src}: unexpected tensor(s) {extra} in sae.safetensors (expected "
                         f"{list(_SPARSIFY_TENSORS)})")
    W_enc = _expect(t, "encoder.weight", (d_sae, d_in), src)
    b_enc = _expect(t, "encoder.bias", (d_sae,), src)
    W_dec = _expect(t, "W_dec", (d_sae, d_out), src)
    b_dec = _expect(t, "b_dec", (d_out,), src)
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
    extra = sorted(set(arrays) - {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"})
    if extra:
        raise ValueError(f"{src}: unexpected array(s) {extra} in params.npz")
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
    if format == "saelens":
        from .interop_saelens import save_saelens
        save_saelens(sae, p)
    else:
        {"sparsify": _save_sparsify, "gemmascope": _save_gemmascope}[format](sae, p)


def _save_sparsify(sae, p):
    if sae.kind != "topk":
        raise ValueError(f"format='sparsify' stores TopK SAEs only, this SAE has kind={sae.kind!r}")
    if sae.d_out != sae.d_in:
        raise ValueError("format='sparsify' has no d_out: its transcoders predict at their "
                         f"input width (d_in={sae.d_in}), this one has d_out={sae.d_out}")
    # fields of a sparsify cfg read before survive; sparsify drops unknown fields on load, so
    # the hookpoints (sparsify names them by the directory instead) may ride along
    cfg = {k: v for k, v in sae.extra_cfg.items() if "hook" not in k and k != "d_out"} \
        if "num_latents" in sae.extra_cfg else {}
    cfg.update({"activation": "topk", "d_in": sae.d_in, "num_latents": sae.d_sae, "k": sae.k,
                "expansion_factor": max(sae.d_sae // sae.d_in, 1), "normalize_decoder": True,
                "multi_topk": False, "skip_connection": False,
                # sparsify's transcode means exactly: b_dec is not subtracted from the input
                "transcode": not sae.apply_b_dec_to_input, "hookpoint": sae.hookpoint})
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
