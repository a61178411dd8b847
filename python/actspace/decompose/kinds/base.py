"""What one SAE kind declares (``Kind``), and the encode helper the threshold kinds share.

A kind is everything that differs between SAE architectures: whether it has a fixed k, the
shape of its threshold, how it encodes, its training forward and sparsity penalty, what
happens to its threshold when decoder norms are folded into the encoder, and its names in
foreign formats. The SAE class, the trainer, the CLI, the pipeline config and the formats
read these fields and never test a kind's name. See kinds/__init__.py for how to add one.

This module imports no other kind (each kind file imports only this one).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from ... import ops
from ..code import SparseCode

__all__ = ["Option", "TrainOut", "Kind", "encode_above", "fired_and_l0", "FIRST_WIDTH"]

FIRST_WIDTH = 256   # first code width tried by encode_above


@dataclass(frozen=True)
class Option:
    """A training option of a kind (a flag of ``actspace train``, a key of the pipeline's
    ``sae`` section, a keyword of ``train_sae``; held in ``TrainConfig.kind_options``).

    type: int or float; many: the value is a non-empty list of such values (a flag taking
    several values, a YAML list), e.g. matryoshka's prefixes; minimum / maximum: inclusive
    bounds checked by TrainConfig on the value (on each element of a list; None:
    unbounded); default None means "automatic" (the kind decides) and is always allowed."""
    name: str
    default: Any
    help: str
    type: type = float
    minimum: float | None = None
    maximum: float | None = None
    many: bool = False

    def __post_init__(self):
        if self.type not in (int, float):
            raise ValueError(f"option {self.name!r}: type must be int or float, got "
                             f"{self.type!r}")

    def check(self, value) -> None:
        """ValueError/TypeError naming the option when value is not acceptable."""
        if value is None and self.default is None:
            return
        want = "an int" if self.type is int else "a number"
        if not self.many:
            self._check_one(value, self.name, want)
            return
        if not isinstance(value, (list, tuple)) or not value:
            raise TypeError(f"{self.name} must be a non-empty list of "
                            f"{'ints' if self.type is int else 'numbers'}, got {value!r}")
        for i, v in enumerate(value):
            self._check_one(v, f"{self.name}[{i}]", want)

    def _check_one(self, value, name: str, want: str) -> None:
        ok_type = (isinstance(value, int) and not isinstance(value, bool)) if self.type is int \
            else isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok_type:
            raise TypeError(f"{name} must be {want}, got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"{name} must be >= {self.minimum}, got {value!r}")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"{name} must be <= {self.maximum}, got {value!r}")


@dataclass
class TrainOut:
    """A kind's training forward on one batch (the trainer adds FVU and AuxK)."""
    y_hat: torch.Tensor              # [N, d_out], differentiable
    fired: torch.Tensor              # [d_sae] bool: latents active in the batch
    l0: torch.Tensor                 # scalar: mean active latents per row
    sparsity: torch.Tensor | None    # differentiable penalty added to the loss, or None
    # further reconstructions [N, d_out] each adding its FVU to the loss (Matryoshka's
    # nested prefixes), or None
    extra_y_hats: list | None = None


@dataclass(frozen=True)
class Kind:
    """One SAE architecture. Fields (those after ``train_forward`` have defaults):

    name             the ``kind=`` string (SAE, train_sae, --kind, pipeline sae.kind)
    summary          one line for help texts
    uses_k           k is required (and <= d_sae); else k must be None
    threshold        None, "per_latent" (an nn.Parameter [d_sae]) or "scalar" (a buffer [])
    encode(sae, x [N, d_in]) -> SparseCode
    train_forward(sae, x [N, d_in], total_var (scalar, the batch's centred sum of squares),
                  opts: Mapping of option name -> value) -> TrainOut
    options          the kind's own training options (Option), with defaults
    threshold_init   initial threshold value (when threshold is not None)
    auxk             train with the AuxK loss on dead latents (options auxk_coeff, k_aux)
    after_step(sae)  in-place fix-up after every optimizer step (e.g. clamp thresholds)
    fold_threshold(sae, n [d_sae])  the decoder row norms n are being folded into the
                     encoder (W_enc[m], b_enc[m] *= n[m]): rescale the threshold to match
    selects_by_rank  selection ranks latents (TopK-like): folding uneven decoder norms
                     changes its codes (a warning says so)
    saelens          SAELens architecture written for this kind (None: not storable)
    saelens_transcoder  the same for a transcoder (None: not storable as one)
    saelens_native   reading `saelens` back (without actspace_kind) means this kind; False
                     for a kind stored under another's name (batchtopk as jumprelu)
    saelens_training SAELens' training architecture read back as this kind (its trainers'
                     checkpoints: e.g. "batchtopk", with a scalar ``topk_threshold``); also
                     written as metadata.training_architecture, with
                     metadata.training_architecture_details, by an SAE that records
                     training options (recorded_options), as SAELens 6 saves it
    sparsify         sparsify's ``activation`` for this kind (None: not storable there)
    gemmascope       storable in Gemma Scope's params.npz (JumpReLU maths)
    extra_params     the kind's own parameters beyond W_enc, b_enc, W_dec, b_dec, threshold:
                     (name, shape, initial value) with shape a tuple of "d_in" / "d_sae" /
                     "d_out" (e.g. a gated SAE's ("b_gate", ("d_sae",), 0.0)); the SAE
                     registers each as an nn.Parameter, and the SAELens format writes and
                     reads each as a tensor of that name and shape
    saelens_names    tensors SAELens calls otherwise: (our name, SAELens name) pairs, e.g. a
                     gated SAE's ("b_enc", "b_gate")
    init_from_batch(sae, x [N, d_in], opts)  data-dependent initialisation from the first
                     training batch (after b_dec's), e.g. JumpReLU thresholds at an L0 target
    param_lr_scales(opts) -> {parameter name: lr multiplier} (e.g. a JumpReLU threshold that
                     must travel in activation units while Adam moves it ~lr per step)
    check_options(opts, d_sae)  checks that involve several options, or an option and the
                     width d_sae (an int, or None while unknown): ValueError naming them
                     (e.g. matryoshka's prefixes against prefix_count and d_sae)
    recorded_options(sae, opts) -> {option: value} the options as this SAE was trained with
                     them, resolved (e.g. the prefixes actually used); kept in
                     ``sae.training_options`` and written by the formats that hold them
    saelens_options  (our option, SAELens' training detail) pairs for those details, e.g.
                     ("prefixes", "matryoshka_widths"); read back into training_options
    """
    name: str
    summary: str
    uses_k: bool
    threshold: str | None
    encode: Callable[[Any, torch.Tensor], SparseCode]
    train_forward: Callable[[Any, torch.Tensor, torch.Tensor, Mapping[str, Any]], TrainOut]
    options: tuple[Option, ...] = ()
    threshold_init: float = 0.0
    auxk: bool = False
    after_step: Callable[[Any], None] | None = None
    fold_threshold: Callable[[Any, torch.Tensor], None] | None = None
    selects_by_rank: bool = False
    saelens: str | None = None
    saelens_transcoder: str | None = None
    saelens_native: bool = True
    saelens_training: str | None = None
    sparsify: str | None = None
    gemmascope: bool = False
    extra_params: tuple[tuple[str, tuple[str, ...], float], ...] = ()
    saelens_names: tuple[tuple[str, str], ...] = ()   # (ours, SAELens') tensor renames
    init_from_batch: Callable[[Any, torch.Tensor, Mapping[str, Any]], None] | None = None
    param_lr_scales: Callable[[Mapping[str, Any]], Mapping[str, float]] | None = None
    check_options: Callable[[Mapping[str, Any], int | None], None] | None = None
    recorded_options: Callable[[Any, Mapping[str, Any]], Mapping[str, Any]] | None = None
    saelens_options: tuple[tuple[str, str], ...] = ()

    def extra_shape(self, name_shape: tuple[str, ...], sae) -> tuple[int, ...]:
        """The concrete shape of an extra parameter of sae (see extra_params)."""
        return tuple(getattr(sae, dim) for dim in name_shape)

    def __post_init__(self):
        if self.threshold not in (None, "per_latent", "scalar"):
            raise ValueError(f"kind {self.name!r}: threshold must be None, 'per_latent' or "
                             f"'scalar', got {self.threshold!r}")
        names = [o.name for o in self.options]
        if len(set(names)) != len(names):
            raise ValueError(f"kind {self.name!r}: duplicate option names {names}")


def encode_above(sae, x, threshold, W_enc=None, b_enc=None) -> SparseCode:
    """Every latent with relu(pre) > threshold [d_sae] (a JumpReLU-style code), in a code
    only as wide as needed: start at width 256 and widen (x4) only while some row fills every
    slot; never a [N, d_sae] buffer (a JumpReLU SAE of 1M latents fires ~100 per token).
    W_enc [d_sae, d_in], b_enc [d_sae]: the encoder to use instead of sae's (a gated SAE
    encodes through its JumpReLU form)."""
    b_dec = sae.b_dec if sae.apply_b_dec_to_input else None
    k = min(sae.d_sae, FIRST_WIDTH)
    while True:
        v, i = ops.topk_encode(x, sae.W_enc if W_enc is None else W_enc,
                               sae.b_enc if b_enc is None else b_enc, k, b_dec=b_dec,
                               activation="relu", threshold=threshold.detach())
        width = int((i >= 0).sum(1).max()) if i.shape[0] else 0
        if width < k or k == sae.d_sae:
            break
        k = min(sae.d_sae, 4 * k)
    width = max(width, 1)
    return SparseCode(v[:, :width], i[:, :width], sae.d_sae)


def fired_and_l0(mask: torch.Tensor):
    """mask [N, M] bool (active entries of a batch's code) -> (fired [M] bool: latents active
    in some row, l0: scalar mean active latents per row). count_nonzero: a bool .sum() casts
    to int64 on the way and is ~3x slower on CPU."""
    return mask.any(0), torch.count_nonzero(mask) / mask.shape[0]


# the AuxK options every kind with auxk=True declares (shared so their defaults agree)
AUXK_OPTIONS = (
    Option("auxk_coeff", 1 / 32, "AuxK loss weight (0: off)", float, minimum=0),
    Option("k_aux", None, "dead latents in the AuxK loss (default d_in/2)", int, minimum=1),
)
