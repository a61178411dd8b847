"""Examples of what a latent fires on, drawn from a sparse latent store as delphi draws them.

The token stream is cut into contexts: runs of at most `window` consecutive tokens of one
document (by position, so contexts never straddle documents). A context activates a latent
when the latent fires on any of its tokens; its activation is the largest one there.
Activating contexts, sorted by activation, are split into `n_quantiles` equal groups:
examples shown to the explainer come from the top (or evenly from every quantile), held-out
examples for scoring come evenly from every quantile and never repeat a shown one, so a
score rewards an explanation of the whole range, not only of the strongest firings.
Non-activating examples are random contexts where the latent never fires and, optionally,
the non-activating contexts nearest in a sentence-embedding space to the activating ones
(hard negatives). Every draw comes from a generator seeded by (seed, latent): the same
arguments give the same examples, whichever other latents are asked for.

Two passes over the store: the first reads indices/values/doc_ids/positions and keeps only
the requested latents' firings and the context boundaries (memory O(rows / window + their
firings)); the second reads token_ids of the chosen contexts only.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = ["Example", "LatentExamples", "sample_examples", "load_tokenizer", "token_strings"]


@dataclass
class Example:
    """One context: its tokens as display strings (they concatenate to the text) and the
    latent's activation on each [len(tokens)]; quantile 0 = strongest, -1 = non-activating."""
    tokens: list[str]
    acts: list[float]
    quantile: int = -1
    kind: str = "random"          # "train" | "test" | "random" | "neighbour"

    @property
    def activating(self) -> bool:
        return self.quantile >= 0

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def max_act(self) -> float:
        return max(self.acts, default=0.0)


@dataclass
class LatentExamples:
    latent: int
    train: list[Example] = field(default_factory=list)      # shown to the explainer
    test: list[Example] = field(default_factory=list)       # held out, activating
    negative: list[Example] = field(default_factory=list)   # non-activating
    n_activating: int = 0                                     # activating contexts in store


def _iter_shards(root: Path, keys: tuple[str, ...]):
    """The requested fields of each shard of the latent store, in order, each shard
    checked against its manifest entry first (actspace.decompose.latent_store)."""
    from ..decompose.latent_store import iter_shards

    return iter_shards(root, keys)


def load_tokenizer(latent_store, tokenizer=None):
    """tokenizer itself, a tokenizer loaded from a path/name, or the one recorded in the
    manifest of the activation store the latent store was encoded from."""
    from ..decompose.latent_store import read_manifest

    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    name = tokenizer
    if name is None:
        src = read_manifest(latent_store).get("source")
        man = Path(src or "") / "manifest.json"
        if src and man.is_file():
            from .._io import read_json
            name = read_json(man, "activation store manifest").get("tokenizer")
        if not name:
            raise ValueError(f"latent store {latent_store}: cannot tell which tokenizer made "
                             "its tokens (its source activation store is gone or records "
                             "none): pass tokenizer=")
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(os.fspath(name))


def token_strings(tokenizer, ids: list[int]) -> list[str]:
    """Display strings of ids that concatenate to tokenizer.decode(ids): the difference
    between the decodings of successive prefixes (works for WordPiece and byte-level BPE;
    a token whose prefix decoding disagrees gets its own decoding after a space)."""
    prefixes = tokenizer.batch_decode([ids[:i + 1] for i in range(len(ids))])
    out, prev = [], ""
    for i, cur in enumerate(prefixes):
        out.append(cur[len(prev):] if cur.startswith(prev) else
                   " " + tokenizer.decode([ids[i]]))
        prev = cur
    return out


def _contexts_and_firings(root: Path, latents: list[int], window: int):
    """Pass 1. Returns (starts int64 [C+1]: first row of each context, then the row count;
    {latent: (rows int64 [F], values float32 [F])} of the requested latents' firings)."""
    wanted = torch.tensor(sorted(set(latents)), dtype=torch.int64)
    starts, rows_all, lat_all, val_all = [], [], [], []
    offset, prev_key = 0, None
    for shard in _iter_shards(root, ("indices", "values", "doc_ids", "positions")):
        idx = shard["indices"].to(torch.int64)                                  # [n, k]
        val = shard["values"].float()                                           # [n, k]
        n = idx.shape[0]
        doc = shard["doc_ids"].to(torch.int64) if "doc_ids" in shard else \
            torch.zeros(n, dtype=torch.int64)
        pos = shard["positions"].to(torch.int64) if "positions" in shard else \
            torch.arange(offset, offset + n)
        key = torch.stack([doc, torch.div(pos, window, rounding_mode="floor")], 1)  # [n, 2]
        new = torch.ones(n, dtype=torch.bool)
        if n > 1:
            new[1:] = (key[1:] != key[:-1]).any(1)
        if n and prev_key is not None and torch.equal(key[0], prev_key):
            new[0] = False
        starts.append(torch.nonzero(new).flatten() + offset)
        if n:
            prev_key = key[-1]
        hit = (val > 0) & torch.isin(idx, wanted)                        # the firing rule
        r, j = torch.nonzero(hit, as_tuple=True)
        rows_all.append(r + offset)
        lat_all.append(idx[r, j])
        val_all.append(val[r, j])
        offset += n
    starts = torch.cat(starts + [torch.tensor([offset])])
    rows, lats, vals = torch.cat(rows_all), torch.cat(lat_all), torch.cat(val_all)
    firings = {}
    for lat in wanted.tolist():
        m = lats == lat
        firings[lat] = (rows[m], vals[m])
    return starts, firings


def _quantile_groups(order: list[int], n_quantiles: int) -> list[list[int]]:
    """order (contexts by activation, strongest first) cut into n_quantiles near-equal runs."""
    n = len(order)
    return [order[q * n // n_quantiles:(q + 1) * n // n_quantiles] for q in range(n_quantiles)]


def _even_draw(groups: list[list[int]], n: int, rng: random.Random,
               taken: set) -> list[tuple[int, int]]:
    """About n (context, quantile) pairs spread evenly over the groups, skipping `taken`;
    a group with too few contexts leaves its share to the others."""
    pools = [[c for c in g if c not in taken] for g in groups]
    for p in pools:
        rng.shuffle(p)
    out = []
    while len(out) < n and any(pools):
        for q, p in enumerate(pools):
            if p and len(out) < n:
                out.append((p.pop(), q))
    return out


def sample_examples(latent_store, latents, *, tokenizer=None, window: int = 32,
                    n_train: int = 20, n_test: int = 20, n_negative: int = 20,
                    n_quantiles: int = 5, train: str = "top", n_neighbours: int = 0,
                    embedder=None, seed: int = 0) -> dict[int, LatentExamples]:
    """{latent: LatentExamples} for each requested latent of a sparse latent store (see
    the module docstring). train: "top" (the strongest contexts, as feature cards show)
    or "quantiles" (evenly over the quantiles); n_neighbours: how many of the n_negative
    non-activating examples are embedding nearest neighbours (needs `embedder`, an
    embedding.SentenceEmbedder or anything with .embed(texts) -> [n, d] unit rows)."""
    root = Path(latent_store)
    latents = [int(v) for v in latents]
    for name, v in (("window", window), ("n_quantiles", n_quantiles)):
        if not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    for name, v in (("n_train", n_train), ("n_test", n_test), ("n_negative", n_negative),
                    ("n_neighbours", n_neighbours)):
        if not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    if train not in ("top", "quantiles"):
        raise ValueError(f"train must be 'top' or 'quantiles', got {train!r}")
    if n_neighbours > n_negative:
        raise ValueError(f"n_neighbours ({n_neighbours}) cannot exceed n_negative ({n_negative})")
    if n_neighbours and embedder is None:
        raise ValueError("n_neighbours > 0 needs an embedder")
    from ..decompose.latent_store import read_manifest
    d_sae = int(read_manifest(root)["d_sae"])
    bad = [v for v in latents if not 0 <= v < d_sae]
    if bad:
        raise ValueError(f"latents {bad[:5]} out of range for d_sae={d_sae}")
    tok = load_tokenizer(root, tokenizer)
    starts, firings = _contexts_and_firings(root, latents, window)
    n_ctx = starts.numel() - 1

    plans = {}       # latent -> (train, test, random negatives, neighbour pool) as (ctx, q)
    for lat in latents:
        rows, vals = firings[lat]
        rng = random.Random(seed * 1_000_003 + lat)
        ctx = torch.searchsorted(starts, rows, right=True) - 1                 # [F]
        active, where = torch.unique(ctx, return_inverse=True)                 # [A] sorted
        peak = torch.zeros(active.numel()).scatter_reduce(0, where, vals, "amax")  # [A]
        order = active[torch.argsort(-peak, stable=True)].tolist()
        groups = _quantile_groups(order, n_quantiles)
        q_of = {c: q for q, g in enumerate(groups) for c in g}
        if train == "top":
            shown = [(c, q_of[c]) for c in order[:n_train]]
        else:
            shown = _even_draw(groups, n_train, rng, set())
        held = _even_draw(groups, n_test, rng, {c for c, _ in shown})
        active_set = set(order)
        want = n_negative - n_neighbours + 10 * n_neighbours   # random + neighbour pool
        pool, tries = {}, 0                  # a dict: a set that keeps the draw order
        while len(pool) < want and tries < 20 * want + 100 and n_ctx > len(active_set):
            c = rng.randrange(n_ctx)
            tries += 1
            if c not in active_set:
                pool.setdefault(c)
        pool = list(pool)
        n_rand = n_negative - n_neighbours
        plans[lat] = (shown, held, [(c, -1) for c in pool[:n_rand]],
                      [(c, -1) for c in pool[n_rand:]], len(order))

    # pass 2: token ids of every chosen context, decoded once per context
    chosen = sorted({c for p in plans.values() for part in p[:4] for c, _ in part})
    ids = _context_token_ids(root, starts, chosen)
    strings = {c: token_strings(tok, ids[c]) for c in chosen}

    out = {}
    for lat, (shown, held, rand, pool, n_act) in plans.items():
        rows, vals = firings[lat]
        value_at = dict(zip(rows.tolist(), vals.tolist()))

        def make(c, q, kind):
            a = int(starts[c])
            return Example(tokens=strings[c], quantile=q, kind=kind,
                           acts=[value_at.get(r, 0.0) for r in range(a, a + len(strings[c]))])

        le = LatentExamples(lat, [make(c, q, "train") for c, q in shown],
                            [make(c, q, "test") for c, q in held],
                            [make(c, q, "random") for c, q in rand], n_act)
        if pool and le.train:
            le.negative += _nearest(embedder, le.train, [make(c, q, "neighbour")
                                                         for c, q in pool], n_neighbours)
        out[lat] = le
    return out


def _context_token_ids(root: Path, starts: torch.Tensor, chosen: list[int]) -> dict:
    """{context: token ids} for the chosen contexts, reading only their rows."""
    if not chosen:
        return {}
    c = torch.tensor(chosen)
    spans = [torch.arange(int(starts[i]), int(starts[i + 1])) for i in chosen]
    rows = torch.cat(spans)                                                  # sorted
    got = torch.empty(rows.numel(), dtype=torch.int64)
    offset = 0
    for shard in _iter_shards(root, ("token_ids",)):
        t = shard["token_ids"].to(torch.int64)                                  # [n]
        sel = (rows >= offset) & (rows < offset + t.numel())
        got[sel] = t[rows[sel] - offset]
        offset += t.numel()
    out, at = {}, 0
    for ctx, span in zip(c.tolist(), spans):
        out[ctx] = got[at:at + span.numel()].tolist()
        at += span.numel()
    return out


def _nearest(embedder, activating: list[Example], pool: list[Example], n: int) -> list[Example]:
    """The n pool examples nearest (cosine) to the mean embedding of the activating ones."""
    emb = embedder.embed([e.text for e in activating] + [e.text for e in pool])   # [A+P, d]
    centre = torch.nn.functional.normalize(emb[:len(activating)].mean(0), dim=0)
    sims = emb[len(activating):] @ centre                                         # [P]
    return [pool[i] for i in torch.argsort(-sims, stable=True)[:n].tolist()]
