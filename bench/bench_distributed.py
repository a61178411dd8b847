"""Data-parallel train_sae: one process vs N gloo ranks on the same global batches (CPU).

Each configuration trains the same topk SAE for --steps steps on an in-memory tensor; the
CPU threads are split evenly over the ranks (same total compute), so the ratio
world1 / worldN of step times shows what data parallelism plus its all-reduces cost or gain
on this machine. Wall time of the timed steps only (after a warm-up run and a barrier);
median of --repeats. JSON to stdout. On GPUs run it with more ranks under torchrun instead.
"""
import argparse
import json
import os
import socket
import statistics
import tempfile
import time

import torch


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(x, a):
    from actspace.decompose.train import train_sae

    kw = dict(d_sae=a.d_sae, k=a.k, batch_size=a.batch, steps=a.steps, lr=1e-3,
              progress=False, shuffle=True, log_every=a.steps)
    train_sae(x, **dict(kw, steps=2))                 # warm-up
    times = []
    for _ in range(a.repeats):
        _barrier()
        t = time.perf_counter()
        train_sae(x, **kw)
        _barrier()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _barrier():
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def _rank(rank, world, port, threads, x, a, out):
    import torch.distributed as dist

    torch.set_num_threads(threads)
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            init_method=f"tcp://127.0.0.1:{port}")
    t = _train(x, a)
    # what the gradient all-reduce alone costs per step (W_enc, W_dec, biases of one SAE)
    flat = torch.randn(2 * a.d_sae * a.d + a.d_sae + a.d)
    dist.all_reduce(flat)
    t0 = time.perf_counter()
    for _ in range(a.steps):
        dist.all_reduce(flat)
    ar = (time.perf_counter() - t0) / a.steps
    if rank == 0:
        with open(out, "w") as f:
            json.dump([t, ar], f)
    dist.barrier()
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    x = torch.randn(a.batch * a.steps, a.d, generator=torch.Generator().manual_seed(0))
    torch.set_num_threads(a.threads)
    t1 = _train(x, a)
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "t.json")
        mp.spawn(_rank, args=(a.world, _free_port(), max(a.threads // a.world, 1), x, a, out),
                 nprocs=a.world, join=True)
        with open(out) as f:
            tn, ar = json.load(f)
    print(json.dumps({"shape": {"d": a.d, "d_sae": a.d_sae, "k": a.k, "batch": a.batch,
                                "dtype": "float32"},
                      "steps": a.steps, "threads": a.threads, "world": a.world,
                      "step_s_world1": t1 / a.steps, f"step_s_world{a.world}": tn / a.steps,
                      "speedup": t1 / tn, "grad_allreduce_s": ar}, indent=1))


if __name__ == "__main__":
    main()
