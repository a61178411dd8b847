"""Defects found by loading real peers' files (issue 12, 1-5) and untrusted weight files
(issue 20, 7): each test fails on the code before the fix."""
import json
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import actspace as acts

D_IN, D_SAE = 12, 40


def _weights(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return {"W_enc": torch.randn(D_IN, D_SAE, generator=g).to(dtype),
            "b_enc": torch.randn(D_SAE, generator=g).to(dtype),
            "W_dec": torch.randn(D_SAE, D_IN, generator=g).to(dtype),
            "b_dec": torch.randn(D_IN, generator=g).to(dtype)}


def _v6(path, tensors, **cfg):
    """A SAELens 6 directory (cfg as its SAEConfig.to_dict writes it)."""
    path.mkdir(parents=True)
    save_file(tensors, str(path / "sae_weights.safetensors"))
    base = {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
            "apply_b_dec_to_input": True, "normalize_activations": "none",
            "reshape_activations": "none", "architecture": "topk", "k": 4,
            "rescale_acts_by_decoder_norm": False,
            "metadata": {"sae_lens_version": "6.54.12", "hook_name": "blocks.3.hook_resid_post"}}
    base.update(cfg)
    base = {k: v for k, v in base.items() if v is not _DROP}
    (path / "cfg.json").write_text(json.dumps(base))


_DROP = object()


# ------------------------------------------------------------------ issue 12 defect 1
def test_saelens6_cfg_without_architecture_is_refused_naming_the_field(tmp_path):
    _v6(tmp_path / "s", _weights(), architecture=_DROP)
    with pytest.raises(ValueError, match="missing field 'architecture'"):
        acts.SAE.load(tmp_path / "s")


# ------------------------------------------------------------------ defect 2
def test_saelens5_hook_z_reshaping_survives_a_resave(tmp_path):
    p = tmp_path / "v5"
    p.mkdir()
    save_file(_weights(), str(p / "sae_weights.safetensors"))
    (p / "cfg.json").write_text(json.dumps({
        "architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32",
        "device": "cpu", "model_name": "gpt2", "hook_name": "blocks.4.attn.hook_z",
        "hook_layer": 4, "hook_head_index": None, "activation_fn_str": "relu",
        "activation_fn_kwargs": {}, "apply_b_dec_to_input": True,
        "finetuning_scaling_factor": False, "sae_lens_training_version": "5.11.0",
        "prepend_bos": True, "dataset_path": "x", "dataset_trust_remote_code": True,
        "context_size": 128, "normalize_activations": "none"}))
    sae = acts.SAE.load(p)
    sae.save(tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "cfg.json").read_text())
    # SAELens 6 reads this file natively (metadata.sae_lens_version 6.0.0): it must say so
    assert cfg["metadata"]["sae_lens_version"].startswith("6")
    assert cfg["reshape_activations"] == "hook_z"
    sae2 = acts.SAE.load(tmp_path / "out")
    sae2.save(tmp_path / "out2")       # and again: kept
    assert json.loads((tmp_path / "out2" / "cfg.json").read_text())[
        "reshape_activations"] == "hook_z"
    # a fresh SAE on a hook_z hookpoint gets SAELens 5's rule too; others "none"
    acts.SAE(D_IN, D_SAE, "relu", hookpoint="blocks.1.attn.hook_z").save(tmp_path / "fresh")
    acts.SAE(D_IN, D_SAE, "relu", hookpoint="blocks.1.hook_resid_post").save(tmp_path / "r")
    assert json.loads((tmp_path / "fresh" / "cfg.json").read_text())[
        "reshape_activations"] == "hook_z"
    assert json.loads((tmp_path / "r" / "cfg.json").read_text())[
        "reshape_activations"] == "none"


# ------------------------------------------------------------------ defect 3
def _saelens_rescaled_topk(t, x, k=4):
    """SAELens 6 TopK with rescale_acts_by_decoder_norm=True, written out by hand:
    codes topk(relu(pre)·‖W_dec[m]‖), decoded with the unit rows W_dec[m]/‖W_dec[m]‖."""
    t = {n: v.double() for n, v in t.items()}
    n = t["W_dec"].norm(dim=1)
    pre = (x.double() - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    z = torch.relu(pre * n)
    top = z.topk(k, dim=1)
    acts_ = torch.zeros_like(z).scatter_(1, top.indices, top.values)
    return acts_, acts_ @ (t["W_dec"] / n[:, None]) + t["b_dec"]


def test_saelens6_topk_rescaled_unit_rows_load_unchanged(tmp_path):
    t = _weights()
    t["W_dec"] = t["W_dec"] / t["W_dec"].norm(dim=1, keepdim=True)   # save_inference_model
    _v6(tmp_path / "s", t, rescale_acts_by_decoder_norm=True)
    sae = acts.SAE.load(tmp_path / "s")
    assert torch.equal(sae.W_dec, t["W_dec"]) and torch.equal(sae.W_enc, t["W_enc"].T)
    x = torch.randn(30, D_IN)
    want_code, want = _saelens_rescaled_topk(t, x)
    torch.testing.assert_close(sae(x)[0].double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.encode(x).to_dense().double(), want_code, rtol=1e-5,
                               atol=1e-5)


def test_saelens6_topk_rescaled_uneven_rows_are_folded_exactly(tmp_path):
    t = _weights(seed=1)
    t["W_dec"] = t["W_dec"] * torch.linspace(0.2, 3.0, D_SAE)[:, None]
    _v6(tmp_path / "s", t, rescale_acts_by_decoder_norm=True)
    sae = acts.SAE.load(tmp_path / "s")
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(D_SAE))
    x = torch.randn(50, D_IN)
    want_code, want = _saelens_rescaled_topk(t, x)
    torch.testing.assert_close(sae(x)[0].double(), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sae.encode(x).to_dense().double(), want_code, rtol=1e-4,
                               atol=1e-4)
    sae.save(tmp_path / "out")      # written as plain TopK, which it now is
    assert json.loads((tmp_path / "out" / "cfg.json").read_text())[
        "rescale_acts_by_decoder_norm"] is False


def test_rescale_on_another_architecture_is_refused_by_name(tmp_path):
    t = _weights()
    t["threshold"] = torch.rand(D_SAE)
    _v6(tmp_path / "s", t, architecture="jumprelu", k=_DROP, apply_b_dec_to_input=False,
        rescale_acts_by_decoder_norm=True)
    with pytest.raises(ValueError, match="rescale_acts_by_decoder_norm=True is not supported"):
        acts.SAE.load(tmp_path / "s")


# ------------------------------------------------------------------ defect 4
@pytest.mark.parametrize("content", [b"", b"not a safetensors file at all", "truncated"])
def test_bad_weight_files_name_the_file(tmp_path, content):
    _v6(tmp_path / "s", _weights())
    f = tmp_path / "s" / "sae_weights.safetensors"
    data = f.read_bytes()[:100] if content == "truncated" else content
    f.write_bytes(data)
    with pytest.raises(ValueError, match="sae_weights.safetensors"):
        acts.SAE.load(tmp_path / "s")


def test_bad_cfg_json_names_the_file(tmp_path):
    _v6(tmp_path / "s", _weights())
    (tmp_path / "s" / "cfg.json").write_text('{"d_in": 12, ')
    with pytest.raises(ValueError, match="cfg.json"):
        acts.SAE.load(tmp_path / "s")


def test_wrong_shape_names_the_file_and_tensor(tmp_path):
    t = _weights()
    t["b_enc"] = torch.zeros(D_SAE + 1)
    _v6(tmp_path / "s", t)
    with pytest.raises(ValueError, match=r"sae_weights\.safetensors.*'b_enc' has shape"):
        acts.SAE.load(tmp_path / "s")


def _npz(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _gemma_arrays():
    t = {n: v.numpy() for n, v in _weights().items()}
    t["threshold"] = np.abs(t["b_enc"])
    return t


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 broken zip", "truncated"])
def test_bad_npz_names_the_file(tmp_path, content):
    f = tmp_path / "params.npz"
    _npz(f, **_gemma_arrays())
    f.write_bytes(f.read_bytes()[:200] if content == "truncated" else content)
    with pytest.raises(ValueError, match="params.npz"):
        acts.SAE.load(f)


def test_gemmascope_wrong_W_dec_is_blamed_not_b_dec(tmp_path):
    a = _gemma_arrays()
    a["W_dec"] = np.zeros((D_SAE, D_IN + 1), np.float32)      # one column too many
    _npz(tmp_path / "params.npz", **a)
    with pytest.raises(ValueError, match=r"params\.npz.*'W_dec' has shape"):
        acts.SAE.load(tmp_path / "params.npz")


# ------------------------------------------------------------------ defect 5
def test_plain_sae_without_b_dec_subtraction_is_not_labelled_transcode(tmp_path):
    sae = acts.SAE(D_IN, D_SAE, "topk", 4, apply_b_dec_to_input=False)
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_()
    assert not sae.is_transcoder
    sae.save(tmp_path / "s", format="sparsify")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    assert cfg["transcode"] is False
    # what sparsify computes from the file (transcode false: x - b_dec) equals our SAE
    st = load_file(str(tmp_path / "s" / "sae.safetensors"))
    x = torch.randn(20, D_IN)
    z = torch.relu((x - st["b_dec"]) @ st["encoder.weight"].T + st["encoder.bias"])
    top = z.topk(4, dim=1)
    y = torch.zeros_like(z).scatter_(1, top.indices, top.values) @ st["W_dec"] + st["b_dec"]
    torch.testing.assert_close(y, sae(x)[0], rtol=1e-5, atol=1e-5)
    back = acts.SAE.load(tmp_path / "s")
    torch.testing.assert_close(back(x)[0], sae(x)[0], rtol=1e-5, atol=1e-5)
    # a real transcoder keeps the label
    tc = acts.SAE(D_IN, D_SAE, "topk", 4, hookpoint="a", hookpoint_out="b")
    tc.save(tmp_path / "tc", format="sparsify")
    assert json.loads((tmp_path / "tc" / "cfg.json").read_text())["transcode"] is True


# ------------------------------------------------------------------ issue 20, item 7
@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.int32, torch.bool, torch.int8])
def test_non_float_weights_are_refused_at_load_naming_file_tensor_dtype(tmp_path, dtype):
    t = _weights()
    t["W_dec"] = t["W_dec"].to(dtype)
    _v6(tmp_path / "s", t)
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(ValueError, match=rf"sae_weights\.safetensors.*'W_dec' has dtype {name}"):
        acts.SAE.load(tmp_path / "s")


def test_non_float_npz_arrays_are_refused(tmp_path):
    a = _gemma_arrays()
    a["threshold"] = a["threshold"].astype(np.int64)
    _npz(tmp_path / "params.npz", **a)
    with pytest.raises(ValueError, match=r"params\.npz.*'threshold' has dtype int64"):
        acts.SAE.load(tmp_path / "params.npz")


def test_cfg_dtype_is_honoured_and_checked(tmp_path):
    _v6(tmp_path / "bf", _weights(), dtype="bfloat16")
    assert acts.SAE.load(tmp_path / "bf").dtype == torch.bfloat16       # as SAELens loads it
    assert acts.SAE.load(tmp_path / "bf", dtype=torch.float64).dtype == torch.float64
    _v6(tmp_path / "f8", _weights(), dtype="float8_e4m3fn")
    with pytest.raises(ValueError, match=r"cfg\.json.*'dtype' is 'float8_e4m3fn'"):
        acts.SAE.load(tmp_path / "f8")
    _v6(tmp_path / "i", _weights(), dtype="int8")
    with pytest.raises(ValueError, match="'dtype' is 'int8'"):
        acts.SAE.load(tmp_path / "i")


# ------------------------------------------------------------------ issue 20, item 7: GGUF
def test_malformed_gguf_is_refused_naming_the_file(tmp_path):
    from actspace.steer.gguf import read_control_vector, write_control_vector

    good = tmp_path / "v.gguf"
    write_control_vector(good, {1: np.ones(8, np.float32), 2: np.zeros(8, np.float32)}, "m")
    data = good.read_bytes()
    for cut in (10, 30, 60, 100):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=rf"cut{cut}\.gguf"):
            read_control_vector(bad)
    huge = bytearray(data)
    huge[16:24] = (2 ** 40).to_bytes(8, "little")        # n_kv: far more than the file holds
    (tmp_path / "huge.gguf").write_bytes(bytes(huge))
    with pytest.raises(ValueError, match=r"huge\.gguf: malformed GGUF"):
        read_control_vector(tmp_path / "huge.gguf")
