"""`actspace encode`: encode an activation store with a saved SAE into a sparse latent
store with LatentStats and top examples (see actspace.decompose.latents.encode_store)."""
from __future__ import annotations

HELP = "encode an activation store into a sparse latent store with per-latent statistics"


def add_arguments(p) -> None:
    p.add_argument("sae", help="SAE directory (any layout actspace.SAE.load reads), "
                   "hf://org/repo/folder, or RELEASE:ID (`actspace sae list`)")
    p.add_argument("store", help="activation store directory")
    p.add_argument("out", help="output directory for the latent store (resumes if partial)")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--values-dtype", choices=("float16", "bfloat16", "float32"),
                   default="float16")
    p.add_argument("--top-t", type=int, default=16, help="top examples kept per latent")
    p.add_argument("--n-bins", type=int, default=32, help="log-histogram bins per latent")
    p.add_argument("--context", type=int, default=8, help="tokens each side of an example")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory to decode contexts")
    p.add_argument("--device", default="cpu", help="where the SAE runs")
    p.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    import torch

    import actspace as acts
    from actspace.decompose.latents import encode_store

    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    sae = acts.SAE.load(args.sae, device=args.device)
    stats = encode_store(sae, args.store, args.out, batch_size=args.batch_size,
                         values_dtype=getattr(torch, args.values_dtype), context=args.context,
                         tokenizer=tokenizer, top_t=args.top_t, n_bins=args.n_bins,
                         progress=not args.no_progress)
    print(f"encoded {stats.n_tokens} tokens into {args.out}: "
          f"{int((~stats.dead()).sum())}/{stats.d_sae} latents fired")
    if stats.n_nonfinite:
        print(f"skipped {stats.n_nonfinite} rows with NaN/inf activations (empty codes, "
              "nonfinite=True in their shards, left out of the statistics)")
    return 0
