"""`acts.LatentStats`: streaming per-latent statistics of sparse codes over a token stream.

Why beside ActivationStats: both are mergeable states over a stream of rows, updated batch
by batch on the `stats` kernels (actspace.ops.stats latent_*), merged across workers and
saved as one file; the latent store (decompose.latent_store) and the encoder only use it.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .._io import load_pair, save_pair

FORMAT = "actspace.latent_stats"
FORMAT_VERSION = 1
STATS_NAME = "latent_stats"        # latent_stats.safetensors (+ .json) in a latent store


def code_parts(code):
    """(values [N, k], indices [N, k]) of a sparse code object or a (values, indices) pair."""
    if hasattr(code, "values") and hasattr(code, "indices") and not callable(code.values):
        return code.values, code.indices
    if isinstance(code, (tuple, list)) and len(code) == 2:
        return code[0], code[1]
    raise TypeError("code must have .values and .indices [N, k] or be a (values, indices) "
                    f"pair, got {type(code).__name__}")


class LatentStats:
    """Streaming per-latent statistics of sparse codes over a token stream.

    Firing counts and frequency, mean activation (over tokens where the latent fires),
    a log10-spaced histogram of firing values per latent and the top-T max-activating
    examples (value, global token index). State layout: actspace.reference.stats.latent_init.
    A latent fires where fired_mask says (value > 0; the kernels apply the same rule).

    Rows whose input activation was non-finite (update's `nonfinite` mask) are skipped: they
    never fire, are left out of n_tokens (the denominator of frequency) and counted in
    n_nonfinite, yet keep their global token index (next_token advances over them), so
    token indices stay the rows of the activation store.
    """

    def __init__(self, d_sae: int, top_t: int = 16, n_bins: int = 32, *,
                 log10_min: float = -4.0, log10_max: float = 3.0, device="cpu"):
        if not isinstance(d_sae, int) or d_sae <= 0:
            raise ValueError(f"d_sae must be a positive int, got {d_sae!r}")
        if not isinstance(top_t, int) or top_t <= 0:
            raise ValueError(f"top_t must be a positive int, got {top_t!r}")
        if not isinstance(n_bins, int) or n_bins <= 0:
            raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
        if not log10_min < log10_max:
            raise ValueError(f"log10_min must be < log10_max, got {log10_min}, {log10_max}")
        from ..ops import stats as ops_stats

        self.state = ops_stats.latent_init(d_sae, top_t=top_t, n_bins=n_bins,
                                           log10_min=log10_min, log10_max=log10_max,
                                           device=device)
        self.n_tokens = 0      # finite tokens folded in (rows of codes), fired or not
        self.n_nonfinite = 0   # rows skipped because their input had NaN/inf
        self.next_token = 0    # default token_offset of the next update

    # ------------------------------------------------------------------ accumulate
    def update(self, code, token_offset: int | None = None, *,
               nonfinite: torch.Tensor | None = None) -> "LatentStats":
        """Fold a code (values/indices [N, k], -1 = empty) in; row n is global token
        token_offset + n (default: continue after the previous update). nonfinite: bool
        [N], rows whose input had NaN/inf: skipped (see the class docstring)."""
        from ..ops import stats as ops_stats

        values, indices = code_parts(code)
        if values.dim() != 2 or indices.shape != values.shape:
            raise ValueError(f"code values/indices must both be [N, k], got "
                             f"{list(values.shape)} and {list(indices.shape)}")
        n_bad = 0
        if nonfinite is not None:
            if nonfinite.dtype != torch.bool or nonfinite.shape != values.shape[:1]:
                raise ValueError(f"nonfinite must be a bool tensor [N={values.shape[0]}], got "
                                 f"{nonfinite.dtype} {list(nonfinite.shape)}")
            n_bad = int(nonfinite.sum())
            if n_bad:    # emptied rows never fire (index -1), whatever their values were
                indices = indices.masked_fill(nonfinite.to(indices.device)[:, None], -1)
        if token_offset is None:
            token_offset = self.next_token
        if not isinstance(token_offset, int) or token_offset < 0:
            raise ValueError(f"token_offset must be a non-negative int, got {token_offset!r}")
        dev = self.state["count"].device
        ops_stats.latent_update(self.state, values.to(dev), indices.to(dev), token_offset)
        self.n_tokens += values.shape[0] - n_bad
        self.n_nonfinite += n_bad
        self.next_token = token_offset + values.shape[0]
        return self

    def merge(self, other: "LatentStats") -> "LatentStats":
        """Fold another LatentStats (same d_sae, top_t, n_bins, range) into this one."""
        from ..ops import stats as ops_stats

        if not isinstance(other, LatentStats):
            raise TypeError(f"other must be a LatentStats, got {type(other).__name__}")
        for key in ("hist", "top_values"):
            if other.state[key].shape != self.state[key].shape:
                raise ValueError(f"other.{key} has shape {list(other.state[key].shape)}, "
                                 f"expected {list(self.state[key].shape)}")
        if not torch.equal(other.state["hist_range"], self.state["hist_range"]):
            raise ValueError("other has a different histogram range")
        merged = ops_stats.latent_merge(self.state, other.state)
        self.state = merged
        self.n_tokens += other.n_tokens
        self.n_nonfinite += other.n_nonfinite
        self.next_token = max(self.next_token, other.next_token)
        return self

    # ------------------------------------------------------------------ results
    @property
    def d_sae(self) -> int:
        return self.state["count"].shape[0]

    @property
    def counts(self) -> torch.Tensor:          # int64 [d_sae]
        return self.state["count"]

    @property
    def frequency(self) -> torch.Tensor:       # float64 [d_sae], firings per finite token
        return self.state["count"].to(torch.float64) / max(self.n_tokens, 1)

    @property
    def mean_activation(self) -> torch.Tensor:  # float64 [d_sae], mean value when firing
        return self.state["sum"] / self.state["count"].clamp_min(1)

    @property
    def hist(self) -> torch.Tensor:            # int64 [d_sae, n_bins]
        return self.state["hist"]

    @property
    def hist_edges(self) -> torch.Tensor:      # float64 [n_bins + 1]
        from ..reference.stats import latent_hist_edges

        lo, hi = self.state["hist_range"].tolist()
        return latent_hist_edges(self.state["hist"].shape[1], lo, hi)

    @property
    def top_values(self) -> torch.Tensor:      # float32 [d_sae, T], -inf = empty
        return self.state["top_values"]

    @property
    def top_tokens(self) -> torch.Tensor:      # int64 [d_sae, T], -1 = empty
        return self.state["top_tokens"]

    def dead(self) -> torch.Tensor:            # bool [d_sae]
        return self.state["count"] == 0

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> None:
        """Write latent_stats.safetensors (+ a latent_stats.json copy of its metadata) into
        directory path, as one unit (actspace._io.save_pair: the counts live in the
        safetensors header, so a kill never pairs new tensors with old counts)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_pair(path / STATS_NAME, self.state,
                  {"format": FORMAT, "format_version": FORMAT_VERSION,
                   "n_tokens": self.n_tokens, "n_nonfinite": self.n_nonfinite,
                   "next_token": self.next_token})

    @classmethod
    def load(cls, path, device="cpu") -> "LatentStats":
        """LatentStats saved in directory path (also those written before the metadata
        moved into the safetensors header)."""
        path = Path(path)
        if not (path / f"{STATS_NAME}.safetensors").is_file():
            raise FileNotFoundError(f"no {STATS_NAME}.safetensors in {path}")
        meta, tensors = load_pair(path / STATS_NAME, None, "latent-stats")
        if meta.get("format", FORMAT) != FORMAT:
            raise ValueError(f"{path / STATS_NAME}.safetensors is not an actspace "
                             "latent-stats file")
        lo, hi = tensors["hist_range"].tolist()
        M, T = tensors["top_values"].shape
        out = cls(M, top_t=T, n_bins=tensors["hist"].shape[1], log10_min=lo, log10_max=hi,
                  device=device)
        out.state = {k: v.to(device) if k != "hist_range" else v for k, v in tensors.items()}
        out.n_tokens, out.next_token = int(meta["n_tokens"]), int(meta["next_token"])
        out.n_nonfinite = int(meta.get("n_nonfinite", 0))     # absent before it was counted
        return out
