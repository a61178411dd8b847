"""`actspace stats STORE`: a readable summary of a store's activation statistics + JSON.

Uses the statistics saved by the capture job; recomputes them from the shards when the
store has none (or with --recompute). The JSON goes to --json, else next to the store's
shards; a store on read-only media keeps the table and gets a note instead of a failure.
"""
from __future__ import annotations

import os
import sys

HELP = "summarise the activation statistics of a store (table on stdout, JSON file)"


def add_arguments(p) -> None:
    p.add_argument("store", help="activation store directory")
    p.add_argument("--json", default=None,
                   help="output JSON (default STORE/stats_summary.json, skipped with a "
                        "note when the store is not writable)")
    p.add_argument("--recompute", action="store_true", help="recompute from the shards")
    p.add_argument("--covariance", action="store_true",
                   help="with --recompute (or no saved stats): also the covariance spectrum")
    p.add_argument("--ratio", type=float, default=100.0,
                   help="massive activation threshold, a multiple of the typical magnitude")


def _stats(store, recompute: bool, covariance: bool):
    from ..capture.writer import fold_shards
    from ..stats.activation import ActivationStats

    st = None if recompute else store.stats
    if st is None:
        st = ActivationStats(store.d, covariance=covariance)
        fold_shards(st, store)
    return st


def _table(rows) -> str:
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{w}}  {v}" for k, v in rows)


def _g(v, spec: str = ".4g") -> str:
    """A number for the table; 'n/a' for the summary's undefined values (None)."""
    return "n/a" if v is None else format(v, spec)


def _write_json(summary: dict, path: str | None, default: str) -> None:
    """The summary as strict JSON to path, or to default when no path was given; a default
    location that cannot be written is reported, not fatal."""
    from .._io import write_json_atomic

    try:
        write_json_atomic(path or default, summary)
    except OSError as e:
        if path:
            raise
        print(f"\nnot writing {default}: {e.strerror}; pass --json PATH", file=sys.stderr)
        return
    print(f"\nwrote {path or default}")


def run(args) -> int:
    from ..capture.store import ActivationStore

    store = ActivationStore.open(args.store)
    st = _stats(store, args.recompute, args.covariance)
    summary = st.summary(ratio=args.ratio)
    summary["store"] = {"path": store.path, "hookpoint": store.hookpoint,
                        "model": store.manifest.get("model"), "rows": len(store),
                        "dtype": str(store.dtype), "shards": len(store.shards)}
    n = summary["norm"]
    rows = [("store", store.path), ("model", store.manifest.get("model")),
            ("hookpoint", store.hookpoint), ("rows (tokens)", f"{len(store):,}"),
            ("d", store.d), ("non-finite values", summary["nonfinite"]),
            ("mean |mean| over channels", _g(summary["mean_abs_mean"])),
            ("mean std over channels", _g(summary["mean_std"])),
            ("max |activation|", _g(summary["max_abs"])),
            ("mean excess kurtosis", _g(summary["mean_kurtosis"])),
            ("zero fraction", _g(summary["zero_fraction"])),
            ("token norm mean ± std", f"{_g(n['mean'])} ± {_g(n['std'])}"),
            ("token norm min / max", f"{_g(n['min'])} / {_g(n['max'])}")]
    for key in ("effective_rank", "participation_ratio", "power_law_alpha"):
        if summary.get(key) is not None:
            rows.append((key.replace("_", " "), _g(summary[key])))
    m = summary["massive"]
    rows.append((f"massive channels (>{args.ratio:g}x {_g(m['reference'], '.3g')})",
                 ", ".join(f"{c['channel']} ({c['ratio']:.0f}x)" for c in m["channels"][:10])
                 or "none"))
    rows.append(("massive tokens (token id@row)",
                 ", ".join(f"{t['token_id']}@{t['row']} ch{t['channel']} ({t['ratio']:.0f}x)"
                           for t in m["tokens"][:10]) or "none"))
    print(_table(rows))
    _write_json(summary, args.json, os.path.join(store.path, "stats_summary.json"))
    return 0
