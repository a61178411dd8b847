"""Interventions other than adding a vector, during batched KV-cached generate: ablation,
SAE-latent clamping (the library's SAE) and norm-preserving addition each equal the same
edit applied, token by token, in one full forward (every token edited exactly once)."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

import actspace as acts  # noqa: E402
from actspace.model.hookpoints import layer_hookpoint  # noqa: E402
from test_steer_generate import D, _batch, _check_generate, _generate, _gpt2, _llama, _steer_mask  # noqa: E402


@pytest.fixture(params=["gpt2", "llama"], scope="module")
def lm(request):
    torch.manual_seed(0)
    return (_gpt2() if request.param == "gpt2" else _llama()).eval()


def _run(lm, make_ctx, edit, positions, new=4, **gen_kwargs):
    hookpoint = layer_hookpoint(lm, 1)
    ids, am = _batch("left")
    with make_ctx(hookpoint):
        out, pos = _generate(lm, ids, am, new, **gen_kwargs)
    full_am = torch.cat([am, torch.ones(am.shape[0], new, dtype=am.dtype)], 1)
    _check_generate(lm, hookpoint, edit, out, pos, am, _steer_mask(full_am, ids.shape[1], positions), new)


@pytest.mark.parametrize("positions", ["all", "generated"])
def test_ablate_during_generate(lm, positions):
    v = torch.randn(D, generator=torch.Generator().manual_seed(11))
    u = v / v.norm()

    def edit(x):                                            # ablation, then 4·u along it
        return x - (x @ u).unsqueeze(-1) * u + 4.0 * u

    _run(lm, lambda hp: acts.ablate(lm, v, hp, add=4.0, positions=positions), edit, positions)


@pytest.mark.parametrize("positions", ["all", "prompt"])
def test_normalize_during_generate(lm, positions):
    vec = torch.randn(D, generator=torch.Generator().manual_seed(12)) * 4.0

    def edit(x):                                            # x + v, rescaled to |x|
        y = x + vec
        return y * (x.norm(dim=-1, keepdim=True) / y.norm(dim=-1, keepdim=True))

    _run(lm, lambda hp: acts.SteeringVector({hp: vec}).apply(lm, 1.0, positions=positions, normalize=True),
         edit, positions, use_cache=positions == "all")


@pytest.mark.parametrize("mode", ["clamp", "add"])
def test_steer_with_sae_during_generate(lm, mode):
    sae = acts.SAE(D, 64, "topk", k=6, hookpoint=layer_hookpoint(lm, 1))
    feats = {3: 6.0, 17: -2.0}

    def edit(x):                                            # decode(modified code) + error
        flat = x.reshape(-1, D)
        code = sae.encode(flat)
        dense = torch.zeros(flat.shape[0], 64).scatter_add_(
            1, code.indices.clamp_min(0).long(), code.values * (code.indices >= 0))
        mod = dense.clone()
        for f, val in feats.items():
            mod[:, f] = val if mode == "clamp" else mod[:, f] + val
        return (sae.decode(mod) + flat - sae.decode(dense)).reshape(x.shape)

    with torch.no_grad():
        _run(lm, lambda hp: acts.steer_with_sae(lm, sae, feats, mode=mode, positions="generated"),
             edit, "generated")
