"""The import rules of docs/architecture.md, checked on the source (every arrow runs downwards).

* ``salfw.core`` imports nothing else of salfw;
* ``salfw.sdk`` (the plugin authors' toolkit) imports only ``salfw.core`` and itself;
* ``salfw.zoo`` (the built-in models, sample digits and the MNIST reader: data) imports only
  ``salfw.core`` and itself;
* a built-in plugin imports only ``salfw.core``, ``salfw.sdk``, ``salfw.zoo`` and its own package
  (``salfw/plugins/lrp/`` may import ``salfw.plugins.lrp.*``), never another plugin,
  ``salfw.evaluation`` or ``salfw.cli``;
* metrics import only ``salfw.core``, ``salfw.sdk`` and ``salfw.evaluation``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "salfw"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, source: str | None = None) -> list[str]:
    """Absolute names of the salfw modules a file imports (relative imports resolved)."""
    tree = ast.parse(path.read_text() if source is None else source, filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                names.append(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                names.append(node.module)
    return [n for n in names if n == "salfw" or n.startswith("salfw.")]


def _allowed(path: Path) -> tuple[str, ...]:
    name = _module_name(path)
    if name.startswith("salfw.core"):
        return ("salfw.core",)
    if name.startswith("salfw.sdk"):
        return ("salfw.core", "salfw.sdk")
    if name.startswith("salfw.zoo"):
        return ("salfw.core", "salfw.zoo")
    if name.startswith("salfw.plugins."):
        family = ".".join(name.split(".")[:3])
        return ("salfw.core", "salfw.sdk", "salfw.zoo", family)
    if name.startswith("salfw.evaluation.metrics"):
        return ("salfw.core", "salfw.sdk", "salfw.evaluation")
    return ()


FILES = sorted(p for p in ROOT.rglob("*.py") if _allowed(p))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_layers(path):
    allowed = _allowed(path)
    bad = [n for n in _imports(path) if not any(n == a or n.startswith(a + ".") for a in allowed)]
    assert not bad, f"{path.relative_to(ROOT.parent)} imports {bad}; allowed: {', '.join(allowed)}"


def test_the_checker_resolves_relative_imports_and_sees_violations():
    lrp = ROOT / "plugins" / "lrp" / "methods.py"
    assert _imports(lrp, "from .rules import X\nfrom ..lime import Y\nimport salfw.cli.main\n") == [
        "salfw.plugins.lrp.rules", "salfw.plugins.lime", "salfw.cli.main"]
    assert _allowed(lrp) == ("salfw.core", "salfw.sdk", "salfw.zoo", "salfw.plugins.lrp")
    assert _allowed(ROOT / "core" / "api.py") == ("salfw.core",)
    assert len(FILES) > 40
