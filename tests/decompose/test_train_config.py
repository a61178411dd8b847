"""TrainConfig / TrainResult: one description of a training run for train_sae, SAE.fit,
`actspace train` and `actspace run`; and issue 20 item 5 (no finished work lost to --out)."""
import dataclasses

import pytest
import torch
from safetensors.torch import save_file

import actspace as acts
from actspace.decompose.kinds import all_options
from actspace.decompose.train_config import TrainConfig, TrainResult


def test_from_kwargs_routes_kind_options_and_refuses_unknown_names():
    cfg = TrainConfig.from_kwargs(kind="relu", d_sae=16, l1_coeff=2.0, auxk_coeff=0.5)
    assert cfg.kind_options["l1_coeff"] == 2.0 and cfg.kind_options["auxk_coeff"] == 0.5
    assert cfg.kind_options["l0_coeff"] == 1e-3          # every kind's defaults filled in
    assert cfg.options_of_kind() == {"l1_coeff": 2.0}
    with pytest.raises(TypeError, match="unexpected training option 'l2_coeff'"):
        TrainConfig.from_kwargs(l2_coeff=1.0)
    with pytest.raises(ValueError, match="kind must be one of"):
        TrainConfig(kind="dense")
    assert cfg.replace(lr=1e-3).lr == 1e-3 and cfg.replace(lr=1e-3).kind_options == \
        cfg.kind_options


def test_train_sae_takes_a_config_or_keywords_not_both():
    x = torch.randn(200, 8)
    a = acts.train_sae(x, TrainConfig(d_sae=16, k=2, batch_size=100, progress=False))
    b = acts.train_sae(x, d_sae=16, k=2, batch_size=100, progress=False)
    assert isinstance(a, TrainResult) and torch.equal(a.sae.W_dec, b.sae.W_dec)
    with pytest.raises(TypeError, match="not both"):
        acts.train_sae(x, TrainConfig(d_sae=16), k=2)
    sweep = acts.train_sae(x, d_sae=[16, 24], k=2, batch_size=100, progress=False)
    assert len(sweep.saes) == 2
    with pytest.raises(ValueError, match="trained 2 SAEs: use .saes"):
        sweep.sae


def test_cli_maps_every_option_in_one_place():
    """Every TrainConfig field is either set from a flag by train_cmd.train_config or is one
    the CLI deliberately leaves at its default; every kind option has a flag."""
    from actspace.cli.main import build_parser
    from actspace.cli.train_cmd import train_config

    args = build_parser().parse_args(["train", "d", "--out", "o", "--quiet"])
    cfg = train_config(args)
    not_flags = {"hookpoint_out", "dtype", "max_steps", "log_every", "max_length"}
    default = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.name in not_flags:
            assert getattr(cfg, f.name) == getattr(default, f.name), f.name
    for n in all_options():
        assert hasattr(args, n), n                  # --k-aux, --l1-coeff ...


def test_pipeline_maps_the_sae_section():
    from actspace.pipeline import resolve_config
    from actspace.pipeline.stages import sae_train_config

    pc = resolve_config({"model": {"path": "m"}, "layers": [1],
                         "sae": {"kind": "jumprelu", "l0_coeff": 0.05, "k": 4}})
    cfg = sae_train_config(pc, "h", "/tmp/x")
    assert (cfg.kind, cfg.hookpoint, cfg.kind_options["l0_coeff"]) == ("jumprelu", "h", 0.05)
    assert cfg.checkpoint_every == pc["sae"]["checkpoint_every"]


# ------------------------------------------------------------------ issue 20, item 5
def _unwritable(monkeypatch, target):
    """Make writes under target fail like a read-only directory, for root too."""
    import actspace._io as io

    real = io.atomic_write

    def refuse(path, write):
        if str(path).startswith(str(target)):
            raise OSError(30, f"cannot write {str(path)!r}: Read-only file system")
        return real(path, write)
    real_open = open

    def guarded_open(file, mode="r", *a, **kw):
        if "w" in mode and str(file).startswith(str(target)):
            raise OSError(30, "Read-only file system", str(file))
        return real_open(file, mode, *a, **kw)
    monkeypatch.setattr(io, "atomic_write", refuse)
    monkeypatch.setattr("builtins.open", guarded_open)


class _Counting:
    """A tensor source that counts the batches read."""

    def __init__(self, x):
        self.x, self.d, self.read = x, x.shape[1], 0

    def __len__(self):
        return self.x.shape[0]

    def iter_batches(self, batch_size, **kw):
        for b in range(0, len(self), batch_size):
            self.read += 1
            yield self.x[b:b + batch_size]


def test_unwritable_out_dir_is_refused_before_reading_a_batch(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    _unwritable(monkeypatch, out)
    src = _Counting(torch.randn(400, 8))
    with pytest.raises(OSError, match="not writable"):
        acts.train_sae(src, d_sae=16, k=2, batch_size=100, out_dir=out, progress=False)
    assert src.read == 0


def test_cli_unwritable_out_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    from actspace.cli.main import main

    save_file({"acts": torch.randn(100, 8)}, str(tmp_path / "a.safetensors"))
    out = tmp_path / "out"
    out.mkdir()
    _unwritable(monkeypatch, out)
    assert main(["train", str(tmp_path / "a.safetensors"), "--out", str(out), "--quiet",
                 "--k", "2", "--d-sae", "16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0] and "not writable" in err[0]


def test_a_failing_final_save_keeps_the_work_elsewhere(tmp_path, monkeypatch):
    import actspace.decompose.train_loop as loop

    x = torch.randn(300, 8)
    out = tmp_path / "out"
    real = loop.write_json_atomic

    def fail_in_out(path, obj, *a, **kw):      # the disk fills up at the very end
        if str(path).startswith(str(out)) and str(path).endswith("history.json"):
            raise OSError(28, f"cannot write {str(path)!r}: the disk is full")
        return real(path, obj, *a, **kw)
    monkeypatch.setattr(loop, "write_json_atomic", fail_in_out)
    with pytest.warns(RuntimeWarning, match="saved to"):
        res = acts.train_sae(x, d_sae=16, k=2, batch_size=100, out_dir=out, progress=False)
    assert res.out_dir != out and (res.out_dir / "history.json").is_file()
    back = acts.SAE.load(res.out_dir / "sae")
    assert torch.equal(back.W_dec, res.sae.W_dec)


def test_a_format_that_cannot_hold_the_sae_does_not_lose_it(tmp_path):
    x = torch.randn(300, 8)
    with pytest.warns(RuntimeWarning, match="format 'saelens'"):
        res = acts.train_sae(x, kind="relu", d_sae=16, batch_size=100, out_dir=tmp_path / "o",
                             save_format="sparsify", progress=False)
    assert acts.SAE.load(res.out_dir / "sae").kind == "relu"
