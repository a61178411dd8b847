"""Which tokens an intervention edits when the call is not the plain top-level one: a call
of the inner base model, an encoder-decoder (whose top-level mask is the encoder's), and
re-entering a used intervention context (hooks and the generate wrapper come and go)."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from actspace.steer.vector import SteeringVector  # noqa: E402
from actspace.model.hookpoints import layer_hookpoint, resolve  # noqa: E402
from actspace.model.hooks import first_tensor  # noqa: E402

D = 32


@pytest.fixture(params=["gpt2", "llama"], scope="module")
def lm(request):
    torch.manual_seed(0)
    if request.param == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=101, n_embd=D, n_layer=3, n_head=4, n_positions=64)
        return transformers.GPT2LMHeadModel(cfg).eval()
    cfg = transformers.LlamaConfig(vocab_size=101, hidden_size=D, intermediate_size=64, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def t5():
    torch.manual_seed(0)
    cfg = transformers.T5Config(vocab_size=50, d_model=D, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                                num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return transformers.T5ForConditionalGeneration(cfg).eval()


def _deltas(model, hookpoint, make_ctx, run):
    """[steered - unsteered activation at hookpoint] per call of its module during run():
    one hook registered before the intervention, one after (hooks run in that order)."""
    (hp,) = resolve(model, hookpoint)
    before, after = [], []

    def recorder(out):
        if hp.side == "output":
            return hp.module.register_forward_hook(lambda m, a, o: out.append(first_tensor(o).clone()))
        return hp.module.register_forward_pre_hook(lambda m, a: out.append(first_tensor(a).clone()))

    h1 = recorder(before)
    try:
        with torch.no_grad(), make_ctx():
            h2 = recorder(after)
            try:
                run()
            finally:
                h2.remove()
    finally:
        h1.remove()
    return [a - b for a, b in zip(after, before)]


def _only_where(delta, mask, value):
    """delta [B, T, d] is `value` on every component where mask [B, T], zero elsewhere."""
    torch.testing.assert_close(delta[mask], torch.full_like(delta[mask], value), atol=1e-5, rtol=0)
    assert delta[~mask].abs().max() == 0 if (~mask).any() else True


@pytest.mark.parametrize("padding", ["left", "right"])
def test_inner_model_call_keeps_padding_unsteered(lm, padding):
    """model.model(input_ids, attention_mask): the mask arrives at the base model, not at
    the module apply() was given; it must still protect padding."""
    hookpoint = layer_hookpoint(lm, 1)
    v = SteeringVector({hookpoint: torch.ones(D)})
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]])
    am = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    if padding == "left":
        ids, am = ids.flip(1), am.flip(1)
    (d,) = _deltas(lm, hookpoint, lambda: v.apply(lm, 2.0),
                   lambda: lm.base_model(input_ids=ids, attention_mask=am))
    _only_where(d, am.bool(), 2.0)
    # a slice counts real tokens of each row, through the inner call as well
    (d,) = _deltas(lm, hookpoint, lambda: v.apply(lm, 2.0, positions=slice(1, 2)),
                   lambda: lm.base_model(input_ids=ids, attention_mask=am))
    _only_where(d, am.bool() & (am.cumsum(1) == 2), 2.0)


def test_t5_encoder_padding_and_decoder_tokens(t5):
    """In generate, T5's encoder runs through get_encoder() (never the top-level forward)
    and its decoder's steps get the encoder's mask at the top level: each stack's own
    mask must be used - encoder padding unsteered, every decoder token steered, also at
    the LM head (run by the top-level forward, outside the stacks)."""
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 0, 0]])
    am = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    v = SteeringVector({"encoder.block.0": torch.ones(D), "decoder.block.0": torch.ones(D),
                        "lm_head:input": torch.ones(D)})
    new = 3

    def gen():
        t5.generate(input_ids=ids, attention_mask=am, max_new_tokens=new, min_new_tokens=new, do_sample=False)

    (enc,) = _deltas(t5, "encoder.block.0", lambda: v.apply(t5, 3.0, hookpoints=["encoder.block.0"]), gen)
    _only_where(enc, am.bool(), 3.0)
    for hp in ("decoder.block.0", "lm_head:input"):   # a decoder stack / the top-level state
        dec = _deltas(t5, hp, lambda: v.apply(t5, 3.0, hookpoints=[hp]), gen)
        assert len(dec) == new and all(d.shape[1] == 1 for d in dec)       # one token per step
        for d in dec:
            _only_where(d, torch.ones(2, 1, dtype=torch.bool), 3.0)
    # an embedding both stacks share: each call takes the state of the stack calling it
    own = t5.decoder.embed_tokens
    t5.decoder.embed_tokens = t5.encoder.embed_tokens
    # its name: "encoder.embed_tokens", or "shared" where transformers (< 5) builds both
    # stacks on the shared embedding module itself
    hp = next(n for n, m in t5.named_modules() if m is t5.encoder.embed_tokens)
    try:
        emb = _deltas(t5, hp, lambda: SteeringVector({hp: torch.ones(D)}).apply(t5, 3.0), gen)
    finally:
        t5.decoder.embed_tokens = own
    assert [tuple(d.shape[:2]) for d in emb] == [(2, 4)] + [(2, 1)] * new
    _only_where(emb[0], am.bool(), 3.0)
    for d in emb[1:]:
        _only_where(d, torch.ones(2, 1, dtype=torch.bool), 3.0)


def test_t5_decoder_attention_mask_when_lengths_match(t5):
    """A teacher-forced forward whose decoder input is as long as the encoder input: the
    encoder mask has the right length but is not the decoder's; decoder_attention_mask is."""
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 0, 0]])
    am = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    dec_ids = torch.tensor([[0, 9, 10, 11], [0, 9, 10, 0]])
    dec_am = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    for hp in ("decoder.block.0", "lm_head:input"):
        v = SteeringVector({hp: torch.ones(D)})
        (d,) = _deltas(t5, hp, lambda: v.apply(t5, 3.0), lambda: t5(
            input_ids=ids, attention_mask=am, decoder_input_ids=dec_ids, decoder_attention_mask=dec_am))
        _only_where(d, dec_am.bool(), 3.0)


def test_reentering_a_used_context_steers_again(lm):
    hookpoint = layer_hookpoint(lm, 1)
    (hp,) = resolve(lm, hookpoint)
    n_hooks = len(hp.module._forward_hooks)
    ids = torch.randint(1, 101, (1, 6), generator=torch.Generator().manual_seed(3))
    ctx = SteeringVector({hookpoint: torch.randn(D, generator=torch.Generator().manual_seed(5))}).apply(lm, 2.0)
    with torch.no_grad():
        with ctx:
            a = lm(input_ids=ids).logits
        assert not ctx.active and len(hp.module._forward_hooks) == n_hooks
        base = lm(input_ids=ids).logits
        with ctx:
            assert ctx.active
            b = lm(input_ids=ids).logits
        assert not ctx.active and len(hp.module._forward_hooks) == n_hooks
    assert (a - base).abs().max() > 1e-3
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_generate_wrapper_comes_and_goes(lm):
    """The prompt-length wrapper is one instance attribute shared by all interventions on
    the model; it goes when the last one does, in whatever order they exit."""
    hookpoint = layer_hookpoint(lm, 1)
    v = SteeringVector({hookpoint: torch.ones(D)})
    assert "generate" not in lm.__dict__
    a, b = v.apply(lm, 1.0, positions="generated"), v.apply(lm, 1.0, positions="prompt")
    assert "generate" not in lm.__dict__          # built, not entered: nothing installed
    a.__enter__()
    b.__enter__()
    assert "generate" in lm.__dict__
    a.__exit__(None, None, None)                  # exits out of nesting order
    assert "generate" in lm.__dict__
    b.__exit__(None, None, None)
    assert "generate" not in lm.__dict__
    with a:            # re-entered: wrapped again, unwrapped on exit
        assert "generate" in lm.__dict__
        ids = torch.randint(1, 101, (1, 4), generator=torch.Generator().manual_seed(4))
        with torch.no_grad():
            out = lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=2,
                              do_sample=False, pad_token_id=0)
        assert out.shape == (1, 6)
    assert "generate" not in lm.__dict__
