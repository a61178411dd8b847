"""Capture two layers of all-MiniLM-L6-v2 into activation stores and read their statistics.

    python examples/capture_and_stats.py [--out DIR] [--docs N]

Shows: acts.capture (in-memory, one forward), acts.capture_to_store (the crash-safe offline
job: run it twice and the second run does nothing), the store's random access and batches,
and ActivationStats (moments, spectrum, power-law alpha, massive activations).
"""
from __future__ import annotations

import torch

import actspace as acts
from _common import english, minilm, parse_args


def main(argv=None):
    args, out = parse_args(__doc__, argv, docs=60)
    model, tok = minilm()
    docs = english(args.docs)

    # 1. in memory: the residual stream after layer 3 for one batch
    batch = tok(docs[:4], return_tensors="pt", padding=True, truncation=True, max_length=128)
    with acts.capture(model, ["encoder.layer.3"]) as cap, torch.no_grad():
        model(**batch)
    h = cap["encoder.layer.3"]                              # [B, T, 384]
    print(f"capture: encoder.layer.3 -> {tuple(h.shape)}")

    # 2. offline: one store per hookpoint, statistics accumulated on the way
    hookpoints = ["encoder.layer.2", "encoder.layer.5"]
    res = acts.capture_to_store(model, tok, docs, hookpoints, out, max_length=128,
                                batch_size=16, covariance=True, progress=False)
    print(f"stored {res['tokens']} tokens per hookpoint in {out}")
    again = acts.capture_to_store(model, tok, docs, hookpoints, out, max_length=128,
                                  batch_size=16, covariance=True, progress=False)
    print(f"second run (complete store): {again['tokens']} new tokens")

    for hp in hookpoints:
        store = acts.ActivationStore.open(res["stores"][hp])
        first = store[:8]                                   # rows 0..7, [8, 384]
        n_batches = sum(1 for _ in store.iter_batches(256, shuffle=True, seed=0))
        st = store.stats
        mass = st.massive_activations(ratio=20)
        print(f"\n{hp}: {len(store)} rows, d={store.d}, {store.dtype}, "
              f"{n_batches} shuffled batches of 256; first rows {tuple(first.shape)}")
        print(f"  mean |mean| {st.mean.abs().mean():.3f}   mean std {st.std.mean():.3f}   "
              f"max |x| {st.absmax.max():.1f}   max kurtosis {st.kurtosis.max():.1f}")
        print(f"  spectrum: alpha {st.power_law_alpha():.2f}   effective rank "
              f"{st.effective_rank():.1f}   participation ratio {st.participation_ratio():.1f}")
        top = int(st.absmax.argmax())
        print(f"  largest channel {top}: |x| up to {float(st.absmax[top]) / mass['reference']:.0f}x "
              f"the typical magnitude; channels over 20x: "
              f"{[c['channel'] for c in mass['channels']][:8]}")
        assert store.verify() == []                         # every shard's sha256 matches
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
