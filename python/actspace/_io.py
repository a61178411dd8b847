"""File primitives at the bottom of the package: every file actspace writes goes through here.

Why one module: a job that is killed at any instant must leave each file either as it was or
wholly new, never torn, and every reader must fail with the file's name rather than a raw
parser error. The recipe (temp name in the same directory, flush, fsync, rename, fsync the
directory) and the error wording live here once.

Temporary files are named ``<name>.tmp.<pid>`` so that a later writer can tell the leftovers
of a dead process from those of a live one (``remove_stale_temporaries``).
This module imports nothing from actspace (it sits below every layer).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Callable

__all__ = ["fsync_dir", "tmp_name", "atomic_write", "write_atomic", "write_json_atomic",
           "write_safetensors_atomic", "save_pair", "load_pair", "read_json",
           "read_safetensors", "remove_stale_temporaries", "pid_alive", "ensure_writable_dir",
           "CHECKSUM", "checksum_bytes", "write_safetensors_checked", "verify_file"]

_TMP_RE = re.compile(r"\.tmp\.(\d+)$")


def fsync_dir(path) -> None:
    """Make a rename inside directory path durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(os.fspath(path) or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def tmp_name(path) -> str:
    """The temporary name this process writes path under (same directory, so rename is atomic)."""
    return f"{os.fspath(path)}.tmp.{os.getpid()}"


def atomic_write(path, write: Callable[[str], None]) -> None:
    """write(tmp) fills a temporary file next to path; it is fsynced and renamed over path,
    then the directory is fsynced. On any failure the temporary file is removed and the old
    path is left as it was; an OSError names path (and says when the disk is full)."""
    path = os.fspath(path)
    parent = os.path.dirname(path) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tmp_name(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and path not in str(e):
            why = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
            raise OSError(e.errno, f"cannot write {path!r}: {why}; the file is left as it "
                                   f"was before this write") from e
        raise
    fsync_dir(parent)


def write_atomic(path, data: bytes) -> None:
    """Bytes written to path crash-safe (see atomic_write)."""
    def w(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    atomic_write(path, w)


def write_json_atomic(path, obj, indent: int | None = 1, default=None,
                      ensure_ascii: bool = True) -> None:
    """obj as JSON (strict: NaN/Infinity refused, since they are not JSON) written crash-safe.
    default: json.dumps's hook for objects it cannot serialise."""
    write_atomic(path, json.dumps(obj, indent=indent, allow_nan=False, default=default,
                                  ensure_ascii=ensure_ascii).encode())


def write_safetensors_atomic(path, tensors: dict, metadata: dict | None = None) -> str:
    """A safetensors file of tensors (moved to CPU, made contiguous) written crash-safe;
    returns the sha256 of its bytes."""
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                metadata=metadata)
    write_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def write_safetensors_checked(path, tensors: dict, metadata: dict | None = None) -> dict:
    """write_safetensors_atomic returning both checksums a store manifest records for the
    file: {"sha256": hex, CHECKSUM: hex} (computed from the bytes in memory, before the
    write)."""
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                metadata=metadata)
    sums = {"sha256": hashlib.sha256(data).hexdigest(), CHECKSUM: checksum_bytes(data)}
    write_atomic(path, data)
    return sums


# ------------------------------------------------------------------ checksums
#: the fast checksum recorded next to the sha256 of every shard: xxh3 hashes at memory
#: speed, so checking a shard while it is read costs under 10% of the read (bench/RESULTS.md,
#: "Shard integrity"); sha256 (1-2 GB/s) and zlib.crc32 (3-4 GB/s) cost 40-80%
CHECKSUM = "xxh3_64"
_READ_CHUNK = 1 << 22        # bytes hashed per call


def checksum_bytes(data) -> str:
    """The CHECKSUM of data (bytes-like), as hex."""
    import xxhash

    return xxhash.xxh3_64_hexdigest(data)


def verify_file(path, expected: dict, what: str = "file") -> None:
    """Check file path against expected: {CHECKSUM: hex} or, for files written before it
    was recorded, {"sha256": hex}; a mismatch is a ValueError naming the file and a missing
    file a FileNotFoundError. The file is hashed through a memory map, without copying it:
    the pages it brings into the page cache are the ones the read that follows uses."""
    import mmap

    path = os.fspath(path)
    if expected.get(CHECKSUM):
        import xxhash

        algo, want, h = CHECKSUM, expected[CHECKSUM], xxhash.xxh3_64()
    elif expected.get("sha256"):
        algo, want, h = "sha256", expected["sha256"], hashlib.sha256()
    else:
        raise ValueError(f"{path}: no checksum recorded for this {what}")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size:
                with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                    mv = memoryview(m)
                    try:
                        for at in range(0, size, _READ_CHUNK):
                            h.update(mv[at:at + _READ_CHUNK])
                    finally:
                        mv.release()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {what} is missing") from None
    if h.hexdigest() != want:
        raise ValueError(f"{path}: {what} is corrupt ({algo} {h.hexdigest()} does not "
                         f"match the recorded {want}); restore or recreate it")


def read_json(path, what: str = "JSON file") -> dict:
    """The JSON object in path; a missing, unreadable or malformed file is an error naming it."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such {what}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a valid {what} ({e})") from None


def read_safetensors(path, what: str = "safetensors file") -> tuple[dict, dict]:
    """(tensors, metadata) of a safetensors file; a missing, truncated, empty or foreign file
    is an error naming path instead of the parser's raw exception."""
    from safetensors import SafetensorError, safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such {what}")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        size = os.path.getsize(path)
        raise ValueError(f"{path}: not a readable {what} ({size} bytes; {e}); it may be "
                         f"truncated or of another format") from None
    return tensors, meta


# ------------------------------------------------------------------ tensors + json pairs
_PAIR_META = "actspace_meta"


def _pair_paths(path) -> tuple[str, str]:
    base = os.fspath(path)
    for ext in (".safetensors", ".json"):
        if base.endswith(ext):
            base = base[: -len(ext)]
    return base + ".safetensors", base + ".json"


def save_pair(path, tensors: dict, meta: dict) -> None:
    """tensors and their JSON meta as ONE atomic unit: the meta lives in the safetensors
    header (authoritative), so a kill can never pair new tensors with old metadata. A copy
    of the meta is also written to path(.json), after, for people and tools to read."""
    st, js = _pair_paths(path)
    write_safetensors_atomic(st, tensors, metadata={_PAIR_META: json.dumps(meta)})
    write_json_atomic(js, meta)


def load_pair(path, fmt: str | None, what: str) -> tuple[dict, dict]:
    """(meta, tensors) written by save_pair; ValueError unless meta["format"] == fmt
    (fmt None: the caller checks the meta itself).
    The meta comes from the safetensors header; files written before it was stored there
    fall back to the .json beside them."""
    st, js = _pair_paths(path)
    tensors, header = read_safetensors(st, f"actspace {what} file")
    if _PAIR_META in header:
        try:
            meta = json.loads(header[_PAIR_META])
        except json.JSONDecodeError as e:
            raise ValueError(f"{st}: corrupt {what} metadata ({e})") from None
    else:
        meta = read_json(js, f"actspace {what} file")
    if fmt is not None and meta.get("format") != fmt:
        raise ValueError(f"{st} is not an actspace {what} file")
    return meta, tensors


# ------------------------------------------------------------------ leftovers
def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(directory, recursive: bool = False) -> list[str]:
    """Remove ``*.tmp.<pid>`` files (hidden ones included) in directory, and in its
    subdirectories when recursive, whose writing process is dead (or is this process: a
    file of ours that is not being written now is a leftover of a failed write). Call it
    while holding the directory's writer lock, or where every writer's pid is on this
    machine. Returns the removed paths."""
    directory = os.fspath(directory)
    if recursive:
        folders = [root for root, _, _ in os.walk(directory)]
    else:
        folders = [directory] if os.path.isdir(directory) else []
    removed = []
    for folder in folders:
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            m = _TMP_RE.search(name)
            p = os.path.join(folder, name)
            if not m or not os.path.isfile(p):
                continue
            pid = int(m.group(1))
            if pid != os.getpid() and pid_alive(pid):
                continue
            try:
                os.unlink(p)
                removed.append(p)
            except OSError:
                pass
    return removed


def ensure_writable_dir(path, what: str = "output directory") -> Path:
    """Create directory path and prove it is writable by writing and removing a probe file,
    so a long job fails before its first step rather than at its final save."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / tmp_name(".write-probe")
        with open(probe, "wb") as f:
            f.write(b"probe")
        os.unlink(probe)
    except OSError as e:
        raise OSError(e.errno, f"{what} {str(p)!r} is not writable ({e.strerror or e})") from None
    return p
