"""Crash-safe writer of an activation store (format: see actspace.capture.store).

Why this module: a capture job runs for hours and gets killed; the store on disk must be
valid at every instant and resumable without losing or duplicating a token. Each shard is
serialised in memory, hashed, written under a temporary name, flushed, fsynced and renamed;
only then the manifest (itself written to a temporary file, fsynced and os.replace'd)
records it. Shards always end at document boundaries, so the manifest's `docs_done` says
exactly where to resume. A lock file keeps two writers apart. Statistics of the rows can be
tracked per recorded shard and checkpointed next to the manifest, so a resumed job re-reads
only the shards recorded after the last checkpoint instead of the whole store.
"""
from __future__ import annotations

import errno
import os
import re

import torch

from .._io import (read_json, remove_stale_temporaries, write_json_atomic,
                   write_safetensors_checked)
from .store import FORMAT, MANIFEST, STATS, VERSION, ActivationStore

try:
    import fcntl
except ImportError:      # Windows: byte-range locks via msvcrt instead (see _try_lock)
    fcntl = None

LOCK = ".lock"
_LEGACY_TMP = re.compile(r"^(manifest[.\w]*\.json|shard-[-\w]+\.safetensors|stats[.\w]*)\.tmp$")
STATS_CHUNK = 8192       # rows per ActivationStats.update: bounds its float64 temporaries


def _try_lock(fd: int) -> bool:
    """Take an exclusive lock on the open file fd without waiting; False when another open
    file description (another writer, in this process or any other) holds it."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:                                   # pragma: no cover (Windows)
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except (BlockingIOError, PermissionError):
        return False
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EDEADLK):
            return False
        raise
    return True


def _holder(fd: int) -> str:
    """Who holds the lock, from the pid its holder wrote into the file (for the error)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        pid = int(os.read(fd, 32).decode().strip() or 0)
    except (OSError, ValueError):
        pid = 0
    if pid == os.getpid():
        return "another StoreWriter of this process"
    return f"running process {pid}" if pid else "a writer that is just starting"


def _fold(stats, acts: torch.Tensor, token_ids: torch.Tensor) -> None:
    """Fold one shard's rows (acts [n, d], token_ids [n]) into stats in fixed chunks: the
    same calls whether the shard was just written or is re-read on resume."""
    for a in range(0, acts.shape[0], STATS_CHUNK):
        stats.update(acts[a:a + STATS_CHUNK], token_ids[a:a + STATS_CHUNK])


def fold_shards(stats, store: ActivationStore, start: int = 0) -> None:
    """Fold the rows of store's shards start.. into stats (ActivationStats), in order."""
    for i in range(start, len(store.shards)):
        _fold(stats, store.shard(i), store.shard(i, "token_ids"))


class StoreWriter:
    """Appends whole documents to one store directory; resumes an existing one.

    path: the store directory (created). d/dtype: activation width and on-disk dtype.
    meta: manifest fields (model, revision, hookpoint, tokenizer, config ...).
    shard_rows: a shard is cut at the first document boundary at or after this many rows.
    """

    # file names; a rank of a distributed capture writes its own (capture.ranks)
    manifest_name, shard_prefix, lock_name, stats_name = MANIFEST, "shard-", LOCK, STATS
    _lock_fd: int | None = None
    stats = None                 # ActivationStats of the recorded rows (track_stats)
    _stats_saved = _stats_pending = 0   # shards in the last checkpoint; bytes written since
    _counts_end = None           # document counts up to _docs_end (see append)
    #: checkpoint the statistics once the shards written since the last checkpoint hold
    #: this many times the statistics' own bytes: every flush unless a large covariance
    #: makes the state comparable to a shard, and then at most a 1/4 overhead
    stats_checkpoint_ratio = 4

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
        """Hold an exclusive flock on the lock file for the writer's lifetime.

        Why flock and not "create the file, write the pid, check the pid on conflict": the
        kernel drops the lock when its holder dies, so a killed writer never leaves a lock
        that must be guessed stale (a pid check cannot tell a writer that has not yet
        written its pid from a dead one, and may see a reused pid); and flock belongs to an
        open file description, so a second writer in the same process is refused too. The
        pid in the file only names the holder in the error. The file is unlinked on release
        while still locked, so a writer that locked a file just unlinked by the previous
        holder sees another inode at the path and retries on the new file.
        (On NFS, Linux emulates flock with byte-range locks, which are per process.)"""
        lock = os.path.join(self.path, self.lock_name)
        for _ in range(100):
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_lock(fd):
                holder = _holder(fd)
                os.close(fd)
                raise RuntimeError(f"store {self.path!r} is locked by {holder} (lock file "
                                   f"{lock}); two writers cannot share a store")
            try:
                st, cur = os.fstat(fd), os.stat(lock)
                same = (st.st_dev, st.st_ino) == (cur.st_dev, cur.st_ino)
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
                self._lock_fd, self._lockfile = fd, lock
                return
            os.close(fd)       # locked a file the previous holder had just unlinked
        raise RuntimeError(f"cannot take the lock {lock}")

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        try:
            os.unlink(self._lockfile)   # still locked: nobody else can hold this inode
        except OSError:
            pass
        os.close(fd)                    # releases the lock

    def __del__(self):                  # a writer dropped without close/abort
        try:
            self._unlock()
        except Exception:
            pass

    # ------------------------------------------------------------------ manifest
    def _load_or_new(self, meta: dict) -> dict:
        mpath = os.path.join(self.path, self.manifest_name)
        self._remove_leftovers()
        if os.path.exists(mpath):
            man = read_json(mpath, "activation store manifest")
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

    def _remove_leftovers(self) -> None:
        """Temporary files of writers that died mid-write (named <file>.tmp.<pid>, see
        actspace._io; and <file>.tmp of earlier versions): under the lock, no live writer
        of this store can own one, except another rank's, whose pid is alive."""
        remove_stale_temporaries(self.path)
        for name in os.listdir(self.path):
            if _LEGACY_TMP.match(name):
                try:
                    os.unlink(os.path.join(self.path, name))
                except OSError:
                    pass

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
               positions: torch.Tensor, docs_end: int,
               counts: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Add rows of whole documents. acts [n, d]; token_ids/doc_ids/positions [n];
        docs_end: every document with id < docs_end is now complete. Rows of documents the
        store already holds (id < docs_done, after a resume) are dropped. counts: the
        document counts ("documents", "truncated", ...) of every document < docs_end of the
        whole store, recorded in the manifest with docs_done at the next flush, so a resumed
        job continues the counts where the store is. Returns the kept (acts, token_ids)."""
        if counts is not None and docs_end >= self._docs_end:
            self._counts_end = dict(counts)
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
        counts = self._counts_end if docs_end > self.docs_done else None
        if not self._buf:
            if docs_end > self.docs_done:   # documents with no stored tokens
                man = dict(self.manifest, docs_done=docs_end)
                if counts is not None:
                    man["counts"] = counts
                self._write_manifest(man)
                self.manifest = man
            return
        cols = [torch.cat(c) for c in zip(*self._buf)]
        tensors = dict(zip(("acts", "token_ids", "doc_ids", "positions"), cols))
        idx = len(self.manifest["shards"])
        name = f"{self.shard_prefix}{idx:06d}.safetensors"
        sums = write_safetensors_checked(os.path.join(self.path, name), tensors,
                                         metadata={"format": FORMAT})
        man = dict(self.manifest)
        man["shards"] = self.manifest["shards"] + [{
            "file": name, "rows": int(cols[0].shape[0]), **sums,
            "first_doc": int(cols[2][0]), "last_doc": int(cols[2][-1])}]
        man["total_rows"] = self.manifest["total_rows"] + int(cols[0].shape[0])
        man["docs_done"] = docs_end
        if counts is not None:
            man["counts"] = counts
        self._write_manifest(man)   # on failure the old manifest stays: shard unrecorded
        self.manifest = man
        self._buf, self._buf_rows = [], 0
        if self.stats is not None:  # statistics follow the recorded shards, never the buffer
            _fold(self.stats, cols[0], cols[1])
            self._stats_pending += sum(c.nbytes for c in cols)
            if self._stats_pending >= self.stats_checkpoint_ratio * self.stats.nbytes:
                self.save_stats()

    def close(self, *, complete: bool = False, stats=None, extra: dict | None = None) -> None:
        """Flush, save statistics (the tracked ones, else stats: covering exactly the
        recorded rows), mark complete when the source is exhausted or max_tokens reached,
        and release the lock."""
        try:
            self.flush()
            if stats is not None or self.stats is not None:
                self.save_stats(stats)
            if complete or extra:
                self.manifest = dict(self.manifest, complete=complete or self.complete,
                                     **(extra or {}))
                self._write_manifest(self.manifest)
        finally:
            self._unlock()

    def abort(self) -> None:
        """Drop unflushed rows, checkpoint the tracked statistics when behind the recorded
        shards (best effort: an older checkpoint stays valid), and release the lock; the
        store stays as last recorded."""
        self._buf, self._buf_rows = [], 0
        try:
            if self.stats is not None and self._stats_saved < len(self.manifest["shards"]):
                self.save_stats()
        except Exception:
            pass
        finally:
            self._unlock()

    # ------------------------------------------------------------------ statistics
    def track_stats(self, covariance: bool = False, device=None):
        """Keep ActivationStats of the recorded rows from now on and return them: loaded
        from the last checkpoint, with the shards recorded after it re-read and folded in,
        so a resume costs a read of the shards the checkpoint misses, not of the store.
        Each flushed shard is folded in and checkpointed (see stats_checkpoint_ratio).
        device: where the statistics are computed (a GPU capture folds its shards on the
        GPU: the covariance's 2 N d^2 float64 operations would bound it on the CPU)."""
        from ..stats.activation import ActivationStats

        st, n = self._stats_checkpoint(covariance)
        if st is not None and device is not None:
            st = st.to(device)
        if st is None:
            st, n = ActivationStats(self.d, covariance=covariance, device=device), 0
        shards = self.manifest["shards"]
        fold_shards(st, ActivationStore(self.path, self.manifest), n)
        self.stats, self._stats_saved, self._stats_pending = st, n, 0
        if n < len(shards):
            self.save_stats()         # a second interruption does not repeat the re-read
        return st

    def _stats_checkpoint(self, covariance: bool):
        """(stats, shards it covers) from the saved statistics, or (None, 0) when absent,
        unreadable or not a prefix of the recorded shards (then rebuilt from all shards).
        The prefix is the one whose rows add up to the saved row count; checkpoints name
        the sha256 of their last shard, which must match the manifest's."""
        from ..stats.activation import ActivationStats

        p = os.path.join(self.path, self.stats_name)
        if not os.path.exists(p + ".safetensors"):
            return None, 0
        try:
            st = ActivationStats.load(p)
        except Exception:
            return None, 0
        ends, total = [0], 0
        for sh in self.manifest["shards"]:
            total += int(sh["rows"])
            ends.append(total)
        if st.d != self.d or st.has_covariance != covariance or st.rows not in ends:
            return None, 0
        n = ends.index(st.rows)
        # the checkpoint names what it covers (one unit with its tensors, see _io.save_pair):
        # its row count must be the rows of exactly those shards, the last one its sha256
        if st.meta.get("shards", n) != n or st.meta.get("total_rows", st.rows) != st.rows:
            return None, 0
        sha = st.meta.get("last_sha256")
        if sha is not None and (n == 0 or self.manifest["shards"][n - 1]["sha256"] != sha):
            return None, 0
        return st, n

    def save_stats(self, stats=None) -> None:
        """Write stats (default: the tracked ones) crash-safe, tagged with what they
        cover: docs_done, total_rows, the number of shards and the last shard's sha256."""
        st = stats if stats is not None else self.stats
        shards = self.manifest["shards"]
        st.save(os.path.join(self.path, self.stats_name),
                extra={"docs_done": self.docs_done, "total_rows": self.manifest["total_rows"],
                       "shards": len(shards),
                       "last_sha256": shards[-1]["sha256"] if shards else None})
        if st is self.stats:
            self._stats_saved, self._stats_pending = len(shards), 0
