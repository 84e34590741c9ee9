"""Leave the user's model as it was, even when a method raises.

During an explanation the module is put in eval mode and its parameters stop
requiring gradients (methods differentiate with respect to the input only, so
this also saves the parameter gradients' cost). Afterwards every module's
``training`` flag, every parameter's ``requires_grad`` and ``.grad`` are
restored, and any forward/backward hook added during the call is removed.
Methods that must change weights (BatchNorm folding) work on a copy.
"""

from __future__ import annotations

import contextlib

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


@contextlib.contextmanager
def preserved(module: nn.Module | None):
    """Context manager: eval mode, no parameter gradients, everything restored on exit."""
    if module is None:
        yield
        return
    modules = list(module.modules())
    training = [m for m in modules if m.training]
    params = list(module.parameters())
    state = [(p, p.requires_grad, p.grad, p.data) for p in params]
    hooks, global_hooks = _hook_keys(modules), _global_keys()
    try:
        for m in training:
            m.training = False
        for p in params:
            if p.requires_grad:
                p.requires_grad_(False)
        yield
    finally:
        for m in modules:
            if m.training:
                m.training = False
        for m in training:
            m.training = True
        for p, requires_grad, grad, data in state:
            if p.data is not data:
                p.data = data
            if p.requires_grad != requires_grad:
                p.requires_grad_(requires_grad)
            if p.grad is not grad:
                p.grad = grad
        for m, attr, before in hooks:
            table = getattr(m, attr)
            if len(table) != len(before) or any(key not in before for key in table):
                for key in set(table) - before:
                    del table[key]
        for attr, before in global_hooks.items():
            table = getattr(module_globals, attr)
            for key in set(table.keys()) - before:
                del table[key]


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
