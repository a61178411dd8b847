"""Max-activating examples of a sparse latent store, with the tokens around them.

Split from latents.py (which writes the store and calls this once at the end) to keep each
file readable: this module only reads a finished store's token_ids/doc_ids/positions,
through decompose.latent_store (each shard checked as it is read).
"""
from __future__ import annotations

import torch

from .latent_store import META_KEYS, iter_shards


def top_examples(latent_dir, stats, context: int, tokenizer=None) -> dict:
    """Per fired latent of stats (the store's LatentStats), its top-T examples with the
    token window around them.

    One pass over the latent store's token_ids/doc_ids/positions, gathering only the rows
    inside the windows of top examples (memory O(d_sae * T * context), not O(rows))."""

    tops = stats.top_tokens.cpu()                                   # [M, T], -1 = empty
    lat_of, slot = torch.nonzero(tops >= 0, as_tuple=True)          # one entry per example
    tok = tops[lat_of, slot]                                        # [E]
    span = torch.arange(-context, context + 1)
    win = tok[:, None] + span                                       # [E, 2c+1] global rows
    rows = win.reshape(-1).unique()                                 # sorted
    rows = rows[rows >= 0]
    meta = torch.full((rows.numel(), 3), -1, dtype=torch.int64)     # token_id, doc, position
    have = torch.zeros(rows.numel(), dtype=torch.bool)
    offset = 0
    for shard in iter_shards(latent_dir, META_KEYS):
        n = next(iter(shard.values())).shape[0] if shard else 0
        sel = (rows >= offset) & (rows < offset + n)
        if "token_ids" in shard and "doc_ids" in shard:
            local = rows[sel] - offset
            pos = shard["positions"][local] if "positions" in shard else torch.full_like(local, -1)
            meta[sel] = torch.stack([shard["token_ids"][local], shard["doc_ids"][local], pos], 1)
            have |= sel
        offset += n
    if rows.numel() == 0:              # nothing fired: no examples
        return {}
    at = torch.searchsorted(rows, win.clamp_min(0)).clamp_max(rows.numel() - 1)
    ok = (win >= 0) & (rows[at] == win) & have[at]                  # [E, 2c+1]
    centre = at[:, context]
    ok &= ok[:, context:context + 1] & (meta[at, 1] == meta[centre, 1][:, None])  # same doc
    ids = meta[at, 0]
    windows = [ids[e][ok[e]].tolist() for e in range(tok.numel())]
    texts = tokenizer.batch_decode(windows) if tokenizer is not None else None
    centre_text = (tokenizer.batch_decode([[t] for t in meta[centre, 0].tolist()])
                   if tokenizer is not None else None)
    out: dict = {}
    values = stats.top_values.cpu()[lat_of, slot].tolist()
    for e, (lat, t) in enumerate(zip(lat_of.tolist(), tok.tolist())):
        entry = {"value": values[e], "token": t}
        if ok[e, context]:
            entry.update(doc=int(meta[centre[e], 1]), position=int(meta[centre[e], 2]),
                         token_id=int(meta[centre[e], 0]), context_ids=windows[e],
                         context_index=int(ok[e, :context].sum()))
            if tokenizer is not None:
                entry["text"], entry["token_text"] = texts[e], centre_text[e]
        out.setdefault(str(lat), []).append(entry)
    return out
