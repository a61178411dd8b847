"""`actspace attribute`: which SAE latents (or neurons) at which positions cause an output.

    actspace attribute --model DIR --prompt "def f(x" --target ")" --other "," \
        --sae transformer.h.2=sae_dir --method atp --top 20 --out attr/

Metric: --target and --other: logit difference at the last token; --target alone: its
log-probability; --cosine-to TEXT (encoders): cosine of the mean-pooled embedding with
TEXT's. Prints the top nodes as a table; --out writes attribution.safetensors/.json (the
whole result, reloadable with acts.Attribution.load) and top.json.
"""
from __future__ import annotations

import os

HELP = "score SAE latents / neurons by their effect on an output (atp, ig, exact)"


def add_arguments(p) -> None:
    p.add_argument("--model", required=True,
                   help="local model directory (transformers format), or asset:pydoc_lm")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    src.add_argument("--prompts", help="text file, one prompt per line")
    p.add_argument("--sae", action="append", default=[], metavar="HOOKPOINT=DIR",
                   help="an SAE spliced at HOOKPOINT (repeatable)")
    p.add_argument("--neurons", action="append", default=[], metavar="HOOKPOINT",
                   help="score the hookpoint's coordinates (repeatable)")
    p.add_argument("--target", help="target token (one token of the vocabulary)")
    p.add_argument("--other", help="contrast token: metric = logit(target) - logit(other)")
    p.add_argument("--cosine-to", help="encoders: metric = cosine(pooled, pooled(TEXT))")
    p.add_argument("--method", default="atp", choices=["atp", "ig", "exact"])
    p.add_argument("--baseline", default="zero",
                   help="'zero', or a text file of corrupted prompts (one per prompt, "
                        "same token counts)")
    p.add_argument("--steps", type=int, default=32, help="integrated-gradients steps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--top", type=int, default=20, help="rows printed / kept per prompt")
    p.add_argument("--out", help="output directory")


def _lines(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, encoding="utf-8") as f:
        lines = [ln.rstrip("\n") for ln in f if ln.strip()]
    if not lines:
        raise ValueError(f"{path}: no non-empty lines")
    return lines


def load_model(path: str):
    """(model in eval mode, tokenizer) from a transformers directory or asset:NAME."""
    import transformers

    from ..assets import asset_path
    path = asset_path(path[len("asset:"):]) if path.startswith("asset:") else path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--model {path}: no such directory")
    cfg = transformers.AutoConfig.from_pretrained(path)
    archs = getattr(cfg, "architectures", None) or []
    causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    cls = transformers.AutoModelForCausalLM if causal else transformers.AutoModel
    return cls.from_pretrained(path).eval(), transformers.AutoTokenizer.from_pretrained(path)


def _metric(args, model, tok):
    import torch

    import actspace as acts
    if args.cosine_to:
        if args.target or args.other:
            raise ValueError("--cosine-to cannot be combined with --target/--other")
        enc = tok([args.cosine_to], return_tensors="pt")
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state[0]                  # [T, d]
        return acts.metrics.cosine(hidden.mean(0))
    if not args.target:
        raise ValueError("give --target (with --other for a logit difference) or --cosine-to")
    if args.other:
        return acts.metrics.logit_diff(args.target, args.other)
    return acts.metrics.logprob(args.target)


def _table(rows) -> str:
    head = f"{'prompt':>6} {'hookpoint':<22} {'pos':>4} {'token':<10} {'kind':<7} {'index':>6} " \
           f"{'act':>9} {'score':>10}"
    lines = [head]
    for r in rows:
        lines.append(f"{r['prompt']:>6} {r['hookpoint']:<22} {r['position']:>4} "
                     f"{repr(r['token'])[:10]:<10} {r['kind']:<7} {r['index']:>6} "
                     f"{r['activation']:>9.4f} {r['score']:>10.5f}")
    return "\n".join(lines)


def run(args) -> int:
    import actspace as acts
    from .._io import ensure_writable_dir, write_json_atomic

    if not args.sae and not args.neurons:
        raise ValueError("give --sae HOOKPOINT=DIR and/or --neurons HOOKPOINT")
    saes = {}
    for spec in args.sae:
        hp, sep, path = spec.partition("=")
        if not sep or not hp or not path:
            raise ValueError(f"--sae {spec!r}: expected HOOKPOINT=DIR")
        if not os.path.exists(path):
            raise FileNotFoundError(f"--sae {spec!r}: {path} does not exist")
        saes[hp] = acts.SAE.load(path)
    prompts = args.prompt or _lines(args.prompts)
    baseline = args.baseline if args.baseline == "zero" else _lines(args.baseline)
    if args.out:
        ensure_writable_dir(args.out, "--out")
    model, tok = load_model(args.model)
    res = acts.attribute(model, tok, prompts, _metric(args, model, tok), saes=saes,
                         neurons=args.neurons, method=args.method, baseline=baseline,
                         steps=args.steps, batch_size=args.batch_size)
    for p, text in enumerate(prompts):
        print(f"prompt {p}: {text!r}  metric {res.metric[p]:.4f}")
    print(_table(res.top(args.top)))
    if args.out:
        res.save(os.path.join(args.out, "attribution"))
        write_json_atomic(os.path.join(args.out, "top.json"), res.to_json(top=args.top))
        print(f"wrote {args.out}/attribution.safetensors, attribution.json, top.json")
    return 0
