"""The attribution summary a pipeline run writes (attribution/top.json) for its report:
per prompt, its tokens, the metric, the per-token heat (sum of latent scores at each
position) and the top nodes. Plain JSON, so the report needs neither torch nor the model.
"""
from __future__ import annotations

from . import metrics
from .api import attribute

__all__ = ["attribution_summary", "summarize"]


def summarize(res, top: int) -> dict:
    """An Attribution -> the JSON summary (see the module docstring)."""
    prompts = []
    for p, toks in enumerate(res.tokens):
        prompts.append({"tokens": toks, "metric": res.metric[p],
                        "heat": res.token_heat(p, kinds=("latent", "neuron")),
                        "top": res.top(top, prompt=p)})
    return {"method": res.meta["method"], "metric": res.meta["metric"],
            "baseline": res.meta["baseline"], "hookpoints": res.hookpoints,
            "prompts": prompts}


def attribution_summary(model, tokenizer, cfg: dict, saes: dict) -> dict:
    """Run acts.attribute for a pipeline `attribution` section (prompts, target, other,
    method, top) with the run's SAEs and summarize it."""
    metric = (metrics.logit_diff(cfg["target"], cfg["other"]) if cfg.get("other")
              else metrics.logprob(cfg["target"]))
    res = attribute(model, tokenizer, cfg["prompts"], metric, saes=saes, method=cfg["method"])
    return summarize(res, cfg["top"])
