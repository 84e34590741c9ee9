"""Every tutorial page in docs/ (and CONTRIBUTING.md's plugin example) runs: its ```python
blocks execute in order, in one namespace per page, inside a temporary working directory.
A page may install plugins (docs/plugin-authors.md does): ``sys.path`` is restored and the
registry forgotten afterwards, so the next page sees only salfw's own plugins."""

import re
import sys
from pathlib import Path

import pytest

from salfw.core.registry import reset_registry

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = sorted(p for p in DOCS.glob("*.md")) + [DOCS.parent / "CONTRIBUTING.md"]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def test_docs_have_tutorials():
    assert PAGES, "docs/ has no tutorial pages"


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_tutorial_runs(page, tmp_path, monkeypatch):
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
