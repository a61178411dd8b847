"""Text sources and their tokenization into model-sized pieces for capture jobs.

Why separate: the job must see documents in a stable order (resume skips the first
`docs_done` documents of the same source) and must turn each document into one or more
sequences of at most max_length tokens (truncated or split into windows) while knowing
which tokens are special (BOS/CLS/SEP), so those can be left out of the store.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch


TXT_MODES = ("auto", "lines", "paragraphs")


def iter_texts(source, *, field_name: str = "text", txt_mode: str = "auto"):
    """Documents of source, in a stable order: an iterable of str; a path to a .txt (see
    txt_mode) or a .jsonl (the str field_name of each object); or a datasets.Dataset (its
    field_name column). Files are streamed line by line, never read whole.

    txt_mode: "lines" (one document per non-blank line), "paragraphs" (documents separated
    by blank lines, a paragraph's lines joined by a space) or "auto" (the default, as
    before): paragraphs when a blank line separates two non-blank ones, else lines; it
    decides with a streaming scan that stops at the first such blank line, so a file
    without one is read twice. Whitespace-only lines count as blank in every mode."""
    if txt_mode not in TXT_MODES:
        raise ValueError(f"txt_mode must be one of {TXT_MODES}, got {txt_mode!r}")
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"texts: no such file {path!r}")
        if path.endswith(".jsonl"):
            yield from _jsonl(path, field_name)
        elif path.endswith(".txt"):
            yield from _txt(path, txt_mode)
        else:
            raise ValueError(f"texts: expected a .txt or .jsonl file, got {path!r}")
        return
    if type(source).__module__.startswith("datasets"):
        source = _dataset_column(source, field_name)
    try:
        it = iter(source)
    except TypeError:
        raise TypeError(f"texts must be an iterable of str, a .txt/.jsonl path or a "
                        f"datasets.Dataset, got {type(source).__name__}") from None
    for i, t in enumerate(it):
        if isinstance(t, dict):
            t = t.get(field_name)
        if not isinstance(t, str):
            raise TypeError(f"texts: document {i} is {type(t).__name__}, expected str")
        yield t


def _dataset_column(ds, field_name: str):
    """The field_name column of a datasets.Dataset / IterableDataset (lazy, not a list)."""
    if type(ds).__name__ in ("DatasetDict", "IterableDatasetDict"):
        raise TypeError(f"texts: a {type(ds).__name__} with splits {list(ds)}: pass one "
                        "split, e.g. ds['train']")
    cols = getattr(ds, "column_names", None)
    if cols is None:                     # a stream of unknown columns: dicts, read lazily
        return ds
    if field_name not in cols:
        raise ValueError(f"texts: the dataset has no column field_name={field_name!r}; "
                         f"its columns are {cols}")
    return ds[field_name]


def _has_paragraphs(path: str) -> bool:
    """Whether a blank line separates two non-blank lines of the file (streamed; stops at
    the first one): the "auto" test, the same as looking for an empty line in the stripped
    text, with whitespace-only lines counted as blank."""
    state = 0                 # 0: no text yet, 1: in text, 2: blank line after text
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                if state == 2:
                    return True
                state = 1
            elif state == 1:
                state = 2
    return False


def _txt(path: str, mode: str):
    if mode == "auto":
        mode = "paragraphs" if _has_paragraphs(path) else "lines"
    with open(path, encoding="utf-8") as f:      # universal newlines: \r\n reads as \n
        if mode == "lines":
            for line in f:
                if line.strip():
                    yield line.strip()
            return
        para: list[str] = []
        for line in f:
            if line.strip():
                para.append(line.rstrip("\n"))
            elif para:
                yield " ".join(para).strip()
                para = []
        if para:
            yield " ".join(para).strip()


def _jsonl(path: str, field_name: str):
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise TypeError(f"{path}:{n}: expected a JSON object, got "
                                f"{type(obj).__name__}")
            if field_name not in obj:
                raise ValueError(f"{path}:{n}: no field {field_name!r} (use --field)")
            if not isinstance(obj[field_name], str):
                raise TypeError(f"{path}:{n}: field {field_name!r} is "
                                f"{type(obj[field_name]).__name__}, expected str")
            yield obj[field_name]


@dataclass
class Piece:
    """One model input sequence: ids [T] and which of them are special tokens."""
    doc_id: int
    ids: list[int]
    special: list[int]


@dataclass
class TokenCounts:
    docs: int = 0
    truncated: int = 0        # documents cut at max_length (truncate mode)
    windowed: int = 0         # documents split into several windows
    dropped_tokens: int | None = 0   # tokens lost to truncation (None: not counted)


def add_counts(a, b):
    """a + b for counts where None means 'not counted' (and stays so)."""
    return None if a is None or b is None else a + b


def pieces_of(tokenizer, text: str, doc_id: int, max_length: int, windows: bool,
              counts: TokenCounts) -> list[Piece]:
    """Tokenize one document (with the tokenizer's special tokens) and cut it to max_length:
    the leading/trailing special tokens are repeated around every window."""
    enc = tokenizer(text, add_special_tokens=True, return_special_tokens_mask=True,
                    truncation=False, verbose=False)
    return cut_pieces(list(enc["input_ids"]), list(enc["special_tokens_mask"]), doc_id,
                      max_length, windows, counts)


_PREFIX_CHARS_PER_TOKEN = 8   # a text prefix this long per wanted token is plenty in practice
_PREFIX_MARGIN = 16           # tokens past max_length that prove the cut did not matter


def _prefix(text: str, max_tokens: int) -> str:
    """The text cut at a whitespace near max_tokens * 8 characters (the text itself when
    short or without whitespace there)."""
    limit = max_tokens * _PREFIX_CHARS_PER_TOKEN + 64
    if len(text) <= limit:
        return text
    cut = max(text.rfind(c, 0, limit) for c in " \n\t")
    return text[:cut] if cut > 0 else text


def tokenized(tokenizer, docs, chunk: int = 32, prefix_tokens: int | None = None):
    """(doc_id, input_ids, special_tokens_mask, cut) for an iterable of (doc_id, text).

    Documents are tokenized in batches (one call into the fast tokenizer per chunk) and the
    next chunk is tokenized in a background thread while the caller runs the model on the
    current one, so tokenization stays off the capture's critical path.

    prefix_tokens (truncation without counting dropped tokens): only a whitespace-cut
    prefix of a long text is tokenized. Tokenizers split words at whitespace, so the first
    tokens of the prefix are the first tokens of the text; the prefix is kept only when it
    yields at least prefix_tokens + 16 tokens (else the whole text is tokenized), and
    `cut` is True for such documents (their dropped-token count is unknown)."""
    from concurrent.futures import ThreadPoolExecutor

    def encode_texts(texts):
        enc = tokenizer(texts, add_special_tokens=True, return_special_tokens_mask=True,
                        truncation=False, verbose=False)
        return enc["input_ids"], enc["special_tokens_mask"]

    def encode(batch):
        texts = [t for _, t in batch]
        cut_texts = texts if prefix_tokens is None else [_prefix(t, prefix_tokens)
                                                         for t in texts]
        ids, sps = encode_texts(cut_texts)
        out = []
        for (d, text), cut_text, i, sp in zip(batch, cut_texts, ids, sps):
            cut = cut_text is not text
            if cut and len(i) < prefix_tokens + _PREFIX_MARGIN:   # too short to be sure
                (i,), (sp,) = encode_texts([text])
                cut = False
            out.append((d, list(i), list(sp), cut))
        return out

    def chunks():
        batch = []
        for item in docs:
            batch.append(item)
            if len(batch) == chunk:
                yield batch
                batch = []
        if batch:
            yield batch

    with ThreadPoolExecutor(1, thread_name_prefix="actspace-tokenize") as pool:
        ahead = None
        source = chunks()
        while True:
            try:
                batch = next(source)
            except StopIteration:
                break
            except BaseException:   # the source died: hand out what was read before it
                if ahead is not None:
                    yield from ahead.result()
                raise
            nxt = pool.submit(encode, batch)
            if ahead is not None:
                yield from ahead.result()
            ahead = nxt
        if ahead is not None:
            yield from ahead.result()


def cut_pieces(ids: list, sp: list, doc_id: int, max_length: int, windows: bool,
               counts: TokenCounts, text_cut: bool = False) -> list[Piece]:
    """Cut one tokenized document to max_length (see pieces_of). text_cut: ids come from a
    prefix of the text (see tokenized), so the dropped tokens are not counted."""
    counts.docs += 1
    if len(ids) <= max_length:
        return [Piece(doc_id, ids, sp)]
    lead = next((i for i, s in enumerate(sp) if not s), len(sp))
    trail = next((i for i, s in enumerate(reversed(sp)) if not s), 0)
    body = max_length - lead - trail
    if body <= 0:
        raise ValueError(f"max_length={max_length} leaves no room for text next to "
                         f"{lead + trail} special tokens")
    head, tail = (ids[:lead], sp[:lead]), (ids[len(ids) - trail:], sp[len(sp) - trail:])
    content, csp = ids[lead:len(ids) - trail], sp[lead:len(sp) - trail]
    starts = range(0, len(content), body) if windows else [0]
    if windows:
        counts.windowed += 1
    else:
        counts.truncated += 1
        if text_cut or counts.dropped_tokens is None:
            counts.dropped_tokens = None
        else:
            counts.dropped_tokens += len(content) - body
    return [Piece(doc_id, head[0] + content[s:s + body] + tail[0],
                  head[1] + csp[s:s + body] + tail[1]) for s in starts]


def collate(pieces: list[Piece], pad_id: int):
    """Right-padded batch: input_ids, attention_mask [B, T] and keep-able specials [B, T]."""
    T = max(len(p.ids) for p in pieces)
    B = len(pieces)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.long)
    special = torch.zeros(B, T, dtype=torch.bool)
    for i, p in enumerate(pieces):
        n = len(p.ids)
        ids[i, :n] = torch.tensor(p.ids)
        mask[i, :n] = 1
        special[i, :n] = torch.tensor(p.special, dtype=torch.bool)
    return ids, mask, special
