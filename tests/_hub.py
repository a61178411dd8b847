"""A local Hugging Face Hub cache for tests: the same tree huggingface_hub writes
(models--org--name/{refs/<rev>, snapshots/<commit>/<path> -> ../../blobs/<sha256>, blobs/})
so that with HF_HUB_OFFLINE=1 and HF_HUB_CACHE pointed at it, loading goes through
huggingface_hub's real cache code and never the network."""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import torch


def add_repo(cache: Path, repo: str, files: dict, revision: str = "main") -> str:
    """Write files {path in repo: bytes | str | dict (JSON)} as one commit of repo into the
    cache at cache; refs/<revision> points at it. Returns the commit hash."""
    rd = Path(cache) / ("models--" + repo.replace("/", "--"))
    blobs = []
    for path, data in sorted(files.items()):
        if isinstance(data, dict):
            data = json.dumps(data).encode()
        elif isinstance(data, str):
            data = data.encode()
        blobs.append((path, data, hashlib.sha256(data).hexdigest()))
    commit = hashlib.sha1(b"".join(h.encode() + p.encode() for p, _, h in blobs)).hexdigest()
    for path, data, sha in blobs:
        blob = rd / "blobs" / sha
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = rd / "snapshots" / commit / path
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(os.path.relpath(blob, link.parent), link)
    (rd / "refs").mkdir(parents=True, exist_ok=True)
    (rd / "refs" / revision).write_text(commit)
    return commit


def safetensors_bytes(tensors: dict) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tensors.items()})


def npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: v.numpy() if isinstance(v, torch.Tensor) else v
                     for k, v in arrays.items()})
    return buf.getvalue()


def torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()
