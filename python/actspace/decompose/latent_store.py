"""The sparse latent store on disk: its manifest, its shards and their integrity.

Why its own module: encode_store writes the format, top_examples, the pipeline's feature
cards and autointerp read it; each of them needs the same rules (what a manifest must hold,
that a shard is checked before its codes are trusted) and none should need the encoder.

Layout (a directory, like the activation store):

    manifest.json             {"format": "actspace.latent_store", "format_version": 1,
                               "kind": "latents", "complete", "d_sae", "k", "hookpoint",
                               "dtype", "source", "sae_sha256", "rows", "nonfinite_rows",
                               "shards": [{"file", "rows", "sha256", "xxh3_64",
                                           "source_sha256", "nonfinite_rows"}, ...]}
    latents_NNNNNN.safetensors  indices int32 [rows, k] (-1 = empty), values [rows, k]
                              (dtype), nonfinite bool [rows], token_ids, doc_ids, positions
    latent_stats.*            LatentStats (actspace.stats.latent)
    top_examples.json         per latent, its top examples with their token windows

Each shard is written crash-safe (actspace._io) before the manifest records it; reads check
a shard's checksum (xxh3_64; sha256 for stores written before it was recorded) and rows
against the manifest before returning its tensors (verify=False skips the check).
"""
from __future__ import annotations

from pathlib import Path

from .._io import read_json, verify_file, write_json_atomic, write_safetensors_checked

FORMAT = "actspace.latent_store"     # manifest "format" (the activation store has its own)
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
META_KEYS = ("token_ids", "doc_ids", "positions")   # per-row fields copied from the source


def shard_name(i: int) -> str:
    return f"latents_{i:06d}.safetensors"


def read_manifest(root) -> dict:
    """The manifest of a sparse latent store; an error naming the directory otherwise."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"store {root}: no {MANIFEST}")
    manifest = read_json(path, "latent store manifest")
    if manifest.get("format", FORMAT) != FORMAT or "shards" not in manifest:
        raise ValueError(f"store {root}: {MANIFEST} is not a sparse latent store "
                         f"(format {manifest.get('format')!r}, expected {FORMAT!r} with "
                         "'shards')")
    return manifest


def write_manifest(root, manifest: dict) -> None:
    write_json_atomic(Path(root) / MANIFEST, manifest)


def write_shard(root, i: int, tensors: dict) -> dict:
    """Write shard i of root crash-safe; returns its manifest entry's file, rows and
    checksums (the caller adds what else it records)."""
    file = shard_name(i)
    sums = write_safetensors_checked(Path(root) / file, tensors)
    rows = int(next(iter(tensors.values())).shape[0]) if tensors else 0
    return {"file": file, "rows": rows, **sums}


def load_shard(root, entry: dict, keys=None, verify: bool = True) -> dict:
    """The tensors of the shard a manifest entry names (only keys, when given): read whole,
    checked against the entry's checksum and rows (ValueError naming the file) unless
    verify=False."""
    from safetensors import safe_open

    path = Path(root) / entry["file"]
    if verify:
        verify_file(path, entry, f"latent shard {entry['file']} of {root}")
    with safe_open(str(path), framework="pt") as f:
        names = set(f.keys())
        tensors = {k: f.get_tensor(k) for k in (keys or names) if k in names}
    if not verify:
        return tensors
    what = f"latent shard {entry['file']} of {root}"
    rows = entry.get("rows")
    for name, t in tensors.items():
        if t.dim() == 0 or t.shape[0] != rows:
            raise ValueError(f"{path}: {what} holds {name} of shape {list(t.shape)}, the "
                             f"manifest says {rows} rows; restore it or encode again into "
                             f"a new directory")
    return tensors


def iter_shards(root, keys=None, verify: bool = True):
    """Yield the requested fields of each shard of a sparse latent store, in order (each
    shard checked first, see load_shard)."""
    for entry in read_manifest(root)["shards"]:
        yield load_shard(root, entry, keys, verify)
