"""Test helpers for evaluation / latents / SNMF: a real `actspace.SAE` with a known
dictionary, and small real activation stores written by the capture writer."""
from __future__ import annotations

import torch

from actspace import SAE
from actspace.capture.writer import StoreWriter


def basis_sae(d: int, k: int, *, mean=None, basis=None, hookpoint=None, seed=0) -> SAE:
    """A TopK SAE whose dictionary is ±(orthonormal rows): latent i < r is +Q[i], latent
    r + i is -Q[i] (encoder tied to the decoder, b_dec = mean subtracted from the input), so
    k = r = d reconstructs exactly and a smaller k is a decent lossy SAE. basis: Q [r, d]
    (default: a random orthonormal basis, r = d)."""
    g = torch.Generator().manual_seed(seed)
    Q = basis if basis is not None else torch.linalg.qr(torch.randn(d, d, generator=g))[0].T
    sae = SAE(d, 2 * Q.shape[0], kind="topk", k=k, hookpoint=hookpoint)
    with torch.no_grad():
        W = torch.cat([Q, -Q]).float()                                 # [2d, d]
        sae.W_enc.copy_(W)
        sae.W_dec.copy_(W)
        sae.b_enc.zero_()
        sae.b_dec.copy_(mean if mean is not None else torch.zeros(d))
    return sae


def write_store(root, shards, d: int, hookpoint: str = "h"):
    """A real activation store (StoreWriter) with exactly the given shards: dicts of acts
    [n, d] and doc_ids [n] (whole documents, increasing ids; token_ids/positions optional).
    Returns the store path and the shards as stored (token_ids/positions int32)."""
    w = StoreWriter(root, d=d, dtype=torch.float32, shard_rows=1 << 30,
                    meta={"model": "random", "hookpoint": hookpoint})
    stored = []
    for s in shards:
        n = s["acts"].shape[0]
        doc_ids = s["doc_ids"].long()
        token_ids = s.get("token_ids", torch.zeros(n, dtype=torch.int64))
        positions = s.get("positions", torch.zeros(n, dtype=torch.int64))
        if n:
            w.append(s["acts"], token_ids, doc_ids, positions, docs_end=int(doc_ids[-1]) + 1)
            w.flush()                                    # one shard per given dict
        stored.append({"acts": s["acts"].float(), "token_ids": token_ids.to(torch.int32),
                       "doc_ids": doc_ids, "positions": positions.to(torch.int32)})
    w.close(complete=True)
    return root, stored


def random_store(root, d=16, sizes=(37, 50, 21), seed=0):
    """A store of random documents of 5..12 tokens, shards of the given sizes (whole
    documents each; a size of 0 writes no shard). Returns (path, shards as stored)."""
    g = torch.Generator().manual_seed(seed)
    shards, doc = [], 0
    for n in sizes:
        lens = []
        while sum(lens) < n:
            lens.append(min(int(torch.randint(5, 13, (1,), generator=g)), n - sum(lens)))
        doc_ids = torch.cat([torch.full((L,), doc + j) for j, L in enumerate(lens)]
                            + [torch.zeros(0, dtype=torch.int64)])
        positions = torch.cat([torch.arange(L) for L in lens] + [torch.zeros(0, dtype=torch.int64)])
        doc += len(lens)
        shards.append({"acts": torch.randn(n, d, generator=g),
                       "token_ids": torch.randint(0, 1000, (n,), generator=g),
                       "doc_ids": doc_ids.long(), "positions": positions.long()})
    root, stored = write_store(root, shards, d)
    return root, [s for s in stored if s["acts"].shape[0]]
