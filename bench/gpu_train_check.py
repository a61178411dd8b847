"""train_sae on a GPU end to end, the CUDA kernels routed ("auto", VERIFIED_CUDA) against
every op on torch's path (VERIFIED_CUDA emptied): step time and FVU of each, same seed and
batches. Run on the device machine after bench/gpu_verify.sh's build:

    python bench/gpu_train_check.py --out $OUT/gpu_train.json
"""
import argparse
import json
import time

import torch

import actspace as acts
from actspace.ops import _common


def planted(N, d, M, k, seed):
    """Rows that are sparse non-negative mixtures of M unit directions plus noise [N, d]."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    D = torch.nn.functional.normalize(torch.randn(M, d, device="cuda", generator=g), dim=1)
    idx = torch.randint(0, M, (N, k), device="cuda", generator=g)
    val = torch.rand(N, k, device="cuda", generator=g)
    x = torch.zeros(N, d, device="cuda").index_add_(0, torch.arange(N, device="cuda")
                                                    .repeat_interleave(k), (val.view(-1, 1)
                                                                            * D[idx.view(-1)]))
    return x + 0.05 * torch.randn(N, d, device="cuda", generator=g)


def run(x, x_test, a, routed):
    _common.VERIFIED_CUDA = frozenset({"sparse_decode", "stats"} if routed else ())
    torch.cuda.synchronize()
    t = time.perf_counter()
    r = acts.train_sae(x, kind="topk", d_sae=a.M, k=a.k, batch_size=a.batch, steps=a.steps,
                       seed=0, progress=False, checkpoint_every=0, device="cuda")
    torch.cuda.synchronize()
    secs = time.perf_counter() - t
    with torch.no_grad():
        xh = r.sae(x_test)[0]
        fvu = float((x_test - xh).pow(2).sum() / (x_test - x_test.mean(0)).pow(2).sum())
    return {"routed": routed, "seconds": secs, "ms_per_step": 1e3 * secs / a.steps, "fvu": fvu}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--M", type=int, default=32768)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--out", default="bench/out/gpu_train.json")
    a = ap.parse_args()
    assert torch.cuda.is_available() and _common.cuda_built(), "needs a GPU and a CUDA build"
    x = planted(a.batch * 8, a.d, 4 * a.M, a.k // 2, seed=1)
    x_test = planted(8192, a.d, 4 * a.M, a.k // 2, seed=1)[:4096]
    run(x, x_test, argparse.Namespace(**{**vars(a), "steps": 5}), True)   # warm-up
    rows = [run(x, x_test, a, routed) for routed in (False, True, False, True)]
    for r in rows:
        print(json.dumps(r))
    ms = {routed: min(r["ms_per_step"] for r in rows if r["routed"] == routed)
          for routed in (False, True)}
    fv = {routed: [r["fvu"] for r in rows if r["routed"] == routed] for routed in (False, True)}
    print(f"train_sae topk d={a.d} M={a.M} k={a.k} batch={a.batch}: torch path "
          f"{ms[False]:.2f} ms/step, routed kernels {ms[True]:.2f} ms/step "
          f"({ms[False] / ms[True]:.2f}x); FVU {fv[False][0]:.4f} vs {fv[True][0]:.4f}")
    with open(a.out, "w") as f:
        json.dump({"args": vars(a), "rows": rows, "speedup": ms[False] / ms[True]}, f, indent=1)
    assert abs(fv[True][0] - fv[False][0]) < 0.02 * max(fv[False][0], 1e-3) + 1e-3, fv


if __name__ == "__main__":
    main()
