"""dictionary_learning (saprmarks/dictionary_learning; e.g. ``canrager/lm_sae``,
``adamkarvonen/saebench_*``): ``<sae>/ae.pt`` + ``<sae>/config.json``.

ae.pt is a pickle. It is read ONLY through ``torch.load(weights_only=True)``, which
refuses any object but tensors and plain containers (so a crafted ``__reduce__`` never
runs), and the result must then be a flat {name: tensor} state dict; anything else is
refused by name. config.json's ``trainer`` says the class:

- AutoEncoder: relu((x - bias) @ encoder.weightᵀ + encoder.bias) @ decoder.weightᵀ + bias;
- AutoEncoderTopK: the same with TopK(k) and b_dec in place of bias;
- BatchTopKSAE: at inference relu(pre) where pre > the scalar ``threshold`` (one value for
  every latent), b_dec subtracted from the input; actspace kind batchtopk;
- JumpReluAutoEncoder: W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_in], b_dec, threshold
  [d_sae], no b_dec subtraction.
Gated and other classes are refused.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .registry import Format, register
from .common import build_sae, expect_tensor, int_field

__all__ = ["DICTLEARNING", "load_dictlearning", "read_state_dict"]

WEIGHTS, CONFIG = "ae.pt", "config.json"


def _detect(p) -> bool:
    p = Path(p)
    return p.is_dir() and (p / WEIGHTS).is_file() and (p / CONFIG).is_file()


def read_state_dict(path) -> dict:
    """{name: tensor} from a torch pickle, read with weights_only=True only; anything but a
    flat dict of tensors is a ValueError naming the file."""
    import pickle

    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise ValueError(f"{str(path)!r}: not a plain tensor state dict (read with "
                         f"torch.load(weights_only=True), which refuses other objects): "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in obj.items()):
        raise ValueError(f"{str(path)!r}: expected a flat {{name: tensor}} state dict, got "
                         f"{type(obj).__name__}")
    return obj


def load_dictlearning(path, *, device=None, dtype=None, overrides=None):
    from ..._io import read_json

    p = Path(path)
    src = f"dictionary_learning {str(p)!r}"
    cfg = read_json(p / CONFIG, "dictionary_learning config.json")
    trainer = {**(cfg.get("trainer") or {}), **(overrides or {})}
    cls = trainer.get("dict_class")
    d_in, d_sae = int_field(trainer, "activation_dim", src), int_field(trainer, "dict_size", src)
    t = read_state_dict(p / WEIGHTS)
    common = dict(d_in=d_in, d_sae=d_sae, d_out=d_in, hookpoint=trainer.get("hook_name")
                  or trainer.get("submodule_name"), hookpoint_out=None, dtype=dtype,
                  device=device)
    if cls == "AutoEncoder":
        sae = build_sae(kind="relu", k=None,
                        W_enc=expect_tensor(t, "encoder.weight", (d_sae, d_in), src),
                        b_enc=expect_tensor(t, "encoder.bias", (d_sae,), src),
                        W_dec=expect_tensor(t, "decoder.weight", (d_in, d_sae), src).T,
                        b_dec=expect_tensor(t, "bias", (d_in,), src),
                        apply_b_dec_to_input=True, **common)
    elif cls in ("AutoEncoderTopK", "BatchTopKSAE"):
        k = int(t["k"]) if "k" in t else int_field(trainer, "k", src)
        thr = expect_tensor(t, "threshold", (), src) if cls == "BatchTopKSAE" else None
        sae = build_sae(kind="topk" if thr is None else "batchtopk", k=k, threshold=thr,
                        W_enc=expect_tensor(t, "encoder.weight", (d_sae, d_in), src),
                        b_enc=expect_tensor(t, "encoder.bias", (d_sae,), src),
                        W_dec=expect_tensor(t, "decoder.weight", (d_in, d_sae), src).T,
                        b_dec=expect_tensor(t, "b_dec", (d_in,), src),
                        apply_b_dec_to_input=True, **common)
    elif cls == "JumpReluAutoEncoder":
        sae = build_sae(kind="jumprelu", k=None,
                        W_enc=expect_tensor(t, "W_enc", (d_in, d_sae), src).T,
                        b_enc=expect_tensor(t, "b_enc", (d_sae,), src),
                        W_dec=expect_tensor(t, "W_dec", (d_sae, d_in), src),
                        b_dec=expect_tensor(t, "b_dec", (d_in,), src),
                        threshold=expect_tensor(t, "threshold", (d_sae,), src),
                        apply_b_dec_to_input=False, **common)
    else:
        raise ValueError(f"{src}: trainer.dict_class={cls!r} is not supported (AutoEncoder, "
                         "AutoEncoderTopK, BatchTopKSAE, JumpReluAutoEncoder)")
    sae.extra_cfg = cfg
    return sae


DICTLEARNING = register(Format("dictlearning", _detect, load_dictlearning, None))
