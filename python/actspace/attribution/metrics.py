"""What attribution explains: a scalar per prompt computed from the model's outputs.

A metric is bound to a model and tokenizer once (`bind`), so bad input fails before any
forward: a target string that is not one token of the vocabulary, an id past the model's
output width. Bound metrics take (outputs, attention_mask [B, T]) and return [B]; the
position read by the causal-LM metrics is each prompt's last real token, wherever padding
puts it.

    acts.metrics.logit_diff(" Paris", " London")   # logit(Paris) - logit(London)
    acts.metrics.logprob(" Paris")                  # log P(Paris) (a list: P of any of them)
    acts.metrics.projection(direction)              # encoders: pooled embedding · unit dir
    acts.metrics.cosine(target)                     # encoders: cos(pooled embedding, target)
    acts.metrics.custom(fn)                         # fn(outputs, attention_mask) -> [B]
"""
from __future__ import annotations

from typing import Callable

import torch

from ..model.hooks import first_tensor

__all__ = ["Metric", "logit_diff", "logprob", "projection", "cosine", "custom", "as_metric",
           "last_positions", "token_id"]


def last_positions(mask: torch.Tensor) -> torch.Tensor:
    """attention_mask [B, T] -> [B] index of each row's last real token (left or right pad)."""
    T = mask.shape[1]
    ar = torch.arange(T, device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), ar, torch.full_like(ar, -1)).max(1).values


def token_id(tokenizer, text, model=None, what: str = "metric token") -> int:
    """The id of text as exactly one token (an int passes through, range-checked)."""
    if isinstance(text, int):
        tid = text
    else:
        if tokenizer is None:
            raise ValueError(f"{what} {text!r}: a tokenizer is needed to turn it into an id")
        ids = tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            shown = tokenizer.convert_ids_to_tokens(ids)
            raise ValueError(f"{what} {text!r} is {len(ids)} tokens {shown} in this tokenizer, "
                             "not one token of its vocabulary (pass a single-token string "
                             "or a token id)")
        tid = ids[0]
        unk = getattr(tokenizer, "unk_token_id", None)
        if unk is not None and tid == unk and text != tokenizer.unk_token:
            raise ValueError(f"{what} {text!r} is not in the vocabulary (it becomes the "
                             f"unknown token {tokenizer.unk_token!r})")
    width = _vocab_width(model)
    if tid < 0 or (width is not None and tid >= width):
        raise ValueError(f"{what} {text!r}: id {tid} is outside the model's vocabulary "
                         f"[0, {width})")
    return int(tid)


def _vocab_width(model):
    if model is None:
        return None
    try:
        return model.get_output_embeddings().weight.shape[0]
    except (AttributeError, NotImplementedError):
        return getattr(getattr(model, "config", None), "vocab_size", None)


def _logits(outputs) -> torch.Tensor:
    logits = getattr(outputs, "logits", None)
    if logits is None:
        raise ValueError("this metric reads next-token logits, but the model's outputs have "
                         "no .logits (an encoder? use metrics.projection or metrics.cosine)")
    return logits                                                      # [B, T, V]


def _last_logits(outputs, mask) -> torch.Tensor:
    logits = _logits(outputs)
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, last_positions(mask).to(logits.device)].float()    # [B, V]


def _pooled(outputs, mask) -> torch.Tensor:
    """Mean of the last hidden state over real tokens -> [B, d] (float32 or wider)."""
    hidden = getattr(outputs, "last_hidden_state", None)
    hidden = first_tensor(outputs) if hidden is None else hidden        # [B, T, d]
    w = mask.to(hidden.device).unsqueeze(-1).to(torch.promote_types(hidden.dtype, torch.float32))
    return (hidden * w).sum(1) / w.sum(1).clamp_min(1)


class Metric:
    """A named metric; bind(model, tokenizer) -> fn(outputs, attention_mask) -> [B]."""

    def __init__(self, name: str, make: Callable):
        self.name = name
        self._make = make

    def bind(self, model, tokenizer) -> Callable:
        return self._make(model, tokenizer)

    def __repr__(self):
        return f"Metric({self.name})"


def logit_diff(target, other) -> Metric:
    """logit[target] - logit[other] at the last real token (each a single token or an id)."""
    def make(model, tok):
        a = token_id(tok, target, model, "metric target")
        b = token_id(tok, other, model, "metric token")

        def fn(outputs, mask):
            last = _last_logits(outputs, mask)
            return last[:, a] - last[:, b]
        return fn
    return Metric(f"logit_diff({target!r}, {other!r})", make)


def logprob(targets) -> Metric:
    """log P(target) of the next token after the last real token; a list of targets: the
    log of their total probability."""
    items = [targets] if isinstance(targets, (str, int)) else list(targets)
    if not items:
        raise ValueError("logprob needs at least one target token")

    def make(model, tok):
        ids = torch.tensor([token_id(tok, t, model, "metric target") for t in items])

        def fn(outputs, mask):
            lp = torch.log_softmax(_last_logits(outputs, mask), -1)
            return torch.logsumexp(lp[:, ids.to(lp.device)], -1)
        return fn
    return Metric(f"logprob({targets!r})", make)


def _direction(v, what) -> torch.Tensor:
    v = torch.as_tensor(v, dtype=torch.float32).detach()
    if v.dim() != 1 or not bool(torch.isfinite(v).all()) or float(v.norm()) == 0:
        raise ValueError(f"{what} must be a finite, nonzero vector [d], got shape "
                         f"{list(v.shape)}")
    return v


def _check_width(pooled, v, what):
    if pooled.shape[-1] != v.shape[0]:
        raise ValueError(f"{what} has {v.shape[0]} entries, the pooled embedding "
                         f"{pooled.shape[-1]}")


def projection(direction) -> Metric:
    """Encoders: (mean-pooled last hidden state) · direction / ‖direction‖ per prompt."""
    v = _direction(direction, "projection direction")
    unit = v / v.norm()

    def make(model, tok):
        def fn(outputs, mask):
            pooled = _pooled(outputs, mask)
            _check_width(pooled, unit, "projection direction")
            return pooled @ unit.to(pooled.device, pooled.dtype)
        return fn
    return Metric("projection", make)


def cosine(target) -> Metric:
    """Encoders: cosine of the mean-pooled last hidden state with target [d]."""
    v = _direction(target, "cosine target")

    def make(model, tok):
        def fn(outputs, mask):
            pooled = _pooled(outputs, mask)
            _check_width(pooled, v, "cosine target")
            return torch.nn.functional.cosine_similarity(
                pooled, v.to(pooled.device, pooled.dtype).expand_as(pooled), dim=-1)
        return fn
    return Metric("cosine", make)


def custom(fn: Callable, name: str | None = None) -> Metric:
    """A user function fn(outputs, attention_mask [B, T]) -> [B] (differentiable)."""
    if not callable(fn):
        raise TypeError(f"metric must be callable, got {type(fn).__name__}")
    return Metric(name or getattr(fn, "__name__", "custom"), lambda model, tok: fn)


def as_metric(metric) -> Metric:
    """A Metric, or a plain callable wrapped by custom()."""
    if isinstance(metric, Metric):
        return metric
    if callable(metric):
        return custom(metric)
    raise TypeError("metric must be an acts.metrics.* metric or a callable "
                    f"fn(outputs, attention_mask) -> [B], got {type(metric).__name__}")
