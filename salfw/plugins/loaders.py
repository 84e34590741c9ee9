"""Model loaders for files and code: ``torchscript:PATH``, ``onnx:PATH`` and
``python:MODULE:CALLABLE[@WEIGHTS]``.

None of them unpickles arbitrary objects: TorchScript archives hold code and
tensors, ONNX files a graph, and weights for ``python:`` load through
safetensors or ``torch.load(weights_only=True)``. ``python:`` imports MODULE from
the current directory first (as ``python -m`` does), then from the installed
packages.

Options follow the spec after ``?`` as ``key=value`` pairs joined by ``&``. Each
loader declares them once (its ``Params``: :class:`AdapterOptions` for every
loader, :class:`WhiteBoxOptions` for networks, :class:`OnnxOptions`), which drives
the parsing, the errors and ``salfw info <scheme>``.

Examples::

    torchscript:net.pt?input_range=0,1&mean=0.1307&std=0.3081
    python:mypkg.models:build_net@weights.safetensors
    python:hf_model:build?select=logits&input_shape=3,224,224&mean=0.485,0.456,0.406&std=0.229,0.224,0.225
    onnx:classifier.onnx?input_shape=1,28,28

An ONNX graph whose input has a fixed batch size (a shape such as ``[1, 3, 224, 224]``
rather than ``["N", 3, 224, 224]``) is run in chunks of that size, the last one padded
by repeating its last input (the padded outputs are dropped); a fixed per-sample shape
becomes the model's ``input_shape`` when none is given. A graph that declares a free batch
size but refuses several inputs at once is tried on one input and, if that works, run one
input at a time, with a warning (:func:`onnx_runner`).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from salfw.core.contracts import ModelLoader
from salfw.core.errors import ModelError, SalfwError
from salfw.core.hookspecs import hookimpl
from salfw.core.models import BlackBox, Model, WhiteBox
from salfw.core.params import param, parse_params


@dataclasses.dataclass(frozen=True)
class AdapterOptions:
    """The options of every model spec (the adapters' own arguments)."""

    input_range: tuple[float, ...] = param(
        (0.0, 1.0), "LOW,HIGH: the domain of the raw input the user sees; perturbations fill with its "
                    "ends (black is LOW)")
    input_shape: tuple[int, ...] | None = param(
        None, "C,H,W or D per sample: checked before any work; photos given to --input are resized "
              "and centre-cropped to it")
    select: str | None = param(
        None, "for a model returning several outputs: which holds the class scores, an index into a "
              "tuple (0) or a dict key / attribute (logits, as Hugging Face models return)")
    batch_size: int = param(256, "the most inputs per model call", low=1)


@dataclasses.dataclass(frozen=True)
class WhiteBoxOptions(AdapterOptions):
    """A network's options: its preprocessing (folded into the white box, so explanations live in the
    raw input space) and its device."""

    mean: tuple[float, ...] | None = param(None, "normalisation mean, one value or one per channel "
                                                 "(ImageNet: 0.485,0.456,0.406)")
    std: tuple[float, ...] | None = param(None, "normalisation standard deviation, one value or one per "
                                                "channel (ImageNet: 0.229,0.224,0.225)")
    offset: tuple[float, ...] | None = param(None, "added before scaling (the GeoSal thesis's front layer)")
    scale: tuple[float, ...] | None = param(None, "multiplied after the offset (the GeoSal thesis's front layer)")
    invert: bool = param(False, "feed the network lo + hi - x (a network trained on inverted inputs)")
    device: str | None = param(None, "where the network runs: cpu, cuda, cuda:1, mps (default cpu)")


@dataclasses.dataclass(frozen=True)
class BlackBoxOptions(AdapterOptions):
    """A black box's options: how its inputs are laid out and what its scores are."""

    layout: str = param("NCHW", "image batches as NCHW, or NHWC (channels last, as Keras/TensorFlow "
                                "exports take them)", choices=("NCHW", "NHWC"))
    output: str = param("auto", "the scores are logits or probabilities (auto: rows of non-negative "
                                "numbers summing to 1 are probabilities)",
                        choices=("auto", "logits", "probabilities"))


@dataclasses.dataclass(frozen=True)
class PythonOptions(WhiteBoxOptions, BlackBoxOptions):
    """``python:`` factories return a network (white-box options) or a callable (black-box options)."""


WHITE_ONLY = tuple(f.name for f in dataclasses.fields(WhiteBoxOptions) if f.name not in
                   {g.name for g in dataclasses.fields(AdapterOptions)})
BLACK_ONLY = tuple(f.name for f in dataclasses.fields(BlackBoxOptions) if f.name not in
                   {g.name for g in dataclasses.fields(AdapterOptions)})


def parse_options(scheme: str, declaration: type, rest: str) -> tuple[str, dict[str, Any]]:
    """``"net.pt?mean=0.5&invert=true"`` -> ``("net.pt", {"mean": (0.5,), "invert": True})``: the
    options given (checked against the loader's ``declaration``), converted for the adapters
    (``select`` an int where it is one)."""
    target, _, query = rest.partition("?")
    given: dict[str, str] = {}
    names = [f.name for f in dataclasses.fields(declaration)]
    for pair in filter(None, query.split("&")):
        key, sep, value = pair.partition("=")
        if not sep:
            raise ModelError(f"model option {pair!r} must be key=value")
        if key not in names:
            raise ModelError(f"unknown model option {key!r} for {scheme}: models; accepted: {', '.join(names)} "
                             f"(see 'salfw info {scheme}')")
        if key in given:
            raise ModelError(f"model option {key} is given twice")
        given[key] = value
    try:
        parsed = parse_params(declaration, given, owner=f"{scheme}: models")
    except SalfwError as exc:
        raise ModelError(f"model option: {exc}") from None
    options = {key: getattr(parsed, key) for key in given}
    if "input_range" in options and len(options["input_range"]) != 2:
        raise ModelError(f"model option input_range takes two numbers LOW,HIGH, got {given['input_range']!r}")
    if isinstance(options.get("select"), str) and options["select"].lstrip("-").isdigit():
        options["select"] = int(options["select"])
    return target, options


def _white_box(module: torch.nn.Module, options: dict, source: str) -> WhiteBox:
    options = dict(options)
    wrong = [key for key in BLACK_ONLY if key in options]
    if wrong:
        raise ModelError(f"model option(s) {', '.join(wrong)} apply to black boxes only; {source} is a "
                         f"network (a white box)")
    device = options.get("device")
    if device is not None:
        try:
            module = module.to(device)
        except (RuntimeError, AssertionError) as exc:  # no such device, or torch built without it
            raise ModelError(f"cannot move {source} to device {device!r}: {first_line(exc)}") from None
    input_range = options.pop("input_range", (0.0, 1.0))
    return WhiteBox(module.eval(), input_range, **options)


def _black_box(fn: Any, options: dict, source: str, **fixed: Any) -> BlackBox:
    options = dict(options)
    wrong = [key for key in WHITE_ONLY if key in options]
    if wrong:
        raise ModelError(f"model option(s) {', '.join(wrong)} apply to networks (white boxes) only; {source} "
                         f"is a black box")
    input_range = options.pop("input_range", (0.0, 1.0))
    return BlackBox(fn, input_range, **fixed, **options)


def _existing(path: str) -> Path:
    file = Path(path).expanduser()
    if not file.is_file():
        raise ModelError(f"model file {path} does not exist")
    return file


class TorchScriptLoader(ModelLoader):
    scheme = "torchscript"
    summary = "a TorchScript archive (torch.jit.save) as a white box"
    Params = WhiteBoxOptions

    def load(self, rest: str) -> Model:
        path, options = parse_options(self.scheme, self.Params, rest)
        try:
            module = torch.jit.load(str(_existing(path)), map_location=options.get("device") or "cpu")
        except RuntimeError as exc:
            raise ModelError(f"cannot load {path} as TorchScript: {first_line(exc)}") from None
        return _white_box(module, options, path)


class OnnxLoader(ModelLoader):
    scheme = "onnx"
    summary = "an ONNX model through onnxruntime, as a black box (pip install salfw[onnx])"
    Params = BlackBoxOptions

    def load(self, rest: str) -> Model:
        path, options = parse_options(self.scheme, self.Params, rest)
        file = _existing(path)
        try:
            import onnxruntime
        except ImportError:
            raise ModelError("onnx: models need onnxruntime; pip install 'salfw[onnx]'") from None
        try:
            session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for malformed files
            raise ModelError(f"cannot load {path} as ONNX: {first_line(exc)}") from None
        graph_input = session.get_inputs()[0]
        dims = list(graph_input.shape)
        fixed = dims[0] if dims and isinstance(dims[0], int) and dims[0] > 0 else None
        sample = dims[1:]
        if "input_shape" not in options and sample and all(isinstance(d, int) and d > 0 for d in sample):
            nhwc = options.get("layout") == "NHWC" and len(sample) == 3
            options["input_shape"] = (sample[2], sample[0], sample[1]) if nhwc else tuple(sample)
        return _black_box(onnx_runner(session, graph_input.name, fixed), options, path, backend="numpy")


def onnx_runner(session: Any, input_name: str, fixed_batch: int | None) -> Any:
    """The ONNX session as a callable on float32 batches of any size. A graph with a fixed batch size
    is run in chunks of that size, the last chunk padded by repeating its last input. A graph whose
    declared batch dimension is free but which refuses a batch of several inputs (a reshape to batch
    1 inside) is tried on one input; if that works, it is run one input at a time from then on,
    with a warning."""
    fixed = [fixed_batch]

    def chunked(batch: np.ndarray, size: int) -> np.ndarray:
        n = len(batch)
        pad = (-n) % size
        if pad:
            batch = np.concatenate([batch, np.repeat(batch[-1:], pad, axis=0)])
        chunks = [session.run(None, {input_name: batch[i:i + size]})[0]
                  for i in range(0, len(batch), size)]  # the graph takes no other batch size
        return np.concatenate(chunks)[:n]

    def run(batch: np.ndarray) -> np.ndarray:
        batch = batch.astype(np.float32)
        size = fixed[0]
        if size is not None and len(batch) != size:
            return chunked(batch, size)
        try:
            return session.run(None, {input_name: batch})[0]
        except Exception as exc:  # onnxruntime's own exception types
            if size is not None or len(batch) == 1:
                raise
            try:
                session.run(None, {input_name: batch[:1]})
            except Exception:
                raise exc from None  # not the batch size: the original error says what is wrong
            fixed[0] = 1
            warnings.warn(f"the ONNX graph refuses a batch of {len(batch)} inputs but takes one ({first_line(exc)}); "
                          f"salfw runs it one input at a time", stacklevel=2)
            return chunked(batch, 1)

    return run


def import_module(module_name: str) -> Any:
    """``importlib.import_module`` with the current directory first on ``sys.path`` for the import
    (as ``python -m`` has it), restored afterwards."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        importlib.invalidate_caches()  # a module written since the last import is found
        return importlib.import_module(module_name)
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


class PythonLoader(ModelLoader):
    scheme = "python"
    summary = ("python:MODULE:CALLABLE[@WEIGHTS]: a factory returning an nn.Module (white box) or a callable; "
               "MODULE is looked up in the current directory first")
    Params = PythonOptions

    def load(self, rest: str) -> Model:
        spec, options = parse_options(self.scheme, self.Params, rest)
        spec, _, weights = spec.partition("@")
        module_name, sep, attr = spec.partition(":")
        if not sep or not module_name or not attr:
            raise ModelError(f"python: models are named python:MODULE:CALLABLE[@WEIGHTS], got python:{rest}")
        name = f"{module_name}:{attr}"
        try:
            factory = getattr(import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ModelError(f"cannot import {name}: {exc} (looked in the current directory {os.getcwd()} "
                             f"and the installed packages)") from None
        except Exception as exc:  # the user's module failed while it was imported
            raise ModelError(f"importing {module_name} failed: {type(exc).__name__}: {first_line(exc)}") from None
        try:
            obj = factory()
        except Exception as exc:  # the user's factory failed
            raise ModelError(f"{name}() failed: {type(exc).__name__}: {first_line(exc)}") from None
        if isinstance(obj, torch.nn.Module):
            if weights:
                try:
                    obj.load_state_dict(load_weights(weights))
                except RuntimeError as exc:
                    raise ModelError(f"weights {weights} do not fit {name}: "
                                     f"{' '.join(str(exc).split())}") from None
            return _white_box(obj, options, name)
        if weights:
            raise ModelError(f"{name} returned a {type(obj).__name__}, not an nn.Module; "
                             f"weights apply to modules only")
        if not callable(obj):
            raise ModelError(f"{name}() must return an nn.Module or a callable, got {type(obj).__name__}")
        return _black_box(obj, options, name)


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
