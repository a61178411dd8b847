"""Hookpoint gradients of a metric: attribution patching (one forward, one backward) and
integrated gradients (the average gradient along the straight path from the baseline).

Both add a zero probe p to each hookpoint (x + p: the forward is bit-identical) and read
p's gradient, [B, T, d] per hookpoint, the size of the activation itself; sites.py turns
it into node scores.
"""
from __future__ import annotations

import torch

from .splice import forward_with

__all__ = ["record_pass", "atp_gradients", "ig_gradients", "metric_with"]


@torch.no_grad()
def record_pass(model, inputs: dict, hookpoints, metric_fn=None, mask=None):
    """(metric [B] or None, {hookpoint: x [B, T, d] detached}) of one plain forward."""
    seen = {}

    def keep(hp):
        def fn(x):
            seen[hp] = x.detach()
            return x
        return fn
    out = forward_with(model, inputs, {hp: keep(hp) for hp in hookpoints})
    _check_seen(seen, hookpoints)
    return (None if metric_fn is None else metric_fn(out, mask).detach()), seen


def _check_seen(seen, hookpoints):
    missing = [hp for hp in hookpoints if hp not in seen]
    if missing:
        raise ValueError(f"hookpoints {missing} did not run in the model's forward")


def _probe(store: dict, hp: str, inner=None):
    def fn(x):
        x = x if inner is None else inner(x)
        p = torch.zeros_like(x, requires_grad=True)
        store[hp] = p
        return x + p
    return fn


def atp_gradients(model, inputs, mask, hookpoints, metric_fn):
    """(metric [B], {hookpoint: x [B,T,d]}, {hookpoint: d Σ_b metric_b / d x [B,T,d]})."""
    probes, seen = {}, {}

    def keep_and_probe(hp):
        def fn(x):
            seen[hp] = x.detach()
            return _probe(probes, hp)(x)
        return fn
    with torch.enable_grad():
        out = forward_with(model, inputs, {hp: keep_and_probe(hp) for hp in hookpoints})
        _check_seen(seen, hookpoints)
        m = metric_fn(out, mask)
        grads = torch.autograd.grad(m.sum(), [probes[hp] for hp in hookpoints],
                                    allow_unused=True)
    G = {hp: (torch.zeros_like(seen[hp]) if g is None else g)
         for hp, g in zip(hookpoints, grads)}
    return m.detach(), seen, G


def ig_gradients(model, inputs, mask, site, metric_fn, steps: int,
                 max_rows: int = 64) -> torch.Tensor:
    """Mean over the midpoints alpha = (i + 1/2) / steps of the gradient at site's
    hookpoint while it is moved to baseline + alpha (clean - baseline), other hookpoints
    untouched -> [B, T, d]. Several alphas run in one forward as copies of the batch
    (at most max_rows rows per forward)."""
    hp = site.spec.hookpoint
    B = mask.shape[0]
    per = max(1, min(steps, max_rows // max(B, 1)))
    alphas = [(i + 0.5) / steps for i in range(steps)]
    acc = None
    for s in range(0, steps, per):
        chunk = torch.tensor(alphas[s:s + per])
        S = chunk.numel()
        rep = {k: v.repeat(S, *([1] * (v.dim() - 1))) for k, v in inputs.items()}

        def moved(x, a=chunk):                                   # x [S*B, T, d]
            xs = x.view(S, B, *x.shape[1:])
            return site.path(xs, a.to(x.device, x.dtype).view(S, 1, 1, 1)).reshape(x.shape)
        probes = {}
        with torch.enable_grad():
            out = forward_with(model, rep, {hp: _probe(probes, hp, moved)})
            m = metric_fn(out, mask.repeat(S, 1))
            (g,) = torch.autograd.grad(m.sum(), [probes[hp]], allow_unused=True)
        if g is None:
            g = torch.zeros_like(probes[hp])
        g = g.detach().view(S, B, *g.shape[1:]).sum(0)
        acc = g if acc is None else acc + g
    return acc / steps


@torch.no_grad()
def metric_with(model, inputs, mask, metric_fn, edits: dict) -> torch.Tensor:
    """metric [B] of a forward with edits {hookpoint: fn(x) -> new x}."""
    return metric_fn(forward_with(model, inputs, edits), mask).detach()
