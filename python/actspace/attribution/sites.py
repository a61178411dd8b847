"""One hookpoint over one batch: the nodes (SAE latents and error, or neurons), their clean
and baseline values, and their scores from a hookpoint gradient.

A site's nodes at each real token position:
- with an SAE: every latent active in the clean code or in the baseline's code, and the
  error term err = x - x̂ (one node per position);
- without (neurons=): every coordinate of the hookpoint.
The score of a node is grad · (clean - baseline) along that node's direction, with grad
the hookpoint gradient (attribution patching) or its average along the path to the
baseline (integrated gradients). For latents, grad · W_dec[latent] comes from
sparse_decode's backward (grad of values) over the active slots, chunked over positions,
so memory follows tokens × active latents, never tokens × d_sae.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import ops

__all__ = ["SiteSpec", "SiteBatch", "KIND_LATENT", "KIND_ERROR", "KIND_NEURON", "KIND_NAMES"]

KIND_LATENT, KIND_ERROR, KIND_NEURON = 0, 1, 2
KIND_NAMES = ("latent", "error", "neuron")


@dataclass
class SiteSpec:
    hookpoint: str                   # canonical hookpoint name
    sae: object | None = None        # an acts.SAE, or None for neurons
    mean: torch.Tensor | None = None  # [d] baseline "mean"


def _encode(sae, x: torch.Tensor, chunk: int):
    """x [N, d] -> (values [N, k] float32, indices [N, k] long), -1 = empty slot."""
    vals, idxs = [], []
    for s in range(0, x.shape[0], chunk):
        code = sae.encode(x[s:s + chunk].to(sae.dtype))
        vals.append(code.values.float())
        idxs.append(code.indices.long())
    width = max(v.shape[1] for v in vals)
    vals = [torch.nn.functional.pad(v, (0, width - v.shape[1])) for v in vals]
    idxs = [torch.nn.functional.pad(i, (0, width - i.shape[1]), value=-1) for i in idxs]
    return torch.cat(vals), torch.cat(idxs)


def _decode(sae, values, indices, chunk: int) -> torch.Tensor:
    out = [ops.sparse_decode(values[s:s + chunk].to(sae.dtype), indices[s:s + chunk],
                             sae.W_dec.detach(), sae.b_dec.detach()).float()
           for s in range(0, values.shape[0], chunk)]
    return torch.cat(out) if out else values.new_zeros(0, sae.d_out)


class SiteBatch:
    """Nodes of one site for one batch. x_clean, x_base [B, T, d] (x_base None: "zero"),
    mask [B, T]."""

    @torch.no_grad()
    def __init__(self, spec: SiteSpec, x_clean: torch.Tensor, x_base, mask: torch.Tensor,
                 chunk: int):
        self.spec, self.chunk = spec, chunk
        self.rows = mask.bool().to(x_clean.device)                     # [B, T]
        self.where = self.rows.nonzero()                               # [N, 2] (b, t)
        xc = x_clean[self.rows].float()                                # [N, d]
        sae = spec.sae
        if sae is not None:
            if sae.is_transcoder:
                raise ValueError(f"saes[{spec.hookpoint!r}] is a transcoder; attribution "
                                 "splices autoencoders (d_in == d_out, one hookpoint)")
            if sae.d_in != x_clean.shape[-1]:
                raise ValueError(f"saes[{spec.hookpoint!r}] has d_in={sae.d_in}, but hookpoint "
                                 f"{spec.hookpoint!r} has d={x_clean.shape[-1]}")
            vc, ic = _encode(sae, xc, chunk)                           # [N, k]
            self.err_c = xc - _decode(sae, vc, ic, chunk)              # [N, d]
            if x_base is None:     # "zero": no latent active, no error: x_b = b_dec
                vb = vc.new_zeros(vc.shape[0], 0)
                ib = ic.new_zeros(ic.shape[0], 0)
                self.err_b = torch.zeros_like(xc)
                xb = sae.b_dec.detach().float().expand_as(xc)
            else:
                xb = x_base[self.rows].float()
                vb, ib = _encode(sae, xb, chunk)
                self.err_b = xb - _decode(sae, vb, ib, chunk)
            # one slot per (position, latent in the clean or baseline code): signed deltas
            self.idx = torch.cat([ic, ib], 1)                          # [N, S]
            self.delta = torch.cat([vc, -vb], 1)                       # [N, S]
            self.n_clean = vc.shape[1]
        else:
            if x_base is None:
                xb = torch.zeros_like(xc)
            else:
                xb = x_base[self.rows].float()
        self.xc, self.xb = xc, xb                                      # [N, d]
        full = x_clean.detach().clone()
        full[self.rows] = xb.to(full.dtype)
        self.x_base_full = full                                        # [B, T, d]

    # ------------------------------------------------------------------ path
    def path(self, x: torch.Tensor, alpha) -> torch.Tensor:
        """The hookpoint at alpha of the way from baseline (0) to clean (1); padding kept.
        x [B, T, d] or [S, B, T, d] with alpha [S, 1, 1, 1] (several points at once)."""
        xb = self.x_base_full.to(x.dtype)
        return torch.where(self.rows.unsqueeze(-1), xb + alpha * (x - xb), x)

    # ------------------------------------------------------------------ scores
    def slot_grads(self, G: torch.Tensor) -> torch.Tensor:
        """G [N, d] hookpoint gradients -> [N, S] gradients of the slots' latent values
        (G · W_dec[idx]) by sparse_decode's backward, chunked over positions."""
        W = self.spec.sae.W_dec.detach()
        out = []
        for s in range(0, G.shape[0], self.chunk):
            v = self.delta[s:s + self.chunk].to(W.dtype).requires_grad_(True)
            with torch.enable_grad():
                xh = ops.sparse_decode(v, self.idx[s:s + self.chunk], W)
                (g,) = torch.autograd.grad(xh, v, grad_outputs=G[s:s + self.chunk].to(W.dtype))
            out.append(g.float())
        return torch.cat(out)

    @torch.no_grad()
    def scores(self, grad_full: torch.Tensor) -> dict:
        """grad_full [B, T, d] -> node columns: row (into self.where), kind, index,
        activation (clean), baseline, score; all 1-D tensors of one length."""
        G = grad_full[self.rows].float()                                # [N, d]
        if self.spec.sae is None:
            N, d = G.shape
            return {"row": torch.arange(N).repeat_interleave(d),
                    "kind": torch.full((N * d,), KIND_NEURON),
                    "index": torch.arange(d).repeat(N),
                    "activation": self.xc.reshape(-1).cpu(),
                    "baseline": self.xb.reshape(-1).cpu(),
                    "score": (G * (self.xc - self.xb)).reshape(-1).cpu()}
        M = self.spec.sae.d_sae
        slot_score = self.slot_grads(G) * self.delta                   # [N, S]
        N, S = self.idx.shape
        live = (self.idx >= 0) & (self.delta != 0)
        key = (torch.arange(N, device=G.device)[:, None] * M + self.idx)[live]
        keys, inv = torch.unique(key, return_inverse=True)
        K = keys.numel()
        score = torch.zeros(K, device=G.device).index_add_(0, inv, slot_score[live])
        is_clean = torch.zeros_like(live)
        is_clean[:, : self.n_clean] = True
        signed = self.delta[live]
        clean_part = is_clean[live]
        act = torch.zeros(K, device=G.device).index_add_(
            0, inv[clean_part], signed[clean_part])
        base = torch.zeros(K, device=G.device).index_add_(
            0, inv[~clean_part], -signed[~clean_part])
        err_score = (G * (self.err_c - self.err_b)).sum(-1)            # [N]
        err_norm = self.err_c.norm(dim=-1)
        return {"row": torch.cat([keys // M, torch.arange(N, device=G.device)]).cpu(),
                "kind": torch.cat([torch.full((K,), KIND_LATENT),
                                   torch.full((N,), KIND_ERROR)]),
                "index": torch.cat([keys % M, torch.full((N,), -1, device=G.device)]).cpu(),
                "activation": torch.cat([act, err_norm]).cpu(),
                "baseline": torch.cat([base, self.err_b.norm(dim=-1)]).cpu(),
                "score": torch.cat([score, err_score]).cpu()}

    # ------------------------------------------------------------------ exact patching
    @torch.no_grad()
    def node_delta(self, row: int, kind: int, index: int, act: float, base: float):
        """[d] change of the hookpoint at row when the node goes from clean to baseline."""
        if kind == KIND_LATENT:
            return (base - act) * self.spec.sae.W_dec[index].detach().float()
        if kind == KIND_ERROR:
            return self.err_b[row] - self.err_c[row]
        out = torch.zeros(self.xc.shape[1], device=self.xc.device)
        out[index] = self.xb[row, index] - self.xc[row, index]
        return out
