"""Stage completion markers: what makes `actspace run` restartable.

Why markers and not "the output file exists": a stage writes several files and a crash
can leave some of them; a stage counts as finished only when its marker
(OUT/stages/NAME.json) exists, and the marker is written atomically (temp file, fsync,
rename) after everything the stage wrote is on disk. A rerun skips marked stages and
reruns the rest; stages that resume themselves (capture, SAE training, encoding) pick up
their partial output.
"""
from __future__ import annotations

import os
import time
from datetime import datetime, timezone

from .. import _io


def write_json_atomic(path, obj) -> None:
    """obj (arrays allowed: written as lists) as JSON to path, all or nothing (actspace._io)."""
    _io.write_json_atomic(path, obj, default=_jsonable)


def _jsonable(v):
    if hasattr(v, "tolist"):
        return v.tolist()
    raise TypeError(f"not JSON serializable: {type(v).__name__}")


def marker_path(out_dir, name: str) -> str:
    return os.path.join(os.fspath(out_dir), "stages", name.replace("/", "_") + ".json")


def read_marker(out_dir, name: str) -> dict | None:
    p = marker_path(out_dir, name)
    if not os.path.isfile(p):
        return None
    return _io.read_json(p, "stage marker")


def done_stages(out_dir) -> list[dict]:
    """The markers of every finished stage of out_dir (empty for a new directory)."""
    folder = os.path.join(os.fspath(out_dir), "stages")
    if not os.path.isdir(folder):
        return []
    recs = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json"):
            recs.append(_io.read_json(os.path.join(folder, name), "stage marker"))
    return recs


def run_stage(out_dir, name: str, fn, log=None) -> dict:
    """Run fn() -> info (a JSON-able dict) unless stage `name` is already marked done.

    Returns {"stage", "status": "ran" | "skipped", "seconds", "info"}; the marker keeps
    the info of the run that did the work, so a skipped stage still reports it."""
    done = read_marker(out_dir, name)
    if done is not None:
        return dict(done, status="skipped")
    if log is not None:
        log(f"[actspace] stage {name} ...")
    t0 = time.perf_counter()
    info = fn() or {}
    rec = {"stage": name, "seconds": round(time.perf_counter() - t0, 3), "info": info,
           "finished_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}
    write_json_atomic(marker_path(out_dir, name), rec)
    return dict(rec, status="ran")
