"""The public functions behind ``salfw.explain``, ``salfw.evaluate`` and friends.

:func:`explain` is the one path every method runs through: it validates the
input, the targets and the parameters, checks the model kind, runs the method
inside :func:`~salfw.core.guard.preserved` (the user's model is left as it was,
even on error), checks the output and records time and passes in ``meta``.
"""

from __future__ import annotations

import sys
import time
import warnings
from typing import Any, TypeVar

import numpy as np
import torch

from .context import Context
from .contracts import Composite, Dataset, Method, Metric, ModelExplainer, Perturbation, PropagationRule
from .errors import (
    DegenerateWarning,
    InputError,
    ModelError,
    ModelRequirementError,
    ParameterError,
    TargetError,
    UnknownNameError,
)
from .explanation import Explanation
from .guard import preserved
from .models import Model, WhiteBox
from .params import Component, params_to_json, parse_params
from .ranges import FeatureRange, range_ends
from .registry import get_registry, reset_registry

_Class = TypeVar("_Class", bound=type)


# -- registry views --------------------------------------------------------------
def methods() -> dict[str, type[Method]]:
    """Registered attribution methods: name -> class (with ``box``, ``kind``, ``summary``, ``Params``)."""
    return {k: e.obj for k, e in sorted(get_registry().table("method").items())}


def metrics() -> dict[str, type[Metric]]:
    return {k: e.obj for k, e in sorted(get_registry().table("metric").items())}


def perturbations() -> dict[str, type[Perturbation]]:
    return {k: e.obj for k, e in sorted(get_registry().table("perturbation").items())}


def model_explainers() -> dict[str, type]:
    return {k: e.obj for k, e in sorted(get_registry().table("model-explainer").items())}


def rules() -> dict[str, type[PropagationRule]]:
    """Registered relevance-propagation rules: name -> class (``salfw.sdk.propagation.Rule`` subclasses)."""
    return {k: e.obj for k, e in sorted(get_registry().table("rule").items())}


def composites() -> dict[str, type[Composite]]:
    """Registered composites (layer -> rule assignments): name -> class."""
    return {k: e.obj for k, e in sorted(get_registry().table("composite").items())}


def reload_plugins() -> None:
    """Forget every loaded plugin: the next lookup reads the entry points (and the
    ``SALFW_PLUGINS``/``SALFW_DISABLE_PLUGINS`` variables) again, e.g. after installing a
    plugin package into a running notebook. Classes added with :func:`register` are forgotten too."""
    reset_registry()


def datasets() -> dict[str, type[Dataset]]:
    """Registered dataset schemes (``mnist``, ``folder``, ``npy``, ...): name -> class."""
    return {k: e.obj for k, e in sorted(get_registry().table("dataset").items())}


def component_params(kind: str, name: str) -> type:
    """The parameter declaration of a registered component (for nested settings like
    ``perturbation.sigma``)."""
    return get_registry().get(kind, name).Params


def register(cls: _Class) -> _Class:
    """Register a method, metric, perturbation, model loader, model explainer, propagation rule or
    composite class in this process, so it is used by name like a packaged plugin's (a notebook
    needs no package); also a decorator (``@salfw.register``). A name already registered is a
    :class:`PluginError` naming both."""
    return get_registry().register_class(cls)


def unregister(name_or_class: str | type) -> None:
    """Remove a class registered with :func:`register` (by its registered name or the class)."""
    get_registry().unregister_class(name_or_class)


def make_method(name: str, **params: Any) -> Method:
    """A registered method with validated parameters (what :func:`explain` runs)."""
    cls = get_registry().get("method", name)
    return cls(parse_params(cls.Params, params, owner=f"method '{name}'", resolve=component_params))


def make_explainer(name: str, **params: Any) -> ModelExplainer:
    """A registered model explainer (``salfw list explainers``) with validated parameters."""
    cls = get_registry().get("model-explainer", name)
    return cls(parse_params(cls.Params, params, owner=f"model explainer '{name}'", resolve=component_params))


def make_perturbation(spec: str | Component | Perturbation, **params: Any) -> Perturbation:
    """A perturbation instance from its registered name or a :class:`Component` (or pass one through)."""
    if isinstance(spec, Perturbation):
        return spec
    if isinstance(spec, Component):
        params = {**spec.kwargs, **params}
        spec = spec.name
    if not isinstance(spec, str):
        raise ParameterError(f"a perturbation is named by a string like 'black' or 'blur', got {spec!r}")
    cls = get_registry().get("perturbation", spec)
    return cls(parse_params(cls.Params, params, owner=f"perturbation '{spec}'", resolve=component_params))


def load_model(spec: str) -> Model:
    """Load a model from ``scheme:rest`` (``builtin:mnist-cnn``, ``torchscript:PATH``,
    ``onnx:PATH``, ``python:module:callable[@weights]``)."""
    if not isinstance(spec, str) or ":" not in spec:
        schemes = ", ".join(sorted(get_registry().table("model-loader"))) or "none registered"
        raise ModelError(f"a model spec looks like 'scheme:rest' (schemes: {schemes}), got {spec!r}")
    scheme, rest = spec.split(":", 1)
    loader = get_registry().get("model-loader", scheme)()
    return loader.load(rest)


def load_dataset(spec: str, model: Model | None = None) -> Dataset:
    """Open a dataset from ``name:location?key=value&...`` (``mnist:DIR?start=0&stop=1000``,
    ``folder:DIR``, ``npy:FILE?labels=FILE``; ``salfw list datasets``) for ``model``'s inputs
    (its input shape and range). The query's keys are the dataset's declared parameters."""
    from urllib.parse import parse_qsl

    names = ", ".join(sorted(get_registry().table("dataset"))) or "none registered"
    if not isinstance(spec, str) or ":" not in spec:
        raise InputError(f"a dataset spec looks like 'name:location?key=value' (names: {names}), got {spec!r}")
    name, rest = spec.split(":", 1)
    location, _, query = rest.partition("?")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True) if query else []
    except ValueError:
        raise InputError(f"dataset spec {spec!r}: the part after '?' must be key=value pairs joined by '&'") from None
    repeated = sorted({key for key, _ in pairs if sum(k == key for k, _ in pairs) > 1})
    if repeated:
        raise InputError(f"dataset spec {spec!r} gives {', '.join(repeated)} more than once")
    cls = get_registry().get("dataset", name)
    params = parse_params(cls.Params, dict(pairs), owner=f"dataset '{name}'", resolve=component_params)
    return cls(location, params, model)


# -- validation -------------------------------------------------------------------
def as_batch(model: Model, x: Any) -> torch.Tensor:
    """Check and convert a user batch to a float tensor on the model's device."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise InputError(f"inputs must be a torch.Tensor or numpy array batch, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputError(f"inputs must be floating point in input_range {model.input_range}, got dtype "
                         f"{x.dtype} (for 8-bit images divide by 255)")
    if x.dim() not in (2, 4):
        raise InputError(f"inputs must be a batch of images (N, C, H, W) or of vectors (N, D); "
                         f"got shape {tuple(x.shape)} (add a batch dimension with x[None])")
    if x.shape[0] == 0:
        raise InputError("inputs are an empty batch (N = 0)")
    if model.input_shape is not None and tuple(x.shape[1:]) != model.input_shape:
        raise InputError(f"inputs have per-sample shape {tuple(x.shape[1:])}, the model expects "
                         f"{model.input_shape}")
    if not torch.isfinite(x).all():
        raise InputError("inputs contain NaN or infinite values")
    if model.features is not None:
        _check_features(model, x)
        return x.detach().to(device=model.device, dtype=_dtype(model, x)).clone()
    lo, hi = model.input_range
    tol = 1e-6 * (hi - lo)
    if x.min() < lo - tol or x.max() > hi + tol:
        raise InputError(f"inputs span [{x.min().item():.4g}, {x.max().item():.4g}], outside the model's "
                         f"input_range ({lo:g}, {hi:g}); pass input_range=(low, high) to the adapter, or "
                         f"move normalisation into it (WhiteBox(mean=..., std=...))")
    return x.detach().to(device=model.device, dtype=_dtype(model, x)).clone()


def _dtype(model: Model, x: torch.Tensor) -> torch.dtype:
    return model.dtype if isinstance(model, WhiteBox) else x.dtype


def _check_features(model: Model, x: torch.Tensor) -> None:
    """Inputs for a model with per-feature ranges or feature names: vectors (N, D) of its D features,
    each feature within its own range."""
    what = "per-feature input_range" if isinstance(model.input_range, FeatureRange) else "feature_names"
    if x.dim() != 2 or x.shape[1] != model.features:
        raise InputError(f"the model's {what} describe {model.features} features, so the inputs must be "
                         f"vectors (N, {model.features}); got shape {tuple(x.shape)}")
    exact = x.double()
    lo, hi = range_ends(model.input_range, exact)
    tol = 1e-6 * (hi - lo)
    bad = ((exact < lo - tol) | (exact > hi + tol)).any(dim=0).nonzero()[:, 0].tolist()
    if not bad:
        return

    def end(value: Any, j: int) -> float:
        return value[0, j].item() if isinstance(value, torch.Tensor) else value

    names = model.feature_names
    listed = "; ".join(f"{names[j] if names else f'feature {j}'} spans [{x[:, j].min().item():.4g}, "
                       f"{x[:, j].max().item():.4g}], its range is ({end(lo, j):g}, {end(hi, j):g})"
                       for j in bad[:5])
    raise InputError(f"inputs lie outside the model's input_range in {len(bad)} feature(s): {listed}"
                     f"{'; ...' if len(bad) > 5 else ''}; widen input_range=(lows, highs) on the adapter")


def check_seed(seed: Any) -> None:
    """A seed is an int in 0..2**63 - 1, what every generator salfw seeds accepts (torch, NumPy,
    scikit-image's C long)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2 ** 63:
        raise ParameterError(f"seed must be an int in 0..{2 ** 63 - 1} (a non-negative int64), got {seed!r}")


def as_targets(target: Any, n: int, num_classes: int | None, predicted: torch.Tensor) -> torch.Tensor:
    """``None`` -> predicted classes; an int -> that class for all; a sequence -> one per sample."""
    if target is None:
        return predicted.clone()
    if isinstance(target, (bool, np.bool_)):
        raise TargetError(f"target must be an int class index or a sequence of them, got {target!r}")
    if isinstance(target, (int, np.integer)):
        if not -2 ** 63 <= int(target) < 2 ** 63:
            classes = f": the model has {num_classes} classes (0..{num_classes - 1})" if num_classes else ""
            raise TargetError(f"target {target} out of range{classes}")
        t = torch.full((n,), int(target), dtype=torch.long)
    else:
        try:
            t = torch.as_tensor(np.asarray(target.cpu() if isinstance(target, torch.Tensor) else target))
        except (TypeError, ValueError):
            raise TargetError(f"target must be an int or a sequence of ints, got {target!r}") from None
        if t.dim() == 0:
            t = t.reshape(1).expand(n)
        if t.dim() != 1 or t.shape[0] != n:
            raise TargetError(f"target must give one class per sample ({n}), got shape {tuple(t.shape)}")
        if t.is_floating_point() or t.dtype == torch.bool:
            if t.is_floating_point() and torch.equal(t, t.round()):
                t = t.long()
            else:
                raise TargetError(f"targets must be integer class indices, got dtype {t.dtype}")
        t = t.long()
    assert num_classes is not None, "the model's class count is known after its first forward pass"
    if (t < 0).any() or (t >= num_classes).any():
        raise TargetError(f"target {t.tolist()} out of range: the model has {num_classes} classes "
                          f"(0..{num_classes - 1})")
    return t.to(predicted.device)


# -- explain ----------------------------------------------------------------------
def explain(method: str | Method, model: Model, x: Any, target: Any = None, seed: int = 0,
            progress: bool | None = None, **params: Any) -> Explanation:
    """Explain ``model``'s decision on the batch ``x`` with a registered method.

    ``target``: None explains the predicted classes; an int or one int per sample
    explains those. ``seed`` fixes every random choice. ``progress``: show a
    progress bar on stderr (None: when stderr is a terminal). ``params`` are the
    method's declared parameters (``salfw info METHOD`` lists them).
    """
    if isinstance(method, str):
        instance = make_method(method, **params)
    elif isinstance(method, Method):
        if params:
            raise ParameterError("pass parameters either to the method instance or to explain(), not both")
        instance = method
    else:
        raise UnknownNameError(f"method must be a registered name or a Method instance, got {method!r}")
    if not isinstance(model, Model):
        raise ModelError(f"model must be a salfw.WhiteBox or salfw.BlackBox, got {type(model).__name__}; "
                         f"wrap a torch.nn.Module in salfw.WhiteBox and a callable in salfw.BlackBox")
    check_seed(seed)
    instance.check_model(model)
    if isinstance(model.input_range, FeatureRange) and not instance.per_feature_ranges:
        able = ", ".join(sorted(n for n, cls in methods().items() if cls.per_feature_ranges))
        raise ModelRequirementError(f"'{instance.name}' does not handle an input_range given per feature; "
                                    f"methods that do: {able}")
    batch = as_batch(model, x)
    kind = "image" if batch.dim() == 4 else "vector"
    if kind not in instance.input_kinds:
        raise InputError(f"'{instance.name}' explains {' or '.join(instance.input_kinds)} inputs, "
                         f"got a batch of {kind}s of shape {tuple(batch.shape)}")
    module = model.module if isinstance(model, WhiteBox) else None
    with preserved(module):
        # The predicted classes need one forward pass; skipped when the targets are given and the
        # model's class count is already known, so explaining a given class costs only the method.
        prediction = {}
        if target is None or model.num_classes is None:
            scores = model.scores(batch)
            prediction = {"predicted": scores.argmax(dim=1).tolist(),
                          "probabilities": model.to_probabilities(scores).detach().cpu().tolist()}
        predicted = torch.tensor(prediction.get("predicted", [0] * batch.shape[0]), device=batch.device)
        targets = as_targets(target, batch.shape[0], model.num_classes, predicted)
        ctx = Context(int(seed), batch_size=getattr(instance.params, "batch_size", None),
                      progress=_progress_wanted(progress), description=instance.name)
        start = time.perf_counter()
        with ctx.activated():
            result = instance.attribute(model, batch, targets, ctx)
        seconds = time.perf_counter() - start
    attributions, extra = result if isinstance(result, tuple) else (result, {})
    _check_output(instance.name, attributions, batch)
    if not ctx.degenerate:  # a method that said why its result is degenerate has said enough
        _warn_if_constant(instance, attributions)
    meta = {"seconds": seconds, "forward_passes": ctx.forward_passes,
            "backward_passes": ctx.backward_passes, "seed": int(seed), **prediction, **extra}
    return Explanation(attributions=attributions.detach(), targets=targets, method=instance.name,
                       kind=instance.kind, params=params_to_json(instance.params), meta=meta,
                       inputs=batch, input_range=model.input_range, feature_names=model.feature_names)


def _progress_wanted(progress: bool | None) -> bool:
    """``progress=None`` means: show progress when stderr is a terminal."""
    if progress is None:
        return sys.stderr.isatty()
    if not isinstance(progress, (bool, np.bool_)):
        raise ParameterError(f"progress must be True, False or None (on when stderr is a terminal), "
                             f"got {progress!r}")
    return bool(progress)


def _check_output(name: str, a: Any, x: torch.Tensor) -> None:
    if not isinstance(a, torch.Tensor):
        raise TypeError(f"method '{name}' returned {type(a).__name__}, not a tensor")  # a plugin bug
    ok = a.shape == x.shape or (x.dim() == 4 and a.dim() == 4 and a.shape[0] == x.shape[0]
                                and a.shape[1] == 1 and a.shape[2:] == x.shape[2:])
    if not ok:
        raise TypeError(f"method '{name}' returned attributions of shape {tuple(a.shape)} for inputs "
                        f"of shape {tuple(x.shape)}")  # a plugin bug, not a user error
    bad = _nonfinite_samples(a)
    if bad:
        raise ModelError(f"method '{name}' returned NaN or infinite attributions for {bad}: a numerical "
                         f"failure of the method on this model and input")


def _warn_if_constant(method: Method, a: torch.Tensor) -> None:
    """A :class:`DegenerateWarning` naming the samples whose map is constant (it ranks no feature above
    another), with the settings that usually fix it."""
    flat = a.detach().flatten(1)
    if flat.shape[1] < 2 or not flat.is_floating_point():
        return
    span = flat.max(dim=1).values - flat.min(dim=1).values
    # constant: equal to float precision, or every value at rounding-noise level (a fit to a flat output)
    constant = (span <= (1e-6 * flat.abs().max(dim=1).values).clamp(min=1e-10)).nonzero()[:, 0].tolist()
    if not constant:
        return
    saturated = getattr(method.params, "output", None) == "probabilities"
    hints = ["output='logits' (the probability may be saturated)"] if saturated else []
    hints += ["another target (the model's score for this one may not depend on the input here)",
              f"finer settings (salfw info {method.name} lists them)"]
    listed = ", ".join(map(str, constant[:10])) + (", ..." if len(constant) > 10 else "")
    warnings.warn(f"{method.name} gave a constant map for sample(s) {listed} ({len(constant)} of {a.shape[0]}): "
                  f"it ranks no input feature above another; try {'; or '.join(hints)}", DegenerateWarning,
                  stacklevel=3)


def _nonfinite_samples(a: torch.Tensor) -> str | None:
    """'sample(s) 1, 4 (2 of 8)' for the samples whose map holds NaN or inf, None when all are finite."""
    if not a.is_floating_point() or bool(torch.isfinite(a).all()):
        return None
    rows = (~torch.isfinite(a.detach()).flatten(1).all(dim=1)).nonzero()[:, 0].tolist()
    listed = ", ".join(str(r) for r in rows[:10]) + (", ..." if len(rows) > 10 else "")
    return f"sample(s) {listed} ({len(rows)} of {a.shape[0]})"


# -- evaluate ---------------------------------------------------------------------
def make_metric(name: str, **params: Any) -> Metric:
    cls = get_registry().get("metric", name)
    return cls(parse_params(cls.Params, params, owner=f"metric '{name}'", resolve=component_params))


def evaluate(metric: str, model: Model, x: Any, explanation: Explanation | torch.Tensor,
             target: Any = None, seed: int = 0, mask: Any = None, progress: bool | None = None,
             **params: Any) -> torch.Tensor:
    """Score an explanation of ``x`` with a registered metric: one value per sample (N,).

    ``mask``: ground-truth regions, one per input, for metrics that need one (``pointing-game``).
    ``progress``: as for :func:`explain`.
    """
    scores, _extra = evaluate_full(metric, model, x, explanation, target, seed, mask, progress, **params)
    return scores


def evaluate_full(metric: str, model: Model, x: Any, explanation: Explanation | torch.Tensor,
                  target: Any = None, seed: int = 0, mask: Any = None, progress: bool | None = None,
                  **params: Any) -> tuple[torch.Tensor, dict]:
    """Like :func:`evaluate`, also returning the metric's extras (curves, baselines)."""
    instance = make_metric(metric, **params)
    check_seed(seed)
    if not isinstance(model, Model):
        raise ModelError(f"model must be a salfw.WhiteBox or salfw.BlackBox, got {type(model).__name__}")
    if "white-box" in instance.needs and not isinstance(model, WhiteBox):
        raise ModelError(f"metric '{metric}' needs a salfw.WhiteBox, got a {type(model).__name__}")
    if isinstance(model.input_range, FeatureRange) and not instance.per_feature_ranges:
        able = ", ".join(sorted(n for n, cls in metrics().items() if cls.per_feature_ranges))
        raise ModelRequirementError(f"metric '{metric}' does not handle an input_range given per feature; "
                                    + (f"metrics that do: {able}" if able else "no registered metric does yet"))
    batch = as_batch(model, x)
    if isinstance(explanation, Explanation):
        attributions = explanation.attributions
        context = {"explanation": explanation}
        if target is None:
            target = explanation.targets
    elif isinstance(explanation, (torch.Tensor, np.ndarray)):
        attributions, context = torch.as_tensor(explanation), {}
    else:
        raise InputError(f"explanation must be a salfw Explanation or an attribution tensor, "
                         f"got {type(explanation).__name__}")
    if attributions.shape[0] != batch.shape[0]:
        raise InputError(f"the explanation covers {attributions.shape[0]} samples, the inputs "
                         f"{batch.shape[0]}")
    if mask is not None:
        context["mask"] = mask
    attributions = attributions.to(device=batch.device, dtype=batch.dtype)
    bad = _nonfinite_samples(attributions)
    if bad:
        raise InputError(f"the attributions hold NaN or infinite values for {bad}; metrics score finite maps")
    module = model.module if isinstance(model, WhiteBox) else None
    with preserved(module):
        if target is None or model.num_classes is None:
            predicted = model.scores(batch).argmax(dim=1)
        else:
            predicted = torch.zeros(batch.shape[0], dtype=torch.long, device=batch.device)
        targets = as_targets(target, batch.shape[0], model.num_classes, predicted)
        ctx = Context(int(seed), batch_size=getattr(instance.params, "batch_size", None),
                      progress=_progress_wanted(progress), description=instance.name)
        with ctx.activated():
            result = instance.score(model, batch, attributions, targets, ctx, **context)
    values, extra = result if isinstance(result, tuple) else (result, {})
    return values, extra
