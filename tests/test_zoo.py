"""The model zoo: the MNIST IDX reader, the shipped weights and their recorded
accuracy, the shipped samples, and the ``builtin:`` model loader."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from salfw.zoo import mnist, samples, toolkit

WEIGHTS = Path(mnist.__file__).resolve().parent / "weights"
MODELS = json.loads((WEIGHTS / "models.json").read_text())
NAMES = ["mnist-cnn", "mnist-cnn-nobias", "mnist-cnn-offset", "mnist-mlp"]


def idx_bytes(magic, dims, data):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    return header + bytes(data)


def write_mnist(directory, images, labels, compress):
    """Write a tiny t10k split in IDX format (gzip or plain)."""
    files = {
        "t10k-images-idx3-ubyte": idx_bytes(mnist.IMAGES_MAGIC, images.shape, images.tobytes()),
        "t10k-labels-idx1-ubyte": idx_bytes(mnist.LABELS_MAGIC, labels.shape, labels.tobytes()),
    }
    for name, content in files.items():
        if compress:
            (directory / (name + ".gz")).write_bytes(gzip.compress(content))
        else:
            (directory / name).write_bytes(content)


@pytest.fixture
def tiny_images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (3, 28, 28), dtype=np.uint8), np.array([7, 0, 9], dtype=np.uint8)


# -- IDX reader -------------------------------------------------------------------------------
@pytest.mark.parametrize("compress", [True, False])
def test_idx_reader_gzip_and_plain(tmp_path, tiny_images, compress):
    images, labels = tiny_images
    write_mnist(tmp_path, images, labels, compress)
    x, y = mnist.load_mnist(tmp_path)
    assert x.shape == (3, 1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.tolist() == [7, 0, 9]
    assert torch.equal(x[:, 0], torch.from_numpy(images).float() / 255)


def test_idx_reader_detects_gzip_by_content_not_name(tmp_path, tiny_images):
    images, labels = tiny_images
    write_mnist(tmp_path, images, labels, compress=False)
    plain = tmp_path / "t10k-images-idx3-ubyte"
    # a gzip stream under the plain name, and a plain file under the .gz name
    plain.write_bytes(gzip.compress(plain.read_bytes()))
    (tmp_path / "t10k-labels-idx1-ubyte").rename(tmp_path / "t10k-labels-idx1-ubyte.gz")
    x, y = mnist.load_mnist(tmp_path)
    assert x.shape == (3, 1, 28, 28) and y.tolist() == [7, 0, 9]


def test_idx_reader_bad_magic_names_file_and_expectation(tmp_path, tiny_images):
    images, labels = tiny_images
    write_mnist(tmp_path, images, labels, compress=False)
    # swap: a labels header where images are expected
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(idx_bytes(mnist.LABELS_MAGIC, (3,), b"\x01\x02\x03"))
    message = r"t10k-images-idx3-ubyte: bad IDX magic number 0x00000801, expected 0x00000803"
    with pytest.raises(ValueError, match=message):
        mnist.load_mnist(tmp_path)


@pytest.mark.parametrize(
    "content, message",
    [
        (idx_bytes(mnist.IMAGES_MAGIC, (2, 28, 27), bytes(2 * 28 * 27)),
         r"dimensions \(2, 28, 27\), expected \(N, 28, 28\)"),
        (idx_bytes(mnist.IMAGES_MAGIC, (2, 28, 28), bytes(100)), "expected 1584"),
        (b"\x00\x00\x08", "too short"),
        (b"\x1f\x8bnot gzip", "corrupt gzip"),
    ],
)
def test_idx_reader_rejects_malformed_files(tmp_path, content, message):
    path = tmp_path / "bad"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        mnist.read_idx(path, mnist.IMAGES_MAGIC, (28, 28))
    assert str(path) in str(info.value)


def test_idx_reader_checks_counts_and_missing_files(tmp_path, tiny_images):
    images, labels = tiny_images
    write_mnist(tmp_path, images, labels[:2], compress=True)
    with pytest.raises(ValueError, match="3 images but .* 2 labels"):
        mnist.load_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        mnist.load_mnist(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown MNIST split"):
        mnist.load_mnist(tmp_path, split="validation")


def test_default_mnist_dir_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SALFW_MNIST_DIR", str(tmp_path))
    assert mnist.default_mnist_dir() == tmp_path
    monkeypatch.delenv("SALFW_MNIST_DIR")
    assert mnist.default_mnist_dir().parts[-3:] == ("shared", "data", "mnist")


# -- shipped weights ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def heldout():
    directory = mnist.default_mnist_dir()
    if not (directory / "t10k-images-idx3-ubyte.gz").exists() and not (directory / "t10k-images-idx3-ubyte").exists():
        pytest.skip(f"MNIST not found at {directory} (set SALFW_MNIST_DIR); cannot measure the shipped weights")
    images, labels = mnist.load_mnist(directory)
    return images[mnist.HELDOUT_SLICE], labels[mnist.HELDOUT_SLICE]


def test_models_json_describes_every_shipped_model():
    assert sorted(MODELS) == NAMES
    for name, entry in MODELS.items():
        assert (WEIGHTS / entry["file"]).is_file()
        assert isinstance(entry["accuracy"], float) and entry["heldout"]["n"] == 2000
        for key in ("summary", "spec", "bias", "preprocessing", "seed", "epochs", "command"):
            assert key in entry, (name, key)
    assert MODELS["mnist-cnn-offset"]["preprocessing"] == {"offset": -0.5}
    assert MODELS["mnist-cnn"]["preprocessing"] == {}
    total = sum((WEIGHTS / e["file"]).stat().st_size for e in MODELS.values())
    assert total < 5_000_000


@pytest.mark.parametrize("name", NAMES)
def test_shipped_weights_reach_recorded_accuracy(name, heldout):
    entry = MODELS[name]
    model, spec, metadata = toolkit.load(WEIGHTS / entry["file"])
    assert spec == entry["spec"] and metadata["accuracy"] == entry["accuracy"]
    offset = entry["preprocessing"].get("offset", 0.0)
    accuracy = toolkit.evaluate(model, *heldout, offset=offset)
    assert accuracy == pytest.approx(entry["accuracy"], abs=1e-3)
    assert accuracy >= (0.96 if name == "mnist-mlp" else 0.97)


@pytest.mark.parametrize("name", NAMES)
def test_shipped_architectures(name):
    model, _, _ = toolkit.load(WEIGHTS / MODELS[name]["file"])
    types = {type(m) for m in model}
    assert nn.ReLU in types and types <= {nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear}
    has_bias = any(getattr(m, "bias", None) is not None for m in model)
    assert has_bias == MODELS[name]["bias"]
    if name == "mnist-mlp":
        assert nn.Conv2d not in types and nn.MaxPool2d not in types
    else:  # CAM needs global average pooling straight into the last linear layer
        assert nn.MaxPool2d in types
        assert [type(m) for m in model[-3:]] == [nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear]


# -- samples ----------------------------------------------------------------------------------
def test_samples_shape_range_and_labels():
    images, labels = samples.load_samples()
    assert images.shape == (20, 1, 28, 28) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1 and images.max() > 0.9
    assert labels.dtype == torch.int64 and labels.tolist() == list(range(10)) * 2
    indices = samples.sample_indices()
    assert ((indices >= 8000) & (indices < 10000)).all() and len(set(indices.tolist())) == 20
    one = samples.sample(3)
    assert one.shape == (1, 1, 28, 28) and torch.equal(one[0], images[3])
    with pytest.raises(IndexError, match="0-19"):
        samples.sample(20)


def test_samples_match_mnist(heldout):
    images, labels = mnist.load_mnist()
    x, y = samples.load_samples()
    indices = samples.sample_indices()
    assert torch.equal(x, images[indices]) and torch.equal(y, labels[indices])
    assert torch.equal(samples.pick_samples(labels), indices)


# -- builtin: model loader ----------------------------------------------------------------------
def test_builtin_loader_gives_white_boxes_with_recorded_preprocessing():
    import salfw
    from salfw.core.models import WhiteBox

    x, _ = samples.load_samples()
    for name in NAMES:
        model = salfw.load_model(f"builtin:{name}")
        assert isinstance(model, WhiteBox) and not model.module.training
        assert model.input_range == (0.0, 1.0)
        offset = MODELS[name]["preprocessing"].get("offset", 0.0)
        module, _, _ = toolkit.load(WEIGHTS / MODELS[name]["file"])
        assert torch.allclose(model.scores(x), module(x + offset), atol=1e-6)


def test_builtin_loader_unknown_name_lists_available():
    import salfw

    with pytest.raises(salfw.UnknownNameError, match="mnist-cnn, mnist-cnn-nobias, mnist-cnn-offset, mnist-mlp"):
        salfw.load_model("builtin:mnist-resnet")


def test_builtin_loader_available_lists_every_model():
    from salfw.zoo.plugin import BuiltinModels

    listed = BuiltinModels().available()
    assert [m["name"] for m in listed] == NAMES
    for m in listed:
        assert m["accuracy"] == MODELS[m["name"]]["accuracy"] and m["summary"]
