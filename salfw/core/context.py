"""The method context: what :func:`salfw.explain` hands every method and metric.

One :class:`Context` per call carries the cross-cutting concerns so that no
method writes them again:

* ``ctx.seed`` and :attr:`Context.generator`, one CPU ``torch.Generator``
  seeded with it (CPU draws are the same on every device, so the same seed
  gives the same result on CPU and CUDA); :meth:`Context.fresh_generator` for a
  method that replays one stream per sample, :meth:`Context.numpy_rng` for
  NumPy/scikit-learn code;
* :meth:`Context.batches`, the chunking loop, respecting the method's
  ``batch_size`` and advancing the progress bar;
* :meth:`Context.progress`, a progress reporter (a tqdm bar on stderr when
  enabled, nothing at all otherwise);
* forward and backward pass counts: :class:`~salfw.core.models.Model` counts
  every sample it evaluates, and a hook on the logits counts every backward
  pass through them, into the context active in the current thread
  (:func:`active`). Engines that run the network themselves call
  :meth:`Context.count`.

The active context is a :mod:`contextvars` variable, so two threads explaining
at once count into their own contexts.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from .errors import DegenerateWarning


class _Silent:
    """A progress reporter that reports nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class Context:
    """Per-call services for a method or metric: seed, generators, batching, progress, counters."""

    def __init__(self, seed: int = 0, batch_size: int | None = None, progress: bool = False,
                 description: str = ""):
        self.seed = int(seed)
        self.batch_size = batch_size
        self.show_progress = bool(progress)
        self.description = description
        self.forward_passes = 0
        self.backward_passes = 0
        self.degenerate = False  # set by warn_degenerate: the result was already called degenerate
        self._generator: torch.Generator | None = None

    # -- randomness -------------------------------------------------------------
    @property
    def generator(self) -> torch.Generator:
        """The call's CPU generator, seeded with ``seed`` on first use (one stream per call)."""
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.seed)
        return self._generator

    def fresh_generator(self, offset: int = 0) -> torch.Generator:
        """A new CPU generator seeded with ``seed + offset`` (to replay a stream, e.g. per sample)."""
        return torch.Generator().manual_seed(self.seed + int(offset))

    def numpy_rng(self, offset: int = 0) -> np.random.Generator:
        """A NumPy generator seeded with ``seed + offset``."""
        return np.random.default_rng(self.seed + int(offset))

    # -- batching and progress ----------------------------------------------------
    def progress(self, total: int, description: str | None = None, unit: str = "it") -> Any:
        """A reporter with ``update(n)`` and ``close()``: a tqdm bar on stderr when progress is on."""
        if not self.show_progress or total <= 0:
            return _Silent()
        from tqdm.auto import tqdm  # imported on use: a progress bar is the only reason to load it

        return tqdm(total=total, desc=description or self.description, unit=unit, file=sys.stderr,
                    leave=False, dynamic_ncols=True)

    def batches(self, total: int, size: int | None = None, description: str | None = None,
                unit: str = "it") -> Iterator[slice]:
        """Slices ``[start:stop]`` covering ``range(total)`` in chunks of ``size`` (default: the
        method's ``batch_size``; all at once when it has none), advancing the progress bar."""
        size = int(size or self.batch_size or total or 1)
        bar = self.progress(total, description, unit)
        try:
            for start in range(0, total, size):
                stop = min(start + size, total)
                yield slice(start, stop)
                bar.update(stop - start)
        finally:
            bar.close()

    # -- pass counting ------------------------------------------------------------
    def count(self, forward: int = 0, backward: int = 0) -> None:
        """Add samples evaluated forward and backward (engines that run the network themselves)."""
        self.forward_passes += int(forward)
        self.backward_passes += int(backward)

    @contextlib.contextmanager
    def activated(self) -> Iterator[Context]:
        """Make this the context that models in this thread count into."""
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)


_ACTIVE: contextvars.ContextVar[Context | None] = contextvars.ContextVar("salfw_context", default=None)


def active() -> Context | None:
    """The context of the explanation or evaluation running in this thread, if any."""
    return _ACTIVE.get()


def count(forward: int = 0, backward: int = 0) -> None:
    """Count samples evaluated forward and backward into the active context (no-op outside one);
    for toolkit engines that run the network themselves rather than through the model adapter."""
    ctx = _ACTIVE.get()
    if ctx is not None:
        ctx.count(forward, backward)


def warn_degenerate(message: str, stacklevel: int = 3) -> None:
    """A :class:`~salfw.core.errors.DegenerateWarning` (a result that carries almost no information;
    the message names the setting that fixes it), noted on the active context so that
    :func:`salfw.explain` does not add its generic one about a constant map."""
    ctx = _ACTIVE.get()
    if ctx is not None:
        ctx.degenerate = True
    warnings.warn(message, DegenerateWarning, stacklevel=stacklevel)


def count_backward_through(output: torch.Tensor) -> None:
    """Count one backward pass per sample each time a gradient flows back through ``output``."""
    ctx = _ACTIVE.get()
    if ctx is None or not output.requires_grad:
        return
    rows = output.shape[0]

    def hook(grad: torch.Tensor) -> None:
        ctx.backward_passes += rows

    output.register_hook(hook)
