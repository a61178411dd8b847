"""acts.SAE: every kind encodes / decodes like a dense float64 formula; transcoders; errors."""
import pytest
import torch

import actspace as acts
from actspace.decompose.base import Decomposition, is_decomposition
from actspace.decompose.sae import SparseCode

D_IN, D_SAE, N = 24, 61, 37  # non-powers of two on purpose


def _random_sae(kind, k=None, d_out=None, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    sae = acts.SAE(D_IN, D_SAE, kind, k, d_out=d_out, dtype=dtype)
    with torch.no_grad():
        for p in (sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec):
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        if kind == "jumprelu":
            sae.threshold.copy_(torch.rand(D_SAE, generator=g) * 0.8)
        if kind == "batchtopk":
            sae.threshold.fill_(0.7)
    return sae


def _dense_acts64(sae, x):
    """The defining formula of each kind, in float64, dense [N, d_sae]."""
    W_enc, b_enc = sae.W_enc.double(), sae.b_enc.double()
    xx = x.double()
    if sae.apply_b_dec_to_input:
        xx = xx - sae.b_dec.double()
    z = torch.relu(xx @ W_enc.T + b_enc)
    if sae.kind == "topk":
        thr = z.topk(sae.k, dim=1).values[:, -1:]
        return torch.where(z >= thr, z, torch.zeros_like(z))
    if sae.kind == "relu":
        return z
    thr = sae.threshold.double()
    return torch.where(z > thr, z, torch.zeros_like(z))


@pytest.mark.parametrize("kind,k", [("topk", 5), ("batchtopk", 5), ("jumprelu", None),
                                    ("relu", None)])
@pytest.mark.parametrize("d_out", [None, 17])
def test_encode_decode_matches_dense_float64(kind, k, d_out):
    sae = _random_sae(kind, k, d_out=d_out)
    x = torch.randn(N, D_IN, generator=torch.Generator().manual_seed(1))
    code = sae.encode(x)
    assert isinstance(code, SparseCode)
    assert code.indices.dtype == torch.int32 and code.values.shape == code.indices.shape
    ref = _dense_acts64(sae, x)
    dense = code.to_dense().double()
    torch.testing.assert_close(dense, ref, rtol=1e-5, atol=1e-5)
    if kind != "topk":  # padded form: width = most active latents in any row
        assert code.values.shape[1] == max(int((ref > 0).sum(1).max()), 1)
        assert torch.equal(code.l0, (ref > 0).sum(1))
    x_hat, code2 = sae(x)
    ref_hat = ref @ sae.W_dec.double() + sae.b_dec.double()
    assert x_hat.shape == (N, sae.d_out)
    torch.testing.assert_close(x_hat.double(), ref_hat, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sae.decode(code2.to_dense()), x_hat, rtol=1e-5, atol=1e-5)


def test_float64_sae_is_exact_to_reference():
    sae = _random_sae("topk", 7, dtype=torch.float64)
    x = torch.randn(N, D_IN, dtype=torch.float64)
    x_hat, code = sae(x)
    ref = _dense_acts64(sae, x)
    torch.testing.assert_close(code.to_dense(), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x_hat, ref @ sae.W_dec + sae.b_dec, rtol=1e-12, atol=1e-12)


def test_empty_slots_are_minus_one():
    sae = _random_sae("relu")
    with torch.no_grad():
        sae.b_enc.fill_(-100.0)  # nothing fires
    code = sae.encode(torch.randn(4, D_IN))
    assert code.values.shape == (4, 1)
    assert (code.indices == -1).all() and (code.values == 0).all()
    torch.testing.assert_close(sae.decode(code), sae.b_dec.expand(4, -1))


def test_attributes_and_interface():
    sae = acts.SAE(8, 32, "topk", 4, hookpoint="encoder.layer.2", hookpoint_out="x.y", d_out=6)
    assert (sae.d_in, sae.d_sae, sae.d_out, sae.k, sae.kind) == (8, 32, 6, 4, "topk")
    assert sae.hookpoint == sae.hookpoint_in == "encoder.layer.2" and sae.is_transcoder
    assert sae.dtype == torch.float32 and sae.device.type == "cpu"
    assert not sae.apply_b_dec_to_input
    assert isinstance(sae, Decomposition) and is_decomposition(sae)
    # init: unit decoder rows; tied encoder for an autoencoder, rows of norm 1/√3
    ae = acts.SAE(8, 32, "topk", 4)
    torch.testing.assert_close(ae.W_dec.norm(dim=1), torch.ones(32))
    assert torch.equal(ae.W_enc, ae.W_dec * 3 ** -0.5)


def test_gradients_flow_through_ops():
    sae = _random_sae("topk", 4)
    x = torch.randn(9, D_IN)
    x_hat, _ = sae(x)
    x_hat.pow(2).sum().backward()
    for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


@pytest.mark.parametrize("args,kwargs,exc,match", [
    ((8, 32, "gated", 4), {}, ValueError, "kind"),
    ((8, 32, "topk"), {}, ValueError, "k is required"),
    ((8, 32, "topk", 33), {}, ValueError, "k must be <= d_sae"),
    ((8, 32, "relu", 4), {}, ValueError, "k must be None"),
    ((8, 32, "topk", 2.0), {}, TypeError, "k must be an int"),
    ((0, 32, "topk", 2), {}, ValueError, "d_in"),
    ((8, 32, "topk", 2), {"dtype": torch.int32}, TypeError, "dtype"),
    ((8, 32, "topk", 2), {"d_out": 5, "apply_b_dec_to_input": True}, ValueError, "d_out"),
])
def test_constructor_errors(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        acts.SAE(*args, **kwargs)


def test_call_errors():
    sae = acts.SAE(8, 32, "topk", 4)
    with pytest.raises(ValueError, match=r"x must have shape \[N, d_in=8\]"):
        sae.encode(torch.randn(3, 9))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        sae.encode([[0.0] * 8])
    with pytest.raises(ValueError, match="d_sae=32"):
        sae.decode(torch.randn(3, 31))
    with pytest.raises(TypeError, match="SparseCode"):
        sae.decode("code")


@pytest.mark.parametrize("kind", ["relu", "jumprelu"])
def test_threshold_kinds_encode_without_a_full_width_code(kind, monkeypatch):
    """The padded code is found at a bounded width (256, then x4 while a row fills it), not
    with k = d_sae: a sparse wide SAE never allocates [N, d_sae]; a dense one still gets
    every active latent."""
    from actspace import ops
    calls = []
    real = ops.topk_encode

    def spy(x, W, b, k, **kw):
        calls.append(k)
        return real(x, W, b, k, **kw)
    monkeypatch.setattr(ops, "topk_encode", spy)
    g = torch.Generator().manual_seed(0)
    d, M = 16, 3000
    sae = acts.SAE(d, M, kind)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(M, d, generator=g))
        sae.b_dec.zero_()
        if kind == "jumprelu":
            sae.threshold.fill_(0.0)
    x = torch.randn(5, d, generator=g)
    sae.b_enc.data.fill_(-10.0)                          # sparse: ~0.6% fire per row
    code = sae.encode(x)
    assert calls == [256] and 0 < code.values.shape[1] < 256
    ref = torch.relu(x.double() @ sae.W_enc.double().T + sae.b_enc.double())
    torch.testing.assert_close(code.to_dense().double(), ref, rtol=1e-5, atol=1e-5)
    calls.clear()
    sae.b_enc.data.fill_(0.0)                            # dense: about half of 3000 fire
    code = sae.encode(x)
    assert calls == [256, 1024, 3000]
    dense = torch.relu(x.double() @ sae.W_enc.double().T)
    assert code.values.shape[1] == int((dense > 0).sum(1).max())
    torch.testing.assert_close(code.to_dense().double(), dense, rtol=1e-5, atol=1e-5)


def test_init_rows_slices_equal_the_whole():
    """Latent sharding draws only its slice of the initial dictionary: any row range equals
    those rows of the whole draw (across block boundaries), rows are unit vectors, the
    encoder is tied for an autoencoder and separate for a transcoder."""
    from actspace.decompose.sae import _INIT_BLOCK, ENCODER_INIT_SCALE, init_rows
    M = 2 * _INIT_BLOCK + 37
    E, W = init_rows(7, 0, M, 12, 12)
    assert torch.equal(E, W * ENCODER_INIT_SCALE) and E.shape == (M, 12)
    torch.testing.assert_close(W.norm(dim=1), torch.ones(M))
    for lo, hi in [(0, 5), (_INIT_BLOCK - 3, _INIT_BLOCK + 4), (M - 10, M), (5, 5)]:
        e, w = init_rows(7, lo, hi, 12, 12)
        assert torch.equal(w, W[lo:hi]) and torch.equal(e, E[lo:hi])
    Et, Wt = init_rows(7, 0, 100, 12, 5)
    assert Et.shape == (100, 12) and Wt.shape == (100, 5)
    torch.testing.assert_close(Et.norm(dim=1), torch.full((100,), ENCODER_INIT_SCALE))
    assert not torch.equal(init_rows(8, 0, 100, 12, 12)[1], W[:100])   # the seed matters
    sae = acts.SAE(12, 100, "topk", 3)
    sae.init_weights(seed=7)
    assert torch.equal(sae.W_dec.detach(), W[:100])
    part = acts.SAE(12, 30, "topk", 3)
    part.init_weights(seed=7, rows=(50, 80))
    assert torch.equal(part.W_enc.detach(), E[50:80])
    with pytest.raises(ValueError, match="rows"):
        part.init_weights(seed=7, rows=(0, 10))
