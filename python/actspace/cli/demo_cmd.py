"""`actspace demo`: the pipeline on all-MiniLM-L6-v2 and pydoc text, with no arguments;
`--causal`: on the shipped byte-level pydoc LM (CE/KL of the SAE splice, steering with
generated samples, attribution of a next-token logit difference in the report)."""
from __future__ import annotations

HELP = "run the built-in demo pipeline (all-MiniLM-L6-v2 on pydoc text) and write its report"


def add_arguments(p) -> None:
    p.add_argument("--out", default=None, help="output directory "
                   "(default ./actspace-demo; a rerun resumes it)")
    p.add_argument("--quick", action="store_true",
                   help="a much smaller run (a few thousand tokens), for tests")
    p.add_argument("--causal", action="store_true",
                   help="the causal-LM demo on the shipped pydoc LM (default out: "
                        "./actspace-demo-causal)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args) -> int:
    from ..pipeline import demo_config
    from .run_cmd import execute

    out = args.out or ("actspace-demo-causal" if args.causal else "actspace-demo")
    return execute(demo_config(quick=args.quick, causal=args.causal), out, not args.no_progress)
