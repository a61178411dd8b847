"""actspace: capture, decompose, measure and steer the activation spaces of neural networks.

The import is light on purpose: torch, the compiled core and every sub-package load on
first use (``acts.ops``, ``acts.capture``, ``acts.SAE`` ...), so ``import actspace`` costs
milliseconds and a CLI can start before torch does.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it (imported on first attribute access)
_LAZY = {
    "ops": "actspace.ops",
    "reference": "actspace.reference",
    # capture and the activation store
    "capture": "actspace.capture.hooks",
    "capture_to_store": "actspace.capture.job",
    "ActivationStore": "actspace.capture.store",
    # measurement
    "ActivationStats": "actspace.stats.activation",
    "LatentStats": "actspace.stats.latent",
    # decomposition
    "SAE": "actspace.decompose.sae",
    "train_sae": "actspace.decompose.train",
    "evaluate_sae": "actspace.decompose.evaluate",
    "encode_store": "actspace.decompose.latents",
    "SNMF": "actspace.decompose.snmf",
    "PCA": "actspace.decompose.pca",
    # steering
    "SteeringVector": "actspace.steer.vector",
    "ablate": "actspace.steer.interventions",
    "steer_with_sae": "actspace.steer.interventions",
    "steering_sweep": "actspace.steer.sweep",
    # attribution
    "attribute": "actspace.attribution.api",
    "attribute_edges": "actspace.attribution.edges",
    "metrics": "actspace.attribution.metrics",
    "Attribution": "actspace.attribution.result",
    # autointerp: explain latents with an LLM and score the explanations
    "llm": "actspace.interp.llm",
    "explain": "actspace.interp.explainer",
    "score_explanations": "actspace.interp.scoring",
    "Explanations": "actspace.interp.results",
}

__all__ = ["__version__", "build_info", *_LAZY]


def build_info() -> dict:
    """What the compiled core was built with: version, cuda, cuda_archs, openmp, simd."""
    from . import _core

    return dict(_core.build_info())


def __getattr__(name: str):
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'actspace' has no attribute {name!r}")
    module = importlib.import_module(target)
    value = module if target.rsplit(".", 1)[-1] == name else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
