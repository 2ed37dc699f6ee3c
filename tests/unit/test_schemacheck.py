"""renderer.schemacheck: the bundled schemas are valid Draft 2020-12 schemas."""

from __future__ import annotations

from importlib import resources

import pytest
from jsonschema import Draft202012Validator

from renderer.schemacheck import load_schema

BUNDLED = sorted(p.name for p in resources.files("renderer.schemas").iterdir()
                 if p.name.endswith(".schema.json"))


def test_both_schemas_are_bundled() -> None:
    assert BUNDLED == ["kai.schema.json", "krt.schema.json"]


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_schema_is_valid(name: str) -> None:
    Draft202012Validator.check_schema(load_schema(name))
