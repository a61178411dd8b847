"""actspace.model.hooks: the one read/replace hook pair, and every user of it (capture,
steering, the evaluation splice, on-the-fly training, the sweep's readout) reading the
same value at a hookpoint, including a layer called with keyword arguments."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from actspace.model.hookpoints import resolve_one
from actspace.model.hooks import (input_tensor, read_hook, replace_hook, replace_input,
                                  replace_output, replacing)

D = 6


class KwLayer(torch.nn.Module):
    """A layer HF-style models call as layer(hidden_states=x, scale=...)."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(D, D)

    def forward(self, hidden_states, scale=None):
        return (hidden_states + torch.tanh(self.lin(hidden_states)), None)


class KwModel(torch.nn.Module):
    """Embedding + layers called with keyword arguments only; takes a tokenizer's batch."""

    def __init__(self, vocab=31000, n_layers=3):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, D)
        self.layers = torch.nn.ModuleList(KwLayer() for _ in range(n_layers))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        h = self.emb(input_ids)
        for layer in self.layers:
            h = layer(hidden_states=h, scale=torch.ones(()))[0]
        return h


def _n_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture(scope="module")
def kw_model():
    torch.manual_seed(0)
    return KwModel().eval()


def _layer1_input(model, ids):
    """Hand computation: the hidden state entering layers[1]."""
    with torch.no_grad():
        return model.layers[0](hidden_states=model.emb(ids))[0]


def test_on_the_fly_training_reads_keyword_input(kw_model):
    """Defect: ModelSource at 'layers.1:input' of a keyword-called layer raised
    `TypeError: hookpoint value has no tensor`; now it yields that layer's input."""
    from actspace.decompose.train_model import ModelSource
    from _models import load_minilm

    _, tok = load_minilm()
    texts = ["a short text", "another slightly longer text here", "three"]
    src = ModelSource(kw_model, tok, texts, "layers.1:input", texts_per_forward=3)
    (x,) = list(src.iter_batches(10_000))
    batch = tok(texts, return_tensors="pt", padding=True)
    want = _layer1_input(kw_model, batch["input_ids"])[batch["attention_mask"].bool()]
    torch.testing.assert_close(x, want, atol=0, rtol=0)


def test_capture_splice_steer_and_training_agree_on_the_input_rule(kw_model):
    import actspace as acts
    from actspace.decompose.evaluate_downstream import splice
    from actspace.steer.editing import Intervention

    ids = torch.randint(0, 31000, (2, 5), generator=torch.Generator().manual_seed(1))
    want = _layer1_input(kw_model, ids)
    seen = {}
    with torch.no_grad():
        with acts.capture(kw_model, ["layers.1:input"]) as cap:
            kw_model(ids)
        with splice(kw_model, "layers.1:input", lambda x: seen.setdefault("splice", x)):
            kw_model(ids)

        def edit(x, info, name):
            seen["steer"] = x
        with Intervention(kw_model, ["layers.1:input"], edit):
            kw_model(ids)
    for got in (cap["layers.1:input"], seen["splice"], seen["steer"]):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_replace_input_positional_and_keyword(kw_model):
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        base = kw_model(ids)
        with replacing(kw_model, "layers.2:input", lambda x: torch.zeros_like(x)):
            zeroed = kw_model(ids)
        want = kw_model.layers[2](hidden_states=torch.zeros_like(base))[0]
    torch.testing.assert_close(zeroed, want, atol=0, rtol=0)
    assert _n_hooks(kw_model) == 0
    # the rule on raw calls: first positional tensor, then hidden_states=, then any tensor kw
    a, b = torch.ones(2), torch.zeros(2)
    assert input_tensor((None, a), {"hidden_states": b}) is a
    assert input_tensor((None,), {"other": a, "hidden_states": b}) is b
    assert input_tensor((), {"mask": None, "x": a}) is a
    args, kw = replace_input((None, a), {"hidden_states": b}, b)
    assert args[1] is b and kw["hidden_states"] is b
    args, kw = replace_input((), {"x": a, "hidden_states": a}, b)
    assert kw == {"x": a, "hidden_states": b}
    with pytest.raises(TypeError, match="no tensor input"):
        input_tensor((None,), {"k": 3}, "hookpoint 'm:input'")


@dataclass
class _DataOut:
    logits: torch.Tensor | None
    hidden: torch.Tensor


class _Emit(torch.nn.Module):
    """Returns x + 1 wrapped in whatever container `kind` names."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind

    def forward(self, x):
        y = x + 1
        if self.kind == "tensor":
            return y
        if self.kind == "tuple":
            return (None, y, y * 2)
        if self.kind == "list":
            return [y, 3]
        if self.kind == "dict":
            return {"n": 1, "y": y}
        if self.kind == "dataclass":
            return _DataOut(None, y)
        from transformers.modeling_outputs import BaseModelOutput
        return BaseModelOutput(last_hidden_state=y)


def _unwrap(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, tuple):
        return out[1]
    if isinstance(out, list):
        return out[0]
    if isinstance(out, _DataOut):
        return out.hidden
    if isinstance(out, dict) and "y" in out:
        return out["y"]
    return out.last_hidden_state


@pytest.mark.parametrize("kind", ["tensor", "tuple", "list", "dict", "dataclass", "modeloutput"])
def test_read_and_replace_every_output_container(kind):
    m = torch.nn.Sequential(_Emit(kind))
    hp = resolve_one(m, "0")
    x = torch.randn(2, 3)
    got = []
    h = read_hook(hp, got.append)
    out = m(x)
    h.remove()
    torch.testing.assert_close(got[0], x + 1)
    h = replace_hook(hp, lambda v: v * 10)
    out2 = m(x)
    h.remove()
    assert type(out2) is type(out)
    torch.testing.assert_close(_unwrap(out2), (x + 1) * 10)
    if kind == "tuple":
        assert out2[0] is None and torch.equal(out2[2], (x + 1) * 2)   # other items kept
    if kind == "modeloutput":
        assert out2[0] is out2.last_hidden_state                       # key and attribute agree
    assert _n_hooks(m) == 0


def test_replace_output_never_changes_the_module_output_in_place():
    from transformers.modeling_outputs import BaseModelOutput

    from actspace.model.hooks import output_tensor
    y, new = torch.zeros(1), torch.ones(1)
    for value in ((y, None), {"a": y}, BaseModelOutput(last_hidden_state=y), _DataOut(None, y)):
        out = replace_output(value, new)
        assert output_tensor(value) is y and output_tensor(out) is new
    with pytest.raises(TypeError, match="no tensor"):
        output_tensor((None, 3))


def test_replace_keeps_autograd():
    """A splice with a trainable map: the gradient through the replaced value equals the
    hand-computed one (attribution and SAE training rely on it)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)).double()
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 4, dtype=torch.float64)
    seen = {}

    def fn(a):
        seen["a"] = a
        return a * w
    with replacing(model, "0", fn):
        model(x).sum().backward()
    a = model[0](x).detach()
    want = (a * model[1].weight.detach()[0]).sum(0)          # d/dw sum_n W1 (a_n * w)
    torch.testing.assert_close(w.grad, want)
    assert seen["a"].requires_grad                            # read live, not detached


def test_steering_apply_installs_nothing_until_entered():
    """Defect: v.apply(model, ...) installed its hooks when called, so a call without
    `with` left them in the model for good."""
    from actspace import SteeringVector

    torch.manual_seed(0)
    model = KwModel(vocab=50).eval()
    ids = torch.tensor([[1, 2, 3]])
    base_hooks = _n_hooks(model)
    with torch.no_grad():
        base = model(ids)
        v = SteeringVector({"layers.1": torch.ones(D)})
        ctx = v.apply(model, 3.0)                  # called, never entered
        assert _n_hooks(model) == base_hooks and not ctx.active
        torch.testing.assert_close(model(ids), base, atol=0, rtol=0)
        with ctx:
            assert _n_hooks(model) > base_hooks
            steered = model(ids)
        assert not torch.allclose(steered, base)
        assert _n_hooks(model) == base_hooks
        from actspace import ablate
        ablate(model, torch.ones(D), "layers.1")   # the other interventions too
        assert _n_hooks(model) == base_hooks
