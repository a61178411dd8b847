"""Reference sparse dictionary decoder and its gradients (dense gather, fine for an oracle)."""
from __future__ import annotations

import torch


def sparse_decode(values, indices, W_dec, b_dec=None, *, acc=None):
    """x_hat[n] = Σ_j values[n, j] · W_dec[indices[n, j]] + b_dec; index -1 is an empty slot.

    values [N, k], indices [N, k] int, W_dec [M, d], b_dec [d]  ->  x_hat [N, d] (dtype of W_dec)
    """
    if acc is None:
        acc = torch.float64 if W_dec.dtype == torch.float64 else torch.float32
    valid = indices >= 0
    idx = indices.long().clamp_min(0)
    v = torch.where(valid, values.to(acc), torch.zeros((), dtype=acc, device=values.device))
    out = torch.einsum("nk,nkd->nd", v, W_dec.to(acc)[idx])
    if b_dec is not None:
        out = out + b_dec.to(acc)
    return out.to(W_dec.dtype)


def sparse_decode_backward(grad_out, values, indices, W_dec, *, acc=None):
    """Gradients of sparse_decode: (grad_values [N,k], grad_W_dec [M,d], grad_b_dec [d]).

    grad_values[n, j] = <grad_out[n], W_dec[indices[n, j]]>  (0 for empty slots)
    grad_W_dec[m]     = Σ_{(n,j): indices[n,j] = m} values[n, j] · grad_out[n]
    grad_b_dec        = Σ_n grad_out[n]
    """
    if acc is None:
        acc = torch.float64 if W_dec.dtype == torch.float64 else torch.float32
    valid = indices >= 0
    idx = indices.long().clamp_min(0)
    g = grad_out.to(acc)
    grad_values = torch.einsum("nd,nkd->nk", g, W_dec.to(acc)[idx]) * valid
    v = torch.where(valid, values.to(acc), torch.zeros((), dtype=acc, device=values.device))
    contrib = v.unsqueeze(-1) * g.unsqueeze(1)  # [N, k, d]
    grad_W = torch.zeros(W_dec.shape, dtype=acc, device=W_dec.device)
    grad_W.index_add_(0, idx.reshape(-1), contrib.reshape(-1, W_dec.shape[1]))
    return grad_values.to(values.dtype), grad_W.to(W_dec.dtype), g.sum(0).to(W_dec.dtype)
