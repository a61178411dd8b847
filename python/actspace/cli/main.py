"""`actspace` command line: one subcommand per module in actspace.cli.

Each subcommand module defines HELP (one line), add_arguments(parser) and run(args) -> int.
They import torch and friends inside run(), so `actspace --help` starts instantly.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("capture", "stats", "train", "encode", "eval", "steer", "run", "report", "demo")


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


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as e:
        print(f"actspace {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
