"""Matryoshka BatchTopK SAE (Bussmann et al. 2025, "Learning Multi-Level Features with
Matryoshka Sparse Autoencoders"; SAELens' ``matryoshka_batchtopk``).

The code is BatchTopK's (the k·N largest relu pre-activations of the batch), but the loss
asks every nested prefix of the dictionary to reconstruct the input on its own:

    loss = Σ_j ‖y - ŷ_j‖² / Σ‖y - ȳ‖²,   ŷ_j = b_dec + acts[:, :p_j] @ W_dec[:p_j]

with prefixes p_1 < ... < p_J = d_sae (latent counts: option ``prefixes``, or by default
doubling, d_sae/4, d_sae/2, d_sae, as many as ``prefix_count`` says). The first latents thus
learn the
most general features (they must serve every prefix) and later ones refine them, which
counters feature absorption. The full-width term is BatchTopK's FVU; AuxK (dead latents
reconstructing the full-width residual) is added as for TopK.
At inference it is a BatchTopK SAE: a JumpReLU with one threshold for every latent.
"""
from __future__ import annotations

import torch

from .base import AUXK_OPTIONS, Kind, Option, TrainOut, encode_above

__all__ = ["KIND", "default_prefixes", "check_prefixes", "prefixes_of", "batch_topk",
           "prefix_reconstructions", "matryoshka_loss", "DEFAULT_PREFIX_COUNT"]

DEFAULT_PREFIX_COUNT = 3   # measured on MiniLM: 5 doubling prefixes cost ~5 % full-width FVU


def default_prefixes(d_sae: int, k: int, count: int = 3) -> list[int]:
    """Doubling prefixes ending at d_sae: d_sae/2^(count-1), ..., d_sae/2, d_sae, keeping
    only those >= k (a prefix narrower than the code's k cannot hold a row's code)."""
    out = [d_sae]
    while len(out) < count and out[0] // 2 >= max(k, 1):
        out.insert(0, out[0] // 2)
    return out


def check_prefixes(prefixes, d_sae: int | None) -> list[int]:
    """-> the prefixes as a list of ints: latent counts, strictly increasing from >= 1,
    ending at d_sae. A list that stops short of d_sae gets d_sae appended (SAELens'
    rule for matryoshka_widths, so one list serves a sweep of widths); d_sae None (not
    known yet): only the list itself is checked. TypeError / ValueError naming `prefixes`."""
    if isinstance(prefixes, (str, bytes)) or not isinstance(prefixes, (list, tuple)) or any(
            isinstance(v, bool) or not isinstance(v, int) for v in prefixes):
        raise TypeError(f"prefixes must be a list of ints, got {prefixes!r}")
    p = list(prefixes)
    if d_sae is not None and p and p[-1] < d_sae:
        p.append(d_sae)
    if not p or p[0] < 1 or any(b <= a for a, b in zip(p, p[1:])):
        raise ValueError(f"prefixes must be latent counts increasing strictly from >= 1, "
                         f"got {list(prefixes)!r}")
    if d_sae is not None and p[-1] != d_sae:
        raise ValueError(f"prefixes must be <= d_sae={d_sae}, got {list(prefixes)!r}")
    return p


def prefixes_of(d_sae: int, k: int, opts) -> list[int]:
    """The prefixes a matryoshka SAE of width d_sae and k trains with, from its options:
    ``prefixes`` (checked, d_sae appended when missing), else doubling ones
    (``prefix_count``, default DEFAULT_PREFIX_COUNT)."""
    if opts.get("prefixes") is not None:
        return check_prefixes(opts["prefixes"], d_sae)
    count = opts.get("prefix_count")
    return default_prefixes(d_sae, k, DEFAULT_PREFIX_COUNT if count is None else count)


def check_options(opts, d_sae) -> None:
    if opts["prefixes"] is not None:
        if opts["prefix_count"] is not None:
            raise ValueError(f"prefixes and prefix_count exclude each other: give one (got "
                             f"prefixes={opts['prefixes']!r}, prefix_count="
                             f"{opts['prefix_count']!r})")
        check_prefixes(opts["prefixes"], d_sae)


def recorded_options(sae, opts) -> dict:
    return {"prefixes": prefixes_of(sae.d_sae, sae.k, opts)}


def batch_topk(pre: torch.Tensor, k: int):
    """pre [N, M] -> (acts [N, M], fired [M] bool, active (scalar: nonzero entries of acts),
    smallest selected value or None): the k·N largest relu(pre) of the whole batch kept, the
    rest zero. fired and active come from the k·N selected entries, not from [N, M] passes."""
    z = torch.relu(pre)
    vals, flat = z.flatten().topk(min(k * z.shape[0], z.numel()), sorted=False)
    # a mask of z's dtype: z * keep then needs no casts (forward or backward)
    keep = torch.zeros_like(z).view(-1).index_fill_(0, flat, 1.0).view_as(z)
    positive = vals > 0                                   # [k·N]: a selected zero is inactive
    fired = torch.zeros(z.shape[1], dtype=torch.bool, device=z.device)
    fired[flat[positive] % z.shape[1]] = True
    sel = vals[positive]
    return z * keep, fired, positive.sum(), (sel.min() if sel.numel() else None)


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
    acts, fired, active, smallest = batch_topk(sae.preactivation(x), sae.k)   # [N, d_sae]
    if smallest is not None:
        with torch.no_grad():  # BatchTopK's inference threshold (EMA of the smallest kept)
            m = smallest.to(sae.threshold.dtype)
            mom = opts["threshold_momentum"]
            first = bool(sae.threshold == 0)
            sae.threshold.copy_(m if first else mom * sae.threshold + (1 - mom) * m)
    prefixes = prefixes_of(sae.d_sae, sae.k, opts)
    recons = prefix_reconstructions(acts, sae.W_dec, sae.b_dec, prefixes)
    return TrainOut(recons[-1], fired, active / N, None, extra_y_hats=recons[:-1])


def fold_threshold(sae, n):
    sae.threshold.mul_(n.mean())


KIND = Kind(
    name="matryoshka", summary="BatchTopK whose nested prefixes each reconstruct the input",
    uses_k=True, threshold="scalar", encode=encode, train_forward=train_forward,
    options=AUXK_OPTIONS + (
        Option("threshold_momentum", 0.9, "batchtopk: EMA momentum of the inference threshold",
               float, minimum=0, maximum=1),
        Option("prefix_count", None, "matryoshka: number of doubling prefixes d_sae/2^j "
               f"(each >= k; default {DEFAULT_PREFIX_COUNT}: d_sae/4, d_sae/2, d_sae)",
               int, minimum=1),
        Option("prefixes", None, "matryoshka: the nested prefixes as latent counts, strictly "
               "increasing (d_sae appended when missing); instead of prefix_count",
               int, minimum=1, many=True)),
    auxk=True, fold_threshold=fold_threshold, selects_by_rank=True,
    saelens="jumprelu", saelens_transcoder="jumprelu_transcoder", saelens_native=False,
    check_options=check_options, recorded_options=recorded_options,
    saelens_training="matryoshka_batchtopk",
    saelens_options=(("prefixes", "matryoshka_widths"),))
