"""SAE evaluation: reconstruction quality, sparsity and the downstream cost of splicing.

Why a module of its own: an SAE is only useful if (1) it reconstructs the activations it
was trained on (FVU, explained variance), (2) it is sparse and uses its latents (L0, dead
and dense latents, firing-frequency histogram) and (3) the model still works when its
activations are replaced by the reconstruction. (3) is measured by splicing the SAE into
the model at its hookpoint and comparing next-token cross-entropy and KL (causal LMs) or
the pooled embedding (encoders) against the clean model, zero- and mean-ablation.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

import torch

from ..capture.hookpoints import first_tensor, replace_first_tensor, resolve
from .latents import _code_parts, _sae_apply_dtype, iter_batches

SPLICES = ("sae", "sae_with_error", "zero_ablation", "mean_ablation")


@torch.no_grad()
def reconstruction_metrics(sae, data, *, batch_size: int = 4096, dense_threshold: float = 0.1,
                           n_bins: int = 20, log10_min: float = -8.0) -> dict:
    """FVU, explained variance, MSE, L0, dead/dense latents and a log10 firing-frequency
    histogram over data. FVU = Σ‖y - ŷ‖² / Σ‖y - mean(y)‖², accumulated in float64, where
    y is x for an autoencoder and the target of a transcoder (data of (x, y) pairs, see
    iter_pairs). Rows with NaN/inf are skipped and counted (nonfinite_rows)."""
    d, M = getattr(sae, "d_out", sae.d_in), sae.d_sae
    n = 0
    s1 = torch.zeros(d, dtype=torch.float64)
    s2 = torch.zeros(d, dtype=torch.float64)
    sse = 0.0
    l0 = 0
    fires = torch.zeros(M, dtype=torch.int64)
    nonfinite = 0
    for x, y in iter_pairs(data, batch_size, sae):
        finite = torch.isfinite(x).all(1) & torch.isfinite(y).all(1)
        if not bool(finite.all()):     # counted and reported, never folded into the metrics
            nonfinite += int((~finite).sum())
            x, y = x[finite], y[finite]
            if x.shape[0] == 0:
                continue
        y_hat, code = sae(_sae_apply_dtype(sae, x))
        v, ix = _code_parts(code)
        # reduce on the data's device; only [d] / [M] vectors come back to the CPU
        y64 = y.to(torch.float64)
        sse += (y64 - y_hat.to(device=y64.device, dtype=torch.float64)).pow(2).sum().item()
        s1 += y64.sum(0).cpu()
        s2 += y64.pow(2).sum(0).cpu()
        fired = (ix >= 0) & (v != 0)
        l0 += int(fired.sum())
        fires += torch.bincount(ix.long()[fired], minlength=M).cpu()
        n += x.shape[0]
    if n == 0:
        raise ValueError(f"data has no finite rows ({nonfinite} rows with NaN/inf skipped)")
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
        "_freq": freq,
    }


def iter_pairs(data, batch_size: int, sae):
    """Yield (x [B, d_in], y [B, d_out]) batches. An autoencoder's data is anything
    iter_batches reads (y is x); a transcoder's is a pair of tensors (x [N, d_in],
    y [N, d_out]), a pair of stores (paths or ActivationStore, rows aligned: the same
    capture at its two hookpoints) or an iterable of (x, y) batch pairs."""
    d_in, d_out = sae.d_in, getattr(sae, "d_out", sae.d_in)
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
        if x.shape[1] != d_in:
            raise ValueError(f"data has d={x.shape[1]}, sae.d_in={d_in}")
        if y.shape != (x.shape[0], d_out):
            raise ValueError(f"data target has shape {list(y.shape)}, expected "
                             f"[{x.shape[0]}, d_out={d_out}]")
        yield from zip(x.split(batch_size), y.split(batch_size))


@contextlib.contextmanager
def splice(model: torch.nn.Module, hookpoint: str, fn):
    """Replace the tensor at hookpoint by fn(x) while inside the block. fn takes and returns
    [..., d]; the hook hands it the first tensor of the module's output (side "output") or
    its first positional/keyword tensor input (side "input")."""
    hps = resolve(model, hookpoint)
    if len(hps) != 1:
        raise ValueError(f"hookpoint {hookpoint!r} must name one module, matched "
                         f"{[h.name for h in hps]}")
    hp = hps[0]
    if hp.side == "output":
        def hook(module, args, output):
            return replace_first_tensor(output, fn(first_tensor(output)))
        handle = hp.module.register_forward_hook(hook)
    else:
        def hook(module, args, kwargs):
            for i, a in enumerate(args):
                if isinstance(a, torch.Tensor):
                    return args[:i] + (fn(a),) + args[i + 1:], kwargs
            # HF layers may get their stream as hidden_states=...; else the first tensor kwarg
            keys = sorted(kwargs, key=lambda k: k != "hidden_states")
            for key in keys:
                a = kwargs[key]
                if isinstance(a, torch.Tensor):
                    return args, {**kwargs, key: fn(a)}
            raise TypeError(f"hookpoint {hp.name}: the module got no tensor input")
        handle = hp.module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield hp
    finally:
        handle.remove()


def _splice_fn(kind: str, sae, mean: torch.Tensor | None, sae_input=None):
    """fn(x) -> the replacement of x for splice. sae_input() gives the SAE's input when it
    is not x itself (a transcoder reads its hookpoint and replaces hookpoint_out)."""
    def fn(x):
        flat = x.reshape(-1, x.shape[-1])
        if kind == "zero_ablation":
            return torch.zeros_like(x)
        if kind == "mean_ablation":
            return mean.to(x.dtype).to(x.device).expand_as(x).clone()
        src = flat if sae_input is None else sae_input()
        src = src.reshape(-1, src.shape[-1])
        if src.shape[0] != flat.shape[0]:
            raise ValueError(f"the SAE input has {src.shape[0]} tokens, the spliced "
                             f"activation {flat.shape[0]}")
        x_hat = sae(_sae_apply_dtype(sae, src))[0]
        if kind == "sae":
            return x_hat.to(device=x.device, dtype=x.dtype).reshape(x.shape)
        # x̂ + (x - x̂) in float64 is exactly x for float32/16 values (unless their exponents
        # differ by > ~29 bits), so the model output is unchanged
        x64, h64 = flat.to(torch.float64), x_hat.to(torch.float64).to(x.device)
        return (h64 + (x64 - h64)).to(x.dtype).reshape(x.shape)
    return fn


@contextlib.contextmanager
def _spliced(model, hookpoint, hookpoint_out, make_fn, kind, sae, mean):
    """splice for an autoencoder, or for a transcoder: a pass-through hook at hookpoint
    keeps the SAE input of this forward, the splice at hookpoint_out uses it."""
    if not hookpoint_out or hookpoint_out == hookpoint:
        with splice(model, hookpoint, make_fn(kind, sae, mean)):
            yield
        return
    seen: dict = {}

    def keep(x):
        seen["x"] = x
        return x

    def sae_input():
        if "x" not in seen:
            raise ValueError(f"hookpoint {hookpoint!r} did not run before hookpoint_out "
                             f"{hookpoint_out!r} in the forward")
        return seen.pop("x")
    with splice(model, hookpoint, keep), \
            splice(model, hookpoint_out, make_fn(kind, sae, mean, sae_input)):
        yield


def _is_causal_lm(model) -> bool:
    name = type(model).__name__
    return "CausalLM" in name or "LMHead" in name


def _tokenize(texts, tokenizer, max_length: int, device):
    """A batch dict with input_ids and attention_mask from strings (with tokenizer), a
    LongTensor [B, T] of token ids, or a dict already holding input_ids."""
    if isinstance(texts, dict):
        batch = dict(texts)
    elif isinstance(texts, torch.Tensor):
        batch = {"input_ids": texts}
    else:
        if tokenizer is None:
            raise ValueError("tokenizer is required when texts are strings")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        enc = tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True,
                        max_length=max_length)
        # only ids and mask: token_type_ids would be added as embeddings by e.g. GPT-2
        batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    batch.setdefault("attention_mask", torch.ones_like(batch["input_ids"]))
    return {k: v.to(device) for k, v in batch.items()}


def _text_batches(texts, batch_size):
    if isinstance(texts, (torch.Tensor, dict)):
        yield texts
        return
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string")
    texts = list(texts)
    for i in range(0, len(texts), batch_size):
        yield texts[i:i + batch_size]


@torch.no_grad()
def downstream_metrics(sae, model, texts, *, tokenizer=None, hookpoint: str,
                       hookpoint_out: str | None = None,
                       mean: torch.Tensor | None = None, batch_size: int = 8,
                       max_length: int = 128) -> dict:
    """Cost of each splice in SPLICES vs the clean model on texts.

    hookpoint_out (transcoders): the SAE reads hookpoint and its output replaces the
    activation at hookpoint_out (which must come later in the forward); "with error" adds
    back y - ŷ there, so the model output is unchanged.

    Causal LMs: next-token cross-entropy over real (non-padding) targets per splice and
    the clean model, KL(clean ‖ spliced) of next-token distributions over real positions,
    and ce_loss_score = (CE_zero - CE_sae) / (CE_zero - CE_clean) (1 = lossless).
    Encoders: mean cosine of the mean-pooled last hidden state vs clean, and the relative
    change ‖pooled - clean‖ / ‖clean‖."""
    device = next(model.parameters()).device
    causal = _is_causal_lm(model)
    sums = {k: 0.0 for k in ("clean",) + SPLICES}
    kl = {k: 0.0 for k in SPLICES}
    rel = {k: 0.0 for k in SPLICES}
    n_tok = n_pos = n_seq = 0
    kinds = [k for k in SPLICES if k != "mean_ablation" or mean is not None]
    for chunk in _text_batches(texts, batch_size):
        batch = _tokenize(chunk, tokenizer, max_length, device)
        mask = batch["attention_mask"].bool()                    # [B, T]
        clean = model(**batch)
        if causal:
            # per real position: its next token and whether it has one (padding masked)
            ids = batch["input_ids"]
            nxt = torch.cat([ids[:, 1:], torch.zeros_like(ids[:, :1])], 1)[mask]
            has_next = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], 1)[mask]
            lp_clean = torch.log_softmax(clean.logits[mask].to(torch.float64), -1)  # [n, V]

            def ce_sum(lp):
                return -lp[has_next].gather(1, nxt[has_next, None]).sum().item()
            sums["clean"] += ce_sum(lp_clean)
            n_tok += int(has_next.sum())
            n_pos += int(mask.sum())
        else:
            w = mask.unsqueeze(-1).to(torch.float64)
            pool_clean = (first_tensor(clean).to(torch.float64) * w).sum(1) / w.sum(1)
            n_seq += pool_clean.shape[0]
        del clean
        for kind in kinds:           # one spliced output alive at a time (vocab-sized)
            with _spliced(model, hookpoint, hookpoint_out, _splice_fn, kind, sae, mean):
                out = model(**batch)
            if causal:
                lp = torch.log_softmax(out.logits[mask].to(torch.float64), -1)
                sums[kind] += ce_sum(lp)
                kl[kind] += (lp_clean.exp() * (lp_clean - lp)).sum().item()
            else:
                pooled = (first_tensor(out).to(torch.float64) * w).sum(1) / w.sum(1)
                cos = torch.nn.functional.cosine_similarity(pooled, pool_clean, dim=-1)
                sums[kind] += cos.sum().item()
                rel[kind] += ((pooled - pool_clean).norm(dim=-1)
                              / pool_clean.norm(dim=-1).clamp_min(1e-30)).sum().item()
            del out
    res = {"task": "causal_lm" if causal else "encoder", "hookpoint": hookpoint}
    if hookpoint_out:
        res["hookpoint_out"] = hookpoint_out
    if causal:
        if n_tok == 0:
            raise ValueError("texts have no next-token targets (sequences of length < 2)")
        res["ce_clean"] = sums["clean"] / n_tok
        for k in kinds:
            res[f"ce_{k}"] = sums[k] / n_tok
            res[f"kl_{k}"] = kl[k] / n_pos
        denom = res["ce_zero_ablation"] - res["ce_clean"]
        res["ce_loss_score"] = ((res["ce_zero_ablation"] - res["ce_sae"]) / denom
                                if denom != 0 else float("nan"))
        res["n_tokens"] = n_tok
    else:
        for k in kinds:
            res[f"cosine_{k}"] = sums[k] / n_seq
            res[f"rel_change_{k}"] = rel[k] / n_seq
        res["n_sequences"] = n_seq
    return res


def evaluate_sae(sae, data=None, *, model=None, tokenizer=None, texts=None,
                 hookpoint: str | None = None, hookpoint_out: str | None = None,
                 batch_size: int = 4096,
                 text_batch_size: int = 8, max_length: int = 128,
                 dense_threshold: float = 0.1, n_bins: int = 20) -> dict:
    """Evaluate an SAE; returns a JSON-able dict (see save_json).

    data: activations at the SAE's hookpoint (tensor [N, d_in], iterable of [B, d_in]
    tensors, a store path, or an object with iter_batches(batch_size, shuffle=False)); for
    a transcoder, pairs (x, y) as iter_pairs documents →
    "reconstruction": fvu, explained_variance, mse, l0, dead/dense latents, freq_hist.
    model + texts (strings with tokenizer, or token ids [B, T]) → "downstream": the splice
    costs of downstream_metrics (a transcoder reads hookpoint and replaces hookpoint_out);
    mean-ablation uses the mean of data's targets (skipped without data).
    """
    if data is None and model is None:
        raise ValueError("give data (activations) and/or model with texts")
    for attr in ("d_in", "d_sae", "encode", "decode"):
        if not hasattr(sae, attr):
            raise TypeError(f"sae must have {attr!r} (an SAE-like object), "
                            f"got {type(sae).__name__}")
    out: dict = {"d_in": sae.d_in, "d_sae": sae.d_sae, "k": getattr(sae, "k", None)}
    if getattr(sae, "is_transcoder", False):
        out["d_out"] = sae.d_out
    mean = None
    if data is not None:
        rec = reconstruction_metrics(sae, data, batch_size=batch_size,
                                     dense_threshold=dense_threshold, n_bins=n_bins)
        mean = rec.pop("_mean")
        rec.pop("_freq")
        out["reconstruction"] = rec
    if model is not None:
        if texts is None:
            raise ValueError("texts are required with model")
        hookpoint = hookpoint or getattr(sae, "hookpoint", None)
        if not hookpoint:
            raise ValueError("hookpoint is required (the SAE has none)")
        hookpoint_out = hookpoint_out or getattr(sae, "hookpoint_out", None)
        if getattr(sae, "is_transcoder", False) and not hookpoint_out:
            raise ValueError("hookpoint_out is required for a transcoder (the SAE has none)")
        was_training = model.training
        model.eval()
        try:
            out["downstream"] = downstream_metrics(
                sae, model, texts, tokenizer=tokenizer, hookpoint=hookpoint,
                hookpoint_out=hookpoint_out, mean=mean,
                batch_size=text_batch_size, max_length=max_length)
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
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(clean(result), indent=1))
    os.replace(tmp, path)
