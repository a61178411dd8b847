"""Training steps per second: our TopK SAE step vs a pure-torch eager TopK SAE, one process.

Both run the same recipe from the same initial weights on the same batches: FVU loss,
decoder-gradient projection, the same (fused) Adam, decoder renormalisation (AuxK off: no latent is dead in a
short run, so it would cost nothing in either). They differ only in the forward/backward:

- torch : pre = (x - b_dec) @ W_encᵀ + b_enc (dense [N, M]), relu, torch.topk,
          F.embedding_bag(indices, W_dec, per_sample_weights=values) + b_dec, autograd;
- ours  : actspace.decompose.train_losses.train_forward -> ops.topk_encode / ops.sparse_decode
          (whatever backend the ops pick in this build).

Reports the median step time of each, the ratio, and the two loss curves (max relative
difference) to show both train the same model. JSON to --out.

    python bench/bench_train.py [--quick] [--steps 6] [--out bench/out/bench_train.json]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

import actspace as acts
from actspace.decompose.train import make_optimizer
from actspace.decompose.train_losses import project_decoder_grad, train_forward


def torch_step_loss(sae, x):
    """The pure-torch eager TopK SAE forward: dense encoder, torch.topk, embedding_bag."""
    pre = (x - sae.b_dec) @ sae.W_enc.T + sae.b_enc
    top = torch.relu(pre).topk(sae.k, dim=1, sorted=False)
    x_hat = F.embedding_bag(top.indices, sae.W_dec, per_sample_weights=top.values,
                            mode="sum") + sae.b_dec
    return (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()


def ours_step_loss(sae, x):
    return train_forward(sae, x, x, dead=None, auxk_coeff=0.0).loss


def run(sae, opt, loss_fn, batches):
    """-> (losses, per-step seconds) of one optimizer step per batch."""
    losses, times = [], []
    for x in batches:
        t0 = time.perf_counter()
        loss = loss_fn(sae, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        project_decoder_grad(sae)
        opt.step()
        with torch.no_grad():
            sae.normalize_decoder()
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
    return losses, times


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--M", type=int, default=16384)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=6, help="timed steps (first one is warm-up)")
    ap.add_argument("--quick", action="store_true", help="d=256, M=4096, batch=1024")
    ap.add_argument("--out", default="bench/out/bench_train.json")
    a = ap.parse_args()
    if a.quick:
        a.d, a.M, a.batch = 256, 4096, 1024
    torch.manual_seed(0)
    # data with structure (a sparse dictionary) so the loss curves mean something
    D = torch.randn(a.M, a.d)
    D /= D.norm(dim=1, keepdim=True)
    batches = []
    for _ in range(a.steps):
        idx = torch.randint(0, a.M, (a.batch, a.k))
        batches.append(F.embedding_bag(idx, D, per_sample_weights=torch.rand(a.batch, a.k),
                                       mode="sum") + 0.1 * torch.randn(a.batch, a.d))
    base = acts.SAE(a.d, a.M, "topk", a.k)
    with torch.no_grad():
        base.b_dec.copy_(batches[0].mean(0))
    results = {}
    for name, fn in (("torch", torch_step_loss), ("ours", ours_step_loss)):
        sae = copy.deepcopy(base)
        opt = make_optimizer(sae, lr=2e-4 / (a.M / 2 ** 14) ** 0.5)  # same Adam for both
        losses, times = run(sae, opt, fn, batches)
        results[name] = {"losses": losses, "median_step_s": statistics.median(times[1:]),
                         "steps_per_s": 1.0 / statistics.median(times[1:])}
        print(f"{name:6s} {results[name]['steps_per_s']:.3f} steps/s  losses "
              + " ".join(f"{v:.4f}" for v in losses), flush=True)
    lt, lo = results["torch"]["losses"], results["ours"]["losses"]
    max_rel = max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(lt, lo))
    ratio = results["ours"]["steps_per_s"] / results["torch"]["steps_per_s"]
    out = {"shape": {"d": a.d, "M": a.M, "k": a.k, "batch": a.batch}, "dtype": "float32",
           "steps": a.steps, "ratio_ours_over_torch": ratio, "loss_max_rel_diff": max_rel,
           "results": results, "threads": torch.get_num_threads(),
           "machine": platform.processor() or platform.machine(),
           "build_info": acts.build_info(), "torch": torch.__version__}
    print(f"ratio ours/torch = {ratio:.2f}x   loss curves max rel diff = {max_rel:.2e}")
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
