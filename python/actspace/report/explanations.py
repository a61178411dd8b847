"""Explanations and their scores in the report: a line in each feature card and a table of
every explained latent of an SAE.

Read from OUT/latents/<hookpoint>/explanations.json, which `actspace explain` writes beside
the latent store (format: actspace.interp.results). Kept out of html.py so the autointerp
view can grow without touching the page's skeleton. Every string from the file (an LLM's
explanation, an error message) is escaped: an explanation is model output, never markup.
"""
from __future__ import annotations

import json
import math
import os
from html import escape

SCORERS = ("embedding", "detection", "fuzzing")     # column order; others follow


def load(out: str, name: str) -> dict | None:
    """The "latents" mapping of OUT/latents/<name>/explanations.json, or None."""
    path = os.path.join(out, "latents", name, "explanations.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    lats = data.get("latents") if isinstance(data, dict) else None
    return lats if isinstance(lats, dict) and lats else None


def _num(v) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) and math.isfinite(v) else "–"


def _scorer_names(lats: dict) -> list[str]:
    seen = {s for e in lats.values() for s in (e.get("scores") or {})}
    return [s for s in SCORERS if s in seen] + sorted(seen - set(SCORERS))


def _score_text(res: dict) -> str:
    """One scorer's result as plain text: AUROC, balanced accuracy, or its error."""
    if not isinstance(res, dict):
        return "–"
    if res.get("error") and res.get("auroc") is None:
        return "error"
    text = f"AUROC {_num(res.get('auroc'))}"
    if "balanced_accuracy" in res:
        text += f", bal. acc. {_num(res.get('balanced_accuracy'))}"
    return text


def card_html(lats: dict | None, latent: int) -> str:
    """The explanation and scores of one latent, for its feature card ('' if none)."""
    entry = (lats or {}).get(str(latent))
    if not entry:
        return ""
    if entry.get("explanation"):
        head = f"<div class='expl'><b>Explanation:</b> {escape(entry['explanation'])}"
    else:
        head = (f"<div class='expl muted'>no explanation: "
                f"{escape(str(entry.get('error') or 'not explained'))}")
    scores = entry.get("scores") or {}
    parts = [f"{escape(s)}: {escape(_score_text(scores[s]))}" for s in _scorer_names(lats)
             if s in scores]
    tail = f" <span class='muted'>{' · '.join(parts)}</span>" if parts else ""
    return head + tail + "</div>"


def table_html(lats: dict | None) -> str:
    """A table of every latent in the file: explanation (or error) and each scorer's AUROC
    and balanced accuracy; best embedding/detection AUROC first."""
    if not lats:
        return ""
    names = _scorer_names(lats)

    def key(item):
        sc = item[1].get("scores") or {}
        best = [sc.get(s, {}).get("auroc") for s in names]
        best = [b for b in best if isinstance(b, (int, float))]
        return (-(max(best) if best else -1.0), int(item[0]) if item[0].isdigit() else 0)

    head = "".join(f"<th>{escape(s)} AUROC</th>" + (
        f"<th>{escape(s)} bal. acc.</th>" if s != "embedding" else "") for s in names)
    rows = []
    for lat, e in sorted(lats.items(), key=key):
        sc = e.get("scores") or {}
        cells = []
        for s in names:
            r = sc.get(s) or {}
            cells.append(f"<td class='num'>{_num(r.get('auroc'))}</td>")
            if s != "embedding":
                cells.append(f"<td class='num'>{_num(r.get('balanced_accuracy'))}</td>")
        text = (escape(e["explanation"]) if e.get("explanation") else
                f"<span class='muted'>{escape(str(e.get('error') or ''))}</span>")
        rows.append(f"<tr><td class='num'>{escape(str(lat))}</td><td>{text}</td>"
                    f"{''.join(cells)}</tr>")
    return ("<h4>Explanations</h4><table><tr><th>latent</th><th>explanation</th>"
            f"{head}</tr>{''.join(rows)}</table>")
