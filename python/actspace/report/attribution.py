"""The report's attribution section: per prompt, its tokens shaded by how much the latents
at each position account for the metric (red: for, blue: against), and the top nodes with
links to their feature cards in the same page.

Reads OUT/attribution/top.json (attribution.summary); every data string is escaped.
"""
from __future__ import annotations

import json
import os
from html import escape

__all__ = ["attribution_section", "card_anchor"]


def card_anchor(card_file_stem: str, latent: int) -> str:
    """The id of a feature card's element: its cards file stem (the hookpoint's directory
    name) and latent."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in card_file_stem)
    return f"card-{safe}-{int(latent)}"


def _stem(hookpoint: str) -> str:
    # the same directory name the pipeline gives a hookpoint (capture.store.hookpoint_dirname)
    return hookpoint.replace(":", "__").replace("/", "_")


def _heat(tokens, heat) -> str:
    top = max([abs(h) for h in heat] or [1.0]) or 1.0
    spans = []
    for t, h in zip(tokens, heat):
        a = min(1.0, abs(h) / top)
        rgb = "220,40,40" if h >= 0 else "40,90,220"
        spans.append(f'<span style="background:rgba({rgb},{a:.2f})" title="{h:.3g}">'
                     f"{escape(t)}</span>")
    return f'<div class="ex">{"".join(spans)}</div>'


def attribution_section(out: str, cards: dict) -> str:
    """HTML for OUT/attribution/top.json ("" when absent). cards: {file stem: cards JSON}
    of the page, to link a latent to its card when the page has one."""
    path = os.path.join(out, "attribution", "top.json")
    if not os.path.isfile(path):
        return ""
    with open(path, encoding="utf-8") as f:
        summ = json.load(f)
    have = {(stem, c["latent"]) for stem, cs in cards.items() for c in cs.get("cards", [])}
    parts = ["<h2>Attribution</h2>",
             f"<p>Which SAE latents cause <code>{escape(str(summ['metric']))}</code> at each "
             f"prompt's last token ({escape(summ['method'])}, baseline "
             f"{escape(str(summ['baseline']))}). Token shading: the sum of the latent scores "
             "at that position (red: raises the metric, blue: lowers it).</p>"]
    for i, p in enumerate(summ["prompts"]):
        parts.append(f"<div class='card'><b>prompt {i}</b> <span class='muted'>metric "
                     f"{p['metric']:.4g}</span>{_heat(p['tokens'], p['heat'])}<table>"
                     "<tr><th>hookpoint</th><th>position</th><th>token</th><th>node</th>"
                     "<th>activation</th><th>score</th></tr>")
        for r in p["top"]:
            stem = _stem(r["hookpoint"])
            node = ("error" if r["kind"] == "error" else f"{r['kind']} {r['index']}")
            if r["kind"] == "latent" and (stem, r["index"]) in have:
                node = (f'<a href="#{card_anchor(stem, r["index"])}">{escape(node)}</a>')
            else:
                node = escape(node)
            parts.append(f"<tr><td>{escape(r['hookpoint'])}</td><td class='num'>"
                         f"{r['position']}</td><td>{escape(json.dumps(r['token']))}</td>"
                         f"<td>{node}</td><td class='num'>{r['activation']:.4g}</td>"
                         f"<td class='num'>{r['score']:.4g}</td></tr>")
        parts.append("</table></div>")
    return "".join(parts)
