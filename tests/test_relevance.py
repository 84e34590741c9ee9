"""Relevance propagation family: conservation, sign and bound properties, closed forms,
Captum's LRP test cases, and rules and composites registered through the plugin hooks. All in
float64 on small random networks."""

from __future__ import annotations

import contextlib
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import salfw
from salfw.core.api import composites, rules
from salfw.core.errors import ModelRequirementError, ParameterError, PluginError, UnknownNameError
from salfw.core.registry import get_registry, plugin_namespace
from salfw.sdk.propagation import (
    Composite,
    Excitation,
    Rule,
    Settings,
    ZBox,
    ZPlus,
    modified_gradients,
    stabilize,
)

SETTINGS = settings(max_examples=15, deadline=None)


class Residual(nn.Module):
    """A ResNet-style basic block: relu(x + conv(relu(conv(x)))), not an nn.Sequential."""

    def __init__(self, c, bias=False):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=bias)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=bias)
        self.out = nn.ReLU()

    def forward(self, x):
        return self.out(x + self.conv2(self.relu(self.conv1(x))))


def mlp(seed, widths, bias=False):
    torch.manual_seed(seed)
    layers, d = [nn.Flatten()], 16
    for w in widths:
        layers += [nn.Linear(d, w, bias=bias), nn.ReLU()]
        d = w
    layers.append(nn.Linear(d, 4, bias=bias))
    return nn.Sequential(*layers).double()


def cnn(seed, channels, bias=False, residual=False):
    torch.manual_seed(seed)
    layers = [nn.Conv2d(1, channels, 3, padding=1, bias=bias), nn.ReLU(), nn.MaxPool2d(2)]
    if residual:
        layers.append(Residual(channels, bias))
    layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=bias), nn.ReLU(), nn.AvgPool2d(2),
               nn.Flatten(), nn.Linear(channels * 4, 4, bias=bias)]
    return nn.Sequential(*layers).double()


networks = st.one_of(
    st.builds(mlp, st.integers(0, 10_000), st.lists(st.integers(2, 12), min_size=1, max_size=3)),
    st.builds(cnn, st.integers(0, 10_000), st.integers(1, 5), st.just(False), st.booleans()))


plain_networks = st.one_of(
    st.builds(mlp, st.integers(0, 10_000), st.lists(st.integers(2, 12), min_size=1, max_size=3)),
    st.builds(cnn, st.integers(0, 10_000), st.integers(1, 5)))


def inputs(net, seed, n=3):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 4, 4, generator=g, dtype=torch.float64) if isinstance(net[0], nn.Flatten) and \
        net[1].in_features == 16 else torch.rand(n, 1, 8, 8, generator=g, dtype=torch.float64)


def input_x_gradient(model, x, targets):
    x = x.clone().requires_grad_(True)
    out = model.forward(x).gather(1, targets[:, None]).sum()
    (g,) = torch.autograd.grad(out, x)
    return x.detach() * g


def zplus_denominator(rule, layer, x):
    """Σ_j x⁺_j w⁺_jk + x⁻_j w⁻_jk: the bias-free z⁺ denominator, from the definition."""
    w = layer.weight
    return layer.forward(x.clamp(min=0), w.clamp(min=0), None) + layer.forward(x.clamp(max=0), w.clamp(max=0), None)


def zbox_denominator(rule, layer, x):
    """Σ_j x_j w_jk − l_j w⁺_jk − h_j w⁻_jk: the z^B denominator (its bias terms cancel)."""
    w = layer.weight
    low = torch.as_tensor(rule.low, dtype=x.dtype).expand_as(x)
    high = torch.as_tensor(rule.high, dtype=x.dtype).expand_as(x)
    return layer.forward(x, w, None) - layer.forward(low, w.clamp(min=0), None) - \
        layer.forward(high, w.clamp(max=0), None)


def excitation_denominator(rule, layer, x):
    """Σ_j x_j w⁺_jk (``(−w)⁺`` for the contrastive dual unit)."""
    w = -layer.weight if rule.negate else layer.weight
    return layer.forward(x, w.clamp(min=0), None)


@contextlib.contextmanager
def dead_unit_relevance():
    """While active, every z⁺ (bias-free), z^B and excitation layer the propagation visits records,
    per sample, the relevance reaching its units whose denominator is zero: units none of whose
    inputs contributes, the only relevance these rules may lose. Yields {module: lost (N,)},
    summed over the propagations run while it is active."""
    lost: dict[nn.Module, torch.Tensor] = {}

    def recording(call, denominator):
        def rule(self, layer, x, z, relevance):
            if not getattr(self, "bias", False):  # z-plus-bias loses its bias's share too: not recorded
                dead = (denominator(self, layer, x) == 0).to(relevance)
                lost[layer.module] = lost.get(layer.module, 0) + (relevance * dead).flatten(1).sum(1)
            return call(self, layer, x, z, relevance)
        return rule

    with mock.patch.object(ZPlus, "__call__", recording(ZPlus.__call__, zplus_denominator)), \
            mock.patch.object(ZBox, "__call__", recording(ZBox.__call__, zbox_denominator)), \
            mock.patch.object(Excitation, "__call__", recording(Excitation.__call__, excitation_denominator)):
        yield lost


def assert_conserved(e, logits, net, lost, rel=1e-6):
    """From the explained logit down, each Linear/Conv layer receives what the layer above passed
    on and passes on all of it but the relevance of its dead units (``lost``); the input's map sums
    to what the lowest layer passed on. Holds on every draw, dead units or not."""
    paths = {m: path for path, m in net.named_modules()}
    explained = logits.gather(1, e.targets[:, None])[:, 0]
    tol = rel * explained.abs().clamp(min=1e-3)
    running = explained
    for layer in reversed(e.meta["layers"]):
        out = torch.tensor(layer["relevance_out"], dtype=torch.float64)
        assert (out - running).abs().le(tol).all(), (layer, running)
        running = running - next((v for m, v in lost.items() if paths[m] == layer["layer"]), 0)
        assert (torch.tensor(layer["relevance_in"], dtype=torch.float64) - running).abs().le(tol).all(), layer
    assert (e.attributions.flatten(1).sum(1) - running).abs().le(tol).all()


@SETTINGS
@given(plain_networks, st.integers(0, 1000), st.sampled_from([
    ("deep-taylor", {"first_rule": "z-box"}), ("deep-taylor", {"first_rule": "w-square"}),
    ("deep-taylor", {"first_rule": "z-plus"}), ("lrp", {"rules": "*=epsilon", "epsilon": 1e-12}),
    ("lrp", {"rules": "*=z-plus"}), ("lrp", {"composite": "epsilon-plus", "epsilon": 1e-12})]))
def test_conservation_at_every_layer(net, seed, method):
    """Bias-free ReLU networks: relevance sums to the explained logit at every Linear/Conv layer,
    except that an output none of whose inputs contributes positively (a negative logit with
    z⁺ = 0) has nowhere to send its relevance: then every layer below holds zero. No hidden unit
    loses any (without biases an active unit has a positive input). (Residual additions are checked
    with LRP-ε below: z⁺ is not conservative across an addition whose branch has no positive
    contribution.)"""
    name, params = method
    model = salfw.WhiteBox(net)
    x = inputs(net, seed)
    with dead_unit_relevance() as lost:
        e = salfw.explain(name, model, x, **params, stabilizer=1e-12)
    top = [m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
    assert all(torch.equal(v, torch.zeros_like(v)) for m, v in lost.items() if m is not top), lost
    assert_conserved(e, model.scores(x), net, lost)


biased_networks = st.one_of(
    st.builds(mlp, st.integers(0, 10_000), st.lists(st.integers(2, 12), min_size=1, max_size=3), st.just(True)),
    st.builds(cnn, st.integers(0, 10_000), st.integers(1, 5), st.just(True)))


@settings(max_examples=30, deadline=None)
@given(biased_networks, st.integers(0, 1000), st.sampled_from([
    ("deep-taylor", {"first_rule": "z-box"}), ("deep-taylor", {"first_rule": "w-square"}),
    ("deep-taylor", {"first_rule": "z-plus"}), ("lrp", {"composite": "deep-taylor"})]))
def test_deep_taylor_conserves_on_biased_networks(net, seed, method):
    """Networks with biases (PyTorch's default initialisation, both signs): deep Taylor's z⁺ and z^B
    leave the bias out of the denominator (Montavon et al. 2017), so each layer passes on all its
    relevance but that of units none of whose inputs contributes (switched on by a positive bias
    alone). Zennit's ``z-plus-bias`` would lose the bias's share b⁺/(z⁺ + b⁺) at every unit."""
    name, params = method
    model = salfw.WhiteBox(net)
    x = inputs(net, seed)
    with dead_unit_relevance() as lost:
        e = salfw.explain(name, model, x, **params, stabilizer=1e-12)
    assert_conserved(e, model.scores(x), net, lost)


@SETTINGS
@given(plain_networks, st.integers(0, 1000), st.floats(-0.5, 0.5), st.floats(0.5, 3.0), st.booleans())
def test_z_plus_sign_and_z_box_bounds(net, seed, offset, scale, invert):
    """Deep Taylor relevance has the sign of the explained logit everywhere (z+ hidden layers are
    non-negative for a positive logit; z^B is non-negative for inputs inside its box), also when
    the preprocessing (offset, scale, invert) moves the box away from the pixel range. (Not with
    residual additions: a branch with a negative sum takes a negative share there.)"""
    model = salfw.WhiteBox(net, offset=offset, scale=scale, invert=invert)
    x = inputs(net, seed)
    e = salfw.explain("deep-taylor", model, x)
    sign = model.scores(x).gather(1, e.targets[:, None]).sign().view(-1, *([1] * (x.dim() - 1)))
    assert ((e.attributions * sign) >= -1e-12).all()
    lo, hi = model.preprocessing.bounds(model.input_range, x)
    y = model.preprocessing(x)
    assert (y >= lo - 1e-12).all() and (y <= hi + 1e-12).all()


def test_z_box_closed_form_on_one_layer():
    """One bias-free linear layer: R_j = (x_j w_j − l w⁺_j − h w⁻_j) / Σ (…) · z, with the box of
    [0, 1] mapped through offset −0.5 and scale 2, i.e. l = −1, h = 1."""
    torch.manual_seed(3)
    layer = nn.Linear(5, 2, bias=False).double()
    model = salfw.WhiteBox(layer, offset=-0.5, scale=2.0)
    x = torch.rand(4, 5, dtype=torch.float64)
    e = salfw.explain("deep-taylor", model, x, target=1, stabilizer=0.0)
    w, y = layer.weight[1].detach(), 2 * (x - 0.5)
    num = y * w - (-1.0) * w.clamp(min=0) - 1.0 * w.clamp(max=0)
    expected = num / num.sum(1, keepdim=True) * (y @ w)[:, None]
    torch.testing.assert_close(e.attributions, expected, rtol=1e-10, atol=1e-12)


@SETTINGS
@given(networks, st.integers(0, 1000))
def test_epsilon_lrp_and_deeplift_equal_input_x_gradient(net, seed):
    """Bias-free ReLU network (max/avg pooling, residual additions), zero baseline:
    LRP-ε (ε → 0) and DeepLIFT-rescale both equal input × gradient."""
    model = salfw.WhiteBox(net)
    x = inputs(net, seed)
    e = salfw.explain("lrp", model, x, rules="*=epsilon", epsilon=1e-13, stabilizer=1e-13)
    ixg = input_x_gradient(model, x, e.targets)
    torch.testing.assert_close(e.attributions, ixg, rtol=1e-6, atol=1e-9)
    d = salfw.explain("deeplift", model, x, baseline="black")
    torch.testing.assert_close(d.attributions, ixg, rtol=1e-6, atol=1e-9)


@SETTINGS
@given(st.integers(0, 10_000), st.integers(1, 4), st.integers(0, 1000), st.sampled_from(["white", "blur", "mean"]))
def test_deeplift_summation_to_delta(net_seed, channels, seed, baseline):
    """Rescale rule with biases, max pooling and a residual block: Σ attributions = f(x) − f(x̄)."""
    net = cnn(net_seed, channels, bias=True, residual=True)
    model = salfw.WhiteBox(net)
    x = inputs(net, seed)
    e = salfw.explain("deeplift", model, x, baseline=baseline)
    delta = (model.scores(x) - model.scores(e.meta["baseline"])).gather(1, e.targets[:, None])[:, 0]
    torch.testing.assert_close(e.attributions.flatten(1).sum(1), delta, rtol=1e-7, atol=1e-10)


def test_deeplift_baseline_tensor_and_errors():
    net = cnn(0, 2, bias=True)
    model = salfw.WhiteBox(net)
    x = inputs(net, 0)
    base = torch.full((1, 8, 8), 0.25, dtype=torch.float64)
    e = salfw.explain("deeplift", model, x, baseline=base)
    delta = (model.scores(x) - model.scores(base.expand_as(x))).gather(1, e.targets[:, None])[:, 0]
    torch.testing.assert_close(e.attributions.flatten(1).sum(1), delta)
    with pytest.raises(ParameterError, match="baseline must be shaped like one sample"):
        salfw.explain("deeplift", model, x, baseline=torch.zeros(3, 3))

    class Functional(nn.Module):
        """A functional relu is a node of the captured graph with the rescale rule, like nn.ReLU."""

        def __init__(self, last=torch.relu):
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.last = last

        def forward(self, x):
            return self.last(self.fc(x))

    functional = salfw.WhiteBox(Functional().double())
    x = torch.rand(2, 4, dtype=torch.float64)
    e = salfw.explain("deeplift", functional, x, baseline="white")
    delta = (functional.scores(x) - functional.scores(torch.ones_like(x))).gather(1, e.targets[:, None])[:, 0]
    torch.testing.assert_close(e.attributions.sum(1), delta)
    with pytest.raises(ModelRequirementError, match="no rule for the operation 'sin'"):
        salfw.explain("deeplift", salfw.WhiteBox(Functional(torch.sin)), torch.rand(2, 4))


@SETTINGS
@given(plain_networks, st.integers(0, 1000))
def test_excitation_backprop_is_a_probability(net, seed):
    """With non-negative inputs the marginal winning probabilities are ≥ 0 and sum to 1, but for the
    probability reaching a unit without any excitatory input (Σ_j x_j w⁺_jk = 0; in these bias-free
    networks only an output unit can be one), which is lost; the contrastive map is their difference
    with the dual unit's, summing to 0 when neither loses any."""
    model = salfw.WhiteBox(net)
    x = inputs(net, seed)
    with dead_unit_relevance() as lost_target:
        e = salfw.explain("excitation-backprop", model, x, stabilizer=1e-14)
    with dead_unit_relevance() as lost_both:
        c = salfw.explain("contrastive-excitation-backprop", model, x, stabilizer=1e-14)
    assert (e.attributions >= 0).all() and (c.meta["dual_map"] >= 0).all()
    target_sum, dual_sum = e.attributions.flatten(1).sum(1), c.meta["dual_map"].flatten(1).sum(1)
    zero = torch.zeros_like(target_sum)
    target_lost = sum(lost_target.values(), zero)
    dual_lost = sum(lost_both.values(), zero) - target_lost  # the contrastive run propagates both
    torch.testing.assert_close(target_sum, 1 - target_lost)
    torch.testing.assert_close(dual_sum, 1 - dual_lost)
    torch.testing.assert_close(c.attributions.flatten(1).sum(1), dual_lost - target_lost, atol=1e-7, rtol=0)
    torch.testing.assert_close(c.attributions, c.meta["target_map"] - c.meta["dual_map"])
    torch.testing.assert_close(c.meta["target_map"], e.attributions)


def test_excitation_backprop_closed_form_one_layer():
    torch.manual_seed(1)
    layer = nn.Linear(6, 3, bias=True).double()
    x = torch.rand(2, 6, dtype=torch.float64)
    e = salfw.explain("excitation-backprop", salfw.WhiteBox(layer), x, target=2, stabilizer=0.0)
    w = layer.weight[2].detach()
    expected = x * w.clamp(min=0) / (x @ w.clamp(min=0))[:, None]
    torch.testing.assert_close(e.attributions, expected)
    c = salfw.explain("contrastive-excitation-backprop", salfw.WhiteBox(layer), x, target=2, stabilizer=0.0)
    dual = x * (-w).clamp(min=0) / (x @ (-w).clamp(min=0))[:, None]
    torch.testing.assert_close(c.attributions, expected - dual)


# -- Captum's LRP test cases (captum/tests/attr/test_lrp.py, SimpleLRPModel) ------------------
def simple_lrp_model(first_weight=None):
    """Linear(3, 3) weights 2 -> ReLU -> Linear(3, 1) weights 3 -> Dropout, no biases."""
    model = nn.Sequential()
    model.add_module("linear", nn.Linear(3, 3, bias=False))
    model.add_module("relu", nn.ReLU())
    model.add_module("linear2", nn.Linear(3, 1, bias=False))
    model.add_module("dropout", nn.Dropout(0.01))
    model.linear.weight.data.fill_(2.0)
    model.linear2.weight.data.fill_(3.0)
    if first_weight is not None:
        model.linear.weight.data[0][0] = first_weight
    return model.double()


@pytest.mark.parametrize("first_weight, params, expected", [
    (None, {"rules": "*=epsilon", "epsilon": 1e-9}, [18.0, 36.0, 54.0]),
    # Captum: GammaRule(gamma=1) on linear, GammaRule() on linear2, whose weights and inputs are all
    # positive so that any gamma there equals the z-rule (epsilon)
    (-2.0, {"rules": "linear=gamma;linear2=epsilon", "gamma": 1.0}, [28 / 3, 104 / 3, 52.0]),
    (-2.0, {"rules": "*=alpha-beta", "alpha": 1.0, "beta": 0.0}, [12.0, 33.6, 50.4]),
    (-2.0, {"rules": "*=z-plus"}, [12.0, 33.6, 50.4]),
])
def test_captum_simple_lrp_model(first_weight, params, expected):
    model = salfw.WhiteBox(simple_lrp_model(first_weight), input_range=(0, 3))
    x = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    e = salfw.explain("lrp", model, x, target=0, **params)
    torch.testing.assert_close(e.attributions, torch.tensor([expected], dtype=torch.float64), rtol=1e-6, atol=1e-6)


# -- layers, errors and registries ----------------------------------------------------------------
def test_batchnorm_is_folded_on_a_copy_and_model_unchanged():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                        nn.Linear(3 * 64, 4), nn.BatchNorm1d(4)).double().eval()
    net[1].running_mean.uniform_(-1, 1)
    net[1].running_var.uniform_(0.5, 2)
    before = [t.clone() for t in net.state_dict().values()]
    model = salfw.WhiteBox(net)
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    e = salfw.explain("lrp", model, x, rules="*=epsilon", epsilon=1e-12)
    assert all(torch.equal(a, b) for a, b in zip(before, net.state_dict().values(), strict=True))
    # LRP-0 with biases: input relevance + what the biases absorbed = the explained logit
    explained = model.scores(x).gather(1, e.targets[:, None])[:, 0]
    absorbed = sum(torch.tensor(l["absorbed"], dtype=torch.float64) for l in e.meta["layers"])
    torch.testing.assert_close(e.attributions.flatten(1).sum(1) + absorbed, explained)


def test_unsupported_layers_are_named():
    net = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    with pytest.raises(ModelRequirementError, match=r"'1' of type Tanh"):
        salfw.explain("lrp", salfw.WhiteBox(net), torch.rand(2, 4))

    class Power(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x) ** 2

    with pytest.raises(ModelRequirementError, match="operation 'pow'"):
        salfw.explain("excitation-backprop", salfw.WhiteBox(Power()), torch.rand(2, 4))


def test_batchnorm_before_a_layer_is_an_affine_layer():
    """A BatchNorm with no Linear/Conv2d before it (DenseNet's) cannot be folded: it is the affine
    layer y = s x + t with its own rule. LRP-ε (ε → 0) through it and a bias-free Linear layer:
    R_j = x_j s_j w_kj (the shift t absorbs t_j w_kj)."""
    torch.manual_seed(4)
    net = nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 2, bias=False)).double().eval()
    net[0].running_mean.uniform_(-1, 1)
    net[0].running_var.uniform_(0.5, 2)
    nn.init.uniform_(net[0].weight, 0.5, 1.5)
    nn.init.uniform_(net[0].bias, -0.5, 0.5)
    x = torch.rand(3, 4, dtype=torch.float64)
    e = salfw.explain("lrp", salfw.WhiteBox(net), x, target=1, rules="*=epsilon", epsilon=1e-13, stabilizer=1e-13)
    bn = net[0]
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(e.attributions, (x * scale * net[1].weight[1]).detach())
    assert [(l["layer"], l["type"], l["rule"]) for l in e.meta["layers"]] == [
        ("0", "BatchNorm1d", "epsilon"), ("1", "Linear", "epsilon")]


def test_rule_mapping_errors():
    model = salfw.WhiteBox(simple_lrp_model(), input_range=(0, 3))
    x = torch.tensor([[1.0, 2.0, 3.0]])
    with pytest.raises(ParameterError, match="matches no Linear/Conv2d layer"):
        salfw.explain("lrp", model, x, rules="features.*=epsilon")
    with pytest.raises(ParameterError, match="looks like"):
        salfw.explain("lrp", model, x, rules="linear")
    with pytest.raises(UnknownNameError, match="unknown rule 'nope'; available: alpha-beta, epsilon, "):
        salfw.explain("lrp", model, x, rules="linear=nope")
    with pytest.raises(UnknownNameError, match="unknown composite 'nope'; available: deep-taylor, epsilon-"):
        salfw.explain("lrp", model, x, composite="nope")
    with pytest.raises(ParameterError, match="alpha - beta = 1"):
        salfw.explain("lrp", model, x, rules="*=alpha-beta", alpha=3.0, beta=1.0)


class HalfEpsilon(Rule):
    """A third party's rule: half of the epsilon rule's relevance (the layer absorbs the rest)."""

    name = "test-half-epsilon"
    summary = "half of LRP-epsilon (a test rule)"

    def __init__(self, epsilon: float):
        self.epsilon = epsilon

    @classmethod
    def from_settings(cls, settings: Settings) -> HalfEpsilon:
        return cls(settings.epsilon)

    def __call__(self, layer, x, z, relevance):
        (g,) = modified_gradients(layer, [x], [(layer.weight, layer.bias)],
                                  lambda o: [relevance / stabilize(o[0], self.epsilon)])
        return 0.5 * x * g


class AllHalf(Composite):
    name = "test-all-half"
    summary = "the test rule everywhere"

    def rules(self, layers):
        return {layer.path: "test-half-epsilon" for layer in layers}


def test_a_plugin_registers_a_rule_and_a_composite():
    """A rule and a composite registered through the hooks, as an outside package would, used by
    name; Captum's simple model with LRP-ε gives [18, 36, 54], halved at each layer it is used in."""
    registry = get_registry()
    plugin = plugin_namespace(salfw_register_rules=lambda register: register(HalfEpsilon),
                              salfw_register_composites=lambda register: register(AllHalf))
    registry.register_plugin(plugin, "my-rule-plugin")
    try:
        assert registry.plugins["my-rule-plugin"].provides == ["rule:test-half-epsilon", "composite:test-all-half"]
        assert rules()["test-half-epsilon"] is HalfEpsilon and composites()["test-all-half"] is AllHalf
        model = salfw.WhiteBox(simple_lrp_model(), input_range=(0, 3))
        x = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
        e = salfw.explain("lrp", model, x, rules="linear2=test-half-epsilon;*=epsilon", epsilon=1e-9)
        torch.testing.assert_close(e.attributions, torch.tensor([[9.0, 18.0, 27.0]], dtype=torch.float64))
        assert [l["rule"] for l in e.meta["layers"]] == ["epsilon", "test-half-epsilon"]
        e = salfw.explain("lrp", model, x, composite="test-all-half", epsilon=1e-9)
        torch.testing.assert_close(e.attributions, torch.tensor([[4.5, 9.0, 13.5]], dtype=torch.float64))
        with pytest.raises(PluginError, match="registered by both"):
            registry.register_plugin(plugin_namespace(salfw_register_rules=lambda register: register(HalfEpsilon)),
                                     "my-other-rule-plugin")
    finally:
        registry.unregister_plugin("my-rule-plugin")
        registry.unregister_plugin("my-other-rule-plugin")
    with pytest.raises(UnknownNameError, match="unknown rule 'test-half-epsilon'"):
        salfw.explain("lrp", model, x, rules="*=test-half-epsilon")


def test_builtin_rules_and_composites_are_registered_by_the_lrp_plugin():
    assert {"epsilon", "z-plus", "z-plus-bias", "alpha-beta", "gamma", "z-box", "w-square", "flat", "pass",
            "excitation"} == set(rules())
    assert {"epsilon-plus", "epsilon-plus-flat", "epsilon-gamma-box", "epsilon-alpha2-beta1",
            "deep-taylor"} == set(composites())
    assert {f"rule:{name}" for name in rules()} <= set(get_registry().plugins["lrp"].provides)


def test_deep_taylor_all_outputs():
    net = cnn(4, 3)
    model = salfw.WhiteBox(net)
    x = inputs(net, 2)
    e = salfw.explain("deep-taylor", model, x, all_outputs=True)
    every = e.meta["all_outputs"]
    assert every.shape == (3, 4, 1, 8, 8)
    for k in range(4):
        single = salfw.explain("deep-taylor", model, x, target=k).attributions
        torch.testing.assert_close(every[:, k], single)
    torch.testing.assert_close(e.attributions, every[torch.arange(3), e.targets])


def test_the_default_composite_follows_the_sign_of_the_network_input():
    """``composite="auto"``: z⁺ in the pixel layer where the network's input is non-negative (then it is
    Zennit's EpsilonPlus), the flat rule there where normalisation makes it negative (EpsilonPlusFlat)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 4 * 4, 3))
    x = torch.rand(2, 3, 8, 8)
    for model, expected in ((salfw.WhiteBox(net, (0, 1)), "epsilon-plus"),
                            (salfw.WhiteBox(net, (0, 1), mean=(0.5,) * 3, std=(0.25,) * 3), "epsilon-plus-flat")):
        auto = salfw.explain("lrp", model, x, target=1)
        explicit = salfw.explain("lrp", model, x, target=1, composite=expected)
        assert auto.meta["composite"] == expected
        assert [layer["rule"] for layer in auto.meta["layers"]][:2] == (
            ["flat", "z-plus-bias"] if expected == "epsilon-plus-flat" else ["z-plus-bias", "z-plus-bias"])
        torch.testing.assert_close(auto.attributions, explicit.attributions)
