"""`acts.PCA`: principal components of an activation space from a streaming covariance.

Why not sklearn: activation sets do not fit in memory. The fit streams batches (a tensor,
an iterable of batches, an ActivationStore or a store path) through ActivationStats' float64
Chan-merged covariance and eigendecomposes the d x d result once; a capture job's saved
statistics give a PCA with no further pass over the data (`PCA.from_stats`).

    pca = acts.PCA(n_components=64).fit(store)
    z = pca.encode(x)            # x [N, d] -> z [N, k]
    x_hat = pca.decode(z)        # [N, d]

Sign convention: an eigenvector's sign is arbitrary, so each component is flipped to make
its largest-magnitude entry positive; two fits of the same data give the same components.
"""
from __future__ import annotations

import os

import torch

from .base import Decomposition, check_shapes, iter_data, load_dir, save_dir

_FORMAT = "actspace.pca"


class PCA(Decomposition):
    """n_components: how many components to keep (None = all d).

    Attributes after fit: mean_, components_, explained_variance_(ratio_), n_samples_,
    nonfinite_rows_ (rows left out for NaN / inf), d_in (None before), d_sae (the number
    of components: n_components, or d once fitted when n_components is None)."""

    def __init__(self, n_components: int | None = None):
        if n_components is not None and (not isinstance(n_components, int)
                                         or n_components <= 0):
            raise ValueError(f"n_components must be a positive int or None, got {n_components!r}")
        self.n_components = n_components
        self.mean_ = None                     # [d] float64
        self.components_ = None               # [k, d] float64, rows orthonormal
        self.explained_variance_ = None       # [k] float64, descending
        self.explained_variance_ratio_ = None  # [k] share of the total variance
        self.n_samples_ = 0
        self.nonfinite_rows_ = 0

    @property
    def d_in(self) -> int | None:
        return None if self.components_ is None else int(self.components_.shape[1])

    @property
    def d_sae(self) -> int | None:
        return self.n_components if self.components_ is None else int(self.components_.shape[0])

    # ------------------------------------------------------------------ fitting
    def fit(self, data, *, batch_size: int = 65536) -> "PCA":
        """Fit on data: a tensor [N, d], an iterable of [B, d] batches (one pass, so a
        one-shot iterator will do), an ActivationStore or a store path — read in order,
        batch_size rows at a time, by the same reader as SNMF (base.iter_data). Rows with
        NaN or inf are left out of the covariance and counted in nonfinite_rows_."""
        from ..stats.activation import ActivationStats

        stats = None
        for b in iter_data(data, batch_size):
            if stats is None:
                stats = ActivationStats(b.shape[1], covariance=True, top_k=0)
            stats.update(b)
        if stats is None:
            raise ValueError("data is empty: PCA needs at least 2 rows")
        return self._fit_stats(stats)

    @classmethod
    def from_stats(cls, stats, n_components: int | None = None) -> "PCA":
        """PCA from an ActivationStats accumulated with covariance=True."""
        return cls(n_components)._fit_stats(stats)

    def _fit_stats(self, stats) -> "PCA":
        cov = stats.covariance()             # raises if not accumulated / too few rows
        d = cov.shape[0]
        k = d if self.n_components is None else self.n_components
        if k > d:
            raise ValueError(f"n_components={k} exceeds the data width d={d}")
        evals, evecs = torch.linalg.eigh(cov)
        evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
        comps = evecs[:, :k].T.contiguous()
        # deterministic signs: the largest-magnitude entry of each component is positive
        sign = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
        self.components_ = comps * sign
        self.mean_ = stats.cov_mean.clone()
        self.explained_variance_ = evals[:k].clone()
        total = evals.sum()
        self.explained_variance_ratio_ = self.explained_variance_ / total.clamp_min(1e-300)
        self.n_samples_ = int(stats.cov_count)
        self.nonfinite_rows_ = int(stats.rows - stats.cov_count)
        return self

    # ------------------------------------------------------------------ transforms
    def _fitted(self) -> torch.Tensor:
        if self.components_ is None:
            raise ValueError("PCA is not fitted: call fit() or from_stats() first")
        return self.components_

    def _check(self, x: torch.Tensor, width: int, name: str) -> None:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{name} must be a float tensor, got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != width:
            raise ValueError(f"{name} must have shape [N, {width}], got {list(x.shape)}")

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, d] -> scores [N, k], in x's dtype (computed in at least float32)."""
        self._check(x, self._fitted().shape[1], "x")
        ct = torch.promote_types(x.dtype, torch.float32)
        W = self.components_.to(x.device, ct)
        return ((x.to(ct) - self.mean_.to(x.device, ct)) @ W.T).to(x.dtype)

    def inverse_transform(self, z: torch.Tensor) -> torch.Tensor:
        """scores z [N, k] -> reconstruction [N, d]."""
        self._check(z, self._fitted().shape[0], "z")
        ct = torch.promote_types(z.dtype, torch.float32)
        W = self.components_.to(z.device, ct)
        return (z.to(ct) @ W + self.mean_.to(z.device, ct)).to(z.dtype)

    encode = transform
    decode = inverse_transform

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> None:
        """Write directory path with cfg.json (kind "pca", n_components, d_in, n_samples,
        nonfinite_rows) and pca.safetensors (mean [d], components [k, d], explained
        variance and its ratio [k]), each crash-safe; see base.save_dir."""
        if self.components_ is None:
            raise ValueError("PCA is not fitted: nothing to save")
        save_dir(path, "pca", {"format": _FORMAT, "version": 2,
                               "n_components": self.n_components, "d_in": self.d_in,
                               "k": self.d_sae, "n_samples": self.n_samples_,
                               "nonfinite_rows": self.nonfinite_rows_},
                 {"mean": self.mean_, "components": self.components_,
                  "explained_variance": self.explained_variance_,
                  "explained_variance_ratio": self.explained_variance_ratio_})

    @classmethod
    def load(cls, path) -> "PCA":
        """Read a directory written by save, or the version-1 pair path(.safetensors) +
        path(.json). Tensor shapes are checked against the metadata (ValueError)."""
        if os.path.isdir(path):
            meta, t = load_dir(path, "pca", cls._shapes)
        else:
            from .._io import load_pair

            meta, t = load_pair(path, _FORMAT, "PCA")
            meta = dict(meta, d_in=meta["d"], k=meta["n_components"] or meta["d"])
            check_shapes(path, t, cls._shapes(meta))
        pca = cls(meta["n_components"])
        pca.mean_, pca.components_ = t["mean"], t["components"]
        pca.explained_variance_ = t["explained_variance"]
        pca.explained_variance_ratio_ = t["explained_variance_ratio"]
        pca.n_samples_ = meta["n_samples"]
        pca.nonfinite_rows_ = int(meta.get("nonfinite_rows", 0))
        return pca

    @staticmethod
    def _shapes(meta) -> dict:
        k, d = meta["k"], meta["d_in"]
        if meta["n_components"] not in (None, k):
            raise ValueError(f"PCA metadata: n_components={meta['n_components']} but k={k}")
        return {"mean": [d], "components": [k, d], "explained_variance": [k],
                "explained_variance_ratio": [k]}
