"""Checks and construction shared by the format modules: cfg fields, tensor shapes and
dtypes, and building an SAE from tensors in the ops layout. Every error names the file.

Weights are trusted only as floating tensors: float8, integer and bool tensors (and a cfg
``dtype`` that is none of float16/bfloat16/float32/float64) are refused at load, naming the
file, the tensor and the dtype, rather than failing later in encode with another message.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..._io import read_json, read_safetensors
from ..sae import SAE

__all__ = ["WEIGHT_DTYPES", "read_cfg", "field", "int_field", "expect_tensor",
           "check_weight_dtypes", "read_weights", "cfg_dtype", "build_sae"]

WEIGHT_DTYPES = {"float32": torch.float32, "float16": torch.float16,
                 "bfloat16": torch.bfloat16, "float64": torch.float64}


def read_cfg(path: Path, what: str = "SAE config") -> dict:
    """The JSON object in path (a cfg.json); errors name the file."""
    cfg = read_json(path, what)
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
    return cfg


def field(cfg: dict, name: str, src: str):
    if name not in cfg:
        raise ValueError(f"{src}: missing field {name!r}")
    return cfg[name]


def int_field(cfg: dict, name: str, src: str) -> int:
    v = field(cfg, name, src)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{src}: field {name!r} must be an int, got {v!r}")
    return v


def expect_tensor(tensors: dict, name: str, shape, src: str) -> torch.Tensor:
    """tensors[name], which must have exactly shape; errors name src (the file) and name."""
    if name not in tensors:
        raise ValueError(f"{src}: missing tensor {name!r}")
    t = tensors[name]
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{src}: tensor {name!r} has shape {list(t.shape)}, but the "
                         f"config implies {list(shape)}")
    return t


def check_weight_dtypes(tensors: dict, src: str) -> None:
    """ValueError naming src, the tensor and its dtype for any non-floating weight (and for
    float8, which no SAE computes in)."""
    ok = set(WEIGHT_DTYPES.values())
    for name, t in tensors.items():
        if t.dtype not in ok:
            raise ValueError(f"{src}: tensor {name!r} has dtype "
                             f"{str(t.dtype).removeprefix('torch.')}; SAE weights must be one "
                             f"of {', '.join(WEIGHT_DTYPES)}")


def read_weights(path: Path, what: str = "SAE weights file") -> dict:
    """The tensors of a safetensors weights file, each of a floating dtype; a missing,
    truncated, empty or foreign file, or a float8/int/bool tensor, is an error naming it."""
    tensors, _ = read_safetensors(path, what)
    check_weight_dtypes(tensors, str(path))
    return tensors


def cfg_dtype(cfg: dict, src: str) -> torch.dtype | None:
    """The cfg's ``dtype`` field as a torch dtype (None when absent); an unknown or
    non-floating one is refused, naming the field. "torch.float32" is read as "float32"."""
    v = cfg.get("dtype")
    if v is None:
        return None
    name = v.removeprefix("torch.") if isinstance(v, str) else v
    if name not in WEIGHT_DTYPES:
        raise ValueError(f"{src}: field 'dtype' is {v!r}; SAE weights must be one of "
                         f"{', '.join(WEIGHT_DTYPES)}")
    return WEIGHT_DTYPES[name]


def build_sae(*, d_in, d_sae, kind, k, d_out, hookpoint, hookpoint_out, apply_b_dec_to_input,
              W_enc, b_enc, W_dec, b_dec, threshold=None, dtype=None, device=None,
              extra: dict | None = None) -> SAE:
    """An SAE holding these tensors (ops layout: W_enc [d_sae, d_in], W_dec [d_sae, d_out];
    extra: the kind's own parameters by name, see Kind.extra_params), cast to dtype
    (default: W_enc's) and moved to device (default CPU)."""
    dtype = dtype or W_enc.dtype
    sae = SAE(d_in, d_sae, kind, k, d_out=d_out, hookpoint=hookpoint,
              hookpoint_out=hookpoint_out, apply_b_dec_to_input=apply_b_dec_to_input,
              skip="W_skip" in (extra or {}),   # an affine skip transcoder's W_skip [d_out, d_in]
              dtype=dtype, device="meta", init=False)
    state = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    if threshold is not None:
        state["threshold"] = threshold
    state.update(extra or {})
    sae.load_state_dict({n: t.to(dtype) for n, t in state.items()}, strict=True, assign=True)
    return sae.to(device or "cpu")
