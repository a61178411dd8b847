"""sae.hookpoint_for(model): a pretrained SAE's own hook name (here Gemma Scope's
TransformerLens name) mapped to the HF module of a tiny random Gemma 2, where a capture
reads exactly what the SAE was trained on (the block's output), and its features follow."""
import pytest
import torch

import actspace as acts
from _hub import add_repo, npz_bytes

D, M = 8, 12


@pytest.fixture
def gemma2():
    import transformers

    torch.manual_seed(0)
    cfg = transformers.Gemma2Config(vocab_size=64, hidden_size=D, intermediate_size=16,
                                    num_hidden_layers=14, num_attention_heads=2,
                                    num_key_value_heads=1, head_dim=4)
    return transformers.Gemma2ForCausalLM(cfg).eval()


def test_gemma_scope_sae_on_an_hf_gemma2(gemma2, tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(3)
    arrays = {"W_enc": torch.randn(D, M, generator=g, dtype=torch.float64),
              "W_dec": torch.randn(M, D, generator=g, dtype=torch.float64),
              "b_enc": torch.randn(M, generator=g, dtype=torch.float64) * .1,
              "b_dec": torch.randn(D, generator=g, dtype=torch.float64),
              "threshold": torch.rand(M, generator=g, dtype=torch.float64) * .2}
    add_repo(tmp_path, "google/gemma-scope-2b-pt-res",
             {"layer_12/width_16k/average_l0_82/params.npz": npz_bytes(arrays)})
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sae = acts.SAE.from_pretrained("gemma-scope-2b-pt-res", "layer_12/width_16k/average_l0_82",
                                   dtype=torch.float64)
    assert sae.hookpoint == "blocks.12.hook_resid_post"
    hp = sae.hookpoint_for(gemma2)
    assert hp == "model.layers.12"
    ids = torch.randint(0, 64, (2, 5), generator=g)
    with torch.no_grad(), acts.capture(gemma2, [hp]) as cap:
        out = gemma2(input_ids=ids, output_hidden_states=True)
    x = cap[hp].reshape(-1, D).double()
    want = out.hidden_states[13].reshape(-1, D).double()      # output of block 12 (of 14)
    torch.testing.assert_close(x, want)
    pre = x @ arrays["W_enc"] + arrays["b_enc"]
    code = torch.where(pre > arrays["threshold"], pre, torch.zeros_like(pre))
    torch.testing.assert_close(sae.encode(x).to_dense(), code)


def test_transcoder_output_hook_and_missing_names(gemma2):
    tc = acts.SAE(D, M, "relu", d_out=D, hookpoint="blocks.3.ln2.hook_normalized",
                  hookpoint_out="blocks.3.hook_mlp_out")
    from actspace.model.hook_names import hookpoint_for

    assert tc.hookpoint_for(gemma2) == "model.layers.3.mlp:input"
    assert tc.hookpoint_for(gemma2, out=True) == hookpoint_for(gemma2, "blocks.3.hook_mlp_out")
    assert tc.hookpoint_for(gemma2, out=True) != tc.hookpoint_for(gemma2)
    with pytest.raises(ValueError, match="no hook name"):
        acts.SAE(D, M, "relu").hookpoint_for(gemma2)
    with pytest.raises(ValueError, match="no output hook name"):
        acts.SAE(D, M, "relu", hookpoint="blocks.1.hook_resid_post").hookpoint_for(gemma2,
                                                                                  out=True)
