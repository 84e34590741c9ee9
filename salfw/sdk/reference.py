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
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from salfw.core.api import make_perturbation
from salfw.core.contracts import Perturbation
from salfw.core.errors import ParameterError, SalfwError
from salfw.core.params import Component


def reference(spec: Any, x: torch.Tensor, input_range: tuple[float, float],
              generator: torch.Generator | None, name: str = "baseline") -> torch.Tensor:
    """The reference input for the batch ``x`` named by ``spec`` (see the module docstring);
    ``name`` is the parameter's name in error messages."""
    if isinstance(spec, (str, Component, Perturbation)):
        try:
            perturbation = make_perturbation(spec)
        except SalfwError as exc:
            raise ParameterError(f"{name}: {exc}") from None
        fill = perturbation.fill(x, input_range, generator).to(dtype=x.dtype)
        if fill.dim() == 0 or fill.shape[0] == 1:
            return fill.expand(1, *x.shape[1:])
        return fill.expand(x.shape)
    if isinstance(spec, (int, float, np.integer, np.floating)) and not isinstance(spec, (bool, np.bool_)):
        value = float(spec)
        if not np.isfinite(value):
            raise ParameterError(f"{name} must be finite, got {value}")
        return torch.full((1, *x.shape[1:]), value, dtype=x.dtype, device=x.device)
    if isinstance(spec, np.ndarray):
        spec = torch.from_numpy(np.ascontiguousarray(spec))
    if isinstance(spec, torch.Tensor):
        if not spec.is_floating_point():
            raise ParameterError(f"{name} must be a float tensor, got dtype {spec.dtype}")
        if not torch.isfinite(spec).all():
            raise ParameterError(f"{name} contains NaN or infinite values")
        value = spec.detach().to(device=x.device, dtype=x.dtype)
        if tuple(value.shape) == tuple(x.shape[1:]):
            return value[None]
        if value.dim() == x.dim() and value.shape[0] in (1, x.shape[0]) and value.shape[1:] == x.shape[1:]:
            return value
        raise ParameterError(f"{name} must be shaped like one sample {tuple(x.shape[1:])} or like the batch "
                             f"{tuple(x.shape)}, got {tuple(value.shape)}")
    raise ParameterError(f"{name} must be a perturbation name (black, white, mean, blur, uniform-noise, ...), "
                         f"a number or a tensor; got {spec!r}")
