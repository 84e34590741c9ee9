"""Parameter declarations: one dataclass per method drives everything.

A method declares ``Params`` as a dataclass whose fields use :func:`param`.
That single declaration gives validation (:func:`parse_params`), the CLI's
``--set key=value`` parsing (strings are coerced to the declared type),
``salfw info`` and the docs (:func:`describe_params`) and the metadata saved
with an explanation (:func:`params_to_json`).

Supported field types: ``bool``, ``int``, ``float``, ``str``, ``tuple[int, ...]``
/ ``tuple[float, ...]``, any of those ``| None``, :class:`Component` (a registered
perturbation or method chosen by name, with its own settings nested under the
field's name: ``perturbation.sigma=2``, validated against that component's
declaration) and ``object`` (data such as a baseline tensor; not settable from
the CLI except as a string).

One vocabulary: the shared fields below (:func:`samples`, :func:`iterations`,
:func:`steps`, :func:`learning_rate`, :func:`tolerance`, :func:`output`,
:func:`baseline`, :func:`layer`, :func:`normalise`, :func:`batch_size`) give
every method and metric the same names for the same concepts (CONTRIBUTING.md's
glossary), and :data:`SYNONYMS` turns a peer library's name for them into a hint.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any

import numpy as np
import torch

from .errors import ParameterError


def param(default: Any, help: str, *, choices: typing.Sequence | None = None,
          low: float | None = None, high: float | None = None, allow_inf: bool = False) -> Any:
    """Declare one parameter: its default, a one-line help, and optional constraints.

    ``low``/``high`` bound numeric values (inclusive); ``choices`` lists the accepted
    values. A float value must be finite unless ``allow_inf`` (say in the help what an
    infinite value means); NaN is never accepted. Mutable defaults (lists, tensors) are not
    allowed; use tuples or None.
    """
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None,
            "low": low, "high": high, "allow_inf": allow_inf}
    return dataclasses.field(default=default, metadata=meta)


# -- one vocabulary: the shared fields ---------------------------------------------------
#: What a score is read from: the softmax probabilities, or the logits (a black box's raw scores).
OUTPUTS = ("probabilities", "logits")


def samples(default: int | None, help: str = "random samples drawn", *, low: int = 1) -> Any:
    """The number of random samples (perturbed inputs, masks, noisy copies, coalitions)."""
    return param(default, help, low=low)


def iterations(default: int, help: str = "optimisation iterations (the most that are run)") -> Any:
    """The number of iterations of an optimisation or search (an upper bound where it can stop early)."""
    return param(default, help, low=1)


def steps(default: int, help: str = "points along the path or curve") -> Any:
    """The number of points of a discretised path or curve (integrated gradients, deletion curves)."""
    return param(default, help, low=1)


def learning_rate(default: float, help: str = "optimiser step size") -> Any:
    return param(default, help, low=0.0)


def tolerance(default: float | int | None, help: str) -> Any:
    return param(default, help, low=0)


def output(default: str = "probabilities", help: str = "score the target's probabilities or its logits") -> Any:
    """Which model output a score is read from: one of :data:`OUTPUTS`."""
    return param(default, help, choices=OUTPUTS)


def baseline(default: Any, help: str = "reference input: a perturbation name ('black', 'blur', ...), "
                                        "a number, or a tensor") -> Any:
    """The reference input a method compares with (resolved by :mod:`salfw.sdk.reference`)."""
    return param(default, help)


def layer(default: str | None = None, help: str = "layer name as in module.named_modules() "
                                                  "(None: chosen automatically)") -> Any:
    return param(default, help)


NORMALISATIONS = ("abs-max", "min-max", "none")


def normalise(default: str = "abs-max", help: str = "how maps are scaled before comparison") -> Any:
    return param(default, help, choices=NORMALISATIONS)


def batch_size(default: int | None, help: str = "inputs per forward/backward pass") -> Any:
    return param(default, help, low=1)


#: Names other libraries use for salfw's shared concepts: rejected with a hint to salfw's name.
SYNONYMS = {
    "num_samples": "samples", "n_samples": "samples", "nsamples": "samples", "num_masks": "samples",
    "n_masks": "samples", "max_iter": "iterations", "max_iterations": "iterations", "n_iter": "iterations",
    "num_iterations": "iterations", "n_steps": "steps", "num_steps": "steps", "lr": "learning_rate",
    "tol": "tolerance", "normalize": "normalise", "reference": "baseline", "references": "baseline",
    "baselines": "baseline", "target_layer": "layer", "layer_name": "layer",
}
#: Values other libraries use for salfw's shared choices.
VALUE_SYNONYMS = {"logit": "logits", "scores": "logits", "probability": "probabilities", "probs": "probabilities",
                  "normalize": "normalise"}
#: Never parameters: the classes explained are explain()'s ``target``.
RESERVED = {"target": "pass target= to salfw.explain()/evaluate() (--target on the CLI)",
            "targets": "pass target= to salfw.explain()/evaluate() (--target on the CLI)",
            "seed": "pass seed= to salfw.explain()/evaluate() (--seed on the CLI)"}


# -- nested settings: a registered component chosen by name ------------------------------
@dataclasses.dataclass(frozen=True)
class Component:
    """A registered component (``kind``: "perturbation" or "method") chosen by ``name``, with the
    settings given for it (validated against its own declaration)."""

    name: str
    settings: tuple[tuple[str, Any], ...] = ()

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.settings)


def component(default: str, kind: str, help: str, *, special: typing.Sequence[str] = ()) -> Any:
    """Declare a field naming a registered ``kind`` ("perturbation" or "method"); its settings are
    given as ``FIELD.KEY=value`` (``perturbation.sigma=2``) or as ``{"name": ..., KEY: value}``.
    ``special`` names values without settings that the method handles itself (lime's
    ``superpixel-mean`` fill), accepted besides the registered names."""
    meta = {"help": help, "choices": None, "low": None, "high": None, "component": kind,
            "special": tuple(special)}
    return dataclasses.field(default=Component(default), metadata=meta)


@dataclasses.dataclass(frozen=True)
class NoParams:
    """For methods without parameters."""


def _split_optional(tp):
    """Return (inner type, allows_none) for ``X | None`` / ``Optional[X]``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
        return tp, False
    return tp, False


def type_name(tp) -> str:
    inner, optional = _split_optional(tp)
    if typing.get_origin(inner) is tuple:
        args = typing.get_args(inner)
        name = f"tuple[{args[0].__name__}, ...]" if args else "tuple"
    else:
        name = getattr(inner, "__name__", str(inner))
    return f"{name} | None" if optional else name


def _coerce_scalar(name: str, tp, value):
    if tp is object:
        return value
    if tp is Component:
        raise TypeError(f"component field '{name}' needs a resolver")  # handled in parse_params
    if tp is bool:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ParameterError(f"parameter '{name}' must be a bool (true/false), got {value!r}")
    if tp is int:
        if isinstance(value, (bool, np.bool_)):
            raise ParameterError(f"parameter '{name}' must be an int, got bool {value!r}")
        if isinstance(value, (int, np.integer)):
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ParameterError(f"parameter '{name}' must be an int, got {value!r}")
    if tp is float:
        if isinstance(value, (bool, np.bool_)):
            raise ParameterError(f"parameter '{name}' must be a number, got bool {value!r}")
        if isinstance(value, (int, float, np.integer, np.floating)):
            out = float(value)
        elif isinstance(value, str):
            try:
                out = float(value)
            except ValueError:
                raise ParameterError(f"parameter '{name}' must be a number, got {value!r}") from None
        else:
            raise ParameterError(f"parameter '{name}' must be a number, got {value!r}")
        if math.isnan(out):
            raise ParameterError(f"parameter '{name}' must be a number, got NaN")
        return out
    if tp is str:
        if isinstance(value, str):
            return value
        raise ParameterError(f"parameter '{name}' must be a string, got {value!r}")
    raise TypeError(f"unsupported parameter type {tp!r} for '{name}'")  # a bug in a method's declaration


def _coerce(name: str, tp, value):
    inner, optional = _split_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() == "none"):
        if optional or inner is object:
            return None
        raise ParameterError(f"parameter '{name}' may not be None; expected {type_name(tp)}")
    if typing.get_origin(inner) is tuple:
        (elem, *_rest) = typing.get_args(inner) or (object,)
        if isinstance(value, str):
            value = [v for v in value.replace("x", ",").split(",") if v.strip()]
        if isinstance(value, (int, float, np.integer, np.floating)):
            value = [value]
        if isinstance(value, torch.Tensor):
            value = value.tolist()
        if not isinstance(value, (list, tuple)):
            raise ParameterError(f"parameter '{name}' must be a tuple of {elem.__name__}, got {value!r}")
        return tuple(_coerce_scalar(name, elem, v.strip() if isinstance(v, str) else v) for v in value)
    return _coerce_scalar(name, inner, value)


def _check_constraints(field: dataclasses.Field, value):
    meta = field.metadata
    if value is None or isinstance(value, Component):
        return
    values = value if isinstance(value, tuple) else (value,)
    if meta.get("choices") is not None and value not in meta["choices"]:
        allowed = ", ".join(repr(c) for c in meta["choices"])
        hint = (f" ('{value}' is called '{VALUE_SYNONYMS[value]}' in salfw)"
                if isinstance(value, str) and VALUE_SYNONYMS.get(value) in meta["choices"] else "")
        raise ParameterError(f"parameter '{field.name}' must be one of {allowed}; got {value!r}{hint}")
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if math.isinf(v) and not meta.get("allow_inf"):
            raise ParameterError(f"parameter '{field.name}' must be a finite number, got {v!r}")
        if meta.get("low") is not None and v < meta["low"]:
            raise ParameterError(f"parameter '{field.name}' must be >= {meta['low']}, got {v!r}")
        if meta.get("high") is not None and v > meta["high"]:
            raise ParameterError(f"parameter '{field.name}' must be <= {meta['high']}, got {v!r}")


@functools.cache
def _hints(params_cls: type) -> dict[str, Any]:
    """Resolved field types of a declaration (evaluating string annotations once per class)."""
    return typing.get_type_hints(params_cls)


Resolver = typing.Callable[[str, str], type]


def parse_params(params_cls: type, given: dict[str, Any], *, owner: str = "method",
                 resolve: Resolver | None = None) -> Any:
    """Validate ``given`` against the declaration and return a params instance.

    Unknown names, ill-typed values and values outside ``choices``/``low``/``high``
    raise :class:`ParameterError` naming the parameter and what is accepted; a
    peer library's name for a shared concept (``num_samples``) is rejected with
    salfw's (``samples``). Keys ``FIELD.KEY`` are settings of a :class:`Component`
    field, validated against the declaration ``resolve(kind, name)`` returns.
    """
    fields = {f.name: f for f in dataclasses.fields(params_cls)}
    hints = _hints(params_cls)
    nested: dict[str, dict[str, Any]] = {}
    plain: dict[str, Any] = {}
    for key, value in given.items():
        head, dot, rest = key.partition(".")
        if dot and head in fields and fields[head].metadata.get("component"):
            nested.setdefault(head, {})[rest] = value
        else:
            plain[key] = value
    unknown = sorted(set(plain) - set(fields))
    if unknown:
        raise ParameterError(_unknown_message(unknown, fields, owner))
    values = {}
    for name, value in plain.items():
        if fields[name].metadata.get("component"):
            continue
        coerced = _coerce(name, hints[name], value)
        _check_constraints(fields[name], coerced)
        values[name] = coerced
    for name in sorted({n for n in plain if fields[n].metadata.get("component")} | set(nested)):
        default = fields[name].default
        values[name] = _component(name, fields[name].metadata["component"], plain.get(name, default),
                                  nested.get(name, {}), owner, resolve, fields[name].metadata.get("special", ()))
    return params_cls(**values)


def _unknown_message(unknown: list[str], fields: dict, owner: str) -> str:
    hints = []
    for name in unknown:
        if name in RESERVED:
            hints.append(f"'{name}' is not a parameter: {RESERVED[name]}")
        elif SYNONYMS.get(name) in fields:
            hints.append(f"'{name}' is called '{SYNONYMS[name]}' in salfw (CONTRIBUTING.md's glossary)")
    accepted = ", ".join(sorted(fields)) or "none"
    text = f"unknown parameter(s) {', '.join(unknown)} for {owner}; accepted: {accepted}"
    return f"{text}. {'; '.join(hints)}" if hints else text


def _component(name: str, kind: str, value: Any, settings: dict[str, Any], owner: str,
               resolve: Resolver | None, special: tuple[str, ...] = ()) -> Component:
    """A :class:`Component` from a name, a ``{"name": ...}`` dict or a Component, plus nested settings."""
    if isinstance(value, Component):
        chosen, base = value.name, value.kwargs
    elif isinstance(value, dict):
        if not isinstance(value.get("name"), str):
            raise ParameterError(f"parameter '{name}' as a dict needs a 'name' (the {kind}), got {value!r}")
        chosen, base = value["name"], {k: v for k, v in value.items() if k != "name"}
    elif isinstance(value, str):
        chosen, base = value, {}
    else:
        raise ParameterError(f"parameter '{name}' names a {kind}: a string such as 'black', "
                             f"or {{'name': ..., <its settings>}}; got {value!r}")
    merged = {**base, **settings}
    if chosen in special:
        if merged:
            raise ParameterError(f"{name} '{chosen}' of {owner} takes no settings, got {', '.join(merged)}")
        return Component(chosen)
    if resolve is None:
        if merged:
            raise ParameterError(f"settings {', '.join(f'{name}.{k}' for k in merged)} of {owner} cannot be "
                                 f"validated here; pass them through salfw.explain() or make_method()")
        return Component(chosen)
    component_params = resolve(kind, chosen)  # raises UnknownNameError for an unknown name
    checked = parse_params(component_params, merged, owner=f"{kind} '{chosen}' (as {owner}'s '{name}')",
                           resolve=resolve)
    given_fields = sorted({key.partition(".")[0] for key in merged})
    return Component(chosen, tuple((key, getattr(checked, key)) for key in given_fields))


def describe_params(params_cls: type) -> list[dict]:
    """Name, type, default, help and constraints of each declared parameter."""
    hints = _hints(params_cls)
    out = []
    for f in dataclasses.fields(params_cls):
        kind = f.metadata.get("component")
        out.append({
            "name": f.name, "type": kind if kind else type_name(hints[f.name]), "default": to_json(f.default),
            "help": f.metadata.get("help", ""), "choices": f.metadata.get("choices"),
            "low": f.metadata.get("low"), "high": f.metadata.get("high"),
        })
    return out


def to_json(value: Any) -> Any:
    """A JSON-safe rendering of a parameter or metadata value (tensors become a summary)."""
    if isinstance(value, (str, bool, int)) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return to_json(value.item())
    if isinstance(value, (torch.Tensor, np.ndarray)):
        if value.size == 1 if isinstance(value, np.ndarray) else value.numel() == 1:
            return to_json(value.reshape(-1)[0].item())
        return {"array": list(value.shape), "dtype": str(value.dtype)}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, Component):
        return value.name if not value.settings else {"name": value.name, **to_json(value.kwargs)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return repr(value)


def params_to_json(params: Any) -> dict:
    return to_json(params)
