"""Training steps per second: actspace's SAE training step vs a pure-torch eager version of
the same loss, per kind (topk, matryoshka, gated, jumprelu with an L0 target), one process.

Per kind, both sides start from the same weights (after the kind's first-batch init) and run
the same recipe on the same batches: the loss, decoder-gradient projection, the same
(fused) Adam with the kind's per-parameter lr scales, decoder renormalisation, the kind's
after-step fix-up (AuxK off: no latent is dead in a short run). The two sides' steps are
interleaved (torch, ours, torch, ours, ...) so a change in the machine's load hits both.
They differ only in the loss's forward/backward:

- torch : written here from the papers' formulas, dense encoder [N, M], autograd;
    topk       relu, torch.topk, F.embedding_bag decode; FVU
    matryoshka relu, top k·N of the batch (scatter mask), Σ over nested prefixes of the
               prefix's FVU (cumulative partial decodes); the inference-threshold EMA
    gated      gate / magnitude paths sharing W, FVU + L1 on relu(π_gate) + the auxiliary
               reconstruction through the gate (stopped decoder)
    jumprelu   z·H(z-θ) and the L0 step with straight-through pseudo-derivatives written as
               the detach trick (θ - sg(θ))·sg(∂), quadratic L0-target penalty
- ours  : actspace.decompose.train_losses.train_forward (the kind's train_forward from
          decompose/kinds/; topk through ops.topk_encode / ops.sparse_decode).

Reports per kind the median step time of each side, the ratio ours/torch and the loss
curves' max relative difference (both must train the same model). JSON to --out.

    python bench/bench_train.py [--quick] [--kinds topk matryoshka gated jumprelu]
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
from actspace.decompose.kinds import KINDS
from actspace.decompose.train import make_optimizer
from actspace.decompose.train_losses import project_decoder_grad, train_forward


# ------------------------------------------------------------------ the eager losses
def _fvu(y, y_hat, var):
    return (y - y_hat).pow(2).sum() / var


def _var(x):
    return (x - x.mean(0)).pow(2).sum()


def torch_topk(sae, x, opts):
    pre = (x - sae.b_dec) @ sae.W_enc.T + sae.b_enc                  # [N, M]
    top = torch.relu(pre).topk(sae.k, dim=1, sorted=False)
    x_hat = F.embedding_bag(top.indices, sae.W_dec, per_sample_weights=top.values,
                            mode="sum") + sae.b_dec
    return _fvu(x, x_hat, _var(x))


def torch_matryoshka(sae, x, opts):
    z = torch.relu((x - sae.b_dec) @ sae.W_enc.T + sae.b_enc)        # [N, M]
    keep = z.flatten().topk(sae.k * x.shape[0], sorted=False)
    mask = torch.zeros_like(z).flatten().scatter_(0, keep.indices, 1.0).view_as(z)
    a = z * mask
    with torch.no_grad():                      # the inference threshold's EMA
        pos = keep.values[keep.values > 0]
        if pos.numel():
            m, mom = pos.min(), opts["threshold_momentum"]
            sae.threshold.copy_(m if bool(sae.threshold == 0) else
                                mom * sae.threshold + (1 - mom) * m)
    var, loss, y_hat, lo = _var(x), 0.0, sae.b_dec, 0
    for p in opts["prefixes"] + [sae.d_sae]:
        y_hat = y_hat + a[:, lo:p] @ sae.W_dec[lo:p]
        loss = loss + _fvu(x, y_hat, var)
        lo = p
    return loss


def torch_gated(sae, x, opts):
    xc = x - sae.b_dec
    proj = xc @ sae.W_enc.T                                           # [N, M]
    pi_gate = proj + sae.b_enc
    pi_mag = proj * torch.exp(sae.r_mag) + sae.b_mag
    f = (pi_gate > 0) * torch.relu(pi_mag)
    var = _var(x)
    gate = torch.relu(pi_gate)
    l1 = opts["l1_coeff"] * gate.sum(1).mean() / (var / x.shape[0]).sqrt()
    aux = _fvu(x, gate @ sae.W_dec.detach() + sae.b_dec.detach(), var)
    return _fvu(x, f @ sae.W_dec + sae.b_dec, var) + l1 + aux


def torch_jumprelu(sae, x, opts):
    z = (x - sae.b_dec) @ sae.W_enc.T + sae.b_enc                     # [N, M]
    th, eps = sae.threshold, opts["bandwidth"]
    on = (z > th).to(z.dtype)
    near = ((z - th).abs() < eps / 2).to(z.dtype).detach()           # rectangle kernel
    shift = th - th.detach()                    # 0 forward; carries dθ only
    a = z * on + shift * (-(th.detach() / eps) * near)
    count = (on + shift * (-near / eps)).sum(1)                       # [N]
    l0 = opts["l0_target_coeff"] * (count.mean() / opts["l0_target"] - 1) ** 2
    return _fvu(x, a @ sae.W_dec + sae.b_dec, _var(x)) + l0


EAGER = {"topk": torch_topk, "matryoshka": torch_matryoshka, "gated": torch_gated,
         "jumprelu": torch_jumprelu}


def kind_options(kind, M, k):
    """The options both sides use: the kind's defaults, plus the bench's choices."""
    opts = {o.name: o.default for o in KINDS[kind].options}
    if kind == "matryoshka":
        opts.update(prefixes=[M // 4, M // 2], prefix_count=None)     # doubling, explicit
    if kind == "jumprelu":
        opts.update(l0_target=float(k))
    opts.pop("auxk_coeff", None)               # AuxK off on both sides (see module doc)
    opts.pop("k_aux", None)
    return opts


# ------------------------------------------------------------------ the run
def make_sae(kind, d, M, k, x0, opts):
    spec = KINDS[kind]
    sae = acts.SAE(d, M, kind, k if spec.uses_k else None)
    with torch.no_grad():
        sae.b_dec.copy_(x0.mean(0))
        if spec.init_from_batch is not None:
            spec.init_from_batch(sae, x0, opts)
    return sae


def step(sae, opt, loss_fn, x, after):
    t0 = time.perf_counter()
    loss = loss_fn(sae, x)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    project_decoder_grad(sae)
    opt.step()
    with torch.no_grad():
        sae.normalize_decoder()
        if after is not None:
            after(sae)
    return float(loss.detach()), time.perf_counter() - t0


def bench_kind(kind, a, batches):
    spec, opts = KINDS[kind], kind_options(kind, a.M, a.k)
    base = make_sae(kind, a.d, a.M, a.k, batches[0], opts)
    scales = spec.param_lr_scales(opts) if spec.param_lr_scales else None
    fns = {"torch": lambda s, x: EAGER[kind](s, x, opts),
           "ours": lambda s, x: train_forward(s, x, x, dead=None, auxk_coeff=0.0,
                                              **opts).loss}
    saes = {n: copy.deepcopy(base) for n in fns}
    optims = {n: make_optimizer(saes[n], lr=2e-4 / (a.M / 2 ** 14) ** 0.5, lr_scales=scales)
              for n in fns}
    losses = {n: [] for n in fns}
    times = {n: [] for n in fns}
    for x in batches:                           # interleaved: the same load on both
        for n in fns:
            v, t = step(saes[n], optims[n], fns[n], x, spec.after_step)
            losses[n].append(v)
            times[n].append(t)
    res = {n: {"losses": losses[n], "median_step_s": statistics.median(times[n][1:]),
               "steps_per_s": 1.0 / statistics.median(times[n][1:])} for n in fns}
    lt, lo = losses["torch"], losses["ours"]
    res["ratio_ours_over_torch"] = res["ours"]["steps_per_s"] / res["torch"]["steps_per_s"]
    res["loss_max_rel_diff"] = max(abs(p - q) / max(abs(p), 1e-12) for p, q in zip(lt, lo))
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--M", type=int, default=16384)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=6, help="timed steps (first one is warm-up)")
    ap.add_argument("--kinds", nargs="+", default=list(EAGER), choices=list(EAGER))
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
    load_before = os.getloadavg()
    results = {}
    for kind in a.kinds:
        r = results[kind] = bench_kind(kind, a, batches)
        print(f"{kind:10s} torch {r['torch']['steps_per_s']:.3f} steps/s  ours "
              f"{r['ours']['steps_per_s']:.3f} steps/s  ratio {r['ratio_ours_over_torch']:.2f}x"
              f"  loss curves max rel diff {r['loss_max_rel_diff']:.1e}", flush=True)
    load_after = os.getloadavg()
    print(f"load average (1, 5, 15 min) before {load_before}, after {load_after}")
    out = {"shape": {"d": a.d, "M": a.M, "k": a.k, "batch": a.batch}, "dtype": "float32",
           "steps": a.steps, "results": results, "threads": torch.get_num_threads(),
           "load_average_before": load_before, "load_average_after": load_after,
           "machine": platform.processor() or platform.machine(),
           "build_info": acts.build_info(), "torch": torch.__version__}
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
