"""actspace.ops.sparse_decode: x_hat = Σ_j values[n,j] · W_dec[indices[n,j]] + b_dec."""
from __future__ import annotations

import torch

from .. import reference
from ._common import (check_float, check_same_device, check_shape, from_torch,
                      optional_to_torch, to_torch, use_kernel)


def _validate(values, indices, W_dec, b_dec):
    check_float(values, "values")
    check_float(W_dec, "W_dec")
    if indices.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"indices must be int32 or int64, got {indices.dtype}")
    if values.dim() != 2:
        raise ValueError(f"values must have shape [N, k], got {list(values.shape)}")
    if indices.shape != values.shape:
        raise ValueError(f"indices must have the shape of values {list(values.shape)}, "
                         f"got {list(indices.shape)}")
    if W_dec.dim() != 2:
        raise ValueError(f"W_dec must have shape [M, d], got {list(W_dec.shape)}")
    if W_dec.shape[0] == 0 or W_dec.shape[1] == 0:
        raise ValueError(f"W_dec is empty: {list(W_dec.shape)}")
    if b_dec is not None:
        check_float(b_dec, "b_dec")
        check_shape(b_dec, "b_dec", (W_dec.shape[1],), f"[d] = [{W_dec.shape[1]}]")
    check_same_device(values, indices=indices, W_dec=W_dec, b_dec=b_dec)


def sparse_decode(values, indices, W_dec, b_dec=None, *, backend="auto"):
    """x_hat[n] = Σ_j values[n, j] · W_dec[indices[n, j]] + b_dec   (index -1: empty slot).

    values [N, k], indices [N, k] int32/int64, W_dec [M, d], b_dec [d] -> x_hat [N, d]
    in W_dec's dtype. Differentiable in values, W_dec and b_dec.
    """
    values, kind = to_torch(values, "values")
    indices = to_torch(indices, "indices")[0]
    W_dec = to_torch(W_dec, "W_dec")[0]
    b_dec = optional_to_torch(b_dec, "b_dec")
    _validate(values, indices, W_dec, b_dec)
    if use_kernel("sparse_decode", values.device, backend) and False:  # kernel lands with issue 2
        pass
    return from_torch(reference.sparse_decode(values, indices, W_dec, b_dec), kind)


# ------------------------------------------------------------------ internal raw entry points
# No validation, no autograd, torch tensors only: used by backward passes (topk_encode's
# backward is two sparse products: grad_x = decode_forward(g, idx, W_enc) and
# grad_W_enc = decode_backward(x, g, idx, W_enc, need_values=False)).
def decode_forward(values, indices, W, b=None):
    """values [N,k], indices [N,k] -> Σ_j values[n,j] · W[indices[n,j]] (+ b)  [N, d]."""
    return reference.sparse_decode(values, indices, W, b)


def decode_backward(grad_out, values, indices, W, *, need_values=True, need_W=True,
                    deterministic=False):
    """-> (grad_values [N,k] or None, grad_W [M,d] or None); see reference.sparse_decode."""
    from ..reference.sparse_decode import sparse_decode_backward
    gv, gW, _ = sparse_decode_backward(grad_out, values, indices, W)
    return (gv if need_values else None), (gW if need_W else None)
