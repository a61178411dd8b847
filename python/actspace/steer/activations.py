"""Reading pooled activations of texts at hookpoints, and a logistic-regression probe.

Steering needs a few hundred pooled activations at most (one per text), so this module
keeps them in memory rather than going through the activation store. Batches are padded
on the tokenizer's padding side; pooling reads only real tokens, so the result does not
depend on the padding side or on the other texts in the batch.
"""
from __future__ import annotations

import torch

from ..capture.hooks import Capture
from ..model.padding import pad_rows, real_position_ids, takes_position_ids


def check_texts(texts, name: str) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise TypeError(f"{name} must be a list of strings, got {type(texts).__name__}")
    if not texts:
        raise ValueError(f"{name} must not be empty")
    for t in texts:
        if not isinstance(t, str):
            raise TypeError(f"{name} must contain only strings, got {type(t).__name__}")
    return list(texts)


def model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def tokenize(tokenizer, texts: list[str], device, model=None) -> dict:
    """input_ids / attention_mask [B, T] padded on tokenizer.padding_side; works for
    tokenizers without a pad token (pads with eos or 0: the mask hides it anyway).
    With a model whose forward takes position_ids, they count real tokens only (as
    generate does), so a left-padded text gets the activations it would get alone."""
    ids = [tokenizer(t)["input_ids"] for t in texts]
    for t, row in zip(texts, ids):
        if not row:
            raise ValueError(f"text {t!r} tokenizes to nothing")
    input_ids, mask, _ = pad_rows(ids, tokenizer)
    out = {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}
    if model is not None and takes_position_ids(model):
        out["position_ids"] = real_position_ids(mask).to(device)
    return out




def pool(x: torch.Tensor, mask: torch.Tensor, position) -> torch.Tensor:
    """x [B, T, d], mask [B, T] -> [B, d] (float32): the last real token ("last"), the mean
    over real tokens ("mean"), or the i-th real token (int; negative counts from the end)."""
    x, m = x.float(), mask.bool()
    n = m.sum(1)                                   # [B] real tokens per row
    if position == "mean":
        return (x * m.unsqueeze(-1)).sum(1) / n.clamp_min(1).unsqueeze(-1)
    rank = m.long().cumsum(1) - 1                  # index among real tokens, [B, T]
    if position == "last":
        want = n - 1
    elif isinstance(position, int) and not isinstance(position, bool):
        want = torch.full_like(n, position) if position >= 0 else n + position
        if bool(((want < 0) | (want >= n)).any()):
            raise ValueError(f"position {position} is outside a text with {int(n.min())} tokens")
    else:
        raise ValueError(f"position must be 'last', 'mean' or an int, got {position!r}")
    sel = m & (rank == want.unsqueeze(1))          # exactly one True per row
    return (x * sel.unsqueeze(-1)).sum(1)


@torch.no_grad()
def pooled_activations(model, tokenizer, texts: list[str], hookpoints: list[str],
                       position="last", batch_size: int = 16, progress: bool = False):
    """{hookpoint: [len(texts), d] float32} and {hookpoint: mean token norm} (the norm of
    typical activations, averaged over every real token)."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    device = model_device(model)
    # early stop: the layers after the last hookpoint are not computed
    cap = Capture(model, hookpoints, early_stop=True, to=None)
    pooled = {name: [] for name in cap.records}
    norm_sum = {name: 0.0 for name in cap.records}
    ntok = 0
    it = range(0, len(texts), batch_size)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="activations", unit="batch")
    with cap:
        for s in it:
            batch = tokenize(tokenizer, texts[s:s + batch_size], device, model)
            cap.clear()
            cap.forward(**batch)
            m = batch["attention_mask"].bool()
            ntok += int(m.sum())
            for name in cap.records:
                if not cap.records[name]:
                    raise RuntimeError(f"hookpoint {name!r} was not reached by the forward")
                x = cap[name]
                if x.dim() != 3 or x.shape[:2] != m.shape:
                    raise ValueError(f"hookpoint {name!r} gives shape {tuple(x.shape)}, "
                                     f"expected [batch, tokens, d] = [{m.shape[0]}, {m.shape[1]}, d]")
                pooled[name].append(pool(x, m, position).cpu())
                norm_sum[name] += float(x.float().norm(dim=-1)[m].sum())
    return ({k: torch.cat(v) for k, v in pooled.items()},
            {k: v / max(ntok, 1) for k, v in norm_sum.items()})


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-3, iters: int = 200):
    """Logistic regression on standardised features (L-BFGS, float64).
    x [N, d], y [N] in {0, 1} -> (w [d], b) in the original feature space."""
    x = x.double()
    y = y.double()
    mu, sd = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-8)
    z = (x - mu) / sd
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y) + l2 * w.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w_raw = (w / sd).detach()
    return w_raw, float(b.detach() - (w_raw * mu).sum())


def probe_accuracy(w: torch.Tensor, b: float, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy of the probe (w [d], b) on x [N, d] with labels y [N]."""
    return float((((x.double() @ w.double() + b) > 0).long() == y.long()).double().mean())
