"""Distributed capture: one store directory written by every rank of a torchrun job.

Why a layer over StoreWriter: under ``torchrun --nproc-per-node N`` each rank captures the
documents it owns (doc i goes to rank i % N, actspace.distributed.owns) and must write
them crash-safely next to the other ranks' rows without any coordination but the process
group. Each rank therefore keeps its own files in the shared store directory:

    shard-r{rank}-NNNNNN.safetensors      its shards (documents it owns, in source order)
    manifest.r{rank}.json                 its partial manifest (docs_done, shards, counts)
    stats.r{rank}.safetensors/.json       statistics of its rows (for resume)
    .lock.r{rank}                         its writer lock

and a rerun with the same world size resumes each rank from its own partial manifest. At
the end (``finalize``), the statistics are all-reduced (every rank gets the global ones)
and, after a barrier, rank 0 writes the one ``manifest.json`` listing every rank's shards
(rank 0's first, then rank 1's ...) and the global ``stats``: the directory is then an
ordinary ActivationStore. Rows within a shard and the shards of one rank are in source
order; across ranks documents interleave, so the store holds the same multiset of
(doc_id, position, token_id, acts) rows as a single-process capture, in another order.
"""
from __future__ import annotations

import functools
import os

from .. import distributed as D
from .._io import read_json, write_json_atomic
from .store import MANIFEST, STATS
from .texts import add_counts
from .writer import StoreWriter


class RankStoreWriter(StoreWriter):
    """A StoreWriter for one rank of a distributed capture (rank-specific file names)."""

    def __init__(self, path, *, rank: int, world: int, meta: dict, **kw):
        self.manifest_name = f"manifest.r{rank}.json"
        self.shard_prefix = f"shard-r{rank}-"
        self.lock_name = f".lock.r{rank}"
        self.stats_name = f"{STATS}.r{rank}"
        _check_layout(os.fspath(path), world)
        super().__init__(path, meta=dict(meta, rank=rank, world_size=world), **kw)


def _check_layout(path: str, world: int) -> None:
    """A job must not write into a store captured by another number of processes: the
    document slices would not line up with the recorded ones (world=1: single process)."""
    found = {}
    mpath = os.path.join(path, MANIFEST)
    if os.path.exists(mpath):
        found[MANIFEST] = read_json(mpath, "activation store manifest").get("world_size", 1)
    if os.path.isdir(path):
        for name in os.listdir(path):
            if name.startswith("manifest.r") and name.endswith(".json"):
                found[name] = read_json(os.path.join(path, name),
                                        "activation store manifest").get("world_size")
    bad = {k: v for k, v in found.items() if v != world}
    if bad:
        raise ValueError(f"store {path!r} was captured by another number of processes "
                         f"({bad}); this job has {world}: resume with the same number of "
                         f"processes or use another out_dir")


def make_writer(path, **kw) -> StoreWriter:
    """The writer of this process: a plain StoreWriter with one process, else this rank's."""
    if not D.is_distributed():
        _check_layout(os.fspath(path), 1)
        return StoreWriter(path, **kw)
    return RankStoreWriter(path, rank=D.rank(), world=D.world_size(), **kw)


def merged_manifest(path: str, world: int) -> dict:
    """The store manifest joining the partial manifests of ranks 0..world-1 of path."""
    parts = []
    for r in range(world):
        parts.append(read_json(os.path.join(path, f"manifest.r{r}.json"),
                               "activation store manifest"))
    man = {k: v for k, v in parts[0].items() if k != "rank"}
    man["shards"] = [s for p in parts for s in p["shards"]]
    man["total_rows"] = sum(int(p["total_rows"]) for p in parts)
    man["complete"] = all(p.get("complete") for p in parts)
    done = [int(p["docs_done"]) for p in parts]
    # documents below min(done) are recorded by every rank; a finished job saw them all
    man["docs_done"] = max(done) if man["complete"] else min(done)
    man["docs_done_by_rank"] = done
    counts: dict = {}
    for p in parts:
        for k, v in p.get("counts", {}).items():
            counts[k] = counts.get(k, 0) + v
    if counts:
        man["counts"] = counts
    man["world_size"] = world
    return man


def finalize(paths: list[str], stats: list, result: dict) -> None:
    """After every rank closed its writers: all-reduce statistics and the run's counts, and
    let rank 0 write each store's manifest.json and global stats. Collective: every rank
    calls it with the hookpoints in the same order. No-op with one process."""
    if not D.is_distributed():
        return
    for st in stats:
        if st is not None:
            st.all_reduce()
    keys = ("tokens", "documents", "truncated", "windowed", "dropped_tokens")
    parts = D.all_gather_object({k: result[k] for k in keys + ("resumed_from_doc",)})
    result.update({k: functools.reduce(add_counts, (p[k] for p in parts)) for k in keys})
    result["resumed_from_doc"] = min(p["resumed_from_doc"] for p in parts)
    result.update(world_size=D.world_size())
    D.barrier()                    # every partial manifest is on disk
    if D.is_main():
        for path, st in zip(paths, stats):
            man = merged_manifest(path, D.world_size())
            if st is not None:
                st.save(os.path.join(path, STATS),
                        extra={"docs_done": man["docs_done"], "total_rows": man["total_rows"],
                               "shards": len(man["shards"])})
            write_json_atomic(os.path.join(path, MANIFEST), man)
    D.barrier()                    # the store is readable on every rank when this returns
