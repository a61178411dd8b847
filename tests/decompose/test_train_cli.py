"""`actspace train` on a safetensors file of activations: trains, saves, resumes."""
import json

import torch
from safetensors.torch import save_file

import actspace as acts
from actspace.cli.main import main
from actspace.decompose.train_config import TrainResult


def test_cli_train_sweep_and_resume(tmp_path, capsys):
    x = torch.randn(600, 16)
    save_file({"acts": x}, str(tmp_path / "acts.safetensors"))
    argv = [str(tmp_path / "acts.safetensors"), "--out", str(tmp_path / "run"), "--k", "2", "4",
            "--d-sae", "32", "--batch-size", "100", "--epochs", "2", "--quiet"]
    assert main(["train", *argv]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["k"] for r in report["final"]] == [2, 4] and report["final"][0]["step"] == 12
    saes = [acts.SAE.load(tmp_path / "run" / f"sae_{i}") for i in (0, 1)]
    assert [(s.d_sae, s.k) for s in saes] == [(32, 2), (32, 4)]
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history[-1]["step"] == 12
    # run again: the checkpoint says it is done, nothing is retrained
    assert main(["train", *argv]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["final"] == report["final"]
    assert torch.equal(acts.SAE.load(tmp_path / "run" / "sae_1").W_dec, saes[1].W_dec)


def test_cli_bad_data(tmp_path, capsys):
    assert main(["train", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path)]) == 2
    assert "neither a store directory" in capsys.readouterr().err


def test_cli_shard_latents_needs_torchrun(tmp_path, capsys):
    save_file({"acts": torch.randn(50, 8)}, str(tmp_path / "acts.safetensors"))
    assert main(["train", str(tmp_path / "acts.safetensors"), "--out", str(tmp_path / "r"),
                 "--k", "2", "--d-sae", "16", "--quiet", "--shard-latents"]) == 2
    assert "run under torchrun" in capsys.readouterr().err


def test_cli_passes_the_training_recipe_options(tmp_path, capsys, monkeypatch):
    import actspace.decompose.train as train

    save_file({"acts": torch.randn(50, 8)}, str(tmp_path / "acts.safetensors"))
    seen = {}

    def fake_train_sae(data, config):
        seen.update({n: getattr(config, n) for n in config.field_names()})
        seen.update(config.kind_options)
        return TrainResult([acts.SAE(8, 16, "batchtopk", 2)], [])

    monkeypatch.setattr(train, "train_sae", fake_train_sae)
    assert main(["train", str(tmp_path / "acts.safetensors"), "--out", str(tmp_path / "r"),
                 "--kind", "batchtopk", "--k", "2", "--d-sae", "16", "--quiet",
                 "--b-dec-init", "median", "--warmup-steps", "7", "--decay-fraction", "0.3",
                 "--k-aux", "5", "--auxk-coeff", "0.1", "--threshold-momentum", "0.5"]) == 0
    assert {k: seen[k] for k in ("b_dec_init", "warmup_steps", "decay_fraction", "k_aux",
                                 "auxk_coeff", "threshold_momentum")} == dict(
        b_dec_init="median", warmup_steps=7, decay_fraction=0.3, k_aux=5, auxk_coeff=0.1,
        threshold_momentum=0.5)
    assert main(["train", str(tmp_path / "acts.safetensors"), "--out", str(tmp_path / "r"),
                 "--quiet"]) == 0                                   # the defaults
    assert (seen["b_dec_init"], seen["warmup_steps"], seen["k_aux"]) == ("mean", None, None)
    assert seen["expansion_factor"] == 8                        # no width given: 8 x d
    assert seen["auxk_coeff"] == 1 / 32 and seen["threshold_momentum"] == 0.9
