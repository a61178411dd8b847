"""Small JSON summaries the report is drawn from: per-layer statistics and feature cards.

Why JSON summaries: the report must render from the output directory alone, fast and
without torch-heavy work, and a user can read or plot them with other tools. They are
computed once by pipeline stages from the stores' saved statistics and the latent store.
"""
from __future__ import annotations

import json
import math
import os

TOP_TOKENS = 10   # tokens of largest |activation| listed per hookpoint


def top_tokens(st, tokenizer=None, n: int = TOP_TOKENS) -> list[dict]:
    """The n tracked tokens of largest |activation| (whether massive or not), each
    {"row", "token_id", "channel", "value", "ratio"} (ratio to the median channel RMS) and,
    given a tokenizer, "token" (its string). Shown in the report beside the threshold, so
    a layer without massive activations still says how far its largest values are from it."""
    toks = st.massive_activations(0.0)["tokens"][:n]     # ratio 0: every tracked token
    if tokenizer is not None:
        for t in toks:
            if t["token_id"] >= 0:       # -1: captured without token ids
                t["token"] = tokenizer.decode([t["token_id"]])
    return toks


def layer_summary(store, stats_cfg: dict, tokenizer=None) -> dict:
    """Norm statistics, per-channel RMS and |max|, massive activations, the top tokens by
    magnitude (named by tokenizer when given) and (with a covariance) the eigen-spectrum
    with its power-law fit, for one activation store."""
    import torch

    st = store.stats
    if st is None:
        raise ValueError(f"store {store.path} has no saved statistics covering its rows "
                         "(capture with stats=True; rerun an interrupted capture to finish)")
    rms = (st.mean ** 2 + st.moments["m2"] / st.count.clamp_min(1)).sqrt()     # [d]
    out = {"hookpoint": store.hookpoint, "rows": len(store), "d": store.d,
           "norm": st.norm_stats, "channel_rms": rms.tolist(),
           "channel_absmax": st.absmax.tolist(),
           "nonfinite": int(st.nonfinite.sum()),
           "massive_ratio": stats_cfg["massive_ratio"],
           "massive": st.massive_activations(stats_cfg["massive_ratio"]),
           "top_tokens": top_tokens(st, tokenizer)}
    if st.has_covariance and st.cov_count >= 2:
        lam = st.spectrum()                                                     # [d] desc
        lo, hi = stats_cfg["fit_range"]
        out["spectrum"] = lam.tolist()
        out["effective_rank"] = st.effective_rank()
        out["participation_ratio"] = st.participation_ratio()
        try:
            alpha = st.power_law_alpha((lo, hi))
        except ValueError:          # too few positive eigenvalues in range: no fit to show
            return out
        # the line the fit drew: log lam = c - alpha log i over the fitted ranks
        i0, i1 = max(1, round(lo * st.d)), round(hi * st.d)
        ranks = torch.arange(i0, i1 + 1, dtype=torch.float64)
        vals = lam[i0 - 1:i1]
        keep = vals > 0
        c = float(vals[keep].log().mean() + alpha * ranks[keep].log().mean())
        out.update(alpha=alpha, fit={"rank_lo": i0, "rank_hi": i1, "log_intercept": c})
    return out


def _pick_latents(stats, n_cards: int) -> list[int]:
    """The latents to show: the strongest (largest top activation) among latents that fired
    at least as often as a card has examples, then the most frequent, as many as n_cards."""
    import torch

    counts = stats.counts.cpu()
    top = stats.top_values.cpu()[:, 0]                       # [M], -inf when never fired
    need = min(stats.top_values.shape[1], 4)
    strong = torch.nonzero(counts >= need).flatten()
    strong = strong[torch.argsort(-top[strong])].tolist()
    chosen = strong[:n_cards]
    if len(chosen) < n_cards:
        for lat in torch.argsort(-counts).tolist():
            if counts[lat] == 0 or len(chosen) >= n_cards:
                break
            if lat not in chosen:
                chosen.append(lat)
    return chosen


def display_tokens(tokenizer, ids: list[int]) -> list[str]:
    """Token strings that concatenate to the decoded text (each with its own leading space,
    word pieces joined): incremental decoding, so it works for WordPiece and byte-level
    BPE alike; falls back to decoding the token alone where the prefixes disagree."""
    out, prev = [], ""
    for i in range(len(ids)):
        cur = tokenizer.decode(ids[:i + 1])
        out.append(cur[len(prev):] if cur.startswith(prev) else " " + tokenizer.decode([ids[i]]))
        prev = cur
    return out


def feature_cards(sae, store, latent_dir, tokenizer, n_cards: int) -> dict:
    """{"d_sae", "frequency": [d_sae] firings per token, "cards"}: cards for the top latents: frequency, mean activation and max-activating examples,
    each with its context tokens and the latent's activation on every one of them (the
    context rows are re-encoded from the activation store, so every token gets a value)."""
    import torch

    from ..decompose.latents import _sae_apply_dtype
    from ..stats.latent import LatentStats, code_parts

    stats = LatentStats.load(latent_dir)
    with open(os.path.join(latent_dir, "top_examples.json"), encoding="utf-8") as f:
        examples = json.load(f)
    cards = []
    for lat in _pick_latents(stats, n_cards):
        card = {"latent": lat, "count": int(stats.counts[lat]),
                "frequency": float(stats.frequency[lat]),
                "mean_activation": float(stats.mean_activation[lat]), "examples": []}
        for e in examples.get(str(lat), []):
            ids = e.get("context_ids")
            if not ids:
                continue
            row0 = e["token"] - e["context_index"]
            with torch.no_grad():
                x = _sae_apply_dtype(sae, store.read(row0, row0 + len(ids)))   # [n, d]
                v, ix = code_parts(sae.encode(x))                               # [n, k]
                acts = (v.float() * (ix == lat)).sum(1)                          # [n]
            card["examples"].append({
                "value": e["value"], "centre": e["context_index"],
                "tokens": display_tokens(tokenizer, ids),
                "acts": [a if math.isfinite(a) else 0.0 for a in acts.tolist()]})
        cards.append(card)
    return {"d_sae": stats.d_sae, "frequency": stats.frequency.tolist(), "cards": cards}
