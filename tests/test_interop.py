"""Interop: SAELens / sparsify / Gemma Scope files built with their exact field names load
correctly, round trips are bit-exact, and files disagreeing with their config fail clearly."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import actspace as acts

D_IN, D_SAE = 12, 40


def _tensors(dtype=torch.float32, d_out=D_IN, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    return {"W_enc": r(D_IN, D_SAE), "W_dec": r(D_SAE, d_out), "b_enc": r(D_SAE),
            "b_dec": r(d_out), "threshold": r(D_SAE).abs()}


def _write_saelens(path, arch="topk", topk_k=6, dtype=torch.float32, drop=(), **cfg_extra):
    path.mkdir()
    t = _tensors(dtype)
    if arch != "jumprelu":
        del t["threshold"]
    for name in drop:
        t.pop(name)
    save_file(t, str(path / "sae_weights.safetensors"))
    cfg = {"architecture": arch, "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32",
           "model_name": "gpt2", "hook_name": "blocks.3.hook_resid_post", "hook_layer": 3,
           "apply_b_dec_to_input": arch != "jumprelu", "normalize_activations": "none",
           "activation_fn_str": "topk" if arch == "topk" else "relu",
           "activation_fn_kwargs": {"k": topk_k} if arch == "topk" else {}}
    cfg.update(cfg_extra)
    (path / "cfg.json").write_text(json.dumps(cfg))
    return t, cfg


def _write_sparsify(path, k=6, shapes=None):
    path.mkdir()
    t = _tensors()
    st = {"encoder.weight": t["W_enc"].T.contiguous(), "encoder.bias": t["b_enc"],
          "W_dec": t["W_dec"], "b_dec": t["b_dec"]}
    for name, shape in (shapes or {}).items():
        st[name] = torch.zeros(shape)
    save_file(st, str(path / "sae.safetensors"))
    (path / "cfg.json").write_text(json.dumps({
        "expansion_factor": 4, "normalize_decoder": True, "num_latents": D_SAE, "k": k,
        "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": D_IN}))
    return st


def _assert_same_files(a, b):
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    for n in ta:
        assert ta[n].dtype == tb[n].dtype and torch.equal(ta[n], tb[n]), n


@pytest.mark.parametrize("arch,kind", [("topk", "topk"), ("standard", "relu"),
                                       ("jumprelu", "jumprelu")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_saelens_load_and_round_trip(tmp_path, arch, kind, dtype):
    t, cfg = _write_saelens(tmp_path / "in", arch, dtype=dtype)
    sae = acts.SAE.load(tmp_path / "in")
    assert sae.kind == kind and sae.dtype == dtype
    assert (sae.d_in, sae.d_sae) == (D_IN, D_SAE) and sae.hookpoint == cfg["hook_name"]
    assert sae.k == (6 if kind == "topk" else None)
    assert sae.apply_b_dec_to_input == cfg["apply_b_dec_to_input"]
    assert torch.equal(sae.W_enc, t["W_enc"].T) and torch.equal(sae.W_dec, t["W_dec"])
    sae.save(tmp_path / "out", format="saelens")
    _assert_same_files(tmp_path / "in" / "sae_weights.safetensors",
                       tmp_path / "out" / "sae_weights.safetensors")
    out_cfg = json.loads((tmp_path / "out" / "cfg.json").read_text())
    assert out_cfg["model_name"] == "gpt2" and out_cfg["architecture"] == arch
    back = acts.SAE.load(tmp_path / "out")
    for n, p in sae.state_dict().items():
        assert torch.equal(p, back.state_dict()[n]), n


def test_saelens_topk_k_top_level_field(tmp_path):
    _write_saelens(tmp_path / "in", "topk", activation_fn_kwargs={}, k=9)
    assert acts.SAE.load(tmp_path / "in").k == 9


def test_sparsify_load_and_round_trip(tmp_path):
    st = _write_sparsify(tmp_path / "in")
    sae = acts.SAE.load(tmp_path / "in")
    assert sae.kind == "topk" and sae.k == 6 and sae.apply_b_dec_to_input
    x = torch.randn(5, D_IN)
    # sparsify's forward: relu(encoder(x - b_dec)) -> top-k -> W_dec decode + b_dec
    z = torch.relu((x - st["b_dec"]) @ st["encoder.weight"].T + st["encoder.bias"])
    top = z.topk(6, dim=1)
    want = torch.zeros_like(z).scatter_(1, top.indices, top.values) @ st["W_dec"] + st["b_dec"]
    torch.testing.assert_close(sae(x)[0], want, rtol=1e-5, atol=1e-5)
    sae.save(tmp_path / "out", format="sparsify")
    _assert_same_files(tmp_path / "in" / "sae.safetensors", tmp_path / "out" / "sae.safetensors")
    cfg = json.loads((tmp_path / "out" / "cfg.json").read_text())
    assert (cfg["d_in"], cfg["num_latents"], cfg["k"]) == (D_IN, D_SAE, 6)
    # and on to SAELens and back: still bit-exact
    sae.save(tmp_path / "lens", format="saelens")
    back = acts.SAE.load(tmp_path / "lens")
    for n, p in sae.state_dict().items():
        assert torch.equal(p, back.state_dict()[n]), n


def test_gemmascope_npz_round_trip(tmp_path):
    t = {n: v.numpy() for n, v in _tensors().items()}
    np.savez(tmp_path / "params.npz", **t)
    sae = acts.SAE.load(tmp_path / "params.npz")
    assert sae.kind == "jumprelu" and not sae.apply_b_dec_to_input
    x = torch.randn(6, D_IN)
    pre = x @ torch.from_numpy(t["W_enc"]) + torch.from_numpy(t["b_enc"])  # Gemma Scope
    acts_ = (pre > torch.from_numpy(t["threshold"])) * torch.relu(pre)
    want = acts_ @ torch.from_numpy(t["W_dec"]) + torch.from_numpy(t["b_dec"])
    torch.testing.assert_close(sae(x)[0], want, rtol=1e-5, atol=1e-5)
    sae.save(tmp_path / "gs", format="gemmascope")
    with np.load(tmp_path / "gs" / "params.npz", allow_pickle=False) as z:
        for n in t:
            assert np.array_equal(z[n], t[n]) and z[n].dtype == t[n].dtype, n
    sae.save(tmp_path / "lens", format="saelens")
    back = acts.SAE.load(tmp_path / "lens")
    assert back.kind == "jumprelu" and not back.apply_b_dec_to_input
    assert torch.equal(back.threshold, torch.from_numpy(t["threshold"]))


@pytest.mark.parametrize("kind,k", [("batchtopk", 5), ("relu", None)])
def test_own_kinds_round_trip_through_saelens(tmp_path, kind, k):
    sae = acts.SAE(D_IN, D_SAE, kind, k, hookpoint="h")
    with torch.no_grad():
        sae.b_enc.normal_()
        if kind == "batchtopk":
            sae.threshold.fill_(0.37)
    sae.save(tmp_path / "s")
    back = acts.SAE.load(tmp_path / "s")
    assert back.kind == kind and back.k == k
    for n, p in sae.state_dict().items():
        assert torch.equal(p, back.state_dict()[n]), n


def test_transcoder_round_trip(tmp_path):
    tc = acts.SAE(D_IN, D_SAE, "topk", 4, d_out=7, hookpoint="a.mlp.in", hookpoint_out="a.mlp")
    tc.save(tmp_path / "tc")
    back = acts.SAE.load(tmp_path / "tc")
    assert (back.d_out, back.hookpoint_out, back.apply_b_dec_to_input) == (7, "a.mlp", False)
    assert torch.equal(back.W_dec, tc.W_dec)


@pytest.mark.parametrize("mutate,match", [
    (lambda p: _write_saelens(p, "topk", d_sae=D_SAE + 1), "'W_enc' has shape"),
    (lambda p: _write_saelens(p, "topk", drop=("b_dec",)), "missing tensor 'b_dec'"),
    (lambda p: _write_saelens(p, "jumprelu", drop=("threshold",)), "missing tensor 'threshold'"),
    (lambda p: _write_saelens(p, "topk", activation_fn_kwargs={}), "activation_fn_kwargs.k"),
    (lambda p: _write_saelens(p, "gated"), "unsupported architecture"),
    (lambda p: _write_sparsify(p, shapes={"b_dec": (D_IN + 1,)}), "'b_dec' has shape"),
    (lambda p: _write_sparsify(p, shapes={"W_skip": (D_IN, D_IN)}), "W_skip"),
])
def test_mismatched_files_raise_clear_errors(tmp_path, mutate, match):
    mutate(tmp_path / "bad")
    with pytest.raises(ValueError, match=match):
        acts.SAE.load(tmp_path / "bad")


def test_missing_cfg_field(tmp_path):
    _write_saelens(tmp_path / "bad", "topk")
    cfg = json.loads((tmp_path / "bad" / "cfg.json").read_text())
    del cfg["d_sae"]
    (tmp_path / "bad" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="missing field 'd_sae'"):
        acts.SAE.load(tmp_path / "bad")


def test_never_unpickles(tmp_path):
    np.savez(tmp_path / "params.npz", W_enc=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(ValueError):  # numpy refuses object arrays with allow_pickle=False
        acts.SAE.load(tmp_path / "params.npz")


def test_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        acts.SAE.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no sae_weights.safetensors"):
        acts.SAE.load(tmp_path / "empty")
    with pytest.raises(TypeError, match="path"):
        acts.SAE.load(3)
    sae = acts.SAE(D_IN, D_SAE, "relu")
    with pytest.raises(ValueError, match="format"):
        sae.save(tmp_path / "x", format="pickle")
    with pytest.raises(ValueError, match="TopK SAEs only"):
        sae.save(tmp_path / "x", format="sparsify")
