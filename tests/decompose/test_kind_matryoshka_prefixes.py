"""Matryoshka's ``prefixes`` option (a list option of the kinds registry, Option(many=True)):
the summed prefix losses of a custom list against a float64 hand computation, the option
through train_sae, `actspace train --prefixes`, the pipeline's sae section and TrainConfig
(bad values named, exit 2 on the command line), and the prefixes kept through a SAELens
save / load as SAELens 6 records them (metadata.training_architecture_details)."""
import json

import pytest
import torch

import actspace as acts
from actspace.decompose.kinds import Option
from actspace.decompose.train_config import TrainConfig
from actspace.decompose.train_losses import train_forward

D = torch.float64


def test_list_option_checks_type_and_each_element():
    o = Option("widths", None, "h", int, minimum=1, many=True)
    o.check(None)                                  # automatic
    o.check([1, 5, 9])
    o.check((2,))
    for bad, err, msg in [(3, TypeError, "widths must be a non-empty list of ints"),
                          ([], TypeError, "non-empty list"), ("12", TypeError, "list"),
                          ([1, 2.5], TypeError, r"widths\[1\] must be an int"),
                          ([4, True], TypeError, r"widths\[1\] must be an int"),
                          ([3, 0], ValueError, r"widths\[1\] must be >= 1, got 0")]:
        with pytest.raises(err, match=msg):
            o.check(bad)
    f = Option("ratios", [0.5], "h", float, minimum=0, maximum=1, many=True)
    f.check([0, 1, 0.25])
    with pytest.raises(ValueError, match=r"ratios\[0\] must be <= 1"):
        f.check([1.5])
    with pytest.raises(ValueError, match="type must be int or float"):
        Option("names", None, "h", str)


def _hand_sae():
    """d_in 2, d_sae 4, k 1 in float64: pre = x @ W_encᵀ (b_enc = b_dec = 0)."""
    sae = acts.SAE(2, 4, "matryoshka", 1, dtype=D)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1, 0], [0, 1], [1, 1], [1, -1]], dtype=D))
        sae.W_dec.copy_(torch.tensor([[1, 0], [0, 1], [0.6, 0.8], [0.8, -0.6]], dtype=D))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_custom_prefix_losses_by_hand():
    x = torch.tensor([[2, 1], [0, 3], [1, 0]], dtype=D)
    # pre rows [2,1,3,1], [0,3,3,-3], [1,0,1,1]: BatchTopK keeps the k·N = 3 largest, the
    # three 3s (next is 2): acts row 0 = 3 on latent 2, row 1 = 3 on latents 1 and 2
    # Σ‖x - x̄‖²: x̄ = [1, 4/3] -> (1 + 1/9) + (1 + 25/9) + 16/9 = 20/3
    V = 20 / 3
    # prefixes [1, 3] (4 appended): prefix 1 reconstructs nothing: 5 + 9 + 1 = 15;
    # prefix 3: row 0 3·[.6,.8] = [1.8, 2.4] -> .04 + 1.96 = 2; row 1 [1.8, 5.4] ->
    # 3.24 + 5.76 = 9; row 2: 1 -> 12; the full width (latent 3 silent) also 12
    out = train_forward(_hand_sae(), x, x, prefixes=[1, 3], auxk_coeff=0.0)
    assert float(out.loss.detach()) == pytest.approx(15 / V + 12 / V + 12 / V, rel=1e-12)
    assert out.fvu == pytest.approx(12 / V, rel=1e-12) and out.l0 == pytest.approx(1.0)
    # the default (doubling: 1, 2, 4): prefix 2 adds row 1's 3·[0, 1] -> 5 + 0 + 1 = 6
    out = train_forward(_hand_sae(), x, x, auxk_coeff=0.0)
    assert float(out.loss.detach()) == pytest.approx(15 / V + 6 / V + 12 / V, rel=1e-12)
    out = train_forward(_hand_sae(), x, x, prefixes=[2], auxk_coeff=0.0)   # 2, 4
    assert float(out.loss.detach()) == pytest.approx(6 / V + 12 / V, rel=1e-12)
    # the gradient is that of the sum: d/d W_dec[3] is 0 (latent 3 never fires), and
    # d/d W_dec[0] too (latent 0 never fires); latent 1 (row 1 only, in prefix 3 and 4):
    # 2 · Σ -2 · 3 · (x_1 - ŷ_1)/V with ŷ_1 = [1.8, 5.4]
    sae = _hand_sae()
    train_forward(sae, x, x, prefixes=[1, 3], auxk_coeff=0.0).loss.backward()
    g1 = 2 * -2 * 3 * torch.tensor([0 - 1.8, 3 - 5.4], dtype=D) / V
    torch.testing.assert_close(sae.W_dec.grad[1], g1)
    assert float(sae.W_dec.grad[0].abs().sum()) == 0 and float(sae.W_dec.grad[3].abs().sum()) == 0


def test_train_sae_takes_prefixes_and_records_them():
    x = torch.randn(600, 16, generator=torch.Generator().manual_seed(0))
    kw = dict(kind="matryoshka", d_sae=32, k=4, batch_size=100, steps=4, progress=False,
              checkpoint_every=0, seed=1)
    a = acts.train_sae(x, prefixes=[8, 20], **kw)
    assert a.sae.training_options == {"prefixes": [8, 20, 32]}
    assert acts.train_sae(x, **kw).sae.training_options == {"prefixes": [8, 16, 32]}
    # the loss is the sum over the prefixes: a single prefix (d_sae) is plain BatchTopK's FVU
    one = acts.train_sae(x, prefixes=[32], **kw).history[0]
    assert one["loss"] == pytest.approx(one["fvu"], rel=1e-6)
    assert a.history[0]["loss"] > 2 * a.history[0]["fvu"]
    # expansion_factor: the width is known at the start of training, checked there
    with pytest.raises(ValueError, match="prefixes must be <= d_sae=32"):
        acts.train_sae(x, kind="matryoshka", expansion_factor=2, k=4, prefixes=[8, 40],
                       steps=1, progress=False)
    sweep = acts.train_sae(x, kind="matryoshka", d_sae=[16, 32], k=4, prefixes=[8],
                           batch_size=100, steps=2, progress=False)
    assert [s.training_options["prefixes"] for s in sweep.saes] == [[8, 16], [8, 32]]


@pytest.mark.parametrize("opts,err,msg", [
    ({"prefixes": [16, 8]}, ValueError, "prefixes must be latent counts increasing strictly"),
    ({"prefixes": [0, 8]}, ValueError, r"prefixes\[0\] must be >= 1"),
    ({"prefixes": [8, 64]}, ValueError, "prefixes must be <= d_sae=32"),
    ({"prefixes": 8}, TypeError, "prefixes must be a non-empty list of ints"),
    ({"prefixes": [8.0]}, TypeError, r"prefixes\[0\] must be an int"),
    ({"prefixes": [8], "prefix_count": 2}, ValueError, "prefixes and prefix_count exclude"),
])
def test_train_config_refuses_bad_prefixes(opts, err, msg):
    with pytest.raises(err, match=msg):
        TrainConfig.from_kwargs(kind="matryoshka", d_sae=32, k=4, **opts)


def test_cli_prefixes(tmp_path, capsys):
    from safetensors.torch import save_file

    from actspace.cli.main import build_parser, main
    from actspace.cli.train_cmd import train_config

    args = build_parser().parse_args(["train", "d", "--out", "o", "--kind", "matryoshka",
                                      "--d-sae", "2048", "--prefixes", "512", "1024", "2048"])
    assert train_config(args).kind_options["prefixes"] == [512, 1024, 2048]
    data = tmp_path / "x.safetensors"
    save_file({"acts": torch.randn(300, 16, generator=torch.Generator().manual_seed(0))},
              str(data))
    base = ["train", str(data), "--kind", "matryoshka", "--d-sae", "32", "--k", "4",
            "--batch-size", "100", "--steps", "2", "--quiet"]
    assert main(base + ["--out", str(tmp_path / "ok"), "--prefixes", "8", "16"]) == 0
    capsys.readouterr()
    sae = acts.SAE.load(tmp_path / "ok" / "sae")
    assert sae.kind == "matryoshka" and sae.training_options == {"prefixes": [8, 16, 32]}
    for bad, msg in [(["--prefixes", "16", "8"], "prefixes must be latent counts"),
                     (["--prefixes", "8", "64"], "prefixes must be <= d_sae=32"),
                     (["--prefixes", "0"], r"prefixes\[0\] must be >= 1"),
                     (["--prefixes", "8", "--prefix-count", "2"],
                      "prefixes and prefix_count exclude")]:
        assert main(base + ["--out", str(tmp_path / "bad")] + bad) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("actspace train: error: "), err
        assert __import__("re").search(msg, err), err
    with pytest.raises(SystemExit) as e:            # not an int: argparse's exit 2
        main(base + ["--out", str(tmp_path / "bad"), "--prefixes", "8", "x"])
    assert e.value.code == 2 and "--prefixes" in capsys.readouterr().err


def test_pipeline_config_prefixes(tmp_path, capsys):
    from actspace.pipeline import resolve_config
    from actspace.pipeline.stages import sae_train_config

    raw = {"model": {"path": "m"}, "layers": [1],
           "sae": {"kind": "matryoshka", "k": 4, "d_sae": 64, "prefixes": [16, 32]}}
    pc = resolve_config(raw)
    assert pc["sae"]["prefixes"] == [16, 32] and pc["sae"]["prefix_count"] is None
    assert sae_train_config(pc, "h", str(tmp_path)).kind_options["prefixes"] == [16, 32]
    assert resolve_config(pc)["sae"]["prefixes"] == [16, 32]          # idempotent
    for bad, msg in [("16", "config: sae.prefixes must be a non-empty list"),
                     ([16, 8], "config: sae.prefixes must be latent counts"),
                     ([16, 128], "config: sae.prefixes must be <= d_sae=64"),
                     ([16, -2], r"config: sae.prefixes\[1\] must be >= 1")]:
        with pytest.raises(ValueError, match=msg):
            resolve_config({**raw, "sae": {**raw["sae"], "prefixes": bad}})
    with pytest.raises(ValueError, match="config: sae.prefixes and prefix_count exclude"):
        resolve_config({**raw, "sae": {**raw["sae"], "prefix_count": 2}})
    # from a YAML file through `actspace run`: one line, exit 2, before any model is loaded
    from actspace.cli.main import main
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {path: m}\nlayers: [1]\nsae:\n  kind: matryoshka\n  k: 4\n"
                   "  d_sae: 64\n  prefixes: [32, 16]\n")
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "sae.prefixes must be latent counts" in err and err.count("\n") == 1, err


def test_saelens_round_trip_keeps_prefixes(tmp_path):
    x = torch.randn(400, 16, generator=torch.Generator().manual_seed(0))
    sae = acts.train_sae(x, kind="matryoshka", d_sae=48, k=4, prefixes=[6, 24],
                         batch_size=100, steps=3, progress=False).sae
    sae.save(tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "cfg.json").read_text())
    meta = cfg["metadata"]                      # where SAELens 6.54 records them
    assert cfg["architecture"] == "jumprelu"
    assert meta["training_architecture"] == "matryoshka_batchtopk"
    assert meta["training_architecture_details"] == {"k": 4, "matryoshka_widths": [6, 24, 48]}
    back = acts.SAE.load(tmp_path / "a")
    assert back.kind == "matryoshka" and back.training_options == {"prefixes": [6, 24, 48]}
    back.save(tmp_path / "b")                   # and again, unchanged
    assert json.loads((tmp_path / "b" / "cfg.json").read_text())["metadata"] == meta
    # a file whose widths the kind refuses is named on load
    meta["training_architecture_details"]["matryoshka_widths"] = [24, 6, 48]
    (tmp_path / "a" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="training_architecture_details.matryoshka_widths: "
                                         "prefixes must be latent counts"):
        acts.SAE.load(tmp_path / "a")


def test_a_saelens_matryoshka_file_keeps_its_widths(tmp_path):
    """The cfg.json sae-lens 6.54.12 writes for MatryoshkaBatchTopKTrainingSAE
    .save_inference_model (checked outside CI): a JumpReLU SAE whose metadata records the
    training. It loads as jumprelu (what it computes) and a save keeps that record."""
    from safetensors.torch import save_file

    d = tmp_path / "sl"
    d.mkdir()
    details = {"decoder_init_norm": 0.1, "k": 4, "use_sparse_activations": False,
               "aux_loss_coefficient": 1.0, "rescale_acts_by_decoder_norm": True,
               "topk_threshold_lr": 0.01, "matryoshka_widths": [8, 24, 64],
               "use_matryoshka_aux_loss": False}
    cfg = {"d_sae": 64, "apply_b_dec_to_input": True, "dtype": "float32", "d_in": 16,
           "reshape_activations": "none", "device": "cpu", "normalize_activations": "none",
           "architecture": "jumprelu",
           "metadata": {"sae_lens_version": "6.54.12", "sae_lens_training_version": "6.54.12",
                        "training_architecture": "matryoshka_batchtopk",
                        "training_architecture_details": details}}
    (d / "cfg.json").write_text(json.dumps(cfg))
    g = torch.Generator().manual_seed(0)
    W = torch.nn.functional.normalize(torch.randn(64, 16, generator=g), dim=1)
    save_file({"W_enc": W.T.contiguous(), "W_dec": W, "b_enc": torch.zeros(64),
               "b_dec": torch.zeros(16), "threshold": torch.full((64,), 0.3)},
              str(d / "sae_weights.safetensors"))
    sae = acts.SAE.load(d)
    assert sae.kind == "jumprelu" and sae.training_options == {}
    sae.save(tmp_path / "again")
    meta = json.loads((tmp_path / "again" / "cfg.json").read_text())["metadata"]
    assert meta["training_architecture"] == "matryoshka_batchtopk"
    assert meta["training_architecture_details"] == details
