"""`acts.ActivationStats`: streaming, mergeable statistics of an activation space.

Why streaming: capture jobs see billions of tokens once; every statistic here is a
mergeable state updated batch by batch (per-channel moments on the `stats` kernels of
actspace.ops.stats, a float64 co-moment matrix merged by Chan's formula, per-token norm
moments, and the top tokens by max |activation|). Parts computed on shards, threads or
ranks merge exactly (`merge`, `all_reduce`), and the state saves to safetensors + json.

    st = acts.ActivationStats(d, covariance=True)
    st.update(x, token_ids=ids)          # x [N, d], token_ids [N]
    st.mean, st.var, st.kurtosis, st.spectrum(), st.power_law_alpha(), st.massive_activations()
"""
from __future__ import annotations

import math

import torch

from ..ops import stats as _ops

_FORMAT = "actspace.activation_stats"
_VERSION = 1


def _merge_topk(vals, toks, chans, rows, k):
    """Keep the k largest vals (ties: earlier row first). All 1-D, same length."""
    o = torch.argsort(rows, stable=True)
    o = o[torch.argsort(-vals[o], stable=True)][:k]
    return vals[o], toks[o], chans[o], rows[o]


class ActivationStats:
    """Statistics of activations with d channels.

    covariance: also accumulate the full d x d covariance (float64, d^2 memory).
    top_k: how many tokens with the largest max |activation| to remember (with token ids).
    device: where the state lives and every update is computed (default CPU; batches on
    another device are copied there). On a GPU the covariance update (2 N d^2 float64
    operations per batch, the expensive part at large d) runs on the GPU; saving,
    merging and all_reduce work across devices.
    """

    def __init__(self, d: int, covariance: bool = False, *, top_k: int = 64, device=None):
        if not isinstance(d, int) or isinstance(d, bool) or d <= 0:
            raise ValueError(f"d must be a positive int, got {d!r}")
        if not isinstance(top_k, int) or top_k < 0:
            raise ValueError(f"top_k must be an int >= 0, got {top_k!r}")
        self.d, self.has_covariance, self.top_k = d, bool(covariance), top_k
        self.device = dev = torch.device("cpu" if device is None else device)
        self.moments = _ops.moments_init(d, device=dev)
        self.norms = _ops.moments_init(1, device=dev)  # per-token L2 norm moments
        self.rows = 0                                # rows seen (tokens)
        self.cov_count = 0.0                         # rows folded into the covariance
        self.cov_mean = torch.zeros(d, dtype=torch.float64, device=dev)
        self.cov_m2 = torch.zeros(d, d, dtype=torch.float64, device=dev) if covariance else None
        self.top_values = torch.empty(0, dtype=torch.float32, device=dev)  # [<=top_k] max |x|
        self.top_tokens = torch.empty(0, dtype=torch.int64, device=dev)    # token id (-1: ?)
        self.top_channels = torch.empty(0, dtype=torch.int64, device=dev)  # channel of that max
        self.top_rows = torch.empty(0, dtype=torch.int64, device=dev)      # row in the stream

    # ------------------------------------------------------------------ update / merge
    def update(self, x: torch.Tensor, token_ids: torch.Tensor | None = None) -> None:
        """Fold x [N, d] (any float dtype, any device; copied to the stats' device) in.
        token_ids [N] (optional) label the rows for the massive-activation report."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != self.d:
            raise ValueError(f"x must have shape [N, {self.d}], got {list(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a float tensor, got {x.dtype}")
        n = x.shape[0]
        if token_ids is not None and (not isinstance(token_ids, torch.Tensor)
                                      or token_ids.shape != (n,)):
            raise ValueError(f"token_ids must be a tensor of shape [{n}], got "
                             f"{getattr(token_ids, 'shape', type(token_ids).__name__)}")
        if n == 0:
            return
        x = x.detach().to(self.device)
        _ops.moments_update(self.moments, x)
        xf = x.float()
        absx = xf.abs()
        rmax, chan = absx.max(1)                 # max propagates NaN/inf: cheap row check
        finite_rows = torch.isfinite(rmax)
        all_finite = bool(finite_rows.all())
        if not all_finite:                       # slow path only when non-finite values exist
            absx = torch.where(torch.isfinite(xf), absx, torch.zeros((), dtype=xf.dtype))
            rmax, chan = absx.max(1)
        # per-token norms in float32 (one token's d values), their moments in float64
        norms = torch.linalg.vector_norm(xf if all_finite else xf[finite_rows], dim=1)
        _ops.moments_update(self.norms, norms.double().unsqueeze(1))
        if self.top_k:
            toks = (token_ids.detach().to(self.device).long() if token_ids is not None
                    else torch.full((n,), -1, dtype=torch.int64, device=self.device))
            # stable sort: among equal values the earlier row wins, as in merge
            v, i = torch.sort(rmax, descending=True, stable=True)
            v, i = v[:self.top_k], i[:self.top_k]
            self._fold_top(v, toks[i], chan[i], i + self.rows)
        if self.has_covariance:
            xd = (x if all_finite else x[finite_rows]).to(torch.float64)
            if xd.shape[0]:
                mb = xd.mean(0)
                c = xd - mb
                self._fold_cov(float(xd.shape[0]), mb, c.T @ c)
        self.rows += n

    def _fold_top(self, vals, toks, chans, rows):
        self.top_values, self.top_tokens, self.top_channels, self.top_rows = _merge_topk(
            torch.cat([self.top_values, vals.float()]), torch.cat([self.top_tokens, toks]),
            torch.cat([self.top_channels, chans]), torch.cat([self.top_rows, rows]), self.top_k)

    def _fold_cov(self, nb: float, mean_b: torch.Tensor, m2_b: torch.Tensor) -> None:
        # Chan et al.: C = C_a + C_b + delta delta^T * n_a n_b / n
        na = self.cov_count
        n = na + nb
        delta = mean_b - self.cov_mean
        self.cov_m2 += m2_b + torch.outer(delta, delta) * (na * nb / n)
        self.cov_mean += delta * (nb / n)
        self.cov_count = n

    def merge(self, other: "ActivationStats") -> "ActivationStats":
        """Fold other (a disjoint part of the same stream) into self; returns self.
        Row indices of other's top tokens are shifted past self's rows."""
        if not isinstance(other, ActivationStats):
            raise TypeError(f"other must be ActivationStats, got {type(other).__name__}")
        if other.d != self.d or other.has_covariance != self.has_covariance:
            raise ValueError(f"other must have d={self.d}, covariance={self.has_covariance}; "
                             f"got d={other.d}, covariance={other.has_covariance}")
        if other.device != self.device:
            other = other.to(self.device)
        self.moments = _ops.moments_merge(self.moments, other.moments)
        self.norms = _ops.moments_merge(self.norms, other.norms)
        if self.top_k:
            self._fold_top(other.top_values, other.top_tokens, other.top_channels,
                           other.top_rows + self.rows)
        if self.has_covariance and other.cov_count > 0:
            self._fold_cov(other.cov_count, other.cov_mean, other.cov_m2)
        self.rows += other.rows
        return self

    def all_reduce(self, group=None) -> "ActivationStats":
        """Merge the states of every rank of torch.distributed (when initialised) so all
        ranks hold the statistics of the whole stream, bit-identical on every rank.
        The small per-channel parts are gathered and merged in rank order; the d x d
        covariance is never gathered (that would take world x d^2 memory on every rank):
        each rank shifts its M2 to the global mean (Chan et al.) and one all_reduce sums
        them. No-op when not initialised."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        state = self._state()
        cov_m2 = state["tensors"].pop("cov.m2", None)
        state["meta"]["covariance"] = False     # the covariance is summed below instead
        states = [None] * dist.get_world_size(group)
        dist.all_gather_object(states, state, group=group)
        merged = ActivationStats._from_state(states[0], self.device)
        for s in states[1:]:
            merged.merge(ActivationStats._from_state(s, self.device))
        merged.has_covariance = self.has_covariance
        if self.has_covariance:
            merged.cov_m2 = self._all_reduce_cov(states, cov_m2, merged, group)
        self.__dict__.update(merged.__dict__)
        return self

    def _all_reduce_cov(self, states, cov_m2, merged, group) -> torch.Tensor:
        """Σ_r [M2_r + n_r (mean_r - mean)(mean_r - mean)ᵀ] over ranks  [d, d] float64,
        with n_r, mean_r from the gathered states and mean the global one."""
        import torch.distributed as dist

        ns = [float(s["meta"]["cov_count"]) for s in states]
        means = [s["tensors"]["cov.mean"].to(self.device) for s in states]
        n = sum(ns)
        mean = sum(nr * mr for nr, mr in zip(ns, means)) / n if n > 0 else means[0]
        delta = self.cov_mean - mean
        term = cov_m2 + torch.outer(delta, delta) * self.cov_count
        # NCCL reduces CUDA tensors only
        dev = (torch.device("cuda", torch.cuda.current_device())
               if dist.get_backend(group) == "nccl" else term.device)
        term = term.to(dev)
        dist.all_reduce(term, group=group)
        merged.cov_mean, merged.cov_count = mean, n
        return term.to(self.device)

    # ------------------------------------------------------------------ per-channel views
    @property
    def count(self) -> torch.Tensor:   # [d] finite values seen per channel
        return self.moments["count"]

    @property
    def mean(self) -> torch.Tensor:
        return self.moments["mean"]

    @property
    def var(self) -> torch.Tensor:      # unbiased (n - 1)
        return self.moments["m2"] / (self.count - 1).clamp_min(1)

    @property
    def std(self) -> torch.Tensor:
        return self.var.sqrt()

    @property
    def skewness(self) -> torch.Tensor:  # g1 = sqrt(n) m3 / m2^1.5 (biased, as scipy)
        m = self.moments
        return m["count"].sqrt() * m["m3"] / m["m2"].pow(1.5)

    @property
    def kurtosis(self) -> torch.Tensor:  # excess kurtosis n m4 / m2^2 - 3 (biased, as scipy)
        m = self.moments
        return m["count"] * m["m4"] / m["m2"].pow(2) - 3.0

    min = property(lambda self: self.moments["min"])
    max = property(lambda self: self.moments["max"])
    absmax = property(lambda self: self.moments["absmax"])
    nonfinite = property(lambda self: self.moments["nonfinite"])

    @property
    def zero_fraction(self) -> torch.Tensor:   # exact zeros / all values seen, per channel
        total = self.count + self.nonfinite.to(torch.float64)
        return self.moments["zeros"].to(torch.float64) / total.clamp_min(1)

    @property
    def norm_stats(self) -> dict:
        """Per-token L2 norm statistics over rows without non-finite values."""
        m = self.norms
        n = float(m["count"][0])
        return {"count": n, "mean": float(m["mean"][0]),
                "std": math.sqrt(float(m["m2"][0]) / max(n - 1, 1)),
                "min": float(m["min"][0]), "max": float(m["max"][0])}

    # ------------------------------------------------------------------ covariance views
    def covariance(self) -> torch.Tensor:
        """[d, d] float64 unbiased covariance of the rows without non-finite values."""
        if not self.has_covariance:
            raise ValueError("covariance was not accumulated: create with covariance=True")
        if self.cov_count < 2:
            raise ValueError(f"covariance needs >= 2 rows, have {self.cov_count:g}")
        return self.cov_m2 / (self.cov_count - 1)

    def spectrum(self) -> torch.Tensor:
        """[d] covariance eigenvalues, descending (float64; tiny negatives clamped to 0)."""
        return torch.linalg.eigvalsh(self.covariance()).flip(0).clamp_min(0)

    def power_law_alpha(self, fit_range: tuple[float, float] = (0.05, 0.5)) -> float:
        """Exponent alpha of the eigenvalue decay lambda_i ~ i^-alpha.

        Method: ordinary least squares of log(lambda_i) against log(i) (i = 1-based rank)
        over the ranks i in [max(1, round(lo*d)), round(hi*d)] with (lo, hi) = fit_range,
        default the 5%..50% ranks: the head (a few outlier directions) and the noisy tail are
        left out. alpha = -slope. Zero eigenvalues in the range are dropped."""
        lo, hi = fit_range
        if not 0 <= lo < hi <= 1:
            raise ValueError(f"fit_range must be (lo, hi) with 0 <= lo < hi <= 1, got {fit_range}")
        lam = self.spectrum()
        i0, i1 = max(1, round(lo * self.d)), round(hi * self.d)
        ranks = torch.arange(i0, i1 + 1, dtype=torch.float64, device=lam.device)
        vals = lam[i0 - 1:i1]
        keep = vals > 0
        if int(keep.sum()) < 3:
            raise ValueError(f"power-law fit needs >= 3 positive eigenvalues in ranks "
                             f"[{i0}, {i1}], have {int(keep.sum())}")
        lx, ly = ranks[keep].log(), vals[keep].log()
        lx0 = lx - lx.mean()
        slope = (lx0 * (ly - ly.mean())).sum() / (lx0 * lx0).sum()
        return float(-slope)

    def effective_rank(self) -> float:
        """exp(entropy of lambda / sum lambda) (Roy & Vetterli 2007)."""
        p = self.spectrum()
        p = p / p.sum()
        p = p[p > 0]
        return float(torch.exp(-(p * p.log()).sum()))

    def participation_ratio(self) -> float:
        """(sum lambda)^2 / sum lambda^2."""
        lam = self.spectrum()
        return float(lam.sum() ** 2 / (lam * lam).sum())

    # ------------------------------------------------------------------ massive activations
    def massive_activations(self, ratio: float = 100.0) -> dict:
        """Channels and tokens whose magnitude exceeds ratio x the typical magnitude.

        The typical magnitude is the median over channels of the per-channel RMS
        (sqrt(mean^2 + var)), a streaming stand-in for the median |activation| used in the
        massive-activations literature (Sun et al. 2024 use ratios of 100 to 1000).
        Returns {"reference": float, "channels": [{"channel", "absmax", "ratio"}],
        "tokens": [{"row", "token_id", "channel", "value", "ratio"}]} (largest first; tokens
        come from the top_k tracked rows)."""
        rms = (self.mean**2 + self.moments["m2"] / self.count.clamp_min(1)).sqrt()
        ref = float(rms.median())
        if ref <= 0 or not math.isfinite(ref):
            return {"reference": ref, "channels": [], "tokens": []}
        thr = ratio * ref
        chans = torch.nonzero(self.absmax > thr).flatten()
        chans = chans[torch.argsort(-self.absmax[chans])]
        return {
            "reference": ref,
            "channels": [{"channel": int(c), "absmax": float(self.absmax[c]),
                          "ratio": float(self.absmax[c]) / ref} for c in chans],
            "tokens": [{"row": int(r), "token_id": int(t), "channel": int(c),
                        "value": float(v), "ratio": float(v) / ref}
                       for v, t, c, r in zip(self.top_values, self.top_tokens,
                                             self.top_channels, self.top_rows) if v > thr],
        }

    # ------------------------------------------------------------------ persistence
    def _tensors(self) -> dict:
        """The state's tensors, where they live (see _state for a CPU copy)."""
        t = {f"m.{k}": v for k, v in self.moments.items()}
        t.update({f"n.{k}": v for k, v in self.norms.items()})
        t.update({"top.values": self.top_values, "top.tokens": self.top_tokens,
                  "top.channels": self.top_channels, "top.rows": self.top_rows,
                  "cov.mean": self.cov_mean})
        if self.has_covariance:
            t["cov.m2"] = self.cov_m2
        return t

    def _state(self) -> dict:
        """Tensors (on CPU: saved, pickled, gathered) and json metadata."""
        t = self._tensors()
        meta = {"format": _FORMAT, "version": _VERSION, "d": self.d,
                "covariance": self.has_covariance, "top_k": self.top_k,
                "rows": self.rows, "cov_count": self.cov_count}
        return {"tensors": {k: v.detach().cpu().contiguous() for k, v in t.items()},
                "meta": meta}

    @classmethod
    def _from_state(cls, state: dict, device=None) -> "ActivationStats":
        meta = state["meta"]
        st = cls(meta["d"], meta["covariance"], top_k=meta["top_k"], device=device)
        t = {k: v.to(st.device) for k, v in state["tensors"].items()}
        st.moments = {k: t[f"m.{k}"] for k in st.moments}
        st.norms = {k: t[f"n.{k}"] for k in st.norms}
        st.top_values, st.top_tokens = t["top.values"], t["top.tokens"]
        st.top_channels, st.top_rows = t["top.channels"], t["top.rows"]
        st.cov_mean = t["cov.mean"]
        st.cov_m2 = t.get("cov.m2")
        st.rows, st.cov_count = int(meta["rows"]), float(meta["cov_count"])
        return st

    @property
    def nbytes(self) -> int:
        """Bytes of the saved state (what save writes, about): lets a writer decide how
        often a checkpoint is worth it."""
        return sum(t.nbytes for t in self._tensors().values())

    def to(self, device) -> "ActivationStats":
        """A copy of these statistics living on device."""
        st = ActivationStats._from_state(self._state(), device)
        if hasattr(self, "meta"):
            st.meta = self.meta
        return st

    def save(self, path, extra: dict | None = None) -> None:
        """Write path(.safetensors) and path(.json), each crash-safe (temp name, fsync,
        rename). extra: more json metadata (e.g. how many documents the statistics cover)."""
        from .._io import save_pair

        state = self._state()
        save_pair(path, state["tensors"], dict(state["meta"], **(extra or {})))

    @classmethod
    def load(cls, path, device=None) -> "ActivationStats":
        from .._io import load_pair

        meta, tensors = load_pair(path, _FORMAT, "activation-stats")
        st = cls._from_state({"meta": meta, "tensors": tensors}, device)
        st.meta = meta
        return st

    def summary(self, ratio: float = 100.0) -> dict:
        """JSON-friendly summary: totals, channel aggregates, norms, spectrum views and the
        massive activations at ratio (see massive_activations).
        Undefined values (no rows yet, a constant channel's kurtosis) are None, so the
        summary is valid JSON (json.dumps would write NaN/Infinity, which is not)."""
        out = {"d": self.d, "rows": self.rows,
               "nonfinite": int(self.nonfinite.sum()),
               "mean_abs_mean": float(self.mean.abs().mean()),
               "mean_std": float(self.std.mean()),
               "max_abs": float(self.absmax.max()),
               "mean_kurtosis": float(self.kurtosis.nanmean()),
               "zero_fraction": float(self.zero_fraction.mean()),
               "norm": self.norm_stats,
               "massive": self.massive_activations(ratio)}
        if self.rows == 0:      # no data: aggregates of the empty state mean nothing
            out.update(mean_abs_mean=None, mean_std=None, max_abs=None, zero_fraction=None,
                       norm=dict(out["norm"], mean=None, std=None))
        if self.has_covariance and self.cov_count >= 2:
            out.update(effective_rank=self.effective_rank(),
                       participation_ratio=self.participation_ratio())
            try:
                out["power_law_alpha"] = self.power_law_alpha()
            except ValueError:
                out["power_law_alpha"] = None
        return _finite_or_none(out)


def _finite_or_none(obj):
    """obj with every non-finite float (at any depth of dicts and lists) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite_or_none(v) for v in obj]
    return obj
