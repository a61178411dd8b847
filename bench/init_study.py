"""Which initial dictionary trains a TopK SAE best: measured on real activations.

MiniLM layer-3 residual stream (tests/_minilm.py: 23.6k training tokens, 4.4k held out by
whole documents). Every variant trains with the same recipe (train_sae with saes=[...]: the
default lr, warm-up and decay, AuxK) on the same batches; only the initial W_enc, W_dec and
b_dec differ. Reported: held-out FVU after each step budget (a separate run per budget, since
the schedule depends on it) and the fraction of latents that never fire on the training set.

Variants (d = d_in; decoder rows unit norm in all):
  unit_tied      W_enc = W_dec, random unit rows (actspace before this study)
  tied_s{S}      W_enc = S · W_dec  (S = 0.58 ≈ the row norm of nn.Linear's default init)
  linear         sparsify's: W_enc ~ U(-1/√d, 1/√d) (nn.Linear default), W_dec = its rows normalised
  untied_s{S}    W_enc: its own random rows of norm S
  ..._b0         b_dec starts at 0 instead of the first batch's mean

    python bench/init_study.py [--steps 100 300] [--variants ...] [--k 32] [--out bench/out/init_study.json]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import actspace as acts  # noqa: E402
from _minilm import held_out_fvu, minilm_split  # noqa: E402


def make_sae(variant, d, M, k, seed):
    g = torch.Generator().manual_seed(seed)
    sae = acts.SAE(d, M, kind="topk", k=k, init=False)
    with torch.no_grad():
        name = variant.removesuffix("_b0")
        if name == "linear":
            bound = 1 / math.sqrt(d)
            E = torch.rand(M, d, generator=g) * 2 * bound - bound
            D = E / E.norm(dim=1, keepdim=True)
        else:
            D = torch.randn(M, d, generator=g)
            D /= D.norm(dim=1, keepdim=True)
            if name == "unit_tied":
                E = D.clone()
            elif name.startswith("tied_s"):
                E = D * float(name[6:])
            elif name.startswith("untied_s"):
                E = torch.randn(M, d, generator=g)
                E *= float(name[8:]) / E.norm(dim=1, keepdim=True)
            elif name == "default":
                sae.init_weights(seed=seed)
                E, D = sae.W_enc.clone(), sae.W_dec.clone()
            else:
                raise ValueError(variant)
        sae.W_enc.copy_(E)
        sae.W_dec.copy_(D)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def dead_fraction(sae, x):
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    with torch.no_grad():
        for a in range(0, x.shape[0], 4096):
            c = sae.encode(x[a:a + 4096])
            ok = (c.values > 0) & (c.indices >= 0)
            fired[c.indices[ok].long()] = True
    return 1 - float(fired.float().mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[100, 300])
    ap.add_argument("--variants", nargs="+",
                    default=["unit_tied", "linear", "tied_s0.58", "tied_s0.25", "tied_s0.1",
                             "untied_s0.58", "linear_b0"])
    ap.add_argument("--k", type=int, nargs="+", default=[32])
    ap.add_argument("--d_sae", type=int, default=3072)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default="/tmp/train_minilm_l3.pt")
    ap.add_argument("--out", default="bench/out/init_study.json")
    a = ap.parse_args()
    torch.set_num_threads(2)
    x, x_test = minilm_split(cache=a.cache)
    rows = []
    for k in a.k:
        for steps in a.steps:
            for v in a.variants:
                sae = make_sae(v, x.shape[1], a.d_sae, k, a.seed)
                t0 = time.perf_counter()
                acts.train_sae(x, saes=[sae], batch_size=a.batch, steps=steps, lr=a.lr,
                               b_dec_init=None if v.endswith("_b0") else "mean",
                               seed=a.seed, progress=False, checkpoint_every=0)
                r = {"variant": v, "k": k, "steps": steps, "fvu": held_out_fvu(sae, x_test),
                     "dead": dead_fraction(sae, x), "seconds": time.perf_counter() - t0}
                rows.append(r)
                print(json.dumps(r), flush=True)
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"args": vars(a), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
