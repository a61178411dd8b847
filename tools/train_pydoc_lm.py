"""Train the small byte-level causal LM shipped in python/actspace/assets/pydoc_lm/.

Why: logit-difference metrics, attribution and steering tests need a causal model that has
learned something; random tiny models make those metrics meaningless, and downloading GPT-2
is not allowed at run time. This script trains a 4-layer GPT-2-config model (d=128) on the
Python documentation text shipped with CPython (`pydoc_data.topics`), bytes as tokens, in a
few minutes on two CPU cores, deterministically (fixed seed, fixed step count, fixed thread
count). It writes model.safetensors + config.json, a byte-level tokenizer.json that
`transformers.AutoTokenizer` loads offline, and the loss curve (loss_curve.json + PNG) with
the held-out bits/byte next to a unigram-byte baseline.

    python tools/train_pydoc_lm.py [--out python/actspace/assets/pydoc_lm] [--steps 340]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))

BLOCK = 128  # training context (the model's n_positions is 256)


def corpus() -> tuple[bytes, bytes]:
    """(train, held-out) UTF-8 bytes: every 20th topic (sorted by name) is held out."""
    import pydoc_data.topics as topics

    names = sorted(topics.topics)
    train = [topics.topics[n] for i, n in enumerate(names) if i % 20 != 7]
    held = [topics.topics[n] for i, n in enumerate(names) if i % 20 == 7]
    return "\n\n".join(train).encode("utf-8"), "\n\n".join(held).encode("utf-8")


def unigram_bits(train: torch.Tensor, held: torch.Tensor) -> float:
    """Cross-entropy (bits/byte) of the held-out bytes under add-one byte frequencies."""
    counts = torch.bincount(train, minlength=256).double() + 1.0
    logp = torch.log2(counts / counts.sum())
    return float(-logp[held].mean())


@torch.no_grad()
def held_out_bits(model, held: torch.Tensor) -> float:
    """Mean next-byte cross-entropy (bits/byte) over non-overlapping BLOCK windows."""
    model.eval()
    n = (held.numel() - 1) // BLOCK
    x = held[: n * BLOCK].view(n, BLOCK)
    y = held[1 : n * BLOCK + 1].view(n, BLOCK)
    total = 0.0
    for i in range(0, n, 64):
        logits = model(input_ids=x[i : i + 64]).logits
        total += float(torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y[i : i + 64].reshape(-1), reduction="sum"))
    model.train()
    return total / (n * BLOCK) / math.log(2)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "python",
                                                  "actspace", "assets", "pydoc_lm"))
    ap.add_argument("--steps", type=int, default=340)
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from transformers import GPT2Config, GPT2LMHeadModel

    from actspace._io import write_json_atomic
    from actspace.assets.byte_tokenizer import build_byte_tokenizer

    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    train_b, held_b = corpus()
    train = torch.frombuffer(bytearray(train_b), dtype=torch.uint8).long()
    held = torch.frombuffer(bytearray(held_b), dtype=torch.uint8).long()
    tok = build_byte_tokenizer()
    cfg = GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=128, n_layer=4, n_head=4,
                     n_inner=512, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.01)
    warm = 40
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps)))))
    gen = torch.Generator().manual_seed(args.seed)
    curve, evals = [], []
    t0 = time.time()
    for step in range(args.steps):
        starts = torch.randint(0, train.numel() - BLOCK - 1, (args.batch,), generator=gen)
        idx = starts[:, None] + torch.arange(BLOCK + 1)
        chunk = train[idx]  # [B, BLOCK+1]
        logits = model(input_ids=chunk[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 chunk[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        curve.append(float(loss.detach()) / math.log(2))
        if step % 100 == 0 or step == args.steps - 1:
            evals.append((step, held_out_bits(model, held)))
            print(f"step {step} train {curve[-1]:.3f} held-out {evals[-1][1]:.3f} bits/byte "
                  f"({time.time() - t0:.0f}s)", flush=True)
    model.eval()
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    tok.save_pretrained(args.out)
    result = {
        "corpus": "pydoc_data.topics (every 20th topic by name held out)",
        "train_bytes": int(train.numel()), "held_out_bytes": int(held.numel()),
        "steps": args.steps, "batch": args.batch, "block": BLOCK, "seed": args.seed,
        "seconds": round(time.time() - t0, 1),
        "held_out_bits_per_byte": round(evals[-1][1], 4),
        "unigram_bits_per_byte": round(unigram_bits(train, held), 4),
        "train_bits_per_byte": [round(v, 4) for v in curve],
        "held_out": [[s, round(v, 4)] for s, v in evals],
    }
    write_json_atomic(os.path.join(args.out, "loss_curve.json"), result)
    plot(result, os.path.join(args.out, "loss_curve.png"))
    print(json.dumps({k: v for k, v in result.items() if k != "train_bits_per_byte"}))
    return 0


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=80)
    ax.plot(result["train_bits_per_byte"], lw=0.8, label="train (batch)")
    s, v = zip(*result["held_out"])
    ax.plot(s, v, "o-", label="held-out")
    ax.axhline(result["unigram_bits_per_byte"], ls="--", c="gray", label="unigram bytes")
    ax.set_xlabel("step"), ax.set_ylabel("bits / byte"), ax.set_ylim(0, 8.5)
    ax.set_title("pydoc_lm: GPT-2 config, 4 layers, d=128, bytes")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
