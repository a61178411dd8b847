"""The scripts in examples/ run end to end (small settings) and print what they promise."""
from __future__ import annotations

import importlib
import os
import sys

import pytest

pytest.importorskip("transformers")
EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "examples")


def _run(name, argv, capsys):
    sys.path.insert(0, EXAMPLES)
    try:
        module = importlib.import_module(name)
        assert module.main(argv) == 0
    finally:
        sys.path.remove(EXAMPLES)
    return capsys.readouterr().out


def test_capture_and_stats(tmp_path, capsys):
    out = _run("capture_and_stats", ["--docs", "12", "--out", str(tmp_path)], capsys)
    assert "second run (complete store): 0 new tokens" in out
    assert out.count("spectrum: alpha") == 2


def test_train_sae(tmp_path, capsys):
    out = _run("train_sae", ["--docs", "24", "--steps", "30", "--out", str(tmp_path)], capsys)
    assert "eval: FVU" in out and "its top examples:" in out
    assert (tmp_path / "sae_lens" / "cfg.json").exists()
    assert (tmp_path / "latents" / "top_examples.json").exists()


def test_steer(tmp_path, capsys):
    out = _run("steer", ["--out", str(tmp_path / "new")], capsys)
    assert "round trip exact" in out and "cos_change" in out
    assert (tmp_path / "new" / "sports.json").exists()
