"""Reader for the MNIST database in its standard IDX format.

MNIST (LeCun, Cortes and Burges) is distributed as four IDX files. An IDX file
is a big-endian header followed by raw data:

* bytes 0-1: zero; byte 2: element type (0x08 = unsigned byte);
  byte 3: number of dimensions;
* one big-endian uint32 per dimension;
* the elements, row-major.

So the image files start with the magic number 0x00000803 (2051: uint8, three
dimensions N x 28 x 28) and the label files with 0x00000801 (2049: uint8, one
dimension N). Copies are found both gzip-compressed (``*.gz``, the original
download) and decompressed; the reader tells them apart by the gzip header
(bytes 0x1f 0x8b), not by the file name, so any standard copy can be used.

The project trains its built-in models on the first 8,000 images of the
10,000-image test split (``t10k``) and measures them on the last 2,000
(:data:`TRAIN_SLICE`, :data:`HELDOUT_SLICE`), so that every accuracy the
project reports names the same held-out set (see the README's model list and docs/architecture.md).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

#: Indices of the ``t10k`` split the built-in models are trained on.
TRAIN_SLICE = slice(0, 8000)
#: Indices of the ``t10k`` split every reported accuracy is measured on.
HELDOUT_SLICE = slice(8000, 10000)

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
IMAGE_SIZE = 28
NUM_CLASSES = 10

_GZIP_HEADER = b"\x1f\x8b"
_SPLITS = ("t10k", "train")


def default_mnist_dir() -> Path:
    """Where MNIST is looked for when no directory is given.

    The environment variable ``SALFW_MNIST_DIR`` wins; otherwise the shared
    project copy at ``../shared/data/mnist`` relative to the repository root
    (the directory that contains the ``salfw`` package).
    """
    env = os.environ.get("SALFW_MNIST_DIR")
    if env:
        return Path(env)
    repo_root = Path(__file__).resolve().parents[2]
    return repo_root.parent / "shared" / "data" / "mnist"


def _read_bytes(path: Path) -> bytes:
    """Return the file's content, decompressed if it starts with a gzip header."""
    raw = path.read_bytes()
    if raw[:2] == _GZIP_HEADER:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ValueError(f"{path}: corrupt gzip data ({exc})") from exc
    return raw


def read_idx(path: str | os.PathLike, magic: int, shape_tail: tuple[int, ...] = ()) -> np.ndarray:
    """Read one uint8 IDX file, checking its magic number and dimensions.

    ``magic`` is the expected 4-byte header (:data:`IMAGES_MAGIC` or
    :data:`LABELS_MAGIC`); ``shape_tail`` the expected sizes of every dimension
    after the first (``(28, 28)`` for images). Raises ``ValueError`` naming the
    file and what was expected when the header or the length is wrong.
    """
    path = Path(path)
    data = _read_bytes(path)
    ndim = magic & 0xFF
    found = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if found is not None and found != magic:
        raise ValueError(
            f"{path}: bad IDX magic number 0x{found:08x}, expected 0x{magic:08x} "
            f"(uint8 data with {ndim} dimension{'s' if ndim != 1 else ''})"
        )
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ValueError(
            f"{path}: too short for an IDX header ({len(data)} bytes, expected at least {header_len})"
        )
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if shape_tail and dims[1:] != shape_tail:
        raise ValueError(f"{path}: IDX dimensions {dims}, expected (N, {', '.join(map(str, shape_tail))})")
    expected = header_len + int(np.prod(dims))
    if len(data) != expected:
        raise ValueError(
            f"{path}: {len(data)} bytes, expected {expected} for an IDX header with dimensions {dims}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)


def _find(directory: Path, stem: str) -> Path:
    """The gzip or plain copy of ``stem`` in ``directory`` (gzip preferred)."""
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"{directory}: neither {stem}.gz nor {stem} found")


def load_mnist(
    directory: str | os.PathLike | None = None, split: str = "t10k"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one MNIST split as tensors.

    Returns ``(images, labels)``: images float32 of shape ``(N, 1, 28, 28)``
    scaled to [0, 1] (pixel / 255), labels int64 of shape ``(N,)``.
    ``directory`` defaults to :func:`default_mnist_dir`; ``split`` is
    ``"t10k"`` (test, 10,000 images) or ``"train"`` (60,000 images).
    """
    if split not in _SPLITS:
        raise ValueError(f"unknown MNIST split {split!r}, expected one of {_SPLITS}")
    directory = Path(directory) if directory is not None else default_mnist_dir()
    images_path = _find(directory, f"{split}-images-idx3-ubyte")
    labels_path = _find(directory, f"{split}-labels-idx1-ubyte")
    images = read_idx(images_path, IMAGES_MAGIC, (IMAGE_SIZE, IMAGE_SIZE))
    labels = read_idx(labels_path, LABELS_MAGIC)
    if len(images) != len(labels):
        raise ValueError(
            f"{images_path} holds {len(images)} images but {labels_path} holds "
            f"{len(labels)} labels; expected the same number"
        )
    if labels.size and labels.max() >= NUM_CLASSES:
        raise ValueError(f"{labels_path}: label {int(labels.max())} found, expected 0-9")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y
