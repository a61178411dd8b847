"""Training forward passes and losses of every SAE kind (used by train.py).

Losses are in units of the batch's variance, so their coefficients do not depend on the
scale of the activations:

    loss = FVU + sparsity term (+ auxk_coeff · AuxK for topk / batchtopk)

- topk       runs on ops.topk_encode / ops.sparse_decode (the fast, differentiable ops);
- batchtopk  dense pre-activations, top k·N over the batch; updates the inference threshold;
- jumprelu   straight-through estimators for the threshold (rectangle kernel of width
             ``bandwidth``), L0 penalty ``l0_coeff`` (Rajamanoharan et al. 2024);
- relu       L1 penalty ``l1_coeff`` on the activations divided by the RMS norm of the
             centred batch (decoder rows are unit-norm, so this is the usual L1·‖W_dec‖).

AuxK (Gao et al. 2024): the k_aux largest pre-activations among dead latents reconstruct
the residual y - ŷ (detached); its FVU is scaled by min(n_dead / k_aux, 1) as in sparsify.
"""
from __future__ import annotations

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
    aux: float                # AuxK FVU (0 when no latent is dead)
    fired: torch.Tensor       # [d_sae] bool: latents active in this batch


def _fvu(err, total_var):
    return err.pow(2).sum() / total_var


def _auxk(sae, x, residual, dead, k_aux, total_var):
    """x [N, d_in], residual [N, d_out] (detached), dead [d_sae] bool -> scaled AuxK FVU."""
    dead_idx = dead.nonzero().squeeze(1)
    n_dead = dead_idx.numel()
    if n_dead == 0:
        return None
    k = min(k_aux, n_dead)
    b_dec = sae.b_dec if sae.apply_b_dec_to_input else None
    v, i = ops.topk_encode(x, sae.W_enc[dead_idx], sae.b_enc[dead_idx], k, b_dec=b_dec,
                           activation="relu")
    e_hat = ops.sparse_decode(v, i, sae.W_dec[dead_idx])
    return _fvu(e_hat - residual, total_var) * min(n_dead / k_aux, 1.0)


def train_forward(sae, x, y, *, dead=None, k_aux=256, auxk_coeff=1 / 32, l1_coeff=1.0,
                  l0_coeff=1e-3, bandwidth=1e-3, threshold_momentum=0.9) -> StepOut:
    """One training forward of sae on x [N, d_in] against target y [N, d_out]."""
    yc = y - y.mean(0)
    total_var = yc.pow(2).sum().clamp_min(torch.finfo(y.dtype).tiny)
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
            z = torch.relu(pre)
            acts = _JumpReLU.apply(z, sae.threshold, bandwidth)
            mask = z > sae.threshold
            sparsity = l0_coeff * _Step.apply(z, sae.threshold, bandwidth).sum(1).mean()
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
        aux = _auxk(sae, x, err.detach(), dead, k_aux, total_var)
        if aux is not None:
            loss = loss + auxk_coeff * aux
    return StepOut(loss, float(fvu.detach()), float(l0), float(aux.detach()) if aux is not None else 0.0, fired)


@torch.no_grad()
def project_decoder_grad(sae):
    """Remove from W_dec's gradient its component parallel to each (unit) decoder row, so
    the step moves rows along the sphere and renormalising afterwards loses little."""
    g, W = sae.W_dec.grad, sae.W_dec
    if g is not None:
        g.sub_((g * W).sum(1, keepdim=True) * W)


def geometric_median(x, iters=20, eps=1e-8):
    """x [N, d] -> [d], Weiszfeld iterations started from the mean."""
    m = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - m).norm(dim=1).clamp_min(eps)
        m = (w[:, None] * x).sum(0) / w.sum()
    return m
