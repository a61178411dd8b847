"""`acts.score_explanations(ex, latent_store, scorers=[...])`: score explanations on
held-out examples of the latents they explain.

The scorers form a registry (SCORERS: name -> function(texts, examples, context) ->
{latent: result}); a new scorer is one entry. Held-out examples are drawn with the
sampling arguments the explanations were made with (Explanations.sampling), so the
examples scored are never those the explainer saw; explanations given by hand (a dict
latent -> text) use the defaults.
"""
from __future__ import annotations

from .explainer import SAMPLING_DEFAULTS, chunks, neighbour_embedder
from .results import Explanations, as_explanations

__all__ = ["SCORERS", "score_explanations"]


def _embedding(texts, examples, ctx):
    from .embedding import embedding_scores

    return embedding_scores(texts, examples, ctx["embedder"])


def _detection(texts, examples, ctx):
    from .classifier import detection_scores

    return detection_scores(texts, examples, ctx["client"], n_shown=ctx["n_shown"],
                            seed=ctx["seed"], logprobs=ctx["logprobs"])


def _fuzzing(texts, examples, ctx):
    from .classifier import fuzzing_scores

    return fuzzing_scores(texts, examples, ctx["client"], n_shown=ctx["n_shown"],
                          seed=ctx["seed"], logprobs=ctx["logprobs"])


# name -> (function, needs an LLM client)
SCORERS = {"embedding": (_embedding, False), "detection": (_detection, True),
           "fuzzing": (_fuzzing, True)}


def score_explanations(ex, latent_store, scorers=("embedding",), *, embedder=None,
                       client=None, tokenizer=None, sampling: dict | None = None,
                       examples: dict | None = None, n_shown: int = 5,
                       logprobs: bool = False, latents_per_pass: int = 1024) -> Explanations:
    """Score each explanation of ex (an Explanations or a dict latent -> text) with each
    of `scorers` (names in SCORERS). embedder: for "embedding", a sentence-transformers
    model directory, an object with .embed(texts), or None for the shipped MiniLM;
    client: an acts.llm client, needed by "detection" and "fuzzing"; n_shown: examples per
    prompt; logprobs: ask the server for logprobs (AUROC from P(1)); sampling: overrides of
    the sampling arguments; examples: {latent: LatentExamples} already drawn;
    latents_per_pass: latents sampled per pass over the store.
    With sampling n_neighbours > 0, that many of the non-activating examples are the
    contexts nearest to the activating ones in `embedder`'s space (hard negatives).
    Returns ex as an Explanations with .scores[latent][scorer] filled in (a scorer's failure
    for one latent is its {"error": ...}; the other latents are scored)."""
    from .sampling import load_tokenizer, sample_examples

    ex = as_explanations(ex)
    if isinstance(scorers, str):
        scorers = [scorers]
    scorers = list(scorers)
    unknown = [s for s in scorers if s not in SCORERS]
    if unknown or not scorers:
        raise ValueError(f"scorers: unknown {unknown or scorers!r}; known: {sorted(SCORERS)}")
    if client is None and any(SCORERS[s][1] for s in scorers):
        raise ValueError(f"scorers {[s for s in scorers if SCORERS[s][1]]} need client= "
                         "(an acts.llm.openai_compatible(...) client)")
    params = {**SAMPLING_DEFAULTS, **ex.sampling, **(sampling or {})}
    texts = dict(ex.texts)
    ctx = {"client": client, "n_shown": n_shown, "seed": params["seed"],
           "logprobs": logprobs, "embedder": None}
    near = neighbour_embedder(params, embedder)
    if "embedding" in scorers:
        from .embedding import as_embedder
        ctx["embedder"] = near or as_embedder(embedder)
    if examples is None:
        tokenizer = load_tokenizer(latent_store, tokenizer)
    scores = {lat: dict(v) for lat, v in ex.scores.items()}
    for part in chunks(sorted(texts), latents_per_pass):
        drawn = examples if examples is not None else sample_examples(
            latent_store, part, tokenizer=tokenizer, embedder=near, **params)
        part_texts = {lat: texts[lat] for lat in part}
        for name in scorers:
            for lat, res in SCORERS[name][0](part_texts, drawn, ctx).items():
                scores.setdefault(lat, {})[name] = res
    usage = ex.usage
    if client is not None and hasattr(getattr(client, "usage", None), "as_dict"):
        usage = {**usage, "scoring": client.usage.as_dict()}
    return Explanations(texts, errors=ex.errors, scores=scores,
                        latent_store=ex.latent_store or str(latent_store),
                        explainer=ex.explainer, sampling=params, usage=usage)
