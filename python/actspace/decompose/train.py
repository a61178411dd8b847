"""``acts.train_sae``: train one SAE, or a sweep of them from one pass over the activations.

Recipe (Gao et al. 2024, "Scaling and evaluating sparse autoencoders", and sparsify):
b_dec starts at the mean (or geometric median) of the first batch, decoder rows are unit
vectors and the encoder starts tied to the decoder; before every Adam step the part of the
decoder gradient parallel to each row is removed and after it rows are renormalised; AuxK
revives dead latents; the learning rate warms up linearly, stays, then decays linearly to 0
over the last ``decay_fraction`` of the steps. Every batch is fed to every SAE of the sweep.

Robustness: a batch with a non-finite value is skipped (never trained on), counted and
warned about; with ``out_dir`` the run checkpoints atomically every ``checkpoint_every``
steps and, started again with the same arguments, resumes exactly where it stopped
(weights, Adam state, schedule, data position, RNG). ``max_steps`` stops a run early at that
step with a checkpoint, as a kill would (tests use it).
"""
from __future__ import annotations

import itertools
import math
import warnings
from pathlib import Path

import torch

from .interop import _write_json
from .train_checkpoint import load_checkpoint, save_checkpoint
from .train_data import as_source, batches_per_epoch, split_batch
from .train_dist import DataParallel
from .train_shard import LatentParallel
from .train_losses import (centered_sum_sq, fold_decoder_norm, geometric_median,
                           project_decoder_grad, train_forward)

__all__ = ["train_sae", "lr_at", "make_optimizer"]


def lr_at(step, total, base_lr, warmup_steps, decay_fraction):
    """Learning rate at optimizer step `step` of `total`: linear warm-up, flat, linear decay."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_start = total - int(decay_fraction * total)
    if step >= decay_start and total > decay_start:
        return base_lr * max(total - step, 0) / (total - decay_start)
    return base_lr


def make_optimizer(sae, lr=0.0):
    """Adam, fused (one kernel over all parameters: ~5x faster on CPU) where torch has it."""
    try:
        return torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8,
                                fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)


def _as_list(v):
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _sae_specs(d_in, d_out, kind, d_sae, expansion_factor, k, hookpoint, hookpoint_out,
               seed):
    """One SAE configuration per (width, k) of the sweep, each with its init seed (drawn
    from `seed`): the parallel strategy builds whole SAEs or slices from them."""
    if d_sae is None:
        if expansion_factor is None:
            raise ValueError("give d_sae or expansion_factor (or saes=[...])")
        d_sae = [d_in * e for e in _as_list(expansion_factor)]
    ks = _as_list(k) if kind in ("topk", "batchtopk") else [None]
    gen = torch.Generator().manual_seed(seed)
    return [{"d_in": d_in, "d_sae": m, "kind": kind, "k": kk,
             "d_out": None if d_out == d_in else d_out, "hookpoint": hookpoint,
             "hookpoint_out": hookpoint_out,
             "seed": int(torch.randint(0, 2 ** 62, (1,), generator=gen))}
            for m, kk in itertools.product(_as_list(d_sae), ks)]


def train_sae(data, *, saes=None, kind="topk", d_sae=None, expansion_factor=None, k=32,
              hookpoint=None, hookpoint_out=None, batch_size=4096, steps=None, epochs=1,
              lr=None, warmup_steps=None, decay_fraction=0.2, auxk_coeff=1 / 32, k_aux=None,
              dead_tokens=10_000_000, l1_coeff=1.0, l0_coeff=1e-3, bandwidth=1e-3,
              threshold_momentum=0.9, b_dec_init="mean", shuffle=True, seed=0, device=None,
              dtype=torch.float32, out_dir=None, checkpoint_every=1000, resume=True,
              max_steps=None, log_every=10, progress=True, save_format="saelens", model=None,
              tokenizer=None, texts=None, max_length=128, shard_latents=False):
    """Train SAEs on data -> (SAE or list of SAEs, history: list of dicts).

    data: an ActivationStore (anything with iter_batches), a tensor x [N, d_in], a pair
    (x [N, d_in], y [N, d_out]) for a transcoder, or an iterable of such batches.
    Sweep: ``d_sae`` / ``expansion_factor`` and ``k`` may be lists; one SAE per combination
    (returned as a list), all fed the same batches. ``saes=[...]`` trains given SAEs instead,
    in place; their decoder rows are first made unit norm without changing what they compute
    (fold_decoder_norm). To fine-tune a trained SAE pass b_dec_init=None (keep its b_dec).
    steps: optimizer steps of the schedule (default: ``epochs`` passes over the data).
    lr default 2e-4 / sqrt(d_sae / 2**14) per SAE (Gao et al.); warmup_steps default
    min(1000, steps // 10); the last ``decay_fraction`` of the steps decay linearly to 0.
    AuxK (topk, batchtopk): weight auxk_coeff, k_aux dead latents (default d_in // 2);
    dead_tokens: a latent not active in the last this-many tokens counts as dead.
    threshold_momentum: of batchtopk's running inference threshold (an EMA per step).
    out_dir: checkpoint, final SAEs (``sae`` or ``sae_{i}``) and history.json are written
    there; with resume=True an existing checkpoint there is continued (only by a run with
    the same SAEs, batch_size, seed, steps, epochs and shuffle: else ValueError).
    On the fly: data=None, model, tokenizer, texts (list of str) and hookpoint (plus
    hookpoint_out for a transcoder) train on the model's activations (see ModelSource).
    Under torchrun the ranks split every batch (data parallel, see train_dist); with
    shard_latents=True (topk) they split the dictionary instead and all read the same
    batches (see train_shard). The SAEs returned are whole on every rank, except with
    shard_latents=True: then rank 0 gets them whole in host memory (CPU) and every other
    rank gets None (for each SAE), so a dictionary too large for one device is never
    assembled on one, nor once per rank.
    """
    if data is None and model is not None:
        from .train_model import ModelSource
        if hookpoint is None or texts is None or tokenizer is None:
            raise ValueError("training from a model needs tokenizer, texts and hookpoint")
        data = ModelSource(model, tokenizer, texts, hookpoint, hookpoint_out=hookpoint_out,
                           max_length=max_length)
    source, known = as_source(data)
    # torchrun: data- or latent-parallel over ranks (DataParallel is a no-op in one process)
    dp = LatentParallel() if shard_latents else DataParallel()
    source = dp.wrap_source(source)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if b_dec_init not in ("mean", "median", None):
        raise ValueError(f"b_dec_init must be 'mean', 'median' or None, got {b_dec_init!r}")
    for name, v, ok, want in (
            ("decay_fraction", decay_fraction, 0 <= decay_fraction <= 1, "in [0, 1]"),
            ("threshold_momentum", threshold_momentum, 0 <= threshold_momentum <= 1,
             "in [0, 1]"),
            ("auxk_coeff", auxk_coeff, auxk_coeff >= 0, ">= 0"),
            ("k_aux", k_aux, k_aux is None or k_aux >= 1, "None or >= 1"),
            ("warmup_steps", warmup_steps, warmup_steps is None or warmup_steps >= 0,
             "None or >= 0")):
        if not ok:
            raise ValueError(f"{name} must be {want}, got {v!r}")
    per_epoch = batches_per_epoch(source, known, batch_size)
    max_epochs = epochs if steps is None else math.inf  # skipped batches end a pass early
    if steps is None:
        if per_epoch is None:
            raise ValueError("steps is required when the number of batches is unknown")
        steps = per_epoch * epochs
    single = saes is None and len(_as_list(k)) == 1 and not isinstance(d_sae, (list, tuple)) \
        and not isinstance(expansion_factor, (list, tuple))
    if saes is None:
        d_in = getattr(source, "d", None)
        if d_in is None:  # peek at one batch for the width
            x0, y0 = split_batch(next(iter(source.iter_batches(batch_size))))
            d_in, d_out = x0.shape[1], y0.shape[1]
        else:
            d_out = getattr(source, "d_out", d_in)
        specs = _sae_specs(d_in, d_out, kind, d_sae, expansion_factor, k, hookpoint,
                           hookpoint_out, seed)
        saes = dp.build_saes(specs, device, dtype)
    else:
        for s in saes:
            fold_decoder_norm(s)
        saes = dp.shard_saes(list(saes))
    dev = saes[0].device
    opts = [make_optimizer(s) for s in saes]
    base_lrs = [lr if lr is not None else 2e-4 / math.sqrt(s.d_sae / 2 ** 14) for s in saes]
    if warmup_steps is None:
        warmup_steps = min(1000, steps // 10)
    last_fired = [torch.zeros(s.d_sae, dtype=torch.int64) for s in saes]
    loop = {"step": 0, "epoch": 0, "batch": 0, "tokens": 0, "skipped_nonfinite": 0,
            "history": []}
    # what fixes the batches and schedule: a checkpoint resumes only a run that agrees
    run = {"batch_size": batch_size, "seed": seed, "shuffle": bool(shuffle),
           "epochs": None if max_epochs == math.inf else epochs, "steps": steps}
    loss_kw = dict(k_aux=k_aux, auxk_coeff=auxk_coeff, l1_coeff=l1_coeff, l0_coeff=l0_coeff,
                   bandwidth=bandwidth, threshold_momentum=threshold_momentum)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        if resume:
            loop = load_checkpoint(out_dir, saes, opts, last_fired, run=run,
                                   name=dp.checkpoint_name) or loop
    dp.broadcast_params(saes)
    history = loop["history"]
    stop_at = steps if max_steps is None else min(steps, max_steps)
    from tqdm.auto import tqdm
    bar = tqdm(total=steps, initial=loop["step"], disable=not progress or not dp.is_main,
               desc="train_sae")

    def checkpoint():
        if out_dir is not None and dp.writes_checkpoint:
            save_checkpoint(out_dir, saes, opts, last_fired, loop, run=run,
                            name=dp.checkpoint_name)

    while loop["step"] < stop_at and loop["epoch"] < max_epochs:
        it = source.iter_batches(batch_size, shuffle=shuffle, seed=seed + loop["epoch"],
                                 start_batch=loop["batch"], device=dev, dtype=saes[0].dtype)
        got_any = False
        for batch in it:
            got_any = True
            loop["batch"] += 1
            x, y = split_batch(batch)
            if y.shape[0] < 2:   # no variance to measure FVU by (data parallelism drops
                continue         # such a batch before slicing; here it is the last one)
            if not dp.all_ok(bool(torch.isfinite(x).all() and torch.isfinite(y).all()),
                             x.device):
                loop["skipped_nonfinite"] += 1
                warnings.warn(f"train_sae: skipped a batch with non-finite values (epoch "
                              f"{loop['epoch']}, batch {loop['batch'] - 1}); "
                              f"{loop['skipped_nonfinite']} skipped so far", RuntimeWarning)
                continue
            if loop["step"] == 0 and loop["tokens"] == 0 and b_dec_init is not None:
                with torch.no_grad():
                    center = dp.center(y, b_dec_init, geometric_median)
                    for s in saes:
                        s.b_dec.copy_(center)
            _train_step(saes, opts, base_lrs, last_fired, loop, x, y, steps, warmup_steps,
                        decay_fraction, dead_tokens, loss_kw, log_every, dp)
            bar.update(1)
            if history and history[-1]["step"] == loop["step"]:
                bar.set_postfix(fvu=f"{history[-1]['fvu']:.3f}", l0=f"{history[-1]['l0']:.1f}",
                                skipped=loop["skipped_nonfinite"])
            if checkpoint_every and loop["step"] % checkpoint_every == 0:
                checkpoint()
            if loop["step"] >= stop_at:
                break
        else:
            loop["epoch"] += 1
            loop["batch"] = 0
            if not got_any:
                raise ValueError("data yielded no batches")
    bar.close()
    checkpoint()
    finished = loop["step"] >= steps or loop["epoch"] >= max_epochs
    for opt in opts:                 # gradients and Adam state are done with: free them
        opt.zero_grad(set_to_none=True)  # before latent sharding gathers the whole SAEs
    opts.clear()
    saes = dp.gather_saes(saes)      # whole SAEs (latent sharding gathers the slices)
    if out_dir is not None and finished and dp.is_main:
        for i, s in enumerate(saes):
            s.save(Path(out_dir) / ("sae" if len(saes) == 1 else f"sae_{i}"), format=save_format)
        _write_json(Path(out_dir) / "history.json", history)
    dp.finish()                      # rank 0's files exist when any rank returns
    if loop["skipped_nonfinite"]:
        warnings.warn(f"train_sae: {loop['skipped_nonfinite']} batch(es) with non-finite "
                      "values were skipped", RuntimeWarning)
    return (saes[0] if single else saes), history


def _train_step(saes, opts, base_lrs, last_fired, loop, x, y, steps, warmup_steps,
                decay_fraction, dead_tokens, loss_kw, log_every, dp=None):
    """One optimizer step of every SAE on the batch x [B, d_in] -> y [B, d_out] (this
    rank's slice of the global batch under data parallelism, see train_dist).
    loss_kw: train_forward's loss options (k_aux None: d_in // 2 of each SAE)."""
    dp = dp or DataParallel()
    step = loop["step"]
    scale, B = dp.begin_batch(y)     # B: rows of the global batch
    tokens = loop["tokens"] + B
    if dp.shards_latents or not dp.active:
        aux_den = None               # the residual is whole on this rank
    else:
        # data parallel: AuxK over the global batch's residual variance. Rank r's loss is
        # multiplied by `scale` (train_dist.begin_batch), so its AuxK denominator carries
        # scale too: the ranks' scaled terms then sum to the single-process AuxK
        import torch.distributed as dist

        def aux_den(e):          # e [B_r, d_out] -> scalar
            return centered_sum_sq(e, all_reduce=dist.all_reduce) * scale
    for i, (sae, opt) in enumerate(zip(saes, opts)):
        lr = lr_at(step, steps, base_lrs[i], warmup_steps, decay_fraction)
        for g in opt.param_groups:
            g["lr"] = lr
        dead = (loop["tokens"] - last_fired[i]) >= dead_tokens
        kw = dict(loss_kw, k_aux=loss_kw.get("k_aux") or max(sae.d_in // 2, 1))
        if dp.shards_latents:
            out = dp.train_forward(sae, x, y, index=i, dead=dead.to(x.device), **kw)
        else:
            out = train_forward(sae, x, y, dead=dead.to(x.device), auxk_denominator=aux_den,
                                **kw)
        opt.zero_grad(set_to_none=True)
        (out.loss * scale if dp.active else out.loss).backward()
        dp.reduce_grads(sae)         # summed: the gradient of the global batch's loss
        project_decoder_grad(sae)
        opt.step()
        with torch.no_grad():
            sae.normalize_decoder()
            if sae.kind == "jumprelu":
                sae.threshold.clamp_(min=0.0)
        out = dp.end_step(sae, out)  # global fired mask and metrics
        last_fired[i][out.fired.cpu()] = tokens
        if (step + 1) % log_every == 0 or step + 1 == steps or step == 0:
            dead_frac = dp.dead_fraction(i, last_fired[i], tokens, dead_tokens)
            loop["history"].append({
                "step": step + 1, "sae": i, "kind": sae.kind, "d_sae": dp.d_sae(i, sae),
                "k": dp.k(i, sae),
                "loss": float(out.loss.detach()), "fvu": out.fvu, "l0": out.l0, "auxk": out.aux,
                "dead_fraction": dead_frac, "lr": lr, "tokens": tokens,
                "skipped_nonfinite": loop["skipped_nonfinite"]})
    loop["step"] = step + 1
    loop["tokens"] = tokens

