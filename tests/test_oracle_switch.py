"""The oracle switch of ``tests/oracles.py``: with ``SALFW_REQUIRE_ORACLES=1`` (CI) a peer library
that cannot be imported stops the test run (``pytest.UsageError`` from ``pytest_configure``, pytest's
exit status 4) with an error naming it; without the switch the run goes on and the oracle tests
skip. ``lime`` and ``captum`` are made to fail to import here."""

from __future__ import annotations

import importlib
import types

import pytest

from tests import conftest, oracles


@pytest.fixture
def hidden_lime_and_captum(monkeypatch):
    real = importlib.import_module

    def import_module(name, package=None):
        if name in ("lime", "captum"):
            raise ImportError(f"{name} hidden by the test")
        return real(name, package)

    monkeypatch.setattr(oracles.importlib, "import_module", import_module)


def test_a_missing_oracle_stops_the_run_only_when_oracles_are_required(monkeypatch, hidden_lime_and_captum):
    assert oracles.oracle_import_errors() == {"captum": "ImportError: captum hidden by the test",
                                              "lime": "ImportError: lime hidden by the test"}
    monkeypatch.setenv(oracles.REQUIRE_ORACLES, "1")
    with pytest.raises(pytest.UsageError, match=r"SALFW_REQUIRE_ORACLES=1 .* captum \(ImportError: captum hidden "
                                                r"by the test\); lime \(ImportError: lime hidden by the test\)"):
        conftest.pytest_configure(types.SimpleNamespace())
    conftest.pytest_configure(types.SimpleNamespace(workerinput={}))  # xdist workers leave it to the controller
    monkeypatch.setenv(oracles.REQUIRE_ORACLES, "0")
    conftest.pytest_configure(types.SimpleNamespace())
    monkeypatch.delenv(oracles.REQUIRE_ORACLES)
    conftest.pytest_configure(types.SimpleNamespace())
