"""Crash-safe writer of an activation store (format: see actspace.capture.store).

Why this module: a capture job runs for hours and gets killed; the store on disk must be
valid at every instant and resumable without losing or duplicating a token. Each shard is
serialised in memory, hashed, written under a temporary name, flushed, fsynced and renamed;
only then the manifest (itself written to a temporary file, fsynced and os.replace'd)
records it. Shards always end at document boundaries, so the manifest's `docs_done` says
exactly where to resume. A lock file keeps two writers apart.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os

import torch

from .store import FORMAT, MANIFEST, VERSION, STATS

LOCK = ".lock"


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes) -> None:
    """Write bytes crash-safe: temp name, flush, fsync, rename, fsync the directory. On
    failure (e.g. a full disk) the temp file is removed and the old file stays."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        why = "the disk is full" if e.errno == errno.ENOSPC else e.strerror
        raise OSError(e.errno, f"cannot write {path!r}: {why}; the store is left as it was "
                               f"before this write") from e
    _fsync_dir(os.path.dirname(path) or ".")


def write_json_atomic(path, obj) -> None:
    """A JSON file (a manifest) written with write_atomic."""
    write_atomic(path, json.dumps(obj, indent=1).encode())


def write_safetensors_atomic(path, tensors: dict, metadata: dict | None = None) -> str:
    """A safetensors shard (tensors moved to CPU, made contiguous) written with write_atomic;
    returns its sha256 for the manifest."""
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                metadata=metadata)
    write_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StoreWriter:
    """Appends whole documents to one store directory; resumes an existing one.

    path: the store directory (created). d/dtype: activation width and on-disk dtype.
    meta: manifest fields (model, revision, hookpoint, tokenizer, config ...).
    shard_rows: a shard is cut at the first document boundary at or after this many rows.
    """

    # file names; a rank of a distributed capture writes its own (capture.ranks)
    manifest_name, shard_prefix, lock_name, stats_name = MANIFEST, "shard-", LOCK, STATS

    def __init__(self, path, *, d: int, dtype: torch.dtype, meta: dict, shard_rows: int = 65536):
        if not isinstance(shard_rows, int) or shard_rows <= 0:
            raise ValueError(f"shard_rows must be a positive int, got {shard_rows!r}")
        self.path = os.fspath(path)
        self.d, self.dtype, self.shard_rows = d, dtype, shard_rows
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as e:
            raise OSError(e.errno, f"cannot create store directory {self.path!r}: "
                                   f"{e.strerror}") from e
        if not os.access(self.path, os.W_OK):
            raise PermissionError(f"store directory {self.path!r} is not writable")
        self._lock()
        try:
            self.manifest = self._load_or_new(meta)
        except BaseException:
            self._unlock()
            raise
        self._buf: list[tuple[torch.Tensor, ...]] = []
        self._buf_rows = 0
        self._docs_end = self.docs_done   # documents complete in the buffer + on disk

    # ------------------------------------------------------------------ lock
    def _lock(self) -> None:
        lock = os.path.join(self.path, self.lock_name)
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    pid = int(open(lock).read().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and pid != os.getpid() and _pid_alive(pid):
                    raise RuntimeError(f"store {self.path!r} is locked by running process "
                                       f"{pid} (lock file {lock}); two writers cannot share "
                                       f"a store") from None
                os.unlink(lock)       # stale lock of a killed writer
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            self._lockfile = lock
            return
        raise RuntimeError(f"cannot take the lock {lock}")

    def _unlock(self) -> None:
        try:
            os.unlink(self._lockfile)
        except OSError:
            pass

    # ------------------------------------------------------------------ manifest
    def _load_or_new(self, meta: dict) -> dict:
        mpath = os.path.join(self.path, self.manifest_name)
        if os.path.exists(mpath):
            with open(mpath) as f:
                man = json.load(f)
            if man.get("format") != FORMAT:
                raise ValueError(f"{mpath} is not an actspace activation store")
            for key in ("d", "dtype", "hookpoint", "model"):
                want = self.d if key == "d" else str(self.dtype) if key == "dtype" else meta.get(key)
                if man.get(key) != want:
                    raise ValueError(f"store {self.path!r} has {key}={man.get(key)!r} but this "
                                     f"job writes {key}={want!r}; use another out_dir")
            return man
        man = {"format": FORMAT, "version": VERSION, **meta, "d": self.d,
               "dtype": str(self.dtype), "total_rows": 0, "docs_done": 0,
               "complete": False, "shards": []}
        self._write_manifest(man)
        return man

    def _write_manifest(self, man: dict) -> None:
        write_json_atomic(os.path.join(self.path, self.manifest_name), man)

    @property
    def docs_done(self) -> int:
        return int(self.manifest["docs_done"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    # ------------------------------------------------------------------ append / flush
    def append(self, acts: torch.Tensor, token_ids: torch.Tensor, doc_ids: torch.Tensor,
               positions: torch.Tensor, docs_end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Add rows of whole documents. acts [n, d]; token_ids/doc_ids/positions [n];
        docs_end: every document with id < docs_end is now complete. Rows of documents the
        store already holds (id < docs_done, after a resume) are dropped. Returns the kept
        (acts, token_ids) for statistics."""
        keep = doc_ids >= self.docs_done
        if not bool(keep.all()):
            acts, token_ids, doc_ids, positions = (t[keep] for t in
                                                   (acts, token_ids, doc_ids, positions))
        self._docs_end = max(docs_end, self._docs_end)
        if acts.shape[0]:
            self._buf.append((acts.to(self.dtype), token_ids.to(torch.int32),
                              doc_ids.to(torch.int64), positions.to(torch.int32)))
            self._buf_rows += acts.shape[0]
        if self._buf_rows >= self.shard_rows:
            self.flush()
        return acts, token_ids

    def flush(self) -> None:
        """Write buffered rows as one shard and record it (no-op when empty)."""
        docs_end = max(self._docs_end, self.docs_done)
        if not self._buf:
            if docs_end > self.docs_done:   # documents with no stored tokens
                self.manifest["docs_done"] = docs_end
                self._write_manifest(self.manifest)
            return
        cols = [torch.cat(c) for c in zip(*self._buf)]
        tensors = dict(zip(("acts", "token_ids", "doc_ids", "positions"), cols))
        idx = len(self.manifest["shards"])
        name = f"{self.shard_prefix}{idx:06d}.safetensors"
        sha = write_safetensors_atomic(os.path.join(self.path, name), tensors,
                                       metadata={"format": FORMAT})
        man = dict(self.manifest)
        man["shards"] = self.manifest["shards"] + [{
            "file": name, "rows": int(cols[0].shape[0]), "sha256": sha,
            "first_doc": int(cols[2][0]), "last_doc": int(cols[2][-1])}]
        man["total_rows"] = self.manifest["total_rows"] + int(cols[0].shape[0])
        man["docs_done"] = docs_end
        self._write_manifest(man)   # on failure the old manifest stays: shard unrecorded
        self.manifest = man
        self._buf, self._buf_rows = [], 0

    def close(self, *, complete: bool = False, stats=None, extra: dict | None = None) -> None:
        """Flush, save statistics (covering exactly the recorded documents), mark complete
        when the source is exhausted or max_tokens reached, and release the lock."""
        try:
            self.flush()
            if stats is not None:
                stats.save(os.path.join(self.path, self.stats_name),
                           extra={"docs_done": self.docs_done,
                                  "total_rows": self.manifest["total_rows"]})
            if complete or extra:
                self.manifest = dict(self.manifest, complete=complete or self.complete,
                                     **(extra or {}))
                self._write_manifest(self.manifest)
        finally:
            self._unlock()

    def abort(self) -> None:
        """Drop unflushed rows and release the lock (the store stays as last recorded)."""
        self._buf, self._buf_rows = [], 0
        self._unlock()


# ------------------------------------------------------------------ tensors + json pairs
def _pair_paths(path) -> tuple[str, str]:
    path = os.fspath(path)
    stem = path[:-len(".safetensors")] if path.endswith(".safetensors") else path
    return stem + ".safetensors", stem + ".json"


def save_pair(path, tensors: dict, meta: dict) -> None:
    """path(.safetensors) holding tensors and path(.json) holding meta, each crash-safe.
    Used by the small saved objects (ActivationStats, PCA)."""
    st, js = _pair_paths(path)
    write_safetensors_atomic(st, tensors)
    write_json_atomic(js, meta)


def load_pair(path, fmt: str, what: str) -> tuple[dict, dict]:
    """(meta, tensors) written by save_pair; ValueError unless meta["format"] == fmt."""
    from safetensors.torch import load_file

    st, js = _pair_paths(path)
    with open(js) as f:
        meta = json.load(f)
    if meta.get("format") != fmt:
        raise ValueError(f"{js} is not an actspace {what} file")
    return meta, load_file(st)
