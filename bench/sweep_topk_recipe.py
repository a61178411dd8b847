"""Sweep actspace's TopK training recipe (lr, warm-up, AuxK dead window and weight) on a
bench_peers data cache: per setting, held-out FVU, train FVU and the fraction of latents
that never fire on the training set (bench_peers' dead measure). One seed per row.

    PYTHONPATH=$PWD/python python bench/sweep_topk_recipe.py /tmp/minilm_l3_whole.pt \\
        '{"steps": 100, "lr": 0.004, "warmup_steps": 30, "dead_tokens": 20480}' ...

Each JSON object holds train_sae keywords plus "steps"; d_sae 6144, k 32, batch 4096 as in
bench_peers. Rows print as they finish (bench/RESULTS.md, "AuxK's dead window").
"""
import json
import sys
import time

import torch

import actspace as acts


def fvu(x, x_hat):
    return float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


@torch.no_grad()
def dead_fraction(sae, x, batch=4096):
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    for a in range(0, x.shape[0], batch):
        c = sae.encode(x[a:a + batch])
        ok = (c.values > 0) & (c.indices >= 0)
        fired[c.indices[ok].long()] = True
    return 1 - float(fired.float().mean())


def main():
    torch.set_num_threads(2)
    data = torch.load(sys.argv[1])
    x, x_test = data["train"].float(), data["test"].float()
    for spec in sys.argv[2:]:
        kw = json.loads(spec)
        steps = kw.pop("steps")
        t = time.perf_counter()
        sae = acts.train_sae(x, kind="topk", d_sae=6144, k=32, batch_size=4096, steps=steps,
                             seed=0, progress=False, checkpoint_every=0, **kw).sae
        with torch.no_grad():
            row = {"steps": steps, **kw, "fvu": round(fvu(x_test, sae(x_test)[0]), 4),
                   "train_fvu": round(fvu(x, sae(x)[0]), 4),
                   "dead": round(dead_fraction(sae, x), 4),
                   "seconds": round(time.perf_counter() - t, 1)}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
