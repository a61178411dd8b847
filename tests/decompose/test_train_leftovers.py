"""A resumed `train_sae` into an out_dir removes the temporaries of killed runs (dead pids)
and leaves those of a live writer alone (issue 20, item 8)."""
from __future__ import annotations

import os
import subprocess
import sys

import torch

import actspace as acts


def test_train_removes_dead_writers_temporaries(tmp_path):
    out = tmp_path / "sae"
    (out / "sub").mkdir(parents=True)
    # a pid that cannot exist (above the kernel's pid_max) and a live process's pid
    dead = [out / "checkpoint.safetensors.tmp.99999999", out / "sub" / "cfg.json.tmp.99999999"]
    live_proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = out / f"history.json.tmp.{live_proc.pid}"
        for p in dead + [live]:
            p.write_bytes(b"partial")
        x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
        acts.train_sae(x, kind="topk", d_sae=16, k=2, batch_size=32, steps=2, out_dir=str(out))
        assert not any(p.exists() for p in dead)
        assert live.exists()
    finally:
        live_proc.kill()
        live_proc.wait()
    assert (out / "cfg.json").is_file() or any(out.glob("**/cfg.json"))
