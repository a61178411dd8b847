"""Reference top-k encoder: materialises the full pre-activation (fine for an oracle)."""
from __future__ import annotations

import torch


def topk_preactivation(x, W_enc, b_enc=None, *, b_dec=None, scale=None, acc=None):
    """z = ((x - b_dec) @ W_encᵀ + b_enc) * scale, in the accumulation dtype.

    x [N, d], W_enc [M, d], b_enc [M], b_dec [d], scale [M]  ->  z [N, M]
    """
    if acc is None:   # float64 when any operand is (as the ops layer promotes)
        acc = torch.float64 if torch.float64 in (x.dtype, W_enc.dtype) else torch.float32
    xa = x.to(acc)
    if b_dec is not None:
        xa = xa - b_dec.to(acc)
    z = xa @ W_enc.to(acc).T
    if b_enc is not None:
        z = z + b_enc.to(acc)
    if scale is not None:
        z = z * scale.to(acc)
    return z


def topk_encode(x, W_enc, b_enc, k, *, b_dec=None, activation="relu", threshold=None,
                scale=None, acc=None):
    """values, indices = TopK(act(((x - b_dec) @ W_encᵀ + b_enc) * scale), k).

    x [N, d], W_enc [M, d], b_enc [M] or None, b_dec [d], threshold [M], scale [M]
    -> values [N, k] (dtype of x), indices [N, k] int32.

    Semantics every kernel reproduces:
    - activation 'relu' or 'none' is applied after the scale;
    - candidates are the latents whose activation is not NaN, not -inf and, when a
      JumpReLU threshold is given, strictly greater than threshold[m];
    - the k largest candidates are returned sorted descending, ties to the lower index;
    - slots left when a row has fewer than k candidates hold value 0 and index -1
      (sparse_decode skips index -1).
    """
    a = topk_preactivation(x, W_enc, b_enc, b_dec=b_dec, scale=scale, acc=acc)
    if activation == "relu":
        a = torch.relu(a)  # relu keeps NaN as NaN
    elif activation != "none":
        raise ValueError(f"activation must be 'relu' or 'none', got {activation!r}")
    candidate = ~torch.isnan(a) & (a > float("-inf"))
    if threshold is not None:
        candidate &= a > threshold.to(a.dtype)
    key = torch.where(candidate, a, torch.full_like(a, float("-inf")))
    # stable descending sort: equal keys keep ascending index order (ties to the lower index)
    sorted_key, order = torch.sort(key, dim=1, descending=True, stable=True)
    top_key, top_idx = sorted_key[:, :k], order[:, :k]
    filled = torch.gather(candidate, 1, top_idx)
    values = torch.where(filled, top_key, torch.zeros_like(top_key)).to(x.dtype)
    indices = torch.where(filled, top_idx, torch.full_like(top_idx, -1)).to(torch.int32)
    return values, indices
