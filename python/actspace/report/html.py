"""`actspace report OUTDIR`: one self-contained HTML page from a pipeline output directory.

Why no scripts at all: the page is static HTML + CSS with images as data URIs, so it opens
offline, from a mail attachment or a sandboxed viewer, and data strings can never run as
code. Every string that comes from data (token texts, hookpoint names, config values) goes
through html.escape, so a token `<script>` or a quote renders as text. A token is also
isolated in <bdi> with its bidirectional controls shown as escapes (a U+202E in one token
cannot reverse the tokens after it) and cut to TOKEN_CHARS characters with a visible "…"
(the whole text in its title), so one 5000-character token cannot widen a table.
"""
from __future__ import annotations

import glob
import json
import math
import os
import re
from html import escape

from .._io import read_json, remove_stale_temporaries, write_atomic
from . import explanations, figures
from .attribution import attribution_section, card_anchor

TOKEN_CHARS = 40          # a token's characters shown in the page; the rest in its title
# explicit directional formatting characters (Unicode bidi algorithm, UAX #9): embeddings,
# overrides and isolates, plus the implicit marks; shown as \uXXXX instead of obeyed
_BIDI = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1100px;
padding:0 1.2em 3em;color:#222;line-height:1.4}
h1{margin-top:.6em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
td,th{border:1px solid #ddd;padding:.2em .6em;text-align:left}th{background:#f4f4f4}
td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto;display:block;margin:.4em 0}
.row{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
.card{border:1px solid #ccc;border-radius:6px;padding:.5em .8em;margin:.6em 0;background:#fcfcfc}
.ex{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em;margin:.25em 0;
white-space:pre-wrap;word-break:break-word}
.ex span{border-radius:2px}.ex .c{outline:1px solid #c00}
.muted{color:#777;font-size:.85em}
"""


def _text(v) -> str:
    """A value as display text (floats to 4 significant digits), not yet escaped."""
    if isinstance(v, float):
        return "nan" if not math.isfinite(v) else f"{v:.4g}"
    return str(v)


class _Html(str):
    """Markup already built from escaped parts: _fmt passes it through unchanged."""


def _fmt(v) -> str:
    """A value as HTML: _text escaped, exactly once (build composite cells from _text)."""
    return v if isinstance(v, _Html) else escape(_text(v))


def _visible_bidi(t: str) -> str:
    return _BIDI.sub(lambda m: f"\\u{ord(m.group()):04x}", t)


def _token(t: str, title: str = "") -> _Html:
    """Token text t as isolated, escaped HTML: bidi controls shown as \\uXXXX, cut to
    TOKEN_CHARS characters plus "…" when longer (the whole token in the title, after
    `title` when given)."""
    shown = _visible_bidi(t)
    full = shown
    if len(shown) > TOKEN_CHARS:
        shown = shown[:TOKEN_CHARS] + "…"
        title = f"{title}: {full}" if title else full
    attr = f' title="{escape(title)}"' if title else ""
    return _Html(f"<bdi{attr}>{escape(shown)}</bdi>")


def _img(uri: str, alt: str) -> str:
    return f'<img class="plot" src="{uri}" alt="{escape(alt)}">'


def _table(rows: list[tuple], header: tuple | None = None) -> str:
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{escape(str(h))}</th>" for h in header) + "</tr>")
    for r in rows:
        out.append("<tr>" + "".join(
            f'<td class="num">{_fmt(c)}</td>' if isinstance(c, (int, float)) and not
            isinstance(c, bool) else f"<td>{_fmt(c)}</td>" for c in r) + "</tr>")
    return "".join(out) + "</table>"


def _flatten(d: dict, prefix: str = "") -> list[tuple]:
    rows = []
    for k, v in d.items():
        if isinstance(v, dict):
            rows += _flatten(v, f"{prefix}{k}.")
        elif not isinstance(v, list):
            rows.append((f"{prefix}{k}", v))
    return rows


def _load(path):
    return read_json(path, "report input")


def _by_hookpoint(out: str, sub: str) -> dict:
    """{file stem: parsed JSON} of OUT/sub/*.json (ordered later, by _ordered)."""
    return {os.path.basename(p)[:-5]: _load(p)
            for p in glob.glob(os.path.join(out, sub, "*.json"))}


def _natural_key(name: str) -> list:
    """Sort key comparing runs of digits as numbers: model.layers.2 before model.layers.10."""
    return [int(p) if i % 2 else p for i, p in enumerate(re.split(r"([0-9]+)", name))]


def _run_order(out: str, cfg: dict) -> list[str]:
    """Directory names of the run's hookpoints in the run's own order: the capture
    marker's list (names resolved from layers or globs), else config.json's hookpoints."""
    from ..capture.store import hookpoint_dirname

    p = os.path.join(out, "stages", "capture.json")
    hps = _load(p).get("info", {}).get("hookpoints") if os.path.isfile(p) else None
    hps = hps or cfg.get("hookpoints") or []
    return [hookpoint_dirname(h) for h in hps if isinstance(h, str)]


def _ordered(names, order: list[str]) -> list[str]:
    """names (hookpoint directory names) in run order; others after, naturally sorted."""
    rank = {n: i for i, n in enumerate(order)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), _natural_key(n)))


def _highlight(ex: dict) -> str:
    """Tokens of one example as spans shaded by the latent's activation (escaped text)."""
    top = max([a for a in ex["acts"] if a > 0] or [1.0])
    spans = []
    for i, (t, a) in enumerate(zip(ex["tokens"], ex["acts"])):
        alpha = max(0.0, min(1.0, a / top))
        cls = ' class="c"' if i == ex["centre"] else ""
        spans.append(f'<span{cls} style="background:rgba(255,120,0,{alpha:.2f})">'
                     f'{_token(t, f"{a:.3g}")}</span>')
    return f'<div class="ex"><b>{ex["value"]:.3g}</b> {"".join(spans)}</div>'


def _layers_section(stats: dict) -> str:
    if not stats:
        return ""
    layers = list(stats.values())
    parts = ["<h2>Activation statistics</h2>", _img(figures.norm_profile(layers), "norm profile")]
    rows = [(s["hookpoint"], s["rows"], s["d"], s["norm"]["mean"], s["norm"]["std"],
             s.get("alpha", float("nan")), s.get("effective_rank", float("nan")),
             len(s["massive"]["channels"]), s["nonfinite"]) for s in layers]
    parts.append(_table(rows, ("hookpoint", "tokens", "d", "norm mean", "norm std",
                               "power-law α", "effective rank", "massive channels",
                               "non-finite")))
    for s in layers:
        parts.append(f"<h3>{escape(s['hookpoint'])}</h3><div class='row'>")
        parts.append(_img(figures.channel_magnitudes(s), f"channel magnitudes {s['hookpoint']}"))
        if "spectrum" in s:
            parts.append(_img(figures.spectrum(s), f"spectrum {s['hookpoint']}"))
        parts.append("</div>")
        parts.append(_massive(s))
    return "".join(parts)


def _massive(s: dict) -> str:
    """The massive-activation threshold, the channels above it and the tokens of largest
    |activation|: the tokens are listed whether or not any is massive, so a layer without
    massive activations still shows how far its largest values are from the threshold
    (older summaries without top_tokens: the massive tokens only)."""
    ratio, ref = float(s["massive_ratio"]), float(s["massive"]["reference"])
    mc = s["massive"]["channels"]
    parts = [f"<p class='muted'>Massive: |activation| above {_fmt(ratio)} × the median "
             f"channel RMS ({_fmt(ref)}), i.e. above {_fmt(ratio * ref)}; "
             f"{len(mc)} channel(s) exceed it.</p>"]
    if mc:
        parts.append(_table([(c["channel"], c["absmax"], c["ratio"]) for c in mc[:10]],
                            ("massive channel", "|max|", "× median RMS")))
    # quoted (JSON string syntax): a space or newline token stays visible
    rows = [(_token(json.dumps(t["token"], ensure_ascii=False)) if "token" in t
             else f"#{t['token_id']}",
             t["channel"], t["value"], t["ratio"], "massive" if t["ratio"] > ratio else "")
            for t in s.get("top_tokens", s["massive"]["tokens"])]
    if rows:
        parts.append(_table(rows, ("top token", "channel", "|value|", "× median RMS",
                                   "above threshold")))
    return "".join(parts)


def _sae_section(out: str, name: str, evals: dict, cards: dict) -> str:
    parts = [f"<h3>SAE at {escape(name)}</h3>"]
    pre_path = os.path.join(out, "sae", name, "pretrained.json")
    if os.path.isfile(pre_path):      # a pretrained SAE (sae.pretrained): where it came from
        pre = _load(pre_path)
        prov = pre.get("provenance") or {}
        where = (f"{prov['repo']}@{str(prov.get('commit'))[:12]} {prov.get('path', '')}"
                 if prov.get("repo") else pre.get("pretrained"))
        parts.append(f"<p class='muted'>pretrained {escape(str(pre.get('kind')))}, "
                     f"d_sae={_fmt(pre.get('d_sae'))}, from <code>{escape(str(where))}</code>"
                     "</p>")
    hist_path = os.path.join(out, "sae", name, "history.json")
    if os.path.isfile(hist_path):
        hist = _load(hist_path)
        if hist:
            last = hist[-1]
            parts.append(f"<p class='muted'>{escape(str(last.get('kind')))}, "
                         f"d_sae={_fmt(last.get('d_sae'))}, k={_fmt(last.get('k'))}, "
                         f"{_fmt(last.get('step'))} steps</p>")
            parts.append(_img(figures.training_curves(hist), f"training curves {name}"))
    if name in evals:
        parts.append("<h4>Evaluation</h4>" + _table(_flatten(evals[name]), ("metric", "value")))
    c = cards.get(name)
    expl = explanations.load(out, name)
    if c:
        parts.append(_img(figures.firing_histogram(c["frequency"]), f"firing frequency {name}"))
        parts.append("<h4>Feature cards</h4>")
        for card in c["cards"]:
            parts.append(f"<div class='card' id='{card_anchor(name, card['latent'])}'>"
                         f"<b>latent {card['latent']}</b> "
                         f"<span class='muted'>fires on {card['frequency'] * 100:.3g}% of "
                         f"tokens, mean activation {card['mean_activation']:.3g}</span>")
            parts.append(explanations.card_html(expl, card["latent"]))
            parts += [_highlight(ex) for ex in card["examples"]]
            parts.append("</div>")
    parts.append(explanations.table_html(expl))
    return "".join(parts)


def _steer_section(out: str) -> str:
    p = os.path.join(out, "steer", "sweep.json")
    if not os.path.isfile(p):
        return ""
    sw = _load(p)
    rows = sw["rows"]
    cost = "kl" if rows and "kl" in rows[0] else "cos_change"
    keys = [k for k in ("alpha", "effect", "kl", "perplexity", "cos_change") if rows and k in rows[0]]
    return ("<h2>Steering</h2>"
            f"<p>Direction read at <code>{escape(sw['hookpoint'])}</code>; alpha in "
            f"{escape(sw['alpha_units'])} units. Effect: projection of the final hidden state "
            "on the same contrast at the last layer.</p>"
            + _img(figures.steering(rows, cost, sw["alpha_units"]), "steering sweep")
            + _table([tuple(r[k] for k in keys) for r in rows], tuple(keys))
            + (_table([(s["prompt"], s["plain"], s["steered"]) for s in sw["samples"]],
                      ("prompt", "generated (alpha 0)",
                       f"generated (alpha {_text(sw['samples'][0]['alpha'])})"))
               if sw.get("samples") else ""))


def _stages_table(out: str) -> str:
    recs = sorted((_load(p) for p in glob.glob(os.path.join(out, "stages", "*.json"))),
                  key=lambda r: r.get("finished_at", ""))   # run order
    rows = [(r["stage"], r["seconds"], ", ".join(f"{k}={_text(v)}" for k, v in r["info"].items()
                                                 if not isinstance(v, (list, dict))))
            for r in recs]   # plain text: _table escapes each cell once
    return "<h2>Stages</h2>" + _table(rows, ("stage", "seconds", "results")) if rows else ""


def render(out_dir) -> str:
    """The report page of pipeline output directory out_dir, as an HTML string."""
    out = os.fspath(out_dir)
    if not os.path.isdir(out):
        raise FileNotFoundError(f"out_dir: no such directory {out!r}")
    cfg = _load(os.path.join(out, "config.json")) if os.path.isfile(
        os.path.join(out, "config.json")) else {}
    stats, evals, cards = (_by_hookpoint(out, s) for s in ("stats", "eval", "cards"))
    order = _run_order(out, cfg)
    stats = {n: stats[n] for n in _ordered(stats, order)}
    names = _ordered({os.path.basename(os.path.dirname(p))
                      for p in glob.glob(os.path.join(out, "sae", "*", "history.json"))
                      + glob.glob(os.path.join(out, "sae", "*", "pretrained.json"))}
                     | set(cards), order)
    model = cfg.get("model", {}).get("path", "?")
    src = cfg.get("texts", {}).get("source", "?")
    body = [f"<h1>actspace report</h1><p>model <code>{escape(str(model))}</code>, texts "
            f"<code>{escape(str(src)[:200])}</code>, directory <code>{escape(out)}</code></p>",
            _layers_section(stats)]
    if names:
        body.append("<h2>Sparse autoencoders</h2>")
        body += [_sae_section(out, n, evals, cards) for n in names]
    body += [_steer_section(out), attribution_section(out, cards), _stages_table(out)]
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            "<title>actspace report</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>")


def write_report(out_dir, path=None) -> str:
    """Render the report of out_dir and write it (atomically) to path (default
    OUT/report.html). Returns the path."""
    out = os.fspath(out_dir)
    page = render(out)
    path = os.fspath(path) if path is not None else os.path.join(out, "report.html")
    remove_stale_temporaries(os.path.dirname(os.path.abspath(path)))   # of killed writers
    write_atomic(path, page.encode("utf-8"))
    return path
