"""JumpReLU's sparsity penalties: the L0 coefficient (Rajamanoharan et al. 2024), the
quadratic L0 target (Gemma Scope 2) and the tanh-smoothed count (Anthropic, January 2025).

    count per row  step: Σ_m H(z_m - θ_m)                       (gradient to θ only)
                   tanh: Σ_m tanh(c · f_m / rms)                (f = JumpReLU(z), gradient
                         to the encoder through f, to θ through the jump's estimator)
    penalty        coefficient mode:  λ · mean count
                   target mode:       λ · (mean count / L0_target - 1)²

The target mode pushes L0 towards the target from either side and is flat there, so the
end point is the target whatever λ is (λ sets only how hard): the user picks an L0, not a
coefficient whose effect depends on the data (SAELens #719: the coefficient saturates).
rms: the root mean square norm of the centred batch; dividing f by it makes c independent
of the activations' scale (decoder rows are unit norm, so f·‖W_dec‖ = f).
"""
from __future__ import annotations

import torch

from .estimators import jumprelu, step

__all__ = ["MODES", "sparsity_count", "l0_penalty", "jumprelu_forward"]

MODES = ("step", "tanh")


def sparsity_count(z, theta, eps, *, mode="step", acts=None, tanh_scale=4.0, rms=1.0):
    """z [N, M] raw pre-activations, theta [M] -> [N] differentiable count of active
    latents per row (see the module docstring); acts: JumpReLU(z) when already computed."""
    if mode == "step":
        return step(z, theta, eps).sum(1)
    if mode == "tanh":
        f = jumprelu(z, theta, eps) if acts is None else acts
        return torch.tanh(tanh_scale * f / rms).sum(1)
    raise ValueError(f"sparsity_mode must be one of {MODES}, got {mode!r}")


def l0_penalty(count, coeff, target=None):
    """count [N] -> scalar: coeff · mean(count), or with target: coeff · (mean/target - 1)²."""
    mean = count.mean()
    if target is None:
        return coeff * mean
    if not target > 0:
        raise ValueError(f"l0_target must be > 0, got {target!r}")
    return coeff * (mean / target - 1) ** 2


def jumprelu_forward(pre, theta, W_dec, b_dec, *, eps, l0_coeff, l0_target=None,
                     mode="step", tanh_scale=4.0, rms=1.0):
    """pre [N, M], theta [M], W_dec [M, d_out], b_dec [d_out] ->
    (y_hat [N, d_out], acts [N, M], active [N, M] bool, penalty scalar)."""
    acts = jumprelu(pre, theta, eps)
    count = sparsity_count(pre, theta, eps, mode=mode, acts=acts, tanh_scale=tanh_scale,
                           rms=rms)
    return acts @ W_dec + b_dec, acts, pre > theta, l0_penalty(count, l0_coeff, l0_target)
