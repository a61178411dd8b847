"""The ops layer: validate at the boundary, pick a backend, allocate, call the kernel.

    vals, idx = actspace.ops.topk_encode(x, W_enc, b_enc, k)      # x [N,d], W_enc [M,d]
    x_hat     = actspace.ops.sparse_decode(vals, idx, W_dec, b_dec)  # W_dec [M,d]
    actspace.ops.stats                                            # streaming statistics kernels
"""
from . import stats
from .sparse_decode import sparse_decode
from .topk_encode import topk_encode

__all__ = ["topk_encode", "sparse_decode", "stats"]
