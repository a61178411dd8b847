"""`acts.attribute_edges`: latent -> latent edges between an upstream and a downstream SAE.

For each prompt, the downstream latents with the largest attribution-patching scores
(`top` of them) are taken as targets. For a target latent a at position t, its
pre-activation's gradient w.r.t. the upstream hookpoint (through the model: attention,
MLPs, later positions cannot feed earlier ones in a causal model) is projected on the
active upstream latents' decoder rows (sparse_decode's backward, as for node scores) and
multiplied by their activations: weight(u -> a) ≈ how much of a's activation latent u
accounts for against the zero baseline (upstream error terms are nodes too). score =
weight × d metric / d a: the edge's share of the metric. Only the "zero" baseline.
"""
from __future__ import annotations

import torch

from .._io import write_json_atomic
from .batching import make_batch, token_rows
from .metrics import as_metric
from .sites import KIND_LATENT, KIND_NAMES, SiteBatch, SiteSpec
from .splice import check_hookpoint, forward_with

__all__ = ["attribute_edges", "Edges"]


class Edges:
    """Edge rows: prompt, upstream (position, kind, index), downstream (position, latent),
    weight (share of the downstream activation), score (share of the metric)."""

    def __init__(self, rows: list[dict], meta: dict):
        self.rows, self.meta = rows, meta

    def __len__(self):
        return len(self.rows)

    def top(self, n: int = 20, *, prompt=None, by: str = "score") -> list[dict]:
        if by not in ("score", "weight"):
            raise ValueError(f"by must be 'score' or 'weight', got {by!r}")
        rows = [r for r in self.rows if prompt is None or r["prompt"] == prompt]
        return sorted(rows, key=lambda r: -abs(r[by]))[: max(int(n), 0)]

    def to_json(self, path=None) -> dict:
        obj = {**self.meta, "edges": self.rows}
        if path is not None:
            write_json_atomic(path, obj)
        return obj

    def __repr__(self):
        return (f"Edges({len(self.rows)} edges, {self.meta['upstream']} -> "
                f"{self.meta['downstream']})")


def _pre_activation(sae, x_row: torch.Tensor, latent: int) -> torch.Tensor:
    """The latent's pre-activation at x_row [d] (its value wherever it is active)."""
    x = x_row.to(sae.dtype)
    if sae.apply_b_dec_to_input:
        x = x - sae.b_dec.detach()
    return x @ sae.W_enc[latent].detach() + sae.b_enc[latent].detach()


def attribute_edges(model, tokenizer, prompts, metric, *, saes: dict, upstream: str,
                    downstream: str, top: int = 10, chunk_tokens: int = 4096,
                    max_length: int | None = None) -> Edges:
    """Edges from the latents (and error terms) of saes[upstream] to the `top` most
    attributed latents of saes[downstream], per prompt."""
    if upstream not in saes or downstream not in saes:
        raise ValueError(f"saes must hold both upstream {upstream!r} and downstream "
                         f"{downstream!r} (keys: {sorted(saes)})")
    up = check_hookpoint(model, upstream, "upstream")
    down = check_hookpoint(model, downstream, "downstream")
    if up == down:
        raise ValueError("upstream and downstream must be different hookpoints")
    sae_u, sae_d = saes[upstream], saes[downstream]
    metric_obj = as_metric(metric)
    metric_fn = metric_obj.bind(model, tokenizer)
    rows_in = token_rows(prompts, tokenizer, max_length)
    device = next(model.parameters()).device
    out_rows, tokens = [], []
    was_training = model.training
    model.eval()
    try:
        for p, row in enumerate(rows_in):
            batch = make_batch([row], tokenizer, model, device)
            tokens.append([tokenizer.decode([t]) for t in row] if tokenizer else row)
            probes, live = {}, {}

            def at_up(x):
                live[up] = x.detach()
                probes[up] = torch.zeros_like(x, requires_grad=True)
                return x + probes[up]

            def at_down(x):
                live[down] = x
                probes[down] = torch.zeros_like(x, requires_grad=True)
                return x + probes[down]
            with torch.enable_grad():
                out = forward_with(model, batch.inputs, {up: at_up, down: at_down})
                if up not in live or down not in live:
                    raise ValueError(f"hookpoints {up!r} and {down!r} must both run in the "
                                     "forward")
                m = metric_fn(out, batch.mask).sum()
                (g_down,) = torch.autograd.grad(m, [probes[down]], retain_graph=True,
                                                allow_unused=True)
                if g_down is None:
                    g_down = torch.zeros_like(probes[down])
                site_d = SiteBatch(SiteSpec(down, sae_d), live[down].detach(), None,
                                   batch.mask, chunk_tokens)
                site_u = SiteBatch(SiteSpec(up, sae_u), live[up], None, batch.mask,
                                   chunk_tokens)
                sd = site_d.scores(g_down)
                lat = (sd["kind"] == KIND_LATENT).nonzero().flatten()
                order = lat[torch.argsort(sd["score"][lat].abs(), descending=True)[:top]]
                for j in order.tolist():
                    n, a = int(sd["row"][j]), int(sd["index"][j])
                    t = int(site_d.where[n, 1])
                    pre = _pre_activation(sae_d, live[down][0, t], a)
                    (g_up,) = torch.autograd.grad(pre, [probes[up]], retain_graph=True,
                                                  allow_unused=True)
                    if g_up is None:
                        raise ValueError(f"downstream {down!r} does not depend on upstream "
                                         f"{up!r} (does upstream run first?)")
                    su = site_u.scores(g_up)
                    dm_da = float(sd["score"][j]) / float(sd["activation"][j])
                    off = batch.offsets[0]
                    for i in range(len(su["score"])):
                        w = float(su["score"][i])
                        if w == 0.0:
                            continue
                        out_rows.append({
                            "prompt": p,
                            "up_position": int(site_u.where[int(su["row"][i]), 1]) - off,
                            "up_kind": KIND_NAMES[int(su["kind"][i])],
                            "up_index": int(su["index"][i]),
                            "down_position": t - off, "down_latent": a,
                            "down_activation": float(sd["activation"][j]),
                            "weight": w, "score": w * dm_da})
    finally:
        model.train(was_training)
    meta = {"upstream": up, "downstream": down, "metric": metric_obj.name, "top": top,
            "baseline": "zero", "tokens": tokens}
    return Edges(out_rows, meta)
