"""Training forward passes and losses of every SAE kind (used by train.py).

Losses are in units of a variance (the batch's; AuxK's: the residual's), so their
coefficients do not depend on the scale of the activations:

    loss = FVU + sparsity term (+ auxk_coeff · AuxK for topk / batchtopk)

- topk       runs on ops.topk_encode / ops.sparse_decode (the fast, differentiable ops);
- batchtopk  dense pre-activations, top k·N over the batch; updates the inference threshold;
- jumprelu   straight-through estimators for the threshold (rectangle kernel of width
             ``bandwidth``), L0 penalty ``l0_coeff`` (Rajamanoharan et al. 2024);
- relu       L1 penalty ``l1_coeff`` on the activations divided by the RMS norm of the
             centred batch (decoder rows are unit-norm, so this is the usual L1·‖W_dec‖).

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


class _JumpReLU(torch.autograd.Function):
    """out = z · H(z - θ); d/dθ by the pseudo-derivative -(θ/ε)·K((z-θ)/ε), K rectangular."""

    @staticmethod
    def forward(ctx, z, theta, eps):  # z [N, M], theta [M]
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return z * (z > theta)

    @staticmethod
    def backward(ctx, g):
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        near = ((z - theta).abs() < eps / 2).to(g.dtype)
        grad_theta = (-(theta / eps) * near * g).sum(0)
        return g * (z > theta), grad_theta, None


class _Step(torch.autograd.Function):
    """H(z - θ); zero gradient to z, pseudo-derivative -(1/ε)·K((z-θ)/ε) to θ."""

    @staticmethod
    def forward(ctx, z, theta, eps):
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, g):
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        near = ((z - theta).abs() < eps / 2).to(g.dtype)
        return torch.zeros_like(z), (-(1.0 / eps) * near * g).sum(0), None


@dataclass
class StepOut:
    loss: torch.Tensor        # scalar, differentiable
    fvu: float
    l0: float                 # mean active latents per row
    aux: float                # AuxK loss (0 when no latent is dead)
    fired: torch.Tensor       # [d_sae] bool: latents active in this batch


def _fvu(err, total_var):
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
    return _fvu(e_hat - residual, den)


def _auxk(sae, x, residual, dead, k_aux, denominator_of=None):
    """x [N, d_in], residual [N, d_out] (detached), dead [d_sae] bool -> AuxK loss or None;
    denominator_of: residual -> its denominator (default: see auxk_fvu)."""
    dead_idx = dead.nonzero().squeeze(1)
    n_dead = dead_idx.numel()
    if n_dead == 0:
        return None
    k = min(k_aux, n_dead)
    b_dec = sae.b_dec if sae.apply_b_dec_to_input else None
    v, i = ops.topk_encode(x, sae.W_enc[dead_idx], sae.b_enc[dead_idx], k, b_dec=b_dec,
                           activation="relu")
    e_hat = ops.sparse_decode(v, i, sae.W_dec[dead_idx])
    return auxk_fvu(e_hat, residual, None if denominator_of is None else denominator_of(residual))


def train_forward(sae, x, y, *, dead=None, k_aux=256, auxk_coeff=1 / 32, l1_coeff=1.0,
                  l0_coeff=1e-3, bandwidth=1e-3, threshold_momentum=0.9,
                  auxk_denominator=None) -> StepOut:
    """One training forward of sae on x [N, d_in] against target y [N, d_out].

    auxk_denominator: residual [N, d_out] -> the AuxK denominator, for data parallelism
    (default: the residual's own centred sum of squares, see auxk_fvu)."""
    total_var = centered_sum_sq(y).clamp_min(torch.finfo(y.dtype).tiny)
    N = x.shape[0]
    sparsity = None
    if sae.kind == "topk":
        b_dec_in = sae.b_dec if sae.apply_b_dec_to_input else None
        v, i = ops.topk_encode(x, sae.W_enc, sae.b_enc, sae.k, b_dec=b_dec_in, activation="relu")
        y_hat = ops.sparse_decode(v, i, sae.W_dec, sae.b_dec)
        active = (v > 0) & (i >= 0)
        fired = torch.zeros(sae.d_sae, dtype=torch.bool, device=x.device)
        fired[i[active].long()] = True
        l0 = active.sum() / N
    else:
        pre = sae.preactivation(x)  # [N, d_sae]
        if sae.kind == "batchtopk":
            z = torch.relu(pre)
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
                    sae.threshold.copy_(m if first else threshold_momentum * sae.threshold
                                        + (1 - threshold_momentum) * m)
        elif sae.kind == "jumprelu":
            # the estimators take the raw pre-activation, as in the paper and SAELens: fed
            # relu(pre), every latent with pre <= 0 would sit at 0, inside the kernel window
            # of a threshold below bandwidth / 2, and pull on it (spurious -θ/ε and -1/ε
            # pseudo-derivatives from latents nowhere near firing).
            # Forward unchanged: threshold >= 0, so pre · H(pre - θ) = relu(pre) · H(...)
            acts = _JumpReLU.apply(pre, sae.threshold, bandwidth)
            mask = pre > sae.threshold
            sparsity = l0_coeff * _Step.apply(pre, sae.threshold, bandwidth).sum(1).mean()
        else:  # relu + L1
            acts = torch.relu(pre)
            mask = acts > 0
            rms = (total_var / N).sqrt().detach()
            sparsity = l1_coeff * acts.sum(1).mean() / rms
        y_hat = acts @ sae.W_dec + sae.b_dec
        fired = mask.any(0)
        l0 = mask.sum() / N
    err = y - y_hat
    fvu = _fvu(err, total_var)
    loss = fvu if sparsity is None else fvu + sparsity
    aux = None
    if sae.kind in ("topk", "batchtopk") and dead is not None and auxk_coeff > 0:
        aux = _auxk(sae, x, err.detach(), dead, k_aux, auxk_denominator)
        if aux is not None:
            loss = loss + auxk_coeff * aux
    return StepOut(loss, float(fvu.detach()), float(l0),
                   0.0 if aux is None else float(aux.detach()), fired)


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

    Exact for relu and jumprelu. TopK and BatchTopK rank latents by activation, and after
    the fold the ranking is by activation · n_m (the contribution's size): unchanged when
    every row has the same norm; otherwise the selection changes and a warning says so
    (BatchTopK's scalar threshold is then scaled by the mean norm). -> True when the row
    norms were uneven."""
    n = sae.W_dec.norm(dim=1)                                           # [d_sae]
    n = torch.where(n > 0, n, torch.ones_like(n))                       # zero rows: as is
    uneven = bool(n.max() - n.min() > 1e-4 * n.max())
    sae.W_dec.div_(n[:, None])
    sae.W_enc.mul_(n[:, None])
    sae.b_enc.mul_(n)
    if sae.kind == "jumprelu":
        sae.threshold.mul_(n)
    elif sae.kind == "batchtopk":
        sae.threshold.mul_(n.mean())
    if uneven and sae.kind in ("topk", "batchtopk"):
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
