"""Data-parallel SAE training over torch.distributed (torchrun), used by train.py.

Why not DistributedDataParallel: the training forward (train_losses.train_forward) calls
the fused ops on the SAE's parameters, not SAE.forward, so DDP's forward bookkeeping never
runs. This module does what DDP would, explicitly and in one flat all-reduce per SAE and
step, and keeps every piece of state that is not a gradient identical on all ranks:

- data: every rank iterates the same global batch order (same seed) and takes its
  contiguous slice of each global batch (torch.tensor_split: sizes differ by at most one);
  an ActivationStore is sliced before reading, so each rank reads only its rows. A final
  global batch with fewer than 2 rows per rank is dropped on every rank;
- loss: each rank scales its loss by var_r / var_global (the batch variances, all-reduced),
  so the summed gradients are exactly the gradient of the single-process loss on the global
  batch for topk SAEs (FVU is a sum of squares over the global batch variance; AuxK's
  denominator, the residual's variance, is all-reduced over the global batch too). For
  relu / jumprelu the sparsity penalty and for batchtopk the k*N selection stay per rank:
  close to, not equal to, single-process training;
- gradients: summed across ranks before the decoder-gradient projection, so the projection,
  Adam step and decoder renormalisation are identical on every rank;
- fired latents (dead-latent bookkeeping), non-finite batch skips, b_dec initialisation
  and float buffers (batchtopk's threshold) are reduced so every rank agrees; a kind's
  initialisation from the first batch (init_from_batch) sees the whole global batch;
- the logged fvu / l0 / auxk / loss are those of the global batch;
- checkpoints, final SAEs, history and the progress bar are rank 0's (train.py asks
  ``is_main``); parameters are broadcast from rank 0 at the start, as DDP does.

With one process ``DataParallel.active`` is False and train.py skips all of this.
"""
from __future__ import annotations

import dataclasses

import torch

from .. import distributed as D


class RankSlices:
    """A batch source whose iter_batches yields this rank's slice of each global batch of
    the wrapped source (same arguments, same global order on every rank)."""

    def __init__(self, source, rank: int, world: int):
        self.source, self.rank, self.world = source, rank, world

    def __getattr__(self, name):        # d, d_out, dtype, hookpoint ... of the source
        if name == "source":
            raise AttributeError(name)
        return getattr(self.source, name)

    def __len__(self):                  # rows of the whole source (global batch count)
        return len(self.source)

    def _slice(self, n: int) -> tuple[int, int] | None:
        if n < 2 * self.world:            # too small to split into batches with a variance
            return None
        sizes = [n // self.world + (1 if r < n % self.world else 0) for r in range(self.world)]
        a = sum(sizes[:self.rank])
        return a, a + sizes[self.rank]

    def iter_batches(self, batch_size, *, shuffle=False, seed=0, start_batch=0, device=None,
                     dtype=None, **kw):
        if hasattr(self.source, "batch_indices") and hasattr(self.source, "gather_rows"):
            yield from self._store_batches(batch_size, shuffle, seed, start_batch, device,
                                           dtype, **kw)
            return
        # any other source: read the global batch, keep this rank's rows
        for batch in self.source.iter_batches(batch_size, shuffle=shuffle, seed=seed,
                                              start_batch=start_batch, device=device,
                                              dtype=dtype, **kw):
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            ab = self._slice(x.shape[0])
            if ab is None:
                continue
            yield (tuple(t[ab[0]:ab[1]] for t in batch) if isinstance(batch, (tuple, list))
                   else batch[ab[0]:ab[1]])

    def _store_batches(self, batch_size, shuffle, seed, start_batch, device, dtype, **kw):
        store = self.source
        pin = device is not None and torch.device(device).type == "cuda"
        for i, item in enumerate(store.batch_indices(batch_size, shuffle=shuffle, seed=seed,
                                                     **kw)):
            if i < start_batch:
                continue
            n = item[2] - item[1] if item[0] == "range" else item[1].numel()
            ab = self._slice(n)
            if ab is None:
                continue
            if item[0] == "range":
                x = store.read(item[1] + ab[0], item[1] + ab[1])
            else:
                x = store.gather_rows(item[1][ab[0]:ab[1]])
            if dtype is not None:
                x = x.to(dtype)
            if device is not None:
                x = x.pin_memory().to(device, non_blocking=True) if pin else x.to(device)
            yield x


class DataParallel:
    """The synchronisation points of one data-parallel training run (see module doc)."""

    def __init__(self):
        self.active = D.is_distributed()
        self.world = D.world_size()
        self.is_main = D.is_main()
        self._n_local = self._n_global = 0
        self._var_local = self._var_global = None

    # ------------------------------------------------------------------ setup
    def wrap_source(self, source):
        if not self.active:
            return source
        self.check_same_data(source)
        return RankSlices(source, D.rank(), self.world)

    @staticmethod
    def check_same_data(source) -> None:
        """Every rank must read the same data (the same store): compare row counts."""
        try:
            n = len(source)
        except TypeError:
            n = None
        ns = D.all_gather_object(n)
        if len(set(ns)) != 1:
            raise ValueError(f"data: the ranks see different data (rows per rank: {ns}); every "
                             f"rank must open the same store")

    def broadcast_params(self, saes) -> None:
        """Rank 0's parameters and buffers everywhere (seeded init or checkpoint alike)."""
        if not self.active:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for sae in saes:
                for t in sae.state_dict().values():
                    dist.broadcast(t, src=0)

    def finish(self) -> None:
        D.barrier()

    # the same interface as train_shard.LatentParallel: whole SAEs on every rank
    shards_latents = False
    checkpoint_name = "checkpoint.safetensors"

    @property
    def writes_checkpoint(self) -> bool:
        return self.is_main

    def shard_saes(self, saes):
        return saes

    def build_saes(self, specs, device, dtype, sae_class):
        """Whole SAEs of sae_class from train_loop.sae_specs (seeded: the same on every
        rank). The class is passed in: this module sits below the SAE class (SAE.fit)."""
        out = []
        for s in specs:
            sae = sae_class(s["d_in"], s["d_sae"], s["kind"], s["k"], d_out=s["d_out"],
                      hookpoint=s["hookpoint"], hookpoint_out=s["hookpoint_out"], dtype=dtype,
                      device=device, init=False)
            sae.init_weights(seed=s["seed"])
            out.append(sae)
        return out

    def gather_saes(self, saes):
        return saes

    def d_sae(self, i: int, sae) -> int:
        return sae.d_sae

    def k(self, i: int, sae):
        return sae.k

    def dead_fraction(self, i: int, last_fired, tokens: int, dead_tokens: int) -> float:
        return float(((tokens - last_fired) >= dead_tokens).float().mean())

    # ------------------------------------------------------------------ per batch
    def all_ok(self, ok: bool, device) -> bool:
        """True only when every rank's batch is usable (all skip a batch together)."""
        if not self.active:
            return ok
        import torch.distributed as dist

        t = torch.tensor([0.0 if ok else 1.0], device=device)
        dist.all_reduce(t)
        return bool(t.item() == 0)

    def center(self, y: torch.Tensor, how: str, median_fn) -> torch.Tensor:
        """b_dec initialisation from the global batch: its mean, or geometric median."""
        if not self.active:
            return y.mean(0) if how == "mean" else median_fn(y)
        import torch.distributed as dist

        if how == "mean":
            s = torch.cat([y.sum(0, dtype=torch.float64), y.new_tensor([y.shape[0]],
                                                                       dtype=torch.float64)])
            dist.all_reduce(s)
            return (s[:-1] / s[-1]).to(y.dtype)
        parts = D.all_gather_object(y.detach().cpu())
        return median_fn(torch.cat(parts).to(y.device))

    def global_batch(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's slice x [B_r, d] -> the global batch [B, d] (the ranks' slices in rank
        order). For the data-dependent initialisations of the first batch (a kind's
        init_from_batch, e.g. JumpReLU thresholds at an L0 target), which must see what one
        process would, or the ranks would start from different weights."""
        if not self.active:
            return x
        parts = D.all_gather_object(x.detach().cpu())
        return torch.cat(parts).to(x.device)

    def begin_batch(self, y: torch.Tensor) -> tuple[float, int]:
        """-> (loss scale of this rank, rows of the global batch) for y [B_r, d_out]."""
        if not self.active:
            return 1.0, y.shape[0]
        import torch.distributed as dist

        yd = y.detach().to(torch.float64)
        n = y.shape[0]
        var_r = float((yd - yd.mean(0)).pow(2).sum())
        # Chan: global centred sum of squares from per-rank counts, sums and m2
        s = torch.cat([yd.new_tensor([n, var_r]), yd.sum(0)])
        parts = [torch.zeros_like(s) for _ in range(self.world)]
        dist.all_gather(parts, s)
        P = torch.stack(parts).cpu()
        N = float(P[:, 0].sum())
        mean = P[:, 2:].sum(0) / N
        means = P[:, 2:] / P[:, :1]
        var_g = float(P[:, 1].sum() + (P[:, :1] * (means - mean).pow(2)).sum())
        tiny = torch.finfo(y.dtype).tiny
        self._n_local, self._n_global = n, int(N)
        self._var_local, self._var_global = max(var_r, tiny), max(var_g, tiny)
        return self._var_local / self._var_global, int(N)

    def reduce_grads(self, sae) -> None:
        """Sum the gradients of sae's parameters over the ranks (one flat all-reduce)."""
        if not self.active:
            return
        import torch.distributed as dist

        ps = [p for p in sae.parameters() if p.requires_grad]
        for p in ps:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in ps])
        dist.all_reduce(flat)
        a = 0
        for p in ps:
            p.grad.copy_(flat[a:a + p.numel()].view_as(p))
            a += p.numel()

    def end_step(self, sae, out):
        """After the optimizer step: average float buffers, and -> out with the global
        fired mask and the global batch's fvu / l0 / aux / loss."""
        if not self.active:
            return out
        import torch.distributed as dist

        with torch.no_grad():
            for name, b in sae.named_buffers():
                if b.is_floating_point():
                    dist.all_reduce(b)
                    b.div_(self.world)
        w = self._var_local / self._var_global
        vec = torch.cat([out.fired.to(torch.float64),
                         torch.tensor([out.fvu * w, out.l0 * self._n_local, out.aux * w,
                                       float(out.loss.detach()) * w], dtype=torch.float64,
                                      device=out.fired.device)])
        dist.all_reduce(vec)
        fvu, l0, aux, loss = vec[-4:].tolist()
        return dataclasses.replace(out, fired=vec[:-4] > 0, fvu=fvu,
                                   l0=l0 / self._n_global, aux=aux,
                                   loss=torch.tensor(loss))
