"""Prompts -> left-padded batches whose every prompt gets the activations it gets alone.

Attribution reads each prompt's last real token and reports positions within the prompt,
so padding must not move either: prompts are padded on the left whatever the tokenizer's
own padding side, masked, and given position ids that count real tokens only (capture's
padding helpers), so a prompt's attributions are the same alone and inside a batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch

from ..model.padding import pad_id, pad_rows, real_position_ids, takes_position_ids

__all__ = ["PromptBatch", "token_rows", "make_batch"]


@dataclass
class PromptBatch:
    inputs: dict            # input_ids, attention_mask [B, T] (+ position_ids) on the device
    lengths: list[int]      # real tokens per prompt
    offsets: list[int]      # column of each prompt's first real token (T - length)

    @property
    def mask(self) -> torch.Tensor:                       # [B, T] long
        return self.inputs["attention_mask"]


def token_rows(prompts, tokenizer, max_length: int | None = None) -> list[list[int]]:
    """Strings (tokenized with the tokenizer's special tokens) or lists of ids -> id rows."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings (or of token-id lists), "
                        "not one string")
    if isinstance(prompts, torch.Tensor):
        prompts = prompts.tolist()
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is empty")
    rows = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            if tokenizer is None:
                raise ValueError("a tokenizer is required when prompts are strings")
            row = tokenizer(p, truncation=max_length is not None,
                            max_length=max_length)["input_ids"]
        else:
            row = [int(t) for t in p]
        if not row:
            raise ValueError(f"prompt {i} has no tokens")
        rows.append(list(row))
    return rows


def make_batch(rows: list[list[int]], tokenizer, model, device) -> PromptBatch:
    """Left-padded input_ids / attention_mask (and real-token position_ids when the model
    takes them) for id rows."""
    left = SimpleNamespace(padding_side="left", pad_token_id=pad_id(tokenizer),
                           eos_token_id=None)
    ids, mask, _ = pad_rows(rows, left)
    inputs = {"input_ids": ids, "attention_mask": mask}
    if takes_position_ids(model):
        inputs["position_ids"] = real_position_ids(mask)
    T = ids.shape[1]
    return PromptBatch({k: v.to(device) for k, v in inputs.items()},
                       [len(r) for r in rows], [T - len(r) for r in rows])
