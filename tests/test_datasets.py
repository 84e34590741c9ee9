"""Datasets as plugins (issue 16): the ``mnist:``, ``folder:`` and ``npy:`` specs read in batches
agree with the whole-file readers, ``folder:`` fits images to the model's input as torchvision's
evaluation transform does, and spec mistakes are one-line errors."""

import numpy as np
import pytest
import torch
from PIL import Image

import salfw
from salfw.zoo import mnist
from tests.test_cli import run_cli
from tests.test_zoo import write_mnist


@pytest.fixture(scope="module")
def model():
    return salfw.load_model("builtin:mnist-cnn")


@pytest.fixture
def idx_dir(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 10, dtype=np.uint8)
    return tmp_path, images, labels


def test_builtin_datasets_are_registered_plugins(capsys):
    assert {"mnist", "folder", "npy"} <= set(salfw.datasets())
    code, out, _ = run_cli(["list", "datasets"], capsys)
    assert code == 0 and all(name in out for name in ("mnist", "folder", "npy"))
    code, out, _ = run_cli(["info", "mnist"], capsys)
    assert code == 0 and "start" in out and "stop" in out and "split" in out


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_batches_equal_the_whole_file_reader(idx_dir, model, compress):
    directory, images, labels = idx_dir
    write_mnist(directory, images, labels, compress)
    whole_x, whole_y = mnist.load_mnist(directory)
    dataset = salfw.load_dataset(f"mnist:{directory}?start=2&stop=9", model)
    assert len(dataset) == 7
    # forwards, then backwards (a gzip stream is reopened), then overlapping
    for start, stop in [(0, 3), (3, 7), (1, 2), (5, 7), (0, 7)]:
        x, y = dataset.read(start, stop)
        assert torch.equal(x, whole_x[2 + start:2 + stop]) and torch.equal(y, whole_y[2 + start:2 + stop])
    dataset.close()


def test_mnist_in_another_input_range(idx_dir):
    directory, images, labels = idx_dir
    write_mnist(directory, images, labels, compress=True)
    model = salfw.WhiteBox(torch.nn.Flatten(), input_range=(-1.0, 1.0), input_shape=(1, 28, 28))
    x, _ = salfw.load_dataset(f"mnist:{directory}", model).read(0, 10)
    assert torch.allclose(x[:, 0], torch.from_numpy(images).float() / 255 * 2 - 1)


def test_npy_dataset_is_memory_mapped_and_scaled(tmp_path, model):
    pixels = np.random.default_rng(2).integers(0, 256, (12, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "x.npy", pixels)
    np.save(tmp_path / "y.npy", np.arange(12) % 10)
    dataset = salfw.load_dataset(f"npy:{tmp_path / 'x.npy'}?labels={tmp_path / 'y.npy'}&start=4", model)
    assert isinstance(dataset.array, np.memmap) and len(dataset) == 8
    x, y = dataset.read(2, 5)
    assert x.shape == (3, 1, 28, 28) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], torch.from_numpy(pixels[6:9]).float() / 255) and y.tolist() == [6, 7, 8]
    floats = np.random.default_rng(3).random((5, 1, 28, 28), dtype=np.float32)
    np.save(tmp_path / "f.npy", floats)
    x, y = salfw.load_dataset(f"npy:{tmp_path / 'f.npy'}", model).read(0, 5)
    assert torch.equal(x, torch.from_numpy(floats)) and y is None


def _folder(tmp_path):
    """Two classes, sorted by folder name; images of several sizes and modes."""
    root = tmp_path / "images"
    for name in ("zebra", "ant"):
        (root / name).mkdir(parents=True)
    wide = np.zeros((20, 40), dtype=np.uint8)
    wide[:, 19:21] = 255                       # a white stripe in the middle of a 40 x 20 picture
    Image.fromarray(wide).save(root / "ant" / "b.png")
    Image.fromarray(np.full((50, 30, 3), 128, dtype=np.uint8)).save(root / "ant" / "a.png")
    Image.fromarray(np.full((28, 28), 255, dtype=np.uint8)).save(root / "zebra" / "c.png")
    (root / "zebra" / "notes.txt").write_text("not an image")
    return root


def test_folder_dataset_follows_imagefolder_and_centre_crops(tmp_path, model):
    dataset = salfw.load_dataset(f"folder:{_folder(tmp_path)}", model)
    assert dataset.classes == ["ant", "zebra"] and len(dataset) == 3
    assert dataset.names() == ["ant/a.png", "ant/b.png", "zebra/c.png"]
    x, y = dataset.read(0, 3)
    assert x.shape == (3, 1, 28, 28) and y.tolist() == [0, 0, 1]
    assert torch.allclose(x[0], torch.full_like(x[0], 128 / 255))   # RGB grey -> one grey channel
    # 40 x 20 covers 28 x 28 at 56 x 28: the crop keeps the middle, where the stripe is
    stripe = x[1, 0].mean(dim=0)
    assert stripe[13:15].min() > 0.9 and stripe[:8].max() == 0 and stripe[-8:].max() == 0
    assert torch.equal(x[2], torch.ones_like(x[2]))
    part = salfw.load_dataset(f"folder:{tmp_path / 'images'}?start=1&resize=40", model)
    assert part.names() == ["ant/b.png", "zebra/c.png"] and part.read(0, 2)[0].shape == (2, 1, 28, 28)


@pytest.mark.parametrize("spec,message", [
    ("imagenet:/data", "unknown dataset 'imagenet'; available: folder, mnist, npy"),
    ("mnist", "a dataset spec looks like 'name:location?key=value'"),
    ("mnist:?start", "key=value pairs"),
    ("mnist:?start=1&start=2", "gives start more than once"),
    ("mnist:?begin=3", "begin"),
    ("mnist:?stop=ten", "stop"),
    ("mnist:/no/such/dir", "is not a directory"),
    ("npy:missing.npy", "'missing.npy' is not a file"),
    ("folder:.", "no images"),
])
def test_a_bad_dataset_spec_is_a_one_line_error(spec, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["explain", "gradient", "--dataset", spec, "--out", "s.zarr"], capsys)
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_out_of_range_selections_are_refused(idx_dir, model, tmp_path):
    directory, images, labels = idx_dir
    write_mnist(directory, images, labels, compress=False)
    with pytest.raises(salfw.InputError, match="0 <= start <= stop <= 10"):
        salfw.load_dataset(f"mnist:{directory}?stop=11", model)
    with pytest.raises(salfw.InputError, match="selects no samples"):
        salfw.load_dataset(f"mnist:{directory}?start=4&stop=4", model)
    np.save(tmp_path / "x.npy", np.zeros((4, 28, 28), np.uint8))
    np.save(tmp_path / "y.npy", np.zeros(3, np.int64))
    with pytest.raises(salfw.InputError, match=r"expected integers of shape \(4,\)"):
        salfw.load_dataset(f"npy:{tmp_path / 'x.npy'}?labels={tmp_path / 'y.npy'}", model)


def test_a_folder_run_records_the_file_names(tmp_path, capsys):
    from salfw.evaluation.scale import open_store

    root = _folder(tmp_path)
    code, out, err = run_cli(["explain", "gradient", "--dataset", f"folder:{root}", "--out", str(tmp_path / "s.zarr"),
                              "--target", "label", "--chunk", "2"], capsys)
    assert code == 0, err
    store = open_store(tmp_path / "s.zarr")
    assert store.attrs["names"] == ["ant/a.png", "ant/b.png", "zebra/c.png"]
    assert store["label"][:].tolist() == store["target"][:].tolist() == [0, 0, 1]
    assert store["gradient"].shape == (3, 1, 28, 28) and store["done"][:].tolist() == [True, True]
