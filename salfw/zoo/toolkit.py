"""Model toolkit: build, train, measure, save and load small image classifiers.

These are the operations of the ``Mnist_net`` class of the GeoSal thesis
(build an MLP or a CNN from a layer list, with or without biases; train it;
report accuracy, the confusion matrix and the misclassified examples; store
it), written as plain functions over plain modules so that any
``torch.nn.Module`` can be measured with them and the built-in models stay
ordinary ``nn.Sequential`` networks that explanation methods can walk layer
by layer.

A *layer specification* is a list of small dicts, one per layer::

    [{"type": "conv", "out": 32, "kernel": 3, "padding": 1}, {"type": "relu"},
     {"type": "maxpool", "kernel": 2},
     {"type": "gap"}, {"type": "linear", "out": 10}]

=========  =========================================  =======================
type       keys (defaults)                            module
=========  =========================================  =======================
conv       out, kernel, stride (1), padding (0)       ``nn.Conv2d``
relu       --                                         ``nn.ReLU``
maxpool    kernel, stride (= kernel)                  ``nn.MaxPool2d``
gap        --                                         ``nn.AdaptiveAvgPool2d(1)``
                                                      then ``nn.Flatten``
flatten    --                                         ``nn.Flatten``
linear     out                                        ``nn.Linear``
=========  =========================================  =======================

Input channels and features are inferred from ``input_shape``; a global
``bias`` switch turns the bias of every conv and linear layer on or off (the
bias-free networks are the ones VisualBackProp and the GeoSal thesis use).
Networks return logits, never probabilities.

Models are stored with safetensors (never pickle): the tensors of the state
dict, plus the specification and free-form metadata as JSON strings in the
safetensors header, so :func:`load` rebuilds the exact architecture without
running any stored code.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

#: Allowed keys per layer type: (required, optional).
_LAYER_KEYS: dict[str, tuple[set[str], set[str]]] = {
    "conv": ({"out", "kernel"}, {"stride", "padding"}),
    "relu": (set(), set()),
    "maxpool": ({"kernel"}, {"stride"}),
    "gap": (set(), set()),
    "flatten": (set(), set()),
    "linear": ({"out"}, set()),
}


def build(
    layers: list[dict[str, Any]],
    *,
    bias: bool = True,
    input_shape: tuple[int, ...] = (1, 28, 28),
    seed: int | None = None,
) -> nn.Sequential:
    """Build an ``nn.Sequential`` from a layer specification (see module docs).

    ``input_shape`` is one sample's shape, ``(C, H, W)``, used to infer each
    layer's input size. With ``seed`` the initial weights are drawn from a
    private generator state (PyTorch's default initialisation, seeded), so the
    same seed gives the same network and the global RNG is left untouched.
    Raises ``ValueError`` for an unknown layer type, a missing or unknown key,
    or a layer that does not fit the shape reaching it.
    """
    if seed is None:
        return _build(layers, bias, tuple(input_shape))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build(layers, bias, tuple(input_shape))


def _build(layers: list[dict[str, Any]], bias: bool, shape: tuple[int, ...]) -> nn.Sequential:
    modules: list[nn.Module] = []
    for i, layer in enumerate(layers):
        kind = layer.get("type")
        if kind not in _LAYER_KEYS:
            raise ValueError(f"layer {i}: unknown type {kind!r}, expected one of {sorted(_LAYER_KEYS)}")
        required, optional = _LAYER_KEYS[kind]
        keys = set(layer) - {"type"}
        if required - keys:
            raise ValueError(f"layer {i} ({kind}): missing {sorted(required - keys)}")
        if keys - required - optional:
            raise ValueError(
                f"layer {i} ({kind}): unknown keys {sorted(keys - required - optional)}, "
                f"expected {sorted(required | optional)}"
            )
        if kind in ("conv", "maxpool", "gap") and len(shape) != 3:
            raise ValueError(f"layer {i} ({kind}): needs a (C, H, W) input, got shape {shape}")
        if kind == "linear" and len(shape) != 1:
            raise ValueError(f"layer {i} (linear): needs a flat input, got shape {shape}; add a flatten or gap layer")

        if kind == "conv":
            k, s, p = layer["kernel"], layer.get("stride", 1), layer.get("padding", 0)
            modules.append(nn.Conv2d(shape[0], layer["out"], k, stride=s, padding=p, bias=bias))
            shape = (layer["out"], (shape[1] + 2 * p - k) // s + 1, (shape[2] + 2 * p - k) // s + 1)
        elif kind == "relu":
            modules.append(nn.ReLU())
        elif kind == "maxpool":
            k = layer["kernel"]
            s = layer.get("stride", k)
            modules.append(nn.MaxPool2d(k, stride=s))
            shape = (shape[0], (shape[1] - k) // s + 1, (shape[2] - k) // s + 1)
        elif kind == "gap":
            modules += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            shape = (shape[0],)
        elif kind == "flatten":
            modules.append(nn.Flatten())
            shape = (math.prod(shape),)
        elif kind == "linear":
            modules.append(nn.Linear(shape[0], layer["out"], bias=bias))
            shape = (layer["out"],)
        if min(shape) < 1:
            raise ValueError(f"layer {i} ({kind}): output shape {shape} is empty")
    return nn.Sequential(*modules)


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels in x and y, filling with 0.

    The classic MNIST augmentation (small translations; LeCun et al. 1998 used
    distortions of this kind). Done for the whole batch at once by padding and
    gathering a shifted window per sample.
    """
    n, _, h, w = images.shape
    padded = F.pad(images, (max_shift, max_shift, max_shift, max_shift))
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator)
    rows = dy[:, None] + torch.arange(h)  # (N, H)
    cols = dx[:, None] + torch.arange(w)  # (N, W)
    channels_last = padded.permute(0, 2, 3, 1)  # (N, H', W', C)
    shifted = channels_last[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return shifted.permute(0, 3, 1, 2).contiguous()


def train(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    augment: int = 0,
    offset: float = 0.0,
) -> list[float]:
    """Train ``model`` in place with Adam and cross-entropy; return the mean loss per epoch.

    Adam (Kingma and Ba, 2015) with its usual ``lr=1e-3``; the learning rate
    follows a cosine decay to zero over all steps (Loshchilov and Hutter,
    2017), which settles the final weights without tuning a schedule.
    ``augment`` is the largest random shift in pixels (0 = none), see
    :func:`random_shift`. ``offset`` is added to every input after
    augmentation, i.e. the network is trained on ``x + offset`` (the GeoSal
    thesis's offset layer; -0.5 centres [0, 1] pixels on zero). Shuffling and
    augmentation draw from a generator seeded with ``seed``, so on CPU the
    same seed, data and initial weights give the same trained model.
    The model is left in eval mode.
    """
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * math.ceil(len(images) / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps)
    losses = []
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for start in range(0, len(images), batch_size):
            idx = order[start : start + batch_size]
            x = images[idx]
            if augment:
                x = random_shift(x, augment, generator)
            loss = F.cross_entropy(model(x + offset), labels[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(idx)
        losses.append(total / len(images))
    model.eval()
    return losses


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, *, offset: float = 0.0, batch_size: int = 1000) -> torch.Tensor:
    """Predicted class per input (argmax of the logits of ``model(x + offset)``), int64 ``(N,)``.

    Runs in eval mode in chunks of ``batch_size``; the model's training flag
    is restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        chunks = [model(images[i : i + batch_size] + offset).argmax(1) for i in range(0, len(images), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.int64)


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, offset: float = 0.0) -> float:
    """Accuracy in [0, 1]: the fraction of inputs whose predicted class equals the label."""
    return (predict(model, images, offset=offset) == labels).float().mean().item()


def confusion_matrix(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, num_classes: int = 10, offset: float = 0.0
) -> torch.Tensor:
    """Counts ``(num_classes, num_classes)`` int64: row = true class, column = predicted class."""
    predicted = predict(model, images, offset=offset)
    flat = labels * num_classes + predicted
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def errors(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, offset: float = 0.0) -> torch.Tensor:
    """Indices (int64, ascending) of the inputs the model misclassifies."""
    return torch.nonzero(predict(model, images, offset=offset) != labels).flatten()


def save(model: nn.Module, spec: dict[str, Any], path: str | os.PathLike,
         metadata: dict[str, Any] | None = None) -> None:
    """Write ``model``'s state dict to a safetensors file, with ``spec`` and ``metadata`` as JSON.

    ``spec`` holds the keyword arguments of :func:`build` (``layers``,
    ``bias``, ``input_shape``) so that :func:`load` can rebuild the network;
    ``metadata`` is any JSON-serialisable dict (accuracy, seed, ...). Both go
    into the safetensors header under the keys ``"spec"`` and ``"metadata"``.
    """
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    header = {"spec": json.dumps(spec, sort_keys=True), "metadata": json.dumps(metadata or {}, sort_keys=True)}
    save_file(tensors, os.fspath(path), metadata=header)


def load(path: str | os.PathLike) -> tuple[nn.Sequential, dict[str, Any], dict[str, Any]]:
    """Read a file written by :func:`save`: return ``(model, spec, metadata)``.

    The network is rebuilt from the stored specification, its tensors loaded
    strictly (every name must match), and returned in eval mode on the CPU.
    """
    path = os.fspath(path)
    with safe_open(path, framework="pt") as f:
        header = f.metadata() or {}
    if "spec" not in header:
        raise ValueError(f"{path}: no 'spec' in the safetensors metadata; not written by salfw.zoo.toolkit.save")
    spec = json.loads(header["spec"])
    metadata = json.loads(header.get("metadata", "{}"))
    model = build(spec["layers"], bias=spec["bias"], input_shape=tuple(spec["input_shape"]))
    model.load_state_dict(load_file(path), strict=True)
    model.eval()
    return model, spec, metadata
