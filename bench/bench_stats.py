"""Benchmark of the stats kernels against torch, in one run (ratios, not absolute times).

moments: our one-pass kernel vs the fastest plain-torch computation of the same set we
found (mean, M2/M3/M4 from the deviations, amin/amax, absmax, zeros, non-finite counts) on
float32, plus the achieved GB/s against the measured copy bandwidth (x.clone() of the same
size). The data is finite, so the torch baseline may skip all masking (its fast path);
ours does the same work either way. torch accumulates in float32, ours in float64.

latent: our latent_update (counts, sums, histogram, top-T) vs the matmul a topk_encode of
the same batch needs at least (x [N, d] @ W_enc^T [d, M]); the matmul is timed on a slice of
rows and scaled linearly to N (it is linear in N), to keep the run short. On CUDA also with
a skewed code (latent 0 on every row: one warp folds N entries).

    python bench/bench_stats.py [--quick] [--out bench/out/bench_stats.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from actspace.ops import stats as S
from actspace.ops._common import core


def timeit(fn, reps: int, warmup: int = 1, cpu: list | None = None) -> float:
    """Median wall time of fn() in seconds; appends the median process CPU time (all
    threads) to cpu when given: on a shared machine it is the steadier of the two."""
    for _ in range(warmup):
        fn()
    times, cpus = [], []
    for _ in range(reps):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    if cpu is not None:
        cpu.append(statistics.median(cpus))
    return statistics.median(times)


def torch_moments(x: torch.Tensor) -> dict:
    """The same statistics with the fastest plain torch ops we found on x [N, d].

    Finite data take a fast path: a finite column sum proves the column has no NaN/Inf, so
    the non-finite count needs no pass (torch's bool reductions, var_mean and aminmax over
    dim 0 are several times slower than these elementwise + sum(0) forms on CPU)."""
    N, d = x.shape
    mean = x.mean(0)
    if not bool(torch.isfinite(mean).all()):
        raise ValueError("the torch baseline only implements the finite fast path")
    nonfinite = torch.zeros(d, dtype=torch.int64, device=x.device)
    dev = x - mean
    d2 = dev * dev
    m2 = d2.sum(0)
    m3 = (d2 * dev).sum(0)
    m4 = (d2 * d2).sum(0)
    mn, mx = x.amin(0), x.amax(0)
    zeros = (x == 0).sum(0, dtype=torch.int32)
    return {"count": torch.full((d,), N, device=x.device) - nonfinite, "mean": mean, "m2": m2, "m3": m3,
            "m4": m4, "min": mn, "max": mx, "absmax": torch.maximum(-mn, mx), "zeros": zeros,
            "nonfinite": nonfinite}


def synced(fn, device: str):
    """fn, followed by a device synchronisation on CUDA (so wall times are whole)."""
    if device != "cuda":
        return fn
    return lambda: (fn(), torch.cuda.synchronize())


def bench_moments(N: int, d: int, reps: int, device: str = "cpu") -> dict:
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(N, d, generator=g) * 2 + 5).to(device)
    nbytes = x.numel() * x.element_size()
    state = S.moments_init(d, device=device)

    def ours():
        for v in state.values():  # fresh state each time (cost: a few d-sized fills)
            v.zero_()
        S.moments_update(state, x, backend="kernel")

    cpu: list = []
    t_torch = timeit(synced(lambda: torch_moments(x), device), reps, cpu=cpu)
    t_ours = timeit(synced(ours, device), reps, cpu=cpu)
    t_copy = timeit(synced(lambda: x.clone(), device), reps)
    # sanity: both computed the same thing
    ref = torch_moments(x.double())
    rel = ((state["m2"] - ref["m2"]).abs() / ref["m2"]).max().item()
    return {"N": N, "d": d, "dtype": "float32", "device": device, "t_torch_s": t_torch, "t_ours_s": t_ours,
            "speedup": t_torch / t_ours, "cpu_torch_s": cpu[0], "cpu_ours_s": cpu[1],
            "speedup_cpu_time": cpu[0] / cpu[1], "t_copy_s": t_copy,
            "copy_GBps": 2 * nbytes / t_copy / 1e9,  # clone reads and writes
            "ours_GBps": nbytes / t_ours / 1e9, "torch_GBps": nbytes / t_torch / 1e9,
            "ours_read_vs_copy_read": (nbytes / t_ours) / (nbytes / t_copy),
            "m2_max_rel_err_vs_f64": rel}


def bench_latent(N: int, k: int, M: int, d: int, T: int, reps: int, device: str = "cpu",
                 skewed: bool = False) -> dict:
    g = torch.Generator().manual_seed(1)
    # a plausible code: top-k of random positive scores, int32 indices, sorted per row
    vals = torch.rand(N, k, generator=g).sort(1, descending=True).values * 4
    idx = torch.stack([torch.randperm(M, generator=g)[:k] for _ in range(min(N, 64))])
    idx = idx.repeat((N + 63) // 64, 1)[:N].to(torch.int32)
    idx = (idx + torch.arange(N, dtype=torch.int32).unsqueeze(1) * 7919) % M  # spread latents
    if skewed:
        idx[:, 0] = 0  # latent 0 on every row
    vals, idx = vals.to(device), idx.to(device)
    state = S.latent_init(M, top_t=T, device=device)
    offset = [0]

    def ours():
        S.latent_update(state, vals, idx, offset[0], backend="kernel")
        offset[0] += N

    t_ours = timeit(synced(ours, device), reps)
    rows = min(N, 512)
    x = torch.randn(rows, d, generator=g).to(device)
    W = (torch.randn(M, d, generator=g) / d**0.5).to(device)
    out = torch.empty(rows, M, device=device)
    t_mm = timeit(synced(lambda: torch.matmul(x, W.t(), out=out), device),
                  max(1, reps // 2)) * (N / rows)
    return {"N": N, "k": k, "M": M, "d": d, "T": T, "values_dtype": "float32",
            "device": device, "skewed": skewed,
            "t_latent_s": t_ours, "t_encode_matmul_s": t_mm,
            "latent_fraction_of_matmul": t_ours / t_mm,
            "workspace_bytes": (M + 1 + N * k) * 8}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small shapes, few repeats")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out",
                                                 "bench_stats.json"))
    p.add_argument("--cuda-only", action="store_true",
                   help="only the CUDA section (GPU machine time is scarce)")
    args = p.parse_args(argv)
    if core() is None:
        raise SystemExit("actspace._core is not built")
    if args.quick:
        moment_shapes, reps = [(2048, 256)], 5
        latent_cfg = dict(N=1024, k=32, M=8192, d=256, T=16, reps=3)
    else:
        moment_shapes, reps = [(8192, 768), (8192, 4096)], 5
        latent_cfg = dict(N=8192, k=64, M=65536, d=768, T=16, reps=5)
    res = {"machine": platform.processor() or platform.machine(),
           "torch": torch.__version__, "threads": torch.get_num_threads(),
           "build": core().build_info(), "moments": [], "latent": None}
    devices = [] if args.cuda_only else ["cpu"]
    if torch.cuda.is_available() and core().build_info()["cuda"]:
        devices.append("cuda")
    elif args.cuda_only:
        raise SystemExit("--cuda-only: no CUDA device or no CUDA build")
    for N, d in moment_shapes:
        for device in devices:
            r = bench_moments(N * (4 if device == "cuda" else 1), d, reps, device)
            res["moments"].append(r)
            print(f"moments {device} N={r['N']} d={d} f32: torch {r['t_torch_s']*1e3:.2f} ms, ours "
                  f"{r['t_ours_s']*1e3:.2f} ms, speedup {r['speedup']:.2f}x (CPU time "
                  f"{r['speedup_cpu_time']:.2f}x), ours {r['ours_GBps']:.1f}"
                  f" GB/s read vs copy {r['copy_GBps']:.1f} GB/s (r+w)")
    latent_runs = [] if args.cuda_only else [("cpu", False)]
    if "cuda" in devices:
        latent_runs += [("cuda", False), ("cuda", True)]
    res["latent"] = []
    for device, skewed in latent_runs:
        r = bench_latent(**latent_cfg, device=device, skewed=skewed)
        res["latent"].append(r)
        print(f"latent {device}{' skewed' if skewed else ''} N={r['N']} k={r['k']} "
              f"M={r['M']}: {r['t_latent_s']*1e3:.2f} ms = "
              f"{100 * r['latent_fraction_of_matmul']:.2f}% of the encode matmul "
              f"({r['t_encode_matmul_s']*1e3:.1f} ms, d={r['d']})")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
