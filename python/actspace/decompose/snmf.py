"""Semi-nonnegative matrix factorisation (SNMF) of activations: X ≈ Z · D.

Why: SAEs need training by SGD; SNMF gives a mixed-sign dictionary D [n_components, d]
and nonnegative (optionally L1-sparse) codes Z [N, n_components] from closed-form and
multiplicative updates ("Decomposing MLP Activations into Interpretable Features via
Semi-Nonnegative Matrix Factorization"; updates of Ding, Li & Jordan 2010):

    Z ← Z ⊙ sqrt( ([X Dᵀ]⁺ + Z [D Dᵀ]⁻) / ([X Dᵀ]⁻ + Z [D Dᵀ]⁺ + λ) )     (Z stays ≥ 0)
    D ← (Zᵀ Z + εI)⁻¹ Zᵀ X                                               (least squares)

On a store (or any re-iterable source of batches) each pass encodes every batch with D
fixed and accumulates ZᵀZ [r, r] and ZᵀX [r, d], so memory does not grow with N. Runs on
the device of the data. Shares fit / encode / decode / save / load with the SAEs and PCA.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

_EPS = 1e-12


def _pos(a):
    return a.clamp_min(0)


def _neg(a):
    return (-a).clamp_min(0)


class SNMF:
    """X [N, d] ≈ Z [N, n_components] · D [n_components, d], Z ≥ 0.

    l1: weight λ of the L1 penalty on Z (sparser codes); D rows are kept unit-norm so the
    penalty cannot be dodged by scaling. ridge: ε of the D solve (relative to trace/r)."""

    def __init__(self, n_components: int, *, l1: float = 0.0, ridge: float = 1e-6,
                 seed: int = 0, dtype: torch.dtype = torch.float32):
        if not isinstance(n_components, int) or n_components <= 0:
            raise ValueError(f"n_components must be a positive int, got {n_components!r}")
        if l1 < 0:
            raise ValueError(f"l1 must be >= 0, got {l1}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        self.n_components, self.l1, self.ridge, self.seed = n_components, float(l1), ridge, seed
        self.dtype = dtype
        self.D: torch.Tensor | None = None     # [n_components, d]
        self.history_: list[float] = []       # relative reconstruction error per iteration

    @property
    def d_in(self) -> int:
        self._check_fitted()
        return self.D.shape[1]

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

    # ------------------------------------------------------------------ updates
    def _z_steps(self, Z, XDt, DDt, n_steps: int):
        """n_steps multiplicative updates of Z [N, r] given XDᵀ [N, r] and DDᵀ [r, r].
        The ± parts are split once, and Z·[DDᵀ]⁻, Z·[DDᵀ]⁺ come from one GEMM [N, 2r]."""
        r = DDt.shape[0]
        a = _pos(XDt)
        b = _neg(XDt).add_(self.l1 + _EPS)
        W = torch.cat([_neg(DDt), _pos(DDt)], 1)              # [r, 2r]
        Z = Z.clone()
        for _ in range(n_steps):
            P = Z @ W                                          # [N, 2r]
            num = P[:, :r].add_(a)
            Z.mul_(num.div_(P[:, r:].add_(b)).sqrt_())
        return Z

    def _z_init(self, x, D):
        """Positive start: the unconstrained least-squares code, clipped, plus a floor
        (multiplicative updates can never revive an exact zero)."""
        DDt = D @ D.T
        r = DDt.shape[0]
        ridge = self.ridge * DDt.diagonal().mean() + _EPS
        Z = torch.linalg.solve(DDt + ridge * torch.eye(r, dtype=D.dtype, device=D.device),
                               (x @ D.T).T).T
        return Z.clamp_min(0) + 1e-3 * Z.abs().mean().clamp_min(_EPS)

    def _d_solve(self, ZtZ, ZtX):
        r = ZtZ.shape[0]
        ridge = self.ridge * ZtZ.diagonal().mean().clamp_min(_EPS)
        D = torch.linalg.solve(ZtZ + ridge * torch.eye(r, dtype=ZtZ.dtype, device=ZtZ.device), ZtX)
        norms = D.norm(dim=1).clamp_min(_EPS)      # [r]; Z · diag(norms) keeps Z·D unchanged
        return D / norms[:, None], norms

    def _init_dictionary(self, x, kmeans_iters: int = 10):
        """Spherical k-means centroids of the first data (as Ding et al. initialise with
        k-means): mixed sign, in the data span, and near the directions of rows that use
        one component, which multiplicative updates alone rarely escape to."""
        g = torch.Generator().manual_seed(self.seed)
        n = x.shape[0]
        if n < self.n_components:
            raise ValueError(f"need at least n_components={self.n_components} rows to "
                             f"initialise, got {n}")
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
            z_steps: int = 10, tol: float = 1e-6) -> "SNMF":
        """Fit on a tensor [N, d] (full alternating updates, Z kept between iterations), or
        batch-wise (batch_size set, or data a re-iterable of [B, d] batches / an object with
        iter_batches): each pass re-encodes every batch with z_steps updates and solves D
        from the accumulated ZᵀZ, ZᵀX. data may also be a store path (see
        actspace.decompose.latents.iter_batches). Stops early when the relative error improves by < tol."""
        if not isinstance(n_iter, int) or n_iter <= 0:
            raise ValueError(f"n_iter must be a positive int, got {n_iter!r}")
        self.history_ = []
        if isinstance(data, torch.Tensor) and batch_size is None:
            return self._fit_full(self._check_x(data, "data"), n_iter, z_steps, tol)
        return self._fit_batched(data, n_iter, batch_size or 4096, z_steps, tol)

    def _fit_full(self, x, n_iter, z_steps, tol):
        self.D = self._init_dictionary(x) if self.D is None else self.D.to(x)
        Z = self._z_init(x, self.D)
        xx = x.pow(2).sum()
        for _ in range(n_iter):
            Z = self._z_steps(Z, x @ self.D.T, self.D @ self.D.T, z_steps)
            self.D, norms = self._d_solve(Z.T @ Z, Z.T @ x)
            Z = Z * norms
            err = ((x - Z @ self.D).pow(2).sum() / xx.clamp_min(_EPS)).sqrt().item()
            self.history_.append(err)
            if len(self.history_) > 1 and self.history_[-2] - err < tol * self.history_[-2] \
                    and err <= self.history_[-2]:
                break
        return self

    @staticmethod
    def _iter(data, batch_size):
        from .latents import iter_batches

        if not isinstance(data, (torch.Tensor, str, os.PathLike)) and \
                not hasattr(data, "iter_batches") and iter(data) is data:
            raise TypeError("data must be re-iterable (a tensor, a store or store path, a "
                            "list of batches) for several passes, not a one-shot iterator")
        return iter_batches(data, batch_size)

    def _fit_batched(self, data, n_iter, batch_size, z_steps, tol):
        for _ in range(n_iter):
            ZtZ = ZtX = None
            sse = ss = 0.0
            for b in self._iter(data, batch_size):
                x = self._check_x(b, "data batch")
                if self.D is None:
                    self.D = self._init_dictionary(x)
                D = self.D.to(x.device)
                Z = self._encode_with(x, D, z_steps)
                ZtZ = Z.T @ Z if ZtZ is None else ZtZ + Z.T @ Z
                ZtX = Z.T @ x if ZtX is None else ZtX + Z.T @ x
                sse += (x - Z @ D).pow(2).sum().item()
                ss += x.pow(2).sum().item()
            if ZtZ is None:
                raise ValueError("data is empty")
            self.D = self._d_solve(ZtZ, ZtX)[0]
            err = (sse / max(ss, _EPS)) ** 0.5       # error of the codes before this D solve
            self.history_.append(err)
            if len(self.history_) > 1 and 0 <= self.history_[-2] - err < tol * self.history_[-2]:
                break
        return self

    # ------------------------------------------------------------------ shared interface
    def _encode_with(self, x, D, n_steps):
        return self._z_steps(self._z_init(x, D), x @ D.T, D @ D.T, n_steps)

    def encode(self, x: torch.Tensor, *, n_steps: int = 100) -> torch.Tensor:
        """Nonnegative codes Z [N, n_components] for x [N, d] with D fixed (multiplicative
        updates of the same objective, from the clipped least-squares start)."""
        self._check_fitted()
        x = self._check_x(x)
        return self._encode_with(x, self.D.to(x.device), n_steps)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """x̂ [N, d] = z [N, n_components] · D."""
        self._check_fitted()
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != self.n_components:
            raise ValueError(f"z must be [N, {self.n_components}], got "
                             f"{list(getattr(z, 'shape', []))}")
        return z.to(self.dtype) @ self.D.to(z.device)

    def __call__(self, x):
        z = self.encode(x)
        return self.decode(z), z

    def save(self, path) -> None:
        """Directory with snmf.safetensors (D) and cfg.json."""
        from safetensors.torch import save_file

        self._check_fitted()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({"D": self.D.detach().cpu().contiguous()}, str(path / "snmf.safetensors"))
        cfg = {"kind": "snmf", "n_components": self.n_components, "d_in": self.D.shape[1],
               "l1": self.l1, "ridge": self.ridge, "seed": self.seed,
               "dtype": str(self.dtype).replace("torch.", ""), "history": self.history_}
        (path / "cfg.json").write_text(json.dumps(cfg, indent=1))

    @classmethod
    def load(cls, path, device="cpu") -> "SNMF":
        from safetensors.torch import load_file

        path = Path(path)
        cfg = json.loads((path / "cfg.json").read_text())
        if cfg.get("kind") != "snmf":
            raise ValueError(f"{path}/cfg.json is not an SNMF (kind={cfg.get('kind')!r})")
        D = load_file(str(path / "snmf.safetensors"))["D"]
        if list(D.shape) != [cfg["n_components"], cfg["d_in"]]:
            raise ValueError(f"{path}: D has shape {list(D.shape)}, cfg says "
                             f"[{cfg['n_components']}, {cfg['d_in']}]")
        out = cls(cfg["n_components"], l1=cfg["l1"], ridge=cfg["ridge"], seed=cfg["seed"],
                  dtype=getattr(torch, cfg["dtype"]))
        out.D = D.to(device=device, dtype=out.dtype)
        out.history_ = list(cfg.get("history", []))
        return out
