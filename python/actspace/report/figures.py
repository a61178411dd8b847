"""Figures of the HTML report, drawn with matplotlib and returned as base64 PNG data URIs.

Why PNG data URIs: the report must be one self-contained file that opens offline, with no
scripts or fonts fetched; a data URI image needs nothing but the browser. matplotlib is
imported lazily (Agg backend) so importing actspace.report stays cheap.
"""
from __future__ import annotations

import base64
import io
import math


def _plt():
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("the report needs matplotlib: pip install matplotlib") from None

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    _plt().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def norm_profile(layers: list[dict]) -> str:
    """Mean token L2 norm (+-1 std, min and max) at each captured hookpoint."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    x = list(range(len(layers)))
    mean = [s["norm"]["mean"] for s in layers]
    std = [s["norm"]["std"] for s in layers]
    ax.fill_between(x, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                    alpha=0.25, label="mean ± std")
    ax.plot(x, mean, "o-", label="mean")
    ax.plot(x, [s["norm"]["max"] for s in layers], "v--", lw=1, label="max")
    ax.plot(x, [s["norm"]["min"] for s in layers], "^--", lw=1, label="min")
    ax.set_xticks(x, [s["hookpoint"] for s in layers], rotation=20, fontsize=8)
    ax.set_ylabel("token L2 norm")
    ax.set_title("Activation norm by hookpoint")
    ax.legend(fontsize=8)
    return _png(fig)


def channel_magnitudes(s: dict) -> str:
    """Per-channel |max| and RMS, with the massive-activation threshold."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.0))
    ch = range(len(s["channel_absmax"]))
    ax.bar(ch, s["channel_absmax"], width=1.0, color="#d62728", label="|max|")
    ax.bar(ch, s["channel_rms"], width=1.0, color="#1f77b4", label="RMS")
    thr = s["massive_ratio"] * s["massive"]["reference"]
    if math.isfinite(thr) and thr > 0:
        ax.axhline(thr, color="k", ls="--", lw=1, label=f"{s['massive_ratio']:g}× median RMS")
    ax.set_yscale("log")
    pos = sorted(v for v in s["channel_rms"] if v > 0)
    if pos:   # near-dead channels would stretch the log axis over 20 decades
        ax.set_ylim(bottom=max(pos[0], 1e-3 * pos[len(pos) // 2]) * 0.5)
    ax.set_xlabel("channel")
    ax.set_ylabel("magnitude")
    ax.set_title(f"Massive activations: {len(s['massive']['channels'])} channel(s) above threshold",
                 fontsize=10)
    ax.legend(fontsize=8)
    return _png(fig)


def spectrum(s: dict) -> str:
    """Covariance eigenvalues against rank on log-log axes, with the fitted power law."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.0, 3.4))
    lam = [v for v in s["spectrum"] if v > 0]
    ax.loglog(range(1, len(lam) + 1), lam, ".", ms=3, label="eigenvalues")
    if "alpha" in s:
        f = s["fit"]
        r = [f["rank_lo"], f["rank_hi"]]
        ax.loglog(r, [math.exp(f["log_intercept"]) * i ** -s["alpha"] for i in r], "r-", lw=2,
                  label=f"fit: λ ∝ i^-α, α = {s['alpha']:.3f}")
    ax.set_xlabel("rank i")
    ax.set_ylabel("eigenvalue λ")
    ax.set_title("Eigen-spectrum")
    ax.legend(fontsize=8)
    return _png(fig)


def training_curves(history: list[dict]) -> str:
    """FVU, L0 and dead fraction against optimizer step."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(9.6, 2.8))
    steps = [h["step"] for h in history]
    for ax, key, title in zip(axes, ("fvu", "l0", "dead_fraction"),
                              ("FVU", "L0 (active latents / token)", "dead fraction")):
        ax.plot(steps, [h[key] if h[key] is not None else float("nan") for h in history])
        ax.set_xlabel("step")
        ax.set_title(title, fontsize=10)
        if key == "fvu":
            ax.set_yscale("log")
    fig.tight_layout()
    return _png(fig)


def firing_histogram(freq: list[float]) -> str:
    """Histogram of log10 firing frequency over latents (dead latents counted apart)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.0, 3.0))
    live = [math.log10(f) for f in freq if f > 0]
    dead = len(freq) - len(live)
    if live:
        ax.hist(live, bins=40, color="#2ca02c")
    ax.set_xlabel("log10 firing frequency (fires / token)")
    ax.set_ylabel("latents")
    ax.set_title(f"Latent firing frequency ({dead} never fired)", fontsize=10)
    return _png(fig)


def steering(rows: list[dict], cost_key: str, units: str) -> str:
    """Target effect and the cost (KL or cosine change) against alpha."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8.4, 3.0))
    alphas = [r["alpha"] for r in rows]
    a1.plot(alphas, [r.get("effect", float("nan")) for r in rows], "o-")
    a1.set_title("target effect", fontsize=10)
    a2.plot(alphas, [r.get(cost_key, float("nan")) for r in rows], "o-", color="#d62728")
    a2.set_title({"kl": "KL(base ‖ steered) per token",
                  "cos_change": "1 − cos(base, steered) embedding"}.get(cost_key, cost_key),
                 fontsize=10)
    for ax in (a1, a2):
        ax.set_xlabel(f"alpha ({units})")
    fig.tight_layout()
    return _png(fig)
