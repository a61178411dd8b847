"""Latent-sharded TopK SAE training: memory per rank and step time, against one process.

The same SAE (d_in, d_sae, k) and the same batches are trained for a few steps by one
process (all CPU threads) and by `--world` gloo ranks on this machine with
``train_sae(shard_latents=True)`` (the threads split between the ranks). Reported: each
side's peak resident memory (ru_maxrss, whole process: model-independent baseline
included) and the median step time after warm-up. On one CPU the ranks share the cores,
so the time ratio shows the cost of the collectives, not a speed-up; the memory column is
what sharding is for (each rank holds 1/world of the dictionary and of its Adam state).

    python bench/bench_train_shard.py [--d 768] [--d-sae 65536] [--k 32] [--batch 1024]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import tempfile
import time

import torch


def _steps(shard: bool, args, out_file: str) -> None:
    """Train and write {peak_rss_mb, step_s} of this process to out_file."""
    from actspace.decompose.train import train_sae

    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch * (args.steps + 1), args.d, generator=g)
    stamps = [time.perf_counter()]

    class Timed(list):     # an iterable of batches that stamps the time each is taken
        def __iter__(self):
            for b in super().__iter__():
                stamps.append(time.perf_counter())
                yield b

    data = Timed(x.split(args.batch))
    train_sae(data, d_sae=args.d_sae, k=args.k, batch_size=args.batch, steps=args.steps + 1,
              lr=1e-3, progress=False, shard_latents=shard, log_every=10 ** 9,
              dead_tokens=10 ** 9)
    times = [b - a for a, b in zip(stamps[2:], stamps[3:])]   # skip the warm-up step
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open(out_file, "w") as f:
        json.dump({"peak_rss_mb": rss, "step_s": statistics.median(times)}, f)


def _rank(rank, world, port, args, tmp):
    import torch.distributed as dist

    torch.set_num_threads(max(1, args.threads // world))
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            init_method=f"tcp://127.0.0.1:{port}")
    try:
        _steps(True, args, os.path.join(tmp, f"rank{rank}.json"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _single(args, tmp):
    torch.set_num_threads(args.threads)
    _steps(False, args, os.path.join(tmp, "single.json"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--d-sae", type=int, default=65536)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out",
                                                  "bench_train_shard.json"))
    args = ap.parse_args()
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        # each side in fresh processes, so peak memory is that side's alone
        mp.start_processes(_single_entry, args=(args, tmp), nprocs=1, start_method="spawn")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(_rank, args=(args.world, port, args, tmp), nprocs=args.world)
        single = json.load(open(os.path.join(tmp, "single.json")))
        ranks = [json.load(open(os.path.join(tmp, f"rank{r}.json"))) for r in range(args.world)]
    params_mb = 2 * args.d_sae * args.d * 4 / 2 ** 20
    res = {"d": args.d, "d_sae": args.d_sae, "k": args.k, "batch": args.batch,
           "world": args.world, "threads": args.threads,
           "dictionary_mb_f32": params_mb,
           "single": single, "ranks": ranks,
           "rss_ratio_rank_over_single": max(r["peak_rss_mb"] for r in ranks)
           / single["peak_rss_mb"],
           "step_ratio_sharded_over_single": max(r["step_s"] for r in ranks) / single["step_s"],
           "load_avg": os.getloadavg()[0]}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))


def _single_entry(i, args, tmp):
    _single(args, tmp)


if __name__ == "__main__":
    main()
