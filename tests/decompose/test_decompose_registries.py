"""The KINDS and FORMATS registries: a kind or a format added in one place reaches the SAE,
training, the CLI, the pipeline config and SAE.load / SAE.save without other edits."""
import json
from pathlib import Path

import pytest
import torch

import actspace as acts
from actspace.decompose import formats, kinds
from actspace.decompose.code import SparseCode
from actspace.decompose.kinds.base import Kind, Option, TrainOut


def test_builtin_kinds_declare_everything_their_readers_need():
    assert list(kinds.KINDS) == ["topk", "batchtopk", "jumprelu", "relu", "matryoshka", "gated"]
    for name, k in kinds.KINDS.items():
        assert k.name == name and callable(k.encode) and callable(k.train_forward)
        assert k.threshold in (None, "per_latent", "scalar")
        assert k.saelens is not None                    # every built-in kind saves to SAELens
    assert kinds.KINDS["topk"].sparsify == "topk" and kinds.KINDS["jumprelu"].gemmascope
    with pytest.raises(ValueError, match="kind must be one of"):
        acts.SAE(8, 16, "nope")


def _abs_kind():
    """A toy kind written as a user would: |pre| · scale (its own parameter [d_sae]) keeping
    the k largest per row."""
    from actspace import ops

    def encode(sae, x):
        pre = sae.preactivation(x).abs() * sae.scale
        v, i = pre.topk(sae.k, dim=1)
        return SparseCode(v, i.to(torch.int32), sae.d_sae)

    def train_forward(sae, x, total_var, opts):
        pre = sae.preactivation(x).abs() * sae.scale
        v, i = pre.topk(sae.k, dim=1)
        y_hat = ops.sparse_decode(v, i.to(torch.int32), sae.W_dec, sae.b_dec)
        fired = torch.zeros(sae.d_sae, dtype=torch.bool)
        fired[i.flatten()] = True
        return TrainOut(y_hat, fired, torch.tensor(float(sae.k)),
                        opts["abs_penalty"] * v.sum(1).mean())

    return Kind(name="abstopk", summary="toy", uses_k=True, threshold=None, encode=encode,
                train_forward=train_forward,
                options=(Option("abs_penalty", 0.0, "toy penalty", float, minimum=0),),
                saelens="abstopk_actspace", extra_params=(("scale", ("d_sae",), 1.0),))


@pytest.fixture
def abs_kind():
    k = kinds.register(_abs_kind())
    try:
        yield k
    finally:
        del kinds.KINDS[k.name]


def test_a_registered_kind_reaches_sae_training_cli_pipeline_and_formats(abs_kind, tmp_path):
    x = torch.randn(300, 8)
    sae = acts.SAE(8, 16, "abstopk", 3)
    assert isinstance(sae.scale, torch.nn.Parameter) and torch.equal(sae.scale, torch.ones(16))
    code = sae.encode(x[:5])
    assert code.values.shape == (5, 3)
    res = acts.train_sae(x, kind="abstopk", d_sae=16, k=3, batch_size=100, progress=False,
                         abs_penalty=0.5)
    assert res.sae.kind == "abstopk" and res.history[-1]["kind"] == "abstopk"
    with pytest.raises(ValueError, match="abs_penalty must be >= 0"):
        acts.train_sae(x, kind="abstopk", d_sae=16, k=3, abs_penalty=-1.0)
    # the CLI offers it and its option
    from actspace.cli.main import build_parser
    args = build_parser().parse_args(["train", "d", "--out", "o", "--kind", "abstopk",
                                      "--abs-penalty", "0.25"])
    from actspace.cli.train_cmd import train_config
    cfg = train_config(args)
    assert cfg.kind == "abstopk" and cfg.kind_options["abs_penalty"] == 0.25
    # the pipeline config accepts it and its option
    from actspace.pipeline import resolve_config
    pc = resolve_config({"model": {"path": "m"}, "layers": [1],
                         "sae": {"kind": "abstopk", "abs_penalty": 0.1}})
    assert pc["sae"]["abs_penalty"] == 0.1
    with pytest.raises(ValueError, match="sae.abs_penalty must be >= 0"):
        resolve_config({"model": {"path": "m"}, "layers": [1],
                        "sae": {"kind": "abstopk", "abs_penalty": -1}})
    # SAELens format: written under its declared architecture, read back as this kind
    res.sae.save(tmp_path / "s")
    assert json.loads((tmp_path / "s" / "cfg.json").read_text())["architecture"] == \
        "abstopk_actspace"
    back = acts.SAE.load(tmp_path / "s")
    assert back.kind == "abstopk" and torch.equal(back.W_enc, res.sae.W_enc)
    assert torch.equal(back.scale, res.sae.scale) and not torch.equal(back.scale,
                                                                     torch.ones(16))
    with pytest.raises(ValueError, match="stores kinds"):
        res.sae.save(tmp_path / "sp", format="sparsify")


def test_kind_options_must_agree_on_shared_defaults():
    bad = Kind(name="x", summary="", uses_k=False, threshold=None, encode=None,
               train_forward=None, options=(Option("l1_coeff", 5.0, ""),))
    with pytest.raises(ValueError, match="option 'l1_coeff' has default 5.0"):
        kinds.register(bad)
    with pytest.raises(ValueError, match="already registered"):
        kinds.register(kinds.KINDS["topk"])


# ------------------------------------------------------------------ formats
def test_builtin_formats_in_detection_order():
    assert list(formats.FORMATS)[:3] == ["saelens", "sparsify", "gemmascope"]
    assert formats.detect is formats.registry.detect
    for f in formats.FORMATS.values():
        assert isinstance(f, formats.Format)


def test_a_registered_format_is_detected_loaded_and_saved(tmp_path):
    """A minimal format ('x.pt'-free: one safetensors of the ops layout + a kind file)."""
    from actspace._io import read_json, write_json_atomic, write_safetensors_atomic
    from actspace.decompose.formats.common import build_sae, read_weights

    def detect(p: Path) -> bool:
        return p.is_dir() and (p / "toy.safetensors").is_file()

    def load(p: Path, *, device=None, dtype=None):
        t, meta = read_weights(p / "toy.safetensors"), read_json(p / "toy.json")
        return build_sae(d_in=t["W_enc"].shape[1], d_sae=t["W_enc"].shape[0], kind=meta["kind"],
                         k=meta["k"], d_out=None, hookpoint=None, hookpoint_out=None,
                         apply_b_dec_to_input=True, dtype=dtype, device=device, **t)

    def save(sae, p: Path) -> None:
        write_safetensors_atomic(p / "toy.safetensors", {n: getattr(sae, n) for n in
                                                         ("W_enc", "b_enc", "W_dec", "b_dec")})
        write_json_atomic(p / "toy.json", {"kind": sae.kind, "k": sae.k})

    fmt = formats.register(formats.Format("toy", detect, load, save))
    try:
        assert formats.FORMATS["toy"] is fmt
        sae = acts.SAE(8, 16, "topk", 2)
        sae.save(tmp_path / "t", format="toy")
        assert formats.detect(tmp_path / "t") is fmt
        back = acts.SAE.load(tmp_path / "t")
        assert torch.equal(back.W_dec, sae.W_dec) and back.k == 2
        with pytest.raises(ValueError, match="already registered"):
            formats.register(formats.Format("toy", detect, load))
        ro = formats.register(formats.Format("readonly", lambda p: False, load))
        with pytest.raises(ValueError, match="format must be one of"):
            sae.save(tmp_path / "r", format="readonly")       # no save: not writable
        del formats.FORMATS[ro.name]
    finally:
        del formats.FORMATS["toy"]
