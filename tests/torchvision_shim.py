"""Import torchvision on machines where its compiled operators cannot load.

PyPI's only Linux build of torchvision 0.28 is built against CUDA torch. Beside the
CPU build of torch 2.13 these machines use (and CI installs it with
``pip install --no-deps torchvision==0.28.0``), its C extension does not load, and
``import torchvision`` fails with ``operator torchvision::nms does not exist``:
``torchvision/_meta_registrations.py`` registers fake kernels for the ``nms`` and
``qnms`` operators the extension would have defined. The pure-Python models
(``torchvision.models``) need neither operator, so when, and only when, the import
fails with that error, the two operator schemas are defined in a library fragment
kept alive for the whole process and the import is retried. Detection ops
(``torchvision.ops.nms``) still do not work; nothing here calls them. Test and
script code only: ``salfw`` itself never imports torchvision.

zennit imports torchvision when it is installed (for its ResNet/VGG canonizers),
so ``tests/conftest.py`` calls :func:`load_torchvision` before any test imports zennit.
"""

from __future__ import annotations

import importlib.util
import sys
import types

import torch

#: The error the plain import raises when torchvision's C extension does not match torch.
MISSING_OPERATOR = "torchvision::nms does not exist"
#: The operators ``torchvision/_meta_registrations.py`` expects, with their schemas.
_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
#: The library fragment holding the schemas: the definitions live as long as it does.
_LIBRARY: torch.library.Library | None = None


def torchvision_installed() -> bool:
    """Whether a torchvision package is installed (it may still need the shim to import)."""
    module = sys.modules.get("torchvision")
    if module is not None:
        return getattr(module, "__file__", None) is not None  # a stand-in module has no file
    return importlib.util.find_spec("torchvision") is not None


def _define_missing_operators() -> None:
    global _LIBRARY
    if _LIBRARY is None:
        _LIBRARY = torch.library.Library("torchvision", "FRAGMENT")
    for name, schema in _SCHEMAS.items():
        try:
            torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        except RuntimeError:  # not defined yet (by us, by torchvision's extension or by another shim)
            _LIBRARY.define(schema)


def _forget_partial_import() -> None:
    for name in [name for name in sys.modules if name == "torchvision" or name.startswith("torchvision.")]:
        del sys.modules[name]


def load_torchvision() -> types.ModuleType:
    """``import torchvision``, defining the two missing operator schemas first if the plain import needs them.

    Raises ``ImportError`` when torchvision is not installed, and re-raises any other import error unchanged.
    """
    try:
        import torchvision
    except RuntimeError as exc:
        if MISSING_OPERATOR not in str(exc):
            raise
        _forget_partial_import()
        _define_missing_operators()
        import torchvision
    return torchvision


def torchvision_models() -> types.ModuleType:
    """``torchvision.models``, imported through :func:`load_torchvision`."""
    return load_torchvision().models
