"""Every registered method meets the conformance suite (salfw.testing)."""

import pytest

from salfw.testing import check_method, conformance_cases


@pytest.mark.parametrize("name,kind", conformance_cases())
def test_method_conforms(name, kind):
    check_method(name, kind)


def test_there_are_methods_to_check():
    names = {name for name, _ in conformance_cases()}
    assert "gradient" in names
