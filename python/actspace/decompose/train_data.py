"""Batch sources for training: one interface over stores, tensors and iterables.

Everything train_sae reads goes through ``iter_batches(batch_size, *, shuffle, seed,
start_batch, device, dtype)`` — the ActivationStore's own method — so that resuming after a
kill is exact: the data position is (epoch, start_batch) and the shuffle is a function of
``seed + epoch`` alone. Batches are x [B, d_in] or, for transcoders, pairs (x, y).
"""
from __future__ import annotations

import math

import torch


class TensorSource:
    """x [N, d_in] (and y [N, d_out] for transcoders) as a shuffled batch source."""

    def __init__(self, x, y=None):
        if x.dim() != 2:
            raise ValueError(f"data must have shape [N, d], got {list(x.shape)}")
        if y is not None and (y.dim() != 2 or y.shape[0] != x.shape[0]):
            raise ValueError(f"data target y must have shape [N={x.shape[0]}, d_out], "
                             f"got {list(y.shape)}")
        self.x, self.y = x, y
        self.d = x.shape[1]
        self.d_out = self.d if y is None else y.shape[1]

    def __len__(self):
        return self.x.shape[0]

    def iter_batches(self, batch_size, *, shuffle=False, seed=0, start_batch=0, device=None,
                     dtype=None):
        N = len(self)
        if shuffle:
            order = torch.randperm(N, generator=torch.Generator().manual_seed(seed))
        else:
            order = torch.arange(N)
        for b in range(start_batch, math.ceil(N / batch_size)):
            idx = order[b * batch_size:(b + 1) * batch_size]
            x = self.x[idx].to(device=device, dtype=dtype)
            yield x if self.y is None else (x, self.y[idx].to(device=device, dtype=dtype))


class IterableSource:
    """An iterable of batches (tensors or (x, y) pairs). Not shuffled; resuming skips the
    first start_batch batches, which is exact only when the iterable can be iterated again
    in the same order (a list, or an object whose __iter__ restarts)."""

    def __init__(self, batches):
        self.batches = batches
        try:
            self._len_batches = len(batches)
        except TypeError:
            self._len_batches = None

    def iter_batches(self, batch_size, *, shuffle=False, seed=0, start_batch=0, device=None,
                     dtype=None):
        for b, batch in enumerate(self.batches):
            if b < start_batch:
                continue
            if isinstance(batch, (tuple, list)):
                if len(batch) != 2:
                    raise ValueError("a batch must be a tensor x or a pair (x, y)")
                yield tuple(t.to(device=device, dtype=dtype) for t in batch)
            elif isinstance(batch, torch.Tensor):
                yield batch.to(device=device, dtype=dtype)
            else:
                raise TypeError(f"each batch must be a torch.Tensor or a pair (x, y), got "
                                f"{type(batch).__name__}")


def as_source(data):
    """-> (source, batches_per_epoch or None) for a store, tensor, (x, y) pair or iterable."""
    if hasattr(data, "iter_batches"):
        return data, None
    if isinstance(data, torch.Tensor):
        return TensorSource(data), None
    if (isinstance(data, tuple) and len(data) == 2
            and all(isinstance(t, torch.Tensor) for t in data)):
        return TensorSource(*data), None
    if hasattr(data, "__iter__"):
        src = IterableSource(data)
        return src, src._len_batches
    raise TypeError("data must be an ActivationStore (iter_batches), a tensor [N, d], a pair "
                    f"(x, y) of tensors or an iterable of batches, got {type(data).__name__}")


def batches_per_epoch(source, known, batch_size):
    """Number of batches one pass yields, or None when it cannot be known in advance."""
    if known is not None:
        return known
    try:
        return math.ceil(len(source) / batch_size)
    except TypeError:
        return None


def split_batch(batch):
    """batch -> (x [B, d_in], y [B, d_out]); y is x for an autoencoder."""
    if isinstance(batch, (tuple, list)):
        return batch[0], batch[1]
    return batch, batch
