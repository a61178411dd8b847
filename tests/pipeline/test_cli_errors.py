"""Expected failures reach the CLI user as one line naming the file and what to do, exit 2
(a full disk, a malformed JSON file, a truncated safetensors file, a corrupt shard, an
output path that is a file); `--debug` or ACTSPACE_DEBUG=1 adds the traceback; a bug still
raises with its traceback."""
from __future__ import annotations

import errno
import os

import pytest

from _saeeval_helpers import basis_sae, random_store
from actspace.cli import main as main_mod
from actspace.cli.main import main


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_disk_full_while_writing_stats_json(tmp_path, capsys, monkeypatch):
    path, _ = random_store(tmp_path / "acts", d=8, sizes=(10,))
    real = os.replace

    def full(src, dst):
        if str(dst).endswith("out.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)
    monkeypatch.setattr(os, "replace", full)
    assert main(["stats", str(path), "--recompute", "--json", str(tmp_path / "out.json")]) == 2
    err = one_line(capsys)
    assert "out.json" in err and "disk is full" in err and "free disk space" in err
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]   # no temporary left


def test_malformed_manifest_and_report_input(tmp_path, capsys):
    path, _ = random_store(tmp_path / "acts", d=8, sizes=(10,))
    (path / "manifest.json").write_text('{"format": "actspace.activation_store", ')
    assert main(["stats", str(path)]) == 2
    assert "manifest.json: not a valid activation store manifest" in one_line(capsys)
    out = tmp_path / "run"
    (out / "stats").mkdir(parents=True)
    (out / "stats" / "h.json").write_text("{nope")
    assert main(["report", str(out)]) == 2
    assert os.path.join("stats", "h.json") in one_line(capsys)


def test_truncated_sae_file(tmp_path, capsys):
    path, _ = random_store(tmp_path / "acts", d=16, sizes=(10,))
    basis_sae(16, k=4).save(tmp_path / "sae")
    w = tmp_path / "sae" / "sae_weights.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    assert main(["encode", str(tmp_path / "sae"), str(path), str(tmp_path / "lat"),
                 "--no-progress"]) == 2
    err = one_line(capsys)
    assert err.startswith("actspace encode: error:") and "Traceback" not in err


def test_output_path_is_a_file(tmp_path, capsys):
    path, _ = random_store(tmp_path / "acts", d=16, sizes=(10,))
    basis_sae(16, k=4).save(tmp_path / "sae")
    (tmp_path / "taken").write_text("a file")
    assert main(["encode", str(tmp_path / "sae"), str(path), str(tmp_path / "taken"),
                 "--no-progress"]) == 2
    assert "taken" in one_line(capsys)


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    (tmp_path / "manifest.json").write_text("{")
    assert main(["--debug", "stats", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("actspace stats:")
    assert main(["stats", str(tmp_path), "--debug"]) == 2          # after the command too
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("ACTSPACE_DEBUG", "1")
    assert main(["stats", str(tmp_path)]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    mod = main_mod._load("stats")

    def buggy(args):
        raise KeyError("a bug")
    monkeypatch.setattr(mod, "run", buggy)
    with pytest.raises(KeyError):
        main(["stats", str(tmp_path)])
