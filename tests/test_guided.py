"""Guided backprop and deconvnet: closed forms on ReLU MLPs, known signs, hook hygiene, clear errors."""

import pytest
import torch
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


def test_functional_relu_only_is_refused_by_name():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(3, 2)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    for method in ("guided-backprop", "deconvnet", "guided-grad-cam"):
        with pytest.raises(ModelRequirementError, match=r"Functional.*nn\.ReLU"):
            salfw.explain(method, salfw.WhiteBox(Functional()), torch.rand(2, 4), target=0)


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
