"""JumpReLU SAE (Rajamanoharan et al. 2024): code = relu(pre) where pre > threshold[m], one
threshold per latent, trained with straight-through estimators (rectangle kernel of width
``bandwidth``) and an L0 penalty ``l0_coeff``. SAELens "jumprelu" / "jumprelu_transcoder";
Gemma Scope's params.npz."""
from __future__ import annotations

import torch

from .base import Kind, Option, TrainOut, encode_above


class JumpReLUFn(torch.autograd.Function):
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


class StepFn(torch.autograd.Function):
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


def encode(sae, x):
    return encode_above(sae, x, sae.threshold)


def train_forward(sae, x, total_var, opts):
    # the estimators take the raw pre-activation, as in the paper and SAELens: fed
    # relu(pre), every latent with pre <= 0 would sit at 0, inside the kernel window of a
    # threshold below bandwidth / 2, and pull on it (spurious -θ/ε and -1/ε
    # pseudo-derivatives from latents nowhere near firing).
    # Forward unchanged: threshold >= 0, so pre · H(pre - θ) = relu(pre) · H(...)
    pre = sae.preactivation(x)                                     # [N, d_sae]
    bw = opts["bandwidth"]
    acts = JumpReLUFn.apply(pre, sae.threshold, bw)
    mask = pre > sae.threshold
    sparsity = opts["l0_coeff"] * StepFn.apply(pre, sae.threshold, bw).sum(1).mean()
    N = x.shape[0]
    return TrainOut(acts @ sae.W_dec + sae.b_dec, mask.any(0), mask.sum() / N, sparsity)


@torch.no_grad()
def after_step(sae):
    sae.threshold.clamp_(min=0.0)


def fold_threshold(sae, n):
    sae.threshold.mul_(n)


KIND = Kind(
    name="jumprelu", summary="relu(pre) above a learned per-latent threshold, L0 penalty",
    uses_k=False, threshold="per_latent", encode=encode, train_forward=train_forward,
    options=(Option("l0_coeff", 1e-3, "jumprelu kind: L0 penalty weight", float, minimum=0),
             Option("bandwidth", 1e-3, "jumprelu kind: width of the straight-through "
                    "estimators' kernel", float, minimum=0)),
    threshold_init=1e-3, after_step=after_step, fold_threshold=fold_threshold,
    saelens="jumprelu", saelens_transcoder="jumprelu_transcoder", gemmascope=True)
