"""`SteeringVector`: a direction per hookpoint, found by contrasting two sets of texts.

Four estimators, all on pooled activations (one vector per text):
  * ``mean``  - difference of class means (contrastive activation addition, CAA);
  * ``pca``   - first right singular vector of the *uncentred* paired differences
                d_i = pos_i - neg_i: the direction of largest mean square of d, which, when
                the pairs share one shift, is that shift (close to ``mean``);
  * ``pca_centered`` - first principal component of the *centred* differences
                d_i - mean(d), as representation engineering (RepE, repeng) computes it:
                the direction along which the pairs' differences vary most, which need not
                be the mean shift (it removes exactly that);
  * ``probe`` - the weight vector of a logistic-regression probe (positive = 1).
Each is a direction u, oriented so that the positive texts project above the negative
ones, times a scale that makes its norm comparable to ``mean``: the mean projection of the
differences for ``pca`` and ``probe``, the mean absolute projection for ``pca_centered``
(whose mean projection may be near zero).

A vector carries its provenance (model, hookpoints, method, counts, sha256 of the data and
the mean norm of typical activations at each hookpoint, so ``alpha_units="norm"`` can scale
alpha by it). It saves to safetensors + json and to llama.cpp's GGUF control-vector format.
"""
from __future__ import annotations

import hashlib
import json
import numbers
from pathlib import Path

import torch

from . import _activations as A
from ._hooks import Intervention, add_direction, work_dtype

_METHODS = ("mean", "pca", "pca_centered", "probe")
_FORMAT = 1


def _model_name(model) -> str:
    cfg = getattr(model, "config", None)
    return (getattr(cfg, "_name_or_path", "") or getattr(model, "name_or_path", "")
            or type(model).__name__)


def _layer_of(model, hookpoint: str):
    """Decoder-layer index whose residual output `hookpoint` is (None if it is not one)."""
    from ..capture.hookpoints import layer_hookpoint, num_layers
    try:
        n = num_layers(model)
    except (ValueError, KeyError, AttributeError):
        return None
    for layer in range(n):
        if layer_hookpoint(model, layer, "resid") == hookpoint:
            return layer
    return None


def _layer_from_name(hookpoint: str):
    """Layer index of a residual-stream hookpoint named <layer list>.<i> for a layer list
    of a known family (model.layers, transformer.h, encoder.layer, ...), else None."""
    from ..capture.hookpoints import _FAMILIES
    path, dot, idx = hookpoint.rpartition(".")
    if not dot or not idx.isdigit():
        return None
    lists = {p for fam in _FAMILIES.values() for p in (fam[0], fam[0].split(".", 1)[-1])}
    return int(idx) if path in lists else None


def _split_inputs(positive, negative):
    """Two text lists (paired when negative is None: positive is [(pos, neg), ...])."""
    if negative is None:
        if not isinstance(positive, (list, tuple)) or not positive or not all(
                isinstance(p, (list, tuple)) and len(p) == 2 for p in positive):
            raise TypeError("with negative=None, positive must be a list of (positive, negative) pairs")
        pos = A.check_texts([p[0] for p in positive], "positive")
        neg = A.check_texts([p[1] for p in positive], "negative")
        return pos, neg
    return A.check_texts(positive, "positive"), A.check_texts(negative, "negative")


def _direction(method: str, xp: torch.Tensor, xn: torch.Tensor) -> torch.Tensor:
    """xp [P, d], xn [N, d] -> direction [d] (float64); see the module docstring."""
    xp, xn = xp.double(), xn.double()
    diff = xp.mean(0) - xn.mean(0)
    if method == "mean":
        return diff
    if method in ("pca", "pca_centered"):
        if xp.shape[0] != xn.shape[0]:
            raise ValueError(f"method={method!r} needs paired texts: got {xp.shape[0]} positive "
                             f"and {xn.shape[0]} negative")
        d = xp - xn                                   # [P, d] paired differences
        centred = method == "pca_centered"
        _, _, vh = torch.linalg.svd(d - d.mean(0) if centred else d, full_matrices=False)
        u = vh[0]
        proj = d @ u                                  # [P]
        # a centred PC's mean projection may be ~0: orient it by the pairs' vote instead
        vote = float(torch.sign(proj).sum()) if centred else 0.0
        if vote < 0 or vote == 0 and float(proj.mean()) < 0:
            u, proj = -u, -proj
        return u * (proj.abs().mean() if centred else proj.mean())
    w, _ = A.fit_logistic(torch.cat([xp, xn]), torch.cat([torch.ones(len(xp)), torch.zeros(len(xn))]))
    u = w / w.norm().clamp_min(1e-30)
    return u * (diff @ u)


class SteeringVector:
    """vectors: {hookpoint: [d] float32 tensor}; provenance: json-able dict."""

    def __init__(self, vectors: dict, provenance: dict | None = None):
        if not isinstance(vectors, dict) or not vectors:
            raise TypeError("vectors must be a non-empty dict {hookpoint: tensor [d]}")
        self.vectors = {}
        for k, v in vectors.items():
            if not isinstance(k, str):
                raise TypeError(f"vectors keys must be hookpoint strings, got {type(k).__name__}")
            if not isinstance(v, torch.Tensor) or v.dim() != 1 or not v.is_floating_point():
                raise TypeError(f"vectors[{k!r}] must be a float tensor of shape [d]")
            self.vectors[k] = v.detach().to("cpu", torch.float32).contiguous()
        self.provenance = dict(provenance or {})

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_contrast(cls, model, tokenizer, positive, negative=None, *, hookpoint,
                      method: str = "mean", position="last", batch_size: int = 16,
                      progress: bool = False) -> "SteeringVector":
        """Direction(s) from positive vs negative texts (two lists, or one list of pairs)
        read at `hookpoint` (a name, glob or list: one vector per hookpoint)."""
        from ..capture.hookpoints import resolve
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
        pos, neg = _split_inputs(positive, negative)
        if method in ("probe", "pca_centered") and min(len(pos), len(neg)) < 2:
            raise ValueError(f"method={method!r} needs at least 2 positive and 2 negative texts")
        names = [hp.name for hp in resolve(model, hookpoint)]
        was_training = model.training
        model.eval()
        try:
            acts, norms = A.pooled_activations(model, tokenizer, pos + neg, names, position,
                                               batch_size, progress)
        finally:
            model.train(was_training)
        vectors = {h: _direction(method, a[:len(pos)], a[len(pos):]).float() for h, a in acts.items()}
        blob = json.dumps({"positive": pos, "negative": neg}, ensure_ascii=False).encode()
        prov = {"model": _model_name(model), "hookpoints": names, "method": method,
                "position": position, "n_positive": len(pos), "n_negative": len(neg),
                "data_sha256": hashlib.sha256(blob).hexdigest(), "act_norm": norms,
                "layers": {h: _layer_of(model, h) for h in names}}
        return cls(vectors, prov)

    # ---------------------------------------------------------------- access
    @property
    def hookpoints(self) -> list[str]:
        return list(self.vectors)

    def __getitem__(self, hookpoint: str) -> torch.Tensor:
        return self.vectors[hookpoint]

    def __repr__(self) -> str:
        dims = {h: v.shape[0] for h, v in self.vectors.items()}
        return f"SteeringVector({dims}, method={self.provenance.get('method')!r})"

    def delta(self, hookpoint: str, alpha: float, alpha_units: str = "raw") -> torch.Tensor:
        """The vector added at `hookpoint` [d]: alpha * v ("raw"), or alpha times the mean
        activation norm there along the unit direction ("norm")."""
        if not isinstance(alpha, numbers.Real) or isinstance(alpha, bool):
            raise TypeError(f"alpha must be a real number, got {type(alpha).__name__}")
        alpha = float(alpha)
        v = self.vectors[hookpoint]
        if alpha_units == "raw":
            return alpha * v
        if alpha_units == "norm":
            norm = self.provenance.get("act_norm", {}).get(hookpoint)
            if norm is None:
                raise ValueError(f"alpha_units='norm' needs the activation norm at {hookpoint!r} "
                                 f"in provenance['act_norm'] (vectors from from_contrast have it)")
            return (alpha * float(norm)) * v / v.norm().clamp_min(1e-30)
        raise ValueError(f"alpha_units must be 'raw' or 'norm', got {alpha_units!r}")

    # ---------------------------------------------------------------- intervention
    def apply(self, model, alpha: float, *, positions="all", normalize: bool = False,
              alpha_units: str = "raw", hookpoints=None) -> Intervention:
        """Add alpha·v at each hookpoint (or the given subset) in every forward and generate
        step until the returned context exits (or .remove() is called).

        positions: "all"; "prompt" / "generated": inside model.generate, the tokens at
        positions before / from the end of the prompt it was given (with or without a KV
        cache, chunked prefill, a reused cache); in a plain forward, the tokens of a forward
        with an empty / a non-empty KV cache; or a slice of token indices counted over each
        row's real tokens (padding excluded). normalize=True rescales each steered token to
        its original norm. Padding tokens (attention_mask == 0 in the call of the model or
        of the base model, encoder or decoder stack that runs the hookpoint) are never
        steered."""
        hps = self.hookpoints if hookpoints is None else (
            [hookpoints] if isinstance(hookpoints, str) else list(hookpoints))
        for h in hps:
            if h not in self.vectors:
                raise ValueError(f"hookpoints: {h!r} is not one of this vector's {self.hookpoints}")
        deltas = {h: self.delta(h, alpha, alpha_units) for h in hps}
        placed: dict = {}   # (hookpoint, device, dtype) -> delta there: one copy, not one per step

        def edit(x, info, name):
            delta = deltas[name]
            if x.shape[-1] != delta.shape[0]:
                raise ValueError(f"hookpoint {name!r}: activation has d={x.shape[-1]}, "
                                 f"the steering vector has d={delta.shape[0]}")
            key = (name, x.device, work_dtype(x))
            if key not in placed:
                placed[key] = delta.to(device=x.device, dtype=key[2])
            return add_direction(x, placed[key], info, preserve_norm=normalize)

        return Intervention(model, hps, edit, positions)

    # ---------------------------------------------------------------- files
    def save(self, path) -> None:
        """`path` (.safetensors: one tensor per hookpoint) and `path` with .json (provenance)."""
        from .._io import write_atomic, write_safetensors_atomic
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": _FORMAT, "hookpoints": self.hookpoints, "provenance": self.provenance}
        tensors = {f"vector.{i}": v for i, v in enumerate(self.vectors.values())}
        write_safetensors_atomic(path, tensors, metadata={"actspace": "steering"})
        write_atomic(path.with_suffix(".json"),
                     json.dumps(meta, indent=1, ensure_ascii=False).encode())

    @classmethod
    def load(cls, path) -> "SteeringVector":
        from safetensors.torch import load_file
        path = Path(path)
        meta_path = path.with_suffix(".json")
        if not path.exists() or not meta_path.exists():
            raise FileNotFoundError(f"steering vector needs both {path} and {meta_path}")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{meta_path}: unknown steering-vector format {meta.get('format')!r}")
        tensors = load_file(str(path))
        vectors = {h: tensors[f"vector.{i}"] for i, h in enumerate(meta["hookpoints"])}
        return cls(vectors, meta["provenance"])

    def to_gguf(self, path, model_hint: str | None = None, *, skip_layer0: bool = False) -> None:
        """llama.cpp control vector: direction.<layer> per residual-stream hookpoint.
        Vectors are written as they are (raw units); llama.cpp scales them itself.

        The layer comes from provenance["layers"] or, when absent (a vector built by hand),
        from the hookpoint name (a known layer list such as model.layers.<i> or
        transformer.h.<i>). llama.cpp rejects direction.0: a layer-0 vector raises unless
        skip_layer0=True, which leaves it out with a warning."""
        import warnings

        from .gguf import write_control_vector
        layers = self.provenance.get("layers") or {}
        out = {}
        for h, v in self.vectors.items():
            layer = layers.get(h)
            if layer is None:
                layer = _layer_from_name(h)
            if layer is None:
                raise ValueError(f"hookpoint {h!r} is not a decoder layer's residual output; "
                                 f"GGUF control vectors hold only those")
            if int(layer) == 0:
                if not skip_layer0:
                    raise ValueError(f"hookpoint {h!r} is layer 0 and llama.cpp rejects "
                                     f"direction.0; pass skip_layer0=True to leave it out")
                warnings.warn(f"to_gguf: leaving out {h!r} (layer 0: llama.cpp rejects "
                              f"direction.0)", stacklevel=2)
                continue
            out[int(layer)] = v.numpy()
        if not out:
            raise ValueError("no vector left to write (only layer 0, which llama.cpp rejects)")
        write_control_vector(path, out, model_hint or self.provenance.get("model", ""))

    @classmethod
    def from_gguf(cls, path, model=None) -> "SteeringVector":
        """Read a control vector; with `model` each layer maps to its residual hookpoint
        (layer_hookpoint), without one to the llama naming 'model.layers.<layer>'."""
        from .gguf import read_control_vector
        directions, meta = read_control_vector(path)
        if model is not None:
            from ..capture.hookpoints import layer_hookpoint
            names = {l: layer_hookpoint(model, l, "resid") for l in directions}
        else:
            names = {l: f"model.layers.{l}" for l in directions}
        vectors = {names[l]: torch.from_numpy(directions[l]) for l in sorted(directions)}
        prov = {"model": meta.get("controlvector.model_hint", ""), "method": "gguf",
                "hookpoints": list(vectors), "layers": {names[l]: l for l in sorted(directions)}}
        return cls(vectors, prov)
