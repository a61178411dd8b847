"""Pretrained SAEs from the Hugging Face Hub, tested offline against a local Hub cache
(tests/_hub.py) holding a tiny SAE in every layout, at the real releases' repo ids and
paths: each loads through from_pretrained and hf://, and its code and reconstruction equal
a float64 hand computation from the raw arrays."""
from __future__ import annotations

import hashlib
import math
import os
import pickle
import socket

import pytest
import torch

import actspace as acts
from _hub import add_repo, npz_bytes, safetensors_bytes, torch_bytes

D, M = 6, 10          # d_in (= d_out), d_sae
G = torch.Generator().manual_seed(0)


def _r(*shape, scale=1.0):
    return torch.randn(*shape, generator=G, dtype=torch.float64) * scale


def _jump(pre, thr):            # JumpReLU: pre where pre > thr (thr >= 0), else 0
    return torch.where(pre > thr, pre, torch.zeros_like(pre))


def _topk(pre, k):              # TopK(relu(pre)) as a dense [N, M]
    a = pre.clamp_min(0)
    out = torch.zeros_like(a)
    v, i = a.topk(k, dim=1)
    return out.scatter(1, i, v)


X = _r(7, D, scale=2.0)


# ----------------------------------------------------------------- one tiny SAE per layout
def _gemmascope():
    W_enc, W_dec, b_enc, b_dec = _r(D, M), _r(M, D), _r(M, scale=.3), _r(D)
    thr = _r(M).abs() * 0.3
    files = {"layer_12/width_16k/average_l0_82/params.npz": npz_bytes(
        {"W_enc": W_enc, "W_dec": W_dec, "b_enc": b_enc, "b_dec": b_dec, "threshold": thr})}
    code = _jump(X @ W_enc + b_enc, thr)
    return ("google/gemma-scope-2b-pt-res", files, "gemma-scope-2b-pt-res",
            "layer_12/width_16k/average_l0_82", code, code @ W_dec + b_dec,
            "blocks.12.hook_resid_post")


def _gemmascope2():
    w_enc, w_dec, b_enc, b_dec = _r(D, M), _r(M, D), _r(M, scale=.3), _r(D)
    thr, A = _r(M).abs() * 0.3, _r(D, D)                       # A [d_out, d_in]
    path = "transcoder_all/layer_12_width_16k_l0_small_affine"
    files = {f"{path}/params.safetensors": safetensors_bytes(
        {"w_enc": w_enc, "w_dec": w_dec, "b_enc": b_enc, "b_dec": b_dec, "threshold": thr,
         "affine_skip_connection": A})}
    code = _jump(X @ w_enc + b_enc, thr)
    return ("google/gemma-scope-2-4b-pt", files, "gemma-scope-2-4b-pt-transcoders-all",
            "layer_12_width_16k_l0_small_affine", code, code @ w_dec + b_dec + X @ A.T,
            "blocks.12.ln2.hook_normalized")


def _llamascope():
    enc, enc_b, dec, dec_b = _r(M, D), _r(M, scale=.3), _r(D, M), _r(D)
    n_in, n_out, theta = 3.0, 5.0, 0.4
    hp = {"d_model": D, "d_sae": M, "hook_point_in": "blocks.12.hook_resid_post",
          "hook_point_out": "blocks.12.hook_resid_post", "act_fn": "jumprelu",
          "jump_relu_threshold": theta, "apply_decoder_bias_to_pre_encoder": False,
          "norm_activation": "dataset-wise",
          "dataset_average_activation_norm": {"in": n_in, "out": n_out}}
    folder = "Llama3_1-8B-Base-L12R-8x"
    files = {f"{folder}/hyperparams.json": hp,
             f"{folder}/checkpoints/final.safetensors": safetensors_bytes(
                 {"encoder.weight": enc, "encoder.bias": enc_b, "decoder.weight": dec,
                  "decoder.bias": dec_b})}
    code = _jump((X * math.sqrt(D) / n_in) @ enc.T + enc_b, theta)    # normalized space
    recon = (code @ dec.T + dec_b) * n_out / math.sqrt(D)             # back to model units
    return ("fnlp/Llama3_1-8B-Base-LXR-8x", files, "llama_scope_lxr_8x", "l12r_8x", code,
            recon, "blocks.12.hook_resid_post")


def _sparsify_files(layers=(0, 1, 2, 10), k=3):
    files, hand = {}, {}
    for L in layers:
        W, b, W_dec, b_dec = _r(M, D), _r(M, scale=.3), _r(M, D), _r(D)
        files[f"layers.{L}/cfg.json"] = {"d_in": D, "num_latents": M, "k": k,
                                         "expansion_factor": 2, "activation": "topk",
                                         "normalize_decoder": True, "multi_topk": False,
                                         "skip_connection": False, "transcode": False}
        files[f"layers.{L}/sae.safetensors"] = safetensors_bytes(
            {"encoder.weight": W, "encoder.bias": b, "W_dec": W_dec, "b_dec": b_dec})
        code = _topk((X - b_dec) @ W.T + b, k)
        hand[L] = (code, code @ W_dec + b_dec)
    return files, hand


SPARSIFY = _sparsify_files()


def _sparsify():
    files, hand = SPARSIFY
    return ("EleutherAI/sae-pythia-160m-32k", files, "sae-pythia-160m-32k", "layers.2",
            *hand[2], None)


def _dictlearning():
    enc, enc_b, dec, b_dec = _r(M, D), _r(M, scale=.3), _r(D, M), _r(D)
    thr = torch.tensor(0.35, dtype=torch.float64)      # one threshold for every latent
    path = "pythia70m_sweep_topk_ctx128_0730/resid_post_layer_3/trainer_10"
    files = {f"{path}/config.json": {"trainer": {"dict_class": "BatchTopKSAE",
                                                 "activation_dim": D, "dict_size": M, "k": 4,
                                                 "layer": 3, "lm_name": "pythia-70m-deduped"}},
             f"{path}/ae.pt": torch_bytes({"encoder.weight": enc, "encoder.bias": enc_b,
                                           "decoder.weight": dec, "b_dec": b_dec,
                                           "k": torch.tensor(4), "threshold": thr})}
    pre = (X - b_dec) @ enc.T + enc_b
    code = _jump(pre.clamp_min(0), thr)
    return ("canrager/lm_sae", files, "canrager-lm-sae-pythia-70m-deduped", path, code,
            code @ dec.T + b_dec, None)


LAYOUTS = {"gemmascope": _gemmascope, "gemmascope2": _gemmascope2,
           "llamascope": _llamascope, "sparsify": _sparsify, "dictlearning": _dictlearning}
CASES = {name: make() for name, make in LAYOUTS.items()}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_cache")
    commits = {name: add_repo(root, repo, files)
               for name, (repo, files, *_rest) in CASES.items()}
    return root, commits


@pytest.fixture
def offline(cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(cache[0]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("ACTSPACE_SAE_RELEASES", raising=False)
    return cache


def _check(sae, code, recon):
    got = sae.encode(X)
    torch.testing.assert_close(got.to_dense(), code, rtol=1e-12, atol=1e-12)
    out, _ = sae(X)                       # decode + the skip term of a skip transcoder
    torch.testing.assert_close(out, recon, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layout_loads_and_matches_hand_computation(offline, layout):
    repo, files, release, sae_id, code, recon, hook = CASES[layout]
    a = acts.SAE.from_pretrained(release, sae_id, dtype=torch.float64)
    _check(a, code, recon)
    b = acts.SAE.load(f"{release}:{sae_id}", dtype=torch.float64)          # RELEASE:ID
    path = a.provenance["path"]
    c = acts.SAE.load(f"hf://{repo}/{path}", dtype=torch.float64)          # hf://
    for s in (b, c):
        _check(s, code, recon)
    assert a.provenance["layout"] == layout and a.provenance["release"] == release
    if hook is not None:
        assert a.hookpoint == hook == c.hookpoint


def test_provenance_has_commit_and_file_hashes(offline):
    repo, files, release, sae_id, *_ = CASES["llamascope"]
    sae = acts.SAE.from_pretrained(release, sae_id)
    p = sae.provenance
    assert (p["repo"], p["revision"], p["commit"]) == (repo, "main", offline[1]["llamascope"])
    assert p["model"] == "meta-llama/Llama-3.1-8B"
    assert set(p["files"]) == set(files)
    for f, data in files.items():
        raw = data if isinstance(data, bytes) else __import__("json").dumps(data).encode()
        assert p["files"][f]["sha256"] == hashlib.sha256(raw).hexdigest()


def test_a_pinned_revision_is_honoured(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo, files, release, sae_id, *_ = CASES["gemmascope"]
    first = add_repo(tmp_path, repo, files)
    other = dict(files)
    key = next(iter(other))
    arrays = dict(__import__("numpy").load(__import__("io").BytesIO(other[key])))
    arrays["b_dec"] = arrays["b_dec"] + 1.0
    other[key] = npz_bytes(arrays)
    second = add_repo(tmp_path, repo, other)      # main now points at the second commit
    new = acts.SAE.from_pretrained(release, sae_id, dtype=torch.float64)
    old = acts.SAE.from_pretrained(release, sae_id, revision=first, dtype=torch.float64)
    pinned = acts.SAE.load(f"hf://{repo}@{first}/{sae_id}", dtype=torch.float64)
    assert new.provenance["commit"] == second and old.provenance["commit"] == first
    torch.testing.assert_close(new.b_dec, old.b_dec + 1.0)
    torch.testing.assert_close(pinned.b_dec, old.b_dec)


def test_cached_files_make_no_network_call(offline, monkeypatch):
    """Online (HF_HUB_OFFLINE unset) but cached: neither huggingface_hub's download nor
    its API nor any socket is touched."""
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")

    def boom(*a, **k):
        raise AssertionError("network used although the files are cached")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", boom)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", boom)
    monkeypatch.setattr(socket.socket, "connect", boom)
    for layout, (repo, files, release, sae_id, code, recon, _) in CASES.items():
        _check(acts.SAE.from_pretrained(release, sae_id, dtype=torch.float64), code, recon)


def test_offline_and_not_cached_names_repo_revision_and_file(offline):
    with pytest.raises(FileNotFoundError) as e:
        acts.SAE.from_pretrained("gemma-scope-2b-pt-res", "layer_20/width_16k/average_l0_71")
    msg = str(e.value)
    for part in ("google/gemma-scope-2b-pt-res", "'main'",
                 "layer_20/width_16k/average_l0_71/params.npz", "HF_HUB_OFFLINE"):
        assert part in msg
    assert isinstance(e.value, acts.decompose.pretrained.NotCachedError)
    with pytest.raises(FileNotFoundError, match="'nobody/nothing'.*'v2'"):
        acts.SAE.load("hf://nobody/nothing@v2/layers.3")


def test_download_fetches_only_the_requested_sae(cache, tmp_path, monkeypatch):
    """Online and not cached: the file list is asked once, then exactly the SAE's files are
    downloaded (not the repo's other SAEs), through hf_hub_download into the cache."""
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    files, hand = _sparsify_files()
    repo = "someone/any-sparsify-repo"
    asked = []

    def fake_download(repo_id, filename, *, revision=None, cache_dir=None, **kw):
        asked.append(filename)
        add_repo(cache_dir, repo_id, {f: d for f, d in files.items()})
        from huggingface_hub import try_to_load_from_cache
        return try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir,
                                      revision=revision)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files",
                        lambda self, repo_id, revision=None, **k: sorted(files))
    sae = acts.SAE.load(f"hf://{repo}/layers.10", dtype=torch.float64)
    assert asked == ["layers.10/cfg.json", "layers.10/sae.safetensors"]
    _check(sae, *hand[10])
    assert sae.provenance["layout"] == "sparsify"


def test_unknown_layout_lists_the_files_seen(cache, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files",
                        lambda self, repo_id, revision=None, **k: ["x/weights.bin",
                                                                   "x/notes.txt"])
    with pytest.raises(ValueError, match=r"no known SAE layout.*notes.txt.*weights.bin"):
        acts.SAE.load("hf://someone/odd/x")
    add_repo(tmp_path, "someone/odd", {"x/weights.bin": b"1", "x/notes.txt": b"2"})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"no known SAE layout.*notes.txt"):
        acts.SAE.load("hf://someone/odd/x")


def test_load_many_natural_order_and_pattern(offline):
    files, hand = SPARSIFY
    saes = acts.SAE.load_many("hf://EleutherAI/sae-pythia-160m-32k", pattern="layers.*",
                              dtype=torch.float64)
    assert list(saes) == ["layers.0", "layers.1", "layers.2", "layers.10"]
    for L, s in zip((0, 1, 2, 10), saes.values()):
        _check(s, *hand[L])
    only = acts.SAE.load_many("hf://EleutherAI/sae-pythia-160m-32k", pattern="layers.1*")
    assert list(only) == ["layers.1", "layers.10"]
    with pytest.raises(ValueError, match="no SAE folder matches"):
        acts.SAE.load_many("hf://EleutherAI/sae-pythia-160m-32k", pattern="h.*")
    by_id = acts.SAE.load_many("sae-pythia-160m-32k", pattern="layers.[02]",   # a release
                               dtype=torch.float64)
    assert list(by_id) == ["layers.0", "layers.2"]
    _check(by_id["layers.2"], *hand[2])
    assert by_id["layers.0"].provenance["sae_id"] == "layers.0"


# ----------------------------------------------------------------- maths of SAELens files
def _saelens_cfg(arch, **kw):
    cfg = {"architecture": arch, "d_in": D, "d_sae": M, "dtype": "float64", "device": "cpu",
           "apply_b_dec_to_input": True, "normalize_activations": "none",
           "metadata": {"sae_lens_version": "6.0.0", "hook_name": "blocks.3.hook_resid_post"}}
    cfg.update(kw)
    return cfg


def test_saelens_expected_average_only_in_with_release_factor(cache, tmp_path, monkeypatch):
    """normalize_activations=expected_average_only_in: inputs were x·s; the factor comes
    from a user's registry file (overrides), and is folded exactly."""
    W_enc, b_enc, W_dec, b_dec = _r(D, M), _r(M, scale=.3), _r(M, D), _r(D)
    s = 2.5
    add_repo(tmp_path, "me/saelens-norm", {
        "a/cfg.json": _saelens_cfg("standard", normalize_activations="expected_average_only_in"),
        "a/sae_weights.safetensors": safetensors_bytes(
            {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec})})
    reg = tmp_path / "mine.yaml"
    reg.write_text("version: 1\nreleases:\n  my-norm:\n    repo: me/saelens-norm\n"
                   "    revision: main\n    layout: saelens\n    model: gpt2\n    saes:\n"
                   "      - {id: a, path: a, l0: null, overrides: {norm_scaling_factor: 2.5}}\n")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ACTSPACE_SAE_RELEASES", str(reg))
    from actspace.decompose import fold
    monkeypatch.setattr(fold, "_CHUNK", 4)
    code = ((X * s - b_dec) @ W_enc + b_enc).clamp_min(0)
    recon = (code @ W_dec + b_dec) / s
    _check(acts.SAE.from_pretrained("my-norm", "a", dtype=torch.float64), code, recon)
    monkeypatch.delenv("ACTSPACE_SAE_RELEASES")
    _check(acts.SAE.from_pretrained("my-norm", "a", dtype=torch.float64, registry=[reg]),
           code, recon)
    with pytest.raises(ValueError, match="norm_scaling_factor"):   # no factor: refused
        acts.SAE.load("hf://me/saelens-norm/a")


def test_saelens_decoder_norm_folding(tmp_path, monkeypatch):
    """TopK with rescale_acts_by_decoder_norm: selects on pre·‖W_dec[m]‖, decodes with
    W_dec[m]/‖W_dec[m]‖ (rows deliberately far from unit norm)."""
    W_enc, b_enc, W_dec, b_dec = _r(D, M), _r(M, scale=.3), _r(M, D, scale=3), _r(D)
    add_repo(tmp_path, "me/topk-rescale", {
        "b/cfg.json": _saelens_cfg("topk", k=3, rescale_acts_by_decoder_norm=True),
        "b/sae_weights.safetensors": safetensors_bytes(
            {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec})})
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from actspace.decompose import fold
    monkeypatch.setattr(fold, "_CHUNK", 3)      # rows folded in several chunks
    n = W_dec.norm(dim=1)
    code = _topk(((X - b_dec) @ W_enc + b_enc) * n, 3)
    recon = (code / n) @ W_dec + b_dec
    sae = acts.SAE.load("hf://me/topk-rescale/b", dtype=torch.float64)
    _check(sae, code, recon)
    assert sae.hookpoint == "blocks.3.hook_resid_post"


def test_skip_transcoder_round_trips_through_saelens_and_sparsify(tmp_path):
    sae = acts.SAE(D, M, "jumprelu", d_out=D, hookpoint="a", hookpoint_out="b", skip=True,
                   dtype=torch.float64)
    with torch.no_grad():
        sae.W_skip.copy_(_r(D, D))
    sae.save(tmp_path / "lens")
    back = acts.SAE.load(tmp_path / "lens")
    torch.testing.assert_close(back(X)[0], sae(X)[0])
    topk = acts.SAE(D, M, "topk", 3, skip=True, apply_b_dec_to_input=False,
                    dtype=torch.float64)
    with torch.no_grad():
        topk.W_skip.copy_(_r(D, D))
    topk.save(tmp_path / "sp", format="sparsify")
    torch.testing.assert_close(acts.SAE.load(tmp_path / "sp")(X)[0], topk(X)[0])
    with pytest.raises(ValueError, match="skip"):
        sae.save(tmp_path / "gs", format="gemmascope")


# ----------------------------------------------------------------- dictionary_learning pickles
class _Payload:
    def __reduce__(self):
        return (open, (os.environ["ACTSPACE_TEST_MARKER"], "w"))


def test_pickle_payload_never_runs(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("ACTSPACE_TEST_MARKER", str(marker))
    d = tmp_path / "dl"
    d.mkdir()
    (d / "config.json").write_text('{"trainer": {"dict_class": "AutoEncoder", '
                                   f'"activation_dim": {D}, "dict_size": {M}}}}}')
    with open(d / "ae.pt", "wb") as f:
        pickle.dump({"encoder.weight": _Payload()}, f)
    with pytest.raises(ValueError, match="ae.pt.*not a plain tensor state dict"):
        acts.SAE.load(d)
    assert not marker.exists()
    torch.save([torch.zeros(2)], d / "ae.pt")          # loadable, but not a state dict
    with pytest.raises(ValueError, match=r"flat \{name: tensor\} state dict, got list"):
        acts.SAE.load(d)
    torch.save({"encoder.weight": torch.zeros(M, D), "n": 3}, d / "ae.pt")
    with pytest.raises(ValueError, match="state dict, got dict"):
        acts.SAE.load(d)


def test_dictlearning_autoencoder_matches_hand(tmp_path):
    enc, enc_b, dec, bias = _r(M, D), _r(M, scale=.3), _r(D, M), _r(D)
    d = tmp_path / "ae"
    d.mkdir()
    (d / "config.json").write_text('{"trainer": {"dict_class": "AutoEncoder", '
                                   f'"activation_dim": {D}, "dict_size": {M}}}}}')
    torch.save({"encoder.weight": enc, "encoder.bias": enc_b, "decoder.weight": dec,
                "bias": bias}, d / "ae.pt")
    code = ((X - bias) @ enc.T + enc_b).clamp_min(0)
    _check(acts.SAE.load(d), code, code @ dec.T + bias)


# ----------------------------------------------------------------- specs
def test_is_remote_spec(tmp_path, monkeypatch):
    from actspace.decompose.pretrained import is_remote_spec

    assert is_remote_spec("hf://a/b/c") and is_remote_spec("gemma-scope-2b-pt-res:layer_1/x")
    assert not is_remote_spec(str(tmp_path)) and not is_remote_spec("C:\\sae")
    assert not is_remote_spec("runs/x:y") and not is_remote_spec(3)
    for bad in ("hf://a/b/../../../etc", "hf://a/b@../x/c", "hf://a/b/./c"):
        with pytest.raises(ValueError, match="bad Hub location"):
            acts.SAE.load(bad)
    odd = tmp_path / "a:b"
    odd.mkdir()
    monkeypatch.chdir(tmp_path)
    assert not is_remote_spec("a:b")      # an existing local path wins


def test_hf_home_locates_the_cache(tmp_path, monkeypatch):
    """Without HF_HUB_CACHE, the cache is HF_HOME/hub (read when called, not at import)."""
    repo, files, release, sae_id, code, recon, _ = CASES["gemmascope"]
    add_repo(tmp_path / "home" / "hub", repo, files)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _check(acts.SAE.from_pretrained(release, sae_id, dtype=torch.float64), code, recon)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match="elsewhere"):
        acts.SAE.from_pretrained(release, sae_id)


def test_hub_errors_name_repo_revision_and_file(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import errors

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    raised = []

    def download(repo_id, filename, **kw):
        raise raised[-1]
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    raised.append(errors.EntryNotFoundError("404"))
    with pytest.raises(FileNotFoundError, match="'google/gemma-scope-2b-pt-res' \\(revision "
                                                "'main'\\) has no file 'layer_1/x/params.npz'"):
        acts.SAE.from_pretrained("gemma-scope-2b-pt-res", "layer_1/x")
    raised.append(errors.LocalEntryNotFoundError("connection refused"))
    with pytest.raises(acts.decompose.pretrained.NotCachedError, match="could not reach"):
        acts.SAE.from_pretrained("gemma-scope-2b-pt-res", "layer_1/x")
    raised.append(ConnectionError("network down"))
    with pytest.raises(RuntimeError, match="'main'.*network down"):
        acts.SAE.from_pretrained("gemma-scope-2b-pt-res", "layer_1/x")
