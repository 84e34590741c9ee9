"""The ``builtin:`` model loader: salfw's shipped MNIST networks as white boxes.

``salfw.load_model("builtin:mnist-cnn")`` reads ``weights/mnist-cnn.safetensors``
(written by ``scripts/train_zoo.py``; safetensors, so nothing is unpickled),
rebuilds the ``nn.Sequential`` from its stored layer specification and wraps
it in a :class:`~salfw.core.models.WhiteBox` in eval mode, with the input
range and preprocessing recorded in ``weights/models.json`` (e.g. the offset
of -0.5 that ``mnist-cnn-offset`` was trained with, the GeoSal thesis's offset
layer). Explanations therefore live in [0, 1] pixel space for every model.

Registered through salfw's own ``salfw`` entry point ``builtin-models``, like a
third-party loader would be.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from salfw.core.contracts import ModelLoader
from salfw.core.errors import UnknownNameError
from salfw.core.hookspecs import hookimpl
from salfw.core.models import WhiteBox
from salfw.zoo import toolkit

WEIGHTS = Path(__file__).resolve().parent / "weights"


@lru_cache(maxsize=1)
def models_index() -> dict[str, dict[str, Any]]:
    """The contents of ``weights/models.json``: model name -> its recorded description."""
    return json.loads((WEIGHTS / "models.json").read_text())


class BuiltinModels(ModelLoader):
    """``builtin:NAME``: one of the MNIST networks shipped with salfw."""

    scheme = "builtin"
    summary = "MNIST networks shipped with salfw (MLP, CNN, bias-free CNN, offset CNN), trained by scripts/train_zoo.py"

    def load(self, rest: str) -> WhiteBox:
        """A WhiteBox in eval mode over the shipped model ``rest``, with its recorded preprocessing."""
        index = models_index()
        if rest not in index:
            raise UnknownNameError(f"unknown built-in model '{rest}'; available: {', '.join(sorted(index))}")
        entry = index[rest]
        module, spec, _ = toolkit.load(WEIGHTS / entry["file"])
        return WhiteBox(module, input_range=tuple(entry["input_range"]), input_shape=spec["input_shape"],
                        **entry["preprocessing"])

    def available(self) -> list[dict[str, Any]]:
        """Each shipped model: name, summary, held-out accuracy and what it was measured on."""
        return [
            {"name": name, "summary": entry["summary"], "box": "white", "accuracy": entry["accuracy"],
             "heldout": f"MNIST t10k {entry['heldout']['indices'][0]}-{entry['heldout']['indices'][1]}",
             "bias": entry["bias"], "preprocessing": entry["preprocessing"]}
            for name, entry in sorted(models_index().items())
        ]


@hookimpl
def salfw_register_model_loaders(register):
    register(BuiltinModels)
