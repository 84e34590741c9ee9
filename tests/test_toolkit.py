"""The model toolkit (salfw.zoo.toolkit): building from a layer list, training,
measuring, and safetensors save/load."""

import json

import pytest
import torch
from safetensors import safe_open
from torch import nn

from salfw.zoo import toolkit

CNN = [
    {"type": "conv", "out": 4, "kernel": 3, "padding": 1},
    {"type": "relu"},
    {"type": "maxpool", "kernel": 2},
    {"type": "conv", "out": 6, "kernel": 3},
    {"type": "relu"},
    {"type": "gap"},
    {"type": "linear", "out": 10},
]
MLP = [{"type": "flatten"}, {"type": "linear", "out": 16}, {"type": "relu"}, {"type": "linear", "out": 10}]


def tiny_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("bias", [True, False])
def test_build_cnn_layer_types_and_bias(bias):
    model = toolkit.build(CNN, bias=bias)
    assert isinstance(model, nn.Sequential)
    assert [type(m) for m in model] == [
        nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Conv2d, nn.ReLU, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear,
    ]
    assert model[0].in_channels == 1 and model[3].in_channels == 4 and model[7].in_features == 6
    for layer in model:
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            assert (layer.bias is not None) == bias
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_build_mlp_infers_flat_size():
    model = toolkit.build(MLP, bias=False)
    assert [type(m) for m in model] == [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear]
    assert model[1].in_features == 784 and model[1].bias is None
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize(
    "layers, message",
    [
        ([{"type": "softmax"}], "unknown type"),
        ([{"type": "conv", "out": 4}], "missing"),
        ([{"type": "relu", "slope": 0.1}], "unknown keys"),
        ([{"type": "linear", "out": 10}], "flatten or gap"),
        ([{"type": "conv", "out": 4, "kernel": 29}], "empty"),
    ],
)
def test_build_rejects_bad_specs(layers, message):
    with pytest.raises(ValueError, match=message):
        toolkit.build(layers)


def test_build_seed_is_reproducible_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a, b = toolkit.build(CNN, seed=3), toolkit.build(CNN, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_random_shift_moves_pixels_and_fills_zero():
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, 10, 10] = 1.0
    batch = image.repeat(50, 1, 1, 1)
    shifted = toolkit.random_shift(batch, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == batch.shape
    assert torch.equal(shifted.sum(dim=(1, 2, 3)), torch.ones(50))  # the lit pixel stays inside
    where = shifted[:, 0].flatten(1).argmax(1)
    rows, cols = where // 28, where % 28
    assert rows.min() >= 8 and rows.max() <= 12 and cols.min() >= 8 and cols.max() <= 12
    assert len(set(where.tolist())) > 1


def test_training_is_deterministic_for_a_seed():
    x, y = tiny_data()
    runs = []
    for _ in range(2):
        model = toolkit.build(CNN, seed=0)
        losses = toolkit.train(model, x, y, epochs=2, batch_size=16, seed=5, augment=2, offset=-0.5)
        runs.append((model, losses))
    assert runs[0][1] == runs[1][1]
    for pa, pb in zip(runs[0][0].parameters(), runs[1][0].parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not runs[0][0].training


def test_training_learns_a_separable_task():
    x, y = tiny_data(n=32)
    model = toolkit.build(MLP, seed=0)
    losses = toolkit.train(model, x, y, epochs=30, batch_size=8, lr=1e-2, seed=0)
    assert losses[-1] < losses[0] / 4
    assert toolkit.evaluate(model, x, y) == 1.0


def test_evaluate_confusion_matrix_and_errors_agree():
    x, y = tiny_data(n=50)
    model = toolkit.build(MLP, seed=1)
    predicted = model(x).argmax(1)
    accuracy = toolkit.evaluate(model, x, y)
    matrix = toolkit.confusion_matrix(model, x, y)
    wrong = toolkit.errors(model, x, y)
    assert matrix.shape == (10, 10) and matrix.dtype == torch.int64
    assert matrix.sum() == 50
    assert matrix.trace().item() == round(accuracy * 50)
    assert torch.equal(wrong, torch.nonzero(predicted != y).flatten())
    assert matrix[y[0], predicted[0]] >= 1


def test_offset_is_applied_to_inputs():
    x, y = tiny_data(n=20)
    model = toolkit.build(MLP, seed=2)
    assert torch.equal(toolkit.predict(model, x, offset=-0.5), model(x - 0.5).argmax(1))


def test_save_load_round_trip_is_bit_exact(tmp_path):
    model = toolkit.build(CNN, bias=False, seed=4)
    spec = {"layers": CNN, "bias": False, "input_shape": [1, 28, 28]}
    path = tmp_path / "m.safetensors"
    toolkit.save(model, spec, path, metadata={"accuracy": 0.5, "preprocessing": {"offset": -0.5}})
    loaded, spec2, meta = toolkit.load(path)
    assert spec2 == spec and meta == {"accuracy": 0.5, "preprocessing": {"offset": -0.5}}
    assert not loaded.training
    assert [type(m) for m in loaded] == [type(m) for m in model]
    for (na, a), (nb, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert na == nb and torch.equal(a, b)
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(model(x), loaded(x))
    with safe_open(str(path), framework="pt") as f:  # plain safetensors with JSON metadata
        assert json.loads(f.metadata()["spec"]) == spec


def test_load_rejects_foreign_safetensors(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="no 'spec'"):
        toolkit.load(path)
