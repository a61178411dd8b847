"""`actspace steer`: a steering vector from two text files, then an alpha sweep.

    actspace steer --model ./my-model --positive happy.txt --negative sad.txt \
        --layer 4 --neutral neutral.txt --alphas 0,2,4,8 --out happy.safetensors

One text per line. The effect column is the projection, at the last layer, on the
positive-minus-negative direction there (or a logit difference with --target-tokens);
the cost columns are KL / perplexity (causal LMs) or cosine change (encoders).

Several --layer (or --hookpoint) values give one vector per hookpoint and sweep each
alone (a "hookpoint" column per row), to pick the layer from evidence as well as alpha.
The rows keep the keys the report reads from steer/sweep.json (alpha, hookpoint, effect,
kl, perplexity, cos_change), whatever the flags.
"""
from __future__ import annotations

HELP = "compute a steering vector from two text files and sweep alpha (effect vs cost table)"


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="local model directory (transformers format)")
    p.add_argument("--positive", required=True, help="text file, one example per line")
    p.add_argument("--negative", required=True, help="text file, one example per line")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--hookpoint", nargs="+", action="extend",
                       help="module path[:input|:output] (glob allowed); several values, or the "
                            "flag repeated, sweep each hookpoint alone")
    where.add_argument("--layer", type=int, nargs="+", action="extend",
                       help="residual-stream output of this layer; several values sweep each")
    p.add_argument("--method", default="mean", choices=["mean", "pca", "pca_centered", "probe"])
    p.add_argument("--position", default="last", help="'last', 'mean' or a token index")
    p.add_argument("--neutral", required=True, help="neutral text file for the sweep's cost")
    p.add_argument("--alphas", default="0,1,2,4,8", help="comma-separated alphas")
    p.add_argument("--alpha-units", default="raw", choices=["raw", "norm"],
                   help="'norm': alpha in units of the mean activation norm at the hookpoint")
    p.add_argument("--positions", default="all",
                   help="tokens steered in the sweep: 'all', or 'a:b' (real-token indices a..b-1 "
                        "of each text; 'prompt'/'generated' only matter in generate: the sweep's "
                        "plain forwards are all prompt)")
    p.add_argument("--normalize", action="store_true",
                   help="rescale each steered token to its original norm")
    p.add_argument("--target-tokens", help="'a b:c d' -> effect = mean logit of a,b minus c,d "
                                           "at the last token (causal LMs)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", help="save the vector (.safetensors + .json)")
    p.add_argument("--gguf", help="also export a llama.cpp control vector")
    p.add_argument("--json", help="write the sweep rows as JSON")


def _lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        lines = [ln.strip() for ln in f if ln.strip()]
    if not lines:
        raise ValueError(f"{path}: no non-empty lines")
    return lines


def _load_model(path: str):
    import transformers
    cfg = transformers.AutoConfig.from_pretrained(path)
    archs = getattr(cfg, "architectures", None) or []
    causal = any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs)
    cls = transformers.AutoModelForCausalLM if causal else transformers.AutoModel
    return cls.from_pretrained(path).eval(), transformers.AutoTokenizer.from_pretrained(path)


def _token_sets(spec: str, tokenizer):
    if ":" not in spec:
        raise ValueError("--target-tokens must look like 'good great:bad awful'")
    sets = []
    for side in spec.split(":", 1):
        ids = [i for w in side.split() for i in tokenizer(w, add_special_tokens=False)["input_ids"][:1]]
        if not ids:
            raise ValueError(f"--target-tokens: {side!r} gives no tokens")
        sets.append(ids)
    return tuple(sets)


def _positions(spec: str):
    """'all' | 'prompt' | 'generated' | 'a:b' (either end may be empty) -> positions."""
    if spec in ("all", "prompt", "generated"):
        return spec
    lo, sep, hi = spec.partition(":")
    if not sep or not all(v.strip().isdigit() for v in (lo, hi) if v.strip()):
        raise ValueError(f"--positions must be 'all', 'prompt', 'generated' or 'a:b' with "
                         f"non-negative ints, got {spec!r}")
    return slice(int(lo) if lo.strip() else None, int(hi) if hi.strip() else None)


def run(args) -> int:
    from ..model.hookpoints import layer_hookpoint
    from ..steer.sweep import steering_sweep
    from ..steer.vector import SteeringVector

    alphas = [float(a) for a in args.alphas.split(",") if a.strip()]
    position = int(args.position) if args.position.lstrip("-").isdigit() else args.position
    pos, neg, neutral = _lines(args.positive), _lines(args.negative), _lines(args.neutral)
    positions = _positions(args.positions)
    model, tok = _load_model(args.model)
    hookpoints = args.hookpoint if args.hookpoint else [layer_hookpoint(model, l) for l in args.layer]
    vec = SteeringVector.from_contrast(model, tok, pos, neg, hookpoint=hookpoints, method=args.method,
                                       position=position, batch_size=args.batch_size)
    print(f"{vec!r}  act_norm={vec.provenance['act_norm']}")
    if args.target_tokens:
        target = {"logit_diff": _token_sets(args.target_tokens, tok)}
    else:
        try:
            last = layer_hookpoint(model, -1)
        except ValueError:
            last = None   # unknown family: no effect column
        target = None
        if last is not None:
            ref = SteeringVector.from_contrast(model, tok, pos, neg, hookpoint=last, method="mean",
                                               position="mean", batch_size=args.batch_size)
            target = {"probe": ref[last], "hookpoint": last}
    rows = steering_sweep(model, tok, vec, alphas, neutral_texts=neutral, target=target,
                          alpha_units=args.alpha_units, positions=positions,
                          normalize=args.normalize, per_hookpoint=len(vec.hookpoints) > 1,
                          batch_size=args.batch_size)
    print(rows.table())
    if args.out:
        vec.save(args.out)
    if args.gguf:
        # a layer sweep may include layer 0, which llama.cpp rejects: leave it out (warned)
        vec.to_gguf(args.gguf, skip_layer0=True)
    if args.json:
        rows.to_json(args.json)
    return 0
