"""One version source (issue 21): python/actspace/__init__.py's __version__ is the package
metadata's version (scikit-build-core's regex provider), the compiled core's build_info()
version and the C++ package's (checked in test_cpp_library.py)."""
import re
import tomllib
from pathlib import Path

import actspace

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_reads_the_version_from_init():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in meta["project"]  # no second copy to drift
    assert "version" in meta["project"]["dynamic"]
    version_cfg = meta["tool"]["scikit-build"]["metadata"]["version"]
    assert version_cfg["provider"] == "scikit_build_core.metadata.regex"
    assert version_cfg["input"] == "python/actspace/__init__.py"
    src = (ROOT / version_cfg["input"]).read_text()
    # the provider's default regex: the first `__version__ = "..."` line
    found = re.search(r'(?i)^(__version__|VERSION)(?::\s*str)? *= *([\'"])v?(?P<value>.+?)\2',
                      src, re.MULTILINE)
    assert found and found["value"] == actspace.__version__


def test_core_version_is_the_package_version():
    assert actspace.build_info()["version"] == actspace.__version__


def test_changelog_has_the_version():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## \[?{re.escape(actspace.__version__)}\]?", text, re.MULTILINE)
