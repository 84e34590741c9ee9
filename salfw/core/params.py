"""Parameter declarations: one dataclass per method drives everything.

A method declares ``Params`` as a dataclass whose fields use :func:`param`.
That single declaration gives validation (:func:`parse_params`), the CLI's
``--set key=value`` parsing (strings are coerced to the declared type),
``salfw info`` and the docs (:func:`describe_params`) and the metadata saved
with an explanation (:func:`params_to_json`).

Supported field types: ``bool``, ``int``, ``float``, ``str``, ``tuple[int, ...]``
/ ``tuple[float, ...]``, any of those ``| None``, and ``object`` (anything,
for example a baseline tensor; not settable from the CLI except as a string).
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
          low: float | None = None, high: float | None = None) -> Any:
    """Declare one parameter: its default, a one-line help, and optional constraints.

    ``low``/``high`` bound numeric values (inclusive); ``choices`` lists the accepted
    values. Mutable defaults (lists, tensors) are not allowed; use tuples or None.
    """
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None,
            "low": low, "high": high}
    return dataclasses.field(default=default, metadata=meta)


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
    if value is None:
        return
    values = value if isinstance(value, tuple) else (value,)
    if meta.get("choices") is not None and value not in meta["choices"]:
        allowed = ", ".join(repr(c) for c in meta["choices"])
        raise ParameterError(f"parameter '{field.name}' must be one of {allowed}; got {value!r}")
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if meta.get("low") is not None and v < meta["low"]:
            raise ParameterError(f"parameter '{field.name}' must be >= {meta['low']}, got {v!r}")
        if meta.get("high") is not None and v > meta["high"]:
            raise ParameterError(f"parameter '{field.name}' must be <= {meta['high']}, got {v!r}")


@functools.lru_cache(maxsize=None)
def _hints(params_cls: type) -> dict[str, Any]:
    """Resolved field types of a declaration (evaluating string annotations once per class)."""
    return typing.get_type_hints(params_cls)


def parse_params(params_cls: type, given: dict[str, Any], *, owner: str = "method") -> Any:
    """Validate ``given`` against the declaration and return a params instance.

    Unknown names, ill-typed values and values outside ``choices``/``low``/``high``
    raise :class:`ParameterError` naming the parameter and what is accepted.
    """
    fields = {f.name: f for f in dataclasses.fields(params_cls)}
    hints = _hints(params_cls)
    unknown = sorted(set(given) - set(fields))
    if unknown:
        accepted = ", ".join(sorted(fields)) or "none"
        raise ParameterError(f"unknown parameter(s) {', '.join(unknown)} for {owner}; accepted: {accepted}")
    values = {}
    for name, value in given.items():
        coerced = _coerce(name, hints[name], value)
        _check_constraints(fields[name], coerced)
        values[name] = coerced
    return params_cls(**values)


def describe_params(params_cls: type) -> list[dict]:
    """Name, type, default, help and constraints of each declared parameter."""
    hints = _hints(params_cls)
    out = []
    for f in dataclasses.fields(params_cls):
        out.append({
            "name": f.name, "type": type_name(hints[f.name]), "default": to_json(f.default),
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
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return repr(value)


def params_to_json(params: Any) -> dict:
    return to_json(params)
