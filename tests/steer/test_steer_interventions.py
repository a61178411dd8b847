"""Ablation, SAE-feature steering, norm preservation, input hookpoints and composition,
checked in float64 on a tiny random Llama."""
from types import SimpleNamespace

import pytest
import torch

transformers = pytest.importorskip("transformers")

import actspace as acts  # noqa: E402
from actspace.model.hookpoints import resolve  # noqa: E402
from actspace.model.hooks import first_tensor  # noqa: E402

D = 16
HP = "model.layers.1"


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=53, hidden_size=D, intermediate_size=32, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(cfg).double().eval()


@pytest.fixture(scope="module")
def batch():
    ids = torch.tensor([[0, 0, 5, 9, 11, 3], [7, 8, 9, 10, 12, 4]])
    am = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    return {"input_ids": ids, "attention_mask": am}


def _read(model, hookpoint, batch, *ctxs):
    """Activation at hookpoint [B, T, d] after every intervention in ctxs (entered in order)."""
    (hp,) = resolve(model, hookpoint)
    got = {}
    import contextlib
    with contextlib.ExitStack() as stack, torch.no_grad():
        for c in ctxs:
            stack.enter_context(c())
        h = (hp.module.register_forward_hook(lambda m, a, o: got.setdefault("x", first_tensor(o)))
             if hp.side == "output" else
             hp.module.register_forward_pre_hook(lambda m, a: got.setdefault("x", first_tensor(a))))
        try:
            logits = model(**batch).logits
        finally:
            h.remove()
    return got["x"], logits


def test_ablate_projects_out_and_adds(llama, batch):
    g = torch.Generator().manual_seed(1)
    v = torch.randn(D, generator=g, dtype=torch.float64)
    u = v / v.norm()
    x0, _ = _read(llama, HP, batch)
    m = batch["attention_mask"].bool()
    for add in (None, 2.5):
        x1, _ = _read(llama, HP, batch, lambda: acts.ablate(llama, v, HP, add=add))
        ref = x0 - (x0 @ u).unsqueeze(-1) * u + (0 if add is None else add * u)
        torch.testing.assert_close(x1[m], ref[m], atol=1e-12, rtol=1e-12)
        assert torch.equal(x1[~m], x0[~m])                                  # padding untouched
        assert (x1[m] @ u).sub(0 if add is None else add).abs().max() < 1e-12


class TinySAE:
    """TopK-ReLU SAE with the attributes steer_with_sae relies on."""

    def __init__(self, d, m, k, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.hookpoint, self.k = HP, k
        self.W_enc = torch.randn(m, d, generator=g, dtype=torch.float64) / d ** 0.5
        self.b_enc = torch.randn(m, generator=g, dtype=torch.float64) * 0.1
        self.W_dec = torch.randn(m, d, generator=g, dtype=torch.float64) / d ** 0.5
        self.b_dec = torch.zeros(d, dtype=torch.float64)

    def encode(self, x):                                   # x [N, d] -> values/indices [N, k]
        pre = torch.relu((x - self.b_dec) @ self.W_enc.T + self.b_enc)
        vals, idx = pre.topk(self.k, dim=-1)
        idx = torch.where(vals > 0, idx, torch.full_like(idx, -1))
        return SimpleNamespace(values=vals * (idx >= 0), indices=idx)

    def dense(self, code):                                 # [N, m]
        out = torch.zeros(code.indices.shape[0], self.W_dec.shape[0], dtype=torch.float64)
        ok = code.indices >= 0
        rows = torch.arange(out.shape[0]).unsqueeze(1).expand_as(code.indices)
        out[rows[ok], code.indices[ok]] = code.values[ok]
        return out

    def decode(self, code):                                # -> [N, d]
        return self.dense(code) @ self.W_dec + self.b_dec


@pytest.mark.parametrize("mode", ["clamp", "add"])
def test_steer_with_sae_equals_decode_of_modified_code_plus_error(llama, batch, mode):
    sae = TinySAE(D, 40, k=4)
    x0, _ = _read(llama, HP, batch)
    flat = x0.reshape(-1, D)
    code = sae.encode(flat)
    dense = sae.dense(code)
    active = int(code.indices[0, 0])                       # a latent that fires somewhere
    feats = {active: 3.0, 39: -1.5}
    x1, logits = _read(llama, HP, batch, lambda: acts.steer_with_sae(llama, sae, feats, mode=mode))
    mod = dense.clone()
    for f, val in feats.items():
        mod[:, f] = val if mode == "clamp" else mod[:, f] + val
    err = flat - sae.decode(code)
    ref = (mod @ sae.W_dec + sae.b_dec + err).reshape(x0.shape)
    m = batch["attention_mask"].bool()
    torch.testing.assert_close(x1[m], ref[m], atol=1e-12, rtol=1e-12)
    assert torch.equal(x1[~m], x0[~m])
    assert (x1[m] - x0[m]).abs().max() > 0.1
    with pytest.raises(ValueError, match="latent id"):
        acts.steer_with_sae(llama, sae, {40: 1.0})
    with pytest.raises(ValueError, match="mode"):
        acts.steer_with_sae(llama, sae, {1: 1.0}, mode="set")


def _dense(code, m):
    """[N, m] dense latents of a SparseCode (index -1 = empty slot)."""
    ok = code.indices >= 0
    return torch.zeros(code.indices.shape[0], m, dtype=code.values.dtype).scatter_add_(
        1, code.indices.clamp_min(0).long(), code.values * ok)


def _modified(dense, feats, mode):
    mod = dense.clone()
    for f, val in feats.items():
        mod[:, f] = val if mode == "clamp" else mod[:, f] + val
    return mod


@pytest.mark.parametrize("kind", ["topk", "jumprelu"])
@pytest.mark.parametrize("mode", ["clamp", "add"])
def test_steer_with_library_sae_equals_decode_plus_error(llama, batch, kind, mode):
    """The library's acts.SAE (its SparseCode, b_dec, JumpReLU's padded code): x' equals
    sae.decode(modified code) + (x - sae.decode(code))."""
    torch.manual_seed(4)
    sae = acts.SAE(D, 40, kind, k=4 if kind == "topk" else None, hookpoint=HP, dtype=torch.float64)
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.3)
        sae.b_enc.normal_(0, 0.3)
        if kind == "jumprelu":
            sae.threshold.fill_(0.05)
    x0, _ = _read(llama, HP, batch)
    flat = x0.reshape(-1, D)
    with torch.no_grad():
        code = sae.encode(flat)
    feats = {int(code.indices[2, 0]): 3.0, 39: -1.5}
    x1, _ = _read(llama, HP, batch, lambda: acts.steer_with_sae(llama, sae, feats, mode=mode))
    with torch.no_grad():
        ref = (sae.decode(_modified(_dense(code, 40), feats, mode)) + flat - sae.decode(code)).reshape(x0.shape)
    m = batch["attention_mask"].bool()
    torch.testing.assert_close(x1[m], ref[m], atol=1e-12, rtol=1e-12)
    assert torch.equal(x1[~m], x0[~m]) and (x1[m] - x0[m]).abs().max() > 0.1


@pytest.mark.parametrize("mode", ["clamp", "add"])
def test_steer_with_transcoder_encodes_in_writes_out(llama, batch, mode):
    """A transcoder reads the MLP input and stands for its output: encoded at hookpoint,
    the change added at hookpoint_out = decode(modified code) + (mlp out - decode(code))."""
    hp_in, hp_out = "model.layers.1.mlp:input", "model.layers.1.mlp"
    torch.manual_seed(5)
    tc = acts.SAE(D, 40, "topk", k=4, hookpoint=hp_in, hookpoint_out=hp_out, dtype=torch.float64)
    assert tc.is_transcoder
    x_in, _ = _read(llama, hp_in, batch)
    y0, _ = _read(llama, hp_out, batch)
    with torch.no_grad():
        code = tc.encode(x_in.reshape(-1, D))
    feats = {int(code.indices[2, 0]): 4.0, 7: 2.0}
    y1, _ = _read(llama, hp_out, batch, lambda: acts.steer_with_sae(llama, tc, feats, mode=mode))
    x_in1, _ = _read(llama, hp_in, batch, lambda: acts.steer_with_sae(llama, tc, feats, mode=mode))
    with torch.no_grad():
        err = y0.reshape(-1, D) - tc.decode(code)
        ref = (tc.decode(_modified(_dense(code, 40), feats, mode)) + err).reshape(y0.shape)
    m = batch["attention_mask"].bool()
    assert torch.equal(x_in1, x_in)                                         # the input is only read
    torch.testing.assert_close(y1[m], ref[m], atol=1e-12, rtol=1e-12)
    assert torch.equal(y1[~m], y0[~m]) and (y1[m] - y0[m]).abs().max() > 0.1
    # a transcoder must say where it writes, and write somewhere else than it reads
    with pytest.raises(ValueError, match="hookpoint_out"):
        acts.steer_with_sae(llama, acts.SAE(D, 40, "topk", k=4, d_out=8, hookpoint=hp_in), {1: 1.0})
    with pytest.raises(ValueError, match="hookpoint_out"):
        acts.steer_with_sae(llama, acts.SAE(D, 40, "topk", k=4, hookpoint=hp_out, hookpoint_out=hp_out), {1: 1.0})


def test_normalize_preserves_token_norms(llama, batch):
    v = acts.SteeringVector({HP: torch.ones(D) * 2})
    x0, _ = _read(llama, HP, batch)
    x1, _ = _read(llama, HP, batch, lambda: v.apply(llama, 3.0, normalize=True))
    m = batch["attention_mask"].bool()
    torch.testing.assert_close(x1.norm(dim=-1)[m], x0.norm(dim=-1)[m], atol=1e-5, rtol=1e-5)
    ref = x0 + 6.0
    ref = ref * (x0.norm(dim=-1, keepdim=True) / ref.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(x1[m], ref[m], atol=1e-5, rtol=1e-5)


def test_input_hookpoint_equals_previous_output(llama, batch):
    g = torch.Generator().manual_seed(2)
    vec = torch.randn(D, generator=g)
    _, a = _read(llama, HP, batch, lambda: acts.SteeringVector({"model.layers.0": vec}).apply(llama, 1.5))
    _, b = _read(llama, HP, batch, lambda: acts.SteeringVector({"model.layers.1:input": vec}).apply(llama, 1.5))
    _, c = _read(llama, HP, batch)
    torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    assert (a - c).abs().max() > 1e-3


def test_interventions_compose(llama, batch):
    g = torch.Generator().manual_seed(3)
    v1, v2 = torch.randn(D, generator=g), torch.randn(D, generator=g)
    s1, s2 = acts.SteeringVector({HP: v1}), acts.SteeringVector({HP: v2})
    x_both, _ = _read(llama, HP, batch, lambda: s1.apply(llama, 1.0), lambda: s2.apply(llama, 2.0))
    x_sum, _ = _read(llama, HP, batch, lambda: acts.SteeringVector({HP: v1 + 2 * v2}).apply(llama, 1.0))
    torch.testing.assert_close(x_both, x_sum, atol=1e-6, rtol=1e-6)
    # ablation after addition removes what the addition put along that direction
    u = v1.double() / v1.double().norm()
    x_abl, _ = _read(llama, HP, batch, lambda: s1.apply(llama, 5.0), lambda: acts.ablate(llama, v1, HP))
    m = batch["attention_mask"].bool()
    assert (x_abl[m] @ u).abs().max() < 1e-5
