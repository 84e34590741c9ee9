"""The base classes a plugin subclasses: methods, metrics, perturbations,
model loaders, model explainers, and the relevance-propagation rules and
composites. Each declares its parameters once as a
``Params`` dataclass (see :mod:`salfw.core.params`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, ClassVar, overload

import torch

from .context import Context
from .errors import ModelRequirementError
from .models import Model, WhiteBox
from .params import NoParams, describe_params

NAME_PATTERN = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


class DeclaredParams:
    """``Cls.params``: the declared parameters by name (type, default, help, constraints);
    ``instance.params``: the validated values the instance was made with (set in ``__init__``,
    which shadows this non-data descriptor)."""

    @overload
    def __get__(self, instance: None, owner: type) -> dict[str, dict[str, Any]]: ...

    @overload
    def __get__(self, instance: object, owner: type) -> Any: ...  # the instance's own values shadow it

    def __get__(self, instance: Any, owner: Any) -> Any:
        return {row["name"]: row for row in describe_params(owner.Params)}


class Method:
    """An attribution method: explains a batch ``x`` for ``targets`` (one class per sample).

    Class attributes: ``name`` (kebab-case), ``box`` ("white" needs a
    :class:`WhiteBox`; "black" runs on any model), ``kind`` ("additive",
    "comparative" or "mask"), ``summary`` (one line with the paper), ``scope``
    ("local", "weak global" or "strong global", in the LIME/GeoSal sense),
    ``requires`` (what the network must have, in words), ``input_kinds``
    ("image" and/or "vector"), ``random`` (whether ``seed`` matters),
    ``test_params`` (small settings the conformance suite uses for speed),
    ``test_model`` (optional: a function of the input kind returning the model
    the conformance suite should use, for methods that need a special network) and
    ``per_feature_ranges`` (whether the method honours an ``input_range`` given per
    feature, a :class:`~salfw.core.ranges.FeatureRange`: every use of the range goes
    through the perturbations' fills or :func:`~salfw.core.ranges.range_ends`;
    ``salfw.explain`` refuses such a model for the other methods).
    """

    name: ClassVar[str]
    box: ClassVar[str] = "white"
    kind: ClassVar[str] = "additive"
    summary: ClassVar[str] = ""
    scope: ClassVar[str] = "local"
    requires: ClassVar[tuple[str, ...]] = ()
    input_kinds: ClassVar[tuple[str, ...]] = ("image", "vector")
    random: ClassVar[bool] = False
    test_params: ClassVar[dict[str, Any]] = {}
    test_model: ClassVar[Callable[[str], Model] | None] = None
    per_feature_ranges: ClassVar[bool] = False
    Params: ClassVar[type] = NoParams
    params = DeclaredParams()

    def __init__(self, params: Any):
        self.params = params

    def check_model(self, model: Model) -> None:
        """Raise :class:`ModelRequirementError` when the model cannot be explained by this method."""
        if self.box == "white" and not isinstance(model, WhiteBox):
            raise ModelRequirementError(
                f"'{self.name}' is a white-box method and needs a salfw.WhiteBox (a torch.nn.Module); "
                f"got a {type(model).__name__}. Black-box methods run on any model.")

    def attribute(self, model: Model, x: torch.Tensor, targets: torch.Tensor, ctx: Context
                  ) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        """Return attributions shaped like ``x`` (or (N, 1, H, W)), optionally with extra ``meta``.

        ``ctx`` (:class:`~salfw.core.context.Context`) carries the seed and its CPU
        generator, the batch iterator, the progress reporter and the pass counters.
        Keep no state on ``self`` between :meth:`check_model` and here: one instance
        may explain in two threads at once."""
        raise NotImplementedError


class Metric:
    """A measure of an explanation's quality, scored per sample.

    ``higher_is_better`` gives the score direction (None where neither is
    better); ``needs`` lists what the metric requires ("white-box" for
    re-explaining a changed network, "mask" for a ground-truth region);
    ``per_feature_ranges`` as for :class:`Method`.
    """

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    higher_is_better: ClassVar[bool | None] = True
    needs: ClassVar[tuple[str, ...]] = ()
    per_feature_ranges: ClassVar[bool] = False
    Params: ClassVar[type] = NoParams
    params = DeclaredParams()

    def __init__(self, params: Any):
        self.params = params

    def score(self, model: Model, x: torch.Tensor, attributions: torch.Tensor, targets: torch.Tensor,
              ctx: Context, **context: Any) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        """Return one score per sample (N,), optionally with extras such as curves; ``ctx`` as for
        :meth:`Method.attribute`, ``context`` the explanation and the ground-truth mask when given."""
        raise NotImplementedError


class Perturbation:
    """How information is deleted: where ``keep`` is 0 the input takes :meth:`fill`'s values.

    Fills live in the input's own domain (``input_range``) and random fills are
    drawn per sample shape from ``generator``, so a batch and its samples one
    by one are perturbed alike. For vectors ``input_range`` may be given per
    feature (a :class:`~salfw.core.ranges.FeatureRange`): read its ends with
    :func:`~salfw.core.ranges.range_ends`, which broadcast against ``x``.
    """

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    random: ClassVar[bool] = False
    Params: ClassVar[type] = NoParams
    params = DeclaredParams()

    def __init__(self, params: Any):
        self.params = params

    def fill(self, x: torch.Tensor, input_range: tuple[float, float],
             generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError

    def apply(self, x: torch.Tensor, keep: torch.Tensor, input_range: tuple[float, float],
              generator: torch.Generator | None = None) -> torch.Tensor:
        """``x * keep + fill * (1 - keep)``; ``keep`` broadcasts against ``x``."""
        keep = keep.to(dtype=x.dtype)
        return x * keep + self.fill(x, input_range, generator) * (1 - keep)


class ModelLoader:
    """Turns a model spec ``<scheme>:<rest>`` into a :class:`Model`.

    ``Params`` declares the spec's options, given after ``?`` as ``key=value`` pairs joined by
    ``&`` (``onnx:net.onnx?input_shape=3,224,224&select=logits``); ``salfw info <scheme>`` lists
    them."""

    scheme: ClassVar[str]
    summary: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams

    def load(self, rest: str) -> Model:
        raise NotImplementedError

    def available(self) -> list[dict[str, Any]]:
        """Models this loader can name without a path (for ``salfw list models``)."""
        return []


class ModelExplainer:
    """Explains a network as a whole rather than one input (activation
    maximisation, TCAV, rule extraction). ``run`` returns a dict of results."""

    name: ClassVar[str]
    box: ClassVar[str] = "white"
    summary: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    params = DeclaredParams()

    def __init__(self, params: Any):
        self.params = params

    def run(self, model: Model, data: Any = None, seed: int = 0) -> dict[str, Any]:
        raise NotImplementedError


class PropagationRule:
    """A relevance-propagation rule (LRP and its relatives), registered by name.

    The engine's side (how relevance moves through a layer) is
    :class:`salfw.sdk.propagation.Rule`, which subclasses this; ``from_settings``
    builds an instance from the method's numbers (epsilon, gamma, ...).
    """

    name: ClassVar[str]
    summary: ClassVar[str] = ""

    @classmethod
    def from_settings(cls, settings: Any) -> PropagationRule:
        raise NotImplementedError


class Composite:
    """Assigns a propagation rule to each layer of a network, registered by name.

    ``rules(layers)`` returns ``{layer path: rule name or rule}`` for the layers
    the engine lists (:class:`salfw.sdk.propagation.LayerInfo`).
    """

    name: ClassVar[str]
    summary: ClassVar[str] = ""

    def rules(self, layers: list[Any]) -> dict[str, Any]:
        raise NotImplementedError


class Dataset:
    """A dataset named by a spec ``<name>:<location>?key=value&...`` (``mnist:DIR?stop=1000``),
    read in batches so that it never has to fit in memory.

    ``__init__`` receives the location, the validated ``Params`` (the query's keys) and the
    model the inputs are for (its ``input_shape`` and ``input_range``; None where the dataset
    needs neither). ``len(dataset)`` is the number of samples; ``read(start, stop)`` returns
    samples ``start..stop-1`` as ``(x, labels)``: ``x`` a float tensor batch in the model's
    input range, ``labels`` an int64 tensor of class indices or None when the data has none.
    ``names()`` gives per-sample names (file paths) where the samples have them.
    """

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    params = DeclaredParams()

    def __init__(self, location: str, params: Any, model: Model | None = None):
        self.location = location
        self.params = params
        self.model = model

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def names(self) -> list[str] | None:
        return None

    def close(self) -> None:
        """Release open files (called when a run is over)."""
