"""`acts.explain(latent_store, latents, client)`: one explanation per latent, written by an
LLM from the latent's activating examples (sampling.py), as delphi's default explainer does.

Every latent is one request; all go through the client's bounded pool at once (a server
batches concurrent requests), and every answer lands in the client's cache as it arrives.
A latent that never fires, a request that fails for good or an answer without an
explanation line becomes that latent's error; the others are not held up.
"""
from __future__ import annotations

from .prompts import MalformedAnswer, explainer_chat, parse_explanation
from .results import Explanations

__all__ = ["explain", "default_latents", "chunks", "neighbour_embedder",
           "SAMPLING_DEFAULTS"]

SAMPLING_DEFAULTS = {"window": 32, "n_train": 20, "n_test": 20, "n_negative": 20,
                     "n_quantiles": 5, "train": "top", "n_neighbours": 0, "seed": 0}


def default_latents(latent_store) -> list[int]:
    """Every latent that fired at least once (from the store's LatentStats)."""
    from ..stats.latent import LatentStats

    return [int(v) for v in (LatentStats.load(latent_store).counts > 0).nonzero().flatten()]


def _check_client(client):
    if client is None:
        raise ValueError("explain needs client=, e.g. acts.llm.openai_compatible("
                         "base_url='http://localhost:8000/v1', model='...')")
    if not callable(getattr(client, "complete_many", None)):
        raise TypeError(f"client must have complete_many(chats) (an acts.llm client), got "
                        f"{type(client).__name__}")


def neighbour_embedder(params: dict, embedder):
    """The embedder sampling needs for nearest-neighbour negatives (None when it draws none)."""
    if not params.get("n_neighbours"):
        return None
    from .embedding import as_embedder
    return as_embedder(embedder)


def chunks(items: list, size: int):
    """items in consecutive runs of at most size (one pass over the store per run)."""
    if not isinstance(size, int) or size <= 0:
        raise ValueError(f"latents_per_pass must be a positive int, got {size!r}")
    for a in range(0, len(items), size):
        yield items[a:a + size]


def explain(latent_store, latents=None, *, client=None, tokenizer=None,
            sampling: dict | None = None, examples: dict | None = None,
            latents_per_pass: int = 1024, embedder=None) -> Explanations:
    """Explain `latents` (default: every latent that fired) of a sparse latent store.

    client: an acts.llm client (acts.llm.openai_compatible(base_url, model));
    tokenizer: to decode the store's tokens (default: the one the source activation store
    records); sampling: overrides of SAMPLING_DEFAULTS (sample_examples arguments, kept in
    the result so that scoring draws the same held-out examples); examples: {latent:
    LatentExamples} already drawn (skips sampling); latents_per_pass: latents sampled per
    pass over the store (bounds the memory of their firings); embedder: for sampling's
    n_neighbours (see score_explanations). Returns Explanations (texts, errors, usage)."""
    from .sampling import load_tokenizer, sample_examples

    _check_client(client)
    params = {**SAMPLING_DEFAULTS, **(sampling or {})}
    unknown = set(params) - set(SAMPLING_DEFAULTS)
    if unknown:
        raise ValueError(f"sampling: unknown keys {sorted(unknown)}; known: "
                         f"{sorted(SAMPLING_DEFAULTS)}")
    latents = default_latents(latent_store) if latents is None else [int(v) for v in latents]
    if examples is None:
        tokenizer = load_tokenizer(latent_store, tokenizer)
    embedder = neighbour_embedder(params, embedder)
    texts, errors = {}, {}
    for part in chunks(latents, latents_per_pass):
        drawn = examples if examples is not None else sample_examples(
            latent_store, part, tokenizer=tokenizer, embedder=embedder, **params)
        asked = [lat for lat in part if drawn[lat].train]
        for lat in part:
            if not drawn[lat].train:
                errors[lat] = "the latent never fires in this store: nothing to explain"
        answers = client.complete_many([explainer_chat(drawn[lat].train) for lat in asked],
                                       desc="explain")
        for lat, ans in zip(asked, answers):
            if isinstance(ans, Exception):
                errors[lat] = f"request failed: {ans}"
                continue
            try:
                texts[lat] = parse_explanation(ans.text)
            except MalformedAnswer as e:
                errors[lat] = f"malformed answer: {e}"
    return Explanations(texts, errors=errors, latent_store=str(latent_store),
                        explainer={"model": getattr(client, "model", None),
                                   "url": getattr(client, "url", None)},
                        sampling=params, usage=_usage(client))


def _usage(client) -> dict:
    usage = getattr(client, "usage", None)
    return usage.as_dict() if hasattr(usage, "as_dict") else {}
