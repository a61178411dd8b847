"""``SparseCode``: the batch of sparse codes every SAE kind encodes to and decodes from.

Its own module because the kinds (kinds/), the SAE class and the latent tools all use it and
none of them should import another just for this type.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["SparseCode"]


@dataclass
class SparseCode:
    """A batch of sparse codes.

    values  [N, k] (dtype of the SAE) and indices [N, k] int32; index -1 marks an empty slot
    (value 0). Rows are sorted by value, descending, filled slots first. For ``topk`` k is
    the SAE's k (a slot may hold a valid index with value 0 when fewer than k latents are
    positive). For the threshold kinds the code is padded: k is the largest number of active
    latents of any row in the batch (at least 1) and shorter rows end in -1 slots; they are
    found with the top-k kernel at width 256, widened x4 while a row fills it, so memory
    follows the code's width, not d_sae.
    """

    values: torch.Tensor
    indices: torch.Tensor
    d_sae: int

    def to_dense(self) -> torch.Tensor:
        """-> [N, d_sae] dense activations (empty slots dropped)."""
        N = self.values.shape[0]
        dense = torch.zeros(N, self.d_sae + 1, dtype=self.values.dtype, device=self.values.device)
        idx = torch.where(self.indices >= 0, self.indices.long(), self.d_sae)
        dense.scatter_(1, idx, self.values)
        return dense[:, : self.d_sae]

    @property
    def l0(self) -> torch.Tensor:
        """[N] number of active (nonzero) latents per row."""
        return ((self.indices >= 0) & (self.values != 0)).sum(1)
