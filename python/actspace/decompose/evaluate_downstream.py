"""The downstream half of SAE evaluation: splice a decomposition into a model and measure
what the model loses (next-token CE and KL for causal LMs, the pooled embedding for
encoders), against the clean model and zero- and mean-ablation.

Split from evaluate.py (reconstruction metrics, evaluate_sae) to keep both readable.

Which positions are spliced: by default only real, non-special tokens. A capture job leaves
special tokens (CLS/SEP/BOS) out of the activation store unless asked to keep them
(capture_to_store(keep_special_tokens=False)), so an SAE trained on a store never saw them;
replacing them by its reconstruction would charge the SAE for inputs it was never meant to
fit (MiniLM layer 2: pooled cosine 0.898 with special tokens spliced, 0.939 without).
splice_special_tokens=True splices them too (for SAEs trained with keep_special_tokens=True).
Zero- and mean-ablation follow the same mask, so all splices are compared on equal terms;
padding is never spliced (attention ignores it either way).
"""
from __future__ import annotations

import contextlib

import torch

from ..model.hooks import output_tensor, replacing
from ..model.padding import pad_rows, real_position_ids, takes_position_ids
from .latents import reconstruct

SPLICES = ("sae", "sae_with_error", "zero_ablation", "mean_ablation")


def splice(model: torch.nn.Module, hookpoint: str, fn):
    """Replace the tensor at hookpoint by fn(x) while inside the block (the hookpoint's value
    as actspace.model.hooks defines it, input or output side). fn takes and returns
    [..., d]. Yields the resolved Hookpoint."""
    return replacing(model, hookpoint, fn)


def splice_fn(kind: str, sae, mean: torch.Tensor | None, sae_input=None, keep=None):
    """fn(x [..., d]) -> the replacement of x for splice. keep: bool [B, T], the positions
    to splice (None: all); every other row keeps x exactly. sae_input() gives the SAE's
    input when it is not x itself (a transcoder reads its hookpoint, replaces hookpoint_out)."""
    def fn(x):
        flat = x.reshape(-1, x.shape[-1])                            # [B*T, d]
        sel = (torch.ones(flat.shape[0], dtype=torch.bool, device=x.device) if keep is None
               else keep.reshape(-1).to(x.device))                   # [B*T]
        if sel.shape[0] != flat.shape[0]:
            raise ValueError(f"the spliced activation has {flat.shape[0]} rows, the batch "
                             f"{sel.shape[0]} token positions: splice needs [B, T, d]")
        out = flat.clone()
        if kind == "zero_ablation":
            out[sel] = 0
        elif kind == "mean_ablation":
            out[sel] = mean.to(device=x.device, dtype=x.dtype)
        else:
            src = flat if sae_input is None else sae_input()
            src = src.reshape(-1, src.shape[-1])                     # [B*T, d_in]
            if src.shape[0] != flat.shape[0]:
                raise ValueError(f"the SAE input has {src.shape[0]} tokens, the spliced "
                                 f"activation {flat.shape[0]}")
            if not bool(sel.any()):          # nothing to splice (an SAE refuses 0 rows)
                return x
            x_hat = reconstruct(sae, src[sel.to(src.device)])[0]     # [n_sel, d]
            if kind == "sae":
                out[sel] = x_hat.to(device=x.device, dtype=x.dtype)
            else:
                # x̂ + (x - x̂) in float64 is exactly x for float32/16 values (unless their
                # exponents differ by > ~29 bits), so the model output is unchanged
                x64, h64 = flat[sel].to(torch.float64), x_hat.to(x.device, torch.float64)
                out[sel] = (h64 + (x64 - h64)).to(x.dtype)
        return out.reshape(x.shape)
    return fn


@contextlib.contextmanager
def spliced(model, hookpoint, hookpoint_out, make_fn, kind, sae, mean, keep=None):
    """splice for an autoencoder, or for a transcoder: a pass-through hook at hookpoint
    keeps the SAE input of this forward, the splice at hookpoint_out uses it."""
    if not hookpoint_out or hookpoint_out == hookpoint:
        with splice(model, hookpoint, make_fn(kind, sae, mean, keep=keep)):
            yield
        return
    seen: dict = {}

    def remember(x):
        seen["x"] = x
        return x

    def sae_input():
        if "x" not in seen:
            raise ValueError(f"hookpoint {hookpoint!r} did not run before hookpoint_out "
                             f"{hookpoint_out!r} in the forward")
        return seen.pop("x")
    with splice(model, hookpoint, remember), \
            splice(model, hookpoint_out, make_fn(kind, sae, mean, sae_input, keep=keep)):
        yield


def _is_causal_lm(model) -> bool:
    name = type(model).__name__
    return "CausalLM" in name or "LMHead" in name


def _tokenize(texts, tokenizer, max_length: int, device, model=None):
    """(batch dict with input_ids and attention_mask [B, T], special bool [B, T]) from
    strings (with tokenizer; padded on tokenizer.padding_side), a LongTensor [B, T] of token
    ids, or a dict holding input_ids (and optionally special_tokens_mask, taken out of the
    batch). special marks the tokenizer's special tokens; without that knowledge (ids
    without special_tokens_mask) it is all False."""
    if isinstance(texts, dict):
        batch = dict(texts)
        special = batch.pop("special_tokens_mask", None)
    elif isinstance(texts, torch.Tensor):
        batch, special = {"input_ids": texts}, None
    else:
        if tokenizer is None:
            raise ValueError("tokenizer is required when texts are strings")
        enc = tokenizer(list(texts), truncation=True, max_length=max_length,
                        return_special_tokens_mask=True)
        ids, mask, special = pad_rows(enc["input_ids"], tokenizer, enc["special_tokens_mask"])
        # only ids and mask: token_type_ids would be added as embeddings by e.g. GPT-2
        batch = {"input_ids": ids, "attention_mask": mask}
    batch.setdefault("attention_mask", torch.ones_like(batch["input_ids"]))
    if model is not None and "position_ids" not in batch and takes_position_ids(model):
        batch["position_ids"] = real_position_ids(batch["attention_mask"])
    if special is None:
        special = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
    return {k: v.to(device) for k, v in batch.items()}, special.to(device).bool()


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
                       max_length: int = 128, splice_special_tokens: bool = False) -> dict:
    """Cost of each splice in SPLICES vs the clean model on texts.

    Each splice replaces the activation at the real, non-special token positions (all real
    positions with splice_special_tokens=True; see the module docstring).
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
    n_tok = n_pos = n_seq = n_spliced = 0
    kinds = [k for k in SPLICES if k != "mean_ablation" or mean is not None]
    for chunk in _text_batches(texts, batch_size):
        batch, special = _tokenize(chunk, tokenizer, max_length, device, model)
        mask = batch["attention_mask"].bool()                    # [B, T]
        keep = mask if splice_special_tokens else mask & ~special  # [B, T] spliced positions
        n_spliced += int(keep.sum())
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
            pool_clean = (output_tensor(clean).to(torch.float64) * w).sum(1) / w.sum(1)
            n_seq += pool_clean.shape[0]
        del clean
        for kind in kinds:           # one spliced output alive at a time (vocab-sized)
            with spliced(model, hookpoint, hookpoint_out, splice_fn, kind, sae, mean,
                          keep=keep):
                out = model(**batch)
            if causal:
                lp = torch.log_softmax(out.logits[mask].to(torch.float64), -1)
                sums[kind] += ce_sum(lp)
                kl[kind] += (lp_clean.exp() * (lp_clean - lp)).sum().item()
            else:
                pooled = (output_tensor(out).to(torch.float64) * w).sum(1) / w.sum(1)
                cos = torch.nn.functional.cosine_similarity(pooled, pool_clean, dim=-1)
                sums[kind] += cos.sum().item()
                rel[kind] += ((pooled - pool_clean).norm(dim=-1)
                              / pool_clean.norm(dim=-1).clamp_min(1e-30)).sum().item()
            del out
    res = {"task": "causal_lm" if causal else "encoder", "hookpoint": hookpoint,
           "splice_special_tokens": splice_special_tokens, "n_spliced_positions": n_spliced}
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
