"""Latents over a dataset: per-latent statistics (LatentStats) and a sparse latent store.

`LatentStats` wraps the `stats` kernels (actspace.ops.stats latent_*) in an object that can
be updated batch by batch, merged across workers and saved. `encode_store` runs an SAE over
a whole activation store and writes its codes as a sparse latent store (same directory
layout as the activation store: manifest.json + safetensors shards, written crash-safe),
with the LatentStats and the top-T examples' token context saved beside it.

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

from .._io import write_json_atomic, write_safetensors_atomic
from .latent_examples import top_examples

FORMAT = "actspace.latent_store"     # manifest "format" (the activation store has its own)
FORMAT_VERSION = 1
_STATS_TENSORS = "latent_stats.safetensors"
_STATS_META = "latent_stats.json"
_META_KEYS = ("token_ids", "doc_ids", "positions")


def fired_mask(values: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
    """bool [N, k]: where a latent fires, the one rule of the module docstring (value > 0,
    and index >= 0 for a sparse code; a dense code [N, M] passes no indices)."""
    fired = values > 0                    # NaN > 0 is False: NaN never fires
    return fired if indices is None else fired & (indices >= 0)


def _code_parts(code):
    """(values [N, k], indices [N, k]) of a sparse code object or a (values, indices) pair."""
    if hasattr(code, "values") and hasattr(code, "indices") and not callable(code.values):
        return code.values, code.indices
    if isinstance(code, (tuple, list)) and len(code) == 2:
        return code[0], code[1]
    raise TypeError("code must have .values and .indices [N, k] or be a (values, indices) "
                    f"pair, got {type(code).__name__}")


class LatentStats:
    """Streaming per-latent statistics of sparse codes over a token stream.

    Firing counts and frequency, mean activation (over tokens where the latent fires),
    a log10-spaced histogram of firing values per latent and the top-T max-activating
    examples (value, global token index). State layout: actspace.reference.stats.latent_init.
    A latent fires where fired_mask says (value > 0; the kernels apply the same rule).

    Rows whose input activation was non-finite (update's `nonfinite` mask) are skipped: they
    never fire, are left out of n_tokens (the denominator of frequency) and counted in
    n_nonfinite, yet keep their global token index (next_token advances over them), so
    token indices stay the rows of the activation store.
    """

    def __init__(self, d_sae: int, top_t: int = 16, n_bins: int = 32, *,
                 log10_min: float = -4.0, log10_max: float = 3.0, device="cpu"):
        if not isinstance(d_sae, int) or d_sae <= 0:
            raise ValueError(f"d_sae must be a positive int, got {d_sae!r}")
        if not isinstance(top_t, int) or top_t <= 0:
            raise ValueError(f"top_t must be a positive int, got {top_t!r}")
        if not isinstance(n_bins, int) or n_bins <= 0:
            raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
        if not log10_min < log10_max:
            raise ValueError(f"log10_min must be < log10_max, got {log10_min}, {log10_max}")
        from ..ops import stats as ops_stats

        self.state = ops_stats.latent_init(d_sae, top_t=top_t, n_bins=n_bins,
                                           log10_min=log10_min, log10_max=log10_max,
                                           device=device)
        self.n_tokens = 0      # finite tokens folded in (rows of codes), fired or not
        self.n_nonfinite = 0   # rows skipped because their input had NaN/inf
        self.next_token = 0    # default token_offset of the next update

    # ------------------------------------------------------------------ accumulate
    def update(self, code, token_offset: int | None = None, *,
               nonfinite: torch.Tensor | None = None) -> "LatentStats":
        """Fold a code (values/indices [N, k], -1 = empty) in; row n is global token
        token_offset + n (default: continue after the previous update). nonfinite: bool
        [N], rows whose input had NaN/inf: skipped (see the class docstring)."""
        from ..ops import stats as ops_stats

        values, indices = _code_parts(code)
        if values.dim() != 2 or indices.shape != values.shape:
            raise ValueError(f"code values/indices must both be [N, k], got "
                             f"{list(values.shape)} and {list(indices.shape)}")
        n_bad = 0
        if nonfinite is not None:
            if nonfinite.dtype != torch.bool or nonfinite.shape != values.shape[:1]:
                raise ValueError(f"nonfinite must be a bool tensor [N={values.shape[0]}], got "
                                 f"{nonfinite.dtype} {list(nonfinite.shape)}")
            n_bad = int(nonfinite.sum())
            if n_bad:    # emptied rows never fire (index -1), whatever their values were
                indices = indices.masked_fill(nonfinite.to(indices.device)[:, None], -1)
        if token_offset is None:
            token_offset = self.next_token
        if not isinstance(token_offset, int) or token_offset < 0:
            raise ValueError(f"token_offset must be a non-negative int, got {token_offset!r}")
        dev = self.state["count"].device
        ops_stats.latent_update(self.state, values.to(dev), indices.to(dev), token_offset)
        self.n_tokens += values.shape[0] - n_bad
        self.n_nonfinite += n_bad
        self.next_token = token_offset + values.shape[0]
        return self

    def merge(self, other: "LatentStats") -> "LatentStats":
        """Fold another LatentStats (same d_sae, top_t, n_bins, range) into this one."""
        from ..ops import stats as ops_stats

        if not isinstance(other, LatentStats):
            raise TypeError(f"other must be a LatentStats, got {type(other).__name__}")
        for key in ("hist", "top_values"):
            if other.state[key].shape != self.state[key].shape:
                raise ValueError(f"other.{key} has shape {list(other.state[key].shape)}, "
                                 f"expected {list(self.state[key].shape)}")
        if not torch.equal(other.state["hist_range"], self.state["hist_range"]):
            raise ValueError("other has a different histogram range")
        merged = ops_stats.latent_merge(self.state, other.state)
        self.state = merged
        self.n_tokens += other.n_tokens
        self.n_nonfinite += other.n_nonfinite
        self.next_token = max(self.next_token, other.next_token)
        return self

    # ------------------------------------------------------------------ results
    @property
    def d_sae(self) -> int:
        return self.state["count"].shape[0]

    @property
    def counts(self) -> torch.Tensor:          # int64 [d_sae]
        return self.state["count"]

    @property
    def frequency(self) -> torch.Tensor:       # float64 [d_sae], firings per finite token
        return self.state["count"].to(torch.float64) / max(self.n_tokens, 1)

    @property
    def mean_activation(self) -> torch.Tensor:  # float64 [d_sae], mean value when firing
        return self.state["sum"] / self.state["count"].clamp_min(1)

    @property
    def hist(self) -> torch.Tensor:            # int64 [d_sae, n_bins]
        return self.state["hist"]

    @property
    def hist_edges(self) -> torch.Tensor:      # float64 [n_bins + 1]
        from ..reference.stats import latent_hist_edges

        lo, hi = self.state["hist_range"].tolist()
        return latent_hist_edges(self.state["hist"].shape[1], lo, hi)

    @property
    def top_values(self) -> torch.Tensor:      # float32 [d_sae, T], -inf = empty
        return self.state["top_values"]

    @property
    def top_tokens(self) -> torch.Tensor:      # int64 [d_sae, T], -1 = empty
        return self.state["top_tokens"]

    def dead(self) -> torch.Tensor:            # bool [d_sae]
        return self.state["count"] == 0

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> None:
        """Write latent_stats.safetensors + latent_stats.json into directory path."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        write_safetensors_atomic(path / _STATS_TENSORS, self.state)
        write_json_atomic(path / _STATS_META, {"format_version": FORMAT_VERSION,
                                                "n_tokens": self.n_tokens,
                                                "n_nonfinite": self.n_nonfinite,
                                                "next_token": self.next_token})

    @classmethod
    def load(cls, path, device="cpu") -> "LatentStats":
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / _STATS_TENSORS).is_file():
            raise FileNotFoundError(f"no {_STATS_TENSORS} in {path}")
        tensors = load_file(str(path / _STATS_TENSORS))
        meta = json.loads((path / _STATS_META).read_text())
        lo, hi = tensors["hist_range"].tolist()
        M, T = tensors["top_values"].shape
        out = cls(M, top_t=T, n_bins=tensors["hist"].shape[1], log10_min=lo, log10_max=hi,
                  device=device)
        out.state = {k: v.to(device) if k != "hist_range" else v for k, v in tensors.items()}
        out.n_tokens, out.next_token = int(meta["n_tokens"]), int(meta["next_token"])
        out.n_nonfinite = int(meta.get("n_nonfinite", 0))     # absent before it was counted
        return out


# ---------------------------------------------------------------------- store I/O
def _open_store(store):
    """An ActivationStore: `store` itself, or ActivationStore.open(store) for a path."""
    from ..capture.store import ActivationStore

    if isinstance(store, ActivationStore):
        return store
    if not isinstance(store, (str, os.PathLike)):
        raise TypeError(f"store must be a path or an ActivationStore, got {type(store).__name__}")
    return ActivationStore.open(store)


def _iter_latent_shards(root, keys):
    """Yield the requested fields of each shard of a sparse latent store, in order."""
    from safetensors import safe_open

    root = Path(root)
    for shard in read_manifest(root)["shards"]:
        with safe_open(str(root / shard["file"]), framework="pt") as f:
            names = set(f.keys())
            yield {k: f.get_tensor(k) for k in keys if k in names}


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


def read_manifest(root) -> dict:
    """The manifest of a sparse latent store."""
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"store {root}: no manifest.json")
    manifest = json.loads(path.read_text())
    if manifest.get("format", FORMAT) != FORMAT or "shards" not in manifest:
        raise ValueError(f"store {root}: manifest.json is not a sparse latent store "
                         f"(format {manifest.get('format')!r}, expected {FORMAT!r} with "
                         "'shards')")
    return manifest


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


def _reconstruct(sae, x):
    """(decode(encode(x)), code) for any decomposition (SAE, SNMF, PCA): only encode and
    decode are relied on, not __call__ (PCA has none). x [N, d_in] -> ([N, d_out], code)."""
    code = sae.encode(_sae_apply_dtype(sae, x))
    return sae.decode(code), code


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
    from safetensors.torch import load as safetensors_load
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
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": "latents",
                "complete": False, "d_sae": sae.d_sae,
                "k": sae.k, "hookpoint": getattr(sae, "hookpoint", None),
                "dtype": str(values_dtype).replace("torch.", ""),
                "source": str(Path(store.path).resolve()), "sae_sha256": sae_sha256(sae),
                "rows": 0, "nonfinite_rows": 0, "shards": []}
    done = []
    if (out / "manifest.json").is_file():         # resume after the last complete shard
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
        file = f"latents_{i:06d}.safetensors"
        rows = int(store.shards[i]["rows"])
        if i < len(done):
            if done[i]["rows"] != rows or done[i].get("source_sha256") != src_sha[i]:
                raise ValueError(f"{out}: latent shard {i} was encoded from different data "
                                 "than the store holds now: use a new directory")
            data = (out / done[i]["file"]).read_bytes()
            if hashlib.sha256(data).hexdigest() != done[i]["sha256"]:
                raise ValueError(f"{out / done[i]['file']}: sha256 does not match the "
                                 "manifest (corrupted): use a new directory")
            prev = safetensors_load(data)
            stats.update((prev["values"], prev["indices"]), offset,
                         nonfinite=prev.get("nonfinite"))   # absent in older latent stores
            manifest["shards"].append(done[i])
        else:
            vals, idxs, bads = [], [], []
            with torch.no_grad():
                for s in range(0, rows, batch_size):
                    # acts read batch by batch from the memory-mapped shard; [B, d_in]
                    x = _sae_apply_dtype(sae, store.read(offset + s,
                                                         offset + min(s + batch_size, rows)))
                    bad = ~torch.isfinite(x).all(1)                           # [B]
                    # encoded as zeros (an inf row could make a wide code), emptied below
                    v, ix = _code_parts(sae.encode(x.masked_fill(bad[:, None], 0)))
                    # stats of the values as stored, so a resumed run gives identical stats
                    v, ix = _as_stored(v, ix, bad, values_dtype)
                    bad = bad.cpu()
                    stats.update((v, ix), offset + s, nonfinite=bad)
                    vals.append(v)
                    idxs.append(ix)
                    bads.append(bad)
            tensors = _pad_cat(vals, idxs, bads, sae.k or 1, values_dtype)
            tensors.update({k: store.shard(i, k) for k in _META_KEYS})
            sha = write_safetensors_atomic(out / file, tensors)
            manifest["shards"].append({"file": file, "rows": rows, "sha256": sha,
                                       "source_sha256": src_sha[i],
                                       "nonfinite_rows": int(tensors["nonfinite"].sum())})
        offset += rows
        manifest["rows"] = offset
        manifest["nonfinite_rows"] = sum(sh.get("nonfinite_rows", 0)
                                         for sh in manifest["shards"])
        write_json_atomic(out / "manifest.json", manifest)
    stats.save(out)
    write_json_atomic(out / "top_examples.json", top_examples(out, stats, context, tokenizer))
    manifest["complete"] = True          # shards, stats and top examples all written
    write_json_atomic(out / "manifest.json", manifest)
    return stats
