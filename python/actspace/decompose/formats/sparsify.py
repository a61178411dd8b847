"""The sparsify layout (EleutherAI; ``sparsify/config.py`` SparseCoderConfig and
``sparse_coder.py`` load_from_disk): ``cfg.json`` (d_in, k, num_latents or d_in ·
expansion_factor, activation "topk" | "groupmax", skip_connection, transcode) +
``sae.safetensors`` with encoder.weight [d_sae, d_in], encoder.bias [d_sae], W_dec [d_sae, d_in],
b_dec [d_in] (+ W_skip [d_in, d_in] with a skip connection).

sparsify's ``transcode`` means exactly "b_dec is not subtracted from the input" (a transcoder
reads one module's input and predicts its output at the same width; there is no d_out).
Loading drops unknown cfg fields and is strict about tensors; what actspace does not
compute (groupmax, embed_skip, ...) is refused with the field named. A skip connection
adds x @ W_skipᵀ (W_skip [d_in, d_in]) to the output: the SAE's W_skip. Which kinds are
storable here is each kind's ``sparsify`` field (kinds/).
"""
from __future__ import annotations

from pathlib import Path

from ..._io import write_json_atomic, write_safetensors_atomic
from ..kinds import KINDS
from .common import build_sae, cfg_dtype, expect_tensor, int_field, read_cfg, read_weights
from .registry import Format, register

__all__ = ["load_sparsify", "save_sparsify", "FORMAT", "WEIGHTS"]

WEIGHTS = "sae.safetensors"

_SPARSIFY_TENSORS = ("encoder.weight", "encoder.bias", "W_dec", "b_dec")


def detect_sparsify(p: Path) -> bool:
    return p.is_dir() and (p / WEIGHTS).is_file()


def _kind_of_activation(act, src):
    for spec in KINDS.values():
        if spec.sparsify == act:
            return spec
    names = [s.sparsify for s in KINDS.values() if s.sparsify]
    raise ValueError(f"{src}: activation={act!r} is not supported (only {names})")


def load_sparsify(p: Path, *, device=None, dtype=None):
    """The sparsify directory p (cfg.json + sae.safetensors) as an SAE."""
    p = Path(p)
    cfg, src = read_cfg(p / "cfg.json"), f"sparsify {str(p / 'cfg.json')!r}"
    spec = _kind_of_activation(cfg.get("activation", "topk"), src)
    for flag in ("embed_skip", "gram_lookup"):  # terms actspace lacks
        if cfg.get(flag):
            raise ValueError(f"{src}: {flag}={cfg[flag]!r} is not supported (only false)")
    d_in = int_field(cfg, "d_in", src)
    k = int_field(cfg, "k", src)
    if cfg.get("num_latents"):
        d_sae = int_field(cfg, "num_latents", src)
    else:
        d_sae = d_in * int_field(cfg, "expansion_factor", src)
    d_out = cfg.get("d_out") or d_in   # not sparsify's: written by older actspace versions
    transcode = cfg.get("transcode", False)
    if not isinstance(transcode, bool):
        raise ValueError(f"{src}: field 'transcode' must be a bool, got {transcode!r}")
    file_dtype = cfg_dtype(cfg, src)
    wsrc = f"sparsify {str(p / WEIGHTS)!r}"
    t = read_weights(p / WEIGHTS)
    skip = cfg.get("skip_connection", False)
    names = _SPARSIFY_TENSORS + (("W_skip",) if skip else ())
    extra = sorted(set(t) - set(names))
    if extra:
        raise ValueError(f"{wsrc}: unexpected tensor(s) {extra} (expected {list(names)})")
    W_enc = expect_tensor(t, "encoder.weight", (d_sae, d_in), wsrc)
    b_enc = expect_tensor(t, "encoder.bias", (d_sae,), wsrc)
    W_dec = expect_tensor(t, "W_dec", (d_sae, d_out), wsrc)
    b_dec = expect_tensor(t, "b_dec", (d_out,), wsrc)
    sae = build_sae(d_in=d_in, d_sae=d_sae, kind=spec.name, k=k, d_out=d_out,
                    hookpoint=cfg.get("hookpoint"), hookpoint_out=cfg.get("hookpoint_out"),
                    apply_b_dec_to_input=not transcode, W_enc=W_enc, b_enc=b_enc, W_dec=W_dec,
                    b_dec=b_dec, dtype=dtype or file_dtype, device=device,
                    extra={"W_skip": expect_tensor(t, "W_skip", (d_out, d_in), wsrc)}
                    if skip else None)
    sae.extra_cfg = cfg
    return sae


def save_sparsify(sae, p: Path) -> None:
    """Write sae into the directory p as cfg.json + sae.safetensors.

    sparsify subtracts b_dec from the input exactly when transcode is false. A plain SAE
    (neither a transcoder nor read from a sparsify transcoder) with
    apply_b_dec_to_input=False is therefore written as transcode false with b_dec folded
    into the encoder bias (b_enc + W_enc b_dec, in float64): the same maths under the right
    label."""
    act = KINDS[sae.kind].sparsify
    if act is None:
        names = [n for n, s in KINDS.items() if s.sparsify]
        raise ValueError(f"format='sparsify' stores kinds {names} only, this SAE has "
                         f"kind={sae.kind!r}")
    if sae.d_out != sae.d_in:
        raise ValueError("format='sparsify' has no d_out: its transcoders predict at their "
                         f"input width (d_in={sae.d_in}), this one has d_out={sae.d_out}")
    # fields of a sparsify cfg read before survive; sparsify drops unknown fields on load, so
    # the hookpoints (sparsify names them by the directory instead) may ride along
    cfg = {k: v for k, v in sae.extra_cfg.items() if "hook" not in k and k != "d_out"} \
        if "num_latents" in sae.extra_cfg else {}
    # a transcoder: ours (is_transcoder), or a sparsify one read before (same width, its
    # hookpoints named by its directory, so only its cfg says what it is)
    transcode = not sae.apply_b_dec_to_input and (
        sae.is_transcoder or sae.extra_cfg.get("transcode") is True)
    b_enc = sae.b_enc
    if not transcode and not sae.apply_b_dec_to_input:
        b_enc = (sae.b_enc.double() + sae.W_enc.double() @ sae.b_dec.double()).to(sae.dtype)
    cfg.update({"activation": act, "d_in": sae.d_in, "num_latents": sae.d_sae, "k": sae.k,
                "expansion_factor": max(sae.d_sae // sae.d_in, 1), "normalize_decoder": True,
                "multi_topk": False, "skip_connection": sae.W_skip is not None,
                "transcode": transcode, "hookpoint": sae.hookpoint})
    if sae.hookpoint_out is not None:
        cfg["hookpoint_out"] = sae.hookpoint_out
    tensors = {"encoder.weight": sae.W_enc, "encoder.bias": b_enc, "W_dec": sae.W_dec,
               "b_dec": sae.b_dec}
    if sae.W_skip is not None:
        tensors["W_skip"] = sae.W_skip
    write_safetensors_atomic(Path(p) / WEIGHTS, tensors)
    write_json_atomic(Path(p) / "cfg.json", cfg, indent=2)


FORMAT = register(Format("sparsify", detect_sparsify, load_sparsify, save_sparsify))



