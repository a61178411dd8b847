"""The training loss shared by every SAE kind (used by train_loop.py); each kind's own
forward and sparsity penalty live in its file (kinds/<kind>.py).

Losses are in units of a variance (the batch's; AuxK's: the residual's), so their
coefficients do not depend on the scale of the activations:

    loss = FVU + the kind's sparsity term (+ auxk_coeff · AuxK for kinds with auxk=True)

AuxK (Gao et al. 2024; ``normalized_mse`` in openai/sparse_autoencoder): the k_aux largest
pre-activations among dead latents reconstruct the residual e = y - ŷ (detached), and the loss
is ‖ê - e‖² / Σ‖e - mean(e)‖², in units of the *residual's* variance, not the batch's: it
stays of order 1 however well the live latents already reconstruct y, so the dead latents
keep being pulled towards what is left to explain. (sparsify divides by the batch's variance
and scales by min(n_dead / k_aux, 1): its AuxK is then at most about the FVU, and fades as
training succeeds.)
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .. import ops
from .kinds import KINDS


@dataclass
class StepOut:
    loss: torch.Tensor        # scalar, differentiable
    fvu: float
    l0: float                 # mean active latents per row
    aux: float                # AuxK loss (0 when no latent is dead)
    fired: torch.Tensor       # [d_sae] bool: latents active in this batch


def fvu_loss(err, total_var):
    """Σ err² / total_var (a scalar, differentiable in err)."""
    return err.pow(2).sum() / total_var


@torch.no_grad()
def centered_sum_sq(t, all_reduce=None):
    """Σ_n ‖t[n] - mean(t)‖² of t [N, d] -> scalar (a constant: no gradient), the
    denominator of the FVU-style losses. all_reduce (an in-place sum over ranks, e.g.
    torch.distributed.all_reduce): mean and sum over the batch of every rank together."""
    if all_reduce is None:
        return (t - t.mean(0)).pow(2).sum()
    s = torch.cat([t.sum(0), t.new_tensor([t.shape[0]])])       # [d + 1]: sums, rows
    all_reduce(s)
    ss = (t - s[:-1] / s[-1]).pow(2).sum()
    all_reduce(ss)
    return ss


def auxk_fvu(e_hat, residual, denominator=None):
    """AuxK loss ‖ê - e‖² / Σ‖e - mean(e)‖² of e_hat, residual [N, d_out] (residual detached),
    or None when the residual has no variance (one row, or a perfect reconstruction).
    denominator: the residual's centred sum of squares when it is not this batch's alone
    (data parallel, see train.py)."""
    den = centered_sum_sq(residual) if denominator is None else denominator
    if not bool(den > 0):
        return None
    return fvu_loss(e_hat - residual, den)


def _auxk(sae, x, residual, dead, k_aux, denominator_of=None):
    """x [N, d_in], residual [N, d_out] (detached), dead [d_sae] bool -> AuxK loss or None;
    denominator_of: residual -> its denominator (default: see auxk_fvu)."""
    dead_idx = dead.nonzero().squeeze(1)
    n_dead = dead_idx.numel()
    if n_dead == 0:
        return None
    b_dec = sae.b_dec if sae.apply_b_dec_to_input else None
    if n_dead <= k_aux:
        # every dead latent is in the top k_aux: AuxK is dense, two thin matmuls. Through
        # the top-k kernels, which then select everything, a short dead window cost 13-20%
        # of a step on MiniLM; this way 3-12% (bench/RESULTS.md)
        xc = x if b_dec is None else x - b_dec
        z = torch.relu(xc @ sae.W_enc[dead_idx].T + sae.b_enc[dead_idx])    # [N, n_dead]
        e_hat = z @ sae.W_dec[dead_idx]                                      # [N, d_out]
    else:
        v, i = ops.topk_encode(x, sae.W_enc[dead_idx], sae.b_enc[dead_idx], k_aux,
                               b_dec=b_dec, activation="relu")
        e_hat = ops.sparse_decode(v, i, sae.W_dec[dead_idx])
    return auxk_fvu(e_hat, residual, None if denominator_of is None else denominator_of(residual))


def train_forward(sae, x, y, *, dead=None, k_aux=None, auxk_coeff=1 / 32,
                  auxk_denominator=None, **kind_options) -> StepOut:
    """One training forward of sae on x [N, d_in] against target y [N, d_out]: the kind's
    own forward and sparsity penalty (kinds/<kind>.py), then FVU and, for kinds with AuxK,
    the AuxK loss on the dead latents (dead [d_sae] bool).

    kind_options: the kind's options (l1_coeff, l0_coeff, bandwidth, threshold_momentum,
    ...; missing ones take the kind's defaults). k_aux None: d_in // 2.
    auxk_denominator: residual [N, d_out] -> the AuxK denominator, for data parallelism
    (default: the residual's own centred sum of squares, see auxk_fvu)."""
    spec = KINDS[sae.kind]
    opts = {o.name: o.default for o in spec.options}
    opts.update({n: v for n, v in kind_options.items() if n in opts})
    total_var = centered_sum_sq(y).clamp_min(torch.finfo(y.dtype).tiny)
    out = spec.train_forward(sae, x, total_var, opts)
    err = y - out.y_hat
    fvu = fvu_loss(err, total_var)
    loss = fvu if out.sparsity is None else fvu + out.sparsity
    for y_hat_j in out.extra_y_hats or ():     # e.g. Matryoshka's nested prefixes
        loss = loss + fvu_loss(y - y_hat_j, total_var)
    aux = None
    if spec.auxk and dead is not None and auxk_coeff > 0:
        aux = _auxk(sae, x, err.detach(), dead, k_aux or max(sae.d_in // 2, 1),
                    auxk_denominator)
        if aux is not None:
            loss = loss + auxk_coeff * aux
    return StepOut(loss, float(fvu.detach()), float(out.l0),
                   0.0 if aux is None else float(aux.detach()), out.fired)


@torch.no_grad()
def project_decoder_grad(sae):
    """Remove from W_dec's gradient its component parallel to each (unit) decoder row, so
    the step moves rows along the sphere and renormalising afterwards loses little."""
    g, W = sae.W_dec.grad, sae.W_dec
    if g is not None:
        g.sub_((g * W).sum(1, keepdim=True) * W)


@torch.no_grad()
def fold_decoder_norm(sae) -> bool:
    """Make sae's decoder rows unit norm without changing what it computes, before training
    a given (e.g. loaded) SAE: training renormalises the rows after every step, which on its
    own would rescale each latent's contribution. Per latent m with row norm n_m > 0:
    W_dec[m] /= n_m and W_enc[m], b_enc[m], threshold[m] *= n_m, so pre-activations and
    activations grow by n_m and every product activation · W_dec[m] is unchanged.

    The kind rescales its threshold (Kind.fold_threshold). Exact for relu and jumprelu.
    Kinds that select by rank (TopK, BatchTopK: Kind.selects_by_rank) rank latents by
    activation, and after the fold by activation · n_m (the contribution's size): unchanged
    when every row has the same norm; otherwise the selection changes and a warning says so.
    -> True when the row norms were uneven."""
    n = sae.W_dec.norm(dim=1)                                           # [d_sae]
    n = torch.where(n > 0, n, torch.ones_like(n))                       # zero rows: as is
    uneven = bool(n.max() - n.min() > 1e-4 * n.max())
    spec = KINDS[sae.kind]
    sae.W_dec.div_(n[:, None])
    sae.W_enc.mul_(n[:, None])
    sae.b_enc.mul_(n)
    if spec.fold_threshold is not None:
        spec.fold_threshold(sae, n)
    if uneven and spec.selects_by_rank:
        warnings.warn(f"train_sae: the {sae.kind} SAE's decoder rows have different norms "
                      f"({float(n.min()):.3g}..{float(n.max()):.3g}); folding them into the "
                      "encoder makes it select latents by activation x row norm, so its "
                      "codes change", RuntimeWarning)
    return uneven


def geometric_median(x, iters=20, eps=1e-8):
    """x [N, d] -> [d], Weiszfeld iterations started from the mean."""
    m = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - m).norm(dim=1).clamp_min(eps)
        m = (w[:, None] * x).sum(0) / w.sum()
    return m
