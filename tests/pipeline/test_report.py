"""The HTML report: data strings escaped, self-contained, and checked in a real headless
Chromium (page loads without errors, every plot image decodes, screenshot taken).

The report is rendered here from a hand-made output directory whose token strings and
hookpoint names carry `<script>`, quotes and ampersands, so escaping is tested on the
worst data without running a model; test_pipeline runs the browser check on the report of
a real (quick) demo run.
"""
import json
import math
import os
import re
import shutil
import subprocess

import pytest

from actspace.pipeline.markers import write_json_atomic
from actspace.report import render, write_report

EVIL = "<script>alert(1)</script>"
QUOTES = "\"quoted\" & 'single'"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# locally a missing chromium skips the browser tests; in CI (.ci/run installs it) it fails
IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false")
needs_chromium = pytest.mark.skipif(CHROMIUM is None and not IN_CI,
                                    reason="chromium not installed")

# injected before the page's own content: records errors, alert() calls and broken images,
# then writes the result into the DOM, where --dump-dom shows it
_HARNESS = """<script>
window.__errs=[];window.__alerts=0;window.alert=function(){window.__alerts++;};
addEventListener('error',function(e){__errs.push(String(e.message||(e.target&&e.target.src)||'error'));},true);
console.error=function(){__errs.push(Array.prototype.join.call(arguments,' '));};
addEventListener('load',function(){
 var imgs=Array.prototype.slice.call(document.images);
 var broken=imgs.filter(function(i){return !(i.complete&&i.naturalWidth>0);}).length;
 var r=document.createElement('pre');r.id='__result';r.style.display='none';
 var exs=Array.prototype.slice.call(document.querySelectorAll('.ex')).map(function(e){
  return Array.prototype.slice.call(e.querySelectorAll('span')).map(function(s){
   return s.getBoundingClientRect().left;});});
 var tables=Array.prototype.slice.call(document.querySelectorAll('table')).map(function(t){
  return t.getBoundingClientRect().width;});
 r.textContent=JSON.stringify({images:imgs.length,broken:broken,errors:__errs,
  alerts:__alerts,scripts:document.scripts.length,text:document.body.innerText,
  example_span_lefts:exs,table_widths:tables,viewport:window.innerWidth});
 document.body.appendChild(r);});
</script>"""


def check_in_chromium(report_path, tmp_path, shot_name="report.png") -> dict:
    """Load the report in headless Chromium: returns the harness result (images, broken,
    errors, alerts, scripts, text) plus "screenshot" (path) and "console" (stderr lines
    of console messages)."""
    if CHROMIUM is None:
        pytest.fail("CI is set but chromium is not installed (.ci/run installs it)")
    with open(report_path, encoding="utf-8") as f:
        page = f.read()
    probe = os.path.join(tmp_path, "probe.html")
    with open(probe, "w", encoding="utf-8") as f:
        f.write(page.replace("<head>", "<head>" + _HARNESS, 1))
    base = [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
            f"--user-data-dir={os.path.join(tmp_path, 'chrome-profile')}",
            "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000"]
    dom = subprocess.run(base + ["--dump-dom", f"file://{probe}"], capture_output=True,
                         text=True, timeout=120)
    m = re.search(r'<pre id="__result"[^>]*>(.*?)</pre>', dom.stdout, re.S)
    assert m, f"harness result missing; stderr: {dom.stderr[-2000:]}"
    import html as _html
    res = json.loads(_html.unescape(m.group(1)))
    res["console"] = [l for l in dom.stderr.splitlines() if "CONSOLE" in l]
    shot = os.path.join(tmp_path, shot_name)
    # of the probe page: a (wrongly) live alert() there is a no-op instead of a hang
    subprocess.run(base + [f"--screenshot={shot}", "--window-size=1200,3000",
                           f"file://{probe}"], capture_output=True, timeout=120)
    res["screenshot"] = shot
    return res


def layer_stats(hp: str, d: int = 16) -> dict:
    """A stats/<hookpoint>.json summary: one massive channel (15) at 40x the median RMS,
    top tokens one above the threshold (5x) and one below."""
    lam = [10.0 * (i + 1) ** -1.2 for i in range(d)]
    return {
        "hookpoint": hp, "rows": 100, "d": d, "nonfinite": 0, "massive_ratio": 5.0,
        "norm": {"count": 100, "mean": 3.0, "std": 0.5, "min": 1.0, "max": 9.0},
        "channel_rms": [1.0] * (d - 1) + [0.0], "channel_absmax": [2.0] * (d - 1) + [40.0],
        "massive": {"reference": 1.0, "channels": [{"channel": 15, "absmax": 40.0, "ratio": 40.0}],
                    "tokens": []},
        "top_tokens": [{"row": 7, "token_id": 3, "token": EVIL, "channel": 15, "value": 40.0,
                        "ratio": 40.0},
                       {"row": 9, "token_id": 4, "token": " and", "channel": 2, "value": 2.0,
                        "ratio": 2.0}],
        "spectrum": lam, "effective_rank": 5.0, "participation_ratio": 3.0, "alpha": 1.2,
        "fit": {"rank_lo": 1, "rank_hi": 8, "log_intercept": math.log(10.0)}}


def make_outdir(root) -> str:
    """A pipeline output directory with hostile strings everywhere data reaches the page."""
    out = os.path.join(root, "out")
    hp = f"layer{EVIL}{QUOTES}"
    d = 16
    write_json_atomic(os.path.join(out, "config.json"),
                      {"model": {"path": f"model{EVIL}"}, "texts": {"source": QUOTES}})
    write_json_atomic(os.path.join(out, "stats", "hp.json"), layer_stats(hp, d))
    write_json_atomic(os.path.join(out, "sae", "hp", "history.json"), [
        {"step": s, "kind": "topk", "d_sae": 32, "k": 4, "fvu": 1.0 / s, "l0": 4.0,
         "dead_fraction": 0.1} for s in range(1, 6)])
    write_json_atomic(os.path.join(out, "eval", "hp.json"),
                      {"d_in": d, "reconstruction": {"fvu": 0.2, "note": EVIL}})
    write_json_atomic(os.path.join(out, "cards", "hp.json"), {
        "d_sae": 32, "frequency": [0.0] * 4 + [10 ** -(i % 4 + 1) for i in range(28)],
        "cards": [{"latent": 3, "count": 9, "frequency": 0.09, "mean_activation": 1.5,
                   "examples": [{"value": 2.5, "centre": 1,
                                 "tokens": ["a ", EVIL, f" {QUOTES}", " </div><b>x"],
                                 "acts": [0.0, 2.5, 1.0, 0.0]}]}]})
    write_json_atomic(os.path.join(out, "steer", "sweep.json"), {
        "hookpoint": hp, "alpha_units": "norm",
        "rows": [{"alpha": a, "hookpoint": hp, "effect": a * 0.3, "kl": a * a * 0.01,
                  "perplexity": 10.0} for a in (0.0, 1.0, 2.0)]})
    write_json_atomic(os.path.join(out, "stages", "capture.json"),
                      {"stage": "capture", "seconds": 1.0, "info": {"note": EVIL}})
    return out


def test_escaping_no_script_from_data(tmp_path):
    page = render(make_outdir(str(tmp_path)))
    assert "<script" not in page.lower()          # not one script tag, from data or not
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "</div><b>x" not in page and "&lt;/div&gt;&lt;b&gt;x" in page
    assert "&quot;quoted&quot; &amp; &#x27;single&#x27;" in page


def test_escaped_exactly_once(tmp_path):
    """The stage table's results cell is built from several values: escaped once, so a
    `<script>` in a stage's info reads as `<script>` in the browser, not `&lt;script&gt;`."""
    page = render(make_outdir(str(tmp_path)))
    assert "note=&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&amp;lt;" not in page and "&amp;quot;" not in page and "&amp;#x27;" not in page


def test_massive_top_tokens_table(tmp_path):
    page = render(make_outdir(str(tmp_path)))
    # the threshold stated, the tokens listed (escaped, quoted), the massive one marked
    assert "above 5 × the median channel RMS (1), i.e. above 5; 1 channel(s)" in page
    rows = re.findall(r"<tr><td><bdi>(&quot;.*?&quot;)</bdi></td>(.*?)</tr>", page)
    assert [r[0] for r in rows] == ["&quot;&lt;script&gt;alert(1)&lt;/script&gt;&quot;",
                                    "&quot; and&quot;"]
    assert rows[0][1].endswith("<td>massive</td>") and rows[1][1].endswith("<td></td>")


def test_hookpoints_in_run_order(tmp_path):
    """Stats and SAE sections follow the run's hookpoint order (the capture marker), else
    a natural sort: model.layers.2 before model.layers.10, never by string order."""
    out = str(tmp_path / "out")
    for hp in ("model.layers.10", "model.layers.2"):
        write_json_atomic(os.path.join(out, "stats", f"{hp}.json"), layer_stats(hp))
        write_json_atomic(os.path.join(out, "sae", hp, "history.json"), [
            {"step": 1, "kind": "topk", "d_sae": 32, "k": 4, "fvu": 0.5, "l0": 4.0,
             "dead_fraction": 0.0}])

    def order():
        page = render(out)
        return ([page.index(f"<h3>{hp}</h3>") for hp in ("model.layers.2", "model.layers.10")],
                [page.index(f"SAE at {hp}") for hp in ("model.layers.2", "model.layers.10")])
    for a, b in order():
        assert a < b                                    # natural order without a marker
    write_json_atomic(os.path.join(out, "stages", "capture.json"), {
        "stage": "capture", "seconds": 1.0,
        "info": {"hookpoints": ["model.layers.10", "model.layers.2"]}})
    for a, b in order():
        assert a > b                                    # the run's own order


def test_self_contained(tmp_path):
    page = render(make_outdir(str(tmp_path)))
    # no network: nothing fetched (only data URIs), no external fonts or stylesheets
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert "@import" not in page and "@font-face" not in page
    imgs = re.findall(r'<img class="plot" src="([^"]+)"', page)
    # norm profile, channels, spectrum, training curves, firing histogram, steering
    assert len(imgs) == 6 and all(u.startswith("data:image/png;base64,") for u in imgs)


def test_write_report_atomic_and_bad_dir(tmp_path):
    out = make_outdir(str(tmp_path))
    path = write_report(out)
    assert path == os.path.join(out, "report.html") and os.path.getsize(path) > 1000
    assert not [p for p in os.listdir(out) if ".tmp" in p]
    with pytest.raises(FileNotFoundError, match="out_dir"):
        render(os.path.join(str(tmp_path), "missing"))


def test_report_cli(tmp_path, capsys):
    from actspace.cli.main import main

    out = make_outdir(str(tmp_path))
    target = os.path.join(str(tmp_path), "r.html")
    assert main(["report", out, "-o", target]) == 0
    assert "report: " in capsys.readouterr().out and os.path.isfile(target)


@needs_chromium
def test_hostile_report_in_chromium(tmp_path):
    out = make_outdir(str(tmp_path))
    res = check_in_chromium(write_report(out), str(tmp_path))
    assert res["errors"] == [] and res["alerts"] == 0 and res["console"] == [], res
    assert res["scripts"] == 1                     # the harness only: data never became a script
    assert res["images"] == 6 and res["broken"] == 0
    assert EVIL in res["text"] and QUOTES in res["text"]   # shown as text
    assert os.path.getsize(res["screenshot"]) > 10_000


RLO = "\u202e"                       # RIGHT-TO-LEFT OVERRIDE
LONG = "x" * 4990 + "END-OF-TOKEN"


def bidi_outdir(root) -> str:
    """An output directory whose example holds a right-to-left override token followed by
    ordinary tokens, and whose top-token table holds a 5000-character token."""
    out = make_outdir(root)
    st = layer_stats("hp")
    st["top_tokens"].append({"row": 11, "token_id": 5, "token": LONG, "channel": 1,
                             "value": 1.0, "ratio": 1.0})
    st["top_tokens"].append({"row": 12, "token_id": 6, "token": f"ab{RLO}cd", "channel": 1,
                             "value": 1.0, "ratio": 1.0})
    write_json_atomic(os.path.join(out, "stats", "hp.json"), st)
    cards = json.load(open(os.path.join(out, "cards", "hp.json"), encoding="utf-8"))
    cards["cards"][0]["examples"] = [{"value": 2.0, "centre": 1,
                                      "tokens": ["one", f"{RLO}two", "three", "four", LONG],
                                      "acts": [0.5, 2.0, 1.0, 0.1, 0.2]}]
    write_json_atomic(os.path.join(out, "cards", "hp.json"), cards)
    return out


def test_bidi_controls_isolated_and_long_tokens_cut(tmp_path):
    from actspace.report.html import TOKEN_CHARS

    page = render(bidi_outdir(str(tmp_path)))
    assert RLO not in page                                   # shown as an escape instead
    assert '>\\u202etwo</bdi>' in page and "ab\\u202ecd" in page
    assert LONG not in re.sub(r'title="[^"]*"', "", page)   # never as element text
    shown = "x" * TOKEN_CHARS + "…"
    assert f'title="0.2: {LONG}">{shown}</bdi>' in page     # example: activation + token
    assert f'<bdi title="&quot;{LONG}&quot;">&quot;{"x" * (TOKEN_CHARS - 1)}…</bdi>' in page


@needs_chromium
def test_bidi_and_long_tokens_in_chromium(tmp_path):
    res = check_in_chromium(write_report(bidi_outdir(str(tmp_path))), str(tmp_path),
                            "bidi.png")
    assert res["errors"] == [] and res["alerts"] == 0, res
    lefts = res["example_span_lefts"][0]
    assert len(lefts) == 5 and lefts == sorted(lefts), lefts   # reading order kept
    assert max(res["table_widths"]) <= res["viewport"], res["table_widths"]
    assert "END-OF-TOKEN" not in res["text"]
