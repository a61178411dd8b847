"""actspace's SAELens files against the real sae-lens package, both ways, for every kind.

The test suite checks the file layout (tests/decompose/test_interop.py, test_kind_*.py);
this script, kept out of CI and out of the package's dependencies, checks that sae-lens
itself loads what actspace writes and that actspace loads what sae-lens writes, with the
same encodings and reconstructions. Run it where sae-lens is installed:

    PYTHONPATH=$PWD/python /tmp/peers/bin/python bench/check_saelens_formats.py

actspace -> sae-lens: each actspace kind trained a few steps (so thresholds, gates and
biases are not at their initial values), saved with SAE.save, loaded by
sae_lens.SAE.load_from_disk.
sae-lens -> actspace: each sae-lens training architecture stepped a few times by its
SAETrainer, written by save_model (the training layout) and save_inference_model (the
inference layout: BatchTopK and Matryoshka become JumpReLU), loaded by actspace.SAE.load.
Prints one line per case and exits 1 when any differs.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

D, M, B = 32, 128, 256
ATOL = 2e-5


def data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2048, D, generator=g) @ torch.randn(D, D, generator=g) / D ** 0.5


def compare(name, ours, theirs, x) -> bool:
    """ours: an actspace SAE; theirs: a sae_lens SAE; both on x [n, D]."""
    with torch.no_grad():
        f_ours = ours.encode(x).to_dense()
        f_theirs = theirs.encode(x)
        r_ours = ours(x)[0]
        r_theirs = theirs.decode(f_theirs)
    same_fire = torch.equal(f_ours > 0, f_theirs > 0)
    df = float((f_ours - f_theirs).abs().max())
    dr = float((r_ours - r_theirs).abs().max())
    ok = same_fire and df < ATOL and dr < ATOL
    print(f"{'ok  ' if ok else 'FAIL'} {name:48s} L0 {float((f_ours > 0).sum(1).float().mean()):6.2f}"
          f"  same firing {same_fire}  max|Δf| {df:.1e}  max|Δx̂| {dr:.1e}", flush=True)
    return ok


def ours_to_saelens(x, tmp: Path) -> list[bool]:
    import actspace as acts
    from sae_lens import SAE as SLSAE
    kinds = {"relu": dict(l1_coeff=1e-3), "topk": dict(k=8), "batchtopk": dict(k=8),
             "jumprelu": dict(l0_target=8), "matryoshka": dict(k=8),
             "gated": dict(l1_coeff=1e-3)}
    oks = []
    for kind, kw in kinds.items():
        sae = acts.train_sae(x, kind=kind, d_sae=M, batch_size=B, steps=30, lr=3e-3, seed=0,
                             progress=False, checkpoint_every=0, **kw).sae
        path = tmp / f"ours_{kind}"
        sae.save(path)
        theirs = SLSAE.load_from_disk(str(path))
        oks.append(compare(f"actspace {kind} -> sae_lens {type(theirs).__name__}",
                           acts.SAE.load(path), theirs, x[:512]))
    return oks


def saelens_to_ours(x, tmp: Path) -> list[bool]:
    import actspace as acts
    import sae_lens as sl
    from sae_lens import SAE as SLSAE
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer
    archs = {
        "standard": (sl.StandardTrainingSAE, sl.StandardTrainingSAEConfig, {}),
        "topk": (sl.TopKTrainingSAE, sl.TopKTrainingSAEConfig, dict(k=8)),
        "batchtopk": (sl.BatchTopKTrainingSAE, sl.BatchTopKTrainingSAEConfig, dict(k=8)),
        "jumprelu": (sl.JumpReLUTrainingSAE, sl.JumpReLUTrainingSAEConfig, {}),
        "gated": (sl.GatedTrainingSAE, sl.GatedTrainingSAEConfig, {}),
        "matryoshka_batchtopk": (sl.MatryoshkaBatchTopKTrainingSAE,
                                 sl.MatryoshkaBatchTopKTrainingSAEConfig,
                                 dict(k=8, matryoshka_widths=[32, 64, M])),
    }
    oks = []
    for name, (cls, cfg_cls, kw) in archs.items():
        torch.manual_seed(0)
        sae = cls(cfg_cls(d_in=D, d_sae=M, dtype="float32", device="cpu", **kw))
        tr = SAETrainer(SAETrainerConfig(total_training_samples=30 * B,
                                         train_batch_size_samples=B, lr=3e-3, lr_end=3e-4,
                                         device="cpu"), sae, data_provider=iter(()))
        for i in range(30):
            tr.step(x[(i * B) % (x.shape[0] - B):][:B])
            tr.n_training_steps += 1
        with torch.no_grad():        # biases off zero, so a dropped bias would show
            for pname, p in sae.named_parameters():
                if pname.startswith("b_"):
                    p.add_(0.01 * torch.randn_like(p))
        # the reference: sae-lens' own inference SAE (the training layouts of BatchTopK and
        # Matryoshka are not loadable by SAE.load_from_disk, only by TrainingSAE's)
        sae.save_inference_model(str(tmp / f"ref_{name}"))
        theirs = SLSAE.load_from_disk(str(tmp / f"ref_{name}"))
        for how in ("save_model", "save_inference_model"):
            path = tmp / f"theirs_{name}_{how}"
            getattr(sae, how)(str(path))
            try:
                ours = acts.SAE.load(path)
            except Exception as e:  # noqa: BLE001  (reported, counted as a failure)
                print(f"FAIL sae_lens {name} ({how}) -> actspace: {type(e).__name__}: {e}")
                oks.append(False)
                continue
            oks.append(compare(f"sae_lens {name} ({how}) -> actspace {ours.kind}",
                               ours, theirs, x[:512]))
    return oks


def main():
    torch.manual_seed(0)
    x = data()
    with tempfile.TemporaryDirectory() as t:
        oks = ours_to_saelens(x, Path(t)) + saelens_to_ours(x, Path(t))
    print(f"{sum(oks)}/{len(oks)} cases agree")
    sys.exit(0 if all(oks) else 1)


if __name__ == "__main__":
    main()
