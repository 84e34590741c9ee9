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


def _hook_keys(module: nn.Module) -> dict:
    return {(name, attr): set(getattr(m, attr).keys())
            for name, m in module.named_modules(remove_duplicate=False)
            for attr in _HOOK_DICTS if hasattr(m, attr)}


def _global_keys() -> dict:
    return {attr: set(getattr(module_globals, attr).keys())
            for attr in _GLOBAL_HOOKS if hasattr(module_globals, attr)}


@contextlib.contextmanager
def preserved(module: nn.Module | None):
    """Context manager: eval mode, no parameter gradients, everything restored on exit."""
    if module is None:
        yield
        return
    training = {m: m.training for m in module.modules()}
    params = list(module.parameters())
    state = [(p, p.requires_grad, p.grad, p.data) for p in params]
    hooks, global_hooks = _hook_keys(module), _global_keys()
    try:
        module.eval()
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for m, flag in training.items():
            m.training = flag
        for p, requires_grad, grad, data in state:
            if p.data is not data:
                p.data = data
            p.requires_grad_(requires_grad)
            p.grad = grad
        modules = dict(module.named_modules(remove_duplicate=False))
        for (name, attr), before in hooks.items():
            table = getattr(modules[name], attr)
            for key in set(table.keys()) - before:
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
        "hooks": {k: len(v) for k, v in _hook_keys(module).items()},
        "global_hooks": {k: len(v) for k, v in _global_keys().items()},
        "grads": [None if p.grad is None else p.grad.clone() for p in module.parameters()],
    }


def same_fingerprint(a: dict, b: dict) -> bool:
    def same(x, y):
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            return isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and torch.equal(x, y)
        if isinstance(x, (list, tuple)):
            return len(x) == len(y) and all(same(i, j) for i, j in zip(x, y))
        return x == y
    return all(same(a[k], b[k]) for k in a)
