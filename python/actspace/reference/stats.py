"""Reference streaming statistics (float64): per-channel moments, their Chan merge, and
per-latent statistics of sparse codes. The state layouts here are the contract of the
`stats` kernels (actspace.ops.stats) and of ActivationStats / LatentStats."""
from __future__ import annotations

import torch

MOMENT_FIELDS = ("count", "mean", "m2", "m3", "m4", "min", "max", "absmax", "zeros", "nonfinite")


def moments_init(d: int, device="cpu") -> dict:
    """Empty moment state for d channels. count/mean/m2/m3/m4/min/max/absmax float64 [d];
    zeros/nonfinite int64 [d]. Non-finite values are counted, never folded into moments."""
    f = dict(dtype=torch.float64, device=device)
    return {
        "count": torch.zeros(d, **f), "mean": torch.zeros(d, **f), "m2": torch.zeros(d, **f),
        "m3": torch.zeros(d, **f), "m4": torch.zeros(d, **f),
        "min": torch.full((d,), float("inf"), **f), "max": torch.full((d,), float("-inf"), **f),
        "absmax": torch.zeros(d, **f),
        "zeros": torch.zeros(d, dtype=torch.int64, device=device),
        "nonfinite": torch.zeros(d, dtype=torch.int64, device=device),
    }


def moments_of_batch(x: torch.Tensor) -> dict:
    """Moment state of one batch x [N, d] (any float dtype), computed in float64."""
    xd = x.to(torch.float64)
    finite = torch.isfinite(xd)
    n = finite.sum(0).to(torch.float64)
    x0 = torch.where(finite, xd, torch.zeros((), dtype=torch.float64, device=x.device))
    mean = x0.sum(0) / n.clamp_min(1)
    dev = torch.where(finite, xd - mean, torch.zeros((), dtype=torch.float64, device=x.device))
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=x.device)
    return {
        "count": n, "mean": mean, "m2": (dev**2).sum(0), "m3": (dev**3).sum(0),
        "m4": (dev**4).sum(0),
        "min": torch.where(finite, xd, inf).amin(0), "max": torch.where(finite, xd, -inf).amax(0),
        "absmax": torch.where(finite, xd.abs(), torch.zeros_like(xd)).amax(0),
        "zeros": (xd == 0).sum(0), "nonfinite": (~finite).sum(0),
    }


def moments_merge(a: dict, b: dict) -> dict:
    """Chan et al. pairwise merge of two moment states (exact up to rounding)."""
    na, nb = a["count"], b["count"]
    n = na + nb
    safe = n.clamp_min(1)
    delta = b["mean"] - a["mean"]
    mean = a["mean"] + delta * nb / safe
    m2 = a["m2"] + b["m2"] + delta**2 * na * nb / safe
    m3 = (a["m3"] + b["m3"] + delta**3 * na * nb * (na - nb) / safe**2
          + 3 * delta * (na * b["m2"] - nb * a["m2"]) / safe)
    m4 = (a["m4"] + b["m4"]
          + delta**4 * na * nb * (na * na - na * nb + nb * nb) / safe**3
          + 6 * delta**2 * (na * na * b["m2"] + nb * nb * a["m2"]) / safe**2
          + 4 * delta * (na * b["m3"] - nb * a["m3"]) / safe)
    return {
        "count": n, "mean": mean, "m2": m2, "m3": m3, "m4": m4,
        "min": torch.minimum(a["min"], b["min"]), "max": torch.maximum(a["max"], b["max"]),
        "absmax": torch.maximum(a["absmax"], b["absmax"]),
        "zeros": a["zeros"] + b["zeros"], "nonfinite": a["nonfinite"] + b["nonfinite"],
    }


def moments_update(state: dict, x: torch.Tensor) -> None:
    """Fold batch x [N, d] into state in place."""
    merged = moments_merge(state, moments_of_batch(x))
    for key in MOMENT_FIELDS:
        state[key].copy_(merged[key])


# ------------------------------------------------------------------ sparse codes, per latent
def latent_hist_edges(n_bins: int, log10_min: float, log10_max: float, device="cpu"):
    """Bin edges [n_bins + 1] evenly spaced in log10; values outside go to the end bins."""
    return torch.logspace(log10_min, log10_max, n_bins + 1, dtype=torch.float64, device=device)


def latent_init(M: int, top_t: int = 16, n_bins: int = 32, log10_min: float = -4.0,
                log10_max: float = 3.0, device="cpu") -> dict:
    """Empty per-latent state: count int64 [M], sum/sumsq float64 [M], hist int64 [M, n_bins],
    top_values float32 [M, T] (-inf = empty), top_tokens int64 [M, T] (-1 = empty)."""
    return {
        "count": torch.zeros(M, dtype=torch.int64, device=device),
        "sum": torch.zeros(M, dtype=torch.float64, device=device),
        "sumsq": torch.zeros(M, dtype=torch.float64, device=device),
        "hist": torch.zeros(M, n_bins, dtype=torch.int64, device=device),
        "top_values": torch.full((M, top_t), float("-inf"), dtype=torch.float32, device=device),
        "top_tokens": torch.full((M, top_t), -1, dtype=torch.int64, device=device),
        "hist_range": torch.tensor([log10_min, log10_max], dtype=torch.float64),
    }


def latent_update(state: dict, values: torch.Tensor, indices: torch.Tensor,
                  token_offset: int) -> None:
    """Fold a sparse code into state in place. values [N, k], indices [N, k] (-1 = empty);
    row n is global token token_offset + n. A latent fires where index >= 0 and value > 0
    (NaN never fires). Top-T keeps the largest values, ties to the earlier token."""
    M, n_bins = state["hist"].shape
    T = state["top_values"].shape[1]
    N, k = values.shape
    fired = (indices >= 0) & (values > 0)
    lat = indices.long()[fired]
    val = values.to(torch.float64)[fired]
    tok = (torch.arange(N, device=values.device).unsqueeze(1).expand(N, k)[fired] + token_offset)
    state["count"].index_add_(0, lat, torch.ones_like(lat))
    state["sum"].index_add_(0, lat, val)
    state["sumsq"].index_add_(0, lat, val * val)
    lo, hi = state["hist_range"].tolist()
    b = ((torch.log10(val) - lo) / (hi - lo) * n_bins).floor().clamp(0, n_bins - 1).long()
    state["hist"].view(-1).index_add_(0, lat * n_bins + b, torch.ones_like(lat))
    # top-T: candidates = old entries + new ones, per latent; order by (value desc, token asc)
    cand_lat = torch.cat([torch.arange(M, device=values.device).repeat_interleave(T), lat])
    cand_val = torch.cat([state["top_values"].reshape(-1).to(torch.float64), val])
    cand_tok = torch.cat([state["top_tokens"].reshape(-1), tok])
    # lexicographic sort: token asc, then value desc (stable), then latent asc (stable)
    o = torch.argsort(cand_tok, stable=True)
    o = o[torch.argsort(-cand_val[o], stable=True)]
    o = o[torch.argsort(cand_lat[o], stable=True)]
    cl = cand_lat[o]
    start = torch.searchsorted(cl, torch.arange(M, device=values.device))
    rank = torch.arange(cl.numel(), device=values.device) - start[cl]
    keep = rank < T
    state["top_values"][cl[keep], rank[keep]] = cand_val[o][keep].to(torch.float32)
    state["top_tokens"][cl[keep], rank[keep]] = cand_tok[o][keep]


def latent_merge(a: dict, b: dict) -> dict:
    """Merge two per-latent states with the same shapes and histogram range."""
    out = {key: a[key].clone() for key in a}
    for key in ("count", "sum", "sumsq", "hist"):
        out[key] += b[key]
    M, T = a["top_values"].shape
    vals = torch.cat([a["top_values"], b["top_values"]], 1)
    toks = torch.cat([a["top_tokens"], b["top_tokens"]], 1)
    # order by value desc, then token asc; empty slots (-inf) sort last
    o = torch.argsort(toks.masked_fill(toks < 0, torch.iinfo(torch.int64).max), dim=1,
                      stable=True)
    vals, toks = vals.gather(1, o), toks.gather(1, o)
    o = torch.argsort(-vals, dim=1, stable=True)
    out["top_values"] = vals.gather(1, o)[:, :T].contiguous()
    out["top_tokens"] = toks.gather(1, o)[:, :T].contiguous()
    return out
