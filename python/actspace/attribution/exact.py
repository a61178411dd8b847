"""Exact activation patching of chosen nodes: the ground truth a ranking is checked against.

For each node, its prompt is run once more with that node alone moved from its clean value
to its baseline (a latent: (baseline - clean) · W_dec[latent] added at its position, the
rest of the code and the error term held; an error node: its error replaced; a neuron: its
coordinate replaced). The score is metric(clean) - metric(patched), the quantity attribution
patching estimates to first order. Nodes of one prompt run together as copies of it in one
batch (`batch_size` copies per forward).
"""
from __future__ import annotations

import torch

from .gradients import metric_with

__all__ = ["patch_scores"]


def patch_scores(model, batch, sites: dict, metric_fn, metric_clean: torch.Tensor,
                 nodes: list[tuple], batch_size: int) -> torch.Tensor:
    """nodes: (b, hookpoint, row, kind, index, activation, baseline) with b the prompt's
    row in batch and row the node's row in sites[hookpoint].where -> scores [len(nodes)]."""
    out = torch.zeros(len(nodes), dtype=torch.float32)
    by_prompt: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        by_prompt.setdefault(node[0], []).append(i)
    for b, members in by_prompt.items():
        single = {k: v[b:b + 1] for k, v in batch.inputs.items()}
        for s in range(0, len(members), batch_size):
            chunk = members[s:s + batch_size]
            R = len(chunk)
            inputs = {k: v.expand(R, *v.shape[1:]) for k, v in single.items()}
            deltas: dict[str, list] = {}
            for r, i in enumerate(chunk):
                _, hp, row, kind, index, act, base = nodes[i]
                site = sites[hp]
                t = int(site.where[row, 1])
                deltas.setdefault(hp, []).append((r, t, site.node_delta(row, kind, index,
                                                                        act, base)))
            edits = {hp: _adder(items) for hp, items in deltas.items()}
            m = metric_with(model, inputs, single["attention_mask"].expand(R, -1),
                            metric_fn, edits)
            out[torch.tensor(chunk)] = (metric_clean[b] - m).float().cpu()
    return out


def _adder(items):
    def fn(x):                                                         # [R, T, d]
        x = x.clone()
        for r, t, delta in items:
            x[r, t] = (x[r, t].float() + delta.to(x.device)).to(x.dtype)
        return x
    return fn
