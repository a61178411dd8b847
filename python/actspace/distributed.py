"""Rank and world helpers over torch.distributed, usable unchanged with one process.

Why this module: capture, statistics and training run under ``torchrun`` with nothing but
torch.distributed for coordination. Every helper here answers as a single process would
when no process group is initialised (rank 0 of a world of 1, barriers are no-ops), so the
library code calls them unconditionally. ``launched()`` initialises the process group from
torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, LOCAL_RANK) for the CLI.

The document-slicing rule is fixed: document i (its index in the source, 0-based) belongs
to rank ``i % world_size``. It is deterministic, needs no count of the documents up front,
balances long streams, and keeps doc_ids global (a rank's rows carry the same doc_id a
single-process capture would give them).
"""
from __future__ import annotations

import contextlib
import datetime
import os

__all__ = ["is_distributed", "rank", "world_size", "local_rank", "is_main", "barrier",
           "owns", "rank_share", "launched", "all_gather_object", "default_device"]


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def is_distributed() -> bool:
    """True when a torch.distributed process group with more than one rank is running."""
    d = _dist()
    return d is not None and d.get_world_size() > 1


def rank() -> int:
    d = _dist()
    return d.get_rank() if d is not None else 0


def world_size() -> int:
    d = _dist()
    return d.get_world_size() if d is not None else 1


def local_rank() -> int:
    """This process's index on its machine (torchrun's LOCAL_RANK; 0 without one)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """True on the rank that writes shared files (manifests, checkpoints) and logs."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op with one process)."""
    d = _dist()
    if d is not None and d.get_world_size() > 1:
        d.barrier()


def owns(doc_id: int, rank_: int | None = None, world: int | None = None) -> bool:
    """Whether document doc_id belongs to rank_ (default: this rank): doc_id % world == rank."""
    world = world_size() if world is None else world
    rank_ = rank() if rank_ is None else rank_
    return doc_id % world == rank_


def rank_share(total: int, rank_: int | None = None, world: int | None = None) -> int:
    """This rank's part of a budget of total units split as evenly as possible (the first
    total % world ranks get one more); the parts sum to total."""
    world = world_size() if world is None else world
    rank_ = rank() if rank_ is None else rank_
    return total // world + (1 if rank_ < total % world else 0)


def all_gather_object(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...]; [obj] with one process."""
    d = _dist()
    if d is None or d.get_world_size() == 1:
        return [obj]
    out = [None] * d.get_world_size()
    d.all_gather_object(out, obj)
    return out


def default_device():
    """The device a rank should use when none is given: cuda:LOCAL_RANK under torchrun on
    a CUDA machine, else None (leave the model where it is)."""
    import torch

    if is_distributed() and torch.cuda.is_available():
        return torch.device("cuda", local_rank() % torch.cuda.device_count())
    return None


def _launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


@contextlib.contextmanager
def launched(backend: str | None = None):
    """Initialise the process group when started by torchrun (env:// rendezvous) and tear
    it down on exit; a plain no-op for a single process or an already initialised group.

    backend default: gloo for CPU tensors plus nccl for CUDA tensors when CUDA is present
    (object collectives and CPU bookkeeping keep working next to GPU all-reduces).
    ACTSPACE_DIST_BACKEND overrides it (e.g. gloo to test several ranks on one GPU). The
    collective timeout is ACTSPACE_DIST_TIMEOUT_MIN minutes (default 180)."""
    import torch
    import torch.distributed as dist

    if _dist() is not None or not _launched_by_torchrun() or not dist.is_available():
        yield
        return
    backend = backend or os.environ.get("ACTSPACE_DIST_BACKEND")
    if backend is None:
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
    # ranks that finish their slice early wait in the final reduction for the slowest one
    minutes = float(os.environ.get("ACTSPACE_DIST_TIMEOUT_MIN", "180"))
    dist.init_process_group(backend=backend, init_method="env://",
                            timeout=datetime.timedelta(minutes=minutes))
    try:
        yield
        dist.barrier()       # leave together (not after an error: the others may be gone)
    finally:
        dist.destroy_process_group()
