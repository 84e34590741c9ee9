"""Leave the user's model as it was, even when a method raises or another thread explains with it.

During an explanation the module is put in eval mode and its parameters stop
requiring gradients (methods differentiate with respect to the input only, so
this also saves the parameter gradients' cost). Afterwards every module's
``training`` flag, every parameter's ``requires_grad``, ``.data`` and ``.grad``
are restored, and any forward/backward hook added during the call is removed.
Methods that must change weights (BatchNorm folding) work on a copy.

Concurrent and nested use: :func:`preserved` is re-entrant, counted per
submodule and per parameter under one lock. The first guard to enter on a
module (or parameter) saves its state and switches it to eval (no grad);
guards entering while it is held (nested in the same thread, or in other
threads, also through another model sharing the submodule or tied weights)
only count themselves in; the last guard to leave restores the state and
removes the hooks left over since the first entry (a method removes its own
hooks in a ``finally`` block, so a concurrent call's hooks are never removed
under it). Global module hooks are counted the same way over every guard.
Module hooks that a method adds act on every forward pass through the module,
whichever thread runs it: a method wraps them in :func:`calling_thread_only`
so that another thread's explanation passes through untouched.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn
from torch.nn.modules import module as module_globals

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs")
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks")


def _hook_keys(modules: list[nn.Module]) -> list[tuple[nn.Module, str, set]]:
    return [(m, attr, set(table)) for m in modules for attr in _HOOK_DICTS
            if (table := getattr(m, attr, None)) is not None]


def _global_keys() -> dict:
    return {attr: set(getattr(module_globals, attr).keys())
            for attr in _GLOBAL_HOOKS if hasattr(module_globals, attr)}


@dataclass
class _Held:
    """What the first guard to enter saved of one module (its ``training`` flag and hook keys) or
    one parameter (``requires_grad``, ``.grad``, ``.data``), and how many guards hold it now."""

    obj: nn.Module | torch.Tensor
    saved: tuple
    is_module: bool
    users: int = 0


_LOCK = threading.Lock()
_HELD: dict[int, _Held] = {}  # by id(): the modules and parameters inside a guard now
_global_users = 0  # guards entered and not yet left, over every module
_global_before: dict[str, set] = {}  # the global hooks' keys when the first of them entered


def _enter(modules: list[nn.Module], params: list[torch.Tensor]) -> None:
    global _global_users, _global_before
    with _LOCK:
        if _global_users == 0:
            _global_before = _global_keys()
        _global_users += 1
        for m in modules:
            if (held := _HELD.get(id(m))) is None:
                held = _HELD[id(m)] = _Held(m, (m.training, _hook_keys([m])), is_module=True)
                m.training = False
            held.users += 1
        for p in params:
            if (held := _HELD.get(id(p))) is None:
                held = _HELD[id(p)] = _Held(p, (p.requires_grad, p.grad, p.data), is_module=False)
                p.requires_grad_(False)
            held.users += 1


def _leave(modules: list[nn.Module], params: list[torch.Tensor]) -> None:
    global _global_users
    with _LOCK:
        for obj in [*modules, *params]:
            held = _HELD[id(obj)]
            held.users -= 1
            if held.users == 0:
                del _HELD[id(obj)]
                _restore(held)
        _global_users -= 1
        if _global_users == 0:
            for attr, before in _global_before.items():
                table = getattr(module_globals, attr)
                for key in set(table.keys()) - before:
                    del table[key]


def _restore(held: _Held) -> None:
    if not held.is_module:  # a parameter (a plain tensor in a TorchScript module)
        p = held.obj
        assert isinstance(p, torch.Tensor)
        requires_grad, grad, data = held.saved
        if p.data is not data:
            p.data = data
        if p.requires_grad != requires_grad:
            p.requires_grad_(requires_grad)
        if p.grad is not grad:
            p.grad = grad
        return
    training, hooks = held.saved
    assert isinstance(held.obj, nn.Module)
    held.obj.training = training
    for m, attr, before in hooks:
        table = getattr(m, attr)
        if len(table) != len(before) or any(key not in before for key in table):
            for key in set(table) - before:
                del table[key]


@contextlib.contextmanager
def preserved(module: nn.Module | None):
    """Context manager: eval mode, no parameter gradients, everything restored when the last
    guard holding it (of any thread) leaves; see the module docstring."""
    if module is None:
        yield
        return
    modules, params = list(module.modules()), list[torch.Tensor](module.parameters())
    _enter(modules, params)
    try:
        yield
    finally:
        _leave(modules, params)


Hook = TypeVar("Hook", bound=Callable[..., Any])


def calling_thread_only(hook: Hook) -> Hook:
    """Wrap a forward or forward-pre hook so that it acts only on forward passes run by the
    thread that wrapped it; another thread's pass through the module returns ``None`` from the
    hook (leaves the module's inputs and output as they are). Register the wrapper in the thread
    that explains: ``layer.register_forward_hook(calling_thread_only(hook))``.

    Not for module backward hooks: autograd may run them on a device thread."""
    owner = threading.get_ident()

    @functools.wraps(hook)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        return hook(*args, **kwargs) if threading.get_ident() == owner else None

    return guarded  # type: ignore[return-value]


def model_fingerprint(module: nn.Module) -> dict:
    """Everything :func:`preserved` promises to keep, for tests to compare before and after."""
    return {
        "training": [m.training for m in module.modules()],
        "requires_grad": [p.requires_grad for p in module.parameters()],
        "params": [p.detach().clone() for p in module.state_dict().values()],
        "hooks": [len(keys) for _, _, keys in _hook_keys(list(module.modules()))],
        "global_hooks": {k: len(v) for k, v in _global_keys().items()},
        "grads": [None if p.grad is None else p.grad.clone() for p in module.parameters()],
    }


def same_fingerprint(a: dict, b: dict) -> bool:
    def same(x, y):
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            return isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and torch.equal(x, y)
        if isinstance(x, (list, tuple)):
            return len(x) == len(y) and all(same(i, j) for i, j in zip(x, y, strict=True))
        return x == y
    return all(same(a[k], b[k]) for k in a)
