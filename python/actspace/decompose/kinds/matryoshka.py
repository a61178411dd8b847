"""Matryoshka BatchTopK SAE (Bussmann et al. 2025, "Learning Multi-Level Features with
Matryoshka Sparse Autoencoders"; SAELens' ``matryoshka_batchtopk``).

The code is BatchTopK's (the k·N largest relu pre-activations of the batch), but the loss
asks every nested prefix of the dictionary to reconstruct the input on its own:

    loss = Σ_j ‖y - ŷ_j‖² / Σ‖y - ȳ‖²,   ŷ_j = b_dec + acts[:, :p_j] @ W_dec[:p_j]

with prefixes p_1 < ... < p_J = d_sae (latent counts). The first latents thus learn the
most general features (they must serve every prefix) and later ones refine them, which
counters feature absorption. The full-width term is BatchTopK's FVU; AuxK (dead latents
reconstructing the full-width residual) is added as for TopK.
At inference it is a BatchTopK SAE: a JumpReLU with one threshold for every latent.
"""
from __future__ import annotations

import torch

from .base import AUXK_OPTIONS, Kind, Option, TrainOut, encode_above

__all__ = ["KIND", "default_prefixes", "check_prefixes", "batch_topk",
           "prefix_reconstructions", "matryoshka_loss"]


def default_prefixes(d_sae: int, k: int, count: int = 3) -> list[int]:
    """Doubling prefixes ending at d_sae: d_sae/2^(count-1), ..., d_sae/2, d_sae, keeping
    only those >= k (a prefix narrower than the code's k cannot hold a row's code)."""
    out = [d_sae]
    while len(out) < count and out[0] // 2 >= max(k, 1):
        out.insert(0, out[0] // 2)
    return out


def check_prefixes(prefixes, d_sae: int) -> list[int]:
    """-> the prefixes as a list of ints, strictly increasing, ending at d_sae (appended
    when missing, as SAELens does with matryoshka_widths); ValueError naming `prefixes`."""
    try:
        p = [int(v) for v in prefixes]
    except (TypeError, ValueError):
        raise TypeError(f"prefixes must be a list of ints, got {prefixes!r}") from None
    if any(not isinstance(v, int) or isinstance(v, bool) for v in prefixes):
        raise TypeError(f"prefixes must be a list of ints, got {prefixes!r}")
    if p and p[-1] != d_sae:
        p.append(d_sae)
    if not p or p[0] < 1 or any(b <= a for a, b in zip(p, p[1:])) or p[-1] != d_sae:
        raise ValueError(f"prefixes must increase strictly from >= 1 to d_sae={d_sae}, "
                         f"got {list(prefixes)!r}")
    return p


def batch_topk(pre: torch.Tensor, k: int):
    """pre [N, M] -> (acts [N, M], mask [N, M] bool, smallest selected value or None):
    the k·N largest relu(pre) of the whole batch kept, the rest zero."""
    z = torch.relu(pre)
    vals, flat = z.flatten().topk(min(k * z.shape[0], z.numel()), sorted=False)
    mask = torch.zeros(z.numel(), dtype=torch.bool, device=z.device)
    mask[flat] = True
    mask = mask.view_as(z) & (z > 0)
    sel = vals[vals > 0]
    return z * mask, mask, (sel.min() if sel.numel() else None)


def prefix_reconstructions(acts: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor,
                           prefixes):
    """acts [N, M], W_dec [M, d_out], b_dec [d_out] -> [ŷ_j [N, d_out] for each prefix],
    built incrementally: ŷ_j = ŷ_{j-1} + acts[:, p_{j-1}:p_j] @ W_dec[p_{j-1}:p_j]."""
    out, y_hat, lo = [], b_dec.expand(acts.shape[0], -1), 0
    for p in prefixes:
        y_hat = y_hat + acts[:, lo:p] @ W_dec[lo:p]
        out.append(y_hat)
        lo = p
    return out


def matryoshka_loss(acts, W_dec, b_dec, y, prefixes, total_var):
    """-> (loss = Σ_j FVU_j (scalar), [FVU_j] (scalars), ŷ of the full width [N, d_out]).
    total_var: Σ_n ‖y_n - ȳ‖² (the FVU denominator, a constant)."""
    recons = prefix_reconstructions(acts, W_dec, b_dec, prefixes)
    fvus = [(y - r).pow(2).sum() / total_var for r in recons]
    return torch.stack(fvus).sum(), fvus, recons[-1]


# ---------------------------------------------------------------- the kind
def encode(sae, x):
    return encode_above(sae, x, sae.threshold.expand(sae.d_sae))


def train_forward(sae, x, total_var, opts):
    N = x.shape[0]
    acts, mask, smallest = batch_topk(sae.preactivation(x), sae.k)   # [N, d_sae]
    if smallest is not None:
        with torch.no_grad():  # BatchTopK's inference threshold (EMA of the smallest kept)
            m = smallest.to(sae.threshold.dtype)
            mom = opts["threshold_momentum"]
            first = bool(sae.threshold == 0)
            sae.threshold.copy_(m if first else mom * sae.threshold + (1 - mom) * m)
    prefixes = default_prefixes(sae.d_sae, sae.k, opts["prefix_count"])
    recons = prefix_reconstructions(acts, sae.W_dec, sae.b_dec, prefixes)
    return TrainOut(recons[-1], mask.any(0), mask.sum() / N, None, extra_y_hats=recons[:-1])


def fold_threshold(sae, n):
    sae.threshold.mul_(n.mean())


KIND = Kind(
    name="matryoshka", summary="BatchTopK whose nested prefixes each reconstruct the input",
    uses_k=True, threshold="scalar", encode=encode, train_forward=train_forward,
    options=AUXK_OPTIONS + (
        Option("threshold_momentum", 0.9, "batchtopk: EMA momentum of the inference threshold",
               float, minimum=0, maximum=1),
        Option("prefix_count", 3, "matryoshka: nested prefixes (d_sae, d_sae/2, ... >= k)",
               int, minimum=1)),
    auxk=True, fold_threshold=fold_threshold, selects_by_rank=True,
    saelens="jumprelu", saelens_transcoder="jumprelu_transcoder", saelens_native=False,
    saelens_training="matryoshka_batchtopk")
