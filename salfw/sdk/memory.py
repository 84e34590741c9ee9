"""Chunk sizes from a memory budget, for methods that push many copies of an input through a
network's forward and backward passes (integrated and expected gradients, SmoothGrad,
:func:`budget_chunk`) or through its forward pass alone (the perturbation methods,
:func:`forward_chunk`).

A fixed chunk of 128 path points is a few MiB of activations for a 28 px digit on a small CNN
and about 8 GiB for 224 px photos on a 4.7 M-parameter EfficientNet, so the chunk is chosen
from a budget instead: :func:`activation_bytes` measures what one sample costs, from one
forward pass of one sample with gradients on (counted like any other), and
:func:`budget_chunk` divides the budget by it.

What is measured is every tensor autograd keeps for the backward pass (through
:func:`torch.autograd.graph.saved_tensors_hooks`), the model's own parameters and buffers
left out since a chunk shares them: that is the memory a chunk holds between its forward and
its backward pass, whatever the network does (modules or functional calls). The backward pass
allocates the gradients on top of it, layer by layer, so a chunk's peak is somewhat above its
budget (``docs/results/memory.md`` has the measured peaks).
"""

from __future__ import annotations

import torch

from salfw.core.models import Model, WhiteBox

__all__ = ["activation_bytes", "budget_chunk", "forward_chunk", "GIB"]

#: One gibibyte in bytes.
GIB = 2 ** 30


def activation_bytes(model: WhiteBox, x: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward pass of one sample (``x[:1]``): the distinct storages
    saved by one forward pass with gradients on, less the model's parameters and buffers. One
    forward pass of one sample, counted into the active context; at least the input's own size."""
    shared = {t.untyped_storage().data_ptr() for t in (*model.module.parameters(), *model.module.buffers())}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in shared:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    point = x[:1].detach().clone().requires_grad_(True)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.forward(point)
    return max(sum(saved.values()), point.numel() * point.element_size())


def budget_chunk(model: WhiteBox, x: torch.Tensor, budget_gib: float, total: int) -> int:
    """How many samples shaped like ``x``'s go through one forward/backward pass so that the tensors
    kept for the backward pass stay within ``budget_gib`` GiB (:func:`activation_bytes`), between 1 and
    ``total``."""
    return max(1, min(total, int(budget_gib * GIB // activation_bytes(model, x))))


def forward_chunk(model: Model, x: torch.Tensor, budget_gib: float, fallback: int) -> int:
    """Inputs shaped like ``x``'s per forward pass without gradients (a perturbation method's batches)
    for a budget of ``budget_gib`` GiB: on a :class:`~salfw.core.models.WhiteBox` the budget over
    :func:`activation_bytes`, an upper bound (without gradients a forward pass keeps only a few
    layers' outputs at a time); a black box cannot be measured and gets ``fallback``."""
    if not isinstance(model, WhiteBox):
        return fallback
    return max(1, int(budget_gib * GIB // activation_bytes(model, x)))
