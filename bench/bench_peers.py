"""The same TopK SAE trained by actspace, by EleutherAI's sparsify and by SAELens: held-out
FVU and dead latents at equal steps, and training tokens/s, on this CPU.

Run it in a separate environment holding the peers (they are never dependencies of
actspace), with actspace importable from the checkout:

    python -m venv /tmp/peers && /tmp/peers/bin/pip install torch==2.13.0 eai-sparsify sae-lens
    PYTHONPATH=$PWD/python /tmp/peers/bin/python bench/bench_peers.py --cache /tmp/minilm_l3.pt

Data: all-MiniLM-L6-v2's layer-3 residual stream on the pydoc topics (tests/_minilm.py:
about 23.6k training tokens, 4.4k held out by whole documents); --cache is the .pt that
minilm_split(cache=...) writes (made once in an environment with transformers; this script
does not need transformers itself).

Every row trains a fresh SAE (width --d_sae, k --k) on batches of --batch rows drawn by
each epoch's permutation of the training set, seeded alike for every library:
  actspace          train_sae(kind="topk") with its defaults (Adam, warm-up, decay, AuxK)
  sparsify_adam     sparsify's SparseCoder (its init, encoder, loss, decoder-norm handling,
                    first-batch b_dec, AuxK as its Trainer computes it) under actspace's
                    optimizer and schedule: Adam, the same lr, warm-up, decay and
                    dead-latent window
  saelens_adam      SAELens' TopKTrainingSAE driven by its SAETrainer (its init, AuxK, grad
                    clipping) with the same lr, warm-up and linear decay, set in its config
  sparsify_default  sparsify's own recipe: Signum under schedule-free, its default lr
                    (5e-3/sqrt(M/2^14)), AuxK off
  saelens_default   SAELens' own recipe: constant lr (3e-4), no warm-up, no decay
Schedules that depend on the step budget get a separate run per budget; the two default
recipes have none, so one run is evaluated at each budget (schedule-free in its eval mode).
The dead fraction counts latents that never fire on the training set at the end.

Speed (--speed_rounds): each library trains --speed_steps steps per round, the libraries
interleaved round by round in this process; tokens/s is the median over rounds (the
actspace figure includes train_sae's per-call setup, which counts against it).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

import torch


# ------------------------------------------------------------------ data and schedule
def batches(x, batch, seed):
    """Endless [batch, d] batches: each epoch a fresh seeded permutation, ragged tail dropped."""
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(x.shape[0], generator=g)
        for a in range(0, x.shape[0] - batch + 1, batch):
            yield x[perm[a:a + batch]]


def actspace_schedule(steps):
    """actspace's defaults (decompose/train_loop.py): warm-up steps, decay steps."""
    from actspace.decompose.train_loop import default_warmup_steps
    return default_warmup_steps(steps), int(0.2 * steps)


def actspace_lr(a, steps):
    """--lr, or actspace's default for this width and step budget."""
    from actspace.decompose.train_loop import default_lr
    return a.lr or default_lr(a.d_sae, steps)


def lr_factor(step, steps):
    """actspace's schedule (train_loop.lr_at) as a multiplier of the base lr."""
    from actspace.decompose.train_loop import lr_at
    return lr_at(step, steps, 1.0, actspace_schedule(steps)[0], 0.2)


def fvu(x, x_hat):
    return float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


# ------------------------------------------------------------------ one runner per library
class Actspace:
    def __init__(self, d, a, seed):
        import actspace as acts
        self.acts, self.a, self.seed = acts, a, seed
        self.sae = None

    def train(self, x, steps):
        r = self.acts.train_sae(x, kind="topk", d_sae=self.a.d_sae, k=self.a.k,
                                batch_size=self.a.batch, steps=steps, lr=self.a.lr,
                                seed=self.seed, progress=False, checkpoint_every=0)
        self.sae = r.sae

    def resume(self, x, steps):           # speed rounds: keep training the same SAE
        if self.sae is None:
            return self.train(x, steps)
        self.acts.train_sae(x, saes=[self.sae], batch_size=self.a.batch, steps=steps,
                            lr=self.a.lr, b_dec_init=None, seed=self.seed, progress=False,
                            checkpoint_every=0)

    @torch.no_grad()
    def reconstruct(self, x):
        return self.sae(x)[0]

    @torch.no_grad()
    def fired(self, x):
        c = self.sae.encode(x)
        ok = (c.values > 0) & (c.indices >= 0)
        return c.indices[ok].long()


class Sparsify:
    """sparsify's SparseCoder stepped the way its Trainer steps it (trainer.py: b_dec from
    the first batch's mean, decoder rows renormalised before each forward, the gradient
    parallel to them removed before the step, loss fvu + auxk_alpha * auxk)."""

    def __init__(self, d, a, seed, recipe):
        from sparsify import SparseCoder, SparseCoderConfig
        torch.manual_seed(seed)
        self.sae = SparseCoder(d, SparseCoderConfig(num_latents=a.d_sae, k=a.k),
                               dtype=torch.float32)
        self.a, self.recipe = a, recipe
        M = a.d_sae
        if recipe == "default":
            from schedulefree import ScheduleFreeWrapper
            from sparsify.sign_sgd import SignSGD
            self.opt = ScheduleFreeWrapper(SignSGD([{"params": self.sae.parameters(),
                                                     "lr": 5e-3 / math.sqrt(M / 2 ** 14)}]),
                                           momentum=0.95)
            self.opt.train()
            self.auxk_alpha = 0.0       # sparsify's TrainConfig default
        else:
            self.opt = torch.optim.Adam(self.sae.parameters(), lr=0.0)  # lr set per step
            self.auxk_alpha = 1 / 32    # actspace's auxk_coeff
        self.since_fired = torch.zeros(M, dtype=torch.long)
        self.step_i, self.steps = 0, None
        # the adam rows follow actspace's recipe, dead-latent window included
        from actspace.decompose.train_loop import default_dead_tokens
        self.dead_tokens = default_dead_tokens(M, a.k)

    def train_steps(self, data, n, total):
        sae = self.sae
        for _ in range(n):
            xb = next(data)
            if self.step_i == 0:
                sae.b_dec.data = xb.mean(0)
            if self.recipe != "default":
                for g in self.opt.param_groups:
                    g["lr"] = actspace_lr(self.a, total) * lr_factor(self.step_i, total)
            sae.set_decoder_norm_to_unit_norm()
            dead = self.since_fired > self.dead_tokens if self.auxk_alpha > 0 else None
            out = sae(xb, dead_mask=dead)
            (out.fvu + self.auxk_alpha * out.auxk_loss).backward()
            sae.remove_gradient_parallel_to_decoder_directions()
            self.opt.step()
            self.opt.zero_grad()
            with torch.no_grad():
                self.since_fired += xb.shape[0]
                self.since_fired[out.latent_indices.flatten()] = 0
            self.step_i += 1

    def _eval_mode(self, on):
        if self.recipe == "default":
            self.opt.eval() if on else self.opt.train()

    @torch.no_grad()
    def reconstruct(self, x):
        self._eval_mode(True)
        try:
            return self.sae(x).sae_out
        finally:
            self._eval_mode(False)

    @torch.no_grad()
    def fired(self, x):
        self._eval_mode(True)
        try:
            e = self.sae.encode(x)
            return e.top_indices[e.top_acts > 0].long()
        finally:
            self._eval_mode(False)


class SAELens:
    def __init__(self, d, a, seed, recipe, steps):
        from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
        from sae_lens.config import SAETrainerConfig
        from sae_lens.training.sae_trainer import SAETrainer
        torch.manual_seed(seed)
        self.sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=a.d_sae, k=a.k,
                                                         dtype="float32", device="cpu"))
        if recipe == "default":
            kw = dict(lr=3e-4)
        else:
            warm, decay = actspace_schedule(steps)
            kw = dict(lr=actspace_lr(a, steps), lr_warm_up_steps=warm,
                      lr_decay_steps=decay)
        kw["lr_end"] = kw["lr"] / 10    # as its runner config sets it (used by cosine only)
        cfg = SAETrainerConfig(total_training_samples=steps * a.batch,
                               train_batch_size_samples=a.batch, device="cpu", **kw)
        self.trainer = SAETrainer(cfg, self.sae, data_provider=iter(()))

    def train_steps(self, data, n, total):
        t = self.trainer
        for _ in range(n):
            t.maybe_reset_sparsity()
            t.step(next(data))
            t.n_training_steps += 1     # as SAETrainer.fit does after each step

    @torch.no_grad()
    def _chunks(self, x, fn, size=2048):
        self.sae.eval()
        try:
            return [fn(x[a:a + size]) for a in range(0, x.shape[0], size)]
        finally:
            self.sae.train()

    def reconstruct(self, x):
        return torch.cat(self._chunks(x, lambda c: self.sae.decode(self.sae.encode(c))))

    def fired(self, x):
        return torch.cat(self._chunks(x, lambda c: (self.sae.encode(c) > 0).nonzero()[:, 1]))


# ------------------------------------------------------------------ measurements
def evaluate(r, x, x_test, M):
    fired = torch.zeros(M, dtype=torch.bool)
    for a in range(0, x.shape[0], 4096):
        fired[r.fired(x[a:a + 4096])] = True
    return {"fvu": fvu(x_test, r.reconstruct(x_test)), "dead": 1 - float(fired.float().mean())}


def quality(lib, x, x_test, a, seed):
    d, rows = x.shape[1], []
    budgets = sorted(a.steps)
    t0 = time.perf_counter()
    if lib == "actspace":
        for s in budgets:
            r, t = Actspace(d, a, seed), time.perf_counter()
            r.train(x, s)
            rows.append({"steps": s, **evaluate(r, x, x_test, a.d_sae),
                         "seconds": time.perf_counter() - t, "lib": lib})
            print(json.dumps(rows[-1]), flush=True)
    elif lib.endswith("_default"):      # no schedule: one run, evaluated at each budget
        r = (Sparsify(d, a, seed, "default") if lib.startswith("sparsify")
             else SAELens(d, a, seed, "default", budgets[-1]))
        data, done = batches(x, a.batch, seed), 0
        for s in budgets:
            r.train_steps(data, s - done, budgets[-1])
            done = s
            rows.append({"steps": s, **evaluate(r, x, x_test, a.d_sae),
                         "seconds": time.perf_counter() - t0, "lib": lib})
            print(json.dumps(rows[-1]), flush=True)
    else:
        for s in budgets:
            r = (Sparsify(d, a, seed, "adam") if lib.startswith("sparsify")
                 else SAELens(d, a, seed, "adam", s))
            t = time.perf_counter()
            r.train_steps(batches(x, a.batch, seed), s, s)
            rows.append({"steps": s, **evaluate(r, x, x_test, a.d_sae),
                         "seconds": time.perf_counter() - t, "lib": lib})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def speed(libs, x, a, seed):
    """Median tokens/s per library over interleaved rounds (round 0 is warm-up)."""
    d, n = x.shape[1], a.speed_steps
    total = n * (a.speed_rounds + 1)
    runners, data, times = {}, {}, {lib: [] for lib in libs}
    for lib in libs:
        if lib == "actspace":
            runners[lib] = Actspace(d, a, seed)
        elif lib.startswith("sparsify"):
            runners[lib] = Sparsify(d, a, seed, lib.split("_")[1])
        else:
            runners[lib] = SAELens(d, a, seed, lib.split("_")[1], total)
        data[lib] = batches(x, a.batch, seed)
    for rnd in range(a.speed_rounds + 1):
        for lib in libs:
            r, t = runners[lib], time.perf_counter()
            if lib == "actspace":
                r.resume(x, n)
            else:
                r.train_steps(data[lib], n, total)
            if rnd:
                times[lib].append(time.perf_counter() - t)
    out = {lib: n * a.batch / statistics.median(ts) for lib, ts in times.items()}
    print(json.dumps({"tokens_per_s": out,
                      "vs_actspace": {lib: out["actspace"] / v for lib, v in out.items()}}),
          flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--libs", nargs="+", default=["actspace", "sparsify_adam", "saelens_adam",
                                                  "sparsify_default", "saelens_default"])
    ap.add_argument("--steps", type=int, nargs="+", default=[100, 300, 1000])
    ap.add_argument("--d_sae", type=int, default=6144)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--lr", type=float, default=None,
                    help="default: actspace's default_lr(d_sae, steps) for the adam rows")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--speed_rounds", type=int, default=5)
    ap.add_argument("--speed_steps", type=int, default=5)
    ap.add_argument("--skip_quality", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default="/tmp/train_minilm_l3.pt")
    ap.add_argument("--out", default="bench/out/peers.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    data = torch.load(a.cache)
    x, x_test = data["train"].float(), data["test"].float()
    result = {"args": vars(a), "load_before": os.getloadavg()}
    if a.speed_rounds:
        result["speed"] = speed(a.libs, x, a, a.seed)
    if not a.skip_quality:
        result["quality"] = [row for lib in a.libs for row in quality(lib, x, x_test, a, a.seed)]
    result["load_after"] = os.getloadavg()
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
