"""`actspace capture MODEL TEXTS --hookpoint H ... --out DIR`: the offline capture job.

Loads a local Hugging Face model with AutoModel/AutoTokenizer and runs
actspace.capture_to_store; rerunning the same command resumes a killed job.
Under `torchrun --nproc-per-node N -m actspace.cli.main capture ...` each rank captures
every N-th document into the same stores (see actspace.capture.ranks).
"""
from __future__ import annotations

import json

HELP = "capture activations of a local Hugging Face model over texts into activation stores"


def add_arguments(p) -> None:
    p.add_argument("model", help="local model directory (AutoModel / AutoTokenizer)")
    p.add_argument("texts", help=".txt (see --txt-mode), .jsonl, or a directory saved by "
                                 "datasets.save_to_disk")
    p.add_argument("--out", required=True, help="output directory (one store per hookpoint)")
    p.add_argument("--hookpoint", action="append", default=[],
                   help="module path[:input|:output] or glob; repeatable")
    p.add_argument("--layer", type=int, action="append", default=[],
                   help="layer index (with --site) instead of a module path; repeatable")
    p.add_argument("--site", default="resid", choices=("resid", "resid_pre", "attn", "mlp"))
    p.add_argument("--field", default="text", help="jsonl / dataset field holding the text")
    p.add_argument("--txt-mode", default="auto", choices=("auto", "lines", "paragraphs"),
                   help=".txt documents: one per line, blank-line separated paragraphs, or "
                        "auto (paragraphs when the file has a blank line between text)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=None,
                   help="tokens per sequence (default 512, or the model's or tokenizer's "
                        "limit when smaller; at most that limit)")
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--windows", action="store_true",
                   help="split long documents into windows instead of truncating them")
    p.add_argument("--keep-special-tokens", action="store_true")
    p.add_argument("--count-dropped-tokens", action="store_true",
                   help="count the tokens truncation drops (tokenizes long documents whole)")
    p.add_argument("--no-stats", action="store_true", help="do not accumulate statistics")
    p.add_argument("--covariance", action="store_true", help="also accumulate the covariance")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, choices=(None, "float32", "bfloat16", "float16"))
    p.add_argument("--shard-rows", type=int, default=65536)
    p.add_argument("--no-progress", action="store_true")


def _texts(path: str, field: str):
    import os

    if os.path.isdir(path):
        try:
            import datasets
        except ImportError:
            raise ValueError(f"texts {path!r} is a directory: reading a saved dataset needs "
                             f"the 'datasets' package") from None
        return datasets.load_from_disk(path)
    return path


def run(args) -> int:
    from ..distributed import launched

    with launched():             # under torchrun: one rank of a distributed job
        return _run(args)


def _run(args) -> int:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from ..model.hookpoints import layer_hookpoint
    from ..capture.job import capture_to_store
    from ..distributed import default_device, is_main

    model = AutoModel.from_pretrained(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    hps = list(args.hookpoint) + [layer_hookpoint(model, i, args.site) for i in args.layer]
    if not hps:
        raise ValueError("give at least one --hookpoint or --layer")
    result = capture_to_store(
        model, tokenizer, _texts(args.texts, args.field), hps, args.out,
        batch_size=args.batch_size, max_length=args.max_length, max_tokens=args.max_tokens,
        windows=args.windows, keep_special_tokens=args.keep_special_tokens,
        count_dropped_tokens=args.count_dropped_tokens,
        stats=not args.no_stats, covariance=args.covariance,
        device=args.device or default_device(),
        dtype=getattr(torch, args.dtype) if args.dtype else None,
        progress=not args.no_progress, shard_rows=args.shard_rows, field=args.field,
        txt_mode=args.txt_mode)
    if is_main():
        print(json.dumps(result, indent=1))
    return 0
