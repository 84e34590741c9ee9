"""Model loaders for files and code: ``torchscript:PATH``, ``onnx:PATH`` and
``python:MODULE:CALLABLE[@WEIGHTS]``.

None of them unpickles arbitrary objects: TorchScript archives hold code and
tensors, ONNX files a graph, and weights for ``python:`` load through
safetensors or ``torch.load(weights_only=True)``. Options follow the spec after
``?`` as ``key=value`` pairs joined by ``&``: ``input_range=lo,hi``,
``mean=...``, ``std=...`` (comma lists per channel), ``offset``, ``scale``,
``invert=true``, ``input_shape=C,H,W``; ``onnx:`` also takes ``layout=NHWC`` and
``output=probabilities``.

Examples::

    torchscript:net.pt?input_range=0,1&mean=0.1307&std=0.3081
    python:mypkg.models:build_net@weights.safetensors
    onnx:classifier.onnx?input_shape=1,28,28
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from salfw.core.contracts import ModelLoader
from salfw.core.errors import ModelError
from salfw.core.hookspecs import hookimpl
from salfw.core.models import BlackBox, Model, WhiteBox

_FLOAT_LISTS = ("input_range", "mean", "std", "offset", "scale")


def split_options(rest: str) -> tuple[str, dict]:
    """``"path?mean=0.5&invert=true"`` -> ``("path", {"mean": [0.5], "invert": True})``."""
    target, _, query = rest.partition("?")
    options: dict = {}
    for pair in filter(None, query.split("&")):
        key, sep, value = pair.partition("=")
        if not sep:
            raise ModelError(f"model option {pair!r} must be key=value")
        if key in _FLOAT_LISTS:
            try:
                options[key] = [float(v) for v in value.split(",")]
            except ValueError:
                raise ModelError(f"model option {key} takes numbers, got {value!r}") from None
        elif key == "input_shape":
            options[key] = tuple(int(v) for v in value.split(","))
        elif key == "invert":
            options[key] = value.lower() in ("1", "true", "yes")
        elif key in ("layout", "output"):
            options[key] = value
        else:
            raise ModelError(f"unknown model option {key!r}; accepted: {', '.join(_FLOAT_LISTS)}, "
                             f"input_shape, invert, layout, output")
    return target, options


def _white_box(module: torch.nn.Module, options: dict) -> WhiteBox:
    options = dict(options)
    for key in ("layout", "output"):
        if key in options:
            raise ModelError(f"model option {key} applies to black boxes (onnx:) only")
    input_range = options.pop("input_range", (0.0, 1.0))
    return WhiteBox(module.eval(), input_range, **options)


def _existing(path: str) -> Path:
    file = Path(path).expanduser()
    if not file.is_file():
        raise ModelError(f"model file {path} does not exist")
    return file


class TorchScriptLoader(ModelLoader):
    scheme = "torchscript"
    summary = "a TorchScript archive (torch.jit.save) as a white box"

    def load(self, rest: str) -> Model:
        path, options = split_options(rest)
        try:
            module = torch.jit.load(str(_existing(path)), map_location="cpu")
        except RuntimeError as exc:
            raise ModelError(f"cannot load {path} as TorchScript: {first_line(exc)}") from None
        return _white_box(module, options)


class OnnxLoader(ModelLoader):
    scheme = "onnx"
    summary = "an ONNX model through onnxruntime, as a black box (pip install salfw[onnx])"

    def load(self, rest: str) -> Model:
        path, options = split_options(rest)
        file = _existing(path)
        try:
            import onnxruntime
        except ImportError:
            raise ModelError("onnx: models need onnxruntime; pip install 'salfw[onnx]'") from None
        try:
            session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for malformed files
            raise ModelError(f"cannot load {path} as ONNX: {first_line(exc)}") from None
        input_name = session.get_inputs()[0].name

        def run(batch: np.ndarray) -> np.ndarray:
            return session.run(None, {input_name: batch.astype(np.float32)})[0]

        input_range = options.pop("input_range", (0.0, 1.0))
        return BlackBox(run, input_range, backend="numpy", **options)


class PythonLoader(ModelLoader):
    scheme = "python"
    summary = "python:MODULE:CALLABLE[@WEIGHTS]: a factory returning an nn.Module (white box) or a callable"

    def load(self, rest: str) -> Model:
        spec, options = split_options(rest)
        spec, _, weights = spec.partition("@")
        module_name, sep, attr = spec.partition(":")
        if not sep or not module_name or not attr:
            raise ModelError(f"python: models are named python:MODULE:CALLABLE[@WEIGHTS], got python:{rest}")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ModelError(f"cannot import {module_name}:{attr}: {exc}") from None
        obj = factory()
        if isinstance(obj, torch.nn.Module):
            if weights:
                try:
                    obj.load_state_dict(load_weights(weights))
                except RuntimeError as exc:
                    raise ModelError(f"weights {weights} do not fit {module_name}:{attr}: "
                                     f"{' '.join(str(exc).split())}") from None
            return _white_box(obj, options)
        if weights:
            raise ModelError(f"{module_name}:{attr} returned a {type(obj).__name__}, not an nn.Module; "
                             f"weights apply to modules only")
        if not callable(obj):
            raise ModelError(f"{module_name}:{attr}() must return an nn.Module or a callable, "
                             f"got {type(obj).__name__}")
        input_range = options.pop("input_range", (0.0, 1.0))
        return BlackBox(obj, input_range, **options)


def first_line(exc: BaseException) -> str:
    """An exception's first non-empty line, or its type's name when it has no message (an
    ``EOFError`` from an empty file has none)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _weights_reason(exc: BaseException, file: Path) -> str:
    """Why a weights file did not load, in a few words: ``torch.load(weights_only=True)`` opens
    its refusal with advice to drop ``weights_only`` (which would run the file's code); the
    reason itself is on its ``WeightsUnpickler error:`` line."""
    if file.stat().st_size == 0:
        return "the file is empty"
    if isinstance(exc, EOFError):
        return "the file ends early"
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        reason = [line.strip() for line in text.split(marker, 1)[1].splitlines() if line.strip()]
        return reason[0] if reason else "it holds objects other than tensors"
    return first_line(exc)


def load_weights(path: str) -> Mapping[str, torch.Tensor]:
    """A state dict from safetensors, or from a torch file with ``weights_only=True`` (no code runs)."""
    file = _existing(path)
    expected = "expected a .safetensors file or a state dict saved with torch.save"
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(file))
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # malformed or unsafe files: one clear message
        raise ModelError(f"cannot load weights from {path}: {_weights_reason(exc, file)}; {expected}") from None
    if not isinstance(state, Mapping):
        raise ModelError(f"cannot load weights from {path}: it holds a {type(state).__name__}, not a state dict; "
                         f"{expected}")
    return state  # as loaded: an OrderedDict keeps the _metadata that load_state_dict reads


@hookimpl
def salfw_register_model_loaders(register):
    for loader in (TorchScriptLoader, OnnxLoader, PythonLoader):
        register(loader)
