"""The core contract: parameters, registry, perturbations, adapters, the model guard, errors."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

import salfw
from salfw.core import registry as reg
from salfw.core.api import make_perturbation
from salfw.core.context import Context
from salfw.core.contracts import Method
from salfw.core.guard import model_fingerprint, preserved, same_fingerprint
from salfw.core.params import describe_params, param, parse_params
from salfw.core.preprocessing import Preprocessing
from salfw.testing import tiny_cnn, tiny_mlp


# -- parameters ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class P:
    steps: int = param(10, "steps", low=1)
    rate: float = param(0.5, "rate", low=0.0, high=1.0)
    mode: str = param("a", "mode", choices=("a", "b"))
    flag: bool = param(False, "flag")
    window: tuple[int, ...] = param((2, 2), "window")
    layer: str | None = param(None, "layer")


def test_params_coerce_cli_strings():
    p = parse_params(P, {"steps": "7", "rate": "0.25", "mode": "b", "flag": "true", "window": "3,4",
                         "layer": "none"})
    assert (p.steps, p.rate, p.mode, p.flag, p.window, p.layer) == (7, 0.25, "b", True, (3, 4), None)


@pytest.mark.parametrize("given,words", [
    ({"nope": 1}, "unknown parameter(s) nope"), ({"steps": "many"}, "must be an int"),
    ({"steps": 0}, ">= 1"), ({"rate": 2}, "<= 1.0"), ({"mode": "c"}, "one of 'a', 'b'"),
    ({"flag": "maybe"}, "bool"), ({"steps": True}, "int"), ({"rate": float("nan")}, "NaN"),
])
def test_params_reject_bad_values_clearly(given, words):
    with pytest.raises(salfw.ParameterError, match=None) as info:
        parse_params(P, given)
    assert words in str(info.value)


def test_describe_params_drives_info():
    rows = {r["name"]: r for r in describe_params(P)}
    assert rows["steps"]["type"] == "int" and rows["steps"]["default"] == 10
    assert rows["layer"]["type"] == "str | None" and rows["mode"]["choices"] == ("a", "b")


# -- registry --------------------------------------------------------------------------------
class _Fresh:
    def __enter__(self):
        reg.reset_registry()
        return reg.get_registry()

    def __exit__(self, *exc):
        reg.reset_registry()


def _method(name):
    return type(f"M_{name}", (Method,), {"name": name, "box": "black", "attribute": lambda *a: None})


def test_duplicate_names_are_an_error_naming_both_plugins():
    with _Fresh() as r:
        r.register_plugin(reg.plugin_namespace(
            salfw_register_methods=lambda register: register(_method("dup"))), "first")
        with pytest.raises(salfw.PluginError, match="'first' and plugin 'second'"):
            r.register_plugin(reg.plugin_namespace(
                salfw_register_methods=lambda register: register(_method("dup"))), "second")
        assert r.table("method")["dup"].plugin == "first"
        assert r.plugins["second"].status == "failed"


def test_a_failing_plugin_is_recorded_and_the_rest_work():
    def broken(register):
        register(_method("half-registered"))
        raise RuntimeError("boom")

    with _Fresh() as r:
        with pytest.raises(salfw.PluginError, match="boom"):
            r.register_plugin(reg.plugin_namespace(salfw_register_methods=broken), "broken")
        assert "half-registered" not in r.table("method")  # rolled back
        assert r.plugins["broken"].status == "failed" and "boom" in r.plugins["broken"].error
        assert "gradient" in r.table("method")


def test_an_entry_point_that_raises_on_import_is_isolated(monkeypatch):
    real = reg.importlib.metadata.entry_points

    def with_broken(group):
        eps = list(real(group=group))
        broken = reg.importlib.metadata.EntryPoint("broken-one", "salfw_no_such_module_xyz", "salfw")
        return [*eps, broken]

    monkeypatch.setattr(reg.importlib.metadata, "entry_points", with_broken)
    with _Fresh() as r:
        assert "gradient" in salfw.methods()
        assert r.plugins["broken-one"].status == "failed"
        assert "No module named" in r.plugins["broken-one"].error


def test_unknown_names_list_what_is_available():
    with pytest.raises(salfw.UnknownNameError, match="unknown method 'nope'; available: .*gradient"):
        salfw.explain("nope", salfw.WhiteBox(tiny_mlp()), torch.rand(1, 6))


def test_allow_list_environment_variable(monkeypatch):
    monkeypatch.setenv("SALFW_PLUGINS", "gradient,perturbations")
    with _Fresh() as r:
        assert set(salfw.methods()) <= {"gradient", "input-x-gradient"} and "gradient" in salfw.methods()
        assert r.plugins["gradient"].status == "loaded"
        assert all(p.status == "disabled" for n, p in r.plugins.items() if n not in ("gradient", "perturbations"))


def test_disable_list_environment_variable(monkeypatch):
    monkeypatch.setenv("SALFW_DISABLE_PLUGINS", "gradient")
    with _Fresh():
        assert "gradient" not in salfw.methods() and "input-x-gradient" not in salfw.methods()
        assert "black" in salfw.perturbations()


def test_registered_classes_are_checked():
    bad = type("Bad", (Method,), {"name": "Not Kebab", "attribute": lambda *a: None})
    with _Fresh() as r:
        with pytest.raises(salfw.PluginError, match="kebab-case"):
            r.register_plugin(reg.plugin_namespace(salfw_register_methods=lambda register: register(bad)), "bad")


# -- perturbations ---------------------------------------------------------------------------
RANGE = (-1.0, 2.0)


@pytest.fixture
def img():
    return torch.linspace(-1, 2, 2 * 3 * 6 * 6).reshape(2, 3, 6, 6)


def test_builtin_perturbations_are_registered():
    assert set(salfw.perturbations()) >= {"black", "white", "inverse", "blur", "uniform-noise", "gaussian-noise",
                                          "mean", "constant"}


@pytest.mark.parametrize("name,expected", [
    ("black", lambda x: torch.full_like(x, -1.0)), ("white", lambda x: torch.full_like(x, 2.0)),
    ("inverse", lambda x: 1.0 - x), ("mean", lambda x: x.mean(dim=(2, 3), keepdim=True).expand_as(x)),
])
def test_fills_in_the_input_domain(img, name, expected):
    out = make_perturbation(name).apply(img, torch.zeros(1, 1, 6, 6), RANGE)
    assert torch.allclose(out, expected(img))
    kept = make_perturbation(name).apply(img, torch.ones(1, 1, 6, 6), RANGE)
    assert torch.equal(kept, img)


def test_constant_is_clipped_to_the_range(img):
    out = make_perturbation("constant", value=5).apply(img, torch.zeros_like(img), RANGE)
    assert torch.all(out == 2.0)


def test_blur_keeps_constants_and_smooths(img):
    flat = torch.full((1, 1, 9, 9), 0.3)
    assert torch.allclose(make_perturbation("blur", sigma=2).fill(flat, RANGE, None), flat)
    spike = torch.zeros(1, 1, 9, 9)
    spike[0, 0, 4, 4] = 1
    blurred = make_perturbation("blur", sigma=1).fill(spike, RANGE, None)
    assert blurred[0, 0, 4, 4] < 1 and torch.isclose(blurred.sum(), torch.tensor(1.0), atol=1e-5)


@pytest.mark.parametrize("name", ["uniform-noise", "gaussian-noise"])
def test_noise_is_seeded_in_range_and_shared_across_the_batch(img, name):
    p = make_perturbation(name)
    a = p.fill(img, RANGE, torch.Generator().manual_seed(3))
    b = p.fill(img, RANGE, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.min() >= -1 and a.max() <= 2
    single = p.fill(img[:1], RANGE, torch.Generator().manual_seed(3))
    assert torch.allclose(single[0], a[0])


# -- adapters --------------------------------------------------------------------------------
def test_preprocessing_composes_invert_offset_scale_and_normalisation():
    pre = Preprocessing((0.0, 1.0), invert=True, offset=-0.5, scale=2.0, mean=0.1, std=0.5)
    x = torch.tensor([[0.0, 0.25, 1.0]])
    expected = (((1.0 - x) - 0.5) * 2.0 - 0.1) / 0.5
    assert torch.allclose(pre(x), expected)
    lo, hi = pre.bounds((0.0, 1.0), x)
    assert torch.allclose(lo, expected.min()) and torch.allclose(hi, expected.max())


def test_whitebox_applies_preprocessing_before_the_module():
    net = tiny_mlp()
    m = salfw.WhiteBox(net, offset=-0.5)
    x = torch.rand(4, 6)
    assert torch.allclose(m.scores(x), net(x - 0.5))


def test_blackbox_numpy_nhwc_probabilities_match_the_torch_model():
    net = tiny_cnn()
    x = torch.rand(5, 1, 8, 8)

    def predict_proba(batch):  # NHWC numpy, like many non-torch classifiers
        assert isinstance(batch, np.ndarray) and batch.shape[-1] == 1
        t = torch.from_numpy(batch).permute(0, 3, 1, 2)
        return torch.softmax(net(t), 1).detach().numpy()

    bb = salfw.BlackBox(predict_proba, layout="NHWC", batch_size=2)
    with Context().activated() as ctx:
        assert torch.allclose(bb.probabilities(x), torch.softmax(net(x), 1), atol=1e-6)
    assert bb.output == "probabilities" and ctx.forward_passes == 5
    assert torch.allclose(salfw.BlackBox(net).probabilities(x), torch.softmax(net(x), 1), atol=1e-6)


def test_blackbox_reports_bad_outputs():
    bb = salfw.BlackBox(lambda b: np.zeros((len(b) + 1, 3)))
    with pytest.raises(salfw.ModelError, match=r"shape \(N, classes\)"):
        bb.scores(torch.rand(2, 6))


def test_adapters_reject_wrong_things():
    with pytest.raises(salfw.ModelError, match="torch.nn.Module"):
        salfw.WhiteBox(lambda x: x)
    with pytest.raises(salfw.ParameterError, match="low < high"):
        salfw.WhiteBox(tiny_mlp(), input_range=(1, 0))
    with pytest.raises(salfw.ParameterError, match="callable"):
        salfw.BlackBox(3)


# -- explain: bad input ----------------------------------------------------------------------
@pytest.fixture
def mlp():
    return salfw.WhiteBox(tiny_mlp())


@pytest.mark.parametrize("x,words", [
    (torch.rand(6), "add a batch dimension"), (torch.rand(2, 3, 6), "batch of images"),
    (torch.zeros(2, 6, dtype=torch.int64), "floating point"), (torch.full((2, 6), float("nan")), "NaN"),
    (torch.full((2, 6), 5.0), "outside the model's input_range"), (torch.rand(0, 6), "empty"),
    ("image.png", "torch.Tensor or numpy"),
])
def test_bad_inputs_raise_input_errors(mlp, x, words):
    with pytest.raises(salfw.InputError) as info:
        salfw.explain("gradient", mlp, x)
    assert words in str(info.value)


def test_wrong_shape_for_a_declared_input_shape():
    m = salfw.WhiteBox(tiny_mlp(), input_shape=(6,))
    with pytest.raises(salfw.InputError, match=r"expects \(6,\)"):
        salfw.explain("gradient", m, torch.rand(2, 5))


@pytest.mark.parametrize("target,words", [(3, "out of range"), (-1, "out of range"), ([0], "one class per sample"),
                                          ([0.5, 1], "integer class"), (True, "int class")])
def test_bad_targets(mlp, target, words):
    with pytest.raises(salfw.TargetError) as info:
        salfw.explain("gradient", mlp, torch.rand(2, 6), target=target)
    assert words in str(info.value)


def test_targets_default_to_the_prediction_and_accept_arrays(mlp):
    x = torch.rand(4, 6)
    assert torch.equal(salfw.explain("gradient", mlp, x).targets, mlp.scores(x).argmax(1))
    e = salfw.explain("gradient", mlp, x.numpy(), target=np.array([0, 1, 2, 0]))
    assert e.targets.tolist() == [0, 1, 2, 0]


def test_bad_seed_and_model(mlp):
    with pytest.raises(salfw.ParameterError, match="seed"):
        salfw.explain("gradient", mlp, torch.rand(1, 6), seed="x")
    with pytest.raises(salfw.ModelError, match="WhiteBox or salfw.BlackBox"):
        salfw.explain("gradient", tiny_mlp(), torch.rand(1, 6))


# -- the gradient method ---------------------------------------------------------------------
def test_gradient_of_a_linear_model_is_its_weight_row():
    lin = nn.Linear(6, 3)
    e = salfw.explain("gradient", salfw.WhiteBox(lin), torch.rand(4, 6), target=2)
    assert torch.allclose(e.attributions, lin.weight[2].expand(4, 6))
    ea = salfw.explain("gradient", salfw.WhiteBox(lin), torch.rand(4, 6), target=2, absolute=True)
    assert torch.allclose(ea.attributions, lin.weight[2].abs().expand(4, 6))
    assert e.meta["backward_passes"] == 4 and e.kind == "additive"


def test_gradient_through_preprocessing_is_in_pixel_space():
    lin = nn.Linear(6, 3)
    e = salfw.explain("gradient", salfw.WhiteBox(lin, mean=0.5, std=0.25), torch.rand(2, 6), target=0)
    assert torch.allclose(e.attributions, (lin.weight[0] / 0.25).expand(2, 6))


# -- the guard -------------------------------------------------------------------------------
def test_guard_restores_everything_even_on_error():
    net = tiny_cnn()
    net.train()
    net[0].weight.requires_grad_(False)
    before = model_fingerprint(net)
    with pytest.raises(RuntimeError):
        with preserved(net):
            assert not net.training and not any(p.requires_grad for p in net.parameters())
            net[0].register_forward_hook(lambda *a: None)
            net.register_full_backward_hook(lambda *a: None)
            raise RuntimeError("fail inside")
    assert same_fingerprint(before, model_fingerprint(net))


# -- explanation -----------------------------------------------------------------------------
def test_explanation_heatmap_and_save(tmp_path):
    m = salfw.WhiteBox(tiny_cnn())
    e = salfw.explain("gradient", m, torch.rand(1, 1, 8, 8))
    assert e.heatmap().shape == (1, 8, 8)
    paths = {p.name for p in e.save(tmp_path)}
    assert paths == {"gradient.npy", "gradient.json", "gradient.png", "gradient-overlay.png"}
    meta = json.loads((tmp_path / "gradient.json").read_text())
    assert meta["method"] == "gradient" and meta["params"] == {"absolute": False, "batch_size": 128}
    assert set(meta["meta"]) >= {"seconds", "forward_passes", "backward_passes", "predicted", "probabilities"}
    assert np.allclose(np.load(tmp_path / "gradient.npy"), e.attributions.numpy())


def test_registered_classes_describe_their_parameters_as_design_promises():
    cls = salfw.methods()["gradient"]
    assert (cls.box, cls.kind) == ("white", "additive") and "Simonyan" in cls.summary
    assert cls.params["absolute"]["type"] == "bool" and cls.params["absolute"]["default"] is False
    assert set(salfw.perturbations()["blur"].params) == {"sigma"}
    instance = salfw.core.api.make_method("gradient", absolute=True)
    assert instance.params.absolute is True  # an instance holds its validated values


def test_blackbox_auto_backend_takes_torch_callables_and_numpy_ones():
    net = tiny_mlp()
    x = torch.rand(4, 6)
    as_torch = salfw.BlackBox(lambda batch: net(batch))
    assert torch.allclose(as_torch.scores(x), net(x)) and as_torch.backend == "torch"
    w = np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32)
    as_numpy = salfw.BlackBox(lambda batch: batch.astype(np.float64) @ w)  # tensors have no astype: NumPy
    assert torch.allclose(as_numpy.scores(x), torch.from_numpy(x.numpy() @ w)) and as_numpy.backend == "numpy"
    with pytest.raises(salfw.ModelError, match="black-box callable failed"):
        salfw.BlackBox(lambda batch: 1 / 0).scores(x)
