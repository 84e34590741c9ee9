"""The geometric family: the local plane, DeepFool and GeoSal, checked against closed forms
on linear models and against the network itself on random ReLU MLPs and CNNs."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import salfw
from salfw.plugins.geosal import geosal_search
from salfw.sdk.geometry import local_plane
from salfw.sdk.memory import activation_bytes

SETTINGS = settings(max_examples=15, deadline=None)


def seeded(seed, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().double().eval()


def random_mlp(seed, depth, width, leaky, bias, inputs=12, classes=5):
    def build():
        layers, size = [], inputs
        for _ in range(depth):
            layers += [nn.Linear(size, width, bias=bias), nn.LeakyReLU(0.1) if leaky else nn.ReLU()]
            size = width
        return nn.Sequential(*layers, nn.Linear(size, classes, bias=bias))
    return seeded(seed, build)


def random_cnn(seed, channels, bias, classes=4):
    def build():
        return nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1, bias=bias), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels, channels, 3, padding=1, bias=bias), nn.ReLU(), nn.AvgPool2d(2),
            nn.Flatten(), nn.Linear(channels * 4, classes, bias=bias))
    return seeded(seed, build)


def inputs(seed, shape):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def affine(w, b, x):
    """``x·W + B`` for W (N, K, ...) or (N, ...), B (N, K) or (N,)."""
    if w.dim() == x.dim() + 1:
        return (w * x[:, None]).flatten(2).sum(-1) + b
    return (w * x).flatten(1).sum(-1) + b


def mlp_plane_by_products(net, x):
    """The thesis's find_plane for an MLP: multiply the weight matrices, masked by the activation pattern."""
    w = torch.eye(x.shape[1], dtype=x.dtype).expand(x.shape[0], -1, -1)
    b = torch.zeros(x.shape[0], x.shape[1], dtype=x.dtype)
    h = x
    for layer in net:
        if isinstance(layer, nn.Linear):
            w, b = w @ layer.weight.T, b @ layer.weight.T + (layer.bias if layer.bias is not None else 0)
        else:
            slope = torch.where(h > 0, torch.ones_like(h), torch.full_like(h, getattr(layer, "negative_slope", 0.0)))
            w, b = w * slope[:, None], b * slope
        h = layer(h)
    return w.transpose(1, 2), b  # W (N, K, D), B (N, K)


@SETTINGS
@given(seed=st.integers(0, 10_000), depth=st.integers(1, 3), width=st.integers(3, 16), leaky=st.booleans(),
       bias=st.booleans())
def test_plane_is_exact_on_random_mlps(seed, depth, width, leaky, bias):
    net = random_mlp(seed, depth, width, leaky, bias)
    model = salfw.WhiteBox(net, mean=0.3, std=0.7)
    x = inputs(seed, (6, 12))
    w, b = local_plane(model, x)
    assert w.shape == (6, 5, 12) and b.shape == (6, 5)
    with torch.no_grad():
        y = model.forward(x)
        torch.testing.assert_close(affine(w, b, x), y, rtol=0, atol=1e-5)
        # the same plane a few steps away inside the region (1e-6 crosses no ReLU boundary in practice)
        nearby = x + 1e-6 * inputs(seed + 1, x.shape)
        torch.testing.assert_close(affine(w, b, nearby), model.forward(nearby), rtol=0, atol=1e-5)
        torch.testing.assert_close(model.forward(nearby) - y, affine(w, 0 * b, nearby - x), rtol=1e-6, atol=1e-12)
        # the thesis's matrix products, with the preprocessing (x - 0.3) / 0.7 folded in front
        w_ref, b_ref = mlp_plane_by_products(net, (x - 0.3) / 0.7)
        torch.testing.assert_close(w, w_ref / 0.7)
        torch.testing.assert_close(b, b_ref - (w_ref * 0.3 / 0.7).sum(-1))


@SETTINGS
@given(seed=st.integers(0, 10_000), channels=st.integers(1, 4), bias=st.booleans())
def test_plane_is_exact_on_random_cnns(seed, channels, bias):
    model = salfw.WhiteBox(random_cnn(seed, channels, bias), offset=-0.5, scale=2.0)
    x = inputs(seed, (3, 1, 8, 8))
    w, b = local_plane(model, x)
    assert w.shape == (3, 4, 1, 8, 8)
    with torch.no_grad():
        y = model.forward(x)
        torch.testing.assert_close(affine(w, b, x), y, rtol=0, atol=1e-5)
        nearby = x + 1e-6 * inputs(seed + 1, x.shape)
        torch.testing.assert_close(affine(w, b, nearby), model.forward(nearby), rtol=0, atol=1e-5)
        torch.testing.assert_close(model.forward(nearby) - y, affine(w, 0 * b, nearby - x), rtol=1e-6, atol=1e-12)


def test_pair_and_single_planes_are_rows_of_the_full_plane():
    model = salfw.WhiteBox(random_cnn(3, 3, True))
    x = inputs(3, (4, 1, 8, 8))
    w, b = local_plane(model, x)
    w2, b2 = local_plane(model, x, outputs=2)
    torch.testing.assert_close(w2, w[:, 2])
    torch.testing.assert_close(b2, b[:, 2])
    wd, bd = local_plane(model, x, outputs=(1, 3))
    torch.testing.assert_close(wd, w[:, 1] - w[:, 3])
    torch.testing.assert_close(bd, b[:, 1] - b[:, 3])
    p, q = torch.tensor([0, 1, 2, 3]), torch.tensor([3, 2, 1, 0])
    wd, bd = local_plane(model, x, outputs=(p, q))
    torch.testing.assert_close(wd, w[torch.arange(4), p] - w[torch.arange(4), q])
    torch.testing.assert_close(bd, b[torch.arange(4), p] - b[torch.arange(4), q])


def test_plane_between_two_layers():
    net = random_cnn(5, 2, True)
    model = salfw.WhiteBox(net)
    x = inputs(5, (2, 1, 8, 8))
    w, b = local_plane(model, x, between=("1", "4"))  # from the first ReLU's output to the second ReLU's
    with torch.no_grad():
        z = net[:2](x)
        end = net[:5](x).flatten(1)
    assert w.shape == (2, end.shape[1], *z.shape[1:])
    torch.testing.assert_close(affine(w, b, z), end)
    w_out, b_out = local_plane(model, x, between=(net[4], None))  # a module and the final output
    torch.testing.assert_close(affine(w_out, b_out, net[:5](x).detach()), net(x).detach())


def test_local_linear_explains_with_the_target_row():
    model = salfw.WhiteBox(random_mlp(7, 2, 8, False, True))
    x = inputs(7, (5, 12))
    w, b = local_plane(model, x)
    e = salfw.explain("local-linear", model, x, target=[0, 1, 2, 3, 4])
    torch.testing.assert_close(e.attributions, w[torch.arange(5), torch.arange(5)])
    torch.testing.assert_close(e.meta["bias"], b[torch.arange(5), torch.arange(5)])


@pytest.mark.parametrize("method", ["local-linear", "geosal"])
def test_non_piecewise_linear_networks_are_refused_by_name(method):
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 8), nn.Tanh()), nn.Linear(8, 3))
    with pytest.raises(salfw.ModelRequirementError, match=r"'2\.1' \(Tanh\)"):
        salfw.explain(method, salfw.WhiteBox(net), torch.rand(2, 6))
    with pytest.raises(salfw.ModelRequirementError, match=r"'1' \(Sigmoid\)"):
        local_plane(nn.Sequential(nn.Linear(6, 3), nn.Sigmoid()), torch.rand(2, 6))


class Identity(nn.Module):
    """A package's own identity placeholder (EfficientNet-Lite pads with one where no padding is needed)."""

    def forward(self, input):
        return input


class PassThrough(nn.Module):
    def forward(self, x):
        """Any name: its forward returns its input."""
        return x


class Doubles(nn.Module):
    def forward(self, x):
        return 2 * x


@pytest.mark.parametrize("method", ["local-linear", "geosal"])
def test_identity_like_modules_and_padding_are_identities(method):
    torch.manual_seed(3)
    conv = nn.Sequential(nn.ZeroPad2d((1, 0, 1, 0)), nn.Conv2d(1, 3, 2), Identity(), nn.ReLU(), PassThrough(),
                         nn.ConstantPad2d(1, 0.5), nn.Flatten(), nn.Linear(3 * 6 * 6, 4)).double().eval()
    plain = nn.Sequential(*conv[:2], conv[3], *conv[5:])
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with_identities = salfw.explain(method, salfw.WhiteBox(conv), x, target=1).attributions
    without = salfw.explain(method, salfw.WhiteBox(plain), x, target=1).attributions
    torch.testing.assert_close(with_identities, without, rtol=0, atol=0)
    w, b = local_plane(salfw.WhiteBox(conv), x, outputs=1)  # exact: the plane gives the network's output
    torch.testing.assert_close((w * x).flatten(1).sum(1) + b, conv(x)[:, 1].detach())
    with pytest.raises(salfw.ModelRequirementError, match=r"'1' \(Doubles\)"):  # not an identity: still refused
        salfw.explain(method, salfw.WhiteBox(nn.Sequential(nn.Linear(6, 3), Doubles())), torch.rand(2, 6))


def test_training_mode_dropout_is_refused_by_local_plane_but_explain_uses_eval_mode():
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3)).train()
    with pytest.raises(salfw.ModelRequirementError, match=r"'2' \(Dropout\).*eval"):
        local_plane(net, torch.rand(2, 6))
    e = salfw.explain("local-linear", salfw.WhiteBox(net), torch.rand(2, 6))
    assert net.training and torch.isfinite(e.attributions).all()


# -- DeepFool -----------------------------------------------------------------------------------

def deepfool_linear_closed_form(layer, x, overshoot):
    """One step to the nearest hyperplane: r = |f'_l| / ‖w'_l‖² · w'_l, scaled by 1 + η."""
    with torch.no_grad():
        y = layer(x)
    p = y.argmax(1)
    rows = torch.arange(x.shape[0])
    w = layer.weight[None] - layer.weight[p][:, None]  # (N, K, D)
    f = y - y[rows, p][:, None]
    norms = w.norm(dim=2)
    distance = f.abs() / norms
    distance[rows, p] = float("inf")
    nearest = distance.argmin(1)
    r = (f[rows, nearest].abs() / norms[rows, nearest] ** 2)[:, None] * w[rows, nearest]
    return ((1 + overshoot) * r).detach(), nearest


def deepfool_reference(net, x0, label, lo, hi, overshoot, limit, candidates, clip_aware):
    """One sample, one backward per class: the authors' reference loop, with clipping added."""
    with torch.no_grad():
        scores = net(x0[None])[0]
    others = [k for k in scores.argsort(descending=True).tolist() if k != label]
    classes = [label] + others[:candidates - 1]
    total, x, iterations = torch.zeros_like(x0), x0.clone(), 0
    while True:
        xg = x.clone().requires_grad_(True)
        y = net(xg[None])[0]
        if y.argmax().item() != label or iterations == limit:
            return x, iterations
        grads = [torch.autograd.grad(y[k], xg, retain_graph=True)[0] for k in classes]
        best = float("inf")
        for k, grad in zip(classes[1:], grads[1:], strict=True):
            w, f = grad - grads[0], (y[k] - y[label]).item()
            if clip_aware:
                w = w * ~(((x <= lo) & (w < 0)) | ((x >= hi) & (w > 0)))
            if w.norm() > 0 and abs(f) / w.norm() < best:
                best, w_best, f_best = abs(f) / w.norm(), w, f
        if best == float("inf"):
            return x, iterations
        total = total + abs(f_best) / w_best.norm() ** 2 * w_best
        x = (x0 + (1 + overshoot) * total).clamp(lo, hi)
        if clip_aware:
            total = (x - x0) / (1 + overshoot)
        iterations += 1


@pytest.mark.parametrize("clip_aware", [False, True])
def test_deepfool_batched_equals_the_reference_loop(clip_aware):
    net = random_mlp(8, 2, 12, False, True, classes=6)
    x = inputs(8, (6, 12)) * 0.4 + 0.3 * (inputs(9, (6, 12)) > 0.5)  # some pixels near the bounds
    x[:, :3] = 0.0
    e = salfw.explain("deepfool", salfw.WhiteBox(net), x, candidates=4, iterations=15, clip_aware=clip_aware,
                      overshoot=0.1)
    for i in range(6):
        adv, iterations = deepfool_reference(net, x[i], e.targets[i].item(), 0.0, 1.0, 0.1, 15, 4, clip_aware)
        torch.testing.assert_close(e.meta["adversarial"][i], adv)
        if clip_aware:  # without, the iterates creep up to the boundary and cross it at a rounding-dependent step
            assert e.meta["iterations"][i].item() == iterations


@pytest.mark.parametrize("overshoot", [0.02, 0.5])
def test_deepfool_on_a_linear_classifier_is_its_closed_form(overshoot):
    layer = seeded(11, lambda: nn.Linear(9, 6))
    model = salfw.WhiteBox(layer, input_range=(-50, 50))
    x = inputs(11, (8, 9))
    e = salfw.explain("deepfool", model, x, overshoot=overshoot)
    r, nearest = deepfool_linear_closed_form(layer, x, overshoot)
    torch.testing.assert_close(e.attributions, r)
    assert e.meta["iterations"].tolist() == [1] * 8 and e.meta["success"].all()
    assert e.meta["adversarial_class"].tolist() == nearest.tolist()


@SETTINGS
@given(seed=st.integers(0, 10_000), cnn=st.booleans())
def test_deepfool_reports_success_truthfully(seed, cnn):
    net = random_cnn(seed, 3, True) if cnn else random_mlp(seed, 2, 10, False, True)
    x = inputs(seed, (5, 1, 8, 8) if cnn else (5, 12))
    e = salfw.explain("deepfool", salfw.WhiteBox(net), x, iterations=20)
    adv = e.meta["adversarial"]
    assert 0 <= adv.min() and adv.max() <= 1
    torch.testing.assert_close(adv - x, e.attributions)
    with torch.no_grad():
        label = net(adv).argmax(1)
    predicted = torch.tensor(e.meta["predicted"])
    assert torch.equal(e.meta["success"], label != predicted)
    assert torch.equal(e.meta["adversarial_class"], label)
    assert (e.meta["iterations"] <= 20).all()


# -- GeoSal -------------------------------------------------------------------------------------

def test_geosal_on_a_linear_layer_is_the_projection_onto_the_hyperplane():
    layer = seeded(2, lambda: nn.Linear(10, 4))
    x = inputs(2, (6, 10))
    with torch.no_grad():
        y = layer(x)
    p = y.argmax(1)
    q = (p + 1) % 4
    w = layer.weight[p] - layer.weight[q]
    d = y[torch.arange(6), p] - y[torch.arange(6), q]
    projection = (x - (d / (w * w).sum(1))[:, None] * w).detach()
    # a wide input range: one exact step (with the default overshoot 0.001 past the plane)
    wide = geosal_search(layer, x, p, q, 4, (-100.0, 100.0))
    torch.testing.assert_close(wide["adversarial"], (x - 1.001 * (d / (w * w).sum(1))[:, None] * w).detach())
    assert wide["converged"].all() and wide["iterations"].tolist() == [1] * 6
    # the unit box: the first step is the projection, clipped
    first = geosal_search(layer, x, p, q, 4, (0.0, 1.0), overshoot=0.0, iterations=1)
    torch.testing.assert_close(first["adversarial"], projection.clamp(0, 1))


def test_geosal_jumps_to_the_limit_of_the_geometric_series():
    # y_0 − y_1 = x_0 + 0.5 x_1 − 0.2 from x = (0.05, 0.9): x_0 is clipped at 0 at every step, so the
    # residual shrinks by 0.8 a step; after three steps on one plane the jump lands on (0, 0.4) exactly.
    layer = nn.Linear(2, 2).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.5], [0.0, 0.0]]))
        layer.bias.copy_(torch.tensor([-0.2, 0.0]))
    x = torch.tensor([[0.05, 0.9]], dtype=torch.float64)
    p, q = torch.tensor([0]), torch.tensor([1])
    result = geosal_search(layer, x, p, q, 2, (0.0, 1.0), overshoot=0.0, iterations=3)
    torch.testing.assert_close(result["adversarial"], torch.tensor([[0.0, 0.4]], dtype=torch.float64))
    converged = geosal_search(layer, x, p, q, 2, (0.0, 1.0))
    assert converged["converged"].all() and converged["iterations"].item() == 3
    assert layer(converged["adversarial"])[0, 1] >= layer(converged["adversarial"])[0, 0]


@SETTINGS
@given(seed=st.integers(0, 10_000), cnn=st.booleans(), signed=st.booleans())
def test_geosal_reaches_the_other_class_or_says_so(seed, cnn, signed):
    net = random_cnn(seed, 3, True) if cnn else random_mlp(seed, 2, 10, seed % 2 == 0, True)
    x = inputs(seed, (3, 1, 8, 8) if cnn else (3, 12))
    e = salfw.explain("geosal", salfw.WhiteBox(net), x, threshold=0.0, signed=signed, iterations=30)
    k = 4 if cnn else 5
    meta = e.meta
    p = torch.tensor(meta["predicted"])
    probs = torch.tensor(meta["probabilities"], dtype=x.dtype)
    classes = meta["classes"]  # every other class, by decreasing probability
    assert [sorted(c) for c in classes.tolist()] == [[q for q in range(k) if q != pi] for pi in p.tolist()]
    assert (probs.gather(1, classes).diff(dim=1) <= 0).all()
    adv = meta["adversarial"]
    assert 0 <= adv.min() and adv.max() <= 1
    assert (meta["iterations"] <= 30).all()
    with torch.no_grad():
        y = net(adv.reshape(-1, *x.shape[1:])).reshape(3, k - 1, k)
    margin = y.gather(2, p.view(3, 1, 1).expand(3, k - 1, 1))[..., 0] - y.gather(2, classes[..., None])[..., 0]
    torch.testing.assert_close(margin, meta["margins"])  # y_P − y_Q at each adversarial example
    assert (margin[meta["converged"]] <= 0).all()
    diff = x[:, None] - adv
    torch.testing.assert_close(meta["distances"], diff.flatten(2).norm(dim=2))
    weights = probs.gather(1, classes).view(3, k - 1, *[1] * (x.dim() - 1))
    torch.testing.assert_close(e.attributions, (weights * (diff if signed else diff.abs())).sum(1))


def test_geosal_converges_where_every_class_is_reachable():
    # in [0, 1] some classes of a random network cannot be reached at all; in [-3, 3] all of these can
    net = random_mlp(1, 2, 16, False, True)
    x = inputs(1, (10, 12)) * 2 - 1
    e = salfw.explain("geosal", salfw.WhiteBox(net, input_range=(-3, 3)), x, threshold=0.0)
    assert e.meta["converged"].sum() == 40 and e.meta["classes"].shape == (10, 4)
    assert e.meta["iterations"].max() < 50


def test_geosal_reaches_every_class_of_the_builtin_mlp():
    try:
        model = salfw.load_model("builtin:mnist-mlp")
        from salfw.zoo.samples import load_samples
        images, _labels = load_samples()
    except (salfw.SalfwError, FileNotFoundError) as exc:  # the built-in weights ship separately
        pytest.skip(f"built-in MNIST model or samples missing: {exc}")
    e = salfw.explain("geosal", model, images[:8], threshold=0.0)
    assert e.meta["converged"].sum() == 8 * 9


def test_geosal_threshold_and_versus_select_the_compared_classes():
    net = random_mlp(4, 2, 16, False, True)
    model = salfw.WhiteBox(net)
    x = inputs(4, (6, 12))
    probs = torch.softmax(net(x), 1).detach()
    p = probs.argmax(1)
    e = salfw.explain("geosal", model, x, threshold=0.2)
    others = probs.scatter(1, p[:, None], -1.0)
    expected = others >= 0.2
    expected[torch.arange(6), others.argmax(1)] = True
    classes = e.meta["classes"]
    assert classes.shape[1] == expected.sum(1).max()
    for i in range(6):
        listed = classes[i][classes[i] >= 0]
        assert sorted(listed.tolist()) == expected[i].nonzero()[:, 0].tolist()
        assert torch.isnan(e.meta["distances"][i, len(listed):]).all()
    target = torch.where(p == 3, torch.zeros_like(p), p)  # never class 3 itself
    pair = salfw.explain("geosal", model, x, target=target, versus=3)
    assert pair.meta["classes"].tolist() == [[3]] * 6
    diff = (x - pair.meta["adversarial"][:, 0]).abs()
    torch.testing.assert_close(pair.attributions, probs[:, 3:4] * diff)
    with pytest.raises(salfw.TargetError, match="versus=3"):
        salfw.explain("geosal", model, x, target=3, versus=3)
    with pytest.raises(salfw.TargetError, match="out of range"):
        salfw.explain("geosal", model, x, versus=7)


def test_pass_counts_include_every_batched_row():
    # local-linear: one probe of the output count, then one forward and one backward pass per sample
    model = salfw.WhiteBox(random_mlp(7, 2, 8, False, True))
    e = salfw.explain("local-linear", model, inputs(7, (5, 12)), batch_size=2)
    assert (e.meta["forward_passes"], e.meta["backward_passes"]) == (1 + 5, 5)
    # deepfool on a linear classifier: the scores, then two iterations (the step, then the check) of all
    # 8 samples, each differentiating the 5 rows y_k − y_k̂ of the other candidates
    layer = seeded(11, lambda: nn.Linear(9, 6))
    e = salfw.explain("deepfool", salfw.WhiteBox(layer, input_range=(-50, 50)), inputs(11, (8, 9)), batch_size=7)
    assert (e.meta["forward_passes"], e.meta["backward_passes"]) == (8 + 2 * 8, 2 * 8 * 5)
    # geosal, one compared class: the probabilities, then the iterations of each pair (one row each), and
    # without a batch_size one pass of one sample that measures its activations for the memory budget
    e = salfw.explain("geosal", salfw.WhiteBox(layer, input_range=(-100, 100)), inputs(11, (8, 9)), versus=None,
                      threshold=1.0)
    steps = int((e.meta["iterations"] + 1).sum())
    assert (e.meta["forward_passes"], e.meta["backward_passes"]) == (8 + 1 + steps, steps)


def test_geosal_takes_its_pairs_per_pass_from_the_memory_budget(monkeypatch):
    """Issue #13: a fixed 256 (sample, class) pairs per pass kept about 20 GiB of activations at 224 px; the
    chunk now comes from ``memory_gib`` unless ``batch_size`` is given, and the result does not depend on it."""
    import salfw.sdk.geometry as geometry

    chunks = []
    original = geometry.plane_rows

    def spy(forward, x, selection, batch_size=256, *args, **kwargs):
        chunks.append(batch_size)
        return original(forward, x, selection, batch_size, *args, **kwargs)

    monkeypatch.setattr("salfw.plugins.geosal.plane_rows", spy)
    net = random_mlp(3, 2, 16, False, True)
    model, x = salfw.WhiteBox(net, input_range=(-3, 3)), inputs(3, (6, 12))
    default = salfw.explain("geosal", model, x, threshold=0.0)
    assert set(chunks) == {6 * 4}  # a few KiB per pair: every (sample, class) pair in one pass
    chunks.clear()
    one_kib = 2 ** 10 / 2 ** 30  # about one pair's activations
    tight = salfw.explain("geosal", model, x, threshold=0.0, memory_gib=one_kib)
    assert len(set(chunks)) == 1 and 1 <= chunks[0] < 24 and activation_bytes(model, x) > 2 ** 10 / 24
    torch.testing.assert_close(tight.attributions, default.attributions)
    chunks.clear()
    salfw.explain("geosal", model, x, threshold=0.0, batch_size=5)
    assert set(chunks) == {5}
