"""`acts.ActivationStore`: read an on-disk activation store.

Format (version 1) -- one directory per hookpoint:

    out_dir/                              what capture_to_store(..., out_dir) writes
      <hookpoint>/                        one store per hookpoint; ':' in a name -> '__'
        manifest.json                     {"format": "actspace.activation_store",
                                           "version": 1, "model", "revision", "hookpoint",
                                           "tokenizer", "d", "dtype", "total_rows",
                                           "docs_done", "complete", "config",
                                           "counts": {"documents", "truncated", ...},
                                           "shards": [{"file", "rows", "sha256", "xxh3_64",
                                                       "first_doc", "last_doc"}, ...]}
        shard-000000.safetensors          acts [rows, d] (dtype), token_ids [rows] int32,
        shard-000001.safetensors          doc_ids [rows] int64 (index of the document in the
        ...                               source), positions [rows] int32 (position in the
                                          model's input sequence)
        stats.safetensors, stats.json     ActivationStats of the stored rows (optional;
                                          while a job runs, a checkpoint of the first
                                          "shards" shards, "last_sha256" naming the last)
        .lock                             present while a writer runs (flock held, its pid)

Rows are tokens in source order; padding is never stored, special tokens only on request.
A store captured by N ranks under torchrun (actspace.capture.ranks) names its shards
shard-r{rank}-NNNNNN.safetensors and keeps each rank's manifest.r{rank}.json next to the
merged manifest.json ("world_size": N, "docs_done_by_rank"); its shards list rank 0's
shards, then rank 1's, ... Rows are then in source order within a shard and across the
shards of one rank, not across ranks (documents interleave: doc i is rank i % N's); every
row carries its global doc_id, and no reader here relies on order beyond that.
A shard is written to a temporary name, fsynced, renamed and only then recorded in the
manifest (replaced atomically), and shards end at document boundaries: a killed job leaves
a valid store, and `docs_done` says where a rerun resumes. Files not in the manifest are
leftovers of an interrupted write and are ignored (and overwritten on resume).

Reads check what they read: the first read of a shard in a process hashes the whole file
(xxh3_64, recorded at write time; the sha256 for stores written before it) and checks its
tensors' rows against the manifest, raising an error that names the shard; later reads of
it in the process trust it (the check is keyed by the file's inode, size and mtime). `ActivationStore.open(path, verify=False)` skips the checks.
"""
from __future__ import annotations

import bisect
import hashlib
import os
from collections import OrderedDict

import torch

from .._io import CHECKSUM, read_json, verify_file

FORMAT = "actspace.activation_store"
VERSION = 1
MANIFEST = "manifest.json"
STATS = "stats"
# on-disk dtype of each per-row field next to acts (whose dtype the manifest names)
FIELD_DTYPES = {"token_ids": torch.int32, "doc_ids": torch.int64, "positions": torch.int32}
# shards checked in this process: (path, device, inode, size, mtime_ns, checksum)
_CHECKED: set = set()


def hookpoint_dirname(name: str) -> str:
    """Directory of a hookpoint's store inside a capture out_dir."""
    return name.replace(":", "__").replace("/", "_")


class ActivationStore:
    """A read-only view of a store directory; shards are memory-mapped (safetensors).

    verify: check each shard (checksum, rows) on its first read in this process (see the
    module docstring); False reads without checking."""

    def __init__(self, path, manifest: dict, *, verify: bool = True):
        self.path = os.fspath(path)
        self.manifest = manifest
        self.shards = manifest["shards"]
        self.verify_reads = bool(verify)
        self._starts = [0]
        for s in self.shards:
            rows = s.get("rows")
            if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
                raise ValueError(f"{os.path.join(self.path, MANIFEST)}: shard "
                                 f"{s.get('file')!r} has rows={rows!r}, not a count; the "
                                 f"manifest is damaged (recapture or restore it)")
            self._starts.append(self._starts[-1] + rows)
        self._handles: dict[int, object] = {}

    def __getstate__(self) -> dict:
        """Pickle without the open shard handles (safe_open objects cannot be pickled) and
        cached shards: a DataLoader worker started by spawn reopens what it reads."""
        state = dict(self.__dict__)
        state["_handles"] = {}
        state.pop("_cache", None)
        return state

    @classmethod
    def open(cls, path, *, verify: bool = True) -> "ActivationStore":
        """Open a store directory, or a capture out_dir holding exactly one store.
        verify=False: read shards without checking them (see the class docstring)."""
        path = os.fspath(path)
        mpath = os.path.join(path, MANIFEST)
        if not os.path.exists(mpath):
            subs = sorted(s for s in (os.listdir(path) if os.path.isdir(path) else [])
                          if os.path.exists(os.path.join(path, s, MANIFEST)))
            if len(subs) == 1:
                return cls.open(os.path.join(path, subs[0]), verify=verify)
            if subs:
                raise ValueError(f"{path!r} holds several stores, open one of: "
                                 f"{[os.path.join(path, s) for s in subs]}")
            raise FileNotFoundError(f"no activation store at {path!r} (no {MANIFEST})")
        man = read_json(mpath, "activation store manifest")
        if man.get("format") != FORMAT:
            raise ValueError(f"{mpath} is not an actspace activation store")
        if man.get("version", 0) > VERSION:
            raise ValueError(f"{mpath} has format version {man['version']}; this actspace "
                             f"reads up to {VERSION}")
        return cls(path, man, verify=verify)

    # ------------------------------------------------------------------ metadata
    def __len__(self) -> int:
        return self._starts[-1]

    @property
    def d(self) -> int:
        return int(self.manifest["d"])

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.manifest["dtype"].removeprefix("torch."))

    @property
    def hookpoint(self) -> str:
        return self.manifest.get("hookpoint")

    @property
    def stats(self):
        """The ActivationStats saved with the store, or None when there are none or they
        do not cover every row (a checkpoint of a job that is still running or was
        killed: rerun the capture, or recompute with `actspace stats --recompute`)."""
        from ..stats.activation import ActivationStats

        p = os.path.join(self.path, STATS)
        if not os.path.exists(p + ".safetensors"):
            return None
        st = ActivationStats.load(p)
        return st if st.rows == len(self) else None

    def __repr__(self) -> str:
        return (f"ActivationStore({self.path!r}, rows={len(self)}, d={self.d}, "
                f"dtype={self.dtype}, shards={len(self.shards)})")

    # ------------------------------------------------------------------ reads
    def _handle(self, i: int):
        h = self._handles.get(i)
        if h is None:
            from safetensors import safe_open

            h = safe_open(os.path.join(self.path, self.shards[i]["file"]), framework="pt")
            self._handles[i] = h
        return h

    def _check(self, i: int) -> None:
        """Check shard i (checksum, and its tensors' rows against the manifest) unless this
        process already has, or verify is off; an error names the shard."""
        if not self.verify_reads:
            return
        s = self.shards[i]
        p = os.path.join(self.path, s["file"])
        what = f"shard {s['file']} of activation store {self.path}"
        try:
            st = os.stat(p)
        except FileNotFoundError:
            raise FileNotFoundError(f"{p}: {what} is missing") from None
        key = (os.path.abspath(p), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
               s.get(CHECKSUM) or s.get("sha256"))
        if key in _CHECKED:
            return
        verify_file(p, s, what)
        h = self._handle(i)
        bad = self._shape_problem(i, {k: list(h.get_slice(k).get_shape()) for k in h.keys()})
        if bad:
            raise ValueError(f"{p}: {what} does not match the manifest ({bad}); the "
                             f"manifest or the shard was altered: recapture or restore it")
        _CHECKED.add(key)

    def _shape_problem(self, i: int, shapes: dict) -> str | None:
        """What is wrong with shard i's tensor shapes (name -> shape) against the manifest's
        rows and d, or None."""
        rows = int(self.shards[i]["rows"])
        d = self.manifest.get("d")      # a view made of a bare shard list has none
        want = {"acts": [rows, int(d)] if d is not None else [rows],
                **{k: [rows] for k in FIELD_DTYPES}}
        for name, shape in want.items():
            if name in shapes and shapes[name][:len(shape)] != shape:
                return f"{name} has shape {shapes[name]}, the manifest says {shape}"
        if "acts" not in shapes:
            return "no acts tensor"
        return None

    def read(self, start: int, stop: int, field: str = "acts") -> torch.Tensor:
        """Rows [start, stop) of one field: acts [n, d], token_ids, doc_ids or positions [n]."""
        if field != "acts" and field not in FIELD_DTYPES:
            raise ValueError(f"field must be 'acts' or one of {list(FIELD_DTYPES)}, "
                             f"got {field!r}")
        n = len(self)
        if not (0 <= start <= stop <= n):
            raise IndexError(f"row range [{start}, {stop}) outside the store's {n} rows")
        parts = []
        s = bisect.bisect_right(self._starts, start) - 1
        while start < stop:
            lo, hi = self._starts[s], self._starts[s + 1]
            end = min(stop, hi)
            self._check(s)
            parts.append(self._handle(s).get_slice(field)[start - lo:end - lo])
            start, s = end, s + 1
        if not parts:
            shape = (0, self.d) if field == "acts" else (0,)
            return torch.empty(shape, dtype=self.dtype if field == "acts" else FIELD_DTYPES[field])
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def __getitem__(self, key) -> torch.Tensor:
        """store[i:j] -> acts [j - i, d]; store[i] -> [d]."""
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise ValueError("store slices must have step 1")
            return self.read(start, max(start, stop))
        if isinstance(key, int):
            if key < 0:
                key += len(self)
            return self.read(key, key + 1)[0]
        raise TypeError(f"store index must be an int or a slice, got {type(key).__name__}")

    def shard(self, i: int, field: str = "acts") -> torch.Tensor:
        """One whole field of shard i (checked on its first read in the process)."""
        self._check(i)
        return self._handle(i).get_tensor(field)

    # ------------------------------------------------------------------ iteration
    def batch_indices(self, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                      buffer_size: int = 1 << 16, drop_last: bool = False):
        """The deterministic batch order as (shard, local row) pairs, without reading data:
        yields lists of (shard index, local rows LongTensor). Shuffled: shards in a seeded
        random order stream into a buffer of buffer_size rows that is shuffled and emptied
        down to half whenever it fills; every row appears exactly once."""
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(buffer_size, int) or buffer_size < batch_size:
            raise ValueError(f"buffer_size must be an int >= batch_size, got {buffer_size!r}")
        if not shuffle:
            for a in range(0, len(self), batch_size):
                b = min(a + batch_size, len(self))
                if drop_last and b - a < batch_size:
                    return
                yield ("range", a, b)
            return
        g = torch.Generator().manual_seed(int(seed))
        order = torch.randperm(len(self.shards), generator=g).tolist()
        buf = torch.empty(0, dtype=torch.int64)      # global row ids

        def emit(buf, keep):
            perm = buf[torch.randperm(buf.numel(), generator=g)]
            n_out = (perm.numel() - keep) // batch_size * batch_size
            return [perm[i:i + batch_size] for i in range(0, n_out, batch_size)], perm[n_out:]

        for s in order:
            buf = torch.cat([buf, torch.arange(self._starts[s], self._starts[s + 1])])
            if buf.numel() >= buffer_size:
                batches, buf = emit(buf, buffer_size // 2)
                yield from (("rows", b) for b in batches)
        batches, buf = emit(buf, 0)
        yield from (("rows", b) for b in batches)
        if buf.numel() and not drop_last:
            yield ("rows", buf)

    def gather_rows(self, rows: torch.Tensor, cache: "_ShardCache | None" = None) -> torch.Tensor:
        """acts [n, d] of the global row ids rows [n], grouped by shard and taken from cache
        (iter_batches passes its own). None: a store-level cache bounded as for the default
        buffer_size, for callers that walk batch_indices themselves (decompose.train_dist);
        it lives as long as the store (never pickled)."""
        if cache is None:
            cache = self.__dict__.get("_cache")
            if cache is None:
                cache = self._cache = _ShardCache(self, (1 << 16) + self._largest_shard())
        sidx = torch.bucketize(rows, torch.tensor(self._starts[1:]), right=True)
        out = torch.empty(rows.numel(), self.d, dtype=self.dtype)
        for s in torch.unique(sidx).tolist():
            m = sidx == s
            out[m] = cache.get(s)[rows[m] - self._starts[s]]
        return out

    def _largest_shard(self) -> int:
        return max((int(s["rows"]) for s in self.shards), default=0)

    def iter_batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                     buffer_size: int = 1 << 16, start_batch: int = 0, drop_last: bool = False,
                     device=None, dtype: torch.dtype | None = None):
        """Yield acts batches [B, d] (the last may be smaller unless drop_last), in order or
        shuffled (seeded, deterministic). start_batch skips the first batches of that same
        order without reading them (exact resume of a training run). device/dtype: where
        and as what the batches arrive (non-blocking copies from pinned memory on CUDA)."""
        if not isinstance(start_batch, int) or start_batch < 0:
            raise ValueError(f"start_batch must be an int >= 0, got {start_batch!r}")
        device = None if device is None else torch.device(device)
        # the shards a shuffled batch gathers from: local to this iterator, so it is freed
        # when the iterator finishes or is dropped, and sized by rows, not by shard count
        cache = _ShardCache(self, buffer_size + self._largest_shard()) if shuffle else None
        pin = device is not None and device.type == "cuda"
        for i, item in enumerate(self.batch_indices(batch_size, shuffle=shuffle, seed=seed,
                                                    buffer_size=buffer_size,
                                                    drop_last=drop_last)):
            if i < start_batch:
                continue
            x = (self.read(item[1], item[2]) if item[0] == "range"
                 else self.gather_rows(item[1], cache))
            if dtype is not None:
                x = x.to(dtype)
            if device is not None:
                x = x.pin_memory().to(device, non_blocking=True) if pin else x.to(device)
            yield x

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        n = len(self)
        return n // batch_size if drop_last else -(-n // batch_size)

    # ------------------------------------------------------------------ integrity
    def verify(self) -> list[str]:
        """Re-hash every shard (sha256) and check its tensors' shapes against the manifest's
        rows and d; returns the names of missing, corrupt or mis-counted shards, and
        "manifest.json" when its total_rows is not the sum of the shards' rows ([] = ok)."""
        from safetensors import safe_open

        bad = []
        for i, s in enumerate(self.shards):
            p = os.path.join(self.path, s["file"])
            h = hashlib.sha256()
            try:
                with open(p, "rb") as f:
                    for block in iter(lambda: f.read(1 << 22), b""):
                        h.update(block)
                if h.hexdigest() != s["sha256"]:
                    bad.append(s["file"])
                    continue
                with safe_open(p, framework="pt") as f:
                    shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
            except Exception:        # unreadable, or a safetensors error: it is bad
                bad.append(s["file"])
                continue
            if self._shape_problem(i, shapes):
                bad.append(s["file"])
        if int(self.manifest.get("total_rows", len(self))) != len(self):
            bad.append(MANIFEST)
        return bad


class _ShardCache:
    """Whole acts shards a shuffled iteration reads rows from, at most max_rows rows
    resident, least recently used evicted first.

    Why whole shards: a shuffled batch takes scattered rows of the few shards the shuffle
    buffer spans, and reading a shard once beats a read per batch. Why bounded by rows:
    the buffer holds about buffer_size rows, so buffer_size plus one shard (the largest)
    keeps every shard it spans at once resident without ever holding the store (a bound
    by shard count would, with a small last shard). A shard evicted and needed again is
    read again: more reads, never more memory."""

    def __init__(self, store: ActivationStore, max_rows: int):
        self.store, self.max_rows = store, max_rows
        self.shards: OrderedDict[int, torch.Tensor] = OrderedDict()
        self.rows = 0                                   # rows resident now

    def get(self, s: int) -> torch.Tensor:
        x = self.shards.get(s)
        if x is not None:
            self.shards.move_to_end(s)
            return x
        x = self.store.shard(s)
        while self.shards and self.rows + x.shape[0] > self.max_rows:
            self.rows -= self.shards.popitem(last=False)[1].shape[0]
        self.shards[s] = x
        self.rows += x.shape[0]
        return x
