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
from bench_peers import Actspace, evaluate, fvu    # bench_peers' measures, not a copy


def main():
    torch.set_num_threads(2)
    data = torch.load(sys.argv[1])
    x, x_test = data["train"].float(), data["test"].float()
    for spec in sys.argv[2:]:
        kw = json.loads(spec)
        steps = kw.pop("steps")
        t = time.perf_counter()
        runner = Actspace(x.shape[1], None, 0)
        runner.sae = acts.train_sae(x, kind="topk", d_sae=6144, k=32, batch_size=4096,
                                    steps=steps, seed=0, progress=False, checkpoint_every=0,
                                    **kw).sae
        m = evaluate(runner, x, x_test, 6144)       # held-out FVU, never-firing fraction
        row = {"steps": steps, **kw, "fvu": round(m["fvu"], 4),
               "train_fvu": round(fvu(x, runner.reconstruct(x)), 4),
               "dead": round(m["dead"], 4), "seconds": round(time.perf_counter() - t, 1)}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
