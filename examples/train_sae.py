"""Train a TopK SAE on MiniLM activations, evaluate it, and look at what its latents fire on.

    python examples/train_sae.py [--out DIR] [--docs N] [--steps N]

Shows: acts.train_sae on an activation store (checkpointed; rerun to resume),
acts.evaluate_sae (FVU, L0, dead latents and the cost of splicing the SAE into the model),
acts.encode_store (a sparse latent store with per-latent statistics and top examples), and
saving in the SAELens layout.
"""
from __future__ import annotations

import json
import os

import torch

import actspace as acts
from _common import english, minilm, parse_args


def main(argv=None):
    args, out = parse_args(__doc__, argv, docs=150, steps=300)
    model, tok = minilm()
    docs = english(args.docs)
    hp = "encoder.layer.3"
    res = acts.capture_to_store(model, tok, docs, hp, os.path.join(out, "acts"),
                                max_length=128, progress=False)
    store = acts.ActivationStore.open(res["stores"][hp])
    print(f"{len(store)} activations of {hp}")

    run = acts.train_sae(store, kind="topk", d_sae=2048, k=32, batch_size=512,
                         steps=args.steps, lr=1e-3, hookpoint=hp,
                         out_dir=os.path.join(out, "sae"), progress=False,
                         log_every=50)
    sae, history = run.sae, run.history           # run.saes for a sweep
    for h in history[::2]:
        print(f"  step {h['step']:4d}  fvu {h['fvu']:.3f}  l0 {h['l0']:.1f}  "
              f"dead {h['dead_fraction']:.2f}")

    report = acts.evaluate_sae(sae, store, model=model, tokenizer=tok, texts=docs[:16])
    rec, ds = report["reconstruction"], report["downstream"]
    print(f"eval: FVU {rec['fvu']:.3f}, L0 {rec['l0']:.1f}, dead {rec['dead_latents']}; "
          f"pooled-embedding cosine spliced {ds['cosine_sae']:.3f} "
          f"(zero-ablation {ds['cosine_zero_ablation']:.3f})")

    lat_dir = os.path.join(out, "latents")
    stats = acts.encode_store(sae, store, lat_dir, tokenizer=tok, context=6)
    with open(os.path.join(lat_dir, "top_examples.json")) as f:
        tops = json.load(f)
    # a selective latent: fires on 0.5%..5% of tokens, the strongest such
    freq = stats.frequency
    pick = torch.where((freq > 0.005) & (freq < 0.05), stats.mean_activation, -1.0)
    lat = int(pick.argmax()) if float(pick.max()) > 0 else int(stats.counts.argmax())
    print(f"latent {lat} fires on {float(freq[lat]):.1%} of tokens; its top examples:")
    for ex in tops[str(lat)][:3]:
        print(f"  {ex['value']:.2f}  {ex['token_text']!r} in {ex['text']!r}")

    sae.save(os.path.join(out, "sae_lens"), format="saelens")
    back = acts.SAE.load(os.path.join(out, "sae_lens"))
    assert back.d_sae == sae.d_sae and back.k == sae.k
    print(f"saved (SAELens layout) in {os.path.join(out, 'sae_lens')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
