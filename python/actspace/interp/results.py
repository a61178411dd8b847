"""`Explanations`: what acts.explain returns and acts.score_explanations fills in, and its
file, explanations.json, which `actspace explain` writes and the report reads.

Format (version 1): {"format": "actspace.explanations", "version": 1, "latent_store",
"explainer": {"model", "url"} or null (explanations given by hand), "sampling": the
sample_examples arguments (scoring reuses them, so held-out examples stay held out),
"usage": token accounting, "latents": {"<latent>": {"explanation": text or null,
"error": text or null, "scores": {"<scorer>": {"auroc", "balanced_accuracy", "n", "error",
...}}}}}.
"""
from __future__ import annotations

import os

from .._io import read_json, write_json_atomic

FORMAT = "actspace.explanations"
FORMAT_VERSION = 1
FILE_NAME = "explanations.json"

__all__ = ["Explanations", "as_explanations", "FILE_NAME"]


class Explanations:
    """Per-latent explanation texts, the errors of latents that got none, and scores."""

    def __init__(self, texts: dict | None = None, *, errors: dict | None = None,
                 scores: dict | None = None, latent_store=None, explainer: dict | None = None,
                 sampling: dict | None = None, usage: dict | None = None):
        self.texts = {int(k): str(v) for k, v in (texts or {}).items()}
        self.errors = {int(k): str(v) for k, v in (errors or {}).items()}
        self.scores = {int(k): dict(v) for k, v in (scores or {}).items()}
        self.latent_store = os.fspath(latent_store) if latent_store is not None else None
        self.explainer = explainer
        self.sampling = dict(sampling or {})
        self.usage = dict(usage or {})

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, latent: int) -> str:
        return self.texts[int(latent)]

    def __contains__(self, latent) -> bool:
        return int(latent) in self.texts

    def __repr__(self) -> str:
        return (f"Explanations({len(self.texts)} explained, {len(self.errors)} errors, "
                f"{len(self.scores)} scored)")

    @property
    def latents(self) -> list[int]:
        return sorted(set(self.texts) | set(self.errors) | set(self.scores))

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": FORMAT_VERSION, "latent_store": self.latent_store,
                "explainer": self.explainer, "sampling": self.sampling, "usage": self.usage,
                "latents": {str(lat): {"explanation": self.texts.get(lat),
                                       "error": self.errors.get(lat),
                                       "scores": self.scores.get(lat, {})}
                            for lat in self.latents}}

    def save(self, path) -> str:
        """Write the JSON file (a directory gets explanations.json inside). Returns the path."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, FILE_NAME)
        write_json_atomic(path, self.to_json())
        return path

    @classmethod
    def load(cls, path) -> "Explanations":
        """Read an explanations file (or a directory holding explanations.json); a plain
        JSON object {latent: text} is read as explanations given by hand."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, FILE_NAME)
        data = read_json(path, "explanations file")
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            try:
                return as_explanations(data)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{path}: neither an {FORMAT} file nor a JSON object "
                                 f"{{latent: text}} ({e})") from None
        lats = data.get("latents") or {}
        return cls({k: v["explanation"] for k, v in lats.items() if v.get("explanation")},
                   errors={k: v["error"] for k, v in lats.items() if v.get("error")},
                   scores={k: v.get("scores") or {} for k, v in lats.items()
                           if v.get("scores")},
                   latent_store=data.get("latent_store"), explainer=data.get("explainer"),
                   sampling=data.get("sampling"), usage=data.get("usage"))


def as_explanations(ex) -> Explanations:
    """An Explanations from itself or a dict {latent: text} (explanations written by hand)."""
    if isinstance(ex, Explanations):
        return ex
    if not isinstance(ex, dict):
        raise TypeError(f"explanations must be an Explanations or a dict latent -> text, got "
                        f"{type(ex).__name__}")
    texts = {}
    for k, v in ex.items():
        try:
            lat = int(k)
        except (TypeError, ValueError):
            raise ValueError(f"explanations: key {k!r} is not a latent index") from None
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"explanations: latent {lat} has no text ({v!r})")
        texts[lat] = v
    return Explanations(texts)
