"""Explanations and scores in the report: in the feature card of their latent and in a
table of all explained latents, every string from the file escaped."""
from __future__ import annotations

import os

from actspace._io import write_json_atomic
from actspace.interp.results import Explanations
from actspace.report.html import render

EVIL = "<script>alert(1)</script>"


def make_outdir(out: str) -> str:
    write_json_atomic(os.path.join(out, "cards", "hp.json"), {
        "d_sae": 8, "frequency": [0.1] * 8,
        "cards": [{"latent": 3, "count": 9, "frequency": 0.09, "mean_activation": 1.5,
                   "examples": [{"value": 2.5, "centre": 0, "tokens": ["cat", " sat"],
                                 "acts": [2.5, 0.0]}]},
                  {"latent": 5, "count": 4, "frequency": 0.04, "mean_activation": 1.0,
                   "examples": []}]})
    ex = Explanations({3: f"the word 'cat' {EVIL}", 1: "closing brackets & quotes \"x\""},
                      errors={5: "malformed answer: <b>no list</b>"},
                      scores={3: {"embedding": {"auroc": 0.8125},
                                  "detection": {"auroc": 0.9, "balanced_accuracy": 0.875}},
                              1: {"embedding": {"auroc": 0.61},
                                  "detection": {"error": "no usable answer"}}})
    ex.save(os.path.join(out, "latents", "hp", "explanations.json"))
    return out


def test_cards_and_table_show_escaped_explanations(tmp_path):
    page = render(make_outdir(str(tmp_path)))
    assert "<script" not in page.lower()
    assert "the word &#x27;cat&#x27; &lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;no list&lt;/b&gt;" in page and "<b>no list" not in page
    assert "closing brackets &amp; quotes &quot;x&quot;" in page
    card3 = page[page.index("<b>latent 3</b>"):page.index("<b>latent 5</b>")]
    assert "Explanation:" in card3 and "AUROC 0.812" in card3 and "bal. acc. 0.875" in card3
    card5 = page[page.index("<b>latent 5</b>"):]
    assert "no explanation: malformed answer" in card5[:400]
    table = page[page.index("<h4>Explanations</h4>"):]
    rows = table.split("<tr>")[2:]
    # ordered by best AUROC: latent 3 (0.9), latent 1 (0.61), latent 5 (none)
    assert [r.split("</td>")[0].rsplit(">", 1)[1] for r in rows] == ["3", "1", "5"]
    assert "0.900" in rows[0] and "0.875" in rows[0] and "–" in rows[1]


def test_no_explanations_no_section(tmp_path):
    out = make_outdir(str(tmp_path))
    os.remove(os.path.join(out, "latents", "hp", "explanations.json"))
    page = render(out)
    assert "Explanation" not in page and "<b>latent 3</b>" in page
