"""actspace.ops.topk_encode: sparse top-k encoding without the N×M pre-activation."""
from __future__ import annotations

import torch

from .. import reference
from ._common import (check_float, check_same_device, check_shape, from_torch,
                      optional_to_torch, to_torch, use_kernel)


def _validate(x, W_enc, b_enc, k, b_dec, activation, threshold, scale):
    check_float(x, "x")
    check_float(W_enc, "W_enc")
    if x.dim() != 2:
        raise ValueError(f"x must have shape [N, d], got {list(x.shape)}")
    if W_enc.dim() != 2:
        raise ValueError(f"W_enc must have shape [M, d], got {list(W_enc.shape)}")
    N, d = x.shape
    M = W_enc.shape[0]
    if W_enc.shape[1] != d:
        raise ValueError(f"W_enc must have shape [M, d] with d={d} (the last dim of x), "
                         f"got {list(W_enc.shape)}")
    if N == 0 or d == 0 or M == 0:
        raise ValueError(f"empty input: x is {list(x.shape)}, W_enc is {list(W_enc.shape)}")
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if not 1 <= k <= M:
        raise ValueError(f"k must satisfy 1 <= k <= M={M}, got k={k}")
    if activation not in ("relu", "none"):
        raise ValueError(f"activation must be 'relu' or 'none', got {activation!r}")
    for name, t, shape, what in (("b_enc", b_enc, (M,), "[M]"), ("b_dec", b_dec, (d,), "[d]"),
                                 ("threshold", threshold, (M,), "[M]"),
                                 ("scale", scale, (M,), "[M]")):
        if t is not None:
            check_float(t, name)
            check_shape(t, name, shape, f"{what} = [{shape[0]}]")
    check_same_device(x, W_enc=W_enc, b_enc=b_enc, b_dec=b_dec, threshold=threshold, scale=scale)


def topk_encode(x, W_enc, b_enc, k, *, b_dec=None, activation="relu", threshold=None,
                scale=None, backend="auto"):
    """values, indices = TopK(act(((x - b_dec) @ W_encᵀ + b_enc) * scale), k).

    x [N, d], W_enc [M, d], b_enc [M] or None, b_dec [d], threshold [M] (JumpReLU), scale [M]
    -> values [N, k] (dtype of x, sorted descending, ties to the lower index),
       indices [N, k] int32 (-1 marks a slot no candidate filled; see actspace.reference).

    torch tensors, NumPy arrays and CuPy arrays are accepted and returned in kind.
    Differentiable in x, W_enc, b_enc, b_dec and scale.
    """
    x, kind = to_torch(x, "x")
    W_enc = to_torch(W_enc, "W_enc")[0]
    b_enc, b_dec = optional_to_torch(b_enc, "b_enc"), optional_to_torch(b_dec, "b_dec")
    threshold, scale = optional_to_torch(threshold, "threshold"), optional_to_torch(scale, "scale")
    _validate(x, W_enc, b_enc, k, b_dec, activation, threshold, scale)
    if use_kernel("topk_encode", x.device, backend) and False:  # kernel lands with issue 2
        pass
    values, indices = reference.topk_encode(x, W_enc, b_enc, k, b_dec=b_dec,
                                            activation=activation, threshold=threshold,
                                            scale=scale)
    return from_torch(values, kind), from_torch(indices, kind)
