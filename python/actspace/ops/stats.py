"""actspace.ops.stats: streaming statistics kernels.

State layouts are defined in actspace.reference.stats (the contract): a moment state is a
dict of float64/int64 [d] tensors, a latent state a dict of per-latent tensors.

    st = moments_init(d); moments_update(st, x)      # x [N, d], any float dtype
    st = moments_merge(a, b)                         # Chan merge
    ls = latent_init(M, top_t=16); latent_update(ls, values, indices, token_offset)
"""
from __future__ import annotations

import torch

from ..reference import stats as _ref
from ._common import check_float, to_torch

MOMENT_FIELDS = _ref.MOMENT_FIELDS
moments_init = _ref.moments_init
moments_merge = _ref.moments_merge
latent_init = _ref.latent_init
latent_merge = _ref.latent_merge


def moments_update(state: dict, x, *, backend: str = "auto") -> None:
    """Fold x [N, d] into the moment state in place."""
    x = to_torch(x, "x")[0]
    check_float(x, "x")
    d = state["mean"].shape[0]
    if x.dim() != 2 or x.shape[1] != d:
        raise ValueError(f"x must have shape [N, d] with d={d}, got {list(x.shape)}")
    if x.shape[0] == 0:
        return
    _ref.moments_update(state, x)


def latent_update(state: dict, values, indices, token_offset: int, *,
                  backend: str = "auto") -> None:
    """Fold a sparse code values/indices [N, k] into the latent state in place."""
    values = to_torch(values, "values")[0]
    indices = to_torch(indices, "indices")[0]
    check_float(values, "values")
    if indices.shape != values.shape or values.dim() != 2:
        raise ValueError(f"values and indices must both be [N, k], got {list(values.shape)} "
                         f"and {list(indices.shape)}")
    if values.shape[0] == 0:
        return
    _ref.latent_update(state, values, indices, int(token_offset))
