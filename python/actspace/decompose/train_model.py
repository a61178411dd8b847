"""Activations on the fly: a model, a tokenizer and texts as a batch source for train_sae.

For quick runs that do not need an activation store on disk. ``ModelSource`` runs the
model over the texts and yields the activations of the non-padding tokens at a hookpoint
(and, for a transcoder, at ``hookpoint_out``: pairs (x, y)) in batches of ``batch_size``
rows. With ``hookpoints=[...]`` it yields, per batch, the tuple of every hookpoint's
activations over the same tokens from one forward pass (train_sae(hookpoints=...), see
train_multi.py). Shuffling permutes the order of the texts per epoch (seeded), so a resumed run
recomputes exactly the same batches; tokens within a text stay in order (use a shuffled
ActivationStore for large runs).
"""
from __future__ import annotations

import torch

from ..model.hookpoints import resolve
from ..model.hooks import read_hook


class ModelSource:
    """ModelSource(model, tokenizer, texts, hookpoint, *, hookpoint_out=None, max_length=128,
    texts_per_forward=8): an iter_batches source of x [B, d] (or (x [B, d], y [B, d_out]));
    ModelSource(model, tokenizer, texts, hookpoints=[h_1, ..., h_L]): of tuples of L."""

    def __init__(self, model, tokenizer, texts, hookpoint=None, *, hookpoint_out=None,
                 hookpoints=None, max_length=128, texts_per_forward=8):
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a list of strings")
        if not texts:
            raise ValueError("texts must not be empty")
        self.model, self.tokenizer, self.texts = model, tokenizer, list(texts)
        if (hookpoints is None) == (hookpoint is None):
            raise ValueError("give hookpoint or hookpoints (a list), not both")
        if hookpoints is not None and hookpoint_out is not None:
            raise ValueError("hookpoint_out (a transcoder) cannot be combined with hookpoints")
        names = list(hookpoints) if hookpoints is not None else \
            [hookpoint] + ([hookpoint_out] if hookpoint_out is not None else [])
        self.names = names
        self.hooks = resolve(model, names)
        self.hookpoint, self.hookpoint_out = hookpoint, hookpoint_out
        self.max_length, self.texts_per_forward = max_length, texts_per_forward
        self._n_tokens = sum(len(ids) for ids in tokenizer(
            self.texts, truncation=True, max_length=max_length)["input_ids"])
        self.d = self.d_out = None  # known after the first forward

    def __len__(self):
        return self._n_tokens

    def _forward(self, texts):
        """-> list of [T, d] activations (one per hookpoint) of the non-padding tokens."""
        got = [None] * len(self.hooks)
        handles = []
        try:
            for j, hp in enumerate(self.hooks):
                handles.append(read_hook(hp, lambda x, j=j: got.__setitem__(j, x.detach())))
            batch = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                                   max_length=self.max_length)
            dev = next(self.model.parameters()).device
            batch = {n: t.to(dev) for n, t in batch.items()}
            with torch.no_grad():
                self.model(**batch)
        finally:
            for h in handles:
                h.remove()
        mask = batch["attention_mask"].bool()
        return [g[mask] for g in got]

    def _rows(self, order):
        for i in range(0, len(order), self.texts_per_forward):
            yield self._forward([self.texts[j] for j in order[i:i + self.texts_per_forward]])

    def iter_batches(self, batch_size, *, shuffle=False, seed=0, start_batch=0, device=None,
                     dtype=None):
        n = len(self.texts)
        order = (torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
                 if shuffle else list(range(n)))
        pending, b = [], 0
        for rows in self._rows(order):
            pending.append(rows)
            while sum(r[0].shape[0] for r in pending) >= batch_size:
                cat = [torch.cat([r[j] for r in pending]) for j in range(len(rows))]
                out, rest = [c[:batch_size] for c in cat], [c[batch_size:] for c in cat]
                pending = [rest]
                if b >= start_batch:
                    yield self._emit(out, device, dtype)
                b += 1
        if pending and pending[0][0].shape[0] > 0:
            cat = [torch.cat([r[j] for r in pending]) for j in range(len(pending[0]))]
            if cat[0].shape[0] and b >= start_batch:
                yield self._emit(cat, device, dtype)

    def _emit(self, tensors, device, dtype):
        self.d = tensors[0].shape[1]
        self.d_out = tensors[-1].shape[1]
        ts = [t.to(device=device, dtype=dtype) for t in tensors]
        return ts[0] if len(ts) == 1 else tuple(ts)
