"""Hook names of other libraries -> actspace hookpoints on a Hugging Face model.

A pretrained SAE names the activation it reads in its own library's terms; actspace needs
the HF module path (and side) to hook. Three conventions are mapped, for every family in
`families.FAMILIES` (GPT-2, GPT-NeoX/Pythia, Llama, Mistral, Qwen2/3, Gemma 1/2/3):

* TransformerLens / SAELens, `blocks.N.<hook>`, on an unprocessed model
  (`from_pretrained_no_processing`, what SAELens trains on):
    hook_resid_pre        input of block N                     "<layers>.N:input"
    hook_resid_post       output of block N                    "<layers>.N"
    hook_resid_mid        resid_pre + attn_out: input of ln2   "<layers>.N.<ln2>:input"
    hook_attn_out         attention output as added to the residual (after Gemma 2/3's
                          post-attention norm)                 "<layers>.N.<attn site>"
    hook_mlp_out          MLP output as added to the residual  "<layers>.N.<mlp site>"
    attn.hook_z           heads' outputs before the output projection: the input of that
                          projection [..., n_heads * d_head], head-major; `head_shape`
                          gives (n_heads, d_head) to view it as TransformerLens'
                          [..., n_heads, d_head]                "<layers>.N.<o_proj>:input"
    ln2.hook_normalized / hook_mlp_in (transcoder input)
                          the MLP's input                       "<layers>.N.mlp:input"
    mlp.hook_post         the MLP's hidden activation: input of its last linear
  For the RMSNorm families TransformerLens takes ln2.hook_normalized before the norm's
  weight, while the transcoders released under that name (Gemma Scope through SAELens)
  read the MLP's input, after it: the MLP's input is what is mapped.
* sparsify: HF module paths relative to the base model, `layers.N`, `layers.N.mlp`,
  `layers.N.self_attn`... (optionally with ":input"): the same module of the task model
  ("model.layers.N.mlp"), `layers.N` also on GPT-2 ("transformer.h.N").
* Gemma Scope: `layer_N/width_16k/average_l0_82` (a release prefix such as
  "gemma-scope-2b-pt-res/" may precede it) with its site, from `site=` or the prefix:
  res -> hook_resid_post, mlp -> hook_mlp_out, att -> attn.hook_z; mlp_in -> the MLP's
  input (transcoders).

An actspace hookpoint passes through unchanged (convention "hf"). A model of an unknown
family gets a ValueError naming its model_type and telling to pass the HF hookpoint.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .families import FAMILIES, Family, family_of, head_shape, model_type
from .hookpoints import layer_list, num_layers, resolve_one

CONVENTIONS = ("transformer_lens", "sparsify", "gemmascope", "hf")

# TransformerLens hook (after "blocks.N.") -> where it sits, as a function of the family
_TL_SITES = {
    "hook_resid_pre": lambda f: ":input",
    "hook_resid_post": lambda f: "",
    "hook_resid_mid": lambda f: f".{f.ln2}:input" if f.ln2 else None,
    "hook_attn_out": lambda f: f".{f.attn}",
    "hook_mlp_out": lambda f: f".{f.mlp}",
    "attn.hook_z": lambda f: f".{f.attn_out_proj}:input",
    "ln2.hook_normalized": lambda f: f".{f.mlp_block}:input",
    "hook_mlp_in": lambda f: f".{f.mlp_block}:input",
    "mlp.hook_post": lambda f: f".{f.mlp_down}:input",
}
_GEMMASCOPE_SITES = {"res": "hook_resid_post", "mlp": "hook_mlp_out", "att": "attn.hook_z",
                     "mlp_in": "hook_mlp_in"}
_TL_NAME = re.compile(r"blocks\.(\d+)\.(.+)")
_GS_NAME = re.compile(r"(?:(?P<prefix>.*)/)?layer_(?P<layer>\d+)(?:[/_].*)?")
_GS_SITE = re.compile(r"(?:^|[-_/])(res|mlp|att)(?:$|[-_/])")


@dataclass(frozen=True)
class HookMapping:
    hook_name: str                        # as given
    convention: str                       # one of CONVENTIONS
    hookpoint: str                        # actspace hookpoint: "path" or "path:input"
    head_shape: tuple[int, int] | None    # (n_heads, d_head) for a per-head hook (hook_z)


def _family(model: torch.nn.Module, hook_name: str, convention: str) -> Family:
    try:
        return family_of(model)
    except ValueError:
        raise ValueError(
            f"hook name {hook_name!r} ({convention}): no module layout known for model_type "
            f"{model_type(model)!r} (known: {sorted(FAMILIES)}); pass the HF hookpoint "
            f"explicitly instead, a module path from model.named_modules() with ':input' "
            f"for a module's input (e.g. 'model.layers.12' or 'model.layers.12:input')") from None


def _layer(model, n: int, hook_name: str) -> str:
    total = num_layers(model)
    if not 0 <= n < total:
        raise ValueError(f"hook name {hook_name!r}: layer {n} is out of range, the model has "
                         f"{total} layers")
    return f"{layer_list(model)}.{n}"


def _transformer_lens(model, hook_name: str) -> HookMapping:
    m = _TL_NAME.fullmatch(hook_name)
    if m is None or m.group(2) not in _TL_SITES:
        raise ValueError(f"hook name {hook_name!r}: not a mapped TransformerLens hook; known: "
                         f"blocks.N.{{{', '.join(_TL_SITES)}}}")
    fam = _family(model, hook_name, "transformer_lens")
    hook = m.group(2)
    if hook == "hook_resid_mid" and getattr(model.config, "use_parallel_residual", False):
        raise ValueError(f"hook name {hook_name!r}: this model adds attention and MLP in "
                         f"parallel (use_parallel_residual), it has no resid_mid")
    where = _TL_SITES[hook](fam)
    if where is None:
        raise ValueError(f"hook name {hook_name!r}: model_type {model_type(model)!r} has no "
                         f"such site")
    hp = _layer(model, int(m.group(1)), hook_name) + where
    heads = head_shape(model) if hook == "attn.hook_z" else None
    return HookMapping(hook_name, "transformer_lens", resolve_one(model, hp).name, heads)


def _sparsify(model, hook_name: str) -> HookMapping:
    path, sep, side = hook_name.partition(":")
    m = re.fullmatch(r"(?:layers|h|layer)\.(\d+)(\..+)?", path)
    if m is not None:
        _family(model, hook_name, "sparsify")
        hp = _layer(model, int(m.group(1)), hook_name) + (m.group(2) or "") + sep + side
        return HookMapping(hook_name, "sparsify", resolve_one(model, hp).name, None)
    # any other path relative to the base model (e.g. "embed_tokens")
    modules = dict(model.named_modules())
    base = model.base_model_prefix if hasattr(model, "base_model_prefix") else ""
    for cand in (path, f"{base}.{path}", f"model.{path}"):
        if cand in modules:
            return HookMapping(hook_name, "sparsify", resolve_one(model, cand + sep + side).name, None)
    raise ValueError(f"hook name {hook_name!r} (sparsify): no module {path!r} in "
                     f"{type(model).__name__}, also not under its base model")


def _gemmascope(model, hook_name: str, site: str | None) -> HookMapping:
    m = _GS_NAME.fullmatch(hook_name)
    if m is None:
        raise ValueError(f"hook name {hook_name!r}: not a Gemma Scope name "
                         f"('layer_N/width_.../...')")
    if site is None and m.group("prefix"):
        found = _GS_SITE.search(m.group("prefix"))
        site = found.group(1) if found else None
    if site not in _GEMMASCOPE_SITES:
        raise ValueError(f"hook name {hook_name!r} (Gemma Scope): site must be one of "
                         f"{sorted(_GEMMASCOPE_SITES)} (pass site=, or keep the release "
                         f"prefix such as 'gemma-scope-2b-pt-res/'), got {site!r}")
    tl = _transformer_lens(model, f"blocks.{m.group('layer')}.{_GEMMASCOPE_SITES[site]}")
    return HookMapping(hook_name, "gemmascope", tl.hookpoint, tl.head_shape)


def detect_convention(hook_name: str) -> str:
    if hook_name.startswith("blocks."):
        return "transformer_lens"
    if _GS_NAME.fullmatch(hook_name) and "layer_" in hook_name:
        return "gemmascope"
    return "sparsify"


def map_hook_name(model: torch.nn.Module, hook_name: str, *, convention: str | None = None,
                  site: str | None = None) -> HookMapping:
    """The HookMapping of hook_name on model. convention: one of CONVENTIONS, or None to
    tell it from the name ("blocks." TransformerLens, "layer_N/" Gemma Scope, an existing
    actspace hookpoint "hf", anything else sparsify). site: Gemma Scope's res/mlp/att."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(hook_name, str) or not hook_name:
        raise TypeError(f"hook_name must be a non-empty string, got {hook_name!r}")
    if convention is not None and convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS} or None, got {convention!r}")
    if convention is None:
        try:   # already a hookpoint of this model
            return HookMapping(hook_name, "hf", resolve_one(model, hook_name).name, None)
        except (ValueError, TypeError):
            convention = detect_convention(hook_name)
    if convention == "hf":
        return HookMapping(hook_name, "hf", resolve_one(model, hook_name).name, None)
    if convention == "transformer_lens":
        return _transformer_lens(model, hook_name)
    if convention == "gemmascope":
        return _gemmascope(model, hook_name, site)
    return _sparsify(model, hook_name)


def hookpoint_for(model: torch.nn.Module, hook_name: str, *, convention: str | None = None,
                  site: str | None = None) -> str:
    """The actspace hookpoint ("model.layers.12", "model.layers.12.self_attn.o_proj:input")
    of a TransformerLens/SAELens, sparsify or Gemma Scope hook name on model; see
    map_hook_name (and .head_shape there for hook_z)."""
    return map_hook_name(model, hook_name, convention=convention, site=site).hookpoint
