"""Hook-name mapping (TransformerLens/SAELens, sparsify, Gemma Scope -> HF hookpoints) on
tiny random models of every family: the activation captured at the mapped hookpoint equals
the TransformerLens-convention value computed by hand from the model's own pieces."""
from __future__ import annotations

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

import actspace as acts  # noqa: E402
from actspace.model.hook_names import hookpoint_for, map_hook_name  # noqa: E402

D, H, LAYERS, N = 32, 4, 3, 1      # width, heads, layers, the block the tests map
SMALL = dict(vocab_size=97, hidden_size=D, intermediate_size=48, num_hidden_layers=LAYERS,
             num_attention_heads=H, max_position_embeddings=64)


def _configs():
    t = transformers
    gqa = dict(SMALL, num_key_value_heads=2)
    return {
        "gpt2": lambda: t.GPT2LMHeadModel(t.GPT2Config(vocab_size=97, n_embd=D, n_layer=LAYERS,
                                                       n_head=H, n_positions=64)),
        "gpt_neox": lambda: t.GPTNeoXForCausalLM(t.GPTNeoXConfig(**SMALL, rotary_pct=0.5)),
        "gpt_neox_serial": lambda: t.GPTNeoXForCausalLM(t.GPTNeoXConfig(
            **SMALL, rotary_pct=0.5, use_parallel_residual=False)),
        "llama": lambda: t.LlamaForCausalLM(t.LlamaConfig(**gqa)),
        "mistral": lambda: t.MistralForCausalLM(t.MistralConfig(**gqa)),
        "qwen2": lambda: t.Qwen2ForCausalLM(t.Qwen2Config(**gqa)),
        "qwen3": lambda: t.Qwen3ForCausalLM(t.Qwen3Config(**gqa, head_dim=8)),
        "gemma": lambda: t.GemmaForCausalLM(t.GemmaConfig(**gqa, head_dim=8)),
        "gemma2": lambda: t.Gemma2ForCausalLM(t.Gemma2Config(**gqa, head_dim=8)),
        "gemma3_text": lambda: t.Gemma3ForCausalLM(t.Gemma3TextConfig(**gqa, head_dim=8)),
    }


FAMILY_NAMES = list(_configs())


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def tiny(request):
    torch.manual_seed(0)
    model = _configs()[request.param]().eval()
    model.config._attn_implementation = "eager"
    ids = torch.randint(1, 97, (2, 7), generator=torch.Generator().manual_seed(1))
    return request.param, model, ids


def _captured(model, ids, hook_names, **kw):
    hps = {n: hookpoint_for(model, n, **kw) for n in hook_names}
    with torch.no_grad(), acts.capture(model, list(dict.fromkeys(hps.values()))) as cap:
        out = model(input_ids=ids, output_hidden_states=True)
    return {n: cap[hp] for n, hp in hps.items()}, out


def _block(model, n):
    from actspace.model.hookpoints import layer_list
    return model.get_submodule(layer_list(model))[n]


def _ln2_and_mlp(name, block):
    """(MLP-input norm, the MLP as added to the residual) of a block, by family."""
    if name == "gpt2":
        return block.ln_2, block.mlp
    if name.startswith("gpt_neox"):
        return block.post_attention_layernorm, block.mlp
    if name in ("gemma2", "gemma3_text"):
        return block.pre_feedforward_layernorm, lambda x: block.post_feedforward_layernorm(block.mlp(x))
    return block.post_attention_layernorm, block.mlp


def test_residual_attention_and_mlp_hooks_equal_the_transformer_lens_values(tiny):
    name, model, ids = tiny
    b = f"blocks.{N}."
    got, out = _captured(model, ids, [b + h for h in (
        "hook_resid_pre", "hook_resid_post", "hook_attn_out", "hook_mlp_out",
        "ln2.hook_normalized", "attn.hook_z", "mlp.hook_post")])
    hs = out.hidden_states
    # resid_pre = input of block N, resid_post = its output (N is not the last block, whose
    # hidden state HF returns after the final norm)
    torch.testing.assert_close(got[b + "hook_resid_pre"], hs[N], atol=0, rtol=0)
    torch.testing.assert_close(got[b + "hook_resid_post"], hs[N + 1], atol=0, rtol=0)
    pre, attn, mlp_out = got[b + "hook_resid_pre"], got[b + "hook_attn_out"], got[b + "hook_mlp_out"]
    block = _block(model, N)
    ln2, mlp = _ln2_and_mlp(name, block)
    parallel = getattr(model.config, "use_parallel_residual", False)
    with torch.no_grad():
        mid = pre if parallel else pre + attn                    # resid_mid (TL)
        mlp_in = ln2(mid)                                        # ln2.hook_normalized
        hand_mlp_out = mlp(mlp_in)
    torch.testing.assert_close(got[b + "ln2.hook_normalized"], mlp_in, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(mlp_out, hand_mlp_out, atol=1e-6, rtol=1e-5)
    # resid_post = resid_pre + attn_out + mlp_out: pins attn_out down as well
    torch.testing.assert_close(hs[N + 1], pre + attn + hand_mlp_out, atol=1e-5, rtol=1e-5)
    # hook_z: [.., heads * d_head] viewed per head; the output projection of it is the
    # attention's output (before Gemma 2/3's post-attention norm)
    mapping = map_hook_name(model, b + "attn.hook_z")
    heads, d_head = mapping.head_shape
    z = got[b + "attn.hook_z"]
    assert z.shape[-1] == heads * d_head and heads == H
    z = z.unflatten(-1, (heads, d_head))                          # [B, T, heads, d_head]
    o_proj = model.get_submodule(mapping.hookpoint.rsplit(":", 1)[0])
    with torch.no_grad():
        proj = o_proj(z.flatten(-2))
        raw_attn = block.post_attention_layernorm(proj) if name in ("gemma2", "gemma3_text") else proj
    torch.testing.assert_close(raw_attn, attn, atol=1e-6, rtol=1e-5)
    # per head: sum_h z_h W_O[h] (+ bias) is the same projection, head-major
    W = o_proj.weight.T if name == "gpt2" else o_proj.weight      # gpt2's Conv1D is [in, out]
    per_head = sum(z[..., h, :] @ W[:, h * d_head:(h + 1) * d_head].T for h in range(heads))
    bias = o_proj.bias if o_proj.bias is not None else 0
    torch.testing.assert_close(per_head + bias, proj, atol=1e-5, rtol=1e-5)
    # mlp.hook_post: the MLP's hidden activation, the input of its last linear
    assert got[b + "mlp.hook_post"].shape[-1] == (4 * D if name == "gpt2" else 48)


def test_gpt2_hook_z_by_hand():
    """hook_z computed from scratch (q, k, v of ln_1(resid_pre), causal softmax per head)."""
    torch.manual_seed(0)
    model = _configs()["gpt2"]().eval()
    ids = torch.randint(1, 97, (2, 7), generator=torch.Generator().manual_seed(1))
    got, out = _captured(model, ids, [f"blocks.{N}.attn.hook_z"])
    blk = model.transformer.h[N]
    with torch.no_grad():
        qkv = blk.attn.c_attn(blk.ln_1(out.hidden_states[N]))                 # [B, T, 3D]
        q, k, v = (t.unflatten(-1, (H, D // H)).transpose(1, 2) for t in qkv.split(D, -1))
        s = q @ k.transpose(-1, -2) / math.sqrt(D // H)                      # [B, H, T, T]
        T = ids.shape[1]
        s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
        z = (s.softmax(-1) @ v).transpose(1, 2)                              # [B, T, H, d_head]
    torch.testing.assert_close(got[f"blocks.{N}.attn.hook_z"].unflatten(-1, (H, D // H)), z,
                               atol=1e-6, rtol=1e-5)


def test_sparsify_and_gemmascope_names(tiny):
    name, model, ids = tiny
    from actspace.model.hookpoints import layer_hookpoint
    resid = layer_hookpoint(model, N)
    assert hookpoint_for(model, f"layers.{N}") == resid
    assert hookpoint_for(model, f"layers.{N}", convention="sparsify") == resid
    assert hookpoint_for(model, f"layers.{N}.mlp") == f"{resid}.mlp"          # the HF module itself
    assert hookpoint_for(model, f"layers.{N}.mlp:input") == f"{resid}.mlp:input"
    assert hookpoint_for(model, resid) == resid                                # already a hookpoint
    gs = f"layer_{N}/width_16k/average_l0_82"
    assert hookpoint_for(model, gs, site="res") == resid
    assert hookpoint_for(model, f"gemma-scope-2b-pt-res/{gs}") == resid
    assert hookpoint_for(model, f"layer_{N}_width_16k_l0_small", site="res") == resid
    assert hookpoint_for(model, f"gemma-scope-2b-pt-mlp/{gs}") == layer_hookpoint(model, N, "mlp")
    att = map_hook_name(model, f"gemma-scope-2b-pt-att/{gs}")
    assert att == map_hook_name(model, f"blocks.{N}.attn.hook_z").__class__(
        att.hook_name, "gemmascope", hookpoint_for(model, f"blocks.{N}.attn.hook_z"), att.head_shape)
    assert att.head_shape is not None


def test_bad_names_and_unknown_families():
    torch.manual_seed(0)
    model = _configs()["llama"]().eval()
    with pytest.raises(ValueError, match="layer 7 is out of range"):
        hookpoint_for(model, "blocks.7.hook_resid_post")
    with pytest.raises(ValueError, match="not a mapped TransformerLens hook"):
        hookpoint_for(model, "blocks.1.hook_nonsense")
    with pytest.raises(ValueError, match="site must be one of"):
        hookpoint_for(model, "layer_1/width_16k/average_l0_82")
    with pytest.raises(ValueError, match="convention must be"):
        hookpoint_for(model, "layers.1", convention="nnsight")
    with pytest.raises(ValueError, match="no module"):
        hookpoint_for(model, "layers.1.nothing_here")
    neox = _configs()["gpt_neox"]().eval()
    with pytest.raises(ValueError, match="no resid_mid"):
        hookpoint_for(neox, "blocks.1.hook_resid_mid")
    assert hookpoint_for(model, "blocks.1.hook_resid_mid") == "model.layers.1.post_attention_layernorm:input"

    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="pass the HF hookpoint explicitly"):
        hookpoint_for(Plain(), "blocks.0.hook_resid_post")
    assert hookpoint_for(Plain(), "layers.0:input") == "layers.0:input"        # plain paths work
