"""salfw's built-in datasets, a plugin like any other (the ``datasets`` entry point):
``mnist:DIR``, ``folder:DIR`` and ``npy:FILE``, each read in batches so that no dataset has
to fit in memory (``salfw.load_dataset(spec, model)``, ``salfw list datasets``).

Every built-in takes ``start`` and ``stop`` (``mnist:DIR?start=8000&stop=9000``): the samples
``start..stop-1`` of the source, renumbered from 0.

* ``mnist:DIR`` reads the IDX files of LeCun, Cortes and Burges' MNIST (gzip or plain; the
  format is described in :mod:`salfw.zoo.mnist`); an empty ``DIR`` is the project's copy
  (:func:`salfw.zoo.mnist.default_mnist_dir`). Rows are read by seeking: a plain file is read
  row range by row range, a gzip file is decompressed forwards as the batches advance.
* ``folder:DIR`` is torchvision's ``ImageFolder`` layout: one sub-folder per class, the classes
  numbered in sorted order of their folder names (so an ImageNet validation set laid out by
  WordNet id gets the usual class indices), the image files of each class sorted by path.
  Each image is resized so that it covers the model's input (its shorter side scaled to the
  input's, or to ``resize`` pixels, ImageNet's usual 256 for a 224 crop), then centre-cropped
  to the input's height and width: the evaluation transform of torchvision's reference scripts.
* ``npy:FILE?labels=FILE`` opens a NumPy array with ``mmap_mode="r"``: (N, H, W) gets a
  channel, (N, C, H, W) and (N, D) are taken as they are; integer arrays are 8-bit pixels
  (divided by 255 and mapped to the model's input range), float arrays must already be in it.
"""

from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from salfw.core.contracts import Dataset
from salfw.core.errors import InputError
from salfw.core.hookspecs import hookimpl
from salfw.core.models import Model
from salfw.core.params import param
from salfw.zoo.mnist import IMAGE_SIZE, IMAGES_MAGIC, LABELS_MAGIC, NUM_CLASSES, default_mnist_dir

#: The image file extensions torchvision's ImageFolder accepts.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _range(model: Model | None) -> tuple[float, float]:
    return model.input_range if model is not None else (0.0, 1.0)


def _pixels(array: np.ndarray, model: Model | None) -> torch.Tensor:
    """8-bit pixels (any integer dtype) -> float32 in the model's input range."""
    lo, hi = _range(model)
    return torch.from_numpy(lo + (hi - lo) * (np.asarray(array, dtype=np.float32) / 255.0))


class _Slice(Dataset):
    """``start``/``stop`` over a source of ``total`` samples; subclasses read source rows."""

    total = 0

    def _bounds(self) -> None:
        start, stop = self.params.start, self.params.stop
        stop = self.total if stop is None else stop
        if not 0 <= start <= stop <= self.total:
            raise InputError(f"dataset '{self.name}:{self.location}' has {self.total} samples; start={start} and "
                             f"stop={self.params.stop} must satisfy 0 <= start <= stop <= {self.total}")
        if start == stop:
            raise InputError(f"dataset '{self.name}:{self.location}' selects no samples (start = stop = {start})")
        self.first, self.last = start, stop

    def __len__(self) -> int:
        return self.last - self.first

    def read(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not 0 <= start < stop <= len(self):
            raise InputError(f"rows {start}..{stop - 1} are outside this dataset's {len(self)} samples")
        return self._rows(self.first + start, self.first + stop)

    def _rows(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError


# -- mnist -----------------------------------------------------------------------------
class _IdxRows:
    """Row ranges of one uint8 IDX file, read on demand (the file stays open; gzip seeks forwards)."""

    def __init__(self, path: Path, magic: int, tail: tuple[int, ...]):
        self.path = path
        self.gzip = _is_gzip(path)
        self.file: gzip.GzipFile | BinaryIO | None = None
        ndim = magic & 0xFF
        self.header = 4 + 4 * ndim
        head = self._open().read(self.header)
        found = int.from_bytes(head[:4], "big") if len(head) >= 4 else None
        if found != magic:
            raise InputError(f"{path}: not an IDX file of {ndim}-dimensional uint8 data (magic number "
                             f"{'missing' if found is None else f'0x{found:08x}'}, expected 0x{magic:08x})")
        dims = tuple(int.from_bytes(head[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
        if dims[1:] != tail:
            raise InputError(f"{path}: IDX dimensions {dims}, expected (N, {', '.join(map(str, tail))})")
        self.rows, self.row_bytes = dims[0], int(np.prod(tail, dtype=np.int64)) if tail else 1
        if not self.gzip and path.stat().st_size != self.header + self.rows * self.row_bytes:
            raise InputError(f"{path}: {path.stat().st_size} bytes, expected "
                             f"{self.header + self.rows * self.row_bytes} for {self.rows} rows")

    def _open(self) -> gzip.GzipFile | BinaryIO:
        if self.file is None:
            self.file = gzip.GzipFile(self.path, "rb") if self.gzip else open(self.path, "rb")
        return self.file

    def read(self, start: int, stop: int) -> np.ndarray:
        file = self._open()
        file.seek(self.header + start * self.row_bytes)
        data = file.read((stop - start) * self.row_bytes)
        if len(data) != (stop - start) * self.row_bytes:
            raise InputError(f"{self.path}: truncated; rows {start}..{stop - 1} of {self.rows} could not be read")
        return np.frombuffer(data, dtype=np.uint8).reshape(stop - start, -1)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _idx_file(directory: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise InputError(f"mnist dataset: neither {stem}.gz nor {stem} found in {directory}")


class MnistDataset(_Slice):
    """The MNIST IDX files of a directory (LeCun, Cortes & Burges), streamed row range by row range."""

    name = "mnist"
    summary = "MNIST IDX files (mnist:DIR?split=t10k&start=0&stop=10000; empty DIR: the project's copy)"

    @dataclasses.dataclass(frozen=True)
    class Params:
        split: str = param("t10k", "which split's files: t10k (test, 10,000 digits) or train (60,000)",
                           choices=("t10k", "train"))
        start: int = param(0, "first sample of the split", low=0)
        stop: int | None = param(None, "one past the last sample (default: the end of the split)", low=0)

    def __init__(self, location: str, params: Any, model: Model | None = None):
        super().__init__(location, params, model)
        directory = Path(location) if location else default_mnist_dir()
        if not directory.is_dir():
            raise InputError(f"mnist dataset: {directory} is not a directory (expected the IDX files "
                             f"{params.split}-images-idx3-ubyte[.gz] and {params.split}-labels-idx1-ubyte[.gz])")
        self.images = _IdxRows(_idx_file(directory, f"{params.split}-images-idx3-ubyte"), IMAGES_MAGIC,
                               (IMAGE_SIZE, IMAGE_SIZE))
        self.labels = _IdxRows(_idx_file(directory, f"{params.split}-labels-idx1-ubyte"), LABELS_MAGIC, ())
        if self.images.rows != self.labels.rows:
            raise InputError(f"{self.images.path} holds {self.images.rows} images but {self.labels.path} "
                             f"{self.labels.rows} labels")
        self.total = self.images.rows
        self._bounds()

    def _rows(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        images = self.images.read(start, stop).reshape(-1, 1, IMAGE_SIZE, IMAGE_SIZE)
        labels = self.labels.read(start, stop).reshape(-1)
        if labels.size and labels.max() >= NUM_CLASSES:
            raise InputError(f"{self.labels.path}: label {int(labels.max())} found, expected 0-9")
        return _pixels(images, self.model), torch.from_numpy(labels.astype(np.int64))

    def close(self) -> None:
        self.images.close()
        self.labels.close()


# -- folder ----------------------------------------------------------------------------
class FolderDataset(_Slice):
    """Images in one sub-folder per class (torchvision's ImageFolder layout), fitted to the model's input."""

    name = "folder"
    summary = "one sub-folder per class (ImageFolder layout), resized and centre-cropped to the model's input"

    @dataclasses.dataclass(frozen=True)
    class Params:
        resize: int | None = param(None, "shorter side before the centre crop (default: just cover the input; "
                                         "ImageNet's usual 256 for a 224 crop)", low=1)
        start: int = param(0, "first image, in sorted order", low=0)
        stop: int | None = param(None, "one past the last image (default: all)", low=0)

    def __init__(self, location: str, params: Any, model: Model | None = None):
        super().__init__(location, params, model)
        root = Path(location)
        if not root.is_dir():
            raise InputError(f"folder dataset: {location!r} is not a directory (expected one sub-folder per class)")
        shape = model.input_shape if model is not None else None
        if shape is None or len(shape) != 3 or shape[0] not in (1, 3):
            raise InputError(f"folder dataset: the model must declare an image input_shape (1 or 3, H, W) to fit "
                             f"the images to, got {shape}")
        self.shape = shape
        self.classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        self.files = [(path, index) for index, name in enumerate(self.classes)
                      for path in sorted((root / name).rglob("*")) if path.suffix.lower() in IMAGE_EXTENSIONS]
        if not self.files:
            raise InputError(f"folder dataset: no images ({', '.join(IMAGE_EXTENSIONS)}) in class sub-folders of "
                             f"{location}")
        self.root = root
        self.total = len(self.files)
        self._bounds()
        if params.resize is not None and params.resize < min(shape[1:]):
            raise InputError(f"folder dataset: resize={params.resize} is smaller than the {shape[1]}x{shape[2]} crop")

    def _load(self, path: Path) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        channels, height, width = self.shape
        try:
            with Image.open(path) as img:
                img = img.convert("L" if channels == 1 else "RGB")
                scale = max(height / img.height, width / img.width) if self.params.resize is None else \
                    self.params.resize / min(img.height, img.width)
                size = (max(width, round(img.width * scale)), max(height, round(img.height * scale)))
                img = img.resize(size, Image.Resampling.BILINEAR)
                left, top = (size[0] - width) // 2, (size[1] - height) // 2
                pixels = np.asarray(img.crop((left, top, left + width, top + height)), dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"folder dataset: cannot read {path} as an image: {exc}") from None
        return pixels[None] if pixels.ndim == 2 else np.moveaxis(pixels, -1, 0)

    def _rows(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        rows = self.files[start:stop]
        images = np.stack([self._load(path) for path, _ in rows])
        return _pixels(images, self.model), torch.tensor([label for _, label in rows], dtype=torch.int64)

    def names(self) -> list[str]:
        return [path.relative_to(self.root).as_posix() for path, _ in self.files[self.first:self.last]]


# -- npy -------------------------------------------------------------------------------
class NpyDataset(_Slice):
    """A NumPy ``.npy`` array opened with ``mmap_mode="r"`` (rows are read as they are needed)."""

    name = "npy"
    summary = "a .npy array, memory-mapped (npy:FILE?labels=LABELS.npy); integers are 8-bit pixels"

    @dataclasses.dataclass(frozen=True)
    class Params:
        labels: str | None = param(None, "a .npy file of integer class labels, one per row")
        start: int = param(0, "first row", low=0)
        stop: int | None = param(None, "one past the last row (default: all)", low=0)

    def __init__(self, location: str, params: Any, model: Model | None = None):
        super().__init__(location, params, model)
        self.array = _open_npy(location, "npy dataset")
        if self.array.ndim not in (2, 3, 4) or self.array.dtype.kind not in "fiu":
            raise InputError(f"npy dataset: {location} holds {self.array.dtype} of shape {self.array.shape}; "
                             f"expected numbers shaped (N, H, W), (N, C, H, W) or (N, D)")
        self.label_array = None
        if params.labels is not None:
            self.label_array = _open_npy(params.labels, "npy dataset labels")
            if self.label_array.shape != self.array.shape[:1] or self.label_array.dtype.kind not in "iu":
                raise InputError(f"npy dataset: labels {params.labels} hold {self.label_array.dtype} of shape "
                                 f"{self.label_array.shape}; expected integers of shape ({self.array.shape[0]},)")
        self.total = self.array.shape[0]
        self._bounds()

    def _rows(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        rows = np.asarray(self.array[start:stop])
        x = _pixels(rows, self.model) if rows.dtype.kind in "iu" else torch.from_numpy(rows.astype(np.float32))
        x = x[:, None] if x.dim() == 3 else x
        labels = None if self.label_array is None else torch.from_numpy(
            np.asarray(self.label_array[start:stop]).astype(np.int64))
        return x, labels


def _open_npy(path: str, what: str) -> np.ndarray:
    if not Path(path).is_file():
        raise InputError(f"{what}: {path!r} is not a file")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise InputError(f"{what}: cannot read {path} as a .npy array: {exc}") from None


@hookimpl
def salfw_register_datasets(register: Any) -> None:
    for cls in (MnistDataset, FolderDataset, NpyDataset):
        register(cls)
