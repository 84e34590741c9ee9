"""Test-wide settings. One torch thread per test process: CI has 2 cores and runs
two pytest-xdist workers, and oversubscribed threads make small forward passes
many times slower.

With ``SALFW_REQUIRE_ORACLES=1`` (set by ``.ci/run``) the run stops at once with
an error when a peer library the oracle tests compare with (captum, zennit,
lime) cannot be imported, instead of skipping those tests (``tests/oracles.py``).
"""

import pytest
import torch

from tests.oracles import REQUIRE_ORACLES, oracle_import_errors, oracles_required

torch.set_num_threads(1)


def pytest_configure(config: pytest.Config) -> None:
    if oracles_required() and not hasattr(config, "workerinput"):  # checked once, by the controlling process
        errors = oracle_import_errors()
        if errors:
            details = "; ".join(f"{name} ({error})" for name, error in errors.items())
            raise pytest.UsageError(
                f"{REQUIRE_ORACLES}=1 says the oracle tests must run, but these peer libraries cannot be "
                f"imported: {details}. Install them with pip install -e '.[oracle]' && "
                f"pip install --no-deps zennit==0.5.1, or unset {REQUIRE_ORACLES} to skip those tests")
