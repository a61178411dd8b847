"""ReLU SAE: code = relu(pre), trained with an L1 penalty (``l1_coeff``) on the activations
divided by the RMS norm of the centred batch (decoder rows are unit-norm, so this is the usual
L1·‖W_dec‖ in units that do not depend on the activations' scale). SAELens "standard" /
"transcoder"."""
from __future__ import annotations

import torch

from .base import Kind, Option, TrainOut, encode_above, fired_and_l0


def encode(sae, x):
    """Only strictly positive latents are active."""
    return encode_above(sae, x, torch.zeros(sae.d_sae, dtype=sae.dtype, device=sae.device))


def train_forward(sae, x, total_var, opts):
    acts = torch.relu(sae.preactivation(x))                        # [N, d_sae]
    mask = acts > 0
    N = x.shape[0]
    rms = (total_var / N).sqrt().detach()
    sparsity = opts["l1_coeff"] * acts.sum(1).mean() / rms
    return TrainOut(acts @ sae.W_dec + sae.b_dec, *fired_and_l0(mask), sparsity)


KIND = Kind(
    name="relu", summary="relu(pre) with an L1 penalty", uses_k=False, threshold=None,
    encode=encode, train_forward=train_forward,
    options=(Option("l1_coeff", 1.0, "relu kind: L1 penalty weight", float, minimum=0),),
    saelens="standard", saelens_transcoder="transcoder")
