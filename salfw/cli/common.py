"""Shared CLI helpers: loading models and inputs, ``--set key=value`` parsing,
and turning user mistakes into one-line errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

from salfw.core.api import load_model
from salfw.core.errors import InputError, ParameterError
from salfw.core.models import Model

DEFAULT_MODEL = "builtin:mnist-cnn"


def notice(message: str) -> None:
    click.echo(f"notice: {message}", err=True)


def parse_sets(pairs: tuple[str, ...]) -> dict[str, str]:
    """``("steps=20", "perturbation=blur", "perturbation.sigma=2")`` -> ``{"steps": "20",
    "perturbation": "blur", "perturbation.sigma": "2"}``: keys pass through whole (a dotted key is
    a nested setting, validated by the component it names); values are coerced to the declared
    types by the method's parameter declaration."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ParameterError(f"--set takes key=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def model_from_spec(spec: str | None) -> Model:
    return load_model(spec or DEFAULT_MODEL)


def expected_shape(model: Model) -> tuple[int, ...] | None:
    return model.input_shape


def _fit_image(array: np.ndarray, model: Model, source: str) -> torch.Tensor:
    """An (H, W) or (H, W, C) 8-bit-range picture -> (1, C, H, W) in the model's input range."""
    from PIL import Image

    shape = expected_shape(model)
    channels = shape[0] if shape else (1 if array.ndim == 2 else array.shape[2])
    img = Image.fromarray(array)
    img = img.convert("L" if channels == 1 else "RGB")
    if shape and img.size != (shape[2], shape[1]):
        notice(f"resized {source} from {img.size[0]}x{img.size[1]} to the model's {shape[2]}x{shape[1]}")
        img = img.resize((shape[2], shape[1]), Image.Resampling.BILINEAR)
    pixels = np.asarray(img, dtype=np.float32) / 255.0
    pixels = pixels[None] if pixels.ndim == 2 else np.moveaxis(pixels, -1, 0)
    lo, hi = model.input_range
    return torch.from_numpy(lo + (hi - lo) * pixels)[None]


def load_input(path: str, model: Model) -> torch.Tensor:
    """Read ``--input``: PNG/JPEG (greyscale or RGB, resized to the model's input size with a
    notice) or ``.npy`` ((H, W), (C, H, W), (N, C, H, W) or (N, D), already in the input range)."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"input file {path} does not exist")
    suffix = file.suffix.lower()
    if suffix == ".npy":
        try:
            array = np.load(file, allow_pickle=False)
        except ValueError as exc:
            raise InputError(f"cannot read {path} as a .npy array: {exc}") from None
        if array.dtype.kind not in "fiu":
            raise InputError(f"{path} holds {array.dtype} values; expected numbers")
        x = torch.from_numpy(np.ascontiguousarray(array)).float()
        if x.dim() == 2 and model.input_shape is not None and len(model.input_shape) == 3:
            x = x[None, None]
        elif x.dim() == 3:
            x = x[None]
        elif x.dim() == 1:
            x = x[None]
        return x
    if suffix in (".png", ".jpg", ".jpeg"):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(file) as img:
                array = np.asarray(img.convert("RGB") if img.mode not in ("L", "RGB") else img)
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"cannot read {path} as an image: {exc}") from None
        return _fit_image(array, model, file.name)
    raise InputError(f"--input {path}: accepted formats are .png, .jpg, .jpeg and .npy")


def load_sample(k: int) -> tuple[torch.Tensor, int]:
    """The built-in sample digit ``k`` and its label."""
    from salfw.zoo.samples import load_samples

    images, labels = load_samples()
    if not 0 <= k < len(images):
        raise InputError(f"--sample must be in 0..{len(images) - 1}, got {k}")
    return images[k:k + 1], int(labels[k])


def inputs_for(model: Model, input_path: str | None, sample: int | None) -> torch.Tensor:
    if input_path is not None and sample is not None:
        raise ParameterError("give either --input or --sample, not both")
    if input_path is not None:
        return load_input(input_path, model)
    return load_sample(sample or 0)[0]


def progress_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--progress/--no-progress``: None (not given) means on when stderr is a terminal."""
    return click.option("--progress/--no-progress", default=None,
                        help="show progress bars on stderr (default: when stderr is a terminal)")(f)


def model_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--model``, ``--input``, ``--sample``, ``--target``, ``--set``, ``--seed``, ``--out`` and
    ``--progress/--no-progress``."""
    options = [
        click.option("--model", "model_spec", default=None,
                     help="model spec: builtin:NAME, torchscript:PATH, onnx:PATH, python:MOD:FN "
                          f"(default {DEFAULT_MODEL})"),
        click.option("--input", "input_path", default=None, help="a PNG/JPEG image or a .npy array"),
        click.option("--sample", type=int, default=None, help="index of a built-in sample digit (default 0)"),
        click.option("--target", type=int, default=None, help="class to explain (default: the predicted one)"),
        click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                     help="a method parameter, or a nested setting such as perturbation.sigma=2; repeatable"),
        click.option("--seed", type=int, default=0, show_default=True, help="seed for every random choice"),
        click.option("--out", default="salfw-out", show_default=True, help="output directory"),
    ]
    f = progress_option(f)
    for option in reversed(options):
        f = option(f)
    return f
