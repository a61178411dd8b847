"""Shard integrity check on read: its cost against reading the shards without it.

Reads of an ActivationStore check each shard once per process (the whole file read in
chunks that are hashed as they arrive, xxh3_64, then used as the shard's tensors), so the
baseline is the same read with verify=False (the memory-mapped path). Both run in one
process, alternating, median of repeats; the process-wide "already checked" set is cleared
before every checked pass so each one pays the check. The page cache is warm (the
hardest case for the check: no disk time to hide it); a --cold pass drops the files' pages
first (posix_fadvise DONTNEED). Also the raw speed of the candidate checksums on the bytes.

    python bench/bench_integrity.py [--rows 32768] [--d 1024] [--shards 3]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import tempfile
import time
import zlib

import torch


def _evict(path: str) -> None:
    for name in os.listdir(path):
        fd = os.open(os.path.join(path, name), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=32768)
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--cold", action="store_true", help="drop the page cache before a pass")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out",
                                                  "bench_integrity.json"))
    args = ap.parse_args()

    import xxhash

    from actspace.capture import store as store_mod
    from actspace.capture.store import ActivationStore
    from actspace.capture.writer import StoreWriter

    tmp = tempfile.mkdtemp(prefix="actspace-bench-")
    try:
        path = os.path.join(tmp, "s")
        w = StoreWriter(path, d=args.d, dtype=torch.bfloat16, shard_rows=args.rows,
                        meta={"model": "bench", "hookpoint": "h"})
        for i in range(args.shards):
            n = args.rows
            w.append(torch.randn(n, args.d), torch.zeros(n), torch.full((n,), i),
                     torch.arange(n), docs_end=i + 1)
        w.close(complete=True)
        nbytes = sum(os.path.getsize(os.path.join(path, s["file"]))
                     for s in ActivationStore.open(path).shards)

        def in_order(verify):
            s = ActivationStore.open(path, verify=verify)
            for x in s.iter_batches(4096):
                x.float()                     # a consumer touches every value

        def shuffled(verify):
            s = ActivationStore.open(path, verify=verify)
            for x in s.iter_batches(4096, shuffle=True, buffer_size=args.rows):
                x.float()

        def whole(verify):
            s = ActivationStore.open(path, verify=verify)
            s[:].float()

        res = {"rows_per_shard": args.rows, "d": args.d, "shards": args.shards,
               "bytes": nbytes, "cold": args.cold, "cases": {}}
        for name, fn in (("iter_batches in order", in_order),
                         ("iter_batches shuffled", shuffled), ("read all rows", whole)):
            times = {True: [], False: []}
            for _ in range(args.repeats):
                for verify in (False, True):
                    store_mod._CHECKED.clear()
                    if args.cold:
                        _evict(path)
                    t = time.perf_counter()
                    fn(verify)
                    times[verify].append(time.perf_counter() - t)
            base, checked = statistics.median(times[False]), statistics.median(times[True])
            res["cases"][name] = {"unchecked_s": base, "checked_s": checked,
                                  "overhead": checked / base - 1}
            print(f"{name:24s} unchecked {base * 1e3:8.1f} ms  checked {checked * 1e3:8.1f} ms"
                  f"  overhead {100 * (checked / base - 1):+.1f}%")
        data = open(os.path.join(path, "shard-000000.safetensors"), "rb").read()
        speeds = {}
        for name, fn in (("sha256", lambda b: hashlib.sha256(b).digest()),
                         ("zlib.crc32", zlib.crc32),
                         ("xxh3_64", xxhash.xxh3_64_digest),
                         ("memcpy (bytearray)", bytearray)):
            ts = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                fn(data)
                ts.append(time.perf_counter() - t)
            speeds[name] = len(data) / statistics.median(ts) / 1e9
            print(f"{name:24s} {speeds[name]:6.2f} GB/s")
        res["checksum_GBps"] = speeds
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
