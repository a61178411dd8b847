"""Overhead of steering hooks in greedy generation (KV cache) on a small random Llama.

Baseline and steered runs in one process, interleaved, after a warm-up; median of repeats;
the ratio steered / plain is the number to read. JSON to stdout (or --out).
"""
import argparse
import json
import statistics
import time

import torch
import transformers

import actspace as acts
from actspace.model.hookpoints import layer_hookpoint


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=32)  # generated tokens
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=1000, hidden_size=a.hidden, intermediate_size=4 * a.hidden,
                                   num_hidden_layers=a.layers, num_attention_heads=8, num_key_value_heads=8,
                                   max_position_embeddings=a.prompt + a.new + 8)
    model = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(1, 1000, (a.batch, a.prompt))
    am = torch.ones_like(ids)
    am[0, : a.prompt // 2] = 0                      # one left-padded row
    hps = [layer_hookpoint(model, i) for i in range(a.layers)]
    vec = acts.SteeringVector({h: torch.randn(a.hidden) for h in hps})

    def gen():
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=am, max_new_tokens=a.new, min_new_tokens=a.new,
                           do_sample=False, pad_token_id=0)

    def steered():
        with vec.apply(model, 1.0):
            gen()

    full = torch.randint(1, 1000, (a.batch, a.prompt + a.new))

    def fwd():
        with torch.no_grad():
            model(input_ids=full, attention_mask=torch.ones_like(full))

    def fwd_steered():
        with vec.apply(model, 1.0):
            fwd()

    cases = {"generate_plain": gen, "generate_steered": steered,
             "forward_plain": fwd, "forward_steered": fwd_steered}
    times = {k: [] for k in cases}
    for f in cases.values():
        f()                                          # warm-up
    for _ in range(a.repeats):                       # interleaved, so drift hits both alike
        for name, f in cases.items():
            t = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    res = {"config": vars(a), "dtype": "float32", "device": "cpu", "threads": torch.get_num_threads(),
           "median_s": med,
           "ratio_generate_steered_over_plain": med["generate_steered"] / med["generate_plain"],
           "ratio_forward_steered_over_plain": med["forward_steered"] / med["forward_plain"],
           "tokens_per_s_generate_plain": a.batch * a.new / med["generate_plain"]}
    text = json.dumps(res, indent=1)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
