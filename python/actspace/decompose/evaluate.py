"""SAE evaluation: reconstruction quality, sparsity and the downstream cost of splicing.

Why a module of its own: an SAE is only useful if (1) it reconstructs the activations it
was trained on (FVU, explained variance), (2) it is sparse and uses its latents (L0, dead
and dense latents, firing-frequency histogram) and (3) the model still works when its
activations are replaced by the reconstruction. (3) is measured by splicing the SAE into
the model at its hookpoint and comparing next-token cross-entropy and KL (causal LMs) or
the pooled embedding (encoders) against the clean model, zero- and mean-ablation
(evaluate_downstream.py).

Any decomposition with encode and decode is evaluated the same way (SAE, SNMF, PCA): its
code may be sparse (values/indices [N, k]) or dense [N, M]; widths it does not declare
(d_in, d_sae) are read off the data and the code. A latent fires where its value is > 0
(latents.fired_mask, the rule of LatentStats and the stats kernels too): L0 counts fired
latents per token, so a negative value (activation="none", a PCA score) is not a firing.
"""
from __future__ import annotations

import math

import torch

from .._io import write_json_atomic
from .evaluate_downstream import (SPLICES, splice_fn, spliced,  # noqa: F401 (re-exported for callers of evaluate)
                                  downstream_metrics, splice)
from ..stats.latent import code_parts
from .latents import fired_mask, iter_batches, reconstruct


def _fire_counts(code, width: int | None) -> torch.Tensor:
    """int64 [M] firings per latent in a batch's code: a sparse code (values/indices [N, k])
    or a dense one [N, M]. M is width (the declared d_sae) when given, else the code's own
    (a dense code's columns, a sparse code's d_sae or largest index + 1)."""
    if isinstance(code, torch.Tensor):                               # dense [N, M]
        return fired_mask(code).sum(0).cpu()
    v, ix = code_parts(code)
    fired = fired_mask(v, ix)                                        # [N, k]
    width = width or getattr(code, "d_sae", None) or 0
    return torch.bincount(ix.long()[fired], minlength=width).cpu()


@torch.no_grad()
def reconstruction_metrics(sae, data, *, batch_size: int = 4096, dense_threshold: float = 0.1,
                           n_bins: int = 20, log10_min: float = -8.0) -> dict:
    """FVU, explained variance, MSE, L0, dead/dense latents and a log10 firing-frequency
    histogram over data. FVU = Σ‖y - ŷ‖² / Σ‖y - mean(y)‖², accumulated in float64, where
    y is x for an autoencoder and the target of a transcoder (data of (x, y) pairs, see
    iter_pairs). Rows with NaN/inf are skipped and counted (nonfinite_rows). L0 and
    firing follow fired_mask (value > 0). Works for any decomposition with encode/decode:
    d_sae comes from sae.d_sae if it has one, else from the code's width."""
    n = nonfinite = l0 = 0
    sse = 0.0
    s1 = s2 = None                       # float64 [d_out], lazily: d_out may be undeclared
    fires = torch.zeros(0, dtype=torch.int64)                        # [M], grown as seen
    width = getattr(sae, "d_sae", None)
    for x, y in iter_pairs(data, batch_size, sae):
        finite = torch.isfinite(x).all(1) & torch.isfinite(y).all(1)
        if not bool(finite.all()):     # counted and reported, never folded into the metrics
            nonfinite += int((~finite).sum())
            x, y = x[finite], y[finite]
            if x.shape[0] == 0:
                continue
        y_hat, code = reconstruct(sae, x)                   # [B, d_out], code of [B] rows
        # reduce on the data's device; only [d] / [M] vectors come back to the CPU
        y64 = y.to(torch.float64)
        sse += (y64 - y_hat.to(device=y64.device, dtype=torch.float64)).pow(2).sum().item()
        if s1 is None:
            s1 = torch.zeros(y.shape[1], dtype=torch.float64)
            s2 = torch.zeros(y.shape[1], dtype=torch.float64)
        s1 += y64.sum(0).cpu()
        s2 += y64.pow(2).sum(0).cpu()
        counts = _fire_counts(code, width)
        if counts.shape[0] > fires.shape[0]:
            fires = torch.nn.functional.pad(fires, (0, counts.shape[0] - fires.shape[0]))
        fires[:counts.shape[0]] += counts
        l0 += int(counts.sum())
        n += x.shape[0]
    if n == 0:
        raise ValueError(f"data has no finite rows ({nonfinite} rows with NaN/inf skipped)")
    d = s1.shape[0]
    mean = s1 / n
    total = (s2 - n * mean * mean).sum().item()
    fvu = sse / total if total > 0 else float("nan")
    freq = fires.to(torch.float64) / n
    edges = torch.linspace(log10_min, 0.0, n_bins + 1, dtype=torch.float64)
    logf = torch.log10(freq[freq > 0]).clamp(log10_min, 0.0)
    hist = torch.histogram(logf, bins=edges)[0].long() if logf.numel() else \
        torch.zeros(n_bins, dtype=torch.int64)
    return {
        "n_tokens": n, "nonfinite_rows": nonfinite, "mse": sse / (n * d), "fvu": fvu,
        "explained_variance": 1.0 - fvu,
        "l0": l0 / n, "dead_latents": int((fires == 0).sum()),
        "dead_fraction": float((fires == 0).double().mean()),
        "dense_latents": int((freq > dense_threshold).sum()), "dense_threshold": dense_threshold,
        "freq_hist": {"log10_edges": edges.tolist(), "counts": hist.tolist(),
                      "dead": int((fires == 0).sum())},
        "_mean": mean,   # per-channel target mean, used for mean-ablation (popped before return)
        "_widths": (x.shape[1], fires.shape[0]),   # (d_in, d_sae) as seen (popped too)
    }


def iter_pairs(data, batch_size: int, sae):
    """Yield (x [B, d_in], y [B, d_out]) batches. An autoencoder's data is anything
    iter_batches reads (y is x); a transcoder's is a pair of tensors (x [N, d_in],
    y [N, d_out]), a pair of stores (paths or ActivationStore, rows aligned: the same
    capture at its two hookpoints) or an iterable of (x, y) batch pairs."""
    d_in = getattr(sae, "d_in", None)            # None: not declared, encode checks x
    d_out = getattr(sae, "d_out", d_in)
    transcoder = bool(getattr(sae, "is_transcoder", False))
    if not transcoder:
        pairs = ((x, x) for x in iter_batches(data, batch_size))
    elif isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(
            data[0], (tuple, list)):             # (x, y) tensors or two stores
        xs, ys = (iter_batches(part, batch_size) for part in data)
        pairs = zip(xs, ys, strict=True)
    else:                                        # an iterable of (x, y) batches
        pairs = (b if isinstance(b, (tuple, list)) else (b, None) for b in data)
    for x, y in pairs:
        if y is None:
            raise TypeError("a transcoder is evaluated on pairs (x at its hookpoint, y at "
                            "hookpoint_out): give data as (x, y) tensors, two stores or "
                            "an iterable of (x, y) batches")
        if d_in is not None and x.shape[1] != d_in:
            raise ValueError(f"data has d={x.shape[1]}, sae.d_in={d_in}")
        if y.dim() != 2 or y.shape[0] != x.shape[0] or d_out not in (None, y.shape[1]):
            raise ValueError(f"data target has shape {list(y.shape)}, expected "
                             f"[{x.shape[0]}, d_out={d_out}]")
        yield from zip(x.split(batch_size), y.split(batch_size))


def evaluate_sae(sae, data=None, *, model=None, tokenizer=None, texts=None,
                 hookpoint: str | None = None, hookpoint_out: str | None = None,
                 batch_size: int = 4096,
                 text_batch_size: int = 8, max_length: int = 128,
                 dense_threshold: float = 0.1, n_bins: int = 20,
                 splice_special_tokens: bool = False) -> dict:
    """Evaluate an SAE, or any decomposition with encode/decode (SNMF, PCA); returns a
    JSON-able dict (see save_json).

    data: activations at the SAE's hookpoint (tensor [N, d_in], iterable of [B, d_in]
    tensors, a store path, or an object with iter_batches(batch_size, shuffle=False)); for
    a transcoder, pairs (x, y) as iter_pairs documents →
    "reconstruction": fvu, explained_variance, mse, l0, dead/dense latents, freq_hist.
    model + texts (strings with tokenizer, or token ids [B, T]) → "downstream": the splice
    costs of downstream_metrics (a transcoder reads hookpoint and replaces hookpoint_out);
    mean-ablation uses the mean of data's targets (skipped without data). Only real,
    non-special tokens are spliced unless splice_special_tokens (see evaluate_downstream:
    a capture job stores no special tokens by default, so the SAE never saw them).
    d_in / d_sae are the decomposition's own, or (when it declares none) those of the data
    and the code; None when neither is known (no data given).
    """
    if data is None and model is None:
        raise ValueError("give data (activations) and/or model with texts")
    for attr in ("encode", "decode"):
        if not callable(getattr(sae, attr, None)):
            raise TypeError(f"sae must have {attr!r} (an SAE-like object or decomposition), "
                            f"got {type(sae).__name__}")
    out: dict = {"d_in": getattr(sae, "d_in", None), "d_sae": getattr(sae, "d_sae", None),
                 "k": getattr(sae, "k", None)}
    if getattr(sae, "is_transcoder", False):
        out["d_out"] = sae.d_out
    mean = None
    if data is not None:
        rec = reconstruction_metrics(sae, data, batch_size=batch_size,
                                     dense_threshold=dense_threshold, n_bins=n_bins)
        mean = rec.pop("_mean")
        seen = rec.pop("_widths")
        for key, width in zip(("d_in", "d_sae"), seen):
            out[key] = width if out[key] is None else out[key]
        out["reconstruction"] = rec
    if model is not None:
        if texts is None:
            raise ValueError("texts are required with model")
        hookpoint = hookpoint or getattr(sae, "hookpoint", None)
        if not hookpoint:
            raise ValueError("hookpoint is required (the decomposition has none)")
        hookpoint_out = hookpoint_out or getattr(sae, "hookpoint_out", None)
        if getattr(sae, "is_transcoder", False) and not hookpoint_out:
            raise ValueError("hookpoint_out is required for a transcoder (the SAE has none)")
        was_training = model.training
        model.eval()
        try:
            out["downstream"] = downstream_metrics(
                sae, model, texts, tokenizer=tokenizer, hookpoint=hookpoint,
                hookpoint_out=hookpoint_out, mean=mean, batch_size=text_batch_size,
                max_length=max_length, splice_special_tokens=splice_special_tokens)
        finally:
            model.train(was_training)
    return out


def save_json(result: dict, path) -> None:
    """Write an evaluate_sae result as JSON (NaN/inf written as null)."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    write_json_atomic(path, clean(result))
