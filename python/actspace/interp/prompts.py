"""The prompts of the explainer and of the detection and fuzzing scorers, and the parsing
of their answers.

Why in one module: prompts and parsers are a contract with the LLM (what format is asked
for is what is parsed), and they change together. Parsers never trust the answer: a
missing or ill-formed answer raises MalformedAnswer, which the caller turns into a
per-latent error while the run goes on.
"""
from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:                       # sampling imports torch; the prompts need none
    from .sampling import Example

__all__ = ["MalformedAnswer", "highlight", "explainer_chat", "parse_explanation",
           "detection_chat", "fuzzing_chat", "parse_labels", "label_probabilities"]

OPEN, CLOSE = "<<", ">>"


class MalformedAnswer(ValueError):
    """The LLM's answer is not in the format its prompt asked for."""


def highlight(tokens: list[str], marked: list[bool]) -> str:
    """The text with each run of marked tokens wrapped in << >> (a leading space stays
    outside the marks, so <<word>> reads naturally)."""
    out, i = [], 0
    while i < len(tokens):
        if not marked[i]:
            out.append(tokens[i])
            i += 1
            continue
        j = i
        while j < len(tokens) and marked[j]:
            j += 1
        run = "".join(tokens[i:j])
        lead = run[:len(run) - len(run.lstrip())]
        out.append(f"{lead}{OPEN}{run.lstrip()}{CLOSE}")
        i = j
    return "".join(out).replace("\n", " ")


# ---------------------------------------------------------------------- explainer
_EXPLAINER_SYSTEM = (
    "You study one neuron-like feature of a language model. You are shown text excerpts "
    "in which the feature is active. Tokens where it fires are wrapped in << and >>; after "
    "each excerpt, the firing tokens are listed with the feature's activation (larger means "
    "stronger). Work out the common pattern: which tokens or concepts it fires on, and what "
    "in the surrounding text makes it fire. Think briefly, then finish with one line of "
    "the form\n[EXPLANATION]: <a short phrase or sentence>\nThe explanation should be "
    "concise and specific enough to tell text where the feature fires from text where it "
    "does not.")


def explainer_chat(examples: list[Example], max_listed: int = 8) -> list[dict]:
    """The chat asking for an explanation of a latent from its activating examples."""
    parts = []
    for i, ex in enumerate(examples, 1):
        fired = [(t, a) for t, a in zip(ex.tokens, ex.acts) if a > 0]
        fired.sort(key=lambda p: -p[1])
        listed = ", ".join(f"{t.strip()!r} ({a:.3g})" for t, a in fired[:max_listed])
        parts.append(f"Example {i}: {highlight(ex.tokens, [a > 0 for a in ex.acts])}\n"
                     f"Activations: {listed}")
    return [{"role": "system", "content": _EXPLAINER_SYSTEM},
            {"role": "user", "content": "\n\n".join(parts)}]


_EXPLANATION_RE = re.compile(r"\[EXPLANATION\]\s*:?\s*(.+)", re.IGNORECASE)


def parse_explanation(text: str) -> str:
    """The explanation after the last `[EXPLANATION]:`, stripped of quotes and markup."""
    found = _EXPLANATION_RE.findall(text or "")
    if not found:
        raise MalformedAnswer(f"no '[EXPLANATION]:' line in the answer {text[:160]!r}")
    expl = found[-1].strip().strip("*").strip()
    while len(expl) >= 2 and expl[0] == expl[-1] and expl[0] in "\"'`":
        expl = expl[1:-1].strip()          # quotes around the whole line, not inside it
    if not expl:
        raise MalformedAnswer("the '[EXPLANATION]:' line is empty")
    return expl


# ---------------------------------------------------------------------- classifiers
_DETECTION_SYSTEM = (
    "You are given an explanation of a feature of a language model and {n} numbered text "
    "excerpts. Decide for each excerpt whether the feature, as the explanation describes "
    "it, is active anywhere in that excerpt. Answer with only a list of {n} numbers in "
    "square brackets, 1 for active and 0 for not active, in the order of the excerpts, "
    "for example {example}.")

_FUZZING_SYSTEM = (
    "You are given an explanation of a feature of a language model and {n} numbered text "
    "excerpts in which some tokens are wrapped in << and >>. Decide for each excerpt "
    "whether the marked tokens are exactly where the feature, as the explanation describes "
    "it, is active. Answer with only a list of {n} numbers in square brackets, 1 when the "
    "marks are correct and 0 when they are not, in the order of the excerpts, for example "
    "{example}.")


def _classifier_chat(system: str, explanation: str, texts: list[str]) -> list[dict]:
    n = len(texts)
    example = "[" + ", ".join("1" if i % 2 == 0 else "0" for i in range(n)) + "]"
    body = "\n".join(f"Example {i}: {t}" for i, t in enumerate(texts, 1))
    return [{"role": "system", "content": system.format(n=n, example=example)},
            {"role": "user", "content": f"Explanation: {explanation}\n\n{body}"}]


def detection_chat(explanation: str, examples: list[Example]) -> list[dict]:
    """The chat asking which plain-text examples activate the explained feature."""
    return _classifier_chat(_DETECTION_SYSTEM, explanation,
                            [ex.text.replace("\n", " ") for ex in examples])


def fuzzing_chat(explanation: str, marked_texts: list[str]) -> list[dict]:
    """The chat asking whether the << >> marks of each text are where the feature fires."""
    return _classifier_chat(_FUZZING_SYSTEM, explanation, marked_texts)


_LIST_RE = re.compile(r"\[\s*([01](?:\s*,\s*[01])*)\s*\]")


def parse_labels(text: str, n: int) -> list[bool]:
    """The last bracketed list of exactly n 0/1 values in the answer, as bools."""
    for found in reversed(_LIST_RE.findall(text or "")):
        vals = [v.strip() == "1" for v in found.split(",")]
        if len(vals) == n:
            return vals
    raise MalformedAnswer(f"no list of {n} zeros and ones in the answer {(text or '')[:160]!r}")


def label_probabilities(logprobs: list | None, n: int) -> list[float] | None:
    """P(1) / (P(0) + P(1)) for each of the n answer digits, from the answer's token
    logprobs (OpenAI `logprobs.content`: [{token, logprob, top_logprobs: [...]}]); the
    last n tokens that are a lone 0 or 1 are the answer's. None when the server sent no
    logprobs or they do not line up with the answer."""
    if not logprobs:
        return None
    digits = [t for t in logprobs if isinstance(t, dict) and
              str(t.get("token", "")).strip(" [],") in ("0", "1")]
    if len(digits) < n:
        return None
    out = []
    for t in digits[-n:]:
        p = {"0": 0.0, "1": 0.0}
        for alt in t.get("top_logprobs") or [{"token": t["token"], "logprob": t.get("logprob")}]:
            key = str(alt.get("token", "")).strip(" [],")
            if key in p and isinstance(alt.get("logprob"), (int, float)):
                p[key] += math.exp(alt["logprob"])
        total = p["0"] + p["1"]
        out.append(p["1"] / total if total > 0 else 0.5)
    return out
