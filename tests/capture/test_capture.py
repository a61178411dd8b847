"""acts.capture: equality with output_hidden_states (real MiniLM and tiny random decoders),
generate, hook removal, early stop, hookpoint names and family helpers."""

import pytest
import torch

import actspace as acts
from actspace.model import hookpoints as hp

transformers = pytest.importorskip("transformers")
from _models import minilm_dir  # noqa: E402


@pytest.fixture(scope="module")
def minilm():
    from transformers import AutoModel, AutoTokenizer

    p = minilm_dir()
    return AutoModel.from_pretrained(p).eval(), AutoTokenizer.from_pretrained(p)


def tiny_decoder(family: str):
    from transformers import (GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM,
                              LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM)

    torch.manual_seed(0)
    if family == "gpt2":
        cfg = GPT2Config(vocab_size=97, n_positions=64, n_embd=32, n_layer=3, n_head=2)
        return GPT2LMHeadModel(cfg).eval()
    common = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=2, max_position_embeddings=64)
    if family == "llama":
        return LlamaForCausalLM(LlamaConfig(num_key_value_heads=2, **common)).eval()
    if family == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(num_key_value_heads=2, **common)).eval()
    return GPTNeoXForCausalLM(GPTNeoXConfig(**common)).eval()


def test_minilm_equals_hidden_states_after_padding_removal(minilm):
    model, tok = minilm
    from pydoc_data.topics import topics

    texts = [topics["for"][:200], topics["if"][:60], "a short one"]
    batch = tok(texts, padding=True, truncation=True, max_length=48, return_tensors="pt")
    names = [hp.layer_hookpoint(model, i) for i in range(hp.num_layers(model))]
    with torch.inference_mode(), acts.capture(model, names) as cap:
        out = model(**batch, output_hidden_states=True)
    mask = batch["attention_mask"].bool()
    for i, name in enumerate(names):
        got = cap[name][mask]                       # padding removed: [tokens, d]
        want = out.hidden_states[i + 1][mask]
        assert got.shape == want.shape == (int(mask.sum()), 384)
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox", "qwen2"])
def test_decoder_families_resid_and_input(family):
    model = tiny_decoder(family)
    n = hp.num_layers(model)
    assert n == 3
    ids = torch.randint(0, 97, (2, 7))
    names = [hp.layer_hookpoint(model, i) for i in range(n)]
    pre = hp.layer_hookpoint(model, 1, "resid_pre")
    with torch.no_grad(), acts.capture(model, names + [pre]) as cap:
        out = model(ids, output_hidden_states=True)
    # hidden_states[i] is the input of layer i; the last one has the final norm applied
    for i in range(n - 1):
        torch.testing.assert_close(cap[names[i]], out.hidden_states[i + 1], rtol=0, atol=0)
    torch.testing.assert_close(cap[pre], out.hidden_states[1], rtol=0, atol=0)
    for site in ("attn", "mlp"):
        h = hp.layer_hookpoint(model, 0, site)
        with torch.no_grad(), acts.capture(model, h) as cap:
            model(ids)
        assert cap[h].shape == (2, 7, 32)


def test_capture_during_generate():
    model = tiny_decoder("llama")
    ids = torch.randint(0, 97, (1, 5))
    name = hp.layer_hookpoint(model, -1)
    with torch.no_grad(), acts.capture(model, name) as cap:
        gen = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    recs = cap.all(name)
    assert len(recs) == 4                              # prompt pass + 3 cached steps
    assert [r.shape[1] for r in recs] == [5, 1, 1, 1]
    assert cap.cat(name).shape == (1, 8, 32)
    # the cached steps equal a full forward of the generated prefix
    with torch.no_grad(), acts.capture(model, name) as full:
        model(gen[:, :-1])
    torch.testing.assert_close(cap.cat(name), full[name], rtol=1e-5, atol=1e-5)


def _n_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_removed_on_exit_and_on_exception():
    model = tiny_decoder("gpt2")
    base = _n_hooks(model)
    with acts.capture(model, "transformer.h.*") as cap:
        assert _n_hooks(model) > base
        model(torch.randint(0, 97, (1, 4)))
    assert _n_hooks(model) == base
    assert len(cap.keys()) == 3
    with pytest.raises(RuntimeError, match="boom"):
        with acts.capture(model, ["transformer.h.0", "transformer.h.1:input"]):
            raise RuntimeError("boom")
    assert _n_hooks(model) == base


def test_early_stop_skips_later_layers():
    model = tiny_decoder("gpt2")
    calls = []
    h = model.transformer.h[2].register_forward_hook(lambda *a: calls.append(1))
    try:
        ids = torch.randint(0, 97, (1, 4))
        with torch.no_grad(), acts.capture(model, "transformer.h.1", early_stop=True) as cap:
            model(ids)
            pytest.fail("early stop must leave the with body")   # not reached
        assert calls == [] and cap.stopped_early == 1
        with torch.no_grad():
            want = model(ids, output_hidden_states=True).hidden_states[2]
        torch.testing.assert_close(cap["transformer.h.1"], want)
        calls.clear()
        # Capture.forward returns None and keeps the body running
        with torch.no_grad(), acts.capture(model, "transformer.h.0", early_stop=True) as cap:
            assert cap.forward(ids) is None
            assert cap.forward(ids) is None
        assert len(cap.all("transformer.h.0")) == 2 and calls == []
    finally:
        h.remove()


def test_unknown_hookpoint_lists_closest():
    model = tiny_decoder("gpt2")
    with pytest.raises(ValueError, match=r"transformer\.h\.1"):
        acts.capture(model, "transformer.h1")
    with pytest.raises(ValueError, match="matches no module"):
        acts.capture(model, "decoder.*")
    with pytest.raises(ValueError, match="'input' or 'output'"):
        acts.capture(model, "transformer.h.0:side")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        acts.capture("not a model", "x")
    with pytest.raises(ValueError, match="layer must be"):
        hp.layer_hookpoint(model, 3)
    with acts.capture(model, "transformer.h.0") as cap:
        pass
    with pytest.raises(KeyError, match="has not fired"):
        cap["transformer.h.0"]
    with pytest.raises(KeyError, match="not a captured hookpoint"):
        cap["transformer.h.2"]


def test_records_are_copies_and_dtype():
    lin = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    x = torch.randn(3, 4)
    with acts.capture(lin, ["0", "1:input"], to=None, dtype=torch.float64) as cap:
        y = lin(x)
    assert cap["0"].dtype == torch.float64
    torch.testing.assert_close(cap["1:input"], lin[0](x).double())
    assert cap["0"].data_ptr() != y.data_ptr()


def test_bert_sites_are_sublayer_outputs_before_the_residual(minilm):
    model, tok = minilm
    batch = tok(["the cat sat on the mat"], return_tensors="pt")
    names = {s: hp.layer_hookpoint(model, 2, s) for s in ("resid_pre", "attn", "mlp", "resid")}
    assert names["attn"] == "encoder.layer.2.attention.output.dense"
    assert names["mlp"] == "encoder.layer.2.output.dense"
    with torch.inference_mode(), acts.capture(model, list(names.values())) as cap:
        model(**batch)
    layer = model.encoder.layer[2]
    # BERT: h1 = LN1(attn + x); out = LN2(mlp + h1); recompute from the captured parts
    h1 = layer.attention.output.LayerNorm(cap[names["attn"]] + cap[names["resid_pre"]])
    out = layer.output.LayerNorm(cap[names["mlp"]] + h1)
    torch.testing.assert_close(out, cap[names["resid"]], rtol=1e-5, atol=1e-5)


def _tiny_gemma(family: str):
    common = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                  max_position_embeddings=64)
    torch.manual_seed(0)
    if family == "gemma2":
        from transformers import Gemma2Config, Gemma2ForCausalLM

        return Gemma2ForCausalLM(Gemma2Config(**common)).eval()
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    return Gemma3ForCausalLM(Gemma3TextConfig(**common)).eval()


@pytest.mark.parametrize("family", ["llama", "gemma2", "gemma3_text"])
def test_sites_add_up_to_the_residual_stream(family):
    """resid == resid_pre + attn + mlp exactly (the order the layer adds them in): the
    'attn'/'mlp' sites are what is added to the residual stream, which for Gemma 2/3 are
    the outputs of the post-sublayer norms, not of self_attn / mlp."""
    model = tiny_decoder("llama") if family == "llama" else _tiny_gemma(family)
    assert model.config.model_type == family
    names = {s: hp.layer_hookpoint(model, 1, s) for s in ("resid_pre", "attn", "mlp", "resid")}
    if family != "llama":
        assert names["attn"] == "model.layers.1.post_attention_layernorm"
        assert names["mlp"] == "model.layers.1.post_feedforward_layernorm"
    ids = torch.randint(0, 97, (2, 7))
    with torch.no_grad(), acts.capture(model, list(names.values())) as cap:
        model(ids)
    total = cap[names["resid_pre"]] + cap[names["attn"]] + cap[names["mlp"]]
    assert torch.equal(total, cap[names["resid"]])
