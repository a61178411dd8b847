"""Explain and score, end to end against the local fake LLM (tests/_llm_server.py), on a
latent store whose latents each fire on one word (tests/_interp_helpers.py); the sampling,
the prompt parsers and the metrics against hand computations."""
from __future__ import annotations

import itertools
import random

import pytest
import torch

import actspace as acts
from _interp_helpers import WORDS, word_latent_store
from _llm_server import FakeLLM
from actspace.interp.metrics import auroc, balanced_accuracy
from actspace.interp.prompts import (MalformedAnswer, highlight, label_probabilities,
                                     parse_explanation, parse_labels)
from actspace.interp.sampling import sample_examples

SAMPLING = {"n_train": 8, "n_test": 10, "n_negative": 10, "n_quantiles": 3}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return word_latent_store(tmp_path_factory.mktemp("interp"))


def llm(url, cache=None, **kw):
    return acts.llm.openai_compatible(url, "fake", progress=False, backoff_s=0.01,
                                      cache_dir=cache, **kw)


# ---------------------------------------------------------------------- metrics, parsing
def test_auroc_and_balanced_accuracy_by_hand():
    assert auroc([1, 1, 0, 0], [0.9, 0.8, 0.1, 0.2]) == 1.0
    assert auroc([1, 1, 0, 0], [0.1, 0.2, 0.9, 0.8]) == 0.0
    # pairs (pos, neg): (.5,.5) tie=0.5, (.5,.1)=1, (.3,.5)=0, (.3,.1)=1 -> 2.5 / 4
    assert auroc([1, 0, 1, 0], [0.5, 0.5, 0.3, 0.1]) == 0.625
    assert auroc([1, 1], [0.1, 0.2]) is None and auroc([1, 0], [float("nan"), 0]) is None
    g = random.Random(0)
    for _ in range(20):                       # against the pairwise definition
        lab = [g.random() < 0.4 for _ in range(15)] + [True, False]
        sc = [g.choice([0.0, 0.25, 0.5, 1.0]) for _ in lab]
        pairs = [(p, n) for p, n in itertools.product(range(len(lab)), repeat=2)
                 if lab[p] and not lab[n]]
        want = sum(1.0 if sc[p] > sc[n] else 0.5 if sc[p] == sc[n] else 0.0
                   for p, n in pairs) / len(pairs)
        assert auroc(lab, sc) == pytest.approx(want, abs=1e-12)
    # TPR 2/3, TNR 1/2
    assert balanced_accuracy([1, 1, 1, 0, 0], [1, 1, 0, 0, 1]) == pytest.approx(7 / 12)
    assert balanced_accuracy([1, 1], [1, 0]) is None


def test_parsers_on_malformed_answers():
    assert parse_explanation("thinking...\n[EXPLANATION]: \"the word 'cat'\"") == "the word 'cat'"
    assert parse_explanation("[explanation] **Numbers in lists**") == "Numbers in lists"
    for bad in ("", "no format at all", "[EXPLANATION]:   "):
        with pytest.raises(MalformedAnswer):
            parse_explanation(bad)
    assert parse_labels("Sure: [1, 0,1 ,0, 1]", 5) == [True, False, True, False, True]
    # the last list of the right length wins; a list of another length is no answer
    assert parse_labels("e.g. [1, 0, 1]. Answer: [0, 0, 1]", 3) == [False, False, True]
    for bad in ("[1, 0]", "[1, 0, 2]", "yes, no, yes", "[true, false, true]", None):
        with pytest.raises(MalformedAnswer):
            parse_labels(bad, 3)


def test_label_probabilities_from_logprobs():
    import math
    lp = [{"token": "[", "logprob": 0.0, "top_logprobs": []},
          {"token": "1", "logprob": math.log(0.8),
           "top_logprobs": [{"token": "1", "logprob": math.log(0.6)},
                            {"token": "0", "logprob": math.log(0.2)},
                            {"token": " 1", "logprob": math.log(0.1)}]},
          {"token": ",", "logprob": 0.0, "top_logprobs": []},
          {"token": " 0", "logprob": math.log(0.9),
           "top_logprobs": [{"token": " 0", "logprob": math.log(0.9)},
                            {"token": "1", "logprob": math.log(0.1)}]},
          {"token": "]", "logprob": 0.0, "top_logprobs": []}]
    assert label_probabilities(lp, 2) == pytest.approx([0.7 / 0.9, 0.1])
    assert label_probabilities(lp, 3) is None and label_probabilities(None, 2) is None


def test_highlight():
    assert highlight(["a", " big", " cat", "."], [False, True, True, False]) == "a <<big cat>>."


# ---------------------------------------------------------------------- sampling
def test_sampling_is_deterministic_quantiled_and_held_out(store):
    lat, tok = store
    a = sample_examples(lat, [0, 2, 9], tokenizer=tok, **SAMPLING, train="quantiles", seed=3)
    b = sample_examples(lat, [2], tokenizer=tok, **SAMPLING, train="quantiles", seed=3)
    c = sample_examples(lat, [2], tokenizer=tok, **SAMPLING, train="quantiles", seed=4)
    key = lambda le: [(e.text, e.acts) for e in le.train + le.test + le.negative]  # noqa: E731
    assert key(a[2]) == key(b[2])              # other latents asked for change nothing
    assert key(a[2]) != key(c[2])
    for m in (0, 2):
        le = a[m]
        assert len(le.train) == 8 and len(le.test) == 10 and len(le.negative) == 10
        assert not {e.text for e in le.train} & {e.text for e in le.test}
        for e in le.train + le.test:           # fires exactly on its word, nowhere else
            assert e.max_act > 0 and e.activating
            fired = [t.strip() for t, v in zip(e.tokens, e.acts) if v > 0]
            assert fired and set(fired) == {WORDS[m]}
        assert all(not e.activating and e.max_act == 0 and WORDS[m] not in e.text.split()
                   for e in le.negative)
        assert {e.quantile for e in le.test} == {0, 1, 2}     # every quantile drawn
        assert tok.decode(tok(le.test[0].text, add_special_tokens=False)["input_ids"]) \
            == le.test[0].text.strip()
    assert a[9].train == [] and a[9].test == [] and a[9].n_activating == 0
    top = sample_examples(lat, [0], tokenizer=tok, **SAMPLING)[0]
    assert [e.max_act for e in top.train] == sorted((e.max_act for e in top.train), reverse=True)
    assert top.train[0].max_act == pytest.approx(max(e.max_act for e in a[0].train + a[0].test
                                                     + top.train), rel=0)


def test_sampling_neighbours_and_errors(store):
    lat, tok = store

    class WordEmbedder:                        # a text is near when it holds 'the'
        def embed(self, texts):
            v = torch.tensor([[1.0, float("the" in t.split())] for t in texts])
            return torch.nn.functional.normalize(v, dim=1)

    le = sample_examples(lat, [1], tokenizer=tok, **SAMPLING, n_neighbours=4,
                         embedder=WordEmbedder())[1]
    kinds = [e.kind for e in le.negative]
    assert kinds.count("neighbour") == 4 and kinds.count("random") == 6
    assert all(not e.activating for e in le.negative)
    with pytest.raises(ValueError, match="out of range"):
        sample_examples(lat, [12], tokenizer=tok)
    with pytest.raises(ValueError, match="needs an embedder"):
        sample_examples(lat, [1], tokenizer=tok, n_neighbours=2)
    with pytest.raises(ValueError, match="train"):
        sample_examples(lat, [1], tokenizer=tok, train="best")


# ---------------------------------------------------------------------- end to end
def test_explain_and_score_perfect_llm(store, tmp_path):
    lat, tok = store
    with FakeLLM() as srv:
        c = llm(srv.url, tmp_path / "cache", max_concurrency=4)
        ex = acts.explain(lat, range(8), client=c, tokenizer=tok, sampling=SAMPLING)
        assert ex.texts == {m: f"the word '{w}'" for m, w in enumerate(WORDS)}
        assert set(ex.errors) == {6, 7} and "never fires" in ex.errors[6]
        assert len(srv.requests) == 6 and ex.usage["requests"] == 6
        scored = acts.score_explanations(ex, lat, ["detection", "fuzzing"], client=c,
                                         tokenizer=tok)
    for m in range(6):
        for s in ("detection", "fuzzing"):
            r = scored.scores[m][s]
            assert r["balanced_accuracy"] == 1.0 and r["auroc"] == 1.0, (m, s, r)
            assert r["n"] == 20 and r["failed_prompts"] == 0
    # 20 examples, 5 per prompt: 4 prompts per latent and scorer
    assert len(srv.requests) == 6 + 6 * 4 * 2
    path = scored.save(tmp_path)
    back = acts.Explanations.load(path)
    assert back.texts == scored.texts and back.scores == scored.scores
    assert back.errors == scored.errors and back.sampling["n_test"] == 10


def test_passes_over_the_store_change_nothing(store):
    lat, tok = store
    with FakeLLM() as srv:
        one = acts.explain(lat, range(8), client=llm(srv.url), tokenizer=tok, sampling=SAMPLING)
        three = acts.explain(lat, range(8), client=llm(srv.url), tokenizer=tok,
                             sampling=SAMPLING, latents_per_pass=3)
        s1 = acts.score_explanations(one, lat, ["detection"], client=llm(srv.url),
                                     tokenizer=tok)
        s3 = acts.score_explanations(one, lat, ["detection"], client=llm(srv.url),
                                     tokenizer=tok, latents_per_pass=2)
    assert one.texts == three.texts and one.errors == three.errors
    assert s1.scores == s3.scores


def test_logprobs_give_the_auroc_and_neighbours_are_negatives(store):
    lat, tok = store
    texts = {m: f"the word '{w}'" for m, w in enumerate(WORDS[:3])}

    class Toy:                                 # near: the texts holding 'the'
        def embed(self, texts):
            v = torch.tensor([[1.0, float("the" in t.split())] for t in texts])
            return torch.nn.functional.normalize(v, dim=1)

    with FakeLLM() as srv:
        c = llm(srv.url)
        s = acts.score_explanations(texts, lat, ["detection", "fuzzing"], client=c,
                                    tokenizer=tok, logprobs=True, embedder=Toy(),
                                    sampling={**SAMPLING, "n_neighbours": 4})
    assert all(r["body"]["logprobs"] is True and r["body"]["top_logprobs"] == 5
               for r in srv.requests)
    for m in texts:
        for name in ("detection", "fuzzing"):
            r = s.scores[m][name]
            assert r["auroc_from"] == "logprobs" and r["auroc"] == 1.0 and r["n"] == 20
    assert s.sampling["n_neighbours"] == 4


def test_wrong_explanations_score_low(store):
    lat, tok = store
    wrong = {m: f"the word '{WORDS[(m + 1) % 6]}'" for m in range(6)}
    with FakeLLM() as srv:
        s = acts.score_explanations(wrong, lat, ["detection"], client=llm(srv.url),
                                    tokenizer=tok, sampling=SAMPLING)
    assert all(s.scores[m]["detection"]["balanced_accuracy"] <= 0.6 for m in range(6))


def test_malformed_answers_are_per_latent_errors(store):
    lat, tok = store
    texts = {m: f"the word '{w}'" for m, w in enumerate(WORDS)}
    with FakeLLM(malformed={"music"}) as srv:
        s = acts.score_explanations(texts, lat, ["detection", "fuzzing"], client=llm(srv.url),
                                    tokenizer=tok, sampling=SAMPLING)
    for name in ("detection", "fuzzing"):
        bad = s.scores[2][name]
        assert "no usable answer" in bad["error"] and "balanced_accuracy" not in bad
        assert bad["failed_prompts"] == 4
        assert all(s.scores[m][name]["balanced_accuracy"] == 1.0 for m in (0, 1, 3, 4, 5))


def test_failed_requests_are_per_latent_errors(store, tmp_path):
    lat, tok = store
    with FakeLLM(fail={500: 100}) as srv:
        ex = acts.explain(lat, [0, 1], client=llm(srv.url, max_retries=1), tokenizer=tok,
                          sampling=SAMPLING)
    assert ex.texts == {} and all("HTTP 500" in ex.errors[m] for m in (0, 1))


def test_cached_explain_sends_nothing(store, tmp_path):
    lat, tok = store
    with FakeLLM() as srv:
        first = acts.explain(lat, range(6), client=llm(srv.url, tmp_path), tokenizer=tok,
                             sampling=SAMPLING)
        n = len(srv.requests)
        c = llm(srv.url, tmp_path)
        again = acts.explain(lat, range(6), client=c, tokenizer=tok, sampling=SAMPLING)
    assert n == 6 and len(srv.requests) == 6 and c.usage.cached == 6
    assert again.texts == first.texts
