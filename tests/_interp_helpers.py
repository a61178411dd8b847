"""A sparse latent store whose latents each fire on one word, for the autointerp tests:
documents of common words from the MiniLM vocabulary, where latent c (< len(WORDS)) fires
exactly on WORDS[c] (value 1..3) and the other latents never fire. Built through the real
path: an activation store (one-hot activations) encoded by a basis SAE with encode_store."""
from __future__ import annotations

import torch

from _models import minilm_dir
from _saeeval_helpers import basis_sae, write_store

WORDS = ["cat", "river", "music", "green", "window", "bread"]
FILLER = ("the a of and to in is was it for on with as at by from this that be are or an "
          "not but have they we you he she his her there one all would will can").split()


def word_latent_store(root, n_docs: int = 240, seed: int = 0):
    """(latent store path, tokenizer). One shard per 80 documents of 6..20 tokens; each
    document holds one keyword with probability 0.8."""
    from transformers import AutoTokenizer

    from actspace.decompose.latents import encode_store

    tok = AutoTokenizer.from_pretrained(minilm_dir())
    word_ids = tok.convert_tokens_to_ids(WORDS)
    fill_ids = tok.convert_tokens_to_ids(FILLER)
    assert tok.unk_token_id not in word_ids + fill_ids
    g = torch.Generator().manual_seed(seed)
    d = len(WORDS)
    shards, doc = [], 0
    for _ in range(0, n_docs, 80):
        ids, docs, pos, acts = [], [], [], []
        for _ in range(80):
            n = int(torch.randint(6, 21, (1,), generator=g))
            t = [fill_ids[int(i)] for i in torch.randint(len(fill_ids), (n,), generator=g)]
            a = torch.zeros(n, d)
            if float(torch.rand(1, generator=g)) < 0.8:
                c, at = int(torch.randint(d, (1,), generator=g)), int(torch.randint(n, (1,),
                                                                                   generator=g))
                t[at] = word_ids[c]
                a[at, c] = 1 + 2 * float(torch.rand(1, generator=g))
            ids += t
            docs += [doc] * n
            pos += range(n)
            acts.append(a)
            doc += 1
        shards.append({"acts": torch.cat(acts), "token_ids": torch.tensor(ids),
                       "doc_ids": torch.tensor(docs), "positions": torch.tensor(pos)})
    write_store(root / "acts", shards, d)
    sae = basis_sae(d, k=1, basis=torch.eye(d))
    encode_store(sae, root / "acts", root / "lat", top_t=4, context=2)
    return root / "lat", tok
