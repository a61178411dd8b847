"""Many hookpoints, one pass over the data: the sources and routing behind
``train_sae(hookpoints=[...])`` (on the fly, one forward per batch for every hookpoint) and
``train_sae(stores=[...])`` (several stores read in lockstep).

A multi source yields each batch as a tuple of L tensors, one per hookpoint, over the same
token rows; SAE i of the run reads part ``route[i]`` of it (its input and its target). So
the model runs once per batch however many hookpoints are trained, and memory holds one
batch per hookpoint. Every SAE gets exactly the batches, initial weights (the seeds a
single-hookpoint run of the same arguments draws) and schedule it would get from its own
run: the SAEs equal those of L separate runs on the same batches.
"""
from __future__ import annotations

__all__ = ["ZipSource", "check_hookpoint_list", "part_names"]


def check_hookpoint_list(hookpoints, name="hookpoints") -> list[str]:
    """-> hookpoints as a list of distinct non-empty strings; TypeError / ValueError naming
    the argument otherwise."""
    if isinstance(hookpoints, str) or not isinstance(hookpoints, (list, tuple)):
        raise TypeError(f"{name} must be a list of hookpoint names, got {hookpoints!r}")
    if not hookpoints:
        raise ValueError(f"{name} must not be empty")
    if not all(isinstance(h, str) and h for h in hookpoints):
        raise TypeError(f"{name} must hold non-empty strings, got {hookpoints!r}")
    if len(set(hookpoints)) != len(hookpoints):
        raise ValueError(f"{name} has duplicates: {hookpoints!r}")
    return list(hookpoints)


class ZipSource:
    """ZipSource(sources): several batch sources (e.g. the stores of one capture, one per
    hookpoint) read in lockstep; batch b is the tuple of every source's batch b, read with
    the same arguments, so shuffled stores of the same rows give the same token rows in
    every part. The sources must have the same number of rows (ValueError naming them)."""

    def __init__(self, sources, names=None):
        sources = list(sources)
        if not sources:
            raise ValueError("stores must not be empty")
        for j, s in enumerate(sources):
            if not hasattr(s, "iter_batches"):
                raise TypeError(f"stores[{j}] must be an ActivationStore (iter_batches), got "
                                f"{type(s).__name__}")
        rows = [len(s) for s in sources]
        if len(set(rows)) != 1:
            raise ValueError(f"stores must have the same number of rows to be read in "
                             f"lockstep, got {rows}")
        self.sources = sources
        self.names = list(names) if names is not None else part_names(sources)
        self.d = None          # one width per part: train_sae reads part_dims instead
        self.part_dims = [getattr(s, "d", None) for s in sources]

    def __len__(self):
        return len(self.sources[0])

    def iter_batches(self, batch_size, *, shuffle=False, seed=0, start_batch=0, device=None,
                     dtype=None):
        its = [s.iter_batches(batch_size, shuffle=shuffle, seed=seed, start_batch=start_batch,
                              device=device, dtype=dtype) for s in self.sources]
        for parts in zip(*its, strict=True):
            if any(isinstance(p, (tuple, list)) for p in parts):
                raise ValueError("stores: each store must yield activations x (not (x, y) "
                                 "pairs) to be trained from in lockstep")
            yield tuple(parts)


def part_names(sources) -> list[str]:
    """Each source's hookpoint (``hookpoint`` attribute), else ``part{j}``; made distinct."""
    names = []
    for j, s in enumerate(sources):
        h = getattr(s, "hookpoint", None)
        h = h if isinstance(h, str) and h else f"part{j}"
        names.append(h if h not in names else f"{h}#{j}")
    return names
