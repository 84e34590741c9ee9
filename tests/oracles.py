"""Import peer libraries used as test oracles.

zennit's ``__init__`` imports torchvision (for its ResNet/VGG canonizers), and
PyPI's torchvision cannot be installed beside the CPU build of torch these
machines use. Our oracle tests never touch those canonizers, so when torchvision
is missing a minimal stand-in module with the two block classes zennit names is
put in ``sys.modules`` before importing zennit. Test code only.

An oracle test skips when its peer library is missing, unless the environment
variable ``SALFW_REQUIRE_ORACLES`` is ``1`` (CI sets it in ``.ci/run``): then
``tests/conftest.py`` imports every oracle before the session starts and stops
the run with an error naming those that cannot be imported, so a CI machine
without them fails instead of passing with the comparisons skipped.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types

import pytest

#: The peer libraries the oracle tests compare with.
ORACLES = ("captum", "zennit", "lime")
#: Set to 1 to make a missing oracle an error instead of a skip.
REQUIRE_ORACLES = "SALFW_REQUIRE_ORACLES"


def oracles_required() -> bool:
    """Whether ``SALFW_REQUIRE_ORACLES=1``: the oracle tests must run."""
    return os.environ.get(REQUIRE_ORACLES, "") == "1"


def _stand_in_torchvision() -> None:
    """Put the two torchvision classes zennit's import names in ``sys.modules`` when torchvision is missing."""
    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        torchvision = types.ModuleType("torchvision")
        models = types.ModuleType("torchvision.models")
        resnet = types.ModuleType("torchvision.models.resnet")

        class BasicBlock:  # stand-ins: only isinstance checks in zennit's canonizers use them
            pass

        class Bottleneck:
            pass

        resnet.BasicBlock, resnet.Bottleneck = BasicBlock, Bottleneck
        torchvision.models, models.resnet = models, resnet
        sys.modules.update({"torchvision": torchvision, "torchvision.models": models,
                            "torchvision.models.resnet": resnet})


def import_zennit():
    """``import zennit`` (skipping the test if it is not installed)."""
    if importlib.util.find_spec("zennit") is None:
        pytest.skip("zennit is not installed (pip install --no-deps zennit)")
    _stand_in_torchvision()
    import zennit
    return zennit


def oracle_import_errors() -> dict[str, str]:
    """Each oracle that cannot be imported, with the error (empty when all import)."""
    errors = {}
    for name in ORACLES:
        try:
            if name == "zennit":
                _stand_in_torchvision()
            importlib.import_module(name)
        except Exception as exc:  # ImportError, or whatever a broken installation raises
            errors[name] = f"{type(exc).__name__}: {exc}"
    return errors
