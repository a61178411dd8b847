"""Steering hooks on tiny random causal LMs: exactness with KV cache, padding, removal."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from actspace.steer.vector import SteeringVector  # noqa: E402
from actspace.steer.interventions import ablate  # noqa: E402
from actspace.model.hookpoints import layer_hookpoint, resolve  # noqa: E402
from actspace.model.hooks import first_tensor, replace_first_tensor  # noqa: E402

D = 32


def _gpt2():
    cfg = transformers.GPT2Config(vocab_size=101, n_embd=D, n_layer=3, n_head=4, n_positions=64)
    return transformers.GPT2LMHeadModel(cfg)


def _llama():
    cfg = transformers.LlamaConfig(vocab_size=101, hidden_size=D, intermediate_size=64, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg)


@pytest.fixture(params=["gpt2", "llama"], scope="module")
def lm(request):
    torch.manual_seed(0)
    return (_gpt2() if request.param == "gpt2" else _llama()).eval()


def _batch(padding):
    g = torch.Generator().manual_seed(1)
    lens = [6, 4, 2]
    T = max(lens)
    ids = torch.zeros(len(lens), T, dtype=torch.long)
    am = torch.zeros(len(lens), T, dtype=torch.long)
    for i, n in enumerate(lens):
        sl = slice(T - n, T) if padding == "left" else slice(0, n)
        ids[i, sl] = torch.randint(1, 101, (n,), generator=g)
        am[i, sl] = 1
    return ids, am


def _positions(am):
    pos = am.long().cumsum(-1) - 1
    return pos.masked_fill(am == 0, 1)


class _Positions:
    """Records the position_ids of every forward of the model while active, placed at the
    absolute columns they cover (from the cache length), so a full forward can reproduce
    exactly what generate did - even HF's right-padding positions - in every cache mode.
    The hook sits on the base model: transformers < 5 runs chunked prefill through
    `self.forward`, which bypasses the task model's own hooks."""

    def __init__(self, model):
        self.model, self.cols = model, {}

    def _hook(self, mod, args, kw):
        cache = kw.get("cache", kw.get("past_key_values"))
        past = int(cache.get_seq_length()) if cache is not None else 0
        ids = kw["input_ids"] if kw.get("input_ids") is not None else args[0]
        # transformers < 5 gives chunked-prefill chunks position_ids [1, T] (no padding shift)
        pos = kw["position_ids"].expand(ids.shape[0], -1)
        for j in range(pos.shape[1]):
            self.cols[past + j] = pos[:, j]

    def __enter__(self):
        self.h = self.model.base_model.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.h.remove()

    def full(self, S):
        """[B, S]: recorded columns; the last generated token is never fed back, its
        position only pads the full forward."""
        out = torch.stack([self.cols[c] for c in range(S - 1)], 1)
        return torch.cat([out, out[:, -1:] + 1], 1)


def _generate(model, ids, am, new, **kwargs):
    """Greedy generate; also returns the position_ids generate passed for every column."""
    with _Positions(model) as rec, torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=am, max_new_tokens=new, do_sample=False,
                             output_logits=True, return_dict_in_generate=True, pad_token_id=0, **kwargs)
    return out, rec.full(out.sequences.shape[1])


def _cache_kwarg(model, out) -> dict:
    """The previous forward's KV cache under the name this transformers uses (`cache` from
    5.2x on, `past_key_values` before)."""
    import inspect
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: out.get("cache", out.get("past_key_values"))}


def _manual_logits(model, hookpoint, edit, seqs, am, steer_mask, position_ids):
    """Full forward (no cache) editing the hookpoint's activation at every token where
    steer_mask [B, S] is set: edit(x [B, S, d]) -> new x, or a vector [d] to add."""
    (hp,) = resolve(model, hookpoint)
    fn = edit if callable(edit) else (lambda x: x + edit.to(x.dtype))

    def hook(mod, args, out):
        x = first_tensor(out)
        return replace_first_tensor(out, torch.where(steer_mask.unsqueeze(-1), fn(x), x))

    h = hp.module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model(input_ids=seqs, attention_mask=am, position_ids=position_ids).logits
    finally:
        h.remove()


def _steer_mask(full_am, T, positions):
    """[B, S] bool: real tokens, restricted to the prompt (< T) or the generated (>= T) columns."""
    steer = full_am.bool().clone()
    if positions == "prompt":
        steer[:, T:] = False
    elif positions == "generated":
        steer[:, :T] = False
    return steer


def _check_generate(model, hookpoint, edit, out, pos, am, steer, new, atol=2e-5):
    """generate's logits and tokens equal the manual full forward's; the edit mattered."""
    seqs, T = out.sequences, am.shape[1]
    full_am = torch.cat([am, torch.ones(am.shape[0], new, dtype=am.dtype)], 1)
    ref = _manual_logits(model, hookpoint, edit, seqs, full_am, steer, pos)[:, T - 1:T - 1 + new]
    torch.testing.assert_close(torch.stack(out.logits, 1), ref, atol=atol, rtol=1e-4)
    assert torch.equal(seqs[:, T:], ref.argmax(-1))
    # steering changed something (the test can fail)
    with torch.no_grad():
        plain = model(input_ids=seqs, attention_mask=full_am, position_ids=pos).logits
    assert (plain[:, T - 1:T - 1 + new] - ref).abs().max() > 1e-3


# generate's cache modes: each must steer every token once, prompt and generated told apart
# by position (use_cache=False recomputes everything; chunked prefill and a static cache
# with its 4D mask took the cache-is-empty rule or the mask to be the truth before)
MODES = {"cache": {}, "no_cache": {"use_cache": False}, "chunked": {"prefill_chunk_size": 2},
         "static": {"cache_implementation": "static"}}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("positions", ["all", "prompt", "generated"])
def test_generate_equals_manual_forward(lm, padding, positions, mode):
    hookpoint = layer_hookpoint(lm, 1)
    g = torch.Generator().manual_seed(2)
    vec = torch.randn(D, generator=g) * 3.0
    v = SteeringVector({hookpoint: vec})
    ids, am = _batch(padding)
    new = 4
    with v.apply(lm, alpha=1.0, positions=positions):
        out, pos = _generate(lm, ids, am, new, **MODES[mode])
    full_am = torch.cat([am, torch.ones(am.shape[0], new, dtype=am.dtype)], 1)
    _check_generate(lm, hookpoint, vec, out, pos, am, _steer_mask(full_am, ids.shape[1], positions), new)


@pytest.mark.parametrize("positions", ["prompt", "generated"])
def test_generate_continuing_from_a_reused_cache(lm, positions):
    """The cache already holds L tokens (computed unsteered); generate gets them plus a new
    prompt: the new prompt tokens are "prompt" though the cache is not empty."""
    hookpoint = layer_hookpoint(lm, 1)
    vec = torch.randn(D, generator=torch.Generator().manual_seed(7)) * 3.0
    ids, am = _batch("left")
    L, new = 4, 3
    with _Positions(lm) as rec, torch.no_grad():
        pre = lm(input_ids=ids[:, :L], attention_mask=am[:, :L], position_ids=_positions(am)[:, :L],
                 use_cache=True)
        with SteeringVector({hookpoint: vec}).apply(lm, 1.0, positions=positions):
            out = lm.generate(input_ids=ids, attention_mask=am, max_new_tokens=new, do_sample=False,
                              output_logits=True, return_dict_in_generate=True, pad_token_id=0,
                              **_cache_kwarg(lm, pre))
    pos = rec.full(out.sequences.shape[1])
    full_am = torch.cat([am, torch.ones(am.shape[0], new, dtype=am.dtype)], 1)
    steer = _steer_mask(full_am, ids.shape[1], positions)
    steer[:, :L] = False                                          # cached before steering
    _check_generate(lm, hookpoint, vec, out, pos, am, steer, new)


@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("positions", ["all", slice(1, 3)])
def test_padding_never_steered(lm, padding, positions):
    hookpoint = layer_hookpoint(lm, 0)
    (hp,) = resolve(lm, hookpoint)
    ids, am = _batch(padding)
    seen = []
    v = SteeringVector({hookpoint: torch.ones(D)})
    with torch.no_grad():
        with v.apply(lm, alpha=5.0, positions=positions):
            # registered after the steering hook, so it sees the steered output
            h = hp.module.register_forward_hook(lambda m, a, o: seen.append(first_tensor(o).clone()))
            try:
                lm(input_ids=ids, attention_mask=am)
            finally:
                h.remove()
        h = hp.module.register_forward_hook(lambda m, a, o: seen.append(first_tensor(o).clone()))
        lm(input_ids=ids, attention_mask=am)
        h.remove()
    diff = seen[0] - seen[1]                                     # [B, T, d]
    want = am.bool()
    if isinstance(positions, slice):
        rank = am.cumsum(1) - 1
        want &= (rank >= positions.start) & (rank < positions.stop)
    torch.testing.assert_close(diff[want], torch.full_like(diff[want], 5.0), atol=1e-5, rtol=0)
    assert diff[~want].abs().max() == 0


def test_hooks_removed_after_context_and_exception(lm):
    hookpoint = layer_hookpoint(lm, 1)
    (hp,) = resolve(lm, hookpoint)
    n_mod = (len(hp.module._forward_hooks), len(lm._forward_pre_hooks), len(lm._forward_hooks))
    v = SteeringVector({hookpoint: torch.ones(D)})
    ids, am = _batch("right")
    with torch.no_grad():
        base = lm(input_ids=ids, attention_mask=am).logits
        with v.apply(lm, alpha=2.0) as ctx:
            assert ctx.active and len(hp.module._forward_hooks) == n_mod[0] + 1
            steered = lm(input_ids=ids, attention_mask=am).logits
        assert not torch.allclose(base, steered)
        assert (len(hp.module._forward_hooks), len(lm._forward_pre_hooks), len(lm._forward_hooks)) == n_mod
        with pytest.raises(RuntimeError, match="boom"):
            with v.apply(lm, alpha=2.0), ablate(lm, torch.ones(D), hookpoint):
                raise RuntimeError("boom")
        assert (len(hp.module._forward_hooks), len(lm._forward_pre_hooks), len(lm._forward_hooks)) == n_mod
        torch.testing.assert_close(lm(input_ids=ids, attention_mask=am).logits, base, atol=0, rtol=0)


def test_cached_forward_without_attention_mask(lm):
    """No mask: the past length comes from the cache, read before the layers extend it."""
    hookpoint = layer_hookpoint(lm, 2)
    vec = torch.randn(D, generator=torch.Generator().manual_seed(5))
    v = SteeringVector({hookpoint: vec})
    ids = torch.randint(1, 101, (1, 7), generator=torch.Generator().manual_seed(6))
    for positions in ("prompt", "generated", slice(5, 6), slice(1, 3)):
        with torch.no_grad(), v.apply(lm, 1.0, positions=positions):
            pre = lm(input_ids=ids[:, :5], use_cache=True)
            step = lm(input_ids=ids[:, 5:], use_cache=True, **_cache_kwarg(lm, pre)).logits
        steer = torch.zeros(1, 7, dtype=torch.bool)
        if isinstance(positions, slice):
            steer[:, positions] = True
        else:
            steer[:, :5] = positions == "prompt"
            steer[:, 5:] = positions == "generated"
        ref = _manual_logits(lm, hookpoint, vec, ids, torch.ones(1, 7, dtype=torch.long), steer,
                             torch.arange(7).unsqueeze(0))
        torch.testing.assert_close(pre.logits, ref[:, :5], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(step, ref[:, 5:], atol=2e-5, rtol=1e-4)
