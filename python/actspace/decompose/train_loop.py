"""The training loop behind ``train_sae`` and ``SAE.fit``: one SAE, or a sweep of them from
one pass over the activations, described by a TrainConfig (train_config.py).

It sits below the SAE class (SAE.fit calls it): SAEs to build are made with the class the
caller passes (train.py passes SAE), so nothing here imports sae.py.

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
step with a checkpoint, as a kill would (tests use it). out_dir is proved writable (a probe
file) before the first step, and a final save that fails anyway (disk full, permissions
changed) writes the SAEs to a fresh temporary directory instead and says where, so finished
work is never lost.
"""
from __future__ import annotations

import itertools
import math
import tempfile
import warnings
from pathlib import Path

import torch

from .._io import ensure_writable_dir, remove_stale_temporaries, write_json_atomic
from .kinds import KINDS, check_kind_options
from .train_checkpoint import load_checkpoint, save_checkpoint
from .train_config import TrainConfig, TrainResult
from .train_data import as_source, batches_per_epoch, split_batch
from .train_dist import DataParallel
from .train_multi import ZipSource
from .train_losses import (centered_sum_sq, fold_decoder_norm, geometric_median,
                           project_decoder_grad, train_forward)
from .train_shard import LatentParallel

__all__ = ["run_training", "default_lr", "default_warmup_steps", "default_dead_tokens", "lr_at",
           "make_optimizer", "sae_specs"]

# Runs of at least this many steps take Gao et al.'s lr; shorter ones a larger one (below),
# boosted as for 100 steps at most (nothing shorter was measured) and never above
# MAX_BOOSTED_LR (the largest rate that kept <= 1% of the latents dead in every 100-step
# run measured; tiny SAEs, whose Gao rate is already above it, keep that rate).
LONG_RUN_STEPS = 50_000
MAX_BOOSTED_LR = 4.5e-3


def default_lr(d_sae: int, steps: int) -> float:
    """The lr when none is given: Gao et al.'s 2e-4 / sqrt(d_sae / 2**14), which sparsify
    and SAELens users apply to runs of some 10^8 tokens or more (50k steps of 4096), times
    sqrt(LONG_RUN_STEPS / steps) for shorter runs (steps taken as at least 100), capped at
    MAX_BOOSTED_LR. Measured on MiniLM layer 3 (d_sae 6144, k 32, batch 4096, with AuxK's
    window of default_dead_tokens; bench/RESULTS.md): the best lr keeping <= 1% of the
    latents dead was 4.5-5e-3 at 100 and 300 steps and 2.5-4e-3 at 1000, where Gao's
    3.3e-4 leaves a 100-step run at FVU 0.29 against 0.12. Between 1000 and 50k steps the
    rule interpolates, unmeasured."""
    base = 2e-4 / math.sqrt(d_sae / 2 ** 14)
    boost = math.sqrt(max(1.0, LONG_RUN_STEPS / max(steps, 100)))
    return max(base, min(base * boost, MAX_BOOSTED_LR))


def default_warmup_steps(steps: int) -> int:
    """A tenth of the run, at least 30 steps (a third of a shorter run), at most 1000: at
    default_lr's larger rate for short runs, 100-step runs on MiniLM left 1.07% of the
    latents dead after 20 warm-up steps and 0.72% after 30 (lr 3.6e-3, Gao's dead window;
    bench/RESULTS.md)."""
    return min(1000, max(steps // 10, min(30, steps // 3)))


# A latent is dead (AuxK then trains it on the residual) once it has gone DEAD_INTERVALS
# times its expected firing interval, d_sae / k tokens, without firing; never longer than
# Gao et al.'s window of 10M tokens (which they chose for SAEs of millions of latents).
DEAD_INTERVALS = 100
GAO_DEAD_TOKENS = 10_000_000


def default_dead_tokens(d_sae: int, k: int | None) -> int:
    """The dead-latent window when none is given: DEAD_INTERVALS * d_sae / k tokens, at most
    10M (kinds without k: 10M). Gao's fixed 10M never comes within a run of fewer tokens,
    which leaves AuxK idle: on MiniLM layer 3 (d_sae 6144, k 32, batch 4096, 100 steps at
    lr 4e-3) 1.30% of the latents ended dead with it and 0.33% with 19.2k tokens (100
    intervals), while a window of 82k tokens still left 1.42% (bench/RESULTS.md)."""
    if k is None:
        return GAO_DEAD_TOKENS
    return int(min(GAO_DEAD_TOKENS, max(1, round(DEAD_INTERVALS * d_sae / k))))


def lr_at(step, total, base_lr, warmup_steps, decay_fraction):
    """Learning rate at optimizer step `step` of `total`: linear warm-up, flat, linear decay."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_start = total - int(decay_fraction * total)
    if step >= decay_start and total > decay_start:
        return base_lr * max(total - step, 0) / (total - decay_start)
    return base_lr


def make_optimizer(sae, lr=0.0, lr_scales=None):
    """Adam, fused (one kernel over all parameters: ~5x faster on CPU) where torch has it.
    lr_scales: {parameter name: multiplier of the scheduled lr} (a group each; the rest in
    one group of multiplier 1)."""
    # multiplier 1 stays in the main group: one group unless a kind asks (older checkpoints
    # of the same SAEs keep loading)
    lr_scales = {n: m for n, m in (lr_scales or {}).items() if m != 1}
    named = dict(sae.named_parameters())
    rest = [p for n, p in named.items() if n not in lr_scales]
    groups = [{"params": rest, "lr_scale": 1.0}] + [
        {"params": [named[n]], "lr_scale": float(m)} for n, m in lr_scales.items() if n in named]
    try:
        return torch.optim.Adam(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)


def _as_list(v):
    return list(v) if isinstance(v, (list, tuple)) else [v]


def sae_specs(d_in, d_out, cfg: TrainConfig) -> list[dict]:
    """One SAE configuration per (width, k) of the sweep, each with its init seed (drawn
    from cfg.seed): the parallel strategy builds whole SAEs or slices from them."""
    d_sae = cfg.d_sae
    if d_sae is None:
        if cfg.expansion_factor is None:
            raise ValueError("give d_sae or expansion_factor (or saes=[...])")
        d_sae = [d_in * e for e in _as_list(cfg.expansion_factor)]
    ks = _as_list(cfg.k) if KINDS[cfg.kind].uses_k else [None]
    gen = torch.Generator().manual_seed(cfg.seed)
    return [{"d_in": d_in, "d_sae": m, "kind": cfg.kind, "k": kk,
             "d_out": None if d_out == d_in else d_out, "hookpoint": cfg.hookpoint,
             "hookpoint_out": cfg.hookpoint_out,
             "seed": int(torch.randint(0, 2 ** 62, (1,), generator=gen))}
            for m, kk in itertools.product(_as_list(d_sae), ks)]


def _as_parts(batch):
    """A multi source's batch -> tuple of its parts (a single hookpoint's is one tensor)."""
    return tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)


def _save_names(saes, names):
    """Directory name of each final SAE: sae / sae_{i}, or per hookpoint <hp>[_<i>]."""
    if names is None:
        return ["sae" if len(saes) == 1 else f"sae_{i}" for i in range(len(saes))]
    out = []
    for i, h in enumerate(names):
        same = [a for a, g in enumerate(names) if g == h]
        out.append(h if len(same) == 1 else f"{h}_{same.index(i)}")
    return out


def _save_final(saes, history, out_dir: Path, save_format: str, names=None) -> Path:
    """Write the final SAEs (``sae`` or ``sae_{i}``) and history.json into out_dir. If that
    fails (disk full, permissions, or a format that cannot hold these SAEs), the finished
    work is written to a fresh temporary directory instead (in save_format, else in the
    SAELens format), with a warning naming both. -> the directory written."""
    def write(d: Path, fmt: str):
        for s, name in zip(saes, _save_names(saes, names)):
            s.save(d / name, format=fmt)
        write_json_atomic(d / "history.json", history)
    try:
        write(out_dir, save_format)
        return out_dir
    except (OSError, ValueError) as e:
        first = e
    fallback = Path(tempfile.mkdtemp(prefix="actspace-train-"))
    for fmt in dict.fromkeys([save_format, "saelens"]):
        try:
            write(fallback, fmt)
        except (OSError, ValueError):
            continue
        warnings.warn(f"train_sae: could not write the trained SAEs to {str(out_dir)!r} "
                      f"({first}); they were saved to {str(fallback)!r} (format {fmt!r}) "
                      "instead", RuntimeWarning)
        return fallback
    raise first


def run_training(data, cfg: TrainConfig, *, saes=None, sae_class=None, model=None,
                 tokenizer=None, texts=None) -> TrainResult:
    """Train on data as cfg says -> TrainResult (see train.train_sae for the arguments).
    saes: train these in place; else build them from cfg with sae_class."""
    multi = None                     # names of the parts of a multi source, else None
    if cfg.hookpoints is not None or isinstance(data, ZipSource):
        if cfg.hookpoints is not None and data is not None:
            raise ValueError("give hookpoints (with a model) or stores, not both")
        if saes is not None or cfg.hookpoint_out is not None or cfg.hookpoint is not None \
                or cfg.shard_latents:
            raise ValueError("hookpoints= / stores= train new SAEs from their own data: saes, "
                             "hookpoint, hookpoint_out and shard_latents must be unset")
        if data is not None:
            multi = data.names
        else:
            multi = cfg.hookpoints
            if model is None or texts is None or tokenizer is None:
                raise ValueError("hookpoints= needs model, tokenizer and texts")
            from .train_model import ModelSource
            data = ModelSource(model, tokenizer, texts, hookpoints=multi,
                               max_length=cfg.max_length)
    if data is None and model is not None:
        from .train_model import ModelSource
        if cfg.hookpoint is None or texts is None or tokenizer is None:
            raise ValueError("training from a model needs tokenizer, texts and hookpoint")
        data = ModelSource(model, tokenizer, texts, cfg.hookpoint,
                           hookpoint_out=cfg.hookpoint_out, max_length=cfg.max_length)
    source, known = as_source(data)
    # torchrun: data- or latent-parallel over ranks (DataParallel is a no-op in one process)
    dp = LatentParallel() if cfg.shard_latents else DataParallel()
    source = dp.wrap_source(source)
    out_dir = None if cfg.out_dir is None else Path(cfg.out_dir)
    if out_dir is not None:           # before the first step, not at the final save
        ensure_writable_dir(out_dir, "train_sae out_dir")
        remove_stale_temporaries(out_dir, recursive=True)   # leftovers of killed runs
    batch_size, seed, epochs = cfg.batch_size, cfg.seed, cfg.epochs
    per_epoch = batches_per_epoch(source, known, batch_size)
    steps = cfg.steps
    max_epochs = epochs if steps is None else math.inf  # skipped batches end a pass early
    if steps is None:
        if per_epoch is None:
            raise ValueError("steps is required when the number of batches is unknown")
        steps = per_epoch * epochs
    routes = None                    # SAE i reads part routes[i] of a multi batch
    if multi is not None:
        if sae_class is None:
            raise ValueError("run_training: give sae_class to build the SAEs")
        parts = _as_parts(next(iter(source.iter_batches(batch_size))))
        specs, routes = [], []
        for j, name in enumerate(multi):   # each hookpoint: the specs (and seeds) of its own run
            d_j = parts[j].shape[1]
            one = sae_specs(d_j, d_j, cfg.replace(hookpoint=name, hookpoints=None))
            specs += one
            routes += [j] * len(one)
        saes = dp.build_saes(specs, cfg.device, cfg.dtype, sae_class)
    elif saes is None:
        if sae_class is None:
            raise ValueError("run_training: give saes=[...] to train, or sae_class to build")
        d_in = getattr(source, "d", None)
        if d_in is None:  # peek at one batch for the width
            x0, y0 = split_batch(next(iter(source.iter_batches(batch_size))))
            d_in, d_out = x0.shape[1], y0.shape[1]
        else:
            d_out = getattr(source, "d_out", d_in)
        saes = dp.build_saes(sae_specs(d_in, d_out, cfg), cfg.device, cfg.dtype, sae_class)
    else:
        for s in saes:
            fold_decoder_norm(s)
        saes = dp.shard_saes(list(saes))
    for s in saes:                   # the widths are known now (expansion_factor, saes=)
        check_kind_options(s.kind, cfg.kind_options, s.d_sae)
        record = KINDS[s.kind].recorded_options
        s.training_options = {} if record is None else dict(
            record(s, cfg.options_of_kind(s.kind)))
    dev = saes[0].device
    opts = []
    for s in saes:
        scales = KINDS[s.kind].param_lr_scales
        opts.append(make_optimizer(s, lr_scales=None if scales is None else
                                   scales(cfg.options_of_kind(s.kind))))
    # dp.d_sae / dp.k: the whole SAE's (latent sharding holds a slice of it here)
    base_lrs = [cfg.lr if cfg.lr is not None else default_lr(dp.d_sae(i, s), steps)
                for i, s in enumerate(saes)]
    dead_windows = [cfg.dead_tokens if cfg.dead_tokens is not None
                    else default_dead_tokens(dp.d_sae(i, s), dp.k(i, s))
                    for i, s in enumerate(saes)]
    warmup_steps = (cfg.warmup_steps if cfg.warmup_steps is not None
                    else default_warmup_steps(steps))
    last_fired = [torch.zeros(s.d_sae, dtype=torch.int64) for s in saes]
    loop = {"step": 0, "epoch": 0, "batch": 0, "tokens": 0, "skipped_nonfinite": 0,
            "history": []}
    # what fixes the batches and schedule: a checkpoint resumes only a run that agrees
    run = {"batch_size": batch_size, "seed": seed, "shuffle": bool(cfg.shuffle),
           "epochs": None if max_epochs == math.inf else epochs, "steps": steps}
    if out_dir is not None and cfg.resume:
        loop = load_checkpoint(out_dir, saes, opts, last_fired, run=run,
                               name=dp.checkpoint_name) or loop
    dp.broadcast_params(saes)
    history = loop["history"]
    stop_at = steps if cfg.max_steps is None else min(steps, cfg.max_steps)
    from tqdm.auto import tqdm
    bar = tqdm(total=steps, initial=loop["step"], disable=not cfg.progress or not dp.is_main,
               desc="train_sae")

    def checkpoint():
        if out_dir is not None and dp.writes_checkpoint:
            save_checkpoint(out_dir, saes, opts, last_fired, loop, run=run,
                            name=dp.checkpoint_name)

    sched = {"steps": steps, "warmup_steps": warmup_steps, "dead_tokens": dead_windows}
    names = None if routes is None else [multi[j] for j in routes]   # per SAE its hookpoint
    while loop["step"] < stop_at and loop["epoch"] < max_epochs:
        it = source.iter_batches(batch_size, shuffle=cfg.shuffle, seed=seed + loop["epoch"],
                                 start_batch=loop["batch"], device=dev, dtype=saes[0].dtype)
        got_any = False
        for batch in it:
            got_any = True
            loop["batch"] += 1
            if multi is None:
                x, y = split_batch(batch)
                xs = None
            else:
                parts = _as_parts(batch)
                xs = [parts[j] for j in routes]
                x = y = parts[0]             # the row count (the same in every part)
            if y.shape[0] < 2:   # no variance to measure FVU by (data parallelism drops
                continue         # such a batch before slicing; here it is the last one)
            if not dp.all_ok(all(bool(torch.isfinite(t).all()) for t in
                                 ((x, y) if xs is None else parts)), x.device):
                loop["skipped_nonfinite"] += 1
                warnings.warn(f"train_sae: skipped a batch with non-finite values (epoch "
                              f"{loop['epoch']}, batch {loop['batch'] - 1}); "
                              f"{loop['skipped_nonfinite']} skipped so far", RuntimeWarning)
                continue
            if loop["step"] == 0 and loop["tokens"] == 0 and cfg.b_dec_init is not None:
                with torch.no_grad():
                    for i, s in enumerate(saes):
                        if i == 0 or xs is not None:   # many hookpoints: each its own mean
                            center = dp.center(y if xs is None else xs[i], cfg.b_dec_init,
                                               geometric_median)
                        s.b_dec.copy_(center)
            if loop["step"] == 0 and loop["tokens"] == 0:
                with torch.no_grad():
                    for i, s in enumerate(saes):
                        init = KINDS[s.kind].init_from_batch
                        if init is not None:
                            init(s, dp.global_batch(x if xs is None else xs[i]),
                                 cfg.options_of_kind(s.kind))
            _train_step(saes, opts, base_lrs, last_fired, loop, x, y, cfg, sched, dp, xs=xs,
                        names=names)
            bar.update(1)
            if history and history[-1]["step"] == loop["step"]:
                bar.set_postfix(fvu=f"{history[-1]['fvu']:.3f}", l0=f"{history[-1]['l0']:.1f}",
                                skipped=loop["skipped_nonfinite"])
            if cfg.checkpoint_every and loop["step"] % cfg.checkpoint_every == 0:
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
    written = None
    if out_dir is not None and finished and dp.is_main:
        written = _save_final(saes, history, out_dir, cfg.save_format, names)
    dp.finish()                      # rank 0's files exist when any rank returns
    if loop["skipped_nonfinite"]:
        warnings.warn(f"train_sae: {loop['skipped_nonfinite']} batch(es) with non-finite "
                      "values were skipped", RuntimeWarning)
    return TrainResult(list(saes), history, written, names)


def _train_step(saes, opts, base_lrs, last_fired, loop, x, y, cfg: TrainConfig, sched: dict,
                dp, xs=None, names=None):
    """One optimizer step of every SAE on the batch x [B, d_in] -> y [B, d_out] (this
    rank's slice of the global batch under data parallelism, see train_dist).
    sched: the resolved steps, warmup_steps and per SAE its dead window. xs: per SAE its own
    batch [B, d_i] (input and target; many hookpoints, train_multi.py); names: per SAE its
    hookpoint (history)."""
    steps, log_every = sched["steps"], cfg.log_every
    step = loop["step"]
    scale, B = dp.begin_batch(y)     # B: rows of the global batch
    scales = {}                      # per part: the data-parallel loss scale of its target
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
        if xs is not None:
            x = y = xs[i]
            if id(x) not in scales:
                scales[id(x)] = dp.begin_batch(x)[0]
            scale = scales[id(x)]
        lr = lr_at(step, steps, base_lrs[i], sched["warmup_steps"], cfg.decay_fraction)
        for g in opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        dead = (loop["tokens"] - last_fired[i]) >= sched["dead_tokens"][i]
        kw = cfg.options_of_kind(sae.kind)
        if "k_aux" in kw and kw["k_aux"] is None:      # AuxK kinds: default d_in // 2
            kw["k_aux"] = max(sae.d_in // 2, 1)
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
            after = KINDS[sae.kind].after_step
            if after is not None:
                after(sae)
        out = dp.end_step(sae, out)  # global fired mask and metrics
        last_fired[i][out.fired.cpu()] = tokens
        if (step + 1) % log_every == 0 or step + 1 == steps or step == 0:
            dead_frac = dp.dead_fraction(i, last_fired[i], tokens, sched["dead_tokens"][i])
            loop["history"].append({
                "step": step + 1, "sae": i, "kind": sae.kind,
                **({} if names is None else {"hookpoint": names[i]}), "d_sae": dp.d_sae(i, sae),
                "k": dp.k(i, sae),
                "loss": float(out.loss.detach()), "fvu": out.fvu, "l0": out.l0, "auxk": out.aux,
                "dead_fraction": dead_frac, "lr": lr, "tokens": tokens,
                "skipped_nonfinite": loop["skipped_nonfinite"]})
    loop["step"] = step + 1
    loop["tokens"] = tokens

