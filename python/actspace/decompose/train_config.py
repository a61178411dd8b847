"""``TrainConfig``: every option of an SAE training run, in one place, and ``TrainResult``.

Why a module of its own: ``train_sae`` (Python), ``actspace train`` (cli/train_cmd.py) and
``actspace run`` (pipeline config and stage) describe the same run, and ``SAE.fit`` too; each
builds one TrainConfig instead of repeating ~35 keyword arguments, and the checks of their
values live here once (errors name the option).

Options that belong to one kind (l1_coeff for relu, l0_coeff / bandwidth for jumprelu,
threshold_momentum for batchtopk, auxk_coeff / k_aux for the AuxK kinds, ...) are declared by
the kinds themselves (kinds/<kind>.py ``options``) and held in ``kind_options``; the flat
keyword form ``TrainConfig.from_kwargs(l1_coeff=2.0, ...)`` (what train_sae accepts) routes
them there, so a new kind's options need no change here.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .kinds import KINDS, all_options, check_kind_options, get_kind

__all__ = ["TrainConfig", "TrainResult"]


def _range(name, v, ok, want):
    if not ok:
        raise ValueError(f"{name} must be {want}, got {v!r}")


@dataclass
class TrainConfig:
    """Options of a training run (see train_sae for what each does).

    Sweep: d_sae / expansion_factor and k may be lists (one SAE per combination).
    kind_options: option name -> value for the kinds' own options (defaults filled in for
    every registered kind; see kinds/)."""
    kind: str = "topk"
    d_sae: int | list[int] | None = None
    expansion_factor: int | list[int] | None = None
    k: int | list[int] | None = 32
    hookpoint: str | None = None
    hookpoint_out: str | None = None
    batch_size: int = 4096
    steps: int | None = None
    epochs: int = 1
    lr: float | None = None
    warmup_steps: int | None = None
    decay_fraction: float = 0.2
    dead_tokens: int | None = None     # None: train_loop.default_dead_tokens
    b_dec_init: str | None = "mean"
    shuffle: bool = True
    seed: int = 0
    device: Any = None
    dtype: torch.dtype = torch.float32
    out_dir: str | Path | None = None
    checkpoint_every: int = 1000
    resume: bool = True
    max_steps: int | None = None
    log_every: int = 10
    progress: bool = True
    save_format: str = "saelens"
    max_length: int = 128
    shard_latents: bool = False
    hookpoints: list[str] | None = None   # many hookpoints from one forward (train_multi)
    kind_options: dict = field(default_factory=dict)

    def __post_init__(self):
        get_kind(self.kind)
        opts = {n: o.default for n, o in all_options().items()}
        known = set(opts)
        unknown = sorted(set(self.kind_options) - known)
        if unknown:
            raise TypeError(f"unknown kind option(s) {unknown} (known: {sorted(known)})")
        opts.update(self.kind_options)
        for n, o in all_options().items():
            o.check(opts[n])
        self.kind_options = opts
        # the kind's checks across its options and against the widths known here (those
        # given by expansion_factor are checked per SAE when training starts)
        widths = [None] if self.d_sae is None else (
            self.d_sae if isinstance(self.d_sae, (list, tuple)) else [self.d_sae])
        for w in widths:
            check_kind_options(self.kind, opts, w if isinstance(w, int) else None)
        _range("batch_size", self.batch_size, self.batch_size >= 1, ">= 1")
        if self.hookpoints is not None:
            from .train_multi import check_hookpoint_list
            self.hookpoints = check_hookpoint_list(self.hookpoints)
        _range("b_dec_init", self.b_dec_init, self.b_dec_init in ("mean", "median", None),
               "'mean', 'median' or None")
        _range("decay_fraction", self.decay_fraction, 0 <= self.decay_fraction <= 1, "in [0, 1]")
        _range("warmup_steps", self.warmup_steps,
               self.warmup_steps is None or self.warmup_steps >= 0, "None or >= 0")
        _range("dead_tokens", self.dead_tokens,
               self.dead_tokens is None or (type(self.dead_tokens) is int
                                            and self.dead_tokens >= 1), "None or an int >= 1")
        _range("epochs", self.epochs, self.epochs >= 1, ">= 1")
        _range("log_every", self.log_every, self.log_every >= 1, ">= 1")
        _range("checkpoint_every", self.checkpoint_every, self.checkpoint_every >= 0, ">= 0")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The named options (kind_options excluded)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "kind_options")

    @classmethod
    def from_kwargs(cls, **kwargs) -> "TrainConfig":
        """A TrainConfig from flat keywords (train_sae's form): named options go to their
        field, kind options (l1_coeff=..., any registered kind's) to kind_options. An
        unknown keyword is a TypeError naming it."""
        names, kopts = set(cls.field_names()), all_options()
        fields, kind_options = {}, dict(kwargs.pop("kind_options", None) or {})
        for n, v in kwargs.items():
            if n in names:
                fields[n] = v
            elif n in kopts:
                kind_options[n] = v
            else:
                raise TypeError(f"unexpected training option {n!r} (known: "
                                f"{sorted(names | set(kopts))})")
        return cls(**fields, kind_options=kind_options)

    def replace(self, **changes) -> "TrainConfig":
        """A copy with changes (flat keywords, as from_kwargs)."""
        flat = {n: getattr(self, n) for n in self.field_names()}
        flat.update(self.kind_options)
        flat.update(changes)
        return TrainConfig.from_kwargs(**flat)

    def options_of_kind(self, kind: str | None = None) -> dict:
        """kind's own options (default: this config's kind) -> their values."""
        return {o.name: self.kind_options[o.name] for o in KINDS[kind or self.kind].options}


@dataclass
class TrainResult:
    """What a training run returns.

    saes: the trained SAEs, one per sweep combination (with latent sharding under torchrun,
    None on every rank but rank 0); history: the logged metrics (list of dicts);
    out_dir: where the final SAEs and history.json were written (None without out_dir; the
    fallback directory when the requested one could not be written, see train_loop)."""
    saes: list
    history: list
    out_dir: Path | None = None
    hookpoints: list | None = None   # many hookpoints: per SAE, the hookpoint it read

    @property
    def by_hookpoint(self) -> dict:
        """{hookpoint: SAE, or list of SAEs for a sweep} of a many-hookpoint run."""
        if self.hookpoints is None:
            raise ValueError("this run trained one hookpoint: use .saes / .sae")
        out: dict = {}
        for h, s in zip(self.hookpoints, self.saes):
            out.setdefault(h, []).append(s)
        return {h: v[0] if len(v) == 1 else v for h, v in out.items()}

    @property
    def sae(self):
        """The one SAE of a run that trained one (ValueError for a sweep: use .saes)."""
        if len(self.saes) != 1:
            raise ValueError(f"this run trained {len(self.saes)} SAEs: use .saes")
        return self.saes[0]
