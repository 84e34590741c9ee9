"""``salfw train-masker``: train a real-time saliency masker (Dabkowski & Gal 2017) for a
model on the built-in MNIST training images (indices 0-7999 of the MNIST test split,
the zoo's training range) and save it as safetensors with a sidecar JSON of its
training settings. The algorithm lives in :mod:`salfw.plugins.real_time_saliency`."""

from __future__ import annotations

import json
from pathlib import Path

import click

TRAIN_SAMPLES = 8000


@click.command("train-masker")
@click.option("--model", "spec", default="builtin:mnist-cnn", show_default=True, help="model spec to explain")
@click.option("--epochs", default=2, show_default=True, type=click.IntRange(min=1), help="passes over the data")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="masker file to write (.safetensors)")
@click.option("--seed", default=0, show_default=True, type=int, help="seed of the initialisation and shuffling")
@click.option("--samples", default=TRAIN_SAMPLES, show_default=True, type=click.IntRange(1, TRAIN_SAMPLES),
              help="training images (the first N of indices 0-7999)")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--learning-rate", default=1e-3, show_default=True, type=click.FloatRange(min=0.0))
def train_masker(spec, epochs, out, seed, samples, batch_size, learning_rate):
    """Train a masker for MODEL and write it to OUT (and OUT with a .json suffix)."""
    from salfw.core.api import load_model
    from salfw.plugins.real_time_saliency import save_masker
    from salfw.plugins.real_time_saliency import train_masker as train
    from salfw.zoo.mnist import default_mnist_dir, load_mnist

    model = load_model(spec)
    try:
        images, labels = load_mnist(default_mnist_dir())
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(f"MNIST not found ({exc}); set SALFW_MNIST_DIR to a directory with the "
                                   f"MNIST IDX files") from None
    masker, settings = train(model, images[:samples], labels[:samples], epochs=epochs, seed=seed,
                             batch_size=batch_size, learning_rate=learning_rate,
                             log=lambda line: click.echo(line, err=True))
    settings["model"] = spec
    save_masker(masker, out, settings)
    sidecar = Path(out).with_suffix(".json")
    sidecar.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    click.echo(f"wrote {out} and {sidecar}")
