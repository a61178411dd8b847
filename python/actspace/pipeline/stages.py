"""The stages of `actspace run`: capture -> stats -> (PCA, SNMF) -> SAE train -> evaluate ->
encode -> feature cards -> steering -> report, all writing into one output directory.

Why here and not in the CLI: the same pipeline runs from `actspace run CONFIG`,
`actspace demo` and Python (`run_pipeline(cfg, out_dir)`). Each stage is wrapped by
markers.run_stage, so a rerun skips what finished; the model is loaded only when a stage
that needs it actually runs (a rerun of a finished directory loads nothing).

Layout of OUT: config.json, stores/<hookpoint>/ (activation stores with their stats),
stats/<hookpoint>.json, pca/<hookpoint>/, snmf/<hookpoint>/, sae/<hookpoint>/ (training
dir: sae/, history.json), eval/<hookpoint>.json, latents/<hookpoint>/ (latent store,
top_examples.json), cards/<hookpoint>.json, steer/ (vector, sweep.json), attribution/
(top.json), stages/,
report.html.
"""
from __future__ import annotations

import glob
import itertools
import json
import os

from .._io import remove_stale_temporaries
from .config import resolve_config, resolve_model_path
from .markers import done_stages, read_marker, run_stage, write_json_atomic
from .summaries import feature_cards, layer_summary


def _dirname(hp: str) -> str:
    from ..capture.store import hookpoint_dirname

    return hookpoint_dirname(hp)


class _Context:
    """Lazily loaded model, tokenizer and texts shared by the stages of one run."""

    def __init__(self, cfg: dict, out: str, progress: bool):
        self.cfg, self.out, self.progress = cfg, out, progress
        self._model = self._tok = None

    def _load(self):
        import torch
        import transformers

        m = self.cfg["model"]
        path = resolve_model_path(m["path"])
        conf = transformers.AutoConfig.from_pretrained(path)
        archs = getattr(conf, "architectures", None) or []
        causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
        cls = transformers.AutoModelForCausalLM if causal else transformers.AutoModel
        dtype = getattr(torch, m["dtype"])
        model = cls.from_pretrained(path, dtype=dtype)
        self._model = model.to(device=m["device"], dtype=dtype).eval()   # also for old HF

    @property
    def model(self):
        if self._model is None:
            self._load()
        return self._model

    @property
    def tokenizer(self):
        """Loaded on its own (cheap): the stats stage names tokens without the model."""
        if self._tok is None:
            import transformers

            tok = transformers.AutoTokenizer.from_pretrained(
                resolve_model_path(self.cfg["model"]["path"]))
            if tok.pad_token_id is None and tok.eos_token is not None:
                tok.pad_token = tok.eos_token
            self._tok = tok
        return self._tok

    def texts(self, limit: int | None = None):
        """The documents as a lazy iterator (at most texts.max_docs, and at most limit), so
        memory does not grow with the corpus; the order is stable, for resume."""
        t = self.cfg["texts"]
        src = t["source"]
        if src == "pydoc":
            from pydoc_data.topics import topics
            docs = (topics[k] for k in sorted(topics))
        elif isinstance(src, list):
            docs = iter(src)
        else:
            from ..capture.texts import iter_texts
            docs = iter_texts(src, field_name=t["field"])
        caps = [n for n in (t["max_docs"], limit) if n is not None]
        return itertools.islice(docs, min(caps)) if caps else docs

    def store(self, hp: str):
        from ..capture.store import ActivationStore

        return ActivationStore.open(os.path.join(self.out, "stores", _dirname(hp)))

    def pretrained(self, hp: str) -> str | None:
        """The spec of the pretrained SAE used at hp (sae.pretrained), or None: train one."""
        pre = self.cfg["sae"]["pretrained"]
        if pre is None or isinstance(pre, str):
            return pre
        if hp not in pre:
            raise ValueError(f"config: sae.pretrained has no SAE for hookpoint {hp!r} "
                             f"(has {sorted(pre)})")
        return pre[hp]

    def sae(self, hp: str):
        from ..decompose.sae import SAE

        # on the model's device: eval, encode and cards run where the model runs
        spec = self.pretrained(hp)
        return SAE.load(spec or os.path.join(self.out, "sae", _dirname(hp), "sae"),
                        device=self.cfg["model"]["device"])


# the config keys (sections or "section.key") whose values each kind of stage's outputs
# depend on; model.device is in none: it says where stages run, not what they compute
_MODEL = ("model.path", "model.dtype")
_STAGE_INPUTS = {
    "capture": (*_MODEL, "texts", "hookpoints", "layers", "capture", "stats.covariance"),
    "stats": ("stats",),
    "pca": ("pca",),
    "snmf": ("snmf", "seed"),
    "train": ("sae",),
    "eval": ("sae", "texts", "capture.max_length"),
    "encode": ("sae", "latents"),
    "cards": ("latents",),
    "steer": (*_MODEL, "steering"),
    "attribution": (*_MODEL, "sae", "attribution"),
    "report": (),
}


def _get(cfg: dict, key: str):
    for part in key.split("."):
        cfg = cfg.get(part) if isinstance(cfg, dict) else None
    return cfg


def _capture_started(out: str) -> bool:
    """Whether an unfinished capture already stored rows (a store manifest with shards)."""
    for p in glob.glob(os.path.join(out, "stores", "*", "manifest.json")):
        with open(p, encoding="utf-8") as f:
            if json.load(f).get("shards"):
                return True
    return False


def check_config(out: str, cfg: dict) -> None:
    """A directory holds one run: refuse a config that differs from OUT/config.json in a key
    a finished stage read (its outputs would no longer match the config), or a capture that
    already stored rows reads (it resumes by appending). Keys read only by unfinished
    stages may change (a typo in `steering` fixed after capture and training finished):
    config.json is then rewritten and the rerun continues with them."""
    p = os.path.join(out, "config.json")
    new = json.loads(json.dumps(cfg))
    old = None
    if os.path.isfile(p):
        with open(p, encoding="utf-8") as f:
            old = json.load(f)
    if old == new:
        return
    if old is not None:
        done = {r["stage"].split("/")[0] for r in done_stages(out)}
        if _capture_started(out):    # a resumed capture appends to what it wrote
            done.add("capture")
        done = sorted(done)
        keys = sorted({k for st in done for k in _STAGE_INPUTS.get(st, tuple(new))})
        changed = [k for k in keys if _get(old, k) != _get(new, k)]
        if changed:
            raise ValueError(
                f"out_dir {out} holds a run of a different config: {', '.join(changed)} "
                f"differ from {p}, and the finished stages ({', '.join(done)}) used them; "
                "use a new directory or restore those values")
    os.makedirs(out, exist_ok=True)
    write_json_atomic(p, new)


def _capture(ctx: _Context) -> dict:
    from ..model.hookpoints import layer_hookpoint
    from ..capture.job import capture_to_store

    cfg, c = ctx.cfg, ctx.cfg["capture"]
    hps = cfg["hookpoints"] or [layer_hookpoint(ctx.model, i) for i in cfg["layers"]]
    res = capture_to_store(ctx.model, ctx.tokenizer, ctx.texts(), hps,
                           os.path.join(ctx.out, "stores"), batch_size=c["batch_size"],
                           max_length=c["max_length"], max_tokens=c["max_tokens"],
                           windows=c["windows"], stats=True,
                           covariance=cfg["stats"]["covariance"], shard_rows=c["shard_rows"],
                           progress=ctx.progress)
    hps = list(res["stores"])
    return {"hookpoints": hps, "rows": len(ctx.store(hps[0])),
            "resumed_from_doc": res["resumed_from_doc"]}


def _stats(ctx: _Context, hp: str) -> dict:
    s = layer_summary(ctx.store(hp), ctx.cfg["stats"], tokenizer=ctx.tokenizer)
    write_json_atomic(os.path.join(ctx.out, "stats", _dirname(hp) + ".json"), s)
    return {"alpha": s.get("alpha"), "massive_channels": len(s["massive"]["channels"]),
            "norm_mean": s["norm"]["mean"]}


def _pca(ctx: _Context, hp: str) -> dict:
    from ..decompose.pca import PCA

    pca = PCA.from_stats(ctx.store(hp).stats, ctx.cfg["pca"]["n_components"])
    os.makedirs(os.path.join(ctx.out, "pca"), exist_ok=True)
    pca.save(os.path.join(ctx.out, "pca", _dirname(hp)))
    return {"explained_variance": float(pca.explained_variance_ratio_.sum())}


def _snmf(ctx: _Context, hp: str) -> dict:
    import torch

    from ..decompose.snmf import SNMF

    c, store = ctx.cfg["snmf"], ctx.store(hp)
    # a seeded shuffled sample of max_rows rows [n, d]: SNMF fits in memory
    x = next(store.iter_batches(c["max_rows"], shuffle=True, seed=ctx.cfg["seed"],
                                dtype=torch.float32))
    model = SNMF(c["n_components"]).fit(x, n_iter=c["n_iter"])
    os.makedirs(os.path.join(ctx.out, "snmf"), exist_ok=True)
    model.save(os.path.join(ctx.out, "snmf", _dirname(hp)))
    return {"rel_error": float(model.history_[-1]) if model.history_ else None}


def sae_train_config(cfg: dict, hp: str, out_dir: str, progress: bool = True):
    """The TrainConfig of the resolved config's sae section for hookpoint hp: the one place
    the pipeline's keys map to training options (the kinds' options pass through)."""
    from ..decompose.kinds import all_options
    from ..decompose.train_config import TrainConfig

    s = cfg["sae"]
    return TrainConfig(
        kind=s["kind"], d_sae=s["d_sae"],
        expansion_factor=None if s["d_sae"] else s["expansion_factor"], k=s["k"],
        hookpoint=hp, batch_size=s["batch_size"], epochs=s["epochs"], lr=s["lr"],
        seed=s["seed"], out_dir=out_dir, log_every=s["log_every"],
        dead_tokens=s["dead_tokens"], checkpoint_every=s["checkpoint_every"],
        device=cfg["model"]["device"], progress=progress,
        kind_options={n: s[n] for n in all_options()})


def _use_pretrained(ctx: _Context, hp: str, spec: str) -> dict:
    """The train stage of a pretrained SAE: load it (downloading only its files once),
    check it reads this hookpoint's width, record where it came from."""
    sae = ctx.sae(hp)
    d = ctx.store(hp).d
    if sae.d_in != d:
        raise ValueError(f"config: sae.pretrained {spec!r} reads d_in={sae.d_in}, but "
                         f"hookpoint {hp!r} has d={d}")
    info = {"pretrained": spec, "kind": sae.kind, "d_sae": sae.d_sae,
            "commit": sae.provenance.get("commit"), "provenance": sae.provenance}
    write_json_atomic(os.path.join(ctx.out, "sae", _dirname(hp), "pretrained.json"), info)
    return {k: v for k, v in info.items() if k != "provenance"}


def _train(ctx: _Context, hp: str) -> dict:
    from ..decompose.train import train_sae

    spec = ctx.pretrained(hp)
    if spec is not None:
        return _use_pretrained(ctx, hp, spec)
    res = train_sae(ctx.store(hp), sae_train_config(
        ctx.cfg, hp, os.path.join(ctx.out, "sae", _dirname(hp)), ctx.progress))
    last = res.history[-1] if res.history else {}
    return {"steps": last.get("step"), "fvu": last.get("fvu"), "l0": last.get("l0")}


def _evaluate(ctx: _Context, hp: str) -> dict:
    from ..decompose.evaluate import evaluate_sae, save_json

    texts = list(ctx.texts(limit=16))
    res = evaluate_sae(ctx.sae(hp), ctx.store(hp), model=ctx.model, tokenizer=ctx.tokenizer,
                       texts=texts, hookpoint=hp,
                       max_length=ctx.cfg["capture"]["max_length"])
    os.makedirs(os.path.join(ctx.out, "eval"), exist_ok=True)
    save_json(res, os.path.join(ctx.out, "eval", _dirname(hp) + ".json"))
    rec = res.get("reconstruction", {})
    return {"fvu": rec.get("fvu"), "l0": rec.get("l0")}


def _encode(ctx: _Context, hp: str) -> dict:
    from ..decompose.latents import encode_store

    lat = ctx.cfg["latents"]
    st = encode_store(ctx.sae(hp), ctx.store(hp), os.path.join(ctx.out, "latents", _dirname(hp)),
                      batch_size=lat["batch_size"], context=lat["context"],
                      tokenizer=ctx.tokenizer, top_t=lat["top_t"], progress=ctx.progress)
    return {"dead": int(st.dead().sum()), "d_sae": st.d_sae}


def _cards(ctx: _Context, hp: str) -> dict:
    cards = feature_cards(ctx.sae(hp), ctx.store(hp),
                          os.path.join(ctx.out, "latents", _dirname(hp)), ctx.tokenizer,
                          ctx.cfg["latents"]["n_cards"])
    write_json_atomic(os.path.join(ctx.out, "cards", _dirname(hp) + ".json"), cards)
    return {"cards": len(cards["cards"])}


def _steer(ctx: _Context) -> dict:
    from ..model.hookpoints import layer_hookpoint, num_layers
    from ..steer.sweep import steering_sweep
    from ..steer.vector import SteeringVector

    st = ctx.cfg["steering"]
    model, tok = ctx.model, ctx.tokenizer
    hp = st["hookpoint"] or layer_hookpoint(model, st["layer"] if st["layer"] is not None
                                            else num_layers(model) // 2)
    vec = SteeringVector.from_contrast(model, tok, st["positive"], st["negative"],
                                       hookpoint=hp, method=st["method"])
    # target effect: projection of the final hidden state on the same contrast read at the
    # last layer, i.e. how far the output moved towards "positive"
    last = layer_hookpoint(model, -1)
    probe = SteeringVector.from_contrast(model, tok, st["positive"], st["negative"],
                                         hookpoint=last, method="mean")[last]
    rows = steering_sweep(model, tok, vec, st["alphas"], neutral_texts=st["neutral"],
                          target={"probe": probe}, alpha_units=st["alpha_units"],
                          progress=ctx.progress)
    d = os.path.join(ctx.out, "steer")
    os.makedirs(d, exist_ok=True)
    vec.save(os.path.join(d, "vector"))
    sweep = {"hookpoint": hp, "alpha_units": st["alpha_units"], "rows": list(rows)}
    if type(model).__name__.endswith(("ForCausalLM", "LMHeadModel")):
        sweep["samples"] = _steered_samples(model, tok, vec, st)
    write_json_atomic(os.path.join(d, "sweep.json"), sweep)
    return {"hookpoint": hp, "points": len(rows)}


def _attribute(ctx: _Context, sae_hps: list[str]) -> dict:
    from ..attribution.summary import attribution_summary

    at = ctx.cfg["attribution"]
    hps = at["hookpoints"] or sae_hps
    saes = {hp: ctx.sae(hp) for hp in hps}
    summary = attribution_summary(ctx.model, ctx.tokenizer, at, saes)
    write_json_atomic(os.path.join(ctx.out, "attribution", "top.json"), summary)
    return {"prompts": len(at["prompts"]), "hookpoints": len(hps)}


def _steered_samples(model, tok, vec, st, n_prompts: int = 3, new_tokens: int = 40):
    """Greedy continuations of the first neutral prompts, unsteered and at the largest
    alpha of the sweep (causal LMs): what steering does to generated text."""
    import torch

    alpha = max(st["alphas"])
    out = []
    for prompt in st["neutral"][:n_prompts]:
        enc = tok([prompt], return_tensors="pt").to(model.device)
        row = {"prompt": prompt}
        for key, a in (("plain", 0.0), ("steered", alpha)):
            with torch.no_grad(), vec.apply(model, a, alpha_units=st["alpha_units"]):
                ids = model.generate(**enc, max_new_tokens=new_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id or tok.eos_token_id)
            row[key] = tok.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        out.append({**row, "alpha": alpha})
    return out


def _report(ctx: _Context) -> dict:
    from ..report import write_report

    path = write_report(ctx.out)
    return {"path": os.path.relpath(path, ctx.out)}


def run_pipeline(cfg: dict, out_dir, *, progress: bool = True, log=print) -> list[dict]:
    """Run every stage of the resolved config cfg (see config.resolve_config) into out_dir,
    skipping stages already marked done. Returns one record per stage (see run_stage)."""
    out = os.fspath(out_dir)
    cfg = resolve_config(cfg)          # every key checked before anything is written
    check_config(out, cfg)
    # temporaries of an earlier run that was killed mid-write (pids of dead processes)
    remove_stale_temporaries(out, recursive=True)
    ctx = _Context(cfg, out, progress)
    recs = [run_stage(out, "capture", lambda: _capture(ctx), log)]
    hps = recs[0]["info"]["hookpoints"]
    sae_hps = cfg["sae"]["hookpoints"] or hps if cfg["sae"] is not None else []
    for hp in sae_hps:
        if hp not in hps:
            raise ValueError(f"config: sae.hookpoints has {hp!r}, not among the captured "
                             f"hookpoints {hps}")
    if cfg["sae"] is not None and isinstance(cfg["sae"]["pretrained"], str) and len(sae_hps) != 1:
        raise ValueError(f"config: sae.pretrained names one SAE, but there are {len(sae_hps)} "
                         f"SAE hookpoints {sae_hps}; set sae.hookpoints to one, or give "
                         "sae.pretrained as {hookpoint: spec}")
    plan = [(f"stats/{_dirname(hp)}", lambda hp=hp: _stats(ctx, hp)) for hp in hps]
    if cfg["pca"] is not None:
        plan += [(f"pca/{_dirname(hp)}", lambda hp=hp: _pca(ctx, hp)) for hp in hps]
    if cfg["snmf"] is not None:
        plan += [(f"snmf/{_dirname(hp)}", lambda hp=hp: _snmf(ctx, hp)) for hp in hps]
    for hp in sae_hps:
        name = _dirname(hp)
        plan += [(f"train/{name}", lambda hp=hp: _train(ctx, hp)),
                 (f"eval/{name}", lambda hp=hp: _evaluate(ctx, hp)),
                 (f"encode/{name}", lambda hp=hp: _encode(ctx, hp)),
                 (f"cards/{name}", lambda hp=hp: _cards(ctx, hp))]
    if cfg["steering"] is not None:
        plan.append(("steer", lambda: _steer(ctx)))
    if cfg["attribution"] is not None:
        for hp in cfg["attribution"]["hookpoints"] or []:
            if hp not in sae_hps:
                raise ValueError(f"config: attribution.hookpoints has {hp!r}, which has no SAE "
                                 f"(sae.hookpoints: {sae_hps})")
        if not sae_hps:
            raise ValueError("config: attribution needs trained SAEs (an sae section)")
        plan.append(("attribution", lambda: _attribute(ctx, sae_hps)))
    plan.append(("report", lambda: _report(ctx)))
    for name, fn in plan:
        recs.append(run_stage(out, name, fn, log))
    return recs


def summary_table(recs: list[dict]) -> str:
    """A plain-text table: one line per stage with its status, seconds and key results."""
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = [f"{'stage':<34} {'status':<8} {'seconds':>8}  results", "-" * 78]
    for r in recs:
        info = ", ".join(f"{k}={fmt(v)}" for k, v in r["info"].items()
                         if not isinstance(v, (list, dict)))
        lines.append(f"{r['stage']:<34} {r['status']:<8} {r['seconds']:>8.1f}  {info}")
    return "\n".join(lines)


def stage_done(out_dir, name: str) -> bool:
    return read_marker(out_dir, name) is not None
