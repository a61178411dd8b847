"""The release registry: named pretrained SAE releases (repo, revision, layout, model, and
per SAE its folder and L0), read from releases.yaml beside this module and from the
user's own files (ACTSPACE_SAE_RELEASES, os.pathsep-separated, or registry=[paths]).

Why a data file: releases multiply faster than code; adding one is a few lines of YAML,
and `actspace sae list` shows exactly what the file says. Every entry is validated when
read (unknown keys, missing fields, an unknown layout are errors naming the file and the
release), and an unknown release or id is an error listing the closest names (difflib).
"""
from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Release", "SAEEntry", "load_registry", "get_release", "registry_files",
           "layer_of", "ENV_VAR", "BUILTIN"]

ENV_VAR = "ACTSPACE_SAE_RELEASES"
BUILTIN = Path(__file__).with_name("releases.yaml")
_RELEASE_KEYS = {"repo", "revision", "layout", "model", "hook_name", "open", "saes",
                 "each_layer", "norm_scaling_factor"}
_SAE_KEYS = {"id", "path", "l0", "hook_name", "layer", "overrides"}


@dataclass(frozen=True)
class SAEEntry:
    id: str
    path: str
    l0: float | None = None
    hook_name: str | None = None
    layer: int | None = None
    overrides: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Release:
    name: str
    repo: str
    revision: str
    layout: str
    model: str | None
    saes: tuple[SAEEntry, ...]
    open: bool = False
    hook_name: str | None = None
    source: str = ""

    def ids(self) -> list[str]:
        return [s.id for s in self.saes]

    def find(self, sae_id: str) -> SAEEntry:
        """The entry of sae_id; for an open release an unlisted id is a folder of the repo.
        ValueError with the closest ids otherwise."""
        if not isinstance(sae_id, str) or not sae_id:
            raise TypeError(f"sae_id must be a non-empty string, got {sae_id!r}")
        for s in self.saes:
            if s.id == sae_id:
                return s
        if self.open:
            return SAEEntry(id=sae_id, path=sae_id.strip("/"))
        close = difflib.get_close_matches(sae_id, self.ids(), n=5, cutoff=0.5)
        raise ValueError(f"release {self.name!r} has no SAE {sae_id!r}"
                         + (f"; closest: {', '.join(close)}" if close else "")
                         + f" ({len(self.saes)} ids: `actspace sae list {self.name}`)")

    def hook_name_for(self, entry: SAEEntry) -> str | None:
        """The entry's hook name, else the release's template filled with its layer."""
        if entry.hook_name:
            return entry.hook_name
        if self.hook_name:
            layer = entry.layer if entry.layer is not None else layer_of(entry.path)
            if "{layer}" in self.hook_name and layer is None:
                return None
            return self.hook_name.format(layer=layer)
        return None


_LAYER_PATTERNS = (r"layer_(\d+)", r"layers\.(\d+)", r"blocks\.(\d+)", r"-L(\d+)[A-Z]")


def layer_of(name: str) -> int | None:
    """The layer index a release's folder or id names (layer_12, layers.12, blocks.12,
    ...-L12R-...), or None."""
    for pat in _LAYER_PATTERNS:
        m = re.search(pat, name)
        if m:
            return int(m.group(1))
    return None


def _fail(src, name, msg):
    raise ValueError(f"{src}: release {name!r}: {msg}")


def _str(v, src, name, key, required=True):
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v:
        _fail(src, name, f"{key} must be a non-empty string, got {v!r}")
    return v


def _l0(v, src, name):
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
        _fail(src, name, f"l0 must be a non-negative number or null, got {v!r}")
    return None if v is None else float(v)


def _parse_release(name, raw, src) -> Release:
    from ..formats.registry import FORMATS, get_format

    get_format("saelens")   # the built-in layouts are registered

    if not isinstance(raw, dict):
        _fail(src, name, f"must be a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _RELEASE_KEYS)
    if unknown:
        _fail(src, name, f"unknown key(s) {unknown} (known: {sorted(_RELEASE_KEYS)})")
    repo = _str(raw.get("repo"), src, name, "repo")
    if repo.count("/") != 1:
        _fail(src, name, f"repo must be 'org/name', got {repo!r}")
    layout = _str(raw.get("layout"), src, name, "layout")
    if layout not in FORMATS:
        _fail(src, name, f"unknown SAE layout {layout!r} (known: {', '.join(FORMATS)})")
    saes = []
    overrides_all = {}
    if raw.get("norm_scaling_factor") is not None:
        overrides_all["norm_scaling_factor"] = raw["norm_scaling_factor"]
    for i, s in enumerate(raw.get("saes") or []):
        if not isinstance(s, dict):
            _fail(src, name, f"saes[{i}] must be a mapping")
        bad = sorted(set(s) - _SAE_KEYS)
        if bad:
            _fail(src, name, f"saes[{i}]: unknown key(s) {bad} (known: {sorted(_SAE_KEYS)})")
        ov = s.get("overrides") or {}
        if not isinstance(ov, dict):
            _fail(src, name, f"saes[{i}].overrides must be a mapping")
        layer = s.get("layer")
        if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int)):
            _fail(src, name, f"saes[{i}].layer must be an int")
        saes.append(SAEEntry(id=_str(s.get("id"), src, name, f"saes[{i}].id"),
                             path=_str(s.get("path"), src, name, f"saes[{i}].path").strip("/"),
                             l0=_l0(s.get("l0"), src, name),
                             hook_name=_str(s.get("hook_name"), src, name, "hook_name", False),
                             layer=layer, overrides={**overrides_all, **ov}))
    each = raw.get("each_layer")
    if each is not None:
        if not isinstance(each, dict) or set(each) - {"layers", "id", "path", "l0"}:
            _fail(src, name, "each_layer must be {layers: [first, last], id, path, l0}")
        lo_hi = each.get("layers")
        if not (isinstance(lo_hi, list) and len(lo_hi) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) for v in lo_hi)
                and 0 <= lo_hi[0] <= lo_hi[1]):
            _fail(src, name, f"each_layer.layers must be [first, last], got {lo_hi!r}")
        tid = _str(each.get("id"), src, name, "each_layer.id")
        tpath = _str(each.get("path"), src, name, "each_layer.path")
        for L in range(lo_hi[0], lo_hi[1] + 1):
            saes.append(SAEEntry(id=tid.format(layer=L), path=tpath.format(layer=L),
                                 l0=_l0(each.get("l0"), src, name), layer=L,
                                 overrides=dict(overrides_all)))
    ids = [s.id for s in saes]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        _fail(src, name, f"duplicate SAE id(s) {dup}")
    op = raw.get("open", False)
    if not isinstance(op, bool):
        _fail(src, name, f"open must be true or false, got {op!r}")
    if not saes and not op:
        _fail(src, name, "lists no SAE (saes or each_layer) and is not open")
    return Release(name=name, repo=repo, revision=_str(raw.get("revision", "main"), src, name,
                                                       "revision"),
                   layout=layout, model=_str(raw.get("model"), src, name, "model", False),
                   saes=tuple(saes), open=op,
                   hook_name=_str(raw.get("hook_name"), src, name, "hook_name", False),
                   source=str(src))


def _read_file(path) -> dict[str, Release]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SAE release registry {str(path)!r} does not exist")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{str(path)!r}: not valid YAML: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("releases"), dict):
        raise ValueError(f"{str(path)!r}: expected a mapping with 'releases: {{name: ...}}'")
    return {str(n): _parse_release(str(n), r, str(path)) for n, r in doc["releases"].items()}


def registry_files(extra=None) -> list[Path]:
    """The registry files read, in order: the built-in one, ACTSPACE_SAE_RELEASES's, extra."""
    files = [BUILTIN]
    env = os.environ.get(ENV_VAR, "")
    files += [Path(p) for p in env.split(os.pathsep) if p]
    if extra is not None:
        files += [Path(p) for p in ([extra] if isinstance(extra, (str, os.PathLike)) else extra)]
    return files


def load_registry(extra=None) -> dict[str, Release]:
    """{release name: Release} from registry_files(extra); a later file's release replaces
    an earlier one of the same name."""
    out: dict[str, Release] = {}
    for f in registry_files(extra):
        out.update(_read_file(f))
    return out


def get_release(name: str, registry=None) -> Release:
    """The release called name; ValueError with the closest release names otherwise.
    registry: a dict from load_registry, or extra registry file path(s)."""
    reg = registry if isinstance(registry, dict) else load_registry(registry)
    if name in reg:
        return reg[name]
    close = difflib.get_close_matches(str(name), list(reg), n=5, cutoff=0.4)
    raise ValueError(f"unknown SAE release {name!r}"
                     + (f"; closest: {', '.join(close)}" if close else "")
                     + " (all: `actspace sae list`)")
