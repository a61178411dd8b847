"""The detection and fuzzing scorers: an LLM, given only the explanation, classifies
held-out examples, and the explanation scores by how well it does.

Detection: plain-text examples, half activating (held-out quantile samples), half not;
"is the feature active in this excerpt?". Fuzzing: the activating examples with their
firing tokens marked << >>, the non-activating ones marked at the positions of a random
activating example; "are the marks where the feature fires?" (delphi's default fuzzing).
Examples are shuffled (seeded per latent) and shown n_shown per prompt; each prompt's
answer is a list of 0/1. Balanced accuracy is over the parsed predictions; AUROC over
P(1) from the answer's logprobs when the server returns them (logprobs=True), else over
the 0/1 predictions themselves (then it equals the balanced accuracy; "auroc_from" says
which). A prompt whose answer is malformed or whose request failed drops its examples
and is counted; a latent with no usable answer gets an error instead of scores.
"""
from __future__ import annotations

import random

from .metrics import auroc, balanced_accuracy
from .prompts import (MalformedAnswer, detection_chat, fuzzing_chat, highlight,
                      label_probabilities, parse_labels)

__all__ = ["detection_scores", "fuzzing_scores"]


def _detection_items(le, rng):
    """[(label, example)] for detection: the examples themselves, unmarked."""
    return [(ex.activating, ex) for ex in le.test + le.negative]


def _fuzzing_items(le, rng):
    """[(label, marked text)]: activating examples marked where they fire, non-activating
    ones marked at the (length-clipped) firing positions of a random activating one."""
    items = [(True, highlight(ex.tokens, [a > 0 for a in ex.acts])) for ex in le.test]
    for ex in le.negative:
        if not le.test:
            break
        donor = rng.choice(le.test)
        marks = [a > 0 for a in donor.acts][:len(ex.tokens)]
        marks += [False] * (len(ex.tokens) - len(marks))
        if not any(marks):                         # clipped away: mark the same count
            marks[rng.randrange(len(ex.tokens))] = True
        items.append((False, highlight(ex.tokens, marks)))
    return items


def _score(kind: str, texts: dict, examples: dict, client, *, n_shown: int, seed: int,
           logprobs: bool) -> dict:
    if n_shown <= 0:
        raise ValueError(f"n_shown must be a positive int, got {n_shown!r}")
    make_items = _detection_items if kind == "detection" else _fuzzing_items
    make_chat = detection_chat if kind == "detection" else fuzzing_chat
    batches = []                     # (latent, labels, chat)
    out = {}
    for lat, expl in texts.items():
        le = examples.get(lat)
        if le is None or not le.test or not le.negative:
            out[lat] = {"error": "needs held-out activating and non-activating examples"}
            continue
        rng = random.Random(f"{kind}-{seed}-{lat}")
        items = make_items(le, rng)
        rng.shuffle(items)
        for a in range(0, len(items), n_shown):
            part = items[a:a + n_shown]
            batches.append((lat, [lab for lab, _ in part], make_chat(expl, [x for _, x in part])))
    extra = {"logprobs": True, "top_logprobs": 5} if logprobs else {}
    answers = client.complete_many([c for _, _, c in batches], desc=kind, **extra)
    per = {}
    for (lat, labels, _), ans in zip(batches, answers):
        acc = per.setdefault(lat, {"labels": [], "pred": [], "prob": [], "failed": 0,
                                   "errors": []})
        try:
            if isinstance(ans, Exception):
                raise MalformedAnswer(f"request failed: {ans}")
            pred = parse_labels(ans.text, len(labels))
        except MalformedAnswer as e:
            acc["failed"] += 1
            acc["errors"].append(str(e))
            continue
        probs = label_probabilities(ans.logprobs, len(labels)) if logprobs else None
        acc["labels"] += labels
        acc["pred"] += pred
        acc["prob"] += probs if probs is not None else [None] * len(labels)
    for lat, acc in per.items():
        res = {"n": len(acc["labels"]), "failed_prompts": acc["failed"]}
        if not acc["labels"]:
            res["error"] = f"no usable answer ({acc['failed']} prompts): {acc['errors'][0]}"
            out[lat] = res
            continue
        use_probs = all(p is not None for p in acc["prob"])
        res["balanced_accuracy"] = balanced_accuracy(acc["labels"], acc["pred"])
        res["auroc"] = auroc(acc["labels"], acc["prob"] if use_probs else
                             [float(p) for p in acc["pred"]])
        res["auroc_from"] = "logprobs" if use_probs else "predictions"
        if acc["errors"]:
            res["errors"] = acc["errors"][:3]
        out[lat] = res
    return out


def detection_scores(texts: dict, examples: dict, client, *, n_shown: int = 5,
                     seed: int = 0, logprobs: bool = False) -> dict:
    """{latent: {"balanced_accuracy", "auroc", "auroc_from", "n", "failed_prompts"} or
    {"error"}} of the detection scorer (module docstring)."""
    return _score("detection", texts, examples, client, n_shown=n_shown, seed=seed,
                  logprobs=logprobs)


def fuzzing_scores(texts: dict, examples: dict, client, *, n_shown: int = 5,
                   seed: int = 0, logprobs: bool = False) -> dict:
    """Same as detection_scores, for the fuzzing scorer (module docstring)."""
    return _score("fuzzing", texts, examples, client, n_shown=n_shown, seed=seed,
                  logprobs=logprobs)
