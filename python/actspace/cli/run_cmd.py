"""`actspace run CONFIG`: the whole pipeline from one YAML/JSON config file."""
from __future__ import annotations

HELP = "run the whole pipeline (capture, stats, SAE, latents, steering, report) from a config"


def add_arguments(p) -> None:
    p.add_argument("config", help="YAML or JSON config file (every key is described in the "
                   "README, section \"One job from one config file: actspace run\")")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output directory (required; a rerun with the same DIR resumes it)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def execute(cfg: dict, out: str, progress: bool) -> int:
    """Shared by run and demo: run the pipeline, print the summary and the report path."""
    import os

    from ..pipeline import run_pipeline, summary_table

    recs = run_pipeline(cfg, out, progress=progress)
    print(summary_table(recs))
    print(f"report: {os.path.abspath(os.path.join(out, 'report.html'))}")
    return 0


def run(args) -> int:
    from ..pipeline import load_config

    return execute(load_config(args.config), args.out, not args.no_progress)
