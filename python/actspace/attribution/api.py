"""`acts.attribute`: which SAE latents (or neurons) at which positions cause a metric.

    res = acts.attribute(model, tok, prompts, metric=acts.metrics.logit_diff(" P", " L"),
                         saes={"transformer.h.2": sae}, method="atp", baseline="zero")
    res.top(20)

Methods: "atp" (attribution patching: gradient × (clean - baseline), one forward and one
backward for every hookpoint at once), "ig" (integrated gradients, hookpoint by hookpoint:
the gradient averaged over `steps` midpoints of the straight path from the baseline, so a
hookpoint's scores sum to metric(clean) - metric(hookpoint at baseline) up to quadrature),
"exact" (activation patching of each node alone; `nodes=` a list of rows such as
res.top(20), or every node). Baselines: "zero" (latents and error 0, so the hookpoint is
b_dec; neurons 0), "mean" (the hookpoint's mean from `stats=`: an ActivationStats or a [d]
tensor per hookpoint), or a list of corrupted prompts, each as many tokens as its prompt.
RelP propagation rules are not implemented.
"""
from __future__ import annotations

import torch

from .batching import make_batch, token_rows
from .exact import patch_scores
from .gradients import atp_gradients, ig_gradients, metric_with, record_pass
from .metrics import as_metric
from .result import COLUMNS, Attribution
from .sites import KIND_NAMES, SiteBatch, SiteSpec
from .splice import check_hookpoint

__all__ = ["attribute", "METHODS", "site_specs", "baseline_rows"]

METHODS = ("atp", "ig", "exact")


def _mean_of(stats, hp: str):
    if stats is None:
        raise ValueError('baseline="mean" needs stats= (an ActivationStats or a [d] tensor '
                         "per hookpoint)")
    item = stats.get(hp) if isinstance(stats, dict) else stats
    if item is None:
        raise ValueError(f'baseline="mean": stats has no entry for hookpoint {hp!r} '
                         f"(keys: {sorted(stats)})")
    mean = item if isinstance(item, torch.Tensor) else getattr(item, "mean", item)
    return torch.as_tensor(mean).detach().float().flatten()


def site_specs(model, saes, neurons, baseline, stats) -> dict[str, SiteSpec]:
    """{canonical hookpoint: SiteSpec} from saes= and neurons=, every name checked."""
    saes = dict(saes or {})
    neurons = [neurons] if isinstance(neurons, str) else list(neurons or [])
    if not saes and not neurons:
        raise ValueError("give saes={hookpoint: SAE} and/or neurons=[hookpoints]")
    specs = {}
    for hp, sae in saes.items():
        if not hasattr(sae, "encode") or not hasattr(sae, "W_dec"):
            raise TypeError(f"saes[{hp!r}] must be an acts.SAE, got {type(sae).__name__}")
        name = check_hookpoint(model, hp, f"saes key {hp!r}")
        specs[name] = SiteSpec(name, sae)
    for hp in neurons:
        name = check_hookpoint(model, hp, f"neurons hookpoint {hp!r}")
        if name in specs:
            raise ValueError(f"hookpoint {name!r} is given both in saes and in neurons")
        specs[name] = SiteSpec(name, None)
    if isinstance(baseline, str) and baseline == "mean":
        for name, spec in specs.items():
            spec.mean = _mean_of(stats, name)
    return specs


def baseline_rows(baseline, rows, tokenizer, max_length):
    """None for "zero"/"mean", else the corrupted prompts' id rows (same lengths)."""
    if isinstance(baseline, str):
        if baseline not in ("zero", "mean"):
            raise ValueError(f'baseline must be "zero", "mean" or a list of corrupted '
                             f"prompts, got {baseline!r}")
        return None
    base = token_rows(baseline, tokenizer, max_length)
    if len(base) != len(rows):
        raise ValueError(f"baseline has {len(base)} corrupted prompts for {len(rows)} prompts")
    for i, (a, b) in enumerate(zip(rows, base)):
        if len(a) != len(b):
            raise ValueError(f"corrupted prompt {i} has {len(b)} tokens, its prompt {len(a)}: "
                             "positions must line up")
    return base


def _token_texts(tokenizer, row):
    if tokenizer is None:
        return [str(t) for t in row]
    return [tokenizer.decode([t]) for t in row]


def _node_key(r: dict):
    return (r["prompt"], r["hookpoint"], r["position"], r["kind"], r["index"])


def attribute(model, tokenizer, prompts, metric, *, saes=None, neurons=None,
              method: str = "atp", baseline="zero", stats=None, steps: int = 32,
              nodes=None, batch_size: int = 8, chunk_tokens: int = 4096,
              max_length: int | None = None) -> Attribution:
    """Score every SAE latent active at a real token (plus each position's SAE error term),
    or every neuron of the `neurons` hookpoints, for metric on each prompt. See the module
    docstring for methods and baselines. chunk_tokens bounds the rows encoded and
    projected at once; batch_size the prompts per forward (left-padded)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    metric_obj = as_metric(metric)
    metric_fn = metric_obj.bind(model, tokenizer)
    specs = site_specs(model, saes, neurons, baseline, stats)
    hps = list(specs)
    rows = token_rows(prompts, tokenizer, max_length)
    base_rows = baseline_rows(baseline, rows, tokenizer, max_length)
    wanted = None if nodes is None else {_node_key(r) for r in nodes}
    device = next(model.parameters()).device
    cols = {k: [] for k in COLUMNS}
    m_clean, m_base = [], {hp: [] for hp in hps}
    was_training = model.training
    model.eval()
    try:
        for s in range(0, len(rows), batch_size):
            batch = make_batch(rows[s:s + batch_size], tokenizer, model, device)
            x_base = {}
            if base_rows is not None:
                x_base = record_pass(model, make_batch(base_rows[s:s + batch_size], tokenizer,
                                                       model, device).inputs, hps)[1]
            if method == "ig":
                m, xs = record_pass(model, batch.inputs, hps, metric_fn, batch.mask)
            else:
                m, xs, G = atp_gradients(model, batch.inputs, batch.mask, hps, metric_fn)
            sites = {}
            for hp, spec in specs.items():
                xb = x_base.get(hp)
                if spec.mean is not None:
                    if spec.mean.numel() != xs[hp].shape[-1]:
                        raise ValueError(f"stats for {hp!r} has d={spec.mean.numel()}, the "
                                         f"hookpoint d={xs[hp].shape[-1]}")
                    xb = spec.mean.to(xs[hp].device, xs[hp].dtype).expand_as(xs[hp])
                sites[hp] = SiteBatch(spec, xs[hp], xb, batch.mask, chunk_tokens)
            found = {}
            for hp, site in sites.items():
                if method == "ig":
                    grad = ig_gradients(model, batch.inputs, batch.mask, site, metric_fn, steps)
                    m_base[hp] += metric_with(model, batch.inputs, batch.mask, metric_fn,
                                              {hp: lambda x, st=site: st.path(x, 0.0)}).tolist()
                else:
                    grad = G[hp]
                found[hp] = site.scores(grad)
            if method == "exact":
                found = _exact(model, batch, sites, found, metric_fn, m, wanted, s, batch_size)
            for hp, sc in found.items():
                where = sites[hp].where.cpu()[sc["row"]]                # [n, 2] (b, t)
                offsets = torch.tensor(batch.offsets)
                cols["prompt"].append(where[:, 0] + s)
                cols["hookpoint"].append(torch.full((len(where),), hps.index(hp)))
                cols["position"].append(where[:, 1] - offsets[where[:, 0]])
                for k in ("kind", "index", "activation", "baseline", "score"):
                    cols[k].append(sc[k])
            m_clean += m.tolist()
    finally:
        model.train(was_training)
    columns = {k: (torch.cat(v) if v else torch.zeros(0)) for k, v in cols.items()}
    for k in ("prompt", "hookpoint", "position", "kind", "index"):
        columns[k] = columns[k].long()
    for k in ("activation", "baseline", "score"):
        columns[k] = columns[k].float()
    meta = {"method": method, "metric": metric_obj.name, "hookpoints": hps,
            "saes": {hp: (None if sp.sae is None else
                          {"d_sae": sp.sae.d_sae, "kind": sp.sae.kind}) for hp, sp in specs.items()},
            "baseline": baseline if isinstance(baseline, str) else "corrupted",
            "steps": steps if method == "ig" else None,
            "tokens": [_token_texts(tokenizer, r) for r in rows],
            "metric_clean": m_clean,
            "metric_baseline": m_base if method == "ig" else None}
    return Attribution(columns, meta)


def _exact(model, batch, sites, found, metric_fn, m_clean, wanted, s, batch_size):
    """found's nodes (all, or those in wanted) rescored by patching each alone."""
    out = {}
    nodes, owners = [], []
    for hp, sc in found.items():
        where = sites[hp].where.cpu()[sc["row"]]
        keep = []
        for j in range(len(where)):
            b, t = int(where[j, 0]), int(where[j, 1])
            key = (b + s, hp, t - batch.offsets[b], KIND_NAMES[int(sc["kind"][j])],
                   int(sc["index"][j]))
            if wanted is None or key in wanted:
                keep.append(j)
                nodes.append((b, hp, int(sc["row"][j]), int(sc["kind"][j]),
                              int(sc["index"][j]), float(sc["activation"][j]),
                              float(sc["baseline"][j])))
        idx = torch.tensor(keep, dtype=torch.long)
        out[hp] = {k: v[idx] for k, v in sc.items()}
        owners.append((hp, len(keep)))
    scores = patch_scores(model, batch, sites, metric_fn, m_clean, nodes, batch_size)
    at = 0
    for hp, n in owners:
        out[hp]["score"] = scores[at:at + n]
        at += n
    return out
