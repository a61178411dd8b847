"""The default lr, warm-up and dead-latent window of train_sae (train_loop.default_lr,
default_warmup_steps, default_dead_tokens), by hand and through a run."""
import math

import pytest
import torch

import actspace as acts
from actspace.decompose.train_loop import default_dead_tokens, default_lr, default_warmup_steps


def test_default_lr_by_hand():
    # long runs: Gao et al.'s 2e-4 / sqrt(d_sae / 2**14), whatever the length
    assert default_lr(16384, 50_000) == pytest.approx(2e-4)
    assert default_lr(16384, 250_000) == pytest.approx(2e-4)
    assert default_lr(65536, 60_000) == pytest.approx(1e-4)
    # shorter runs: times sqrt(50000 / steps)
    assert default_lr(16384, 12_500) == pytest.approx(4e-4)
    base = 2e-4 / math.sqrt(6144 / 16384)
    assert default_lr(6144, 1000) == pytest.approx(base * math.sqrt(50))
    assert 2.3e-3 < default_lr(6144, 1000) < 2.32e-3
    assert default_lr(6144, 300) == pytest.approx(base * math.sqrt(50_000 / 300))
    # the boost stops at 4.5e-3 (the 100-step measurement); below 100 steps as at 100;
    # a tiny SAE keeps Gao's rate even above that
    assert default_lr(6144, 100) == pytest.approx(4.5e-3)
    assert default_lr(65536, 10) == default_lr(65536, 100) == pytest.approx(1e-4 * math.sqrt(500))
    assert default_lr(4096, 0) == pytest.approx(4.5e-3)
    assert default_lr(4096, 5000) == pytest.approx(4e-4 * math.sqrt(10))
    assert default_lr(32, 5) == pytest.approx(2e-4 * math.sqrt(512))


def test_default_warmup_by_hand():
    assert [default_warmup_steps(s) for s in (0, 3, 30, 90, 100, 300, 1000, 20_000)] == \
        [0, 1, 10, 30, 30, 30, 100, 1000]


def test_train_sae_uses_the_defaults():
    x = torch.randn(512, 16, generator=torch.Generator().manual_seed(0))
    r = acts.train_sae(x, kind="topk", d_sae=64, k=4, batch_size=64, steps=40, seed=0,
                       progress=False, checkpoint_every=0, log_every=1)
    lrs = [row["lr"] for row in r.history if "lr" in row]
    peak, warm = default_lr(64, 40), default_warmup_steps(40)
    assert warm == 13
    assert max(lrs) == pytest.approx(peak)
    assert lrs[0] == pytest.approx(peak / warm)          # first warm-up step
    r2 = acts.train_sae(x, kind="topk", d_sae=64, k=4, batch_size=64, steps=40, seed=0,
                        lr=1e-3, warmup_steps=0, progress=False, checkpoint_every=0,
                        log_every=1)
    assert max(row["lr"] for row in r2.history if "lr" in row) == pytest.approx(1e-3)


def test_default_dead_tokens_by_hand():
    # 100 expected firing intervals (d_sae / k tokens), at most Gao et al.'s 10M
    assert default_dead_tokens(6144, 32) == 19_200
    assert default_dead_tokens(64, 4) == 1600
    assert default_dead_tokens(2 ** 24, 32) == 10_000_000
    assert default_dead_tokens(3, 2) == 150
    assert default_dead_tokens(4096, None) == 10_000_000   # no k, no AuxK: Gao's window


def _dead_masks(monkeypatch, **kw):
    """Train a 64-latent TopK SAE whose last 8 latents can never fire; -> per step the
    AuxK dead mask train_forward received."""
    from actspace.decompose import train_loop
    seen, real = [], train_loop.train_forward

    def spy(sae, x, y, dead=None, **k):
        seen.append(dead.clone())
        return real(sae, x, y, dead=dead, **k)

    monkeypatch.setattr(train_loop, "train_forward", spy)
    x = torch.randn(4096, 16, generator=torch.Generator().manual_seed(0))
    sae = acts.SAE(16, 64, kind="topk", k=4)
    with torch.no_grad():       # latents 56..63: zero encoder rows, a bias no input beats
        sae.W_enc[56:] = 0
        sae.b_enc[56:] = -1e4
    acts.train_sae(x, saes=[sae], batch_size=64, steps=40, lr=1e-3, seed=0, progress=False,
                   checkpoint_every=0, b_dec_init=None, **kw)
    return seen


def test_default_dead_window_reaches_auxk(monkeypatch):
    # window 100 * 64 / 4 = 1600 tokens = 25 batches of 64: the silent latents join AuxK
    # from step 25 on (1600 tokens seen), not before
    seen = _dead_masks(monkeypatch)
    assert len(seen) == 40
    assert not any(bool(m.any()) for m in seen[:25])
    assert all(bool(m[56:].all()) for m in seen[25:])
    # Gao's 10M would never have reached them in this run
    seen = _dead_masks(monkeypatch, dead_tokens=10_000_000)
    assert not any(bool(m.any()) for m in seen)


def test_dead_tokens_is_checked():
    with pytest.raises(ValueError, match="dead_tokens"):
        acts.train_sae(torch.randn(64, 8), kind="topk", d_sae=16, k=2, steps=1,
                       dead_tokens=0, progress=False)
