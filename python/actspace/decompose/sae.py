"""Sparse autoencoders and transcoders (``acts.SAE``) on the topk_encode / sparse_decode ops.

One class covers every kind, because they differ only in how the code is selected; what
differs lives in the kind's file (decompose/kinds/<kind>.py, registry ``KINDS``): relu,
topk, batchtopk, jumprelu (and whatever else is registered there).

pre = (x - b_dec) @ W_encᵀ + b_enc (b_dec subtracted only when ``apply_b_dec_to_input``).
A transcoder is the same class with ``d_out != d_in`` (or ``hookpoint_out`` set): it reads
one hookpoint and reconstructs another. Parameters use the ops layout: W_enc [d_sae, d_in],
W_dec [d_sae, d_out]; formats/ converts to the SAELens / sparsify / Gemma Scope layouts.

save / load look formats up in formats/registry.py, which imports nothing (the format
modules import this one and register themselves there); fit runs train_loop.py, which never
imports this module (train.py hands it the class). So neither forms an import cycle.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from .. import ops
from .base import Decomposition
from .code import SparseCode
from .kinds import KINDS, get_kind

__all__ = ["SAE", "SparseCode", "KINDS", "init_rows"]


_INIT_BLOCK = 4096    # rows per independently seeded block of the initial dictionary
# Row norm of the initial encoder: nn.Linear's default init (U(-1/√d, 1/√d)) has rows of
# norm ≈ 1/√3, and so has sparsify's encoder. Measured on MiniLM layer 3 (bench/init_study.py,
# bench/RESULTS.md): a TopK SAE started from unit-norm encoder rows ends 15-20 % higher in
# held-out FVU at equal steps than one started at 1/√3 (0.25 and 1 are both worse).
ENCODER_INIT_SCALE = 3 ** -0.5


def _init_blocks(seed: int, lo: int, hi: int, d_in: int, d_out: int):
    """Yield (offset from lo, W_enc rows [n, d_in], W_dec rows [n, d_out]) covering rows
    lo..hi of the initial dictionary of an SAE seeded with seed: random unit decoder rows,
    the encoder tied to them when d_in == d_out (else its own random directions), its rows
    of norm ENCODER_INIT_SCALE. Row block
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
        yield a + s - lo, enc * ENCODER_INIT_SCALE, dec


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
        apply_b_dec_to_input=None, skip=False, dtype=torch.float32, device=None, init=True)

    Attributes: d_in, d_out, d_sae, k (None for relu / jumprelu), kind, hookpoint
    (= hookpoint_in), hookpoint_out, dtype, device, apply_b_dec_to_input, provenance (where
    a loaded SAE came from: Hub repo, commit, file hashes; {} otherwise), training_options
    (the kind's options it was trained with, e.g. matryoshka's prefixes; {} if unknown).
    Parameters: W_enc [d_sae, d_in], b_enc [d_sae], W_dec [d_sae, d_out], b_dec [d_out],
    threshold ([d_sae] parameter for jumprelu, scalar buffer for batchtopk), W_skip
    ([d_out, d_in] with skip=True: an affine skip transcoder adds x @ W_skipᵀ to its output;
    None otherwise).
    """

    def __init__(self, d_in, d_sae, kind="topk", k=None, *, d_out=None, hookpoint=None,
                 hookpoint_out=None, apply_b_dec_to_input=None, skip: bool = False,
                 dtype=torch.float32, device=None, init: bool = True):
        super().__init__()
        spec = get_kind(kind)
        self.d_in = _check_int(d_in, "d_in")
        self.d_sae = _check_int(d_sae, "d_sae")
        self.d_out = self.d_in if d_out is None else _check_int(d_out, "d_out")
        if spec.uses_k:
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
        if spec.threshold == "per_latent":
            self.threshold = nn.Parameter(torch.full((self.d_sae,), spec.threshold_init, **fk))
        elif spec.threshold == "scalar":
            # learned outside the gradient (e.g. batchtopk's running estimate): a buffer
            self.register_buffer("threshold", torch.full((), spec.threshold_init, **fk))
        else:
            self.threshold = None
        for name, shape, value in spec.extra_params:     # the kind's own parameters
            self.register_parameter(name, nn.Parameter(
                torch.full(spec.extra_shape(shape, self), value, **fk)))
        if skip:    # zero: an untrained skip transcoder starts as a plain one
            self.W_skip = nn.Parameter(torch.zeros(self.d_out, self.d_in, **fk))
        else:
            self.register_parameter("W_skip", None)
        self.extra_cfg: dict = {}  # fields read from a foreign cfg.json, written back on save
        self.provenance: dict = {}  # set by the loaders (decompose/pretrained)
        # the kind's options as it was trained with them (Kind.recorded_options, e.g. a
        # matryoshka SAE's prefixes): set by training, saved and loaded by the formats that
        # hold them (SAELens: metadata.training_architecture_details)
        self.training_options: dict = {}
        if init:    # init=False: the caller writes every weight (loading, sharding)
            self.init_weights()

    # ------------------------------------------------------------------ properties
    @property
    def kind_spec(self):
        """This SAE's Kind (decompose/kinds): its encode, training forward, format names."""
        return KINDS[self.kind]

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
        SAELens layout) when d_in == d_out, as in Gao et al., scaled to row norm
        ENCODER_INIT_SCALE (1/√3, as nn.Linear's and sparsify's init: measured better);
        biases zero.

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

    def preactivation(self, x):
        """x [N, d_in] -> pre [N, d_sae] (dense; for training the dense kinds and tests)."""
        x = self._check_x(x)
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc.T + self.b_enc

    def encode(self, x) -> SparseCode:
        """x [N, d_in] -> SparseCode (see SparseCode for the padded form of non-TopK kinds)."""
        return self.kind_spec.encode(self, self._check_x(x))

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

    def skip_term(self, x) -> torch.Tensor | None:
        """x [N, d_in] -> x @ W_skipᵀ [N, d_out] for a skip transcoder, else None: the part
        of the output decode(code) does not hold (reconstruction = decode + skip_term)."""
        if self.W_skip is None:
            return None
        return self._check_x(x) @ self.W_skip.T

    def forward(self, x):
        """x [N, d_in] -> (reconstruction [N, d_out], SparseCode)."""
        code = self.encode(x)
        out = self.decode(code)
        if self.W_skip is not None:
            out = out + self.skip_term(x)
        return out, code

    # ------------------------------------------------------------------ decomposition API
    def fit(self, data, **options) -> "SAE":
        """Train in place on data (tensor, (x, y) pair, iterable of batches or store);
        options: those of train_sae / TrainConfig."""
        if self.W_skip is not None:
            raise ValueError("training a skip transcoder (W_skip) is not supported; "
                             "it can be loaded, evaluated and used")
        from .train_config import TrainConfig
        from .train_loop import run_training

        run_training(data, TrainConfig.from_kwargs(**options), saes=[self])
        return self

    def save(self, path: str | os.PathLike, format: str = "saelens") -> None:
        """Write the directory path in a writable registered format (saelens, sparsify,
        gemmascope, ...; see decompose/formats)."""
        from pathlib import Path

        # the registry module only: importing it runs formats/__init__, which registers the
        # built-in formats (they import this module, so it is imported here, not at the top)
        from .formats.registry import get_format

        fmt = get_format(format, writing=True)
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        fmt.save(self, p)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device=None, dtype=None, **hub) -> "SAE":
        """Read an SAE from a local directory in any registered layout (decompose/formats:
        SAELens, sparsify, Gemma Scope 1/2, Llama Scope, dictionary_learning), or from the
        Hugging Face Hub: "hf://org/repo/path/in/repo" (optionally "hf://org/repo@rev/path")
        or "RELEASE:SAE_ID" of the release registry. hub: revision=, refresh=, registry=
        (see decompose.pretrained.load_pretrained)."""
        from .formats.registry import remote

        if remote("is_remote")(path):
            return remote("load")(str(path), device=device, dtype=dtype, **hub)
        if hub:
            raise TypeError(f"unexpected argument(s) {sorted(hub)} for a local path")
        from pathlib import Path

        from .formats.registry import detect

        return detect(path).load(Path(path), device=device, dtype=dtype)

    @classmethod
    def from_pretrained(cls, release: str, sae_id: str, *, device=None, dtype=None,
                        **hub) -> "SAE":
        """The SAE sae_id of a registered release (``actspace sae list``), downloaded from
        the Hub on first use (only its files) and read from the cache afterwards."""
        from .formats.registry import remote

        return remote("from_pretrained")(release, sae_id, device=device, dtype=dtype, **hub)

    @classmethod
    def load_many(cls, source: str, pattern: str | None = None, *, device=None, dtype=None,
                  **hub) -> "dict[str, SAE]":
        """{name: SAE} for every SAE in "hf://org/repo[/folder]" (or a release name) whose
        name matches the fnmatch pattern (None: all), in natural order (layers.2 < layers.10)."""
        from .formats.registry import remote

        return remote("load_many")(source, pattern, device=device, dtype=dtype, **hub)

    def hookpoint_for(self, model, convention: str | None = None, *, out: bool = False) -> str:
        """The actspace hookpoint in model (e.g. "model.layers.12") of this SAE's hook name
        (TransformerLens/SAELens, sparsify or Gemma Scope convention; see
        actspace.model.hook_names). out=True: a transcoder's output hook (hookpoint_out)."""
        name = self.hookpoint_out if out else self.hookpoint
        if not name:
            raise ValueError(f"this SAE has no {'output ' if out else ''}hook name "
                             f"(hookpoint{'_out' if out else ''} is None); give the model's "
                             "hookpoint explicitly")
        from ..model.hook_names import hookpoint_for

        return hookpoint_for(model, name, convention=convention)
