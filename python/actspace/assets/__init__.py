"""Assets shipped inside the package: the small byte-level causal LM trained on pydoc text.

    model, tok = actspace.assets.load_pydoc_lm()

`pydoc_lm/` (made by tools/train_pydoc_lm.py): a 4-layer GPT-2-config model (d=128, bytes
as tokens) with its tokenizer.json and loss curve; small enough (~3.4 MB) to ship, real
enough that logit differences, attribution and steering mean something.
"""
from __future__ import annotations

import os

__all__ = ["asset_path", "load_pydoc_lm", "ASSETS"]

ASSETS = ("pydoc_lm",)


def asset_path(name: str) -> str:
    """The directory of a shipped asset (ValueError for an unknown name)."""
    if name not in ASSETS:
        raise ValueError(f"unknown asset {name!r}; shipped: {list(ASSETS)}")
    return os.path.join(os.path.dirname(__file__), name)


def load_pydoc_lm(device=None):
    """(GPT2LMHeadModel in eval mode, its byte-level tokenizer) of the shipped pydoc LM."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    path = asset_path("pydoc_lm")
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        raise FileNotFoundError(f"{path}/model.safetensors is missing (run "
                                "tools/train_pydoc_lm.py)")
    model = GPT2LMHeadModel.from_pretrained(path).eval()
    if device is not None:
        model = model.to(device)
    return model, AutoTokenizer.from_pretrained(path)
