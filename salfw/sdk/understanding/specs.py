"""Named layer specifications for the model toolkit (``salfw train --spec NAME``).

The presets are the architectures and training settings of the built-in zoo
(scripts/train_zoo.py; README.md, "Models"): a ReLU MLP 784-128-64-10, and
a ReLU CNN conv32-pool-conv64-pool-conv64 with a global-average-pool + linear
head, with bias, without bias, and without bias on inputs offset by -0.5 (the
GeoSal thesis's offset layer). A JSON file can give any other network::

    {"layers": [{"type": "flatten"}, {"type": "linear", "out": 10}],
     "bias": true, "input_shape": [1, 28, 28], "offset": 0.0,
     "lr": 0.001, "augment": 0}

Only ``layers`` is required; the other keys default as in :data:`DEFAULTS`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from salfw.core.errors import ParameterError

MLP_LAYERS = [
    {"type": "flatten"},
    {"type": "linear", "out": 128}, {"type": "relu"},
    {"type": "linear", "out": 64}, {"type": "relu"},
    {"type": "linear", "out": 10},
]

CNN_LAYERS = [
    {"type": "conv", "out": 32, "kernel": 3, "padding": 1}, {"type": "relu"}, {"type": "maxpool", "kernel": 2},
    {"type": "conv", "out": 64, "kernel": 3, "padding": 1}, {"type": "relu"}, {"type": "maxpool", "kernel": 2},
    {"type": "conv", "out": 64, "kernel": 3, "padding": 1}, {"type": "relu"},
    {"type": "gap"}, {"type": "linear", "out": 10},
]

#: Defaults of a specification's optional keys (the zoo MLP's training settings).
DEFAULTS: dict[str, Any] = {"bias": True, "input_shape": [1, 28, 28], "offset": 0.0, "lr": 1e-3, "augment": 0}

#: The zoo's presets: learning rate and augmentation as in scripts/train_zoo.py.
PRESETS: dict[str, dict[str, Any]] = {
    "mlp": {"layers": MLP_LAYERS, "bias": True, "offset": 0.0, "lr": 1e-3, "augment": 1},
    "cnn": {"layers": CNN_LAYERS, "bias": True, "offset": 0.0, "lr": 3e-3, "augment": 2},
    "cnn-nobias": {"layers": CNN_LAYERS, "bias": False, "offset": 0.0, "lr": 3e-3, "augment": 2},
    "cnn-offset": {"layers": CNN_LAYERS, "bias": False, "offset": -0.5, "lr": 3e-3, "augment": 2},
}


def resolve_spec(spec: str | dict) -> dict[str, Any]:
    """A full specification (every key of :data:`DEFAULTS` plus ``layers``) from a preset name,
    a JSON file path or a dict. Raises ParameterError naming what is wrong."""
    if isinstance(spec, str):
        if spec in PRESETS:
            spec = PRESETS[spec]
        else:
            path = Path(spec)
            if not path.is_file():
                raise ParameterError(f"--spec {spec!r} is neither a preset ({', '.join(PRESETS)}) "
                                     f"nor an existing JSON file")
            try:
                spec = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise ParameterError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(spec, dict) or not isinstance(spec.get("layers"), list):
        raise ParameterError("a specification is a JSON object with a 'layers' list of layer dicts")
    unknown = set(spec) - set(DEFAULTS) - {"layers"}
    if unknown:
        raise ParameterError(f"unknown specification keys {sorted(unknown)}; accepted: "
                             f"{sorted(['layers', *DEFAULTS])}")
    return {**DEFAULTS, **spec}
