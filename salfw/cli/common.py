"""Shared CLI helpers: loading models and inputs, ``--set key=value`` parsing,
and turning user mistakes into one-line errors."""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

from salfw.core.api import as_batch, load_model
from salfw.core.errors import InputError, ParameterError, SalfwError, SalfwWarning
from salfw.core.models import Model
from salfw.core.ranges import range_ends

DEFAULT_MODEL = "builtin:mnist-cnn"
#: The largest image ``--input`` reads, in pixels (64 Mpx, e.g. 8192 x 8192): far above any
#: model's input size, far below what would exhaust memory when decoded. Pillow's own guard
#: (``Image.MAX_IMAGE_PIXELS``, about 89 Mpx for a warning and twice that for an error) is
#: turned into the same one-line error.
MAX_IMAGE_PIXELS = 2 ** 26
#: ``--seed``: what every generator salfw seeds accepts (a non-negative int64).
SEED_RANGE = click.IntRange(0, 2 ** 63 - 1)
#: Pillow's modes for 16-bit greyscale PNGs.
_DEEP_MODES = ("I;16", "I;16B", "I;16L", "I")


def notice(message: str) -> None:
    click.echo(f"notice: {message}", err=True)


@contextlib.contextmanager
def warnings_as_notices() -> Iterator[None]:
    """While a command runs, show each of salfw's own warnings (:class:`SalfwWarning`: a degenerate
    result, a guessed setting) as one ``notice:`` line on stderr; other warnings keep Python's format."""
    with warnings.catch_warnings():  # restores the filters and showwarning afterwards
        shown = warnings.showwarning

        def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: Any = None, line: str | None = None) -> None:
            if issubclass(category, SalfwWarning):
                notice(" ".join(str(message).split()))
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


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


def check_output_directory(path: str) -> None:
    """Refuse an ``--out`` that cannot become a directory of results, before any work: an existing
    file, a path under a file, or a place the user may not write (tried by making and removing a
    temporary directory in the nearest existing parent; nothing is left behind)."""
    directory = Path(path).expanduser()
    try:
        if directory.exists() and not directory.is_dir():
            raise ParameterError(f"{path} is a file, not a directory")
        if directory.is_symlink() and not directory.exists():
            raise ParameterError(f"{path} is a link to nothing")
        existing = directory.absolute()
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise ParameterError(f"{path} is under {existing}, which is a file, not a directory")
    except OSError as exc:
        raise ParameterError(f"cannot write to {path}: {exc.strerror or exc}") from None
    try:
        tempfile.TemporaryDirectory(dir=existing, prefix=".salfw-check-").cleanup()
    except OSError as exc:
        raise ParameterError(f"cannot write to {path}: making a directory in {existing} failed "
                             f"({exc.strerror or exc})") from None


def output_directory(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """click callback for ``--out``: :func:`check_output_directory` while the command line is read."""
    try:
        check_output_directory(value)
    except ParameterError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None
    return value


def _fit_image(img: Any, model: Model, source: str) -> torch.Tensor:
    """A decoded picture -> (1, C, H, W) in the model's input range. When the model declares an image
    shape (C, H, W), a picture of another size is resized (bilinear, antialiased) so that it covers
    H x W, its aspect ratio kept, and centre-cropped to H x W, as ImageNet models are evaluated
    (torchvision's Resize + CenterCrop); a one-line notice says what was done, and so it does when
    a colour picture becomes greyscale or the reverse. 8-bit pictures (mode ``L`` or ``RGB``) are
    scaled by 1/255; 16-bit greyscale ones (mode ``F`` here, already divided by 65535) keep their
    full precision and are repeated over the channels of an RGB model."""
    shape = expected_shape(model)
    image_shape = shape if shape is not None and len(shape) == 3 else None
    deep = img.mode == "F"
    channels = image_shape[0] if image_shape else (1 if img.mode in ("L", "F") else 3)
    converted = resized = ""
    if (img.mode == "RGB") != (channels != 1):
        converted = (f"converted it from {'colour' if img.mode == 'RGB' else 'greyscale'} to "
                     f"{'greyscale' if channels == 1 else 'colour'} (the model takes {channels} "
                     f"channel{'s' if channels > 1 else ''})")
    if not deep:
        img = img.convert("L" if channels == 1 else "RGB")
    if image_shape and img.size != (image_shape[2], image_shape[1]):
        img, resized = _resize_and_crop(img, image_shape[2], image_shape[1], source)
    if resized or converted:
        notice(f"{resized}; {converted}" if resized and converted else resized or f"{source}: {converted}")
    pixels = np.asarray(img, dtype=np.float32) / (1.0 if deep else 255.0)
    if deep and channels != 1:
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    pixels = pixels[None] if pixels.ndim == 2 else np.moveaxis(pixels, -1, 0)
    lo, hi = model.input_range
    return torch.from_numpy(lo + (hi - lo) * pixels)[None]


def _resize_and_crop(img: Any, width: int, height: int, source: str) -> tuple[Any, str]:
    """``img`` resized to cover ``width`` x ``height`` with its aspect ratio kept, then centre-cropped
    to it; and the words saying so."""
    from PIL import Image

    w, h = img.size
    scale = max(width / w, height / h)
    cover = (max(width, round(w * scale)), max(height, round(h * scale)))
    img = img.resize(cover, Image.Resampling.BILINEAR)
    if cover == (width, height):
        return img, f"resized {source} from {w}x{h} to the model's {width}x{height}"
    left, top = (cover[0] - width) // 2, (cover[1] - height) // 2
    img = img.crop((left, top, left + width, top + height))
    return img, (f"resized {source} from {w}x{h} to {cover[0]}x{cover[1]} (its aspect ratio kept) and "
                 f"centre-cropped it to the model's {width}x{height}")


def _decoded(img: Any, path: str) -> Any:
    """An opened picture, checked for size and decoded: mode ``F`` in [0, 1] for a 16-bit
    greyscale PNG (full precision), ``L`` or ``RGB`` (8-bit) for anything else."""
    from PIL import Image

    if img.width * img.height > MAX_IMAGE_PIXELS:
        raise InputError(f"cannot read {path}: the image is too large ({img.width}x{img.height} = "
                         f"{img.width * img.height:,} pixels; salfw reads up to {MAX_IMAGE_PIXELS:,})")
    if img.mode in _DEEP_MODES:
        return Image.fromarray(np.asarray(img, dtype=np.float32) / 65535.0, mode="F")
    return img.convert("RGB") if img.mode not in ("L", "RGB") else img.copy()


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
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(file) as img:
                    picture = _decoded(img, path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InputError(f"cannot read {path}: the image is too large to decode safely ({exc}); salfw "
                             f"reads up to {MAX_IMAGE_PIXELS:,} pixels") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"cannot read {path} as an image: {exc}") from None
        return _fit_image(picture, model, file.name)
    raise InputError(f"--input {path}: accepted formats are .png, .jpg, .jpeg and .npy")


def load_sample(k: int) -> tuple[torch.Tensor, int]:
    """The built-in sample digit ``k`` and its label."""
    from salfw.zoo.samples import load_samples

    images, labels = load_samples()
    if not 0 <= k < len(images):
        raise InputError(f"--sample must be in 0..{len(images) - 1}, got {k}")
    return images[k:k + 1], int(labels[k])


def check_fits(model: Model, x: torch.Tensor, source: str) -> None:
    """Refuse inputs the network cannot take, before any method runs: one forward pass on the
    first input when the model declares no input shape (``python:``, ``torchscript:`` and
    ``onnx:`` models, unless ``?input_shape=`` is given; a declared shape is checked by
    :func:`salfw.core.api.as_batch`). The network's own error becomes one line."""
    batch = as_batch(model, x[:1])
    if model.input_shape is not None:
        return
    try:
        model.scores(batch)
    except SalfwError:
        raise
    except Exception as exc:  # the user's network refusing the user's input, in whatever words
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(f"the model cannot take {source}, of per-sample shape {tuple(x.shape[1:])} "
                         f"({reason}); give inputs of the shape the model was built for, or declare it "
                         f"on the model spec (?input_shape=C,H,W or ?input_shape=D)") from None


def inverted(x: torch.Tensor, model: Model) -> torch.Tensor:
    """``--invert``: ``lo + hi - x`` within the model's input range (a dark digit on white becomes a
    light digit on black)."""
    lo, hi = range_ends(model.input_range, x)
    return lo + hi - x


def trained_on_dark_backgrounds(spec: str | None) -> bool:
    """Whether the model was trained on light strokes on a dark background: the built-in MNIST networks."""
    return (spec or DEFAULT_MODEL).startswith("builtin:")


def polarity_hint(x: torch.Tensor, model: Model, spec: str | None, source: str) -> None:
    """A notice suggesting ``--invert`` when a one-channel picture for a model trained on dark
    backgrounds (the MNIST networks) is mostly bright: its median lies in the upper half of the input
    range, where an MNIST digit's median is the background's black."""
    if x.dim() != 4 or x.shape[1] != 1 or not trained_on_dark_backgrounds(spec):
        return
    lo, hi = model.input_range
    medians = ((x.flatten(1).median(dim=1).values - lo) / (hi - lo)).tolist()
    bright = [m for m in medians if m > 0.5]
    if bright:
        notice(f"{source} looks like a dark digit on a light background (median brightness {max(bright):.2f} "
               f"of the range), but {spec or DEFAULT_MODEL} was trained on light digits on black; "
               f"pass --invert to flip it")


def inputs_for(model: Model, input_path: str | None, sample: int | None, invert: bool = False,
               spec: str | None = None) -> torch.Tensor:
    """The inputs ``--input`` or ``--sample`` name, inverted within the input range with ``invert``
    (``--invert``) and checked against the model (:func:`check_fits`). A bright picture for a model
    trained on dark backgrounds (``spec``, the model's spec) gets a hint (:func:`polarity_hint`)."""
    if input_path is not None and sample is not None:
        raise ParameterError("give either --input or --sample, not both")
    if input_path is not None:
        x = load_input(input_path, model)
        source = input_path
    else:
        x = load_sample(sample or 0)[0]
        source = f"sample {sample or 0}"
    if invert:
        x = inverted(x, model)
    elif input_path is not None:
        polarity_hint(x, model, spec, Path(input_path).name)
    check_fits(model, x, source)
    return x


def progress_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--progress/--no-progress``: None (not given) means on when stderr is a terminal."""
    return click.option("--progress/--no-progress", default=None,
                        help="show progress bars on stderr (default: when stderr is a terminal)")(f)


def model_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--model``, ``--input``, ``--sample``, ``--target``, ``--set``, ``--invert``, ``--seed``,
    ``--out`` and ``--progress/--no-progress``."""
    options = [
        click.option("--model", "model_spec", default=None,
                     help="model spec: builtin:NAME, torchscript:PATH, onnx:PATH, python:MOD:FN "
                          f"(default {DEFAULT_MODEL})"),
        click.option("--input", "input_path", default=None,
                     help="a PNG/JPEG picture of any size (resized and centre-cropped to the model's input "
                          "size when it is known) or a .npy array"),
        click.option("--sample", type=int, default=None, help="index of a built-in sample digit (default 0)"),
        click.option("--target", type=int, default=None, help="class to explain (default: the predicted one)"),
        click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                     help="a method parameter, or a nested setting such as perturbation.sigma=2; repeatable"),
        click.option("--invert", is_flag=True,
                     help="invert the input within the input range (dark digits on white for a model "
                          "trained on light digits on black, such as the built-in MNIST networks)"),
        click.option("--seed", type=SEED_RANGE, default=0, show_default=True, help="seed for every random choice"),
        click.option("--out", default="salfw-out", show_default=True, callback=output_directory,
                     help="output directory (checked before any work)"),
    ]
    f = progress_option(f)
    for option in reversed(options):
        f = option(f)
    return f
