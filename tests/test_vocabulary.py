"""One vocabulary across methods, metrics and explainers (CONTRIBUTING.md's glossary).

Every registered declaration is checked: no peer library's synonym of a shared
concept (``num_samples``, ``max_iter``, ``lr``, ...), never ``target``/``seed`` as a
parameter, ``output`` always chooses between the shared values, nested settings are
typed components rather than free-form objects, and a synonym given by a user is
refused with salfw's name.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import salfw
from salfw.core.api import make_method, model_explainers
from salfw.core.params import OUTPUTS, RESERVED, SYNONYMS, Component

#: ``object`` fields hold data (a baseline tensor, training data), never settings.
DATA_FIELDS = {"baseline", "training_data"}


def _declarations():
    tables = {"method": salfw.methods(), "metric": salfw.metrics(), "explainer": model_explainers(),
              "perturbation": salfw.perturbations()}
    return [(f"{kind} {name}", cls) for kind, table in tables.items() for name, cls in table.items()]


DECLARATIONS = _declarations()


@pytest.mark.parametrize("owner,cls", DECLARATIONS, ids=[o for o, _ in DECLARATIONS])
def test_parameter_names_follow_the_glossary(owner, cls):
    for name, row in cls.params.items():
        assert name not in SYNONYMS, f"{owner}: '{name}' is called '{SYNONYMS[name]}' in salfw"
        assert name not in RESERVED, f"{owner}: '{name}' must not be a parameter ({RESERVED[name]})"
        assert not name.endswith("_params"), f"{owner}: '{name}' should be nested settings of a component field"
        if name == "output":
            assert set(row["choices"] or ()) == set(OUTPUTS), f"{owner}: output choices {row['choices']}"
        if row["type"] == "object":
            assert name in DATA_FIELDS, f"{owner}: '{name}' is an untyped object; declare its type"


@pytest.mark.parametrize("owner,cls", DECLARATIONS, ids=[o for o, _ in DECLARATIONS])
def test_components_name_registered_things(owner, cls):
    for field in dataclasses.fields(cls.Params):
        kind = field.metadata.get("component")
        if kind:
            assert isinstance(field.default, Component)
            registered = salfw.perturbations() if kind == "perturbation" else salfw.methods()
            special = field.metadata.get("special", ())
            assert field.default.name in registered or field.default.name in special, \
                f"{owner}: default {field.default.name!r} is not a registered {kind}"


def test_a_synonym_is_refused_with_salfws_name():
    with pytest.raises(salfw.ParameterError, match="'num_samples' is called 'samples'"):
        make_method("lime", num_samples=10)
    with pytest.raises(salfw.ParameterError, match="'max_iter' is called 'iterations'"):
        make_method("deepfool", max_iter=3)
    with pytest.raises(salfw.ParameterError, match="pass target= to salfw.explain"):
        make_method("gradient", target=3)


def test_a_synonym_value_is_refused_with_salfws_value():
    with pytest.raises(salfw.ParameterError, match="'logit' is called 'logits'"):
        make_method("rise", output="logit")


def test_nested_settings_are_typed_and_validated():
    method = make_method("occlusion", **{"perturbation": "blur", "perturbation.sigma": "2"})
    assert method.params.perturbation == Component("blur", (("sigma", 2.0),))
    with pytest.raises(salfw.ParameterError, match="sigma"):
        make_method("occlusion", **{"perturbation": "blur", "perturbation.sigma": "wide"})
    with pytest.raises(salfw.ParameterError, match="accepted: sigma"):
        make_method("occlusion", **{"perturbation": "blur", "perturbation.radius": 2})


def test_the_glossary_names_every_shared_field():
    text = (Path(__file__).resolve().parents[1] / "CONTRIBUTING.md").read_text()
    glossary = text.split("## Glossary", 1)[1].split("\n## ", 1)[0]
    for name in ("samples", "iterations", "steps", "learning_rate", "tolerance", "output", "baseline", "layer",
                 "normalise", "batch_size"):
        assert re.search(rf"`{name}`", glossary), f"the glossary does not define '{name}'"
    for alias, canonical in SYNONYMS.items():
        assert f"`{alias}`" in glossary, f"the glossary does not list the synonym '{alias}' of '{canonical}'"
