"""``acts.train_sae``: train one SAE, or a sweep of them from one pass over the activations.

The public entry: it takes the options as a ``TrainConfig`` or as flat keywords (built into
one TrainConfig here, the only place that does it for Python callers), builds the SAEs with
the ``SAE`` class and runs the loop of train_loop.py. The recipe, the robustness guarantees
and resuming are described there.
"""
from __future__ import annotations

from .sae import SAE
from .train_multi import ZipSource
from .train_config import TrainConfig, TrainResult
from .train_loop import lr_at, make_optimizer, run_training

__all__ = ["train_sae", "TrainConfig", "TrainResult", "lr_at", "make_optimizer"]


def train_sae(data=None, config: TrainConfig | None = None, *, saes=None, model=None,
              tokenizer=None, texts=None, stores=None, **options) -> TrainResult:
    """Train SAEs on data -> TrainResult (``.saes``, ``.history``, ``.sae`` for one SAE,
    ``.out_dir`` where the files went).

    data: an ActivationStore (anything with iter_batches), a tensor x [N, d_in], a pair
    (x [N, d_in], y [N, d_out]) for a transcoder, or an iterable of such batches.
    config: a TrainConfig; or give its options as keywords (``kind="topk", k=32,
    l1_coeff=...``: kind options too); not both.
    Sweep: ``d_sae`` / ``expansion_factor`` and ``k`` may be lists; one SAE per combination,
    all fed the same batches. ``saes=[...]`` trains given SAEs instead, in place; their
    decoder rows are first made unit norm without changing what they compute
    (fold_decoder_norm). To fine-tune a trained SAE pass b_dec_init=None (keep its b_dec).
    steps: optimizer steps of the schedule (default: ``epochs`` passes over the data).
    lr default 2e-4 / sqrt(d_sae / 2**14) per SAE (Gao et al.) times sqrt(50000 / steps) for
    runs under 50000 steps, boosted to at most 4.5e-3 (train_loop.default_lr: measured on
    MiniLM); warmup_steps default steps // 10, at least min(30, steps // 3), at most 1000;
    the last ``decay_fraction`` of the steps decay linearly to 0.
    Kind options (see kinds/): auxk_coeff and k_aux (AuxK of topk / batchtopk; k_aux default
    d_in // 2), threshold_momentum (batchtopk), l1_coeff (relu, gated), l0_coeff or l0_target,
    bandwidth, tanh_scale (jumprelu), prefixes (a list of latent counts) or prefix_count
    (matryoshka). dead_tokens: a latent not active in the last this-many tokens is dead
    (AuxK revives it; default 100 * d_sae / k, at most 10M: train_loop.default_dead_tokens).
    out_dir: checkpoint, final SAEs (``sae`` or ``sae_{i}``, in ``save_format``) and
    history.json are written there (checked writable before the first step); with
    resume=True an existing checkpoint there is continued (only by a run with the same SAEs,
    batch_size, seed, steps, epochs and shuffle: else ValueError).
    On the fly: data=None, model, tokenizer, texts (list of str) and hookpoint (plus
    hookpoint_out for a transcoder) train on the model's activations (see ModelSource).
    Under torchrun the ranks split every batch (data parallel, see train_dist); with
    shard_latents=True (topk) they split the dictionary instead and all read the same
    batches (see train_shard). The SAEs returned are whole on every rank, except with
    shard_latents=True: then rank 0 gets them whole in host memory (CPU) and every other
    rank gets None (for each SAE), so a dictionary too large for one device is never
    assembled on one, nor once per rank.
    Many hookpoints (train_multi.py): ``hookpoints=[...]`` with model, tokenizer and texts
    trains one SAE (or one sweep) per hookpoint from the same forward passes;
    ``stores=[...]`` (data=None) one per store, the stores read in lockstep. Each SAE equals
    the one a run for its hookpoint alone would train on the same batches. The result's
    ``by_hookpoint`` maps each hookpoint to its SAE (or sweep); history rows carry
    "hookpoint"; with out_dir the SAEs go to out_dir/<hookpoint>[_<i>].
    """
    if stores is not None:
        if data is not None:
            raise ValueError("give data or stores, not both")
        data = ZipSource(stores)
    if config is None:
        config = TrainConfig.from_kwargs(**options)
    elif options:
        raise TypeError(f"give a TrainConfig or keyword options, not both (got config and "
                        f"{sorted(options)})")
    elif not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    return run_training(data, config, saes=saes, sae_class=SAE, model=model,
                        tokenizer=tokenizer, texts=texts)
