"""`actspace eval`: evaluate a saved SAE on an activation store, optionally with the
downstream cost of splicing it into a model (see actspace.decompose.evaluate)."""
from __future__ import annotations

HELP = "evaluate an SAE: FVU, L0, dead/dense latents; splice cost in a model (CE, KL, cosine)"


def add_arguments(p) -> None:
    p.add_argument("sae", help="SAE directory (any layout actspace.SAE.load reads), "
                   "hf://org/repo/folder, or RELEASE:ID (`actspace sae list`)")
    p.add_argument("store", nargs="?", default=None,
                   help="activation store directory at the SAE's hookpoint")
    p.add_argument("--store-out", default=None, help="transcoders: the store at the SAE's "
                   "hookpoint_out, rows aligned with STORE (the same capture)")
    p.add_argument("--model", default=None, help="Hugging Face model directory for the "
                   "downstream cost (causal LM: CE/KL; otherwise encoder: pooled cosine)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: --model)")
    p.add_argument("--texts", default=None, help="text file, one text per line (default: "
                   "the first --n-texts entries of Python's pydoc topics)")
    p.add_argument("--n-texts", type=int, default=64)
    p.add_argument("--hookpoint", default=None, help="default: the SAE's hookpoint")
    p.add_argument("--hookpoint-out", default=None,
                   help="transcoders: where the output is spliced (default: the SAE's)")
    p.add_argument("--batch-size", type=int, default=4096, help="activation rows per batch")
    p.add_argument("--text-batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--splice-special-tokens", action="store_true",
                   help="also splice special tokens (CLS/SEP/BOS); by default they keep "
                   "their activation, as a capture without --keep-special-tokens never "
                   "stored them for the SAE to learn")
    p.add_argument("--device", default="cpu", help="where the model and the SAE run")
    p.add_argument("--out", default=None, help="write the JSON result here (default: stdout)")


def _load_model(path, device):
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    archs = getattr(AutoConfig.from_pretrained(path), "architectures", None) or []
    causal = any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs)
    return (AutoModelForCausalLM if causal else AutoModel).from_pretrained(path).to(device)


def _texts(args):
    if args.texts:
        with open(args.texts) as f:
            texts = [line.strip() for line in f if line.strip()]
    else:
        from pydoc_data.topics import topics
        texts = [" ".join(topics[k].split()) for k in sorted(topics)]
    if args.n_texts <= 0:
        raise ValueError(f"--n-texts must be positive, got {args.n_texts}")
    return texts[: args.n_texts]


def run(args) -> int:
    import json

    import actspace as acts
    from actspace.decompose.evaluate import evaluate_sae, save_json

    if args.store is None and args.model is None:
        raise ValueError("give a store and/or --model")
    sae = acts.SAE.load(args.sae, device=args.device)
    kw = {}
    if args.model:
        from transformers import AutoTokenizer
        kw["model"] = _load_model(args.model, args.device)
        kw["tokenizer"] = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
        kw["texts"] = _texts(args)
    data = args.store
    if sae.is_transcoder and data is not None:
        if args.store_out is None:
            raise ValueError("--store-out is required to evaluate a transcoder on a store "
                             "(its targets at hookpoint_out)")
        data = (args.store, args.store_out)
    result = evaluate_sae(sae, data, hookpoint=args.hookpoint,
                          hookpoint_out=args.hookpoint_out, batch_size=args.batch_size,
                          text_batch_size=args.text_batch_size, max_length=args.max_length,
                          splice_special_tokens=args.splice_special_tokens, **kw)
    if args.out:
        save_json(result, args.out)
    else:
        print(json.dumps(result, indent=1))
    return 0
