"""The registry of SAE kinds: ``KINDS`` maps a kind's name to its ``Kind`` (see base.py).

Everything that differs between SAE architectures lives in one file per kind here
(relu.py, topk.py, batchtopk.py, jumprelu.py, matryoshka.py, gated.py); transcoders are not kinds but an option of
every kind (``d_out`` / ``hookpoint_out``). Readers of the registry, which never test a
kind's name themselves:

- ``SAE`` (decompose/sae.py): k required or refused (uses_k), the threshold parameter or
  buffer (threshold, threshold_init), the kind's own parameters (extra_params), ``encode``;
- the trainer (train_losses.py, train_loop.py): ``train_forward``, AuxK (auxk),
  ``after_step``, decoder-norm folding (fold_threshold, selects_by_rank), and the options
  (``TrainConfig.kind_options`` is filled from every kind's ``options``);
- ``actspace train --kind`` and its per-kind flags (cli/train_cmd.py), the pipeline's
  ``sae.kind`` and its per-kind keys (pipeline/config.py, pipeline/stages.py);
- the foreign formats (formats/saelens.py, sparsify.py, gemmascope.py): saelens,
  saelens_transcoder, saelens_native (and extra_params as tensors), sparsify, gemmascope.

Options are one int or float, or a list of them (``Option(many=True)``, e.g. matryoshka's
prefixes); checks across options or against d_sae are the kind's ``check_options``. Not yet
expressible (extend Kind when a kind needs it): a decode that differs from
code @ W_dec + b_dec.

Adding a kind: write ``kinds/<name>.py`` defining ``KIND = Kind(...)`` (encode,
train_forward and whichever optional fields apply; import only from .base, ..code and
ops), add it to the import line below, and add ``tests/test_kind_<name>.py``. Nothing else
changes: the CLI flag choices, the pipeline config keys and the formats follow. A kind from
outside the package can be added at run time with ``register(KIND)``.
"""
from __future__ import annotations

from . import batchtopk, gated, jumprelu, matryoshka, relu, topk
from .base import Kind, Option, TrainOut

__all__ = ["KINDS", "Kind", "Option", "TrainOut", "register", "get_kind", "all_options",
           "check_kind_options"]

KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    """Add kind to KINDS. ValueError when the name is taken, or when an option it shares
    with another kind (same name) has another default (TrainConfig holds one value each)."""
    if not isinstance(kind, Kind):
        raise TypeError(f"register expects a Kind, got {type(kind).__name__}")
    if kind.name in KINDS:
        raise ValueError(f"kind {kind.name!r} is already registered")
    known = all_options()
    for o in kind.options:
        if o.name in known and known[o.name].default != o.default:
            raise ValueError(f"kind {kind.name!r}: option {o.name!r} has default {o.default!r}"
                             f", another kind declares {known[o.name].default!r}")
    KINDS[kind.name] = kind
    return kind


def get_kind(name) -> Kind:
    """The Kind called name; ValueError listing the known kinds otherwise."""
    try:
        return KINDS[name]
    except (KeyError, TypeError):
        raise ValueError(f"kind must be one of {tuple(KINDS)}, got {name!r}") from None


def all_options() -> dict:
    """option name -> Option over every registered kind (shared options once)."""
    out: dict = {}
    for k in KINDS.values():
        for o in k.options:
            out.setdefault(o.name, o)
    return out


def check_kind_options(kind, opts, d_sae=None) -> None:
    """Check kind's own options in opts (option name -> value; others ignored): each alone
    (Option.check), then together and against the width d_sae (int, or None while unknown)
    by the kind's check_options. TypeError / ValueError naming the option(s)."""
    spec = get_kind(kind)
    own = {o.name: opts.get(o.name, o.default) for o in spec.options}
    for o in spec.options:
        o.check(own[o.name])
    if spec.check_options is not None:
        spec.check_options(own, d_sae)


for _module in (topk, batchtopk, jumprelu, relu, matryoshka, gated):
    register(_module.KIND)
