"""Reference inputs: one resolver for baselines and fills.

Integrated gradients and expected gradients (Sundararajan et al. 2017; Erion et
al. 2021), DeepLIFT (Shrikumar et al. 2017), KernelSHAP (Lundberg & Lee 2017)
and the feature hider of the perturbation methods all compare an input with a
reference input. :func:`reference` resolves every way a user can name one:

* a perturbation: its registered name (``"black"``, ``"blur"``, ...), a
  :class:`~salfw.core.params.Component` with settings, or an instance; the
  reference is its fill over the whole input, in the input's own domain
  (``input_range``), random fills drawn from the given CPU generator;
* a number: a constant input;
* a tensor or array shaped like one sample (shared by the batch) or like the
  batch.

The result broadcasts against ``x``: ``(1, ...)`` when shared by the batch,
``(N, ...)`` otherwise.

:func:`draws` samples a reference *distribution* (expected gradients, Erion et
al. 2021): a data set of reference inputs ``(M, ...)``, a random fill drawn
anew for each draw, or any single reference above. :func:`check` rejects at
parse time what can never be resolved, so a method can validate its
``baseline`` in ``__init__``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from salfw.core.api import make_perturbation
from salfw.core.contracts import Perturbation
from salfw.core.errors import ParameterError, SalfwError
from salfw.core.params import Component

_ACCEPTED = "a perturbation name (black, white, mean, blur, uniform-noise, ...), a number or a tensor"


def _perturbation(spec: str | Component | Perturbation, name: str) -> Perturbation:
    try:
        return make_perturbation(spec)
    except SalfwError as exc:
        raise ParameterError(f"{name}: {exc}") from None


def _number(spec: Any) -> bool:
    return isinstance(spec, (int, float, np.integer, np.floating)) and not isinstance(spec, (bool, np.bool_))


def _finite(spec: Any, name: str) -> float:
    value = float(spec)
    if not np.isfinite(value):
        raise ParameterError(f"{name} must be finite, got {value}")
    return value


def _float_tensor(spec: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    """A float tensor of finite values from a tensor or an array."""
    value = torch.from_numpy(np.ascontiguousarray(spec)) if isinstance(spec, np.ndarray) else spec
    if not value.is_floating_point():
        raise ParameterError(f"{name} must be a float tensor, got dtype {value.dtype}")
    if not torch.isfinite(value).all():
        raise ParameterError(f"{name} contains NaN or infinite values")
    return value.detach()


def check(spec: Any, name: str = "baseline") -> None:
    """Raise :class:`ParameterError` for a ``spec`` that :func:`reference` can never resolve (an
    unknown perturbation, a non-finite number, a non-float tensor, anything else); shapes are
    checked against the input later."""
    if isinstance(spec, (str, Component, Perturbation)):
        _perturbation(spec, name)
    elif _number(spec):
        _finite(spec, name)
    elif isinstance(spec, (torch.Tensor, np.ndarray)):
        _float_tensor(spec, name)
    else:
        raise ParameterError(f"{name} must be {_ACCEPTED}; got {spec!r}")


def reference(spec: Any, x: torch.Tensor, input_range: tuple[float, float],
              generator: torch.Generator | None, name: str = "baseline") -> torch.Tensor:
    """The reference input for the batch ``x`` named by ``spec`` (see the module docstring);
    ``name`` is the parameter's name in error messages."""
    if isinstance(spec, (str, Component, Perturbation)):
        fill = _perturbation(spec, name).fill(x, input_range, generator).to(dtype=x.dtype)
        if fill.dim() == 0 or fill.shape[0] == 1:
            return fill.expand(1, *x.shape[1:])
        return fill.expand(x.shape)
    if _number(spec):
        return torch.full((1, *x.shape[1:]), _finite(spec, name), dtype=x.dtype, device=x.device)
    if not isinstance(spec, (torch.Tensor, np.ndarray)):
        raise ParameterError(f"{name} must be {_ACCEPTED}; got {spec!r}")
    value = _float_tensor(spec, name).to(device=x.device, dtype=x.dtype)
    if tuple(value.shape) == tuple(x.shape[1:]):
        return value[None]
    if value.dim() == x.dim() and value.shape[0] in (1, x.shape[0]) and value.shape[1:] == x.shape[1:]:
        return value
    raise ParameterError(f"{name} must be shaped like one sample {tuple(x.shape[1:])} or like the batch "
                         f"{tuple(x.shape)}, got {tuple(value.shape)}")


def draws(spec: Any, x: torch.Tensor, input_range: tuple[float, float], generator: torch.Generator,
          count: int, name: str = "baseline") -> torch.Tensor:
    """``count`` draws from the reference distribution ``spec`` names, shaped
    ``(count or 1, 1 or N, *sample shape)`` (a leading 1 when every draw is the same):

    * a tensor or array with a leading dimension, ``(M, *sample shape)``: a data set of reference
      inputs (the paper's training data); each draw is one of its rows, chosen uniformly with
      replacement by ``generator`` (``M = 1`` gives a fixed reference);
    * a random perturbation (``uniform-noise``, ``gaussian-noise``): ``count`` fills drawn one
      after the other from ``generator`` (the Perturbation contract draws one fill per call);
    * anything else :func:`reference` resolves (a fixed fill, a number, a tensor shaped like one
      sample): that one reference for every draw.
    """
    if isinstance(spec, (torch.Tensor, np.ndarray)) and spec.ndim == x.dim():
        data = _float_tensor(spec, name)
        if tuple(data.shape[1:]) != tuple(x.shape[1:]) or data.shape[0] == 0:
            raise ParameterError(f"{name} as a data set must be shaped (M, {', '.join(map(str, x.shape[1:]))}) "
                                 f"with M >= 1, got {tuple(data.shape)}")
        index = torch.randint(0, data.shape[0], (count,), generator=generator)
        return data[index.to(data.device)].to(device=x.device, dtype=x.dtype)[:, None]
    if isinstance(spec, (str, Component, Perturbation)):
        spec = _perturbation(spec, name)
        if spec.random:
            return torch.stack([reference(spec, x, input_range, generator, name) for _ in range(count)])
    return reference(spec, x, input_range, generator, name)[None]
