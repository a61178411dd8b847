"""`actspace report OUTDIR`: (re)write the self-contained HTML report of a pipeline run."""
from __future__ import annotations

HELP = "write the self-contained HTML report of a pipeline output directory"


def add_arguments(p) -> None:
    p.add_argument("out_dir", help="output directory of `actspace run` / `actspace demo`")
    p.add_argument("-o", "--output", default=None, help="HTML file (default OUT_DIR/report.html)")


def run(args) -> int:
    import os

    from ..report import write_report

    print(f"report: {os.path.abspath(write_report(args.out_dir, args.output))}")
    return 0
