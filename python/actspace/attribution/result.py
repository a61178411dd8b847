"""`Attribution`: the scored nodes of an attribution run, ranked, saved and reloaded.

Nodes are stored as columns (one row per node): prompt, hookpoint (an index into
`hookpoints`), position (within the prompt, 0 = its first token), kind (latent, error,
neuron), index (latent or neuron id; -1 for an error node), activation (clean value; the
error's norm), baseline value, score. Scores read "how much of the metric this node's
clean value accounts for against its baseline": metric(clean) - metric(node at baseline)
to first order (atp), along the path (ig), or exactly (exact).
"""
from __future__ import annotations

import torch

from .._io import load_pair, save_pair, write_json_atomic
from .sites import KIND_NAMES

__all__ = ["Attribution", "COLUMNS"]

COLUMNS = ("prompt", "hookpoint", "position", "kind", "index", "activation", "baseline",
           "score")
_FORMAT = "actspace-attribution-1"


class Attribution:
    def __init__(self, columns: dict, meta: dict):
        n = {k: int(v.numel()) for k, v in columns.items()}
        if set(columns) != set(COLUMNS) or len(set(n.values())) > 1:
            raise ValueError(f"Attribution needs columns {COLUMNS} of one length, got {n}")
        self.columns = columns
        self.meta = meta

    # ------------------------------------------------------------------ views
    @property
    def hookpoints(self) -> list[str]:
        return self.meta["hookpoints"]

    @property
    def tokens(self) -> list[list[str]]:
        """Per prompt, its tokens as text."""
        return self.meta["tokens"]

    @property
    def metric(self) -> list[float]:
        """The metric of each prompt on the clean model."""
        return self.meta["metric_clean"]

    def __len__(self) -> int:
        return int(self.columns["score"].numel())

    def _select(self, prompt=None, hookpoint=None, kinds=None) -> torch.Tensor:
        c = self.columns
        sel = torch.ones(len(self), dtype=torch.bool)
        if prompt is not None:
            sel &= c["prompt"] == int(prompt)
        if hookpoint is not None:
            if hookpoint not in self.hookpoints:
                raise ValueError(f"hookpoint {hookpoint!r} is not in this attribution "
                                 f"({self.hookpoints})")
            sel &= c["hookpoint"] == self.hookpoints.index(hookpoint)
        if kinds is not None:
            kinds = [kinds] if isinstance(kinds, str) else kinds
            bad = [k for k in kinds if k not in KIND_NAMES]
            if bad:
                raise ValueError(f"kinds {bad} unknown; use {KIND_NAMES}")
            ks = torch.tensor([KIND_NAMES.index(k) for k in kinds])
            sel &= torch.isin(c["kind"], ks)
        return sel

    def row(self, i: int) -> dict:
        c = self.columns
        p, pos = int(c["prompt"][i]), int(c["position"][i])
        toks = self.tokens[p]
        return {"prompt": p, "hookpoint": self.hookpoints[int(c["hookpoint"][i])],
                "position": pos, "token": toks[pos] if 0 <= pos < len(toks) else None,
                "kind": KIND_NAMES[int(c["kind"][i])], "index": int(c["index"][i]),
                "activation": float(c["activation"][i]), "baseline": float(c["baseline"][i]),
                "score": float(c["score"][i])}

    def top(self, n: int = 20, *, prompt=None, hookpoint=None, kinds=None,
            by: str = "abs") -> list[dict]:
        """The n nodes with the largest |score| (by="abs"), score ("positive") or -score
        ("negative"), as row dicts (prompt, hookpoint, position, token, kind, index,
        activation, baseline, score)."""
        keys = {"abs": lambda s: s.abs(), "positive": lambda s: s, "negative": lambda s: -s}
        if by not in keys:
            raise ValueError(f"by must be one of {sorted(keys)}, got {by!r}")
        where = self._select(prompt, hookpoint, kinds).nonzero().flatten()
        key = keys[by](self.columns["score"][where])
        order = torch.argsort(key, descending=True, stable=True)[: max(int(n), 0)]
        return [self.row(int(where[i])) for i in order]

    def token_heat(self, prompt: int, hookpoint=None, kinds=("latent", "neuron")) -> list[float]:
        """Per position of prompt, the sum of its nodes' scores."""
        sel = self._select(prompt, hookpoint, kinds)
        heat = torch.zeros(len(self.tokens[prompt]), dtype=torch.float64)
        heat.index_add_(0, self.columns["position"][sel],
                        self.columns["score"][sel].double())
        return heat.tolist()

    def total(self, prompt: int, hookpoint=None) -> float:
        """Sum of all node scores of prompt (at one hookpoint: ≈ the metric change when
        that hookpoint goes to its baseline; exact for ig up to its quadrature)."""
        return float(self.columns["score"][self._select(prompt, hookpoint)].double().sum())

    # ------------------------------------------------------------------ persistence
    def to_json(self, path=None, *, top: int | None = None) -> dict:
        """{meta..., nodes: [row dicts]} (all nodes, or the top per prompt); written
        atomically to path when given."""
        if top is None:
            rows = [self.row(i) for i in range(len(self))]
        else:
            rows = [r for p in range(len(self.tokens)) for r in self.top(top, prompt=p)]
        obj = {**self.meta, "nodes": rows}
        if path is not None:
            write_json_atomic(path, obj)
        return obj

    def save(self, path) -> None:
        """path.safetensors (the columns) + path.json (meta), one atomic unit."""
        save_pair(path, {k: v.contiguous() for k, v in self.columns.items()},
                  {**self.meta, "format": _FORMAT})

    @classmethod
    def load(cls, path) -> "Attribution":
        meta, tensors = load_pair(path, _FORMAT, "attribution")
        meta = {k: v for k, v in meta.items() if k != "format"}
        return cls({k: tensors[k] for k in COLUMNS}, meta)

    def __repr__(self):
        return (f"Attribution({len(self)} nodes, {len(self.tokens)} prompts, "
                f"hookpoints={self.hookpoints}, method={self.meta.get('method')!r})")
