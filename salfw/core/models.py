"""Model adapters: the two kinds of model every method talks to.

* :class:`BlackBox` wraps any callable from a batch to class scores (torch or
  NumPy, NCHW or NHWC, logits or probabilities). Black-box methods only call
  :meth:`Model.scores`.
* :class:`WhiteBox` wraps a ``torch.nn.Module`` with its :class:`Preprocessing`
  stage, and is also a black box. White-box methods use :meth:`WhiteBox.forward`
  (differentiable, pixel space in, logits out) and :attr:`WhiteBox.module`.

Both carry ``input_range``: the domain of the raw input the user sees, which
perturbations ("black" is ``lo``) and range checks use. Both count the samples
they evaluate, and :meth:`WhiteBox.forward` every backward pass through its
logits, into the active :class:`~salfw.core.context.Context`, so every
explanation can say what it cost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .context import count, count_backward_through
from .errors import ModelError, ParameterError
from .preprocessing import Preprocessing


def _check_range(input_range) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in input_range)
    except (TypeError, ValueError):
        raise ParameterError(f"input_range must be a pair (low, high), got {input_range!r}") from None
    if not lo < hi:
        raise ParameterError(f"input_range must have low < high, got {input_range!r}")
    return lo, hi


class Model:
    """What every adapter shares: the input domain and chunked scoring."""

    box = "black"

    def __init__(self, input_range: Sequence[float] = (0.0, 1.0), *, input_shape: Sequence[int] | None = None,
                 batch_size: int = 256):
        self.input_range = _check_range(input_range)
        self.input_shape = tuple(int(s) for s in input_shape) if input_shape is not None else None
        if int(batch_size) < 1:
            raise ParameterError(f"batch_size must be a positive int, got {batch_size!r}")
        self.batch_size = int(batch_size)
        self.num_classes: int | None = None

    # -- subclasses implement -------------------------------------------------
    def _scores_chunk(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    # -- shared ---------------------------------------------------------------
    @torch.no_grad()
    def scores(self, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Class scores (N, K) for a batch, evaluated in chunks of ``batch_size``; no gradients."""
        size = int(batch_size or self.batch_size)
        chunks = [self._scores_chunk(x[i:i + size]) for i in range(0, x.shape[0], size)]
        out = torch.cat(chunks) if chunks else torch.empty(0, self.num_classes or 0)
        count(forward=x.shape[0])
        return out

    def probabilities(self, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Class probabilities (N, K): softmax of logits, or the probabilities a black box returns."""
        return self.to_probabilities(self.scores(x, batch_size))

    def to_probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        """Probabilities from this model's raw scores (softmax of logits)."""
        return torch.softmax(scores, dim=1)

    def describe(self) -> dict:
        return {"box": self.box, "input_range": list(self.input_range),
                "input_shape": list(self.input_shape) if self.input_shape else None,
                "num_classes": self.num_classes}


class BlackBox(Model):
    """Any callable from a batch of inputs to class scores.

    ``backend``: "torch" passes a tensor, "numpy" a float32 array; "auto" passes
    a tensor on the first call and, if the callable raises, a NumPy array
    (scikit-learn's ``predict_proba``, an ONNX session's wrapper), then keeps
    whichever worked. ``layout`` "NHWC" transposes
    image batches before the call. ``output`` "logits" or "probabilities"; with
    "auto" the first call decides (non-negative rows summing to 1 are
    probabilities). Scores always come back as a float tensor (N, K).
    """

    def __init__(self, fn: Callable[[Any], Any], input_range: Sequence[float] = (0.0, 1.0), *,
                 input_shape: Sequence[int] | None = None, layout: str = "NCHW", backend: str = "auto",
                 output: str = "auto", batch_size: int = 256, device: str | torch.device | None = None):
        super().__init__(input_range, input_shape=input_shape, batch_size=batch_size)
        if not callable(fn):
            raise ParameterError(f"BlackBox needs a callable from a batch to scores, got {type(fn).__name__}")
        for name, value, accepted in (("layout", layout, ("NCHW", "NHWC")),
                                      ("backend", backend, ("auto", "torch", "numpy")),
                                      ("output", output, ("auto", "logits", "probabilities"))):
            if value not in accepted:
                raise ParameterError(f"BlackBox {name} must be one of {', '.join(accepted)}; got {value!r}")
        self.fn = fn
        self.layout = layout
        self.backend = "torch" if isinstance(fn, nn.Module) else backend
        self.output = output
        self._device = torch.device(device) if device is not None else torch.device("cpu")

    @property
    def device(self) -> torch.device:
        return self._device

    def _scores_chunk(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.permute(0, 2, 3, 1) if (self.layout == "NHWC" and x.dim() == 4) else x
        if self.backend == "auto":
            try:
                out = self.fn(batch)
                self.backend = "torch"
            except Exception:  # not a torch callable: NumPy is the other accepted input
                out = self._call(batch, "numpy")
                self.backend = "numpy"
        else:
            out = self._call(batch, self.backend)
        out = torch.as_tensor(np.asarray(out.detach().cpu() if isinstance(out, torch.Tensor) else out))
        if out.dim() == 1:
            out = out[:, None]
        if out.dim() != 2 or out.shape[0] != x.shape[0]:
            raise ModelError(f"the black-box callable must return scores of shape (N, classes) = "
                             f"({x.shape[0]}, K); got {tuple(out.shape)}")
        out = out.to(device=x.device, dtype=x.dtype if x.is_floating_point() else torch.float32)
        if self.output == "auto":
            sums = out.sum(dim=1)
            is_prob = bool((out >= 0).all() and torch.allclose(sums, torch.ones_like(sums), atol=1e-4))
            self.output = "probabilities" if is_prob else "logits"
        self.num_classes = out.shape[1]
        return out

    def _call(self, batch: torch.Tensor, backend: str):
        arg = batch.detach().cpu().numpy().astype(np.float32) if backend == "numpy" else batch
        try:
            return self.fn(arg)
        except Exception as exc:  # the user's callable failed: say where
            raise ModelError(f"the black-box callable failed on a batch of shape {tuple(batch.shape)}: "
                             f"{type(exc).__name__}: {exc}") from exc

    def to_probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        return scores if self.output == "probabilities" else torch.softmax(scores, dim=1)


class WhiteBox(Model):
    """A ``torch.nn.Module`` returning logits, with its preprocessing stage in front.

    ``mean``/``std`` (normalisation) and ``offset``/``scale``/``invert`` (the GeoSal
    thesis's front layer) form :attr:`preprocessing`; the user's module sees
    ``preprocessing(x)`` while methods work on the pixel-space ``x``.
    """

    box = "white"

    def __init__(self, module: nn.Module, input_range: Sequence[float] = (0.0, 1.0), *,
                 mean: float | Sequence[float] | None = None, std: float | Sequence[float] | None = None,
                 offset: float | Sequence[float] | None = None, scale: float | Sequence[float] | None = None,
                 invert: bool = False, input_shape: Sequence[int] | None = None, batch_size: int = 256,
                 device: str | torch.device | None = None):
        super().__init__(input_range, input_shape=input_shape, batch_size=batch_size)
        if not isinstance(module, nn.Module):
            raise ModelError(f"WhiteBox needs a torch.nn.Module, got {type(module).__name__}; "
                             f"wrap plain callables in salfw.BlackBox")
        self.module = module
        self.preprocessing = Preprocessing(self.input_range, invert=invert, offset=offset, scale=scale,
                                           mean=mean, std=std)
        first = next(module.parameters(), None)
        self._device = torch.device(device) if device is not None else (
            first.device if first is not None else torch.device("cpu"))
        self._dtype = first.dtype if first is not None else torch.float32

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable logits of the pixel-space batch ``x``; counts the samples, and each
        backward pass through the logits, into the active context."""
        count(forward=x.shape[0])
        out = self.module(self.preprocessing(x))
        if out.dim() == 1:
            out = out[:, None]
        self.num_classes = out.shape[1]
        count_backward_through(out)
        return out

    def network(self) -> nn.Module:
        """The preprocessing and the module as one ``nn.Sequential`` (for methods that walk layers)."""
        return nn.Sequential(self.preprocessing, self.module)

    def _scores_chunk(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(self.preprocessing(x))
        out = out[:, None] if out.dim() == 1 else out
        self.num_classes = out.shape[1]
        return out

    def describe(self) -> dict:
        info = super().describe()
        info["module"] = type(self.module).__name__
        info["preprocessing"] = self.preprocessing.settings
        return info
