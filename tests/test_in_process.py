"""In-process use: salfw.register, the Explanation's repr and pictures, the top-level exports,
and an import that changes nothing global."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap

import pytest
import torch

import salfw
from salfw.core import registry as reg
from salfw.core.contracts import Composite, Method, PropagationRule
from salfw.core.params import param
from salfw.testing import tiny_cnn, tiny_mlp

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def fresh_registry():
    reg.reset_registry()
    yield
    reg.reset_registry()


class Doubled(Method):
    """Twice the input (a test method)."""

    name = "doubled"
    box = "black"
    summary = "twice the input"

    @dataclasses.dataclass(frozen=True)
    class Params:
        factor: float = param(2.0, "scale")

    def attribute(self, model, x, targets, ctx):
        return self.params.factor * x


# -- salfw.register --------------------------------------------------------------------------
def test_register_is_a_decorator_and_the_method_runs_by_name():
    @salfw.register
    class Halved(Doubled):
        name = "halved"

    assert isinstance(Halved, type) and salfw.methods()["halved"] is Halved
    x = torch.rand(2, 6)
    e = salfw.explain("halved", salfw.WhiteBox(tiny_mlp()), x, factor=0.5)
    assert torch.allclose(e.attributions, 0.5 * x)
    assert salfw.make_method("halved", factor=3.0).params.factor == 3.0
    record = reg.get_registry().plugins["method:halved"]
    assert record.status == "loaded" and record.provides == ["method:halved"]
    assert record.module.endswith("Halved") and record.distribution is None


def test_a_taken_name_is_an_error_naming_both():
    salfw.register(Doubled)
    clash = type("Doubled2", (Doubled,), {"name": "doubled"})
    with pytest.raises(salfw.PluginError, match=r"'doubled' is registered by both plugin 'method:doubled' and "
                                                r"salfw.register\(.*Doubled2\)"):
        salfw.register(clash)
    builtin = type("MyGradient", (Doubled,), {"name": "gradient"})
    with pytest.raises(salfw.PluginError, match="both plugin 'gradient' and .*MyGradient"):
        salfw.register(builtin)
    assert salfw.methods()["doubled"] is Doubled and "gradient" in salfw.methods()
    assert "method:gradient" not in reg.get_registry().plugins  # nothing half-registered


@pytest.mark.parametrize("thing,words", [
    (object, "subclass of one of"), (lambda: None, "subclass of one of"),
    (type("NoName", (Method,), {"name": "Not Kebab"}), "kebab-case"),
])
def test_register_checks_what_it_is_given(thing, words):
    with pytest.raises(salfw.PluginError, match=words):
        salfw.register(thing)


def test_rules_and_composites_register_and_unregister():
    @salfw.register
    class Flat(PropagationRule):
        name = "flat-test"
        summary = "uniform relevance"

    @salfw.register
    class AllFlat(Composite):
        """Flat everywhere."""

        name = "all-flat-test"

        def rules(self, layers):
            return {layer: "flat-test" for layer in layers}

    registry = reg.get_registry()
    assert registry.table("rule")["flat-test"].obj is Flat
    assert registry.table("composite")["all-flat-test"].plugin == "composite:all-flat-test"
    salfw.unregister(Flat)
    salfw.unregister("all-flat-test")
    assert "flat-test" not in registry.table("rule") and "all-flat-test" not in registry.table("composite")
    assert "rule:flat-test" not in registry.plugins
    salfw.register(Flat)  # free again


def test_unregister_only_what_register_added():
    salfw.register(Doubled)
    salfw.unregister("doubled")
    assert "doubled" not in salfw.methods()
    with pytest.raises(salfw.UnknownNameError, match="doubled"):
        salfw.unregister("doubled")
    with pytest.raises(salfw.PluginError, match="comes from plugin 'gradient'"):
        salfw.unregister("gradient")
    assert "gradient" in salfw.methods()


# -- Explanation: repr and pictures ------------------------------------------------------------
@pytest.fixture
def image_explanation():
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    return salfw.explain("gradient", salfw.WhiteBox(tiny_cnn()), x)


def test_repr_is_one_short_line(image_explanation):
    text = repr(image_explanation)
    assert "\n" not in text and len(text) < 160
    predicted = image_explanation.targets.tolist()
    assert text.startswith("Explanation(method='gradient', kind='additive', shape=(3, 1, 8, 8), targets=")
    assert f"targets={predicted}" in text and "seconds=" in text
    many = dataclasses.replace(image_explanation, targets=torch.arange(20), meta={})
    assert "... (20 in all)" in repr(many) and "seconds" not in repr(many)


def test_repr_png_and_plot(image_explanation):
    from matplotlib.figure import Figure

    png = image_explanation._repr_png_()
    assert png.startswith(PNG_SIGNATURE)
    fig = image_explanation.plot()
    assert isinstance(fig, Figure) and len(fig.axes) == 3 * 2  # rows: samples; columns: input, map
    assert len(image_explanation.plot(max_rows=1).axes) == 2
    target = Figure()
    ax = target.subplots()
    assert image_explanation.plot(ax, index=2) is ax and len(ax.images) == 1
    assert "gradient" in ax.get_title()


def test_vectors_plot_as_strips():
    e = salfw.explain("gradient", salfw.WhiteBox(tiny_mlp()), torch.rand(2, 6))
    assert e._repr_png_().startswith(PNG_SIGNATURE)
    assert e.plot().axes[1].images[0].get_array().shape[:2] == (1, 6)


def test_top_level_plot_and_draw_grid(image_explanation, tmp_path):
    model = salfw.WhiteBox(tiny_cnn())
    other = salfw.explain("input-x-gradient", model, image_explanation.inputs)
    fig = salfw.plot([image_explanation, other, image_explanation])
    assert len(fig.axes) == 3 * 4
    titles = [ax.get_title() for ax in fig.axes[:4]]
    assert titles[0] == "input" and titles[3].startswith("gradient (2)")
    assert salfw.plot({"a": other}, labels=["x", "y", "z"]).axes[0].get_ylabel() == "x"
    with pytest.raises(salfw.InputError, match="different numbers of samples"):
        salfw.plot([image_explanation, salfw.explain("gradient", model, torch.rand(1, 1, 8, 8))])
    path = salfw.draw_grid(image_explanation.inputs, {"gradient": image_explanation}, tmp_path / "g" / "grid.png")
    assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_top_level_exports():
    for name in ("make_method", "draw_grid", "plot", "register", "unregister", "Context", "explain", "evaluate"):
        assert name in salfw.__all__ and hasattr(salfw, name)
    assert salfw.make_method("gradient", absolute=True).params.absolute is True


# -- importing changes nothing global ------------------------------------------------------------
def test_import_has_no_global_side_effects():
    script = textwrap.dedent("""
        import sys
        import numpy as np
        import torch

        torch.manual_seed(1234)
        np.random.seed(1234)
        before, np_before = torch.get_rng_state().clone(), np.random.get_state()[1].copy()
        import salfw
        from salfw.core import registry

        assert "matplotlib" not in sys.modules, "import salfw imported matplotlib"
        assert registry._REGISTRY is None, "import salfw loaded plugins"
        assert not [m for m in sys.modules if m.startswith(("salfw.plugins", "salfw.evaluation", "salfw.cli"))]
        assert torch.equal(torch.get_rng_state(), before), "import salfw moved torch's global RNG"
        assert (np.random.get_state()[1] == np_before).all(), "import salfw moved NumPy's global RNG"

        e = salfw.explain("gradient", salfw.load_model("python:salfw.testing:tiny_mlp"), torch.rand(2, 6))
        assert e._repr_png_().startswith(b"\\x89PNG") and salfw.plot(e) is not None
        assert "matplotlib.pyplot" not in sys.modules, "drawing went through pyplot"
        print("clean")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "clean", result.stderr
