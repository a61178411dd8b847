"""Test helpers for evaluation / latents: a tiny SAE-like object with exactly the contract
evaluate_sae and encode_store rely on (d_in, d_sae, k, hookpoint, encode, decode, __call__),
and a writer of small activation stores in the capture layout."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class Code:
    values: torch.Tensor    # [N, k]
    indices: torch.Tensor   # [N, k] int32, -1 = empty


class TinySAE:
    """TopK SAE with a ±(orthonormal basis) dictionary: latent i < d is +Q[i], latent d + i
    is -Q[i], so TopK(|projection|) with k = d is exact and smaller k is a decent lossy SAE."""

    def __init__(self, d: int, k: int, *, mean=None, basis=None, hookpoint=None, seed=0,
                 dtype=torch.float32):
        g = torch.Generator().manual_seed(seed)
        Q = basis if basis is not None else torch.linalg.qr(torch.randn(d, d, generator=g))[0].T
        self.W_dec = torch.cat([Q, -Q]).to(dtype)                      # [2d, d]
        self.b_dec = (mean if mean is not None else torch.zeros(d)).to(dtype)
        self.d_in, self.d_sae, self.k, self.hookpoint = d, 2 * d, k, hookpoint

    def encode(self, x):
        pre = torch.relu((x.to(self.W_dec.dtype) - self.b_dec) @ self.W_dec.T)
        v, i = pre.topk(self.k, dim=1)
        i = torch.where(v > 0, i, torch.full_like(i, -1)).to(torch.int32)
        return Code(v, i)

    def decode(self, code):
        idx = code.indices.long()
        w = torch.where(idx[..., None] >= 0, self.W_dec[idx.clamp_min(0)], 0.0)
        return (code.values.to(self.W_dec.dtype)[..., None] * w).sum(1) + self.b_dec

    def __call__(self, x):
        code = self.encode(x)
        return self.decode(code), code


def write_store(root, shards, d):
    """Activation store in the capture layout: shards = list of dicts with acts [n, d],
    token_ids, doc_ids, positions [n]."""
    from safetensors.torch import save

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, tensors in enumerate(shards):
        data = save({k: v.contiguous() for k, v in tensors.items()})
        file = f"shard_{i:06d}.safetensors"
        (root / file).write_bytes(data)
        entries.append({"file": file, "rows": tensors["acts"].shape[0],
                        "sha256": hashlib.sha256(data).hexdigest()})
    (root / "manifest.json").write_text(json.dumps(
        {"format_version": 1, "d": d, "dtype": "float32", "hookpoint": "h",
         "rows": sum(e["rows"] for e in entries), "shards": entries}))
    return root


def random_store(root, d=16, sizes=(37, 50, 21), seed=0):
    """A store of random docs: each shard holds whole documents of 5..12 tokens."""
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
    return write_store(root, shards, d), shards


class TinySAELoader:
    """Stands in for actspace.SAE in CLI tests: load(path) reads tiny.json."""

    @staticmethod
    def save(path, **cfg):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "tiny.json").write_text(json.dumps(cfg))

    @staticmethod
    def load(path):
        return TinySAE(**json.loads((Path(path) / "tiny.json").read_text()))
