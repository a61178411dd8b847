"""Sparse autoencoders and transcoders (``acts.SAE``) on the topk_encode / sparse_decode ops.

One class covers every kind, because they differ only in how the code is selected:

- ``topk``       TopK(relu(pre)) per row (Gao et al. 2024);
- ``batchtopk``  top k·N over the whole batch while training; at inference every latent
                 whose relu(pre) exceeds the learned scalar ``threshold`` (Bussmann et al.);
- ``jumprelu``   relu(pre) where pre > threshold[m], thresholds per latent, trained with a
                 straight-through estimator (Rajamanoharan et al. 2024);
- ``relu``       relu(pre), trained with an L1 penalty.

pre = (x - b_dec) @ W_encᵀ + b_enc (b_dec subtracted only when ``apply_b_dec_to_input``).
A transcoder is the same class with ``d_out != d_in`` (or ``hookpoint_out`` set): it reads
one hookpoint and reconstructs another. Parameters use the ops layout: W_enc [d_sae, d_in],
W_dec [d_sae, d_out]; interop.py converts to the SAELens / sparsify / Gemma Scope layouts.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from .. import ops
from .base import Decomposition

__all__ = ["SAE", "SparseCode", "KINDS"]

KINDS = ("topk", "batchtopk", "jumprelu", "relu")
_FIRST_WIDTH = 256   # first code width tried by the threshold kinds' encode


@dataclass
class SparseCode:
    """A batch of sparse codes.

    values  [N, k] (dtype of the SAE) and indices [N, k] int32; index -1 marks an empty slot
    (value 0). Rows are sorted by value, descending, filled slots first. For ``topk`` k is
    the SAE's k (a slot may hold a valid index with value 0 when fewer than k latents are
    positive). For the other kinds the code is padded: k is the largest number of active
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


_INIT_BLOCK = 4096    # rows per independently seeded block of the initial dictionary


def _init_blocks(seed: int, lo: int, hi: int, d_in: int, d_out: int):
    """Yield (offset from lo, W_enc rows [n, d_in], W_dec rows [n, d_out]) covering rows
    lo..hi of the initial dictionary of an SAE seeded with seed: random unit decoder rows,
    the encoder tied to them when d_in == d_out (else its own random unit rows). Row block
    b (of _INIT_BLOCK rows) comes from its own generator seeded (seed, b), so any slice is
    drawn without the rest of the dictionary, one block in memory at a time."""
    if hi <= lo:
        return
    for b in range(lo // _INIT_BLOCK, (hi - 1) // _INIT_BLOCK + 1):
        g = torch.Generator().manual_seed((seed * 1_000_003 + b) % 2 ** 63)
        a = b * _INIT_BLOCK
        W = torch.randn(_INIT_BLOCK, d_out, generator=g, dtype=torch.float32)
        E = W if d_in == d_out else torch.randn(_INIT_BLOCK, d_in, generator=g,
                                                dtype=torch.float32)
        s, e = max(lo - a, 0), min(hi - a, _INIT_BLOCK)
        dec = W[s:e] / W[s:e].norm(dim=1, keepdim=True)
        enc = dec if d_in == d_out else E[s:e] / E[s:e].norm(dim=1, keepdim=True)
        yield a + s - lo, enc, dec


def init_rows(seed: int, lo: int, hi: int, d_in: int, d_out: int):
    """Rows lo..hi of the initial (W_enc [hi-lo, d_in], W_dec [hi-lo, d_out]) of an SAE
    seeded with seed (see _init_blocks)."""
    W_enc = torch.empty(max(hi - lo, 0), d_in)
    W_dec = torch.empty(max(hi - lo, 0), d_out)
    for at, enc, dec in _init_blocks(seed, lo, hi, d_in, d_out):
        W_enc[at:at + enc.shape[0]] = enc
        W_dec[at:at + dec.shape[0]] = dec
    return W_enc, W_dec


def _check_int(value, name, lo=1):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")
    return value


class SAE(nn.Module, Decomposition):
    """A sparse autoencoder or transcoder.

    SAE(d_in, d_sae, kind="topk", k=32, *, d_out=None, hookpoint=None, hookpoint_out=None,
        apply_b_dec_to_input=None, dtype=torch.float32, device=None, init=True)

    Attributes: d_in, d_out, d_sae, k (None for relu / jumprelu), kind, hookpoint
    (= hookpoint_in), hookpoint_out, dtype, device, apply_b_dec_to_input.
    Parameters: W_enc [d_sae, d_in], b_enc [d_sae], W_dec [d_sae, d_out], b_dec [d_out],
    threshold ([d_sae] parameter for jumprelu, scalar buffer for batchtopk).
    """

    def __init__(self, d_in, d_sae, kind="topk", k=None, *, d_out=None, hookpoint=None,
                 hookpoint_out=None, apply_b_dec_to_input=None, dtype=torch.float32,
                 device=None, init: bool = True):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.d_in = _check_int(d_in, "d_in")
        self.d_sae = _check_int(d_sae, "d_sae")
        self.d_out = self.d_in if d_out is None else _check_int(d_out, "d_out")
        if kind in ("topk", "batchtopk"):
            if k is None:
                raise ValueError(f"k is required for kind={kind!r}")
            _check_int(k, "k")
            if k > self.d_sae:
                raise ValueError(f"k must be <= d_sae={self.d_sae}, got {k}")
        elif k is not None:
            raise ValueError(f"k must be None for kind={kind!r} (its sparsity is not fixed)")
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        if apply_b_dec_to_input is None:
            apply_b_dec_to_input = self.d_out == self.d_in and hookpoint_out is None
        if apply_b_dec_to_input and self.d_out != self.d_in:
            raise ValueError("apply_b_dec_to_input=True needs d_out == d_in "
                             f"(got d_in={self.d_in}, d_out={self.d_out})")
        self.kind, self.k = kind, k
        self.hookpoint, self.hookpoint_out = hookpoint, hookpoint_out
        self.apply_b_dec_to_input = bool(apply_b_dec_to_input)
        fk = dict(dtype=dtype, device=device)
        self.W_enc = nn.Parameter(torch.zeros(self.d_sae, self.d_in, **fk))
        self.b_enc = nn.Parameter(torch.zeros(self.d_sae, **fk))
        self.W_dec = nn.Parameter(torch.zeros(self.d_sae, self.d_out, **fk))
        self.b_dec = nn.Parameter(torch.zeros(self.d_out, **fk))
        if kind == "jumprelu":
            self.threshold = nn.Parameter(torch.full((self.d_sae,), 1e-3, **fk))
        elif kind == "batchtopk":
            # running estimate of the smallest selected activation (see train_step)
            self.register_buffer("threshold", torch.zeros((), **fk))
        else:
            self.threshold = None
        self.extra_cfg: dict = {}  # fields read from a foreign cfg.json, written back on save
        if init:    # init=False: the caller writes every weight (loading, sharding)
            self.init_weights()

    # ------------------------------------------------------------------ properties
    @property
    def hookpoint_in(self):
        return self.hookpoint

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    @property
    def is_transcoder(self) -> bool:
        return self.d_out != self.d_in or self.hookpoint_out is not None

    def extra_repr(self):
        return (f"kind={self.kind}, d_in={self.d_in}, d_sae={self.d_sae}, d_out={self.d_out}, "
                f"k={self.k}, hookpoint={self.hookpoint!r}")

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None, *, seed: int | None = None,
                     rows: tuple[int, int] | None = None):
        """Decoder rows random unit vectors; encoder tied to the decoder (transpose in the
        SAELens layout) when d_in == d_out, as in Gao et al.; biases zero.

        The rows come from init_rows(seed): seed is drawn from generator (or torch's global
        RNG) unless given. rows=(lo, hi): this SAE is rows lo..hi of a wider one with that
        seed (latent sharding draws only its slice, yet equals the whole SAE's rows)."""
        if seed is None:
            seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
        lo, hi = rows if rows is not None else (0, self.d_sae)
        if hi - lo != self.d_sae:
            raise ValueError(f"rows {rows} must span d_sae={self.d_sae} rows")
        for at, enc, dec in _init_blocks(seed, lo, hi, self.d_in, self.d_out):
            self.W_enc[at:at + enc.shape[0]].copy_(enc)
            self.W_dec[at:at + dec.shape[0]].copy_(dec)
        self.b_enc.zero_()
        self.b_dec.zero_()

    @torch.no_grad()
    def normalize_decoder(self):
        """Rescale decoder rows to unit norm (zero rows left alone)."""
        n = self.W_dec.norm(dim=1, keepdim=True)
        self.W_dec.div_(torch.where(n > 0, n, torch.ones_like(n)))

    # ------------------------------------------------------------------ forward paths
    def _check_x(self, x, name="x"):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != self.d_in:
            raise ValueError(f"{name} must have shape [N, d_in={self.d_in}], got {list(x.shape)}")
        return x.to(device=self.device, dtype=self.dtype)

    def _enc_bias_in(self):
        return self.b_dec if self.apply_b_dec_to_input else None

    def preactivation(self, x):
        """x [N, d_in] -> pre [N, d_sae] (dense; for training the dense kinds and tests)."""
        x = self._check_x(x)
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc.T + self.b_enc

    def encode(self, x) -> SparseCode:
        """x [N, d_in] -> SparseCode (see SparseCode for the padded form of non-TopK kinds)."""
        x = self._check_x(x)
        if self.kind == "topk":
            v, i = ops.topk_encode(x, self.W_enc, self.b_enc, self.k,
                                   b_dec=self._enc_bias_in(), activation="relu")
            return SparseCode(v, i, self.d_sae)
        if self.kind == "batchtopk":
            thr = self.threshold.expand(self.d_sae)
        elif self.kind == "jumprelu":
            thr = self.threshold
        else:  # relu: only strictly positive latents are active
            thr = torch.zeros(self.d_sae, dtype=self.dtype, device=self.device)
        # every active latent, in a code only as wide as needed: start at k = 256 and widen
        # (x4) only while some row fills every slot; never a [N, d_sae] buffer for a sparse
        # SAE (a JumpReLU SAE of 1M latents fires ~100 per token)
        k = min(self.d_sae, _FIRST_WIDTH)
        while True:
            v, i = ops.topk_encode(x, self.W_enc, self.b_enc, k, b_dec=self._enc_bias_in(),
                                   activation="relu", threshold=thr.detach())
            width = int((i >= 0).sum(1).max()) if i.shape[0] else 0
            if width < k or k == self.d_sae:
                break
            k = min(self.d_sae, 4 * k)
        width = max(width, 1)
        return SparseCode(v[:, :width], i[:, :width], self.d_sae)

    def decode(self, code) -> torch.Tensor:
        """SparseCode (or dense acts [N, d_sae]) -> x_hat [N, d_out]."""
        if isinstance(code, SparseCode):
            return ops.sparse_decode(code.values, code.indices, self.W_dec, self.b_dec)
        if isinstance(code, torch.Tensor):
            if code.dim() != 2 or code.shape[1] != self.d_sae:
                raise ValueError(f"code must be a SparseCode or a dense tensor [N, d_sae="
                                 f"{self.d_sae}], got shape {list(code.shape)}")
            return code.to(self.dtype) @ self.W_dec + self.b_dec
        raise TypeError(f"code must be a SparseCode or a torch.Tensor, got {type(code).__name__}")

    def forward(self, x):
        """x [N, d_in] -> (reconstruction [N, d_out], SparseCode)."""
        code = self.encode(x)
        return self.decode(code), code

    # ------------------------------------------------------------------ decomposition API
    def fit(self, data, **options) -> "SAE":
        """Train in place on data (tensor, iterable of tensors or store); see train_sae."""
        from .train import train_sae
        train_sae(data, saes=[self], **options)
        return self

    def save(self, path: str | os.PathLike, format: str = "saelens") -> None:
        """Write a directory in the SAELens (default), sparsify or gemmascope layout."""
        from .interop import save_sae
        save_sae(self, path, format=format)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device=None, dtype=None) -> "SAE":
        """Read an SAELens dir, a sparsify dir or a Gemma Scope params.npz (or its dir)."""
        from .interop import load_sae
        return load_sae(path, device=device, dtype=dtype)
