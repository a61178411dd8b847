"""Interventions beyond adding a vector: directional ablation and SAE-feature steering.

Both return the same removable, exception-safe context (steer._hooks.Intervention) as
`SteeringVector.apply`, so they nest with it and respect padding and positions the same way.

`steer_with_sae` edits in the dense latent basis without reconstructing the activation:
x' = x + Σ_f (new_f - old_f) · W_dec[f]. That equals decode(modified code) + (x - decode(code))
- the SAE's reconstruction error is kept - so every direction the SAE does not model, and
every latent that was not chosen, stays exactly as it was.
"""
from __future__ import annotations

import torch

from ._hooks import Intervention, masked_update


def _directions(direction, hookpoint) -> dict[str, torch.Tensor]:
    """{hookpoint: [d] float32} from a SteeringVector or a tensor + hookpoint."""
    from .vector import SteeringVector
    if isinstance(direction, SteeringVector):
        if hookpoint is None:
            return dict(direction.vectors)
        names = [hookpoint] if isinstance(hookpoint, str) else list(hookpoint)
        missing = [h for h in names if h not in direction.vectors]
        if missing:
            raise ValueError(f"hookpoint {missing} not in the vector's {direction.hookpoints}")
        return {h: direction.vectors[h] for h in names}
    if not isinstance(direction, torch.Tensor) or direction.dim() != 1 or not direction.is_floating_point():
        raise TypeError("direction must be a SteeringVector or a float tensor of shape [d]")
    if not isinstance(hookpoint, str):
        raise TypeError("hookpoint must be a hookpoint name when direction is a tensor")
    return {hookpoint: direction.detach().float().cpu()}


def ablate(model, direction, hookpoint=None, *, add: float | None = None,
           positions="all") -> Intervention:
    """Project `direction` out of the activation: x - (x·v̂)v̂ on every steered token;
    with `add`, then add add·v̂ (ablation followed by addition: every token gets the same
    component along v̂). direction: SteeringVector (all or the given hookpoints) or [d]."""
    units = {h: v / v.norm().clamp_min(1e-30) for h, v in _directions(direction, hookpoint).items()}
    if add is not None and (not isinstance(add, (int, float)) or isinstance(add, bool)):
        raise TypeError(f"add must be a number or None, got {type(add).__name__}")

    def edit(x, info, name):
        u = units[name].to(x.device)
        if x.shape[-1] != u.shape[0]:
            raise ValueError(f"hookpoint {name!r}: activation has d={x.shape[-1]}, direction has d={u.shape[0]}")
        xf = x.float()
        new = xf - (xf @ u).unsqueeze(-1) * u
        if add is not None:
            new = new + add * u
        return masked_update(x, new.to(x.dtype), info)

    return Intervention(model, list(units), edit, positions)


def _check_sae(sae):
    for attr in ("hookpoint", "W_dec", "encode"):
        if not hasattr(sae, attr):
            raise TypeError(f"sae must have .{attr} (hookpoint, W_dec [d_sae, d], encode(x) -> code)")
    W = sae.W_dec
    if not isinstance(W, torch.Tensor) or W.dim() != 2:
        raise TypeError("sae.W_dec must be a tensor of shape [d_sae, d]")
    return W


def steer_with_sae(model, sae, features: dict, mode: str = "clamp", *,
                   positions="all") -> Intervention:
    """Set ("clamp") or shift ("add") chosen SAE latents {latent id: value} at sae.hookpoint.

    sae.encode(x [N, d]) must return a code with .values / .indices [N, k] (index -1 = empty
    slot) or a dense [N, d_sae] tensor; W_dec is [d_sae, d]."""
    W = _check_sae(sae)
    if mode not in ("clamp", "add"):
        raise ValueError(f"mode must be 'clamp' or 'add', got {mode!r}")
    if not isinstance(features, dict) or not features:
        raise TypeError("features must be a non-empty dict {latent id: value}")
    ids = []
    for f, val in features.items():
        if not isinstance(f, int) or isinstance(f, bool) or not 0 <= f < W.shape[0]:
            raise ValueError(f"features: latent id must be an int in [0, {W.shape[0]}), got {f!r}")
        if not isinstance(val, (int, float)) or isinstance(val, bool):
            raise TypeError(f"features[{f}] must be a number, got {type(val).__name__}")
        ids.append(f)
    fid = torch.tensor(ids, dtype=torch.long)
    target = torch.tensor([float(features[f]) for f in ids], dtype=torch.float32)

    def edit(x, info, name):
        flat = x.reshape(-1, x.shape[-1])                              # [N, d]
        if flat.shape[1] != W.shape[1]:
            raise ValueError(f"hookpoint {name!r}: activation has d={flat.shape[1]}, sae.W_dec has d={W.shape[1]}")
        with torch.no_grad():
            code = sae.encode(flat.to(W.dtype))
            old = _latent_values(code, fid.to(flat.device))            # [N, F] float32
        new = target.to(flat.device).expand_as(old) if mode == "clamp" else old + target.to(flat.device)
        rows = W[fid.to(W.device)].to(device=flat.device, dtype=torch.float32)   # [F, d]
        delta = (new - old) @ rows                                     # [N, d]
        out = (flat.float() + delta).to(x.dtype).reshape(x.shape)
        return masked_update(x, out, info)

    return Intervention(model, [sae.hookpoint], edit, positions)


def _latent_values(code, fid: torch.Tensor) -> torch.Tensor:
    """Dense values of latents fid [F] from a sparse (values/indices [N, k]) or dense code."""
    if isinstance(code, torch.Tensor):
        return code[:, fid].float()
    if isinstance(code, (tuple, list)) and len(code) == 2:
        values, indices = code
    else:
        values, indices = getattr(code, "values", None), getattr(code, "indices", None)
    if not isinstance(values, torch.Tensor) or not isinstance(indices, torch.Tensor):
        raise TypeError("sae.encode must return a dense tensor or a code with .values/.indices")
    hit = indices.unsqueeze(-1) == fid                                 # [N, k, F]; -1 never matches
    return (values.float().unsqueeze(-1) * hit).sum(1)
