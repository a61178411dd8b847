"""Atomic training checkpoints with everything an exact resume needs.

One file, ``checkpoint.safetensors`` (written to a temp name, fsynced, renamed): tensors of
every SAE (parameters and buffers), its Adam state and its last-fired token counters, and
the torch RNG state; the JSON metadata holds the loop position (step, epoch, batch in
epoch, tokens), skipped-batch count, history, the SAE configurations and the run arguments
that fix the batches and the schedule (batch_size, seed, steps, epochs, shuffle). A resume
with other SAEs or other such arguments would silently train on other data or another
schedule than the checkpoint's position means, so it is refused, naming the argument.
Nothing is pickled.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .._io import write_safetensors_atomic

CHECKPOINT = "checkpoint.safetensors"
VERSION = 1


def _same_layout(found: str, mine: str) -> bool:
    """checkpoint.rank{r}-of-{W}: every rank of the same W shares the layout."""
    if found == mine:
        return True
    return found.split("-of-")[-1] == mine.split("-of-")[-1] and "-of-" in mine


def sae_config(sae):
    return {"kind": sae.kind, "d_in": sae.d_in, "d_sae": sae.d_sae, "d_out": sae.d_out,
            "k": sae.k}


def save_checkpoint(out_dir, saes, opts, last_fired, loop: dict, run: dict | None = None,
                    name: str = CHECKPOINT):
    """loop: JSON-able dict (step, epoch, batch, tokens, skipped, history ...); run: the
    JSON-able arguments a resume must repeat (see _check_run)."""
    tensors = {"rng": torch.get_rng_state()}
    groups = []
    for s, (sae, opt, fired) in enumerate(zip(saes, opts, last_fired)):
        for n, t in sae.state_dict().items():
            tensors[f"sae{s}.{n}"] = t
        sd = opt.state_dict()
        for pid, st in sd["state"].items():
            for key, t in st.items():
                tensors[f"opt{s}.{pid}.{key}"] = t.reshape(-1) if t.dim() == 0 else t
        groups.append([{k: v for k, v in g.items()} for g in sd["param_groups"]])
        tensors[f"fired{s}"] = fired
    meta = dict(loop, version=VERSION, configs=[sae_config(s) for s in saes],
                param_groups=groups, run=run or {})
    write_safetensors_atomic(Path(out_dir) / name, tensors, {"state": json.dumps(meta)})


def _check_run(f, found: list, want: list, found_run: dict, run: dict) -> None:
    """ValueError naming every argument in which this run differs from the checkpoint's
    (SAE fields such as k or kind, run arguments such as batch_size). Run arguments the
    checkpoint does not record (one written before they were) are not checked."""
    if len(found) != len(want):
        raise ValueError(f"{str(f)!r}: checkpoint holds {len(found)} SAE(s), this run trains "
                         f"{len(want)}; use another out_dir or resume=False")
    diffs = [(key, old.get(key), new[key], f" (SAE {i})")
             for i, (old, new) in enumerate(zip(found, want))
             for key in new if old.get(key) != new[key]]
    diffs += [(key, found_run[key], run[key], "") for key in run
              if key in found_run and found_run[key] != run[key]]
    if diffs:
        was = ", ".join(f"{key}={old!r}{where}" for key, old, _, where in diffs)
        now = ", ".join(f"{key}={new!r}{where}" for key, _, new, where in diffs)
        raise ValueError(f"{str(f)!r}: checkpoint was written with {was}; this run has {now}: "
                         "resume with the same arguments, use another out_dir or resume=False")


def load_checkpoint(out_dir, saes, opts, last_fired, run: dict | None = None,
                    name: str = CHECKPOINT) -> dict | None:
    """Restore into saes / opts / last_fired in place; -> loop dict, or None if no checkpoint.
    A checkpoint of another layout there (whole vs latent-sharded, or another number of
    processes), of other SAEs or of other run arguments (see _check_run) is refused rather
    than silently restarted or continued."""
    from safetensors import safe_open

    f = Path(out_dir) / name
    others = sorted(p.name for p in Path(out_dir).glob("checkpoint*.safetensors")
                    if not _same_layout(p.name, name))
    if others:
        raise ValueError(f"{str(out_dir)!r} holds checkpoints {others} of another layout "
                         f"than this run's {name!r} (latent sharding or number of processes "
                         "changed): resume with the same layout, or use another out_dir")
    if not f.exists():
        return None
    with safe_open(str(f), framework="pt") as fh:
        meta = json.loads(fh.metadata()["state"])
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    if meta.get("version") != VERSION:
        raise ValueError(f"{str(f)!r}: checkpoint version {meta.get('version')} != {VERSION}")
    _check_run(f, meta["configs"], [sae_config(s) for s in saes], meta.get("run", {}),
               run or {})
    for s, (sae, opt) in enumerate(zip(saes, opts)):
        prefix = f"sae{s}."
        sae.load_state_dict({k[len(prefix):]: v for k, v in tensors.items()
                             if k.startswith(prefix)}, strict=True)
        state: dict = {}
        oprefix = f"opt{s}."
        for k, v in tensors.items():
            if k.startswith(oprefix):
                pid, key = k[len(oprefix):].split(".", 1)
                state.setdefault(int(pid), {})[key] = v.reshape(()) if key == "step" else v
        groups = meta["param_groups"][s]
        for g in groups:
            if "betas" in g:
                g["betas"] = tuple(g["betas"])
        opt.load_state_dict({"state": state, "param_groups": groups})
        last_fired[s].copy_(tensors[f"fired{s}"])
    torch.set_rng_state(tensors["rng"])
    return {k: v for k, v in meta.items()
            if k not in ("version", "configs", "param_groups", "run")}
