"""Pretrained SAEs and transcoders from the Hugging Face Hub.

    sae = acts.SAE.from_pretrained("gemma-scope-2b-pt-res", "layer_12/width_16k/average_l0_82")
    sae = acts.SAE.load("hf://EleutherAI/sae-llama-3-8b-32x/layers.10")
    sae = acts.SAE.load("gemma-scope-2b-pt-res:layer_12/width_16k/average_l0_82")
    saes = acts.SAE.load_many("hf://EleutherAI/sae-pythia-160m-32k", pattern="layers.*")

A spec is "hf://org/name[@revision][/folder]" (any repo, any layout of decompose/formats,
found from its files) or "RELEASE:ID" (registry.py). hub.py gets exactly the SAE's files
through huggingface_hub's cache; the layout module reads them; the SAE records where it
came from in ``sae.provenance``.
"""
from __future__ import annotations

import fnmatch
import os
import re

from .hub import NotCachedError, fetch, list_folders, parse_hf_uri
from .registry import Release, get_release, layer_of, load_registry

__all__ = ["is_remote_spec", "load_spec", "load_pretrained", "load_many", "resolve_release",
           "NotCachedError", "load_registry", "get_release", "Release"]

_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


def is_remote_spec(spec) -> bool:
    """Whether spec names a Hub SAE: "hf://..." or "RELEASE:ID" (a colon with no path
    separator before it, and no local file or directory of that name)."""
    if not isinstance(spec, str):
        return False
    if spec.startswith("hf://"):
        return True
    head, sep, tail = spec.partition(":")
    return bool(sep and head and tail and "/" not in head and "\\" not in head
                and not _WINDOWS_DRIVE.match(spec) and not os.path.exists(spec))


def _load_dir(local, fmt, prov, *, device, dtype, overrides=None, release=None, entry=None):
    kw = {}
    if overrides:    # a release entry's fields over the SAE's own config
        import inspect

        if "overrides" not in inspect.signature(fmt.load).parameters:
            raise ValueError(f"layout {fmt.name!r} takes no overrides (release "
                             f"{getattr(release, 'name', None)!r}: {sorted(overrides)})")
        kw["overrides"] = overrides
    sae = fmt.load(local, device=device, dtype=dtype, **kw)
    if release is not None:
        if not sae.hookpoint:
            sae.hookpoint = release.hook_name_for(entry)
        prov = {**prov, "release": release.name, "sae_id": entry.id, "model": release.model,
                "l0": entry.l0}
    sae.provenance = prov
    return sae


def load_pretrained(release: str, sae_id: str, *, device=None, dtype=None, revision=None,
                    refresh: bool = False, progress: bool = True, registry=None):
    """The SAE sae_id of release (registry.py); revision overrides the release's."""
    rel = get_release(release, registry)
    entry = rel.find(sae_id)
    try:
        local, fmt, prov = fetch(rel.repo, entry.path, revision=revision or rel.revision,
                                 layout=rel.layout, refresh=refresh, progress=progress)
    except FileNotFoundError as e:
        if rel.open and entry not in rel.saes and not isinstance(e, NotCachedError):
            import difflib

            close = difflib.get_close_matches(sae_id, rel.ids(), n=5, cutoff=0.5)
            raise FileNotFoundError(f"{e}" + (f"; closest listed ids of {release!r}: "
                                              f"{', '.join(close)}" if close else "")) from e
        raise
    return _load_dir(local, fmt, prov, device=device, dtype=dtype, overrides=entry.overrides,
                     release=rel, entry=entry)


def resolve_release(repo: str, registry=None) -> Release | None:
    """The registered release of repo (for the hook-name template of files without one)."""
    for rel in load_registry(registry).values() if not isinstance(registry, dict) \
            else registry.values():
        if rel.repo == repo:
            return rel
    return None


def load_spec(spec: str, *, device=None, dtype=None, revision=None, refresh: bool = False,
              progress: bool = True, registry=None):
    """An SAE from "hf://org/name[@rev]/folder" or "RELEASE:ID"."""
    if not spec.startswith("hf://"):
        release, _, sae_id = spec.partition(":")
        return load_pretrained(release, sae_id, device=device, dtype=dtype, revision=revision,
                               refresh=refresh, progress=progress, registry=registry)
    loc = parse_hf_uri(spec)
    rev = revision or loc.revision
    rel = resolve_release(loc.repo, registry)
    if rel is not None:   # a registered repo: its layout and hook names, any folder
        from .registry import SAEEntry

        entry = next((s for s in rel.saes if s.path == loc.path),
                     SAEEntry(id=loc.path, path=loc.path, layer=layer_of(loc.path)))
        local, fmt, prov = fetch(loc.repo, loc.path, revision=rev or rel.revision,
                                 layout=rel.layout, refresh=refresh, progress=progress)
        return _load_dir(local, fmt, prov, device=device, dtype=dtype,
                         overrides=entry.overrides, release=rel, entry=entry)
    local, fmt, prov = fetch(loc.repo, loc.path, revision=rev, refresh=refresh,
                             progress=progress)
    return _load_dir(local, fmt, prov, device=device, dtype=dtype)


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def load_many(source: str, pattern: str | None = None, *, device=None, dtype=None,
              revision=None, refresh: bool = False, progress: bool = True, registry=None):
    """{name: SAE} for the SAEs of "hf://org/name[@rev][/prefix]" (names: folders under
    prefix) or of a release (names: its ids) matching the fnmatch pattern, naturally sorted."""
    if pattern is not None and not isinstance(pattern, str):
        raise TypeError(f"pattern must be a string or None, got {type(pattern).__name__}")
    kw = dict(device=device, dtype=dtype, refresh=refresh, progress=progress, registry=registry)
    if not source.startswith("hf://"):
        rel = get_release(source, registry)
        ids = [i for i in rel.ids() if pattern is None or fnmatch.fnmatchcase(i, pattern)]
        if not ids:
            raise ValueError(f"release {source!r}: no SAE id matches {pattern!r}")
        return {i: load_pretrained(source, i, revision=revision, **kw)
                for i in sorted(ids, key=_natural_key)}
    loc = parse_hf_uri(source)
    rev = revision or loc.revision
    folders = list_folders(loc.repo, loc.path, rev)
    names = sorted((f for f in folders if f and (pattern is None
                                                 or fnmatch.fnmatchcase(f, pattern))),
                   key=_natural_key)
    if not names:
        raise ValueError(f"{source}: no SAE folder matches {pattern!r} (found: "
                         f"{sorted(folders)[:20] or 'none'})")
    base = f"hf://{loc.repo}" + (f"@{rev}" if rev else "") + (f"/{loc.path}" if loc.path else "")
    return {n: load_spec(f"{base}/{n}", **kw) for n in names}


def _register() -> None:
    """Make this the source SAE.load / from_pretrained / load_many use for Hub specs."""
    from ..formats.registry import REMOTE

    REMOTE.update(is_remote=is_remote_spec, load=load_spec, from_pretrained=load_pretrained,
                  load_many=load_many)


_register()
