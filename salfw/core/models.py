"""Model adapters: the two kinds of model every method talks to.

* :class:`BlackBox` wraps any callable from a batch to class scores (torch or
  NumPy, NCHW or NHWC, logits or probabilities). Black-box methods only call
  :meth:`Model.scores`.
* :class:`WhiteBox` wraps a ``torch.nn.Module`` with its :class:`Preprocessing`
  stage, and is also a black box. White-box methods use :meth:`WhiteBox.forward`
  (differentiable, pixel space in, logits out) and :attr:`WhiteBox.module`.

Both carry ``input_range``: the domain of the raw input the user sees, which
perturbations ("black" is ``lo``) and range checks use; its ends must be finite. For
vectors (tables) it may give each feature its own range, ``input_range=(lows, highs)``
(a :class:`~salfw.core.ranges.FeatureRange`), and ``feature_names`` names the features
(shown by ``Explanation.as_list()`` and its bar chart); their counts must agree with each
other and with ``input_shape``. Both count
the samples they evaluate, and :meth:`WhiteBox.forward` every backward pass through its
logits, into the active :class:`~salfw.core.context.Context`, so every
explanation can say what it cost.

Class scores are checked wherever they come back to a method (:meth:`Model.scores`,
:meth:`WhiteBox.forward`): they must be (N, K) (a 1-D (N,) output is one class), and
NaN or infinite scores are a :class:`ModelError` naming the rows of the batch. A model
returning several outputs (a tuple, a dict, an object with ``.logits`` such as a Hugging
Face ``ModelOutput``) is used through the adapters' ``select=`` (an index into a tuple or
list, or a dict key / attribute name such as ``"logits"``), and refused, saying so, without
it; salfw never guesses which output holds the class scores. (``BlackBox``'s ``output``
argument is something else: whether the scores are logits or probabilities.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .context import count, count_backward_through
from .errors import ModelError, ParameterError
from .preprocessing import Preprocessing
from .ranges import FeatureRange

#: ``select=``: which of a model's several outputs holds the class scores (None: the model
#: returns one tensor).
Selector = int | str | None


def _check_range(input_range) -> tuple[float, float]:
    """Two finite numbers ``low < high``, or for vectors a pair of equally long sequences (one low and
    one high per feature, each low below its high), returned as a :class:`FeatureRange`."""
    try:
        lo_given, hi_given = input_range
    except (TypeError, ValueError):
        raise ParameterError(f"input_range must be a pair (low, high), got {input_range!r}") from None
    if isinstance(input_range, FeatureRange):
        return input_range
    if np.ndim(lo_given) == 0 and np.ndim(hi_given) == 0:
        try:
            lo, hi = float(lo_given), float(hi_given)
        except (TypeError, ValueError):
            raise ParameterError(f"input_range must be a pair (low, high) of numbers, got {input_range!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ParameterError(f"input_range must be two finite numbers (low, high), got {input_range!r}: "
                                 f"perturbations fill with its ends and inputs are checked against it")
        if not lo < hi:
            raise ParameterError(f"input_range must have low < high, got {input_range!r}")
        return lo, hi
    return _feature_range(lo_given, hi_given)


def _feature_range(lows: Any, highs: Any) -> FeatureRange:
    """Per-feature ends from two sequences of D numbers (lists, arrays or tensors)."""
    accepted = ("input_range per feature must be two sequences of D numbers each, (lows, highs), "
                "e.g. input_range=(data.min(0), data.max(0))")
    try:
        ends = [torch.as_tensor(np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v,
                                           dtype=np.float64)) for v in (lows, highs)]
    except (TypeError, ValueError):
        raise ParameterError(f"{accepted}; got {lows!r} and {highs!r}") from None
    lo, hi = ends
    if lo.dim() != 1 or hi.shape != lo.shape or lo.numel() == 0:
        raise ParameterError(f"{accepted}; got shapes {tuple(lo.shape)} and {tuple(hi.shape)}")
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise ParameterError("input_range per feature must be finite numbers: perturbations fill with its "
                             "ends and inputs are checked against it")
    bad = (lo >= hi).nonzero()[:, 0].tolist()
    if bad:
        raise ParameterError(f"input_range per feature must have low < high for every feature; not so for "
                             f"feature(s) {', '.join(map(str, bad[:10]))}" + (", ..." if len(bad) > 10 else ""))
    return FeatureRange(lo, hi)


def _check_feature_names(names: Any) -> tuple[str, ...] | None:
    if names is None:
        return None
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise ParameterError(f"feature_names must be a sequence of strings, one per feature; got {names!r}")
    names = tuple(names)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if not names or repeated:
        raise ParameterError("feature_names must name each feature once" +
                             (f"; repeated: {', '.join(repeated)}" if repeated else "; got none"))
    return names


def _check_select(select: Any) -> Selector:
    if select is None or (isinstance(select, (int, str)) and not isinstance(select, bool)):
        return select
    raise ParameterError(f"select must be an int (an index into a tuple output) or a str (a dict key or an "
                         f"attribute such as 'logits'), got {select!r}")


def _several(out: Any) -> bool:
    """Whether a model's output is several outputs (a tuple, a dict, an object with ``.logits``,
    a list of batched arrays) rather than one array of class scores."""
    if isinstance(out, (torch.Tensor, np.ndarray)):
        return False
    if isinstance(out, (tuple, Mapping)):
        return True
    if isinstance(out, list):
        return any(isinstance(o, (torch.Tensor, np.ndarray)) and o.ndim >= 2 for o in out)
    return hasattr(out, "logits")


def _described(out: Any) -> str:
    if isinstance(out, Mapping):
        return f"a {type(out).__name__} with keys {', '.join(repr(k) for k in list(out)[:8])}"
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)}"
    if isinstance(out, (torch.Tensor, np.ndarray)):
        return f"a single {type(out).__name__} of shape {tuple(out.shape)}"
    return f"a {type(out).__name__}" + (" with .logits" if hasattr(out, "logits") else "")


def select_output(out: Any, select: Selector, adapter: str) -> Any:
    """The class scores among a model's outputs: ``out[select]`` for a tuple or list and an int,
    ``out[select]`` for a dict or ``getattr(out, select)`` for a str. Without ``select``, several
    outputs are a :class:`ModelError` saying how to choose (``adapter`` names the class)."""
    if select is None:
        if _several(out):
            if isinstance(out, Mapping):
                example = "'logits'" if "logits" in out else repr(next(iter(out), "KEY"))
            else:
                example = "0" if isinstance(out, (tuple, list)) else "'logits'"
            raise ModelError(f"the model returned {_described(out)}, not a tensor of class scores; choose "
                             f"them with select=, e.g. salfw.{adapter}(model, ..., select={example})")
        return out
    if isinstance(out, (torch.Tensor, np.ndarray)):
        raise ModelError(f"select={select!r} picks one of several outputs, but the model returned "
                         f"{_described(out)}; leave select out")
    if isinstance(select, int):
        if not isinstance(out, (tuple, list)):
            raise ModelError(f"select={select} indexes a tuple, but the model returned {_described(out)}; "
                             f"select a key or attribute by name")
        if not -len(out) <= select < len(out):
            raise ModelError(f"select={select} is out of range: the model returned {_described(out)}")
        return out[select]
    if isinstance(out, Mapping):
        if select not in out:
            raise ModelError(f"select={select!r} is not among the model's outputs: it returned {_described(out)}")
        return out[select]
    if isinstance(out, (tuple, list)) or not hasattr(out, select):
        raise ModelError(f"select={select!r}: the model returned {_described(out)}, which has no '{select}'")
    return getattr(out, select)


def check_shape(out: torch.Tensor, n: int) -> torch.Tensor:
    """Class scores (N, K) from a model's output for ``n`` inputs: (N,) becomes (N, 1); any other
    shape is a :class:`ModelError` (salfw does not guess which dimensions to drop)."""
    if out.dim() == 1:
        out = out[:, None]
    if out.dim() != 2 or out.shape[0] != n:
        hint = ""
        if out.dim() > 2 and out.shape[0] == n:
            hint = ("; squeeze the extra dimensions in the model (e.g. end it with nn.Flatten()), or choose "
                    "one of several outputs with select=")
        raise ModelError(f"the model must return class scores of shape (N, classes) = ({n}, K); "
                         f"got {tuple(out.shape)}{hint}")
    return out


def check_finite(scores: torch.Tensor) -> None:
    """NaN or infinite class scores are a :class:`ModelError` naming the rows (the samples of the
    batch the model was given); one reduction and one synchronisation per call."""
    if not scores.is_floating_point() or bool(torch.isfinite(scores).all()):
        return
    rows = (~torch.isfinite(scores).all(dim=1)).nonzero()[:, 0].tolist()
    listed = ", ".join(str(r) for r in rows[:10]) + (", ..." if len(rows) > 10 else "")
    raise ModelError(f"the model returned NaN or infinite class scores for sample(s) {listed} "
                     f"({len(rows)} of {scores.shape[0]}) of the batch it was given; salfw needs finite "
                     f"scores for every input in the input range")


class Select(nn.Module):
    """The ``select=`` step as a module: ``WhiteBox.network()`` ends with it."""

    def __init__(self, select: Selector):
        super().__init__()
        self.select = select

    def forward(self, out: Any) -> Any:
        return select_output(out, self.select, "WhiteBox")


class Model:
    """What every adapter shares: the input domain and chunked scoring."""

    box = "black"

    def __init__(self, input_range: Sequence[Any] = (0.0, 1.0), *, input_shape: Sequence[int] | None = None,
                 batch_size: int = 256, select: Selector = None, feature_names: Sequence[str] | None = None):
        self.input_range = _check_range(input_range)
        self.select = _check_select(select)
        self.input_shape = tuple(int(s) for s in input_shape) if input_shape is not None else None
        if int(batch_size) < 1:
            raise ParameterError(f"batch_size must be a positive int, got {batch_size!r}")
        self.batch_size = int(batch_size)
        self.num_classes: int | None = None
        self.feature_names = _check_feature_names(feature_names)
        self._check_features()

    def _check_features(self) -> None:
        """Per-feature ranges and feature names are for vectors: their counts must agree with each
        other and with a declared ``input_shape`` (the inputs are checked by ``salfw.explain``)."""
        counts = {}
        if self.features_in_range is not None:
            counts["input_range"] = self.features_in_range
        if self.feature_names is not None:
            counts["feature_names"] = len(self.feature_names)
        if not counts:
            return
        if self.input_shape is not None:
            if len(self.input_shape) != 1:
                raise ParameterError(f"{' and '.join(counts)} per feature are for vector inputs (N, D); "
                                     f"input_shape {self.input_shape} is not a vector's")
            counts["input_shape"] = self.input_shape[0]
        if len(set(counts.values())) > 1:
            raise ParameterError("the feature counts disagree: " + ", ".join(f"{k} has {v}" for k, v in counts.items()))

    @property
    def features_in_range(self) -> int | None:
        """The feature count of a per-feature ``input_range`` (None: two numbers for every element)."""
        r = self.input_range
        return int(r.lows.numel()) if isinstance(r, FeatureRange) else None

    @property
    def features(self) -> int | None:
        """The feature count that per-feature ranges or feature names give (None: neither is given)."""
        if self.features_in_range is not None:
            return self.features_in_range
        return len(self.feature_names) if self.feature_names is not None else None

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
        check_finite(out)
        return out

    def probabilities(self, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Class probabilities (N, K): softmax of logits, or the probabilities a black box returns."""
        return self.to_probabilities(self.scores(x, batch_size))

    def to_probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        """Probabilities from this model's raw scores (softmax of logits)."""
        return torch.softmax(scores, dim=1)

    def describe(self) -> dict:
        r = self.input_range
        ends = [r.lows.tolist(), r.highs.tolist()] if isinstance(r, FeatureRange) else list(r)
        info: dict[str, Any] = {"box": self.box, "input_range": ends,
                                "input_shape": list(self.input_shape) if self.input_shape else None,
                                "num_classes": self.num_classes}
        if self.feature_names is not None:
            info["feature_names"] = list(self.feature_names)
        return info if self.select is None else {**info, "select": self.select}


class BlackBox(Model):
    """Any callable from a batch of inputs to class scores.

    ``backend``: "torch" passes a tensor, "numpy" a float32 array; "auto" passes
    a tensor on the first call and, if the callable raises, a NumPy array
    (scikit-learn's ``predict_proba``, an ONNX session's wrapper), then keeps
    whichever worked (if both raise, the error gives both reasons). ``layout`` "NHWC" transposes
    image batches before the call. ``output`` "logits" or "probabilities"; with
    "auto" the first call decides (non-negative rows summing to 1 are
    probabilities). ``select`` picks the class scores from a callable returning several
    outputs (an index or a key / attribute name, as for :class:`WhiteBox`). Scores always
    come back as a float tensor (N, K).
    """

    def __init__(self, fn: Callable[[Any], Any], input_range: Sequence[Any] = (0.0, 1.0), *,
                 input_shape: Sequence[int] | None = None, layout: str = "NCHW", backend: str = "auto",
                 output: str = "auto", batch_size: int = 256, device: str | torch.device | None = None,
                 select: Selector = None, feature_names: Sequence[str] | None = None):
        super().__init__(input_range, input_shape=input_shape, batch_size=batch_size, select=select,
                         feature_names=feature_names)
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
            out, self.backend = self._call_auto(batch)
        else:
            out = self._call(batch, self.backend)
        out = select_output(out, self.select, "BlackBox")
        try:
            out = torch.as_tensor(np.asarray(out.detach().cpu() if isinstance(out, torch.Tensor) else out))
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ModelError(f"the black-box callable returned {_described(out)}, not an array of class "
                             f"scores ({type(exc).__name__}: {exc})") from exc
        out = check_shape(out, x.shape[0])
        out = out.to(device=x.device, dtype=x.dtype if x.is_floating_point() else torch.float32)
        if self.output == "auto" and bool(torch.isfinite(out).all()):  # NaN decides nothing (scores() refuses it)
            sums = out.sum(dim=1)
            is_prob = bool((out >= 0).all() and torch.allclose(sums, torch.ones_like(sums), atol=1e-4))
            self.output = "probabilities" if is_prob else "logits"
        self.num_classes = out.shape[1]
        return out

    def _call_auto(self, batch: torch.Tensor) -> tuple[Any, str]:
        """Call with a tensor, and if that raises, with a NumPy array: (output, the backend that worked)."""
        try:
            return self.fn(batch), "torch"
        except Exception as as_tensor:  # not a torch callable: NumPy is the other accepted input
            try:
                return self.fn(batch.detach().cpu().numpy().astype(np.float32)), "numpy"
            except Exception as as_array:
                raise ModelError(f"the black-box callable failed on a batch of shape {tuple(batch.shape)} both "
                                 f"as a torch tensor ({_reason(as_tensor)}) and as a NumPy array "
                                 f"({_reason(as_array)}); pass backend='torch' or backend='numpy' to try "
                                 f"one") from as_array

    def _call(self, batch: torch.Tensor, backend: str):
        arg = batch.detach().cpu().numpy().astype(np.float32) if backend == "numpy" else batch
        try:
            return self.fn(arg)
        except Exception as exc:  # the user's callable failed: say where
            raise ModelError(f"the black-box callable failed on a batch of shape {tuple(batch.shape)}: "
                             f"{_reason(exc)}") from exc

    def to_probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        return scores if self.output == "probabilities" else torch.softmax(scores, dim=1)


class WhiteBox(Model):
    """A ``torch.nn.Module`` returning logits, with its preprocessing stage in front.

    ``mean``/``std`` (normalisation) and ``offset``/``scale``/``invert`` (the GeoSal
    thesis's front layer) form :attr:`preprocessing`; the user's module sees
    ``preprocessing(x)`` while methods work on the pixel-space ``x``. Each takes one
    value for every channel or one per channel (per feature for vectors); the count is
    checked against ``input_shape`` here, or against the inputs at the first call.
    ``select`` picks the logits from a module returning several outputs: ``select=0``
    for a tuple, ``select="logits"`` for a dict or an object with ``.logits``.
    """

    box = "white"

    def __init__(self, module: nn.Module, input_range: Sequence[Any] = (0.0, 1.0), *,
                 mean: float | Sequence[float] | None = None, std: float | Sequence[float] | None = None,
                 offset: float | Sequence[float] | None = None, scale: float | Sequence[float] | None = None,
                 invert: bool = False, input_shape: Sequence[int] | None = None, batch_size: int = 256,
                 device: str | torch.device | None = None, select: Selector = None,
                 feature_names: Sequence[str] | None = None):
        super().__init__(input_range, input_shape=input_shape, batch_size=batch_size, select=select,
                         feature_names=feature_names)
        if not isinstance(module, nn.Module):
            raise ModelError(f"WhiteBox needs a torch.nn.Module, got {type(module).__name__}; "
                             f"wrap plain callables in salfw.BlackBox")
        self.module = module
        self.preprocessing = Preprocessing(self.input_range, invert=invert, offset=offset, scale=scale,
                                           mean=mean, std=std)
        if self.input_shape is not None:
            self.preprocessing.check_channels(self.input_shape)
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
        out = self._logits(x)
        check_finite(out.detach())
        count_backward_through(out)
        return out

    def network(self) -> nn.Module:
        """The preprocessing and the module (and the ``select`` step) as one ``nn.Sequential``
        (for methods that walk layers)."""
        steps = [self.preprocessing, self.module] + ([Select(self.select)] if self.select is not None else [])
        return nn.Sequential(*steps)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        out = select_output(self.module(self.preprocessing(x)), self.select, "WhiteBox")
        if not isinstance(out, torch.Tensor):
            raise ModelError(f"the module returned {_described(out)}, not a tensor of class scores"
                             + (f" (after select={self.select!r})" if self.select is not None else ""))
        out = check_shape(out, x.shape[0])
        self.num_classes = out.shape[1]
        return out

    def _scores_chunk(self, x: torch.Tensor) -> torch.Tensor:
        return self._logits(x)

    def describe(self) -> dict:
        info = super().describe()
        info["module"] = type(self.module).__name__
        info["preprocessing"] = self.preprocessing.settings
        return info


def _reason(exc: BaseException) -> str:
    """An exception as one line: ``Type: message``."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())
