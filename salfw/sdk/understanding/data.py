"""The ``data`` argument of the rule-extracting explainers (DeepRED, the surrogate tree)."""

from __future__ import annotations

import numpy as np
import torch

from salfw.core.errors import InputError


def _batch(value, what: str, owner: str, model) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor) or value.dim() < 2 or len(value) < 2 or not value.is_floating_point():
        raise InputError(f"{owner} data[{what!r}] must be a float batch tensor (N, ...) with N >= 2, got "
                         f"{type(value).__name__}{tuple(getattr(value, 'shape', ()))}")
    if model.input_shape is not None and tuple(value.shape[1:]) != tuple(model.input_shape):
        raise InputError(f"{owner} data[{what!r}] has sample shape {tuple(value.shape[1:])}, the model takes "
                         f"{tuple(model.input_shape)}")
    return value.to(model.device, model.dtype)


def train_heldout(data, owner: str, model) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(inputs, heldout, labels)`` from ``data = {"inputs": ..., "heldout": ..., "labels": optional}``.

    ``inputs`` train the rules or tree, ``heldout`` measure the fidelity, and
    ``labels`` (the heldout's true classes, int (N,)) the accuracy.
    """
    if not isinstance(data, dict) or "inputs" not in data or "heldout" not in data:
        raise InputError(f"{owner} needs data={{'inputs': training inputs, 'heldout': held-out inputs, "
                         f"optionally 'labels': the held-out labels}}")
    unknown = set(data) - {"inputs", "heldout", "labels"}
    if unknown:
        raise InputError(f"{owner} data: unknown keys {sorted(unknown)}; accepted: inputs, heldout, labels")
    inputs = _batch(data["inputs"], "inputs", owner, model)
    heldout = _batch(data["heldout"], "heldout", owner, model)
    labels = data.get("labels")
    if labels is not None:
        labels = torch.as_tensor(labels)
        if labels.shape != (len(heldout),) or labels.is_floating_point():
            raise InputError(f"{owner} data['labels'] must be int labels of shape ({len(heldout)},), "
                             f"got {labels.dtype} {tuple(labels.shape)}")
        labels = labels.cpu()
    return inputs, heldout, labels
