"""Import peer libraries used as test oracles.

zennit's ``__init__`` imports torchvision (for its ResNet/VGG canonizers), and
PyPI's torchvision cannot be installed beside the CPU build of torch these
machines use. Our oracle tests never touch those canonizers, so when torchvision
is missing a minimal stand-in module with the two block classes zennit names is
put in ``sys.modules`` before importing zennit. Test code only.
"""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest


def import_zennit():
    """``import zennit`` (skipping the test if it is not installed)."""
    if importlib.util.find_spec("zennit") is None:
        pytest.skip("zennit is not installed (pip install --no-deps zennit)")
    if importlib.util.find_spec("torchvision") is None and "torchvision" not in sys.modules:
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
    import zennit
    return zennit
