"""``salfw train``, ``salfw test`` and ``salfw plot``: the model toolkit on the command line
(the GeoSal thesis's ``Mnist_net``: create a network from a layer specification, train it,
test it, plot it).

Training uses MNIST ``t10k`` images 0-7999 and every accuracy is measured on images
8000-9999 (salfw.zoo.mnist.TRAIN_SLICE / HELDOUT_SLICE), the same split as the built-in
zoo; the training itself is :func:`salfw.zoo.toolkit.train` (Adam, cosine decay, seeded
shuffling and shifts). Models are written with :func:`salfw.zoo.toolkit.save`, the input
offset of the specification recorded in the metadata, and read back as white boxes.
"""

from __future__ import annotations

from pathlib import Path

import click
import torch

from salfw.core.errors import InputError
from salfw.core.models import WhiteBox

NUM_CLASSES = 10


def _mnist(mnist_dir: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    from salfw.zoo.mnist import default_mnist_dir, load_mnist

    try:
        return load_mnist(mnist_dir or default_mnist_dir())
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(f"MNIST not readable ({exc}); pass --mnist-dir or set SALFW_MNIST_DIR to a "
                                   f"directory with the MNIST IDX files") from None


def load_toolkit_model(spec: str) -> WhiteBox:
    """A white box from a file written by ``salfw train`` (``*.safetensors``) or any model spec
    (``builtin:mnist-cnn``, ...)."""
    from salfw.core.api import load_model
    from salfw.zoo import toolkit

    if spec.endswith(".safetensors"):
        if not Path(spec).is_file():
            raise InputError(f"model file {spec!r} not found")
        try:
            module, layout, metadata = toolkit.load(spec)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        return WhiteBox(module, input_shape=layout["input_shape"], offset=float(metadata.get("offset", 0.0)))
    model = load_model(spec)
    if not isinstance(model, WhiteBox):
        raise InputError(f"model {spec!r} is not a white box; the toolkit needs a torch network")
    return model


@click.command("train")
@click.option("--spec", default="mlp", show_default=True,
              help="layer specification: mlp, cnn, cnn-nobias, cnn-offset or a JSON file")
@click.option("--epochs", default=30, show_default=True, type=click.IntRange(min=1), help="passes over the data")
@click.option("--seed", default=0, show_default=True, type=int, help="seed of the initial weights and shuffling")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="model file to write (.safetensors)")
@click.option("--limit", default=8000, show_default=True, type=click.IntRange(1, 8000),
              help="train on the first N images of indices 0-7999")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--mnist-dir", default=None, type=click.Path(file_okay=False), help="MNIST IDX directory")
def train_command(spec: str, epochs: int, seed: int, out: str, limit: int, batch_size: int,
                  mnist_dir: str | None) -> None:
    """Build a network from SPEC, train it on MNIST and write it to OUT."""
    from salfw.sdk.understanding.specs import resolve_spec
    from salfw.zoo import toolkit
    from salfw.zoo.mnist import HELDOUT_SLICE, TRAIN_SLICE

    full = resolve_spec(spec)
    images, labels = _mnist(mnist_dir)
    x_train, y_train = images[TRAIN_SLICE][:limit], labels[TRAIN_SLICE][:limit]
    x_held, y_held = images[HELDOUT_SLICE], labels[HELDOUT_SLICE]
    try:
        model = toolkit.build(full["layers"], bias=full["bias"], input_shape=tuple(full["input_shape"]), seed=seed)
    except ValueError as exc:
        raise click.ClickException(f"bad layer specification: {exc}") from None
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)  # as scripts/train_zoo.py: the same seed gives the same weights
    try:
        losses = toolkit.train(model, x_train, y_train, epochs=epochs, lr=full["lr"], batch_size=batch_size,
                               seed=seed, augment=full["augment"], offset=full["offset"])
    finally:
        torch.use_deterministic_algorithms(deterministic)
    accuracy = toolkit.evaluate(model, x_held, y_held, offset=full["offset"])
    layout = {"layers": full["layers"], "bias": full["bias"], "input_shape": list(full["input_shape"])}
    toolkit.save(model, layout, out, metadata={"accuracy": accuracy, "seed": seed, "epochs": epochs,
                                              "train_images": limit, "offset": full["offset"], "lr": full["lr"],
                                              "augment": full["augment"], "batch_size": batch_size})
    click.echo(f"trained {spec} for {epochs} epochs on {limit} images (final loss {losses[-1]:.4f})")
    click.echo(f"held-out accuracy (MNIST t10k 8000-9999): {accuracy:.2%}")
    click.echo(f"wrote {out}")


@click.command("test")
@click.option("--model", "spec", default="builtin:mnist-cnn", show_default=True,
              help="a .safetensors file from 'salfw train' or a model spec")
@click.option("--errors", "num_errors", default=16, show_default=True, type=click.IntRange(min=0),
              help="misclassified examples to plot (0: none)")
@click.option("--out", default=".", show_default=True, type=click.Path(file_okay=False),
              help="directory for errors.png")
@click.option("--limit", default=2000, show_default=True, type=click.IntRange(1, 2000),
              help="test on the first N held-out images (8000-9999)")
@click.option("--mnist-dir", default=None, type=click.Path(file_okay=False), help="MNIST IDX directory")
def test_command(spec: str, num_errors: int, out: str, limit: int, mnist_dir: str | None) -> None:
    """Held-out accuracy, confusion matrix and example errors of a model on MNIST 8000-9999."""
    from salfw.sdk.understanding.plots import plot_errors
    from salfw.zoo import toolkit
    from salfw.zoo.mnist import HELDOUT_SLICE

    model = load_toolkit_model(spec)
    images, labels = _mnist(mnist_dir)
    x, y = images[HELDOUT_SLICE][:limit], labels[HELDOUT_SLICE][:limit]
    network = model.network()
    accuracy = toolkit.evaluate(network, x, y)
    matrix = toolkit.confusion_matrix(network, x, y, num_classes=NUM_CLASSES)
    click.echo(f"held-out accuracy (MNIST t10k 8000-{8000 + limit - 1}): {accuracy:.2%}")
    click.echo("confusion matrix (rows: true class, columns: predicted class)")
    click.echo("      " + "".join(f"{c:>6}" for c in range(NUM_CLASSES)))
    for row in range(NUM_CLASSES):
        click.echo(f"{row:>6}" + "".join(f"{int(v):>6}" for v in matrix[row]))
    wrong = toolkit.errors(network, x, y)[:num_errors]
    if num_errors and len(wrong):
        Path(out).mkdir(parents=True, exist_ok=True)
        predicted = toolkit.predict(network, x[wrong])
        path = plot_errors(x[wrong], y[wrong], predicted, Path(out) / "errors.png")
        click.echo(f"wrote {path} ({len(wrong)} errors)")


@click.command("plot")
@click.option("--model", "spec", default="builtin:mnist-cnn", show_default=True,
              help="a .safetensors file from 'salfw train' or a model spec")
@click.option("--what", type=click.Choice(["weights", "outputs", "averages"]), required=True,
              help="convolution weights, one layer's outputs for a sample digit, or every layer's average output")
@click.option("--layer", default=None, help="layer name as in named_modules() (e.g. 0); for weights and outputs")
@click.option("--sample", default=0, show_default=True, type=int, help="shipped sample digit for --what outputs")
@click.option("--in-channel", default=0, show_default=True, type=int, help="input channel for --what weights")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="image file to write (.png)")
def plot_command(spec: str, what: str, layer: str | None, sample: int, in_channel: int, out: str) -> None:
    """Plot a model's convolution weights, a layer's outputs or each layer's average output."""
    from salfw.sdk.understanding import plots

    model = load_toolkit_model(spec)
    if what == "averages":
        path = plots.plot_layer_averages(model, _sample_digits(model), out)
    elif layer is None:
        raise click.UsageError(f"--what {what} needs --layer; the layers are: "
                               f"{', '.join(plots.layer_names(model.module))}")
    elif what == "weights":
        path = plots.plot_conv_weights(model.module, layer, out, in_channel=in_channel)
    else:
        images = _sample_digits(model)
        if not 0 <= sample < len(images):
            raise InputError(f"--sample must be in 0..{len(images) - 1}, got {sample}")
        path = plots.plot_layer_outputs(model, images[sample:sample + 1], layer, out)
    click.echo(f"wrote {path}")


def _sample_digits(model: WhiteBox) -> torch.Tensor:
    """The shipped sample digits, checked against the model's input shape."""
    from salfw.zoo.samples import load_samples

    images, _ = load_samples()
    if model.input_shape is not None and tuple(images.shape[1:]) != tuple(model.input_shape):
        raise InputError(f"the sample digits are {tuple(images.shape[1:])}, the model takes {model.input_shape}")
    return images
