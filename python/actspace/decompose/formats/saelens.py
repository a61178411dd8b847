"""The SAELens layout: ``cfg.json`` + ``sae_weights.safetensors``, read from SAELens 5.x and
6.x files and written so that both versions load it.

What SAELens does with these files (5.x: ``sae_lens/sae.py`` SAEConfig and
``toolkit/pretrained_sae_loaders.py``; 6.x: ``saes/sae.py``, ``saes/{topk_sae, jumprelu_sae,
transcoder}.py`` and ``loading/pretrained_sae_loaders.py``):

- 5.x ``SAEConfig.from_dict`` renames the legacy keys (hook_point, hook_point_layer,
  hook_point_head_index, activation_fn), keeps only its dataclass fields and needs these with
  no default: architecture (standard | gated | jumprelu | topk), d_in, d_sae,
  activation_fn_str, apply_b_dec_to_input, finetuning_scaling_factor, context_size,
  model_name, hook_name (a string: ``SAE.__init__`` calls ``hook_name.endswith``), hook_layer,
  hook_head_index, prepend_bos, dataset_path, dataset_trust_remote_code,
  normalize_activations, dtype (a DTYPE_MAP key), device, sae_lens_training_version. TopK's
  k is ``activation_fn_kwargs["k"]``.
- 6.x ``handle_config_defaulting`` takes sae_lens_version from the top level, else from
  ``metadata``; missing or below 6.0.0-rc.0, ``handle_pre_6_0_config`` converts the 5.x
  layout (its top-level LLM fields become the metadata). Otherwise the file is read as is:
  the architecture's config dataclass keeps its own fields (d_in, d_sae, dtype, device,
  apply_b_dec_to_input, normalize_activations, reshape_activations; k and
  rescale_acts_by_decoder_norm for topk; d_out for transcoders) and ``metadata`` (hook_name,
  hook_name_out, model_name, ...) becomes SAEMetadata. A missing field takes its class
  default (TopKSAEConfig.k = 100, TranscoderConfig.d_out = 768), so both are always written;
  a transcoder must say apply_b_dec_to_input = false (its default, true, is refused).
- Both load the weights strictly: exactly W_enc [d_in, d_sae], b_enc [d_sae],
  W_dec [d_sae, d_out], b_dec [d_out], and threshold [d_sae] for the JumpReLU kinds.

So the file written here has the full 5.x field set at the top level (5.x drops the rest)
and a ``metadata`` object with sae_lens_version 6.0.0, which 6.x reads natively (dropping
the 5.x fields). Transcoders ("transcoder" = ReLU, "jumprelu_transcoder") exist from 6.x
on; SAELens has no TopK transcoder, so a TopK transcoder is written under actspace's own
architecture name "topk_transcoder", which SAELens refuses by name instead of misreading.
Configs whose maths actspace does not implement are refused on load rather than run wrong.

SAELens' trainers checkpoint with ``TrainingSAE.save_model``: for BatchTopK and Matryoshka
that is a training layout ("batchtopk", "matryoshka_batchtopk": a scalar float64
``topk_threshold`` instead of ``threshold``, a float k, rescale_acts_by_decoder_norm true by
default) that its own ``SAE.load_from_disk`` cannot read; it is read here as our batchtopk /
matryoshka kind, with the codes its save_inference_model's JumpReLU would give (checked
against the sae-lens package by bench/check_saelens_formats.py).
"""
from __future__ import annotations

import re
from pathlib import Path


from ..._io import write_json_atomic, write_safetensors_atomic
from ..fold import fold_input_scaling
from ..kinds import KINDS, check_kind_options
from .common import build_sae, cfg_dtype, expect_tensor, int_field, read_cfg, read_weights
from .registry import Format, register

__all__ = ["load_saelens", "save_saelens", "config", "architecture", "LAYOUT_VERSION",
           "WEIGHTS", "FORMAT"]

LAYOUT_VERSION = "6.0.0"   # the sae_lens_version written into metadata (6.x layout)
WEIGHTS = "sae_weights.safetensors"
UNIT_NORM_TOL = 1e-5       # decoder rows this close to unit norm make rescaling a no-op


def _arch_table() -> tuple[dict, set]:
    """(SAELens architecture -> actspace kind, transcoder architectures), from the kinds'
    declared names (saelens_native: the architecture reads back as that kind)."""
    kinds, transcoders = {}, set()
    for spec in KINDS.values():
        if spec.saelens and spec.saelens_native:
            kinds.setdefault(spec.saelens, spec.name)
        if spec.saelens_transcoder and spec.saelens_native:
            kinds.setdefault(spec.saelens_transcoder, spec.name)
            transcoders.add(spec.saelens_transcoder)
        if spec.saelens_training:
            kinds.setdefault(spec.saelens_training, spec.name)
    kinds.update(_SKIP_ARCHS)
    transcoders.update(_SKIP_ARCHS)
    return kinds, transcoders


def _training_archs() -> set:
    """SAELens training layouts (its trainers' checkpoints, TrainingSAE.save_model) that
    differ from the inference one: a scalar float64 ``topk_threshold`` buffer where the
    inference file has ``threshold`` [d_sae], and a float k."""
    return {spec.saelens_training for spec in KINDS.values() if spec.saelens_training}


# affine skip transcoders (SAELens 6): output += x @ W_skipᵀ, W_skip [d_out, d_in]
_SKIP_ARCHS = {"skip_transcoder": "relu", "jumprelu_skip_transcoder": "jumprelu"}
# legacy 5.x key -> current name (SAEConfig.from_dict's rename table)
_LEGACY_KEYS = {"hook_point": "hook_name", "hook_point_layer": "hook_layer",
                "hook_point_head_index": "hook_head_index", "activation_fn": "activation_fn_str"}
# what SAELens records about the model and data (5.x top level, 6.x metadata); the
# defaults are SAELens's own where it has one, "" where the value is simply unknown
_PROVENANCE = {"model_name": "", "hook_head_index": None, "context_size": 128,
               "prepend_bos": True, "dataset_path": "", "dataset_trust_remote_code": True,
               "sae_lens_training_version": None, "neuronpedia_id": None,
               "model_from_pretrained_kwargs": {}}
# the keys of those that 6.x keeps in metadata (a subset of its LLM_METADATA_KEYS)
_META_KEYS = ("model_name", "hook_name", "hook_head_index", "hook_name_out",
              "hook_head_index_out", "context_size", "prepend_bos", "dataset_path",
              "sae_lens_training_version", "neuronpedia_id", "model_from_pretrained_kwargs")


# ------------------------------------------------------------------ load
def _declares_v6(cfg, meta):
    """SAELens 6.x reads the cfg natively (else converts it as a 5.x file): by the major
    version of sae_lens_version, top level first, then metadata."""
    version = cfg.get("sae_lens_version") or meta.get("sae_lens_version")
    m = re.match(r"\s*(\d+)", str(version)) if version else None
    return m is not None and int(m.group(1)) >= 6


def _hook(cfg, meta, name, src, legacy=None):
    """A hook name from the top level (or its legacy alias), else from metadata; "" -> None."""
    v = cfg.get(name)
    if v is None and legacy is not None:
        v = cfg.get(legacy)
    if v is None:
        v = meta.get(name)
    if v is not None and not isinstance(v, str):
        raise ValueError(f"{src}: field {name!r} must be a string, got {v!r}")
    return v or None


def _input_scaling(cfg, src):
    """The constant factor the SAE's inputs were multiplied by (folded into the weights on
    load, see fold.py), or None. SAELens's per-row modes cannot be folded and are refused."""
    norm = cfg.get("normalize_activations", "none")
    if norm in ("none", None, False):   # SAELens reads None / False as "none"
        return None
    if norm in ("expected_average_only_in", True):   # True: the pre-6 boolean spelling
        f = cfg.get("norm_scaling_factor")
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not f > 0:
            raise ValueError(
                f"{src}: normalize_activations={norm!r} needs the dataset's scaling factor "
                f"(sqrt(d_in) / mean input norm) in field 'norm_scaling_factor', got {f!r}; "
                "a release entry may give it (overrides: {norm_scaling_factor: ...})")
        return float(f)
    raise ValueError(
        f"{src}: normalize_activations={norm!r} is not supported (only 'none' and "
        "'expected_average_only_in'): the SAE expects per-row normalized inputs")


def _refuse_unimplemented(cfg, src):
    """Fields whose maths actspace does not implement: refuse rather than compute wrongly."""
    _input_scaling(cfg, src)
    if cfg.get("finetuning_scaling_factor"):
        raise ValueError(f"{src}: finetuning_scaling_factor="
                         f"{cfg['finetuning_scaling_factor']!r} is not supported (only false)")
    reshape = cfg.get("reshape_activations", "none")
    if reshape not in ("none", "hook_z", None):   # hook_z only flattens the heads: same maths
        raise ValueError(f"{src}: reshape_activations={reshape!r} is not supported")


def _kind(cfg, native6, src):
    arch_kind, _ = _arch_table()
    if native6 and "architecture" not in cfg:
        # SAELens 6 refuses such a file; reading it as "standard" would run TopK weights
        # as a ReLU SAE (every positive latent active) without a word
        raise ValueError(f"{src}: missing field 'architecture' (a SAELens 6 cfg.json names its "
                         f"architecture: one of {', '.join(arch_kind)})")
    arch = cfg.get("architecture", "standard")      # 5.x files before the field: standard
    base = arch_kind.get(arch) if isinstance(arch, str) else None
    if base is None:
        raise ValueError(f"{src}: unsupported architecture {arch!r} (supported: "
                         f"{', '.join(arch_kind)})")
    # 6.x ignores activation_fn*; 5.x computes with it (TopK under "standard" too, and a
    # ReLU under "topk"), so a 5.x file must pair them as SAELens itself writes them
    act = None if native6 else cfg.get("activation_fn_str", cfg.get("activation_fn"))
    if act == "topk" and (arch == "standard" or base == "topk"):
        base = "topk"
    elif act not in (None, "relu") or (act == "relu" and base == "topk"):
        raise ValueError(f"{src}: unsupported activation {act!r} for architecture {arch!r}")
    kind = cfg.get("actspace_kind", base)
    spec = KINDS.get(kind) if isinstance(kind, str) else None
    if kind != base and (spec is None or arch not in (spec.saelens, spec.saelens_transcoder,
                                                      spec.saelens_training)):
        raise ValueError(f"{src}: actspace_kind={kind!r} does not match architecture {arch!r}")
    return arch, kind


def _rescale_folded(cfg, arch, kind, W_enc, b_enc, W_dec, src):
    """SAELens TopK's rescale_acts_by_decoder_norm: it ranks and emits relu(pre)·‖W_dec[m]‖
    and decodes with the unit rows W_dec[m]/‖W_dec[m]‖. With unit rows (what its
    save_inference_model writes) that is plain TopK: accepted as is. Otherwise the norms n
    are folded exactly: W_enc[m], b_enc[m] *= n[m], W_dec[m] /= n[m] (same codes, same
    reconstruction). Any other architecture with the flag is refused by name.
    -> (W_enc [d_sae, d_in], b_enc, W_dec), maybe folded."""
    flag = cfg.get("rescale_acts_by_decoder_norm")
    if not flag:
        return W_enc, b_enc, W_dec
    # BatchTopK's training layout ranks the same rescaled values, and its topk_threshold is
    # in their units, so the same fold keeps its codes (as its save_inference_model does)
    if KINDS[kind].saelens != "topk" and arch not in _training_archs():
        raise ValueError(f"{src}: rescale_acts_by_decoder_norm={flag!r} is not supported for "
                         f"architecture {arch!r} (only for topk and the BatchTopK training "
                         "layouts)")
    n = W_dec.double().norm(dim=1)                                      # [d_sae]
    if bool(((n - 1).abs() <= UNIT_NORM_TOL).all()):
        return W_enc, b_enc, W_dec
    if not bool((n > 0).all()):
        raise ValueError(f"{src}: rescale_acts_by_decoder_norm=True with a zero decoder row "
                         f"in {WEIGHTS} tensor 'W_dec' (the rescaling divides by it)")
    return ((W_enc.double() * n[:, None]).to(W_enc.dtype), (b_enc.double() * n).to(b_enc.dtype),
            (W_dec.double() / n[:, None]).to(W_dec.dtype))


def detect_saelens(p: Path) -> bool:
    return p.is_dir() and (p / WEIGHTS).is_file()


def load_saelens(p: Path, *, device=None, dtype=None, overrides=None):
    """The SAELens directory p (cfg.json + sae_weights.safetensors) as an SAE. overrides:
    fields merged over cfg.json (a release entry's, e.g. norm_scaling_factor)."""
    p = Path(p)
    cfg = {**read_cfg(p / "cfg.json"), **(overrides or {})}
    src = f"SAELens {str(p / 'cfg.json')!r}"
    meta = cfg.get("metadata") or {}
    if not isinstance(meta, dict):
        raise ValueError(f"{src}: field 'metadata' must be an object, got {meta!r}")
    native6 = _declares_v6(cfg, meta)
    _refuse_unimplemented(cfg, src)
    arch, kind = _kind(cfg, native6, src)
    spec = KINDS[kind]
    transcoder = arch in _arch_table()[1]
    file_dtype = cfg_dtype(cfg, src)
    d_in, d_sae = int_field(cfg, "d_in", src), int_field(cfg, "d_sae", src)
    d_out = int_field(cfg, "d_out", src) if transcoder else (cfg.get("d_out") or d_in)
    k = None
    if spec.uses_k:
        kw = cfg.get("activation_fn_kwargs") or {}
        # 6.x reads the top-level k; a 5.x file (and 6.x converting one) activation_fn_kwargs
        k = cfg.get("k", kw.get("k")) if native6 else kw.get("k", cfg.get("k"))
        if isinstance(k, float) and k.is_integer() and arch in _training_archs():
            k = int(k)   # SAELens' BatchTopK k is a float (a mean L0)
        if isinstance(k, bool) or not isinstance(k, int):
            raise ValueError(f"{src}: field 'activation_fn_kwargs.k' (or 'k') must be an int "
                             f"for {kind}, got {k!r}")
    apply = cfg.get("apply_b_dec_to_input", not transcoder and d_out == d_in)
    if not isinstance(apply, bool):
        raise ValueError(f"{src}: field 'apply_b_dec_to_input' must be a bool, got {apply!r}")
    if transcoder and apply:
        raise ValueError(f"{src}: apply_b_dec_to_input=True is not valid for architecture "
                         f"{arch!r} (a transcoder never subtracts b_dec from its input)")

    wsrc = f"SAELens {str(p / WEIGHTS)!r}"
    t = read_weights(p / WEIGHTS)
    sf = t.get("scaling_factor")   # SAELens drops an all-ones scaling_factor; so do we
    if sf is not None and bool((sf == 1).all()):
        del t["scaling_factor"]
    for ours, theirs in spec.saelens_names:   # SAELens' names -> ours (gated: b_gate)
        if theirs in t:
            t[ours] = t.pop(theirs)
    training = arch in _training_archs()
    if training:   # its scalar float64 buffer is our scalar threshold
        t["threshold"] = expect_tensor(t, "topk_threshold", (), wsrc)
        del t["topk_threshold"]
    names = {"W_enc", "b_enc", "W_dec", "b_dec"} | ({"threshold"} if spec.threshold else set())
    names |= {n for n, _, _ in spec.extra_params}
    if arch in _SKIP_ARCHS:
        names.add("W_skip")
    extra = sorted(set(t) - names)
    if extra:
        raise ValueError(f"{wsrc}: unexpected tensor(s) {extra} for architecture "
                         f"{arch!r} (expected {sorted(names)})")
    W_enc = expect_tensor(t, "W_enc", (d_in, d_sae), wsrc).T
    b_enc = expect_tensor(t, "b_enc", (d_sae,), wsrc)
    W_dec = expect_tensor(t, "W_dec", (d_sae, d_out), wsrc)
    b_dec = expect_tensor(t, "b_dec", (d_out,), wsrc)
    W_enc, b_enc, W_dec = _rescale_folded(cfg, arch, kind, W_enc, b_enc, W_dec, src)
    thr = None
    if spec.threshold:
        if training:
            thr = t["threshold"].to(W_enc.dtype)
        else:
            thr = expect_tensor(t, "threshold", (d_sae,), wsrc)
        if spec.threshold == "scalar" and not training:   # a JumpReLU, one threshold for all
            if not bool((thr == thr[0]).all()):
                raise ValueError(f"{wsrc}: {kind} tensor 'threshold' must be one value for all "
                                 "latents")
            thr = thr[0].clone()
    dims = {"d_in": d_in, "d_sae": d_sae, "d_out": d_out}
    extra = {n: expect_tensor(t, n, tuple(dims[d] for d in shape), wsrc)
             for n, shape, _ in spec.extra_params}
    if arch in _SKIP_ARCHS:
        extra["W_skip"] = expect_tensor(t, "W_skip", (d_out, d_in), wsrc)
    sae = build_sae(d_in=d_in, d_sae=d_sae, kind=kind, k=k, d_out=d_out,
                    hookpoint=_hook(cfg, meta, "hook_name", src, "hook_point"),
                    hookpoint_out=_hook(cfg, meta, "hook_name_out", src),
                    apply_b_dec_to_input=apply, W_enc=W_enc, b_enc=b_enc, W_dec=W_dec,
                    b_dec=b_dec, threshold=thr, dtype=dtype or file_dtype, device=device,
                    extra=extra)
    scale = _input_scaling(cfg, src)
    if scale is not None:   # exact: computed in float64, rounded once (fold.py)
        fold_input_scaling(sae, scale)
    if not native6 and "reshape_activations" not in cfg and _reshapes_heads(sae.hookpoint):
        # SAELens 5 reshapes a hook_z SAE's input by the hook name alone; 6.x wants it said
        cfg = dict(cfg, reshape_activations="hook_z")
    sae.extra_cfg = cfg
    sae.training_options = _training_options(cfg, meta, arch, kind, d_sae, src)
    return sae


def _training_options(cfg, meta, arch, kind, d_sae, src) -> dict:
    """The kind's training options SAELens recorded (e.g. a matryoshka SAE's
    matryoshka_widths -> prefixes): at the top level of its training layout, else in the
    inference file's metadata.training_architecture_details (SAELens 6). Checked as the kind
    checks them; {} when the file says none."""
    spec = KINDS[kind]
    if not spec.saelens_options:
        return {}
    if arch == spec.saelens_training:       # the trainer's own layout: fields at the top
        details, where = cfg, ""
    else:
        details, where = meta.get("training_architecture_details"), \
            "metadata.training_architecture_details."
        if not isinstance(details, dict) or meta.get(
                "training_architecture", spec.saelens_training) != spec.saelens_training:
            return {}
    out = {}
    for ours, theirs in spec.saelens_options:
        if theirs in details:
            try:
                check_kind_options(kind, {ours: details[theirs]}, d_sae)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{src}: {where}{theirs}: {e}") from None
            out[ours] = details[theirs]
    return out


def _reshapes_heads(hook_name) -> bool:
    """SAELens 5 (and 6 converting a 5.x file) flattens the heads of a hook name ending in
    "_z" (attention's per-head z, [..., n_heads, d_head])."""
    return isinstance(hook_name, str) and hook_name.endswith("_z")


# ------------------------------------------------------------------ save
def architecture(sae) -> str:
    """The SAELens architecture name sae is written under (ValueError if it has none)."""
    spec = KINDS[sae.kind]
    if getattr(sae, "W_skip", None) is not None:
        skip = {v: k for k, v in _SKIP_ARCHS.items()}.get(sae.kind)
        if skip is None or sae.apply_b_dec_to_input:
            raise ValueError("format='saelens' holds skip transcoders of kind relu or "
                             f"jumprelu without b_dec subtraction, not kind={sae.kind!r}")
        return skip
    arch = spec.saelens_transcoder if sae.is_transcoder else spec.saelens
    if arch is None:
        raise ValueError(f"format='saelens' has no architecture for kind={sae.kind!r}"
                         f"{' transcoders' if sae.is_transcoder else ''}")
    if sae.is_transcoder and sae.apply_b_dec_to_input:
        raise ValueError("format='saelens': a transcoder there never subtracts b_dec from its "
                         "input, but this one has apply_b_dec_to_input=True")
    return arch


def _layer_of(hook_name):
    """5.x's hook_layer when no file says it: the first number in the hook name, else 0."""
    m = re.search(r"(?:^|\.)(\d+)(?:\.|$)", hook_name or "")
    return int(m.group(1)) if m else 0


def _foreign(sae):
    """(top-level fields, metadata) to keep from sae.extra_cfg: all of a SAELens cfg read
    before (legacy names mapped to current ones, the fields this writer owns dropped), or
    only the provenance fields a caller set by hand (e.g. extra_cfg["model_name"])."""
    extra = dict(sae.extra_cfg or {})
    if "architecture" not in extra:
        keep = set(_PROVENANCE) | {"hook_layer", "hook_head_index_out"}
        return {k: v for k, v in extra.items() if k in keep}, {}
    meta = dict(extra.pop("metadata", None) or {})
    for old, new in _LEGACY_KEYS.items():
        if old in extra:
            v = extra.pop(old)
            extra.setdefault(new, v)
    for key in ("hook_name", "hook_name_out", "activation_fn_str", "activation_fn_kwargs",
                "k", "d_out", "rescale_acts_by_decoder_norm", "sae_lens_version"):
        extra.pop(key, None)
        meta.pop(key, None)
    return extra, meta


def config(sae) -> dict:
    """The cfg.json written for sae: SAELens 5.x fields at the top level, 6.x metadata."""
    arch = architecture(sae)
    cfg, meta = _foreign(sae)
    for key, default in _PROVENANCE.items():
        cfg[key] = cfg.get(key, meta.get(key, default))
    cfg.setdefault("hook_layer", meta.get("hook_layer", _layer_of(sae.hookpoint)))
    topk = arch in ("topk", "topk_transcoder")
    reshape = cfg.get("reshape_activations") or meta.get("reshape_activations")
    if not reshape:   # no file said it: SAELens 5's rule (see _reshapes_heads)
        reshape = "hook_z" if _reshapes_heads(sae.hookpoint) else "none"
    cfg.update({
        "architecture": arch, "d_in": sae.d_in, "d_sae": sae.d_sae,
        "dtype": str(sae.dtype).removeprefix("torch."), "device": "cpu",
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "normalize_activations": "none", "finetuning_scaling_factor": False,
        "reshape_activations": reshape,
        "activation_fn_str": "topk" if topk else "relu",
        "activation_fn_kwargs": {"k": sae.k} if topk else {},
        "hook_name": sae.hookpoint or "",   # 5.x needs a string even when it is unknown
        "actspace_kind": sae.kind,
    })
    if sae.k is not None:
        cfg["k"] = sae.k
    if topk:
        cfg["rescale_acts_by_decoder_norm"] = False
    if sae.is_transcoder or getattr(sae, "W_skip", None) is not None:
        cfg["d_out"] = sae.d_out
        cfg["hook_name_out"] = sae.hookpoint_out or ""
        cfg["hook_head_index_out"] = cfg.get("hook_head_index_out",
                                             meta.get("hook_head_index_out"))
    meta.update({k: cfg[k] for k in _META_KEYS if k in cfg})
    spec = KINDS[sae.kind]
    if spec.saelens_training and sae.training_options:   # as SAELens 6 records training
        details = {"k": sae.k} if sae.k is not None else {}
        details.update({theirs: sae.training_options[ours]
                        for ours, theirs in spec.saelens_options
                        if ours in sae.training_options})
        meta["training_architecture"] = spec.saelens_training
        meta["training_architecture_details"] = details
    meta["sae_lens_version"] = LAYOUT_VERSION
    cfg["metadata"] = meta
    return cfg


def save_saelens(sae, p: Path) -> None:
    """Write sae into the directory p as cfg.json + sae_weights.safetensors."""
    cfg = config(sae)   # first: an SAE SAELens cannot hold fails before any file is written
    t = {"W_enc": sae.W_enc.T, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    if KINDS[sae.kind].threshold:   # a scalar one: served as JumpReLU at one threshold
        t["threshold"] = sae.threshold.expand(sae.d_sae)
    for name, _, _ in KINDS[sae.kind].extra_params:
        t[name] = getattr(sae, name)
    for ours, theirs in KINDS[sae.kind].saelens_names:
        t[theirs] = t.pop(ours)
    if getattr(sae, "W_skip", None) is not None:
        t["W_skip"] = sae.W_skip
    write_safetensors_atomic(Path(p) / WEIGHTS, t)
    write_json_atomic(Path(p) / "cfg.json", cfg, indent=2)


FORMAT = register(Format("saelens", detect_saelens, load_saelens, save_saelens))

