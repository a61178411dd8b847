"""`actspace train`: train an SAE (or a sweep) on an activation store and save it.

    actspace train STORE_DIR --out runs/l3 --k 32 --expansion-factor 8
    actspace train STORE_DIR --out runs/m --kind matryoshka --d-sae 2048 --prefixes 512 1024
    actspace train acts.safetensors --out runs/x --k 16 32 64 --d-sae 4096   # a sweep

Kill it and run the same command again: it resumes from the checkpoint in --out.
Under `torchrun --nproc-per-node N -m actspace.cli.main train ...` the ranks train
data-parallel on the same store (see actspace.decompose.train_dist).
"""
from __future__ import annotations

import json
import os

HELP = "train sparse autoencoders on an activation store (resumable)"


def add_arguments(p):
    from actspace.decompose.kinds import KINDS, all_options

    p.add_argument("data", nargs="?", default=None, help="activation store directory, or a .safetensors file whose "
                                "tensor 'acts' (or only tensor) is [N, d]")
    p.add_argument("--model", default=None,
                   help="train on the fly: local model directory (AutoModel / AutoTokenizer); "
                        "with --texts and --layers or --hookpoints, instead of data")
    p.add_argument("--texts", default=None, help="with --model: .txt (one document per line "
                   "or paragraph) or .jsonl of the documents")
    p.add_argument("--layers", type=int, nargs="+", default=None,
                   help="with --model: one SAE per layer's residual stream, all from the same "
                        "forward passes")
    p.add_argument("--hookpoints", nargs="+", default=None,
                   help="with --model: module paths instead of --layers")
    p.add_argument("--max-length", type=int, default=128, help="with --model: tokens per text")
    p.add_argument("--out", required=True, help="output directory (checkpoint, SAEs, history)")
    p.add_argument("--kind", default="topk", choices=list(KINDS),
                   help="; ".join(f"{n}: {k.summary}" for n, k in KINDS.items()))
    p.add_argument("--k", type=int, nargs="+", default=[32], help="k (several: a sweep)")
    width = p.add_mutually_exclusive_group()
    width.add_argument("--d-sae", type=int, nargs="+", help="latents (several: a sweep)")
    width.add_argument("--expansion-factor", type=int, nargs="+", default=None,
                       help="d_sae = d_in * this (default 8)")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--steps", type=int, default=None, help="default: --epochs passes")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=None,
                   help="default 2e-4/sqrt(d_sae/16384), times sqrt(50000/steps) under 50000 "
                   "steps (boosted to at most 4.5e-3)")
    p.add_argument("--warmup-steps", type=int, default=None,
                   help="linear lr warm-up (default steps/10, at least 30, at most 1000)")
    p.add_argument("--decay-fraction", type=float, default=0.2,
                   help="final fraction of steps: lr decays linearly to 0")
    p.add_argument("--b-dec-init", default="mean", choices=["mean", "median"],
                   help="b_dec init: first batch's mean or geometric median")
    p.add_argument("--dead-tokens", type=int, default=None,
                   help="a latent silent this many tokens is dead (AuxK revives it); "
                        "default 100 * d_sae / k, at most 10M")
    for opt in all_options().values():     # each kind's own options (kinds/<kind>.py)
        p.add_argument("--" + opt.name.replace("_", "-"), type=opt.type, default=opt.default,
                       help=opt.help, **({"nargs": "+"} if opt.many else {}))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--hookpoint", default=None, help="recorded in the SAE (default: the store's)")
    p.add_argument("--format", default="saelens", choices=_writable_formats())
    p.add_argument("--checkpoint-every", type=int, default=1000)
    p.add_argument("--no-resume", action="store_true", help="ignore a checkpoint in --out")
    p.add_argument("--no-shuffle", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--shard-latents", action="store_true",
                   help="under torchrun: split the dictionary across ranks (topk; every rank "
                   "reads every batch) instead of splitting the batches")


def _writable_formats() -> list[str]:
    from actspace.decompose.formats import FORMATS

    return [n for n, f in FORMATS.items() if f.save is not None]


def train_config(args, store_hookpoint=None):
    """The TrainConfig of the parsed flags: the one place flags map to options."""
    from actspace.decompose.kinds import all_options
    from actspace.decompose.train_config import TrainConfig

    from ..distributed import default_device

    def one_or_list(v):
        return v if v is None or len(v) > 1 else v[0]

    return TrainConfig(
        kind=args.kind, k=one_or_list(args.k), d_sae=one_or_list(args.d_sae),
        expansion_factor=None if args.d_sae else one_or_list(args.expansion_factor or [8]),
        hookpoint=args.hookpoint or store_hookpoint, batch_size=args.batch_size,
        steps=args.steps, epochs=args.epochs, lr=args.lr, warmup_steps=args.warmup_steps,
        decay_fraction=args.decay_fraction, b_dec_init=args.b_dec_init,
        dead_tokens=args.dead_tokens, seed=args.seed, device=args.device or default_device(),
        out_dir=args.out, checkpoint_every=args.checkpoint_every, resume=not args.no_resume,
        shuffle=not args.no_shuffle, progress=not args.quiet, save_format=args.format,
        shard_latents=args.shard_latents,
        kind_options={n: getattr(args, n) for n in all_options()})


def _open_data(path):
    if os.path.isdir(path):
        import actspace as acts
        store = acts.ActivationStore.open(path)
        return store, getattr(store, "hookpoint", None)
    if path.endswith(".safetensors") and os.path.isfile(path):
        from safetensors.torch import load_file
        tensors = load_file(path)
        if "acts" in tensors:
            return tensors["acts"], None
        if len(tensors) == 1:
            return next(iter(tensors.values())), None
        raise ValueError(f"data: {path!r} holds {sorted(tensors)}; expected a tensor 'acts'")
    raise FileNotFoundError(f"data: {path!r} is neither a store directory nor a .safetensors file")


def _on_the_fly(args) -> dict:
    """--model/--texts/--layers|--hookpoints -> train_sae's model, tokenizer, texts and
    hookpoints (ValueError naming the flag)."""
    if args.data is not None:
        raise ValueError("give data or --model, not both")
    if args.texts is None or (args.layers is None) == (args.hookpoints is None):
        raise ValueError("--model needs --texts and one of --layers / --hookpoints")
    from transformers import AutoModel, AutoTokenizer

    from actspace.model.hookpoints import layer_hookpoint
    from actspace.capture.texts import iter_texts
    model = AutoModel.from_pretrained(args.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    hookpoints = args.hookpoints or [layer_hookpoint(model, n) for n in args.layers]
    texts = list(iter_texts(args.texts))
    if not texts:
        raise ValueError(f"--texts {args.texts!r} holds no documents")
    return {"model": model, "tokenizer": tokenizer, "texts": texts, "hookpoints": hookpoints}


def run(args) -> int:
    from ..distributed import launched

    with launched():             # under torchrun: one rank of a distributed job
        return _run(args)


def _run(args) -> int:
    import sys

    from actspace._io import ensure_writable_dir
    from actspace.decompose import train

    from ..distributed import is_main

    try:       # refused before any data is read or step is run, not at the final save
        ensure_writable_dir(args.out, "--out")
    except OSError as e:
        print(f"actspace train: error: {e.strerror or e}", file=sys.stderr)
        return 2
    if args.model is not None:
        try:
            kw = _on_the_fly(args)
        except ValueError as e:
            print(f"actspace train: error: {e}", file=sys.stderr)
            return 2
        cfg = train_config(args).replace(hookpoints=kw.pop("hookpoints"),
                                         max_length=args.max_length)
        result = train.train_sae(None, cfg, **kw)
    else:
        if args.data is None:
            print("actspace train: error: give data (a store or .safetensors) or --model",
                  file=sys.stderr)
            return 2
        data, store_hook = _open_data(args.data)
        result = train.train_sae(data, train_config(args, store_hook))
    last = {}
    for h in result.history:  # the last record of each SAE
        last[h["sae"]] = h
    if is_main():
        print(json.dumps({"out": str(result.out_dir or args.out), "final": list(last.values())},
                         indent=1))
        if result.out_dir is not None and str(result.out_dir) != str(args.out):
            print(f"actspace train: error: could not write the SAEs to {args.out!r}; they were "
                  f"saved to {str(result.out_dir)!r} instead", file=sys.stderr)
            return 2
    return 0
