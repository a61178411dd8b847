"""Getting one SAE's files from the Hugging Face Hub, through ``huggingface_hub`` and its
cache, and nothing more.

- Only the files the SAE's layout reads are downloaded (LAYOUT_FILES), never the rest of
  a repository that may hold hundreds of SAEs.
- Cached files are used without any network call (the cache's refs/<revision> names the
  snapshot); ``refresh=True`` asks the Hub for the revision's newest commit instead.
- HF_HUB_OFFLINE, HF_HUB_CACHE and HF_HOME are read when called (not at import), so the
  environment a caller sets is the one used. Offline and not cached is a
  ``NotCachedError`` naming the repo, the revision and the file.
- The provenance (repo, requested revision, resolved commit, per file its sha256) goes
  into the SAE (``sae.provenance``).
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

__all__ = ["HubLocation", "NotCachedError", "parse_hf_uri", "cache_dir", "is_offline",
           "fetch", "list_folders", "provenance", "LAYOUT_FILES", "register_layout_files"]

# layout (a decompose.formats name) -> the files of one SAE in it, relative to its folder;
# "name?" = optional (downloaded when the repo has it). A layout detects by its required
# files on the Hub's file list, before anything is downloaded.
LAYOUT_FILES: dict[str, tuple[str, ...]] = {
    "saelens": ("cfg.json", "sae_weights.safetensors"),
    "sparsify": ("cfg.json", "sae.safetensors"),
    "gemmascope": ("params.npz",),
    "gemmascope2": ("params.safetensors", "config.json?"),
    "llamascope": ("hyperparams.json", "checkpoints/final.safetensors"),
    "dictlearning": ("config.json", "ae.pt"),
}


def register_layout_files(layout: str, files) -> None:
    """Declare the files of one SAE in layout (a format you registered yourself), so the
    Hub loader can detect and download it."""
    files = tuple(files)
    if not files or not all(isinstance(f, str) and f for f in files):
        raise ValueError(f"files must be a non-empty list of file names, got {files!r}")
    LAYOUT_FILES[layout] = files

_TRUE = ("1", "true", "yes", "on")
_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class NotCachedError(FileNotFoundError):
    """Offline (HF_HUB_OFFLINE) and the SAE's files are not in the local cache."""


class HubLocation(tuple):
    """(repo, revision, path) of "hf://org/name[@revision][/path/in/repo]"."""

    __slots__ = ()

    def __new__(cls, repo, revision, path):
        return super().__new__(cls, (repo, revision, path))

    repo = property(lambda self: self[0])
    revision = property(lambda self: self[1])
    path = property(lambda self: self[2])


def parse_hf_uri(uri: str) -> HubLocation:
    """"hf://org/name[@rev][/folder...]" -> HubLocation (revision None when not given)."""
    if not isinstance(uri, str) or not uri.startswith("hf://"):
        raise ValueError(f"not an hf:// URI: {uri!r}")
    parts = [p for p in uri[len("hf://"):].split("/") if p]
    if len(parts) < 2:
        raise ValueError(f"{uri!r}: expected hf://org/name[/path/in/repo]")
    name, _, rev = parts[1].partition("@")
    return HubLocation(f"{parts[0]}/{name}", rev or None, "/".join(parts[2:]))


def is_offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE")
    return env.strip().lower() in _TRUE if env is not None else bool(constants.HF_HUB_OFFLINE)


def cache_dir() -> Path:
    """The hub cache: HF_HUB_CACHE, else HF_HOME/hub, else huggingface_hub's default."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _repo_dir(repo: str) -> Path:
    return cache_dir() / ("models--" + repo.replace("/", "--"))


def _cached_snapshot(repo: str, revision: str) -> Path | None:
    """The cached snapshot directory of revision (a commit, or a ref recorded in refs/)."""
    rd = _repo_dir(repo)
    if _HEX40.fullmatch(revision) and (rd / "snapshots" / revision).is_dir():
        return rd / "snapshots" / revision
    ref = rd / "refs" / revision
    if ref.is_file():
        commit = ref.read_text().strip()
        if (rd / "snapshots" / commit).is_dir():
            return rd / "snapshots" / commit
    return None


def _required(fmt) -> list[str]:
    return [f for f in LAYOUT_FILES.get(fmt.name, ()) if not f.endswith("?")]


def _optional(fmt) -> list[str]:
    return [f[:-1] for f in LAYOUT_FILES.get(fmt.name, ()) if f.endswith("?")]


def _names_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) \
        if root.is_dir() else []


def _match_layout(names, layout=None):
    """The format whose required files are all among names (layout given: that one only)."""
    from ..formats.registry import FORMATS, get_format

    get_format("saelens")   # the built-in layouts are registered
    cands = [get_format(layout)] if layout else list(FORMATS.values())
    for fmt in cands:
        if _required(fmt) and all(f in names for f in _required(fmt)):
            return fmt
    return None


def _join(*parts) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def fetch(repo: str, path: str, *, revision: str | None = None, layout: str | None = None,
          refresh: bool = False, progress: bool = True):
    """-> (local directory of the SAE, Format, provenance dict) for folder path of repo.

    Cached: no network. Else (not offline) the layout is found from the repo's file list
    when not given, and only its files are downloaded."""
    revision = revision or "main"
    _check_location(repo, path, revision)
    snap = None if refresh else _cached_snapshot(repo, revision)
    if snap is not None:
        names = _names_under(snap / path)
        fmt = _match_layout(names, layout)
        if fmt is not None:
            return snap / path, fmt, provenance(repo, revision, path, snap, fmt)
    if is_offline():
        if snap is not None and names and layout is None:  # cached, but no known layout
            raise ValueError(f"hf://{repo}/{path} (revision {revision!r}, offline): no known "
                             f"SAE layout matches the cached files seen: {names[:30]}")
        want = _wanted_files(path, layout)
        raise NotCachedError(
            f"the SAE is not in the local Hugging Face cache ({cache_dir()}) and "
            f"HF_HUB_OFFLINE is set: repo {repo!r}, revision {revision!r}, file(s) {want}; "
            "download it once online (or `actspace sae fetch`), or unset HF_HUB_OFFLINE")
    return _download(repo, path, revision, layout, progress)


def _check_location(repo: str, path: str, revision: str) -> None:
    """Names that stay inside the cache: no '..' or '.' parts, no absolute path."""
    parts = repo.split("/") + path.split("/") + revision.split("/")
    if repo.count("/") != 1 or path.startswith("/") or any(p in ("..", ".") for p in parts):
        raise ValueError(f"bad Hub location: repo {repo!r}, path {path!r}, revision "
                         f"{revision!r} (expected org/name, a folder in it, a revision)")


def _wanted_files(path, layout) -> str:
    if layout:
        from ..formats.registry import get_format

        return ", ".join(repr(_join(path, f)) for f in _required(get_format(layout)))
    return repr(_join(path, "*")) + " (layout not known until listed)"


def _hub_error(e, repo, revision, what) -> Exception:
    from huggingface_hub import errors

    if isinstance(e, errors.RepositoryNotFoundError):
        return FileNotFoundError(f"Hub repo {repo!r} not found (or gated / private: log in "
                                 "with `hf auth login`)")
    if isinstance(e, errors.RevisionNotFoundError):
        return FileNotFoundError(f"Hub repo {repo!r} has no revision {revision!r}")
    if isinstance(e, errors.LocalEntryNotFoundError):   # no connection, and not cached
        return NotCachedError(f"could not reach the Hub and the SAE is not cached: repo "
                              f"{repo!r}, revision {revision!r}, {what} ({e})")
    if isinstance(e, errors.EntryNotFoundError):
        return FileNotFoundError(f"Hub repo {repo!r} (revision {revision!r}) has no {what}")
    return RuntimeError(f"Hub request for {repo!r} (revision {revision!r}, {what}) failed: {e}")


def list_repo_names(repo: str, revision: str) -> list[str]:
    """Every file path of the repo at revision (one Hub API call)."""
    from huggingface_hub import HfApi

    try:
        return list(HfApi().list_repo_files(repo, revision=revision))
    except Exception as e:    # Hub errors, and the HTTP client's (no network, timeouts)
        raise _hub_error(e, repo, revision, "file list") from e


def _download(repo, path, revision, layout, progress):
    from huggingface_hub import errors, hf_hub_download

    if layout is None:
        names = [n[len(path) + 1:] if path else n for n in list_repo_names(repo, revision)
                 if not path or n.startswith(path.rstrip("/") + "/")]
        fmt = _match_layout(names)
        if fmt is None:
            raise ValueError(f"hf://{repo}/{path}: no known SAE layout matches the files "
                             f"there: {sorted(names)[:30] or 'none'}")
    else:
        from ..formats.registry import get_format

        fmt = get_format(layout)
        if not _required(fmt):
            raise ValueError(f"layout {layout!r} has no file list for the Hub loader; "
                             "declare it with register_layout_files")
    kw = dict(repo_id=repo, revision=revision, cache_dir=str(cache_dir()))
    if not progress:
        kw["tqdm_class"] = _silent_tqdm()
    snap = None
    wanted = [(f, False) for f in _required(fmt)] + [(f, True) for f in _optional(fmt)]
    for name, optional in wanted:
        remote = _join(path, name)
        try:
            local = Path(hf_hub_download(filename=remote, **kw))
        except errors.EntryNotFoundError as e:
            if optional:
                continue
            raise _hub_error(e, repo, revision, f"file {remote!r}") from e
        except Exception as e:    # not found, no network, HTTP errors: named, one line
            raise _hub_error(e, repo, revision, f"file {remote!r}") from e
        snap = local
        for _ in remote.split("/"):
            snap = snap.parent
    return snap / path, fmt, provenance(repo, revision, path, snap, fmt)


def _silent_tqdm():
    from tqdm.auto import tqdm

    class Silent(tqdm):
        def __init__(self, *a, **k):
            k["disable"] = True
            super().__init__(*a, **k)
    return Silent


def _sha256(f: Path) -> str:
    """The file's sha256: the cache's blob name when it is one (an LFS file's blob is named
    by its sha256), else hashed here."""
    real = Path(os.path.realpath(f))
    if real.parent.name == "blobs" and _HEX64.fullmatch(real.name):
        return real.name
    h = hashlib.sha256()
    with open(real, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def provenance(repo, revision, path, snap: Path, fmt) -> dict:
    files = {}
    for name in _required(fmt) + _optional(fmt):
        f = snap / path / name
        if f.is_file():
            files[_join(path, name)] = {"sha256": _sha256(f), "bytes": f.stat().st_size}
    return {"source": "huggingface", "repo": repo, "revision": revision,
            "commit": snap.name, "path": path, "layout": fmt.name, "files": files}


def list_folders(repo: str, prefix: str = "", revision: str | None = None) -> dict:
    """{folder relative to prefix: Format} of every SAE under prefix of repo: from the
    cached snapshot when offline, else from the Hub's file list (one API call)."""
    revision = revision or "main"
    _check_location(repo, prefix, revision)
    if is_offline():
        snap = _cached_snapshot(repo, revision)
        if snap is None:
            raise NotCachedError(
                f"repo {repo!r} revision {revision!r} is not in the local Hugging Face cache "
                f"({cache_dir()}) and HF_HUB_OFFLINE is set: nothing to list")
        names = _names_under(snap / prefix)
    else:
        names = [n[len(prefix.rstrip('/')) + 1:] if prefix else n
                 for n in list_repo_names(repo, revision)
                 if not prefix or n.startswith(prefix.rstrip("/") + "/")]
    by_dir: dict[str, list[str]] = {}
    for n in names:
        parts = n.split("/")
        for i in range(len(parts)):          # every ancestor folder sees its subtree
            by_dir.setdefault("/".join(parts[:i]), []).append("/".join(parts[i:]))
    out = {}
    for folder, sub in by_dir.items():
        fmt = _match_layout(sub)
        if fmt is not None and not any(folder.startswith(f + "/") for f in out if f):
            out[folder] = fmt
    return out
