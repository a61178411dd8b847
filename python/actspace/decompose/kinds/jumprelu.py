"""JumpReLU SAE (Rajamanoharan et al. 2024): code = relu(pre) where pre > threshold[m], one
threshold per latent, trained with straight-through estimators (rectangle kernel of width
``bandwidth``) and an L0 penalty ``l0_coeff``. SAELens "jumprelu" / "jumprelu_transcoder";
Gemma Scope's params.npz."""
from __future__ import annotations

import torch

from .base import Kind, Option, TrainOut, encode_above, fired_and_l0


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
        zero = g.new_zeros(())
        # the factor of θ taken out of the sum over rows: one [N, M] pass fewer
        grad_theta = -(theta / eps) * torch.where(_near(z, theta, eps), g, zero).sum(0)
        return torch.where(z > theta, g, zero), grad_theta, None


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
        near = torch.where(_near(z, theta, eps), g, g.new_zeros(())).sum(0)
        return None, near * (-1.0 / eps), None     # None: no gradient (nor its [N, M] zeros)


def _near(z, theta, eps):
    """z [N, M], theta [M] -> [N, M] bool: inside the rectangle kernel, |z - θ| < ε/2."""
    return (z - theta).abs_() < eps / 2


def encode(sae, x):
    return encode_above(sae, x, sae.threshold)


def jumprelu(z, theta, eps):
    """z [N, M], theta [M] -> z · H(z - θ) (JumpReLUFn)."""
    return JumpReLUFn.apply(z, theta, eps)


def step(z, theta, eps):
    """z [N, M], theta [M] -> H(z - θ) (StepFn)."""
    return StepFn.apply(z, theta, eps)


def sparsity_count(z, theta, eps, *, mode="step", acts=None, tanh_scale=4.0, rms=1.0):
    """z [N, M] raw pre-activations, theta [M] -> [N] differentiable count of active latents:
    step: Σ_m H(z_m - θ_m) (gradient to θ only); tanh: Σ_m tanh(c · f_m / rms) with
    f = JumpReLU(z) (Anthropic, January 2025: gradient to the encoder through f, to θ
    through the jump). rms (the batch's RMS norm) makes c independent of the data's scale."""
    if mode == "step":
        return step(z, theta, eps).sum(1)
    if mode == "tanh":
        f = jumprelu(z, theta, eps) if acts is None else acts
        return torch.tanh(tanh_scale * f / rms).sum(1)
    raise ValueError(f"sparsity_mode must be one of ('step', 'tanh'), got {mode!r}")


def l0_penalty(count, coeff, target=None):
    """count [N] -> scalar: coeff · mean(count), or with target the quadratic L0-target
    penalty of Gemma Scope 2: coeff · (mean / target - 1)² (pushes L0 to the target from
    either side and is flat there, so the end point does not depend on coeff)."""
    mean = count.mean()
    if target is None:
        return coeff * mean
    if not target > 0:
        raise ValueError(f"l0_target must be > 0, got {target!r}")
    return coeff * (mean / target - 1) ** 2


def train_forward(sae, x, total_var, opts):
    # the estimators take the raw pre-activation, as in the paper and SAELens: fed
    # relu(pre), every latent with pre <= 0 would sit at 0, inside the kernel window of a
    # threshold below bandwidth / 2, and pull on it (spurious -θ/ε and -1/ε
    # pseudo-derivatives from latents nowhere near firing).
    # Forward unchanged: threshold >= 0, so pre · H(pre - θ) = relu(pre) · H(...)
    pre = sae.preactivation(x)                                     # [N, d_sae]
    N = x.shape[0]
    bw = opts["bandwidth"]
    acts = jumprelu(pre, sae.threshold, bw)
    mask = pre > sae.threshold
    tanh = opts["tanh_scale"]
    count = sparsity_count(pre, sae.threshold, bw, mode="step" if tanh is None else "tanh",
                           acts=acts, tanh_scale=tanh, rms=(total_var / N).sqrt())
    target = opts["l0_target"]
    sparsity = l0_penalty(count, opts["l0_coeff"] if target is None
                          else opts["l0_target_coeff"], target)
    return TrainOut(acts @ sae.W_dec + sae.b_dec, *fired_and_l0(mask), sparsity)


@torch.no_grad()
def init_from_batch(sae, x, opts):
    """With an L0 target: every threshold at the value that makes the first batch's mean L0
    the target (the (target·N)-th largest pre-activation), so training starts at the target
    instead of travelling there from 1e-3 (Adam moves a threshold ~lr per step)."""
    target = opts["l0_target"]
    if target is None:
        return
    pre = sae.preactivation(x)                                     # [N, d_sae]
    n = min(max(int(round(target * pre.shape[0])), 1), pre.numel())
    sae.threshold.fill_(max(float(pre.flatten().topk(n).values[-1]), 0.0))


def param_lr_scales(opts):
    scale = opts["threshold_lr_scale"]
    if scale is None:
        scale = 5.0 if opts["l0_target"] is not None else 1.0
    return {"threshold": scale}


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
                    "estimators' kernel", float, minimum=0),
             Option("l0_target", None, "jumprelu kind: train to this mean L0 (quadratic "
                    "penalty, Gemma Scope 2) instead of the l0_coeff penalty", float,
                    minimum=1e-9),
             Option("l0_target_coeff", 10.0, "jumprelu kind: weight of the L0-target penalty",
                    float, minimum=0),
             Option("tanh_scale", None, "jumprelu kind: count active latents as "
                    "sum tanh(c*f/rms) (Anthropic) with this c, instead of the step", float,
                    minimum=1e-9),
             Option("threshold_lr_scale", None, "jumprelu kind: threshold lr multiplier "
                    "(default 5 with l0_target, else 1)", float, minimum=0)),
    threshold_init=1e-3, after_step=after_step, fold_threshold=fold_threshold,
    init_from_batch=init_from_batch, param_lr_scales=param_lr_scales,
    saelens="jumprelu", saelens_transcoder="jumprelu_transcoder", gemmascope=True)
