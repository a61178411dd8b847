"""What AuxK's default dead window costs: 100-step TopK runs (d_sae 6144, k 32, batch 4096)
with Gao's 10M-token window (AuxK idle in so short a run) and with the default
(train_loop.default_dead_tokens), interleaved over rounds; seconds each and the mean and
largest fraction of latents inside the window during the run.

    PYTHONPATH=$PWD/python python bench/auxk_window_cost.py /tmp/minilm_l3_whole.pt
"""
import json
import sys
import time

import torch

import actspace as acts


def main():
    torch.set_num_threads(2)
    x = torch.load(sys.argv[1])["train"].float()
    for rnd in range(int(sys.argv[2]) if len(sys.argv) > 2 else 2):
        for window in (10_000_000, None):
            t = time.perf_counter()
            r = acts.train_sae(x, kind="topk", d_sae=6144, k=32, batch_size=4096, steps=100,
                               seed=0, progress=False, checkpoint_every=0,
                               dead_tokens=window, log_every=1)
            s = time.perf_counter() - t
            dead = [h["dead_fraction"] for h in r.history]
            print(json.dumps({"round": rnd, "dead_tokens": window, "seconds": round(s, 2),
                              "mean_dead": round(sum(dead) / len(dead), 4),
                              "max_dead": round(max(dead), 4)}), flush=True)


if __name__ == "__main__":
    main()
