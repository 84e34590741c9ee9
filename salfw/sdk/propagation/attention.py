"""``nn.MultiheadAttention`` for the relevance engine: an exact re-implementation of its forward
pass, and its relevance rule.

``fx`` sees an ``nn.MultiheadAttention`` as one leaf call (its fast C++ path cannot be traced),
so the engine computes it from its own parameters the way
``torch.nn.functional.multi_head_attention_forward`` does without masks or dropout:
``q, k, v`` projections (``in_proj_weight`` or the separate ``q/k/v_proj_weight``), per head
``A = softmax(q kᵀ / √d)`` and ``A v``, the heads concatenated and ``out_proj``. It equals the
module's output up to floating-point rounding (``tests/test_relevance_architectures.py``
checks it). Key padding and attention masks, ``is_causal``, ``bias_k``/``bias_v`` and
``add_zero_attn`` are refused by name.

Relevance (CP-LRP inside the attention, Ali et al. 2022, "XAI for transformers: better
explanations through conservative propagation", as AttnLRP's reference implementation LXT
does for torchvision's ViT, Achtibat et al. 2024): the attention weights ``A`` are treated as
constants, a gate, so relevance flows only through the value path: ``out_proj`` by its rule
(a Linear layer of the composite, path ``<attention>.out_proj``), then per head the z-rule
through the constant mixing ``o = A v``, ``R_v = v ⊙ Aᵀ (R_o / stab(o))`` (conservative), then
the value projection by its rule (a Linear layer of the composite, path
``<attention>.in_proj``: the value third of ``in_proj_weight``). The query and key inputs
receive none.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from salfw.core.errors import ModelRequirementError

from .rules import Layer, Rule, stabilize


class Operators(Protocol):
    """The engine's :class:`~.engine.Operators`: products of two input-dependent tensors and
    softmax go through them (DeepLIFT substitutes both)."""

    def product(self, op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], a: torch.Tensor, b: torch.Tensor,
                key: Any) -> torch.Tensor: ...

    def joint(self, f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, key: Any) -> torch.Tensor: ...

_ARGUMENTS = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask", "average_attn_weights",
              "is_causal")


def check(m: nn.MultiheadAttention, path: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse what the re-implementation leaves out, by name."""
    given = dict(zip(_ARGUMENTS, args, strict=False), **kwargs)
    unsupported = [name for name in ("key_padding_mask", "attn_mask") if given.get(name) is not None]
    unsupported += ["is_causal=True"] if given.get("is_causal") else []
    unsupported += ["bias_k/bias_v"] if m.bias_k is not None else []
    unsupported += ["add_zero_attn"] if m.add_zero_attn else []
    if unsupported:
        raise ModelRequirementError(f"the relevance engine re-implements nn.MultiheadAttention '{path}' without "
                                    f"{', '.join(unsupported)}")


def value_layer(m: nn.MultiheadAttention) -> Layer:
    """The value projection as a Linear layer (the last third of ``in_proj_weight``)."""
    e = m.embed_dim
    weight = m.in_proj_weight[2 * e:] if m._qkv_same_embed_dim else m.v_proj_weight
    bias = None if m.in_proj_bias is None else m.in_proj_bias[2 * e:]
    return Layer(m, weight, bias, kind="linear")


@dataclass
class Parts:
    """What the relevance rule reads of one attention call (batch first): the value input, the
    projected values ``v``, the weights ``A`` (N, heads, L, S), the concatenated heads ``o`` and
    the output."""

    value_input: torch.Tensor
    v: torch.Tensor
    weights: torch.Tensor
    heads: torch.Tensor
    out: torch.Tensor


def forward(m: nn.MultiheadAttention, args: tuple[Any, ...], kwargs: dict[str, Any], ops: Operators, name: Any,
            dependent: tuple[bool, ...]) -> tuple[tuple[torch.Tensor, torch.Tensor | None], Parts]:
    """``m(*args, **kwargs)`` computed from its parameters; ``dependent`` says which of query, key
    and value depend on the network input: products of two such and the softmax of such go
    through ``ops``, with keys ``(name, "scores")``, ``(name, "softmax")`` and ``(name, "mix")``."""
    given = dict(zip(_ARGUMENTS, args, strict=False), **kwargs)
    query, key, value = given["query"], given["key"], given["value"]
    if not m.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    e, h, d = m.embed_dim, m.num_heads, m.head_dim
    if m._qkv_same_embed_dim:
        wq, wk, _ = m.in_proj_weight.chunk(3)
    else:
        wq, wk = m.q_proj_weight, m.k_proj_weight
    bq, bk, _ = (None, None, None) if m.in_proj_bias is None else m.in_proj_bias.chunk(3)
    vl = value_layer(m)
    q, k, v = F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, vl.weight, vl.bias)
    n, length, src = query.shape[0], query.shape[1], key.shape[1]
    qh = q.reshape(n, length, h, d).transpose(1, 2) * math.sqrt(1.0 / d)
    kh = k.reshape(n, src, h, d).transpose(1, 2).transpose(-2, -1)
    vh = v.reshape(n, src, h, d).transpose(1, 2)

    def mul(a: torch.Tensor, b: torch.Tensor, both: bool, part: str) -> torch.Tensor:
        return ops.product(torch.matmul, a, b, (name, part)) if both else a @ b

    scores = mul(qh, kh, dependent[0] and dependent[1], "scores")
    weights = ops.joint(partial(torch.softmax, dim=-1), scores, (name, "softmax")) if dependent[0] or dependent[1] \
        else scores.softmax(-1)
    heads = mul(weights, vh, (dependent[0] or dependent[1]) and dependent[2], "mix")
    heads = heads.transpose(1, 2).reshape(n, length, e)
    out = F.linear(heads, m.out_proj.weight, m.out_proj.bias)
    parts = Parts(value, v, weights, heads, out)
    if not m.batch_first:
        out = out.transpose(0, 1)
    returned = None
    if given.get("need_weights", True):
        returned = weights.mean(1) if given.get("average_attn_weights", True) else weights
    return (out, returned), parts


def relevance(m: nn.MultiheadAttention, parts: Parts, layers: tuple[Layer, Layer], rules: tuple[Rule, Rule],
              r: torch.Tensor, stabilizer: float, record: Callable[[int, torch.Tensor, torch.Tensor], None]
              ) -> torch.Tensor:
    """The relevance of the value input given the output's ``r`` (CP-LRP: the weights are constants);
    ``record(i, r_out, r_in)`` reports layer ``i`` (0: value projection, 1: out_proj)."""
    if not m.batch_first:
        r = r.transpose(0, 1)
    value, out = layers
    value_rule, out_rule = rules
    r_heads = out_rule(out, parts.heads, parts.out, r)
    record(1, r, r_heads)
    n, length, e = parts.heads.shape
    src, h, d = parts.v.shape[1], m.num_heads, m.head_dim
    share = (r_heads / stabilize(parts.heads, stabilizer)).reshape(n, length, h, d).transpose(1, 2)
    vh = parts.v.reshape(n, src, h, d).transpose(1, 2)
    r_v = (vh * (parts.weights.transpose(-2, -1) @ share)).transpose(1, 2).reshape(n, src, e)
    r_in = value_rule(value, parts.value_input, parts.v, r_v)
    record(0, r_v, r_in)
    return r_in if m.batch_first else r_in.transpose(0, 1)
