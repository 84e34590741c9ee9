"""Guided backprop and deconvnet: closed forms on ReLU MLPs, known signs, hook hygiene, clear errors."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import salfw
from salfw.core.errors import ModelRequirementError
from salfw.core.guard import model_fingerprint, same_fingerprint
from salfw.sdk.backprop import deconvnet_relus, guided_relus


def relu_mlp(seed, sizes=(5, 7, 6, 3), inplace=False):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU(inplace=inplace))
    return nn.Sequential(*layers).double()


def closed_forms(net, x, target):
    """Guided backprop and deconvnet of a 2-hidden-layer MLP, written out as matrix products."""
    (l1, _, l2, _, l3) = net
    z1 = x @ l1.weight.T + l1.bias
    m1 = (z1 > 0).double()
    z2 = torch.relu(z1) @ l2.weight.T + l2.bias
    m2 = (z2 > 0).double()
    w3 = l3.weight[target]  # (N, 6)
    guided2 = torch.relu(w3) * m2
    guided1 = torch.relu(guided2 @ l2.weight) * m1
    deconv1 = torch.relu(torch.relu(w3) @ l2.weight)
    return guided1 @ l1.weight, deconv1 @ l1.weight


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), inplace=st.booleans())
def test_closed_form_on_relu_mlp(seed, inplace):
    net = relu_mlp(seed, inplace=inplace)
    x = torch.rand(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    target = torch.tensor([0, 1, 2, 0])
    guided, deconv = closed_forms(net, x, target)
    model = salfw.WhiteBox(net)
    e_g = salfw.explain("guided-backprop", model, x, target=target)
    e_d = salfw.explain("deconvnet", model, x, target=target)
    torch.testing.assert_close(e_g.attributions, guided, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(e_d.attributions, deconv, rtol=1e-10, atol=1e-12)


def test_known_signs():
    # h = relu(W1 x): unit 0 is active (0.5 > 0), unit 1 inactive (-0.2 < 0); y = 2 h0 - 3 h1.
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
        net[2].weight.copy_(torch.tensor([[2.0, -3.0]]))
    model = salfw.WhiteBox(net)
    x = torch.tensor([[0.5, 0.2]], dtype=torch.float64)
    grad = salfw.explain("gradient", model, x, target=0).attributions
    guided = salfw.explain("guided-backprop", model, x, target=0).attributions
    deconv = salfw.explain("deconvnet", model, x, target=0).attributions
    torch.testing.assert_close(grad, torch.tensor([[2.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(guided, torch.tensor([[2.0, 0.0]], dtype=torch.float64))
    # deconvnet ignores the forward mask and drops the negative weight -3: relu([2, -3]) @ W1 = [2, 0]
    torch.testing.assert_close(deconv, torch.tensor([[2.0, 0.0]], dtype=torch.float64))
    with torch.no_grad():
        net[2].weight.copy_(torch.tensor([[2.0, 3.0]]))
    deconv = salfw.explain("deconvnet", model, x, target=0).attributions
    guided = salfw.explain("guided-backprop", model, x, target=0).attributions
    # positive weight on the inactive unit: deconvnet passes it (W1^T [2, 3] = [2, -3]), guided does not
    torch.testing.assert_close(deconv, torch.tensor([[2.0, -3.0]], dtype=torch.float64))
    torch.testing.assert_close(guided, torch.tensor([[2.0, 0.0]], dtype=torch.float64))


def test_reused_relu_module_is_modified_at_each_call():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(5, 7), nn.Linear(7, 6), nn.Linear(6, 3)
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.c(self.relu(self.b(self.relu(self.a(x)))))

    twice = Twice().double()
    plain = nn.Sequential(twice.a, nn.ReLU(), twice.b, nn.ReLU(), twice.c)
    x = torch.rand(3, 5, dtype=torch.float64)
    for method in ("guided-backprop", "deconvnet"):
        a = salfw.explain(method, salfw.WhiteBox(twice), x, target=1).attributions
        b = salfw.explain(method, salfw.WhiteBox(plain), x, target=1).attributions
        torch.testing.assert_close(a, b)


def relu_in_place_result_ignored(t):
    t.relu_()  # the tensor itself must carry the rule: the call's result is not used
    return t


class FunctionalMLP(nn.Module):
    """relu_mlp's layers, with the rectifiers written as functional calls (out of place and in place)."""

    FORMS = {"out of place": (F.relu, torch.relu),
             "in place": (lambda t: F.relu(t, True), relu_in_place_result_ignored),  # positional inplace
             "mixed": (lambda t: F.relu(t, inplace=True), torch.Tensor.relu)}

    def __init__(self, net, form):
        super().__init__()
        self.a, self.b, self.c = net[0], net[2], net[4]
        self.first, self.second = self.FORMS[form]

    def forward(self, x):
        return self.c(self.second(self.b(self.first(self.a(x)))))


@pytest.mark.parametrize("form", list(FunctionalMLP.FORMS))
@pytest.mark.parametrize("method", ["guided-backprop", "deconvnet"])
def test_functional_rectifiers_equal_the_module_version(method, form):
    net = relu_mlp(7)
    x = torch.rand(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    target = torch.tensor([0, 1, 2, 0])
    modules = salfw.explain(method, salfw.WhiteBox(net), x, target=target).attributions
    functional = salfw.explain(method, salfw.WhiteBox(FunctionalMLP(net, form)), x, target=target).attributions
    torch.testing.assert_close(functional, modules, rtol=0, atol=0)
    guided, deconv = closed_forms(net, x, target)
    torch.testing.assert_close(modules, guided if method == "guided-backprop" else deconv, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["relu6", "leaky"])
def test_closed_form_with_relu6_and_leaky_relu(kind):
    """Guided: relu(g)·f'(z); deconvnet: r(g) with r = relu (ReLU6) or leaky_relu (LeakyReLU), by matrix products."""
    torch.manual_seed(11)
    act = nn.ReLU6() if kind == "relu6" else nn.LeakyReLU(0.2)
    l1, l2 = nn.Linear(5, 9).double(), nn.Linear(9, 3).double()
    with torch.no_grad():
        l1.weight.mul_(8.0)  # pre-activations on both sides of 0 and of 6
    net = nn.Sequential(l1, act, l2)
    x = torch.rand(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(12))
    target = torch.tensor([0, 1, 2, 0, 1, 2])
    z = x @ l1.weight.T + l1.bias
    g = l2.weight[target]
    if kind == "relu6":
        assert ((z > 6).any() and (z < 0).any()), "the test needs clipped units on both sides"
        derivative, rectify = ((z > 0) & (z < 6)).double(), torch.relu
    else:
        derivative, rectify = torch.where(z > 0, 1.0, 0.2 * torch.ones_like(z)), lambda t: F.leaky_relu(t, 0.2)
    model = salfw.WhiteBox(net)
    guided = salfw.explain("guided-backprop", model, x, target=target).attributions
    deconv = salfw.explain("deconvnet", model, x, target=target).attributions
    torch.testing.assert_close(guided, (torch.relu(g) * derivative) @ l1.weight, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(deconv, rectify(g) @ l1.weight, rtol=1e-10, atol=1e-12)
    plain = salfw.explain("gradient", model, x, target=target).attributions
    torch.testing.assert_close(plain, (g * derivative) @ l1.weight, rtol=1e-10, atol=1e-12)


def test_network_without_rectifiers_is_refused_naming_the_layer_and_an_alternative():
    silu = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.SiLU(), nn.Flatten(), nn.Linear(48, 2))
    hardtanh = nn.Sequential(nn.Linear(4, 3), nn.Hardtanh(), nn.Linear(3, 2))  # saturates on both sides: no rectifier
    cases = [(silu, torch.rand(2, 1, 4, 4), r"layer '1' \(SiLU\)"), (hardtanh, torch.rand(2, 4), "no rectifier")]
    for net, x, where in cases:
        for method in ("guided-backprop", "deconvnet", "guided-grad-cam"):
            if method == "guided-grad-cam" and x.dim() == 2:
                continue
            with pytest.raises(ModelRequirementError, match=where + r".*assume ReLU.*'gradient'") as err:
                salfw.explain(method, salfw.WhiteBox(net), x, target=0)
            assert "\n" not in str(err.value)


def test_hooks_removed_when_the_pass_raises():
    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), Boom())
    before = model_fingerprint(net)
    for rule in (guided_relus, deconvnet_relus):
        with pytest.raises(RuntimeError, match="boom"):
            with rule(salfw.WhiteBox(net)):
                net(torch.rand(1, 3))
        assert not net[1]._forward_hooks and not net[1]._forward_pre_hooks
        assert same_fingerprint(before, model_fingerprint(net))


def test_model_unchanged_and_batch_equals_samples():
    net = relu_mlp(3, inplace=True)
    model = salfw.WhiteBox(net)
    x = torch.rand(5, 5, dtype=torch.float64)
    before = model_fingerprint(net)
    whole = salfw.explain("guided-backprop", model, x, target=2, batch_size=2).attributions
    assert same_fingerprint(before, model_fingerprint(net))
    single = torch.cat([salfw.explain("guided-backprop", model, x[i:i + 1], target=2).attributions
                        for i in range(5)])
    torch.testing.assert_close(whole, single)
    # the ordinary gradient is back once the method is done
    grad = salfw.explain("gradient", model, x, target=2).attributions
    assert not torch.allclose(grad, whole)
