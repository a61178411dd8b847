"""Benchmark of sparse_decode against torch, in one process (ratios, not absolute times).

Forward : einsum over the gathered rows W_dec[idx] (materialises [N, k, d]),
          F.embedding_bag(idx, W_dec, per_sample_weights=vals, mode='sum'), ours.
Backward: autograd through embedding_bag (grads of vals and W_dec) vs ours (raw entry point
          decode_backward, deterministic and default; and through torch autograd).
Skewed (CUDA section): latent 0 fires on every row; the deterministic backward with popular
          latents split into GRAD_W_CHUNK-slot chunks vs the same with no split (one block
          chain of N slots per column tile) and vs embedding_bag on the same indices.
GB/s counts the gathered rows only: N·k·d elements forward, 2·N·k·d backward (rows read for
grad_values + contributions summed into grad_W). Peak memory: CPU = rise of the peak RSS
during one call after warm-up (/proc/self/clear_refs; buffers below glibc's mmap threshold,
~32 MiB, are reused from the heap and do not show), CUDA = torch.cuda.max_memory_allocated
rise. Inputs are fresh random data (uniform latents: no hot rows in cache). Methods are timed
round-robin (each repeat runs every method once) so load from elsewhere hits all alike.

    python bench/bench_sparse_decode.py [--quick] [--reps 5] [--out bench/out/bench_sparse_decode.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

import actspace as acts
from actspace.ops._common import core, cuda_built
import importlib

from actspace.ops.sparse_decode import _backward, _forward

SD = importlib.import_module("actspace.ops.sparse_decode")  # the module (GRAD_W_CHUNK)


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timeit_round_robin(fns, reps, dev):
    """Median wall time (s) of each fn: warm-up once each, then reps rounds taking every fn
    in turn, so a burst of load from elsewhere hits all methods alike (fair ratios)."""
    for fn in fns:
        fn()
    sync(dev)
    times = [[] for _ in fns]
    for _ in range(reps):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            sync(dev)
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def _rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def peak_mib(fn, dev):
    """Extra memory at the peak of one call of fn, in MiB (None when not measurable)."""
    if dev.type == "cuda":
        sync(dev)
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        fn()
        sync(dev)
        return (torch.cuda.max_memory_allocated(dev) - base) / 2**20
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        return None
    base = _rss_kib("VmRSS:")
    fn()
    return (_rss_kib("VmHWM:") - base) / 1024


def bench(N, d, M, k, dtype, dev, reps, with_einsum=True, skewed=False):
    g = torch.Generator().manual_seed(0)
    W = torch.randn(M, d, generator=g).to(dev, dtype)
    vals = torch.randn(N, k, generator=g).to(dev, dtype)
    idx = torch.randint(0, M, (N, k), generator=g).to(dev)
    grad = torch.randn(N, d, generator=g).to(dev, dtype)
    esize = W.element_size()
    path = "cpu" if dev.type == "cpu" else "cuda"  # our kernel on the tensors' device
    methods = []  # (name, phase, fn, baseline or None, rows moved in units of N·k·d)

    def add(name, phase, fn, baseline=None, moved=1):
        methods.append((name, phase, fn, baseline, moved))

    # ---- forward
    if with_einsum:
        add("einsum_fwd", "forward", lambda: torch.einsum("nk,nkd->nd", vals, W[idx]))
    add("embedding_bag_fwd", "forward",
        lambda: F.embedding_bag(idx, W, per_sample_weights=vals, mode="sum"))
    add("ours_fwd", "forward", lambda: _forward(vals, idx, W, None, path), "embedding_bag_fwd")

    # ---- backward
    Wl, vl = W.clone().requires_grad_(), vals.clone().requires_grad_()

    def add_torch_bwd(name, idx_, W_, wrt, moved=1):
        """torch's autograd through embedding_bag; where torch has no embedding_bag backward
        for this dtype and device (bf16 on CUDA) the gather + einsum graph, named so.
        Returns the name the baseline got."""
        out = F.embedding_bag(idx_, W_, per_sample_weights=vl, mode="sum")
        try:
            torch.autograd.grad(out, wrt, grad, retain_graph=True)
        except NotImplementedError:
            out = torch.einsum("nk,nkd->nd", vl, W_[idx_])
            name = name.replace("embedding_bag", "gather_einsum")
        add(name, "backward",
            lambda: torch.autograd.grad(out, wrt, grad, retain_graph=True), moved=moved)
        return name

    base = add_torch_bwd("embedding_bag_bwd", idx, Wl, (vl, Wl), moved=2)
    for det in (True, False):
        add(f"ours_bwd_{'deterministic' if det else 'default'}", "backward",
            lambda det=det: _backward(grad, vals, idx, W, True, True, det, path), base, moved=2)
    out_ours = acts.ops.sparse_decode(vl, idx, Wl, backend="kernel")
    add("ours_bwd_autograd", "backward",
        lambda: torch.autograd.grad(out_ours, (vl, Wl), grad, retain_graph=True), base, moved=2)
    # frozen decoder (only grad of vals): autograd through embedding_bag vs row-major ours
    base_v = add_torch_bwd("embedding_bag_bwd_values_only", idx, W, (vl,))
    add("ours_bwd_values_only", "backward",
        lambda: _backward(grad, vals, idx, W, True, False, False, path), base_v)
    if skewed:  # one latent on every row: N slots for latent 0
        idx_s = idx.clone()
        idx_s[:, 0] = 0
        base_s = add_torch_bwd("embedding_bag_bwd_skewed", idx_s, Wl, (vl, Wl), moved=2)
        add("ours_bwd_deterministic_skewed", "backward",
            lambda: _backward(grad, vals, idx_s, W, True, True, True, path), base_s, moved=2)

        def unsplit():  # the same with chunks longer than any latent: no split
            chunk = SD.GRAD_W_CHUNK
            SD.GRAD_W_CHUNK = N * k + 1
            try:
                return _backward(grad, vals, idx_s, W, True, True, True, path)
            finally:
                SD.GRAD_W_CHUNK = chunk

        add("ours_bwd_deterministic_skewed_unsplit", "backward", unsplit, base_s, moved=2)

    secs = timeit_round_robin([m[2] for m in methods], reps, dev)
    rows = {}
    for (name, phase, fn, baseline, moved), t in zip(methods, secs):
        rows[name] = {"phase": phase, "ms": t * 1e3, "GB/s": moved * N * k * d * esize / t / 1e9,
                      "peak_MiB": peak_mib(fn, dev)}
    for name, _, _, baseline, _ in methods:
        if baseline:
            rows[name]["speedup_vs_" + baseline] = rows[baseline]["ms"] / rows[name]["ms"]
    if skewed:
        rows["ours_bwd_deterministic_skewed"]["speedup_vs_unsplit"] = (
            rows["ours_bwd_deterministic_skewed_unsplit"]["ms"]
            / rows["ours_bwd_deterministic_skewed"]["ms"])
    if with_einsum:
        rows["ours_fwd"]["speedup_vs_einsum_fwd"] = rows["einsum_fwd"]["ms"] / rows["ours_fwd"]["ms"]
    return {"shape": {"N": N, "d": d, "M": M, "k": k}, "dtype": str(dtype).replace("torch.", ""),
            "device": str(dev), "rows": rows}


def print_table(res):
    s = res["shape"]
    print(f"\n{res['device']} {res['dtype']}  N={s['N']} d={s['d']} M={s['M']} k={s['k']}")
    print(f"{'method':38s} {'ms':>9s} {'GB/s':>7s} {'peak MiB':>9s}  speedup")
    for name, r in res["rows"].items():
        sp = ", ".join(f"{v:.2f}x vs {k[len('speedup_vs_'):]}" for k, v in r.items()
                       if k.startswith("speedup_vs_"))
        pk = "-" if r["peak_MiB"] is None else f"{r['peak_MiB']:.0f}"
        print(f"{name:38s} {r['ms']:9.2f} {r['GB/s']:7.1f} {pk:>9s}  {sp}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shape, a few seconds")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--cuda-only", action="store_true",
                    help="only the CUDA section (GPU machine time is scarce)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out",
                                                  "bench_sparse_decode.json"))
    args = ap.parse_args()
    if core() is None:
        raise SystemExit("actspace._core is not built")
    cpu_shape = (512, 128, 4096, 16) if args.quick else (4096, 768, 65536, 64)
    results = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                           "torch": torch.__version__, "build": core().build_info()},
               "runs": []}
    for dtype in () if args.cuda_only else (torch.float32, torch.bfloat16):
        res = bench(*cpu_shape, dtype, torch.device("cpu"), args.reps)
        print_table(res)
        results["runs"].append(res)
    if torch.cuda.is_available() and cuda_built():
        cuda_shape = (1024, 512, 16384, 32) if args.quick else (8192, 4096, 131072, 64)
        res = bench(*cuda_shape, torch.bfloat16, torch.device("cuda"), args.reps,
                    with_einsum=args.quick, skewed=True)  # full-size einsum: 4 GiB
        print_table(res)
        results["runs"].append(res)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
