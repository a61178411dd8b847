"""actspace.report: the self-contained HTML report of a pipeline output directory.

    from actspace.report import write_report
    write_report("out/")            # -> out/report.html
"""


def render(out_dir) -> str:
    from .html import render as _render

    return _render(out_dir)


def write_report(out_dir, path=None) -> str:
    from .html import write_report as _write

    return _write(out_dir, path)


__all__ = ["render", "write_report"]
