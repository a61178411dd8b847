"""Latents over a dataset: `encode_store` and the helpers decompositions share to read data.

`encode_store` runs an SAE over a whole activation store and writes its codes as a sparse
latent store (format: decompose.latent_store), with their LatentStats (stats.latent) and
the top-T examples' token context (latent_examples) saved beside it.

One firing rule everywhere (here, evaluate.py, reference/stats.py and the C++ kernels): a
latent fires on a token when its slot has an index >= 0 and a value > 0 (`fired_mask`).
A zero or negative value (a code made with activation="none", a PCA score) and NaN are not
firings: "fired" means "positively active", the quantity frequency and dead latents are about.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import torch

from .._io import remove_stale_temporaries, write_json_atomic
from ..stats.latent import LatentStats, code_parts
from . import latent_store as LS
from .latent_examples import top_examples
from .latent_store import FORMAT, FORMAT_VERSION, read_manifest   # noqa: F401 (public names)


def fired_mask(values: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
    """bool [N, k]: where a latent fires, the one rule of the module docstring (value > 0,
    and index >= 0 for a sparse code; a dense code [N, M] passes no indices)."""
    fired = values > 0                    # NaN > 0 is False: NaN never fires
    return fired if indices is None else fired & (indices >= 0)


# ---------------------------------------------------------------------- store I/O
def _open_store(store):
    """An ActivationStore: `store` itself, or ActivationStore.open(store) for a path."""
    from ..capture.store import ActivationStore

    if isinstance(store, ActivationStore):
        return store
    if not isinstance(store, (str, os.PathLike)):
        raise TypeError(f"store must be a path or an ActivationStore, got {type(store).__name__}")
    return ActivationStore.open(store)


def iter_batches(data, batch_size: int, device=None):
    """Yield [B, d] activation batches (B <= batch_size) from a tensor [N, d], a store
    path, an object with iter_batches(batch_size, shuffle=False) (an ActivationStore), or
    an iterable of [B, d] tensors or of dicts holding "acts". device: where a store's
    batches are read to (its reader copies from pinned memory without blocking); other
    batches come as they are."""
    if isinstance(data, torch.Tensor):
        if data.dim() != 2:
            raise ValueError(f"data must be [N, d], got shape {list(data.shape)}")
        yield from data.split(batch_size)
        return
    if isinstance(data, (str, os.PathLike)):
        data = _open_store(data)
    if hasattr(data, "iter_batches"):
        data = (data.iter_batches(batch_size, shuffle=False) if device is None else
                data.iter_batches(batch_size, shuffle=False, device=device))
    for b in data:
        b = b["acts"] if isinstance(b, dict) else b
        if not isinstance(b, torch.Tensor) or b.dim() != 2:
            raise TypeError(f"data batches must be [B, d] tensors, got {type(b).__name__}")
        yield from b.split(batch_size)


# ---------------------------------------------------------------------- encode_store
_HASH_CHUNK = 1 << 24        # elements hashed per step: a huge SAE is never copied whole


def sae_sha256(sae) -> str | None:
    """sha256 of an SAE's configuration and weights (every tensor of its state_dict, by
    name, dtype, shape and bytes), or None for an object without a state_dict. A latent
    store records it, so that a resumed encode_store never appends another SAE's codes
    to shards written by this one (same d_sae and k are not the same SAE)."""
    if not callable(getattr(sae, "state_dict", None)):
        return None
    h = hashlib.sha256()
    cfg = {key: getattr(sae, key, None) for key in
           ("kind", "k", "d_in", "d_sae", "d_out", "apply_b_dec_to_input")}
    h.update(json.dumps(cfg, sort_keys=True).encode())
    for name, t in sorted(sae.state_dict().items()):
        flat = t.detach().reshape(-1)
        h.update(f"{name}|{str(t.dtype)}|{list(t.shape)}".encode())
        for a in range(0, flat.numel(), _HASH_CHUNK):
            h.update(flat[a:a + _HASH_CHUNK].contiguous().cpu().view(torch.uint8).numpy())
    return h.hexdigest()


def _sae_apply_dtype(sae, x):
    """x on the decomposition's device and in its dtype (x's own where it declares none)."""
    return x.to(device=getattr(sae, "device", x.device), dtype=getattr(sae, "dtype", x.dtype))


def reconstruct(sae, x):
    """(decode(encode(x)), code) for any decomposition (SAE, SNMF, PCA): only encode and
    decode are relied on, not __call__ (PCA has none). x [N, d_in] -> ([N, d_out], code)."""
    x = _sae_apply_dtype(sae, x)
    code = sae.encode(x)
    x_hat = sae.decode(code)
    skip = getattr(sae, "skip_term", None)     # an affine skip transcoder's x @ W_skipᵀ
    extra = skip(x) if skip is not None else None
    return (x_hat if extra is None else x_hat + extra), code


def _as_stored(values, indices, nonfinite, values_dtype):
    """A batch's code as a latent shard holds it, on the CPU: values [B, k] in values_dtype,
    indices [B, k] int32, rows of non-finite input (nonfinite bool [B]) emptied (value 0,
    index -1). A value beyond values_dtype's range raises instead of being stored as inf
    (float16 tops out at 65504, and activations of some models reach far beyond)."""
    values = values.masked_fill(nonfinite.to(values.device)[:, None], 0)
    indices = indices.masked_fill(nonfinite.to(indices.device)[:, None], -1)
    if values.numel():
        peak = float(values.abs().max())
        if not math.isfinite(peak):
            raise ValueError(f"the SAE gave a non-finite latent value ({peak}) for finite input")
        limit = torch.finfo(values_dtype).max
        if peak > limit:
            raise ValueError(f"a latent value of {peak:.6g} exceeds the largest finite "
                             f"{values_dtype} ({limit:.6g}) and would be stored as inf: pass "
                             "values_dtype=torch.bfloat16 or torch.float32 "
                             "(actspace encode --values-dtype bfloat16|float32)")
    return values.to(values_dtype).cpu(), indices.to(torch.int32).cpu()


def _pad_cat(vals, idxs, bads, k_empty: int, values_dtype) -> dict:
    """One shard's codes: batches [B, k_b] padded (value 0, index -1) to the widest k_b
    (non-TopK SAEs give codes as wide as the batch's most active row); an empty shard gets
    width k_empty. bads: the batches' nonfinite masks [B], concatenated."""
    width = max([v.shape[1] for v in vals], default=k_empty)
    vals = [torch.nn.functional.pad(v, (0, width - v.shape[1])) for v in vals]
    idxs = [torch.nn.functional.pad(i, (0, width - i.shape[1]), value=-1) for i in idxs]
    return {"values": torch.cat(vals) if vals else torch.zeros(0, width, dtype=values_dtype),
            "indices": torch.cat(idxs) if idxs else torch.zeros(0, width, dtype=torch.int32),
            "nonfinite": torch.cat(bads) if bads else torch.zeros(0, dtype=torch.bool)}


def encode_store(sae, store, out_dir, *, batch_size: int = 4096,
                 values_dtype: torch.dtype = torch.float16, context: int = 8,
                 tokenizer=None, top_t: int = 16, n_bins: int = 32, progress: bool = False):
    """Encode every row of an activation store with `sae` into a sparse latent store.

    out_dir gets one latent shard per input shard (`indices` int32 [rows, k], `values`
    values_dtype [rows, k]; k = sae.k, or for non-TopK SAEs the widest code of the shard,
    shorter rows padded with index -1; `nonfinite` bool [rows]; and the store's
    token_ids/doc_ids/positions), manifest.json
    updated atomically after each shard, LatentStats (latent_stats.*) and top_examples.json
    (per latent: value, token, doc, position and the token window of +-context tokens of
    the same document, decoded to text when a tokenizer is given); the stats are of the
    values as stored (rounded to values_dtype). Rerunning on a partly
    written out_dir resumes after its last complete shard, only with the same SAE (the
    manifest records sae_sha256, see sae_sha256) and source. Returns the LatentStats.

    Rows whose activation has NaN/inf (after the cast to the SAE's dtype) are never lost
    silently: each keeps its row with an empty code (index -1) and nonfinite=True, the
    manifest counts them (nonfinite_rows, per shard and in total) and the LatentStats skip
    them (n_nonfinite; see LatentStats). A latent value too large for values_dtype (beyond
    65504 in float16) raises ValueError rather than being stored as inf."""
    from tqdm import tqdm

    if values_dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"values_dtype must be float16, bfloat16 or float32, got {values_dtype}")
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(context, int) or context < 0:
        raise ValueError(f"context must be a non-negative int, got {context!r}")
    store = _open_store(store)
    if store.d != sae.d_in:
        raise ValueError(f"store has d={store.d} but sae.d_in={sae.d_in}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)                 # of an encode that was killed mid-write
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": "latents",
                "complete": False, "d_sae": sae.d_sae,
                "k": sae.k, "hookpoint": getattr(sae, "hookpoint", None),
                "dtype": str(values_dtype).replace("torch.", ""),
                "source": str(Path(store.path).resolve()), "sae_sha256": sae_sha256(sae),
                "rows": 0, "nonfinite_rows": 0, "shards": []}
    done = []
    if (out / LS.MANIFEST).is_file():             # resume after the last complete shard
        old = read_manifest(out)
        for key in ("d_sae", "k", "dtype", "source", "sae_sha256"):
            if old.get(key) != manifest[key]:
                what = (f"latents with {key}={old.get(key)!r}, this run has "
                        f"{manifest[key]!r}" if key != "sae_sha256" else
                        "latents of an SAE it did not record (older actspace)"
                        if old.get(key) is None else
                        "another SAE's latents (its weights differ from this one's)")
                raise ValueError(f"out_dir {out} holds {what}: use a new directory")
        done = old["shards"]
    src_sha = [s["sha256"] for s in store.shards]
    stats = LatentStats(sae.d_sae, top_t=top_t, n_bins=n_bins)
    offset = 0
    for i in tqdm(range(len(store.shards)), disable=not progress, desc="encode", unit="shard"):
        rows = int(store.shards[i]["rows"])
        if i < len(done):
            if done[i]["rows"] != rows or done[i].get("source_sha256") != src_sha[i]:
                raise ValueError(f"{out}: latent shard {i} was encoded from different data "
                                 "than the store holds now: use a new directory")
            prev = LS.load_shard(out, done[i])      # checked: a corrupt shard raises
            stats.update((prev["values"], prev["indices"]), offset,
                         nonfinite=prev.get("nonfinite"))   # absent in older latent stores
            manifest["shards"].append(done[i])
        else:
            vals, idxs, bads = [], [], []
            acts = store.shard(i)        # [rows, d_in], checked on its first read
            with torch.no_grad():
                for s in range(0, rows, batch_size):
                    x = _sae_apply_dtype(sae, acts[s:s + batch_size])        # [B, d_in]
                    bad = ~torch.isfinite(x).all(1)                           # [B]
                    # encoded as zeros (an inf row could make a wide code), emptied below
                    v, ix = code_parts(sae.encode(x.masked_fill(bad[:, None], 0)))
                    # stats of the values as stored, so a resumed run gives identical stats
                    v, ix = _as_stored(v, ix, bad, values_dtype)
                    bad = bad.cpu()
                    stats.update((v, ix), offset + s, nonfinite=bad)
                    vals.append(v)
                    idxs.append(ix)
                    bads.append(bad)
            tensors = _pad_cat(vals, idxs, bads, sae.k or 1, values_dtype)
            del acts
            tensors.update({k: store.shard(i, k) for k in LS.META_KEYS})
            entry = LS.write_shard(out, i, tensors)
            manifest["shards"].append({**entry, "source_sha256": src_sha[i],
                                       "nonfinite_rows": int(tensors["nonfinite"].sum())})
        offset += rows
        manifest["rows"] = offset
        manifest["nonfinite_rows"] = sum(sh.get("nonfinite_rows", 0)
                                         for sh in manifest["shards"])
        LS.write_manifest(out, manifest)
    stats.save(out)
    write_json_atomic(out / "top_examples.json", top_examples(out, stats, context, tokenizer))
    manifest["complete"] = True          # shards, stats and top examples all written
    LS.write_manifest(out, manifest)
    return stats
