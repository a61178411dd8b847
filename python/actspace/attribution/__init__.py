"""Attribution: which SAE latents and neurons at which positions cause a model's output.

    res = acts.attribute(model, tok, prompts, metric=acts.metrics.logit_diff(" a", " b"),
                         saes={hookpoint: sae}, method="atp")        # "ig" | "exact"
    res.top(20); res.save(path); acts.attribute_edges(...)
"""
from . import metrics
from .api import METHODS, attribute
from .edges import Edges, attribute_edges
from .result import Attribution

__all__ = ["attribute", "attribute_edges", "metrics", "Attribution", "Edges", "METHODS"]
