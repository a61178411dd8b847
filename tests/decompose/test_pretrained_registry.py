"""The release registry: the shipped releases.yaml parses and names known layouts, user
files extend it (ACTSPACE_SAE_RELEASES or registry=), and bad names or files fail with the
closest matches or the file and release named."""
import pytest

from actspace.decompose.formats import FORMATS, get_format
from actspace.decompose.pretrained import get_release, load_registry
from actspace.decompose.pretrained.registry import BUILTIN, layer_of


@pytest.fixture(autouse=True)
def _no_user_registry(monkeypatch):
    monkeypatch.delenv("ACTSPACE_SAE_RELEASES", raising=False)


def test_every_shipped_entry_parses_and_names_a_known_layout():
    reg = load_registry()
    get_format("saelens")
    assert {r.layout for r in reg.values()} == {"gemmascope", "gemmascope2", "llamascope",
                                                "sparsify", "saelens", "dictlearning"}
    from actspace.decompose.pretrained.hub import LAYOUT_FILES

    for name, r in reg.items():
        assert r.layout in FORMATS and r.repo.count("/") == 1 and r.revision
        assert LAYOUT_FILES[r.layout]           # the Hub loader knows which files to fetch
        assert r.source == str(BUILTIN)
        assert r.saes or r.open, name
        for s in r.saes:
            assert s.id and s.path and not s.path.startswith("/")
            assert s.l0 is None or s.l0 >= 0
    rel = reg["gemma-scope-2b-pt-res"]
    e = rel.find("layer_12/width_16k/average_l0_82")
    assert (e.l0, rel.hook_name_for(e), rel.model) == (82, "blocks.12.hook_resid_post",
                                                        "google/gemma-2-2b")
    assert reg["llama_scope_lxr_8x"].find("l31r_8x").path == "Llama3_1-8B-Base-L31R-8x"
    assert len(reg["sae-llama-3-8b-32x"].saes) == 32


def test_unknown_release_and_id_name_the_closest():
    with pytest.raises(ValueError, match="unknown SAE release 'gemma-scope-2b-res'; "
                                         "closest: gemma-scope-2b-pt-res"):
        get_release("gemma-scope-2b-res")
    rel = get_release("llama_scope_lxr_8x")        # a closed release: ids are checked
    with pytest.raises(ValueError, match="no SAE 'l12_8x'; closest: l12r_8x"):
        rel.find("l12_8x")
    open_rel = get_release("gemma-scope-2b-pt-res")   # open: any folder is an id
    assert open_rel.find("layer_3/width_65k/average_l0_9").path == \
        "layer_3/width_65k/average_l0_9"


def test_user_registry_extends_and_overrides(tmp_path, monkeypatch):
    f = tmp_path / "mine.yaml"
    f.write_text("releases:\n"
                 "  gemma-scope-2b-pt-res:\n    repo: me/fork\n    layout: gemmascope\n"
                 "    saes: [{id: a, path: x/a, l0: 5}]\n"
                 "  mine:\n    repo: me/saes\n    layout: sparsify\n"
                 "    each_layer: {layers: [2, 4], id: 'layers.{layer}', path: 'layers.{layer}'}\n")
    monkeypatch.setenv("ACTSPACE_SAE_RELEASES", str(f))
    reg = load_registry()
    assert reg["gemma-scope-2b-pt-res"].repo == "me/fork"          # later file wins
    assert reg["mine"].ids() == ["layers.2", "layers.3", "layers.4"]
    assert reg["mine"].revision == "main"
    monkeypatch.delenv("ACTSPACE_SAE_RELEASES")
    assert "mine" in load_registry([f]) and "mine" not in load_registry()


@pytest.mark.parametrize("body,match", [
    ("releases: []", "expected a mapping with 'releases"),
    ("releases:\n  r: {repo: a/b, layout: pickle, saes: [{id: x, path: x}]}",
     "release 'r': unknown SAE layout 'pickle'"),
    ("releases:\n  r: {repo: ab, layout: saelens, saes: [{id: x, path: x}]}",
     "repo must be 'org/name'"),
    ("releases:\n  r: {repo: a/b, layout: saelens, sae: []}", r"unknown key\(s\) \['sae'\]"),
    ("releases:\n  r: {repo: a/b, layout: saelens, saes: []}", "lists no SAE"),
    ("releases:\n  r: {repo: a/b, layout: saelens, saes: [{id: x, path: x, l0: -1}]}",
     "l0 must be"),
    ("releases:\n  r: {repo: a/b, layout: saelens, saes: [{id: x, path: x}, {id: x, path: y}]}",
     r"duplicate SAE id\(s\) \['x'\]"),
    ("releases:\n  r: {repo: a/b, layout: saelens, each_layer: {layers: [3, 1], id: a, path: b}}",
     "each_layer.layers"),
    ("releases: {r: [", "not valid YAML"),
])
def test_bad_registry_files_name_file_and_release(tmp_path, body, match):
    f = tmp_path / "bad.yaml"
    f.write_text(body)
    with pytest.raises(ValueError, match=match) as e:
        load_registry([f])
    assert "bad.yaml" in str(e.value)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_registry([tmp_path / "nope.yaml"])


def test_layer_of_release_names():
    assert layer_of("layer_12/width_16k/average_l0_82") == 12
    assert layer_of("layers.7") == 7 and layer_of("blocks.3.hook_resid_pre") == 3
    assert layer_of("Llama3_1-8B-Base-L15R-8x") == 15 and layer_of("embed_tokens") is None
