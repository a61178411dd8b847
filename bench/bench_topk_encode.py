"""Benchmark: actspace topk_encode against the bare matmul and the dense torch baseline.

    python bench/bench_topk_encode.py [--quick] [--repeats R] [--dtypes float32,bfloat16]

Methods, timed in one process, interleaved round-robin so machine noise hits all alike
(warm-up first, median of the repeats):
  matmul    x @ W_encᵀ (the floor: ours does this work plus the merge)
  baseline  torch.topk(torch.relu(torch.addmm(b_enc, x, W_encᵀ)), k)   (holds N×M)
  ours      actspace.ops.topk_encode(x, W_enc, b_enc, k)
Peak extra memory: CPU — each method runs once in a fresh subprocess: peak RSS (VmHWM,
reset just before the call) minus the RSS before the call; CUDA — max_memory_allocated
minus the memory allocated before the call. Writes bench/out/bench_topk_encode.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

CPU_FULL = [(4096, 768, 65536, 64)]
CPU_QUICK = [(1024, 768, 8192, 32)]
CUDA_FULL = [(8192, 4096, 131072, 64), (8192, 768, 24576, 64)]
CUDA_QUICK = [(2048, 768, 24576, 64)]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def make_inputs(N, d, M, dtype, device):
    # in place, so building the inputs leaves no peak above the RSS it ends with
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(N, d, generator=g, device=device, dtype=dtype)
    W = torch.randn(M, d, generator=g, device=device, dtype=dtype).mul_(d ** -0.5)
    b = torch.randn(M, generator=g, device=device, dtype=dtype).mul_(0.1)
    return x, W, b


def methods(k):
    from actspace.ops import topk_encode  # noqa: PLC0415

    return {
        "matmul": lambda x, W, b: x @ W.T,
        "baseline": lambda x, W, b: torch.topk(torch.relu(torch.addmm(b, x, W.T)), k),
        "ours": lambda x, W, b: topk_encode(x, W, b, k, backend="kernel"),
    }


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_all(fns, args, device, repeats):
    """Median seconds per method; methods interleaved in each round."""
    for f in fns.values():  # warm-up
        f(*args)
    sync(device)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, f in fns.items():
            sync(device)
            t = time.perf_counter()
            f(*args)
            sync(device)
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _status_kb(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_child(method, N, d, M, k, dtype):
    """Run in a fresh process: peak RSS growth (bytes) of one call of `method`.

    The RSS high-water mark is reset just before the call (writing 5 to
    /proc/self/clear_refs), so the peak of building the inputs does not hide it.
    """
    x, W, b = make_inputs(N, d, M, DTYPES[dtype], "cpu")
    f = methods(k)[method]
    f(x[:2], W, b)  # load lazily initialised libraries before measuring
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    base = _status_kb("VmRSS")
    f(x, W, b)
    return _status_kb("VmHWM") - base


def peak_cpu(method, N, d, M, k, dtype):
    code = (f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); "
            f"import bench_topk_encode as b; "
            f"print(b.peak_child({method!r}, {N}, {d}, {M}, {k}, {dtype!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def peak_cuda(f, args):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = f(*args)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak


def run_case(N, d, M, k, dtype, device, repeats):
    args = make_inputs(N, d, M, DTYPES[dtype], device)
    fns = methods(k)
    t = time_all(fns, args, device, repeats)
    if device == "cpu":
        mem = {name: peak_cpu(name, N, d, M, k, dtype) for name in fns}
    else:
        mem = {name: peak_cuda(f, args) for name, f in fns.items()}
    flop = 2.0 * N * d * M
    row = {"device": device, "N": N, "d": d, "M": M, "k": k, "dtype": dtype,
           "threads": torch.get_num_threads(), "repeats": repeats,
           "seconds": t, "gflops": {n: flop / s / 1e9 for n, s in t.items()},
           "peak_extra_bytes": mem,
           "ours_vs_matmul": t["ours"] / t["matmul"],
           "baseline_vs_ours": t["baseline"] / t["ours"],
           "mem_ours_over_baseline": mem["ours"] / max(1, mem["baseline"])}
    return row


def print_row(r):
    print(f"\n{r['device']} N={r['N']} d={r['d']} M={r['M']} k={r['k']} {r['dtype']}")
    print(f"  {'method':<9} {'ms':>10} {'GFLOP/s':>9} {'peak extra MB':>14}")
    for n in ("matmul", "baseline", "ours"):
        print(f"  {n:<9} {r['seconds'][n] * 1e3:>10.1f} {r['gflops'][n]:>9.1f} "
              f"{r['peak_extra_bytes'][n] / 2 ** 20:>14.1f}")
    print(f"  ours / matmul = {r['ours_vs_matmul']:.3f} (target <= 1.15)   "
          f"baseline / ours = {r['baseline_vs_ours']:.2f} (target >= 1.3)   "
          f"memory ours / baseline = {r['mem_ours_over_baseline']:.3f} (target <= 0.1)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small shapes")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--cuda-only", action="store_true",
                   help="only the CUDA section (GPU machine time is scarce)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out",
                                                 "bench_topk_encode.json"))
    a = p.parse_args(argv)
    dtypes = a.dtypes.split(",")
    rows = []
    for N, d, M, k in [] if a.cuda_only else CPU_QUICK if a.quick else CPU_FULL:
        for dt in dtypes:
            rows.append(run_case(N, d, M, k, dt, "cpu", a.repeats))
            print_row(rows[-1])
    if torch.cuda.is_available():
        for N, d, M, k in CUDA_QUICK if a.quick else CUDA_FULL:
            for dt in ("bfloat16",) if d > 1024 else dtypes:
                rows.append(run_case(N, d, M, k, dt, "cuda", a.repeats))
                print_row(rows[-1])
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as fh:
        json.dump({"torch": torch.__version__, "results": rows}, fh, indent=1)
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
