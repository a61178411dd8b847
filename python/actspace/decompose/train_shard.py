"""Latent-sharded TopK SAE training over torch.distributed (``train_sae(shard_latents=True)``).

Why: a very wide SAE (millions of latents) does not fit one device, and its encoder matmul
dominates the step. Here every rank owns a contiguous slice of the dictionary (latents
[lo, hi): rows of W_enc, b_enc, W_dec and their Adam state) and every rank sees the same
batches (the data is not split). One step:

- encode: each rank runs topk_encode on its slice and keeps its best k (fewer when the slice
  is narrower); the candidates (values, global indices) are all-gathered and the global top
  k chosen with the single-process rule (value descending, ties to the lower index), so the
  selection equals the unsharded one;
- decode: each rank decodes the selected latents it owns; the partial reconstructions are
  summed across ranks (all_reduce; the backward hands every rank the same upstream
  gradient, since every rank computes the same loss from the same sum);
- b_dec: it is replicated. Its encoder-side gradient differs per rank (each slice sees a
  different part of W_enc): the encoders read a detached copy of b_dec whose gradient is
  all-reduced after the backward (one explicit collective, never inside autograd, so the
  ranks cannot pair collectives in different orders) and added to the decoder-side
  gradient, which is the same everywhere; so every rank takes the same Adam step on it;
- AuxK: the same global selection over the dead latents of all slices;
- dead-latent bookkeeping, the decoder-row projection and renormalisation are per row, hence
  local to the slice.

Each rank checkpoints its own slice (``checkpoint.rank{r}-of-{W}.safetensors``; resuming
needs the same number of processes); the final SAE is gathered whole on every rank and
written once by rank 0. Initialisation is the single-process one: the dictionary is drawn
in independently seeded row blocks (sae.init_rows), so each rank draws only the blocks of
its slice and never allocates the whole dictionary; a sharded run trains the same SAE as
one process on the same batches, up to float rounding (tested).
"""
from __future__ import annotations

import torch

from .. import distributed as D
from .. import ops
from .train_dist import DataParallel
from .train_losses import StepOut, auxk_fvu, fvu_loss

__all__ = ["LatentParallel", "shard_bounds"]


def shard_bounds(M: int, rank: int, world: int) -> tuple[int, int]:
    """[lo, hi) of the latents rank owns: contiguous, sizes differ by at most one."""
    sizes = [M // world + (1 if r < M % world else 0) for r in range(world)]
    lo = sum(sizes[:rank])
    return lo, lo + sizes[rank]


def _sae_like(cfg: dict, d_sae: int, k: int, dtype, device):
    """A topk SAE (of class cfg["sae_class"]) of width d_sae with the other fields of cfg
    (see shard_saes)."""
    sae = cfg["sae_class"](cfg["d_in"], d_sae, "topk", k, d_out=cfg["d_out"],
                           hookpoint=cfg["hookpoint"], hookpoint_out=cfg["hookpoint_out"],
                           apply_b_dec_to_input=cfg["apply_b_dec_to_input"], dtype=dtype,
                           device=device, init=False)    # every weight is written by the caller
    sae.extra_cfg = dict(cfg["extra_cfg"])
    return sae


class _SumAcrossRanks(torch.autograd.Function):
    """Forward: the sum of every rank's tensor. Backward: the upstream gradient unchanged
    (each rank's loss is the same function of the same sum)."""

    @staticmethod
    def forward(ctx, t):
        import torch.distributed as dist

        out = t.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, g):
        return g


class LatentParallel(DataParallel):
    """DataParallel's synchronisation points, for latent sharding (see module doc)."""

    shards_latents = True

    def __init__(self):
        if not D.is_distributed():
            raise ValueError("shard_latents=True needs a torch.distributed process group with "
                             "more than one rank (run under torchrun)")
        super().__init__()
        self.rank = D.rank()
        self.full: list[dict] = []         # the whole SAEs' configurations
        self.bounds: list[tuple[int, int]] = []
        self._b_dec_enc: dict[int, torch.Tensor] = {}   # id(slice) -> encoder-side b_dec

    # ------------------------------------------------------------------ setup
    @property
    def checkpoint_name(self) -> str:
        return f"checkpoint.rank{self.rank}-of-{self.world}.safetensors"

    writes_checkpoint = True               # every rank: its slice

    def wrap_source(self, source):
        """Every rank reads the whole batches (after checking they see the same data)."""
        self.check_same_data(source)
        return source

    def _bounds_of(self, kind: str, d_sae: int) -> tuple[int, int]:
        if kind != "topk":
            raise ValueError(f"shard_latents supports kind='topk' SAEs, got {kind!r}")
        if d_sae < self.world:
            raise ValueError(f"shard_latents: d_sae={d_sae} is smaller than the number of "
                             f"processes ({self.world})")
        return shard_bounds(d_sae, self.rank, self.world)

    def build_saes(self, specs, device, dtype, sae_class):
        """This rank's slices, drawn directly (init_rows): the whole dictionary is never
        allocated, yet each slice equals those rows of the single-process SAE."""
        shards = []
        for s in specs:
            lo, hi = self._bounds_of(s["kind"], s["d_sae"])
            cfg = {"d_in": s["d_in"], "d_sae": s["d_sae"], "k": s["k"], "d_out": s["d_out"],
                   "hookpoint": s["hookpoint"], "hookpoint_out": s["hookpoint_out"],
                   "apply_b_dec_to_input": None, "extra_cfg": {},    # None: SAE's default
                   "sae_class": sae_class}
            part = _sae_like(cfg, hi - lo, min(s["k"], hi - lo), dtype, device)
            cfg["apply_b_dec_to_input"] = part.apply_b_dec_to_input
            part.init_weights(seed=s["seed"], rows=(lo, hi))
            self.full.append(cfg)
            self.bounds.append((lo, hi))
            shards.append(part)
        return shards

    def shard_saes(self, saes):
        """Whole SAEs given by the caller (identical on every rank) -> this rank's slices."""
        shards = []
        for sae in saes:
            lo, hi = self._bounds_of(sae.kind, sae.d_sae)
            cfg = {"d_in": sae.d_in, "d_sae": sae.d_sae, "k": sae.k,
                   "d_out": sae.d_out if sae.is_transcoder else None,
                   "hookpoint": sae.hookpoint, "hookpoint_out": sae.hookpoint_out,
                   "apply_b_dec_to_input": sae.apply_b_dec_to_input,
                   "extra_cfg": dict(sae.extra_cfg), "sae_class": type(sae)}
            part = _sae_like(cfg, hi - lo, min(sae.k, hi - lo), sae.dtype, sae.device)
            with torch.no_grad():
                for name in ("W_enc", "b_enc", "W_dec"):
                    getattr(part, name).copy_(getattr(sae, name)[lo:hi])
                part.b_dec.copy_(sae.b_dec)
            self.full.append(cfg)
            self.bounds.append((lo, hi))
            shards.append(part)
        return shards

    def gather_saes(self, shards):
        """This rank's slices -> the whole SAEs in rank 0's host memory; None on the other
        ranks. The dictionary is sharded because it may not fit one device, so it is never
        assembled on a device, nor on every rank: each owner sends its slice to rank 0,
        which receives it into a slice-sized device buffer and copies it into place."""
        import torch.distributed as dist

        out = []
        for s, (cfg, part) in enumerate(zip(self.full, shards)):
            sae = (_sae_like(cfg, cfg["d_sae"], cfg["k"], part.dtype, "cpu")
                   if self.rank == 0 else None)
            with torch.no_grad():
                for name in ("W_enc", "b_enc", "W_dec"):
                    mine = getattr(part, name).contiguous()
                    for r in range(self.world):
                        lo, hi = shard_bounds(cfg["d_sae"], r, self.world)
                        if self.rank == 0:
                            if r == 0:
                                buf = mine
                            else:   # [hi - lo, ...] on the slices' device
                                buf = mine.new_empty((hi - lo, *mine.shape[1:]))
                                dist.recv(buf, src=r)
                            getattr(sae, name)[lo:hi].copy_(buf)
                        elif r == self.rank:
                            dist.send(mine, dst=0)
                if sae is not None:
                    sae.b_dec.copy_(part.b_dec)
            out.append(sae)
        return out

    def broadcast_params(self, saes) -> None:
        """Nothing to broadcast: slices differ, and the replicated b_dec starts equal."""

    def d_sae(self, i: int, sae) -> int:
        return self.full[i]["d_sae"]

    def k(self, i: int, sae) -> int:
        return self.full[i]["k"]

    def dead_fraction(self, i: int, last_fired, tokens: int, dead_tokens: int) -> float:
        import torch.distributed as dist

        n = torch.tensor([float(((tokens - last_fired) >= dead_tokens).sum())],
                         dtype=torch.float64)
        dist.all_reduce(n)
        return float(n) / self.full[i]["d_sae"]

    # ------------------------------------------------------------------ per batch
    def center(self, y, how, median_fn):
        return y.mean(0) if how == "mean" else median_fn(y)     # the same batch everywhere

    def global_batch(self, x):
        return x                     # every rank reads the whole batch

    def begin_batch(self, y):
        return 1.0, y.shape[0]

    def reduce_grads(self, sae) -> None:
        """Slice gradients are local; b_dec gets the encoder-side part summed over ranks."""
        import torch.distributed as dist

        leaf = self._b_dec_enc.pop(id(sae), None)
        if leaf is None:
            return
        g = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
        dist.all_reduce(g)
        if sae.b_dec.grad is None:
            sae.b_dec.grad = g
        else:
            sae.b_dec.grad.add_(g)

    def end_step(self, sae, out):
        return out

    # ------------------------------------------------------------------ the forward
    def _select(self, v, i, lo, k):
        """Local candidates v, i [N, k_r] (local indices) -> mask [N, k_r] of the ones in the
        global top k (value descending, ties to the lower global index)."""
        import torch.distributed as dist

        N, kr = v.shape
        widths = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world)]
        dist.all_gather(widths, torch.tensor([kr]))
        kmax = int(max(widths))
        pad = kmax - kr
        vals = torch.nn.functional.pad(v.detach(), (0, pad), value=-float("inf"))
        gidx = torch.nn.functional.pad(i.long() + lo, (0, pad), value=torch.iinfo(
            torch.int64).max)                                       # padding never wins
        gv = [torch.empty_like(vals) for _ in range(self.world)]
        gi = [torch.empty_like(gidx) for _ in range(self.world)]
        dist.all_gather(gv, vals)
        dist.all_gather(gi, gidx)
        V, I = torch.cat(gv, 1), torch.cat(gi, 1)                   # [N, W * kmax]
        by_index = I.argsort(dim=1, stable=True)
        order = V.gather(1, by_index).argsort(dim=1, descending=True, stable=True)
        pick = by_index.gather(1, order[:, :k])                     # [N, k] positions
        chosen = torch.zeros_like(V, dtype=torch.bool).scatter_(1, pick, True)
        return chosen[:, self.rank * kmax:self.rank * kmax + kr]

    def _encode_decode(self, part, x, lo, k, W_enc, b_enc, W_dec, b_dec_in):
        """Global top k of act(pre) over every slice -> (sum of the slices' decodes
        [N, d_out] (no bias), this slice's (values, local indices, selected mask))."""
        kr = min(k, W_enc.shape[0])
        v, i = ops.topk_encode(x, W_enc, b_enc, kr, b_dec=b_dec_in, activation="relu")
        mine = self._select(v, i, lo, k)
        v_mine = v * mine
        partial = ops.sparse_decode(v_mine, i, W_dec)
        return _SumAcrossRanks.apply(partial), v_mine, i, mine


    def train_forward(self, sae, x, y, *, index, dead=None, k_aux=256, auxk_coeff=1 / 32,
                      **_):
        """train_losses.train_forward of a topk SAE slice (``index``: its place in the sweep)."""
        import torch.distributed as dist

        lo, _hi = self.bounds[index]
        k = self.full[index]["k"]
        yc = y - y.mean(0)
        total_var = yc.pow(2).sum().clamp_min(torch.finfo(y.dtype).tiny)
        N = x.shape[0]
        b_dec_in = None
        if sae.apply_b_dec_to_input:     # the encoders' b_dec: gradient reduced in reduce_grads
            b_dec_in = sae.b_dec.detach().clone().requires_grad_(True)
            self._b_dec_enc[id(sae)] = b_dec_in
        dec, v, i, mine = self._encode_decode(sae, x, lo, k, sae.W_enc, sae.b_enc, sae.W_dec,
                                              b_dec_in)
        y_hat = dec + sae.b_dec
        active = (v > 0) & mine
        fired = torch.zeros(sae.d_sae, dtype=torch.bool, device=x.device)
        fired[i[active].long()] = True
        n_active = active.sum().to(torch.float64).reshape(1)
        dist.all_reduce(n_active)
        l0 = float(n_active) / N
        err = y - y_hat
        fvu = fvu_loss(err, total_var)
        loss, aux = fvu, None
        if dead is not None and auxk_coeff > 0:
            aux = self._auxk(sae, x, err.detach(), dead, k_aux, lo, b_dec_in)
            if aux is not None:
                loss = loss + auxk_coeff * aux
        return StepOut(loss, float(fvu.detach()), float(l0),
                       float(aux.detach()) if aux is not None else 0.0, fired)

    def _auxk(self, sae, x, residual, dead, k_aux, lo, b_dec):
        """AuxK over the dead latents of every slice (see train_losses._auxk)."""
        import torch.distributed as dist

        dead_idx = dead.nonzero().squeeze(1)
        n = torch.tensor([float(dead_idx.numel())], dtype=torch.float64)
        dist.all_reduce(n)
        n_dead = int(n)
        if n_dead == 0:
            return None
        k = min(k_aux, n_dead)
        if dead_idx.numel():
            # local candidates carry global indices through lo + dead_idx
            v, i = ops.topk_encode(x, sae.W_enc[dead_idx], sae.b_enc[dead_idx],
                                   min(k, dead_idx.numel()), b_dec=b_dec, activation="relu")
            gid = dead_idx[i.long()].to(torch.int32)   # slice-local latent ids, ascending
            mine = self._select(v, gid, lo, k)
            partial = ops.sparse_decode(v * mine, i, sae.W_dec[dead_idx])
        else:                                           # no dead latent here: no candidates
            empty = x.new_zeros(x.shape[0], 0)
            self._select(empty, torch.zeros_like(empty, dtype=torch.int32), lo, k)
            partial = x.new_zeros(x.shape[0], sae.d_out)
        e_hat = _SumAcrossRanks.apply(partial)
        return auxk_fvu(e_hat, residual)             # residual: the same on every rank
