"""Interop: SAELens (5.x and 6.x layouts) / sparsify / Gemma Scope files built with their
exact field names load correctly, round trips are bit-exact, what we write passes a stand-in
of SAELens's loaders, and files whose config disagrees with them, or asks for maths actspace
does not implement, fail clearly."""
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


# cfg.json as SAELens writes it: key for key what save_model() wrote in sae-lens 5.11.0
# (SAEConfig.to_dict) and 6.54.12 (SAEConfig.to_dict: metadata + per-architecture fields)
def _v5_cfg(arch, k):
    return {"architecture": arch, "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32",
            "device": "cpu", "model_name": "gpt2", "hook_name": "blocks.3.hook_resid_post",
            "hook_layer": 3, "hook_head_index": None,
            "activation_fn_str": "topk" if arch == "topk" else "relu",
            "activation_fn_kwargs": {"k": k} if arch == "topk" else {},
            "apply_b_dec_to_input": arch != "jumprelu", "finetuning_scaling_factor": False,
            "sae_lens_training_version": "5.11.0", "prepend_bos": True, "dataset_path": "x/y",
            "dataset_trust_remote_code": True, "context_size": 256,
            "normalize_activations": "none", "neuronpedia_id": None,
            "model_from_pretrained_kwargs": {}, "seqpos_slice": [None]}


def _v6_cfg(arch, k, d_out):
    transcoder = "transcoder" in arch
    cfg = {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": arch in ("topk", "standard"),
           "normalize_activations": "none", "reshape_activations": "none",
           "metadata": {"sae_lens_version": "6.54.12", "sae_lens_training_version": "6.54.12",
                        "model_name": "gpt2", "hook_name": "blocks.3.hook_resid_post"},
           "architecture": arch}
    if arch == "topk":
        cfg.update(k=k, rescale_acts_by_decoder_norm=False)
    if transcoder:
        cfg["d_out"] = d_out
        cfg["metadata"]["hook_name_out"] = "blocks.3.hook_mlp_out"
    return cfg


def _write_saelens(path, arch="topk", topk_k=6, dtype=torch.float32, drop=(), layout="v5",
                   d_out=D_IN, extra_tensors=None, **cfg_extra):
    path.mkdir()
    t = _tensors(dtype, d_out=d_out)
    if "jumprelu" not in arch:
        del t["threshold"]
    for name in drop:
        t.pop(name)
    t.update(extra_tensors or {})
    save_file(t, str(path / "sae_weights.safetensors"))
    cfg = _v5_cfg(arch, topk_k) if layout == "v5" else _v6_cfg(arch, topk_k, d_out)
    cfg["dtype"] = str(dtype).removeprefix("torch.")    # SAELens writes the weights' dtype
    cfg.update(cfg_extra)
    (path / "cfg.json").write_text(json.dumps(cfg))
    return t, cfg


# ------------------------------------------------------------------ what SAELens demands
# A stand-in for SAELens's loaders, from their source (checked by hand against sae-lens
# 5.11.0 and 6.54.12): the problems for which that version would refuse or misread the files.
_DTYPES = {f"{p}{d}" for p in ("", "torch.") for d in ("float32", "float64", "float16",
                                                      "bfloat16")}  # DTYPE_MAP keys
# 5.x sae.py SAEConfig: the fields without a default; from_dict renames the legacy keys
_V5_REQUIRED = {"architecture": str, "d_in": int, "d_sae": int, "activation_fn_str": str,
                "apply_b_dec_to_input": bool, "finetuning_scaling_factor": bool,
                "context_size": int, "model_name": str, "hook_name": str, "hook_layer": int,
                "hook_head_index": (int, type(None)), "prepend_bos": bool,
                "dataset_path": str, "dataset_trust_remote_code": bool,
                "normalize_activations": str, "dtype": str, "device": str,
                "sae_lens_training_version": (str, type(None))}
_V5_RENAMES = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index",
               "hook_point_layer": "hook_layer", "activation_fn": "activation_fn_str"}
# 6.x: registered inference architectures -> fields whose class default would be wrong if
# left out (TopKSAEConfig.k = 100, TranscoderConfig.d_out = 768)
_V6_ARCHS = {"standard": {}, "jumprelu": {}, "gated": {},
             "topk": {"k": int}, "transcoder": {"d_out": int},
             "jumprelu_transcoder": {"d_out": int}}
_V6_TYPED = {"dtype": str, "device": str, "apply_b_dec_to_input": bool,
             "normalize_activations": str, "reshape_activations": str}


def _saelens_problems(cfg, tensors, version):
    probs = []

    def need(d, key, typ, where=""):
        if key not in d:
            probs.append(f"missing {where}{key}")
        elif not isinstance(d[key], typ) or (typ is int and isinstance(d[key], bool)):
            probs.append(f"{where}{key}={d[key]!r} is not {typ}")

    if version == 5:
        c = {_V5_RENAMES.get(k, k): v for k, v in cfg.items()}
        for key, typ in _V5_REQUIRED.items():
            need(c, key, typ)
        arch = c.get("architecture")
        if arch not in ("standard", "gated", "jumprelu", "topk"):
            probs.append(f"5.x has no architecture {arch!r}")
        if c.get("activation_fn_str") == "topk":
            need(c.get("activation_fn_kwargs") or {}, "k", int, "activation_fn_kwargs.")
        d_out = c.get("d_in")
    else:
        meta = cfg.get("metadata")
        if not isinstance(meta, dict):
            probs.append("no metadata object")
            meta = {}
        version_str = cfg.get("sae_lens_version") or meta.get("sae_lens_version")
        if not version_str or int(str(version_str).split(".")[0]) < 6:
            probs.append("6.x would convert it as a pre-6.0 file")
        arch = cfg.get("architecture")
        if arch not in _V6_ARCHS:
            probs.append(f"6.x has no architecture {arch!r}")
        for key, typ in {"d_in": int, "d_sae": int, **_V6_ARCHS.get(arch, {})}.items():
            need(cfg, key, typ)
        for key, typ in _V6_TYPED.items():
            if key in cfg:
                need(cfg, key, typ)
        if cfg.get("dtype", "float32") not in _DTYPES:
            probs.append(f"dtype {cfg.get('dtype')!r}")
        if cfg.get("normalize_activations", "none") not in (
                "none", "expected_average_only_in", "constant_norm_rescale", "layer_norm"):
            probs.append("normalize_activations")
        if "transcoder" in str(arch) and cfg.get("apply_b_dec_to_input", True):
            probs.append("a transcoder must say apply_b_dec_to_input=false")
        need(meta, "hook_name", str, "metadata.")
        d_out = cfg.get("d_out", cfg.get("d_in"))
    d_in, d_sae = cfg.get("d_in"), cfg.get("d_sae")   # weights: load_state_dict, strict
    want = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_out),
            "b_dec": (d_out,)}
    if arch in ("jumprelu", "jumprelu_transcoder"):
        want["threshold"] = (d_sae,)
    if arch == "gated":     # GatedSAE: b_gate for b_enc, and the magnitude path's r_mag, b_mag
        del want["b_enc"]
        want.update(b_gate=(d_sae,), r_mag=(d_sae,), b_mag=(d_sae,))
    got = {n: tuple(t.shape) for n, t in tensors.items()}
    if got != want:
        probs.append(f"weights {got} != {want}")
    return probs


def _saved(path):
    return (json.loads((path / "cfg.json").read_text()),
            load_file(str(path / "sae_weights.safetensors")))


def _write_sparsify(path, k=6, shapes=None, **cfg_extra):
    """As sparsify's SparseCoder.save_to_disk writes: SparseCoderConfig.to_dict() + d_in."""
    path.mkdir()
    t = _tensors()
    st = {"encoder.weight": t["W_enc"].T.contiguous(), "encoder.bias": t["b_enc"],
          "W_dec": t["W_dec"], "b_dec": t["b_dec"]}
    for name, shape in (shapes or {}).items():
        st[name] = torch.zeros(shape)
    save_file(st, str(path / "sae.safetensors"))
    (path / "cfg.json").write_text(json.dumps({
        "activation": "topk", "expansion_factor": 4, "normalize_decoder": True,
        "num_latents": D_SAE, "k": k, "multi_topk": False, "skip_connection": False,
        "transcode": False, "d_in": D_IN, **cfg_extra}))
    return st


def _assert_same_files(a, b):
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    for n in ta:
        assert ta[n].dtype == tb[n].dtype and torch.equal(ta[n], tb[n]), n


@pytest.mark.parametrize("arch,kind", [("topk", "topk"), ("standard", "relu"),
                                       ("jumprelu", "jumprelu")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["v5", "v6"])
def test_saelens_load_and_round_trip(tmp_path, arch, kind, dtype, layout):
    t, cfg = _write_saelens(tmp_path / "in", arch, dtype=dtype, layout=layout)
    sae = acts.SAE.load(tmp_path / "in")
    assert sae.kind == kind and sae.dtype == dtype and not sae.is_transcoder
    # 6.x keeps the hook name in metadata only
    assert (sae.d_in, sae.d_sae) == (D_IN, D_SAE) and sae.hookpoint == "blocks.3.hook_resid_post"
    assert sae.k == (6 if kind == "topk" else None)
    assert sae.apply_b_dec_to_input == cfg["apply_b_dec_to_input"]
    assert torch.equal(sae.W_enc, t["W_enc"].T) and torch.equal(sae.W_dec, t["W_dec"])
    sae.save(tmp_path / "out", format="saelens")
    _assert_same_files(tmp_path / "in" / "sae_weights.safetensors",
                       tmp_path / "out" / "sae_weights.safetensors")
    out_cfg, out_t = _saved(tmp_path / "out")
    assert out_cfg["architecture"] == arch and out_cfg["metadata"]["model_name"] == "gpt2"
    assert out_cfg["model_name"] == "gpt2" and out_cfg["hook_layer"] == 3
    if layout == "v5":   # the file's own provenance survives, not our defaults
        assert (out_cfg["context_size"], out_cfg["dataset_path"]) == (256, "x/y")
    for version in (5, 6):
        assert _saelens_problems(out_cfg, out_t, version) == [], version
    back = acts.SAE.load(tmp_path / "out")
    for n, p in sae.state_dict().items():
        assert torch.equal(p, back.state_dict()[n]), n


@pytest.mark.parametrize("arch", ["topk", "standard", "jumprelu"])
def test_stand_in_accepts_saelens_own_files(tmp_path, arch):
    """The stand-in passes what SAELens itself writes, in its own version's layout."""
    for layout, version in (("v5", 5), ("v6", 6)):
        _write_saelens(tmp_path / layout, arch, layout=layout)
        assert _saelens_problems(*_saved(tmp_path / layout), version) == []


def test_stand_in_rejects_a_null_hook_name(tmp_path):
    """What the earlier writer produced for an SAE without a hookpoint: 5.x calls
    hook_name.endswith and fails, and 6.x converted it as a pre-6.0 file."""
    _write_saelens(tmp_path / "s", "topk", hook_name=None)
    cfg, t = _saved(tmp_path / "s")
    assert "hook_name=None is not <class 'str'>" in _saelens_problems(cfg, t, 5)
    assert "6.x would convert it as a pre-6.0 file" in _saelens_problems(cfg, t, 6)


@pytest.mark.parametrize("kind,k", [("topk", 5), ("relu", None), ("jumprelu", None),
                                    ("batchtopk", 5), ("matryoshka", 5), ("gated", None)])
@pytest.mark.parametrize("hookpoint", ["encoder.layer.2.output", None])
def test_saved_cfg_loads_in_saelens_5_and_6(tmp_path, kind, k, hookpoint):
    sae = acts.SAE(D_IN, D_SAE, kind, k, hookpoint=hookpoint)
    sae.save(tmp_path / "s")
    cfg, t = _saved(tmp_path / "s")
    assert _saelens_problems(cfg, t, 5) == [] and _saelens_problems(cfg, t, 6) == []
    assert cfg["hook_name"] == cfg["metadata"]["hook_name"] == (hookpoint or "")
    assert cfg["hook_layer"] == (2 if hookpoint else 0)
    assert (cfg["normalize_activations"], cfg["finetuning_scaling_factor"]) == ("none", False)
    assert cfg["metadata"]["sae_lens_version"] == "6.0.0"
    back = acts.SAE.load(tmp_path / "s")
    assert back.hookpoint == hookpoint and back.kind == kind


def test_saelens_v5_legacy_and_hook_fields_survive_a_resave(tmp_path):
    """hook_layer / hook_head_index (and their legacy names) are the file's own: kept on
    re-save; only hook_name / hook_name_out are ours to write."""
    cfg = _v5_cfg("standard", None)
    for new, old in (("hook_name", "hook_point"), ("hook_layer", "hook_point_layer"),
                     ("hook_head_index", "hook_point_head_index"),
                     ("activation_fn_str", "activation_fn")):
        cfg[old] = cfg.pop(new)
    _write_saelens(tmp_path / "in", "standard")
    cfg.update(hook_point_layer=7, hook_point_head_index=2, hook_eval="NOT_IN_USE")
    (tmp_path / "in" / "cfg.json").write_text(json.dumps(cfg))
    sae = acts.SAE.load(tmp_path / "in")
    assert sae.hookpoint == "blocks.3.hook_resid_post" and sae.kind == "relu"
    sae.hookpoint = "blocks.9.hook_resid_post"
    sae.save(tmp_path / "out")
    out, t = _saved(tmp_path / "out")
    assert (out["hook_layer"], out["hook_head_index"], out["hook_eval"]) == (7, 2, "NOT_IN_USE")
    assert out["hook_name"] == out["metadata"]["hook_name"] == "blocks.9.hook_resid_post"
    assert not set(_V5_RENAMES) & set(out)   # legacy names mapped, not duplicated
    assert _saelens_problems(out, t, 5) == [] and _saelens_problems(out, t, 6) == []


def test_saelens_provenance_set_by_hand(tmp_path):
    sae = acts.SAE(D_IN, D_SAE, "topk", 4, hookpoint="blocks.1.hook_resid_post")
    sae.extra_cfg.update(model_name="pythia-70m", context_size=512, dataset_path="a/b")
    sae.save(tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    assert (cfg["model_name"], cfg["context_size"]) == ("pythia-70m", 512)
    assert cfg["dataset_path"] == "a/b"
    assert cfg["metadata"]["model_name"] == "pythia-70m" and cfg["hook_layer"] == 1


def test_saelens_topk_k_top_level_field(tmp_path):
    _write_saelens(tmp_path / "in", "topk", activation_fn_kwargs={}, k=9)
    assert acts.SAE.load(tmp_path / "in").k == 9


def test_saelens_v6_reads_top_level_k_and_ignores_activation_fn(tmp_path):
    """6.x reads its own fields only: top-level k, not activation_fn_kwargs; a 5.x file the
    other way round (handle_pre_6_0_config takes activation_fn_kwargs.k)."""
    _write_saelens(tmp_path / "v6", "topk", layout="v6", activation_fn_kwargs={"k": 3})
    assert acts.SAE.load(tmp_path / "v6").k == 6
    _write_saelens(tmp_path / "v5", "topk", k=3)
    assert acts.SAE.load(tmp_path / "v5").k == 6


def test_saelens_all_ones_scaling_factor_is_dropped(tmp_path):
    """As SAELens's read_sae_components_from_disk does; any other value is refused."""
    _write_saelens(tmp_path / "ok", "standard", extra_tensors={"scaling_factor": torch.ones(D_SAE)})
    assert acts.SAE.load(tmp_path / "ok").kind == "relu"
    _write_saelens(tmp_path / "bad", "standard",
                   extra_tensors={"scaling_factor": torch.full((D_SAE,), 2.0)})
    with pytest.raises(ValueError, match=r"unexpected tensor\(s\) \['scaling_factor'\]"):
        acts.SAE.load(tmp_path / "bad")


# ------------------------------------------------------------------ transcoders
@pytest.mark.parametrize("arch,kind", [("transcoder", "relu"),
                                       ("jumprelu_transcoder", "jumprelu")])
def test_saelens_transcoder_load_and_round_trip(tmp_path, arch, kind):
    t, cfg = _write_saelens(tmp_path / "in", arch, layout="v6", d_out=7)
    tc = acts.SAE.load(tmp_path / "in")
    assert (tc.kind, tc.d_in, tc.d_out, tc.apply_b_dec_to_input) == (kind, D_IN, 7, False)
    assert (tc.hookpoint, tc.hookpoint_out) == ("blocks.3.hook_resid_post", "blocks.3.hook_mlp_out")
    x = torch.randn(5, D_IN)
    pre = x @ t["W_enc"] + t["b_enc"]   # SAELens Transcoder: no b_dec subtraction
    act = torch.relu(pre) * (pre > t["threshold"]) if kind == "jumprelu" else torch.relu(pre)
    torch.testing.assert_close(tc(x)[0], act @ t["W_dec"] + t["b_dec"], rtol=1e-5, atol=1e-5)
    tc.save(tmp_path / "out")
    _assert_same_files(tmp_path / "in" / "sae_weights.safetensors",
                       tmp_path / "out" / "sae_weights.safetensors")
    out, out_t = _saved(tmp_path / "out")
    assert (out["architecture"], out["d_out"], out["apply_b_dec_to_input"]) == (arch, 7, False)
    assert out["hook_name_out"] == out["metadata"]["hook_name_out"] == "blocks.3.hook_mlp_out"
    assert _saelens_problems(out, out_t, 6) == []
    back = acts.SAE.load(tmp_path / "out")
    for n, p in tc.state_dict().items():
        assert torch.equal(p, back.state_dict()[n]), n


@pytest.mark.parametrize("kind,k,arch", [("relu", None, "transcoder"),
                                         ("jumprelu", None, "jumprelu_transcoder"),
                                         ("batchtopk", 4, "jumprelu_transcoder"),
                                         ("topk", 4, "topk_transcoder")])
def test_transcoder_round_trip(tmp_path, kind, k, arch):
    tc = acts.SAE(D_IN, D_SAE, kind, k, d_out=7, hookpoint="a.mlp.in", hookpoint_out="a.mlp")
    with torch.no_grad():
        tc.b_enc.normal_()
        if kind == "batchtopk":
            tc.threshold.fill_(0.25)
    tc.save(tmp_path / "tc")
    cfg, t = _saved(tmp_path / "tc")
    assert (cfg["architecture"], cfg["d_out"], cfg["hook_name_out"]) == (arch, 7, "a.mlp")
    # 6.x loads the ReLU / JumpReLU transcoders; SAELens has no TopK transcoder, so it
    # refuses ours by its architecture name; 5.x has no transcoders at all
    assert (_saelens_problems(cfg, t, 6) == []) == (kind != "topk")
    assert any("no architecture" in q for q in _saelens_problems(cfg, t, 5))
    back = acts.SAE.load(tmp_path / "tc")
    assert (back.kind, back.d_out, back.hookpoint_out, back.apply_b_dec_to_input) == \
        (kind, 7, "a.mlp", False)
    for n, p in tc.state_dict().items():
        assert torch.equal(p, back.state_dict()[n]), n


def test_transcoder_subtracting_b_dec_cannot_be_saelens(tmp_path):
    tc = acts.SAE(D_IN, D_SAE, "relu", hookpoint_out="o", apply_b_dec_to_input=True)
    with pytest.raises(ValueError, match="apply_b_dec_to_input=True"):
        tc.save(tmp_path / "x")
    assert not (tmp_path / "x" / "cfg.json").exists()


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


def test_sparsify_transcoder_round_trip(tmp_path):
    """sparsify's transcode=true: no b_dec subtraction, output at the input width."""
    st = _write_sparsify(tmp_path / "in", transcode=True)
    tc = acts.SAE.load(tmp_path / "in")
    assert not tc.apply_b_dec_to_input and tc.d_out == D_IN
    x = torch.randn(5, D_IN)
    z = torch.relu(x @ st["encoder.weight"].T + st["encoder.bias"])
    top = z.topk(6, dim=1)
    want = torch.zeros_like(z).scatter_(1, top.indices, top.values) @ st["W_dec"] + st["b_dec"]
    torch.testing.assert_close(tc(x)[0], want, rtol=1e-5, atol=1e-5)
    tc.save(tmp_path / "out", format="sparsify")
    _assert_same_files(tmp_path / "in" / "sae.safetensors", tmp_path / "out" / "sae.safetensors")
    assert json.loads((tmp_path / "out" / "cfg.json").read_text())["transcode"] is True
    ours = acts.SAE(D_IN, D_SAE, "topk", 3, hookpoint="l.in", hookpoint_out="l.out")
    ours.save(tmp_path / "ours", format="sparsify")
    back = acts.SAE.load(tmp_path / "ours")
    assert (back.hookpoint, back.hookpoint_out) == ("l.in", "l.out")
    assert not back.apply_b_dec_to_input
    assert json.loads((tmp_path / "ours" / "cfg.json").read_text())["transcode"] is True


def test_sparsify_has_no_d_out(tmp_path):
    tc = acts.SAE(D_IN, D_SAE, "topk", 3, d_out=7, hookpoint_out="o")
    with pytest.raises(ValueError, match="format='sparsify' has no d_out"):
        tc.save(tmp_path / "x", format="sparsify")


_LENS_EXTRA = {"W_skip": torch.zeros(D_IN, D_IN)}


@pytest.mark.parametrize("mutate,match", [
    (lambda p: _write_saelens(p, "topk", d_sae=D_SAE + 1), "'W_enc' has shape"),
    (lambda p: _write_saelens(p, "topk", drop=("b_dec",)), "missing tensor 'b_dec'"),
    (lambda p: _write_saelens(p, "jumprelu", drop=("threshold",)), "missing tensor 'threshold'"),
    (lambda p: _write_saelens(p, "topk", activation_fn_kwargs={}), "activation_fn_kwargs.k"),
    (lambda p: _write_saelens(p, "gated"), "missing tensor 'r_mag'"),
    (lambda p: _write_saelens(p, "gated_plus"), "unsupported architecture 'gated_plus'"),
    (lambda p: _write_saelens(p, "skip_transcoder", layout="v6"),
     "missing tensor 'W_skip'"),   # a skip transcoder needs its W_skip [d_out, d_in]
    (lambda p: _write_saelens(p, "standard", activation_fn_str="tanh-relu"),
     "unsupported activation 'tanh-relu'"),
    (lambda p: _write_saelens(p, "topk", activation_fn_str="relu"),
     "unsupported activation 'relu' for architecture 'topk'"),
    # maths actspace does not implement: refused, field and value named
    (lambda p: _write_saelens(p, "topk", normalize_activations="layer_norm"),
     "normalize_activations='layer_norm'"),
    (lambda p: _write_saelens(p, "topk", layout="v6",
                              normalize_activations="constant_norm_rescale"),
     "normalize_activations='constant_norm_rescale'"),
    (lambda p: _write_saelens(p, "standard", normalize_activations="expected_average_only_in"),
     "normalize_activations='expected_average_only_in'"),
    (lambda p: _write_saelens(p, "standard", normalize_activations=True),
     "normalize_activations=True"),
    (lambda p: _write_saelens(p, "standard", finetuning_scaling_factor=True),
     "finetuning_scaling_factor=True"),
    (lambda p: _write_saelens(p, "jumprelu", layout="v6", rescale_acts_by_decoder_norm=True),
     "rescale_acts_by_decoder_norm=True is not supported for architecture 'jumprelu'"),
    (lambda p: _write_saelens(p, "topk", extra_tensors=_LENS_EXTRA),
     r"unexpected tensor\(s\) \['W_skip'\]"),
    (lambda p: _write_saelens(p, "jumprelu", layout="v6",
                              extra_tensors={"log_threshold": torch.zeros(D_SAE)}),
     r"unexpected tensor\(s\) \['log_threshold'\]"),
    (lambda p: _write_saelens(p, "transcoder", layout="v6", d_out=7, apply_b_dec_to_input=True),
     "apply_b_dec_to_input=True is not valid for architecture 'transcoder'"),
    (lambda p: _write_saelens(p, "topk", actspace_kind="jumprelu"),
     "actspace_kind='jumprelu' does not match architecture 'topk'"),
    (lambda p: _write_saelens(p, "topk", layout="v6", metadata=["x"]), "'metadata' must be"),
    (lambda p: _write_saelens(p, "topk", layout="v6", hook_name=3), "'hook_name' must be a string"),
    (lambda p: _write_sparsify(p, shapes={"b_dec": (D_IN + 1,)}), "'b_dec' has shape"),
    (lambda p: _write_sparsify(p, shapes={"W_skip": (D_IN, D_IN)}), "W_skip"),
    (lambda p: _write_sparsify(p, shapes={"decoder.weight": (D_IN, D_SAE)}),
     r"unexpected tensor\(s\) \['decoder.weight'\]"),
    (lambda p: _write_sparsify(p, activation="groupmax"), "activation='groupmax'"),
    (lambda p: _write_sparsify(p, skip_connection=True), "missing tensor 'W_skip'"),
    (lambda p: _write_sparsify(p, transcode="yes"), "'transcode' must be a bool"),
])
def test_mismatched_files_raise_clear_errors(tmp_path, mutate, match):
    mutate(tmp_path / "bad")
    with pytest.raises(ValueError, match=match):
        acts.SAE.load(tmp_path / "bad")


@pytest.mark.parametrize("arch,layout,extra,field", [
    ("jumprelu_transcoder", "v6", {"d_out": 7}, "d_out"),  # 6.x would default d_out = 768
    ("topk", "v5", {}, "d_sae"),
])
def test_missing_cfg_field(tmp_path, arch, layout, extra, field):
    _write_saelens(tmp_path / "bad", arch, layout=layout, **extra)
    cfg = json.loads((tmp_path / "bad" / "cfg.json").read_text())
    del cfg[field]
    (tmp_path / "bad" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=f"missing field '{field}'"):
        acts.SAE.load(tmp_path / "bad")


def test_gemmascope_unexpected_array(tmp_path):
    np.savez(tmp_path / "params.npz", **{n: v.numpy() for n, v in _tensors().items()},
             W_skip=np.zeros((D_IN, D_IN), np.float32))
    with pytest.raises(ValueError, match=r"unexpected array\(s\) \['W_skip'\]"):
        acts.SAE.load(tmp_path / "params.npz")


def test_never_unpickles(tmp_path):
    np.savez(tmp_path / "params.npz", W_enc=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(ValueError):  # numpy refuses object arrays with allow_pickle=False
        acts.SAE.load(tmp_path / "params.npz")


def test_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        acts.SAE.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no SAE layout .*saelens.*it is empty"):
        acts.SAE.load(tmp_path / "empty")
    (tmp_path / "empty" / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"it holds: weights\.bin"):   # the files seen
        acts.SAE.load(tmp_path / "empty")
    with pytest.raises(TypeError, match="path"):
        acts.SAE.load(3)
    sae = acts.SAE(D_IN, D_SAE, "relu")
    with pytest.raises(ValueError, match="format"):
        sae.save(tmp_path / "x", format="pickle")
    with pytest.raises(ValueError, match=r"stores kinds \['topk'\] only"):
        sae.save(tmp_path / "x", format="sparsify")


def test_atomic_write_keeps_old_file_on_crash(tmp_path):
    from actspace._io import atomic_write
    target = tmp_path / "f.txt"
    target.write_text("old")

    def crash(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise KeyboardInterrupt  # a kill in the middle of a write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]
