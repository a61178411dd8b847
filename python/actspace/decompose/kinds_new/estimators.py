"""Straight-through estimators of the JumpReLU paper (Rajamanoharan et al. 2024, "Jumping
Ahead: Improving Reconstruction Fidelity with JumpReLU Sparse Autoencoders"), shared by the
JumpReLU and gated kinds.

The step H(z - θ) has zero derivative almost everywhere, so the threshold θ gets the
pseudo-derivative of a kernel-smoothed step: ∂H(z-θ)/∂θ ≈ -(1/ε)·K((z-θ)/ε) with K the
rectangle kernel (1 on |u| < 1/2), ε the bandwidth. The threshold is the raw parameter
(not its log): under Adam a log-parameterised threshold moves by only ~θ·lr per step and
stays where it started (SAELens issues #494, #718).

Both estimators take the raw pre-activation z, never relu(z): a latent with z <= 0 would
otherwise sit at 0, inside the window of any θ < ε/2, and pull on it.
"""
from __future__ import annotations

import torch

__all__ = ["jumprelu", "step", "rectangle"]


def rectangle(u: torch.Tensor) -> torch.Tensor:
    """K(u) = 1 on |u| < 1/2, else 0 (in u's dtype)."""
    return (u.abs() < 0.5).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, theta, eps):                 # z [N, M], theta [M]
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return z * (z > theta)

    @staticmethod
    def backward(ctx, g):
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        grad_theta = (-(theta / eps) * rectangle((z - theta) / eps) * g).sum(0)
        return g * (z > theta), grad_theta, None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, theta, eps):
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, g):
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        return torch.zeros_like(z), (-(1.0 / eps) * rectangle((z - theta) / eps) * g).sum(0), None


def jumprelu(z: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
    """z [N, M], theta [M] -> z · H(z - θ) [N, M]. Gradient: H(z-θ) to z;
    -(θ/ε)·K((z-θ)/ε) to θ (summed over rows)."""
    return _JumpReLU.apply(z, theta, eps)


def step(z: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
    """z [N, M], theta [M] -> H(z - θ) [N, M]. Gradient: 0 to z; -(1/ε)·K((z-θ)/ε) to θ."""
    return _Step.apply(z, theta, eps)
