"""Token rows -> one padded batch, shared by evaluation (decompose.evaluate_downstream) and
steering (steer.activations), so both pad, mask and position tokens the same way.

Padding follows tokenizer.padding_side; the pad id is the tokenizer's pad token, else its
eos token, else 0 (padded positions are masked, so any id does; the caller's tokenizer is
never changed to give it a pad token). For models whose forward takes position_ids the
batch gets positions that count real tokens only, as generate does: a left-padded text
then gets exactly the activations and logits it gets alone (GPT-2, for one, does not
derive them from the mask itself).
"""
from __future__ import annotations

import inspect

import torch


def pad_id(tokenizer) -> int:
    for tid in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if tid is not None:
            return int(tid)
    return 0


def pad_rows(rows, tokenizer, flags=None):
    """rows: lists of token ids -> (input_ids [B, T] long, attention_mask [B, T] long,
    flags [B, T] bool or None). flags (optional): one list of 0/1 per row (e.g. the
    tokenizer's special_tokens_mask), padded with True (padding is never a real token)."""
    B, T = len(rows), max(map(len, rows), default=0)
    left = getattr(tokenizer, "padding_side", "right") == "left"
    ids = torch.full((B, T), pad_id(tokenizer), dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.long)
    out_flags = None if flags is None else torch.ones(B, T, dtype=torch.bool)
    for b, row in enumerate(rows):
        at = slice(T - len(row), T) if left else slice(0, len(row))
        ids[b, at] = torch.tensor(row, dtype=torch.long)
        mask[b, at] = 1
        if flags is not None:
            out_flags[b, at] = torch.tensor(flags[b], dtype=torch.bool)
    return ids, mask, out_flags


def takes_position_ids(model) -> bool:
    try:
        return "position_ids" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def real_position_ids(mask: torch.Tensor) -> torch.Tensor:
    """attention_mask [B, T] -> position_ids [B, T]: 0, 1, ... over each row's real tokens
    (padding gets 1, a valid position its mask hides anyway)."""
    return (mask.long().cumsum(1) - 1).masked_fill(mask == 0, 1)
