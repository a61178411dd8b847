"""`acts.capture_to_store`: the offline capture job (text in, activation stores out).

Why a job and not a loop in user code: it gets the details right once -- padding never
stored, special tokens left out by default, long documents truncated or windowed and
counted, the forward run under inference_mode in the model's dtype with early stop after
the last hookpoint, device-to-host copies and disk writes overlapped with the next forward
(a writer thread; pinned buffers on CUDA), statistics accumulated on the rows as they are
written, and crash-safe resume: rerunning the same call continues after the last document
the stores recorded (documents are never split across a shard boundary), with the
statistics restored from their last checkpoint rather than from a pass over the store.
"""
from __future__ import annotations

import os
import queue
import threading
from contextlib import contextmanager

import torch

from .. import distributed as _dist
from ..model.hookpoints import resolve
from .hooks import Capture
from .ranks import finalize, make_writer
from .store import hookpoint_dirname
from .texts import TokenCounts, add_counts, collate, cut_pieces, iter_texts, tokenized
from .writer import StoreWriter


def _model_meta(model, tokenizer) -> dict:
    cfg = getattr(model, "config", None)
    return {"model": getattr(cfg, "_name_or_path", None) or type(model).__name__,
            "revision": getattr(cfg, "_commit_hash", None),
            "tokenizer": getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__}


DEFAULT_MAX_LENGTH = 512


def _resolve_max_length(model, tokenizer, max_length: int | None) -> int:
    """max_length, or by default 512 capped at the limits below; a max_length beyond the
    model's position table or the tokenizer's limit is refused up front: past it, learned
    position embeddings fail deep inside the forward and rotary ones silently extrapolate.
    The tokenizer's limit counts only when it is a real one (tokenizers without one report
    a huge placeholder)."""
    cfg = getattr(model, "config", None)
    if hasattr(cfg, "get_text_config"):     # multimodal configs keep it in the text config
        cfg = cfg.get_text_config()
    limits = {"model.config.max_position_embeddings":
              getattr(cfg, "max_position_embeddings", None),
              "tokenizer.model_max_length": getattr(tokenizer, "model_max_length", None)}
    limits = {k: v for k, v in limits.items()
              if isinstance(v, int) and not isinstance(v, bool) and 0 < v < 10**7}
    if max_length is None:
        return min([DEFAULT_MAX_LENGTH, *limits.values()])
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length <= 0:
        raise ValueError(f"max_length must be a positive int or None, got {max_length!r}")
    if limits and max_length > min(limits.values()):
        raise ValueError(f"max_length={max_length} exceeds "
                         f"{', '.join(f'{k}={v}' for k, v in limits.items())}; "
                         f"pass max_length <= {min(limits.values())}")
    return max_length


@contextmanager
def _eval_mode(model: torch.nn.Module):
    """The model in eval mode for the job, every module's own training flag restored after
    (the caller's model may be mid-training, with some modules in eval on purpose)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class _WriterThread:
    """Appends batches to the writers (which fold statistics as shards are recorded) off
    the forward's thread; the queue is short so a slow disk throttles the job instead of
    filling memory."""

    def __init__(self, writers):
        self.writers = writers
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
                per_hp, docs_end, counts, event = item
                if event is not None:
                    event.synchronize()
                for w, (acts, tok, doc, pos) in zip(self.writers, per_hp):
                    w.append(acts, tok, doc, pos, docs_end, counts)  # stats fold at flush
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
                     batch_size: int = 32, max_length: int | None = None,
                     max_tokens: int | None = None,
                     windows: bool = False, keep_special_tokens: bool = False,
                     stats: bool = True, covariance: bool = False, device=None,
                     dtype: torch.dtype | None = None, progress: bool = True,
                     shard_rows: int = 65536, field: str = "text", txt_mode: str = "auto",
                     early_stop: bool = True, count_dropped_tokens: bool = False) -> dict:
    """Run model over texts and write one activation store per hookpoint under out_dir.

    texts: iterable of str, .txt/.jsonl path, or datasets.Dataset (see capture.texts;
    txt_mode: how a .txt splits into documents, "lines", "paragraphs" or "auto").
    max_length: tokens per sequence (default 512, or the limit below when smaller), at most
    the model's max_position_embeddings and the tokenizer's model_max_length (ValueError
    otherwise); longer documents are truncated, or
    split into windows (windows=True). max_tokens: stop after this many stored tokens (the
    last document may be cut; the store is then complete). count_dropped_tokens: also count
    the tokens that truncation drops (tokenizes every long document whole; by default only
    a prefix long enough for max_length is tokenized and "dropped_tokens" is None).
    device/dtype: move/cast the model first (default: where and as it is); the model runs
    in eval mode and gets its modules' training flags back afterwards. shard_rows: rows per
    shard (cut at the next document boundary).
    Returns {"stores": {hookpoint: path}, "tokens", "documents", "truncated", "windowed",
    "dropped_tokens", "resumed_from_doc"}; the counts cover this run (each manifest's
    "counts" cover the whole store, updated with docs_done at every shard, so they stay
    right across kills and resumes).

    Resume: rerun with the same model, texts and hookpoints after a kill; documents the
    stores already recorded are skipped. The stores may be out of step (a kill between two
    writers' flushes, a full disk on one): the job resumes from the one furthest behind, the
    others drop the rows they hold, and all end with the rows of an uninterrupted run. A
    store marked complete (source exhausted or max_tokens reached) is left as it is: write
    a larger capture to a new out_dir.

    Under torchrun (an initialised process group with several ranks) rank r captures the
    documents i with i % world == r into rank-specific shards of the same stores, max_tokens
    is split evenly over the ranks, statistics are all-reduced, rank 0 writes the manifests,
    and the returned counts are global (see actspace.capture.ranks).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, v in (("batch_size", batch_size), ("shard_rows", shard_rows)):
        if not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens <= 0):
        raise ValueError(f"max_tokens must be a positive int or None, got {max_tokens!r}")
    max_length = _resolve_max_length(model, tokenizer, max_length)
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    hps = [h.name for h in resolve(model, hookpoints)]
    # statistics are computed where the model runs when that is a GPU (see track_stats)
    stats_device = device if device.type == "cuda" else None
    config = {"max_length": max_length, "windows": windows, "max_tokens": max_tokens,
              "keep_special_tokens": keep_special_tokens, "batch_size": batch_size}
    paths = {h: os.path.join(os.fspath(out_dir), hookpoint_dirname(h)) for h in hps}
    with _eval_mode(model):
        writers = _open_writers(model, tokenizer, hps, paths, config, shard_rows, early_stop,
                                dtype)
        result = {"stores": paths, "tokens": 0, "documents": 0, "truncated": 0,
                  "windowed": 0, "dropped_tokens": 0,
                  "resumed_from_doc": min(w.docs_done for w in writers)}
        if all(w.complete for w in writers):
            sts = []
            try:
                if _dist.is_distributed():   # other ranks may still run: join the reduction
                    sts = [w.track_stats(covariance, stats_device) if stats else None
                           for w in writers]
            finally:
                _abort_all(writers)
            if sts:
                finalize(list(paths.values()), sts, result)
            return result
        with _aborting(writers):
            sts = [w.track_stats(covariance, stats_device) if stats else None for w in writers]
        if max_tokens is not None and _dist.is_distributed():
            max_tokens = _dist.rank_share(max_tokens)   # this rank's part (0: stores nothing)
        _run(model, tokenizer, texts, hps, writers, result, batch_size=batch_size,
             max_length=max_length, max_tokens=max_tokens, windows=windows,
             keep_special_tokens=keep_special_tokens, device=device, progress=progress,
             field=field, txt_mode=txt_mode, early_stop=early_stop,
             count_dropped_tokens=count_dropped_tokens)
    finalize(list(paths.values()), sts, result)
    return result


def _open_writers(model, tokenizer, hps, paths, config, shard_rows, early_stop, dtype):
    """One locked writer per hookpoint (width from a one-token dry run, so the stores and
    their locks exist before any document is read); refuses to resume a store captured
    with other tokenization settings (it would mix two datasets)."""
    device = next(model.parameters()).device
    with torch.inference_mode(), Capture(model, hps, early_stop=early_stop, to=None) as cap:
        ids = torch.tensor([tokenizer("a")["input_ids"][:config["max_length"]]], device=device)
        cap.forward(input_ids=ids, attention_mask=torch.ones_like(ids))
        dims = [cap[h].shape[-1] for h in hps]
    meta = _model_meta(model, tokenizer)
    writers: list[StoreWriter] = []
    with _aborting(writers):
        for h, d in zip(hps, dims):
            writers.append(make_writer(paths[h], d=d, dtype=dtype, shard_rows=shard_rows,
                                       meta=dict(meta, hookpoint=h, config=config)))
        for w in writers:
            old = w.manifest.get("config", {})
            for key in ("max_length", "windows", "keep_special_tokens"):
                if key in old and old[key] != config[key]:
                    raise ValueError(f"store {w.path!r} was captured with {key}={old[key]!r}, "
                                     f"this call has {key}={config[key]!r}; use another out_dir")
    return writers


def _abort_all(writers) -> None:
    for w in writers:
        w.abort()


@contextmanager
def _aborting(writers):
    """On any failure inside the block, abort every writer (release its lock, keep what
    it recorded) and re-raise."""
    try:
        yield
    except BaseException:
        _abort_all(writers)
        raise


def _run(model, tokenizer, texts, hps, writers, result, *, batch_size, max_length,
         max_tokens, windows, keep_special_tokens, device, progress, field, txt_mode,
         early_stop, count_dropped_tokens) -> None:
    """The capture loop: tokenize ahead, forward in batches, queue rows to the writers,
    close them (complete) at the end; on failure close or abort them and re-raise."""
    # Resume from the store furthest behind: stores of one capture hold the same rows per
    # document, so its rows are exactly the tokens of the documents before start_doc, the
    # part of max_tokens already spent; writers ahead of it drop the rows they hold.
    behind = min(writers, key=lambda w: w.docs_done)
    start_doc, stored = behind.docs_done, int(behind.manifest["total_rows"])
    already = [w.complete for w in writers]   # ahead and finished: receives no new rows
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    counts = TokenCounts()
    # counts of the documents before start_doc (the store behind recorded them with its
    # docs_done): every manifest records base + this run's counts at each flush
    base = behind.manifest.get("counts", {})

    def store_counts() -> dict:
        run = {"documents": counts.docs, "truncated": counts.truncated,
               "windowed": counts.windowed, "dropped_tokens": counts.dropped_tokens}
        return {k: add_counts(base.get(k, 0), v) for k, v in run.items()}
    from tqdm.auto import tqdm

    bar = tqdm(total=max_tokens, initial=stored, unit="tok", unit_scale=True,
               disable=not progress or not _dist.is_main(), desc="capture")
    wt = _WriterThread(writers)
    done = False
    try:
        with torch.inference_mode(), Capture(model, hps, early_stop=early_stop, to=None) as cap:
            pending: list = []
            source = iter_texts(texts, field_name=field, txt_mode=txt_mode)

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
                wt.put(([(a, tok, doc, pos) for a in acts], docs_end, store_counts(), event))
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
            if max_tokens is None or stored < max_tokens:
                for doc_id, ids, sp, cut in tokenized(tokenizer, mine(), chunk=batch_size,
                                                      prefix_tokens=prefix):
                    pending.extend(cut_pieces(ids, sp, doc_id, max_length, windows, counts,
                                              cut))
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
    total = store_counts()
    for w, was_complete in zip(writers, already):
        if was_complete:      # its counts already cover the finished run
            w.abort()
            continue
        w.close(complete=True, extra={"counts": total})   # source or max_tokens done


def _close_quietly(w: StoreWriter) -> None:
    try:
        w.close()
    except BaseException:
        w.abort()
