"""`actspace explain LATENTS`: explain the latents of a sparse latent store with an LLM
behind an OpenAI-compatible endpoint and score the explanations (actspace.interp).

Answers are cached under LATENTS/llm_cache (or --cache): a rerun, or a run resumed after a
crash, sends only the requests that have no answer yet.
"""
from __future__ import annotations

import os

HELP = "explain latents with an LLM (OpenAI-compatible endpoint) and score the explanations"


def add_arguments(p) -> None:
    p.add_argument("latents_dir", metavar="LATENTS", help="sparse latent store directory "
                   "(what `actspace encode` writes)")
    p.add_argument("--endpoint", default=None, help="base URL of an OpenAI-compatible server, "
                   "e.g. http://localhost:8000/v1 (vLLM) or http://localhost:8080/v1 "
                   "(llama.cpp)")
    p.add_argument("--model", default=None, help="model name the server serves")
    p.add_argument("--latents", default="all", help="which latents: 'all' (every latent "
                   "that fired) or a list such as 0-99,512")
    p.add_argument("--scorers", default=None, help="comma-separated: embedding, detection, "
                   "fuzzing, or 'none' (default: all three with --endpoint, else embedding)")
    p.add_argument("--explanations", default=None, help="score these explanations (an "
                   "explanations.json or a JSON object {latent: text}) instead of asking "
                   "the LLM for new ones")
    p.add_argument("--out", default=None, help="output file (default LATENTS/explanations.json)")
    p.add_argument("--cache", default=None, help="response cache directory "
                   "(default LATENTS/llm_cache)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the one "
                   "the source activation store records)")
    p.add_argument("--embedder", default=None, help="sentence-transformers model directory "
                   "for the embedding scorer (default: the shipped all-MiniLM-L6-v2)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--retries", type=int, default=5, help="retries on 429/5xx/timeouts")
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable "
                   "holding the API key (a local server needs none)")
    p.add_argument("--logprobs", action="store_true", help="ask for logprobs (AUROC of "
                   "detection/fuzzing from P(1))")
    p.add_argument("--n-train", type=int, default=None, help="examples shown to the "
                   "explainer (default 20)")
    p.add_argument("--n-test", type=int, default=None, help="held-out activating examples "
                   "per latent for scoring (default 20)")
    p.add_argument("--n-negative", type=int, default=None, help="non-activating examples "
                   "per latent for scoring (default 20)")
    p.add_argument("--neighbours", type=int, default=None, help="how many of the "
                   "non-activating examples are the contexts nearest to the activating ones "
                   "in the embedder's space (hard negatives; default 0)")
    p.add_argument("--window", type=int, default=None, help="tokens per example (default 32)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: the "
                   "explanations file's, else 0)")
    p.add_argument("--no-progress", action="store_true")


def parse_latents(spec: str) -> list[int] | None:
    """'all' -> None; '0-3,7' -> [0, 1, 2, 3, 7]."""
    if spec.strip().lower() == "all":
        return None
    out = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = (int(v) for v in part.split("-", 1))
                if b < a:
                    raise ValueError
                out += range(a, b + 1)
            elif part:
                out.append(int(part))
        except ValueError:
            raise ValueError(f"--latents: cannot read {part!r} (use 'all' or e.g. 0-99,512)") \
                from None
    if not out:
        raise ValueError("--latents: empty list")
    return list(dict.fromkeys(out))


def _summary(ex, scorers) -> str:
    lines = [f"{len(ex.texts)} explanations, {len(ex.errors)} latents without one"]
    for s in scorers:
        vals = [r[s]["auroc"] for r in ex.scores.values()
                if s in r and r[s].get("auroc") is not None]
        errs = sum(1 for r in ex.scores.values() if s in r and r[s].get("error"))
        if vals:
            lines.append(f"{s}: mean AUROC {sum(vals) / len(vals):.3f} over {len(vals)} "
                         f"latents ({errs} errors)")
        else:
            lines.append(f"{s}: no scores ({errs} errors)")
    return "\n".join(lines)


def run(args) -> int:
    import actspace as acts
    from actspace.interp.results import FILE_NAME, Explanations

    root = args.latents_dir
    if not os.path.isfile(os.path.join(root, "manifest.json")):
        raise FileNotFoundError(f"LATENTS: no latent store at {root} (no manifest.json)")
    if args.scorers is None:
        scorers = ["embedding", "detection", "fuzzing"] if args.endpoint else ["embedding"]
    elif args.scorers.strip().lower() == "none":
        scorers = []
    else:
        scorers = [s.strip() for s in args.scorers.split(",") if s.strip()]
    if (args.endpoint is None) != (args.model is None):
        raise ValueError("--endpoint and --model go together")
    client = None
    if args.endpoint:
        client = acts.llm.openai_compatible(
            args.endpoint, args.model, api_key=os.environ.get(args.api_key_env) or None,
            max_concurrency=args.concurrency, timeout=args.timeout, max_retries=args.retries,
            max_tokens=args.max_tokens, progress=not args.no_progress,
            cache_dir=args.cache or os.path.join(root, "llm_cache"))
    out = args.out or os.path.join(root, FILE_NAME)
    sampling = {k: getattr(args, k) for k in ("seed", "n_train", "n_test", "n_negative",
                                               "window") if getattr(args, k) is not None}
    if args.neighbours is not None:
        sampling["n_neighbours"] = args.neighbours
    latents = parse_latents(args.latents)
    if args.explanations:
        ex = Explanations.load(args.explanations)
        if latents is not None:
            keep = set(latents)
            ex.texts = {k: v for k, v in ex.texts.items() if k in keep}
    elif client is None:
        raise ValueError("give --endpoint and --model to explain, or --explanations FILE to "
                         "score explanations you have")
    else:
        ex = acts.explain(root, latents, client=client, tokenizer=args.tokenizer,
                          sampling=sampling, embedder=args.embedder)
        ex.save(out)                        # explanations are safe before scoring starts
    if scorers:
        ex = acts.score_explanations(ex, root, scorers, embedder=args.embedder, client=client,
                                     tokenizer=args.tokenizer, logprobs=args.logprobs,
                                     sampling=sampling)
    path = ex.save(out)
    print(_summary(ex, scorers))
    if client is not None:
        u = client.usage
        print(f"LLM: {u.requests} requests ({u.cached} answered from cache, {u.failed} "
              f"failed), {u.prompt_tokens} prompt + {u.completion_tokens} completion tokens")
    print(f"wrote {path}")
    return 0
