"""The local linear plane of a piecewise-linear network (the GeoSal thesis's ``find_plane``).

Inside the activation region of a point ``x`` a piecewise-linear network
(ReLU, pooling, linear, convolution, eval-mode dropout and batch norm) is
exactly affine, ``y = x · W + B``. :func:`local_plane` returns ``W`` (the
Jacobian, one row per output) and the exact bias ``B = y(x) − W·x`` for a whole
batch in one forward and one batched backward pass (autograd's
``is_grads_batched``); :func:`plane_rows` is the batched engine underneath it,
used by ``local-linear``, ``deepfool`` and ``geosal``.
:func:`check_piecewise_linear` names the first layer that breaks the assumption.
"""

from __future__ import annotations

import ast
import functools
import inspect
import numbers
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from salfw.core.context import count
from salfw.core.errors import ModelRequirementError, ParameterError, TargetError
from salfw.core.guard import calling_thread_only
from salfw.core.models import WhiteBox
from salfw.core.preprocessing import Preprocessing

#: Leaf layers that keep a network piecewise linear (in eval mode for dropout and batch norm).
PIECEWISE_LINEAR_LAYERS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ReLU6, nn.Hardtanh,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.Linear,
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.Flatten, nn.Unflatten, nn.Identity,
    nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
    nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d, nn.ReplicationPad2d,
    nn.ReplicationPad3d, nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
    Preprocessing,
)

_TRAINING_DEPENDENT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                       nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@functools.lru_cache(maxsize=256)
def _returns_its_input(forward: Callable[..., Any]) -> bool:
    """Whether ``forward``'s body (its docstring aside) is ``return <its first argument after self>``."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(forward)))
    except (OSError, TypeError, SyntaxError):  # no source (built in, compiled, interactive)
        return False
    function = tree.body[0] if tree.body else None
    if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)) or len(function.args.args) < 2:
        return False
    body = [s for s in function.body
            if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant) and isinstance(s.value.value, str))]
    return len(body) == 1 and isinstance(body[0], ast.Return) and isinstance(body[0].value, ast.Name) \
        and body[0].value.id == function.args.args[1].arg


def is_identity(module: nn.Module) -> bool:
    """An identity layer: ``nn.Identity``, a class named ``Identity`` (packages ship their own, e.g.
    EfficientNet-Lite's padding placeholder), or any module whose ``forward`` is ``return x``."""
    cls = type(module)
    return isinstance(module, nn.Identity) or cls.__name__ == "Identity" or _returns_its_input(cls.forward)


def check_piecewise_linear(module: nn.Module, method: str = "local-linear", eval_mode: bool = True) -> None:
    """Raise :class:`ModelRequirementError` naming the first layer that is not piecewise linear.

    Every leaf module (one without children) must be one of
    :data:`PIECEWISE_LINEAR_LAYERS` or an identity (:func:`is_identity`); dropout and batch norm must be in eval mode
    when ``eval_mode`` (``salfw.explain`` puts the network in eval mode itself, so
    its ``check_model`` passes False). Containers are
    walked, not judged: functional calls inside a custom ``forward`` (say
    ``torch.sigmoid``) cannot be seen and are the user's responsibility.
    """
    for path, layer in module.named_modules():
        if next(layer.children(), None) is not None:
            continue
        where = f"layer '{path or '<root>'}' ({type(layer).__name__})"
        if not isinstance(layer, PIECEWISE_LINEAR_LAYERS) and not is_identity(layer):
            raise ModelRequirementError(
                f"'{method}' needs a piecewise-linear network (ReLU/ReLU6/LeakyReLU, max/avg pooling, linear, "
                f"conv, flatten, padding, identity, dropout, batch norm in eval mode: only then is the network "
                f"exactly linear around x); {where} is not piecewise linear. Use 'gradient' or "
                f"'integrated-gradients', which apply to any differentiable network")
        if eval_mode and isinstance(layer, _TRAINING_DEPENDENT) and layer.training:
            raise ModelRequirementError(
                f"'{method}' needs {where} in eval mode (in training mode it depends on the batch); "
                f"call module.eval() first")


def _resolve_layer(module: nn.Module, layer: str | nn.Module | None, role: str) -> nn.Module | None:
    if layer is None:
        return None
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in module.modules()):
            raise ParameterError(f"the {role} layer {type(layer).__name__} is not a submodule of the network")
        return layer
    named = dict(module.named_modules())
    if layer not in named:
        names = ", ".join(repr(n) for n in named if n) or "none"
        raise ParameterError(f"no layer named {layer!r} for the {role} of 'between'; the network's layers: {names}")
    return named[layer]


def plane_rows(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, selection: torch.Tensor,
               batch_size: int = 256, start_layer: nn.Module | None = None, end_layer: nn.Module | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The region's plane for selected combinations of outputs, batched.

    ``selection`` (N, R, K) holds R row vectors ``s`` per sample; row r of the
    result is the plane of ``s · y``. Returns ``(W, values, z, y)``: ``W`` (N, R,
    *z.shape[1:]) the rows' gradients with respect to ``z``, ``values`` (N, R) the
    rows' values ``s · y``, ``z`` the point the plane is taken at (``x``, or
    the output of ``start_layer``) and ``y`` (N, K) the outputs there. The exact
    bias is ``values − Σ W·z``.

    ``forward`` maps a batch to outputs (N, K) (or, with ``end_layer``, anything:
    the end layer's flattened output is then ``y``). One forward pass per chunk of
    ``batch_size // R`` samples, then one backward pass with the R rows as a
    batch of vector-Jacobian products (``is_grads_batched``, vmapped by autograd).
    Inside :func:`salfw.explain`, a ``WhiteBox.forward`` counts the forward pass and
    one backward pass per sample; the other R − 1 rows are counted here, so the
    explanation reports one backward pass per sample and row.
    """
    n, rows = selection.shape[:2]
    out_w, out_v, out_z, out_y = [], [], [], []
    chunk = max(1, batch_size // rows)
    captured: dict[str, torch.Tensor] = {}

    def start_hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        captured["z"] = output.detach().requires_grad_(True)
        return captured["z"]

    def end_hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        captured["y"] = output

    handles = [layer.register_forward_hook(calling_thread_only(hook))
               for layer, hook in ((start_layer, start_hook), (end_layer, end_hook))
               if layer is not None]
    try:
        for begin in range(0, n, chunk):
            xs, sel = x[begin:begin + chunk].detach(), selection[begin:begin + chunk]
            m = xs.shape[0]
            with torch.enable_grad():
                leaf = xs.clone().requires_grad_(start_layer is None)
                out = forward(leaf)
                out = captured["y"] if end_layer is not None else out
                leaf = captured["z"] if start_layer is not None else leaf
                y = out.reshape(m, -1)
                sel = sel.to(y.dtype)
                values = (y.unsqueeze(1) * sel).sum(-1)  # (m, R)
                vectors = sel.transpose(0, 1).reshape(rows, *out.shape)  # one cotangent per row
                if rows == 1:
                    (grad,) = torch.autograd.grad(out, leaf, vectors[0])
                    grad = grad.unsqueeze(0)
                else:
                    (grad,) = torch.autograd.grad(out, leaf, vectors, is_grads_batched=True)
                    # the logits' hook sees one vmapped backward pass; the other rows are counted here
                    count(backward=m * (rows - 1))
            out_w.append(grad.transpose(0, 1))
            out_v.append(values.detach())
            out_z.append(leaf.detach())
            out_y.append(y.detach())
    finally:
        for h in handles:
            h.remove()
    return torch.cat(out_w), torch.cat(out_v), torch.cat(out_z), torch.cat(out_y)


def plane_bias(w: torch.Tensor, values: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``B = values − W·z`` per row: ``w`` (N, R, ...), ``values`` (N, R), ``z`` (N, ...)."""
    return values - (w * z.unsqueeze(1)).flatten(2).sum(-1)


def _selection(outputs, n: int, k: int, device) -> tuple[torch.Tensor, str]:
    """Selection rows (N, R, K) for ``outputs`` and whether the result is one row ("one") or all ("all")."""
    eye = torch.eye(k, device=device)

    def pick(cls):
        t = torch.as_tensor(cls, device=device).long().reshape(-1)
        if t.numel() == 1:
            t = t.expand(n)
        if t.numel() != n:
            raise TargetError(f"'outputs' gives {t.numel()} classes for a batch of {n}; give one or one per sample")
        if (t < 0).any() or (t >= k).any():
            raise TargetError(f"output index {t.tolist()} out of range: there are {k} outputs (0..{k - 1})")
        return eye[t]

    if outputs is None:
        return eye.expand(n, k, k), "all"
    if isinstance(outputs, (tuple, list)) and len(outputs) == 2:
        return (pick(outputs[0]) - pick(outputs[1]))[:, None], "one"
    if isinstance(outputs, (numbers.Integral, torch.Tensor)) and not isinstance(outputs, bool):
        return pick(outputs)[:, None], "one"
    raise ParameterError(f"'outputs' must be None (every output), an int or a tensor of one per sample, or a pair "
                         f"(p, q) of those for the difference y_p − y_q; got {outputs!r}")


def local_plane(model: WhiteBox | nn.Module, x: torch.Tensor, outputs=None,
                between: Sequence[str | nn.Module | None] | None = None, batch_size: int = 256
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact affine map ``y = x·W + B`` of a piecewise-linear network in the activation region of each sample.

    ``model``: a :class:`~salfw.WhiteBox` (``x`` in pixel space, preprocessing
    included) or a plain ``nn.Module``. ``x``: a batch (N, ...).

    ``outputs``: None for every output, giving ``W`` (N, K, *x.shape[1:]) and
    ``B`` (N, K); an int (or a LongTensor, one per sample) for that output, giving ``W`` shaped
    like ``x`` and ``B`` (N,); a pair ``(p, q)`` (ints or one per sample) for the
    difference ``y_p − y_q``, i.e. ``W_p − W_q`` and ``B_p − B_q``.

    ``between=(a, b)``: the map from layer ``a``'s output to layer ``b``'s output
    (layers by path in the module, e.g. ``"3"`` or ``"features.2"``, or as
    modules; None for the network's input or final output). ``W`` is then shaped
    like layer ``a``'s output and ``K`` is the number of layer ``b``'s (flattened)
    outputs. The map is exact for networks where everything reaching ``b`` flows
    through ``a`` (sequential networks).

    Raises :class:`~salfw.ModelRequirementError` naming the first layer that is
    not piecewise linear. The model is not changed (hooks are removed).
    """
    module = model.module if isinstance(model, WhiteBox) else model
    if not isinstance(module, nn.Module):
        raise ParameterError(f"local_plane needs a salfw.WhiteBox or a torch.nn.Module, got {type(model).__name__}")
    check_piecewise_linear(module)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise ParameterError("local_plane needs a floating-point batch x of shape (N, ...)")
    forward = model.forward if isinstance(model, WhiteBox) else module
    start, end = (None, None) if between is None else (
        _resolve_layer(module, between[0], "start"), _resolve_layer(module, between[1], "end"))
    with torch.no_grad():
        if end is None:
            k = forward(x[:1]).reshape(1, -1).shape[1]
        else:
            shapes = {}

            def size_hook(_module, _inputs, output):
                shapes["k"] = output[0].numel()
            handle = end.register_forward_hook(calling_thread_only(size_hook))
            try:
                forward(x[:1])
            finally:
                handle.remove()
            k = shapes["k"]
    selection, how = _selection(outputs, x.shape[0], k, x.device)
    w, values, z, _ = plane_rows(forward, x, selection.to(x.dtype), batch_size, start, end)
    b = plane_bias(w, values, z)
    return (w[:, 0], b[:, 0]) if how == "one" else (w, b)


