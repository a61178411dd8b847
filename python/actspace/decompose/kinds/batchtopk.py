"""BatchTopK SAE (Bussmann et al. 2024): while training, the top k·N activations of the whole
batch; at inference every latent whose relu(pre) exceeds one learned scalar ``threshold`` (a
running estimate, EMA with ``threshold_momentum``, of the smallest activation selected in
training). AuxK revives dead latents. Stored in SAELens as a "jumprelu" with that threshold
for every latent (``actspace_kind: batchtopk`` tells it apart)."""
from __future__ import annotations

import torch

from .base import AUXK_OPTIONS, Kind, Option, TrainOut, encode_above, fired_and_l0


def encode(sae, x):
    return encode_above(sae, x, sae.threshold.expand(sae.d_sae))


def train_forward(sae, x, total_var, opts):
    N = x.shape[0]
    z = torch.relu(sae.preactivation(x))                           # [N, d_sae]
    flat_v, flat_i = z.flatten().topk(min(sae.k * N, z.numel()), sorted=False)
    mask = torch.zeros_like(z, dtype=torch.bool).flatten()
    mask[flat_i] = True
    mask = mask.view_as(z) & (z > 0)
    acts = z * mask
    with torch.no_grad():  # running estimate of the smallest selected activation
        sel = flat_v[flat_v > 0]
        if sel.numel():
            m = sel.min().to(sae.threshold.dtype)
            first = bool(sae.threshold == 0)
            mom = opts["threshold_momentum"]
            sae.threshold.copy_(m if first else mom * sae.threshold + (1 - mom) * m)
    return TrainOut(acts @ sae.W_dec + sae.b_dec, *fired_and_l0(mask), None)


def fold_threshold(sae, n):
    """One threshold for every latent: scaled by the mean of the folded norms n [d_sae]."""
    sae.threshold.mul_(n.mean())


KIND = Kind(
    name="batchtopk", summary="top k*N over the batch in training, a scalar threshold after",
    uses_k=True, threshold="scalar", encode=encode, train_forward=train_forward,
    options=AUXK_OPTIONS + (Option("threshold_momentum", 0.9, "batchtopk: EMA momentum of the "
                                   "inference threshold", float, minimum=0, maximum=1),),
    auxk=True, fold_threshold=fold_threshold, selects_by_rank=True,
    saelens="jumprelu", saelens_transcoder="jumprelu_transcoder", saelens_native=False,
    saelens_training="batchtopk")
