"""Interventions beyond adding a vector: directional ablation and SAE-feature steering.

Both return the same removable, exception-safe context (steer.editing.Intervention) as
`SteeringVector.apply`, so they nest with it and respect padding and positions the same way.

`steer_with_sae` edits in the dense latent basis without reconstructing the activation:
x' = x + Σ_f (new_f - old_f) · W_dec[f]. That equals decode(modified code) + (x - decode(code))
- the SAE's reconstruction error is kept - so every direction the SAE does not model, and
every latent that was not chosen, stays exactly as it was. A transcoder is handled the
same way across its two sites (encoded where it reads, the change added where it writes).
"""
from __future__ import annotations

import torch

from .editing import Intervention, masked_update, work_dtype


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
    return {hookpoint: direction.detach().cpu()}


def ablate(model, direction, hookpoint=None, *, add: float | None = None,
           positions="all") -> Intervention:
    """Project `direction` out of the activation: x - (x·v̂)v̂ on every steered token;
    with `add`, then add add·v̂ (ablation followed by addition: every token gets the same
    component along v̂). direction: SteeringVector (all or the given hookpoints) or [d]."""
    units = {h: v.double() / v.double().norm().clamp_min(1e-30)
             for h, v in _directions(direction, hookpoint).items()}
    if add is not None and (not isinstance(add, (int, float)) or isinstance(add, bool)):
        raise TypeError(f"add must be a number or None, got {type(add).__name__}")

    def edit(x, info, name):
        if x.shape[-1] != units[name].shape[0]:
            raise ValueError(f"hookpoint {name!r}: activation has d={x.shape[-1]}, "
                             f"direction has d={units[name].shape[0]}")
        xf = x.to(work_dtype(x))
        u = units[name].to(x.device, xf.dtype)
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


def _sae_sites(model, sae) -> tuple[str, str]:
    """(hookpoint read, hookpoint edited): the same for an SAE; hookpoint and hookpoint_out
    for a transcoder, which reads one activation and writes (replaces) a later one."""
    from ..model.hookpoints import resolve_one
    names = []
    for attr in ("hookpoint", "hookpoint_out"):
        spec = getattr(sae, attr, None)
        if spec is None:
            names.append(None)
            continue
        names.append(resolve_one(model, spec, f"sae.{attr}").name)
    read, write = names
    if read is None:
        raise ValueError("sae.hookpoint is None: say where the SAE reads its input")
    if bool(getattr(sae, "is_transcoder", False)) and write is None:
        raise ValueError("sae is a transcoder (d_out != d_in) without hookpoint_out: "
                         "steer_with_sae needs to know which activation it writes")
    if write is not None and write == read:
        raise ValueError(f"sae.hookpoint_out equals sae.hookpoint ({read!r}): a transcoder "
                         f"reads one activation and writes a later one")
    return read, write or read


def steer_with_sae(model, sae, features: dict, mode: str = "clamp", *,
                   positions="all") -> Intervention:
    """Set ("clamp") or shift ("add") chosen SAE latents {latent id: value} at sae.hookpoint.

    sae.encode(x [N, d_in]) must return a code with .values / .indices [N, k] (index -1 =
    empty slot) or a dense [N, d_sae] tensor; W_dec is [d_sae, d_out]. A transcoder
    (sae.hookpoint_out set) is encoded at sae.hookpoint and the change of its output,
    Σ_f (new_f - old_f) · W_dec[f], is added at sae.hookpoint_out: the result is
    decode(modified code) + (activation at hookpoint_out - decode(code)), as for an SAE."""
    W = _check_sae(sae)
    read, write = _sae_sites(model, sae)
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
    target = torch.tensor([float(features[f]) for f in ids], dtype=torch.float64)
    pending: list = []   # transcoder: the latent change read at `read`, awaiting `write`

    def change(flat):
        """[N, F] float64: new minus old value of the chosen latents for flat [N, d_in]."""
        with torch.no_grad():
            old = _latent_values(sae.encode(flat.to(W.dtype)), fid.to(flat.device))
        return (target.to(flat.device).expand_as(old) if mode == "clamp"
                else old + target.to(flat.device)) - old

    def edit(x, info, name):
        flat = x.reshape(-1, x.shape[-1])                              # [N, d]
        if read != write and name == read:
            pending[:] = [change(flat)]
            return None
        if flat.shape[1] != W.shape[1]:
            raise ValueError(f"hookpoint {name!r}: activation has d={flat.shape[1]}, sae.W_dec has d={W.shape[1]}")
        if read == write:
            diff = change(flat)
        else:
            if not pending or pending[0].shape[0] != flat.shape[0]:
                raise RuntimeError(f"transcoder: hookpoint {read!r} did not run before "
                                   f"hookpoint_out {write!r} on the same tokens")
            diff = pending.pop()
        wd = torch.promote_types(work_dtype(x), W.dtype)
        rows = W[fid.to(W.device)].to(device=flat.device, dtype=wd)   # [F, d]
        out = (flat.to(wd) + diff.to(wd) @ rows).to(x.dtype).reshape(x.shape)
        return masked_update(x, out, info)

    return Intervention(model, list(dict.fromkeys([read, write])), edit, positions)


def _latent_values(code, fid: torch.Tensor) -> torch.Tensor:
    """Dense values of latents fid [F] from a sparse (values/indices [N, k]) or dense code."""
    if isinstance(code, torch.Tensor):
        return code[:, fid].double()
    if isinstance(code, (tuple, list)) and len(code) == 2:
        values, indices = code
    else:
        values, indices = getattr(code, "values", None), getattr(code, "indices", None)
    if not isinstance(values, torch.Tensor) or not isinstance(indices, torch.Tensor):
        raise TypeError("sae.encode must return a dense tensor or a code with .values/.indices")
    hit = indices.unsqueeze(-1) == fid                                 # [N, k, F]; -1 never matches
    return (values.double().unsqueeze(-1) * hit).sum(1)
