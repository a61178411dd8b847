"""`actspace explain` end to end: against the local fake LLM, killed mid-run and resumed
(no cached request is sent again), offline scoring of explanations given by hand, errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from _interp_helpers import WORDS, word_latent_store
from _models import minilm_dir
from actspace.cli.main import main

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # tests/


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return word_latent_store(tmp_path_factory.mktemp("interp_cli"))[0]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(os.path.dirname(TESTS), "python"),
                                         TESTS, env.get("PYTHONPATH", "")])
    return env


def _lines(path) -> list[str]:
    return open(path).read().splitlines() if os.path.exists(path) else []


def _cached_requests(cache) -> set[str]:
    out = set()
    for d, _, files in os.walk(cache):
        for f in files:
            if f.endswith(".json"):
                entry = json.load(open(os.path.join(d, f)))
                out.add(json.dumps(entry["request"], sort_keys=True))
    return out


def test_explain_killed_and_resumed_repeats_no_cached_request(store, tmp_path):
    port_file = str(tmp_path / "port")
    server = subprocess.Popen([sys.executable, os.path.join(TESTS, "_llm_server.py"),
                               port_file, "0.15"], env=_env())
    try:
        for _ in range(200):
            if os.path.exists(port_file):
                break
            time.sleep(0.05)
        url = open(port_file).read()
        cmd = [sys.executable, "-m", "actspace.cli.main", "explain", str(store),
               "--endpoint", url, "--model", "fake", "--tokenizer", minilm_dir(),
               "--scorers", "detection,fuzzing", "--concurrency", "2", "--no-progress",
               "--n-train", "8", "--n-test", "10", "--n-negative", "10"]
        job = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        log = port_file + ".log"
        deadline = time.time() + 120
        while len(_lines(log)) < 12 and job.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert job.poll() is None, job.communicate()
        job.send_signal(signal.SIGKILL)
        job.wait()
        cached = _cached_requests(store / "llm_cache")
        sent_before = len(_lines(log))
        assert 6 <= len(cached) <= sent_before        # answered ones are on disk
        done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        resent = _lines(log)[sent_before:]
        assert resent and not set(resent) & cached    # nothing answered before is asked again
        assert len(set(resent)) == len(resent)
        total = 6 + 6 * 4 * 2                         # explain + detection + fuzzing prompts
        assert len(cached) + len(resent) == total
        assert f"{len(resent)} requests ({len(cached)} answered from cache" in done.stdout
        again = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
        assert again.returncode == 0 and len(_lines(log)) == sent_before + len(resent)
        assert f"0 requests ({total} answered from cache" in again.stdout
    finally:
        server.kill()
        server.wait()
    out = json.load(open(store / "explanations.json"))
    assert out["format"] == "actspace.explanations"
    for m, w in enumerate(WORDS):
        e = out["latents"][str(m)]
        assert e["explanation"] == f"the word '{w}'"
        assert e["scores"]["detection"]["balanced_accuracy"] == 1.0
        assert e["scores"]["fuzzing"]["auroc"] == 1.0


def test_score_hand_written_explanations_offline(store, tmp_path, capsys):
    hand = tmp_path / "hand.json"
    hand.write_text(json.dumps({str(m): f"the word {w}" for m, w in enumerate(WORDS)}))
    rc = main(["explain", str(store), "--explanations", str(hand), "--latents", "0-3",
               "--tokenizer", minilm_dir(), "--out", str(tmp_path / "o.json")])
    assert rc == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "embedding: mean AUROC" in text and "LLM:" not in text
    out = json.load(open(tmp_path / "o.json"))
    assert sorted(out["latents"]) == ["0", "1", "2", "3"]
    assert all(out["latents"][str(m)]["scores"]["embedding"]["auroc"] > 0.9 for m in range(4))


def test_explain_cli_errors(store, tmp_path, capsys):
    assert main(["explain", str(tmp_path / "none")]) == 2
    assert "no latent store" in capsys.readouterr().err
    assert main(["explain", str(store), "--tokenizer", minilm_dir()]) == 2
    assert "--endpoint and --model" in capsys.readouterr().err
    assert main(["explain", str(store), "--endpoint", "http://127.0.0.1:9/v1"]) == 2
    assert "go together" in capsys.readouterr().err
    assert main(["explain", str(store), "--latents", "5-2", "--explanations", "x"]) == 2
    assert "--latents" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert main(["explain", str(store), "--explanations", str(bad)]) == 2
    assert "bad.json" in capsys.readouterr().err
    assert main(["explain", str(store), "--explanations", str(bad), "--scorers", "vibes"]) == 2


def test_explain_then_report_shows_explanations(store, tmp_path, capsys):
    """CLI -> explanations.json in the pipeline layout -> `actspace report`."""
    from _llm_server import FakeLLM
    from actspace._io import write_json_atomic

    out = tmp_path / "run"
    write_json_atomic(out / "cards" / "hp.json", {
        "d_sae": 12, "frequency": [0.1] * 12,
        "cards": [{"latent": m, "count": 9, "frequency": 0.09, "mean_activation": 1.5,
                   "examples": []} for m in (0, 1)]})
    with FakeLLM() as srv:
        rc = main(["explain", str(store), "--endpoint", srv.url, "--model", "fake",
                   "--tokenizer", minilm_dir(), "--latents", "0-2", "--scorers", "detection",
                   "--out", str(out / "latents" / "hp" / "explanations.json"),
                   "--cache", str(tmp_path / "cache"), "--n-train", "8", "--n-test", "10",
                   "--n-negative", "10", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert "3 explanations, 0 latents without one" in capsys.readouterr().out
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    card0 = page[page.index("<b>latent 0</b>"):page.index("<b>latent 1</b>")]
    assert "Explanation:</b> the word &#x27;cat&#x27;" in card0
    assert "detection: AUROC 1.000, bal. acc. 1.000" in card0
    table = page[page.index("<h4>Explanations</h4>"):]
    assert all(f"the word &#x27;{w}&#x27;" in table for w in WORDS[:3])
