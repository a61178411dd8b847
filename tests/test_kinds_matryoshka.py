"""Matryoshka BatchTopK's maths (decompose/kinds_new/matryoshka.py) against a hand
computation in float64."""
import pytest
import torch

from actspace.decompose.kinds_new.matryoshka import (batch_topk, check_prefixes,
                                                      default_prefixes, matryoshka_loss)

D = torch.float64


def test_batch_topk_keeps_the_k_n_largest_of_the_batch():
    pre = torch.tensor([[3, -1, 0.5, 2], [0.2, 4, -2, 1], [1, 0, 0, 0.1]], dtype=D)
    acts, mask, smallest = batch_topk(pre, k=1)          # top 3 of 12: 4, 3, 2
    want = torch.tensor([[3, 0, 0, 2], [0, 4, 0, 0], [0, 0, 0, 0]], dtype=D)
    assert torch.equal(acts, want) and torch.equal(mask, want > 0)
    assert float(smallest) == 2.0


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
    assert default_prefixes(3072, 32) == [192, 384, 768, 1536, 3072]
    assert default_prefixes(128, 32) == [32, 64, 128]
    assert check_prefixes([64, 128], 256) == [64, 128, 256]     # d_sae appended
    for bad in ([128, 64, 256], [0, 256], [64, 300]):
        with pytest.raises(ValueError, match="prefixes"):
            check_prefixes(bad, 256)
    with pytest.raises(TypeError, match="prefixes"):
        check_prefixes(["a"], 256)
