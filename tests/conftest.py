"""Test-wide settings. One torch thread per test process: CI has 2 cores and runs
two pytest-xdist workers, and oversubscribed threads make small forward passes
many times slower.

With ``SALFW_REQUIRE_ORACLES=1`` (set by ``.ci/run``) the run stops at once with
an error when a peer library the oracle tests compare with (captum, zennit,
lime) or a model package of the architecture matrix (torchvision, EfficientNet-Lite0)
cannot be imported, instead of skipping those tests (``tests/oracles.py``).

Where torchvision is installed it is imported here, through
``tests/torchvision_shim.py``, before any test module imports zennit (whose
``__init__`` imports torchvision and would otherwise fail on the CPU build of torch).
"""

import pytest
import torch

from tests.oracles import INSTALL, REQUIRE_ORACLES, oracle_import_errors, oracles_required
from tests.torchvision_shim import load_torchvision, torchvision_installed

torch.set_num_threads(1)
if torchvision_installed():
    load_torchvision()


def pytest_configure(config: pytest.Config) -> None:
    if oracles_required() and not hasattr(config, "workerinput"):  # checked once, by the controlling process
        errors = oracle_import_errors()
        if errors:
            details = "; ".join(f"{name} ({error})" for name, error in errors.items())
            install = " && ".join(dict.fromkeys(INSTALL[name] for name in errors))
            raise pytest.UsageError(
                f"{REQUIRE_ORACLES}=1 says the oracle tests must run, but these peer libraries cannot be "
                f"imported: {details}. Install them with {install} (the README's test command does), or unset "
                f"{REQUIRE_ORACLES} to skip those tests")
