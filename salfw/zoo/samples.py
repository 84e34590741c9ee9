"""Sample MNIST digits shipped with salfw, for defaults, examples and tests.

``weights/samples.npz`` holds 20 digits from the held-out images 8000-9999 of
the MNIST test split (never seen in training by the built-in models): the
first two of each class in index order, arranged so that samples 0-9 are the
first 0, 1, ..., 9 and samples 10-19 the second. It stores the pixels as
uint8 (``images``, (20, 28, 28)), the ``labels`` and the MNIST ``indices``, and
is written by ``scripts/train_zoo.py`` (:func:`pick_samples`). It is read with
``allow_pickle=False``, so it can only hold arrays.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from salfw.zoo.mnist import HELDOUT_SLICE, NUM_CLASSES

SAMPLES_PATH = Path(__file__).resolve().parent / "weights" / "samples.npz"
PER_CLASS = 2


def pick_samples(labels: torch.Tensor, per_class: int = PER_CLASS) -> torch.Tensor:
    """MNIST indices of the shipped samples: the first ``per_class`` held-out digits of each class.

    Ordered round by round (first of each class 0-9, then the second, ...), so
    that sample ``k`` for ``k < 10`` is a digit ``k``.
    """
    start = HELDOUT_SLICE.start
    held = labels[HELDOUT_SLICE]
    per = [torch.nonzero(held == c).flatten()[:per_class] + start for c in range(NUM_CLASSES)]
    return torch.stack(per, dim=1).flatten()


@lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.load(SAMPLES_PATH, allow_pickle=False) as f:
        return f["images"], f["labels"], f["indices"]


def load_samples() -> tuple[torch.Tensor, torch.Tensor]:
    """All shipped samples: images float32 ``(K, 1, 28, 28)`` in [0, 1] and labels int64 ``(K,)``."""
    images, labels, _ = _load()
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


def sample_indices() -> torch.Tensor:
    """The MNIST ``t10k`` index of each shipped sample, int64 ``(K,)``."""
    return torch.from_numpy(_load()[2].astype(np.int64))


def sample(k: int) -> torch.Tensor:
    """Shipped sample ``k`` as a batch of one, float32 ``(1, 1, 28, 28)`` in [0, 1].

    Samples 0-9 are a digit 0, 1, ..., 9; 10-19 a second digit of each class.
    """
    images, _ = load_samples()
    if not 0 <= k < len(images):
        raise IndexError(f"sample {k} does not exist; the shipped samples are 0-{len(images) - 1}")
    return images[k : k + 1]
