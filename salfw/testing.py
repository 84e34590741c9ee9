"""The conformance suite: what every registered method must satisfy.

Run it on your own plugin with::

    from salfw.testing import check_method
    check_method("my-method")            # raises AssertionError naming the failed check

or parametrise pytest over :func:`conformance_cases` as salfw's own
``tests/test_conformance.py`` does. The checks (docs/architecture.md, "Testing"):

``output``                   shape (like the input, or (N, 1, H, W)), floating dtype, finite values
``deterministic``            the same seed gives the same result
``batch-equals-samples``     a batch gives the same result as its samples one by one
``model-unchanged``          parameter and buffer values, ``requires_grad``, ``training`` and hooks as before
``model-unchanged-on-error`` the same after the network raises in the middle of the method
``refuses-black-box``        a white-box method given a BlackBox raises ModelRequirementError
``stateless``                ``check_model`` and ``attribute`` leave the instance's attributes as they were
                             (nothing hides between them; one instance may explain in two threads)

Methods run on tiny networks (a bias-free ReLU CNN with max pooling and a
global-average-pool + linear head on 1×8×10 images, not square so that a map with
height and width swapped fails; a bias-free ReLU MLP on 6 features) with the
method's ``test_params``, unless it names a ``test_model``. Every failure, an
exception from the method included, is an AssertionError whose message starts
``"<method> (<check>): "``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .core.api import explain, make_method, methods
from .core.errors import ModelRequirementError
from .core.explanation import Explanation
from .core.guard import model_fingerprint, same_fingerprint
from .core.models import BlackBox, Model, WhiteBox

CHECKS = ("output", "deterministic", "batch-equals-samples", "model-unchanged", "model-unchanged-on-error",
          "refuses-black-box", "stateless")
IMAGE_SHAPE = (1, 8, 10)  # not square, so a map with height and width swapped fails
VECTOR_SIZE = 6
CLASSES = 3


def tiny_cnn(bias: bool = False, seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """Conv-ReLU-MaxPool-Conv-ReLU-GAP-Linear, 3 classes; any 1×H×W input with H, W ≥ 2 (the suite's is 1×8×10)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=bias), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1, bias=bias), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, CLASSES, bias=bias),
    ).to(dtype)


def tiny_mlp(bias: bool = False, seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """Linear-ReLU-Linear-ReLU-Linear on 6 features, 3 classes."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(VECTOR_SIZE, 8, bias=bias), nn.ReLU(), nn.Linear(8, 8, bias=bias), nn.ReLU(),
                         nn.Linear(8, CLASSES, bias=bias)).to(dtype)


def sample_batch(kind: str, n: int = 3, seed: int = 1, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """``n`` uniform random inputs of one sample ``shape`` (default: the tiny networks' input)."""
    g = torch.Generator().manual_seed(seed)
    shape = shape or (IMAGE_SHAPE if kind == "image" else (VECTOR_SIZE,))
    return torch.rand((n, *shape), generator=g)


def default_model(kind: str) -> WhiteBox:
    return WhiteBox(tiny_cnn() if kind == "image" else tiny_mlp())


class _FailAfter(nn.Module):
    """Wraps a network and raises on its ``calls``-th forward: an error in the middle of a method."""

    def __init__(self, net: nn.Module, calls: int = 2):
        super().__init__()
        self.net, self.calls, self.seen = net, calls, 0

    def forward(self, x):
        self.seen += 1
        if self.seen >= self.calls:
            raise RuntimeError("injected failure (salfw.testing)")
        return self.net(x)


def conformance_cases() -> list[tuple[str, str]]:
    """(method name, input kind) for every registered method and each input kind it accepts."""
    return [(name, kind) for name, cls in methods().items() for kind in ("image", "vector")
            if kind in cls.input_kinds]


def _model_for(cls, kind: str) -> Model:
    return cls.test_model(kind) if cls.test_model is not None else default_model(kind)


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4) -> bool:
    scale = max(a.abs().max().item(), b.abs().max().item(), 1e-12)
    return bool(torch.allclose(a, b, rtol=rtol, atol=rtol * scale))


def _message(name: str, check: str, text: str) -> str:
    return f"{name} ({check}): {text}"


def _explain(name: str, check: str, *args: Any, **kwargs: Any) -> Explanation:
    """:func:`explain`, with whatever it raises turned into an AssertionError naming ``check``
    (the suite's contract: a non-conforming method fails with AssertionError, even where
    ``explain()`` refuses the result itself, e.g. NaN or a wrongly shaped map)."""
    try:
        return explain(*args, **kwargs)
    except Exception as exc:
        raise AssertionError(_message(name, check, f"explain() raised {type(exc).__name__}: {exc}")) from exc


def check_method(name: str, kind: str = "image", checks: tuple[str, ...] = CHECKS,
                 params: dict[str, Any] | None = None, model: Model | None = None,
                 x: torch.Tensor | None = None) -> None:
    """Run the conformance checks for one method on one input kind.

    ``model`` and ``x`` replace the tiny network and its random inputs (docs/architectures.md runs the
    suite on torchvision's ResNet-18 and a vision transformer); ``x`` is needed when ``model`` has no
    ``input_shape``. Raises AssertionError on the first failure, its message starting
    ``"<name> (<check>): "``; an exception from the method itself is reported the same way (chained as
    the cause).
    """
    cls = methods()[name]
    params = dict(cls.test_params if params is None else params)
    model = _model_for(cls, kind) if model is None else model
    x = sample_batch(kind, shape=model.input_shape) if x is None else x
    module = model.module if isinstance(model, WhiteBox) else None
    if module is not None:
        module.train()  # the guard must restore training mode too
        handle = module.register_forward_hook(lambda *a: None)  # a user's hook
        try:
            _run_checks(name, cls, kind, checks, params, model, module, x)
        finally:
            handle.remove()
    else:
        _run_checks(name, cls, kind, checks, params, model, None, x)


def _run_checks(name: str, cls: Any, kind: str, checks: tuple[str, ...], params: dict[str, Any], model: Model,
                module: nn.Module | None, x: torch.Tensor) -> None:
    before = model_fingerprint(module) if module is not None else None
    first = _explain(name, "output" if "output" in checks else checks[0], name, model, x, seed=0, **params)
    if module is not None and before is not None and "model-unchanged" in checks:
        # right after the first call, so a method that changes weights is named as such even
        # where the change also makes the later checks fail
        assert same_fingerprint(before, model_fingerprint(module)), \
            _message(name, "model-unchanged", "the model was changed (parameters, buffers, requires_grad, "
                                              "training mode, hooks or gradients)")
    if "output" in checks:
        a = first.attributions
        ok_shape = a.shape == x.shape or (x.dim() == 4 and a.shape == (x.shape[0], 1, *x.shape[2:]))
        assert ok_shape, _message(name, "output", f"attributions {tuple(a.shape)} for inputs {tuple(x.shape)}")
        assert a.is_floating_point(), _message(name, "output", f"attributions have dtype {a.dtype}")
        assert torch.isfinite(a).all(), _message(name, "output", "attributions have NaN or infinite values")
        assert first.kind in ("additive", "comparative", "mask"), _message(name, "output", f"kind {first.kind!r}")
        assert first.targets.shape == (x.shape[0],), \
            _message(name, "output", f"targets shape {tuple(first.targets.shape)}")
    if "deterministic" in checks:
        again = _explain(name, "deterministic", name, model, x, seed=0, **params)
        assert _close(first.attributions, again.attributions), \
            _message(name, "deterministic", "same seed gave different results")
    if "batch-equals-samples" in checks:
        singles = torch.cat([_explain(name, "batch-equals-samples", name, model, x[i:i + 1],
                                      target=first.targets[i:i + 1], seed=0, **params).attributions
                             for i in range(x.shape[0])])
        assert _close(first.attributions, singles, rtol=1e-3), \
            _message(name, "batch-equals-samples", f"the batch differs from its samples one by one "
                     f"(max diff {(first.attributions - singles).abs().max().item():.3g})")
    if module is not None and before is not None and "model-unchanged" in checks:
        assert same_fingerprint(before, model_fingerprint(module)), \
            _message(name, "model-unchanged", "the model was changed (parameters, buffers, requires_grad, "
                                              "training mode, hooks or gradients)")
    if module is not None and "model-unchanged-on-error" in checks:
        failing_module = _FailAfter(module)
        failing = WhiteBox(failing_module, model.input_range)
        failing_module.train()
        failing_before = model_fingerprint(failing_module)
        try:
            explain(name, failing, x, target=first.targets, seed=0, **params)
        except Exception as exc:  # a method may wrap the error; the cause must be ours
            assert "injected failure" in repr(exc) + repr(exc.__cause__), \
                _message(name, "model-unchanged-on-error", f"the injected failure turned into {exc!r}")
        else:  # only a method that never calls the network after the setup pass may finish
            assert failing_module.seen < 2, \
                _message(name, "model-unchanged-on-error", "the injected failure did not propagate")
        failing_module.seen = 0
        assert same_fingerprint(failing_before, model_fingerprint(failing_module)), \
            _message(name, "model-unchanged-on-error", "the model was changed after an error")
    if "refuses-black-box" in checks and cls.box == "white":
        net = model.module if isinstance(model, WhiteBox) else default_model(kind).module
        black = BlackBox(net, model.input_range, backend="torch")
        try:
            explain(name, black, x, seed=0, **params)
        except ModelRequirementError as exc:
            assert "WhiteBox" in str(exc) or "white" in str(exc), \
                _message(name, "refuses-black-box", f"unclear refusal: {exc}")
        except Exception as exc:
            raise AssertionError(_message(name, "refuses-black-box", f"a BlackBox raised {type(exc).__name__}: "
                                          f"{exc}, not ModelRequirementError")) from exc
        else:
            raise AssertionError(_message(name, "refuses-black-box", "a white-box method accepted a BlackBox"))
    if "stateless" in checks:
        instance = make_method(name, **params)
        state = dict(vars(instance))
        _explain(name, "stateless", instance, model, x, seed=0)
        after = vars(instance)
        changed = sorted(k for k in set(state) | set(after) if k not in state or k not in after
                         or after[k] is not state[k])
        assert not changed, _message(name, "stateless", f"the method instance changed its attribute(s) "
                                     f"{', '.join(changed)} while explaining (keep per-call state in locals "
                                     f"or the context)")
