"""A real kill: `actspace train` is SIGKILLed mid-run, the same command resumes, and the
result equals an uninterrupted run bit for bit."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import save_file

import actspace as acts
from actspace.cli.main import main


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    g = torch.Generator().manual_seed(0)
    save_file({"acts": torch.randn(8000, 16, generator=g)}, str(tmp_path / "a.safetensors"))
    args = [str(tmp_path / "a.safetensors"), "--k", "4", "--d-sae", "48", "--batch-size", "20",
            "--epochs", "1", "--lr", "1e-3", "--checkpoint-every", "1", "--quiet"]
    assert main(["train", *args, "--out", str(tmp_path / "full")]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "actspace.cli.main", "train", *args,
                             "--out", str(tmp_path / "killed")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed" / "checkpoint.safetensors"
    deadline = time.time() + 60
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.05)  # a few more steps, then kill it mid-write or mid-step (400 steps in all)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists()
    assert not (tmp_path / "killed" / "sae").exists(), "the run finished before the kill"
    assert main(["train", *args, "--out", str(tmp_path / "killed")]) == 0
    full = acts.SAE.load(tmp_path / "full" / "sae")
    resumed = acts.SAE.load(tmp_path / "killed" / "sae")
    for n, p in full.state_dict().items():
        assert torch.equal(p, resumed.state_dict()[n]), n
    assert (tmp_path / "full" / "history.json").read_text() == \
        (tmp_path / "killed" / "history.json").read_text()
