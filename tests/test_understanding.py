"""Network-level understanding: the toolkit CLI, activation maximisation, TCAV,
DeepRED and the surrogate tree, on hand-built networks whose answers are known."""

import gzip

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from torch import nn

import salfw
from salfw.cli import toolkit as toolkit_cli
from salfw.cli.toolkit import plot_command, train_command
from salfw.core.errors import InputError, ModelRequirementError, ParameterError, UnknownNameError
from salfw.plugins.deepred import predict_rules
from salfw.sdk.understanding import make_explainer
from salfw.sdk.understanding.plots import average_outputs, plot_conv_weights, plot_layer_averages, plot_layer_outputs
from salfw.sdk.understanding.rules import conjoin, leaf_terms
from salfw.sdk.understanding.specs import PRESETS, resolve_spec
from salfw.zoo import toolkit

PNG = b"\x89PNG"


# -- helpers ------------------------------------------------------------------------
def snapshot(module: nn.Module):
    return ({k: v.clone() for k, v in module.state_dict().items()},
            [p.requires_grad for p in module.parameters()], [m.training for m in module.modules()],
            sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules()))


def assert_unchanged(module: nn.Module, before) -> None:
    after = snapshot(module)
    assert before[0].keys() == after[0].keys()
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert before[1:] == after[1:]


def tiny_cnn(seed=0) -> salfw.WhiteBox:
    layers = [{"type": "conv", "out": 4, "kernel": 3, "padding": 1}, {"type": "relu"}, {"type": "maxpool", "kernel": 2},
              {"type": "conv", "out": 6, "kernel": 3, "padding": 1}, {"type": "relu"},
              {"type": "gap"}, {"type": "linear", "out": 3}]
    module = toolkit.build(layers, input_shape=(1, 8, 8), seed=seed)
    module.train()  # the explainers must restore this flag
    return salfw.WhiteBox(module, input_shape=(1, 8, 8))


def threshold_network() -> salfw.WhiteBox:
    """A ReLU MLP that is exactly a depth-2 tree on (x0, x1) away from the 0.5 band:
    class 2 if x1 > 0.5, else class 1 if x0 > 0.5, else class 0."""
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 3))
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(2))
        net[0].bias.fill_(-0.5)
        net[2].weight.copy_(torch.eye(2))
        net[2].bias.zero_()
        net[4].weight.copy_(torch.tensor([[0.0, 0.0], [10.0, -100.0], [0.0, 100.0]]))
        net[4].bias.copy_(torch.tensor([0.1, 0.0, 0.0]))
    return salfw.WhiteBox(net, input_shape=(2,))


def off_band_points(n, seed):
    """Uniform points in [0, 1]^2 with no coordinate in (0.45, 0.55]."""
    x = torch.rand(n, 2, generator=torch.Generator().manual_seed(seed))
    return torch.where(x > 0.5, 0.55 + 0.45 * (x - 0.5) / 0.5, 0.45 * x / 0.5)


def rule_of_thumb(x):
    return torch.where(x[:, 1] > 0.5, 2, torch.where(x[:, 0] > 0.5, 1, 0))


# -- registry ------------------------------------------------------------------------------
def test_explainers_are_registered():
    assert {"activation-maximisation", "tcav", "deepred", "surrogate-tree"} <= set(salfw.model_explainers())
    with pytest.raises(UnknownNameError):
        make_explainer("no-such-explainer")
    with pytest.raises(ParameterError):
        make_explainer("deepred", depth=0)


def test_explainer_settings_use_the_shared_names():
    with pytest.raises(ParameterError, match="'lr' is called 'learning_rate'"):
        make_explainer("activation-maximisation", lr=0.1)
    with pytest.raises(ParameterError, match="'target' is not a parameter"):
        make_explainer("tcav", target=1)
    with pytest.raises(ParameterError, match="'logit' is called 'logits'"):
        make_explainer("activation-maximisation", objective="logit")


NO_SIDE_EFFECTS = """
import matplotlib
matplotlib.use("svg")
import torch
seed = torch.initial_seed()
import pathlib
import salfw
from salfw.evaluation.harness import Comparison, plot_curves
from salfw.sdk.understanding import plots
salfw.methods(), salfw.metrics(), salfw.model_explainers()  # loads every built-in plugin
assert torch.initial_seed() == seed
plots.plot_conv_weights(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3)), "0", "w.png")
plot_curves(Comparison(curves={"m": {"morf": {"fractions": [0.0, 1.0], "a": [1.0, 0.0]}}}), pathlib.Path("."))
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
"""


def test_importing_and_plotting_change_no_global_state(tmp_path):
    """No matplotlib.use and no global torch seeding, on import or when drawing."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", NO_SIDE_EFFECTS], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "w.png").read_bytes()[:4] == PNG and (tmp_path / "curves-m.png").exists()


# -- activation maximisation ----------------------------------------------------------------
def pattern_cnn() -> salfw.WhiteBox:
    """Class k's logit is the mean ReLU response of a zero-sum 3x3 pattern filter k (horizontal edge,
    vertical edge, centre dot): near 0 on a flat grey image, large only on the pattern."""
    filters = torch.tensor([[[1.0, 1, 1], [-1, -1, -1], [0, 0, 0]],
                            [[1.0, -1, 0], [1, -1, 0], [1, -1, 0]],
                            [[-1.0, -1, -1], [-1, 8, -1], [-1, -1, -1]]])
    module = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                           nn.Flatten(), nn.Linear(3, 3, bias=False))
    with torch.no_grad():
        module[0].weight.copy_(filters[:, None])
        module[4].weight.copy_(torch.eye(3))
    module.train()  # the explainers must restore this flag
    return salfw.WhiteBox(module, input_shape=(1, 8, 8))


def test_activation_maximisation_raises_each_target_far_above_its_start():
    model = pattern_cnn()
    before = snapshot(model.module)
    # no jitter: the edge filters' optima are period-2 stripes, which a one-pixel shift inverts
    params = dict(classes=(0, 1, 2), iterations=80, learning_rate=0.1, init_noise=0.02, jitter=0)
    result = make_explainer("activation-maximisation", **params).run(model, seed=3)
    assert_unchanged(model.module, before)
    start, end = result["objective_start"], result["objective_end"]
    assert result["inputs"].shape == (3, 1, 8, 8)
    assert result["inputs"].min() >= 0 and result["inputs"].max() <= 1
    assert (end - start > 0.3).all() and (end > 2 * start).all(), (start, end)
    random_inputs = torch.rand(500, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    best_random = model.scores(random_inputs).max(0).values
    assert (end > best_random).all(), (end, best_random)  # beats the best of 500 random images
    # each class scores highest on its own synthesis
    assert torch.equal(model.scores(result["inputs"]).argmax(0), torch.tensor([0, 1, 2]))
    again = make_explainer("activation-maximisation", **params).run(model, seed=3)
    assert torch.equal(again["inputs"], result["inputs"])  # same seed, same synthesis


def test_activation_maximisation_of_a_channel():
    model = tiny_cnn()
    result = make_explainer("activation-maximisation", layer="3", channels=(0, 5), iterations=40,
                            learning_rate=0.1).run(model)
    assert (result["objective_end"] > result["objective_start"] + 0.05).all()
    with pytest.raises(ParameterError, match="6 channels"):
        make_explainer("activation-maximisation", layer="3", channels=(6,), iterations=2).run(model)
    with pytest.raises(ParameterError, match="no layer named"):
        make_explainer("activation-maximisation", layer="nope", iterations=2).run(model)
    with pytest.raises(ParameterError, match="3 classes"):
        make_explainer("activation-maximisation", classes=(3,), iterations=2).run(model)


def test_activation_maximisation_needs_a_white_box_and_an_image_shape():
    with pytest.raises(ModelRequirementError):
        make_explainer("activation-maximisation").run(salfw.BlackBox(lambda x: x.flatten(1)[:, :3]))
    net = salfw.WhiteBox(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)))
    with pytest.raises(ParameterError, match="shape"):
        make_explainer("activation-maximisation", iterations=2).run(net)
    result = make_explainer("activation-maximisation", classes=(0, 2), iterations=2, shape=(1, 8, 8)).run(net)
    assert result["inputs"].shape == (2, 1, 8, 8)


# -- TCAV ------------------------------------------------------------------------------
D, H = 16, 32


def concept_network() -> salfw.WhiteBox:
    """Layer '0' is the identity; class 1's logit is 3 (relu(u.f) - relu(-u.f)) = 3 u.f plus small
    random ReLU terms, so its gradient at layer '0' is u plus input-dependent noise: the concept
    "the first four features are high" (direction u) provably raises class 1."""
    g = torch.Generator().manual_seed(3)
    u = torch.zeros(D)
    u[:4] = 1.0
    net = nn.Sequential(nn.Linear(D, D), nn.Linear(D, H), nn.ReLU(), nn.Linear(H, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(D))
        net[0].bias.zero_()
        net[1].weight.copy_(torch.randn(H, D, generator=g))
        net[1].weight[0] = u
        net[1].weight[1] = -u
        net[1].bias.zero_()
        c = torch.randn(H, generator=g) * 0.3
        c[0], c[1] = 3.0, -3.0
        net[3].weight.copy_(torch.stack([-c, c]))
        net[3].bias.zero_()
    return salfw.WhiteBox(net, input_range=(-1, 1), input_shape=(D,))


def test_tcav_finds_the_used_concept_and_not_a_random_one():
    model = concept_network()
    g = torch.Generator().manual_seed(103)
    concept = torch.rand(60, D, generator=g) * 2 - 1
    concept[:, :4] = concept[:, :4] * 0.5 + 0.5
    random_concept = torch.rand(60, D, generator=g) * 2 - 1
    inputs = torch.rand(50, D, generator=g) * 2 - 1
    before = snapshot(model.module)
    result = make_explainer("tcav", layer="0", class_index=1).run(
        model, {"concepts": {"high": concept, "random": random_concept}, "inputs": inputs}, seed=3)
    assert_unchanged(model.module, before)
    high, rand = result["concepts"]["high"], result["concepts"]["random"]
    assert high["mean"] > 0.95 and high["significant"] and high["p_value"] < 0.01
    assert not rand["significant"] and rand["p_value"] > 0.05
    assert len(result["random_scores"]) == 10
    # for the other class the concept lowers the logit: score near 0, still significant
    other = make_explainer("tcav", layer="0", class_index=0, classifier="logistic").run(
        model, {"concepts": {"high": concept}, "inputs": inputs}, seed=3)
    assert other["concepts"]["high"]["mean"] < 0.05 and other["concepts"]["high"]["significant"]


def test_tcav_rejects_bad_data():
    model = concept_network()
    x = torch.rand(10, D)
    tcav = make_explainer("tcav", layer="0", runs=2)
    with pytest.raises(InputError, match="concepts"):
        tcav.run(model, None)
    with pytest.raises(InputError, match="unknown keys"):
        tcav.run(model, {"concepts": {"c": x}, "inputs": x, "extra": 1})
    with pytest.raises(InputError, match="sample shape"):
        tcav.run(model, {"concepts": {"c": torch.rand(10, D + 1)}, "inputs": x})
    with pytest.raises(InputError, match="runs \\+ 1"):
        tcav.run(model, {"concepts": {"c": x}, "inputs": x, "random": [x]})
    with pytest.raises(ParameterError, match="no layer named"):
        make_explainer("tcav", runs=2).run(model, {"concepts": {"c": x}, "inputs": x})
    with pytest.raises(ParameterError, match="2 classes"):
        make_explainer("tcav", layer="0", class_index=5, runs=2).run(model, {"concepts": {"c": x}, "inputs": x})


# -- rules and DeepRED -------------------------------------------------------------------
def test_leaf_terms_and_conjoin():
    from sklearn.tree import DecisionTreeClassifier

    x = np.array([[0.0], [1.0], [2.0], [3.0]])
    tree = DecisionTreeClassifier().fit(x, [0, 0, 1, 1])
    assert sorted((t[0], c) for t, c in leaf_terms(tree)) == [((-np.inf, 1.5), 0), ((1.5, np.inf), 1)]
    assert conjoin({0: (0.0, 1.0)}, {0: (1.0, 2.0)}) is None
    assert conjoin({0: (0.0, 2.0)}, {0: (1.0, 3.0), 1: (-1.0, 0.0)}) == {0: (1.0, 2.0), 1: (-1.0, 0.0)}


def test_deepred_reproduces_a_network_that_is_a_tree():
    model = threshold_network()
    train, held = off_band_points(300, 0), off_band_points(400, 1)
    assert torch.equal(model.scores(held).argmax(1), rule_of_thumb(held))  # the network is the tree
    before = snapshot(model.module)
    result = make_explainer("deepred", output_depth=2, depth=1, min_samples_leaf=1).run(
        model, {"inputs": train, "heldout": held, "labels": rule_of_thumb(held)})
    assert_unchanged(model.module, before)
    assert result["fidelity"] == 1.0 and result["train_fidelity"] == 1.0 and result["accuracy"] == 1.0
    assert result["rule_count"] == 3
    for term, _, _ in result["rules"]:  # every rule speaks of the inputs, thresholds near 0.5
        assert set(term) <= {0, 1}
        assert all(0.4 < b < 0.6 for lo, hi in term.values() for b in (lo, hi) if np.isfinite(b))


def test_deepred_on_an_mlp_reports_its_fidelity_honestly():
    torch.manual_seed(0)
    x = torch.rand(400, 1, 6, 6)
    y = (x[:, 0, 1, 1] > 0.5).long() + 2 * (x[:, 0, 4, 4] > 0.5).long()  # a two-pixel task
    layers = [{"type": "flatten"}, {"type": "linear", "out": 16}, {"type": "relu"},
              {"type": "linear", "out": 8}, {"type": "relu"}, {"type": "linear", "out": 4}]
    module = toolkit.build(layers, input_shape=(1, 6, 6), seed=0)
    toolkit.train(module, x[:300], y[:300], epochs=30, lr=1e-2, seed=0)
    model = salfw.WhiteBox(module, input_shape=(1, 6, 6))
    result = make_explainer("deepred").run(model, {"inputs": x[:300], "heldout": x[300:]})
    network = model.scores(x[300:]).argmax(1).numpy()
    rules_say = predict_rules(result["rules"], x[300:].flatten(1).double().numpy(), 4, result["default_class"])
    assert result["fidelity"] == pytest.approx(np.mean(rules_say == network))
    assert result["fidelity"] > 0.6  # measured 0.71 (train 0.85) with 157 rules
    assert result["fidelity"] > np.mean(network == np.bincount(network).argmax()) + 0.2  # beats a constant guess
    assert result["rule_count"] == len(result["text"]) > 0


def test_deepred_needs_an_mlp():
    with pytest.raises(ModelRequirementError, match="Conv2d"):
        make_explainer("deepred").run(tiny_cnn(), {"inputs": torch.rand(4, 1, 8, 8), "heldout": torch.rand(4, 1, 8, 8)})
    with pytest.raises(InputError, match="heldout"):
        make_explainer("deepred").run(threshold_network(), {"inputs": torch.rand(4, 2)})
    with pytest.raises(InputError, match="labels"):
        make_explainer("deepred").run(threshold_network(), {"inputs": torch.rand(4, 2), "heldout": torch.rand(4, 2),
                                                            "labels": torch.zeros(3, dtype=torch.long)})


# -- surrogate tree -----------------------------------------------------------------------
def test_surrogate_tree_finds_the_one_pixel_a_network_reads():
    """A network that thresholds pixel (2, 5): the tree splits there only, fidelity 1.0."""
    weight = torch.zeros(2, 1, 8, 8)
    weight[1, 0, 2, 5] = 1.0
    module = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    with torch.no_grad():
        module[1].weight.copy_(weight.flatten(1))
        module[1].bias.copy_(torch.tensor([0.5, 0.0]))
    model = salfw.WhiteBox(module, input_shape=(1, 8, 8))
    g = torch.Generator().manual_seed(0)
    x, held = torch.rand(200, 1, 8, 8, generator=g), torch.rand(200, 1, 8, 8, generator=g)
    before = snapshot(module)
    result = make_explainer("surrogate-tree", max_depth=3).run(model, {"inputs": x, "heldout": held})
    assert_unchanged(module, before)
    importance = result["importance"]
    assert importance.shape == (1, 8, 8)
    assert importance.sum().item() == pytest.approx(1.0)
    assert importance[0, 2, 5].item() == pytest.approx(1.0)
    assert result["fidelity"] > 0.97


def test_surrogate_tree_on_a_cnn_and_a_black_box():
    """A CNN that calls an image bright (class 0) when its mean local mean passes a threshold."""
    module = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad():
        module[0].weight.zero_()
        module[0].weight[0] = 1 / 9
        module[0].bias.copy_(torch.tensor([0.0, 0.4]))
    model = salfw.WhiteBox(module, input_shape=(1, 8, 8))
    g = torch.Generator().manual_seed(1)
    x = torch.rand(100, 1, 8, 8, generator=g)
    assert 0 < model.scores(x).argmax(1).float().mean() < 1
    result = make_explainer("surrogate-tree").run(model, {"inputs": x[:60], "heldout": x[60:],
                                                          "labels": torch.zeros(40, dtype=torch.long)})
    assert result["importance"].shape == (1, 8, 8)
    assert result["importance"].sum().item() == pytest.approx(1.0)
    black = salfw.BlackBox(lambda z: model.scores(z), input_shape=(1, 8, 8), backend="torch")
    again = make_explainer("surrogate-tree").run(black, {"inputs": x[:60], "heldout": x[60:]})
    assert torch.equal(again["importance"], result["importance"])
    with pytest.raises(InputError, match="sample shape"):
        make_explainer("surrogate-tree").run(model, {"inputs": torch.rand(5, 64), "heldout": torch.rand(5, 64)})


# -- toolkit: specs, plots, CLI --------------------------------------------------------------
def test_resolve_spec(tmp_path):
    assert resolve_spec("cnn-offset")["offset"] == -0.5
    assert set(PRESETS) == {"mlp", "cnn", "cnn-nobias", "cnn-offset"}
    path = tmp_path / "s.json"
    path.write_text('{"layers": [{"type": "flatten"}, {"type": "linear", "out": 10}]}')
    assert resolve_spec(str(path))["bias"] is True
    with pytest.raises(ParameterError, match="preset"):
        resolve_spec("nothing-here")
    path.write_text('{"layers": [], "colour": 1}')
    with pytest.raises(ParameterError, match="colour"):
        resolve_spec(str(path))


def test_plots(tmp_path):
    model = tiny_cnn()
    x = torch.rand(5, 1, 8, 8)
    for path in (plot_conv_weights(model.module, "0", tmp_path / "w.png"),
                 plot_layer_outputs(model, x[:1], "1", tmp_path / "o.png"),
                 plot_layer_outputs(model, x[:1], "6", tmp_path / "o2.png"),
                 plot_layer_averages(model, x, tmp_path / "a.png")):
        assert open(path, "rb").read(4) == PNG
    averages = average_outputs(model, x)
    assert averages["0"].shape == (4,) and averages["7"].shape == (3,)
    with torch.no_grad():
        expected = model.module[:2](x).mean((0, 2, 3))
    assert torch.allclose(averages["1"], expected, atol=1e-6)
    with pytest.raises(ParameterError, match="Conv2d"):
        plot_conv_weights(model.module, "1", tmp_path / "bad.png")


def write_idx(path, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes(), compresslevel=1))


@pytest.fixture(scope="module")
def fake_mnist(tmp_path_factory):
    """10,000 28x28 'digits': class k is a bright bar in row block k, plus noise."""
    directory = tmp_path_factory.mktemp("mnist")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 10000)
    images = rng.integers(0, 60, (10000, 28, 28))
    for k in range(10):
        images[labels == k, 2 + 2 * k:4 + 2 * k, 4:24] = 255
    write_idx(directory / "t10k-images-idx3-ubyte.gz", images, 0x803)
    write_idx(directory / "t10k-labels-idx1-ubyte.gz", labels, 0x801)
    return directory


def test_cli_train_is_deterministic_and_test_reports(fake_mnist, tmp_path):
    runner = CliRunner()
    common = ["--spec", "mlp", "--epochs", "1", "--limit", "256", "--mnist-dir", str(fake_mnist)]
    first = runner.invoke(train_command, [*common, "--seed", "4", "--out", str(tmp_path / "a.safetensors")])
    assert first.exit_code == 0, first.output
    assert "held-out accuracy" in first.output
    runner.invoke(train_command, [*common, "--seed", "4", "--out", str(tmp_path / "b.safetensors")])
    runner.invoke(train_command, [*common, "--seed", "5", "--out", str(tmp_path / "c.safetensors")])
    a, b, c = (load_file(tmp_path / f"{n}.safetensors") for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed: bit-identical weights
    assert not all(torch.equal(a[k], c[k]) for k in a)
    _, _, metadata = toolkit.load(tmp_path / "a.safetensors")
    assert metadata["seed"] == 4 and metadata["train_images"] == 256

    result = runner.invoke(toolkit_cli.test_command, ["--model", str(tmp_path / "a.safetensors"), "--limit", "300",
                                                      "--mnist-dir", str(fake_mnist), "--out", str(tmp_path / "t"),
                                                      "--errors", "8"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    accuracy = float(lines[0].split(":")[1].strip().rstrip("%")) / 100
    rows = [list(map(int, line.split()[1:])) for line in lines[3:13]]
    assert sum(map(sum, rows)) == 300
    assert sum(rows[k][k] for k in range(10)) / 300 == pytest.approx(accuracy, abs=5e-5)
    if accuracy < 1.0:
        assert open(tmp_path / "t" / "errors.png", "rb").read(4) == PNG


def test_cli_offset_spec_and_plot(fake_mnist, tmp_path):
    runner = CliRunner()
    spec = tmp_path / "spec.json"
    spec.write_text('{"layers": [{"type": "conv", "out": 2, "kernel": 3}, {"type": "relu"}, {"type": "gap"},'
                    ' {"type": "linear", "out": 10}], "offset": -0.5, "bias": false}')
    out = tmp_path / "m.safetensors"
    result = runner.invoke(train_command, ["--spec", str(spec), "--epochs", "1", "--limit", "64",
                                           "--mnist-dir", str(fake_mnist), "--out", str(out)])
    assert result.exit_code == 0, result.output
    from salfw.cli.toolkit import load_toolkit_model

    model = load_toolkit_model(str(out))
    module, _, _ = toolkit.load(out)
    x = torch.rand(3, 1, 28, 28)
    assert torch.allclose(model.scores(x), module(x - 0.5), atol=1e-6)  # the offset is applied
    for what, layer in (("weights", "0"), ("outputs", "1"), ("averages", None)):
        args = ["--model", str(out), "--what", what, "--out", str(tmp_path / f"{what}.png")]
        result = runner.invoke(plot_command, args + (["--layer", layer] if layer else []))
        assert result.exit_code == 0, result.output
        assert open(tmp_path / f"{what}.png", "rb").read(4) == PNG
    result = runner.invoke(plot_command, ["--model", str(out), "--what", "weights", "--out", str(tmp_path / "x.png")])
    assert result.exit_code != 0 and "--layer" in result.output


def test_cli_errors(fake_mnist, tmp_path):
    runner = CliRunner()
    result = runner.invoke(train_command, ["--spec", "nope", "--out", str(tmp_path / "m.safetensors"),
                                           "--mnist-dir", str(fake_mnist)])
    assert isinstance(result.exception, ParameterError)
    result = runner.invoke(train_command, ["--spec", "mlp", "--out", str(tmp_path / "m.safetensors"),
                                           "--mnist-dir", str(tmp_path / "nowhere")])
    assert result.exit_code != 0 and "MNIST" in result.output
    result = runner.invoke(toolkit_cli.test_command, ["--model", str(tmp_path / "missing.safetensors")])
    assert isinstance(result.exception, InputError)


# -- the built-in models ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mnist_digits():
    from salfw.zoo import mnist

    directory = mnist.default_mnist_dir()
    if not any((directory / f"t10k-images-idx3-ubyte{ext}").exists() for ext in ("", ".gz")):
        pytest.skip(f"MNIST not found at {directory} (set SALFW_MNIST_DIR)")
    images, labels = mnist.load_mnist(directory)
    return images[mnist.TRAIN_SLICE][:300], images[mnist.HELDOUT_SLICE][:500], labels[mnist.HELDOUT_SLICE][:500]


def test_deepred_and_surrogate_on_the_builtin_mlp(mnist_digits):
    train, held, labels = mnist_digits
    model = salfw.load_model("builtin:mnist-mlp")
    before = snapshot(model.module)
    data = {"inputs": train, "heldout": held, "labels": labels}
    rules = make_explainer("deepred").run(model, data)
    surrogate = make_explainer("surrogate-tree").run(model, data)
    assert_unchanged(model.module, before)
    network = model.scores(held).argmax(1).numpy()
    majority = np.mean(network == np.bincount(network).argmax())
    for result in (rules, surrogate):  # both beat a constant guess, neither matches the network
        assert majority + 0.1 < result["fidelity"] < 0.9
    assert rules["rule_count"] > 10
    assert surrogate["importance"].shape == (1, 28, 28)


def test_activation_maximisation_on_the_builtin_cnn():
    model = salfw.load_model("builtin:mnist-cnn")
    result = make_explainer("activation-maximisation", classes=(3, 7), iterations=24).run(model)
    assert (result["objective_end"] > result["objective_start"] + 5).all()
    scores = model.scores(result["inputs"])[:, [3, 7]]
    assert scores[0, 0] > scores[1, 0] and scores[1, 1] > scores[0, 1]  # each class likes its own image best
    # the log-probability objective also pushes the other classes down: each image is taken for its class
    probable = make_explainer("activation-maximisation", classes=(2, 3, 9), iterations=32,
                              objective="log-probabilities").run(model)
    assert model.scores(probable["inputs"]).argmax(1).tolist() == [2, 3, 9]


@pytest.mark.parametrize("name", ["mnist-mlp", "mnist-cnn-offset"])
def test_cli_test_reproduces_the_recorded_accuracy(name, mnist_digits, tmp_path):
    """`salfw test` on a built-in model gives the accuracy recorded in models.json (the offset model
    checks that the recorded preprocessing is applied)."""
    from salfw.zoo.plugin import models_index

    result = CliRunner().invoke(toolkit_cli.test_command, ["--model", f"builtin:{name}", "--errors", "0"])
    assert result.exit_code == 0, result.output
    accuracy = float(result.output.splitlines()[0].split(":")[1].strip().rstrip("%")) / 100
    assert accuracy == pytest.approx(models_index()[name]["accuracy"], abs=1e-4)
