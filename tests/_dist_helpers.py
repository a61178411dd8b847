"""Helpers of the distributed tests: a real gloo rendezvous on loopback with processes
started by torch.multiprocessing, and the per-rank bodies of the tests (they must live in
an importable module for the spawn start method). Ranks report through files."""
from __future__ import annotations

import os
import socket

import torch


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world, store_file, done_dir, fn, args):
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(LOCAL_RANK=str(rank))
    # a FileStore: no rank hosts a TCP store server thread that could outlive the group
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            init_method=f"file://{store_file}")
    try:
        fn(*args)
        dist.barrier()       # nobody leaves while others still use the group
        open(os.path.join(done_dir, f"done.{rank}"), "w").close()
    finally:
        dist.destroy_process_group()


def spawn(fn, *args, world: int = 2) -> None:
    """Run fn(*args) on `world` ranks of a gloo process group; raises if any rank fails.

    A rank killed by a signal *after* every rank finished its body and the final barrier
    is torch's process teardown (gloo threads at interpreter exit, seen once in CI as
    "terminate called without an active exception"), not a failure of the code under
    test: it is reported as a warning. Any failure before that point still raises."""
    import tempfile
    import warnings

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        store_file = os.path.join(tmp, "store")
        try:
            mp.spawn(_entry, args=(world, store_file, tmp, fn, args), nprocs=world,
                     join=True)
        except mp.ProcessExitedException as e:
            done = all(os.path.exists(os.path.join(tmp, f"done.{r}")) for r in range(world))
            if not (done and e.signal_name):
                raise
            warnings.warn(f"rank teardown crashed after success: {e}", RuntimeWarning)


def texts(n=11):
    from pydoc_data.topics import topics

    return [topics[k][:300].replace("\n", " ") for k in sorted(topics)[:n]]


def load_tiny(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(model_dir).eval(),
            AutoTokenizer.from_pretrained(model_dir))


HOOKPOINTS = ["transformer.h.1", "transformer.h.0.mlp"]


# ---------------------------------------------------------------------- rank bodies
def capture_body(model_dir, out_dir, fail_after=None):
    """Capture texts() on this rank; with fail_after, first a run whose source dies after
    that many documents (a crash), then the same call again (the resume)."""
    import actspace as acts

    model, tok = load_tiny(model_dir)
    kw = dict(batch_size=3, max_length=48, shard_rows=40, covariance=True, progress=False)
    if fail_after is not None:
        def dying():
            for i, t in enumerate(texts()):
                if i == fail_after:
                    raise KeyboardInterrupt("simulated crash")
                yield t
        try:
            acts.capture_to_store(model, tok, dying(), HOOKPOINTS, out_dir, **kw)
        except KeyboardInterrupt:
            pass
        else:
            raise AssertionError("the dying source did not stop the job")
    r = acts.capture_to_store(model, tok, texts(), HOOKPOINTS, out_dir, **kw)
    torch.save(r, os.path.join(out_dir, f"result.r{r['world_size']}.{_rank()}.pt"))
    again = acts.capture_to_store(model, tok, texts(), HOOKPOINTS, out_dir, **kw)
    assert again["tokens"] == 0 and again["world_size"] == 2, again   # complete: nothing to do
    capped = acts.capture_to_store(model, tok, texts(), HOOKPOINTS[:1], out_dir + "-capped",
                                   max_tokens=101, **kw)
    assert capped["tokens"] == 101, capped


def stats_body(x, out_dir):
    """Each rank folds its interleaved rows of x, all-reduces, saves what it holds."""
    import actspace as acts

    r, w = _rank(), _world()
    st = acts.ActivationStats(x.shape[1], covariance=True, top_k=8)
    rows = torch.arange(r, x.shape[0], w)
    for part in torch.tensor_split(rows, 3):   # several updates per rank
        st.update(x[part], token_ids=part)
    st.all_reduce()
    st.save(os.path.join(out_dir, f"stats.{r}"))


def train_body(data_kind, data_path, out_dir, kw, stop_at=None):
    """train_sae on this rank's part of every global batch; saves this rank's SAE state.
    stop_at: first stop there (a checkpoint, as a kill), then resume to the end."""
    from actspace.decompose.train import train_sae

    import actspace as acts

    data = (acts.ActivationStore.open(data_path) if data_kind == "store"
            else torch.load(data_path))
    if stop_at is not None:
        train_sae(data, out_dir=out_dir, progress=False, max_steps=stop_at, **kw)
    res = train_sae(data, out_dir=out_dir, progress=False, **kw)
    sae, hist = res.sae, res.history
    torch.save({"state": sae.state_dict(), "history": hist},
               os.path.join(out_dir, f"rank{_rank()}.pt"))


def _rank():
    import torch.distributed as dist

    return dist.get_rank()


def _world():
    import torch.distributed as dist

    return dist.get_world_size()


# kind -> its own options in kinds_body (jumprelu twice: L0 coefficient and L0 target)
KIND_RUNS = [("batchtopk", {}), ("relu", {}), ("jumprelu", {}),
             ("jumprelu", {"l0_target": 4.0}), ("matryoshka", {"prefixes": [8, 16]}),
             ("gated", {})]


def kinds_body(out_dir):
    """Every SAE kind trains on 2 ranks and its state stays bit-identical across ranks."""
    import torch.distributed as dist

    from actspace.decompose.train import train_sae

    x = torch.randn(800, 16, generator=torch.Generator().manual_seed(0))
    for kind, opts in KIND_RUNS:
        res = train_sae(x, kind=kind, d_sae=32, k=4, batch_size=100, steps=5,
                        progress=False, log_every=1, **opts)
        sae, h = res.sae, res.history
        t = torch.cat([p.detach().flatten() for p in sae.state_dict().values()])
        g = [torch.zeros_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(g, t)
        assert all(torch.equal(g[0], gi) for gi in g), (kind, opts)
        if "l0_target" in opts:      # starts at the target (its FVU barely moves in 5 steps)
            assert abs(h[-1]["l0"] - opts["l0_target"]) < 1.5, (kind, opts, h)
        else:
            assert h[-1]["fvu"] < h[0]["fvu"], (kind, opts, h)
    if dist.get_rank() == 0:
        open(os.path.join(out_dir, "kinds.ok"), "w").close()


def shard_body(data_path, out_dir, kw, stop_at):
    """train_sae(shard_latents=True): stop at a checkpoint (a kill), resume, save the whole
    SAEs rank 0 returns (the others get None) and the shapes of each slice checkpoint."""
    from safetensors import safe_open

    from actspace.decompose.train import train_sae

    x = torch.load(data_path)
    train_sae(x, out_dir=out_dir, progress=False, max_steps=stop_at, shard_latents=True, **kw)
    res = train_sae(x, out_dir=out_dir, progress=False, shard_latents=True, **kw)
    saes, hist = res.saes, res.history
    name = f"checkpoint.rank{_rank()}-of-{_world()}.safetensors"
    with safe_open(os.path.join(out_dir, name), framework="pt") as f:
        shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys() if k.endswith("W_enc")}
    states = None if _rank() else [s.state_dict() for s in saes]   # whole on rank 0 only
    assert all(s is None for s in saes) if _rank() else all(
        s.W_enc.device.type == "cpu" for s in saes)
    torch.save({"states": states, "history": hist, "shapes": shapes},
               os.path.join(out_dir, f"rank{_rank()}.pt"))


def multi_body(model_dir, out_dir, kw):
    """train_sae(hookpoints=HOOKPOINTS) on the fly on this rank: one SAE (or sweep) per
    hookpoint from the same forward passes, each rank training on its slice of every global
    batch; saves {hookpoint: state} and the history per rank."""
    from actspace.decompose.train import train_sae

    model, tok = load_tiny(model_dir)
    res = train_sae(None, model=model, tokenizer=tok, texts=texts(), hookpoints=HOOKPOINTS,
                    progress=False, **kw)
    torch.save({"states": {h: s.state_dict() for h, s in res.by_hookpoint.items()},
                "history": res.history}, os.path.join(out_dir, f"rank{_rank()}.pt"))


def lockstep_sources(data_path):
    """The two tensor sources (hookpoints "a", "b") of the stores= tests, from data_path."""
    from actspace.decompose.train_data import TensorSource

    xs = torch.load(data_path)
    out = []
    for name, x in zip(("a", "b"), xs):
        s = TensorSource(x)
        s.hookpoint = name
        out.append(s)
    return out


def stores_body(data_path, out_dir, kw):
    """train_sae(stores=[a, b]) on this rank (sources read in lockstep, each rank training
    on its slice of every global batch); saves {hookpoint: state} per rank."""
    from actspace.decompose.train import train_sae

    res = train_sae(None, stores=lockstep_sources(data_path), progress=False, **kw)
    torch.save({"states": {h: s.state_dict() for h, s in res.by_hookpoint.items()},
                "history": res.history}, os.path.join(out_dir, f"rank{_rank()}.pt"))
