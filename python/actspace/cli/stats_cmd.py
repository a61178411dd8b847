"""`actspace stats STORE`: a readable summary of a store's activation statistics + JSON.

Uses the statistics saved by the capture job; recomputes them from the shards when the
store has none (or with --recompute).
"""
from __future__ import annotations

import json
import os

HELP = "summarise the activation statistics of a store (table on stdout, JSON file)"


def add_arguments(p) -> None:
    p.add_argument("store", help="activation store directory")
    p.add_argument("--json", default=None, help="output JSON (default STORE/stats_summary.json)")
    p.add_argument("--recompute", action="store_true", help="recompute from the shards")
    p.add_argument("--covariance", action="store_true",
                   help="with --recompute (or no saved stats): also the covariance spectrum")
    p.add_argument("--ratio", type=float, default=100.0,
                   help="massive activation threshold, a multiple of the typical magnitude")


def _stats(store, recompute: bool, covariance: bool):
    from ..stats.activation import ActivationStats

    st = None if recompute else store.stats
    if st is None:
        st = ActivationStats(store.d, covariance=covariance)
        for i in range(len(store.shards)):
            st.update(store.shard(i), store.shard(i, "token_ids"))
    return st


def _table(rows) -> str:
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{w}}  {v}" for k, v in rows)


def run(args) -> int:
    from ..capture.store import ActivationStore

    store = ActivationStore.open(args.store)
    st = _stats(store, args.recompute, args.covariance)
    summary = st.summary()
    summary["massive"] = st.massive_activations(args.ratio)
    summary["store"] = {"path": store.path, "hookpoint": store.hookpoint,
                        "model": store.manifest.get("model"), "rows": len(store),
                        "dtype": str(store.dtype), "shards": len(store.shards)}
    n = summary["norm"]
    rows = [("store", store.path), ("model", store.manifest.get("model")),
            ("hookpoint", store.hookpoint), ("rows (tokens)", f"{len(store):,}"),
            ("d", store.d), ("non-finite values", summary["nonfinite"]),
            ("mean |mean| over channels", f"{summary['mean_abs_mean']:.4g}"),
            ("mean std over channels", f"{summary['mean_std']:.4g}"),
            ("max |activation|", f"{summary['max_abs']:.4g}"),
            ("mean excess kurtosis", f"{summary['mean_kurtosis']:.4g}"),
            ("zero fraction", f"{summary['zero_fraction']:.4g}"),
            ("token norm mean ± std", f"{n['mean']:.4g} ± {n['std']:.4g}"),
            ("token norm min / max", f"{n['min']:.4g} / {n['max']:.4g}")]
    for key in ("effective_rank", "participation_ratio", "power_law_alpha"):
        if summary.get(key) is not None:
            rows.append((key.replace("_", " "), f"{summary[key]:.4g}"))
    m = summary["massive"]
    rows.append((f"massive channels (>{args.ratio:g}x {m['reference']:.3g})",
                 ", ".join(f"{c['channel']} ({c['ratio']:.0f}x)" for c in m["channels"][:10])
                 or "none"))
    rows.append(("massive tokens (token id@row)",
                 ", ".join(f"{t['token_id']}@{t['row']} ch{t['channel']} ({t['ratio']:.0f}x)"
                           for t in m["tokens"][:10]) or "none"))
    print(_table(rows))
    out = args.json or os.path.join(store.path, "stats_summary.json")
    with open(out, "w") as f:
        json.dump(summary, f, indent=1)
    print(f"\nwrote {out}")
    return 0
