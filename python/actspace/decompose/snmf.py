"""Semi-nonnegative matrix factorisation (SNMF) of activations: X ≈ Z · D.

Why: an SAE needs SGD training; SNMF finds a mixed-sign dictionary D [r, d] (r =
n_components) and nonnegative codes Z [N, r] by alternating two convex problems,

    codes       min_{Z ≥ 0}  ½‖X − Z D‖² + λ·ΣZ      (D fixed; every row on its own)
    dictionary  min_D        ‖X − Z D‖² + ε‖D‖²      (Z fixed: D = (ZᵀZ + εI)⁻¹ ZᵀX)

as in Ding, Li & Jordan (2010, "Convex and semi-nonnegative matrix factorizations") and
"Decomposing MLP Activations into Interpretable Features via Semi-Nonnegative Matrix
Factorization" (Shafran, Geiger & Geva 2025). They solve the code step with multiplicative
updates Z ← Z ⊙ sqrt(([XDᵀ]⁺ + Z[DDᵀ]⁻) / ([XDᵀ]⁻ + Z[DDᵀ]⁺)), which need hundreds of steps
to get near the optimum and never reach an exact zero. Here the code step is accelerated
projected gradient (FISTA: step 1/L with L = ‖DDᵀ‖₂, momentum restarted per row when it
points uphill, O'Donoghue & Candès 2015) run until its gradient mapping is below z_tol
relative to the gradient at Z = 0: the same minimiser in tens to hundreds of steps, the
same accuracy from any start, and the projection gives exact zeros.

Sparsity, all off by default (plain semi-NMF):
- ``l1`` = λ: a soft threshold inside the code step (exact zeros, shrunken values);
- ``k``: at most k nonzero codes per row — the projection keeps the k largest after
  clipping at 0 (hard, like a TopK SAE; the code step is then no longer convex);
- ``dict_keep``: the paper's winner-take-all on the dictionary — after each D step only the
  ceil(dict_keep · d) largest-magnitude entries of each atom survive (the paper keeps a few
  percent of the MLP neurons, so a feature is a small group of neurons). It makes the D
  step inexact, so the error need not fall monotonically.
D rows are kept unit-norm (the scale moves into Z), so λ cannot be dodged by scaling.

Data: a tensor [N, d], a store, a store path or a re-iterable of batches: each pass
solves every batch's codes for the current D and accumulates ZᵀZ [r, r] and ZᵀX [r, d]
in float64, so memory does not grow with N. Rows holding a NaN or ±inf are dropped and
counted (``nonfinite_rows_``). Everything runs on the device of the batches, or on
``device=``. Shares fit / encode / decode / save / load with the SAEs and PCA
(base.Decomposition); encode returns dense codes [N, n_components]."""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .base import Decomposition, iter_data, load_dir, save_dir

__all__ = ["SNMF"]

_EPS = 1e-12
_DEFAULT_BATCH = 4096


class _Fixed(NamedTuple):
    """What the code step needs about a fixed dictionary, computed once per D and device."""
    D: torch.Tensor       # [r, d]
    M: torch.Tensor       # [r, r]  I − DDᵀ/L: Y ↦ Y − ∇/L is  Y @ M + (XDᵀ − λ)/L
    inv_L: float          # 1/L, L = largest eigenvalue of DDᵀ (Lipschitz constant of ∇)
    P: torch.Tensor       # [r, d]  (DDᵀ + εI)⁻¹ D: x @ Pᵀ is the least-squares code


class SNMF(Decomposition):
    """X [N, d] ≈ Z [N, n_components] · D [n_components, d], Z ≥ 0.

    l1: weight λ of the L1 penalty on Z. k: at most k nonzero codes per row (None: no
    limit). dict_keep: fraction of each atom's entries kept by the winner-take-all mask
    (None: dense atoms). ridge: ε of the least-squares solves, relative to the mean
    diagonal. z_tol, z_max_steps: the code step stops when its gradient mapping is
    ≤ z_tol·‖XDᵀ‖ or after z_max_steps steps (fit and encode alike). Attributes after fit: D, history_,
    nonfinite_rows_, d_in (None before), d_sae (= n_components)."""

    def __init__(self, n_components: int, *, l1: float = 0.0, k: int | None = None,
                 dict_keep: float | None = None, ridge: float = 1e-6, z_tol: float = 1e-4,
                 z_max_steps: int = 1000, seed: int = 0, dtype: torch.dtype = torch.float32):
        if isinstance(n_components, bool) or not isinstance(n_components, int) \
                or n_components <= 0:
            raise ValueError(f"n_components must be a positive int, got {n_components!r}")
        if l1 < 0:
            raise ValueError(f"l1 must be >= 0, got {l1}")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int)
                              or not 1 <= k <= n_components):
            raise ValueError(f"k must be None or an int in [1, n_components={n_components}], "
                             f"got {k!r}")
        if dict_keep is not None and not 0 < dict_keep <= 1:
            raise ValueError(f"dict_keep must be None or in (0, 1], got {dict_keep!r}")
        if not z_tol > 0 or not isinstance(z_max_steps, int) or z_max_steps <= 0:
            raise ValueError(f"z_tol must be > 0 and z_max_steps a positive int, got "
                             f"{z_tol!r}, {z_max_steps!r}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        self.n_components, self.l1, self.k, self.dict_keep = n_components, float(l1), k, dict_keep
        self.ridge, self.z_tol, self.z_max_steps = ridge, z_tol, z_max_steps
        self.seed, self.dtype = seed, dtype
        self.D: torch.Tensor | None = None     # [n_components, d], rows unit norm
        self.history_: list[float] = []       # relative reconstruction error per pass
        self.nonfinite_rows_ = 0              # rows dropped (NaN / ±inf) per pass of the fit
        self._cache = None                    # (D, D._version, device, _Fixed)

    @property
    def d_in(self) -> int | None:
        return None if self.D is None else self.D.shape[1]

    @property
    def d_sae(self) -> int:
        return self.n_components

    def _check_fitted(self):
        if self.D is None:
            raise RuntimeError("SNMF is not fitted: call fit() or load()")

    def _check_x(self, x, name="x"):
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.is_floating_point():
            raise TypeError(f"{name} must be a float tensor [N, d], got "
                            f"{type(x).__name__} {list(getattr(x, 'shape', []))}")
        if self.D is not None and x.shape[1] != self.D.shape[1]:
            raise ValueError(f"{name} has d={x.shape[1]}, the dictionary has d={self.D.shape[1]}")
        return x.to(self.dtype)

    # ------------------------------------------------------------------ code step
    def _fixed(self, device) -> _Fixed:
        """_Fixed for self.D on device, cached until D is replaced or edited in place
        (encode is called batch by batch; the eigenvalue and solve are O(r³))."""
        c = self._cache
        if c is not None and c[0] is self.D and c[1] == self.D._version and c[2] == device:
            return c[3]
        D = self.D.to(device)
        G = D @ D.T                                             # [r, r]
        r = G.shape[0]
        eye = torch.eye(r, dtype=G.dtype, device=device)
        L = torch.linalg.eigvalsh(G)[-1].clamp_min(_EPS).item()
        ridge = self.ridge * G.diagonal().mean().clamp_min(_EPS) + _EPS
        fixed = _Fixed(D, eye - G / L, 1.0 / L, torch.linalg.solve(G + ridge * eye, D))
        self._cache = (self.D, self.D._version, device, fixed)
        return fixed

    def _project(self, V):
        """Euclidean projection of V [N, r] onto {Z ≥ 0, ≤ k nonzeros per row}: clip at 0,
        then keep each row's k largest (the best k-sparse nonnegative approximation)."""
        Z = V.clamp_min(0)
        if self.k is not None and self.k < Z.shape[1]:
            vals, idx = Z.topk(self.k, dim=1)
            Z = torch.zeros_like(Z).scatter_(1, idx, vals)
        return Z

    def _solve(self, x, f: _Fixed, Z=None, tol=None, max_steps=None):
        """Codes Z [N, r] of finite x [N, d] for the dictionary f, by FISTA from Z (default:
        the projected least-squares code, already close when atoms are nearly orthogonal).
        The L1 prox is the shift by λ/L folded into c before the projection."""
        tol = self.z_tol if tol is None else tol
        max_steps = self.z_max_steps if max_steps is None else max_steps
        XDt = x @ f.D.T                                         # [N, r]
        c = (XDt - self.l1) * f.inv_L                           # [N, r]
        Z = self._project(x @ f.P.T) if Z is None else Z        # [N, r]
        Y, t = Z, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)
        # stop on the gradient mapping (Y − Z_new)·L, small against the gradient at Z = 0:
        # a scale-free optimality test that does not depend on the start (warm or cold)
        stop = tol * XDt.norm() * f.inv_L
        for _ in range(max_steps):
            Z_new = self._project(torch.addmm(c, Y, f.M))       # projected gradient step at Y
            dz, step = Z_new - Z, Y - Z_new
            # per-row restart where the step opposes the momentum: <Y − Z_new, Z_new − Z> > 0
            up = (step * dz).sum(1, keepdim=True) > 0
            t_new = (1 + (1 + 4 * t * t).sqrt()) / 2
            beta = torch.where(up, 0.0, (t - 1) / t_new)
            t = torch.where(up, 1.0, t_new)
            Y, Z = Z_new + beta * dz, Z_new
            if step.norm() <= stop:
                break
        return Z

    # ------------------------------------------------------------------ dictionary step
    def _d_step(self, ZtZ, ZtX):
        """D [r, d] = (ZᵀZ + εI)⁻¹ ZᵀX (float64 sums in), winner-take-all masked when
        dict_keep is set, rows scaled to unit norm (codes take the scale)."""
        r = ZtZ.shape[0]
        ridge = self.ridge * ZtZ.diagonal().mean().clamp_min(_EPS) + _EPS
        D = torch.linalg.solve(ZtZ + ridge * torch.eye(r, dtype=ZtZ.dtype, device=ZtZ.device),
                               ZtX)
        if self.dict_keep is not None:
            keep = max(1, math.ceil(self.dict_keep * D.shape[1]))
            idx = D.abs().topk(keep, dim=1).indices            # [r, keep]
            D = torch.zeros_like(D).scatter_(1, idx, D.gather(1, idx))
        return (D / D.norm(dim=1, keepdim=True).clamp_min(_EPS)).to(self.dtype)

    def _init_dictionary(self, x, kmeans_iters: int = 10):
        """Spherical k-means centroids of the first batch (Ding et al. initialise with
        k-means): mixed sign, in the data span, and near the directions of rows that use
        one component, which alternating updates alone rarely escape to."""
        g = torch.Generator().manual_seed(self.seed)
        n = x.shape[0]
        if n < self.n_components:
            raise ValueError(f"need at least n_components={self.n_components} finite rows in "
                             f"the first batch to initialise, got {n}")
        xn = x / x.norm(dim=1, keepdim=True).clamp_min(_EPS)
        D = xn[torch.randperm(n, generator=g)[: self.n_components].to(x.device)]
        for _ in range(kmeans_iters):
            assign = (xn @ D.T).argmax(1)
            C = torch.zeros_like(D).index_add_(0, assign, xn)
            empty = C.norm(dim=1) < _EPS            # re-seed empty clusters with random rows
            if empty.any():
                C[empty] = xn[torch.randint(n, (int(empty.sum()),), generator=g).to(x.device)]
            D = C / C.norm(dim=1, keepdim=True).clamp_min(_EPS)
        return D

    # ------------------------------------------------------------------ fit
    def fit(self, data, *, n_iter: int = 200, batch_size: int | None = None,
            tol: float = 1e-6, warm_start: bool = False, device=None) -> "SNMF":
        """Fit on data: a tensor [N, d] (whole, or batch_size rows at a time), a store, a
        store path (latents.iter_batches) or a re-iterable of [B, d] batches (batch_size
        rows at a time, default 4096). Every pass solves the codes of each batch from the
        projected least-squares start: warm starts from the previous pass's codes were
        slower and ended at worse dictionaries, and a cold solve is what encode does, so
        history_ is the error encode reproduces.
        device: where to compute (batches are moved there; default: where they are).
        Stops after n_iter passes, or when the error changes by < tol (relative).
        warm_start: start from the current D (continue a fit) instead of re-initialising
        from the data; the default makes fit(data) independent of any earlier fit."""
        if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter <= 0:
            raise ValueError(f"n_iter must be a positive int, got {n_iter!r}")
        if not warm_start:
            self.D = None
        if isinstance(data, torch.Tensor):
            self._check_x(data, "data")
            batch_size = batch_size or max(len(data), 1)       # whole: one batch
        self.history_, self.nonfinite_rows_ = [], 0
        for _ in range(n_iter):
            ZtZ = ZtX = None                       # [r, r], [r, d] float64
            sse = ss = 0.0
            for x in self._finite_batches(data, batch_size or _DEFAULT_BATCH, device):
                if self.D is None:
                    self.D = self._init_dictionary(x)
                f = self._fixed(x.device)
                Z = self._solve(x, f)                            # [B, r]
                zz, zx = (Z.T @ Z).double(), (Z.T @ x).double()
                ZtZ, ZtX = (zz, zx) if ZtZ is None else (ZtZ + zz, ZtX + zx)
                sse += (x - Z @ f.D).pow(2).sum().item()
                ss += x.pow(2).sum().item()
            if ZtZ is None:
                raise ValueError(f"data has no finite rows to fit on ({self.nonfinite_rows_} "
                                 "rows with NaN or inf dropped)")
            self.D = self._d_step(ZtZ, ZtX)
            err = (sse / max(ss, _EPS)) ** 0.5     # error of this pass's codes, before the D step
            self.history_.append(err)
            if len(self.history_) > 1 and abs(self.history_[-2] - err) < tol * self.history_[-2]:
                break
        return self

    def _finite_batches(self, data, batch_size, device):
        """The batches of one pass in self.dtype on device, rows with NaN/inf dropped; at
        the end of the pass nonfinite_rows_ holds how many were."""
        dropped = 0
        for x in iter_data(data, batch_size, device=device, dtype=self.dtype, reiterable=True):
            x = self._check_x(x, "data batch")
            ok = torch.isfinite(x).all(1)                       # [B]
            if not bool(ok.all()):
                dropped += int((~ok).sum())
                x = x[ok]
            if x.shape[0]:
                yield x
        self.nonfinite_rows_ = dropped

    # ------------------------------------------------------------------ shared interface
    def encode(self, x: torch.Tensor, *, device=None, tol: float | None = None,
               max_steps: int | None = None) -> torch.Tensor:
        """Codes Z [N, n_components] ≥ 0 for x [N, d] with D fixed, solved like the fit's
        (to z_tol unless tol / max_steps are given), on device (default: x's). A row of x
        holding NaN or inf gets NaN codes: visible downstream, never a silent zero."""
        self._check_fitted()
        x = self._check_x(x).to(device)
        f = self._fixed(x.device)
        ok = torch.isfinite(x).all(1)                           # [N]
        if bool(ok.all()):
            return self._solve(x, f, tol=tol, max_steps=max_steps)
        z = x.new_full((x.shape[0], self.n_components), float("nan"))
        if bool(ok.any()):
            z[ok] = self._solve(x[ok], f, tol=tol, max_steps=max_steps)
        return z

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """x̂ [N, d] = z [N, n_components] · D, on z's device."""
        self._check_fitted()
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != self.n_components:
            raise ValueError(f"z must be [N, {self.n_components}], got "
                             f"{list(getattr(z, 'shape', []))}")
        return z.to(self.dtype) @ self.D.to(z.device)

    def _cfg(self) -> dict:
        return {"n_components": self.n_components, "d_in": self.d_in, "l1": self.l1,
                "k": self.k, "dict_keep": self.dict_keep, "ridge": self.ridge,
                "z_tol": self.z_tol, "z_max_steps": self.z_max_steps, "seed": self.seed,
                "dtype": str(self.dtype).replace("torch.", ""), "history": self.history_,
                "nonfinite_rows": self.nonfinite_rows_}

    def save(self, path) -> None:
        """Directory with cfg.json (options, d_in, history, nonfinite_rows) and
        snmf.safetensors (D [n_components, d_in]); see base.save_dir."""
        self._check_fitted()
        save_dir(path, "snmf", self._cfg(), {"D": self.D})

    @classmethod
    def load(cls, path, device="cpu") -> "SNMF":
        cfg, t = load_dir(path, "snmf", lambda c: {"D": [c["n_components"], c["d_in"]]})
        default = cls(cfg["n_components"])
        opts = {key: cfg.get(key, getattr(default, key)) for key in
                ("l1", "k", "dict_keep", "ridge", "z_tol", "z_max_steps", "seed")}
        out = cls(cfg["n_components"], dtype=getattr(torch, cfg["dtype"]), **opts)
        out.D = t["D"].to(device=device, dtype=out.dtype)
        out.history_ = list(cfg.get("history", []))
        out.nonfinite_rows_ = int(cfg.get("nonfinite_rows", 0))
        return out
