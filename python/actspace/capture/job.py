"""`acts.capture_to_store`: the offline capture job (text in, activation stores out).

Why a job and not a loop in user code: it gets the details right once -- padding never
stored, special tokens left out by default, long documents truncated or windowed and
counted, the forward run under inference_mode in the model's dtype with early stop after
the last hookpoint, device-to-host copies and disk writes overlapped with the next forward
(a writer thread; pinned buffers on CUDA), statistics accumulated on the rows as they are
written, and crash-safe resume: rerunning the same call continues after the last document
the stores recorded (documents are never split across a shard boundary).
"""
from __future__ import annotations

import os
import queue
import threading

import torch

from .. import distributed as _dist
from .hookpoints import resolve
from .hooks import Capture
from .ranks import finalize, make_writer
from .store import ActivationStore, hookpoint_dirname
from .texts import TokenCounts, add_counts, collate, cut_pieces, iter_texts, tokenized
from .writer import StoreWriter


def _model_meta(model, tokenizer) -> dict:
    cfg = getattr(model, "config", None)
    return {"model": getattr(cfg, "_name_or_path", None) or type(model).__name__,
            "revision": getattr(cfg, "_commit_hash", None),
            "tokenizer": getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__}


def _resume_stats(path: str, writer: StoreWriter, d: int, covariance: bool):
    """Statistics covering exactly the recorded documents: the saved ones when they match
    the manifest, else recomputed from the stored shards (after a kill)."""
    from ..stats.activation import ActivationStats

    p = os.path.join(path, writer.stats_name)
    if os.path.exists(p + ".json"):
        st = ActivationStats.load(p)
        if st.meta.get("docs_done") == writer.docs_done and st.has_covariance == covariance:
            return st
    st = ActivationStats(d, covariance=covariance)
    if writer.manifest["total_rows"]:
        store = ActivationStore(path, writer.manifest)
        for i in range(len(store.shards)):
            st.update(store.shard(i), store.shard(i, "token_ids"))
    return st


class _WriterThread:
    """Appends batches to the writers and updates statistics off the forward's thread;
    the queue is short so a slow disk throttles the job instead of filling memory."""

    def __init__(self, writers, stats):
        self.writers, self.stats = writers, stats
        self.q: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="actspace-writer", daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            item = self.q.get()
            if item is None:
                return
            if self.error is not None:
                continue
            try:
                per_hp, docs_end, event = item
                if event is not None:
                    event.synchronize()
                for w, st, (acts, tok, doc, pos) in zip(self.writers, self.stats, per_hp):
                    kept, kept_tok = w.append(acts, tok, doc, pos, docs_end)
                    if st is not None and kept.shape[0]:
                        st.update(kept, kept_tok)
            except BaseException as e:   # re-raised in the main thread
                self.error = e

    def put(self, item):
        self._raise()
        self.q.put(item)

    def _raise(self):
        if self.error is not None:
            raise self.error

    def finish(self):
        self.q.put(None)
        self.thread.join()
        self._raise()


def capture_to_store(model: torch.nn.Module, tokenizer, texts, hookpoints, out_dir, *,
                     batch_size: int = 32, max_length: int = 512, max_tokens: int | None = None,
                     windows: bool = False, keep_special_tokens: bool = False,
                     stats: bool = True, covariance: bool = False, device=None,
                     dtype: torch.dtype | None = None, progress: bool = True,
                     shard_rows: int = 65536, field: str = "text",
                     early_stop: bool = True, count_dropped_tokens: bool = False) -> dict:
    """Run model over texts and write one activation store per hookpoint under out_dir.

    texts: iterable of str, .txt/.jsonl path, or datasets.Dataset (see capture.texts).
    max_length: tokens per sequence; longer documents are truncated, or split into windows
    (windows=True). max_tokens: stop after this many stored tokens (the last document may
    be cut; the store is then complete). count_dropped_tokens: also count the tokens that
    truncation drops (tokenizes every long document whole; by default only a prefix long
    enough for max_length is tokenized and "dropped_tokens" is None). device/dtype: move/cast the model first (default:
    where and as it is). shard_rows: rows per shard (cut at the next document boundary).
    Returns {"stores": {hookpoint: path}, "tokens", "documents", "truncated", "windowed",
    "dropped_tokens", "resumed_from_doc"}; the counts cover this run (the manifests keep
    the totals of finished runs under "counts").

    Resume: rerun with the same model, texts and hookpoints after a kill; documents the
    stores already recorded are skipped. A store marked complete (source exhausted or
    max_tokens reached) is left as it is: write a larger capture to a new out_dir.

    Under torchrun (an initialised process group with several ranks) rank r captures the
    documents i with i % world == r into rank-specific shards of the same stores, max_tokens
    is split evenly over the ranks, statistics are all-reduced, rank 0 writes the manifests,
    and the returned counts are global (see actspace.capture.ranks).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, v in (("batch_size", batch_size), ("max_length", max_length),
                    ("shard_rows", shard_rows)):
        if not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens <= 0):
        raise ValueError(f"max_tokens must be a positive int or None, got {max_tokens!r}")
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    model.eval()
    hps = [h.name for h in resolve(model, hookpoints)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    # width of each hookpoint from a one-token dry run, so the stores (and their locks)
    # exist before any document is read
    with torch.inference_mode(), Capture(model, hps, early_stop=early_stop, to=None) as cap:
        ids = torch.tensor([tokenizer("a")["input_ids"][:max_length]], device=device)
        cap.forward(input_ids=ids, attention_mask=torch.ones_like(ids))
        dims = [cap[h].shape[-1] for h in hps]

    meta = _model_meta(model, tokenizer)
    config = {"max_length": max_length, "windows": windows, "max_tokens": max_tokens,
              "keep_special_tokens": keep_special_tokens, "batch_size": batch_size}
    paths = {h: os.path.join(os.fspath(out_dir), hookpoint_dirname(h)) for h in hps}
    writers: list[StoreWriter] = []
    try:
        for h, d in zip(hps, dims):
            writers.append(make_writer(paths[h], d=d, dtype=dtype, shard_rows=shard_rows,
                                       meta=dict(meta, hookpoint=h, config=config)))
    except BaseException:
        for w in writers:
            w.abort()
        raise
    for w in writers:   # resuming with other tokenization would mix two datasets
        old = w.manifest.get("config", {})
        for key in ("max_length", "windows", "keep_special_tokens"):
            if key in old and old[key] != config[key]:
                for w2 in writers:
                    w2.abort()
                raise ValueError(f"store {w.path!r} was captured with {key}={old[key]!r}, "
                                 f"this call has {key}={config[key]!r}; use another out_dir")
    start_doc = min(w.docs_done for w in writers)
    result = {"stores": paths, "tokens": 0, "documents": 0, "truncated": 0, "windowed": 0,
              "dropped_tokens": 0, "resumed_from_doc": start_doc}
    if all(w.complete for w in writers):
        for w in writers:
            w.abort()
        if _dist.is_distributed():   # other ranks may still be running: join the reduction
            finalize(list(paths.values()),
                     [(_resume_stats(paths[h], w, d, covariance) if stats else None)
                      for h, d, w in zip(hps, dims, writers)], result)
        return result
    if max_tokens is not None and _dist.is_distributed():
        max_tokens = _dist.rank_share(max_tokens)   # this rank's part (0: it stores nothing)

    sts = [(_resume_stats(paths[h], w, d, covariance) if stats else None)
           for h, d, w in zip(hps, dims, writers)]
    counts = TokenCounts()
    stored = sum(w.manifest["total_rows"] for w in writers[:1])
    from tqdm.auto import tqdm

    bar = tqdm(total=max_tokens, initial=stored, unit="tok", unit_scale=True,
               disable=not progress or not _dist.is_main(), desc="capture")
    wt = _WriterThread(writers, sts)
    done = False
    try:
        with torch.inference_mode(), Capture(model, hps, early_stop=early_stop, to=None) as cap:
            pending: list = []
            source = iter_texts(texts, field_name=field)

            def run_batch(pieces, docs_end):
                nonlocal stored, done
                outs = [[] for _ in hps]
                ids_all, doc_all, pos_all = [], [], []
                for a in range(0, len(pieces), batch_size):
                    chunk = pieces[a:a + batch_size]
                    ids, mask, special = collate(chunk, pad_id)
                    cap.clear()
                    cap.forward(input_ids=ids.to(device), attention_mask=mask.to(device))
                    sel = mask.bool() if keep_special_tokens else mask.bool() & ~special
                    T = ids.shape[1]
                    doc = torch.tensor([p.doc_id for p in chunk]).unsqueeze(1).expand(-1, T)
                    pos = torch.arange(T).unsqueeze(0).expand(len(chunk), -1)
                    sel_d = sel.to(device)
                    for i, h in enumerate(hps):
                        outs[i].append(cap[h][sel_d])
                    ids_all.append(ids[sel])
                    doc_all.append(doc[sel])
                    pos_all.append(pos[sel])
                tok, doc, pos = torch.cat(ids_all), torch.cat(doc_all), torch.cat(pos_all)
                acts = [torch.cat(o) for o in outs]
                n = tok.shape[0]
                if max_tokens is not None and stored + n >= max_tokens:
                    n = max_tokens - stored
                    acts = [a[:n] for a in acts]
                    tok, doc, pos = tok[:n], doc[:n], pos[:n]
                    docs_end = int(doc[-1]) + 1 if n else docs_end
                    done = True
                event = None
                if device.type == "cuda":   # async copy into pinned memory, synced by the writer
                    host = []
                    for a in acts:
                        buf = torch.empty(a.shape, dtype=a.dtype, pin_memory=True)
                        host.append(buf.copy_(a, non_blocking=True))
                    acts = host
                    event = torch.cuda.Event()
                    event.record()
                wt.put(([(a, tok, doc, pos) for a in acts], docs_end, event))
                stored += n
                result["tokens"] += n
                bar.update(n)

            doc_id = -1
            seen = [0]   # documents read from the source (tokenization runs ahead)

            def mine():
                for i, t in enumerate(source):
                    seen[0] = i + 1
                    if i >= start_doc and _dist.owns(i):
                        yield i, t
            prefix = None if windows or count_dropped_tokens else max_length
            for doc_id, ids, sp, cut in tokenized(tokenizer, mine(), chunk=batch_size,
                                                  prefix_tokens=prefix):
                pending.extend(cut_pieces(ids, sp, doc_id, max_length, windows, counts, cut))
                if len(pending) >= batch_size:
                    run_batch(pending, doc_id + 1)
                    pending = []
                    if done:
                        break
            if pending and not done:   # the source is exhausted: all it held is done
                run_batch(pending, max(doc_id + 1, seen[0]))
        wt.finish()
    except BaseException:
        try:
            wt.finish()       # rows of whole documents already queued are still written
        except BaseException:
            pass
        for w in writers:
            w.abort() if wt.error is not None else _close_quietly(w)
        bar.close()
        raise
    bar.close()
    result.update(documents=counts.docs, truncated=counts.truncated,
                  windowed=counts.windowed, dropped_tokens=counts.dropped_tokens)
    for w, st in zip(writers, sts):
        prev = w.manifest.get("counts", {})
        total = {k: add_counts(prev.get(k, 0), result[k]) for k in
                 ("documents", "truncated", "windowed", "dropped_tokens")}
        w.close(complete=True, stats=st, extra={"counts": total})   # source or max_tokens done
    finalize(list(paths.values()), sts, result)
    return result


def _close_quietly(w: StoreWriter) -> None:
    try:
        w.close()
    except BaseException:
        w.abort()
