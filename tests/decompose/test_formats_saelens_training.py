"""SAELens' training layouts (what its trainers checkpoint with TrainingSAE.save_model) for
BatchTopK and Matryoshka BatchTopK: read as our batchtopk / matryoshka kinds, with the codes
of the JumpReLU its save_inference_model would write, computed here by hand. (Against the
sae-lens package itself: bench/check_saelens_formats.py, outside CI.)"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import actspace as acts

D_IN, D_SAE = 12, 40


def _write(path, arch, *, rescale=True, k=6.0, drop=(), **cfg_extra):
    g = torch.Generator().manual_seed(0)
    t = {"W_enc": torch.randn(D_IN, D_SAE, generator=g),
         "b_enc": 0.1 * torch.randn(D_SAE, generator=g),
         # rows of uneven norms: the rescaling fold must matter
         "W_dec": torch.randn(D_SAE, D_IN, generator=g) * torch.rand(D_SAE, 1, generator=g) * 2,
         "b_dec": 0.1 * torch.randn(D_IN, generator=g),
         "topk_threshold": torch.tensor(0.75, dtype=torch.float64)}
    for name in drop:
        del t[name]
    cfg = {"architecture": arch, "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32",
           "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": "none",
           "reshape_activations": "none", "k": k, "topk_threshold_lr": 0.01,
           "aux_loss_coefficient": 1.0, "rescale_acts_by_decoder_norm": rescale,
           "decoder_init_norm": 0.1,
           "metadata": {"sae_lens_version": "6.54.12", "sae_lens_training_version": "6.54.12",
                        "model_name": "gpt2", "hook_name": "blocks.3.hook_resid_post"},
           **cfg_extra}
    path.mkdir()
    save_file(t, str(path / "sae_weights.safetensors"))
    (path / "cfg.json").write_text(json.dumps(cfg))
    return t


def _by_hand(t, x, rescale):
    """SAELens' save_inference_model maths in float64: fold the decoder norms n into the
    encoder (when rescaling), then a JumpReLU at topk_threshold."""
    W_enc, b_enc = t["W_enc"].double(), t["b_enc"].double()
    W_dec, b_dec = t["W_dec"].double(), t["b_dec"].double()
    n = W_dec.norm(dim=1) if rescale else torch.ones(D_SAE, dtype=torch.float64)
    pre = ((x.double() - b_dec) @ W_enc + b_enc) * n                 # [N, d_sae]
    f = torch.where(pre > float(t["topk_threshold"]), pre, torch.zeros_like(pre))
    return f, f @ (W_dec / n[:, None]) + b_dec


@pytest.mark.parametrize("arch,kind,extra", [
    ("batchtopk", "batchtopk", {}),
    ("matryoshka_batchtopk", "matryoshka", {"matryoshka_widths": [10, 20, D_SAE]}),
])
@pytest.mark.parametrize("rescale", [True, False])
def test_training_layout_reads_as_our_kind_with_saelens_inference_codes(tmp_path, arch, kind,
                                                                         extra, rescale):
    t = _write(tmp_path / "s", arch, rescale=rescale, **extra)
    sae = acts.SAE.load(tmp_path / "s")
    assert sae.kind == kind and sae.k == 6 and sae.d_sae == D_SAE
    assert sae.threshold.shape == () and float(sae.threshold) == 0.75
    x = torch.randn(64, D_IN, generator=torch.Generator().manual_seed(1)) * 2
    f, x_hat = _by_hand(t, x, rescale)
    assert int((f > 0).sum()) > 64          # the case is not trivial
    with torch.no_grad():
        got, _ = sae(x)
        code = sae.encode(x).to_dense()
    torch.testing.assert_close(code.double(), f, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.double(), x_hat, atol=1e-5, rtol=1e-5)
    if extra:
        assert sae.extra_cfg["matryoshka_widths"] == [10, 20, D_SAE]
        assert sae.training_options == {"prefixes": [10, 20, D_SAE]}


def test_training_layout_without_topk_threshold_names_the_tensor(tmp_path):
    _write(tmp_path / "s", "batchtopk", drop=("topk_threshold",))
    with pytest.raises(ValueError, match="sae_weights.safetensors.*'topk_threshold'"):
        acts.SAE.load(tmp_path / "s")


def test_training_layout_with_a_fractional_k_is_refused_by_name(tmp_path):
    _write(tmp_path / "s", "batchtopk", k=6.5)
    with pytest.raises(ValueError, match="cfg.json.*'k'"):
        acts.SAE.load(tmp_path / "s")
