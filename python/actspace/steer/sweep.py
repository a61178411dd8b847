"""`steering_sweep`: the effect and the cost of a steering vector over a range of alphas.

For each alpha (and, with per_hookpoint=True, each of the vector's hookpoints alone) the
model runs on neutral text with the vector applied and the row records
  * ``effect``: the target - the projection of a pooled activation on a probe direction,
    a logit difference between two token sets at the last token, or a user callable;
  * the cost: for causal LMs the KL divergence KL(unsteered || steered) of next-token
    distributions averaged over real tokens, and the perplexity of the text under the
    steered model; for encoders the mean cosine change 1 - cos of the pooled embedding.
so alpha can be picked from evidence: the largest effect still cheap in KL/perplexity.
"""
from __future__ import annotations

import json
import math

import torch

from . import _activations as A


class SweepResult(list):
    """A list of row dicts, with to_json() and a plain-text table()."""

    def to_json(self, path=None) -> str:
        text = json.dumps(list(self), indent=1)
        if path is not None:
            from .._io import write_atomic
            write_atomic(path, text.encode())
        return text

    def table(self) -> str:
        if not self:
            return "(no rows)"
        cols = list(self[0])
        fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
        cells = [[fmt(r.get(c)) for c in cols] for r in self]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
        lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths))]
        lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
        return "\n".join(lines)


def _is_causal(model) -> bool:
    can = getattr(model, "can_generate", None)
    return bool(can()) if callable(can) else bool(getattr(getattr(model, "config", None), "is_decoder", False))


def _final_hidden(out) -> torch.Tensor:
    hs = getattr(out, "hidden_states", None)
    if hs:
        return hs[-1]
    last = getattr(out, "last_hidden_state", None)
    if last is None:
        raise ValueError("the model output has neither hidden_states nor last_hidden_state")
    return last


def _make_target(target, model, pooling):
    """-> (fn(outputs, batch, readout) -> [B] float64, hookpoint to read or None)."""
    if target is None:
        return None, None
    if callable(target):
        def fn(out, batch, readout):
            return torch.as_tensor(target(out, batch), dtype=torch.float64).reshape(-1)
        return fn, None
    if not isinstance(target, dict) or len({"probe", "logit_diff"} & set(target)) != 1:
        raise TypeError("target must be None, a callable(outputs, batch), {'probe': direction "
                        "[d], 'hookpoint': optional name} or {'logit_diff': (pos_ids, neg_ids)}")
    if "logit_diff" in target:
        pos_ids, neg_ids = (torch.as_tensor(list(t), dtype=torch.long) for t in target["logit_diff"])
        if not len(pos_ids) or not len(neg_ids):
            raise ValueError("target['logit_diff'] needs two non-empty token-id sets")

        def fn(out, batch, readout):
            last = A.pool(out.logits, batch["attention_mask"], "last").double()   # [B, V]
            return last[:, pos_ids].mean(1) - last[:, neg_ids].mean(1)
        return fn, None
    from .vector import SteeringVector
    probe = target["probe"]
    hookpoint = target.get("hookpoint")
    if isinstance(probe, SteeringVector):
        probe = probe[hookpoint] if hookpoint in probe.vectors else next(iter(probe.vectors.values()))
    if not isinstance(probe, torch.Tensor) or probe.dim() != 1:
        raise TypeError("target['probe'] must be a tensor [d] or a SteeringVector")
    unit = probe.double().cpu() / probe.double().norm().clamp_min(1e-30)

    def fn(out, batch, readout):
        x = readout if hookpoint is not None else _final_hidden(out)
        return A.pool(x, batch["attention_mask"], pooling).double().cpu() @ unit
    return fn, hookpoint


def _costs(out, base, batch, causal, pooling) -> dict[str, float]:
    """Sums over the batch (divided by counts by the caller): KL and NLL over real tokens
    (causal LMs) or cosine change of pooled embeddings (encoders)."""
    m = batch["attention_mask"].bool()
    if causal:
        lp = torch.log_softmax(out.logits.double(), -1)
        lb = torch.log_softmax(base.logits.double(), -1)
        kl = (lb.exp() * (lb - lp)).sum(-1)                    # [B, T]
        nxt = m[:, :-1] & m[:, 1:]                             # real -> real token pairs
        nll = -lp[:, :-1].gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
        return {"kl": float(kl[m].sum()), "n_tok": int(m.sum()),
                "nll": float(nll[nxt].sum()), "n_next": int(nxt.sum())}
    a = A.pool(_final_hidden(out), m, pooling).double()
    b = A.pool(_final_hidden(base), m, pooling).double()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    return {"cos_change": float((1 - cos).sum()), "n_text": int(m.shape[0])}


@torch.no_grad()
def steering_sweep(model, tokenizer, vector, alphas, *, neutral_texts, target=None,
                   alpha_units: str = "raw", positions="all", normalize: bool = False,
                   per_hookpoint: bool = False, pooling: str = "mean", batch_size: int = 8,
                   progress: bool = False) -> SweepResult:
    """Rows {alpha, hookpoint, effect?, kl, perplexity} (causal LMs) or {..., cos_change}
    (encoders), one per alpha (per hookpoint with per_hookpoint=True)."""
    from ..capture.hookpoints import first_tensor, resolve
    from .vector import SteeringVector
    if not isinstance(vector, SteeringVector):
        raise TypeError(f"vector must be a SteeringVector, got {type(vector).__name__}")
    alphas = list(alphas) if not isinstance(alphas, (int, float)) else [alphas]
    if not alphas or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in alphas):
        raise ValueError("alphas must be a non-empty sequence of numbers")
    texts = A.check_texts(neutral_texts, "neutral_texts")
    if pooling not in ("mean", "last"):
        raise ValueError(f"pooling must be 'mean' or 'last', got {pooling!r}")
    causal = _is_causal(model)
    fn, read_hp = _make_target(target, model, pooling)
    want_hidden = fn is not None and read_hp is None and isinstance(target, dict) and "probe" in target
    device = A.model_device(model)
    batches = [A.tokenize(tokenizer, texts[s:s + batch_size], device, model)
               for s in range(0, len(texts), batch_size)]
    readout = {}
    read_module = resolve(model, read_hp)[0] if read_hp else None

    def run(batch):
        # the readout hook is registered after any steering hook, so it reads steered values
        h = None
        if read_module is not None:
            hook = (lambda m, a, o: readout.__setitem__("x", first_tensor(o))) if read_module.side == "output" \
                else (lambda m, a: readout.__setitem__("x", first_tensor(a)))
            h = (read_module.module.register_forward_hook(hook) if read_module.side == "output"
                 else read_module.module.register_forward_pre_hook(hook))
        try:
            return model(**batch, output_hidden_states=True) if want_hidden else model(**batch)
        finally:
            if h is not None:
                h.remove()

    was_training = model.training
    model.eval()
    try:
        base = [run(b) for b in batches]
        groups = [[h] for h in vector.hookpoints] if per_hookpoint else [vector.hookpoints]
        grid = [(g, a) for g in groups for a in alphas]
        if progress:
            from tqdm import tqdm
            grid = tqdm(grid, desc="sweep", unit="point")
        rows = SweepResult()
        for group, alpha in grid:
            sums: dict[str, float] = {}
            effects = []
            with vector.apply(model, float(alpha), positions=positions, normalize=normalize,
                              alpha_units=alpha_units, hookpoints=group):
                for b, b0 in zip(batches, base):
                    out = run(b)
                    for k, v in _costs(out, b0, b, causal, pooling).items():
                        sums[k] = sums.get(k, 0) + v
                    if fn is not None:
                        effects.append(fn(out, b, readout.get("x")))
            row = {"alpha": float(alpha), "hookpoint": "+".join(group)}
            if fn is not None:
                row["effect"] = float(torch.cat(effects).mean())
            if causal:
                row["kl"] = sums["kl"] / max(sums["n_tok"], 1)
                row["perplexity"] = math.exp(sums["nll"] / sums["n_next"]) if sums["n_next"] else float("nan")
            else:
                row["cos_change"] = sums["cos_change"] / max(sums["n_text"], 1)
            rows.append(row)
    finally:
        model.train(was_training)
    return rows
