"""TopK SAE (Gao et al. 2024): code = TopK(relu(pre)) per row, k fixed; trained on the fused
topk_encode / sparse_decode ops, with AuxK reviving dead latents. SAELens "topk" (TopK
transcoders under actspace's own "topk_transcoder"), sparsify "topk"."""
from __future__ import annotations

import torch

from ... import ops
from ..code import SparseCode
from .base import AUXK_OPTIONS, Kind, TrainOut


def encode(sae, x):
    """x [N, d_in] -> SparseCode with k slots per row."""
    b_dec = sae.b_dec if sae.apply_b_dec_to_input else None
    v, i = ops.topk_encode(x, sae.W_enc, sae.b_enc, sae.k, b_dec=b_dec, activation="relu")
    return SparseCode(v, i, sae.d_sae)


def train_forward(sae, x, total_var, opts):
    b_dec = sae.b_dec if sae.apply_b_dec_to_input else None
    v, i = ops.topk_encode(x, sae.W_enc, sae.b_enc, sae.k, b_dec=b_dec, activation="relu")
    y_hat = ops.sparse_decode(v, i, sae.W_dec, sae.b_dec)
    active = (v > 0) & (i >= 0)
    fired = torch.zeros(sae.d_sae, dtype=torch.bool, device=x.device)
    fired[i[active].long()] = True
    return TrainOut(y_hat, fired, active.sum() / x.shape[0], None)


KIND = Kind(
    name="topk", summary="TopK(relu(pre)) per row, k fixed (Gao et al. 2024)",
    uses_k=True, threshold=None, encode=encode, train_forward=train_forward,
    options=AUXK_OPTIONS, auxk=True, selects_by_rank=True,
    saelens="topk", saelens_transcoder="topk_transcoder", sparsify="topk")
