"""The kinds of issue 14 (matryoshka, gated, jumprelu with an L0 target) go through the same
paths as the others: trained from a store, evaluated (FVU, L0 against a hand computation)
and encoded into a sparse latent store that decodes back to their reconstruction."""
import pytest
import torch

import actspace as acts
from _saeeval_helpers import random_store
from actspace.decompose.latents import LatentStats


@pytest.mark.parametrize("kind,opts", [("matryoshka", {"k": 4}), ("gated", {"l1_coeff": 0.05}),
                                       ("jumprelu", {"l0_target": 4, "bandwidth": 0.1})])
def test_train_evaluate_encode(tmp_path, kind, opts):
    path, shards = random_store(tmp_path / "store", d=16, sizes=(120, 90))
    store = acts.ActivationStore.open(path)
    sae = acts.train_sae(store, kind=kind, d_sae=48, batch_size=64, epochs=2, lr=3e-3,
                         progress=False, **opts).sae
    x = torch.cat([s["acts"] for s in shards])
    rec = acts.evaluate_sae(sae, store, batch_size=50)["reconstruction"]
    with torch.no_grad():
        code = sae.encode(x)
        fvu = float((x - sae.decode(code)).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert rec["fvu"] == pytest.approx(fvu, rel=1e-3, abs=1e-5)
    assert rec["l0"] == pytest.approx(float(code.l0.float().mean()), rel=1e-3)
    stats = acts.encode_store(sae, store, tmp_path / "latents", batch_size=50)
    ref = LatentStats(48, top_t=16).update((code.values.half(), code.indices), 0)
    assert torch.equal(stats.counts, ref.counts)       # the same codes, stored
