"""Gated SAE (Rajamanoharan et al. 2024, "Improving Dictionary Learning with Gated Sparse
Autoencoders"; SAELens' ``gated`` architecture).

Two paths share the encoder directions W (rows [M, d_in]):

    x̃      = x - b_dec                                  (apply_b_dec_to_input)
    π_gate = x̃ @ Wᵀ + b_gate                            which latents fire
    π_mag  = x̃ @ (exp(r_mag) ⊙ W)ᵀ + b_mag              how strongly
    f      = 1[π_gate > 0] ⊙ relu(π_mag)                ŷ = f @ W_dec + b_dec

Loss (in variance units, as the other kinds):
    ‖y - ŷ‖²/V + λ · mean_n Σ_m relu(π_gate)/rms + ‖y - (relu(π_gate) @ sg(W_dec) + sg(b_dec))‖²/V
where sg stops the gradient. The L1 acts on the gate only, so the magnitudes do not shrink;
the gate gets no gradient through 1[·] and learns from the L1 and the auxiliary term.

At inference a gated SAE is a JumpReLU SAE (the paper's appendix): with
W' = exp(r_mag) ⊙ W, b' = b_mag and θ = max(b_mag - exp(r_mag) ⊙ b_gate, 0),
f = π' · H(π' - θ) where π' = x̃ @ W'ᵀ + b' = π_mag: since π_mag = exp(r_mag)(π_gate -
b_gate) + b_mag, π_gate > 0 ⟺ π_mag > b_mag - exp(r_mag) b_gate, and relu adds π_mag > 0.
So encode runs on the fast JumpReLU path.
"""
from __future__ import annotations

import torch

from .base import Kind, Option, TrainOut, encode_above, fired_and_l0

__all__ = ["KIND", "gated_preactivations", "gated_forward", "gated_loss", "gated_as_jumprelu"]


def gated_preactivations(x_in, W, b_gate, r_mag, b_mag):
    """x_in [N, d_in] (b_dec already subtracted), W [M, d_in], b_gate, r_mag, b_mag [M] ->
    (π_gate [N, M], π_mag [N, M])."""
    proj = x_in @ W.T                                     # [N, M]
    return proj + b_gate, proj * torch.exp(r_mag) + b_mag


def gated_forward(x_in, W, b_gate, r_mag, b_mag, W_dec, b_dec):
    """-> (ŷ [N, d_out], f [N, M], π_gate [N, M], active [N, M] bool)."""
    pi_gate, pi_mag = gated_preactivations(x_in, W, b_gate, r_mag, b_mag)
    active = pi_gate > 0
    f = active * torch.relu(pi_mag)
    return f @ W_dec + b_dec, f, pi_gate, active


def gated_loss(y, y_hat, pi_gate, W_dec, b_dec, *, total_var, rms, l1_coeff):
    """-> (loss, fvu, l1 term, auxiliary term) — scalars; see the module docstring."""
    fvu = (y - y_hat).pow(2).sum() / total_var
    gate = torch.relu(pi_gate)
    l1 = l1_coeff * gate.sum(1).mean() / rms
    via_gate = gate @ W_dec.detach() + b_dec.detach()
    aux = (y - via_gate).pow(2).sum() / total_var
    return fvu + l1 + aux, fvu, l1, aux


@torch.no_grad()
def gated_as_jumprelu(W, b_gate, r_mag, b_mag):
    """-> (W' [M, d_in], b' [M], threshold [M]) of the JumpReLU SAE computing the same code
    (up to rounding at the boundary)."""
    s = torch.exp(r_mag)
    return W * s[:, None], b_mag.clone(), torch.clamp(b_mag - s * b_gate, min=0)


# ---------------------------------------------------------------- the kind
# In the SAE: W_enc = W (shared directions), b_enc = b_gate, extra parameters r_mag, b_mag.
def encode(sae, x):
    W, b, thr = gated_as_jumprelu(sae.W_enc, sae.b_enc, sae.r_mag, sae.b_mag)
    return encode_above(sae, x, thr, W_enc=W, b_enc=b)


def train_forward(sae, x, total_var, opts):
    N = x.shape[0]
    x_in = x - sae.b_dec if sae.apply_b_dec_to_input else x
    y_hat, f, pi_gate, active = gated_forward(x_in, sae.W_enc, sae.b_enc, sae.r_mag,
                                              sae.b_mag, sae.W_dec, sae.b_dec)
    gate = torch.relu(pi_gate)
    rms = (total_var / N).sqrt()
    l1 = opts["l1_coeff"] * gate.sum(1).mean() / rms
    via_gate = gate @ sae.W_dec.detach() + sae.b_dec.detach()   # the auxiliary reconstruction
    return TrainOut(y_hat, *fired_and_l0(active), l1, extra_y_hats=[via_gate])


def fold_threshold(sae, n):
    """W_enc[m], b_enc[m] (= b_gate) *= n[m]: π_mag follows when b_mag[m] does too."""
    sae.b_mag.mul_(n)


KIND = Kind(
    name="gated", summary="gate path picks latents (L1 on it), magnitude path sizes them",
    uses_k=False, threshold=None, encode=encode, train_forward=train_forward,
    options=(Option("l1_coeff", 1.0, "relu kind: L1 penalty weight (in units of the batch's "
                    "RMS norm)", float, minimum=0),),
    fold_threshold=fold_threshold,
    extra_params=(("r_mag", ("d_sae",), 0.0), ("b_mag", ("d_sae",), 0.0)),
    saelens="gated", saelens_names=(("b_enc", "b_gate"),))
